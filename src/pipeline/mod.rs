//! The daemon: wires the Kafka source, the clustering domains, decoding, the durable clusterers,
//! the dead-letter and event sinks, the admin endpoints and shutdown. The only place that spawns
//! tasks.
//!
//! Per batch, in this order (what makes a crash lose nothing and double-count nothing):
//! 1. consume up to `source.max_batch` messages (waiting at most `max_batch_wait_ms` after the first);
//! 2. route each message to its domain (single mode: the one domain; per-partition mode: its
//!    partition's);
//! 3. skip messages below the durable position of their partition (already processed before a crash);
//! 4. decode and validate; bad messages go to the dead-letter topic, and we wait for its acks
//!    (after shutdown was asked for, at most `sink.drain_timeout_ms`: then the batch ends here,
//!    its offsets unstored, and the run returns an error);
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
//!
//! Files: `mod.rs` the loop, its state and shutdown; `source` the consumer and its rebalance
//! callback; `domains` opening, blocking and closing domains; `batch` the batch path.

pub mod admin;
pub mod domain;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

use crate::clusterer::{Clusterer, ClustererError};
use crate::config::{Config, DomainMode, Role};
use crate::decode::{Limits, Reason};
use crate::pipeline::admin::Health;
use crate::pipeline::domain::Blocked;
use crate::sink::DrainMode;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

mod batch;
mod commands;
pub mod core;
mod domains;
mod embed_worker;
mod retention;

pub use crate::sink::{producer, queue_send, wire_event, EVENT_SCHEMA_VERSION, EVENT_TYPES};
use crate::source::{collect_batch, consumer, Msg, Rebalances};
pub use crate::source::{headers_of, SourceContext};

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
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("API listener on {addr}: {reason}")]
    Api { addr: String, reason: String },
    #[error("admin listener on {addr}: {reason}")]
    Admin { addr: String, reason: String },
    #[error("the face embedder cannot start: {0}")]
    EmbedSetup(#[from] crate::embed::EmbedSetupError),
    #[error("model.dim = {config} but the embedder makes {embedder}-D vectors; set model.dim = {embedder} or embed.enabled = false")]
    EmbedDim { config: usize, embedder: usize },
    #[error("CLIP hallucination cannot start: {0}")]
    ClipSetup(#[from] crate::hallucinate::HallucinateError),
    #[error(
        "the face embedder failed on a batch (nothing of it is durable; a restart redoes it): {0}"
    )]
    Embed(String),
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

use crate::source::PartitionKey;

/// One open domain: its clusterer (state + index) and its outbox drainer.
struct Domain {
    /// The state, shared with the API's reads (locked by a batch while it is applied).
    clusterer: Arc<crate::api::Shared>,
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
    /// The engine's edge threshold (`clip_cluster_domain_edge_threshold`).
    threshold: prometheus::Gauge,
    /// The engine's `bounded_regroups` as last counted into the metric.
    local_rule_seen: u64,
    /// The clusterer's `snapshot_seconds` as last counted into the metric.
    snapshot_seen: f64,
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

/// The running daemon's state, owned by its loop.
struct Daemon {
    cfg: Config,
    metrics: Metrics,
    health: Arc<Health>,
    producer: FutureProducer,
    consumer: Arc<StreamConsumer<SourceContext>>,
    rebalances: Arc<Rebalances>,
    limits: Limits,
    /// Turns image messages into vectors (role all with embed.enabled); None: images are rejected.
    embedder: Option<Arc<dyn crate::embed::FaceEmbedder>>,
    /// CLIP hallucination of embedded images (`[clip]` with weights); None: no CLIP variants.
    clip: Option<Arc<crate::hallucinate::ClipStage>>,
    /// Open domains by name.
    domains: BTreeMap<String, Domain>,
    /// The same domains' states, as the API reads them.
    api_domains: crate::api::Domains,
    /// Per-partition mode: every assigned input partition's slot.
    slots: BTreeMap<PartitionKey, Slot>,
    assigned: BTreeSet<PartitionKey>,
    opens: JoinSet<OpenResult>,
    next_attempt: u64,
    /// Drainers of domains closed by a revocation, finishing their round.
    closing: Vec<JoinHandle<Result<(), StoreError>>>,
    summary: RunSummary,
    /// The daemon's shutdown signal, for the waits inside a batch (dead letters) that must end
    /// when it stops.
    stop: watch::Receiver<bool>,
}

impl Daemon {
    fn per_partition(&self) -> bool {
        self.cfg.daemon.domains == DomainMode::PerPartition
    }
}

/// What woke the loop.
enum Wake<'a> {
    Stop,
    Rebalance,
    Opened(Box<Result<OpenResult, tokio::task::JoinError>>),
    Retry,
    Sweep,
    Message(Result<BorrowedMessage<'a>, rdkafka::error::KafkaError>),
}

/// The embedder for image messages: loaded (on a blocking thread) when this role embeds and
/// `embed.enabled`; its dimension must be `model.dim`.
async fn load_embedder(
    cfg: &Config,
) -> Result<Option<Arc<dyn crate::embed::FaceEmbedder>>, PipelineError> {
    if cfg.daemon.role == Role::Cluster || !cfg.embed.enabled {
        return Ok(None);
    }
    let (section, limits) = (
        cfg.embed.clone(),
        crate::embed::image::DecodeLimits::from_config(cfg),
    );
    let e = tokio::task::spawn_blocking(move || crate::embed::DlibEmbedder::new(&section, limits))
        .await
        .map_err(|e| PipelineError::Join(e.to_string()))??;
    let dim = crate::embed::FaceEmbedder::dim(&e);
    if dim != cfg.model.dim {
        return Err(PipelineError::EmbedDim {
            config: cfg.model.dim,
            embedder: dim,
        });
    }
    info!(model = %crate::embed::FaceEmbedder::model_id(&e), device = %cfg.embed.device, "face embedder loaded");
    Ok(Some(Arc::new(e)))
}

/// CLIP, its text directions and the mapper H (on a blocking thread) when `[clip]` has weights.
async fn load_clip(
    cfg: &Config,
) -> Result<Option<Arc<crate::hallucinate::ClipStage>>, PipelineError> {
    let (section, dim) = (cfg.clip.clone(), cfg.model.dim);
    let stage =
        tokio::task::spawn_blocking(move || crate::hallucinate::ClipStage::new(&section, dim))
            .await
            .map_err(|e| PipelineError::Join(e.to_string()))??;
    if let Some(s) = &stage {
        info!(variants = s.n_variants(), weights = %cfg.clip.weights.display(), "CLIP hallucination loaded");
    }
    Ok(stage.map(Arc::new))
}

/// Binds `admin.listen` and serves /metrics, /healthz and /readyz until `stop`.
async fn start_admin(
    admin: &crate::config::AdminConfig,
    metrics: &Metrics,
    stop: &watch::Receiver<bool>,
) -> Result<(Arc<Health>, JoinHandle<()>), PipelineError> {
    let listener = tokio::net::TcpListener::bind(&admin.listen)
        .await
        .map_err(|e| PipelineError::Admin {
            addr: admin.listen.clone(),
            reason: e.to_string(),
        })?;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| admin.listen.clone());
    info!(addr = %bound, "admin endpoints: /metrics /healthz /readyz");
    let health = Arc::new(Health::new(metrics.clone()));
    let admin = tokio::spawn(crate::pipeline::admin::serve(
        listener,
        metrics.clone(),
        health.clone(),
        stop.clone(),
    ));
    Ok((health, admin))
}

/// Binds `api.listen` and serves the operator API until `stop` (none when `api.enabled` is off).
async fn start_api(
    api: &crate::config::ApiConfig,
    embedder: crate::api::Embedder,
    domains: &crate::api::Domains,
    metrics: &Metrics,
    stop: &watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>, PipelineError> {
    if !api.enabled {
        return Ok(None);
    }
    let failed = |reason: String| PipelineError::Api {
        addr: api.listen.clone(),
        reason,
    };
    let access = crate::api::Access::from_config(api).map_err(failed)?;
    let listener = tokio::net::TcpListener::bind(&api.listen)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| api.listen.clone());
    match (&access.token, access.public_reads) {
        (None, false) => {
            warn!(addr = %bound, "operator API: no token configured (api.token or api.token_file): every request is refused")
        }
        (None, true) => {
            warn!(addr = %bound, "operator API: reads are public; no token configured, so writes are refused")
        }
        _ => {
            info!(addr = %bound, public_reads = access.public_reads, review_page = %format!("http://{bound}/ui"), "operator API")
        }
    }
    Ok(Some(tokio::spawn(crate::pipeline::admin::serve_until(
        listener,
        crate::api::router(domains.clone(), access, metrics.clone(), embedder),
        stop.clone(),
    ))))
}

/// Runs the daemon until `stop` turns true. Returns when the last batch is durable, offsets are
/// committed and the outboxes are drained (or their bound passed). A batch whose dead letters
/// were still undelivered when shutdown's grace (`sink.drain_timeout_ms`) ended is not applied and
/// its offsets are not committed; the run shuts down as usual and returns `PipelineError::Sink`.
pub async fn run(
    cfg: Config,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> Result<RunSummary, PipelineError> {
    if cfg.daemon.role == Role::Embed {
        return embed_worker::run(cfg, metrics, stop).await;
    }
    let embedder = load_embedder(&cfg).await?;
    let clip = match &embedder {
        Some(_) => load_clip(&cfg).await?,
        None => None,
    };
    if cfg.daemon.domains == DomainMode::PerPartition {
        crate::pipeline::domain::check_root(&cfg.store.path).map_err(PipelineError::Layout)?;
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
    let (health, admin) = start_admin(&cfg.admin, &metrics, &stop).await?;
    let api_domains = crate::api::Domains::default();
    let api = start_api(&cfg.api, embedder.clone(), &api_domains, &metrics, &stop).await?;

    let producer = producer(&cfg.kafka)?;
    let rebalances = Arc::new(Rebalances::default());
    let consumer = Arc::new(consumer(&cfg.kafka, &metrics, rebalances.clone())?);
    let mut d = Daemon {
        limits: Limits::from_config(&cfg),
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        producer: producer.clone(),
        consumer: consumer.clone(),
        rebalances: rebalances.clone(),
        embedder,
        clip,
        domains: BTreeMap::new(),
        api_domains,
        slots: BTreeMap::new(),
        assigned: BTreeSet::new(),
        opens: JoinSet::new(),
        next_attempt: 0,
        closing: Vec::new(),
        summary: RunSummary::default(),
        stop: stop.clone(),
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
    let commands = (!cfg.kafka.commands_topic.is_empty()).then(|| {
        tokio::spawn(commands::run(
            cfg.clone(),
            metrics.clone(),
            d.api_domains.clone(),
            stop.clone(),
        ))
    });
    let topics: Vec<&str> = cfg.kafka.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    info!(topics = ?topics, group = %cfg.kafka.group_id, domains = ?cfg.daemon.domains, faces = metrics.index_faces.get(), "consuming");
    health.set_started(true);

    let mut stop_rx = stop.clone();
    let wait = Duration::from_millis(cfg.source.max_batch_wait_ms);
    // Validated with the configuration.
    let max_age = cfg.retention.max_age_ms().ok().flatten();
    let mut sweep = tokio::time::interval(Duration::from_secs(cfg.retention.sweep_interval_s));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set when the last batch could not finish before shutdown (its offsets are not stored).
    let mut failed: Option<PipelineError> = None;
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
            _ = sweep.tick(), if max_age.is_some() => Wake::Sweep,
            m = consumer.recv() => Wake::Message(m),
        };
        let first = match wake {
            Wake::Stop => break,
            Wake::Rebalance | Wake::Retry => continue,
            Wake::Sweep => {
                if let Some(age) = max_age {
                    d.sweep(age).await;
                }
                continue;
            }
            Wake::Opened(r) => {
                let r = (*r).map_err(|e| PipelineError::Join(e.to_string()))?;
                d.finish_open(r).await?;
                continue;
            }
            Wake::Message(m) => m,
        };
        // First message of a batch: collect more for up to `max_batch_wait_ms`.
        let Some((batch, started)) =
            collect_batch(&consumer, first, cfg.source.max_batch, wait, &metrics).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        d.summary.consumed += batch.len() as u64;
        metrics.faces_consumed.inc_by(batch.len() as u64);
        // Partitions assigned or revoked while the batch was collected: act first, so that no
        // message is applied to a domain this process no longer owns.
        d.handle_changes().await;
        match d.process(batch, started).await {
            Ok(()) => {}
            // Shutdown gave up on the batch's dead letters: none of its offsets is stored, the
            // rest shuts down as usual, and the run fails with this error.
            Err(e @ PipelineError::Sink(_)) => {
                failed = Some(e);
                break;
            }
            Err(e) => return Err(e),
        }
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
    // The command reader and the API let go of the states first, so that they close below.
    if let Some(c) = commands {
        let _ = c.await;
    }
    d.api_domains
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
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
    if let Some(api) = api {
        let _ = api.await;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let mut summary = std::mem::take(&mut d.summary);
    summary.events = metrics.events_total();
    summary.outbox_left = outbox_left;
    drop(d);
    drop(consumer);
    Ok(summary)
}
