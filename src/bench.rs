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

/// Runs the insert benchmark on seeded synthetic identities. `checkpoints` are the face counts at
/// which a window ends; each window's rate is measured over its last `window` faces.
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
    let mut window_start: Option<(usize, Instant)> = None;
    let mut i = 0;
    while i < n {
        let next_cp = checkpoints.iter().copied().find(|&cp| cp > i).unwrap_or(n);
        if window_start.is_none() && i + window >= next_cp {
            window_start = Some((i, Instant::now()));
        }
        let j = (i + batch).min(n).min(if window_start.is_none() {
            next_cp - window
        } else {
            next_cp
        });
        let j = j.max(i + 1);
        let faces: Vec<(&str, &[f32])> = (i..j)
            .map(|x| (ids[x].as_str(), &data[x * dim..(x + 1) * dim]))
            .collect();
        c.apply(&faces, &[])?;
        i = j;
        progress(i);
        if i == next_cp {
            if let Some((s, t)) = window_start.take() {
                let secs = t.elapsed().as_secs_f64();
                windows.push(Window {
                    n_faces: i,
                    faces_per_second: (i - s) as f64 / secs,
                    micros_per_face: secs * 1e6 / (i - s) as f64,
                });
            }
        }
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
