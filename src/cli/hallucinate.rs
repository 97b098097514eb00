//! `clip-cluster hallucinate`: Hallucinates each face's attribute variants in identity space from its identity vector and CLIP image embedding: f_a = norm(f + H([f ; c_a - c])), c_a = norm(c + lambda_a d_a), with the text directions of [clip] (weights, vocabulary, prompts) and the mapper H of `train --mapper-out`. Writes one row of (attributes x dim) values per face, for `eval --hallucinated`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Config;
use crate::eval::features::{read_features, Features};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub features: PathBuf,
    /// CLIP image embeddings of the same faces (`embed --clip-out`).
    #[arg(long)]
    pub clip_features: PathBuf,
    /// Row width of --clip-features.
    #[arg(long, default_value_t = 512)]
    pub clip_dim: usize,
    #[arg(long)]
    pub mapper: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args {
        features,
        clip_features,
        clip_dim,
        mapper,
        out,
    } = args;
    let cfg = Config::load(config)?;
    let (_, directions) = crate::hallucinate::clip::from_config(&cfg.clip)?.context(
        "hallucinate needs CLIP for the text directions: set clip.weights (CLIP_CLUSTER__CLIP__WEIGHTS)",
    )?;
    let f = crate::train::unit_rows(&read_features(&features, cfg.model.dim)?);
    let c = crate::train::unit_rows(&read_features(&clip_features, clip_dim)?);
    anyhow::ensure!(
        f.n() == c.n(),
        "{} faces in {} but {} CLIP rows in {}",
        f.n(),
        features.display(),
        c.n(),
        clip_features.display()
    );
    let h = crate::hallucinate::Hallucinator {
        directions,
        mapper: crate::hallucinate::Mapper::load(&mapper, f.dim, clip_dim)?,
    };
    let mut data = Vec::with_capacity(f.n() * f.dim * h.directions.len());
    for i in 0..f.n() {
        for v in h.variants(f.row(i), c.row(i))? {
            data.extend_from_slice(&v);
        }
    }
    let width = f.dim * h.directions.len();
    crate::eval::features::write_features(&out, &Features { dim: width, data })?;
    eprintln!(
        "wrote {} faces x {} variants ({}) to {}",
        f.n(),
        h.directions.len(),
        h.directions
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        out.display()
    );
    Ok(())
}
