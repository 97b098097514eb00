//! `clip-cluster produce`: publishes feature rows as embedding messages (the JSON envelope of
//! `message`), or a directory of face images as raw image messages with headers, to a topic on any
//! broker, keyed by face id.

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
        acknowledged(&producer, pending, topic).await
    })
}

/// Waits for every queued message's acknowledgement, then flushes; returns how many there were.
async fn acknowledged(
    producer: &FutureProducer,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
    topic: &str,
) -> anyhow::Result<usize> {
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
}

/// Publishes every image under `dir/<identity>/` as a raw image message: the bytes as they are,
/// headers `face_id` (the file stem), `image_id` (the file name), `source_id` (the identity
/// folder). Returns how many were acknowledged.
pub fn publish_images(cfg: &Config, topic: &str, dir: &std::path::Path) -> anyhow::Result<usize> {
    use rdkafka::message::{Header, OwnedHeaders};
    let files: Vec<(String, std::path::PathBuf)> = crate::dataset::list(dir, None)?
        .into_iter()
        .map(|i| (i.identity, i.path))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let producer: FutureProducer = crate::pipeline::producer(cfg)?;
        let mut pending = Vec::with_capacity(files.len());
        for (identity, path) in &files {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "face_id",
                    value: Some(stem.as_bytes()),
                })
                .insert(Header {
                    key: "image_id",
                    value: Some(name.as_bytes()),
                })
                .insert(Header {
                    key: "source_id",
                    value: Some(identity.as_bytes()),
                });
            let record = FutureRecord::to(topic)
                .key(&stem)
                .payload(&bytes)
                .headers(headers);
            pending.push(
                crate::pipeline::queue_send(&producer, record)
                    .await
                    .map_err(|e| anyhow::anyhow!("publishing to {topic}: {e}"))?,
            );
        }
        acknowledged(&producer, pending, topic).await
    })
}
