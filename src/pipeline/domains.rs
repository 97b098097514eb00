//! Domains in the loop: opening a partition's domain (the guard, then the state) on a blocking
//! thread while the partition waits paused, serving or blocking it, closing it when the partition
//! is revoked, retrying what can be retried, and single mode's split check. Rules in
//! `crate::pipeline::domain`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use super::{Daemon, Domain, OpenResult, PartitionKey, PipelineError, Slot, RETRY_BLOCKED};
use crate::clusterer::{Clusterer, ClustererError};
use crate::config::Config;
use crate::index::NeighborIndex;
use crate::pipeline::domain::{fresh_decision, Blocked, Fresh};
use crate::sink::{DrainMode, Outbox};
use crate::source::{committed_offset, one_partition, Change, Msg, SourceContext};
use crate::store::StoreError;

/// Opens a partition's domain (blocking): the guard, then the state.
pub(super) fn open_domain(
    cfg: &Config,
    consumer: &StreamConsumer<SourceContext>,
    key: &PartitionKey,
) -> Result<Clusterer, Blocked> {
    let dir = &cfg.store.path;
    if !crate::pipeline::domain::has_state(dir) {
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

impl Daemon {
    /// Makes an opened state a served domain: its metrics and its outbox drainer.
    pub(super) fn add_domain(&mut self, name: String, clusterer: Clusterer) {
        let store = clusterer.store().clone();
        let faces = self.metrics.domain_faces.with_label_values(&[&name]);
        faces.set(clusterer.engine().n_faces() as i64);
        let threshold = self
            .metrics
            .domain_edge_threshold
            .with_label_values(&[&name]);
        threshold.set(f64::from(clusterer.engine().params().t1));
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
            (self.cfg.kafka.clone(), self.cfg.sink.clone()),
            self.metrics.clone(),
            mode_rx,
        ));
        let shared = crate::api::Shared::new(clusterer);
        {
            // Events an operator's command wrote: counted as the batches' are, sent at once.
            let (outbox, total, notify) = (
                outbox.clone(),
                self.metrics.outbox_depth.clone(),
                notify.clone(),
            );
            shared.on_write(move |n| {
                outbox.add(n as i64);
                total.add(n as i64);
                notify.notify_one();
            });
        }
        self.api_domains
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), shared.clone());
        self.domains.insert(
            name,
            Domain {
                clusterer: shared,
                store,
                positions: HashMap::new(),
                consumed_at,
                notify,
                drain_mode,
                drainer,
                faces,
                outbox,
                threshold,
                local_rule_seen: 0,
                snapshot_seen: 0.0,
            },
        );
    }

    /// Closes a domain: the state is dropped now, the drainer finishes as `mode` says and then
    /// releases its handle on the store (and with it sled's lock, for the next owner).
    pub(super) fn close_domain(&mut self, name: &str, mode: DrainMode) {
        if let Some(d) = self.domains.remove(name) {
            self.api_domains
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
            let _ = self.metrics.domain_faces.remove_label_values(&[name]);
            let _ = self
                .metrics
                .domain_edge_threshold
                .remove_label_values(&[name]);
            let _ = d.drain_mode.send(mode);
            self.closing.push(d.drainer);
            info!(domain = %name, "domain closed");
        }
    }

    /// Process totals from the open domains.
    pub(super) fn refresh_totals(&self) {
        let (mut faces, mut clusters, mut tombstones, mut left) = (0i64, 0i64, 0i64, 0i64);
        for d in self.domains.values() {
            {
                let c = d.clusterer.lock();
                faces += c.engine().n_faces() as i64;
                clusters += c.engine().n_clusters() as i64;
                tombstones += c.engine().index().n_removed() as i64;
                left += c.rebuild_pending().unwrap_or(0) as i64;
            }
        }
        self.metrics.index_faces.set(faces);
        self.metrics.clusters.set(clusters);
        self.metrics.index_tombstones.set(tombstones);
        self.metrics.index_compaction_faces_left.set(left);
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

    pub(super) fn pause(&self, key: &PartitionKey) {
        if let Err(e) = self.consumer.pause(&one_partition(key)) {
            warn!(error = %e, topic = %key.0, partition = key.1, "cannot pause partition");
        }
    }

    pub(super) fn resume(&self, key: &PartitionKey) {
        if let Err(e) = self.consumer.resume(&one_partition(key)) {
            warn!(error = %e, topic = %key.0, partition = key.1, "cannot resume partition");
        }
    }

    /// Starts opening a partition's domain on a blocking thread; the partition waits paused.
    pub(super) fn start_open(&mut self, key: PartitionKey, buffer: Vec<Msg>, was_blocked: bool) {
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
    pub(super) async fn finish_open(
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

    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter_map(|s| match s {
                Slot::Blocked { retry_at, .. } => *retry_at,
                _ => None,
            })
            .min()
    }

    pub(super) fn retry_due(&mut self) {
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

    pub(super) fn unblock(&self, domain: &str) {
        self.health.clear_problem(domain);
        let _ = self.metrics.domain_blocked.remove_label_values(&[domain]);
    }

    /// Acts on the partitions assigned and revoked since the last call.
    pub(super) async fn handle_changes(&mut self) {
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
    pub(super) async fn check_split(&mut self) {
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
}
