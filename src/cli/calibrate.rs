//! `clip-cluster calibrate`: Fits the stream to another embedding model from a labelled sample of the user's own faces: the cosine threshold with the best BCubed F on the sample and the space's profile, written as a configuration file to give with --config.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::*;
use crate::config::Config;
use crate::eval::Order;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub input: LabeledFeatures,
    /// Where the configuration fragment goes.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the sample's profile (centroid, median pair cosine, spread) as a
    /// calibration reference (`calibration.reference_path`): streams that match it are
    /// this space.
    #[arg(long)]
    pub reference_out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Order::Shuffled)]
    pub order: Order,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args {
        input,
        out,
        reference_out,
        order,
        seed,
    } = args;
    let mut cfg = Config::load(config)?;
    let (feats, labs) = input.read(cfg.model.dim)?;
    let features = input.features;
    cfg.model.dim = feats.dim;
    let fit = crate::eval::calibrate(&cfg, &feats, &labs, order, seed, &|t1, f| {
        eprintln!("  t1 {t1:.4}: BCubed F {f:.4}");
    })?;
    std::fs::write(&out, fit.to_toml(&features.display().to_string()))
        .with_context(|| format!("writing {}", out.display()))?;
    if let Some(r) = &reference_out {
        std::fs::write(r, serde_json::to_string_pretty(&fit.profile)? + "\n")
            .with_context(|| format!("writing {}", r.display()))?;
    }
    eprintln!(
        "profile: median {:.4}, spread {:.4}; best t1 {:.4}: BCubed F {:.4} (P {:.4} R {:.4}), pairwise F {:.4}; wrote {}",
        fit.profile.median,
        fit.profile.spread,
        fit.t1,
        fit.best.bcubed.f,
        fit.best.bcubed.precision,
        fit.best.bcubed.recall,
        fit.best.pairwise.f,
        out.display()
    );
    Ok(())
}
