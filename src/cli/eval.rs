//! `clip-cluster eval`: Clusters labeled vectors with one algorithm and scores it (pairwise F, BCubed F, NMI). Without --features it runs on a seeded synthetic data set of 20,000 faces.

use std::path::{Path, PathBuf};

use super::*;
use crate::config::Config;
use crate::eval::features::{check_counts, read_features, read_labels, Features};
use crate::eval::{Algorithm, EvalSettings, Order};

#[derive(clap::Args)]
pub struct Args {
    /// learn-to-cluster features: raw little-endian f32 rows, no header.
    #[arg(long, requires = "labels", conflicts_with = "faces")]
    pub features: Option<PathBuf>,
    /// A directory of face images (<identity>/<image>, or an LFW root): embedded with the
    /// configured embedder first, then clustered and scored (end to end).
    #[arg(long)]
    pub faces: Option<PathBuf>,
    /// Keep only the identities listed in this file (LFW people format, e.g.
    /// peopleDevTest.txt). With --features the identities come from the names file
    /// `<labels>.names` that `embed` writes.
    #[arg(long)]
    pub people: Option<PathBuf>,
    /// One integer identity label per line, one line per feature row.
    #[arg(long, requires = "features")]
    pub labels: Option<PathBuf>,
    /// Row width of --features (default: model.dim of the configuration).
    #[arg(long)]
    pub dim: Option<usize>,
    #[arg(long, value_enum, default_value = "stream")]
    pub algorithm: Algorithm,
    /// Edge rule as a cosine similarity (default: the algorithm's stock value).
    #[arg(long, allow_negative_numbers = true)]
    pub threshold: Option<f32>,
    /// Neighbour count (default: the algorithm's stock value).
    #[arg(long)]
    pub k: Option<usize>,
    #[arg(long, value_enum, default_value = "input")]
    pub order: Order,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Faces of the synthetic data set used without --features.
    #[arg(long, default_value_t = 20_000)]
    pub synthetic: usize,
    /// Hallucinated variants made upstream for each face of --features (raw f32 rows of
    /// `--variants` vectors of the features' width, row i = face i; `hallucinate` writes
    /// them): candidates of the neighbour proxy beside the learned directions.
    #[arg(long, requires = "features")]
    pub hallucinated: Option<PathBuf>,
    /// Vectors per row of --hallucinated.
    #[arg(long, default_value_t = 5)]
    pub variants: usize,
    /// Each face's quality score, one number per line, line i = row i of --features
    /// (`embed --quality-out` writes it; -1 = unknown); faces below quality.min_score are
    /// weak (assigned by one edge; other links only when near-certain).
    #[arg(long, requires = "features", conflicts_with = "people")]
    pub quality: Option<PathBuf>,
    /// With `--algorithm stream`: write the final graph, one line per face in stream order:
    /// `<row> <label> <weak 0|1> <to>:<score>:<kept 0|1> ...` (out-list in rank order), for
    /// studying cluster rules offline.
    #[arg(long)]
    pub graph_out: Option<PathBuf>,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args {
        features,
        faces,
        people,
        labels,
        dim,
        algorithm,
        threshold,
        k,
        order,
        seed,
        synthetic,
        json,
        hallucinated,
        variants,
        quality,
        graph_out,
    } = args;
    let synthetic_input = features.is_none() && faces.is_none();
    let mut variant_rows = None;
    let mut quality_rows = None;
    let (feats, labs) = match (features, labels, faces) {
        (_, _, Some(dir)) => {
            let base = Config::load(config)?;
            let e = embed_dir(&base, &dir, people.as_deref(), None)?;
            (e.features, e.labels)
        }
        (Some(f), Some(l), None) => {
            let base = Config::load(config)?;
            let d = dim.unwrap_or(base.model.dim);
            let feats = read_features(&f, d)?;
            let labs = read_labels(&l)?;
            check_counts(&feats, &labs, &f, &l)?;
            let side = match &hallucinated {
                Some(h) => Some(read_features(h, variants * d)?),
                None => None,
            };
            if let Some(q) = &quality {
                let scores = crate::eval::features::read_scores(q)?;
                anyhow::ensure!(
                    scores.len() == feats.n(),
                    "{} holds {} quality scores for {} faces in {}",
                    q.display(),
                    scores.len(),
                    feats.n(),
                    f.display()
                );
                quality_rows = Some(scores);
            }
            let (feats, labs, side) = only_people_with(feats, side, labs, &l, people.as_deref())?;
            variant_rows = side;
            (feats, labs)
        }
        _ => {
            let d = dim.unwrap_or(128);
            eprintln!(
                "no --features given: evaluating on {synthetic} seeded synthetic faces ({d}-D)"
            );
            let s = crate::eval::synth::generate(crate::eval::synth::SynthParams::new(
                synthetic, d, seed,
            ));
            (
                Features {
                    dim: d,
                    data: s.data,
                },
                s.labels,
            )
        }
    };
    let flags = crate::config::Overrides {
        model_dim: Some(feats.dim),
        ..Default::default()
    };
    let mut cfg = Config::load_overriding(config, &flags)?;
    if synthetic_input {
        for c in cfg.use_synthetic_settings() {
            eprintln!("synthetic faces: {c}");
        }
    }
    let settings = EvalSettings {
        algorithm,
        threshold,
        k,
        order,
        seed,
        variants: variant_rows,
        quality: quality_rows,
        graph_out,
    };
    let report = crate::eval::run(&cfg, &feats, &labs, settings, &|i, n| {
        if !json || i == n {
            eprint!("\r  {i}/{n} faces");
        }
        if i == n {
            eprintln!();
        }
    })?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}: {} faces -> {} clusters\n  pairwise  P {:.4} R {:.4} F {:.4}\n  BCubed    P {:.4} R {:.4} F {:.4}\n  NMI {:.4}\n  {:.2} s, {:.0} faces/s",
            report.algorithm,
            report.n_faces,
            report.n_clusters,
            report.pairwise.precision,
            report.pairwise.recall,
            report.pairwise.f,
            report.bcubed.precision,
            report.bcubed.recall,
            report.bcubed.f,
            report.nmi,
            report.seconds,
            report.faces_per_second
        );
    }
    Ok(())
}
