//! What leaves the daemon: events from a domain's outbox to the events topic, and bad messages to
//! the dead-letter topic, both through one idempotent producer (acks=all). An outbox entry is
//! removed only after the broker acknowledged it; a dead letter is retried until acknowledged,
//! because the input offset is committed past it right after, or until shutdown gives up on it
//! (then that offset is not committed). The tasks are spawned by `pipeline`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::config::{KafkaConfig, SinkConfig};
use crate::decode::Rejection;
use crate::engine::Event;
use crate::store::{OutboxEntry, Store, StoreError};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(
        "{n_letters} dead letters could not be delivered to {topic} before shutdown (last error: \
         {last_error}); the offsets of their batch were left uncommitted, so the messages are \
         read again at the next start. Check that the topic exists and this producer may write to it"
    )]
    DeadLettersUndelivered {
        n_letters: usize,
        topic: String,
        last_error: String,
    },
}

/// Version of the event JSON on the events topic.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

pub const EVENT_TYPES: [&str; 5] = [
    "FaceAssigned",
    "ClusterCreated",
    "ClustersMerged",
    "ClusterSplit",
    "FaceMoved",
];

pub(crate) fn client_config(
    kafka: &KafkaConfig,
    extra: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in kafka.properties.iter().chain(extra) {
        c.set(k, v);
    }
    c
}

/// The idempotent producer for events and dead letters.
pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut c = ClientConfig::new();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("compression.type", "lz4");
    let base = client_config(kafka, &kafka.producer_properties);
    for (k, v) in base.config_map() {
        c.set(k, v);
    }
    c.create()
}

/// Queues a record for sending, waiting while librdkafka's local queue is full; the future
/// resolves when the broker acknowledges (or refuses) it.
pub async fn queue_send<K, P>(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, K, P>,
) -> Result<rdkafka::producer::DeliveryFuture, rdkafka::error::KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The JSON an event has on the wire.
pub fn wire_event(state_id: &str, domain: &str, e: &OutboxEntry) -> Vec<u8> {
    let mut v = serde_json::to_value(&e.event).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("schema_version".into(), EVENT_SCHEMA_VERSION.into());
        o.insert(
            "event_id".into(),
            format!("{state_id}-{}", e.event_seq).into(),
        );
        o.insert("event_seq".into(), e.event_seq.into());
        o.insert("domain".into(), domain.into());
        o.insert("face_seq".into(), e.face_seq.into());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        o.insert("emitted_at_ms".into(), now.into());
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

fn event_type(e: &Event) -> &'static str {
    match e {
        Event::FaceAssigned { .. } => "FaceAssigned",
        Event::ClusterCreated { .. } => "ClusterCreated",
        Event::ClustersMerged { .. } => "ClustersMerged",
        Event::ClusterSplit { .. } => "ClusterSplit",
        Event::FaceMoved { .. } => "FaceMoved",
        Event::ClusterNamed { .. } => "ClusterNamed",
        Event::FeedbackApplied { .. } => "FeedbackApplied",
        Event::FaceErased { .. } => "FaceErased",
        Event::Reclustered { .. } => "Reclustered",
    }
}

/// What an outbox drainer is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainMode {
    /// Send events as they come.
    Run,
    /// The domain's partition moved to another process: finish the round in flight (so that the
    /// next owner starts where this round's acknowledgements end) and stop. What is left is
    /// durable and the next owner sends it.
    Handover,
    /// The process stops: keep sending until the outbox is empty or `sink.drain_timeout_ms`
    /// has passed.
    Shutdown,
}

/// One domain's outbox, as its drainer sees it.
pub struct Outbox {
    pub store: Store,
    pub domain: String,
    /// The domain's `clip_cluster_domain_outbox_depth_events` series.
    pub depth: IntGauge,
    /// When each face of the domain was consumed, for the face-to-event latency.
    pub consumed_at: Arc<Mutex<HashMap<String, Instant>>>,
    /// Poked after each commit that added events.
    pub notify: Arc<Notify>,
}

/// Sends what is in the outbox, in event order, keyed by the domain (one events partition per
/// domain, so one order), until `mode` says otherwise (see `DrainMode`). On return the domain's
/// outbox leaves this process's totals and its series is removed, before the store handle is
/// released (so a domain reopened here afterwards never loses its new series).
pub async fn drain_outbox(
    outbox: Outbox,
    producer: FutureProducer,
    (kafka, sink): (KafkaConfig, SinkConfig),
    metrics: Metrics,
    mode: watch::Receiver<DrainMode>,
) -> Result<(), StoreError> {
    let r = drain(&outbox, producer, &kafka, &sink, &metrics, mode).await;
    metrics.outbox_depth.sub(outbox.depth.get());
    let _ = metrics
        .domain_outbox_depth
        .remove_label_values(&[&outbox.domain]);
    drop(outbox);
    r
}

async fn drain(
    outbox: &Outbox,
    producer: FutureProducer,
    kafka: &KafkaConfig,
    sink: &SinkConfig,
    metrics: &Metrics,
    mut mode: watch::Receiver<DrainMode>,
) -> Result<(), StoreError> {
    let Outbox {
        store,
        domain,
        depth,
        consumed_at,
        notify,
    } = outbox;
    let state_id = store.state_id()?;
    let topic = kafka.events_topic.clone();
    let mut deadline: Option<Instant> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let m = *mode.borrow();
        if m == DrainMode::Handover {
            info!(domain = %domain, left = store.outbox_len(), "outbox handed over with its partition");
            return Ok(());
        }
        if deadline.is_none() && m == DrainMode::Shutdown {
            deadline = Some(Instant::now() + Duration::from_millis(sink.drain_timeout_ms));
        }
        if let Some(d) = deadline {
            if Instant::now() >= d {
                let left = store.outbox_len();
                if left > 0 {
                    warn!(domain = %domain, left, "outbox not empty at shutdown; it is durable and will be sent at the next start");
                }
                return Ok(());
            }
        }
        // sled reads and JSON encoding on a blocking thread, never on the reactor.
        let (entries, payloads) = {
            let (store, state_id, domain) = (store.clone(), state_id.clone(), domain.clone());
            let limit = sink.outbox_batch;
            tokio::task::spawn_blocking(move || {
                let entries = store.outbox(limit)?;
                let payloads: Vec<Vec<u8>> = entries
                    .iter()
                    .map(|e| wire_event(&state_id, &domain, e))
                    .collect();
                Ok::<_, StoreError>((entries, payloads))
            })
            .await
            .map_err(|e| StoreError::Blocking(e.to_string()))??
        };
        if entries.is_empty() {
            if deadline.is_some() {
                return Ok(());
            }
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = mode.changed() => {}
            }
            continue;
        }
        let mut futures = Vec::with_capacity(entries.len());
        let mut ok = true;
        for (e, payload) in entries.iter().zip(&payloads) {
            let id = format!("{state_id}-{}", e.event_seq);
            let record = FutureRecord::to(&topic)
                .key(domain.as_str())
                .payload(payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "event_id",
                    value: Some(id.as_bytes()),
                }));
            match queue_send(&producer, record).await {
                Ok(f) => futures.push(f),
                Err(e) => {
                    metrics.kafka_errors.with_label_values(&["produce"]).inc();
                    warn!(error = %e, "cannot queue an event; retrying the round");
                    ok = false;
                }
            }
            if !ok {
                break;
            }
        }
        for f in futures {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    metrics.kafka_errors.with_label_values(&["delivery"]).inc();
                    warn!(error = %e, "event delivery failed; retrying the round");
                    ok = false;
                }
                Err(_) => ok = false,
            }
        }
        if !ok {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = mode.changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(50);
        // Delivered (acknowledged) now; removing them from the outbox is our bookkeeping.
        let now = Instant::now();
        let seqs: Vec<u64> = entries.iter().map(|e| e.event_seq).collect();
        // The removal is a sled write with fsync: on a blocking thread too.
        {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.outbox_remove(&seqs))
                .await
                .map_err(|e| StoreError::Blocking(e.to_string()))??;
        }
        depth.sub(entries.len() as i64);
        metrics.outbox_depth.sub(entries.len() as i64);
        let mut map = consumed_at.lock().unwrap_or_else(|p| p.into_inner());
        for e in &entries {
            metrics
                .events_emitted
                .with_label_values(&[event_type(&e.event)])
                .inc();
            if let Event::FaceAssigned { face_id, .. } = &e.event {
                if let Some(t) = map.remove(face_id) {
                    metrics.face_to_event.observe((now - t).as_secs_f64());
                }
            }
        }
    }
}

/// A message that goes to the dead-letter topic, with where it came from.
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub rejection: Rejection,
}

/// Sends the dead letters and waits until the broker acknowledged every one of them, retrying
/// with a backoff for as long as the daemon runs: committing past a message that reached neither
/// the state nor the dead-letter topic would lose it. Once `stop` turns true (or its sender is
/// gone, which stops the daemon too), it keeps trying for `sink.drain_timeout_ms` more and then
/// gives up with `SinkError::DeadLettersUndelivered`: the caller must then leave the batch's
/// offsets unstored and stop, so that the messages are read again at the next start.
///
/// # Cancel safety
/// Dropping the future may leave some letters delivered and others not; that is safe only
/// because the caller then stores no offset of the batch, as on an error.
pub async fn send_dead_letters(
    producer: &FutureProducer,
    (kafka, sink): (&KafkaConfig, &SinkConfig),
    metrics: &Metrics,
    dead: &[DeadLetter],
    stop: &watch::Receiver<bool>,
) -> Result<(), SinkError> {
    if dead.is_empty() {
        return Ok(());
    }
    for d in dead {
        metrics
            .faces_rejected
            .with_label_values(&[d.rejection.reason.class()])
            .inc();
        warn!(topic = %d.topic, partition = d.partition, offset = d.offset, reason = d.rejection.reason.class(), "{}", d.rejection.message);
    }
    let topic = &kafka.dead_letter_topic;
    let mut shutdown = Shutdown {
        stop: stop.clone(),
        grace: Duration::from_millis(sink.drain_timeout_ms),
        deadline: None,
    };
    let mut last_error = String::from("none yet: acknowledgements still pending");
    let give_up = |last_error: String| {
        let e = SinkError::DeadLettersUndelivered {
            n_letters: dead.len(),
            topic: topic.clone(),
            last_error,
        };
        error!(n_letters = dead.len(), topic = %topic, "{e}");
        e
    };
    let mut attempt = 0u32;
    loop {
        let mut futures = Vec::with_capacity(dead.len());
        for d in dead {
            let partition = d.partition.to_string();
            let offset = d.offset.to_string();
            let mut headers = OwnedHeaders::new();
            for (k, v) in &d.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            // Kafka Connect's dead-letter header names, so existing tooling reads them.
            for (k, v) in [
                ("__connect.errors.topic", d.topic.as_str()),
                ("__connect.errors.partition", partition.as_str()),
                ("__connect.errors.offset", offset.as_str()),
                (
                    "__connect.errors.exception.class.name",
                    d.rejection.reason.class(),
                ),
                (
                    "__connect.errors.exception.message",
                    d.rejection.message.as_str(),
                ),
            ] {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let full = sink.dead_letter_payload == crate::config::DeadLetterPayload::Full;
            if let (false, Some(p)) = (full, &d.payload) {
                // The payload stays behind (a face image is personal data); what identifies it
                // for the sender does not.
                use sha2::Digest;
                let digest = sha2::Sha256::digest(p);
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                let size = p.len().to_string();
                for (k, v) in [
                    ("clip_cluster.payload.bytes", size.as_str()),
                    ("clip_cluster.payload.sha256", hex.as_str()),
                ] {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
            if let Some(k) = &d.key {
                record = record.key(k.as_slice());
            }
            if let (true, Some(p)) = (full, &d.payload) {
                record = record.payload(p.as_slice());
            }
            futures.push(producer.send(record, Duration::from_secs(30)));
        }
        let mut ok = true;
        for f in futures {
            match shutdown.before_giving_up(f).await {
                Some(Ok(_)) => {}
                Some(Err((e, _))) => {
                    metrics
                        .kafka_errors
                        .with_label_values(&["dead_letter"])
                        .inc();
                    warn!(error = %e, "dead-letter delivery failed; retrying");
                    last_error = e.to_string();
                    ok = false;
                }
                // The letters not acknowledged yet may still arrive: at least once, as always.
                None => return Err(give_up(last_error)),
            }
        }
        if ok {
            metrics.dead_letters.inc_by(dead.len() as u64);
            return Ok(());
        }
        attempt += 1;
        let backoff = Duration::from_millis((100 * attempt as u64).min(5000));
        if shutdown
            .before_giving_up(tokio::time::sleep(backoff))
            .await
            .is_none()
        {
            return Err(give_up(last_error));
        }
    }
}

/// The daemon's shutdown as a dead-letter round sees it: nothing until `stop` turns true, then a
/// deadline `grace` later.
struct Shutdown {
    stop: watch::Receiver<bool>,
    grace: Duration,
    /// Set when shutdown was first seen.
    deadline: Option<Instant>,
}

impl Shutdown {
    /// `fut`'s output, or None when the deadline passed first.
    async fn before_giving_up<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            if let Some(d) = self.deadline {
                return tokio::time::timeout_at(d.into(), &mut fut).await.ok();
            }
            tokio::select! {
                out = &mut fut => return Some(out),
                // A dropped sender stops the daemon's loop too: treat it as shutdown.
                _ = self.stop.wait_for(|s| *s) => {
                    self.deadline = Some(Instant::now() + self.grace);
                }
            }
        }
    }
}
