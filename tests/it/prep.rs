//! The preprocessing stage (`decode`, `align`) against the real dlib and Pillow: the fixtures in
//! `tests/fixtures/prep/reference.json` and `tests/fixtures/dlib/embeddings.json` were made by
//! `tools/dlib/prep_reference.py` and `tools/dlib/reference.py`. Tests that need LFW
//! (`CLIP_CLUSTER_LFW` or `../shared/data/lfw`) or the shape predictor (`CLIP_CLUSTER_MODELS` or
//! `models/`) print why and return when those are missing, and fail instead under
//! `CLIP_CLUSTER_REQUIRE_LFW` / `CLIP_CLUSTER_REQUIRE_MODELS` (CI); bad-input tests need nothing.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use clip_cluster::embed::align;
use clip_cluster::embed::chip::{self, ChipMode, Preprocessor};
use clip_cluster::embed::image::{self as decode, DecodeError, DecodeLimits, RgbImage};
use clip_cluster::embed::landmarks::{self, Point, Rect, ShapePredictor};
use clip_cluster::embed::EmbedError;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lfw_root(test: &str) -> Option<PathBuf> {
    crate::support::lfw_root(test)
}

fn predictor(test: &str) -> Option<Arc<ShapePredictor>> {
    let dir = std::env::var_os("CLIP_CLUSTER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models"));
    let path = dir.join("shape_predictor_5_face_landmarks.dat");
    if !path.is_file() {
        let msg = format!(
            "{} not found (run tools/dlib/fetch_models.sh or set CLIP_CLUSTER_MODELS)",
            path.display()
        );
        // CI sets this so that a setup that failed to fetch the weights fails these tests.
        assert!(
            std::env::var_os("CLIP_CLUSTER_REQUIRE_MODELS").is_none(),
            "{test}: {msg}"
        );
        println!("SKIP {test}: {msg}");
        return None;
    }
    Some(Arc::new(
        ShapePredictor::load(&path).expect("shape predictor loads"),
    ))
}

fn fixture(rel: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(rel)).expect("fixture readable");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The integer formula of `synthetic_image` in tools/dlib/prep_reference.py.
fn synthetic_image(w: usize, h: usize) -> RgbImage {
    let mut px = Vec::with_capacity(w * h * 3);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            px.push(((x * 3 + y * 5 + (x * y) / 64) % 256) as u8);
            px.push((((x * x) / 16 + y * 2) % 256) as u8);
            px.push((((x + 2 * y) ^ ((x * y) / 128)) % 256) as u8);
        }
    }
    RgbImage::new(w, h, px).unwrap()
}

fn rect_of(v: &Value) -> Rect {
    let b: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    Rect {
        left: b[0],
        top: b[1],
        right: b[2],
        bottom: b[3],
    }
}

fn parts_of(v: &Value) -> [Point; 5] {
    let mut out = [Point::default(); 5];
    for (o, p) in out.iter_mut().zip(v.as_array().unwrap()) {
        *o = Point {
            x: p[0].as_i64().unwrap(),
            y: p[1].as_i64().unwrap(),
        };
    }
    out
}

fn mean_distance(a: &[Point; 5], b: &[Point; 5]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(p, q)| (((p.x - q.x).pow(2) + (p.y - q.y).pow(2)) as f64).sqrt())
        .sum::<f64>()
        / 5.0
}

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encodes");
    out.into_inner()
}

/// A PNG signature and IHDR chunk (with its CRC) claiming `w` x `h` RGB pixels, and no data.
pub fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, no filter, no interlace
    let crc = crc32(&ihdr);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn class_of(bytes: &[u8], limits: &DecodeLimits) -> &'static str {
    match decode::decode(bytes, limits) {
        Ok(img) => panic!("decoded {}x{} from bad input", img.width, img.height),
        Err(e) => e.class(),
    }
}

#[test]
fn bad_inputs_are_typed_errors_not_panics() {
    let limits = DecodeLimits::default();
    let photo = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
    }));
    let jpeg = encode(&photo, image::ImageFormat::Jpeg);
    assert_eq!(
        decode::decode(&jpeg, &limits).map(|i| (i.width, i.height)),
        Ok((64, 48))
    );

    assert_eq!(class_of(&[], &limits), "empty");
    assert_eq!(
        class_of(b"this is not an image at all, just text", &limits),
        "unknown_format"
    );
    assert_eq!(class_of(&jpeg[..jpeg.len() / 2], &limits), "corrupt");
    assert_eq!(
        class_of(&[0xff, 0xd8, 0xff, 0x00, 0x13, 0x37, 0x00, 0x00], &limits),
        "corrupt"
    );
    let mut bad_png = png_header(64, 48);
    bad_png.extend_from_slice(b"\x00\x00\x00\x10IDATgarbage-garbage\x00\x00\x00\x00");
    assert_eq!(class_of(&bad_png, &limits), "corrupt");
    // Recognised by their magic bytes, but not formats we accept.
    assert_eq!(
        class_of(b"GIF89a\x40\x00\x30\x00\x00\x00\x00", &limits),
        "unsupported_format"
    );
    assert_eq!(
        class_of(
            b"BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00",
            &limits
        ),
        "unsupported_format"
    );
    let tight = DecodeLimits {
        max_image_bytes: jpeg.len() - 1,
        ..limits.clone()
    };
    assert_eq!(class_of(&jpeg, &tight), "too_many_bytes");

    // A 33-byte PNG claiming 10^10 pixels: refused from the header, before any pixel buffer.
    let bomb = png_header(100_000, 100_000);
    assert_eq!(bomb.len(), 33);
    assert_eq!(class_of(&bomb, &limits), "side_too_long");
    let wide = DecodeLimits {
        max_image_side_px: 200_000,
        ..limits.clone()
    };
    let e = decode::decode(&bomb, &wide).unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooManyPixels {
            width: 100_000,
            height: 100_000,
            max_image_pixels: limits.max_image_pixels
        }
    );
    assert!(matches!(EmbedError::from(e), EmbedError::TooLarge(_)));

    let tiny = encode(
        &image::DynamicImage::ImageRgb8(image::RgbImage::new(8, 8)),
        image::ImageFormat::Png,
    );
    let e = decode::decode(&tiny, &limits).unwrap_err();
    assert_eq!(e.class(), "too_small");
    assert!(matches!(EmbedError::from(e), EmbedError::Unusable(_)));
    let pre = Preprocessor {
        limits: limits.clone(),
        mode: ChipMode::Centre { crop_fraction: 0.5 },
    };
    assert!(matches!(
        pre.chip(b"garbage").map_err(EmbedError::from),
        Err(EmbedError::Decode(_))
    ));
}

#[test]
fn grey_rgba_png_and_webp_become_rgb() {
    let limits = DecodeLimits::default();
    let grey = image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(20, 17, |x, y| {
        image::Luma([(x * 10 + y) as u8])
    }));
    let rgb = decode::decode(&encode(&grey, image::ImageFormat::Png), &limits).unwrap();
    assert_eq!((rgb.width, rgb.height), (20, 17));
    assert_eq!(rgb.rgb(3, 2), [32, 32, 32]);
    // Alpha is dropped, not composited, as Pillow's convert("RGB").
    let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(18, 16, |x, _| {
        image::Rgba([x as u8, 7, 9, 3])
    }));
    let rgb = decode::decode(&encode(&rgba, image::ImageFormat::Png), &limits).unwrap();
    assert_eq!(rgb.rgb(5, 1), [5, 7, 9]);
    let webp = encode(&rgba.to_rgb8().into(), image::ImageFormat::WebP);
    let rgb = decode::decode(&webp, &limits).unwrap();
    assert_eq!(rgb.rgb(11, 3), [11, 7, 9]); // lossless WebP
    let chip = Preprocessor {
        limits,
        mode: ChipMode::Centre { crop_fraction: 0.5 },
    }
    .chip(&webp)
    .unwrap();
    assert_eq!(chip.len(), 150 * 150 * 3);
}

#[test]
fn centre_chip_matches_the_embedding_fixture_exactly() {
    let Some(lfw) = lfw_root("centre_chip_matches_the_embedding_fixture_exactly") else {
        return;
    };
    let fx = fixture("tests/fixtures/dlib/embeddings.json");
    let pre = Preprocessor {
        limits: DecodeLimits::default(),
        mode: ChipMode::Centre { crop_fraction: 0.5 },
    };
    assert_eq!(pre.id(), "centre0.5");
    for img in fx["images"].as_array().unwrap() {
        let path = img["path"].as_str().unwrap();
        let chip = pre.chip(&std::fs::read(lfw.join(path)).unwrap()).unwrap();
        assert_eq!(chip.len(), 150 * 150 * 3);
        let sum: u64 = chip.iter().map(|&v| u64::from(v)).sum();
        assert_eq!(sum, img["input_u8_sum"].as_u64().unwrap(), "{path}");
        assert_eq!(
            hex_sha256(&chip),
            img["input_u8_rgb_hwc_sha256"].as_str().unwrap(),
            "{path}"
        );
    }
}

#[test]
fn shape_predictor_and_chips_match_dlib_on_synthetic_images() {
    let Some(sp) = predictor("shape_predictor_and_chips_match_dlib_on_synthetic_images") else {
        return;
    };
    let fx = fixture("tests/fixtures/prep/reference.json");
    assert_eq!(sp.sha256(), fx["shape_predictor_sha256"].as_str().unwrap());
    let (size, padding) = (
        fx["chip_size"].as_u64().unwrap() as usize,
        fx["chip_padding"].as_f64().unwrap(),
    );
    for s in fx["synthetic"].as_array().unwrap() {
        let (w, h) = (
            s["width"].as_u64().unwrap() as usize,
            s["height"].as_u64().unwrap() as usize,
        );
        let img = synthetic_image(w, h);
        assert_eq!(
            hex_sha256(&img.pixels),
            s["image_sha256"].as_str().unwrap(),
            "formula differs from the script"
        );
        for l in s["landmarks"].as_array().unwrap() {
            let got = sp.predict(&img, rect_of(&l["box"]));
            assert_eq!(got, parts_of(&l["parts"]), "{w}x{h} box {}", l["box"]);
        }
        for c in s["chips"].as_array().unwrap() {
            let chip = align::face_chip(&img, &parts_of(&c["parts"]), size, padding);
            assert_eq!(
                hex_sha256(&chip),
                c["sha256"].as_str().unwrap(),
                "{w}x{h} chip for {}",
                c["parts"]
            );
        }
    }
}

/// Landmarks and chips on LFW against dlib: (a) on dlib's own HOG-detector box the port must
/// agree exactly; (b) the fixed centred box (no detector) is compared with (a) and the distance
/// printed. Decoding and the centre chip are checked bit for bit against Pillow too.
#[test]
fn lfw_landmarks_and_chips_match_dlib() {
    let Some(lfw) = lfw_root("lfw_landmarks_and_chips_match_dlib") else {
        return;
    };
    let Some(sp) = predictor("lfw_landmarks_and_chips_match_dlib") else {
        return;
    };
    let fx = fixture("tests/fixtures/prep/reference.json");
    let (size, padding) = (
        fx["chip_size"].as_u64().unwrap() as usize,
        fx["chip_padding"].as_f64().unwrap(),
    );
    let centre = fx["centre_crop_fraction"].as_f64().unwrap();
    let limits = DecodeLimits::default();
    let (mut n, mut n_det, mut dist_det, mut chips_exact, mut chips) =
        (0usize, 0usize, 0.0f64, 0usize, 0usize);
    let fractions: Vec<f64> = fx["box_fractions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mut dist_fixed = vec![0.0f64; fractions.len()];
    for e in fx["lfw"].as_array().unwrap() {
        let path = e["path"].as_str().unwrap();
        let bytes = std::fs::read(lfw.join(path)).unwrap();
        if hex_sha256(&bytes) != e["file_sha256"].as_str().unwrap() {
            println!(
                "SKIP entry {path}: this LFW copy differs from the one the fixture was made from"
            );
            continue;
        }
        n += 1;
        let img = decode::decode(&bytes, &limits).unwrap();
        assert_eq!(
            hex_sha256(&img.pixels),
            e["decoded_rgb_sha256"].as_str().unwrap(),
            "{path}: JPEG decode != Pillow"
        );
        let cc = chip::centre_chip(&img, centre, size);
        assert_eq!(
            hex_sha256(&cc),
            e["centre_chip"]["sha256"].as_str().unwrap(),
            "{path}: centre chip"
        );
        for (k, f) in e["fixed"].as_array().unwrap().iter().enumerate() {
            let rect =
                landmarks::centred_box(img.width, img.height, f["fraction"].as_f64().unwrap());
            assert_eq!(rect, rect_of(&f["box"]), "{path}: fixed box");
            let parts = sp.predict(&img, rect);
            assert_eq!(
                parts,
                parts_of(&f["parts"]),
                "{path}: landmarks on the fixed box {rect:?}"
            );
            let chip = align::face_chip(&img, &parts, size, padding);
            chips += 1;
            chips_exact += usize::from(hex_sha256(&chip) == f["chip"]["sha256"].as_str().unwrap());
            if let Some(d) = e["detector"].as_object() {
                dist_fixed[k] += mean_distance(&parts, &parts_of(&d["parts"]));
            }
        }
        if let Some(d) = e["detector"].as_object() {
            n_det += 1;
            let parts = sp.predict(&img, rect_of(&d["box"]));
            let want = parts_of(&d["parts"]);
            dist_det += mean_distance(&parts, &want);
            assert_eq!(parts, want, "{path}: landmarks on dlib's detector box");
            let chip = align::face_chip(&img, &parts, size, padding);
            chips += 1;
            chips_exact += usize::from(hex_sha256(&chip) == d["chip"]["sha256"].as_str().unwrap());
        }
    }
    println!("lfw: {n} images, {n_det} with a dlib detection");
    println!(
        "(a) mean landmark distance, Rust vs dlib on dlib's detector box: {:.4} px",
        dist_det / n_det.max(1) as f64
    );
    for (f, d) in fractions.iter().zip(&dist_fixed) {
        println!("(b) mean landmark distance, Rust on fixed box {f:.4} vs dlib on its detector box: {:.3} px", d / n_det.max(1) as f64);
    }
    println!("face chips identical to dlib's get_face_chip: {chips_exact} of {chips}");
    assert_eq!(chips_exact, chips, "face chips differ from dlib");
}

/// The second landmark pass (`embed.landmark_passes = 2`): on the fixture's LFW images the box
/// `landmarks::refined_box` derives from the first (fixed-box) landmarks must lie nearer dlib's own
/// HOG-detector box than the fixed box does, and the landmarks predicted from it nearer dlib's
/// landmarks on that box. (The map was fitted on peopleDevTrain.txt's identities; some fixture
/// images belong to them, the fit script reports the held-out numbers.)
#[test]
fn refined_box_lands_nearer_dlibs_detector_box() {
    let Some(lfw) = lfw_root("refined_box_lands_nearer_dlibs_detector_box") else {
        return;
    };
    let Some(sp) = predictor("refined_box_lands_nearer_dlibs_detector_box") else {
        return;
    };
    let fx = fixture("tests/fixtures/prep/reference.json");
    let corner_error = |a: Rect, b: Rect| {
        ((a.left - b.left).abs()
            + (a.top - b.top).abs()
            + (a.right - b.right).abs()
            + (a.bottom - b.bottom).abs()) as f64
            / 4.0
    };
    let limits = DecodeLimits::default();
    let (mut n, mut box_fixed, mut box_refined, mut lm_fixed, mut lm_refined) =
        (0usize, 0.0, 0.0, 0.0, 0.0);
    for e in fx["lfw"].as_array().unwrap() {
        let Some(d) = e["detector"].as_object() else {
            continue;
        };
        let path = e["path"].as_str().unwrap();
        let bytes = std::fs::read(lfw.join(path)).unwrap();
        if hex_sha256(&bytes) != e["file_sha256"].as_str().unwrap() {
            continue;
        }
        let img = decode::decode(&bytes, &limits).unwrap();
        let (det_box, det_parts) = (rect_of(&d["box"]), parts_of(&d["parts"]));
        let fixed = landmarks::centred_box(img.width, img.height, 1.0 / 2.2);
        let first = sp.predict(&img, fixed);
        let refined = landmarks::refined_box(&first, &landmarks::DETECTOR_BOX_MAP);
        let second = sp.predict(&img, refined);
        assert_eq!(
            second,
            sp.predict_passes(&img, fixed, 2, &landmarks::DETECTOR_BOX_MAP)
        );
        n += 1;
        box_fixed += corner_error(fixed, det_box);
        box_refined += corner_error(refined, det_box);
        lm_fixed += mean_distance(&first, &det_parts);
        lm_refined += mean_distance(&second, &det_parts);
    }
    let n_f = n.max(1) as f64;
    let (box_fixed, box_refined, lm_fixed, lm_refined) = (
        box_fixed / n_f,
        box_refined / n_f,
        lm_fixed / n_f,
        lm_refined / n_f,
    );
    println!(
        "{n} LFW images, vs dlib's detector: box corners fixed {box_fixed:.2} px, refined \
         {box_refined:.2} px; landmarks fixed {lm_fixed:.3} px, refined {lm_refined:.3} px"
    );
    assert!(n >= 40, "only {n} fixture images with a detection");
    assert!(
        box_refined < 0.5 * box_fixed,
        "refined box {box_refined:.2} px from the detector's, fixed {box_fixed:.2} px"
    );
    assert!(
        lm_refined < lm_fixed,
        "landmarks from the refined box {lm_refined:.3} px from dlib's, fixed {lm_fixed:.3} px"
    );
}

#[test]
fn preprocessor_ids_and_aligned_chips() {
    let Some(sp) = predictor("preprocessor_ids_and_aligned_chips") else {
        return;
    };
    let pre = Preprocessor {
        limits: DecodeLimits::default(),
        mode: ChipMode::Aligned {
            predictor: sp.clone(),
            box_fraction: 0.4,
            padding: 0.25,
            landmark_passes: 1,
        },
    };
    assert_eq!(pre.id(), format!("align5-{}-b0.4-p0.25", &sp.sha256()[..8]));
    let img = synthetic_image(200, 180);
    let png = encode(
        &image::DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(200, 180, img.pixels.clone()).unwrap(),
        ),
        image::ImageFormat::Png,
    );
    let chip = pre.chip(&png).unwrap();
    assert_eq!(chip.len(), 150 * 150 * 3);
    assert_eq!(chip, pre.chip_of(&img));
    let two = Preprocessor {
        limits: DecodeLimits::default(),
        mode: ChipMode::Aligned {
            predictor: sp.clone(),
            box_fraction: 0.4,
            padding: 0.25,
            landmark_passes: 2,
        },
    };
    assert_eq!(
        two.id(),
        format!("align5-{}-b0.4-p0.25-l2", &sp.sha256()[..8])
    );
    let box1 = landmarks::centred_box(200, 180, 0.4);
    let parts = sp.predict_passes(&img, box1, 2, &landmarks::DETECTOR_BOX_MAP);
    assert_eq!(
        two.chip(&png).unwrap(),
        align::face_chip(&img, &parts, 150, 0.25)
    );
    // embed.average_passes embeds one chip per pass: the first is the one-pass chip, the last
    // the chip of the last pass.
    let each = two.pass_chips_of(&img);
    assert_eq!(each.len(), 2);
    assert_eq!(each[0], chip);
    assert_eq!(each[1], two.chip_of(&img));
    assert_eq!(pre.pass_chips_of(&img), vec![chip]);
}
