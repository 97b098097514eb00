//! The face detector's throughput and device parity (`clip-cluster bench-embed --detector`): for
//! the GPU machine, which has no Rust toolchain, so that the one prepared command also measures
//! the detector (images/s per image size and batch, f32: the detector has no other dtype) and its
//! agreement with the CPU (max |diff| of the raw window scores, and whether the boxes found are
//! the same).
//!
//! Inputs are seeded smooth random images (blocks of 8 px with noise: the detector sees edges and
//! flat areas as in photos, and some windows score near its threshold), different per image.
//! Throughput times `FaceDetector::detect` (pyramid upload, network, download, NMS) on the
//! batch; parity compares the first images of the largest batch with the CPU's.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::embed::detect::{DetectorError, FaceDetector};
use crate::embed::image::RgbImage;

/// One measured (image size, batch) cell.
#[derive(Debug, Clone, Serialize)]
pub struct DetectRow {
    pub device: String,
    pub part: &'static str,
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    pub iterations: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Largest |device - CPU| over every window score of the first `parity_images` images.
    pub max_abs_diff_vs_cpu: f32,
    /// Whether the boxes found (threshold -0.5, dlib's order) equal the CPU's for those images.
    pub same_boxes_as_cpu: bool,
    pub parity_images: usize,
}

/// `n` seeded `w` x `h` images: 8 px blocks of a random colour with +-16 of noise per pixel.
pub fn synthetic_images(n: usize, w: usize, h: usize, seed: u64) -> Vec<RgbImage> {
    (0..n)
        .map(|i| {
            let mut s = seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut next = move || {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as u8
            };
            let (bw, bh) = (w.div_ceil(8), h.div_ceil(8));
            let blocks: Vec<u8> = (0..bw * bh * 3).map(|_| next()).collect();
            let mut pixels = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let base = blocks[((y / 8) * bw + x / 8) * 3 + c] as i32;
                        let noise = (next() as i32 >> 3) - 16;
                        pixels.push((base + noise).clamp(0, 255) as u8);
                    }
                }
            }
            RgbImage {
                width: w,
                height: h,
                pixels,
            }
        })
        .collect()
}

/// Measures every (size, batch) on `device_name` with `iterations` timed passes after a warm-up.
pub fn run(
    detector: &Path,
    device_name: &str,
    sizes: &[(usize, usize)],
    batches: &[usize],
    iterations: usize,
    progress: &mut dyn FnMut(&DetectRow),
) -> Result<Vec<DetectRow>, String> {
    let device = crate::embed::device(device_name).map_err(|e| e.to_string())?;
    let err = |e: DetectorError| e.to_string();
    let cpu = FaceDetector::load(detector, &candle_core::Device::Cpu).map_err(err)?;
    let dev = FaceDetector::load(detector, &device).map_err(err)?;
    let max_batch = batches.iter().copied().max().unwrap_or(1).max(1);
    let mut rows = Vec::new();
    for &(w, h) in sizes {
        let images = synthetic_images(max_batch, w, h, 1);
        let parity_images = max_batch.min(4);
        let refs: Vec<&RgbImage> = images[..parity_images].iter().collect();
        let want = cpu.score_maps(&refs).map_err(err)?;
        let got = dev.score_maps(&refs).map_err(err)?;
        let max_abs = want
            .iter()
            .zip(&got)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0f32, f32::max);
        let boxes = |d: &FaceDetector| {
            d.detect(&refs, -0.5, parity_images).map(|v| {
                v.into_iter()
                    .map(|f| f.into_iter().map(|d| d.rect).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            })
        };
        let same_boxes = boxes(&cpu).map_err(err)? == boxes(&dev).map_err(err)?;
        for &batch in batches {
            let refs: Vec<&RgbImage> = images[..batch].iter().collect();
            dev.detect(&refs, 0.0, batch).map_err(err)?;
            let start = Instant::now();
            for _ in 0..iterations {
                dev.detect(&refs, 0.0, batch).map_err(err)?;
            }
            let seconds = start.elapsed().as_secs_f64();
            let row = DetectRow {
                device: device_name.to_string(),
                part: "detector",
                width: w,
                height: h,
                batch,
                iterations,
                seconds,
                images_per_second: (batch * iterations) as f64 / seconds.max(1e-12),
                max_abs_diff_vs_cpu: max_abs,
                same_boxes_as_cpu: same_boxes,
                parity_images,
            };
            progress(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_seeded_and_differ_per_image() {
        let a = synthetic_images(2, 40, 24, 7);
        let b = synthetic_images(2, 40, 24, 7);
        assert_eq!(a[0].pixels, b[0].pixels);
        assert_ne!(a[0].pixels, a[1].pixels);
        assert_eq!(a[1].pixels.len(), 40 * 24 * 3);
        assert_ne!(synthetic_images(1, 40, 24, 8)[0].pixels, a[0].pixels);
    }
}
