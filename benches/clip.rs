//! Throughput of CLIP ViT-B/32 (OpenAI's shapes: 224 px, patch 32, width 768, 12 layers; text width
//! 512, 12 layers) with seeded random weights generated in memory (no file needed; no CLIP weights
//! can be downloaded here), f32.
//! - `clip_vit_b32_image/8`: the vision tower on a batch of 8 preprocessed images (images/s).
//! - `clip_vit_b32_preprocess_and_image/8`: the same from 250x250 RGB images (resize + crop too).
//! - `clip_vit_b32_text/10`: ten prompts through the text tower (start-up cost of the directions).
//!
//! Runs on CUDA when the binary is built with `--features cuda` and a GPU is present, else on the CPU.
//! Run: `cargo bench --bench clip`. Results: tools/clip/README.md.

use candle_core::{Device, Tensor};
use clip_cluster::hallucinate::clip::tokenizer::{CONTEXT, EOT, SOT};
use clip_cluster::hallucinate::clip::{random_tensors, ClipArchitecture, ClipModel};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use image::RgbImage;

fn bench(c: &mut Criterion) {
    let device = if candle_core::utils::cuda_is_available() {
        Device::new_cuda(0).expect("CUDA device 0")
    } else {
        Device::Cpu
    };
    let kind = if device.is_cuda() { "cuda" } else { "cpu" };
    let arch = ClipArchitecture::vit_b_32();
    let tensors = random_tensors(&arch, 42, &device).expect("random weights");
    let model = ClipModel::from_tensors(
        tensors,
        Some(&arch),
        std::path::Path::new("random"),
        &device,
    )
    .expect("model");
    let images: Vec<RgbImage> = (0..8u32)
        .map(|i| {
            RgbImage::from_fn(250, 250, |x, y| {
                image::Rgb([(x * 3 + i) as u8, (y * 5) as u8, ((x ^ y) + 7 * i) as u8])
            })
        })
        .collect();
    let pixels = model.pixels(&images).expect("pixels");
    let sync = |t: Tensor| {
        // to_vec2 waits for the device, so GPU timings include the work.
        t.to_vec2::<f32>().expect("features")
    };

    let mut g = c.benchmark_group(format!("clip_vit_b32_{kind}_f32"));
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(40));
    g.throughput(Throughput::Elements(8));
    g.bench_with_input(BenchmarkId::new("image", 8), &pixels, |b, p| {
        b.iter(|| sync(model.image_features(p).expect("forward")))
    });
    g.bench_with_input(
        BenchmarkId::new("preprocess_and_image", 8),
        &images,
        |b, imgs| {
            b.iter(|| {
                sync(
                    model
                        .image_features(&model.pixels(imgs).expect("pixels"))
                        .expect("forward"),
                )
            })
        },
    );
    let ids: Vec<Vec<u32>> = (0..10u32)
        .map(|i| {
            let mut r = vec![0u32; CONTEXT];
            r[0] = SOT;
            for (j, v) in r[1..12].iter_mut().enumerate() {
                *v = 320 + 37 * i + j as u32;
            }
            r[12] = EOT;
            r
        })
        .collect();
    g.throughput(Throughput::Elements(10));
    g.bench_with_input(BenchmarkId::new("text", 10), &ids, |b, ids| {
        b.iter(|| sync(model.text_features(ids).expect("forward")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
