//! The daemon end to end against librdkafka's mock cluster: faces in, events out, bad messages to
//! the dead-letter topic, assignments equal to a run without Kafka, and a broker outage ridden out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clip_cluster::clusterer::Clusterer;
use clip_cluster::eval::synth::{generate, SynthParams};
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
            quality: None,
            ..Default::default()
        };
        c.apply(
            &[clip_cluster::engine::Face {
                meta,
                ..clip_cluster::engine::Face::new(ids[i].as_str(), v.to_vec())
            }],
            &[],
        )
        .unwrap();
    }
    let events = outbox_events(&c);
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
        // sink.dead_letter_payload = "metadata" (the default): no bytes, their size and hash.
        assert!(
            rec.payload.is_empty(),
            "the payload stays behind by default"
        );
        assert_eq!(
            rec.header("clip_cluster.payload.bytes").as_deref(),
            Some(bytes.len().to_string().as_str())
        );
        let sha = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(bytes);
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        assert_eq!(rec.header("clip_cluster.payload.sha256"), Some(sha));
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

/// Nine LFW faces of three people plus two broken images, in a directory `publish_images` reads.
fn lfw_faces() -> Option<tempfile::TempDir> {
    let lfw = crate::support::lfw_root("lfw_faces")?;
    let dir = tempfile::tempdir().unwrap();
    for name in ["Colin_Powell", "George_W_Bush", "Tony_Blair"] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        for n in 1..=3 {
            let src = clip_cluster::eval::lfw::image_path(&lfw, name, n);
            std::fs::copy(&src, dir.path().join(name).join(src.file_name().unwrap())).unwrap();
        }
    }
    let real = std::fs::read(clip_cluster::eval::lfw::image_path(&lfw, "Tony_Blair", 4)).unwrap();
    std::fs::create_dir_all(dir.path().join("zz_broken")).unwrap();
    std::fs::write(dir.path().join("zz_broken/truncated.jpg"), &real[..600]).unwrap();
    std::fs::write(
        dir.path().join("zz_broken/fake.png"),
        b"\x89PNG\r\n\x1a\n garbage, not a png",
    )
    .unwrap();
    Some(dir)
}

/// Cluster id by face id in a state directory.
fn assignments(cfg: &clip_cluster::config::Config, ids: &[String]) -> Vec<Option<u64>> {
    let c = Clusterer::open(cfg).unwrap();
    let e = c.engine();
    ids.iter()
        .map(|id| e.seq_of(id).map(|s| e.cluster_of(s)))
        .collect()
}

fn check_image_dead_letters(bootstrap: &str) {
    let dlq = read_topic(bootstrap, DLQ, Duration::from_secs(30), |r| r.len() >= 2);
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
    assert_eq!(
        got,
        vec![
            ("fake".to_string(), "image_decode".to_string()),
            ("truncated".to_string(), "image_decode".to_string())
        ]
    );
}

/// The test faces' image bytes (`<person>/<id>.jpg` under `faces`) and their vectors from the
/// configured embedder, in `ids` order.
fn embed_test_faces(
    cfg: &clip_cluster::config::Config,
    faces: &std::path::Path,
    ids: &[String],
) -> (Vec<Vec<u8>>, Vec<Vec<f32>>) {
    use clip_cluster::embed::FaceEmbedder;
    let embedder = clip_cluster::embed::DlibEmbedder::from_config(cfg).unwrap();
    let bytes: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| {
            let person = &id[..id.len() - 5];
            std::fs::read(faces.join(person).join(format!("{id}.jpg"))).unwrap()
        })
        .collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let vectors = embedder
        .embed_encoded(&refs)
        .into_iter()
        .map(|r| r.unwrap().vector)
        .collect();
    (bytes, vectors)
}

/// Publishes the test faces, then runs role "embed" (with `embed_env` added to its
/// configuration) into the embeddings topic and role "cluster" from it, in two consumer groups,
/// until the nine faces are applied, the two broken images dead-lettered and the outbox empty.
/// Returns the embed worker's metrics and the cluster worker's configuration.
fn embed_then_cluster(
    kafka: &clip_cluster::cli::mock::MockKafka,
    dir: &std::path::Path,
    faces: &std::path::Path,
    embed_env: &[(String, String)],
) -> (Metrics, clip_cluster::config::Config) {
    kafka.create_topic("face-embeddings", 1).unwrap();
    let pub_cfg = config(kafka.bootstrap_servers(), &dir.join("unused"), 128);
    assert_eq!(
        clip_cluster::cli::produce::publish_images(&pub_cfg, FACES, faces).unwrap(),
        11
    );
    let with = |group: &str, role: &str, input: &str, state: &str, extra: &[(String, String)]| {
        let mut env = crate::support::env(
            kafka.bootstrap_servers(),
            &dir.join(state),
            128,
            "127.0.0.1:0",
        );
        env.push(("CLIP_CLUSTER__KAFKA__GROUP_ID".into(), group.into()));
        env.push(("CLIP_CLUSTER__DAEMON__ROLE".into(), role.into()));
        env.push((
            "CLIP_CLUSTER__KAFKA__INPUT_TOPICS".into(),
            format!("[\"{input}\"]"),
        ));
        env.push((
            "CLIP_CLUSTER__KAFKA__EMBEDDINGS_TOPIC".into(),
            "face-embeddings".into(),
        ));
        env.extend_from_slice(extra);
        clip_cluster::config::Config::load_from(None, &env).unwrap()
    };
    let embed_cfg = with("embedders", "embed", FACES, "unused-embed", embed_env);
    let cluster_cfg = with("clusterers", "cluster", "face-embeddings", "cluster", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (em, cm) = (Metrics::new(), Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (e2, c2) = (em.clone(), cm.clone());
    let (e3, c_cfg) = (em.clone(), cluster_cfg.clone());
    rt.block_on(async move {
        let em = e3;
        let embed = tokio::spawn(clip_cluster::pipeline::run(embed_cfg, e2, stop_rx.clone()));
        let cluster = tokio::spawn(clip_cluster::pipeline::run(c_cfg, c2, stop_rx));
        crate::support::wait_until(
            Duration::from_secs(120),
            || {
                cm.faces_applied.get() >= 9
                    && em.dead_letters.get() >= 2
                    && cm.outbox_depth.get() == 0
            },
            || {
                format!(
                    "embed {} / cluster {}",
                    em.faces_embedded.get(),
                    cm.faces_applied.get()
                )
            },
        )
        .await;
        stop_tx.send(true).unwrap();
        embed.await.unwrap().unwrap();
        cluster.await.unwrap().unwrap();
    });
    (em, cluster_cfg)
}

#[test]
fn image_messages_are_embedded_in_process_and_by_embed_workers_alike() {
    if models_dir().is_none() {
        return;
    }
    let Some(faces) = lfw_faces() else { return };
    let ids: Vec<String> = ["Colin_Powell", "George_W_Bush", "Tony_Blair"]
        .iter()
        .flat_map(|n| (1..=3).map(move |i| format!("{n}_{i:04}")))
        .collect();

    // (a) role all: the daemon embeds the images itself.
    let kafka = mock(1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(kafka.bootstrap_servers(), &dir.path().join("all"), 128);
    assert_eq!(
        clip_cluster::cli::produce::publish_images(&cfg, FACES, faces.path()).unwrap(),
        11
    );
    let summary = run_until_done(cfg.clone(), 9, 2, || {});
    assert_eq!((summary.applied, summary.dead_letters), (9, 2));
    check_image_dead_letters(kafka.bootstrap_servers());
    let in_process = assignments(&cfg, &ids);
    assert!(in_process.iter().all(Option::is_some), "{in_process:?}");

    // The same vectors applied without Kafka give the same clusters.
    let (_, vectors) = embed_test_faces(&cfg, faces.path(), &ids);
    let ref_cfg = config("unused:9092", &dir.path().join("reference"), 128);
    {
        let mut c = Clusterer::open(&ref_cfg).unwrap();
        for (id, v) in ids.iter().zip(&vectors) {
            c.apply(
                &[clip_cluster::engine::Face::new(id.as_str(), v.to_vec())],
                &[],
            )
            .unwrap();
        }
    }
    assert_eq!(assignments(&ref_cfg, &ids), in_process);

    // (b) role embed -> embeddings topic -> role cluster, in two consumer groups.
    let kafka = mock(1);
    let (em, cluster_cfg) = embed_then_cluster(&kafka, dir.path(), faces.path(), &[]);
    assert_eq!(em.faces_embedded.get(), 9);
    check_image_dead_letters(kafka.bootstrap_servers());
    assert_eq!(assignments(&cluster_cfg, &ids), in_process);
    // The embeddings topic carries the embedder's vectors exactly, keyed by face id.
    let out = read_topic(
        kafka.bootstrap_servers(),
        "face-embeddings",
        Duration::from_secs(30),
        |r| r.len() >= 9,
    );
    let c = Clusterer::open(&cluster_cfg).unwrap();
    for r in &out {
        let env: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        let id = env["face_id"].as_str().unwrap();
        let k = ids.iter().position(|x| x == id).unwrap();
        let got: Vec<f32> = env["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, vectors[k], "{id}");
        assert_eq!(r.key.as_deref(), Some(id.as_bytes()));
        // The worker's thumbnail travels with the vector and the cluster worker keeps it.
        let b64 = env["thumbnail_b64"].as_str().expect("a thumbnail");
        let jpeg = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
        assert!(jpeg.starts_with(&[0xFF, 0xD8, 0xFF]), "{id}");
        let seq = c.engine().seq_of(id).unwrap();
        assert_eq!(c.store().thumbnail(seq).unwrap(), Some(jpeg), "{id}");
    }
}

/// CLIP hallucination in the daemon (tiny random-weight CLIP of the fixtures, a seeded random
/// mapper H): embedding workers send each face's variants on the embeddings topic exactly as the
/// CLIP stage computes them, and role "all" (which hallucinates in process) and role "embed" ->
/// role "cluster" (which reads them from the envelope) end with the same clusters and proxies.
#[test]
fn clip_variants_travel_from_the_embed_workers_to_the_proxy() {
    let Some(models) = models_dir() else { return };
    let vocab = models.join("bpe_simple_vocab_16e6.txt.gz");
    if !vocab.exists() {
        assert!(
            std::env::var_os("CLIP_CLUSTER_REQUIRE_MODELS").is_none(),
            "no CLIP vocabulary at {} (tools/clip/fetch_vocab.sh)",
            vocab.display()
        );
        eprintln!("SKIP: no CLIP vocabulary at {}", vocab.display());
        return;
    }
    let Some(faces) = lfw_faces() else { return };
    let ids: Vec<String> = ["Colin_Powell", "George_W_Bush", "Tony_Blair"]
        .iter()
        .flat_map(|n| (1..=3).map(move |i| format!("{n}_{i:04}")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // A random mapper with visible effect: 128 identity + 16 CLIP values -> 128.
    let mut state = 7u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
    };
    let hidden = 8;
    let mapper = clip_cluster::hallucinate::Mapper {
        dim: 128,
        clip_dim: 16,
        hidden,
        w1: (0..hidden * 144).map(|_| next()).collect(),
        b1: vec![0.0; hidden],
        w2: (0..128 * hidden).map(|_| next()).collect(),
        b2: vec![0.0; 128],
    };
    let mapper_path = dir.path().join("mapper.safetensors");
    mapper.save(&mapper_path).unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip");
    let clip_env = [
        (
            "CLIP_CLUSTER__CLIP__WEIGHTS",
            fixtures.join("clip_tiny.safetensors"),
        ),
        (
            "CLIP_CLUSTER__CLIP__MODEL_CONFIG",
            fixtures.join("clip_tiny.json"),
        ),
        ("CLIP_CLUSTER__CLIP__VOCAB", vocab.clone()),
        (
            "CLIP_CLUSTER__CLIP__PROMPTS",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prompts.toml"),
        ),
        ("CLIP_CLUSTER__CLIP__MAPPER_PATH", mapper_path.clone()),
    ];
    let with_clip = |mut env: Vec<(String, String)>| {
        for (k, v) in &clip_env {
            env.push((k.to_string(), format!("\"{}\"", v.display())));
        }
        clip_cluster::config::Config::load_from(None, &env).unwrap()
    };

    // What the CLIP stage makes of the nine faces.
    let kafka = mock(1);
    let all_cfg = with_clip(crate::support::env(
        kafka.bootstrap_servers(),
        &dir.path().join("all"),
        128,
        "127.0.0.1:0",
    ));
    let stage = clip_cluster::hallucinate::ClipStage::from_config(&all_cfg)
        .unwrap()
        .unwrap();
    let n_var = stage.n_variants();
    assert!(n_var > 0);
    let (bytes, vectors) = embed_test_faces(&all_cfg, faces.path(), &ids);
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let decoded = clip_cluster::embed::decode_all(&refs, &Default::default());
    let images: Vec<_> = decoded.iter().map(|d| d.as_ref().ok()).collect();
    let opt: Vec<Option<&[f32]>> = vectors.iter().map(|v| Some(v.as_slice())).collect();
    let want = stage.variants(&images, &opt).unwrap();
    assert!(want.iter().all(|v| v.len() == n_var * 128));

    // (a) role all: embeds and hallucinates in process.
    assert_eq!(
        clip_cluster::cli::produce::publish_images(&all_cfg, FACES, faces.path()).unwrap(),
        11
    );
    let summary = run_until_done(all_cfg.clone(), 9, 2, || {});
    assert_eq!((summary.applied, summary.dead_letters), (9, 2));
    let in_process = assignments(&all_cfg, &ids);
    let proxies = |cfg: &clip_cluster::config::Config| -> Vec<Vec<f32>> {
        let c = Clusterer::open(cfg).unwrap();
        let e = c.engine();
        ids.iter()
            .map(|id| e.proxy(e.seq_of(id).unwrap()).to_vec())
            .collect()
    };
    let in_process_proxies = proxies(&all_cfg);
    // Not vacuous: without the variants the same faces get other proxies.
    let plain_cfg = config("unused:9092", &dir.path().join("plain"), 128);
    {
        let mut c = Clusterer::open(&plain_cfg).unwrap();
        for (id, v) in ids.iter().zip(&vectors) {
            c.apply(
                &[clip_cluster::engine::Face::new(id.as_str(), v.to_vec())],
                &[],
            )
            .unwrap();
        }
    }
    assert!(
        proxies(&plain_cfg) != in_process_proxies,
        "the CLIP variants changed some proxy"
    );

    // (b) role embed -> embeddings topic -> role cluster (which has no CLIP of its own).
    let kafka = mock(1);
    let clip_vars: Vec<(String, String)> = clip_env
        .iter()
        .map(|(k, v)| (k.to_string(), format!("\"{}\"", v.display())))
        .collect();
    let (_, cluster_cfg) = embed_then_cluster(&kafka, dir.path(), faces.path(), &clip_vars);
    let out = read_topic(
        kafka.bootstrap_servers(),
        "face-embeddings",
        Duration::from_secs(30),
        |r| r.len() >= 9,
    );
    for r in &out {
        let env: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        let id = env["face_id"].as_str().unwrap();
        let k = ids.iter().position(|x| x == id).unwrap();
        let got: Vec<f32> = env["hallucinated"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            got, want[k],
            "{id}: the envelope carries the CLIP stage's variants"
        );
    }
    assert_eq!(assignments(&cluster_cfg, &ids), in_process);
    assert!(
        proxies(&cluster_cfg) == in_process_proxies,
        "the proxies are built from the same variants in both topologies"
    );
}
