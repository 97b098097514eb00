//! The evaluation harness: runs one clustering algorithm over labeled vectors and scores it
//! (pairwise F, BCubed F, NMI as in METHOD.md). Our engine in stream order (`stream`), the same
//! graph rules at once (`batch`), and the peers' algorithms on the same vectors.
//!
//! Inputs are learn-to-cluster files today; a face-image directory (`--faces DIR`, identity = folder
//! name) becomes one more `EvalInput` once the embedder exists, with everything after embedding
//! unchanged.

pub mod baselines;
pub mod dataset;
pub mod features;
pub mod knn;
pub mod lfw;
pub mod metrics;
pub mod photos;
pub mod synth;

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::config::Config;
use crate::engine::{batch, Engine};
use crate::eval::baselines::{chinese_whispers, dbscan, immich, knn_components};
use crate::eval::features::Features;
use crate::eval::metrics::{evaluate, Prf};
use crate::index::{HnswIndex, NeighborIndex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// The engine, one face at a time, as the daemon runs it.
    Stream,
    /// The engine's graph rules computed over all faces at once.
    Batch,
    /// dlib's Chinese whispers.
    ChineseWhispers,
    /// Immich's incremental core-face rule.
    Immich,
    /// PhotoPrism's DBSCAN with centre matching.
    Dbscan,
    /// kNN + threshold + connected components.
    KnnComponents,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Stream => "stream",
            Algorithm::Batch => "batch",
            Algorithm::ChineseWhispers => "chinese-whispers",
            Algorithm::Immich => "immich",
            Algorithm::Dbscan => "dbscan",
            Algorithm::KnnComponents => "knn-components",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// The order of the rows in the file.
    Input,
    /// A seeded random permutation (`--seed`).
    Shuffled,
}

/// Resolved evaluation settings.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub algorithm: Algorithm,
    /// Edge rule as a cosine similarity; `None` = the algorithm's stock value (for `stream` and
    /// `batch`, the configuration's `engine.t1`).
    pub threshold: Option<f32>,
    /// Neighbour count; `None` = the algorithm's stock value (configuration's `engine.k`).
    pub k: Option<usize>,
    pub order: Order,
    pub seed: u64,
    /// Per face (row i = row i of the features), hallucinated variants made upstream, whole
    /// vectors of the features' width; given to the stream's proxy generator.
    pub variants: Option<Features>,
    /// Per face (row i = row i of the features), its quality score (negative = unknown); faces
    /// below `quality.min_score` are weak.
    pub quality: Option<Vec<f32>>,
    /// Where the stream writes its final graph (`eval --graph-out`), if anywhere.
    pub graph_out: Option<std::path::PathBuf>,
}

/// The one JSON object `eval --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub algorithm: &'static str,
    pub n_faces: usize,
    pub n_clusters: usize,
    pub pairwise: Prf,
    pub bcubed: Prf,
    pub nmi: f64,
    /// What the stream ran with: "trained" (the configured parts), or "stream t1=<cosine>"
    /// when the calibration found another space (src/calibrate.rs).
    pub calibration: String,
    /// Stream: insertions whose kept-graph component was over `engine.support_region`, where
    /// the cluster rule ran locally (0 for the other algorithms).
    pub cluster_rule_local: u64,
    pub seconds: f64,
    pub faces_per_second: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Baseline(#[from] crate::eval::baselines::BaselineError),
    #[error("face {row}: {source}")]
    Engine {
        row: usize,
        source: crate::engine::EngineError,
    },
    #[error("the features have {got} dimensions but the configuration says model.dim = {expected}; pass --dim or set model.dim")]
    Dim { got: usize, expected: usize },
    #[error("--threshold {0} is not an edge score in [-1, 1)")]
    Threshold(f32),
    #[error("proxy: {0}")]
    Proxy(String),
    #[error("edge scorer: {0}")]
    Edge(String),
    #[error("hallucinated variants: {rows} rows of {width} values for {faces} faces of {dim}: want one row per face, whole vectors")]
    Variants {
        rows: usize,
        width: usize,
        faces: usize,
        dim: usize,
    },
    #[error("--k {0} must be in 1..=256")]
    K(usize),
    #[error("cannot write the graph to {path}: {source}")]
    GraphOut {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("calibration: {0}")]
    Calibration(#[from] crate::engine::calibrate::ReferenceError),
}

/// `eval --graph-out`: one line per face in stream order, `<row> <label> <weak> <to>:<score>:<kept>...`.
fn write_graph<I: NeighborIndex, P: crate::engine::ProxyGenerator, S: crate::engine::EdgeScorer>(
    e: &Engine<I, P, S>,
    labels: &[i64],
    path: &std::path::Path,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (seq, label) in labels.iter().enumerate().take(e.n_faces()) {
        let seq = seq as u32;
        write!(w, "{seq} {label} {}", u8::from(e.is_weak(seq)))?;
        for (to, score, kept) in e.out_edges(seq) {
            write!(w, " {to}:{score}:{}", u8::from(kept))?;
        }
        writeln!(w)?;
    }
    w.flush()
}

/// The order in which `n` rows arrive: as in the file, or a seeded permutation.
fn stream_order(n: usize, order: Order, seed: u64) -> Vec<usize> {
    let mut o: Vec<usize> = (0..n).collect();
    if order == Order::Shuffled {
        o.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    }
    o
}

/// Clusters `features` with the chosen algorithm and scores the result against `labels`.
pub fn run(
    cfg: &Config,
    features: &Features,
    labels: &[i64],
    s: EvalSettings,
    progress: &dyn Fn(usize, usize),
) -> Result<EvalReport, EvalError> {
    if features.dim != cfg.model.dim {
        return Err(EvalError::Dim {
            got: features.dim,
            expected: cfg.model.dim,
        });
    }
    if let Some(t) = s.threshold {
        if !(t.is_finite() && (-1.0..1.0).contains(&t)) {
            return Err(EvalError::Threshold(t));
        }
    }
    if let Some(k) = s.k {
        if !(1..=256).contains(&k) {
            return Err(EvalError::K(k));
        }
    }
    if let Some(v) = &s.variants {
        if v.n() != features.n() || v.dim % features.dim != 0 {
            return Err(EvalError::Variants {
                rows: v.n(),
                width: v.dim,
                faces: features.n(),
                dim: features.dim,
            });
        }
    }
    let n = features.n();
    let order = stream_order(n, s.order, s.seed);
    let d = features.dim;
    let mut data = Vec::with_capacity(n * d);
    for &i in &order {
        data.extend_from_slice(features.row(i));
    }
    let feats = Features { dim: d, data };
    let labels: Vec<i64> = order.iter().map(|&i| labels[i]).collect();
    let quality: Vec<Option<f32>> = order
        .iter()
        .map(|&i| {
            s.quality
                .as_ref()
                .and_then(|q| q.get(i).copied())
                .filter(|v| *v >= 0.0)
        })
        .collect();

    let start = Instant::now();
    let mut calibration = String::from("trained");
    let mut cluster_rule_local = 0;
    let predicted: Vec<Option<u64>> = match s.algorithm {
        Algorithm::Stream | Algorithm::Batch => {
            // `--threshold` and `--k` over the rules that run (the configured ones, or the
            // calibration's for a stream decision).
            let overridden = |mut p: crate::engine::EngineParams| {
                if let Some(t) = s.threshold {
                    p.t1 = t;
                }
                if let Some(k) = s.k {
                    p.k = k;
                    p.search_k = p.search_k.max(k);
                }
                p
            };
            let p = overridden(cfg.engine_params());
            let mut h = cfg.hnsw_params();
            h.capacity_hint = n;
            if s.algorithm == Algorithm::Stream {
                // As the daemon: the first `warmup` faces decide the space (src/calibrate.rs).
                let c = cfg.calibration_params()?;
                let mut decision = if c.needs_warmup() {
                    let w = c.warmup.min(n);
                    c.decide_rows(&feats.data[..w * d], d)
                } else {
                    crate::engine::calibrate::Decision::Trained { seen: None }
                };
                let (cp, proxy, scorer) = crate::clusterer::stages_for(cfg, &decision)
                    .map_err(|e| EvalError::Proxy(e.to_string()))?;
                let p = overridden(cp);
                if let crate::engine::calibrate::Decision::Stream { seen, .. } = decision {
                    tracing::info!(
                        "calibration: the stream is not the trained space (centroid cosine {:.4}, median {:.4}, spread {:.4}): cosine of the raw vectors, t1 {:.4}",
                        seen.centroid_cos, seen.median, seen.spread, p.t1
                    );
                    calibration = format!("stream t1={:.4}", p.t1);
                }
                let mut e = Engine::with_stages(p, HnswIndex::new(h), proxy, scorer);
                e.set_tracking(false);
                // As the daemon: runs of faces (`Engine::insert_many`, the same result as one at
                // a time), each ending where the stream threshold is read again as the stream
                // doubles (not when `--threshold` pins it).
                let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
                let metas: Vec<crate::engine::FaceMeta> = quality
                    .iter()
                    .map(|&q| crate::engine::FaceMeta {
                        quality: q,
                        ..Default::default()
                    })
                    .collect();
                let faces: Vec<crate::engine::FaceRef> = order
                    .iter()
                    .enumerate()
                    .map(|(i, &row)| crate::engine::FaceRef {
                        face_id: &ids[i],
                        vector: feats.row(i),
                        variants: s.variants.as_ref().map_or(&[][..], |v| v.row(row)),
                        meta: &metas[i],
                    })
                    .collect();
                let mut at = 0;
                while at < n {
                    let refits = s.threshold.is_none()
                        && matches!(decision, crate::engine::calibrate::Decision::Stream { .. });
                    let stop = |k: usize| refits && c.refits_at(k);
                    let (consumed, results) =
                        e.insert_many(&faces[at..], &stop, &mut |_, so_far| {
                            let done = at + so_far.len();
                            if done % 1000 == 0 || done == n {
                                progress(done, n);
                            }
                        });
                    for (j, r) in results.into_iter().enumerate() {
                        r.map_err(|source| EvalError::Engine {
                            row: order[at + j],
                            source,
                        })?;
                    }
                    at += consumed;
                    if s.threshold.is_none() {
                        if let Some((new, _)) = e.refit_calibration(&c, &decision, at) {
                            decision = new;
                        }
                    }
                }
                if let crate::engine::calibrate::Decision::Stream { t1, faces, .. } = decision {
                    if s.threshold.is_none() {
                        calibration = format!("stream t1={t1:.4} (read at {faces} faces)");
                    }
                }
                if let Some(path) = &s.graph_out {
                    write_graph(&e, &labels, path).map_err(|source| EvalError::GraphOut {
                        path: path.clone(),
                        source,
                    })?;
                }
                cluster_rule_local = e.bounded_regroups();
                e.assignments().into_iter().map(Some).collect()
            } else {
                let mut idx = HnswIndex::new(h);
                for i in 0..n {
                    idx.insert(i as u32, feats.row(i));
                }
                progress(n / 2, n);
                let weak: Vec<bool> = quality
                    .iter()
                    .map(|q| q.is_some_and(|q| q < p.min_quality))
                    .collect();
                let labels = batch(&p, &feats.data, &idx, &weak);
                progress(n, n);
                labels.into_iter().map(|l| Some(l as u64)).collect()
            }
        }
        alg => {
            let k = s.k.unwrap_or(match alg {
                Algorithm::ChineseWhispers => chinese_whispers::STOCK_K,
                Algorithm::Immich => immich::STOCK_K,
                Algorithm::Dbscan => dbscan::STOCK_K,
                _ => knn_components::STOCK_K,
            });
            let g = knn::brute_force(&feats, k);
            progress(n / 2, n);
            let out = match alg {
                Algorithm::ChineseWhispers => {
                    let mut p = chinese_whispers::ChineseWhispersParams {
                        seed: s.seed,
                        ..Default::default()
                    };
                    if let Some(t) = s.threshold {
                        p.threshold = t;
                    }
                    chinese_whispers::cluster(&feats, &g, &p)?
                }
                Algorithm::Immich => {
                    let mut p = immich::ImmichParams::default();
                    if let Some(t) = s.threshold {
                        p.threshold = t;
                    }
                    immich::cluster(&feats, &g, &p)?
                }
                Algorithm::Dbscan => {
                    let mut p = dbscan::DbscanParams::default();
                    if let Some(t) = s.threshold {
                        p.threshold = t;
                    }
                    dbscan::cluster(&feats, &g, &p)?
                }
                _ => {
                    let mut p = knn_components::KnnComponentsParams::default();
                    if let Some(t) = s.threshold {
                        p.threshold = t;
                    }
                    knn_components::cluster(&feats, &g, &p)?
                }
            };
            progress(n, n);
            out
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let scores = evaluate(&labels, &predicted);
    let mut clusters: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let unassigned = predicted
        .iter()
        .filter(|p| match p {
            Some(c) => {
                clusters.insert(*c);
                false
            }
            None => true,
        })
        .count();
    Ok(EvalReport {
        algorithm: s.algorithm.name(),
        n_faces: n,
        n_clusters: clusters.len() + unassigned,
        pairwise: scores.pairwise,
        bcubed: scores.bcubed,
        nmi: scores.nmi,
        calibration,
        cluster_rule_local,
        seconds,
        faces_per_second: n as f64 / seconds.max(1e-9),
    })
}

/// What `calibrate` found for a labelled sample of a user's own faces.
#[derive(Debug, Clone, Serialize)]
pub struct Calibrated {
    /// The sample's pair-similarity profile (its first `calibration.warmup` faces in stream order).
    pub profile: crate::engine::calibrate::SpaceProfile,
    /// The best cosine threshold for the stream on the raw vectors.
    pub t1: f32,
    /// The stream's report at that threshold.
    pub best: EvalReport,
    /// Every threshold tried, with its BCubed F.
    pub tried: Vec<(f32, f64)>,
}

/// Fits the stream to a labelled sample of another space: the cosine of the raw vectors
/// (no trained parts), `engine.t1` swept over median + z * spread for z in 1.0..=8.0 (step 0.25)
/// of the sample's own profile, then in steps of 0.025 within 0.25 of the best; the best BCubed F
/// kept. `k` and `t2` stay as configured.
pub fn calibrate(
    cfg: &Config,
    features: &Features,
    labels: &[i64],
    order: Order,
    seed: u64,
    progress: &dyn Fn(f32, f64),
) -> Result<Calibrated, EvalError> {
    let mut c = cfg.clone();
    c.edge.scorer = crate::config::EdgeScorerKind::Cosine;
    c.proxy.mode = crate::config::ProxyMode::Identity;
    c.calibration.mode = crate::engine::calibrate::CalibrationMode::Trained;
    let n = features.n();
    let shuffled = stream_order(n, order, seed);
    let d = features.dim;
    let w = cfg.calibration.warmup.min(n);
    let first: Vec<f32> = shuffled[..w]
        .iter()
        .flat_map(|&i| features.row(i).iter().copied())
        .collect();
    let profile = crate::engine::calibrate::profile(&first, d);
    let mut tried = Vec::new();
    let mut best: Option<(f32, EvalReport)> = None;
    // A coarse pass (z 1.0..=8.0, step 0.25), then a fine one (step 0.025) within one coarse step
    // of the best: BCubed F moves by several points per 0.005 of t1 near its peak.
    let run_at = |z: f32| -> Result<Option<(f32, EvalReport)>, EvalError> {
        let t1 = profile.median + z * profile.spread;
        if !(-1.0..0.999).contains(&t1) {
            return Ok(None);
        }
        let s = EvalSettings {
            algorithm: Algorithm::Stream,
            threshold: Some(t1),
            k: None,
            order,
            seed,
            variants: None,
            quality: None,
            graph_out: None,
        };
        let r = run(&c, features, labels, s, &|_, _| {})?;
        progress(t1, r.bcubed.f);
        Ok(Some((t1, r)))
    };
    let mut keep = |found: Option<(f32, EvalReport)>, best: &mut Option<(f32, EvalReport)>| {
        if let Some((t1, r)) = found {
            tried.push((t1, r.bcubed.f));
            if best.as_ref().is_none_or(|(_, b)| r.bcubed.f > b.bcubed.f) {
                *best = Some((t1, r));
            }
        }
    };
    for step in 0..=28 {
        keep(run_at(1.0 + 0.25 * step as f32)?, &mut best);
    }
    if let Some(z) = best
        .as_ref()
        .map(|(t, _)| (t - profile.median) / profile.spread)
    {
        for j in (-9..=9).filter(|j| *j != 0) {
            keep(run_at(z + 0.025 * j as f32)?, &mut best);
        }
    }
    let (t1, best) = best.ok_or(EvalError::Threshold(profile.median))?;
    // The reference a stream is compared with: the whole sample's centroid, and the median and
    // spread of its first faces' pairs (as a stream measures them).
    let profile = crate::engine::calibrate::SpaceProfile {
        centroid: crate::engine::calibrate::centroid(&features.data, d),
        ..profile
    };
    Ok(Calibrated {
        profile,
        t1,
        best,
        tried,
    })
}

impl Calibrated {
    /// The configuration fragment that runs the stream fitted to this space.
    pub fn to_toml(&self, source: &str) -> String {
        format!(
            "# Written by `clip-cluster calibrate` from {source}: the stream fitted to this model's\n\
             # space (BCubed F {:.4} on the sample at t1 {:.4}). Give it with --config, and set\n\
             # [model] name and dim for the model, so that its states are never mixed with others.\n\
             [edge]\nscorer = \"cosine\"\n\n[proxy]\nmode = \"identity\"\n\n[engine]\nt1 = {}\n\n\
             [calibration]\n# The threshold above fits this space: no warm-up decision needed.\n\
             mode = \"trained\"\nreference_median = {}\nreference_spread = {}\n",
            self.best.bcubed.f, self.t1, self.t1, self.profile.median, self.profile.spread
        )
    }
}
