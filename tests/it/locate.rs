//! The face detector in the embedding path (`embed.locate = "detect"`, the default): images it
//! cannot use each get their own reason, counted and dead-lettered, while the rest of the batch
//! is embedded as if alone; photos with several faces (`embed.faces_per_image = "all"`) become
//! several faces with derived ids, their boxes in the events and the photo's image id shared and
//! stored. Needs LFW and the models (skipped with the reason when missing; CI requires both).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clip_cluster::config::Config;
use clip_cluster::embed::image::RgbImage;
use clip_cluster::embed::{DlibEmbedder, FaceEmbedder};
use clip_cluster::telemetry::Metrics;

use crate::detector::canvas;
use crate::support::*;

fn png(img: &RgbImage) -> Vec<u8> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.pixels.clone())
        .expect("buffer size");
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(buf)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encodes");
    out.into_inner()
}

fn lfw_image(lfw: &Path, name: &str, n: usize) -> (Vec<u8>, RgbImage) {
    let bytes = std::fs::read(clip_cluster::eval::lfw::image_path(lfw, name, n)).unwrap();
    let img = clip_cluster::embed::image::decode(&bytes, &Default::default()).unwrap();
    (bytes, img)
}

fn scaled(img: &RgbImage, w: usize, h: usize) -> RgbImage {
    let px = clip_cluster::embed::image::resize_bilinear(img, (0, 0, img.width, img.height), w, h);
    RgbImage::new(w, h, px).unwrap()
}

/// The test images by file stem (the face id `publish_images` gives them) and the reason each
/// bad one must get with `embed.no_face = "reject"` (None: embedded).
fn images(lfw: &Path) -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
    let (bush, bush_img) = lfw_image(lfw, "George_W_Bush", 1);
    let (powell, _) = lfw_image(lfw, "Colin_Powell", 1);
    let grey = RgbImage::new(250, 250, vec![128; 250 * 250 * 3]).unwrap();
    let black = RgbImage::new(250, 250, vec![0; 250 * 250 * 3]).unwrap();
    // The face's box (81..176 in the 250 px image) slid 105 px out of the left edge.
    let cut = canvas(250, 250, 128, &[(&bush_img, -105, 0)]);
    // A face of about 10 px: the whole image at 25 px, and the same in the middle of a frame.
    let tiny = scaled(&bush_img, 25, 25);
    let tiny_in_frame = canvas(250, 250, 128, &[(&tiny, 112, 112)]);
    let mut garbage = vec![0xff, 0xd8, 0xff, 0xe0];
    garbage.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    vec![
        ("a_good", bush, None),
        ("b_grey", png(&grey), Some("no_face")),
        ("c_black", png(&black), Some("no_face")),
        ("d_cut", png(&cut), Some("face_cut")),
        ("e_tiny", png(&tiny), Some("no_face")),
        ("f_tiny_in_frame", png(&tiny_in_frame), Some("no_face")),
        (
            "g_ten_px_image",
            png(&scaled(&bush_img, 10, 10)),
            Some("image_unusable"),
        ),
        (
            "h_huge_header",
            crate::prep::png_header(20_000, 20_000),
            Some("image_too_large"),
        ),
        ("i_garbage", garbage, Some("image_decode")),
        ("j_good", powell, None),
    ]
}

/// The configuration of `env` with `extra` (`SECTION__KEY`, value) added.
fn load(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Config {
    env.extend(
        extra
            .iter()
            .map(|(k, v)| (format!("CLIP_CLUSTER__{k}"), v.to_string())),
    );
    Config::load_from(None, &env).expect("test configuration")
}

fn cfg_with(extra: &[(&str, &str)]) -> Config {
    load(embed_env(128), extra)
}

/// Each bad image's reason straight from the embedder, in one batch with two good faces whose
/// vectors are those they get alone; with the default `no_face = "fixed"` the faceless images
/// are embedded from the fixed box and say so, and the tiny image's fixed box is too small.
#[test]
fn every_bad_image_gets_its_own_reason_and_the_batch_keeps_the_rest() {
    if models_dir().is_none() {
        return;
    }
    let Some(lfw) = lfw_root("every_bad_image_gets_its_own_reason") else {
        return;
    };
    let imgs = images(&lfw);
    let refs: Vec<&[u8]> = imgs.iter().map(|(_, b, _)| b.as_slice()).collect();
    let reject = DlibEmbedder::from_config(&cfg_with(&[("EMBED__NO_FACE", "reject")])).unwrap();
    let got = reject.embed_encoded(&refs);
    let alone: Vec<_> = [&refs[0], &refs[9]]
        .iter()
        .map(|b| reject.embed_encoded(&[b]).remove(0).unwrap())
        .collect();
    for ((name, _, want), r) in imgs.iter().zip(&got) {
        match (want, r) {
            (None, Ok(f)) => {
                let l = f.located.as_ref().expect("located");
                assert_eq!(l.outcome, "detected", "{name}");
            }
            (Some(w), Err(e)) => {
                assert_eq!(e.class(), *w, "{name}: {e}");
                assert!(!e.to_string().is_empty());
            }
            (w, r) => panic!("{name}: want {w:?}, got {:?}", r.as_ref().map(|_| "a face")),
        }
    }
    for (i, a) in [(0, &alone[0]), (9, &alone[1])] {
        let v = &got[i].as_ref().unwrap().vector;
        let d: f32 = v
            .iter()
            .zip(&a.vector)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "{}: batched differs from alone by {d}", imgs[i].0);
    }
    // The cut face is named with its box and how far it is outside.
    let cut = got[3].as_ref().err().unwrap().to_string();
    assert!(cut.contains("past the edges of the 250x250 image"), "{cut}");

    let fixed = DlibEmbedder::from_config(&cfg_with(&[])).unwrap();
    let got = fixed.embed_encoded(&refs);
    let outcome = |i: usize| -> String {
        match &got[i] {
            Ok(f) => f.located.as_ref().map_or("none", |l| l.outcome).to_string(),
            Err(e) => e.class().to_string(),
        }
    };
    assert_eq!(outcome(0), "detected");
    assert_eq!(outcome(1), "no_face");
    assert_eq!(outcome(2), "no_face");
    assert_eq!(outcome(3), "face_cut");
    // 25 px: the fixed box is 11 px, under min_face_px = 40.
    assert_eq!(outcome(4), "face_too_small");
    assert_eq!(outcome(5), "no_face");
    assert_eq!(outcome(6), "image_unusable");
    assert_eq!(outcome(7), "image_too_large");
    assert_eq!(outcome(8), "image_decode");
    assert_eq!(outcome(9), "detected");
    // max_face_outside = 1 keeps the cut face.
    let keep = DlibEmbedder::from_config(&cfg_with(&[("EMBED__MAX_FACE_OUTSIDE", "1")])).unwrap();
    assert!(keep.embed_encoded(&[refs[3]])[0].is_ok());
}

/// Runs role "all" until `faces` are applied and `bad` dead-lettered, the outbox drained.
fn run_daemon(cfg: Config, faces: u64, bad: u64) -> Metrics {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = Metrics::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let m2 = m.clone();
    let m3 = m.clone();
    rt.block_on(async move {
        let m = m3;
        let task = tokio::spawn(clip_cluster::pipeline::run(cfg, m2, stop_rx));
        crate::support::wait_until(
            Duration::from_secs(180),
            || {
                m.faces_applied.get() >= faces
                    && m.dead_letters.get() >= bad
                    && m.outbox_depth.get() == 0
            },
            || {
                format!(
                    "applied {} dead letters {}",
                    m.faces_applied.get(),
                    m.dead_letters.get()
                )
            },
        )
        .await;
        stop_tx.send(true).unwrap();
        task.await.unwrap().unwrap();
    });
    m
}

fn daemon_env(bootstrap: &str, state: &Path, extra: &[(&str, &str)]) -> Config {
    load(
        crate::support::env(bootstrap, state, 128, "127.0.0.1:0"),
        extra,
    )
}

/// The daemon on the mock cluster: the bad images are dead-lettered each with its reason and
/// counted by it, the two good faces applied.
#[test]
fn the_daemon_dead_letters_and_counts_each_bad_image_by_its_reason() {
    if models_dir().is_none() {
        return;
    }
    let Some(lfw) = lfw_root("the_daemon_dead_letters_and_counts") else {
        return;
    };
    let imgs = images(&lfw);
    let dir = tempfile::tempdir().unwrap();
    let faces = dir.path().join("faces/someone");
    std::fs::create_dir_all(&faces).unwrap();
    for (name, bytes, _) in &imgs {
        std::fs::write(faces.join(format!("{name}.png")), bytes).unwrap();
    }
    let kafka = mock(1);
    let cfg = daemon_env(
        kafka.bootstrap_servers(),
        &dir.path().join("state"),
        &[("EMBED__NO_FACE", "reject")],
    );
    let n = clip_cluster::cli::produce::publish_images(&cfg, FACES, &dir.path().join("faces"));
    assert_eq!(n.unwrap(), imgs.len());
    let bad: Vec<_> = imgs
        .iter()
        .filter_map(|(n, _, w)| w.map(|w| (*n, w)))
        .collect();
    let m = run_daemon(cfg, 2, bad.len() as u64);
    assert_eq!(m.faces_applied.get(), 2);
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, w) in &bad {
        *want.entry(w).or_default() += 1;
    }
    for (reason, count) in &want {
        let got = m.faces_rejected.with_label_values(&[reason]).get();
        assert_eq!(
            got, *count,
            "clip_cluster_faces_rejected_total{{reason=\"{reason}\"}}"
        );
    }
    assert_eq!(m.embed_located.with_label_values(&["detected"]).get(), 2);
    let dlq = read_topic(
        kafka.bootstrap_servers(),
        DLQ,
        Duration::from_secs(30),
        |r| r.len() >= bad.len(),
    );
    let mut got: Vec<(String, String)> = dlq
        .iter()
        .map(|r| {
            (
                r.header("face_id").unwrap(),
                r.header("__connect.errors.exception.class.name").unwrap(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, String)> = bad
        .iter()
        .map(|(n, w)| (n.to_string(), w.to_string()))
        .collect();
    assert_eq!(got, want);
}

/// A photo of three people (three LFW images side by side, one face cut by the right border)
/// with `faces_per_image = "all"`: three faces `<id>#0..#2` in reading order, each with its box
/// and the photo's image id in its FaceAssigned event and in the state; the cut face is not one.
#[test]
fn a_photo_with_several_faces_becomes_several_faces() {
    if models_dir().is_none() {
        return;
    }
    let Some(lfw) = lfw_root("a_photo_with_several_faces") else {
        return;
    };
    let (_, a) = lfw_image(&lfw, "George_W_Bush", 2);
    let (_, b) = lfw_image(&lfw, "Colin_Powell", 2);
    let (_, c) = lfw_image(&lfw, "Tony_Blair", 2);
    let (_, d) = lfw_image(&lfw, "Serena_Williams", 1);
    // Three whole faces, the second lower; the fourth mostly beyond the right edge.
    let photo = canvas(
        800,
        400,
        100,
        &[(&a, 0, 20), (&b, 260, 140), (&c, 520, 10), (&d, 695, 60)],
    );
    let dir = tempfile::tempdir().unwrap();
    let faces = dir.path().join("faces/group");
    std::fs::create_dir_all(&faces).unwrap();
    std::fs::write(faces.join("party.png"), png(&photo)).unwrap();
    let kafka = mock(1);
    let cfg = daemon_env(
        kafka.bootstrap_servers(),
        &dir.path().join("state"),
        &[("EMBED__FACES_PER_IMAGE", "all")],
    );
    clip_cluster::cli::produce::publish_images(&cfg, FACES, &dir.path().join("faces")).unwrap();
    let m = run_daemon(cfg.clone(), 3, 0);
    assert_eq!(m.faces_applied.get(), 3);
    let recs = read_topic(
        kafka.bootstrap_servers(),
        EVENTS,
        Duration::from_secs(30),
        |r| {
            events(r)
                .iter()
                .filter(|(_, e)| e["type"] == "FaceAssigned")
                .count()
                >= 3
        },
    );
    let assigned: Vec<serde_json::Value> = events(&recs)
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e["type"] == "FaceAssigned")
        .collect();
    let ids: Vec<&str> = assigned
        .iter()
        .map(|e| e["face_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["party#0", "party#1", "party#2"]);
    let tiles = [(0, 20), (520, 10), (260, 140)]; // reading order: by box top, then left
    for (e, (x, y)) in assigned.iter().zip(tiles) {
        assert_eq!(e["image_id"], "party.png");
        assert_eq!(e["located"], "detected");
        let bx: Vec<i64> = e["face_box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let (cx, cy) = ((bx[0] + bx[2]) / 2, (bx[1] + bx[3]) / 2);
        assert!(
            (x..x + 250).contains(&cx) && (y..y + 250).contains(&cy),
            "{e}: box centre ({cx}, {cy}) outside its image at ({x}, {y})"
        );
    }
    // The state keeps each face's origin: the faces of one photo are found by its image id.
    let store = clip_cluster::clusterer::Clusterer::open(&cfg).unwrap();
    for id in ids {
        let seq = store.store().face_seq(id).unwrap().expect("stored");
        let meta = store.store().face_meta(seq).unwrap().expect("meta stored");
        assert_eq!(meta.image_id.as_deref(), Some("party.png"));
        assert!(meta.face_box.is_some());
    }
}
