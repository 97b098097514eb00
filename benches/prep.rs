//! Criterion: decode + preprocess throughput on one core for LFW JPEGs (250x250), variants
//! compared in one run: decode only, decode + centre chip, decode + aligned chip (5-point
//! landmarks on the centred 1/2.2 box, then dlib's face chip). Elements are faces, so criterion's
//! `elem/s` is faces per second per core. Needs LFW (`CLIP_CLUSTER_LFW` or `../shared/data/lfw`)
//! and, for the aligned variant, the shape predictor (`CLIP_CLUSTER_MODELS` or `models/`);
//! whatever is missing is skipped with a message.
//!
//! The `locate` group: the face detector on 250 px crops and on a 1000x750 photo, and the whole
//! embedder with `embed.locate = "detect"` against `"fixed"` (needs the detector file too).
//!
//! `cargo bench --bench prep`

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use clip_cluster::embed::chip::{ChipMode, Preprocessor};
use clip_cluster::embed::detect::FaceDetector;
use clip_cluster::embed::image::{self as decode, DecodeLimits, RgbImage};
use clip_cluster::embed::landmarks::ShapePredictor;
use clip_cluster::embed::{DlibEmbedder, FaceEmbedder};
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

fn models_dir() -> PathBuf {
    std::env::var_os("CLIP_CLUSTER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

fn predictor() -> Option<Arc<ShapePredictor>> {
    let dir = models_dir();
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
    // The review page's thumbnail (api.keep_thumbnails): a crop of the decoded image, scaled
    // and JPEG-encoded, per face beside the embedding.
    let decoded: Vec<_> = faces
        .iter()
        .filter_map(|f| decode::decode(f, &limits).ok())
        .collect();
    let spec = clip_cluster::embed::thumbnail::ThumbnailSpec {
        px: 96,
        box_fraction: 0.4545,
    };
    g.bench_function("thumbnail_96px", |b| {
        b.iter(|| {
            decoded
                .iter()
                .map(|i| {
                    clip_cluster::embed::thumbnail::thumbnail(i, Some([70, 70, 179, 179]), spec)
                        .len()
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

/// The face detector (`embed.locate = "detect"`) on the sample's 250 px crops and on a photo
/// (1000x750, four of them on grey), images per second; and the whole embedder (decode, locate,
/// landmarks, chip, network) with `locate = "detect"` against `"fixed"`, in the same run.
fn bench_locate(c: &mut Criterion) {
    let Some(faces) = lfw_sample() else {
        eprintln!("locate bench skipped: LFW not found (set CLIP_CLUSTER_LFW)");
        return;
    };
    let dir = models_dir();
    let Ok(det) = FaceDetector::load(&dir.join("mmod_human_face_detector.dat"), &Device::Cpu)
    else {
        eprintln!(
            "locate bench skipped: no face detector in {} (tools/dlib/fetch_models.sh)",
            dir.display()
        );
        return;
    };
    let limits = DecodeLimits::default();
    let crops: Vec<RgbImage> = faces[..8]
        .iter()
        .map(|f| decode::decode(f, &limits).expect("LFW decodes"))
        .collect();
    let (w, h) = (1000, 750);
    let mut px = vec![128u8; w * h * 3];
    for (i, img) in crops[..4].iter().enumerate() {
        let (x0, y0) = (40 + (i % 2) * 500, 60 + (i / 2) * 380);
        for r in 0..img.height {
            let d = ((y0 + r) * w + x0) * 3;
            px[d..d + img.width * 3]
                .copy_from_slice(&img.pixels[r * img.width * 3..(r + 1) * img.width * 3]);
        }
    }
    let photo = RgbImage::new(w, h, px).expect("photo size");
    let mut g = c.benchmark_group("locate");
    g.sample_size(10);
    let refs: Vec<&RgbImage> = crops.iter().collect();
    g.throughput(Throughput::Elements(refs.len() as u64));
    g.bench_function("detect_250px_batch8", |b| {
        b.iter(|| det.detect(black_box(&refs), -0.5, 8).expect("detects"))
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("detect_photo_1000x750", |b| {
        b.iter(|| det.detect(black_box(&[&photo]), -0.5, 1).expect("detects"))
    });
    let embedder = |locate: &str| {
        let env: Vec<(String, String)> = [
            ("EMBED__LOCATE", locate.to_string()),
            (
                "EMBED__MODEL_PATH",
                dir.join("dlib_face_recognition_resnet_model_v1.dat")
                    .display()
                    .to_string(),
            ),
            (
                "EMBED__LANDMARKS_PATH",
                dir.join("shape_predictor_5_face_landmarks.dat")
                    .display()
                    .to_string(),
            ),
            (
                "EMBED__DETECTOR_PATH",
                dir.join("mmod_human_face_detector.dat")
                    .display()
                    .to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (format!("CLIP_CLUSTER__{k}"), v))
        .collect();
        let cfg = clip_cluster::config::Config::load_from(None, &env).expect("configuration");
        DlibEmbedder::from_config(&cfg).expect("embedder")
    };
    g.throughput(Throughput::Elements(refs.len() as u64));
    for locate in ["fixed", "detect"] {
        let e = embedder(locate);
        g.bench_function(format!("embed_250px_batch8_{locate}"), |b| {
            b.iter(|| e.embed_images(black_box(&refs)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_prep, bench_locate);
criterion_main!(benches);
