//! Scale-out by partition against librdkafka's mock cluster: cluster-role daemons in one group,
//! each input partition its own domain (`daemon.domains = "per_partition"`). Each domain's result
//! must equal a Kafka-free run of that domain's faces alone, through rebalances and a member
//! leaving mid-stream; a partition whose state is missing while the group has committed offsets
//! is blocked and reported while the others proceed; single mode reports a split domain.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use clip_cluster::clusterer::Clusterer;
use clip_cluster::config::Config;
use clip_cluster::engine::FaceMeta;
use clip_cluster::eval::synth::{generate, SynthParams};
use clip_cluster::telemetry::Metrics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::support::*;

const PARTITIONS: i32 = 4;
const DIM: usize = 32;

/// Partition 3's domain is renamed to a tenant name through `daemon.domain_names`.
fn domain_name(p: i32) -> String {
    if p == 3 {
        "tenant-d".into()
    } else {
        format!("{FACES}-{p}")
    }
}

fn domain_env(bootstrap: &str, state: &Path, admin: &str) -> Vec<(String, String)> {
    let mut e = env(bootstrap, state, DIM, admin);
    for (k, v) in [
        ("DAEMON__ROLE", "cluster"),
        ("DAEMON__DOMAINS", "per_partition"),
        ("DAEMON__DOMAIN_NAMES__FACES-3", "tenant-d"),
        // Small snapshots, so that domains change hands with an HNSW dump to load.
        ("INDEX__SNAPSHOT_EVERY_FACES", "100"),
    ] {
        e.retain(|(n, _)| n != &format!("CLIP_CLUSTER__{k}"));
        e.push((format!("CLIP_CLUSTER__{k}"), v.to_string()));
    }
    e
}

fn domain_config(bootstrap: &str, state: &Path, admin: &str) -> Config {
    Config::load_from(None, &domain_env(bootstrap, state, admin)).expect("test configuration")
}

/// One domain's faces: ids, vectors and metadata, in publishing order.
struct Faces {
    ids: Vec<String>,
    vs: Vec<Vec<f32>>,
    metas: Vec<FaceMeta>,
}

/// Faces `first..first + n` of partition `p`'s stream (one fixed synthetic pool per partition).
fn faces_of(p: i32, n: usize, first: usize) -> Faces {
    const POOL: usize = 600;
    assert!(first + n <= POOL);
    let s = generate(SynthParams::new(POOL, DIM, 100 + p as u64));
    let vs: Vec<Vec<f32>> = s
        .data
        .chunks(DIM)
        .skip(first)
        .take(n)
        .map(<[f32]>::to_vec)
        .collect();
    let ids = (first..first + n)
        .map(|i| format!("p{p}-face-{i}"))
        .collect();
    let metas = (first..first + n)
        .map(|i| FaceMeta {
            source_id: Some(format!("camera-{p}")),
            image_id: Some(format!("img-{}", i / 2)),
            ts: Some(i as i64),
            quality: None,
            ..Default::default()
        })
        .collect();
    Faces { ids, vs, metas }
}

fn publish(bootstrap: &str, faces: &BTreeMap<i32, Faces>) {
    let p = producer(bootstrap);
    let n = faces.values().map(|f| f.ids.len()).max().unwrap_or(0);
    // Interleaved, so that every domain is mid-stream at any point of the feed.
    for i in 0..n {
        for (part, f) in faces {
            let payload =
                clip_cluster::decode::embedding_envelope(&f.ids[i], &f.metas[i], &f.vs[i]);
            // Keyed by the domain key: what routes a tenant to one partition.
            send_to(&p, *part, &format!("tenant-{part}"), &payload);
        }
        if i % 50 == 49 {
            flush(&p);
        }
    }
    flush(&p);
}

/// Waits until every queued message is acknowledged: a loaded machine (CI runs two tests at
/// once) may need longer than one flush's timeout, and a flush that times out leaves the rest
/// queued, so it is asked again rather than failing the feed.
fn flush(p: &rdkafka::producer::BaseProducer) {
    let t = Instant::now();
    while let Err(e) = p.flush(Duration::from_secs(10)) {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "the feed's messages not acknowledged after 180 s: {e}"
        );
    }
}

/// A Kafka-free run of one domain's faces alone: assignments by face and events by sequence.
fn reference(f: &Faces) -> (Vec<u64>, BTreeMap<u64, serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = domain_config("unused:9092", &dir.path().join("s"), "127.0.0.1:0");
    let mut c = Clusterer::open(&cfg).unwrap();
    for i in 0..f.ids.len() {
        c.apply(
            &[clip_cluster::engine::Face {
                meta: f.metas[i].clone(),
                ..clip_cluster::engine::Face::new(f.ids[i].as_str(), f.vs[i].clone())
            }],
            &[],
        )
        .unwrap();
    }
    (assignments(&c, f), outbox_events(&c))
}

fn assignments(c: &Clusterer, f: &Faces) -> Vec<u64> {
    let e = c.engine();
    f.ids
        .iter()
        .map(|id| {
            let s = e
                .seq_of(id)
                .unwrap_or_else(|| panic!("{id} is in its domain"));
            e.cluster_of(s)
        })
        .collect()
}

/// Opens a domain's state as the daemon left it.
fn domain_state(state: &Path, p: i32) -> Clusterer {
    let cfg = domain_config("unused:9092", &state.join(domain_name(p)), "127.0.0.1:0");
    Clusterer::open(&cfg).unwrap_or_else(|e| panic!("state of {}: {e}", domain_name(p)))
}

/// Every domain: its own state holds exactly its faces, assigned as the Kafka-free run does, and
/// the events topic carries each of its events (at least once, unique ids), keyed by its name.
fn check_domains(bootstrap: &str, state: &Path, faces: &BTreeMap<i32, Faces>) {
    let mut want: BTreeMap<String, BTreeMap<u64, serde_json::Value>> = BTreeMap::new();
    for (p, f) in faces {
        let (want_assign, want_events) = reference(f);
        let got = domain_state(state, *p);
        assert_eq!(
            got.engine().n_faces(),
            f.ids.len(),
            "domain {} holds its faces and no other",
            domain_name(*p)
        );
        assert_eq!(
            assignments(&got, f),
            want_assign,
            "domain {}",
            domain_name(*p)
        );
        assert_eq!(
            got.store().outbox_len(),
            0,
            "outbox of {} drained",
            domain_name(*p)
        );
        want.insert(domain_name(*p), want_events);
    }
    let total: usize = want.values().map(BTreeMap::len).sum();
    let records = read_topic(bootstrap, EVENTS, Duration::from_secs(120), |r| {
        events(r)
            .iter()
            .map(|e| e.0.clone())
            .collect::<HashSet<_>>()
            .len()
            >= total
    });
    let mut got: BTreeMap<String, Vec<(String, serde_json::Value)>> = BTreeMap::new();
    for (r, e) in records.iter().zip(events(&records)) {
        let key = String::from_utf8(r.key.clone().expect("events are keyed")).unwrap();
        assert_eq!(e.1["domain"].as_str(), Some(key.as_str()), "key = domain");
        got.entry(key).or_default().push(e);
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "event keys are the domain names"
    );
    for (domain, evs) in got {
        let want = &want[&domain];
        let ids: HashSet<&String> = evs.iter().map(|e| &e.0).collect();
        assert_eq!(ids.len(), want.len(), "{domain}: every event, unique ids");
        let mut first_seen = Vec::new();
        let mut seen = HashSet::new();
        for (id, mut v) in evs.clone() {
            let seq = v["event_seq"].as_u64().unwrap();
            if seen.insert(id) {
                first_seen.push(seq);
            }
            strip_wire_fields(&mut v);
            assert_eq!(Some(&v), want.get(&seq), "{domain} event {seq}");
        }
        assert!(
            first_seen.windows(2).all(|w| w[0] < w[1]),
            "{domain}: events arrive in order (first deliveries)"
        );
    }
}

/// An in-process daemon.
struct Member {
    metrics: Metrics,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<clip_cluster::pipeline::RunSummary>,
}

fn start(rt: &tokio::runtime::Runtime, cfg: Config) -> Member {
    // The rebalances and domain hand-overs at info (RUST_LOG overrides): captured, and printed
    // with a failing test's output, so that a hand-over that stalls in CI leaves its story.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("clip_cluster=info")),
        )
        .with_test_writer()
        .try_init();
    let metrics = Metrics::new();
    let (stop, rx) = watch::channel(false);
    let m = metrics.clone();
    let task = rt.spawn(async move {
        clip_cluster::pipeline::run(cfg, m, rx)
            .await
            .expect("daemon runs")
    });
    Member {
        metrics,
        stop,
        task,
    }
}

fn stop(rt: &tokio::runtime::Runtime, m: Member) -> clip_cluster::pipeline::RunSummary {
    m.stop.send(true).unwrap();
    rt.block_on(m.task).expect("daemon task")
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn applied(ms: &[&Metrics]) -> u64 {
    ms.iter().map(|m| m.faces_applied.get()).sum()
}

fn all_faces(n: usize) -> BTreeMap<i32, Faces> {
    (0..PARTITIONS).map(|p| (p, faces_of(p, n, 0))).collect()
}

#[test]
fn two_cluster_workers_share_four_domains() {
    let kafka = mock(PARTITIONS);
    let bootstrap = kafka.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = 250;
    let faces = all_faces(n);
    let half: BTreeMap<i32, Faces> = (0..PARTITIONS)
        .map(|p| (p, faces_of(p, n / 2, 0)))
        .collect();
    let rest: BTreeMap<i32, Faces> = (0..PARTITIONS)
        .map(|p| (p, faces_of(p, n - n / 2, n / 2)))
        .collect();
    // One worker holds all four domains for the first half of the stream.
    let a = start(&rt, domain_config(&bootstrap, &state, "127.0.0.1:0"));
    publish(&bootstrap, &half);
    wait_for("the first half", Duration::from_secs(120), || {
        a.metrics.faces_applied.get() >= (n / 2) as u64 * PARTITIONS as u64
    });
    assert_eq!(a.metrics.domains_open.get(), 4);
    // A second worker joins: cooperative-sticky moves two partitions, and their domains (with
    // state and HNSW snapshots) close in the first worker and open in the second from the
    // shared store.path, while the first keeps serving its other two.
    let b = start(&rt, domain_config(&bootstrap, &state, "127.0.0.1:0"));
    wait_for("the group to settle", Duration::from_secs(60), || {
        a.metrics.domains_open.get() == 2
            && b.metrics.domains_open.get() == 2
            && a.metrics.ready.get() == 1
            && b.metrics.ready.get() == 1
    });
    publish(&bootstrap, &rest);
    // A cluster worker consumes embeddings; an image in its input is dead-lettered, whichever
    // worker holds the partition, and the domain goes on.
    let jpeg = [0xFFu8, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F'];
    let p = producer(&bootstrap);
    let rec = rdkafka::producer::BaseRecord::to(FACES)
        .partition(1)
        .key("tenant-1")
        .payload(&jpeg[..])
        .headers(
            rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: "face_id",
                value: Some("an-image"),
            }),
        );
    p.send(rec).map_err(|(e, _)| e).unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let total = n as u64 * PARTITIONS as u64;
    wait_for(
        "every face applied and delivered",
        Duration::from_secs(180),
        || {
            applied(&[&a.metrics, &b.metrics]) >= total
                && a.metrics.dead_letters.get() + b.metrics.dead_letters.get() == 1
                && a.metrics.outbox_depth.get() == 0
                && b.metrics.outbox_depth.get() == 0
        },
    );
    assert_eq!(
        a.metrics.domains_blocked.get() + b.metrics.domains_blocked.get(),
        0
    );
    let (sa, sb) = (stop(&rt, a), stop(&rt, b));
    assert_eq!(sa.applied + sb.applied, total, "each face applied once");
    assert!(sb.applied > 0, "the second worker worked: {sb:?}");
    check_domains(&bootstrap, &state, &faces);
    let dlq = read_topic(&bootstrap, DLQ, Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(
        dlq[0]
            .header("__connect.errors.exception.class.name")
            .as_deref(),
        Some("image_unsupported")
    );
    let why = dlq[0]
        .header("__connect.errors.exception.message")
        .unwrap_or_default();
    assert!(why.contains("role \"cluster\""), "{why}");
}

#[test]
fn a_member_leaving_mid_stream_hands_its_domains_over() {
    let kafka = mock(PARTITIONS);
    let bootstrap = kafka.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = start(&rt, domain_config(&bootstrap, &state, "127.0.0.1:0"));
    let b = start(&rt, domain_config(&bootstrap, &state, "127.0.0.1:0"));
    wait_for("the group to settle", Duration::from_secs(60), || {
        a.metrics.domains_open.get() == 2 && b.metrics.domains_open.get() == 2
    });
    let n = 300;
    let faces = all_faces(n);
    let total = n as u64 * PARTITIONS as u64;
    let mut feed = Some({
        let bootstrap = bootstrap.clone();
        let faces = all_faces(n);
        std::thread::spawn(move || publish(&bootstrap, &faces))
    });
    // A feed that failed says so at once, instead of leaving the waits below to time out.
    let mut feed_done = || {
        if feed.as_ref().is_some_and(|f| f.is_finished()) {
            let f = feed.take().expect("checked");
            f.join().expect("the feed thread publishes every face");
        }
        feed.is_none()
    };
    // A third of the way in, one member stops gracefully (finish the batch, drain, leave).
    wait_for("a third of the stream", Duration::from_secs(120), || {
        feed_done();
        applied(&[&a.metrics, &b.metrics]) >= total / 3
    });
    let a_metrics = a.metrics.clone();
    let sa = stop(&rt, a);
    assert!(
        sa.applied < total,
        "stopped mid-stream ({} of {total} applied)",
        sa.applied
    );
    // The other takes over its partitions from the shared store.path.
    let t = Instant::now();
    while !(feed_done()
        && b.metrics.domains_open.get() == 4
        && applied(&[&a_metrics, &b.metrics]) >= total
        && b.metrics.outbox_depth.get() == 0)
    {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "timed out waiting for the survivor to finish: feed done {}, domains open {}, \
             applied {} of {total} (first member {}), outbox depth {}, ready {}, blocked {}",
            feed_done(),
            b.metrics.domains_open.get(),
            applied(&[&a_metrics, &b.metrics]),
            a_metrics.faces_applied.get(),
            b.metrics.outbox_depth.get(),
            b.metrics.ready.get(),
            b.metrics.domains_blocked.get(),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(feed_done(), "the feed finished");
    let sb = stop(&rt, b);
    assert_eq!(
        sa.applied + sb.applied,
        total,
        "no face lost or applied twice"
    );
    check_domains(&bootstrap, &state, &faces);
}

/// The group's committed offset for a partition of the input topic.
fn committed(bootstrap: &str, group: &str, partition: i32) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(FACES, partition);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let o = match got.find_partition(FACES, partition).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    };
    drop(got);
    o
}

#[test]
fn a_partition_without_its_state_is_blocked_and_the_others_proceed() {
    let kafka = mock(PARTITIONS);
    let bootstrap = kafka.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = 60;
    let first = all_faces(n);
    publish(&bootstrap, &first);
    let m = start(&rt, domain_config(&bootstrap, &state, "127.0.0.1:0"));
    wait_for("the first half", Duration::from_secs(120), || {
        m.metrics.faces_applied.get() >= n as u64 * PARTITIONS as u64
            && m.metrics.outbox_depth.get() == 0
    });
    stop(&rt, m);
    let group = "clip-cluster";
    wait_for("offsets committed", Duration::from_secs(30), || {
        committed(&bootstrap, group, 2) == Some(n as i64)
    });

    // Partition 2's state is lost (another volume, a wiped disk); more faces arrive everywhere.
    std::fs::remove_dir_all(state.join("faces-2")).unwrap();
    let second: BTreeMap<i32, Faces> = (0..PARTITIONS).map(|p| (p, faces_of(p, n, n))).collect();
    publish(&bootstrap, &second);
    let port = free_port();
    let m = start(
        &rt,
        domain_config(&bootstrap, &state, &format!("127.0.0.1:{port}")),
    );
    wait_for(
        "the other domains' second half",
        Duration::from_secs(120),
        || m.metrics.faces_applied.get() >= n as u64 * 3 && m.metrics.domains_blocked.get() == 1,
    );
    assert_eq!(m.metrics.domains_open.get(), 3);
    let blocked = m
        .metrics
        .domain_blocked
        .with_label_values(&["faces-2"])
        .get();
    assert_eq!(blocked, 1, "the blocked domain is named in its series");
    assert_eq!(m.metrics.ready.get(), 0);
    let (status, body) = http_get(port, "/readyz").expect("admin answers");
    assert_eq!(status, 503, "{body}");
    for want in ["faces-2", "committed offset 60", "allow_fresh_domains"] {
        assert!(body.contains(want), "/readyz names {want}: {body}");
    }
    // Give the blocked partition every chance to be (wrongly) consumed.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(m.metrics.faces_applied.get(), n as u64 * 3);
    stop(&rt, m);
    assert!(
        !clip_cluster::pipeline::domain::has_state(&state.join("faces-2")),
        "no fresh state was started for the blocked domain"
    );
    assert_eq!(
        committed(&bootstrap, group, 2),
        Some(n as i64),
        "not consumed"
    );
    for p in [0, 1, 3] {
        assert_eq!(domain_state(&state, p).engine().n_faces(), 2 * n);
    }

    // The operator accepts a fresh domain from the committed offset on.
    let mut env = domain_env(&bootstrap, &state, "127.0.0.1:0");
    env.push((
        "CLIP_CLUSTER__DAEMON__ALLOW_FRESH_DOMAINS".into(),
        "true".into(),
    ));
    let m = start(&rt, Config::load_from(None, &env).unwrap());
    wait_for("the fresh domain", Duration::from_secs(120), || {
        m.metrics.faces_applied.get() >= n as u64
            && m.metrics.domains_open.get() == 4
            && m.metrics.outbox_depth.get() == 0
    });
    assert_eq!(m.metrics.ready.get(), 1);
    stop(&rt, m);
    let c = domain_state(&state, 2);
    assert_eq!(
        c.engine().n_faces(),
        n,
        "only the faces after the committed offset"
    );
    assert_eq!(assignments(&c, &second[&2]).len(), n);
}

#[test]
fn single_mode_reports_a_domain_split_across_processes() {
    let kafka = mock(PARTITIONS);
    let bootstrap = kafka.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = free_port();
    let a = start(
        &rt,
        Config::load_from(
            None,
            &env(
                &bootstrap,
                &dir.path().join("a"),
                DIM,
                &format!("127.0.0.1:{port}"),
            ),
        )
        .unwrap(),
    );
    let b = start(&rt, config(&bootstrap, &dir.path().join("b"), DIM));
    wait_for(
        "both to hold part of the input",
        Duration::from_secs(60),
        || {
            a.metrics.partitions_assigned.get() == 2
                && b.metrics.partitions_assigned.get() == 2
                && a.metrics.partitions_not_assigned.get() == 2
                && b.metrics.partitions_not_assigned.get() == 2
        },
    );
    assert_eq!((a.metrics.ready.get(), b.metrics.ready.get()), (0, 0));
    let (status, body) = http_get(port, "/readyz").expect("admin answers");
    assert_eq!(status, 503);
    assert!(
        body.contains("2 of the 4 input partitions") && body.contains("per_partition"),
        "{body}"
    );
    // One leaves: the other holds the whole domain again.
    stop(&rt, a);
    wait_for(
        "the survivor to hold every partition",
        Duration::from_secs(60),
        || b.metrics.partitions_not_assigned.get() == 0 && b.metrics.ready.get() == 1,
    );
    stop(&rt, b);
}
