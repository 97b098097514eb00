//! The MMOD face detector port (`embed::detect`) against the real dlib: the fixtures in
//! `tests/fixtures/detector/reference.json` were made by `tools/dlib/detector_reference.py` with
//! dlib 20's `cnn_face_detection_model_v1` (upsample 0). Needs LFW and the detector weights
//! (skipped with the reason when missing; CI requires both).

use std::path::PathBuf;

use clip_cluster::embed::detect::{Detection, FaceDetector};
use clip_cluster::embed::image::{self as decode, DecodeLimits, RgbImage};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn detector(test: &str) -> Option<FaceDetector> {
    let dir = std::env::var_os("CLIP_CLUSTER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models"));
    let path = dir.join("mmod_human_face_detector.dat");
    if !path.is_file() {
        let msg = format!(
            "{} not found (run tools/dlib/fetch_models.sh or set CLIP_CLUSTER_MODELS)",
            path.display()
        );
        assert!(
            std::env::var_os("CLIP_CLUSTER_REQUIRE_MODELS").is_none(),
            "{test}: {msg}"
        );
        println!("SKIP {test}: {msg}");
        return None;
    }
    Some(FaceDetector::load(&path, &candle_core::Device::Cpu).expect("detector loads"))
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/detector/reference.json"))
        .expect("fixture readable");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// A grey canvas with images pasted at (x, y), later ones on top, clipped (the script's `canvas`).
pub fn canvas(w: usize, h: usize, grey: u8, pastes: &[(&RgbImage, i64, i64)]) -> RgbImage {
    let mut px = vec![grey; w * h * 3];
    for (img, x, y) in pastes {
        for r in 0..img.height as i64 {
            for c in 0..img.width as i64 {
                let (cx, cy) = (x + c, y + r);
                if cx < 0 || cy < 0 || cx >= w as i64 || cy >= h as i64 {
                    continue;
                }
                let d = (cy as usize * w + cx as usize) * 3;
                px[d..d + 3].copy_from_slice(&img.rgb(c as usize, r as usize));
            }
        }
    }
    RgbImage::new(w, h, px).expect("canvas size")
}

pub fn crop(img: &RgbImage, l: usize, t: usize, w: usize, h: usize) -> RgbImage {
    let mut px = Vec::with_capacity(w * h * 3);
    for r in t..t + h {
        px.extend_from_slice(&img.pixels[(r * img.width + l) * 3..(r * img.width + l + w) * 3]);
    }
    RgbImage::new(w, h, px).expect("crop size")
}

fn synthetic(name: &str, w: usize, h: usize, grey: u8) -> RgbImage {
    let mut px = Vec::with_capacity(w * h * 3);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            px.extend_from_slice(&match name {
                "grey" => [grey; 3],
                "black" => [0; 3],
                _ => [
                    ((x * 3 + y * 5 + (x * y) / 64) % 256) as u8,
                    (((x * x) / 16 + y * 2) % 256) as u8,
                    (((x + 2 * y) ^ ((x * y) / 128)) % 256) as u8,
                ],
            });
        }
    }
    RgbImage::new(w, h, px).expect("synthetic size")
}

#[test]
fn detections_match_dlib() {
    let Some(det) = detector("detections_match_dlib") else {
        return;
    };
    let Some(lfw) = crate::support::lfw_root("detections_match_dlib") else {
        return;
    };
    let fx = fixture();
    let grey = fx["grey"].as_u64().expect("grey") as u8;
    let load = |rel: &str| -> Option<RgbImage> {
        let bytes = std::fs::read(lfw.join(rel)).expect("LFW image readable");
        let want = fx["file_sha256"][rel].as_str().expect("file hash");
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (got == want).then(|| decode::decode(&bytes, &DecodeLimits::default()).expect("decodes"))
    };
    let mut images = Vec::new();
    let mut wants = Vec::new();
    let mut names = Vec::new();
    for case in fx["cases"].as_array().expect("cases") {
        let kind = case["kind"].as_str().expect("kind");
        let img = match kind {
            "lfw" => load(case["file"].as_str().expect("file")),
            "tight" => load(case["file"].as_str().expect("file")).map(|img| {
                let c: Vec<usize> = case["crop"]
                    .as_array()
                    .expect("crop")
                    .iter()
                    .map(|v| v.as_u64().expect("int") as usize)
                    .collect();
                crop(&img, c[0], c[1], c[2], c[3])
            }),
            "canvas" | "collage" => {
                let size = &case["canvas"];
                let pastes: Option<Vec<(RgbImage, i64, i64)>> = case["pastes"]
                    .as_array()
                    .expect("pastes")
                    .iter()
                    .map(|p| Some((load(p[0].as_str()?)?, p[1].as_i64()?, p[2].as_i64()?)))
                    .collect();
                pastes.map(|ps| {
                    let refs: Vec<(&RgbImage, i64, i64)> =
                        ps.iter().map(|(i, x, y)| (i, *x, *y)).collect();
                    canvas(
                        size[0].as_u64().expect("w") as usize,
                        size[1].as_u64().expect("h") as usize,
                        grey,
                        &refs,
                    )
                })
            }
            _ => Some(synthetic(
                case["name"].as_str().expect("name"),
                250,
                250,
                grey,
            )),
        };
        let Some(img) = img else {
            println!("skipping a case: local LFW file differs from the fixture's");
            continue;
        };
        let want: Vec<(i64, i64, i64, i64, f64)> = case["dets"]
            .as_array()
            .expect("dets")
            .iter()
            .map(|d| {
                let v: Vec<f64> = d
                    .as_array()
                    .expect("det")
                    .iter()
                    .map(|x| x.as_f64().expect("num"))
                    .collect();
                (v[0] as i64, v[1] as i64, v[2] as i64, v[3] as i64, v[4])
            })
            .collect();
        names.push(format!(
            "{kind} {}",
            case.get("file")
                .or(case.get("name"))
                .map(|v| v.to_string())
                .unwrap_or_default()
        ));
        images.push(img);
        wants.push(want);
    }
    assert!(
        images.len() >= 50,
        "most fixture cases ran ({})",
        images.len()
    );
    let refs: Vec<&RgbImage> = images.iter().collect();
    let got = det.detect(&refs, 0.0, 8).expect("detect");
    let mut worst = 0f64;
    let mut faces = 0;
    let mut mismatches = Vec::new();
    for ((name, want), got) in names.iter().zip(&wants).zip(&got) {
        let boxes = |d: &[Detection]| {
            d.iter()
                .map(|d| (d.rect.l, d.rect.t, d.rect.r, d.rect.b))
                .collect::<Vec<_>>()
        };
        let want_boxes: Vec<_> = want.iter().map(|w| (w.0, w.1, w.2, w.3)).collect();
        if boxes(got) != want_boxes {
            mismatches.push(format!(
                "{name}: got {:?} want {:?}",
                got.iter()
                    .map(|d| (d.rect.l, d.rect.t, d.rect.r, d.rect.b, d.confidence))
                    .collect::<Vec<_>>(),
                want
            ));
            continue;
        }
        for (g, w) in got.iter().zip(want) {
            worst = worst.max((f64::from(g.confidence) - w.4).abs());
        }
        faces += want.len();
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} images differ:\n{}",
        mismatches.len(),
        images.len(),
        mismatches.join("\n")
    );
    println!(
        "{} images, {faces} faces: boxes identical, confidence max |diff| {worst:.2e}",
        images.len()
    );
    assert!(faces >= 70, "the fixture's faces were compared ({faces})");
    assert!(worst < 1e-3, "confidence differs from dlib's by {worst}");
}

#[test]
fn truncated_or_foreign_detector_files_are_typed_errors() {
    let Some(_) = detector("truncated_or_foreign_detector_files_are_typed_errors") else {
        return;
    };
    let dir = std::env::var_os("CLIP_CLUSTER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models"));
    let data = std::fs::read(dir.join("mmod_human_face_detector.dat")).expect("readable");
    let dev = candle_core::Device::Cpu;
    for cut in [0, 10, 200, data.len() / 2, data.len() - 1] {
        let err = FaceDetector::from_bytes(&data[..cut], "cut", &dev)
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("not dlib's MMOD detector"),
            "{err}"
        );
    }
    let other =
        std::fs::read(dir.join("dlib_face_recognition_resnet_model_v1.dat")).expect("readable");
    let err = FaceDetector::from_bytes(&other, "resnet", &dev)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("expected loss_mmod_"), "{err}");
}

/// `detect_with(.., refine = true)`: the same LFW image pasted at different places of a larger
/// picture (as a crop in a group photo) gets nearly the same box relative to the image, where
/// dlib's boxes snap to the network's output grid (8 pyramid pixels, about 11 image pixels at an
/// LFW face's level) and to the pyramid's levels (a factor 1.2). Same faces, same order, same
/// scores either way. Ten images of TRAINING identities (`REFINE_*` were chosen on these).
#[test]
fn refined_boxes_follow_the_face_across_the_picture() {
    let test = "refined_boxes_follow_the_face_across_the_picture";
    let Some(det) = detector(test) else {
        return;
    };
    let Some(lfw) = crate::support::lfw_root(test) else {
        return;
    };
    let names = [
        "Aaron_Peirsol",
        "Ari_Fleischer",
        "Britney_Spears",
        "Constance_Marie",
        "Eileen_Coparropa",
        "George_W_Bush",
        "Hugo_Chavez",
        "Joan_Laporta",
        "Julianne_Moore",
        "Lleyton_Hewitt",
    ];
    let offsets: [(i64, i64); 8] = [
        (0, 0),
        (3, 5),
        (5, 2),
        (7, 7),
        (10, 3),
        (13, 11),
        (37, 61),
        (90, 45),
    ];
    // Per mode (dlib, refined): the largest and the summed spread of a box corner across places.
    let (mut worst, mut total) = ([0i64; 2], [0i64; 2]);
    for name in names {
        let path = lfw
            .join("images")
            .join(name)
            .join(format!("{name}_0001.jpg"));
        let bytes = std::fs::read(&path).expect("LFW image readable");
        let img = decode::decode(&bytes, &DecodeLimits::default()).expect("decodes");
        let pictures: Vec<RgbImage> = offsets
            .iter()
            .map(|&(x, y)| canvas(400, 380, 128, &[(&img, x, y)]))
            .collect();
        let refs: Vec<&RgbImage> = pictures.iter().collect();
        let raw = det.detect_with(&refs, 0.0, 8, false).expect("detect");
        let refined = det.detect_with(&refs, 0.0, 8, true).expect("detect");
        for (mode, found) in [&raw, &refined].into_iter().enumerate() {
            // The best face of each picture, moved back to the image's own pixels.
            let boxes: Vec<[i64; 4]> = found
                .iter()
                .zip(&offsets)
                .map(|(d, &(x, y))| {
                    let r = d.first().expect("a face in every picture").rect;
                    [r.l - x, r.t - y, r.r - x, r.b - y]
                })
                .collect();
            let spread = (0..4)
                .map(|i| {
                    let lo = boxes.iter().map(|b| b[i]).min().unwrap_or(0);
                    let hi = boxes.iter().map(|b| b[i]).max().unwrap_or(0);
                    hi - lo
                })
                .max()
                .unwrap_or(0);
            worst[mode] = worst[mode].max(spread);
            total[mode] += spread;
            println!(
                "{name} {}: {spread} px {boxes:?}",
                ["dlib", "refined"][mode]
            );
        }
        for (a, b) in raw.iter().zip(&refined) {
            assert_eq!(a.len(), b.len(), "{name}: the same faces");
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x.confidence, y.confidence, "{name}: the same scores");
            }
        }
    }
    let mean = |m: usize| total[m] as f64 / names.len() as f64;
    println!(
        "a box corner moves by {:.1} px on average, {} at most (dlib); {:.1}, {} (refined)",
        mean(0),
        worst[0],
        mean(1),
        worst[1]
    );
    assert!(
        mean(0) >= 10.0,
        "dlib's boxes snap to the grid ({:.1} px)",
        mean(0)
    );
    assert!(
        mean(1) <= 6.0 && worst[1] <= 10,
        "refined boxes follow the face ({:.1} px on average, {} at most)",
        mean(1),
        worst[1]
    );
}
