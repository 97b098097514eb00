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
    /// Instead of the pairs: the photo check on N collages of 2-6 LFW faces (src/eval/photos.rs):
    /// faces found with embed.faces_per_image = "all", and each one's cosine to the same image
    /// embedded alone.
    #[arg(long, value_name = "N")]
    pub photos: Option<usize>,
    /// With --photos: draw the collages' images from these people's photos (a people list such as
    /// peopleDevTrain.txt, "name count" per line; relative to the LFW root unless it exists as
    /// given) instead of pairs.txt's images: choose settings on training identities.
    #[arg(long, value_name = "FILE", requires = "photos")]
    pub people: Option<PathBuf>,
    /// Only the pairs of pairs.txt's first K folds (2..=10), each fold's threshold chosen on the
    /// other K - 1: for slow variants (a large canvas), compared with the standard images at the
    /// same K.
    #[arg(long, value_name = "K")]
    pub folds: Option<usize>,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args {
        lfw,
        chip,
        json,
        photos,
        people,
        folds,
    } = args;
    let mut cfg = config_with_chip(config, chip)?;
    // The protocol compares one face per image.
    cfg.embed.faces_per_image = crate::config::FacesPerImage::One;
    let root = crate::eval::lfw::locate(lfw.as_deref())?;
    let embedder = crate::embed::DlibEmbedder::from_config(&cfg)?;
    let bar = progress_bar(json);
    if let Some(n) = photos {
        let mut all = cfg.clone();
        all.embed.faces_per_image = crate::config::FacesPerImage::All;
        all.validate()?;
        let every = crate::embed::DlibEmbedder::from_config(&all)?;
        let people = people.map(|p| if p.exists() { p } else { root.join(p) });
        let r = crate::eval::photos::photos(
            &root,
            &every,
            &embedder,
            n,
            people.as_deref(),
            &|i, n| {
                bar.set_length(n as u64);
                bar.set_position(i as u64);
            },
        )?;
        bar.finish_and_clear();
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "LFW collages ({} collages, {} faces placed, {}): found {} ({:.2}%), {} extra\n  cosine to the face embedded alone: >= 0.99 for {} ({:.2}%), min {:.4}, median {:.4}; refused {:?}\n  {:.1} s",
                r.collages, r.placed, r.model_id, r.found, 100.0 * r.found_fraction, r.extra,
                r.within_099, 100.0 * r.within_099_fraction, r.cosine_min, r.cosine_median,
                r.refused, r.seconds
            );
        }
        return Ok(());
    }
    let report = crate::eval::lfw::verify(&root, &embedder, 256, folds, &|i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "LFW pairs ({} pairs, {} images, {}): accuracy {:.2}% +- {:.2}% ({}-fold; {:.2}% +- {:.2}% on L2-normalized vectors)\n  mean distance same {:.4}, different {:.4}; rejected {:?}\n  embedding {:.1} s, {:.1} faces/s",
            report.n_pairs,
            report.n_images,
            report.model_id,
            100.0 * report.mean_accuracy,
            100.0 * report.std_accuracy,
            report.folds.len(),
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
