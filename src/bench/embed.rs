//! The identity network's throughput and device parity, for the machine the binary runs on
//! (`clip-cluster bench-embed`): built for the GPU machine, which has no Rust toolchain, so that
//! one prepared command measures what issue 4 asks (faces/s at batch 64/512/2048 in f32 and
//! bf16; max |diff| against the CPU in f32) and prints it.
//!
//! Inputs are seeded synthetic chips, different per face. Throughput times the forward pass on
//! an input already on the device, synchronised by reading the output back (so it counts the
//! device work and the 128-float download, not the chip upload); parity embeds the same chips on
//! the CPU in f32 and on the device in the dtype under test.

use std::path::Path;
use std::time::Instant;

use candle_core::DType;
use serde::Serialize;

use crate::embed::network::{DlibResNet, ResNetError, CHIP};

/// One measured (dtype, batch) cell.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub device: String,
    pub dtype: String,
    pub batch: usize,
    pub iterations: usize,
    pub seconds: f64,
    pub faces_per_second: f64,
    /// Largest |device - CPU f32| over the first `parity_faces` faces' raw outputs.
    pub max_abs_diff_vs_cpu_f32: f32,
    /// Smallest cosine between device and CPU f32 vectors over those faces.
    pub min_cosine_vs_cpu_f32: f32,
    pub parity_faces: usize,
}

/// `n` seeded synthetic chips (150x150 RGB, row-major), different per face.
pub fn synthetic_chips(n: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|f| {
            let mut s = seed ^ (f as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            (0..CHIP * CHIP * 3)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 56) as u8
                })
                .collect()
        })
        .collect()
}

pub fn dtype_of(name: &str) -> Option<DType> {
    match name {
        "f32" => Some(DType::F32),
        "bf16" => Some(DType::BF16),
        "f16" => Some(DType::F16),
        _ => None,
    }
}

/// Measures every (dtype, batch) on `device` with `iterations` timed passes after one warm-up.
pub fn run(
    model: &Path,
    device_name: &str,
    dtypes: &[DType],
    batches: &[usize],
    iterations: usize,
    progress: &mut dyn FnMut(&BenchRow),
) -> Result<Vec<BenchRow>, String> {
    let device = crate::embed::device(device_name).map_err(|e| e.to_string())?;
    let err = |e: ResNetError| e.to_string();
    let max_batch = batches.iter().copied().max().unwrap_or(1).max(1);
    let chips = synthetic_chips(max_batch, 1);
    let parity_faces = max_batch.min(64);
    let parity_refs: Vec<&[u8]> = chips[..parity_faces].iter().map(Vec::as_slice).collect();
    let cpu = DlibResNet::load(model, &candle_core::Device::Cpu, DType::F32).map_err(err)?;
    let want = cpu.embed_chips(&parity_refs).map_err(err)?;
    let mut rows = Vec::new();
    for &dtype in dtypes {
        let net = DlibResNet::load(model, &device, dtype).map_err(err)?;
        let got = net.embed_chips(&parity_refs).map_err(err)?;
        let mut max_abs = 0f32;
        let mut min_cos = 1f32;
        for (a, b) in got.iter().zip(&want) {
            for (x, y) in a.iter().zip(b) {
                max_abs = max_abs.max((x - y).abs());
            }
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
            min_cos = min_cos.min(dot / (na * nb).max(1e-12));
        }
        for &batch in batches {
            let refs: Vec<&[u8]> = chips[..batch].iter().map(Vec::as_slice).collect();
            let x = net.input(&refs).map_err(err)?;
            // Warm-up: kernel compilation, allocator growth.
            net.forward(&x)
                .and_then(|o| o.to_vec2::<f32>().map_err(ResNetError::from))
                .map_err(err)?;
            let start = Instant::now();
            for _ in 0..iterations {
                net.forward(&x)
                    .and_then(|o| o.to_vec2::<f32>().map_err(ResNetError::from))
                    .map_err(err)?;
            }
            let seconds = start.elapsed().as_secs_f64();
            let row = BenchRow {
                device: device_name.to_string(),
                dtype: format!("{dtype:?}").to_lowercase(),
                batch,
                iterations,
                seconds,
                faces_per_second: (batch * iterations) as f64 / seconds.max(1e-12),
                max_abs_diff_vs_cpu_f32: max_abs,
                min_cosine_vs_cpu_f32: min_cos,
                parity_faces,
            };
            progress(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}
