//! Role "embed": a stateless embedding worker. Consumes face crops from `kafka.input_topics` in
//! its consumer group, embeds the images, and produces embedding envelopes to
//! `kafka.embeddings_topic` with the same key, headers and partition number (partitions are the
//! clustering domains, so a face stays in its domain). Embedding messages pass through unchanged;
//! bad images go to the dead-letter topic. Offsets are stored only after every output of the
//! batch was acknowledged (acks=all, idempotent producer), so a crash re-embeds, never loses; the
//! cluster workers treat a re-sent face id as a no-op. Run as many as the input has partitions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{load_embedder, start_admin, PipelineError, RunSummary};
use crate::config::Config;
use crate::decode::{decode, embedding_envelope_with, Limits, Payload, Reason};
use crate::engine::Face;
use crate::sink::{producer, queue_send, DeadLetter};
use crate::source::{collect_batch, consumer, Msg, Rebalances};
use crate::telemetry::Metrics;

/// A face on its way out: its message's index, the face, and its image while it waits for the
/// embedder (`None`: an embedding message, passed through).
type Outgoing = (usize, Face, Option<Vec<u8>>);

pub(super) async fn run(
    cfg: Config,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> Result<RunSummary, PipelineError> {
    let embedder = load_embedder(&cfg).await?.ok_or(PipelineError::Embed(
        "role \"embed\" with embed.enabled = false has nothing to do".into(),
    ))?;
    let clip = super::load_clip(&cfg).await?;
    for r in Reason::ALL {
        metrics.faces_rejected.with_label_values(&[r.class()]);
    }
    let (health, admin) = start_admin(&cfg.admin, &metrics, &stop).await?;

    let producer = producer(&cfg.kafka)?;
    let rebalances = Arc::new(Rebalances::default());
    let consumer = consumer(&cfg.kafka, &metrics, rebalances.clone())?;
    let topics: Vec<&str> = cfg.kafka.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    info!(topics = ?topics, out = %cfg.kafka.embeddings_topic, group = %cfg.kafka.group_id, "embedding worker consuming");
    health.set_started(true);

    let limits = Limits::from_config(&cfg);
    let dim = cfg.model.dim;
    let wait = Duration::from_millis(cfg.source.max_batch_wait_ms);
    let mut summary = RunSummary::default();
    let mut stop_rx = stop.clone();
    // Set when the last batch could not finish before shutdown (its offsets are not stored).
    let mut failed: Option<PipelineError> = None;
    loop {
        // Assignment changes need no action here (no state); drop the record of them.
        rebalances
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let first = tokio::select! {
            biased;
            _ = stop_rx.wait_for(|s| *s) => break,
            m = consumer.recv() => m,
        };
        let Some((batch, started)) =
            collect_batch(&consumer, first, cfg.source.max_batch, wait, &metrics).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        summary.consumed += batch.len() as u64;
        metrics.faces_consumed.inc_by(batch.len() as u64);

        // Decode: vectors pass through, images wait for the embedder, the rest is dead.
        let mut ends: HashMap<(String, i32), i64> = HashMap::new();
        let mut out: Vec<Outgoing> = Vec::new();
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut msgs: Vec<Msg> = Vec::with_capacity(batch.len());
        for m in batch {
            let e = ends
                .entry((m.topic.clone(), m.partition))
                .or_insert(m.offset + 1);
            *e = (*e).max(m.offset + 1);
            match decode(m.key.as_deref(), &m.headers, m.payload.as_deref(), &limits) {
                Ok(f) => {
                    let face = Face {
                        face_id: f.face_id,
                        vector: Vec::new(),
                        variants: f.variants,
                        meta: f.meta,
                        thumbnail: f.thumbnail,
                    };
                    match f.payload {
                        Payload::Embedding(v) => {
                            out.push((msgs.len(), Face { vector: v, ..face }, None))
                        }
                        Payload::Image(bytes) => out.push((msgs.len(), face, Some(bytes))),
                    }
                }
                Err(rejection) => {
                    dead.push(super::core::dead_letter(m, rejection));
                    continue;
                }
            }
            msgs.push(m);
        }
        let (ready, images): (Vec<Outgoing>, Vec<Outgoing>) =
            out.into_iter().partition(|(.., image)| image.is_none());
        let mut out: Vec<(usize, Face)> = ready.into_iter().map(|(i, f, _)| (i, f)).collect();
        if !images.is_empty() {
            let (index, faces): (Vec<usize>, Vec<(Face, Vec<u8>)>) = images
                .into_iter()
                .map(|(i, f, b)| (i, (f, b.unwrap_or_default())))
                .unzip();
            let e = embedder.clone();
            let c = clip.clone();
            let t = Instant::now();
            let thumbs = crate::embed::thumbnail::ThumbnailSpec::from_config(&cfg);
            let results = tokio::task::spawn_blocking(move || {
                super::core::embed_faces(e.as_ref(), c.as_deref(), faces, dim, thumbs)
            })
            .await
            .map_err(|e| PipelineError::Join(e.to_string()))?
            .map_err(|e| PipelineError::Embed(e.0))?;
            metrics.embed_duration.observe(t.elapsed().as_secs_f64());
            for (i, r) in index.into_iter().zip(results) {
                match r {
                    Ok(faces) => {
                        metrics.faces_embedded.inc_by(faces.len() as u64);
                        for face in faces {
                            if let Some(outcome) = &face.meta.located {
                                metrics.embed_located.with_label_values(&[outcome]).inc();
                            }
                            out.push((i, face));
                        }
                    }
                    Err(rejection) => {
                        dead.push(super::core::dead_letter(msgs[i].clone(), rejection))
                    }
                }
            }
            // Out in input order.
            out.sort_by_key(|(i, _)| *i);
        }

        // Produce, then wait for every acknowledgement before the offsets move.
        let mut pending = Vec::with_capacity(out.len());
        for (i, face) in &out {
            let m = &msgs[*i];
            let payload = embedding_envelope_with(
                &face.face_id,
                &face.meta,
                &face.vector,
                &face.variants,
                &face.thumbnail,
            );
            let mut headers = OwnedHeaders::new();
            for (k, val) in &m.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(val.as_slice()),
                });
            }
            let mut record: FutureRecord<'_, [u8], Vec<u8>> =
                FutureRecord::to(&cfg.kafka.embeddings_topic)
                    .payload(&payload)
                    .partition(m.partition)
                    .headers(headers);
            if let Some(k) = &m.key {
                record = record.key(k.as_slice());
            }
            pending.push(queue_send(&producer, record).await?);
        }
        for p in pending {
            match p.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    metrics.kafka_errors.with_label_values(&["produce"]).inc();
                    return Err(PipelineError::Kafka(e));
                }
                Err(_) => return Err(PipelineError::Embed("producer dropped a delivery".into())),
            }
        }
        // If shutdown gives up on the dead letters, the batch's offsets are not stored: it is
        // embedded again at the next start.
        if let Err(e) = crate::sink::send_dead_letters(
            &producer,
            (&cfg.kafka, &cfg.sink),
            &metrics,
            &dead,
            &stop,
        )
        .await
        {
            failed = Some(PipelineError::Sink(e));
            break;
        }
        summary.dead_letters += dead.len() as u64;
        summary.applied += out.len() as u64;
        for ((t, p), o) in &ends {
            if let Err(e) = consumer.store_offset(t, *p, o - 1) {
                metrics.kafka_errors.with_label_values(&["commit"]).inc();
                warn!(error = %e, topic = %t, partition = p, "cannot store offset (partition revoked?); the next owner re-embeds");
            }
        }
        metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
    }

    info!("stopping: committing offsets");
    health.set_started(false);
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(())
        | Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => warn!(error = %e, "final offset commit"),
    }
    let _ = producer.flush(Duration::from_secs(5));
    let _ = admin.await;
    match failed {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}
