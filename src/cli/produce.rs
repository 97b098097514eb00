//! `clip-cluster produce`: publishes feature rows as embedding messages (the JSON envelope of
//! `decode`), or a directory of face images as raw image messages with headers, to a topic on any
//! broker, keyed by face id.

use crate::eval::features::read_features;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::Config;
use crate::decode::embedding_envelope;
use crate::engine::FaceMeta;
use crate::eval::features::Features;

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
        let producer: FutureProducer = crate::pipeline::producer(&cfg.kafka)?;
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
    let files: Vec<(String, std::path::PathBuf)> = crate::eval::dataset::list(dir, None)?
        .into_iter()
        .map(|i| (i.identity, i.path))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let producer: FutureProducer = crate::pipeline::producer(&cfg.kafka)?;
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

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub brokers: String,
    #[arg(long, default_value = "faces")]
    pub topic: String,
    #[arg(long, conflicts_with = "faces")]
    pub features: Option<PathBuf>,
    /// A directory of face images, one folder per identity.
    #[arg(long)]
    pub faces: Option<PathBuf>,
    #[arg(long, default_value_t = 10_000)]
    pub synthetic: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Prefix of the generated face ids (face_id = <prefix><row>).
    #[arg(long, default_value = "face-")]
    pub id_prefix: String,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args {
        brokers,
        topic,
        features,
        faces,
        synthetic,
        seed,
        id_prefix,
    } = args;
    let flags = crate::config::Overrides {
        bootstrap_servers: Some(brokers),
        ..Default::default()
    };
    let cfg = Config::load_overriding(config, &flags)?;
    if let Some(dir) = faces {
        let n = crate::cli::produce::publish_images(&cfg, &topic, &dir)?;
        eprintln!("published {n} images from {} to {topic}", dir.display());
        return Ok(());
    }
    let feats = match features {
        Some(f) => read_features(&f, cfg.model.dim)?,
        None => {
            let s = crate::eval::synth::generate(crate::eval::synth::SynthParams::new(
                synthetic,
                cfg.model.dim,
                seed,
            ));
            Features {
                dim: s.dim,
                data: s.data,
            }
        }
    };
    let n = crate::cli::produce::publish(&cfg, &topic, &feats, &id_prefix)?;
    eprintln!("published {n} faces to {topic}");
    Ok(())
}
