//! Durable state: restart equivalence, idempotence, snapshot rebuild, and refusal of bad state.

use clip_cluster::engine::Face;
use std::path::Path;

use clip_cluster::clusterer::Clusterer;
use clip_cluster::config::Config;
use clip_cluster::eval::synth::{generate, SynthParams};

fn config(dir: &Path, dim: usize) -> Config {
    config_with(dir, dim, &[("CALIBRATION__MODE", "trained")])
}

/// `config` with more `CLIP_CLUSTER__` overrides (section__key, value).
fn config_with(dir: &Path, dim: usize, extra: &[(&str, &str)]) -> Config {
    let mut env = vec![
        (
            "CLIP_CLUSTER__STORE__PATH".to_string(),
            dir.display().to_string(),
        ),
        ("CLIP_CLUSTER__MODEL__DIM".to_string(), dim.to_string()),
        // The shipped proxy directions are 128-D; these states hold other vectors.
        (
            "CLIP_CLUSTER__PROXY__MODE".to_string(),
            "identity".to_string(),
        ),
        // ... and the shipped edge head is 128-D too: cosine, at the previous default threshold.
        (
            "CLIP_CLUSTER__EDGE__SCORER".to_string(),
            "cosine".to_string(),
        ),
        ("CLIP_CLUSTER__ENGINE__T1".to_string(), "0.95".to_string()),
        (
            "CLIP_CLUSTER__INDEX__SNAPSHOT_EVERY_FACES".to_string(),
            "100".to_string(),
        ),
        ("CLIP_CLUSTER__ENGINE__T2".to_string(), "0.3".to_string()),
    ];
    for (k, v) in extra {
        env.push((format!("CLIP_CLUSTER__{k}"), v.to_string()));
    }
    Config::load_from(None, &env).unwrap()
}

fn faces(n: usize, dim: usize) -> (Vec<String>, Vec<Vec<f32>>) {
    let s = generate(SynthParams::new(n, dim, 11));
    let ids = (0..n).map(|i| format!("face-{i}")).collect();
    let vs = s.data.chunks(dim).map(|c| c.to_vec()).collect();
    (ids, vs)
}

fn apply(
    c: &mut Clusterer,
    ids: &[String],
    vs: &[Vec<f32>],
    range: std::ops::Range<usize>,
    batch: usize,
) {
    let mut i = range.start;
    while i < range.end {
        let j = (i + batch).min(range.end);
        let b: Vec<Face> = (i..j)
            .map(|x| Face::new(ids[x].as_str(), vs[x].clone()))
            .collect();
        c.apply(&b, &[]).unwrap();
        i = j;
    }
}

fn outbox(c: &Clusterer) -> Vec<String> {
    c.store()
        .outbox(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::to_string(&e).unwrap())
        .collect()
}

#[test]
fn restart_anywhere_equals_an_uninterrupted_run() {
    let dim = 32;
    let n = 450;
    let (ids, vs) = faces(n, dim);
    let full = tempfile::tempdir().unwrap();
    let mut a = Clusterer::open(&config(full.path(), dim)).unwrap();
    apply(&mut a, &ids, &vs, 0..n, 37);
    let want = (a.engine().assignments(), outbox(&a));
    drop(a);
    // Stop at points before, on and after snapshot boundaries (every 100 faces).
    for stop in [1, 99, 100, 101, 250, 300, 449] {
        let d = tempfile::tempdir().unwrap();
        let mut b = Clusterer::open(&config(d.path(), dim)).unwrap();
        apply(&mut b, &ids, &vs, 0..stop, 37);
        drop(b);
        let mut b = Clusterer::open(&config(d.path(), dim)).unwrap();
        apply(&mut b, &ids, &vs, stop..n, 37);
        assert_eq!(b.engine().assignments(), want.0, "stopped at {stop}");
        assert_eq!(outbox(&b), want.1, "stopped at {stop}");
    }
}

/// The out-lists and clusters read back after every batch equal the running engine's while the
/// record log's sweep goes round several times (`store::records`: records in place, in the log,
/// or both), and the log keeps only its last rounds.
#[test]
fn records_read_back_after_every_batch_equal_the_running_engine() {
    let dim = 32;
    let n = 900;
    let (ids, vs) = faces(n, dim);
    let d = tempfile::tempdir().unwrap();
    let mut c = Clusterer::open(&config(d.path(), dim)).unwrap();
    let sizes = [1, 5, 130, 2, 64, 300, 7, 191];
    let (mut i, mut batches) = (0, 0);
    while i < n {
        let j = (i + sizes[batches % sizes.len()]).min(n);
        apply(&mut c, &ids, &vs, i..j, j - i);
        batches += 1;
        let lists: Vec<_> = (0..j as u32).map(|s| c.engine().out_list(s)).collect();
        let clusters = c.engine().assignments();
        drop(c);
        c = Clusterer::open(&config(d.path(), dim)).unwrap();
        let back: Vec<_> = (0..j as u32).map(|s| c.engine().out_list(s)).collect();
        assert_eq!(back, lists, "out-lists after {j} faces");
        assert_eq!(
            c.engine().assignments(),
            clusters,
            "clusters after {j} faces"
        );
        i = j;
    }
    let (held, written) = c.store().record_log().unwrap();
    assert!(
        held > 0 && held < written as usize,
        "{held} of {written} log entries held"
    );
}

/// A new state's first faces wait for the calibration decision (stored, no events), are applied
/// all at once when the warm-up is full, and a restart anywhere, during the warm-up, after it, or
/// after the threshold was read again at twice the warm-up, continues exactly as an
/// uninterrupted run; each decision is stored and never made again.
#[test]
fn restart_during_the_calibration_warmup_equals_an_uninterrupted_run() {
    let dim = 32;
    let n = 300;
    let (ids, vs) = faces(n, dim);
    let cal = [
        ("CALIBRATION__MODE", "stream"),
        ("CALIBRATION__WARMUP", "120"),
    ];
    let full = tempfile::tempdir().unwrap();
    let mut a = Clusterer::open(&config_with(full.path(), dim, &cal)).unwrap();
    let r = a.apply(&pairs(&ids, &vs, 0..119), &[]).unwrap();
    assert_eq!((r.applied, r.waiting, r.events.len()), (0, 119, 0));
    assert!(a.decision().is_none() && a.engine().n_faces() == 0);
    let r = a.apply(&pairs(&ids, &vs, 119..121), &[]).unwrap();
    assert_eq!(
        (r.applied, r.waiting),
        (121, 0),
        "the warm-up and the face after it"
    );
    let decided = *a.decision().expect("decided at 120 faces");
    let clip_cluster::engine::calibrate::Decision::Stream { t1, .. } = decided else {
        panic!("mode stream decides a threshold: {decided:?}")
    };
    assert!(t1 > 0.0 && t1 < 1.0, "{t1}");
    apply(&mut a, &ids, &vs, 121..n, 37);
    // The valley rule read the threshold again at 240 faces (twice the warm-up); it never falls.
    let decided = *a.decision().unwrap();
    let clip_cluster::engine::calibrate::Decision::Stream {
        t1: later, faces, ..
    } = decided
    else {
        panic!("{decided:?}")
    };
    assert_eq!(faces, 240);
    assert!(later >= t1, "{later} < {t1}");
    let want = (a.engine().assignments(), outbox(&a));
    drop(a);
    for stop in [1, 60, 119, 120, 121, 250] {
        let d = tempfile::tempdir().unwrap();
        let mut b = Clusterer::open(&config_with(d.path(), dim, &cal)).unwrap();
        apply(&mut b, &ids, &vs, 0..stop, 37);
        drop(b);
        let mut b = Clusterer::open(&config_with(d.path(), dim, &cal)).unwrap();
        assert_eq!(b.n_waiting(), stop.min(120) % 120, "stopped at {stop}");
        apply(&mut b, &ids, &vs, stop..n, 37);
        assert_eq!(b.decision(), Some(&decided), "stopped at {stop}");
        assert_eq!(b.engine().assignments(), want.0, "stopped at {stop}");
        assert_eq!(outbox(&b), want.1, "stopped at {stop}");
    }
}

/// The valley rule reads a stream's threshold again each time the stream doubles: the threshold
/// rises, faces move (`FaceMoved` and one `Reclustered` per reading, in the outbox), the new
/// decision is stored, and a restart before, at or after a reading continues exactly as an
/// uninterrupted run.
#[test]
fn a_stream_threshold_read_again_rises_and_restarts_change_nothing() {
    let dim = 32;
    let n = 700;
    let (ids, vs) = faces(n, dim);
    let cal = [
        ("CALIBRATION__MODE", "stream"),
        ("CALIBRATION__WARMUP", "80"),
    ];
    let t1_of = |c: &Clusterer| match c.decision() {
        Some(clip_cluster::engine::calibrate::Decision::Stream { t1, faces, .. }) => (*t1, *faces),
        d => panic!("{d:?}"),
    };
    let full = tempfile::tempdir().unwrap();
    let mut a = Clusterer::open(&config_with(full.path(), dim, &cal)).unwrap();
    let mut readings = Vec::new();
    for i in (0..n).step_by(40) {
        apply(&mut a, &ids, &vs, i..(i + 40).min(n), 40);
        if a.decision().is_some() && readings.last() != Some(&t1_of(&a)) {
            readings.push(t1_of(&a));
        }
    }
    let at: Vec<u32> = readings.iter().map(|r| r.1).collect();
    assert_eq!(at, vec![80, 160, 320, 640], "{readings:?}");
    assert!(
        readings.windows(2).all(|w| w[1].0 > w[0].0),
        "strangers get nearer as faces accumulate: {readings:?}"
    );
    let events = outbox(&a);
    let regrouped: Vec<&String> = events
        .iter()
        .filter(|e| e.contains("Reclustered") && e.contains("calibration: t1"))
        .collect();
    assert_eq!(regrouped.len(), 3, "one per rise");
    assert!(events.iter().any(|e| e.contains("FaceMoved")));
    let want = (a.engine().assignments(), events, *a.decision().unwrap());
    drop(a);
    for stop in [100, 160, 161, 330, 641] {
        let d = tempfile::tempdir().unwrap();
        let mut b = Clusterer::open(&config_with(d.path(), dim, &cal)).unwrap();
        apply(&mut b, &ids, &vs, 0..stop, 33);
        drop(b);
        let mut b = Clusterer::open(&config_with(d.path(), dim, &cal)).unwrap();
        apply(&mut b, &ids, &vs, stop..n, 33);
        assert_eq!(b.decision(), Some(&want.2), "stopped at {stop}");
        assert_eq!(b.engine().assignments(), want.0, "stopped at {stop}");
        assert_eq!(outbox(&b), want.1, "stopped at {stop}");
    }
}

fn pairs<'a>(ids: &'a [String], vs: &'a [Vec<f32>], r: std::ops::Range<usize>) -> Vec<Face> {
    r.map(|i| Face::new(ids[i].as_str(), vs[i].clone()))
        .collect()
}

#[test]
fn reapplying_is_a_no_op() {
    let dim = 16;
    let (ids, vs) = faces(200, dim);
    let d = tempfile::tempdir().unwrap();
    let mut c = Clusterer::open(&config(d.path(), dim)).unwrap();
    apply(&mut c, &ids, &vs, 0..200, 50);
    let before = (c.engine().assignments(), outbox(&c));
    apply(&mut c, &ids, &vs, 0..200, 50);
    drop(c);
    let mut c = Clusterer::open(&config(d.path(), dim)).unwrap();
    let r = c
        .apply(&[Face::new(ids[3].as_str(), vs[3].clone())], &[])
        .unwrap();
    assert_eq!((r.applied, r.duplicates), (0, 1));
    assert_eq!((c.engine().assignments(), outbox(&c)), before);
}

#[test]
fn damaged_or_missing_snapshot_is_rebuilt_from_the_store() {
    let dim = 16;
    let n = 350;
    let (ids, vs) = faces(n, dim);
    let ref_dir = tempfile::tempdir().unwrap();
    let mut r = Clusterer::open(&config(ref_dir.path(), dim)).unwrap();
    apply(&mut r, &ids, &vs, 0..n, 64);
    let want = r.engine().assignments();
    drop(r);
    for damage in ["truncate", "garbage", "delete"] {
        let d = tempfile::tempdir().unwrap();
        let mut c = Clusterer::open(&config(d.path(), dim)).unwrap();
        apply(&mut c, &ids, &vs, 0..250, 64);
        drop(c);
        for e in std::fs::read_dir(d.path().join("index")).unwrap() {
            let p = e.unwrap().path();
            match damage {
                "truncate" => {
                    let len = std::fs::metadata(&p).unwrap().len();
                    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                    f.set_len(len / 2).unwrap();
                }
                "garbage" => std::fs::write(&p, b"not an hnsw dump at all").unwrap(),
                _ => std::fs::remove_file(&p).unwrap(),
            }
        }
        let mut c = Clusterer::open(&config(d.path(), dim)).unwrap();
        assert_eq!(c.engine().n_faces(), 250);
        apply(&mut c, &ids, &vs, 250..n, 64);
        assert_eq!(c.engine().assignments(), want, "after {damage}");
    }
}

#[test]
fn bad_state_directories_are_refused_with_the_reason() {
    let dim = 16;
    let d = tempfile::tempdir().unwrap();
    // A directory holding something else.
    std::fs::write(d.path().join("notes.txt"), b"hello").unwrap();
    let e = Clusterer::open(&config(d.path(), dim))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("not a clip-cluster state directory") && e.contains("notes.txt"),
        "{e}"
    );
    // A file instead of a directory.
    let f = d.path().join("notes.txt");
    let e = Clusterer::open(&config(&f, dim)).err().unwrap().to_string();
    assert!(e.contains("is a file"), "{e}");
    // Another model's vectors.
    let s = tempfile::tempdir().unwrap();
    drop(Clusterer::open(&config(s.path(), dim)).unwrap());
    let e = Clusterer::open(&config(s.path(), dim * 2))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("different model") && e.contains("dim 32"), "{e}");
    // A foreign sled database.
    let foreign = tempfile::tempdir().unwrap();
    {
        let db = sled::open(foreign.path()).unwrap();
        db.insert(b"hello", b"world").unwrap();
        db.flush().unwrap();
    }
    let e = Clusterer::open(&config(foreign.path(), dim))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no clip-cluster schema"), "{e}");
    // A damaged database file.
    let broken = tempfile::tempdir().unwrap();
    drop(Clusterer::open(&config(broken.path(), dim)).unwrap());
    std::fs::write(broken.path().join("db"), vec![0xA5u8; 4096]).unwrap();
    std::fs::write(broken.path().join("conf"), b"garbage").unwrap();
    assert!(Clusterer::open(&config(broken.path(), dim)).is_err());
}

#[test]
fn bad_faces_are_rejected_and_the_rest_of_the_batch_applies() {
    let dim = 8;
    let d = tempfile::tempdir().unwrap();
    let mut c = Clusterer::open(&config(d.path(), dim)).unwrap();
    let good = vec![0.5f32; dim];
    let nan = {
        let mut v = good.clone();
        v[2] = f32::NAN;
        v
    };
    let zero = vec![0.0f32; dim];
    let short = vec![1.0f32; dim - 1];
    let r = c
        .apply(
            &[
                Face::new("a", good.clone()),
                Face::new("b", nan.clone()),
                Face::new("c", zero.clone()),
                Face::new("d", short.clone()),
                Face::new("e", good.clone()),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(r.applied, 2);
    let reasons: Vec<String> = r.rejected.iter().map(|(_, e)| e.to_string()).collect();
    assert_eq!(
        r.rejected.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        reasons[0].contains("NaN") && reasons[2].contains("7 dimensions"),
        "{reasons:?}"
    );
    drop(c);
    assert_eq!(
        Clusterer::open(&config(d.path(), dim))
            .unwrap()
            .engine()
            .n_faces(),
        2
    );
}

#[test]
fn a_state_held_open_elsewhere_is_refused_after_waiting_and_reopens_once_released() {
    let dim = 8;
    let d = tempfile::tempdir().unwrap();
    let held = Clusterer::open(&config(d.path(), dim)).unwrap();
    // sled's lock is per open database; a second open while the first lives must fail, clearly.
    let t = std::time::Instant::now();
    let e = Clusterer::open(&config(d.path(), dim))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("another process holds this state directory"),
        "{e}"
    );
    assert!(t.elapsed() >= std::time::Duration::from_secs(9));
    drop(held);
    // Released by sled's threads shortly after the drop: the next open waits for it.
    Clusterer::open(&config(d.path(), dim)).unwrap();
}

/// The neighbour-aware proxy with the shipped directions: proxies really differ from the identity
/// vectors, and a restart (proxies come back from the store, the index from its snapshot or a
/// replay) continues exactly as an uninterrupted run, with fixed proxies and with the bounded
/// refresh (refreshed proxies come back from the store, the index keeps the inserted vectors).
#[test]
fn restart_with_the_neighbour_proxy_equals_an_uninterrupted_run() {
    let dim = 128;
    let n = 320;
    let (ids, vs) = faces(n, dim);
    let weights = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights/proxy-directions-lfw-train.safetensors");
    for refresh in [0usize, 4] {
        let cfg = |dir: &Path| {
            let mut c = config(dir, dim);
            c.proxy.mode = clip_cluster::config::ProxyMode::Neighbor;
            c.proxy.directions_path = weights.clone();
            c.proxy.refresh_per_insert = refresh;
            c.proxy.refresh_min_change = 0.0;
            c.engine.t1 = clip_cluster::eval::synth::CALIBRATED_T1;
            c
        };
        let full = tempfile::tempdir().unwrap();
        let mut a = Clusterer::open(&cfg(full.path())).unwrap();
        let mut refreshed = 0;
        let mut i = 0;
        while i < n {
            let j = (i + 37).min(n);
            let b: Vec<Face> = (i..j)
                .map(|x| Face::new(ids[x].as_str(), vs[x].clone()))
                .collect();
            let r = a.apply(&b, &[]).unwrap();
            refreshed += r.refreshed;
            i = j;
        }
        if refresh == 0 {
            assert_eq!(refreshed, 0);
        } else {
            assert!(refreshed > n, "only {refreshed} proxies refreshed");
        }
        let moved = (0..n as u32)
            .filter(|&s| {
                let v = &vs[s as usize];
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                a.engine()
                    .proxy(s)
                    .iter()
                    .zip(v)
                    .any(|(p, x)| (p - x / norm).abs() > 1e-4)
            })
            .count();
        assert!(
            moved > n / 2,
            "only {moved} of {n} proxies differ from their identity vectors"
        );
        let proxies = |c: &Clusterer| -> Vec<Vec<f32>> {
            (0..n as u32)
                .map(|s| c.engine().proxy(s).to_vec())
                .collect()
        };
        let want = (a.engine().assignments(), outbox(&a), proxies(&a));
        drop(a);
        for stop in [99, 101, 250] {
            let d = tempfile::tempdir().unwrap();
            let mut b = Clusterer::open(&cfg(d.path())).unwrap();
            apply(&mut b, &ids, &vs, 0..stop, 37);
            drop(b);
            let mut b = Clusterer::open(&cfg(d.path())).unwrap();
            apply(&mut b, &ids, &vs, stop..n, 37);
            assert_eq!(
                b.engine().assignments(),
                want.0,
                "refresh {refresh}, stopped at {stop}"
            );
            assert_eq!(outbox(&b), want.1, "refresh {refresh}, stopped at {stop}");
            assert!(
                proxies(&b) == want.2,
                "refresh {refresh}, stopped at {stop}: proxies"
            );
        }
        // A state written with the neighbour proxy is refused under another proxy setting.
        let mut other = cfg(full.path());
        other.proxy.strength = 1.0;
        assert!(
            Clusterer::open(&other).is_err(),
            "proxy settings are part of the fingerprint"
        );
        let mut other = cfg(full.path());
        other.proxy.refresh_per_insert = 4 - refresh;
        assert!(
            Clusterer::open(&other).is_err(),
            "the refresh setting is part of the fingerprint"
        );
    }
}

/// Trained weights that are missing, garbage or of the wrong shape stop the start-up with an
/// error naming the file (the daemon opens its state through `Clusterer::open`).
#[test]
fn bad_trained_weights_are_refused_at_start_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not safetensors").unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Real files of another kind: a direction file where an edge head is expected, and so on.
    let directions = repo.join("weights/proxy-directions-lfw-train.safetensors");
    let edge = repo.join("weights/edge-head-lfw-train.safetensors");
    type Case<'a> = (&'a str, Box<dyn Fn(&mut Config) + 'a>, std::path::PathBuf);
    let cases: Vec<Case> = vec![
        (
            "edge head: garbage",
            Box::new(|c: &mut Config| {
                c.edge.scorer = clip_cluster::config::EdgeScorerKind::Learned;
                c.edge.weights_path = garbage.clone();
            }),
            garbage.clone(),
        ),
        (
            "edge head: a directions file",
            Box::new(|c: &mut Config| {
                c.edge.scorer = clip_cluster::config::EdgeScorerKind::Learned;
                c.edge.weights_path = directions.clone();
            }),
            directions.clone(),
        ),
        (
            "attention: an edge head",
            Box::new(|c: &mut Config| {
                c.proxy.mode = clip_cluster::config::ProxyMode::Neighbor;
                c.proxy.directions_path = directions.clone();
                c.proxy.attention_path = edge.clone();
            }),
            edge.clone(),
        ),
        (
            "attention: missing",
            Box::new(|c: &mut Config| {
                c.proxy.mode = clip_cluster::config::ProxyMode::Neighbor;
                c.proxy.directions_path = directions.clone();
                c.proxy.attention_path = dir.path().join("missing.safetensors");
            }),
            dir.path().join("missing.safetensors"),
        ),
    ];
    for (i, (what, set, file)) in cases.iter().enumerate() {
        let state = dir.path().join(format!("state-{i}"));
        let mut c = config(&state, 128);
        set(&mut c);
        let err = match Clusterer::open(&c) {
            Ok(_) => panic!("{what}: opened"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&file.display().to_string()),
            "{what}: the error names the file: {err}"
        );
    }
}

/// Upstream variants (the CLIP path) are stored with their face: with the refresh, which
/// recomputes older faces' proxies from them, a restart continues exactly as an uninterrupted run.
#[test]
fn restart_with_upstream_variants_and_refresh_equals_an_uninterrupted_run() {
    let dim = 128;
    let n = 240;
    let (ids, vs) = faces(n, dim);
    // Two variants per face: the vector with one coordinate pushed each way.
    let variants: Vec<Vec<f32>> = vs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut out = v.clone();
            out[i % dim] += 0.3;
            let mut w = v.clone();
            w[(i + 1) % dim] -= 0.3;
            out.extend_from_slice(&w);
            out
        })
        .collect();
    let weights = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights/proxy-directions-lfw-train.safetensors");
    let cfg = |dir: &Path| {
        let mut c = config(dir, dim);
        c.proxy.mode = clip_cluster::config::ProxyMode::Neighbor;
        c.proxy.directions_path = weights.clone();
        c.proxy.refresh_per_insert = 4;
        c.proxy.refresh_min_change = 0.0;
        c.engine.t1 = clip_cluster::eval::synth::CALIBRATED_T1;
        c
    };
    let run = |c: &mut Clusterer, range: std::ops::Range<usize>| {
        for chunk in range.collect::<Vec<_>>().chunks(29) {
            let b: Vec<Face> = chunk
                .iter()
                .map(|&x| Face {
                    variants: variants[x].clone(),
                    ..Face::new(ids[x].as_str(), vs[x].clone())
                })
                .collect();
            c.apply(&b, &[]).unwrap();
        }
    };
    let proxies = |c: &Clusterer| -> Vec<Vec<f32>> {
        (0..n as u32)
            .map(|s| c.engine().proxy(s).to_vec())
            .collect()
    };
    let full = tempfile::tempdir().unwrap();
    let mut a = Clusterer::open(&cfg(full.path())).unwrap();
    run(&mut a, 0..n);
    let want = (a.engine().assignments(), outbox(&a), proxies(&a));
    drop(a);
    for stop in [57, 101] {
        let d = tempfile::tempdir().unwrap();
        let mut b = Clusterer::open(&cfg(d.path())).unwrap();
        run(&mut b, 0..stop);
        drop(b);
        let mut b = Clusterer::open(&cfg(d.path())).unwrap();
        run(&mut b, stop..n);
        assert_eq!(b.engine().assignments(), want.0, "stopped at {stop}");
        assert_eq!(outbox(&b), want.1, "stopped at {stop}");
        assert!(proxies(&b) == want.2, "stopped at {stop}: proxies");
    }
}

/// The embedder's settings are part of the state's fingerprint: vectors of another chip geometry,
/// flip or network are refused, never mixed. A role without the embedder is not refused, and a
/// state written without an embedder id adopts the configured one once.
#[test]
fn embedder_settings_are_part_of_the_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let base = config(dir.path(), 8);
    assert!(base.embed.enabled);
    drop(Clusterer::open(&base).unwrap());
    for (key, value) in [
        ("EMBED__BOX_FRACTION", "0.8"),
        ("EMBED__FLIP_AVERAGE", "true"),
        ("EMBED__CHIP", "\"centre\""),
        ("EMBED__DTYPE", "\"bf16\""),
        ("EMBED__MODEL_PATH", "\"Cargo.toml\""),
    ] {
        let other = config_with(
            dir.path(),
            8,
            &[("CALIBRATION__MODE", "trained"), (key, value)],
        );
        let e = Clusterer::open(&other)
            .err()
            .unwrap_or_else(|| panic!("{key} = {value} was accepted"));
        assert!(e.to_string().contains("embedder"), "{key}: {e}");
    }
    // Embedding disabled: nothing to mix, the state opens.
    let vectors_only = config_with(
        dir.path(),
        8,
        &[
            ("CALIBRATION__MODE", "trained"),
            ("EMBED__ENABLED", "false"),
        ],
    );
    drop(Clusterer::open(&vectors_only).unwrap());
    drop(Clusterer::open(&base).unwrap());

    // A state created without an embedder id records the configured one at its next open, and
    // from then on refuses another.
    let old = tempfile::tempdir().unwrap();
    drop(
        Clusterer::open(&config_with(
            old.path(),
            8,
            &[
                ("CALIBRATION__MODE", "trained"),
                ("EMBED__ENABLED", "false"),
            ],
        ))
        .unwrap(),
    );
    drop(Clusterer::open(&config(old.path(), 8)).unwrap());
    let flipped = config_with(
        old.path(),
        8,
        &[
            ("CALIBRATION__MODE", "trained"),
            ("EMBED__FLIP_AVERAGE", "true"),
        ],
    );
    assert!(Clusterer::open(&flipped).is_err());
}
