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

pub use many::InsertResult;

use serde::{Deserialize, Serialize};

use crate::index::{dot, rank, Neighbor, NeighborIndex};

/// The engine's own hash maps and sets: foldhash with a fixed seed instead of SipHash (their keys
/// are the engine's numbers, never a client's bytes; no iteration order reaches a decision).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

mod components;
mod erase;
pub mod feedback;
mod ids;
mod insert;
mod many;
pub mod recluster;
mod refresh;
mod retune;
mod rule;
mod state;
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
    /// Faces of one photo (the same `FaceMeta::image_id`) are never one person: a cannot-link
    /// between every two of them.
    pub same_image_cannot_link: bool,
}

/// Turns a face's identity vector into the proxy that is indexed and linked (METHOD.md (c) 3).
pub trait ProxyGenerator {
    /// Whether `proxy` looks at anything; when false the proxy is the identity vector and the
    /// engine saves a search.
    fn needs_neighbors(&self) -> bool {
        true
    }
    /// `extra` holds hallucinated variants of the face made upstream (e.g. from its CLIP
    /// embedding), whole vectors of the identity's dimension row after row, empty when none; a
    /// generator that has no use for them ignores them. `neighbors` are the nearest indexed
    /// proxies of the identity vector; `proxy_of` reads a stored proxy. Returns `None` when the
    /// proxy is the identity vector itself.
    fn proxy(
        &self,
        identity: &[f32],
        extra: &[f32],
        neighbors: &[Neighbor],
        proxy_of: &dyn Fn(u32) -> Vec<f32>,
    ) -> Option<Vec<f32>>;
}

/// The proxy is the identity vector (the untrained, hallucination-free default).
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityProxy;

impl ProxyGenerator for IdentityProxy {
    fn needs_neighbors(&self) -> bool {
        false
    }
    fn proxy(
        &self,
        _: &[f32],
        _: &[f32],
        _: &[Neighbor],
        _: &dyn Fn(u32) -> Vec<f32>,
    ) -> Option<Vec<f32>> {
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

/// One face as it travels the data path: decoded from its message (or embedded from its image),
/// waiting for the calibration, applied. The one face type from the decode stage to the engine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Face {
    pub face_id: String,
    /// The identity vector as received or embedded (not normalized: the engine normalizes).
    pub vector: Vec<f32>,
    /// Hallucinated variants made upstream: whole vectors of `model.dim`, row after row; empty
    /// when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<f32>,
    #[serde(default)]
    pub meta: FaceMeta,
    /// A small JPEG of the face for people to look at (`api.keep_thumbnails`), made by the
    /// embedder or sent by the producer; stored beside the face, never read by the engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "base64_bytes")]
    pub thumbnail: Vec<u8>,
}

/// Bytes as one base64 string in JSON (a waiting face's thumbnail), not an array of numbers.
mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// A face as the engine takes it, borrowed (`Face::view`).
#[derive(Debug, Clone, Copy)]
pub struct FaceRef<'a> {
    pub face_id: &'a str,
    pub vector: &'a [f32],
    pub variants: &'a [f32],
    pub meta: &'a FaceMeta,
}

/// No origin known.
pub const NO_META: FaceMeta = FaceMeta {
    source_id: None,
    image_id: None,
    ts: None,
    quality: None,
    face_box: None,
    located: None,
    thumbnail_url: None,
};

impl Face {
    /// The borrowed form `Engine::insert_face` takes.
    pub fn view(&self) -> FaceRef<'_> {
        FaceRef {
            face_id: &self.face_id,
            vector: &self.vector,
            variants: &self.variants,
            meta: &self.meta,
        }
    }

    /// A face with no upstream variants and no origin.
    pub fn new(face_id: impl Into<String>, vector: Vec<f32>) -> Self {
        Face {
            face_id: face_id.into(),
            vector,
            ..Default::default()
        }
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
    /// The face's box in its image, `[left, top, right, bottom]` inclusive pixels, when the
    /// embedder located it (`embed.locate = "detect"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_box: Option<[i64; 4]>,
    /// How the embedder located it: `detected`, or embedded from the fixed box after `no_face`
    /// / `face_uncertain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub located: Option<String>,
    /// Where a picture of the face is (an http(s) URL or a path on the API's host), sent by a
    /// producer of embeddings that keeps its own crops; the review page shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
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
        /// Where the embedder found the face in its image (`embed.locate = "detect"`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        face_box: Option<[i64; 4]>,
        /// How it was located: detected, or the fixed box after no_face / face_uncertain.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        located: Option<String>,
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
    /// An operator named a cluster, or cleared its name (`name` null); `previous` is the name it
    /// had. A name follows its cluster's id through merges and splits.
    ClusterNamed {
        cluster_id: u64,
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
    },
    /// An operator's feedback command (`feedback::Op`) was applied; the merges, splits and moves
    /// it caused come before it. `clusters`: the clusters its faces are in afterwards.
    FeedbackApplied {
        command_id: String,
        op: String,
        clusters: Vec<u64>,
    },
    /// A face was forgotten (an operator's erasure of it, its person or its source, or
    /// retention): its vector and origin are gone and its id is refused from now on. The splits
    /// and moves its absence caused come before it. `cluster_deleted`: it was its cluster's
    /// last face (the cluster and its name are gone).
    FaceErased {
        face_id: String,
        cluster_id: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cluster_deleted: bool,
        /// Why: `face`, `cluster`, `source` or `retention`.
        reason: String,
    },
    /// The state was rebuilt under a new configuration (`clip-cluster recluster`) from the
    /// state `from_state`, or a stream's calibrated threshold rose (`from_state` = "calibration:
    /// t1 <t1> at <n> faces", `Engine::raise_threshold`); the `FaceMoved` and `ClusterNamed`
    /// events before it take every face from its old cluster to its new one. Counts: live faces, clusters before and after, new
    /// clusters that kept an old id or got a fresh one, old ids no cluster kept, faces moved.
    Reclustered {
        from_state: String,
        faces: u64,
        clusters_before: u64,
        clusters_after: u64,
        kept_ids: u64,
        new_ids: u64,
        retired_ids: u64,
        moved: u64,
    },
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

/// One entry of an out-list: the face it points to and whether the edge passed the intimacy
/// refinement (always true when `t2 = 0`) share one `u32` (the top bit is the flag), so an edge
/// is 8 bytes, not 12 (a full out-list of 8 takes 64 bytes: BENCHMARKS.md section 15). Faces are
/// numbered below 2^31 (the HNSW holds at most 2^28 points per layer).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Edge {
    to_kept: u32,
    score: f32,
}

const KEPT_BIT: u32 = 1 << 31;

impl Edge {
    /// A new edge, kept until the refinement says otherwise (`set_kept`).
    fn new(to: u32, score: f32) -> Self {
        debug_assert!(to < KEPT_BIT, "face sequence numbers stay below 2^31");
        Edge {
            to_kept: to | KEPT_BIT,
            score,
        }
    }

    fn to(&self) -> u32 {
        self.to_kept & !KEPT_BIT
    }

    fn kept(&self) -> bool {
        self.to_kept & KEPT_BIT != 0
    }

    fn set_kept(&mut self, kept: bool) {
        self.to_kept = self.to() | if kept { KEPT_BIT } else { 0 };
    }
}

/// Makes room for one more item in a neighbour list: by half again (at least 4), never past `max`
/// (an out-list holds at most `k`). The lists are many and small (a million faces hold two each),
/// so doubling's slack was a tenth of the memory per face (BENCHMARKS.md section 15).
fn room_for_one<T>(v: &mut Vec<T>, max: usize) {
    if v.len() == v.capacity() {
        let want = (v.capacity() + v.capacity() / 2)
            .max(4)
            .min(max)
            .max(v.len() + 1);
        v.reserve_exact(want - v.len());
    }
}

/// Adds face `x` to an in-list, kept sorted.
fn add_in(inn: &mut Vec<u32>, x: u32) {
    let pos = inn.binary_search(&x).unwrap_or_else(|p| p);
    room_for_one(inn, usize::MAX);
    inn.insert(pos, x);
}

/// Adds `e` to an out-list that holds fewer than `k` edges, kept in `edge_rank` order.
fn add_out(out: &mut Vec<Edge>, e: Edge, k: usize) {
    let pos = out
        .binary_search_by(|x| edge_rank(x, &e))
        .unwrap_or_else(|p| p);
    room_for_one(out, k);
    out.insert(pos, e);
}

fn edge_rank(a: &Edge, b: &Edge) -> std::cmp::Ordering {
    b.score
        .total_cmp(&a.score)
        .then_with(|| a.to().cmp(&b.to()))
}

#[derive(Debug, Clone, Default)]
struct Node {
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

/// Which records a change set carries beside its own changes: the faces and component labels
/// in these ranges (the store's sweep, `store::records`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sweep {
    pub faces: std::ops::Range<u32>,
    pub comps: std::ops::Range<u32>,
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
    /// Its origin (source, image, time, quality, box), stored with it when any is known: the
    /// faces of one image are found by it.
    pub meta: Option<FaceMeta>,
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
    /// Cluster names set or cleared (`None`), latest value per cluster id.
    pub names: Vec<(u64, Option<String>)>,
    /// Feedback commands applied or changed (an undo marks its target), latest per command.
    pub commands: Vec<feedback::CommandRecord>,
    /// Faces erased: their records go, a tombstone stays.
    pub erased: Vec<ErasedFace>,
    /// The current records of the faces and components a sweep asked for
    /// (`Engine::take_changes_swept`), whether or not they changed.
    pub swept_faces: Vec<(u32, FaceRecord)>,
    pub swept_comps: Vec<(u32, Option<CompRecord>)>,
    /// Ids an earlier state erased, held as tombstones from the start (`recluster`): (seq, id).
    pub tombstones: Vec<(u32, String)>,
    pub counters: Counters,
}

/// A face the engine erased, as the store forgets it.
#[derive(Debug, Clone, PartialEq)]
pub struct ErasedFace {
    pub seq: u32,
    pub face_id: String,
    /// The vector the index still holds as a tombstone until it is compacted (kept by the store
    /// only so that an index rebuilt after a crash is the same structure).
    pub indexed: Vec<f32>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.new_faces.is_empty()
            && self.events.is_empty()
            && self.commands.is_empty()
            && self.erased.is_empty()
            && self.tombstones.is_empty()
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
    /// Image id of each face that had one (the faces of one photo are kept apart).
    pub images: Vec<(u32, String)>,
    /// Cluster names by cluster id.
    pub names: Vec<(u64, String)>,
    /// Every feedback command applied, in order (undone ones marked).
    pub commands: Vec<feedback::CommandRecord>,
    /// Faces erased (sorted): their rows in `proxies` and `identities` are zeros.
    pub erased: Vec<u32>,
    pub counters: Counters,
}

/// The engine. `I` is the index, `P` the proxy generator, `S` the edge scorer.
pub struct Engine<I: NeighborIndex, P: ProxyGenerator = IdentityProxy, S: EdgeScorer = CosineScorer>
{
    params: EngineParams,
    /// Out of the engine only while `insert_many`'s index stage holds it (`idx`, `idx_mut`).
    index: Option<I>,
    proxy_gen: P,
    scorer: S,
    faces: Vec<Node>,
    face_ids: ids::FaceIds,
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
    dirty_faces: FastSet<u32>,
    dirty_comps: FastSet<u32>,
    /// Removed edges not yet applied to the component structure while one insertion is
    /// processed: walks still see them, so every walk sees the structure the labels describe.
    /// (Additions need no such care: walks that relabel follow labels, not just edges.)
    visible: Vec<(u32, u32)>,
    /// During an erasure: the erased face's old label and the faces next to it, whose cluster
    /// the edge-by-edge rules split into its connected parts before any other change
    /// (`erase::split_apart`); the region rule needs no such help.
    pre_split: Option<(u32, Vec<u32>)>,
    /// Operator feedback and the photo rule, honoured by every re-link (`feedback`).
    rules: feedback::Constraints,
    /// Faces erased: no edges, no cluster, their id refused.
    erased: crate::index::Tombstones,
    /// The thread of `insert_many`'s index halves, started by its first run.
    index_thread: Option<many::IndexThread<I, P, S>>,
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

/// Checks a face as `Engine::insert_face` takes it (id, vector, upstream variants) and returns
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

/// The same graph rules computed at once over a finished set of proxies: out-lists from the index
/// (the face itself excluded), intimacy over the whole graph, then the cluster rule over the kept
/// edges (`rule::partition`: connected components, or cluster-level linkage). `weak[i]` marks the weak faces (see `EngineParams::min_quality`; empty = none).
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
            .map(|h| {
                let score = dot(v, &proxies[h.seq as usize * d..(h.seq as usize + 1) * d]);
                Edge::new(h.seq, score)
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
            inn[e.to() as usize].push(i as u32);
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
            if !certain && (is_weak(e.to() as usize) || (is_weak(i) && anchored)) {
                continue;
            }
            if !is_weak(e.to() as usize) {
                anchored = true;
            }
            let keep = if params.t2 > 0.0 {
                let j = e.to() as usize;
                let common = 2 + out[i]
                    .iter()
                    .filter(|m| m.to() != e.to() && inn[j].binary_search(&m.to()).is_ok())
                    .count();
                let c = common as f32;
                (c / (out[i].len() + 1) as f32).max(c / (out[j].len() + 1) as f32) > params.t2
            } else {
                true
            };
            if keep {
                let (a, b) = pair(i as u32, e.to());
                kept.push((a, b, e.score));
            }
        }
    }
    rule::partition(n, kept, params.support)
}
