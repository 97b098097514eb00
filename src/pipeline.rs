//! The daemon: wires the Kafka source, decoding, the durable clusterer, the dead-letter and event
//! sinks, the admin endpoints and shutdown. The only place that spawns tasks.
//!
//! Per batch, in this order (what makes a crash lose nothing and double-count nothing):
//! 1. consume up to `source.max_batch` messages (waiting at most `max_batch_wait_ms` after the first);
//! 2. skip messages below the durable position of their partition (already processed before a crash);
//! 3. decode and validate; bad messages go to the dead-letter topic, and we wait for its acks;
//! 4. apply the good faces and commit state + outbox + partition positions to sled (fsync), on a
//!    blocking thread;
//! 5. only then store the offsets for Kafka's commit.
//!
//! The outbox drainer sends events with an idempotent producer (acks=all) and removes an entry
//! only after the broker acknowledged it. Delivery is at-least-once; event ids de-duplicate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message};
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::clusterer::Clusterer;
use crate::config::{Config, Role};
use crate::engine::{normalize, EngineError, Event, FaceMeta};
use crate::message::{decode, Limits, Payload, Reason, Rejection};
use crate::store::{OutboxEntry, Store};
use crate::telemetry::Metrics;

/// Version of the event JSON on the events topic.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    State(#[from] crate::clusterer::ClustererError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("admin listener on {addr}: {reason}")]
    Admin { addr: String, reason: String },
    #[error("role \"embed\" needs the face embedder, which this build does not have yet; use role \"all\" or \"cluster\" with embedding messages")]
    EmbedRole,
    #[error("a worker thread failed: {0}")]
    Join(String),
}

/// What a finished run did (the demo's summary reads it).
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub consumed: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub dead_letters: u64,
    pub events: u64,
    pub outbox_left: u64,
}

fn client_config(cfg: &Config, extra: &std::collections::BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.bootstrap_servers);
    for (k, v) in cfg.kafka.properties.iter().chain(extra) {
        c.set(k, v);
    }
    c
}

/// The idempotent producer for events and dead letters.
pub fn producer(cfg: &Config) -> Result<FutureProducer, PipelineError> {
    let mut c = ClientConfig::new();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("compression.type", "lz4");
    let base = client_config(cfg, &cfg.kafka.producer_properties);
    for (k, v) in base.config_map() {
        c.set(k, v);
    }
    Ok(c.create()?)
}

fn consumer(cfg: &Config, metrics: &Metrics) -> Result<StreamConsumer<LagContext>, PipelineError> {
    let mut c = ClientConfig::new();
    c.set("group.id", &cfg.kafka.group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // Offsets are stored by us, after the batch is durable.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("statistics.interval.ms", "2000")
        // A fetch returns after at most 10 ms even when little data is waiting: face-to-event
        // latency over request count (the default, 500 ms, batches arrivals into bursts).
        .set("fetch.wait.max.ms", "10");
    if !cfg.kafka.group_instance_id.is_empty() {
        c.set("group.instance.id", &cfg.kafka.group_instance_id);
    }
    let base = client_config(cfg, &cfg.kafka.consumer_properties);
    for (k, v) in base.config_map() {
        c.set(k, v);
    }
    Ok(c.create_with_context(LagContext {
        lag: metrics.consumer_lag.clone(),
    })?)
}

fn position_key(topic: &str, partition: i32) -> Vec<u8> {
    format!("pos:{topic}:{partition}").into_bytes()
}

/// A message that goes to the dead-letter topic, with where it came from.
struct DeadLetter {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    topic: String,
    partition: i32,
    offset: i64,
    rejection: Rejection,
}

fn engine_reason(e: &EngineError) -> Reason {
    match e {
        EngineError::WrongDimension { .. } => Reason::WrongDimension,
        EngineError::NotFinite { .. } => Reason::NotFinite,
        EngineError::ZeroVector { .. } => Reason::ZeroVector,
        EngineError::EmptyId { .. } => Reason::MissingFaceId,
        EngineError::Full(_) => Reason::TooLarge,
    }
}

/// A message's headers as (name, value) pairs; a header without a value reads as empty.
pub fn headers_of(m: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
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
    }
}

pub const EVENT_TYPES: [&str; 5] = [
    "FaceAssigned",
    "ClusterCreated",
    "ClustersMerged",
    "ClusterSplit",
    "FaceMoved",
];

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

/// Sends what is in the outbox until told to stop; on stop, keeps draining until the outbox is
/// empty or `drain_timeout` has passed.
#[allow(clippy::too_many_arguments)]
async fn drain_outbox(
    store: Store,
    producer: FutureProducer,
    cfg: Config,
    metrics: Metrics,
    notify: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    consumed_at: Arc<Mutex<HashMap<String, Instant>>>,
) -> Result<(), PipelineError> {
    let state_id = store.state_id()?;
    let domain = cfg.daemon.domain.clone();
    let topic = cfg.kafka.events_topic.clone();
    let mut deadline: Option<Instant> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        if deadline.is_none() && *stop.borrow() {
            deadline = Some(Instant::now() + Duration::from_millis(cfg.sink.drain_timeout_ms));
        }
        if let Some(d) = deadline {
            if Instant::now() >= d {
                let left = store.outbox_len();
                if left > 0 {
                    warn!(left, "outbox not empty at shutdown; it is durable and will be sent at the next start");
                }
                return Ok(());
            }
        }
        let entries = store.outbox(cfg.sink.outbox_batch)?;
        if entries.is_empty() {
            if deadline.is_some() {
                return Ok(());
            }
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let mut futures = Vec::with_capacity(entries.len());
        let mut ok = true;
        for e in &entries {
            let payload = wire_event(&state_id, &domain, e);
            let id = format!("{state_id}-{}", e.event_seq);
            let record = FutureRecord::to(&topic)
                .key(domain.as_str())
                .payload(&payload)
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
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(50);
        // Delivered (acknowledged) now; removing them from the outbox is our bookkeeping.
        let now = Instant::now();
        let seqs: Vec<u64> = entries.iter().map(|e| e.event_seq).collect();
        store.outbox_remove(&seqs)?;
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

async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    use axum::{http::StatusCode, routing::get, Router};
    let m1 = metrics.clone();
    let m2 = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m1.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.encode()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let m = m2.clone();
                async move {
                    if m.ready.get() == 1 {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

/// Consumer context that turns librdkafka's periodic statistics into the lag gauge: no extra
/// requests to the brokers (a watermark query per partition would compete with the fetches).
pub struct LagContext {
    lag: prometheus::IntGauge,
}

impl rdkafka::ClientContext for LagContext {
    fn stats(&self, stats: rdkafka::Statistics) {
        let lag: i64 = stats
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.lag.set(lag);
    }
}

impl rdkafka::consumer::ConsumerContext for LagContext {}

/// Runs the daemon until `stop` turns true. Returns when the last batch is durable, offsets are
/// committed and the outbox is drained (or its bound passed).
pub async fn run(
    cfg: Config,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> Result<RunSummary, PipelineError> {
    if cfg.daemon.role == Role::Embed {
        return Err(PipelineError::EmbedRole);
    }
    for r in Reason::ALL {
        metrics.faces_rejected.with_label_values(&[r.class()]);
    }
    for t in EVENT_TYPES {
        metrics.events_emitted.with_label_values(&[t]);
    }
    for k in ["consume", "produce", "delivery", "dead_letter", "commit"] {
        metrics.kafka_errors.with_label_values(&[k]);
    }
    let listener = tokio::net::TcpListener::bind(&cfg.admin.listen)
        .await
        .map_err(|e| PipelineError::Admin {
            addr: cfg.admin.listen.clone(),
            reason: e.to_string(),
        })?;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| cfg.admin.listen.clone());
    info!(addr = %bound, "admin endpoints: /metrics /healthz /readyz");
    let admin = tokio::spawn(serve_admin(listener, metrics.clone(), stop.clone()));

    let open_cfg = cfg.clone();
    let mut clusterer = tokio::task::spawn_blocking(move || Clusterer::open(&open_cfg))
        .await
        .map_err(|e| PipelineError::Join(e.to_string()))??;
    let store = clusterer.store().clone();
    metrics.outbox_depth.set(store.outbox_len() as i64);
    metrics.index_faces.set(clusterer.engine().n_faces() as i64);
    metrics.clusters.set(clusterer.engine().n_clusters() as i64);

    let producer = producer(&cfg)?;
    let consumer = consumer(&cfg, &metrics)?;
    let topics: Vec<&str> = cfg.kafka.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    info!(topics = ?topics, group = %cfg.kafka.group_id, faces = clusterer.engine().n_faces(), "consuming");

    let notify = Arc::new(Notify::new());
    let consumed_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let (drain_stop_tx, drain_stop_rx) = watch::channel(false);
    let drainer = tokio::spawn(drain_outbox(
        store.clone(),
        producer.clone(),
        cfg.clone(),
        metrics.clone(),
        notify.clone(),
        drain_stop_rx,
        consumed_at.clone(),
    ));
    metrics.ready.set(1);

    let limits = Limits {
        max_message_bytes: cfg.source.max_message_bytes,
        dim: cfg.model.dim,
    };
    let mut positions: HashMap<(String, i32), i64> = HashMap::new();
    let mut summary = RunSummary::default();
    let mut stop_rx = stop.clone();
    let wait = Duration::from_millis(cfg.source.max_batch_wait_ms);
    'outer: loop {
        // First message of a batch: wait for it or for the stop signal.
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = stop_rx.wait_for(|s| *s) => break 'outer,
        };
        let started = Instant::now();
        let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(cfg.source.max_batch);
        match first {
            Ok(m) => batch.push(m),
            Err(e) => {
                metrics.kafka_errors.with_label_values(&["consume"]).inc();
                warn!(error = %e, "consumer error (retried by librdkafka)");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let until = started + wait;
        while batch.len() < cfg.source.max_batch {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m),
                Ok(Err(e)) => {
                    metrics.kafka_errors.with_label_values(&["consume"]).inc();
                    warn!(error = %e, "consumer error (retried by librdkafka)");
                    break;
                }
                Err(_) => break,
            }
        }

        // Decode; remember where each partition's batch ends.
        let mut good: Vec<(String, Vec<f32>, FaceMeta)> = Vec::new();
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut ends: HashMap<(String, i32), i64> = HashMap::new();
        let now = Instant::now();
        for m in &batch {
            summary.consumed += 1;
            metrics.faces_consumed.inc();
            let key = (m.topic().to_string(), m.partition());
            let durable = match positions.get(&key) {
                Some(p) => *p,
                None => {
                    let p = store
                        .position(&position_key(&key.0, key.1))?
                        .and_then(|v| v.as_slice().try_into().ok().map(i64::from_le_bytes))
                        .unwrap_or(-1);
                    positions.insert(key.clone(), p);
                    p
                }
            };
            let expected = ends.get(&key).copied().unwrap_or(durable);
            if expected >= 0 && m.offset() > expected {
                // Offsets of an idempotent, non-transactional producer have no holes: these
                // messages were deleted (retention) before we read them.
                let lost = (m.offset() - expected) as u64;
                metrics.offset_gap_messages.inc_by(lost);
                error!(topic = %key.0, partition = key.1, from = expected, to = m.offset(), lost, "messages missing from the input: deleted before they were consumed?");
            }
            ends.insert(key, m.offset() + 1);
            if m.offset() < durable {
                // Processed before a restart: the durable state already has it.
                summary.duplicates += 1;
                metrics.faces_duplicate.inc();
                continue;
            }
            let headers = headers_of(m);
            let decoded = decode(m.key(), &headers, m.payload(), &limits).and_then(|f| match f.payload {
                // Validated here so that a bad vector is dead-lettered before the commit; the engine
                // normalizes the original (normalizing twice would shift the last bits).
                Payload::Embedding(v) => normalize(&f.face_id, &v, cfg.model.dim)
                    .map(|_| (f.face_id, v, f.meta))
                    .map_err(|e| Rejection {
                        reason: engine_reason(&e),
                        message: e.to_string(),
                    }),
                Payload::Image(_) => Err(Rejection {
                    reason: Reason::ImageUnsupported,
                    message: "image messages need the face embedder, which this build does not have yet; send embeddings".into(),
                }),
            });
            match decoded {
                Ok(f) => good.push(f),
                Err(rejection) => dead.push(DeadLetter {
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    rejection,
                }),
            }
        }

        // Dead letters first: once the positions are durable these messages are never read again.
        drop(batch);
        send_dead_letters(&producer, &cfg, &metrics, &dead).await?;
        summary.dead_letters += dead.len() as u64;

        {
            let mut map = consumed_at.lock().unwrap_or_else(|p| p.into_inner());
            for (id, _, _) in &good {
                map.insert(id.clone(), now);
            }
        }
        let pos: Vec<(Vec<u8>, Vec<u8>)> = ends
            .iter()
            .map(|((t, p), o)| (position_key(t, *p), o.to_le_bytes().to_vec()))
            .collect();
        let (c, result) = tokio::task::spawn_blocking(move || {
            let faces: Vec<(&str, &[f32], &FaceMeta)> = good
                .iter()
                .map(|(id, v, m)| (id.as_str(), v.as_slice(), m))
                .collect();
            let r = clusterer.apply_with_meta(&faces, &pos);
            (clusterer, r)
        })
        .await
        .map_err(|e| PipelineError::Join(e.to_string()))?;
        clusterer = c;
        let result = result?;
        for (k, o) in &ends {
            positions.insert(k.clone(), *o);
        }
        // Durable: now Kafka may commit past these messages.
        for ((t, p), o) in &ends {
            if let Err(e) = consumer.store_offset(t, *p, o - 1) {
                metrics.kafka_errors.with_label_values(&["commit"]).inc();
                warn!(error = %e, topic = %t, partition = p, "cannot store offset (partition revoked?); the durable position covers it");
            }
        }
        summary.applied += result.applied as u64;
        summary.duplicates += result.duplicates as u64;
        metrics.faces_applied.inc_by(result.applied as u64);
        metrics.faces_duplicate.inc_by(result.duplicates as u64);
        for e in &result.events {
            match e {
                Event::ClustersMerged { .. } => metrics.merges.inc(),
                Event::ClusterSplit { .. } => metrics.splits.inc(),
                _ => {}
            }
        }
        metrics.outbox_depth.add(result.events.len() as i64);
        metrics.index_faces.set(clusterer.engine().n_faces() as i64);
        metrics.clusters.set(clusterer.engine().n_clusters() as i64);
        metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        notify.notify_one();
        if !result.rejected.is_empty() {
            // Decoding validated every vector; the engine refusing one is a bug worth hearing about.
            error!(n = result.rejected.len(), "engine rejected validated faces");
        }
    }

    info!("stopping: committing offsets and draining the outbox");
    metrics.ready.set(0);
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing new to commit: the auto-commit already covered it.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        // The durable positions cover any gap, so this is not worth failing shutdown for.
        Err(e) => warn!(error = %e, "final offset commit"),
    }
    let _ = drain_stop_tx.send(true);
    drainer
        .await
        .map_err(|e| PipelineError::Join(e.to_string()))??;
    let _ = producer.flush(Duration::from_secs(5));
    let _ = admin.await;
    summary.events = metrics.events_total();
    summary.outbox_left = store.outbox_len() as u64;
    drop(consumer);
    Ok(summary)
}

async fn send_dead_letters(
    producer: &FutureProducer,
    cfg: &Config,
    metrics: &Metrics,
    dead: &[DeadLetter],
) -> Result<(), PipelineError> {
    for d in dead {
        metrics
            .faces_rejected
            .with_label_values(&[d.rejection.reason.class()])
            .inc();
        warn!(topic = %d.topic, partition = d.partition, offset = d.offset, reason = d.rejection.reason.class(), "{}", d.rejection.message);
    }
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
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&cfg.kafka.dead_letter_topic).headers(headers);
            if let Some(k) = &d.key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = &d.payload {
                record = record.payload(p.as_slice());
            }
            futures.push(producer.send(record, Duration::from_secs(30)));
        }
        let mut ok = true;
        for f in futures {
            if let Err((e, _)) = f.await {
                metrics
                    .kafka_errors
                    .with_label_values(&["dead_letter"])
                    .inc();
                warn!(error = %e, "dead-letter delivery failed; retrying");
                ok = false;
            }
        }
        if ok {
            metrics.dead_letters.inc_by(dead.len() as u64);
            return Ok(());
        }
        attempt += 1;
        // Retry until it works: committing past a message that reached neither the state nor the
        // dead-letter topic would lose it.
        tokio::time::sleep(Duration::from_millis((100 * attempt as u64).min(5000))).await;
    }
}
