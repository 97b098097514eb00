//! `clip-cluster bench`: Insert benchmark with durable state (throughput, growth, memory per face).

use std::path::{Path, PathBuf};

use super::*;
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 100_000)]
    pub faces: usize,
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Faces measured at the end of each checkpoint (10K, 100K, 1M, and the end).
    #[arg(long, default_value_t = 5000)]
    pub window: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Dlib-like vectors: each face a seeded random row of this features file (real vectors,
    /// e.g. LFW embedded by `embed`) plus noise (cosine ~0.99 to its row). Without it, the
    /// seeded synthetic generator.
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// Run the synthetic generator's calibrated settings (cosine, identity proxy, its t1, k and
    /// t2) instead of the shipped default configuration.
    #[arg(long, conflicts_with = "features")]
    pub synthetic_settings: bool,
    /// State directory (must not exist; removed afterwards unless --keep).
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[arg(long)]
    pub keep: bool,
    /// Then serve the operator API over the state built and measure it over HTTP (read,
    /// search, feedback, read after a write, erasure, compaction): `operator` in the report.
    #[arg(long)]
    pub operator: bool,
    /// Requests of each kind the operator phase makes (writes: a tenth of it).
    #[arg(long, default_value_t = 1000)]
    pub ops: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args {
        faces,
        dim,
        batch,
        window,
        seed,
        features,
        synthetic_settings,
        state,
        keep,
        operator,
        ops,
        json,
    } = args;
    let tmp;
    let state = match state {
        Some(s) => s,
        None => {
            tmp = tempfile_dir()?;
            tmp.join("state")
        }
    };
    anyhow::ensure!(
        !state.exists(),
        "{} exists; the benchmark needs a fresh state directory",
        state.display()
    );
    let flags = crate::config::Overrides {
        model_dim: Some(dim),
        store_path: Some(state.clone()),
        index_capacity_hint: Some(faces),
        ..Default::default()
    };
    let mut cfg = Config::load_overriding(config, &flags)?;
    if synthetic_settings {
        for c in cfg.use_synthetic_settings() {
            eprintln!("synthetic faces: {c}");
        }
    }
    let (data, vectors) = match &features {
        Some(f) => {
            let base = crate::eval::features::read_features(f, dim)?;
            anyhow::ensure!(base.n() > 0, "{} holds no vectors", f.display());
            let v = crate::bench::dlib_like(&base, faces, seed);
            (Some(v), format!("dlib-like {}", f.display()))
        }
        None => (None, "synthetic".to_string()),
    };
    let step = (faces / 20).max(1);
    let data = match (data, operator) {
        (None, true) => Some(
            crate::eval::synth::generate(crate::eval::synth::SynthParams::new(faces, dim, seed))
                .data,
        ),
        (d, _) => d,
    };
    let kept = if operator { data.clone() } else { None };
    let mut report = crate::bench::run(&cfg, faces, batch, window, seed, data, &vectors, &|i| {
        if i % step == 0 || i == faces {
            eprintln!("  {i} faces");
        }
    })?;
    if let Some(data) = kept {
        eprintln!("operator API: {ops} requests of each kind");
        report.operator = Some(crate::bench::operator::run(&cfg, &data, ops, seed)?);
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&state);
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
