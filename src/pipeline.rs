//! The daemon: wires the Kafka source, the clustering domains, decoding, the durable clusterers,
//! the dead-letter and event sinks, the admin endpoints and shutdown. The only place that spawns
//! tasks.
//!
//! Per batch, in this order (what makes a crash lose nothing and double-count nothing):
//! 1. consume up to `source.max_batch` messages (waiting at most `max_batch_wait_ms` after the first);
//! 2. route each message to its domain (single mode: the one domain; per-partition mode: its
//!    partition's);
//! 3. skip messages below the durable position of their partition (already processed before a crash);
//! 4. decode and validate; bad messages go to the dead-letter topic, and we wait for its acks;
//! 5. apply each domain's good faces and commit its state + outbox + partition positions to sled
//!    (fsync), on a blocking thread per domain;
//! 6. only then store the offsets for Kafka's commit.
//!
//! Domains in per-partition mode (rules in `domain`): the consumer's rebalance callback records
//! assigned and revoked partitions, and the loop acts on them between batches. An assigned
//! partition is paused while its domain opens on a blocking thread (messages already fetched
//! wait in a buffer), the guard runs (no state but committed offsets: the partition stays
//! paused and is reported), and the partition resumes once its domain is open. A revoked
//! partition's domain closes: its drainer finishes the round in flight and the state is released
//! for the next owner, whose open waits for sled's lock. Messages of a revoked partition still in
//! a batch are dropped: their offsets were never stored, so the next owner reads them again.
//!
//! Each open domain has an outbox drainer (`sink`) that sends its events keyed by the domain with
//! an idempotent producer (acks=all) and removes an entry only after the broker acknowledged it.
//! Delivery is at-least-once; event ids de-duplicate.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{error, info, warn};

use crate::admin::Health;
use crate::clusterer::{Clusterer, ClustererError};
use crate::config::{Config, DomainMode, Role};
use crate::domain::{fresh_decision, Blocked, Fresh};
use crate::engine::{normalize, EngineError, Event, FaceMeta};
use crate::message::{decode, Limits, Payload, Reason, Rejection};
use crate::sink::{DeadLetter, DrainMode, Outbox};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

pub use crate::sink::{producer, queue_send, wire_event, EVENT_SCHEMA_VERSION, EVENT_TYPES};

/// How long a retriable block (state locked, committed offset unreadable) waits between tries.
const RETRY_BLOCKED: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    State(#[from] ClustererError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("admin listener on {addr}: {reason}")]
    Admin { addr: String, reason: String },
    #[error("role \"embed\" needs the face embedder, which this build does not have yet; use role \"all\" or \"cluster\" with embedding messages")]
    EmbedRole,
    #[error("{0}")]
    Layout(String),
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

/// An input partition: (topic, partition).
type PartitionKey = (String, i32);

fn consumer(
    cfg: &Config,
    metrics: &Metrics,
    rebalances: Arc<Rebalances>,
) -> Result<StreamConsumer<SourceContext>, PipelineError> {
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
    let base = crate::sink::client_config(cfg, &cfg.kafka.consumer_properties);
    for (k, v) in base.config_map() {
        c.set(k, v);
    }
    Ok(c.create_with_context(SourceContext {
        lag: metrics.consumer_lag.clone(),
        rebalances,
    })?)
}

fn position_key(topic: &str, partition: i32) -> Vec<u8> {
    format!("pos:{topic}:{partition}").into_bytes()
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

/// A consumed message, owned: a message of a domain that is still opening waits in a buffer
/// beyond the consumer's borrow.
struct Msg {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Msg {
    fn of(m: &BorrowedMessage<'_>) -> Self {
        Self {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: headers_of(m),
        }
    }
}

/// Partition assignment changes seen by the rebalance callback, for the loop to act on (the
/// callback runs inside `recv`, where nothing may block or wait for the loop).
#[derive(Default)]
struct Rebalances {
    changes: Mutex<Vec<Change>>,
    notify: Notify,
}

enum Change {
    Assigned(Vec<PartitionKey>),
    Revoked(Vec<PartitionKey>),
}

/// Consumer context: librdkafka's periodic statistics become the lag gauge (no extra requests to
/// the brokers: a watermark query per partition would compete with the fetches), and
/// rebalances are recorded for the loop.
pub struct SourceContext {
    lag: IntGauge,
    rebalances: Arc<Rebalances>,
}

impl rdkafka::ClientContext for SourceContext {
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

impl rdkafka::consumer::ConsumerContext for SourceContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let keys = |tpl: &TopicPartitionList| -> Vec<PartitionKey> {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect()
        };
        let change = match rebalance {
            Rebalance::Assign(tpl) => Change::Assigned(keys(tpl)),
            Rebalance::Revoke(tpl) => Change::Revoked(keys(tpl)),
            Rebalance::Error(e) => {
                warn!(error = %e, "rebalance error");
                return;
            }
        };
        self.rebalances
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(change);
        self.rebalances.notify.notify_one();
    }
}

/// One open domain: its clusterer (state + index) and its outbox drainer.
struct Domain {
    /// `None` only while a batch is applied on a blocking thread.
    clusterer: Option<Clusterer>,
    store: Store,
    /// Next offset to read per partition, as durable in this domain's state (a cache of
    /// `x:pos:*`, read on a partition's first message).
    positions: HashMap<PartitionKey, i64>,
    consumed_at: Arc<Mutex<HashMap<String, Instant>>>,
    notify: Arc<Notify>,
    drain_mode: watch::Sender<DrainMode>,
    drainer: JoinHandle<Result<(), StoreError>>,
    faces: IntGauge,
    outbox: IntGauge,
}

/// Where an assigned partition stands (per-partition mode).
enum Slot {
    /// Its domain opens on a blocking thread; the partition is paused and what was already
    /// fetched waits in `buffer`. `was_blocked`: this is a retry.
    Opening {
        attempt: u64,
        buffer: Vec<Msg>,
        was_blocked: bool,
    },
    /// Its domain (named) is open.
    Open(String),
    /// Paused and reported; retried at `retry_at` when that can help (keeping `buffer`).
    Blocked {
        domain: String,
        retry_at: Option<Instant>,
        buffer: Vec<Msg>,
    },
}

type OpenResult = (PartitionKey, u64, Result<Clusterer, Blocked>);

/// Opens a partition's domain (blocking): the guard, then the state.
fn open_domain(
    cfg: &Config,
    consumer: &StreamConsumer<SourceContext>,
    key: &PartitionKey,
) -> Result<Clusterer, Blocked> {
    let dir = &cfg.store.path;
    if !crate::domain::has_state(dir) {
        let committed = committed_offset(consumer, key).map_err(Blocked::CommittedUnknown)?;
        match fresh_decision(committed, cfg.daemon.allow_fresh_domains) {
            Fresh::Start => {}
            Fresh::StartAnyway { committed } => warn!(
                topic = %key.0, partition = key.1, committed, dir = %dir.display(),
                "starting a fresh domain for a partition the group has processed before \
                 (daemon.allow_fresh_domains): faces before the committed offset are not in it"
            ),
            Fresh::Block { committed } => return Err(Blocked::MissingState { committed }),
        }
    }
    Clusterer::open(cfg).map_err(|e| match e {
        ClustererError::Store(StoreError::Locked { .. }) => Blocked::Locked,
        e => Blocked::Unreadable(e.to_string()),
    })
}

/// The group's committed offset for one partition (None: nothing committed).
fn committed_offset(
    consumer: &StreamConsumer<SourceContext>,
    key: &PartitionKey,
) -> Result<Option<i64>, String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&key.0, key.1);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let offset = match got.find_partition(&key.0, key.1) {
        Some(e) => {
            e.error().map_err(|e| e.to_string())?;
            match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }
        }
        None => None,
    };
    // The list must be gone before the consumer can be dropped (a librdkafka quirk).
    drop(got);
    Ok(offset)
}

fn one_partition(key: &PartitionKey) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&key.0, key.1);
    tpl
}

/// The running daemon's state, owned by its loop.
struct Daemon {
    cfg: Config,
    metrics: Metrics,
    health: Arc<Health>,
    producer: FutureProducer,
    consumer: Arc<StreamConsumer<SourceContext>>,
    rebalances: Arc<Rebalances>,
    limits: Limits,
    /// Open domains by name.
    domains: BTreeMap<String, Domain>,
    /// Per-partition mode: every assigned input partition's slot.
    slots: BTreeMap<PartitionKey, Slot>,
    assigned: BTreeSet<PartitionKey>,
    opens: JoinSet<OpenResult>,
    next_attempt: u64,
    /// Drainers of domains closed by a revocation, finishing their round.
    closing: Vec<JoinHandle<Result<(), StoreError>>>,
    summary: RunSummary,
}

impl Daemon {
    fn per_partition(&self) -> bool {
        self.cfg.daemon.domains == DomainMode::PerPartition
    }

    /// Makes an opened state a served domain: its metrics and its outbox drainer.
    fn add_domain(&mut self, name: String, clusterer: Clusterer) {
        let store = clusterer.store().clone();
        let faces = self.metrics.domain_faces.with_label_values(&[&name]);
        faces.set(clusterer.engine().n_faces() as i64);
        let outbox = self.metrics.domain_outbox_depth.with_label_values(&[&name]);
        let left = store.outbox_len() as i64;
        outbox.set(left);
        self.metrics.outbox_depth.add(left);
        let notify = Arc::new(Notify::new());
        let consumed_at = Arc::new(Mutex::new(HashMap::new()));
        let (drain_mode, mode_rx) = watch::channel(DrainMode::Run);
        let drainer = tokio::spawn(crate::sink::drain_outbox(
            Outbox {
                store: store.clone(),
                domain: name.clone(),
                depth: outbox.clone(),
                consumed_at: consumed_at.clone(),
                notify: notify.clone(),
            },
            self.producer.clone(),
            self.cfg.clone(),
            self.metrics.clone(),
            mode_rx,
        ));
        self.domains.insert(
            name,
            Domain {
                clusterer: Some(clusterer),
                store,
                positions: HashMap::new(),
                consumed_at,
                notify,
                drain_mode,
                drainer,
                faces,
                outbox,
            },
        );
    }

    /// Closes a domain: the state is dropped now, the drainer finishes as `mode` says and then
    /// releases its handle on the store (and with it sled's lock, for the next owner).
    fn close_domain(&mut self, name: &str, mode: DrainMode) {
        if let Some(d) = self.domains.remove(name) {
            let _ = self.metrics.domain_faces.remove_label_values(&[name]);
            let _ = d.drain_mode.send(mode);
            self.closing.push(d.drainer);
            info!(domain = %name, "domain closed");
        }
    }

    /// Process totals from the open domains.
    fn refresh_totals(&self) {
        let (mut faces, mut clusters) = (0i64, 0i64);
        for d in self.domains.values() {
            if let Some(c) = &d.clusterer {
                faces += c.engine().n_faces() as i64;
                clusters += c.engine().n_clusters() as i64;
            }
        }
        self.metrics.index_faces.set(faces);
        self.metrics.clusters.set(clusters);
        self.metrics.domains_open.set(self.domains.len() as i64);
        let blocked = self
            .slots
            .values()
            .filter(|s| {
                matches!(
                    s,
                    Slot::Blocked { .. }
                        | Slot::Opening {
                            was_blocked: true,
                            ..
                        }
                )
            })
            .count();
        self.metrics.domains_blocked.set(blocked as i64);
        self.metrics
            .partitions_assigned
            .set(self.assigned.len() as i64);
    }

    fn pause(&self, key: &PartitionKey) {
        if let Err(e) = self.consumer.pause(&one_partition(key)) {
            warn!(error = %e, topic = %key.0, partition = key.1, "cannot pause partition");
        }
    }

    fn resume(&self, key: &PartitionKey) {
        if let Err(e) = self.consumer.resume(&one_partition(key)) {
            warn!(error = %e, topic = %key.0, partition = key.1, "cannot resume partition");
        }
    }

    /// Starts opening a partition's domain on a blocking thread; the partition waits paused.
    fn start_open(&mut self, key: PartitionKey, buffer: Vec<Msg>, was_blocked: bool) {
        let name = self.cfg.domain_of(&key.0, key.1);
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        self.pause(&key);
        self.slots.insert(
            key.clone(),
            Slot::Opening {
                attempt,
                buffer,
                was_blocked,
            },
        );
        let mut cfg = self.cfg.clone();
        cfg.store.path = self.cfg.state_dir(&name);
        let consumer = self.consumer.clone();
        self.opens.spawn_blocking(move || {
            let r = open_domain(&cfg, &consumer, &key);
            (key, attempt, r)
        });
    }

    /// A domain open finished: serve it, or block its partition.
    async fn finish_open(
        &mut self,
        (key, attempt, result): OpenResult,
    ) -> Result<(), PipelineError> {
        let current =
            matches!(self.slots.get(&key), Some(Slot::Opening { attempt: a, .. }) if *a == attempt);
        if !current {
            // Revoked while opening: the state (if it opened) is dropped here, unused.
            return Ok(());
        }
        let Some(Slot::Opening { buffer, .. }) = self.slots.remove(&key) else {
            return Ok(());
        };
        let name = self.cfg.domain_of(&key.0, key.1);
        match result {
            Ok(c) => {
                info!(domain = %name, topic = %key.0, partition = key.1, faces = c.engine().n_faces(), "domain opened");
                self.health.clear_problem(&name);
                let _ = self.metrics.domain_blocked.remove_label_values(&[&name]);
                self.add_domain(name.clone(), c);
                self.slots.insert(key.clone(), Slot::Open(name));
                self.refresh_totals();
                if !buffer.is_empty() {
                    self.process(buffer, Instant::now()).await?;
                }
                self.resume(&key);
            }
            Err(why) => {
                let text = why.describe(&key.0, key.1, &name, &self.cfg.state_dir(&name));
                if why.retriable() {
                    warn!(domain = %name, "{text}");
                } else {
                    error!(domain = %name, "{text}");
                }
                self.health.set_problem(&name, text);
                self.metrics
                    .domain_blocked
                    .with_label_values(&[&name])
                    .set(1);
                let retry_at = why.retriable().then(|| Instant::now() + RETRY_BLOCKED);
                // Kept for a retry; dropped otherwise: their offsets are never stored, so the
                // partition's next owner reads them again.
                let buffer = if why.retriable() { buffer } else { Vec::new() };
                self.slots.insert(
                    key,
                    Slot::Blocked {
                        domain: name,
                        retry_at,
                        buffer,
                    },
                );
                self.refresh_totals();
            }
        }
        Ok(())
    }

    fn next_retry(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter_map(|s| match s {
                Slot::Blocked { retry_at, .. } => *retry_at,
                _ => None,
            })
            .min()
    }

    fn retry_due(&mut self) {
        let now = Instant::now();
        let due: Vec<PartitionKey> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Blocked { retry_at: Some(t), .. } if *t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if let Some(Slot::Blocked { buffer, .. }) = self.slots.remove(&k) {
                self.start_open(k, buffer, true);
            }
        }
    }

    fn unblock(&self, domain: &str) {
        self.health.clear_problem(domain);
        let _ = self.metrics.domain_blocked.remove_label_values(&[domain]);
    }

    /// Acts on the partitions assigned and revoked since the last call.
    async fn handle_changes(&mut self) {
        let changes = std::mem::take(
            &mut *self
                .rebalances
                .changes
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if changes.is_empty() {
            return;
        }
        for change in changes {
            match change {
                Change::Assigned(keys) => {
                    for k in keys {
                        info!(topic = %k.0, partition = k.1, "partition assigned");
                        self.assigned.insert(k.clone());
                        if self.per_partition() && !self.slots.contains_key(&k) {
                            self.start_open(k, Vec::new(), false);
                        }
                    }
                }
                Change::Revoked(keys) => {
                    for k in keys {
                        info!(topic = %k.0, partition = k.1, "partition revoked");
                        self.assigned.remove(&k);
                        match self.slots.remove(&k) {
                            Some(Slot::Open(name)) => self.close_domain(&name, DrainMode::Handover),
                            Some(Slot::Blocked { domain, .. }) => self.unblock(&domain),
                            // Revoked while opening: the result is dropped when it arrives.
                            Some(Slot::Opening {
                                was_blocked: true, ..
                            }) => self.unblock(&self.cfg.domain_of(&k.0, k.1)),
                            Some(Slot::Opening { .. }) | None => {}
                        }
                    }
                }
            }
        }
        if !self.per_partition() {
            self.check_split().await;
        }
        self.refresh_totals();
    }

    /// Single mode: is this process assigned every input partition? Two single-domain processes
    /// in one group would each hold part of the domain.
    async fn check_split(&mut self) {
        let consumer = self.consumer.clone();
        let topics = self.cfg.kafka.input_topics.clone();
        let total = tokio::task::spawn_blocking(move || {
            let mut n = 0usize;
            for t in &topics {
                let md = consumer.fetch_metadata(Some(t), Duration::from_secs(5))?;
                n += md
                    .topics()
                    .iter()
                    .find(|x| x.name() == t)
                    .map(|x| x.partitions().len())
                    .unwrap_or(0);
            }
            Ok::<usize, rdkafka::error::KafkaError>(n)
        })
        .await;
        let total = match total {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the input topics' partition counts");
                return;
            }
            Err(e) => {
                warn!(error = %e, "partition count check failed");
                return;
            }
        };
        let missing = total.saturating_sub(self.assigned.len());
        self.metrics.partitions_not_assigned.set(missing as i64);
        if missing > 0 {
            let text = format!(
                "daemon.domains = \"single\" and this process is assigned {} of the {total} input \
                 partitions: its domain \"{}\" is split with another process of group {} (each \
                 clusters part of its faces). Run one process per group in single mode, or set \
                 daemon.domains = \"per_partition\" to make each partition its own domain",
                self.assigned.len(),
                self.cfg.daemon.domain,
                self.cfg.kafka.group_id
            );
            warn!("{text}");
            self.health.set_problem("partitions", text);
        } else {
            self.health.clear_problem("partitions");
        }
    }

    /// Routes a batch to its domains, dead-letters what cannot be decoded, applies the rest per
    /// domain, and stores the offsets that are now durable.
    async fn process(&mut self, batch: Vec<Msg>, started: Instant) -> Result<(), PipelineError> {
        let mut groups: Vec<(String, Vec<Msg>)> = Vec::new();
        let per_partition = self.per_partition();
        for m in batch {
            let name = if per_partition {
                match self.slots.get_mut(&(m.topic.clone(), m.partition)) {
                    Some(Slot::Open(name)) => name.clone(),
                    Some(Slot::Opening { buffer, .. })
                    | Some(Slot::Blocked {
                        retry_at: Some(_),
                        buffer,
                        ..
                    }) => {
                        buffer.push(m);
                        continue;
                    }
                    // Blocked for good, or revoked: not ours to apply. The offset is never
                    // stored, so the partition's next owner reads the message again.
                    _ => continue,
                }
            } else {
                self.cfg.daemon.domain.clone()
            };
            match groups.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(m),
                None => groups.push((name, vec![m])),
            }
        }
        if groups.is_empty() {
            return Ok(());
        }

        // Decode; remember where each partition's batch ends.
        let role = self.cfg.daemon.role;
        let dim = self.cfg.model.dim;
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut work = Vec::with_capacity(groups.len());
        for (name, msgs) in groups {
            let Some(dom) = self.domains.get_mut(&name) else {
                // A routed domain is open by construction (slot Open, or the single domain).
                error!(domain = %name, "message routed to a domain that is not open; skipped");
                continue;
            };
            let mut good: Vec<(String, Vec<f32>, FaceMeta)> = Vec::new();
            let mut ends: HashMap<PartitionKey, i64> = HashMap::new();
            for m in msgs {
                let key = (m.topic.clone(), m.partition);
                let durable = match dom.positions.get(&key) {
                    Some(p) => *p,
                    None => {
                        let p = dom
                            .store
                            .position(&position_key(&key.0, key.1))?
                            .and_then(|v| v.as_slice().try_into().ok().map(i64::from_le_bytes))
                            .unwrap_or(-1);
                        dom.positions.insert(key.clone(), p);
                        p
                    }
                };
                let expected = ends.get(&key).copied().unwrap_or(durable);
                if expected >= 0 && m.offset > expected {
                    // Offsets of an idempotent, non-transactional producer have no holes: these
                    // messages were deleted (retention) before we read them.
                    let lost = (m.offset - expected) as u64;
                    self.metrics.offset_gap_messages.inc_by(lost);
                    error!(topic = %key.0, partition = key.1, from = expected, to = m.offset, lost, "messages missing from the input: deleted before they were consumed?");
                }
                let end = ends.entry(key).or_insert(m.offset + 1);
                *end = (*end).max(m.offset + 1);
                if m.offset < durable {
                    // Processed before a restart: the durable state already has it.
                    self.summary.duplicates += 1;
                    self.metrics.faces_duplicate.inc();
                    continue;
                }
                let decoded = decode(m.key.as_deref(), &m.headers, m.payload.as_deref(), &self.limits)
                    .and_then(|f| match f.payload {
                        // Validated here so that a bad vector is dead-lettered before the
                        // commit; the engine normalizes the original (normalizing twice would
                        // shift the last bits).
                        Payload::Embedding(v) => normalize(&f.face_id, &v, dim)
                            .map(|_| (f.face_id, v, f.meta))
                            .map_err(|e| Rejection {
                                reason: engine_reason(&e),
                                message: e.to_string(),
                            }),
                        Payload::Image(_) => Err(Rejection {
                            reason: Reason::ImageUnsupported,
                            message: match role {
                                Role::Cluster => "role \"cluster\" consumes embedding messages; images go to the embedding workers (role \"embed\")".into(),
                                _ => "image messages need the face embedder, which this build does not have yet; send embeddings".into(),
                            },
                        }),
                    });
                match decoded {
                    Ok(f) => good.push(f),
                    Err(rejection) => dead.push(DeadLetter {
                        key: m.key,
                        payload: m.payload,
                        headers: m.headers,
                        topic: m.topic,
                        partition: m.partition,
                        offset: m.offset,
                        rejection,
                    }),
                }
            }
            work.push((name, good, ends));
        }

        // Dead letters first: once the positions are durable these messages are never read again.
        crate::sink::send_dead_letters(&self.producer, &self.cfg, &self.metrics, &dead).await;
        self.summary.dead_letters += dead.len() as u64;

        // Apply: one blocking thread per domain, all at once.
        let now = Instant::now();
        let mut tasks = Vec::with_capacity(work.len());
        for (name, good, ends) in work {
            let Some(dom) = self.domains.get_mut(&name) else {
                continue;
            };
            {
                let mut map = dom.consumed_at.lock().unwrap_or_else(|p| p.into_inner());
                for (id, _, _) in &good {
                    map.insert(id.clone(), now);
                }
            }
            let pos: Vec<(Vec<u8>, Vec<u8>)> = ends
                .iter()
                .map(|((t, p), o)| (position_key(t, *p), o.to_le_bytes().to_vec()))
                .collect();
            let Some(mut clusterer) = dom.clusterer.take() else {
                continue;
            };
            let task = tokio::task::spawn_blocking(move || {
                let faces: Vec<(&str, &[f32], &FaceMeta)> = good
                    .iter()
                    .map(|(id, v, m)| (id.as_str(), v.as_slice(), m))
                    .collect();
                let r = clusterer.apply_with_meta(&faces, &pos);
                (clusterer, r)
            });
            tasks.push((name, ends, task));
        }
        let mut done = Vec::with_capacity(tasks.len());
        for (name, ends, task) in tasks {
            let (clusterer, result) = task.await.map_err(|e| PipelineError::Join(e.to_string()))?;
            if let Some(dom) = self.domains.get_mut(&name) {
                dom.clusterer = Some(clusterer);
            }
            done.push((name, ends, result));
        }
        for (name, ends, result) in done {
            let result = result?;
            let Some(dom) = self.domains.get_mut(&name) else {
                continue;
            };
            for (k, o) in &ends {
                dom.positions.insert(k.clone(), *o);
            }
            // Durable: now Kafka may commit past these messages.
            for ((t, p), o) in &ends {
                if let Err(e) = self.consumer.store_offset(t, *p, o - 1) {
                    self.metrics
                        .kafka_errors
                        .with_label_values(&["commit"])
                        .inc();
                    warn!(error = %e, topic = %t, partition = p, "cannot store offset (partition revoked?); the durable position covers it");
                }
            }
            self.summary.applied += result.applied as u64;
            self.summary.duplicates += result.duplicates as u64;
            self.metrics.faces_applied.inc_by(result.applied as u64);
            self.metrics
                .faces_duplicate
                .inc_by(result.duplicates as u64);
            for e in &result.events {
                match e {
                    Event::ClustersMerged { .. } => self.metrics.merges.inc(),
                    Event::ClusterSplit { .. } => self.metrics.splits.inc(),
                    _ => {}
                }
            }
            dom.outbox.add(result.events.len() as i64);
            self.metrics.outbox_depth.add(result.events.len() as i64);
            if let Some(c) = &dom.clusterer {
                dom.faces.set(c.engine().n_faces() as i64);
            }
            dom.notify.notify_one();
            if !result.rejected.is_empty() {
                // Decoding validated every vector; the engine refusing one is a bug worth hearing about.
                error!(domain = %name, n = result.rejected.len(), "engine rejected validated faces");
            }
        }
        self.refresh_totals();
        self.metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// What woke the loop.
enum Wake<'a> {
    Stop,
    Rebalance,
    Opened(Box<Result<OpenResult, tokio::task::JoinError>>),
    Retry,
    Message(Result<BorrowedMessage<'a>, rdkafka::error::KafkaError>),
}

/// Runs the daemon until `stop` turns true. Returns when the last batch is durable, offsets are
/// committed and the outboxes are drained (or their bound passed).
pub async fn run(
    cfg: Config,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> Result<RunSummary, PipelineError> {
    if cfg.daemon.role == Role::Embed {
        return Err(PipelineError::EmbedRole);
    }
    if cfg.daemon.domains == DomainMode::PerPartition {
        crate::domain::check_root(&cfg.store.path).map_err(PipelineError::Layout)?;
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
    let health = Arc::new(Health::new(metrics.clone()));
    let admin = tokio::spawn(crate::admin::serve(
        listener,
        metrics.clone(),
        health.clone(),
        stop.clone(),
    ));

    let producer = producer(&cfg)?;
    let rebalances = Arc::new(Rebalances::default());
    let consumer = Arc::new(consumer(&cfg, &metrics, rebalances.clone())?);
    let mut d = Daemon {
        limits: Limits {
            max_message_bytes: cfg.source.max_message_bytes,
            dim: cfg.model.dim,
        },
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        producer: producer.clone(),
        consumer: consumer.clone(),
        rebalances: rebalances.clone(),
        domains: BTreeMap::new(),
        slots: BTreeMap::new(),
        assigned: BTreeSet::new(),
        opens: JoinSet::new(),
        next_attempt: 0,
        closing: Vec::new(),
        summary: RunSummary::default(),
    };
    if cfg.daemon.domains == DomainMode::Single {
        // The one domain opens before consuming; a state that cannot open stops the daemon.
        let open_cfg = cfg.clone();
        let clusterer = tokio::task::spawn_blocking(move || Clusterer::open(&open_cfg))
            .await
            .map_err(|e| PipelineError::Join(e.to_string()))??;
        d.add_domain(cfg.daemon.domain.clone(), clusterer);
        d.refresh_totals();
    }
    let topics: Vec<&str> = cfg.kafka.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    info!(topics = ?topics, group = %cfg.kafka.group_id, domains = ?cfg.daemon.domains, faces = metrics.index_faces.get(), "consuming");
    health.set_started(true);

    let mut stop_rx = stop.clone();
    let wait = Duration::from_millis(cfg.source.max_batch_wait_ms);
    loop {
        d.handle_changes().await;
        d.retry_due();
        let retry_at = d.next_retry();
        let wake = tokio::select! {
            biased;
            _ = stop_rx.wait_for(|s| *s) => Wake::Stop,
            _ = rebalances.notify.notified() => Wake::Rebalance,
            Some(r) = d.opens.join_next(), if !d.opens.is_empty() => Wake::Opened(Box::new(r)),
            _ = tokio::time::sleep_until(
                retry_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)).into()
            ), if retry_at.is_some() => Wake::Retry,
            m = consumer.recv() => Wake::Message(m),
        };
        let first = match wake {
            Wake::Stop => break,
            Wake::Rebalance | Wake::Retry => continue,
            Wake::Opened(r) => {
                let r = (*r).map_err(|e| PipelineError::Join(e.to_string()))?;
                d.finish_open(r).await?;
                continue;
            }
            Wake::Message(m) => m,
        };
        // First message of a batch: collect more for up to `max_batch_wait_ms`.
        let started = Instant::now();
        let mut batch: Vec<Msg> = Vec::with_capacity(cfg.source.max_batch);
        match first {
            Ok(m) => batch.push(Msg::of(&m)),
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
                Ok(Ok(m)) => batch.push(Msg::of(&m)),
                Ok(Err(e)) => {
                    metrics.kafka_errors.with_label_values(&["consume"]).inc();
                    warn!(error = %e, "consumer error (retried by librdkafka)");
                    break;
                }
                Err(_) => break,
            }
        }
        d.summary.consumed += batch.len() as u64;
        metrics.faces_consumed.inc_by(batch.len() as u64);
        // Partitions assigned or revoked while the batch was collected: act first, so that no
        // message is applied to a domain this process no longer owns.
        d.handle_changes().await;
        d.process(batch, started).await?;
    }

    info!("stopping: committing offsets and draining the outbox");
    health.set_started(false);
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing new to commit: the auto-commit already covered it.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        // The durable positions cover any gap, so this is not worth failing shutdown for.
        Err(e) => warn!(error = %e, "final offset commit"),
    }
    // Opens in flight hold the consumer (and maybe a state): let them finish, unused.
    while d.opens.join_next().await.is_some() {}
    for dom in d.domains.values() {
        let _ = dom.drain_mode.send(DrainMode::Shutdown);
    }
    let domains = std::mem::take(&mut d.domains);
    let mut outbox_left = 0u64;
    for (_, dom) in domains {
        dom.drainer
            .await
            .map_err(|e| PipelineError::Join(e.to_string()))??;
        outbox_left += dom.store.outbox_len() as u64;
        // The state closes here, before the consumer leaves the group: the next owner of these
        // partitions finds it released.
    }
    for h in std::mem::take(&mut d.closing) {
        h.await.map_err(|e| PipelineError::Join(e.to_string()))??;
    }
    let _ = producer.flush(Duration::from_secs(5));
    let _ = admin.await;
    let mut summary = std::mem::take(&mut d.summary);
    summary.events = metrics.events_total();
    summary.outbox_left = outbox_left;
    drop(d);
    drop(consumer);
    Ok(summary)
}
