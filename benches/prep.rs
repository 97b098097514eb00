//! Criterion: decode + preprocess throughput on one core for LFW JPEGs (250x250), variants
//! compared in one run: decode only, decode + centre chip, decode + aligned chip (5-point
//! landmarks on the centred 1/2.2 box, then dlib's face chip). Elements are faces, so criterion's
//! `elem/s` is faces per second per core. Needs LFW (`CLIP_CLUSTER_LFW` or `../shared/data/lfw`)
//! and, for the aligned variant, the shape predictor (`CLIP_CLUSTER_MODELS` or `models/`);
//! whatever is missing is skipped with a message.
//!
//! `cargo bench --bench prep`

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use clip_cluster::embed::chip::{ChipMode, Preprocessor};
use clip_cluster::embed::image::{self as decode, DecodeLimits};
use clip_cluster::embed::landmarks::ShapePredictor;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Faces per iteration, spread evenly over the sorted LFW file list (a fixed, seeded-by-order
/// sample; read into memory once, so no file IO is measured).
const N_FACES: usize = 64;

fn lfw_sample() -> Option<Vec<Vec<u8>>> {
    let root = std::env::var_os("CLIP_CLUSTER_LFW")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/lfw"));
    let images = root.join("images");
    let mut people: Vec<PathBuf> = std::fs::read_dir(&images)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    people.sort();
    let mut files = Vec::new();
    for p in people {
        let mut f: Vec<PathBuf> = std::fs::read_dir(&p)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        f.sort();
        files.extend(
            f.into_iter()
                .filter(|f| f.extension().is_some_and(|x| x == "jpg")),
        );
    }
    if files.is_empty() {
        return None;
    }
    (0..N_FACES)
        .map(|i| std::fs::read(&files[i * files.len() / N_FACES]).ok())
        .collect()
}

fn predictor() -> Option<Arc<ShapePredictor>> {
    let dir = std::env::var_os("CLIP_CLUSTER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    ShapePredictor::load(&dir.join("shape_predictor_5_face_landmarks.dat"))
        .ok()
        .map(Arc::new)
}

fn bench_prep(c: &mut Criterion) {
    let Some(faces) = lfw_sample() else {
        eprintln!("prep bench skipped: LFW not found (set CLIP_CLUSTER_LFW)");
        return;
    };
    let limits = DecodeLimits::default();
    let mut g = c.benchmark_group("prep_lfw_250px");
    g.sample_size(20);
    g.throughput(Throughput::Elements(N_FACES as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            faces
                .iter()
                .map(|f| {
                    decode::decode(f, &limits)
                        .map(|i| i.pixels.len())
                        .unwrap_or(0)
                })
                .sum::<usize>()
        })
    });
    let centre = Preprocessor {
        limits: limits.clone(),
        mode: ChipMode::Centre { crop_fraction: 0.5 },
    };
    g.bench_function("decode_centre_chip", |b| {
        b.iter(|| {
            faces
                .iter()
                .map(|f| centre.chip(black_box(f)).map(|c| c[0]).unwrap_or(0) as usize)
                .sum::<usize>()
        })
    });
    match predictor() {
        Some(sp) => {
            let aligned = Preprocessor {
                limits: limits.clone(),
                mode: ChipMode::Aligned {
                    predictor: sp,
                    box_fraction: 1.0 / 2.2,
                    padding: 0.25,
                    landmark_passes: 1,
                },
            };
            g.bench_function("decode_aligned_chip", |b| {
                b.iter(|| {
                    faces
                        .iter()
                        .map(|f| aligned.chip(black_box(f)).map(|c| c[0]).unwrap_or(0) as usize)
                        .sum::<usize>()
                })
            });
        }
        None => eprintln!(
            "aligned variant skipped: shape predictor not found (tools/dlib/fetch_models.sh)"
        ),
    }
    g.finish();
}

criterion_group!(benches, bench_prep);
criterion_main!(benches);
