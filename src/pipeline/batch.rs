//! The batch path: route messages to their domains, skip what is durable already, decode,
//! dead-letter, apply per domain on parallel blocking threads, store the offsets.

use std::collections::HashMap;
use std::time::Instant;

use rdkafka::consumer::Consumer;
use tracing::{error, warn};

use super::{Daemon, PartitionKey, PipelineError, Slot};
use crate::config::Role;
use crate::decode::{Reason, Rejection};
use crate::engine::{Event, Face};
use crate::sink::DeadLetter;
use crate::source::Msg;

pub(super) fn position_key(topic: &str, partition: i32) -> Vec<u8> {
    format!("pos:{topic}:{partition}").into_bytes()
}

/// The dead letter an image becomes if it fails to embed (its rejection is filled in then).
struct PendingLetter(DeadLetter);

type Work = (String, Vec<Face>, HashMap<PartitionKey, i64>);

impl Daemon {
    /// Embeds the batch's images on a blocking thread (`core::embed_faces`) and puts each face
    /// in its slot; images that fail go to `dead` and leave their slot (the face is not
    /// applied). A model failure (a device error) stops the daemon: nothing of the batch is
    /// durable, so a restart redoes it.
    async fn embed_images(
        &self,
        images: Vec<(usize, usize, Vec<u8>, PendingLetter)>,
        work: &mut [Work],
        dead: &mut Vec<DeadLetter>,
    ) -> Result<(), PipelineError> {
        let Some(embedder) = self.embedder.clone() else {
            return Ok(());
        };
        let mut slots = Vec::with_capacity(images.len());
        let mut faces = Vec::with_capacity(images.len());
        for (w, g, bytes, letter) in images {
            faces.push((std::mem::take(&mut work[w].1[g]), bytes));
            slots.push((w, g, letter));
        }
        let started = Instant::now();
        let clip = self.clip.clone();
        let dim = self.cfg.model.dim;
        let thumbs = crate::embed::thumbnail::ThumbnailSpec::from_config(&self.cfg);
        let results = tokio::task::spawn_blocking(move || {
            super::core::embed_faces(embedder.as_ref(), clip.as_deref(), faces, dim, thumbs)
        })
        .await
        .map_err(|e| PipelineError::Join(e.to_string()))?
        .map_err(|e| PipelineError::Embed(e.0))?;
        self.metrics
            .embed_duration
            .observe(started.elapsed().as_secs_f64());
        // Each slot's faces: none (refused), one, or with faces_per_image = "all" several,
        // put in the slot's place so that stream order holds.
        let mut filled: HashMap<(usize, usize), Vec<Face>> = HashMap::new();
        for ((w, g, letter), r) in slots.into_iter().zip(results) {
            match r {
                Ok(faces) => {
                    self.metrics.faces_embedded.inc_by(faces.len() as u64);
                    for f in &faces {
                        if let Some(outcome) = &f.meta.located {
                            self.metrics
                                .embed_located
                                .with_label_values(&[outcome])
                                .inc();
                        }
                    }
                    filled.insert((w, g), faces);
                }
                Err(rejection) => {
                    let mut d = letter.0;
                    d.rejection = rejection;
                    dead.push(d);
                    filled.insert((w, g), Vec::new());
                }
            }
        }
        for (w, work) in work.iter_mut().enumerate() {
            if !filled.keys().any(|(ww, _)| *ww == w) {
                continue;
            }
            let old = std::mem::take(&mut work.1);
            for (g, face) in old.into_iter().enumerate() {
                match filled.remove(&(w, g)) {
                    Some(faces) => work.1.extend(faces),
                    None => work.1.push(face),
                }
            }
        }
        Ok(())
    }

    /// Routes a batch to its domains, dead-letters what cannot be decoded, applies the rest per
    /// domain, and stores the offsets that are now durable.
    pub(super) async fn process(
        &mut self,
        batch: Vec<Msg>,
        started: Instant,
    ) -> Result<(), PipelineError> {
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
        let refused = match (self.embedder.is_some(), self.cfg.daemon.role) {
            (true, _) => None,
            (false, Role::Cluster) => Some("role \"cluster\" consumes embedding messages; images go to the embedding workers (role \"embed\")"),
            (false, _) => Some("image messages need the face embedder, which is disabled here (embed.enabled = false); send embeddings"),
        };
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut work = Vec::with_capacity(groups.len());
        // (work index, slot in its `good`, encoded image, the message for a dead letter)
        let mut images: Vec<(usize, usize, Vec<u8>, PendingLetter)> = Vec::new();
        for (name, msgs) in groups {
            let Some(dom) = self.domains.get_mut(&name) else {
                // A routed domain is open by construction (slot Open, or the single domain).
                error!(domain = %name, "message routed to a domain that is not open; skipped");
                continue;
            };
            let mut durable = |key: &PartitionKey| -> Result<i64, PipelineError> {
                if let Some(p) = dom.positions.get(key) {
                    return Ok(*p);
                }
                let p = dom
                    .store
                    .position(&position_key(&key.0, key.1))?
                    .and_then(|v| v.as_slice().try_into().ok().map(i64::from_le_bytes))
                    .unwrap_or(-1);
                dom.positions.insert(key.clone(), p);
                Ok(p)
            };
            let prepared = super::core::prepare(msgs, &mut durable, &self.limits, refused)?;
            for ((topic, partition), from, to) in &prepared.gaps {
                let lost = (to - from) as u64;
                self.metrics.offset_gap_messages.inc_by(lost);
                error!(topic = %topic, partition, from, to, lost, "messages missing from the input: deleted before they were consumed?");
            }
            // Processed before a restart: the durable state already has them.
            self.summary.duplicates += prepared.duplicates;
            self.metrics.faces_duplicate.inc_by(prepared.duplicates);
            dead.extend(prepared.dead);
            for (slot, bytes, m) in prepared.images {
                // Embedded below, all images of the batch at once; the slot keeps the face's
                // place in the stream order.
                let placeholder = Rejection {
                    reason: Reason::ImageUnusable,
                    message: String::new(),
                };
                let letter = PendingLetter(super::core::dead_letter(m, placeholder));
                images.push((work.len(), slot, bytes, letter));
            }
            let (good, ends) = (prepared.faces, prepared.ends);
            work.push((name, good, ends));
        }

        if !images.is_empty() {
            self.embed_images(images, &mut work, &mut dead).await?;
        }

        // Dead letters first: once the positions are durable these messages are never read again.
        // If shutdown gives up on them, nothing of the batch is applied or stored.
        crate::sink::send_dead_letters(
            &self.producer,
            (&self.cfg.kafka, &self.cfg.sink),
            &self.metrics,
            &dead,
            &self.stop,
        )
        .await?;
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
                for face in &good {
                    map.insert(face.face_id.clone(), now);
                }
            }
            let pos: Vec<(Vec<u8>, Vec<u8>)> = ends
                .iter()
                .map(|((t, p), o)| (position_key(t, *p), o.to_le_bytes().to_vec()))
                .collect();
            let shared = dom.clusterer.clone();
            let task = tokio::task::spawn_blocking(move || shared.lock().apply(&good, &pos));
            tasks.push((name, ends, task));
        }
        let mut done = Vec::with_capacity(tasks.len());
        for (name, ends, task) in tasks {
            let result = task.await.map_err(|e| PipelineError::Join(e.to_string()))?;
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
            self.metrics.faces_waiting.inc_by(result.waiting as u64);
            let weak = result
                .events
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        crate::engine::Event::FaceAssigned {
                            low_quality: true,
                            ..
                        }
                    )
                })
                .count();
            self.metrics.faces_low_quality.inc_by(weak as u64);
            self.metrics
                .proxies_refreshed
                .inc_by(result.refreshed as u64);
            self.metrics
                .faces_duplicate
                .inc_by(result.duplicates as u64);
            self.metrics
                .faces_erased_redelivered
                .inc_by(result.erased_redelivered as u64);
            for e in &result.events {
                match e {
                    Event::ClustersMerged { .. } => self.metrics.merges.inc(),
                    Event::ClusterSplit { .. } => self.metrics.splits.inc(),
                    _ => {}
                }
            }
            dom.outbox.add(result.events.len() as i64);
            self.metrics.outbox_depth.add(result.events.len() as i64);
            {
                let c = dom.clusterer.lock();
                dom.faces.set(c.engine().n_faces() as i64);
                dom.threshold.set(f64::from(c.engine().params().t1));
                let local = c.engine().bounded_regroups();
                self.metrics
                    .cluster_rule_local
                    .inc_by(local.saturating_sub(dom.local_rule_seen));
                dom.local_rule_seen = local;
                let dumping = c.snapshot_seconds();
                self.metrics
                    .index_snapshot_seconds
                    .inc_by((dumping - dom.snapshot_seen).max(0.0));
                dom.snapshot_seen = dumping;
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
