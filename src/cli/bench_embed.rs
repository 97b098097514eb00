//! `clip-cluster bench-embed`: The identity network's faces/s at each batch size and dtype on a device, and its parity with the CPU in f32 (max |diff|, min cosine), on seeded synthetic chips; with `--detector`, the face detector's images/s per image size and batch and its parity with the CPU. Made for the GPU machine (no Rust there): e.g. `bench-embed --device cuda:0 --dtype f32,bf16 --batch 64,512,2048 --detector models/mmod_human_face_detector.dat`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// "cpu", "cuda" or "cuda:N".
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Comma-separated: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Comma-separated batch sizes.
    #[arg(long, default_value = "64,512,2048")]
    pub batch: String,
    /// Timed passes per cell (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub iterations: usize,
    /// dlib's network file (default: embed.model_path).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Also the face detector, from this dlib file (e.g. embed.detector_path), f32.
    #[arg(long)]
    pub detector: Option<PathBuf>,
    /// Comma-separated WxH image sizes for the detector.
    #[arg(long, default_value = "250x250,1000x750")]
    pub detect_size: String,
    /// Comma-separated batch sizes for the detector.
    #[arg(long, default_value = "8,64")]
    pub detect_batch: String,
    /// One JSON object per cell on stdout.
    #[arg(long)]
    pub json: bool,
}

/// "8,64" -> [8, 64], each in 1..=65536.
fn batches_of(flag: &str, list: &str) -> anyhow::Result<Vec<usize>> {
    list.split(',')
        .map(|b| {
            b.trim()
                .parse::<usize>()
                .ok()
                .filter(|b| (1..=65_536).contains(b))
                .with_context(|| format!("{flag} {b}: want sizes in 1..=65536"))
        })
        .collect()
}

/// "250x250,1000x750" -> [(250, 250), (1000, 750)], each side in 1..=8192.
fn sizes_of(list: &str) -> anyhow::Result<Vec<(usize, usize)>> {
    list.split(',')
        .map(|s| {
            s.trim()
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
                .filter(|&(w, h)| (1..=8192).contains(&w) && (1..=8192).contains(&h))
                .with_context(|| format!("--detect-size {s}: want WxH, sides in 1..=8192"))
        })
        .collect()
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args {
        device,
        dtype,
        batch,
        iterations,
        model,
        detector,
        detect_size,
        detect_batch,
        json,
    } = args;
    let cfg = Config::load(config)?;
    let model = model.unwrap_or(cfg.embed.model_path.clone());
    let dtypes = dtype
        .split(',')
        .map(|d| {
            crate::bench::embed::dtype_of(d.trim())
                .with_context(|| format!("--dtype {d}: want f32, bf16 or f16 (comma-separated)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let batches = batches_of("--batch", &batch)?;
    let detect = match &detector {
        Some(_) => Some((
            sizes_of(&detect_size)?,
            batches_of("--detect-batch", &detect_batch)?,
        )),
        None => None,
    };
    anyhow::ensure!(iterations >= 1, "--iterations must be at least 1");
    crate::bench::embed::run(&model, &device, &dtypes, &batches, iterations, &mut |r| {
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            println!(
                "{} {} batch {:>5}: {:>9.1} faces/s ({} x {:.3} s); vs CPU f32 over {} faces: max |diff| {:.2e}, min cosine {:.6}",
                r.device,
                r.dtype,
                r.batch,
                r.faces_per_second,
                r.iterations,
                r.seconds / r.iterations as f64,
                r.parity_faces,
                r.max_abs_diff_vs_cpu_f32,
                r.min_cosine_vs_cpu_f32
            );
        }
    })
    .map_err(anyhow::Error::msg)?;
    if let (Some(path), Some((sizes, batches))) = (detector, detect) {
        crate::bench::detect::run(&path, &device, &sizes, &batches, iterations, &mut |r| {
            if json {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            } else {
                println!(
                    "{} detector {}x{} batch {:>3}: {:>8.1} images/s ({} x {:.3} s); vs CPU over {} images: max |score diff| {:.2e}, same boxes {}",
                    r.device,
                    r.width,
                    r.height,
                    r.batch,
                    r.images_per_second,
                    r.iterations,
                    r.seconds / r.iterations as f64,
                    r.parity_images,
                    r.max_abs_diff_vs_cpu,
                    r.same_boxes_as_cpu
                );
            }
        })
        .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}
