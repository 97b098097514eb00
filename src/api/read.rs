//! What the API reads from one domain's state: faces, clusters (listed and paged), and the
//! nearest faces to an embedding. Pure functions over a `Clusterer` and the `ClusterIndex` built
//! from it; no HTTP here.
//!
//! The engine keeps each face's cluster, not each cluster's faces; the index of members is built
//! by one pass over the faces when a read first needs it, and then follows the committed events
//! (every change of membership emits one: `Clusterer::events_since`), so a read under a steady
//! stream costs the events since the last read, not a pass over every face. It is rebuilt when
//! the events it missed are no longer held, or when they do not fit it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::Serialize;

use crate::clusterer::Clusterer;
use crate::engine::{Event, FaceMeta};
use crate::index::NeighborIndex;

/// Faces and clusters of a state, as of one version of it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterIndex {
    /// (faces, next event sequence) of the state it describes.
    version: (usize, u64),
    /// Members of each cluster, by sequence (oldest first).
    members: BTreeMap<u64, Vec<u32>>,
    /// Clusters by size (largest first, then older id).
    by_size: BTreeSet<(Reverse<usize>, u64)>,
    /// Clusters by their newest face (newest first, then older id).
    by_recent: BTreeSet<(Reverse<u32>, u64)>,
    /// Each face's cluster by sequence (`NONE`: erased, or not applied yet).
    at: Vec<u64>,
}

const NONE: u64 = u64::MAX;

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
        let mut idx = ClusterIndex {
            version: version(c),
            members: BTreeMap::new(),
            by_size: BTreeSet::new(),
            by_recent: BTreeSet::new(),
            at: vec![NONE; e.n_faces()],
        };
        for (id, m) in members {
            for &s in &m {
                idx.at[s as usize] = id;
            }
            idx.put(id, m);
        }
        idx
    }

    /// Whether it still describes `c`.
    pub fn current(&self, c: &Clusterer) -> bool {
        self.version == version(c)
    }

    pub fn n_clusters(&self) -> usize {
        self.members.len()
    }

    /// Brings it up to date with `c` by the events committed since it was: false (and then it
    /// must be rebuilt) when they are no longer held or do not fit it. Events are read as the
    /// replay property reads them: a move takes the face to its new cluster from wherever it is.
    pub fn follow(&mut self, c: &Clusterer) -> bool {
        let Some(events) = c.events_since(self.version.1) else {
            return false;
        };
        let e = c.engine();
        self.at.resize(e.n_faces(), NONE);
        for ev in events {
            let seq = |face_id: &str| e.seq_of(face_id);
            let ok = match ev {
                Event::FaceAssigned {
                    face_id,
                    cluster_id,
                    ..
                } => seq(face_id).is_some_and(|s| self.place(s, *cluster_id)),
                Event::ClustersMerged { into, from, .. } => self.merge(*into, *from),
                Event::FaceMoved { face_id, to, .. } => {
                    seq(face_id).is_some_and(|s| self.place(s, *to))
                }
                Event::FaceErased { face_id, .. } => {
                    seq(face_id).is_some_and(|s| self.place(s, NONE))
                }
                // Sizes and members change by the events above (a split's faces move one by one).
                Event::ClusterCreated { .. }
                | Event::ClusterSplit { .. }
                | Event::ClusterNamed { .. }
                | Event::FeedbackApplied { .. } => true,
                Event::Reclustered { .. } => false,
            };
            if !ok {
                return false;
            }
        }
        self.version = version(c);
        true
    }

    /// Face `s` leaves its cluster (if any) for `to` (`NONE`: for none).
    fn place(&mut self, s: u32, to: u64) -> bool {
        let Some(&from) = self.at.get(s as usize) else {
            return false;
        };
        if from == to {
            return true;
        }
        if from != NONE && !self.remove(from, s) {
            return false;
        }
        self.at[s as usize] = to;
        to == NONE || self.add(to, s)
    }

    fn keys(id: u64, m: &[u32]) -> ((Reverse<usize>, u64), (Reverse<u32>, u64)) {
        (
            (Reverse(m.len()), id),
            (Reverse(m.last().copied().unwrap_or(0)), id),
        )
    }

    /// Takes cluster `id` out of the orders and the members.
    fn take(&mut self, id: u64) -> Option<Vec<u32>> {
        let m = self.members.remove(&id)?;
        let (a, b) = Self::keys(id, &m);
        self.by_size.remove(&a);
        self.by_recent.remove(&b);
        Some(m)
    }

    /// Puts cluster `id` with members `m` (sorted) in; an empty one is gone.
    fn put(&mut self, id: u64, m: Vec<u32>) {
        if m.is_empty() {
            return;
        }
        let (a, b) = Self::keys(id, &m);
        self.by_size.insert(a);
        self.by_recent.insert(b);
        self.members.insert(id, m);
    }

    fn add(&mut self, id: u64, s: u32) -> bool {
        let mut m = self.take(id).unwrap_or_default();
        let at = m.partition_point(|&x| x < s);
        let fresh = m.get(at) != Some(&s);
        if fresh {
            m.insert(at, s);
        }
        self.put(id, m);
        fresh
    }

    fn remove(&mut self, id: u64, s: u32) -> bool {
        let Some(mut m) = self.take(id) else {
            return false;
        };
        let found = m.binary_search(&s).map(|at| m.remove(at)).is_ok();
        self.put(id, m);
        found
    }

    fn merge(&mut self, into: u64, from: u64) -> bool {
        let Some(f) = self.take(from) else {
            return false;
        };
        for &s in &f {
            if let Some(x) = self.at.get_mut(s as usize) {
                *x = into;
            }
        }
        let i = self.take(into).unwrap_or_default();
        let mut m = Vec::with_capacity(i.len() + f.len());
        let (mut a, mut b) = (i.into_iter().peekable(), f.into_iter().peekable());
        while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
            if x < y {
                m.extend(a.next());
            } else {
                m.extend(b.next());
            }
        }
        m.extend(a);
        m.extend(b);
        self.put(into, m);
        true
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
    /// Where its picture is: this API's thumbnail path when one was kept, else the producer's
    /// `thumbnail_url`, else none.
    pub thumbnail: Option<String>,
}

/// A face in a list: its id and where its picture is (as `FaceView::thumbnail`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaceBrief {
    pub face_id: String,
    pub thumbnail: Option<String>,
}

/// The path of a face's thumbnail on this API (the id percent-encoded).
pub fn thumbnail_path(face_id: &str) -> String {
    let mut p = String::from("/v1/faces/");
    for b in face_id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            p.push(b as char);
        } else {
            p.push_str(&format!("%{b:02X}"));
        }
    }
    p.push_str("/thumbnail");
    p
}

/// Where face `seq`'s picture is (see `FaceView::thumbnail`).
fn thumbnail_of(
    c: &Clusterer,
    seq: u32,
    meta: Option<&FaceMeta>,
) -> Result<Option<String>, String> {
    let e = c.engine();
    if c.store().has_thumbnail(seq).map_err(|e| e.to_string())? {
        return Ok(Some(thumbnail_path(e.face_id(seq))));
    }
    let url = match meta {
        Some(m) => m.thumbnail_url.clone(),
        None => c
            .store()
            .face_meta(seq)
            .map_err(|e| e.to_string())?
            .and_then(|m| m.thumbnail_url),
    };
    Ok(url)
}

fn briefs(c: &Clusterer, seqs: impl IntoIterator<Item = u32>) -> Result<Vec<FaceBrief>, String> {
    seqs.into_iter()
        .map(|s| {
            Ok(FaceBrief {
                face_id: c.engine().face_id(s).to_string(),
                thumbnail: thumbnail_of(c, s, None)?,
            })
        })
        .collect()
}

/// A face's stored thumbnail (JPEG, PNG or WebP bytes), or the producer's URL of one.
pub enum Picture {
    Stored(Vec<u8>),
    Url(String),
}

pub fn picture(c: &Clusterer, face_id: &str) -> Result<Option<Picture>, String> {
    let e = c.engine();
    let Some(seq) = e.seq_of(face_id).filter(|&s| !e.is_erased(s)) else {
        return Err(format!("no face {face_id:?}"));
    };
    if let Some(t) = c.store().thumbnail(seq).map_err(|e| e.to_string())? {
        return Ok(Some(Picture::Stored(t)));
    }
    Ok(c.store()
        .face_meta(seq)
        .map_err(|e| e.to_string())?
        .and_then(|m| m.thumbnail_url)
        .map(Picture::Url))
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
        thumbnail: thumbnail_of(c, seq, Some(&meta))?,
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
    /// With `faces=N`: up to N of its faces, the representatives first, then the newest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faces: Vec<FaceBrief>,
}

/// Most faces a cluster of a list may show (`faces=N`).
pub const MAX_STRIP: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Size,
    Recent,
}

/// One page of clusters and the cursor of the next (the last cluster id shown), if any; each
/// with a strip of `strip` faces.
pub fn clusters(
    c: &Clusterer,
    idx: &ClusterIndex,
    domain: &str,
    (order, unnamed, strip): (Order, bool, usize),
    after: Option<u64>,
    limit: usize,
) -> Result<(Vec<ClusterSummary>, Option<u64>), String> {
    // A cursor names the last cluster of the previous page; the next page starts after that
    // cluster's place in the current order. Between pages of a live state, clusters that moved
    // may be skipped or seen twice; a cursor whose cluster merged away is refused.
    let cursor = match after {
        None => None,
        Some(id) => match idx.members.get(&id) {
            Some(m) => Some(ClusterIndex::keys(id, m)),
            None => {
                return Err(format!(
                    "cursor {id}: no such cluster any more; start again without a cursor"
                ))
            }
        },
    };
    let list: Box<dyn Iterator<Item = u64>> = match (order, cursor) {
        (Order::Size, None) => Box::new(idx.by_size.iter().map(|k| k.1)),
        (Order::Size, Some((k, _))) => Box::new(
            idx.by_size
                .range((Bound::Excluded(k), Bound::Unbounded))
                .map(|k| k.1),
        ),
        (Order::Recent, None) => Box::new(idx.by_recent.iter().map(|k| k.1)),
        (Order::Recent, Some((_, k))) => Box::new(
            idx.by_recent
                .range((Bound::Excluded(k), Bound::Unbounded))
                .map(|k| k.1),
        ),
    };
    let e = c.engine();
    // With `unnamed`, named clusters are skipped (they still hold their place for cursors).
    let mut shown = list.filter(|id| !unnamed || e.cluster_name(*id).is_none());
    let page: Vec<ClusterSummary> = shown
        .by_ref()
        .take(limit)
        .map(|id| {
            let m = &idx.members[&id];
            let faces = if strip == 0 {
                Vec::new()
            } else {
                let mut seqs = representatives(c, m, STRIP_SCAN);
                seqs.truncate(strip);
                for s in m.iter().rev() {
                    if seqs.len() >= strip {
                        break;
                    }
                    if !seqs.contains(s) {
                        seqs.push(*s);
                    }
                }
                briefs(c, seqs)?
            };
            Ok(ClusterSummary {
                cluster_id: id,
                domain: domain.to_string(),
                name: e.cluster_name(id).map(str::to_string),
                size: m.len(),
                newest_face_id: e.face_id(*m.last().unwrap_or(&0)).to_string(),
                faces,
            })
        })
        .collect::<Result<_, String>>()?;
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
    /// The page's faces and the representatives, with where their pictures are.
    pub faces: Vec<FaceBrief>,
    pub representatives: Vec<FaceBrief>,
    /// Cursor of the next page of faces (the face sequence to start after), if any.
    pub next: Option<u32>,
}

pub const REPRESENTATIVES: usize = 5;
/// Members scanned for the representatives (the oldest this many): bounds the cost of opening
/// a cluster of a million faces.
pub const REPRESENTATIVE_SCAN: usize = 20_000;
/// Members scanned for a listed cluster's strip (a page of a list holds many clusters).
pub const STRIP_SCAN: usize = 2_000;

pub fn cluster(
    c: &Clusterer,
    idx: &ClusterIndex,
    domain: &str,
    cluster_id: u64,
    after: Option<u32>,
    limit: usize,
) -> Result<Option<ClusterView>, String> {
    let Some(m) = idx.members.get(&cluster_id) else {
        return Ok(None);
    };
    let e = c.engine();
    let start = match after {
        None => 0,
        Some(s) => m.partition_point(|x| *x <= s),
    };
    let page = &m[start..(start + limit).min(m.len())];
    let next = (start + page.len() < m.len())
        .then(|| page.last().copied())
        .flatten();
    let reps = representatives(c, m, REPRESENTATIVE_SCAN);
    Ok(Some(ClusterView {
        cluster_id,
        domain: domain.to_string(),
        name: e.cluster_name(cluster_id).map(str::to_string),
        size: m.len(),
        face_ids: page.iter().map(|s| e.face_id(*s).to_string()).collect(),
        representative_face_ids: reps.iter().map(|s| e.face_id(*s).to_string()).collect(),
        faces: briefs(c, page.iter().copied())?,
        representatives: briefs(c, reps)?,
        next,
    }))
}

/// The members nearest the mean of the (first `scan`) members' proxies; ties by the older face.
fn representatives(c: &Clusterer, members: &[u32], scan: usize) -> Vec<u32> {
    let e = c.engine();
    let scan = &members[..members.len().min(scan)];
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
