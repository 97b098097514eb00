//! Shared helpers for the Kafka tests: a mock cluster with the daemon's topics, a configuration
//! pointing at it, publishing faces, and reading a topic back.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use clip_cluster::cli::mock::MockKafka;
use clip_cluster::config::Config;
use clip_cluster::decode::embedding_envelope;
use clip_cluster::engine::FaceMeta;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{ClientConfig, Message};

pub const FACES: &str = "faces";
pub const EVENTS: &str = "face-events";
pub const DLQ: &str = "faces-dlq";
pub const COMMANDS: &str = "face-commands";

pub fn mock(input_partitions: i32) -> MockKafka {
    let m = MockKafka::start(3).expect("mock cluster starts");
    m.create_topic(FACES, input_partitions).unwrap();
    m.create_topic(EVENTS, 3).unwrap();
    m.create_topic(DLQ, 1).unwrap();
    m.create_topic(COMMANDS, 2).unwrap();
    m
}

/// Configuration for a daemon against `bootstrap`, state in `state`, as environment overrides.
pub fn env(bootstrap: &str, state: &Path, dim: usize, admin: &str) -> Vec<(String, String)> {
    [
        ("KAFKA__BOOTSTRAP_SERVERS", bootstrap.to_string()),
        ("KAFKA__INPUT_TOPICS", format!("[\"{FACES}\"]")),
        ("KAFKA__EVENTS_TOPIC", EVENTS.to_string()),
        ("KAFKA__DEAD_LETTER_TOPIC", DLQ.to_string()),
        (
            "KAFKA__CONSUMER_PROPERTIES__SESSION.TIMEOUT.MS",
            "3000".to_string(),
        ),
        (
            "KAFKA__CONSUMER_PROPERTIES__HEARTBEAT.INTERVAL.MS",
            "500".to_string(),
        ),
        ("STORE__PATH", state.display().to_string()),
        ("MODEL__DIM", dim.to_string()),
        ("ADMIN__LISTEN", admin.to_string()),
        // Tests that use the API set their own port (api.rs).
        ("API__LISTEN", "127.0.0.1:0".to_string()),
        ("SOURCE__MAX_BATCH", "64".to_string()),
        ("INDEX__SNAPSHOT_EVERY_FACES", "500".to_string()),
        // These tests are about the daemon's mechanics with a handful of faces: no warm-up
        // (the calibration warm-up has its own tests in state.rs).
        ("CALIBRATION__MODE", "trained".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("CLIP_CLUSTER__{k}"), v))
    .chain(embed_env(dim))
    .collect()
}

/// The embedder for 128-D daemons, from the fetched models (absolute paths, so a binary started
/// anywhere finds them); other dimensions are vector-only daemons without one.
pub fn embed_env(dim: usize) -> Vec<(String, String)> {
    let models = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let weights = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights");
    let v: Vec<(&str, String)> = if dim == 128 {
        vec![
            (
                "PROXY__DIRECTIONS_PATH",
                weights
                    .join("proxy-directions-lfw-train.safetensors")
                    .display()
                    .to_string(),
            ),
            (
                "EDGE__WEIGHTS_PATH",
                weights
                    .join("edge-head-lfw-train.safetensors")
                    .display()
                    .to_string(),
            ),
            (
                "EMBED__MODEL_PATH",
                models
                    .join("dlib_face_recognition_resnet_model_v1.dat")
                    .display()
                    .to_string(),
            ),
            (
                "EMBED__DETECTOR_PATH",
                models
                    .join("mmod_human_face_detector.dat")
                    .display()
                    .to_string(),
            ),
            (
                "EMBED__LANDMARKS_PATH",
                models
                    .join("shape_predictor_5_face_landmarks.dat")
                    .display()
                    .to_string(),
            ),
        ]
    } else {
        // Vector-only daemons in other dimensions: no embedder, and the shipped directions
        // and edge head (128-D) do not apply.
        vec![
            ("EMBED__ENABLED", "false".to_string()),
            ("PROXY__MODE", "identity".to_string()),
            ("EDGE__SCORER", "cosine".to_string()),
            ("ENGINE__T1", "0.95".to_string()),
        ]
    };
    v.into_iter()
        .map(|(k, v)| (format!("CLIP_CLUSTER__{k}"), v))
        .collect()
}

pub fn config(bootstrap: &str, state: &Path, dim: usize) -> Config {
    Config::load_from(None, &env(bootstrap, state, dim, "127.0.0.1:0")).expect("test configuration")
}

pub fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .expect("producer")
}

pub fn send(p: &BaseProducer, key: &str, payload: &[u8]) {
    send_record(p, BaseRecord::to(FACES).key(key).payload(payload));
}

/// Sends to one partition of the input topic (a domain's partition, as a producer keying by the
/// domain key would).
pub fn send_to(p: &BaseProducer, partition: i32, key: &str, payload: &[u8]) {
    send_record(
        p,
        BaseRecord::to(FACES)
            .partition(partition)
            .key(key)
            .payload(payload),
    );
}

/// Sends an operator command to the command topic.
pub fn send_command(p: &BaseProducer, payload: &[u8]) {
    send_record(p, BaseRecord::to(COMMANDS).key("ops").payload(payload));
}

/// Queues `rec`, polling while librdkafka's local queue is full.
fn send_record(p: &BaseProducer, mut rec: BaseRecord<'_, str, [u8]>) {
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                rec = r;
                p.poll(Duration::from_millis(5));
            }
        }
    }
}

/// A state's outbox events by sequence number, as JSON (what a Kafka-free reference run emits).
pub fn outbox_events(c: &clip_cluster::clusterer::Clusterer) -> BTreeMap<u64, serde_json::Value> {
    c.store()
        .outbox(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.event_seq, serde_json::to_value(&e.event).unwrap()))
        .collect()
}

/// Removes the fields only the wire form of an event has, leaving what the engine emitted.
pub fn strip_wire_fields(v: &mut serde_json::Value) {
    let o = v.as_object_mut().unwrap();
    for k in [
        "schema_version",
        "event_id",
        "event_seq",
        "domain",
        "face_seq",
    ] {
        o.remove(k);
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from the daemon's admin listener: (status code, body), if it answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

pub fn face_payload(i: usize, v: &[f32]) -> Vec<u8> {
    let meta = FaceMeta {
        source_id: Some("cam".into()),
        image_id: Some(format!("img-{}", i / 2)),
        ts: Some(i as i64),
        quality: None,
        ..Default::default()
    };
    embedding_envelope(&format!("face-{i}"), &meta, v)
}

/// Bad messages and the reason class each must be dead-lettered with.
pub fn bad_messages(dim: usize) -> Vec<(Vec<u8>, &'static str)> {
    let mut inf = String::from("{\"face_id\":\"bad-inf\",\"embedding\":[1e39");
    for _ in 1..dim {
        inf.push_str(",0");
    }
    inf.push_str("]}");
    vec![
        (vec![0x00, 0x01, 0xfe, 0x77], "unknown_format"),
        (
            b"{\"face_id\":\"bad-json\",\"embedding\":[0.1".to_vec(),
            "bad_json",
        ),
        (
            embedding_envelope("bad-dim", &FaceMeta::default(), &vec![1.0; dim - 1]),
            "wrong_dimension",
        ),
        (inf.into_bytes(), "not_finite"),
    ]
}

/// A record read back from a topic.
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads `topic` from the beginning until `want(records)` holds or `timeout` passes.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut want: impl FnMut(&[Record]) -> bool,
) -> Vec<Record> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("reader-{}-{}", topic, std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let end = Instant::now() + timeout;
    while Instant::now() < end && !want(&out) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(Record {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers: clip_cluster::pipeline::headers_of(&m),
            });
        }
    }
    out
}

/// Event ids and bodies (without the send time, which differs between deliveries).
pub fn events(records: &[Record]) -> Vec<(String, serde_json::Value)> {
    records
        .iter()
        .map(|r| {
            let mut v: serde_json::Value = serde_json::from_slice(&r.payload).expect("event JSON");
            let id = v["event_id"].as_str().expect("event_id").to_string();
            if let Some(o) = v.as_object_mut() {
                o.remove("emitted_at_ms");
            }
            (id, v)
        })
        .collect()
}

/// Reads the events topic until every wanted event arrived, then checks: unique ids, one per
/// event, the same content as `want` (by event_seq), keyed by the domain.
pub fn check_events(bootstrap: &str, want: &BTreeMap<u64, serde_json::Value>, timeout: Duration) {
    // The predicate runs after every record: it parses each record once (re-parsing them all
    // each time is quadratic, and timed out on a loaded machine with tens of thousands of events).
    let mut seen: HashSet<String> = HashSet::new();
    let mut parsed = 0;
    let records = read_topic(bootstrap, EVENTS, timeout, |r| {
        for rec in &r[parsed..] {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&rec.payload) {
                if let Some(id) = v["event_id"].as_str() {
                    seen.insert(id.to_string());
                }
            }
        }
        parsed = r.len();
        seen.len() >= want.len()
    });
    let got = events(&records);
    let ids: HashSet<&String> = got.iter().map(|e| &e.0).collect();
    assert_eq!(
        ids.len(),
        want.len(),
        "every event arrives at least once, with a unique id"
    );
    for (_, mut v) in got {
        let seq = v["event_seq"].as_u64().unwrap();
        strip_wire_fields(&mut v);
        assert_eq!(Some(&v), want.get(&seq), "event {seq}");
    }
    // The key is the domain: one partition, in order.
    assert!(records
        .iter()
        .all(|r| r.key.as_deref() == Some(b"default".as_slice())));
}

/// The models directory (`CLIP_CLUSTER_MODELS`, else `<repo>/models` as `tools/dlib/fetch_models.sh`
/// fills it), or None with a printed reason: model tests skip rather than fail when the weights
/// were not fetched (`tools/setup.sh` fetches them).
pub fn models_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("CLIP_CLUSTER_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    if dir
        .join("dlib_face_recognition_resnet_model_v1.dat")
        .is_file()
    {
        Some(dir)
    } else {
        let msg = format!(
            "no dlib model in {} (run tools/dlib/fetch_models.sh)",
            dir.display()
        );
        // CI sets this so that a setup that failed to fetch the weights fails the model tests.
        assert!(
            std::env::var_os("CLIP_CLUSTER_REQUIRE_MODELS").is_none(),
            "{msg}"
        );
        eprintln!("SKIP: {msg}");
        None
    }
}

/// LFW's root (`CLIP_CLUSTER_LFW`, else `../shared/data/lfw`), or None with a printed reason. With
/// `CLIP_CLUSTER_REQUIRE_LFW` set (`.ci/run` sets it whenever LFW is on the machine) a missing
/// LFW fails the test instead: in CI nothing skips silently.
pub fn lfw_root(test: &str) -> Option<std::path::PathBuf> {
    match clip_cluster::eval::lfw::locate(None) {
        Ok(p) => Some(p),
        Err(e) => {
            assert!(
                std::env::var_os("CLIP_CLUSTER_REQUIRE_LFW").is_none(),
                "{test}: {e}"
            );
            eprintln!("SKIP {test}: {e}");
            None
        }
    }
}

/// Starts the real binary with `run` and these `CLIP_CLUSTER__` variables, its log in `log`.
pub fn start(envs: &[(String, String)], log: &Path) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_clip-cluster"))
        .arg("run")
        .envs(envs.iter().cloned())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the binary starts")
}

/// Polls `done` every 50 ms until it holds (inside a test's runtime, beside the daemon's tasks);
/// fails the test after `limit`, saying `state()`.
pub async fn wait_until(
    limit: std::time::Duration,
    done: impl Fn() -> bool,
    state: impl Fn() -> String,
) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "not done after {limit:?}: {}",
            state()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A series' value from the daemon's /metrics (`name` with its labels, if any), if it answers.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// SIGTERM to a child that has not been waited for yet.
pub fn sigterm(child: &std::process::Child) {
    // SAFETY: plain kill(2) on our own child; its pid is not reused before it is waited for.
    unsafe { libc_kill(child.id() as i32, 15) };
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Engine parameters of the constraint and erasure property tests: 6-D cosine, `k` 5, `t1` 0.8,
/// the photo rule on.
pub fn small_params(support: f32, support_region: usize) -> clip_cluster::engine::EngineParams {
    clip_cluster::engine::EngineParams {
        dim: 6,
        k: 5,
        search_k: 400,
        t1: 0.8,
        t2: 0.0,
        refresh: 0,
        refresh_min_change: 0.0,
        min_quality: 0.0,
        weak_margin: 1.0,
        support,
        support_region,
        same_image_cannot_link: true,
    }
}

/// Clustered vectors in a low dimension: edges, merges and chains are common.
pub fn clustered_vectors(rng: &mut impl rand::Rng, n: usize, dim: usize) -> Vec<Vec<f32>> {
    let centers: Vec<Vec<f32>> = (0..6)
        .map(|_| (0..dim).map(|_| rng.gen::<f32>() - 0.5).collect())
        .collect();
    (0..n)
        .map(|_| {
            let c = &centers[rng.gen_range(0..centers.len())];
            c.iter()
                .map(|x| x + 0.5 * (rng.gen::<f32>() - 0.5))
                .collect()
        })
        .collect()
}

/// A small durable state's configuration (6-D, identity proxy, cosine, snapshots every 100
/// faces) under `dir`, with `extra` (`SECTION__KEY`, value) on top.
pub fn small_config(dir: &Path, extra: &[(&str, &str)]) -> Config {
    let env: Vec<(String, String)> = [
        ("STORE__PATH", dir.display().to_string()),
        ("MODEL__DIM", "6".into()),
        ("PROXY__MODE", "identity".into()),
        ("EDGE__SCORER", "cosine".into()),
        ("ENGINE__T1", "0.8".into()),
        ("CALIBRATION__MODE", "trained".into()),
        ("INDEX__SNAPSHOT_EVERY_FACES", "100".into()),
    ]
    .into_iter()
    .chain(extra.iter().map(|(k, v)| (*k, v.to_string())))
    .map(|(k, v)| (format!("CLIP_CLUSTER__{k}"), v))
    .collect();
    Config::load_from(None, &env).unwrap()
}
