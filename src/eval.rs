//! The evaluation harness: runs one clustering algorithm over labeled vectors and scores it
//! (pairwise F, BCubed F, NMI as in METHOD.md). Our engine in stream order (`stream`), the same
//! graph rules at once (`batch`), and the peers' algorithms on the same vectors.
//!
//! Inputs are learn-to-cluster files today; a face-image directory (`--faces DIR`, identity = folder
//! name) becomes one more `EvalInput` once the embedder exists, with everything after embedding
//! unchanged.

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::baselines::{chinese_whispers, dbscan, immich, knn_components};
use crate::config::Config;
use crate::engine::{batch, Engine};
use crate::features::Features;
use crate::index::{HnswIndex, NeighborIndex};
use crate::knn;
use crate::metrics::{evaluate, Prf};

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
    pub seconds: f64,
    pub faces_per_second: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Baseline(#[from] crate::baselines::BaselineError),
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
    let order: Vec<usize> = match s.order {
        Order::Input => (0..n).collect(),
        Order::Shuffled => {
            let mut o: Vec<usize> = (0..n).collect();
            o.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(s.seed));
            o
        }
    };
    let d = features.dim;
    let mut data = Vec::with_capacity(n * d);
    for &i in &order {
        data.extend_from_slice(features.row(i));
    }
    let feats = Features { dim: d, data };
    let labels: Vec<i64> = order.iter().map(|&i| labels[i]).collect();

    let start = Instant::now();
    let predicted: Vec<Option<u64>> = match s.algorithm {
        Algorithm::Stream | Algorithm::Batch => {
            let mut p = cfg.engine_params();
            if let Some(t) = s.threshold {
                p.t1 = t;
            }
            if let Some(k) = s.k {
                p.k = k;
                p.search_k = p.search_k.max(k);
            }
            let mut h = cfg.hnsw_params();
            h.capacity_hint = n;
            if s.algorithm == Algorithm::Stream {
                let proxy = crate::clusterer::proxy_model(cfg)
                    .map_err(|e| EvalError::Proxy(e.to_string()))?;
                let scorer = crate::clusterer::edge_model(cfg)
                    .map_err(|e| EvalError::Edge(e.to_string()))?;
                let mut e = Engine::with_stages(p, HnswIndex::new(h), proxy, scorer);
                e.set_tracking(false);
                let none = crate::engine::FaceMeta::default();
                for (i, &row) in order.iter().enumerate() {
                    let extra = s.variants.as_ref().map_or(&[][..], |v| v.row(row));
                    e.insert_full(&i.to_string(), feats.row(i), extra, &none)
                        .map_err(|source| EvalError::Engine { row, source })?;
                    if (i + 1) % 1000 == 0 || i + 1 == n {
                        progress(i + 1, n);
                    }
                }
                e.assignments().into_iter().map(Some).collect()
            } else {
                let mut idx = HnswIndex::new(h);
                for i in 0..n {
                    idx.insert(i as u32, feats.row(i));
                }
                progress(n / 2, n);
                let labels = batch(&p, &feats.data, &idx);
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
        seconds,
        faces_per_second: n as f64 / seconds.max(1e-9),
    })
}
