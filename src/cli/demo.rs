//! `clip-cluster demo`: the embedded default. Starts librdkafka's mock cluster in-process, publishes
//! a stream of faces (plus a few bad messages, to show the dead-letter path), runs the real daemon
//! against it until every face is applied and every event delivered, and reports what happened,
//! scored against the identities when they are known.

use std::path::Path;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use tokio::sync::watch;

use crate::cli::mock::MockKafka;
use crate::clusterer::Clusterer;
use crate::config::Config;
use crate::decode::embedding_envelope;
use crate::engine::FaceMeta;
use crate::eval::features::{check_counts, read_features, read_labels, Features};
use crate::eval::metrics::{evaluate, Prf};
use crate::telemetry::Metrics;

/// Where the demo's faces come from.
pub enum DemoInput {
    Features {
        bin: PathBuf,
        meta: PathBuf,
    },
    Synthetic {
        n: usize,
        seed: u64,
    },
    /// Face images, one folder per identity (or an LFW root): streamed as image messages and
    /// embedded by the daemon.
    Images {
        dir: PathBuf,
    },
}

/// What the feed publishes per face.
enum Rows {
    Vectors(Features),
    Images(Vec<PathBuf>),
}

impl Rows {
    fn n(&self) -> usize {
        match self {
            Rows::Vectors(f) => f.n(),
            Rows::Images(p) => p.len(),
        }
    }

    fn payload(&self, i: usize, id: &str, meta: &FaceMeta) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        Ok(match self {
            Rows::Vectors(f) => embedding_envelope(id, meta, f.row(i)),
            Rows::Images(p) => {
                let bytes = std::fs::read(&p[i])
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p[i].display()))?;
                let mut v = serde_json::to_value(meta)?;
                v["face_id"] = id.into();
                v["image_b64"] = base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into();
                serde_json::to_vec(&v)?
            }
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub n_faces: usize,
    pub n_clusters: usize,
    pub merges: u64,
    pub splits: u64,
    pub dead_letters: u64,
    pub events: u64,
    pub seconds: f64,
    pub faces_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairwise: Option<Prf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bcubed: Option<Prf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nmi: Option<f64>,
    /// With a paced feed (`--rate`): face-to-event latency quantiles, estimated from the
    /// histogram the way Prometheus' histogram_quantile does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub face_to_event_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub face_to_event_p99_ms: Option<f64>,
}

/// Quantile `q` of a Prometheus histogram by linear interpolation inside the bucket.
pub fn histogram_quantile(h: &prometheus::Histogram, q: f64) -> Option<f64> {
    use prometheus::core::Collector;
    let mf = h.collect();
    let m = mf.first()?.get_metric().first()?.get_histogram().clone();
    let total = m.get_sample_count() as f64;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut prev_bound, mut prev_count) = (0.0, 0.0);
    for b in m.get_bucket() {
        let (bound, count) = (b.upper_bound(), b.cumulative_count() as f64);
        if count >= rank {
            let within = if count > prev_count {
                (rank - prev_count) / (count - prev_count)
            } else {
                0.0
            };
            return Some(prev_bound + (bound - prev_bound) * within);
        }
        prev_bound = bound;
        prev_count = count;
    }
    Some(prev_bound)
}

const FACES_PARTITIONS: i32 = 12;
/// Most messages published and not yet processed (the mock retains about 3,000 per partition).
const MAX_BACKLOG: u64 = 12_000;

/// The bad messages every demo run includes: (what, bytes).
fn bad_messages(dim: usize) -> Vec<(&'static str, Vec<u8>)> {
    let wrong_dim = embedding_envelope("bad-dim", &FaceMeta::default(), &vec![0.5; dim + 1]);
    let mut overflow = String::from("{\"face_id\":\"bad-inf\",\"embedding\":[1e39");
    for _ in 1..dim {
        overflow.push_str(",0");
    }
    overflow.push_str("]}");
    vec![
        (
            "garbage bytes",
            vec![0x00, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef],
        ),
        (
            "truncated JSON",
            b"{\"face_id\":\"bad-json\",\"embedding\":[0.1,0.2".to_vec(),
        ),
        ("wrong dimension", wrong_dim),
        ("non-finite value", overflow.into_bytes()),
    ]
}

/// Runs the demo. `cfg` supplies the engine, index and source settings; Kafka, store and admin
/// settings are replaced by the demo's own.
pub fn run(
    base: &Config,
    input: DemoInput,
    limit: Option<usize>,
    rate: Option<f64>,
    quiet: bool,
    serve: bool,
) -> anyhow::Result<DemoReport> {
    let (rows, labels) = match input {
        DemoInput::Features { bin, meta } => {
            let f = read_features(&bin, base.model.dim)?;
            let l = read_labels(&meta)?;
            check_counts(&f, &l, &bin, &meta)?;
            (Rows::Vectors(f), l)
        }
        DemoInput::Synthetic { n, seed } => {
            let s = crate::eval::synth::generate(crate::eval::synth::SynthParams::new(
                n,
                base.model.dim,
                seed,
            ));
            (
                Rows::Vectors(Features {
                    dim: s.dim,
                    data: s.data,
                }),
                s.labels,
            )
        }
        DemoInput::Images { dir } => {
            let mut images = crate::eval::dataset::list(&dir, None)?;
            if let Some(l) = limit {
                // A prefix of the sorted listing would hold a handful of people; a seeded
                // shuffle keeps the mix of identities a real stream has.
                use rand::{seq::SliceRandom, SeedableRng};
                images.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
                images.truncate(l);
            }
            let mut names: Vec<&str> = images.iter().map(|i| i.identity.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            let labels = images
                .iter()
                .map(|i| names.binary_search(&i.identity.as_str()).unwrap_or(0) as i64)
                .collect();
            (
                Rows::Images(images.into_iter().map(|i| i.path).collect()),
                labels,
            )
        }
    };
    let n = limit.unwrap_or(usize::MAX).min(rows.n());
    let dim = base.model.dim;
    let images = matches!(rows, Rows::Images(_));
    // How far the feed may run ahead of the daemon: images are large and slow to embed.
    let backlog = if images { 256 } else { MAX_BACKLOG };

    let mock = MockKafka::start(3)?;
    let mut cfg = base.clone();
    // The embedder loads only when the stream carries images.
    cfg.embed.enabled = images;
    // A stream shorter than the calibration's warm-up would wait for faces that never come.
    cfg.calibration.warmup = cfg.calibration.warmup.min(n.max(2));
    cfg.kafka.bootstrap_servers = mock.bootstrap_servers().to_string();
    let (faces_topic, events_topic, dlq_topic) = ("faces", "face-events", "faces-dlq");
    let commands_topic = "face-commands";
    cfg.kafka.input_topics = vec![faces_topic.to_string()];
    cfg.kafka.commands_topic = commands_topic.to_string();
    cfg.kafka.events_topic = events_topic.to_string();
    cfg.kafka.dead_letter_topic = dlq_topic.to_string();
    cfg.kafka.group_id = "clip-cluster-demo".to_string();
    let state_dir = tempfile_dir()?;
    cfg.store.path = state_dir.join("state");
    cfg.admin.listen = "127.0.0.1:0".to_string();
    // After the stream, --serve keeps the daemon and its API up (at api.listen, with a token
    // made up for this run when none is configured); without it the stream ends the run before
    // anyone could query the API, so it is not started.
    let api_line = if serve {
        cfg.api.enabled = true;
        cfg.api.listen = resolve_port(&cfg.api.listen)?;
        if cfg.api.token.is_empty() && cfg.api.token_file.is_empty() {
            cfg.api.token = made_up_token();
        }
        let token = crate::api::Access::from_config(&cfg.api)
            .map_err(anyhow::Error::msg)?
            .token
            .unwrap_or_default();
        Some(format!(
            "api: http://{} token: {token}\nreview page: http://{}/ui (it asks for the token once)",
            cfg.api.listen, cfg.api.listen
        ))
    } else {
        cfg.api.enabled = false;
        None
    };
    // librdkafka's mock keeps at most 5 MB per partition, so a backlog is spread over partitions
    // and the feed below is paced to stay well inside that.
    mock.create_topic(faces_topic, FACES_PARTITIONS)?;
    mock.create_topic(events_topic, 3)?;
    mock.create_topic(dlq_topic, 1)?;
    mock.create_topic(commands_topic, 1)?;
    eprintln!(
        "mock Kafka cluster at {} (topics {faces_topic}, {events_topic}, {dlq_topic}, {commands_topic}); read the events meanwhile with e.g.\n  kcat -b {} -t {events_topic} -C",
        mock.bootstrap_servers(),
        mock.bootstrap_servers()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bad = bad_messages(dim);
    let total = (n + bad.len()) as u64;
    eprintln!(
        "streaming {n} faces and {} bad messages into {faces_topic}",
        bad.len()
    );
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} messages {per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let stream_done = std::sync::OnceLock::new();
    let stream_end = &stream_done;
    let m = metrics.clone();
    let progress = bar.clone();
    let feed_metrics = metrics.clone();
    let feed_cfg = cfg.clone();
    let summary = rt.block_on(async move {
        let daemon = crate::pipeline::run(cfg.clone(), m.clone(), stop_rx);
        // The stream: faces published as the daemon runs, never far ahead of it.
        let feed = async move {
            let producer: FutureProducer = crate::pipeline::producer(&feed_cfg.kafka)?;
            let mut pending = Vec::new();
            let feed_start = Instant::now();
            for i in 0..n {
                if let Some(r) = rate {
                    let due = feed_start + Duration::from_secs_f64(i as f64 / r);
                    tokio::time::sleep_until(due.into()).await;
                }
                while i as u64
                    > feed_metrics.faces_applied.get()
                        + feed_metrics.faces_duplicate.get()
                        + feed_metrics.dead_letters.get()
                        + backlog
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let id = format!("face-{i}");
                let meta = FaceMeta {
                    source_id: Some(format!("camera-{}", i % 7)),
                    image_id: Some(format!("photo-{}", i / 2)),
                    ts: Some(1_700_000_000_000 + i as i64),
                    quality: None,
                    ..Default::default()
                };
                let payload = rows.payload(i, &id, &meta)?;
                pending.push(send(&producer, faces_topic, &id, &payload).await?);
                if i == n / 2 {
                    for (what, bytes) in &bad {
                        pending.push(send(&producer, faces_topic, what, bytes).await?);
                    }
                }
            }
            if n == 0 {
                for (what, bytes) in &bad {
                    pending.push(send(&producer, faces_topic, what, bytes).await?);
                }
            }
            for p in pending {
                p.await
                    .map_err(|_| anyhow::anyhow!("producer dropped a message"))?
                    .map_err(|(e, _)| anyhow::anyhow!("publishing faces: {e}"))?;
            }
            producer.flush(Duration::from_secs(10))?;
            anyhow::Ok(())
        };
        let watcher = async {
            let mut last = (0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let done = m.faces_applied.get() + m.faces_duplicate.get() + m.dead_letters.get();
                progress.set_position(done);
                progress.set_message(format!(
                    "{} clusters, {} events out",
                    m.clusters.get(),
                    m.events_total()
                ));
                if done >= total && m.outbox_depth.get() == 0 {
                    let _ = stream_end.set(Instant::now());
                    if let Some(line) = &api_line {
                        progress.suspend(|| {
                            eprintln!("{line}");
                            eprintln!("stream done; serving the API until SIGTERM or Ctrl-C");
                        });
                        wait_for_signal().await;
                    }
                    break;
                }
                if done != last.0 {
                    last = (done, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(120) {
                    eprintln!("no progress for 120 s; stopping");
                    break;
                }
            }
            let _ = stop_tx.send(true);
        };
        let (r, fed, ()) = tokio::join!(daemon, feed, watcher);
        fed?;
        anyhow::Ok(r?)
    })?;
    // The stream's time, without the serving after it.
    let seconds = stream_done
        .get()
        .map_or_else(|| start.elapsed(), |t| t.duration_since(start))
        .as_secs_f64();
    bar.finish_and_clear();

    // Score from the durable state, the way a consumer of the events would see it.
    let state = Clusterer::open(&Config {
        store: crate::config::StoreConfig {
            path: state_dir.join("state"),
            cache_bytes: base.store.cache_bytes,
        },
        ..base.clone()
    })?;
    let engine = state.engine();
    let mut predicted = Vec::with_capacity(n);
    for i in 0..n {
        predicted.push(
            engine
                .seq_of(&format!("face-{i}"))
                .map(|s| engine.cluster_of(s)),
        );
    }
    let scores = evaluate(&labels[..n], &predicted);
    let report = DemoReport {
        n_faces: engine.n_faces(),
        n_clusters: engine.n_clusters(),
        merges: metrics.merges.get(),
        splits: metrics.splits.get(),
        dead_letters: summary.dead_letters,
        events: summary.events,
        seconds,
        faces_per_second: summary.applied as f64 / seconds.max(1e-9),
        pairwise: Some(scores.pairwise),
        bcubed: Some(scores.bcubed),
        nmi: Some(scores.nmi),
        face_to_event_p50_ms: rate
            .and_then(|_| histogram_quantile(&metrics.face_to_event, 0.5))
            .map(|s| s * 1e3),
        face_to_event_p99_ms: rate
            .and_then(|_| histogram_quantile(&metrics.face_to_event, 0.99))
            .map(|s| s * 1e3),
    };
    drop(state);
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(report)
}

/// `addr` with port 0 replaced by a free port, so that the address printed is the one served.
fn resolve_port(addr: &str) -> anyhow::Result<String> {
    let a: std::net::SocketAddr = addr.parse()?;
    if a.port() != 0 {
        return Ok(addr.to_string());
    }
    let l = std::net::TcpListener::bind(a)?;
    Ok(l.local_addr()?.to_string())
}

/// 32 hex digits from the OS's randomness.
fn made_up_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    let record = FutureRecord::to(topic).key(key).payload(payload);
    crate::pipeline::queue_send(producer, record)
        .await
        .map_err(|e| anyhow::anyhow!("publishing to {topic}: {e}"))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "clip-cluster-demo-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, requires = "labels", conflicts_with = "faces")]
    pub features: Option<PathBuf>,
    /// Face images, one folder per identity, or an LFW root (e.g. ../shared/data/lfw): streamed
    /// as image messages that the daemon embeds (about 25 faces/s on 2 CPU cores; use --limit).
    #[arg(long)]
    pub faces: Option<PathBuf>,
    #[arg(long, requires = "features")]
    pub labels: Option<PathBuf>,
    /// Stream at most this many faces.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Publish at this many faces per second (default: as fast as the daemon takes them);
    /// the report then includes face-to-event latency p50/p99.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Faces of the synthetic stream used without --features.
    #[arg(long, default_value_t = 20_000)]
    pub synthetic: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// After the stream, keep the daemon and its API up until SIGTERM or Ctrl-C (stderr prints
    /// `api: http://ADDR token: TOKEN`, `review page: http://ADDR/ui`, then a line saying it is
    /// serving).
    #[arg(long)]
    pub serve: bool,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args {
        features,
        faces,
        labels,
        limit,
        rate,
        synthetic,
        seed,
        json,
        serve,
    } = args;
    let mut cfg = Config::load(config)?;
    if features.is_none() && faces.is_none() {
        for c in cfg.use_synthetic_settings() {
            eprintln!("synthetic faces: {c}");
        }
    }
    let input = match (features, labels, faces) {
        (_, _, Some(dir)) => crate::cli::demo::DemoInput::Images { dir },
        (Some(bin), Some(meta), None) => crate::cli::demo::DemoInput::Features { bin, meta },
        _ => crate::cli::demo::DemoInput::Synthetic { n: synthetic, seed },
    };
    let r = crate::cli::demo::run(&cfg, input, limit, rate, json, serve)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} faces -> {} clusters ({} merges, {} splits), {} dead letters, {} events in {:.2} s ({:.0} faces/s)",
            r.n_faces, r.n_clusters, r.merges, r.splits, r.dead_letters, r.events, r.seconds, r.faces_per_second
        );
        if let (Some(p50), Some(p99)) = (r.face_to_event_p50_ms, r.face_to_event_p99_ms) {
            println!("face-to-event latency p50 {p50:.1} ms, p99 {p99:.1} ms");
        }
        if let (Some(p), Some(b), Some(nmi)) = (r.pairwise, r.bcubed, r.nmi) {
            println!(
                "pairwise F {:.4} (P {:.4} R {:.4}), BCubed F {:.4} (P {:.4} R {:.4}), NMI {:.4}",
                p.f, p.precision, p.recall, b.f, b.precision, b.recall, nmi
            );
        }
    }
    Ok(())
}
