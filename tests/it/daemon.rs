//! The daemon end to end against librdkafka's mock cluster: faces in, events out, bad messages to
//! the dead-letter topic, assignments equal to a run without Kafka, and a broker outage ridden out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clip_cluster::clusterer::Clusterer;
use clip_cluster::synth::{generate, SynthParams};
use clip_cluster::telemetry::Metrics;
use rdkafka::producer::Producer;

use crate::support::*;

/// Assignments by face id from a state directory, and its events by sequence.
fn state_of(cfg: &clip_cluster::config::Config, n: usize) -> (Vec<Option<u64>>, u64) {
    let c = Clusterer::open(cfg).unwrap();
    let e = c.engine();
    let a = (0..n)
        .map(|i| e.seq_of(&format!("face-{i}")).map(|s| e.cluster_of(s)))
        .collect();
    (a, e.counters().next_event_seq)
}

/// The same faces applied without Kafka, in input order: what the daemon must end with.
fn reference(vs: &[Vec<f32>], dim: usize) -> (Vec<Option<u64>>, BTreeMap<u64, serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("unused:9092", &dir.path().join("s"), dim);
    let mut c = Clusterer::open(&cfg).unwrap();
    let ids: Vec<String> = (0..vs.len()).map(|i| format!("face-{i}")).collect();
    for (i, v) in vs.iter().enumerate() {
        let meta = clip_cluster::engine::FaceMeta {
            source_id: Some("cam".into()),
            image_id: Some(format!("img-{}", i / 2)),
            ts: Some(i as i64),
        };
        c.apply_with_meta(&[(ids[i].as_str(), v.as_slice(), &meta)], &[])
            .unwrap();
    }
    let events = c
        .store()
        .outbox(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.event_seq, serde_json::to_value(&e.event).unwrap()))
        .collect();
    drop(c);
    (state_of(&cfg, vs.len()).0, events)
}

fn run_until_done(
    cfg: clip_cluster::config::Config,
    n: u64,
    bad: u64,
    mid_stream: impl FnOnce() + Send + 'static,
) -> clip_cluster::pipeline::RunSummary {
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = metrics.clone();
    rt.block_on(async move {
        let daemon = clip_cluster::pipeline::run(cfg, m.clone(), stop_rx);
        let watcher = async move {
            let start = Instant::now();
            let mut mid = Some(mid_stream);
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if m.faces_applied.get() >= n / 3 {
                    if let Some(f) = mid.take() {
                        tokio::task::spawn_blocking(f).await.unwrap();
                    }
                }
                if m.faces_applied.get() >= n
                    && m.dead_letters.get() >= bad
                    && m.outbox_depth.get() == 0
                {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "daemon did not finish: applied {} dead {} outbox {}",
                    m.faces_applied.get(),
                    m.dead_letters.get(),
                    m.outbox_depth.get()
                );
            }
            stop_tx.send(true).unwrap();
        };
        let (summary, ()) = tokio::join!(daemon, watcher);
        summary.unwrap()
    })
}

#[test]
fn faces_in_events_out_and_bad_messages_dead_lettered() {
    let dim = 32;
    let n = 600;
    let s = generate(SynthParams::new(n, dim, 3));
    let vs: Vec<Vec<f32>> = s.data.chunks(dim).map(<[f32]>::to_vec).collect();
    let kafka = mock(1);
    let p = producer(kafka.bootstrap_servers());
    let bad = bad_messages(dim);
    for (i, v) in vs.iter().enumerate() {
        send(&p, &format!("face-{i}"), &face_payload(i, v));
        if i == n / 2 {
            for (b, _) in &bad {
                send(&p, "bad", b);
            }
        }
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(kafka.bootstrap_servers(), &dir.path().join("state"), dim);
    let summary = run_until_done(cfg.clone(), n as u64, bad.len() as u64, || {});
    assert_eq!(summary.applied, n as u64);
    assert_eq!(summary.dead_letters, bad.len() as u64);
    assert_eq!(summary.outbox_left, 0);

    let (want_assign, want_events) = reference(&vs, dim);
    let (got_assign, n_events) = state_of(&cfg, n);
    assert_eq!(got_assign, want_assign);
    assert_eq!(n_events as usize, want_events.len());
    check_events(
        kafka.bootstrap_servers(),
        &want_events,
        Duration::from_secs(60),
    );

    let dlq = read_topic(
        kafka.bootstrap_servers(),
        DLQ,
        Duration::from_secs(30),
        |r| r.len() >= bad.len(),
    );
    assert_eq!(dlq.len(), bad.len());
    for (rec, (bytes, class)) in dlq.iter().zip(&bad) {
        assert_eq!(&rec.payload, bytes, "the original bytes are kept");
        let h = |k: &str| rec.header(k);
        assert_eq!(
            h("__connect.errors.exception.class.name").as_deref(),
            Some(*class)
        );
        assert_eq!(h("__connect.errors.topic").as_deref(), Some(FACES));
        assert!(h("__connect.errors.offset").is_some());
        assert!(!h("__connect.errors.exception.message")
            .unwrap_or_default()
            .is_empty());
    }
}

#[test]
fn a_broker_outage_is_ridden_through() {
    let dim = 32;
    let n = 900;
    let s = generate(SynthParams::new(n, dim, 4));
    let vs: Vec<Vec<f32>> = s.data.chunks(dim).map(<[f32]>::to_vec).collect();
    let kafka = std::sync::Arc::new(mock(1));
    let p = producer(kafka.bootstrap_servers());
    for (i, v) in vs.iter().enumerate().take(n / 2) {
        send(&p, &format!("face-{i}"), &face_payload(i, v));
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(kafka.bootstrap_servers(), &dir.path().join("state"), dim);
    let k = kafka.clone();
    let rest = vs.clone();
    // A third of the way in, every broker goes away for 3 s; the second half of the stream is
    // published once they are back.
    run_until_done(cfg.clone(), n as u64, 0, move || {
        for b in 1..=3 {
            k.broker_down(b).unwrap();
        }
        std::thread::sleep(Duration::from_secs(3));
        for b in 1..=3 {
            k.broker_up(b).unwrap();
        }
        for (i, v) in rest.iter().enumerate().skip(n / 2) {
            send(&p, &format!("face-{i}"), &face_payload(i, v));
        }
        p.flush(Duration::from_secs(30)).unwrap();
    });
    let (want_assign, want_events) = reference(&vs, dim);
    assert_eq!(state_of(&cfg, n).0, want_assign);
    check_events(
        kafka.bootstrap_servers(),
        &want_events,
        Duration::from_secs(60),
    );
}

#[test]
fn image_messages_are_dead_lettered_until_the_embedder_exists() {
    let dim = 16;
    let kafka = mock(1);
    let faces = tempfile::tempdir().unwrap();
    let jpeg = [0xFFu8, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F'];
    let png = *b"\x89PNG\r\n\x1a\n\x00\x00";
    for (person, file, bytes) in [
        ("alice", "alice_1.jpg", &jpeg[..]),
        ("alice", "alice_2.jpg", &jpeg[..]),
        ("bob", "bob_1.png", &png[..]),
    ] {
        std::fs::create_dir_all(faces.path().join(person)).unwrap();
        std::fs::write(faces.path().join(person).join(file), bytes).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(kafka.bootstrap_servers(), &dir.path().join("state"), dim);
    let sent = clip_cluster::produce::publish_images(&cfg, FACES, faces.path()).unwrap();
    assert_eq!(sent, 3);
    let summary = run_until_done(cfg, 0, 3, || {});
    assert_eq!((summary.applied, summary.dead_letters), (0, 3));
    let dlq = read_topic(
        kafka.bootstrap_servers(),
        DLQ,
        Duration::from_secs(30),
        |r| r.len() >= 3,
    );
    let mut ids = Vec::new();
    for rec in &dlq {
        let h = |k: &str| rec.header(k);
        assert_eq!(
            h("__connect.errors.exception.class.name").as_deref(),
            Some("image_unsupported")
        );
        ids.push(h("face_id").unwrap());
        assert!(
            rec.payload == jpeg || rec.payload == png,
            "original bytes kept"
        );
    }
    ids.sort();
    assert_eq!(ids, vec!["alice_1", "alice_2", "bob_1"]);
}
