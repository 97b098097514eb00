//! The Kafka source: the consumer (cooperative-sticky group, offsets stored by us after the
//! batch is durable), its context (lag from librdkafka's statistics, rebalances recorded for the
//! loop), owned messages, and the group's committed offsets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntGauge;
use rdkafka::consumer::{BaseConsumer, Consumer, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::Notify;
use tracing::warn;

use crate::config::KafkaConfig;
use crate::telemetry::Metrics;

/// An input partition: (topic, partition).
pub type PartitionKey = (String, i32);

pub fn consumer(
    kafka: &KafkaConfig,
    metrics: &Metrics,
    rebalances: Arc<Rebalances>,
) -> Result<StreamConsumer<SourceContext>, rdkafka::error::KafkaError> {
    let mut c = ClientConfig::new();
    c.set("group.id", &kafka.group_id)
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
    if !kafka.group_instance_id.is_empty() {
        c.set("group.instance.id", &kafka.group_instance_id);
    }
    let base = crate::sink::client_config(kafka, &kafka.consumer_properties);
    for (k, v) in base.config_map() {
        c.set(k, v);
    }
    c.create_with_context(SourceContext {
        lag: metrics.consumer_lag.clone(),
        rebalances,
    })
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
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Msg {
    pub fn of(m: &BorrowedMessage<'_>) -> Self {
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

/// The batch that starts with `first`: up to `max` messages, waiting at most `wait` after the
/// first one, and when it started. None when `first` is a consumer error (counted and logged;
/// the caller backs off and tries again).
pub async fn collect_batch(
    consumer: &StreamConsumer<SourceContext>,
    first: Result<BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    max: usize,
    wait: Duration,
    metrics: &Metrics,
) -> Option<(Vec<Msg>, std::time::Instant)> {
    let started = std::time::Instant::now();
    let mut batch: Vec<Msg> = Vec::with_capacity(max);
    match first {
        Ok(m) => batch.push(Msg::of(&m)),
        Err(e) => {
            metrics.kafka_errors.with_label_values(&["consume"]).inc();
            warn!(error = %e, "consumer error (retried by librdkafka)");
            return None;
        }
    }
    let until = started + wait;
    while batch.len() < max {
        let left = until.saturating_duration_since(std::time::Instant::now());
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
    Some((batch, started))
}

/// Partition assignment changes seen by the rebalance callback, for the loop to act on (the
/// callback runs inside `recv`, where nothing may block or wait for the loop).
#[derive(Default)]
pub struct Rebalances {
    pub changes: Mutex<Vec<Change>>,
    pub notify: Notify,
}

pub enum Change {
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

/// The group's committed offset for one partition (None: nothing committed).
pub fn committed_offset(
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

pub fn one_partition(key: &PartitionKey) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&key.0, key.1);
    tpl
}
