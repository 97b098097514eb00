//! `clip-cluster produce`: publishes feature rows as embedding messages (the JSON envelope of
//! `message`) to a topic on any broker, keyed by face id.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::Config;
use crate::engine::FaceMeta;
use crate::features::Features;
use crate::message::embedding_envelope;

/// Publishes every row as `<id_prefix><row>`; returns how many were acknowledged.
pub fn publish(
    cfg: &Config,
    topic: &str,
    features: &Features,
    id_prefix: &str,
) -> anyhow::Result<usize> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let producer: FutureProducer = crate::pipeline::producer(cfg)?;
        let mut pending = Vec::with_capacity(features.n());
        for i in 0..features.n() {
            let id = format!("{id_prefix}{i}");
            let payload = embedding_envelope(&id, &FaceMeta::default(), features.row(i));
            let record = FutureRecord::to(topic).key(&id).payload(&payload);
            let f = crate::pipeline::queue_send(&producer, record)
                .await
                .map_err(|e| anyhow::anyhow!("publishing to {topic}: {e}"))?;
            pending.push(f);
        }
        let mut n = 0;
        for p in pending {
            match p.await {
                Ok(Ok(_)) => n += 1,
                Ok(Err((e, _))) => anyhow::bail!("publishing to {topic}: {e}"),
                Err(_) => anyhow::bail!("publishing to {topic}: the producer went away"),
            }
        }
        producer.flush(Duration::from_secs(10))?;
        Ok(n)
    })
}
