//! `clip-cluster verify`: The standard LFW verification protocol on pairs.txt: 10 folds, the Euclidean threshold chosen on nine and tested on the tenth; mean and standard deviation of the accuracy.

use std::path::{Path, PathBuf};

use super::*;

#[derive(clap::Args)]
pub struct Args {
    /// LFW root (holding images/ and pairs.txt); default: $CLIP_CLUSTER_LFW or ../shared/data/lfw.
    #[arg(long)]
    pub lfw: Option<PathBuf>,
    /// Override embed.chip: aligned | centre.
    #[arg(long)]
    pub chip: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args { lfw, chip, json } = args;
    let cfg = config_with_chip(config, chip)?;
    let root = crate::eval::lfw::locate(lfw.as_deref())?;
    let embedder = crate::embed::DlibEmbedder::from_config(&cfg)?;
    let bar = progress_bar(json);
    let report = crate::eval::lfw::verify(&root, &embedder, 256, &|i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "LFW pairs ({} pairs, {} images, {}): accuracy {:.2}% +- {:.2}% (10-fold; {:.2}% +- {:.2}% on L2-normalized vectors)\n  mean distance same {:.4}, different {:.4}; rejected {:?}\n  embedding {:.1} s, {:.1} faces/s",
            report.n_pairs,
            report.n_images,
            report.model_id,
            100.0 * report.mean_accuracy,
            100.0 * report.std_accuracy,
            100.0 * report.normalized_mean_accuracy,
            100.0 * report.normalized_std_accuracy,
            report.mean_same_distance,
            report.mean_different_distance,
            report.rejected,
            report.seconds,
            report.faces_per_second
        );
    }
    Ok(())
}
