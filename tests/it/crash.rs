//! The crash test: the real binary, killed with SIGKILL at 50 seeded random points while a stream
//! of 5,000 faces flows in, with operator commands (names, "not this person", erasure of a face
//! and of a person) on the command topic and redeliveries of erased faces interleaved, restarted
//! each time. At the end, the assignments and the events equal an uninterrupted run that applied
//! the same stream and commands in the same order: no face is lost or applied twice, no command is
//! applied twice, no erased face is seen again, and every event arrived at least once with a
//! unique id. Then SIGTERM stops it cleanly (exit 0).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use clip_cluster::clusterer::{parse_request, Action, Clusterer};
use clip_cluster::eval::synth::{generate, SynthParams};
use rand::{Rng, SeedableRng};
use rdkafka::producer::Producer;
use serde_json::{json, Value};

use crate::support::*;

const N: usize = 5000;
const KILLS: usize = 50;
/// The stream pauses here (after this many faces) for a round of commands.
const CHECKPOINT_EVERY: usize = 1000;

/// What the feed sent, in the order the daemon applied it.
#[derive(Clone, Debug)]
enum Step {
    Face(usize),
    Command(Vec<u8>),
}

/// GET `path` from the API until it answers 200 (the daemon may be down or restarting).
fn api_get(port: u16, path: &str) -> Value {
    let t = Instant::now();
    loop {
        if let Some((200, body)) = http_get(port, path) {
            return serde_json::from_str(&body).expect("API JSON");
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "{path} never answered 200"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the API says `path` is gone (404), through restarts.
fn api_gone(port: u16, path: &str) {
    let t = Instant::now();
    while !matches!(http_get(port, path), Some((404, _))) {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "{path} never became 404"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The round of commands after `b` faces, as they are sent; the daemon's clusters are read
/// through the API (the stream is paused, so they are what the uninterrupted run has too).
/// The last command of a round is an erasure whose face is visible before it and gone after
/// it, so the feed knows every command of the round was applied before it resumes.
fn round(port: u16, b: usize) -> (Vec<Value>, String) {
    let cluster = |i: usize| api_get(port, &format!("/v1/faces/face-{i}"))["cluster_id"].clone();
    let c = b / CHECKPOINT_EVERY;
    let mut cmds = vec![
        json!({"command_id": format!("name-{c}"), "op": "name", "cluster_id": cluster(b - 1),
               "name": format!("person {c}")}),
        json!({"command_id": format!("not-{c}"), "op": "not_in_cluster",
               "face_id": format!("face-{}", b - 2), "cluster_id": cluster(b - 2)}),
    ];
    let mut person = None;
    if c == 3 {
        // Erase a whole person.
        person = Some(cluster(b - 20));
        cmds.push(
            json!({"command_id": format!("person-{c}"), "op": "erase_cluster",
                          "cluster_id": person.clone().unwrap()}),
        );
    }
    let last = (b - 9..b - 2)
        .find(|&i| Some(cluster(i)) != person)
        .expect("a face outside the erased person");
    cmds.push(
        json!({"command_id": format!("erase-{c}"), "op": "erase_face",
                     "face_id": format!("face-{last}")}),
    );
    (cmds, format!("face-{last}"))
}

#[test]
fn sigkill_at_random_points_with_commands_loses_and_duplicates_nothing() {
    let dim = 32;
    let s = generate(SynthParams::new(N, dim, 21));
    let vs: Vec<Vec<f32>> = s.data.chunks(dim).map(<[f32]>::to_vec).collect();
    // One input partition: the domain's total order, so "uninterrupted" is well defined.
    let kafka = mock(1);
    let bootstrap = kafka.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (port, api) = (free_port(), free_port());
    let mut envs = env(&bootstrap, &state, dim, &format!("127.0.0.1:{port}"));
    // A killed member keeps its partition until its session expires: keep sessions short.
    envs.retain(|(k, _)| {
        !k.contains("SESSION.TIMEOUT") && !k.contains("HEARTBEAT") && !k.contains("API__LISTEN")
    });
    for (k, v) in [
        ("KAFKA__CONSUMER_PROPERTIES__SESSION.TIMEOUT.MS", "1000"),
        ("KAFKA__CONSUMER_PROPERTIES__HEARTBEAT.INTERVAL.MS", "250"),
        ("API__LISTEN", &format!("127.0.0.1:{api}")),
        ("API__PUBLIC_READS", "true"),
    ] {
        envs.push((format!("CLIP_CLUSTER__{k}"), v.to_string()));
    }

    // Publish the stream gradually, in step with the kills (a chunk of faces per kill, so that
    // the kills land all along it however fast the machine restarts the daemon); at each
    // checkpoint, wait until the daemon applied everything so far, then send a round of
    // commands and wait until they are applied too, so the order of faces and commands is the
    // feed's.
    let kills_done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let feed = {
        let vs = vs.clone();
        let bootstrap = bootstrap.clone();
        let kills_done = kills_done.clone();
        std::thread::spawn(move || {
            let p = producer(&bootstrap);
            let mut steps = Vec::new();
            let mut erased = Vec::new();
            for (i, v) in vs.iter().enumerate() {
                send(&p, &format!("face-{i}"), &face_payload(i, v));
                steps.push(Step::Face(i));
                if i % 100 == 99 {
                    p.flush(Duration::from_secs(10)).unwrap();
                    let chunk = (i + 1) / 100 * KILLS / (N / 100);
                    let t = Instant::now();
                    while kills_done.load(std::sync::atomic::Ordering::SeqCst) < chunk
                        && t.elapsed() < Duration::from_secs(60)
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                let b = i + 1;
                if b % CHECKPOINT_EVERY == 0 && b < N {
                    api_get(api, &format!("/v1/faces/face-{i}"));
                    let (cmds, last) = round(api, b);
                    for c in &cmds {
                        let bytes = serde_json::to_vec(c).unwrap();
                        send_command(&p, &bytes);
                        steps.push(Step::Command(bytes));
                    }
                    p.flush(Duration::from_secs(10)).unwrap();
                    api_gone(api, &format!("/v1/faces/{last}"));
                    // A redelivery of the erased face: refused for good.
                    let j: usize = last["face-".len()..].parse().unwrap();
                    send(&p, &last, &face_payload(j, &vs[j]));
                    steps.push(Step::Face(j));
                    erased.push(last);
                }
            }
            p.flush(Duration::from_secs(10)).unwrap();
            (steps, erased)
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
        kills_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Progress as the durable state sees it (the process is gone, so the store is free).
        let c = Clusterer::open(&config(&bootstrap, &state, dim))
            .unwrap_or_else(|e| panic!("state after kill {k} does not open: {e}"));
        seen_progress.push(c.engine().n_faces());
    }
    let distinct: HashSet<usize> = seen_progress.iter().copied().collect();
    if distinct.len() < 25 {
        for k in [0, KILLS - 1] {
            let log =
                std::fs::read_to_string(logs.join(format!("run-{k}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("hnsw_rs")).collect();
            eprintln!(
                "--- run {k}:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
    assert!(
        distinct.len() >= 25,
        "kills should land at many points of the stream: {seen_progress:?}"
    );
    assert!(*seen_progress.first().unwrap() < N / 2, "{seen_progress:?}");

    // Final run: the feed finishes against it; wait until everything is applied and
    // delivered, then stop it with SIGTERM.
    let mut child = start(&envs, &logs.join("final.log"));
    let (steps, erased) = feed.join().unwrap();
    assert_eq!(erased.len(), N / CHECKPOINT_EVERY - 1);
    let t = Instant::now();
    loop {
        let last = http_get(api, &format!("/v1/faces/face-{}", N - 1));
        let outbox = metric(port, "clip_cluster_outbox_depth_events").unwrap_or(1.0);
        if matches!(last, Some((200, _))) && outbox == 0.0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "final run stalled: {last:?}, outbox {outbox}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in &erased {
        assert_eq!(
            http_get(api, &format!("/v1/faces/{id}")).map(|r| r.0),
            Some(404),
            "{id} stays erased"
        );
    }
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM gives a clean exit: {status:?}");

    // The uninterrupted run: the same faces and commands in the same order.
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_cfg = config(&bootstrap, &ref_dir.path().join("s"), dim);
    let mut r = Clusterer::open(&ref_cfg).unwrap();
    let mut feedback_applied = 0;
    for step in &steps {
        match step {
            Step::Face(i) => {
                let meta = clip_cluster::engine::FaceMeta {
                    source_id: Some("cam".into()),
                    image_id: Some(format!("img-{}", i / 2)),
                    ts: Some(*i as i64),
                    quality: None,
                    ..Default::default()
                };
                let face = clip_cluster::engine::Face {
                    meta,
                    ..clip_cluster::engine::Face::new(format!("face-{i}"), vs[*i].to_vec())
                };
                r.apply(&[face], &[]).unwrap();
            }
            Step::Command(bytes) => {
                // A refused command (e.g. "not this person" for a face alone) changes nothing,
                // in the daemon too.
                let req = parse_request(bytes).unwrap();
                let done = r.execute(&req.action, &[]).unwrap().is_ok();
                if done && matches!(req.action, Action::Feedback(_)) {
                    feedback_applied += 1;
                }
            }
        }
    }
    let want_events: Vec<Value> = r
        .store()
        .outbox(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::to_value(&e.event).unwrap())
        .collect();

    let got = Clusterer::open(&config(&bootstrap, &state, dim)).unwrap();
    let (ge, re) = (got.engine(), r.engine());
    assert_eq!(
        ge.n_faces(),
        re.n_faces(),
        "no face lost, none applied twice"
    );
    for i in 0..N {
        let id = format!("face-{i}");
        let (gs, rs) = (ge.seq_of(&id), re.seq_of(&id));
        assert_eq!(gs, rs, "{id} got the same sequence number");
        let Some(gs) = gs else { continue };
        assert_eq!(ge.is_erased(gs), re.is_erased(gs), "{id} erased alike");
        if !ge.is_erased(gs) {
            assert_eq!(
                ge.cluster_of(gs),
                re.cluster_of(gs),
                "{id} is in the same cluster"
            );
        }
    }
    for id in &erased {
        let seq = ge.seq_of(id).expect("a tombstone keeps the id");
        assert!(ge.is_erased(seq), "{id} is erased");
    }
    assert_eq!(got.store().outbox_len(), 0);

    // Every event at least once, unique ids, the same content as the uninterrupted run: so
    // every command applied once, and nothing about an erased face after its FaceErased.
    let kinds = |t: &str| want_events.iter().filter(|e| e["type"] == t).count();
    assert_eq!(kinds("FeedbackApplied"), feedback_applied);
    assert!(feedback_applied >= erased.len(), "the names at least");
    assert!(kinds("FaceErased") > erased.len(), "the person's faces too");
    let mut gone = HashSet::new();
    for e in &want_events {
        if let Some(id) = e["face_id"].as_str() {
            assert!(!gone.contains(id), "{id} appears after it was erased: {e}");
            if e["type"] == "FaceErased" {
                gone.insert(id.to_string());
            }
        }
    }
    let want: BTreeMap<u64, Value> = want_events
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v))
        .collect();
    check_events(&bootstrap, &want, Duration::from_secs(120));
}
