//! `clip-cluster bench`: sustained single-writer insert throughput with durable state, per-insert
//! cost at each scale, and resident memory per face. A command rather than a criterion bench
//! because one run to 1M faces is minutes long and its growth curve is the result.

use std::time::Instant;

use serde::Serialize;

use crate::clusterer::Clusterer;
use crate::config::Config;
use crate::synth::{generate, SynthParams};

#[derive(Debug, Serialize)]
pub struct Window {
    /// Faces in the state when the window ended.
    pub n_faces: usize,
    pub faces_per_second: f64,
    pub micros_per_face: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub n_faces: usize,
    pub dim: usize,
    pub batch: usize,
    pub seconds: f64,
    pub faces_per_second: f64,
    pub windows: Vec<Window>,
    pub n_clusters: usize,
    /// Resident set growth over the run divided by faces.
    pub rss_bytes_per_face: f64,
    /// The same, less the two stored copies of each vector (engine and HNSW).
    pub rss_bytes_per_face_beyond_vectors: f64,
    pub sled_bytes_on_disk: u64,
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
        let faces: Vec<(&str, &[f32])> = (i..j)
            .map(|x| (ids[x].as_str(), &data[x * dim..(x + 1) * dim]))
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

/// Runs the insert benchmark on seeded synthetic identities. Windows end just before 10K, 100K,
/// 1M and the last face; each window's rate is measured over `window` faces.
pub fn run(
    cfg: &Config,
    n: usize,
    batch: usize,
    window: usize,
    seed: u64,
    progress: &dyn Fn(usize),
) -> anyhow::Result<BenchReport> {
    let dim = cfg.model.dim;
    let data = generate(SynthParams::new(n, dim, seed)).data;
    let ids: Vec<String> = (0..n).map(|i| format!("bench-{i}")).collect();
    let rss0 = rss_bytes();
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
            windows.push(Window {
                n_faces: w_end,
                faces_per_second: (w_end - w_start) as f64 / secs,
                micros_per_face: secs * 1e6 / (w_end - w_start) as f64,
            });
        }
        i = apply_range(&mut c, &ids, &data, dim, i, cp, batch, progress)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let rss = rss_bytes().saturating_sub(rss0) as f64 / n as f64;
    Ok(BenchReport {
        n_faces: n,
        dim,
        batch,
        seconds,
        faces_per_second: n as f64 / seconds,
        windows,
        n_clusters: c.engine().n_clusters(),
        rss_bytes_per_face: rss,
        rss_bytes_per_face_beyond_vectors: rss - (2 * dim * 4) as f64,
        sled_bytes_on_disk: c.store().size_on_disk(),
    })
}
