//! Golden tests for the dlib ResNet in candle against `tests/fixtures/dlib/embeddings.json`
//! (written by the numpy reference `tools/dlib/reference.py`, which agrees with dlib 20 itself to
//! 3e-7). The synthetic inputs need no decoder and no resize, so they test the network alone.

use std::path::PathBuf;

use candle_core::{DType, Device};
use clip_cluster::embed::network::{DlibResNet, ResNetError, CHIP, DIM};

use crate::support::models_dir;

fn fixture() -> serde_json::Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dlib/embeddings.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The two formula inputs of the fixture (see its README), as 150x150x3 RGB HWC bytes.
fn synthetic(name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHIP * CHIP * 3);
    for r in 0..CHIP {
        for c in 0..CHIP {
            for ch in 0..3 {
                v.push(match name {
                    "synthetic_a" => ((3 * r + 5 * c + 80 * ch) % 256) as u8,
                    _ => ((r * c + 37 * ch * (r + 1)) % 256) as u8,
                });
            }
        }
    }
    v
}

fn load() -> Option<DlibResNet> {
    let dir = models_dir()?;
    let path = dir.join("dlib_face_recognition_resnet_model_v1.dat");
    Some(DlibResNet::load(&path, &Device::Cpu, DType::F32).expect("model loads"))
}

#[test]
fn synthetic_inputs_match_the_reference_to_1e4() {
    let Some(net) = load() else { return };
    assert_eq!(net.sha256(), clip_cluster::embed::network::MODEL_SHA256);
    let fx = fixture();
    let entries = fx["synthetic"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let chips: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| synthetic(e["name"].as_str().unwrap()))
        .collect();
    let refs: Vec<&[u8]> = chips.iter().map(|c| c.as_slice()).collect();
    let got = net.embed_chips(&refs).unwrap();
    for (e, g) in entries.iter().zip(&got) {
        let want: Vec<f64> = e["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(g.len(), DIM);
        let max = want
            .iter()
            .zip(g)
            .map(|(w, g)| (w - *g as f64).abs())
            .fold(0.0, f64::max);
        eprintln!("{}: max abs diff {max:.2e}", e["name"]);
        assert!(max <= 1e-4, "{}: max abs diff {max}", e["name"]);
    }
    // Batching does not change results: one chip alone equals its row in the batch.
    let alone = net.embed_chips(&refs[1..2]).unwrap();
    let max = alone[0]
        .iter()
        .zip(&got[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max <= 1e-5, "batch vs single differ by {max}");
}

#[test]
fn wrong_chip_size_and_bad_files_are_typed_errors() {
    let Some(net) = load() else { return };
    let short = vec![0u8; 100];
    assert!(matches!(
        net.embed_chips(&[&short]),
        Err(ResNetError::ChipSize { index: 0, got: 100 })
    ));

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.dat");
    std::fs::write(&garbage, b"not a dlib model at all").unwrap();
    let err = DlibResNet::load(&garbage, &Device::Cpu, DType::F32)
        .err()
        .expect("garbage refused");
    assert!(err.to_string().contains("garbage.dat"), "{err}");

    let real = std::fs::read(
        models_dir()
            .unwrap()
            .join("dlib_face_recognition_resnet_model_v1.dat"),
    )
    .unwrap();
    let truncated = dir.path().join("truncated.dat");
    std::fs::write(&truncated, &real[..real.len() / 2]).unwrap();
    let err = DlibResNet::load(&truncated, &Device::Cpu, DType::F32)
        .err()
        .expect("truncated refused");
    assert!(matches!(err, ResNetError::Format { .. }), "{err}");

    let missing = dir.path().join("missing.dat");
    assert!(matches!(
        DlibResNet::load(&missing, &Device::Cpu, DType::F32),
        Err(ResNetError::Io { .. })
    ));
}

#[test]
fn half_precision_on_the_cpu_is_emulated_close_to_f32() {
    let Some(dir) = models_dir() else { return };
    let path = dir.join("dlib_face_recognition_resnet_model_v1.dat");
    let chips: Vec<Vec<u8>> = ["synthetic_a", "synthetic_b"]
        .iter()
        .map(|n| synthetic(n))
        .collect();
    let refs: Vec<&[u8]> = chips.iter().map(|c| c.as_slice()).collect();
    let full = DlibResNet::load(&path, &Device::Cpu, DType::F32)
        .unwrap()
        .embed_chips(&refs)
        .unwrap();
    for (dtype, min_cos, max_abs) in [
        (DType::BF16, 0.9999f32, 1e-2f32),
        (DType::F16, 0.99999, 1e-3),
    ] {
        let half = DlibResNet::load(&path, &Device::Cpu, dtype)
            .unwrap()
            .embed_chips(&refs)
            .unwrap();
        for (a, b) in full.iter().zip(&half) {
            let max = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let cos = a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (n(a) * n(b));
            assert!(
                max > 0.0,
                "{dtype:?}: rounding changed nothing, so it is not applied"
            );
            assert!(
                max <= max_abs && cos >= min_cos,
                "{dtype:?}: max {max}, cosine {cos}"
            );
        }
    }
}

/// `bench-embed`'s measurement (what a GPU run will print) works on the CPU: f32 is the CPU
/// reference itself (zero difference), emulated bf16 stays close, every cell has a speed.
#[test]
fn bench_embed_measures_speed_and_parity() {
    let Some(dir) = models_dir() else { return };
    let model = dir.join("dlib_face_recognition_resnet_model_v1.dat");
    let mut seen = 0;
    let rows = clip_cluster::bench::embed::run(
        &model,
        "cpu",
        &[DType::F32, DType::BF16],
        &[1, 3],
        1,
        &mut |_| seen += 1,
    )
    .unwrap();
    assert_eq!((rows.len(), seen), (4, 4));
    for r in &rows {
        assert!(r.faces_per_second > 0.0 && r.parity_faces == 3);
        if r.dtype == "f32" {
            assert_eq!(r.max_abs_diff_vs_cpu_f32, 0.0);
        } else {
            assert!(r.min_cosine_vs_cpu_f32 > 0.999, "{r:?}");
        }
    }
    assert!(
        clip_cluster::bench::embed::run(&model, "tpu", &[DType::F32], &[1], 1, &mut |_| {})
            .is_err()
    );
}
