//! The crash test: the real binary, killed with SIGKILL at 25 seeded random points while a stream
//! of 5,000 faces flows in, restarted each time. At the end, the assignments equal an uninterrupted
//! run, no face is lost or applied twice, and every event arrived at least once with a unique id.
//! Then SIGTERM stops it cleanly (exit 0).

use std::collections::HashSet;

use std::time::{Duration, Instant};

use clip_cluster::clusterer::Clusterer;
use clip_cluster::eval::synth::{generate, SynthParams};
use rand::{Rng, SeedableRng};
use rdkafka::producer::Producer;

use crate::support::*;

const N: usize = 5000;
const KILLS: usize = 25;

#[test]
fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let dim = 32;
    let s = generate(SynthParams::new(N, dim, 21));
    let vs: Vec<Vec<f32>> = s.data.chunks(dim).map(<[f32]>::to_vec).collect();
    // One input partition: the domain's total order, so "uninterrupted" is well defined.
    let kafka = mock(1);
    let bootstrap = kafka.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let mut envs = env(&bootstrap, &state, dim, &format!("127.0.0.1:{port}"));
    // A killed member keeps its partition until its session expires: keep sessions short.
    envs.retain(|(k, _)| !k.contains("SESSION.TIMEOUT") && !k.contains("HEARTBEAT"));
    envs.push((
        "CLIP_CLUSTER__KAFKA__CONSUMER_PROPERTIES__SESSION.TIMEOUT.MS".into(),
        "1000".into(),
    ));
    envs.push((
        "CLIP_CLUSTER__KAFKA__CONSUMER_PROPERTIES__HEARTBEAT.INTERVAL.MS".into(),
        "250".into(),
    ));

    // Publish the stream gradually, so that the kills land all along it.
    let feed = {
        let vs = vs.clone();
        let bootstrap = bootstrap.clone();
        std::thread::spawn(move || {
            let p = producer(&bootstrap);
            for (i, v) in vs.iter().enumerate() {
                send(&p, &format!("face-{i}"), &face_payload(i, v));
                if i % 100 == 99 {
                    p.flush(Duration::from_secs(10)).unwrap();
                    std::thread::sleep(Duration::from_millis(1100));
                }
            }
            p.flush(Duration::from_secs(10)).unwrap();
        })
    };

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let mut seen_progress = Vec::new();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for k in 0..KILLS {
        let mut child = start(&envs, &logs.join(format!("run-{k}.log")));
        std::thread::sleep(Duration::from_millis(rng.gen_range(1500..3500)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Progress as the durable state sees it (the process is gone, so the store is free).
        let c = Clusterer::open(&config(&bootstrap, &state, dim))
            .unwrap_or_else(|e| panic!("state after kill {k} does not open: {e}"));
        seen_progress.push(c.engine().n_faces());
    }
    feed.join().unwrap();
    let distinct: HashSet<usize> = seen_progress.iter().copied().collect();
    if distinct.len() < 10 {
        for k in 0..3 {
            eprintln!(
                "--- run {k}:\n{}",
                std::fs::read_to_string(logs.join(format!("run-{k}.log"))).unwrap_or_default()
            );
        }
    }
    assert!(
        distinct.len() >= 15,
        "kills should land at many points of the stream: {seen_progress:?}"
    );
    assert!(*seen_progress.first().unwrap() < N / 2, "{seen_progress:?}");

    // Final run: wait until everything is applied and delivered, then stop it with SIGTERM.
    let mut child = start(&envs, &logs.join("final.log"));
    let t = Instant::now();
    loop {
        let applied = metric(port, "clip_cluster_index_faces").unwrap_or(0.0);
        let outbox = metric(port, "clip_cluster_outbox_depth_events").unwrap_or(1.0);
        if applied as usize == N && outbox == 0.0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "final run stalled at {applied} faces, outbox {outbox}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM gives a clean exit: {status:?}");

    // The uninterrupted run.
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_cfg = config(&bootstrap, &ref_dir.path().join("s"), dim);
    let mut r = Clusterer::open(&ref_cfg).unwrap();
    for (i, v) in vs.iter().enumerate() {
        let meta = clip_cluster::engine::FaceMeta {
            source_id: Some("cam".into()),
            image_id: Some(format!("img-{}", i / 2)),
            ts: Some(i as i64),
            quality: None,
            ..Default::default()
        };
        r.apply(
            &[clip_cluster::engine::Face {
                meta,
                ..clip_cluster::engine::Face::new(format!("face-{i}"), v.to_vec())
            }],
            &[],
        )
        .unwrap();
    }
    let want_events: Vec<serde_json::Value> = r
        .store()
        .outbox(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::to_value(&e.event).unwrap())
        .collect();

    let got = Clusterer::open(&config(&bootstrap, &state, dim)).unwrap();
    let (ge, re) = (got.engine(), r.engine());
    assert_eq!(ge.n_faces(), N, "no face lost, none applied twice");
    for i in 0..N {
        let id = format!("face-{i}");
        let (gs, rs) = (ge.seq_of(&id).unwrap(), re.seq_of(&id).unwrap());
        assert_eq!(gs, rs, "{id} got the same sequence number");
        assert_eq!(
            ge.cluster_of(gs),
            re.cluster_of(rs),
            "{id} is in the same cluster"
        );
    }
    assert_eq!(got.store().outbox_len(), 0);

    // Every event at least once, unique ids, the same content as the uninterrupted run.
    let want: std::collections::BTreeMap<u64, serde_json::Value> = want_events
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v))
        .collect();
    check_events(&bootstrap, &want, Duration::from_secs(120));
}
