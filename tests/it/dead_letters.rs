//! Dead letters that cannot be delivered: while the daemon runs they are retried without end (a
//! message that reached neither the state nor the dead-letter topic must not be committed past),
//! and SIGTERM still ends the daemon: it gives up on the batch after its grace, leaves the batch's
//! offsets uncommitted and exits with an error. The next start reads the batch again and, with the
//! topic back, nothing is lost.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use clip_cluster::clusterer::Clusterer;
use clip_cluster::eval::synth::{generate, SynthParams};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::*;

/// A dead-letter topic that the mock cluster does not have (and, with auto-creation off, never
/// makes): every delivery to it fails.
const MISSING_DLQ: &str = "faces-dlq-missing";

/// Polls until `cond` holds, failing with the daemon's log after `timeout`.
fn wait_until(what: &str, timeout: Duration, log: &Path, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < timeout,
            "{what}: not within {timeout:?}; daemon log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, then the exit status if the daemon exits within `timeout` (else it is killed).
fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    sigterm(child);
    let t = Instant::now();
    while t.elapsed() < timeout {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

/// The group's committed offset of the input's partition 0 (None: nothing committed).
fn committed(bootstrap: &str, group: &str) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(FACES, 0);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let offset = match got.find_partition(FACES, 0).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    };
    drop(got);
    offset
}

#[test]
fn undeliverable_dead_letters_stop_sigterm_with_an_error_and_leave_their_offsets_uncommitted() {
    let dim = 32;
    let s = generate(SynthParams::new(2, dim, 5));
    let vs: Vec<Vec<f32>> = s.data.chunks(dim).map(<[f32]>::to_vec).collect();
    let kafka = mock(1);
    let bootstrap = kafka.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let mut envs = env(&bootstrap, &state, dim, &format!("127.0.0.1:{port}"));
    envs.retain(|(k, _)| !k.ends_with("__DEAD_LETTER_TOPIC"));
    for (k, v) in [
        ("KAFKA__DEAD_LETTER_TOPIC", MISSING_DLQ),
        // The producer asks for auto-creation by default, and the mock cluster grants it.
        (
            "KAFKA__PRODUCER_PROPERTIES__ALLOW.AUTO.CREATE.TOPICS",
            "false",
        ),
        // Fail deliveries to the missing topic after 0.5 s instead of 30 s.
        (
            "KAFKA__PRODUCER_PROPERTIES__TOPIC.METADATA.PROPAGATION.MAX.MS",
            "500",
        ),
        // The grace after SIGTERM for the dead letters (and the outbox).
        ("SINK__DRAIN_TIMEOUT_MS", "2000"),
        // The original bytes travel (the default keeps only their size and hash).
        ("SINK__DEAD_LETTER_PAYLOAD", "full"),
    ] {
        envs.push((format!("CLIP_CLUSTER__{k}"), v.to_string()));
    }
    let group = config(&bootstrap, &state, dim).kafka.group_id;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let p = producer(&bootstrap);

    // A good face first, applied and committed as usual (offset 0).
    let log = logs.join("first.log");
    let mut child = start(&envs, &log);
    send(&p, "face-0", &face_payload(0, &vs[0]));
    p.flush(Duration::from_secs(10)).unwrap();
    wait_until(
        "the first face is applied",
        Duration::from_secs(30),
        &log,
        || metric(port, "clip_cluster_index_faces") == Some(1.0),
    );
    // Then a bad message (offset 1) and a good one (offset 2): the bad one cannot be delivered.
    send(&p, "bad", &[0x00, 0x01, 0xfe, 0x77]);
    send(&p, "face-1", &face_payload(1, &vs[1]));
    p.flush(Duration::from_secs(10)).unwrap();
    wait_until(
        "the daemon retries the dead letter",
        Duration::from_secs(30),
        &log,
        || {
            metric(
                port,
                "clip_cluster_kafka_errors_total{kind=\"dead_letter\"}",
            )
            .unwrap_or(0.0)
                >= 2.0
        },
    );
    assert_eq!(
        metric(port, "clip_cluster_index_faces"),
        Some(1.0),
        "nothing of the batch is applied while its dead letter is undelivered"
    );

    let status = terminate(&mut child, Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let status =
        status.unwrap_or_else(|| panic!("SIGTERM did not stop the daemon in 30 s:\n{text}"));
    assert!(
        !status.success(),
        "giving up on dead letters is an error exit: {status:?}\n{text}"
    );
    let want = format!("1 dead letters could not be delivered to {MISSING_DLQ} before shutdown");
    assert!(
        text.lines()
            .any(|l| l.contains(" ERROR ") && l.contains(&want) && l.contains("left uncommitted")),
        "an error line says what was given up:\n{text}"
    );
    assert_eq!(
        committed(&bootstrap, &group),
        Some(1),
        "the group commits the first face and nothing past the bad message"
    );
    let c = Clusterer::open(&config(&bootstrap, &state, dim)).unwrap();
    assert_eq!(c.engine().n_faces(), 1, "the batch is not durable");
    drop(c);

    // The topic is back: the next start reads the batch again and loses nothing.
    kafka.create_topic(MISSING_DLQ, 1).unwrap();
    let log = logs.join("second.log");
    let mut child = start(&envs, &log);
    wait_until(
        "the batch is applied after the restart",
        Duration::from_secs(30),
        &log,
        || {
            metric(port, "clip_cluster_index_faces") == Some(2.0)
                && metric(port, "clip_cluster_dead_letters_total") == Some(1.0)
        },
    );
    let status = terminate(&mut child, Duration::from_secs(30)).expect("the daemon stops");
    assert!(status.success(), "a clean stop: {status:?}");
    let dlq = read_topic(&bootstrap, MISSING_DLQ, Duration::from_secs(20), |r| {
        !r.is_empty()
    });
    assert_eq!(
        dlq.len(),
        1,
        "the bad message reached the dead-letter topic"
    );
    assert_eq!(dlq[0].payload, [0x00, 0x01, 0xfe, 0x77]);
    assert_eq!(
        dlq[0].header("__connect.errors.offset").as_deref(),
        Some("1")
    );
    assert_eq!(committed(&bootstrap, &group), Some(3));
}
