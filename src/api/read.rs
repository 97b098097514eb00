//! What the API reads from one domain's state: faces, clusters (listed and paged), and the
//! nearest faces to an embedding. Pure functions over a `Clusterer` and the `ClusterIndex` built
//! from it; no HTTP here.
//!
//! The engine keeps each face's cluster, not each cluster's faces; the index of members is built
//! by one pass over the faces when a read needs it and the state changed since (every change of
//! membership emits an event, so the event counter tells). Under a steady stream each read of a
//! cluster list pays that pass (not yet measured at 1M faces).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clusterer::Clusterer;
use crate::engine::FaceMeta;
use crate::index::NeighborIndex;

/// Faces and clusters of a state, as of one version of it.
pub struct ClusterIndex {
    /// (faces, next event sequence) of the state it was built from.
    version: (usize, u64),
    /// Members of each cluster, by sequence (oldest first).
    members: BTreeMap<u64, Vec<u32>>,
    /// Cluster ids by size (largest first, then older id).
    by_size: Vec<u64>,
    /// Cluster ids by their newest face (newest first, then older id).
    by_recent: Vec<u64>,
}

fn version(c: &Clusterer) -> (usize, u64) {
    let e = c.engine();
    (e.n_faces(), e.counters().next_event_seq)
}

impl ClusterIndex {
    pub fn build(c: &Clusterer) -> Self {
        let mut members: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        let e = c.engine();
        for (seq, id) in e.assignments().into_iter().enumerate() {
            if !e.is_erased(seq as u32) {
                members.entry(id).or_default().push(seq as u32);
            }
        }
        let mut by_size: Vec<u64> = members.keys().copied().collect();
        by_size.sort_by_key(|id| (std::cmp::Reverse(members[id].len()), *id));
        let mut by_recent: Vec<u64> = members.keys().copied().collect();
        by_recent.sort_by_key(|id| (std::cmp::Reverse(members[id].last().copied()), *id));
        ClusterIndex {
            version: version(c),
            members,
            by_size,
            by_recent,
        }
    }

    /// Whether it still describes `c`.
    pub fn current(&self, c: &Clusterer) -> bool {
        self.version == version(c)
    }

    pub fn n_clusters(&self) -> usize {
        self.members.len()
    }
}

/// One face as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaceView {
    pub face_id: String,
    pub domain: String,
    pub cluster_id: u64,
    /// Order of arrival in the domain.
    pub face_seq: u32,
    #[serde(flatten)]
    pub meta: FaceMeta,
    /// Below `quality.min_score`: assigned, never a bridge between clusters.
    pub weak: bool,
}

pub fn face(c: &Clusterer, domain: &str, face_id: &str) -> Result<Option<FaceView>, String> {
    let e = c.engine();
    let Some(seq) = e.seq_of(face_id).filter(|&s| !e.is_erased(s)) else {
        return Ok(None);
    };
    let meta = c
        .store()
        .face_meta(seq)
        .map_err(|e| format!("reading face {face_id}: {e}"))?
        .unwrap_or_default();
    Ok(Some(FaceView {
        face_id: face_id.to_string(),
        domain: domain.to_string(),
        cluster_id: e.cluster_of(seq),
        face_seq: seq,
        meta,
        weak: e.is_weak(seq),
    }))
}

/// A cluster in a list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClusterSummary {
    pub cluster_id: u64,
    pub domain: String,
    /// Set by an operator's `name` command.
    pub name: Option<String>,
    pub size: usize,
    /// Its newest face's id.
    pub newest_face_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Size,
    Recent,
}

/// One page of clusters and the cursor of the next (the last cluster id shown), if any.
pub fn clusters(
    c: &Clusterer,
    idx: &ClusterIndex,
    domain: &str,
    (order, unnamed): (Order, bool),
    after: Option<u64>,
    limit: usize,
) -> Result<(Vec<ClusterSummary>, Option<u64>), String> {
    let list = match order {
        Order::Size => &idx.by_size,
        Order::Recent => &idx.by_recent,
    };
    // A cursor names the last cluster of the previous page; the next page starts after that
    // cluster's place in the current order. Between pages of a live state, clusters that moved
    // may be skipped or seen twice; a cursor whose cluster merged away is refused.
    let start = match after {
        None => 0,
        Some(id) => match list.iter().position(|x| *x == id) {
            Some(p) => p + 1,
            None => {
                return Err(format!(
                    "cursor {id}: no such cluster any more; start again without a cursor"
                ))
            }
        },
    };
    let e = c.engine();
    // With `unnamed`, named clusters are skipped (they still hold their place for cursors).
    let mut shown = list[start.min(list.len())..]
        .iter()
        .filter(|id| !unnamed || e.cluster_name(**id).is_none());
    let page: Vec<ClusterSummary> = shown
        .by_ref()
        .take(limit)
        .map(|id| {
            let m = &idx.members[id];
            ClusterSummary {
                cluster_id: *id,
                domain: domain.to_string(),
                name: e.cluster_name(*id).map(str::to_string),
                size: m.len(),
                newest_face_id: e.face_id(*m.last().unwrap_or(&0)).to_string(),
            }
        })
        .collect();
    let next = if shown.next().is_some() {
        page.last().map(|s| s.cluster_id)
    } else {
        None
    };
    Ok((page, next))
}

/// A cluster opened: a page of its faces (oldest first) and its representatives.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClusterView {
    pub cluster_id: u64,
    pub domain: String,
    pub name: Option<String>,
    pub size: usize,
    pub face_ids: Vec<String>,
    /// Up to `REPRESENTATIVES` faces nearest the cluster's mean proxy, nearest first.
    pub representative_face_ids: Vec<String>,
    /// Cursor of the next page of faces (the face sequence to start after), if any.
    pub next: Option<u32>,
}

pub const REPRESENTATIVES: usize = 5;
/// Members scanned for the representatives (the oldest this many): bounds the cost of opening
/// a cluster of a million faces.
pub const REPRESENTATIVE_SCAN: usize = 20_000;

pub fn cluster(
    c: &Clusterer,
    idx: &ClusterIndex,
    domain: &str,
    cluster_id: u64,
    after: Option<u32>,
    limit: usize,
) -> Option<ClusterView> {
    let m = idx.members.get(&cluster_id)?;
    let e = c.engine();
    let start = match after {
        None => 0,
        Some(s) => m.partition_point(|x| *x <= s),
    };
    let page = &m[start..(start + limit).min(m.len())];
    let next = (start + page.len() < m.len())
        .then(|| page.last().copied())
        .flatten();
    Some(ClusterView {
        cluster_id,
        domain: domain.to_string(),
        name: e.cluster_name(cluster_id).map(str::to_string),
        size: m.len(),
        face_ids: page.iter().map(|s| e.face_id(*s).to_string()).collect(),
        representative_face_ids: representatives(c, m)
            .into_iter()
            .map(|s| e.face_id(s).to_string())
            .collect(),
        next,
    })
}

/// The members nearest the mean of the (first `REPRESENTATIVE_SCAN`) members' proxies; ties by
/// the older face.
fn representatives(c: &Clusterer, members: &[u32]) -> Vec<u32> {
    let e = c.engine();
    let scan = &members[..members.len().min(REPRESENTATIVE_SCAN)];
    let dim = e.params().dim;
    let mut mean = vec![0f32; dim];
    for s in scan {
        for (m, x) in mean.iter_mut().zip(e.proxy(*s)) {
            *m += x;
        }
    }
    let mut scored: Vec<(f32, u32)> = scan
        .iter()
        .map(|s| {
            let d: f32 = mean.iter().zip(e.proxy(*s)).map(|(a, b)| a * b).sum();
            (d, *s)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored
        .into_iter()
        .take(REPRESENTATIVES)
        .map(|(_, s)| s)
        .collect()
}

/// One face found by a search.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hit {
    pub face_id: String,
    pub domain: String,
    pub cluster_id: u64,
    /// Cosine between the query and the face's indexed proxy.
    pub score: f32,
}

/// The `k` indexed faces nearest `embedding` (checked as the engine checks a face's vector).
pub fn search(
    c: &Clusterer,
    domain: &str,
    embedding: &[f32],
    k: usize,
) -> Result<Vec<Hit>, String> {
    let e = c.engine();
    let v =
        crate::engine::normalize("query", embedding, e.params().dim).map_err(|e| e.to_string())?;
    Ok(e.index()
        .search(&v, k)
        .into_iter()
        .map(|n| Hit {
            face_id: e.face_id(n.seq).to_string(),
            domain: domain.to_string(),
            cluster_id: e.cluster_of(n.seq),
            score: n.similarity,
        })
        .collect())
}
