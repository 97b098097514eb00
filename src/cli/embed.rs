//! `clip-cluster embed`: Embeds a directory of face images (<identity>/<image>, or an LFW root) with the configured embedder into learn-to-cluster files: --out rows, --labels-out labels, and a names file (line i = identity of label i).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::*;
use crate::eval::features::Features;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub faces: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub labels_out: PathBuf,
    /// Names file (default: <labels-out>.names).
    #[arg(long)]
    pub names_out: Option<PathBuf>,
    /// Keep only the identities listed in this file (LFW people format: "name count" lines),
    /// e.g. peopleDevTest.txt.
    #[arg(long)]
    pub people: Option<PathBuf>,
    /// Embed at most this many images (in listing order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Override embed.chip: aligned | centre.
    #[arg(long)]
    pub chip: Option<String>,
    /// Also write each embedded face's CLIP image embedding (row i = row i of --out), the
    /// input of `train --clip-features`; needs [clip] weights.
    #[arg(long)]
    pub clip_out: Option<PathBuf>,
    /// Also write each embedded face's quality score (src/quality.rs), one per line, line i
    /// = row i of --out: the input of `eval --quality`.
    #[arg(long)]
    pub quality_out: Option<PathBuf>,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args {
        faces,
        out,
        labels_out,
        names_out,
        people,
        limit,
        chip,
        clip_out,
        quality_out,
    } = args;
    let cfg = config_with_chip(config, chip)?;
    if clip_out.is_some() && cfg.embed.faces_per_image == crate::config::FacesPerImage::All {
        // The CLIP rows here are of whole images; the daemon's are of each face's surroundings.
        anyhow::bail!(
            "--clip-out needs embed.faces_per_image = \"one\" (one row per image); with \"all\" run the daemon, which hallucinates from each face's surroundings"
        );
    }
    // CLIP is loaded (and its files checked) before the long embedding run.
    let clip = match &clip_out {
        Some(_) => Some(crate::hallucinate::clip::from_config(&cfg.clip)?.context(
            "--clip-out needs CLIP weights: set clip.weights (CLIP_CLUSTER__CLIP__WEIGHTS)",
        )?),
        None => None,
    };
    let e = embed_dir(&cfg, &faces, people.as_deref(), limit)?;
    if let (Some(path), Some((clip, _))) = (&clip_out, &clip) {
        let limits = crate::embed::image::DecodeLimits::default();
        let mut data = Vec::new();
        let mut dim = 0;
        let bar = progress_bar(false);
        bar.set_length(e.paths.len() as u64);
        for part in e.paths.chunks(64) {
            let mut images = Vec::with_capacity(part.len());
            for p in part {
                let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                // These images already decoded once for the identity vectors.
                let rgb = crate::embed::image::decode(&bytes, &limits)
                    .with_context(|| format!("decoding {}", p.display()))?;
                images.push(
                    image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.pixels)
                        .context("decoded image of inconsistent size")?,
                );
            }
            for row in clip.encode_images(&images)? {
                dim = row.len();
                data.extend_from_slice(&row);
            }
            bar.inc(part.len() as u64);
        }
        bar.finish_and_clear();
        crate::eval::features::write_features(path, &Features { dim, data })?;
        eprintln!(
            "wrote {} CLIP embeddings ({dim}-D) to {}",
            e.paths.len(),
            path.display()
        );
    }
    crate::eval::features::write_features(&out, &e.features)?;
    crate::eval::features::write_labels(&labels_out, &e.labels)?;
    if let Some(q) = &quality_out {
        crate::eval::features::write_scores(q, &e.quality)?;
    }
    let names = names_out.unwrap_or_else(|| {
        let mut p = labels_out.clone().into_os_string();
        p.push(".names");
        PathBuf::from(p)
    });
    crate::eval::dataset::write_names(&names, &e.names)?;
    eprintln!(
        "wrote {} rows ({}-D) to {}, labels to {}, {} identities to {}; rejected {:?}; {:.1} s, {:.1} faces/s",
        e.labels.len(),
        e.features.dim,
        out.display(),
        labels_out.display(),
        e.names.len(),
        names.display(),
        e.rejected,
        e.seconds,
        e.labels.len() as f64 / e.seconds.max(1e-9)
    );
    Ok(())
}
