//! The durable clusterer: the engine over an HNSW index, its sled store and the index snapshots,
//! kept consistent with each other. Write-ahead order per batch: engine (memory) -> store commit
//! (fsync) -> only then may the caller acknowledge; index snapshots follow the store and are only
//! ever a cache of it (a missing or damaged snapshot is rebuilt from the store).
//!
//! Snapshots are taken every `snapshot_every_faces`. Each point's HNSW layer is a function of its
//! sequence number (patched hnsw_rs), so a restarted process that loads a dump and replays the
//! newer faces holds exactly the index an uninterrupted run has: restarts change nothing.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::config::Config;
use crate::edge::EdgeModel;
use crate::engine::feedback::{Command, FeedbackError, FeedbackReport};
use crate::engine::{Engine, EngineError, Event, Outcome, ProxyGenerator};
use crate::index::{HnswIndex, NeighborIndex};
use crate::proxy::ProxyModel;
use crate::store::{Fingerprint, SnapshotInfo, Store, StoreError};

mod batch;
mod compact;
mod control;
mod erase;
mod recluster;
pub use control::{parse_request, request_from, request_json, Action, Executed, Request};
pub use erase::{EraseReport, EraseTarget};
pub use recluster::{recluster, ReclusterError, ReclusterReport};

#[derive(Debug, thiserror::Error)]
pub enum ClustererError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("HNSW snapshot: {0}")]
    Index(#[from] crate::index::IndexError),
    /// A trained part's file (proxy directions or attention, edge head).
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error(transparent)]
    Calibration(#[from] crate::engine::calibrate::ReferenceError),
}

/// Result of applying one batch.
#[derive(Debug, Default)]
pub struct BatchResult {
    pub applied: usize,
    pub duplicates: usize,
    /// Faces whose id was erased: refused for good (a tombstone), not counted as duplicates.
    pub erased_redelivered: usize,
    /// (position in the batch, why)
    pub rejected: Vec<(usize, EngineError)>,
    pub events: Vec<Event>,
    /// Proxies of older faces the batch's insertions refreshed (`proxy.refresh_per_insert`).
    pub refreshed: usize,
    /// Faces of the batch that wait for the calibration decision (stored, not yet applied).
    pub waiting: usize,
}

pub struct Clusterer {
    engine: Engine<HnswIndex, ProxyModel, EdgeModel>,
    store: Store,
    index_dir: PathBuf,
    snapshot_every: u32,
    /// What the engine runs with (src/calibrate.rs); `None` while a new state's first faces
    /// wait for the decision.
    decision: Option<crate::engine::calibrate::Decision>,
    /// The faces that wait, in arrival order (stored under `q:`).
    waiting: Vec<crate::engine::Face>,
    calibration: crate::engine::calibrate::CalibrationParams,
    /// The configuration the engine is rebuilt from once the decision is made.
    cfg: Config,
    /// The latest committed events (`RECENT_EVENTS` at most), so that readers who keep a view
    /// of the clusters (the API's listing) follow the changes instead of rebuilding it.
    recent: std::collections::VecDeque<(u64, Event)>,
    /// A compaction under way beside the stream (`compact.rs`).
    rebuild: Option<compact::Rebuild>,
    /// Compactions this process finished.
    compactions: u64,
    /// Seconds this process spent writing the stream's periodic HNSW snapshots (the batch
    /// waits meanwhile; a dump writes every point, so each costs more as the index grows).
    snapshot_seconds: f64,
}

/// How many committed events `Clusterer::events_since` can hand out.
pub const RECENT_EVENTS: usize = 1 << 16;

/// The fingerprint a configuration gives its state.
pub fn fingerprint(cfg: &Config) -> Fingerprint {
    fingerprint_with(cfg, &proxy_id(cfg))
}

fn fingerprint_with(cfg: &Config, proxy: &str) -> Fingerprint {
    let e = &cfg.engine;
    let c = &cfg.calibration;
    let mut graph = format!(
        "k={} search_k={} t1={} t2={} proxy={proxy} score={}",
        e.k,
        e.search_k,
        e.t1,
        e.t2,
        edge_id(cfg)
    );
    // States written before weak faces existed keep their fingerprint.
    if cfg.quality.min_score > 0.0 {
        graph.push_str(&format!(" min_quality={}", cfg.quality.min_score));
        if cfg.quality.weak_margin < 1.0 {
            graph.push_str(&format!(" weak_margin={}", cfg.quality.weak_margin));
        }
    }
    if e.support > 0.0 {
        graph.push_str(&format!(" support={}", e.support));
        if e.support_region > 0 {
            graph.push_str(&format!(" region={}", e.support_region));
        }
    }
    if c.mode != crate::engine::calibrate::CalibrationMode::Trained {
        graph.push_str(&format!(
            " calibration={:?}:{}:z={}:ref={}:cos={}:tol={}",
            c.mode,
            c.warmup,
            c.z,
            file_id(&c.reference_path),
            c.min_centroid_cos,
            c.tolerance
        ));
        // States written before the valley rule keep their fingerprint ("profile").
        if c.threshold == crate::engine::calibrate::ThresholdRule::Valley {
            graph.push_str(&format!(
                ":valley:z_max={}:margin={}:until={}",
                c.z_max, c.valley_margin, c.refit_until
            ));
        }
    }
    Fingerprint {
        model: cfg.model.name.clone(),
        dim: cfg.model.dim,
        graph,
        embedder: cfg.embed.enabled.then(|| embedder_id(cfg)),
    }
}

/// The built-in embedder as it enters the fingerprint: every setting that changes the vectors of
/// an image (network and landmark files by content, chip geometry, passes, flip, dtype).
pub fn embedder_id(cfg: &Config) -> String {
    let e = &cfg.embed;
    let chip = match e.chip {
        crate::config::ChipKind::Centre => format!("centre{}", e.crop_fraction),
        crate::config::ChipKind::Aligned => format!(
            "align5-{}-b{}-p{}-l{}{}",
            file_id(&e.landmarks_path),
            e.box_fraction,
            e.padding,
            e.landmark_passes,
            if e.average_passes { "+passavg" } else { "" }
        ),
    };
    format!(
        "dlib-resnet-{}/{chip}{}/{:?}",
        file_id(&e.model_path),
        if e.flip_average { "+flip" } else { "" },
        e.dtype
    )
}

/// The proxy settings as they enter the fingerprint: "identity", or the neighbour proxy's
/// parameters and the SHA-256 prefix of its directions file.
pub fn proxy_id(cfg: &Config) -> String {
    let x = &cfg.proxy;
    match x.mode {
        crate::config::ProxyMode::Identity => "identity".into(),
        crate::config::ProxyMode::Neighbor => {
            let dirs = file_id(&x.directions_path);
            let base = format!(
                "neighbor(dirs={dirs}:{} s={} T={} ctx={} min={} q={})",
                x.directions,
                x.strength,
                x.temperature,
                x.context_k,
                x.min_neighbors,
                x.with_context
            );
            // States written before trained attention and refresh existed keep their fingerprint.
            let mut id = base;
            if !x.attention_path.as_os_str().is_empty() {
                id.push_str(&format!(" att={}", file_id(&x.attention_path)));
            }
            if x.refresh_per_insert > 0 {
                id.push_str(&format!(
                    " refresh={}:{}",
                    x.refresh_per_insert, x.refresh_min_change
                ));
            }
            id
        }
    }
}

/// A weights file as it enters the fingerprint: "none" (no file), the SHA-256 prefix of its
/// bytes, or "unreadable" (opening the state then fails on loading the file, with its error).
fn file_id(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        return "none".into();
    }
    // Hashed once per process per (path, size, mtime): the network file is 22 MB and a process
    // may open many states.
    type FileKey = (PathBuf, u64, std::time::SystemTime);
    static SEEN: std::sync::Mutex<Vec<(FileKey, String)>> = std::sync::Mutex::new(Vec::new());
    let key = std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((path.to_path_buf(), m.len(), m.modified().ok()?)));
    if let Some(k) = &key {
        if let Some((_, id)) = SEEN.lock().unwrap().iter().find(|(x, _)| x == k) {
            return id.clone();
        }
    }
    use sha2::Digest;
    let id = std::fs::read(path)
        .map(|b| format!("{:x}", sha2::Sha256::digest(&b))[..12].to_string())
        .unwrap_or_else(|_| "unreadable".into());
    if let Some(k) = key {
        SEEN.lock().unwrap().push((k, id.clone()));
    }
    id
}

/// The edge scorer as it enters the fingerprint: "cosine" (the fingerprint of every state written
/// before the edge head existed), or "learned(<SHA-256 prefix of the head>)".
pub fn edge_id(cfg: &Config) -> String {
    match cfg.edge.scorer {
        crate::config::EdgeScorerKind::Cosine => "cosine".into(),
        crate::config::EdgeScorerKind::Learned => {
            format!("learned({})", file_id(&cfg.edge.weights_path))
        }
    }
}

/// The edge scorer `[edge]` describes (the head read and checked here).
pub fn edge_model(cfg: &Config) -> Result<EdgeModel, crate::weights::WeightsError> {
    Ok(match cfg.edge.scorer {
        crate::config::EdgeScorerKind::Cosine => EdgeModel::Cosine,
        crate::config::EdgeScorerKind::Learned => EdgeModel::Learned(crate::edge::EdgeHead::load(
            &cfg.edge.weights_path,
            cfg.model.dim,
        )?),
    })
}

/// The proxy generator `[proxy]` describes (directions read and checked here).
pub fn proxy_model(cfg: &Config) -> Result<ProxyModel, crate::weights::WeightsError> {
    let x = &cfg.proxy;
    Ok(match x.mode {
        crate::config::ProxyMode::Identity => ProxyModel::Identity,
        crate::config::ProxyMode::Neighbor => {
            let directions = if x.directions_path.as_os_str().is_empty() {
                None
            } else {
                let mut d = crate::proxy::Directions::load(&x.directions_path, cfg.model.dim)?;
                if x.directions > 0 && x.directions < d.count() {
                    d.vectors.truncate(x.directions * d.dim);
                    d.sigmas.truncate(x.directions);
                }
                Some(d)
            };
            ProxyModel::Neighbor(crate::proxy::NeighborProxy {
                directions,
                strength: x.strength,
                temperature: x.temperature,
                context_k: x.context_k,
                min_neighbors: x.min_neighbors,
                with_context: x.with_context,
                attention: if x.attention_path.as_os_str().is_empty() {
                    None
                } else {
                    Some(crate::proxy::attention::Attention::load(
                        &x.attention_path,
                        cfg.model.dim,
                    )?)
                },
            })
        }
    })
}

/// What the engine runs with under a calibration decision: the configured parts and
/// `engine.t1` ("trained"), or the identity proxy, the cosine and the calibrated threshold.
pub fn stages_for(
    cfg: &Config,
    decision: &crate::engine::calibrate::Decision,
) -> Result<(crate::engine::EngineParams, ProxyModel, EdgeModel), ClustererError> {
    let mut p = cfg.engine_params();
    Ok(match decision {
        crate::engine::calibrate::Decision::Trained { .. } => {
            (p, proxy_model(cfg)?, edge_model(cfg)?)
        }
        crate::engine::calibrate::Decision::Stream { t1, .. } => {
            p.t1 = *t1;
            p.refresh = 0;
            // Connected components: a threshold read off the stream can leave large components,
            // and the cluster-level rule's cost is the components an insertion touches (45x
            // slower on a synthetic space, BENCHMARKS.md 8b); on the training spaces it gained
            // nothing here (foreign-map train 0.8274 vs 0.8275).
            p.support = 0.0;
            (p, ProxyModel::Identity, EdgeModel::Cosine)
        }
    })
}

fn basename(covers: u32, points: u32) -> String {
    if points == covers {
        format!("hnsw-{covers:010}")
    } else {
        // A compacted index: another name than the dump it replaces.
        format!("hnsw-{covers:010}-{points:010}")
    }
}

impl Clusterer {
    /// Opens the state at `cfg.store.path`, loading the index snapshot or rebuilding it.
    pub fn open(cfg: &Config) -> Result<Self, ClustererError> {
        let path = cfg.store.path.clone();
        let store = Store::open(&path, &fingerprint(cfg), cfg.store.cache_bytes)?;
        let restored = store.load()?;
        let n = restored.faces.len() as u32;
        let calibration = cfg.calibration_params()?;
        let decision = match store.calibration()? {
            Some(d) => Some(d),
            // A state with faces and no decision was written by trained-only versions.
            None if n > 0 || !calibration.needs_warmup() => {
                Some(crate::engine::calibrate::Decision::Trained { seen: None })
            }
            None => None,
        };
        let waiting = if decision.is_none() {
            store.waiting()?
        } else {
            Vec::new()
        };
        match &decision {
            Some(d) => log_decision(d),
            None => info!(
                waiting = waiting.len(),
                warmup = calibration.warmup,
                "calibration: a new state; its first faces wait until there are enough to tell whether the trained parts fit this stream"
            ),
        }
        // Until a decision the engine is built with the configured parts, so their files are
        // read and checked at start-up either way; a stream decision reads them here too.
        let provisional = crate::engine::calibrate::Decision::Trained { seen: None };
        let (params, proxy, scorer) = stages_for(cfg, decision.as_ref().unwrap_or(&provisional))?;
        if matches!(
            decision,
            Some(crate::engine::calibrate::Decision::Stream { .. })
        ) {
            proxy_model(cfg)?;
            edge_model(cfg)?;
        }
        let index_dir = path.join("index");
        let hnsw = cfg.hnsw_params();
        let snapshot_every = cfg.index.snapshot_every_faces;
        let mut from = 0u32;
        let mut index = None;
        if let Some(info) = store.snapshot()? {
            if info.covers > n {
                warn!(covers = info.covers, faces = n, "HNSW snapshot covers faces the store does not hold; rebuilding the index from the store");
            } else {
                let points = info.points.unwrap_or(info.covers) as usize;
                match HnswIndex::load(&index_dir, &info.basename, hnsw, points) {
                    Ok(i) => {
                        info!(covers = info.covers, faces = n, "loaded HNSW snapshot");
                        from = info.covers;
                        index = Some(i);
                    }
                    Err(e) => {
                        warn!(error = %e, "HNSW snapshot unusable; rebuilding the index from the store")
                    }
                }
            }
        } else if n > 0 {
            // Normal below the first snapshot (index.snapshot_every_faces): not a warning.
            info!(
                faces = n,
                "no HNSW snapshot yet; building the index from the store"
            );
        }
        let mut index = index.unwrap_or_else(|| HnswIndex::new(hnsw));
        let d = cfg.model.dim;
        // Erased faces the index still holds: their tombstones' vectors (the rest were compacted
        // away, so an index built from the store skips them as the compacted one did).
        let tombstoned = store.tombstoned()?;
        let replay = proxy.needs_neighbors().then_some(params.search_k);
        for seq in from..n {
            if restored.erased.binary_search(&seq).is_err() {
                let row = seq as usize * d..(seq as usize + 1) * d;
                let (indexed, query) = (&restored.proxies[row.clone()], &restored.identities[row]);
                replay_insert(&mut index, replay, seq, indexed, query);
            } else if let Ok(i) = tombstoned.binary_search_by_key(&seq, |t| t.seq) {
                let t = &tombstoned[i];
                replay_insert(&mut index, replay, seq, &t.indexed, &t.query);
            }
        }
        for t in &tombstoned {
            index.remove(t.seq);
        }
        if n - from >= snapshot_every {
            // A long replay is not repeated at the next start.
            snapshot(&store, &index_dir, &index, n, &[])?;
        }
        let engine = Engine::restore(params, index, proxy, scorer, restored);
        let mut this = Self {
            engine,
            store,
            index_dir,
            snapshot_every,
            decision,
            waiting,
            calibration,
            cfg: cfg.clone(),
            recent: std::collections::VecDeque::new(),
            rebuild: None,
            compactions: 0,
            snapshot_seconds: 0.0,
        };
        // A compaction under way beside the stream, or one that an erasure called for and a
        // crash interrupted.
        this.resume_rebuild()?;
        this.compact_if_due()?;
        Ok(this)
    }

    /// The calibration decision, once made.
    pub fn decision(&self) -> Option<&crate::engine::calibrate::Decision> {
        self.decision.as_ref()
    }

    /// Seconds spent writing the stream's periodic HNSW snapshots since this state opened.
    pub fn snapshot_seconds(&self) -> f64 {
        self.snapshot_seconds
    }

    /// Faces waiting for the calibration decision.
    pub fn n_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn engine_mut(&mut self) -> &mut Engine<HnswIndex, ProxyModel, EdgeModel> {
        &mut self.engine
    }

    pub fn engine(&self) -> &Engine<HnswIndex, ProxyModel, EdgeModel> {
        &self.engine
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes the engine's changes and commits them (fsync) with the warm-up's and `positions`;
    /// their events join the recent ones.
    pub(crate) fn commit_engine(
        &mut self,
        extras: &crate::store::Extras,
        positions: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), ClustererError> {
        let changes = take_changes(&mut self.engine, &self.store);
        self.store.commit_with(&changes, extras, positions)?;
        remember(&mut self.recent, changes.events);
        Ok(())
    }

    /// The committed events from event sequence `from` on, when this process still holds every
    /// one of them (`None`: some are older than the last `RECENT_EVENTS`, or were committed
    /// before this process opened the state).
    pub fn events_since(&self, from: u64) -> Option<impl Iterator<Item = &Event>> {
        let next = self.engine.counters().next_event_seq;
        let first = self.recent.front().map_or(next, |r| r.0);
        if from < first || from > next {
            return None;
        }
        let skip = ((from - first) as usize).min(self.recent.len());
        Some(self.recent.range(skip..).map(|(_, e)| e))
    }
}

/// Takes the engine's changes with the records the store's sweep asks for next
/// (`store::records`): every commit of a state goes through here.
fn take_changes<I, P, S>(engine: &mut Engine<I, P, S>, store: &Store) -> crate::engine::ChangeSet
where
    I: NeighborIndex,
    P: crate::engine::ProxyGenerator,
    S: crate::engine::EdgeScorer,
{
    let c = engine.counters();
    let plan = store.sweep_plan(engine.pending_faces(), c.n_faces, c.next_comp);
    engine.take_changes_swept(&plan)
}

/// Keeps committed events for `Clusterer::events_since`, the last `RECENT_EVENTS`.
fn remember(recent: &mut std::collections::VecDeque<(u64, Event)>, events: Vec<(u64, u32, Event)>) {
    for (seq, _, e) in events {
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back((seq, e));
    }
}

impl Clusterer {
    /// Applies one operator command and makes it durable (one commit, fsync) before it returns:
    /// the constraints, names, the clusters it changed and its events (in the outbox). The
    /// inner error is a refused command (nothing changed); the outer one a store failure.
    pub fn apply_feedback(
        &mut self,
        cmd: &Command,
    ) -> Result<Result<(FeedbackReport, Vec<Event>), FeedbackError>, ClustererError> {
        self.feedback_at(cmd, &[])
    }

    /// As `apply_feedback`, committing `positions` with it (alone when the command is refused
    /// or repeated).
    fn feedback_at(
        &mut self,
        cmd: &Command,
        positions: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Result<(FeedbackReport, Vec<Event>), FeedbackError>, ClustererError> {
        let r = match self.not_ready("commands") {
            Some(e) => Err(e),
            None => self.engine.apply_feedback(cmd),
        };
        if matches!(&r, Ok((report, _)) if !report.duplicate) {
            self.commit_engine(&Default::default(), positions)?;
        } else if !positions.is_empty() {
            self.store.commit_positions(positions)?;
        }
        Ok(r)
    }

    /// The refusal of a state in its calibration warm-up, which takes no `what` yet.
    fn not_ready(&self, what: &str) -> Option<FeedbackError> {
        self.decision.is_none().then(|| {
            FeedbackError::NotReady(format!(
                "the state is in its calibration warm-up ({} of {} faces); {what} are taken once it decides",
                self.waiting.len(),
                self.calibration.warmup
            ))
        })
    }
}

fn log_decision(d: &crate::engine::calibrate::Decision) {
    match d {
        crate::engine::calibrate::Decision::Trained { seen: Some(p) } => info!(
            median = p.median,
            spread = p.spread,
            centroid_cos = p.centroid_cos,
            "calibration: the stream is the trained space; running the configured edge scorer, proxy and engine.t1"
        ),
        crate::engine::calibrate::Decision::Trained { seen: None } => {
            info!("calibration: running the configured edge scorer, proxy and engine.t1")
        }
        crate::engine::calibrate::Decision::Stream {
            t1,
            seen: profile,
            faces,
        } => warn!(
            median = profile.median,
            spread = profile.spread,
            centroid_cos = profile.centroid_cos,
            t1,
            read_at_faces = faces,
            "calibration: the stream is not the space the trained parts were fitted in; running the cosine of the raw vectors with a threshold read off the stream (calibration.threshold; read again as the stream doubles); `clip-cluster calibrate` fits this model from labelled faces"
        ),
    }
}

/// Dumps the index covering `covers` faces, records it (forgetting the tombstone vectors of
/// `dropped`, erased faces a compaction left out, in the same batch), and drops older dumps.
fn snapshot(
    store: &Store,
    dir: &Path,
    index: &HnswIndex,
    covers: u32,
    dropped: &[u32],
) -> Result<(), ClustererError> {
    snapshot_of(store, dir, index, covers, dropped, false)
}

/// Face `seq`'s insertion done again into an index being rebuilt (a restart's replay, the
/// faces after a compaction's swap) as the stream did it: `indexed` is its indexed vector and
/// `query` its identity vector; with `search_k` (the proxy generator looks at neighbours) the
/// insertion starts from the identity vector's search (`NeighborIndex::search_then_insert`),
/// else it is a plain insertion. The same structure as the stream's, point for point.
pub(super) fn replay_insert<I: NeighborIndex>(
    index: &mut I,
    search_k: Option<usize>,
    seq: u32,
    indexed: &[f32],
    query: &[f32],
) {
    match search_k {
        Some(k) => {
            index.search_then_insert(seq, query, k, &mut |_| indexed.to_vec(), 0);
        }
        None => index.insert(seq, indexed),
    }
}

/// As `snapshot`; with `compaction`, the dump of a compaction, which ends any rebuild under way.
fn snapshot_of(
    store: &Store,
    dir: &Path,
    index: &HnswIndex,
    covers: u32,
    dropped: &[u32],
    compaction: bool,
) -> Result<(), ClustererError> {
    let points = index.len() as u32;
    // An empty index has nothing to dump (hnsw_rs cannot): the store rebuilds it, empty.
    let name = if points == 0 {
        store.set_snapshot_compacted(None, dropped, compaction)?;
        String::new()
    } else {
        let name = index.dump(dir, &basename(covers, points))?;
        store.set_snapshot_compacted(
            Some(&SnapshotInfo {
                basename: name.clone(),
                covers,
                points: Some(points),
            }),
            dropped,
            compaction,
        )?;
        name
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.starts_with("hnsw-") && (name.is_empty() || !f.starts_with(&name)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    info!(covers, "HNSW snapshot written");
    Ok(())
}
