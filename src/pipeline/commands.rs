//! The command topic (`kafka.commands_topic`): operator commands (`clusterer::parse_request`)
//! applied to the domains open here, at least once and never twice.
//!
//! Every domain keeps its own position in the topic (`x:pos:<topic>:<partition>`, the next
//! offset to read), committed in the same sled batch as the command's change; a message below a
//! domain's position is skipped for it. The consumer is assigned every partition of the topic
//! (no group: every process that holds domains reads every command) from the lowest position of
//! the domains open here, and seeks back when a domain opens that is behind. A command names its
//! domain with `domain`; without one it goes to the only domain (single mode) and is refused in
//! per-partition mode. A command another process's domain names is passed over here. A state
//! in its calibration warm-up holds the topic until it can take commands (order is kept).
//! Commands that cannot be parsed, or are refused (unknown face or cluster, a conflict), are
//! logged and counted (`clip_cluster_commands_total{outcome}`); they change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::batch::position_key;
use crate::api::{Domains, Shared};
use crate::clusterer::{parse_request, Action, Request};
use crate::config::{Config, DomainMode};
use crate::engine::feedback::FeedbackError;
use crate::telemetry::Metrics;

/// How often the domains open here are compared with the assignment, and positions of
/// commands for other domains are made durable.
const TICK: Duration = Duration::from_secs(1);

/// One domain as the command reader follows it.
struct Follow {
    shared: Arc<Shared>,
    /// Next offset to read per partition.
    next: BTreeMap<i32, i64>,
    /// Positions moved past commands that were not for this domain, not yet durable.
    dirty: bool,
}

struct Reader {
    cfg: Config,
    topic: String,
    metrics: Metrics,
    domains: Domains,
    consumer: Arc<StreamConsumer>,
    partitions: Vec<i32>,
    follows: BTreeMap<String, Follow>,
    /// Where the consumer was last assigned from.
    assigned: BTreeMap<i32, i64>,
    stop: watch::Receiver<bool>,
}

/// Reads the command topic until `stop`. Errors are logged: the input and the API go on.
pub(super) async fn run(
    cfg: Config,
    metrics: Metrics,
    domains: Domains,
    stop: watch::Receiver<bool>,
) {
    let topic = cfg.kafka.commands_topic.clone();
    let consumer = match consumer(&cfg) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            error!(topic = %topic, error = %e, "command topic: cannot create its consumer; no command is read from Kafka");
            return;
        }
    };
    let mut r = Reader {
        cfg,
        topic,
        metrics,
        domains,
        consumer,
        partitions: Vec::new(),
        follows: BTreeMap::new(),
        assigned: BTreeMap::new(),
        stop,
    };
    r.serve().await;
}

/// Returns when the daemon is told to stop (the watch's guard does not outlive it).
async fn until_stop(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn consumer(cfg: &Config) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let k = &cfg.kafka;
    let mut c = ClientConfig::new();
    // Assigned by us, never committed: the positions live in each domain's state.
    c.set("group.id", format!("{}.commands", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100");
    let base = crate::sink::client_config(k, &k.consumer_properties);
    for (key, v) in base.config_map() {
        c.set(key, v);
    }
    c.create()
}

impl Reader {
    fn stopped(&self) -> bool {
        let stopped = *self.stop.borrow();
        stopped
    }

    async fn serve(&mut self) {
        if !self.find_partitions().await {
            return;
        }
        let mut tick = tokio::time::interval(TICK);
        let mut stop = self.stop.clone();
        loop {
            if let Err(e) = self.follow_domains().await {
                warn!(topic = %self.topic, error = %e, "command topic: cannot follow the open domains");
            }
            tokio::select! {
                biased;
                _ = until_stop(&mut stop) => break,
                _ = tick.tick() => self.flush().await,
                m = self.consumer.recv() => match m {
                    Ok(m) => {
                        let (p, o) = (m.partition(), m.offset());
                        let payload = m.payload().unwrap_or_default().to_vec();
                        drop(m);
                        self.handle(p, o, &payload).await;
                    }
                    Err(e) => {
                        self.metrics.kafka_errors.with_label_values(&["consume"]).inc();
                        warn!(topic = %self.topic, error = %e, "command topic: consume error");
                        tokio::time::sleep(TICK).await;
                    }
                },
            }
        }
        self.flush().await;
    }

    /// The topic's partitions, retried until it exists or the daemon stops.
    async fn find_partitions(&mut self) -> bool {
        let mut warned = false;
        while !self.stopped() {
            let (c, topic) = (self.consumer.clone(), self.topic.clone());
            let found = tokio::task::spawn_blocking(move || {
                c.client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .map(|md| {
                        md.topics()
                            .iter()
                            .filter(|t| t.name() == topic && t.error().is_none())
                            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                            .collect::<Vec<i32>>()
                    })
            })
            .await;
            match found {
                Ok(Ok(ps)) if !ps.is_empty() => {
                    info!(topic = %self.topic, partitions = ps.len(), "command topic: reading operator commands");
                    self.partitions = ps;
                    return true;
                }
                other => {
                    if !warned {
                        let why = match other {
                            Ok(Err(e)) => e.to_string(),
                            _ => "the topic does not exist (yet)".to_string(),
                        };
                        warn!(topic = %self.topic, reason = %why, "command topic: not readable; retrying every 5 s (kafka.commands_topic = \"\" turns it off)");
                        warned = true;
                    }
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = until_stop(&mut stop) => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        }
        false
    }

    /// Takes in domains opened since the last look (their stored positions), forgets closed
    /// ones, and reassigns the consumer when an opened domain is behind it.
    async fn follow_domains(&mut self) -> Result<(), String> {
        let open: BTreeMap<String, Arc<Shared>> = self
            .domains
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        self.follows.retain(|n, _| open.contains_key(n));
        let mut behind = self.assigned.is_empty() && !open.is_empty();
        for (name, shared) in open {
            if self.follows.contains_key(&name) {
                continue;
            }
            let (s, topic, ps) = (shared.clone(), self.topic.clone(), self.partitions.clone());
            let next = tokio::task::spawn_blocking(move || {
                let c = s.lock();
                ps.iter()
                    .map(|&p| {
                        let v = c.store().position(&position_key(&topic, p))?;
                        let o = v
                            .and_then(|v| v.as_slice().try_into().ok().map(i64::from_le_bytes))
                            .unwrap_or(0);
                        Ok((p, o))
                    })
                    .collect::<Result<BTreeMap<i32, i64>, crate::store::StoreError>>()
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            behind |= next
                .iter()
                .any(|(p, o)| self.assigned.get(p).is_some_and(|a| o < a));
            debug!(domain = %name, positions = ?next, "command topic: following a domain");
            self.follows.insert(
                name,
                Follow {
                    shared,
                    next,
                    dirty: false,
                },
            );
        }
        if behind {
            self.assign().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Assigns every partition from the lowest position of the domains followed.
    fn assign(&mut self) -> Result<(), rdkafka::error::KafkaError> {
        let mut tpl = TopicPartitionList::new();
        self.assigned.clear();
        for &p in &self.partitions {
            let from = self
                .follows
                .values()
                .filter_map(|f| f.next.get(&p).copied())
                .min()
                .unwrap_or(0);
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(from))?;
            self.assigned.insert(p, from);
        }
        self.consumer.assign(&tpl)
    }

    /// One command at (`partition`, `offset`), for the domains followed that have not read it.
    async fn handle(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        let due: Vec<String> = self
            .follows
            .iter()
            .filter(|(_, f)| f.next.get(&partition).is_none_or(|&n| offset >= n))
            .map(|(n, _)| n.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let count = |o: &str| self.metrics.commands.with_label_values(&[o]).inc();
        let target = match parse_request(payload) {
            Err(e) => {
                count("bad");
                error!(topic = %self.topic, partition, offset, "command refused: {e}");
                None
            }
            Ok(req) => match self.target_of(&req, &due) {
                Ok(t) => t.map(|d| (d, req)),
                Err(e) => {
                    count("bad");
                    error!(topic = %self.topic, partition, offset, command_id = req.action.command_id(), "command refused: {e}");
                    None
                }
            },
        };
        for name in due {
            match &target {
                Some((d, req)) if *d == name => self.apply(&name, partition, offset, req).await,
                _ => {
                    if let Some(f) = self.follows.get_mut(&name) {
                        f.next.insert(partition, offset + 1);
                        f.dirty = true;
                    }
                }
            }
        }
    }

    /// The domain open here that `req` is for (`None`: another process's), or why it is refused.
    fn target_of(&self, req: &Request, due: &[String]) -> Result<Option<String>, String> {
        let single = self.cfg.daemon.domains == DomainMode::Single;
        match &req.domain {
            Some(d) if due.contains(d) => Ok(Some(d.clone())),
            Some(d) if single => Err(format!(
                "it names domain {d:?}; this daemon holds {:?}",
                self.cfg.daemon.domain
            )),
            // Another process holds it (or it was read here before).
            Some(_) => Ok(None),
            None if single => Ok(due.first().cloned()),
            None => Err(
                "daemon.domains = \"per_partition\": a command must name its domain (\"domain\")"
                    .into(),
            ),
        }
    }

    /// Applies `req` to domain `name` with the position past it, retrying while the state is in
    /// its warm-up or the store fails (the command is not lost; later ones wait).
    async fn apply(&mut self, name: &str, partition: i32, offset: i64, req: &Request) {
        let Some(shared) = self.follows.get(name).map(|f| f.shared.clone()) else {
            return;
        };
        let positions = vec![(
            position_key(&self.topic, partition),
            (offset + 1).to_le_bytes().to_vec(),
        )];
        loop {
            let (s, action, pos) = (shared.clone(), req.action.clone(), positions.clone());
            let r = tokio::task::spawn_blocking(move || s.lock().execute(&action, &pos)).await;
            let wait = match r {
                Err(e) => {
                    error!(domain = name, error = %e, "command topic: the command's thread failed; retrying");
                    true
                }
                Ok(Err(e)) => {
                    error!(domain = name, command_id = req.action.command_id(), error = %e, "command topic: the command could not be stored; retrying");
                    true
                }
                Ok(Ok(Err(FeedbackError::NotReady(m)))) => {
                    debug!(domain = name, "command waits: {m}");
                    true
                }
                Ok(Ok(Err(e))) => {
                    self.metrics.commands.with_label_values(&["refused"]).inc();
                    warn!(
                        domain = name,
                        command_id = req.action.command_id(),
                        op = req.action.label(),
                        "command refused: {e}"
                    );
                    false
                }
                Ok(Ok(Ok((report, events)))) => {
                    let duplicate = report["duplicate"] == serde_json::Value::Bool(true);
                    let outcome = if duplicate { "duplicate" } else { "applied" };
                    self.metrics.commands.with_label_values(&[outcome]).inc();
                    if let Action::Erase { target, .. } = &req.action {
                        let n = report["erased"].as_array().map_or(0, Vec::len);
                        self.metrics
                            .faces_erased
                            .with_label_values(&[target.reason()])
                            .inc_by(n as u64);
                    }
                    shared.wrote(events.len());
                    info!(
                        domain = name,
                        command_id = req.action.command_id(),
                        op = req.action.label(),
                        events = events.len(),
                        outcome,
                        "command applied from the command topic"
                    );
                    false
                }
            };
            if !wait {
                break;
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = until_stop(&mut stop) => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
        if let Some(f) = self.follows.get_mut(name) {
            f.next.insert(partition, offset + 1);
        }
    }

    /// Makes durable the positions moved past other domains' commands.
    async fn flush(&mut self) {
        let dirty: BTreeSet<String> = self
            .follows
            .iter()
            .filter(|(_, f)| f.dirty)
            .map(|(n, _)| n.clone())
            .collect();
        for name in dirty {
            let Some(f) = self.follows.get_mut(&name) else {
                continue;
            };
            let positions: Vec<(Vec<u8>, Vec<u8>)> = f
                .next
                .iter()
                .map(|(&p, o)| (position_key(&self.topic, p), o.to_le_bytes().to_vec()))
                .collect();
            let s = f.shared.clone();
            match tokio::task::spawn_blocking(move || s.lock().store().commit_positions(&positions))
                .await
            {
                Ok(Ok(())) => f.dirty = false,
                Ok(Err(e)) => {
                    warn!(domain = %name, error = %e, "command topic: cannot store the position")
                }
                Err(e) => {
                    warn!(domain = %name, error = %e, "command topic: cannot store the position")
                }
            }
        }
    }
}
