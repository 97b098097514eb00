//! The incremental clustering engine: per face, search the proxy index, re-link the local kNN
//! graph, refine edges by node intimacy on the touched neighbourhood, and keep clusters equal to the
//! connected components of the kept edges under insertion and deletion.
//!
//! The engine does no IO. The index is injected (`NeighborIndex`), the proxy generator and the edge
//! scorer are seams for later stages, and every state change is recorded as a `ChangeSet` that the
//! caller makes durable (see `store`) before acknowledging anything.
//!
//! The graph, precisely (the batch algorithm in `batch` computes the same thing at once):
//! - each face keeps an out-list: its `k` best other faces with edge score > `t1`, ranked by score
//!   descending then by the older face;
//! - a directed edge i->j is kept when node intimacy passes `t2` (METHOD.md (b)), with self-loops
//!   counted so that a mutual pair with no third neighbour is not dropped; `t2 = 0` keeps every edge;
//! - the undirected graph has {i,j} when i->j or j->i is kept; clusters are its connected components.
//!
//! A new face enters the out-list of every searched neighbour whose list it improves, evicting that
//! neighbour's weakest entry; the stream therefore equals the batch result whenever the search finds
//! every face that would rank the new one in its top `k` (always with an exact index and
//! `search_k >= n`; approximately with HNSW).

pub mod calibrate;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::index::{dot, rank, Neighbor, NeighborIndex};

mod refresh;
mod support;

/// Graph rules of the engine. Validated by the configuration layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineParams {
    /// Vector dimension every face must have.
    pub dim: usize,
    /// Out-list length: how many neighbours a face links to.
    pub k: usize,
    /// How many neighbours a new face looks at; those it improves adopt it (reverse re-linking).
    pub search_k: usize,
    /// Edge score threshold: an edge exists only when its score is above it.
    pub t1: f32,
    /// Node-intimacy threshold; 0 disables the refinement.
    pub t2: f32,
    /// Bounded proxy refresh: after an insertion, up to this many of the new face's nearest
    /// faces have their proxies recomputed (their neighbourhood now holds the new face) and, when
    /// a proxy moved, re-linked. 0 = proxies are fixed at insertion.
    pub refresh: usize,
    /// A recomputed proxy replaces the old one only when 1 - cos(old, new) exceeds this.
    pub refresh_min_change: f32,
    /// Faces whose quality (`FaceMeta::quality`) is below this are weak: each is assigned by its
    /// best edge to a face that is not weak and links nothing else, so it never joins two
    /// clusters. 0 = no face is weak.
    pub min_quality: f32,
    /// Weak faces' edges beyond that one are kept only when their score is above
    /// `t1 + weak_margin * (1 - t1)` (near-certain links); 1 = never.
    pub weak_margin: f32,
    /// Cluster-level linkage: kept edges in descending score join two clusters only when the
    /// kept edges between them number at least `max(1, ceil(support * min(|A|, |B|)))`, so one
    /// false edge cannot merge two grown clusters. 0 = clusters are the connected components of
    /// the kept edges.
    pub support: f32,
    /// The most faces the cluster-level rule recomputes at once (`support > 0`). An insertion
    /// whose kept-graph component is larger applies the rule locally instead: a new kept edge
    /// merges its two clusters when the kept edges between them reach the support, a lost edge
    /// splits a cluster only when the cluster falls apart; the cost is then bounded by the
    /// clusters touched, not by the component. 0 = no bound (always the exact rule).
    pub support_region: usize,
}

/// Turns a face's identity vector into the proxy that is indexed and linked (METHOD.md (c) 3).
pub trait ProxyGenerator {
    /// Whether `proxy` looks at anything; when false the proxy is the identity vector and the
    /// engine saves a search.
    fn needs_neighbors(&self) -> bool {
        true
    }
    /// `neighbors` are the nearest indexed proxies of the identity vector; `proxy_of` reads a
    /// stored proxy. Returns `None` when the proxy is the identity vector itself.
    fn proxy(
        &self,
        identity: &[f32],
        neighbors: &[Neighbor],
        proxy_of: &dyn Fn(u32) -> Vec<f32>,
    ) -> Option<Vec<f32>>;
    /// As `proxy`, with hallucinated variants of the face made upstream (e.g. from its CLIP
    /// embedding): `extra` holds whole vectors of the identity's dimension, row after row. A
    /// generator that has no use for them ignores them (the default).
    fn proxy_with(
        &self,
        identity: &[f32],
        extra: &[f32],
        neighbors: &[Neighbor],
        proxy_of: &dyn Fn(u32) -> Vec<f32>,
    ) -> Option<Vec<f32>> {
        let _ = extra;
        self.proxy(identity, neighbors, proxy_of)
    }
}

/// The proxy is the identity vector (the untrained, hallucination-free default).
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityProxy;

impl ProxyGenerator for IdentityProxy {
    fn needs_neighbors(&self) -> bool {
        false
    }
    fn proxy(&self, _: &[f32], _: &[Neighbor], _: &dyn Fn(u32) -> Vec<f32>) -> Option<Vec<f32>> {
        None
    }
}

/// Scores a candidate edge; the kept rule compares the score to `t1`.
pub trait EdgeScorer {
    fn score(&self, cosine: f32, a: &[f32], b: &[f32]) -> f32;
}

/// Score = cosine similarity of the proxies.
#[derive(Debug, Clone, Copy, Default)]
pub struct CosineScorer;

impl EdgeScorer for CosineScorer {
    fn score(&self, cosine: f32, _: &[f32], _: &[f32]) -> f32 {
        cosine
    }
}

/// Where a face came from; carried into its assignment event, not kept in memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaceMeta {
    /// The camera, album or feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// The photo or frame the face was cropped from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Capture time, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// Face quality in [0, 1] (src/quality.rs: from the chip, or the producer's own); none =
    /// unknown, treated as good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f32>,
}

/// What happened, in the order it happened. Cluster ids are stable: a merge keeps the older id,
/// a split leaves the id with the larger part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// A new face's final cluster after its insertion, with its best kept edge score (0 if none).
    FaceAssigned {
        face_id: String,
        cluster_id: u64,
        score: f32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quality: Option<f32>,
        /// The face is below `quality.min_score`: assigned by one edge, joining clusters only
        /// by near-certain edges (`quality.weak_margin`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        low_quality: bool,
    },
    /// A cluster that did not exist before: a new face with no kept edge.
    ClusterCreated { cluster_id: u64, face_id: String },
    /// Every face of `from` now belongs to `into`.
    ClustersMerged { into: u64, from: u64, n_faces: u64 },
    /// `n_faces` faces left `from` for the new cluster `into`; FaceMoved events name them.
    ClusterSplit { from: u64, into: u64, n_faces: u64 },
    /// An existing face changed cluster: it left in a split, or, with cluster-level linkage
    /// (`engine.support`), the recomputed grouping put it with another cluster.
    FaceMoved { face_id: String, from: u64, to: u64 },
}

/// Errors for a face that cannot be inserted. The engine state is untouched when one is returned.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("face {face_id}: vector has {got} dimensions, the engine expects {expected}")]
    WrongDimension {
        face_id: String,
        got: usize,
        expected: usize,
    },
    #[error("face {face_id}: vector holds NaN or infinity at position {position}")]
    NotFinite { face_id: String, position: usize },
    #[error("face {face_id}: vector has zero length and no direction")]
    ZeroVector { face_id: String },
    #[error("face {face_id}: empty face id")]
    EmptyId { face_id: String },
    #[error("face {face_id}: {len} hallucinated values are not whole finite vectors of {dim}")]
    BadVariants {
        face_id: String,
        len: usize,
        dim: usize,
    },
    #[error("the engine holds {0} faces, the most a u32 sequence can address")]
    Full(usize),
}

/// Result of one insertion.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The face was applied with this sequence number.
    Applied { seq: u32 },
    /// The face id was applied before; nothing changed.
    Duplicate { seq: u32 },
}

/// One entry of an out-list.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Edge {
    to: u32,
    score: f32,
    /// Passed the intimacy refinement (always true when `t2 = 0`).
    kept: bool,
}

fn edge_rank(a: &Edge, b: &Edge) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then_with(|| a.to.cmp(&b.to))
}

#[derive(Debug, Clone, Default)]
struct Face {
    /// Best `k` other faces above `t1`, in `edge_rank` order.
    out: Vec<Edge>,
    /// Faces whose out-list holds this face, sorted by sequence (intimacy and adjacency need them).
    inn: Vec<u32>,
    /// Internal component label (an index into `comps`).
    comp: u32,
    /// Below `min_quality`: its only kept edge is its best one to a face that is not weak.
    weak: bool,
}

/// A connected component. Its label is internal; `cluster_id` is what the world sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompRecord {
    /// Stable public id; `PENDING` while a new face's singleton has not been named yet.
    pub cluster_id: u64,
    pub size: u32,
}

const PENDING: u64 = u64::MAX;

/// A face's persistent record: its component and its out-list (kept flags are derived).
#[derive(Debug, Clone, PartialEq)]
pub struct FaceRecord {
    pub comp: u32,
    pub out: Vec<(u32, f32)>,
}

/// A face the engine applied, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFace {
    pub seq: u32,
    pub face_id: String,
    /// The proxy that is indexed (equal to the normalized identity vector until a generator adds more).
    pub proxy: Vec<f32>,
    /// The normalized identity vector when it differs from the proxy.
    pub identity: Option<Vec<f32>>,
    /// Hallucinated variants made upstream (empty when none), kept for the refresh.
    pub variants: Vec<f32>,
    /// Below `min_quality` (see `EngineParams::min_quality`).
    pub weak: bool,
}

/// Counters that must survive a restart for ids and sequences to continue, not repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub n_faces: u32,
    pub next_cluster_id: u64,
    pub next_event_seq: u64,
    pub next_comp: u32,
}

/// Everything a run of insertions changed, to be written atomically with its events.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    pub new_faces: Vec<NewFace>,
    pub faces: Vec<(u32, FaceRecord)>,
    /// `None` deletes the component record.
    pub comps: Vec<(u32, Option<CompRecord>)>,
    /// (event sequence, seq of the face whose insertion caused it, event)
    pub events: Vec<(u64, u32, Event)>,
    /// Proxies recomputed by the refresh, latest value per face (the indexed vector of a face
    /// stays the one it was inserted with).
    pub refreshed: Vec<(u32, Vec<f32>)>,
    pub counters: Counters,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.new_faces.is_empty() && self.events.is_empty()
    }
}

/// State handed to `Engine::restore` by the store.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub face_ids: Vec<String>,
    /// Row-major proxies as indexed (as inserted), `n_faces * dim`.
    pub proxies: Vec<f32>,
    /// Row-major normalized identity vectors, `n_faces * dim`.
    pub identities: Vec<f32>,
    /// Current proxies of the faces whose proxy a refresh replaced.
    pub refreshed: Vec<(u32, Vec<f32>)>,
    /// Upstream hallucinated variants of the faces that had them.
    pub variants: Vec<(u32, Vec<f32>)>,
    /// Faces that were weak at insertion, sorted.
    pub weak: Vec<u32>,
    pub faces: Vec<FaceRecord>,
    pub comps: Vec<(u32, CompRecord)>,
    pub counters: Counters,
}

/// The engine. `I` is the index, `P` the proxy generator, `S` the edge scorer.
pub struct Engine<I: NeighborIndex, P: ProxyGenerator = IdentityProxy, S: EdgeScorer = CosineScorer>
{
    params: EngineParams,
    index: I,
    proxy_gen: P,
    scorer: S,
    faces: Vec<Face>,
    face_ids: Vec<Box<str>>,
    by_id: HashMap<Box<str>, u32>,
    /// Row-major proxies; the edge scorer and re-linking read them.
    proxies: Vec<f32>,
    /// Row-major normalized identity vectors, kept only when proxies are refreshed (`refresh`).
    identities: Vec<f32>,
    /// Per face, the upstream hallucinated variants it was inserted with, kept only when proxies
    /// are refreshed (the store keeps them too).
    extras: Vec<Vec<f32>>,
    /// Proxies refreshed (re-linked) by this process.
    n_refreshed: u64,
    /// Weak faces held (kept flags are then computed even without intimacy).
    n_weak: usize,
    /// Insertions whose kept-graph component was over `support_region` (this process).
    bounded_regroups: u64,
    /// The face being inserted until its `FaceAssigned` is emitted (u32::MAX: none): a split
    /// before then moves it without a `FaceMoved` (the assignment tells its final cluster).
    unannounced: u32,
    /// Indexed by internal label; `size == 0` marks a retired label.
    comps: Vec<CompRecord>,
    /// Components with `size > 0`, kept up to date so that reading it is not a scan over every
    /// label ever created (the daemon reports it after each batch).
    live_comps: usize,
    next_cluster_id: u64,
    next_event_seq: u64,
    /// Visit stamps for the split search, so no per-search clearing is needed.
    mark: Vec<u32>,
    stamp: u32,
    track: bool,
    changes: ChangeSet,
    dirty_faces: HashSet<u32>,
    dirty_comps: HashSet<u32>,
    /// Removed edges not yet applied to the component structure while one insertion is
    /// processed: walks still see them, so every walk sees the structure the labels describe.
    /// (Additions need no such care: walks that relabel follow labels, not just edges.)
    visible: Vec<(u32, u32)>,
}

fn pair(a: u32, b: u32) -> (u32, u32) {
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Validates and L2-normalizes an incoming vector.
pub fn normalize(face_id: &str, v: &[f32], dim: usize) -> Result<Vec<f32>, EngineError> {
    if v.len() != dim {
        return Err(EngineError::WrongDimension {
            face_id: face_id.to_string(),
            got: v.len(),
            expected: dim,
        });
    }
    if let Some(position) = v.iter().position(|x| !x.is_finite()) {
        return Err(EngineError::NotFinite {
            face_id: face_id.to_string(),
            position,
        });
    }
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm < 1e-12 || !norm.is_finite() {
        return Err(EngineError::ZeroVector {
            face_id: face_id.to_string(),
        });
    }
    Ok(v.iter().map(|x| (*x as f64 / norm) as f32).collect())
}

/// Checks a face as `Engine::insert_full` takes it (id, vector, upstream variants) and returns
/// its normalized identity vector.
pub fn check_face(
    face_id: &str,
    vector: &[f32],
    extra: &[f32],
    dim: usize,
) -> Result<Vec<f32>, EngineError> {
    if extra.len() % dim != 0 || extra.iter().any(|x| !x.is_finite()) {
        return Err(EngineError::BadVariants {
            face_id: face_id.to_string(),
            len: extra.len(),
            dim,
        });
    }
    if face_id.is_empty() {
        return Err(EngineError::EmptyId {
            face_id: face_id.to_string(),
        });
    }
    normalize(face_id, vector, dim)
}

impl<I: NeighborIndex> Engine<I> {
    /// An engine with the identity proxy and the cosine scorer.
    pub fn new(params: EngineParams, index: I) -> Self {
        Self::with_stages(params, index, IdentityProxy, CosineScorer)
    }
}

impl<I: NeighborIndex, P: ProxyGenerator, S: EdgeScorer> Engine<I, P, S> {
    pub fn with_stages(params: EngineParams, index: I, proxy_gen: P, scorer: S) -> Self {
        Self {
            params,
            index,
            proxy_gen,
            scorer,
            faces: Vec::new(),
            face_ids: Vec::new(),
            by_id: HashMap::new(),
            proxies: Vec::new(),
            identities: Vec::new(),
            n_refreshed: 0,
            n_weak: 0,
            bounded_regroups: 0,
            unannounced: u32::MAX,
            extras: Vec::new(),
            comps: Vec::new(),
            live_comps: 0,
            next_cluster_id: 1,
            next_event_seq: 0,
            mark: Vec::new(),
            stamp: 0,
            track: true,
            changes: ChangeSet::default(),
            dirty_faces: HashSet::new(),
            dirty_comps: HashSet::new(),
            visible: Vec::new(),
        }
    }

    /// Rebuilds an engine from durable state. `index` must already hold the proxies of every
    /// restored face (the caller loads a snapshot and replays the rest).
    pub fn restore(params: EngineParams, index: I, proxy_gen: P, scorer: S, r: Restored) -> Self {
        let mut e = Self::with_stages(params, index, proxy_gen, scorer);
        let n = r.faces.len();
        e.faces = r
            .faces
            .iter()
            .map(|f| Face {
                out: f
                    .out
                    .iter()
                    .map(|&(to, score)| Edge {
                        to,
                        score,
                        kept: true,
                    })
                    .collect(),
                inn: Vec::new(),
                comp: f.comp,
                weak: false,
            })
            .collect();
        for &s in &r.weak {
            e.faces[s as usize].weak = true;
        }
        e.n_weak = r.weak.len();
        for (seq, f) in r.faces.iter().enumerate() {
            for &(to, _) in &f.out {
                // Sequence order makes every in-list sorted without a sort.
                e.faces[to as usize].inn.push(seq as u32);
            }
        }
        if e.flags_needed() {
            for s in 0..n as u32 {
                e.refresh_kept(s);
            }
        }
        e.face_ids = r.face_ids.into_iter().map(String::into_boxed_str).collect();
        e.by_id = e
            .face_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        e.proxies = r.proxies;
        let d = params.dim;
        for (seq, p) in r.refreshed {
            e.proxies[seq as usize * d..(seq as usize + 1) * d].copy_from_slice(&p);
        }
        if params.refresh > 0 {
            e.identities = r.identities;
            e.extras = vec![Vec::new(); n];
            for (seq, v) in r.variants {
                e.extras[seq as usize] = v;
            }
        }
        e.comps = vec![
            CompRecord {
                cluster_id: PENDING,
                size: 0
            };
            r.counters.next_comp as usize
        ];
        for (label, c) in r.comps {
            e.comps[label as usize] = c;
        }
        e.live_comps = e.comps.iter().filter(|c| c.size > 0).count();
        e.next_cluster_id = r.counters.next_cluster_id;
        e.next_event_seq = r.counters.next_event_seq;
        e.mark = vec![0; n];
        e
    }

    /// Stops recording changes (evaluation runs that keep no durable state).
    pub fn set_tracking(&mut self, on: bool) {
        self.track = on;
    }

    pub fn params(&self) -> &EngineParams {
        &self.params
    }

    pub fn index(&self) -> &I {
        &self.index
    }

    /// The index, for the caller's persistence (snapshots) between insertions.
    pub fn index_mut(&mut self) -> &mut I {
        &mut self.index
    }

    pub fn n_faces(&self) -> usize {
        self.faces.len()
    }

    /// Faces held back from bridging because their quality is below `min_quality`.
    pub fn n_weak(&self) -> usize {
        self.n_weak
    }

    /// Changes the cluster rule applied locally because the kept-graph component was over
    /// `EngineParams::support_region` (since this engine was built or restored).
    pub fn bounded_regroups(&self) -> u64 {
        self.bounded_regroups
    }

    /// Whether kept flags are anything but "every edge": with intimacy, or with weak faces.
    fn flags_needed(&self) -> bool {
        self.params.t2 > 0.0 || self.n_weak > 0
    }

    /// Proxies the bounded refresh recomputed and re-linked since this engine was built.
    pub fn n_refreshed(&self) -> u64 {
        self.n_refreshed
    }

    pub fn n_clusters(&self) -> usize {
        self.live_comps
    }

    pub fn counters(&self) -> Counters {
        Counters {
            n_faces: self.faces.len() as u32,
            next_cluster_id: self.next_cluster_id,
            next_event_seq: self.next_event_seq,
            next_comp: self.comps.len() as u32,
        }
    }

    pub fn seq_of(&self, face_id: &str) -> Option<u32> {
        self.by_id.get(face_id).copied()
    }

    pub fn face_id(&self, seq: u32) -> &str {
        &self.face_ids[seq as usize]
    }

    /// Public cluster id of every face, by sequence.
    pub fn assignments(&self) -> Vec<u64> {
        self.faces
            .iter()
            .map(|f| self.comps[f.comp as usize].cluster_id)
            .collect()
    }

    pub fn cluster_of(&self, seq: u32) -> u64 {
        self.comps[self.faces[seq as usize].comp as usize].cluster_id
    }

    /// The out-list of a face as (neighbour seq, score), in rank order.
    pub fn out_list(&self, seq: u32) -> Vec<(u32, f32)> {
        self.faces[seq as usize]
            .out
            .iter()
            .map(|e| (e.to, e.score))
            .collect()
    }

    /// The out-list of a face as (neighbour seq, score, kept), in rank order.
    pub fn out_edges(&self, seq: u32) -> Vec<(u32, f32, bool)> {
        self.faces[seq as usize]
            .out
            .iter()
            .map(|e| (e.to, e.score, e.kept))
            .collect()
    }

    /// Whether a face is weak (quality below `min_quality`).
    pub fn is_weak(&self, seq: u32) -> bool {
        self.faces[seq as usize].weak
    }

    /// The kept undirected edges, each once as (smaller seq, larger seq), sorted.
    pub fn kept_edges(&self) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self
            .faces
            .iter()
            .enumerate()
            .flat_map(|(s, f)| {
                f.out
                    .iter()
                    .filter(|e| e.kept)
                    .map(move |e| pair(s as u32, e.to))
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn proxy(&self, seq: u32) -> &[f32] {
        let d = self.params.dim;
        &self.proxies[seq as usize * d..(seq as usize + 1) * d]
    }

    /// Takes the changes recorded since the last call.
    pub fn take_changes(&mut self) -> ChangeSet {
        let mut cs = std::mem::take(&mut self.changes);
        let mut faces: Vec<u32> = self.dirty_faces.drain().collect();
        faces.sort_unstable();
        cs.faces = faces
            .into_iter()
            .map(|s| {
                let f = &self.faces[s as usize];
                (
                    s,
                    FaceRecord {
                        comp: f.comp,
                        out: f.out.iter().map(|e| (e.to, e.score)).collect(),
                    },
                )
            })
            .collect();
        let mut comps: Vec<u32> = self.dirty_comps.drain().collect();
        comps.sort_unstable();
        cs.comps = comps
            .into_iter()
            .map(|l| {
                let c = self.comps[l as usize];
                (l, (c.size > 0).then_some(c))
            })
            .collect();
        cs.counters = self.counters();
        cs
    }

    fn emit(&mut self, cause: u32, event: Event) -> Event {
        let seq = self.next_event_seq;
        self.next_event_seq += 1;
        if self.track {
            self.changes.events.push((seq, cause, event.clone()));
        }
        event
    }

    fn touch_face(&mut self, s: u32) {
        if self.track {
            self.dirty_faces.insert(s);
        }
    }

    fn touch_comp(&mut self, l: u32) {
        if self.track {
            self.dirty_comps.insert(l);
        }
    }

    /// Inserts one face. On error nothing changed. The events this insertion caused are returned
    /// (and recorded in the change set).
    pub fn insert(
        &mut self,
        face_id: &str,
        vector: &[f32],
    ) -> Result<(Outcome, Vec<Event>), EngineError> {
        self.insert_with(face_id, vector, &FaceMeta::default())
    }

    /// As `insert`, with the face's origin carried into its assignment event.
    pub fn insert_with(
        &mut self,
        face_id: &str,
        vector: &[f32],
        meta: &FaceMeta,
    ) -> Result<(Outcome, Vec<Event>), EngineError> {
        self.insert_full(face_id, vector, &[], meta)
    }

    /// As `insert_with`, with hallucinated variants of the face made upstream (`extra`: whole
    /// vectors of `dim` values, row after row; see `ProxyGenerator::proxy_with`).
    pub fn insert_full(
        &mut self,
        face_id: &str,
        vector: &[f32],
        extra: &[f32],
        meta: &FaceMeta,
    ) -> Result<(Outcome, Vec<Event>), EngineError> {
        let identity = check_face(face_id, vector, extra, self.params.dim)?;
        if let Some(&seq) = self.by_id.get(face_id) {
            return Ok((Outcome::Duplicate { seq }, Vec::new()));
        }
        if self.faces.len() >= u32::MAX as usize - 1 {
            return Err(EngineError::Full(self.faces.len()));
        }
        let seq = self.faces.len() as u32;
        let p = self.params;
        let weak = meta.quality.is_some_and(|q| q < p.min_quality);

        // A generator that looks at the neighbourhood sees the identity vector's neighbours; the
        // proxy is then inserted, and its own neighbours come from the insertion's traversal.
        let generated = if self.proxy_gen.needs_neighbors() {
            let around = self.index.search(&identity, p.search_k);
            let dim = p.dim;
            let proxies = &self.proxies;
            let proxy_of = |s: u32| proxies[s as usize * dim..(s as usize + 1) * dim].to_vec();
            self.proxy_gen
                .proxy_with(&identity, extra, &around, &proxy_of)
        } else {
            None
        };
        let proxy: Vec<f32> = generated.clone().unwrap_or_else(|| identity.clone());
        // From here on nothing can fail: the face enters the index now.
        let cands = self.index.insert_and_search(seq, &proxy, p.search_k);

        // Candidate edges above t1, ranked.
        let mut scored: Vec<Edge> = cands
            .iter()
            .map(|n| {
                let other = self.proxy(n.seq);
                // With refresh, a face's proxy may have moved from the vector it was indexed
                // with: score on the current proxy.
                let cosine = if p.refresh > 0 {
                    dot(&proxy, other)
                } else {
                    n.similarity
                };
                Edge {
                    to: n.seq,
                    score: self.scorer.score(cosine, &proxy, other),
                    kept: true,
                }
            })
            .filter(|e| e.score > p.t1)
            .collect();
        scored.sort_by(edge_rank);
        let own_out: Vec<Edge> = scored.iter().take(p.k).copied().collect();

        // Reverse re-linking: every candidate whose list the new face improves adopts it.
        // (adopter, evicted)
        let mut adopters: Vec<(u32, Option<u32>)> = Vec::new();
        for e in &scored {
            let f = &self.faces[e.to as usize];
            let me = Edge {
                to: seq,
                score: e.score,
                kept: true,
            };
            if f.out.len() < p.k {
                adopters.push((e.to, None));
            } else if let Some(w) = f.out.last() {
                if edge_rank(&me, w) == std::cmp::Ordering::Less {
                    adopters.push((e.to, Some(w.to)));
                }
            }
        }

        // Faces whose out-list changes, and the sources whose kept flags may change.
        let sources = self.sources_of(adopters.iter().map(|a| a.0).collect());
        // Undirected status before the change, for every pair an out-edge of a source touches.
        let before = self.kept_pairs(&sources);

        // Apply the list changes.
        self.proxies.extend_from_slice(&proxy);
        if p.refresh > 0 {
            self.identities.extend_from_slice(&identity);
            self.extras.push(extra.to_vec());
        }
        let comp = self.comps.len() as u32;
        self.comps.push(CompRecord {
            cluster_id: PENDING,
            size: 1,
        });
        self.live_comps += 1;
        self.touch_comp(comp);
        self.faces.push(Face {
            out: own_out.clone(),
            inn: Vec::new(),
            comp,
            weak,
        });
        self.n_weak += usize::from(weak);
        self.mark.push(0);
        let boxed: Box<str> = face_id.into();
        self.face_ids.push(boxed.clone());
        self.by_id.insert(boxed, seq);
        for e in &own_out {
            let inn = &mut self.faces[e.to as usize].inn;
            let pos = inn.binary_search(&seq).unwrap_or_else(|x| x);
            inn.insert(pos, seq);
        }
        for &(j, evicted) in &adopters {
            let score = scored
                .iter()
                .find(|e| e.to == j)
                .map(|e| e.score)
                .unwrap_or(0.0);
            self.adopt(j, seq, score, evicted);
        }
        self.touch_face(seq);
        if self.flags_needed() {
            // The new face's in-list now holds its adopters; their in-neighbours are sources too.
            let mut all = sources.clone();
            all.push(seq);
            for &s in &all {
                self.refresh_kept(s);
            }
        }

        // Undirected status after, and the diff applied to the components.
        let mut sources_after = sources.clone();
        sources_after.push(seq);
        let mut events = Vec::new();
        self.unannounced = seq;
        self.apply_kept_diff(&before, &sources_after, None, seq, &mut events);
        self.unannounced = u32::MAX;

        let comp = self.faces[seq as usize].comp;
        if self.comps[comp as usize].cluster_id == PENDING {
            let id = self.next_cluster_id;
            self.next_cluster_id += 1;
            self.comps[comp as usize].cluster_id = id;
            self.touch_comp(comp);
            events.push(self.emit(
                seq,
                Event::ClusterCreated {
                    cluster_id: id,
                    face_id: face_id.to_string(),
                },
            ));
        }
        let best = self.faces[seq as usize]
            .out
            .iter()
            .filter(|e| e.kept)
            .map(|e| e.score)
            .chain(
                self.faces[seq as usize]
                    .inn
                    .iter()
                    .filter(|&&j| self.directed_kept(j, seq))
                    .filter_map(|&j| {
                        self.faces[j as usize]
                            .out
                            .iter()
                            .find(|e| e.to == seq)
                            .map(|e| e.score)
                    }),
            )
            .fold(0.0f32, f32::max);
        let cluster_id = self.comps[comp as usize].cluster_id;
        events.push(self.emit(
            seq,
            Event::FaceAssigned {
                face_id: face_id.to_string(),
                cluster_id,
                score: best,
                source_id: meta.source_id.clone(),
                image_id: meta.image_id.clone(),
                ts: meta.ts,
                quality: meta.quality,
                low_quality: weak,
            },
        ));
        if self.track {
            self.changes.new_faces.push(NewFace {
                seq,
                face_id: face_id.to_string(),
                proxy,
                identity: generated.map(|_| identity),
                variants: extra.to_vec(),
                weak,
            });
        }
        self.refresh_around(seq, &cands, &mut events);
        Ok((Outcome::Applied { seq }, events))
    }

    fn directed_kept(&self, a: u32, b: u32) -> bool {
        self.faces[a as usize]
            .out
            .iter()
            .any(|e| e.to == b && e.kept)
    }

    fn undirected_kept(&self, a: u32, b: u32) -> bool {
        self.directed_kept(a, b) || self.directed_kept(b, a)
    }

    /// Recomputes the kept flags of `s`'s out-edges.
    /// - Intimacy (t2 > 0). With self-loops, E' = E + I: common(i,j) = |({i} + out(i)) & ({j} +
    ///   in(j))|, deg(x) = |out(x)| + 1, and i->j passes when max(common/deg(i), common/deg(j)) > t2.
    /// - Weak faces: no edge to a weak face is kept, and a weak face keeps only its first edge to
    ///   a face that is not weak, so it hangs on one cluster and never joins two. (Letting weak
    ///   faces also link to each other by their best edge cost more than it gained: BENCHMARKS.md,
    ///   QUALITY.)
    fn refresh_kept(&mut self, s: u32) {
        let t2 = self.params.t2;
        let sure = self.weak_threshold();
        let n_out = self.faces[s as usize].out.len();
        let weak_s = self.faces[s as usize].weak;
        let mut anchored = false;
        for idx in 0..n_out {
            let j = self.faces[s as usize].out[idx].to;
            let fj = &self.faces[j as usize];
            let certain = self.faces[s as usize].out[idx].score > sure;
            if !certain && (fj.weak || (weak_s && anchored)) {
                self.faces[s as usize].out[idx].kept = false;
                continue;
            }
            if !fj.weak {
                anchored = true;
            }
            if t2 <= 0.0 {
                self.faces[s as usize].out[idx].kept = true;
                continue;
            }
            let fs = &self.faces[s as usize];
            // s itself is in {j}+in(j) because s->j; j is in {s}+out(s) and in {j}.
            let mut common = 2usize;
            for e in &fs.out {
                if e.to != j && fj.inn.binary_search(&e.to).is_ok() {
                    common += 1;
                }
            }
            let deg_s = (fs.out.len() + 1) as f32;
            let deg_j = (fj.out.len() + 1) as f32;
            let c = common as f32;
            let kept = (c / deg_s).max(c / deg_j) > t2;
            self.faces[s as usize].out[idx].kept = kept;
        }
    }

    /// The score above which an edge touching a weak face is kept like any other.
    fn weak_threshold(&self) -> f32 {
        let p = &self.params;
        if p.weak_margin >= 1.0 {
            f32::INFINITY
        } else {
            p.t1 + p.weak_margin * (1.0 - p.t1)
        }
    }

    /// Face `j` takes the edge j -> `to` with `score` into its out-list (rank order), first
    /// dropping its weakest edge, to `evicted`, when the list is full.
    fn adopt(&mut self, j: u32, to: u32, score: f32, evicted: Option<u32>) {
        let me = Edge {
            to,
            score,
            kept: true,
        };
        if let Some(w) = evicted {
            self.faces[j as usize].out.pop();
            let inn = &mut self.faces[w as usize].inn;
            if let Ok(pos) = inn.binary_search(&j) {
                inn.remove(pos);
            }
        }
        let f = &mut self.faces[j as usize];
        let pos = f
            .out
            .binary_search_by(|x| edge_rank(x, &me))
            .unwrap_or_else(|x| x);
        f.out.insert(pos, me);
        let inn = &mut self.faces[to as usize].inn;
        let pos = inn.binary_search(&j).unwrap_or_else(|x| x);
        inn.insert(pos, j);
        self.touch_face(j);
    }

    /// The faces whose kept flags may change when the out-lists of `changed` change: those faces,
    /// and with intimacy (`t2 > 0`) their in-neighbours too; sorted, once each.
    fn sources_of(&self, mut changed: Vec<u32>) -> Vec<u32> {
        if self.params.t2 > 0.0 {
            for i in 0..changed.len() {
                let c = changed[i] as usize;
                changed.extend_from_slice(&self.faces[c].inn);
            }
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// Undirected kept status of every pair an out-edge of a `sources` face touches.
    fn kept_pairs(&self, sources: &[u32]) -> HashMap<(u32, u32), bool> {
        let mut before: HashMap<(u32, u32), bool> = HashMap::new();
        for &s in sources {
            for e in &self.faces[s as usize].out {
                let pr = pair(s, e.to);
                if let std::collections::hash_map::Entry::Vacant(v) = before.entry(pr) {
                    v.insert(self.undirected_kept(s, e.to));
                }
            }
        }
        before
    }

    /// After the out-lists of `sources_after` (sorted; every face whose out-list or kept flags
    /// changed) were rewritten (and, for a refresh, `rescored`'s edges all rescored): the undirected edges that appeared or vanished since `before`
    /// (from `kept_pairs` over the same faces before the change) are applied to the components,
    /// additions first, then removals, a face that bridges two parts being linked before the
    /// eviction that would otherwise split and re-merge them.
    fn apply_kept_diff(
        &mut self,
        before: &HashMap<(u32, u32), bool>,
        sources_after: &[u32],
        rescored: Option<u32>,
        cause: u32,
        events: &mut Vec<Event>,
    ) {
        let in_sources = |x: u32| sources_after.binary_search(&x).is_ok();
        let mut after_pairs: Vec<(u32, u32)> = Vec::new();
        for &s in sources_after {
            for e in &self.faces[s as usize].out {
                after_pairs.push(pair(s, e.to));
            }
        }
        let mut added: Vec<(u32, u32)> = Vec::new();
        let mut removed: Vec<(u32, u32)> = Vec::new();
        for (&pr, &was) in before {
            let now = self.undirected_kept(pr.0, pr.1);
            if was && !now {
                removed.push(pr);
            } else if !was && now {
                added.push(pr);
            }
        }
        after_pairs.sort_unstable();
        after_pairs.dedup();
        for pr in after_pairs {
            if before.contains_key(&pr) {
                continue;
            }
            // A directed edge that is new. Its reverse did not change unless its source is a source.
            let (a, b) = pr;
            let was = (!in_sources(a) && self.directed_kept(a, b))
                || (!in_sources(b) && self.directed_kept(b, a));
            let now = self.undirected_kept(a, b);
            if was && !now {
                removed.push(pr);
            } else if !was && now {
                added.push(pr);
            }
        }
        added.sort_unstable();
        removed.sort_unstable();
        if self.params.support > 0.0 {
            // The rule also reads scores: a face whose edges were rescored is a seed too.
            let mut seeds: Vec<u32> = added
                .iter()
                .chain(&removed)
                .flat_map(|&(a, b)| [a, b])
                .chain(rescored)
                .collect();
            if seeds.is_empty() {
                return;
            }
            seeds.sort_unstable();
            seeds.dedup();
            if self.regroup(&seeds, cause, events) {
                return;
            }
            // The component is over `support_region`: the rule applied locally (support.rs).
            self.bounded_regroups += 1;
            self.regroup_locally(&added, &removed, cause, events);
            return;
        }
        self.visible = removed.clone();
        for &(a, b) in &added {
            self.union(a, b, cause, events);
        }
        for (n, &(a, b)) in removed.iter().enumerate() {
            self.visible = removed[n + 1..].to_vec();
            self.cut(a, b, cause, events);
        }
        self.visible.clear();
    }

    /// Neighbours of `x` in the undirected kept graph as the component structure currently sees it.
    fn adjacent(&self, x: u32, out: &mut Vec<u32>) {
        out.clear();
        let f = &self.faces[x as usize];
        for e in &f.out {
            if e.kept {
                out.push(e.to);
            }
        }
        for &j in &f.inn {
            if self.directed_kept(j, x) {
                out.push(j);
            }
        }
        for &(a, b) in &self.visible {
            if a == x {
                out.push(b);
            } else if b == x {
                out.push(a);
            }
        }
    }

    fn next_stamps(&mut self) -> (u32, u32) {
        if self.stamp >= u32::MAX - 4 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.stamp = 0;
        }
        self.stamp += 2;
        (self.stamp - 1, self.stamp)
    }

    /// Relabels the component holding `start` (label `from`) to `to`, returning how many faces moved.
    fn relabel(&mut self, start: u32, from: u32, to: u32) -> u32 {
        let mut stack = vec![start];
        let mut buf = Vec::new();
        self.faces[start as usize].comp = to;
        let mut n = 0;
        while let Some(x) = stack.pop() {
            n += 1;
            self.touch_face(x);
            self.adjacent(x, &mut buf);
            for &y in &buf {
                if self.faces[y as usize].comp == from {
                    self.faces[y as usize].comp = to;
                    stack.push(y);
                }
            }
        }
        n
    }

    /// Applies an added edge: merges two components, the smaller relabelled, the older id kept.
    fn union(&mut self, a: u32, b: u32, cause: u32, events: &mut Vec<Event>) {
        let (ca, cb) = (self.faces[a as usize].comp, self.faces[b as usize].comp);
        if ca == cb {
            return;
        }
        let (big, small, small_face) =
            if self.comps[ca as usize].size >= self.comps[cb as usize].size {
                (ca, cb, b)
            } else {
                (cb, ca, a)
            };
        // The walk follows the smaller part's label, so it never crosses the new edge.
        let moved = self.relabel(small_face, small, big);
        let (id_big, id_small) = (
            self.comps[big as usize].cluster_id,
            self.comps[small as usize].cluster_id,
        );
        let into = id_big.min(id_small);
        let from = id_big.max(id_small);
        let from_size = if from == id_small {
            self.comps[small as usize].size
        } else {
            self.comps[big as usize].size
        };
        debug_assert_eq!(moved, self.comps[small as usize].size);
        self.comps[big as usize].size += self.comps[small as usize].size;
        self.comps[big as usize].cluster_id = into;
        self.comps[small as usize].size = 0;
        self.live_comps -= 1;
        self.touch_comp(big);
        self.touch_comp(small);
        if from != PENDING {
            events.push(self.emit(
                cause,
                Event::ClustersMerged {
                    into,
                    from,
                    n_faces: from_size as u64,
                },
            ));
        }
    }

    /// Applies a removed edge: decides by an interleaved search from both ends whether the
    /// component fell apart, at a cost bounded by twice the smaller part; the smaller part gets a
    /// new id (on a tie, the part holding the oldest face keeps the id).
    fn cut(&mut self, a: u32, b: u32, cause: u32, events: &mut Vec<Event>) {
        // The search stays inside the edge's cluster (with connected components, its component;
        // with the local support rule, an edge between two clusters splits nothing).
        let label = self.faces[a as usize].comp;
        if self.faces[b as usize].comp != label {
            return;
        }
        let (sa, sb) = self.next_stamps();
        let mut qa = vec![a];
        let mut qb = vec![b];
        let (mut ia, mut ib) = (0usize, 0usize);
        self.mark[a as usize] = sa;
        self.mark[b as usize] = sb;
        let mut buf = Vec::new();
        // One expansion per side per round; stop when the sides meet or one runs dry.
        let exhausted_a = loop {
            if ia == qa.len() {
                break true;
            }
            if ib == qb.len() {
                break false;
            }
            for (q, i, own, other) in [(&mut qa, &mut ia, sa, sb), (&mut qb, &mut ib, sb, sa)] {
                let x = q[*i];
                *i += 1;
                self.adjacent(x, &mut buf);
                for &y in &buf {
                    let m = self.mark[y as usize];
                    if m == other {
                        return; // still connected
                    }
                    if m != own && self.faces[y as usize].comp == label {
                        self.mark[y as usize] = own;
                        q.push(y);
                    }
                }
            }
        };
        // The dry side is complete. Finish the other only as far as needed to compare sizes.
        let (done, rest, mut ir, own_r) = if exhausted_a {
            (qa, qb, ib, sb)
        } else {
            (qb, qa, ia, sa)
        };
        let mut rest = rest;
        while ir < rest.len() && rest.len() <= done.len() {
            let x = rest[ir];
            ir += 1;
            self.adjacent(x, &mut buf);
            for &y in &buf {
                if self.mark[y as usize] != own_r && self.faces[y as usize].comp == label {
                    self.mark[y as usize] = own_r;
                    rest.push(y);
                }
            }
        }
        let rest_complete = ir == rest.len();
        let moved = if rest_complete && rest.len() < done.len() {
            rest
        } else if rest_complete && rest.len() == done.len() {
            let min_done = done.iter().min().copied().unwrap_or(u32::MAX);
            let min_rest = rest.iter().min().copied().unwrap_or(u32::MAX);
            if min_done < min_rest {
                rest
            } else {
                done
            }
        } else {
            done
        };
        let old = self.faces[moved[0] as usize].comp;
        let label = self.comps.len() as u32;
        let from_id = self.comps[old as usize].cluster_id;
        let new_id = self.next_cluster_id;
        self.next_cluster_id += 1;
        self.comps.push(CompRecord {
            cluster_id: new_id,
            size: moved.len() as u32,
        });
        self.live_comps += 1;
        self.comps[old as usize].size -= moved.len() as u32;
        self.touch_comp(old);
        self.touch_comp(label);
        let mut moved = moved;
        moved.sort_unstable();
        for &x in &moved {
            self.faces[x as usize].comp = label;
            self.touch_face(x);
        }
        events.push(self.emit(
            cause,
            Event::ClusterSplit {
                from: from_id,
                into: new_id,
                n_faces: moved.len() as u64,
            },
        ));
        for &x in &moved {
            if x != self.unannounced {
                let face_id = self.face_ids[x as usize].to_string();
                events.push(self.emit(
                    cause,
                    Event::FaceMoved {
                        face_id,
                        from: from_id,
                        to: new_id,
                    },
                ));
            }
        }
    }
}

/// The same graph rules computed at once over a finished set of proxies: out-lists from the index
/// (the face itself excluded), intimacy over the whole graph, then the cluster rule over the kept
/// edges (`support::partition`: connected components, or cluster-level linkage). `weak[i]` marks the weak faces (see `EngineParams::min_quality`; empty = none).
/// Returns one component label per face (labels are the smallest member's sequence).
pub fn batch<I: NeighborIndex>(
    params: &EngineParams,
    proxies: &[f32],
    index: &I,
    weak: &[bool],
) -> Vec<u32> {
    let is_weak = |i: usize| weak.get(i).copied().unwrap_or(false);
    let d = params.dim;
    let n = proxies.len() / d;
    let mut out: Vec<Vec<Edge>> = Vec::with_capacity(n);
    for i in 0..n {
        let v = &proxies[i * d..(i + 1) * d];
        let mut hits: Vec<Neighbor> = index
            .search(v, params.k + 1)
            .into_iter()
            .filter(|h| h.seq as usize != i)
            .collect();
        hits.sort_by(rank);
        let mut edges: Vec<Edge> = hits
            .into_iter()
            .map(|h| Edge {
                to: h.seq,
                score: dot(v, &proxies[h.seq as usize * d..(h.seq as usize + 1) * d]),
                kept: true,
            })
            .filter(|e| e.score > params.t1)
            .collect();
        edges.sort_by(edge_rank);
        edges.truncate(params.k);
        out.push(edges);
    }
    let mut inn: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, l) in out.iter().enumerate() {
        for e in l {
            inn[e.to as usize].push(i as u32);
        }
    }
    let sure = if params.weak_margin >= 1.0 {
        f32::INFINITY
    } else {
        params.t1 + params.weak_margin * (1.0 - params.t1)
    };
    let mut kept: Vec<(u32, u32, f32)> = Vec::new();
    for i in 0..n {
        let mut anchored = false;
        for e in &out[i] {
            let certain = e.score > sure;
            if !certain && (is_weak(e.to as usize) || (is_weak(i) && anchored)) {
                continue;
            }
            if !is_weak(e.to as usize) {
                anchored = true;
            }
            let keep = if params.t2 > 0.0 {
                let j = e.to as usize;
                let common = 2 + out[i]
                    .iter()
                    .filter(|m| m.to != e.to && inn[j].binary_search(&m.to).is_ok())
                    .count();
                let c = common as f32;
                (c / (out[i].len() + 1) as f32).max(c / (out[j].len() + 1) as f32) > params.t2
            } else {
                true
            };
            if keep {
                let (a, b) = pair(i as u32, e.to);
                kept.push((a, b, e.score));
            }
        }
    }
    support::partition(n, kept, params.support)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ExactIndex;

    fn params(dim: usize, k: usize, t1: f32, t2: f32) -> EngineParams {
        EngineParams {
            dim,
            k,
            search_k: 1000,
            t1,
            t2,
            refresh: 0,
            refresh_min_change: 0.0,
            min_quality: 0.0,
            weak_margin: 1.0,
            support: 0.0,
            support_region: 0,
        }
    }

    #[test]
    fn bad_vectors_are_refused_and_change_nothing() {
        let mut e = Engine::new(params(3, 2, 0.5, 0.0), ExactIndex::new(3));
        assert!(matches!(
            e.insert("a", &[1.0, 0.0]),
            Err(EngineError::WrongDimension { .. })
        ));
        assert!(matches!(
            e.insert("a", &[f32::NAN, 0.0, 0.0]),
            Err(EngineError::NotFinite { position: 0, .. })
        ));
        assert!(matches!(
            e.insert("a", &[0.0, 0.0, 0.0]),
            Err(EngineError::ZeroVector { .. })
        ));
        assert!(matches!(
            e.insert("", &[1.0, 0.0, 0.0]),
            Err(EngineError::EmptyId { .. })
        ));
        let meta = FaceMeta::default();
        for extra in [&[1.0f32, 0.0][..], &[1.0, f32::INFINITY, 0.0][..]] {
            assert!(matches!(
                e.insert_full("a", &[1.0, 0.0, 0.0], extra, &meta),
                Err(EngineError::BadVariants { .. })
            ));
        }
        assert_eq!(e.n_faces(), 0);
        assert!(e.take_changes().is_empty());
    }

    #[test]
    fn merge_keeps_older_id_and_duplicate_is_a_no_op() {
        let mut e = Engine::new(params(2, 2, 0.6, 0.0), ExactIndex::new(2));
        let (_, ev) = e.insert("a", &[1.0, 0.0]).unwrap();
        assert!(matches!(ev[0], Event::ClusterCreated { cluster_id: 1, .. }));
        e.insert("b", &[0.0, 1.0]).unwrap();
        assert_eq!(e.cluster_of(1), 2);
        // c is within t1 of both a and b: cluster 2 merges into the older cluster 1.
        let (_, ev) = e.insert("c", &[1.0, 1.0]).unwrap();
        assert_eq!(
            ev,
            vec![
                Event::ClustersMerged {
                    into: 1,
                    from: 2,
                    n_faces: 1
                },
                Event::FaceAssigned {
                    face_id: "c".into(),
                    cluster_id: 1,
                    score: 0.70710677,
                    source_id: None,
                    image_id: None,
                    ts: None,
                    quality: None,
                    low_quality: false,
                }
            ]
        );
        let (o, ev) = e.insert("c", &[1.0, 0.0]).unwrap();
        assert_eq!(o, Outcome::Duplicate { seq: 2 });
        assert!(ev.is_empty());
        assert_eq!(e.assignments(), vec![1, 1, 1]);
    }

    #[test]
    fn a_weak_face_joins_one_cluster_and_never_bridges_two() {
        let v = |deg: f32| {
            let r = deg.to_radians();
            [r.cos(), r.sin()]
        };
        let mut p = params(2, 4, 0.95, 0.0);
        p.min_quality = 0.5;
        let meta = |q: f32| FaceMeta {
            quality: Some(q),
            ..Default::default()
        };
        // Two clusters 28 degrees apart (cos 0.9994 inside each, at most 0.883 between them).
        let mut weak = Engine::new(p, ExactIndex::new(2));
        let mut good = Engine::new(p, ExactIndex::new(2));
        for (id, deg) in [("a", 0.0), ("b", 2.0), ("c", 30.0), ("d", 32.0)] {
            for e in [&mut weak, &mut good] {
                e.insert_with(id, &v(deg), &meta(0.9)).unwrap();
            }
        }
        assert_eq!(weak.n_clusters(), 2);
        // x sits between them, close to both: as a good face it merges them; as a weak one it
        // hangs on its best neighbour's cluster only.
        let (_, ev) = good.insert_with("x", &v(16.0), &meta(0.9)).unwrap();
        assert!(ev.iter().any(|e| matches!(e, Event::ClustersMerged { .. })));
        assert_eq!(good.n_clusters(), 1);
        let (_, ev) = weak.insert_with("x", &v(17.0), &meta(0.2)).unwrap();
        assert!(!ev.iter().any(|e| matches!(e, Event::ClustersMerged { .. })));
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::FaceAssigned {
                low_quality: true,
                quality: Some(q),
                ..
            } if *q == 0.2
        )));
        assert_eq!(weak.n_clusters(), 2);
        assert_eq!(weak.n_weak(), 1);
        // Its best neighbour is c (13 degrees away, b 15): x joins c's cluster.
        assert_eq!(weak.cluster_of(4), weak.cluster_of(2));
        // A second weak face right next to x does not link to it (weak to weak), but to its
        // first neighbour that is not weak.
        weak.insert_with("y", &v(17.5), &meta(0.1)).unwrap();
        assert!(!weak.kept_edges().contains(&(4, 5)));
        assert_eq!(weak.n_clusters(), 2);
        assert_eq!(weak.cluster_of(5), weak.cluster_of(2));
    }

    #[test]
    fn eviction_splits_and_the_larger_part_keeps_the_id() {
        // k = 1: each face links only to its best neighbour.
        let mut e = Engine::new(params(2, 1, 0.5, 0.0), ExactIndex::new(2));
        let v = |deg: f32| {
            let r = deg.to_radians();
            [r.cos(), r.sin()]
        };
        e.insert("a", &v(0.0)).unwrap();
        e.insert("b", &v(40.0)).unwrap(); // a-b
        assert_eq!(e.n_clusters(), 1);
        e.insert("c", &v(45.0)).unwrap(); // b-c mutual; a->b stays: one cluster
        assert_eq!(e.n_clusters(), 1);
        // d at 1 degree: a adopts d, evicting b; b's list holds c. {a,d} splits from {b,c}.
        let (_, ev) = e.insert("d", &v(1.0)).unwrap();
        assert!(
            ev.iter().any(|x| matches!(x, Event::ClusterSplit { .. })),
            "{ev:?}"
        );
        assert_eq!(e.n_clusters(), 2);
        let a = e.assignments();
        assert_eq!(a[0], a[3]);
        assert_eq!(a[1], a[2]);
        assert_ne!(a[0], a[1]);
    }
}
