//! `clip-cluster bench`: sustained single-writer insert throughput with durable state, per-insert
//! cost at each scale, and resident memory per face. A command rather than a criterion bench
//! because one run to 1M faces is minutes long and its growth curve is the result.

pub mod detect;
pub mod embed;
pub mod operator;

use std::time::Instant;

use serde::Serialize;

use crate::clusterer::Clusterer;
use crate::config::Config;
use crate::eval::synth::{generate, SynthParams};

#[derive(Debug, Serialize)]
pub struct Window {
    /// Faces in the state when the window ended.
    pub n_faces: usize,
    pub faces_per_second: f64,
    pub micros_per_face: f64,
    /// Resident bytes beyond the two vector copies per face held when the window ended: with
    /// two windows, the slope between them is the cost of one more face and the rest is fixed.
    pub rss_bytes_per_face_beyond_vectors: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Where the vectors came from: "synthetic" (the seeded generator) or "dlib-like <file>"
    /// (real vectors of a features file, each face one of them plus noise).
    pub vectors: String,
    /// The graph configuration that ran: edge scorer ("learned", "cosine", or "cosine
    /// (calibrated t1=...)" when the calibration found another space), proxy mode, cluster rule.
    pub edge_scorer: String,
    pub proxy_mode: String,
    pub cluster_rule: String,
    /// `engine.t1` as configured (the calibrated value is in `edge_scorer`).
    pub t1: f32,
    pub k: usize,
    pub n_faces: usize,
    pub dim: usize,
    pub batch: usize,
    pub seconds: f64,
    pub faces_per_second: f64,
    pub windows: Vec<Window>,
    pub n_clusters: usize,
    /// Inserts whose kept-graph component was over `engine.support_region`, so that the cluster
    /// rule ran locally (the metric `clip_cluster_cluster_rule_local_total`).
    pub cluster_rule_local: u64,
    /// Seconds of the run spent writing the periodic HNSW snapshots
    /// (`index.snapshot_every_faces`), included in `seconds`, never in a window.
    pub snapshot_seconds: f64,
    /// Resident set growth over the run divided by faces.
    pub rss_bytes_per_face: f64,
    /// The same, less the two stored copies of each vector (engine and HNSW).
    pub rss_bytes_per_face_beyond_vectors: f64,
    pub sled_bytes_on_disk: u64,
    /// The operator API over the state built (`bench --operator`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<operator::OperatorReport>,
}

#[allow(clippy::too_many_arguments)]
fn apply_range(
    c: &mut Clusterer,
    ids: &[String],
    data: &[f32],
    dim: usize,
    from: usize,
    to: usize,
    batch: usize,
    progress: &dyn Fn(usize),
) -> anyhow::Result<usize> {
    let mut i = from;
    while i < to {
        let j = (i + batch).min(to);
        let faces: Vec<crate::engine::Face> = (i..j)
            .map(|x| {
                crate::engine::Face::new(ids[x].as_str(), data[x * dim..(x + 1) * dim].to_vec())
            })
            .collect();
        c.apply(&faces, &[])?;
        i = j;
        progress(i);
    }
    Ok(i)
}

/// Resident set size in bytes, from /proc (Linux).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// `n` dlib-like vectors: face i is a seeded random row of `base` (real vectors, e.g. LFW embedded
/// by the project) plus isotropic Gaussian noise, renormalized, the noise sized so that a copy
/// sits at cosine ~0.99 to its row: near-duplicates as a camera's repeated frames are, and small
/// enough that the pair-similarity profile stays the trained space's (at 0.975 every pair cosine
/// shrinks by 5% and the calibration rightly calls it another space).
pub fn dlib_like(base: &crate::eval::features::Features, n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};
    let d = base.dim;
    let sigma = ((1.0 / (0.99f64 * 0.99) - 1.0) / d as f64).sqrt() as f32;
    let noise = Normal::new(0.0f32, sigma).expect("finite sigma");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * d);
    for _ in 0..n {
        let row = base.row(rng.gen_range(0..base.n()));
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        let mut v: Vec<f32> = row
            .iter()
            .map(|x| x / norm + noise.sample(&mut rng))
            .collect();
        let nv = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= nv);
        out.extend_from_slice(&v);
    }
    out
}

/// Runs the insert benchmark on `data` (`n` rows of `cfg.model.dim`; `None` = seeded synthetic
/// identities), with `vectors` naming them in the report. Windows end just before 10K, 100K, 1M
/// and the last face; each window's rate is measured over `window` faces.
#[allow(clippy::too_many_arguments)]
pub fn run(
    cfg: &Config,
    n: usize,
    batch: usize,
    window: usize,
    seed: u64,
    data: Option<Vec<f32>>,
    vectors: &str,
    progress: &dyn Fn(usize),
) -> anyhow::Result<BenchReport> {
    let dim = cfg.model.dim;
    let data = data.unwrap_or_else(|| generate(SynthParams::new(n, dim, seed)).data);
    anyhow::ensure!(
        data.len() == n * dim,
        "{} values for {n} faces of {dim}",
        data.len()
    );
    let ids: Vec<String> = (0..n).map(|i| format!("bench-{i}")).collect();
    let rss0 = rss_bytes();
    // Resident bytes per face beyond the two vector copies each face holds.
    let beyond_vectors = |per_face: f64| per_face - (2 * dim * 4) as f64;
    let mut c = Clusterer::open(cfg)?;
    let start = Instant::now();
    let mut windows = Vec::new();
    let mut checkpoints: Vec<usize> = [10_000usize, 100_000, 1_000_000]
        .into_iter()
        .filter(|&x| x <= n)
        .collect();
    if checkpoints.last() != Some(&n) {
        checkpoints.push(n);
    }
    // Each window ends `GAP` faces before its checkpoint, so that it measures steady inserts and
    // not the HNSW snapshot taken at round face counts (that cost is in the overall rate).
    const GAP: usize = 1000;
    let mut i = 0;
    for &cp in &checkpoints {
        let w_end = cp.saturating_sub(GAP).max(i);
        let w_start = w_end.saturating_sub(window).max(i);
        i = apply_range(&mut c, &ids, &data, dim, i, w_start, batch, progress)?;
        let t = Instant::now();
        i = apply_range(&mut c, &ids, &data, dim, i, w_end, batch, progress)?;
        let secs = t.elapsed().as_secs_f64();
        if w_end > w_start {
            let rss = rss_bytes().saturating_sub(rss0) as f64 / w_end as f64;
            windows.push(Window {
                n_faces: w_end,
                faces_per_second: (w_end - w_start) as f64 / secs,
                micros_per_face: secs * 1e6 / (w_end - w_start) as f64,
                rss_bytes_per_face_beyond_vectors: beyond_vectors(rss),
            });
        }
        i = apply_range(&mut c, &ids, &data, dim, i, cp, batch, progress)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let rss = rss_bytes().saturating_sub(rss0) as f64 / n as f64;
    let edge_scorer = match c.decision() {
        Some(crate::engine::calibrate::Decision::Stream { t1, .. }) => {
            format!("cosine (calibrated t1={t1:.4})")
        }
        _ => match cfg.edge.scorer {
            crate::config::EdgeScorerKind::Cosine => "cosine".into(),
            crate::config::EdgeScorerKind::Learned => "learned".into(),
        },
    };
    let proxy_mode = match c.decision() {
        Some(crate::engine::calibrate::Decision::Stream { .. }) => "identity (calibrated)".into(),
        _ => format!("{:?}", cfg.proxy.mode).to_lowercase(),
    };
    let support = c.engine().params().support;
    let cluster_rule = if support > 0.0 {
        format!("support {support}")
    } else {
        "components".into()
    };
    Ok(BenchReport {
        vectors: vectors.to_string(),
        edge_scorer,
        proxy_mode,
        cluster_rule,
        t1: cfg.engine.t1,
        k: cfg.engine.k,
        n_faces: n,
        dim,
        batch,
        seconds,
        faces_per_second: n as f64 / seconds,
        windows,
        n_clusters: c.engine().n_clusters(),
        cluster_rule_local: c.engine().bounded_regroups(),
        snapshot_seconds: c.snapshot_seconds(),
        rss_bytes_per_face: rss,
        rss_bytes_per_face_beyond_vectors: beyond_vectors(rss),
        sled_bytes_on_disk: c.store().size_on_disk(),
        operator: None,
    })
}
