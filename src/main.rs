//! The `clip-cluster` command line: parses arguments, resolves configuration, and hands off to
//! the library. Errors reach the user here, with what to do about them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use clip_cluster::config::Config;
use clip_cluster::eval::{Algorithm, EvalSettings, Order};
use clip_cluster::features::{check_counts, read_features, read_labels, Features};

#[derive(Parser)]
#[command(
    name = "clip-cluster",
    version,
    about = "Streaming face clustering by identity"
)]
struct Cli {
    /// Configuration file (overrides config/default.toml; environment overrides both).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Labelled learn-to-cluster files, as `train` and `calibrate` read them.
#[derive(clap::Args)]
struct LabeledFeatures {
    /// Raw little-endian f32 rows.
    #[arg(long)]
    features: PathBuf,
    /// One integer label per line, line i = row i.
    #[arg(long)]
    labels: PathBuf,
    /// Row width of --features (default: model.dim).
    #[arg(long)]
    dim: Option<usize>,
}

impl LabeledFeatures {
    /// The rows (normalized) and labels, checked to describe the same faces.
    fn read(&self, default_dim: usize) -> anyhow::Result<(Features, Vec<i64>)> {
        let feats = read_features(&self.features, self.dim.unwrap_or(default_dim))?;
        let labs = read_labels(&self.labels)?;
        check_counts(&feats, &labs, &self.features, &self.labels)?;
        Ok((feats, labs))
    }
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: consume faces from Kafka, cluster them durably, emit events. Stops cleanly on
    /// SIGTERM or SIGINT.
    Run {
        /// all | cluster | embed (overrides daemon.role).
        #[arg(long)]
        role: Option<String>,
    },
    /// The embedded default: an in-process mock Kafka cluster, a stream of faces, the daemon, and
    /// a summary. Without --features or --faces it streams seeded synthetic faces.
    Demo {
        #[arg(long, requires = "labels", conflicts_with = "faces")]
        features: Option<PathBuf>,
        /// Face images, one folder per identity, or an LFW root (e.g. ../shared/data/lfw): streamed
        /// as image messages that the daemon embeds (about 25 faces/s on 2 CPU cores; use --limit).
        #[arg(long)]
        faces: Option<PathBuf>,
        #[arg(long, requires = "features")]
        labels: Option<PathBuf>,
        /// Stream at most this many faces.
        #[arg(long)]
        limit: Option<usize>,
        /// Publish at this many faces per second (default: as fast as the daemon takes them);
        /// the report then includes face-to-event latency p50/p99.
        #[arg(long)]
        rate: Option<f64>,
        /// Faces of the synthetic stream used without --features.
        #[arg(long, default_value_t = 20_000)]
        synthetic: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print exactly one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Publishes faces to a topic: a features file or synthetic vectors as embedding messages,
    /// or a directory of images (<identity>/<image>) as raw image messages with headers.
    Produce {
        #[arg(long)]
        brokers: String,
        #[arg(long, default_value = "faces")]
        topic: String,
        #[arg(long, conflicts_with = "faces")]
        features: Option<PathBuf>,
        /// A directory of face images, one folder per identity.
        #[arg(long)]
        faces: Option<PathBuf>,
        #[arg(long, default_value_t = 10_000)]
        synthetic: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Prefix of the generated face ids (face_id = <prefix><row>).
        #[arg(long, default_value = "face-")]
        id_prefix: String,
    },
    /// Clusters labeled vectors with one algorithm and scores it (pairwise F, BCubed F, NMI).
    /// Without --features it runs on a seeded synthetic data set of 20,000 faces.
    Eval {
        /// learn-to-cluster features: raw little-endian f32 rows, no header.
        #[arg(long, requires = "labels", conflicts_with = "faces")]
        features: Option<PathBuf>,
        /// A directory of face images (<identity>/<image>, or an LFW root): embedded with the
        /// configured embedder first, then clustered and scored (end to end).
        #[arg(long)]
        faces: Option<PathBuf>,
        /// Keep only the identities listed in this file (LFW people format, e.g.
        /// peopleDevTest.txt). With --features the identities come from the names file
        /// `<labels>.names` that `embed` writes.
        #[arg(long)]
        people: Option<PathBuf>,
        /// One integer identity label per line, one line per feature row.
        #[arg(long, requires = "features")]
        labels: Option<PathBuf>,
        /// Row width of --features (default: model.dim of the configuration).
        #[arg(long)]
        dim: Option<usize>,
        #[arg(long, value_enum, default_value = "stream")]
        algorithm: Algorithm,
        /// Edge rule as a cosine similarity (default: the algorithm's stock value).
        #[arg(long, allow_negative_numbers = true)]
        threshold: Option<f32>,
        /// Neighbour count (default: the algorithm's stock value).
        #[arg(long)]
        k: Option<usize>,
        #[arg(long, value_enum, default_value = "input")]
        order: Order,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Faces of the synthetic data set used without --features.
        #[arg(long, default_value_t = 20_000)]
        synthetic: usize,
        /// Hallucinated variants made upstream for each face of --features (raw f32 rows of
        /// `--variants` vectors of the features' width, row i = face i; `hallucinate` writes
        /// them): candidates of the neighbour proxy beside the learned directions.
        #[arg(long, requires = "features")]
        hallucinated: Option<PathBuf>,
        /// Vectors per row of --hallucinated.
        #[arg(long, default_value_t = 5)]
        variants: usize,
        /// Each face's quality score, one number per line, line i = row i of --features
        /// (`embed --quality-out` writes it; -1 = unknown); faces below quality.min_score are
        /// weak (assigned by one edge; other links only when near-certain).
        #[arg(long, requires = "features", conflicts_with = "people")]
        quality: Option<PathBuf>,
        /// With `--algorithm stream`: write the final graph, one line per face in stream order:
        /// `<row> <label> <weak 0|1> <to>:<score>:<kept 0|1> ...` (out-list in rank order), for
        /// studying cluster rules offline.
        #[arg(long)]
        graph_out: Option<PathBuf>,
        /// Print exactly one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Embeds a directory of face images (<identity>/<image>, or an LFW root) with the configured
    /// embedder into learn-to-cluster files: --out rows, --labels-out labels, and a names file
    /// (line i = identity of label i).
    Embed {
        #[arg(long)]
        faces: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        labels_out: PathBuf,
        /// Names file (default: <labels-out>.names).
        #[arg(long)]
        names_out: Option<PathBuf>,
        /// Keep only the identities listed in this file (LFW people format: "name count" lines),
        /// e.g. peopleDevTest.txt.
        #[arg(long)]
        people: Option<PathBuf>,
        /// Embed at most this many images (in listing order).
        #[arg(long)]
        limit: Option<usize>,
        /// Override embed.chip: aligned | centre.
        #[arg(long)]
        chip: Option<String>,
        /// Also write each embedded face's CLIP image embedding (row i = row i of --out), the
        /// input of `train --clip-features`; needs [clip] weights.
        #[arg(long)]
        clip_out: Option<PathBuf>,
        /// Also write each embedded face's quality score (src/quality.rs), one per line, line i
        /// = row i of --out: the input of `eval --quality`.
        #[arg(long)]
        quality_out: Option<PathBuf>,
    },
    /// The standard LFW verification protocol on pairs.txt: 10 folds, the Euclidean threshold
    /// chosen on nine and tested on the tenth; mean and standard deviation of the accuracy.
    Verify {
        /// LFW root (holding images/ and pairs.txt); default: $CLIP_CLUSTER_LFW or ../shared/data/lfw.
        #[arg(long)]
        lfw: Option<PathBuf>,
        /// Override embed.chip: aligned | centre.
        #[arg(long)]
        chip: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Learns from identity-labeled features: the proxy's hallucination directions (the leading
    /// eigenvectors of the within-identity scatter; --out, for proxy.directions_path) and the edge
    /// head (a pair classifier trained with candle-nn; --edge-out, for edge.weights_path), each as
    /// safetensors. Seeded and deterministic: the same input and seed give the same files.
    Train {
        /// The training identities' features and labels (e.g. `embed --people peopleDevTrain.txt`).
        #[command(flatten)]
        input: LabeledFeatures,
        /// Directions to keep.
        #[arg(long, default_value_t = 16)]
        directions: usize,
        /// Keep only these identities (LFW people format, e.g. peopleDevTrain.txt; names from
        /// `<labels>.names`).
        #[arg(long)]
        people: Option<PathBuf>,
        /// Where to write the directions.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where to write the edge head (trains it).
        #[arg(long)]
        edge_out: Option<PathBuf>,
        /// Where to write the proxy's trained attention W_q, W_k (trains it for the configured
        /// [proxy] settings, with the directions of --out when given, else proxy.directions_path).
        #[arg(long)]
        attention_out: Option<PathBuf>,
        /// Attention: passes over the training faces.
        #[arg(long, default_value_t = 15)]
        attention_epochs: usize,
        /// Attention: the cosine threshold of the edge decision its loss trains for (the
        /// engine.t1 of the cosine scorer the attention is meant to run with).
        #[arg(long, default_value_t = 0.95)]
        attention_t1: f32,
        /// CLIP image embeddings of the same faces (row i = face i of --features; raw f32 rows),
        /// for the mapper H.
        #[arg(long)]
        clip_features: Option<PathBuf>,
        /// Row width of --clip-features (ViT-B/32: 512).
        #[arg(long, default_value_t = 512)]
        clip_dim: usize,
        /// Where to write the mapper H (trains it; needs --clip-features).
        #[arg(long)]
        mapper_out: Option<PathBuf>,
        /// Edge head: candidate edges per face (its nearest neighbours).
        #[arg(long, default_value_t = 10)]
        edge_k: usize,
        /// Edge head: hidden units.
        #[arg(long, default_value_t = 16)]
        edge_hidden: usize,
        /// Edge head: passes over the training pairs.
        #[arg(long, default_value_t = 40)]
        edge_epochs: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Hallucinates each face's attribute variants in identity space from its identity vector and
    /// CLIP image embedding: f_a = norm(f + H([f ; c_a - c])), c_a = norm(c + lambda_a d_a), with
    /// the text directions of [clip] (weights, vocabulary, prompts) and the mapper H of
    /// `train --mapper-out`. Writes one row of (attributes x dim) values per face, for
    /// `eval --hallucinated`.
    Hallucinate {
        #[arg(long)]
        features: PathBuf,
        /// CLIP image embeddings of the same faces (`embed --clip-out`).
        #[arg(long)]
        clip_features: PathBuf,
        /// Row width of --clip-features.
        #[arg(long, default_value_t = 512)]
        clip_dim: usize,
        #[arg(long)]
        mapper: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fits the stream to another embedding model from a labelled sample of the user's own faces:
    /// the cosine threshold with the best BCubed F on the sample and the space's profile, written
    /// as a configuration file to give with --config.
    Calibrate {
        #[command(flatten)]
        input: LabeledFeatures,
        /// Where the configuration fragment goes.
        #[arg(long)]
        out: PathBuf,
        /// Also write the sample's profile (centroid, median pair cosine, spread) as a
        /// calibration reference (`calibration.reference_path`): streams that match it are
        /// this space.
        #[arg(long)]
        reference_out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Order::Shuffled)]
        order: Order,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Writes seeded synthetic identities in learn-to-cluster format (.bin rows + .meta labels).
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        labels_out: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        n: usize,
        #[arg(long, default_value_t = 128)]
        dim: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The identity network's faces/s at each batch size and dtype on a device, and its parity
    /// with the CPU in f32 (max |diff|, min cosine), on seeded synthetic chips. Made for the GPU
    /// machine (no Rust there): e.g. `bench-embed --device cuda:0 --dtype f32,bf16 --batch
    /// 64,512,2048`.
    BenchEmbed {
        /// "cpu", "cuda" or "cuda:N".
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Comma-separated: f32, bf16, f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Comma-separated batch sizes.
        #[arg(long, default_value = "64,512,2048")]
        batch: String,
        /// Timed passes per cell (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iterations: usize,
        /// dlib's network file (default: embed.model_path).
        #[arg(long)]
        model: Option<PathBuf>,
        /// One JSON object per cell on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Insert benchmark with durable state (throughput, growth, memory per face).
    Bench {
        #[arg(long, default_value_t = 100_000)]
        faces: usize,
        #[arg(long, default_value_t = 128)]
        dim: usize,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Faces measured at the end of each checkpoint (10K, 100K, 1M, and the end).
        #[arg(long, default_value_t = 5000)]
        window: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Dlib-like vectors: each face a seeded random row of this features file (real vectors,
        /// e.g. LFW embedded by `embed`) plus noise (cosine ~0.99 to its row). Without it, the
        /// seeded synthetic generator.
        #[arg(long)]
        features: Option<PathBuf>,
        /// Run the synthetic generator's calibrated settings (cosine, identity proxy, its t1, k and
        /// t2) instead of the shipped default configuration.
        #[arg(long, conflicts_with = "features")]
        synthetic_settings: bool,
        /// State directory (must not exist; removed afterwards unless --keep).
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    use std::io::IsTerminal;
    // hnsw_rs logs every dump and load at INFO: only its warnings unless RUST_LOG asks. Colour
    // only on a terminal, never in a file or a pipe.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hnsw_rs=warn")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { role } => {
            let mut env: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| k.starts_with(clip_cluster::config::ENV_PREFIX))
                .collect();
            if let Some(r) = role {
                env.push(("CLIP_CLUSTER__DAEMON__ROLE".into(), format!("\"{r}\"")));
            }
            let cfg = Config::load_from(cli.config.as_deref(), &env)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let summary = rt.block_on(async move {
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("signal received; finishing the batch and shutting down");
                    let _ = stop_tx.send(true);
                });
                clip_cluster::pipeline::run(cfg, clip_cluster::telemetry::Metrics::new(), stop_rx)
                    .await
            })?;
            tracing::info!(
                consumed = summary.consumed,
                applied = summary.applied,
                dead_letters = summary.dead_letters,
                outbox_left = summary.outbox_left,
                "stopped"
            );
            Ok(())
        }
        Command::Demo {
            features,
            faces,
            labels,
            limit,
            rate,
            synthetic,
            seed,
            json,
        } => {
            let mut cfg = Config::load(cli.config.as_deref())?;
            if features.is_none() && faces.is_none() {
                for c in cfg.use_synthetic_settings() {
                    eprintln!("synthetic faces: {c}");
                }
            }
            let input = match (features, labels, faces) {
                (_, _, Some(dir)) => clip_cluster::demo::DemoInput::Images { dir },
                (Some(bin), Some(meta), None) => {
                    clip_cluster::demo::DemoInput::Features { bin, meta }
                }
                _ => clip_cluster::demo::DemoInput::Synthetic { n: synthetic, seed },
            };
            let r = clip_cluster::demo::run(&cfg, input, limit, rate, json)?;
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
        Command::Produce {
            brokers,
            topic,
            features,
            faces,
            synthetic,
            seed,
            id_prefix,
        } => {
            let mut env: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| k.starts_with(clip_cluster::config::ENV_PREFIX))
                .collect();
            env.push(("CLIP_CLUSTER__KAFKA__BOOTSTRAP_SERVERS".into(), brokers));
            let cfg = Config::load_from(cli.config.as_deref(), &env)?;
            if let Some(dir) = faces {
                let n = clip_cluster::produce::publish_images(&cfg, &topic, &dir)?;
                eprintln!("published {n} images from {} to {topic}", dir.display());
                return Ok(());
            }
            let feats =
                match features {
                    Some(f) => read_features(&f, cfg.model.dim)?,
                    None => {
                        let s = clip_cluster::synth::generate(
                            clip_cluster::synth::SynthParams::new(synthetic, cfg.model.dim, seed),
                        );
                        Features {
                            dim: s.dim,
                            data: s.data,
                        }
                    }
                };
            let n = clip_cluster::produce::publish(&cfg, &topic, &feats, &id_prefix)?;
            eprintln!("published {n} faces to {topic}");
            Ok(())
        }
        Command::Eval {
            features,
            faces,
            people,
            labels,
            dim,
            algorithm,
            threshold,
            k,
            order,
            seed,
            synthetic,
            json,
            hallucinated,
            variants,
            quality,
            graph_out,
        } => {
            let mut env: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| k.starts_with(clip_cluster::config::ENV_PREFIX))
                .collect();
            let synthetic_input = features.is_none() && faces.is_none();
            let mut variant_rows = None;
            let mut quality_rows = None;
            let (feats, labs) = match (features, labels, faces) {
                (_, _, Some(dir)) => {
                    let base = Config::load_from(cli.config.as_deref(), &env)?;
                    let e = embed_dir(&base, &dir, people.as_deref(), None)?;
                    (e.features, e.labels)
                }
                (Some(f), Some(l), None) => {
                    let base = Config::load_from(cli.config.as_deref(), &env)?;
                    let d = dim.unwrap_or(base.model.dim);
                    let feats = read_features(&f, d)?;
                    let labs = read_labels(&l)?;
                    check_counts(&feats, &labs, &f, &l)?;
                    let side = match &hallucinated {
                        Some(h) => Some(read_features(h, variants * d)?),
                        None => None,
                    };
                    if let Some(q) = &quality {
                        let scores = clip_cluster::features::read_scores(q)?;
                        anyhow::ensure!(
                            scores.len() == feats.n(),
                            "{} holds {} quality scores for {} faces in {}",
                            q.display(),
                            scores.len(),
                            feats.n(),
                            f.display()
                        );
                        quality_rows = Some(scores);
                    }
                    let (feats, labs, side) =
                        only_people_with(feats, side, labs, &l, people.as_deref())?;
                    variant_rows = side;
                    (feats, labs)
                }
                _ => {
                    let d = dim.unwrap_or(128);
                    eprintln!("no --features given: evaluating on {synthetic} seeded synthetic faces ({d}-D)");
                    let s = clip_cluster::synth::generate(clip_cluster::synth::SynthParams::new(
                        synthetic, d, seed,
                    ));
                    (
                        Features {
                            dim: d,
                            data: s.data,
                        },
                        s.labels,
                    )
                }
            };
            env.push((
                "CLIP_CLUSTER__MODEL__DIM".to_string(),
                feats.dim.to_string(),
            ));
            let mut cfg = Config::load_from(cli.config.as_deref(), &env)?;
            if synthetic_input {
                for c in cfg.use_synthetic_settings() {
                    eprintln!("synthetic faces: {c}");
                }
            }
            let settings = EvalSettings {
                algorithm,
                threshold,
                k,
                order,
                seed,
                variants: variant_rows,
                quality: quality_rows,
                graph_out,
            };
            let report = clip_cluster::eval::run(&cfg, &feats, &labs, settings, &|i, n| {
                if !json || i == n {
                    eprint!("\r  {i}/{n} faces");
                }
                if i == n {
                    eprintln!();
                }
            })?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{}: {} faces -> {} clusters\n  pairwise  P {:.4} R {:.4} F {:.4}\n  BCubed    P {:.4} R {:.4} F {:.4}\n  NMI {:.4}\n  {:.2} s, {:.0} faces/s",
                    report.algorithm,
                    report.n_faces,
                    report.n_clusters,
                    report.pairwise.precision,
                    report.pairwise.recall,
                    report.pairwise.f,
                    report.bcubed.precision,
                    report.bcubed.recall,
                    report.bcubed.f,
                    report.nmi,
                    report.seconds,
                    report.faces_per_second
                );
            }
            Ok(())
        }
        Command::Embed {
            faces,
            out,
            labels_out,
            names_out,
            people,
            limit,
            chip,
            clip_out,
            quality_out,
        } => {
            let cfg = config_with_chip(cli.config.as_deref(), chip)?;
            // CLIP is loaded (and its files checked) before the long embedding run.
            let clip = match &clip_out {
                Some(_) => Some(clip_cluster::clip::from_config(&cfg.clip)?.context(
                    "--clip-out needs CLIP weights: set clip.weights (CLIP_CLUSTER__CLIP__WEIGHTS)",
                )?),
                None => None,
            };
            let e = embed_dir(&cfg, &faces, people.as_deref(), limit)?;
            if let (Some(path), Some((clip, _))) = (&clip_out, &clip) {
                let limits = clip_cluster::decode::DecodeLimits::default();
                let mut data = Vec::new();
                let mut dim = 0;
                let bar = progress_bar(false);
                bar.set_length(e.paths.len() as u64);
                for part in e.paths.chunks(64) {
                    let mut images = Vec::with_capacity(part.len());
                    for p in part {
                        let bytes =
                            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                        // These images already decoded once for the identity vectors.
                        let rgb = clip_cluster::decode::decode(&bytes, &limits)
                            .with_context(|| format!("decoding {}", p.display()))?;
                        images.push(
                            image::RgbImage::from_raw(
                                rgb.width as u32,
                                rgb.height as u32,
                                rgb.pixels,
                            )
                            .context("decoded image of inconsistent size")?,
                        );
                    }
                    for row in clip.encode_images(&images)? {
                        dim = row.len();
                        data.extend_from_slice(&row);
                    }
                    bar.inc(part.len() as u64);
                }
                bar.finish_and_clear();
                clip_cluster::features::write_features(path, &Features { dim, data })?;
                eprintln!(
                    "wrote {} CLIP embeddings ({dim}-D) to {}",
                    e.paths.len(),
                    path.display()
                );
            }
            clip_cluster::features::write_features(&out, &e.features)?;
            clip_cluster::features::write_labels(&labels_out, &e.labels)?;
            if let Some(q) = &quality_out {
                clip_cluster::features::write_scores(q, &e.quality)?;
            }
            let names = names_out.unwrap_or_else(|| {
                let mut p = labels_out.clone().into_os_string();
                p.push(".names");
                PathBuf::from(p)
            });
            clip_cluster::dataset::write_names(&names, &e.names)?;
            eprintln!(
                "wrote {} rows ({}-D) to {}, labels to {}, {} identities to {}; rejected {:?}; {:.1} s, {:.1} faces/s",
                e.labels.len(),
                e.features.dim,
                out.display(),
                labels_out.display(),
                e.names.len(),
                names.display(),
                e.rejected,
                e.seconds,
                e.labels.len() as f64 / e.seconds.max(1e-9)
            );
            Ok(())
        }
        Command::Verify { lfw, chip, json } => {
            let cfg = config_with_chip(cli.config.as_deref(), chip)?;
            let root = clip_cluster::lfw::locate(lfw.as_deref())?;
            let embedder = clip_cluster::embed::DlibEmbedder::from_config(&cfg)?;
            let bar = progress_bar(json);
            let report = clip_cluster::lfw::verify(&root, &embedder, 256, &|i, n| {
                bar.set_length(n as u64);
                bar.set_position(i as u64);
            })?;
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "LFW pairs ({} pairs, {} images, {}): accuracy {:.2}% +- {:.2}% (10-fold; {:.2}% +- {:.2}% on L2-normalized vectors)\n  mean distance same {:.4}, different {:.4}; rejected {:?}\n  embedding {:.1} s, {:.1} faces/s",
                    report.n_pairs,
                    report.n_images,
                    report.model_id,
                    100.0 * report.mean_accuracy,
                    100.0 * report.std_accuracy,
                    100.0 * report.normalized_mean_accuracy,
                    100.0 * report.normalized_std_accuracy,
                    report.mean_same_distance,
                    report.mean_different_distance,
                    report.rejected,
                    report.seconds,
                    report.faces_per_second
                );
            }
            Ok(())
        }
        Command::Train {
            input,
            directions,
            people,
            out,
            edge_out,
            edge_k,
            edge_hidden,
            edge_epochs,
            attention_out,
            attention_epochs,
            attention_t1,
            clip_features,
            clip_dim,
            mapper_out,
            seed,
        } => {
            anyhow::ensure!(
                out.is_some() || edge_out.is_some() || attention_out.is_some() || mapper_out.is_some(),
                "nothing to train: give --out (directions), --edge-out (edge head), --attention-out (proxy attention) and/or --mapper-out (CLIP mapper H)"
            );
            anyhow::ensure!(
                mapper_out.is_none() || clip_features.is_some(),
                "--mapper-out needs --clip-features (CLIP image embeddings of the same faces)"
            );
            let cfg = Config::load(cli.config.as_deref())?;
            let (feats, labs) = input.read(cfg.model.dim)?;
            let LabeledFeatures {
                features, labels, ..
            } = input;
            let clip_rows = match &clip_features {
                Some(path) => {
                    let c = read_features(path, clip_dim)?;
                    anyhow::ensure!(
                        c.n() == feats.n(),
                        "{} holds {} CLIP rows of {clip_dim} values but {} holds {} faces: one row per face, same order",
                        path.display(),
                        c.n(),
                        features.display(),
                        feats.n()
                    );
                    Some(c)
                }
                None => None,
            };
            let (feats, labs, clip_rows) =
                only_people_with(feats, clip_rows, labs, &labels, people.as_deref())?;
            let n_ids = labs.iter().collect::<std::collections::BTreeSet<_>>().len();
            if let Some(edge_out) = &edge_out {
                let opts = clip_cluster::edge::EdgeTraining {
                    k: edge_k,
                    hidden: edge_hidden,
                    epochs: edge_epochs,
                    seed,
                    ..Default::default()
                };
                eprintln!(
                    "training the edge head on the {edge_k} nearest neighbours of {} faces of {n_ids} identities ({:.0}% of identities held out)",
                    feats.n(),
                    opts.holdout * 100.0
                );
                let (head, last) = clip_cluster::edge::train(&feats, &labs, &opts, &mut |r| {
                    eprintln!(
                            "epoch {:>3}/{edge_epochs}: train loss {:.4}, held-out loss {:.4}, held-out accuracy {:.4} (cosine: {:.4}; each at its best threshold)",
                            r.epoch, r.train_loss, r.holdout_loss, r.holdout_accuracy, r.holdout_cosine_accuracy
                        )
                })?;
                head.save(edge_out)?;
                eprintln!(
                    "wrote {} (hidden {}, held-out accuracy {:.4} vs cosine {:.4})",
                    edge_out.display(),
                    head.hidden,
                    last.holdout_accuracy,
                    last.holdout_cosine_accuracy
                );
            }
            if let Some(out) = &out {
                eprintln!(
                    "learning {directions} directions from {} faces of {n_ids} identities",
                    feats.n()
                );
                let d = clip_cluster::proxy::Directions::learn(&feats, &labs, directions)?;
                d.save(out)?;
                let total: f32 = d.sigmas.iter().map(|s| s * s).sum();
                eprintln!(
                    "wrote {} ({} directions; within-identity std along each: {})",
                    out.display(),
                    d.count(),
                    d.sigmas
                        .iter()
                        .map(|s| format!("{s:.4}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                eprintln!("variance along them: {total:.5}");
            }
            if let (Some(h_out), Some(c)) = (&mapper_out, &clip_rows) {
                let opts = clip_cluster::hallucinate::MapperTraining {
                    seed,
                    ..Default::default()
                };
                eprintln!(
                    "training the CLIP mapper H on same-identity pairs of {} faces of {n_ids} identities ({} identity + {clip_dim} CLIP values)",
                    feats.n(),
                    feats.dim
                );
                let (h, last) =
                    clip_cluster::hallucinate::train(&feats, c, &labs, &opts, &mut |r| {
                        eprintln!(
                        "epoch {:>3}/{}: train error {:.5}, held-out error {:.5} (H = 0: {:.5})",
                        r.epoch, opts.epochs, r.train_mse, r.holdout_mse, r.holdout_zero_mse
                    )
                    })?;
                h.save(h_out)?;
                eprintln!(
                    "wrote {} (held-out error {:.5} vs {:.5} for H = 0)",
                    h_out.display(),
                    last.holdout_mse,
                    last.holdout_zero_mse
                );
            }
            if let Some(att_out) = &attention_out {
                let mut c = cfg.clone();
                c.proxy.mode = clip_cluster::config::ProxyMode::Neighbor;
                c.proxy.attention_path = PathBuf::new();
                if let Some(out) = &out {
                    c.proxy.directions_path = out.clone();
                }
                let clip_cluster::proxy::ProxyModel::Neighbor(proxy) =
                    clip_cluster::clusterer::proxy_model(&c)?
                else {
                    anyhow::bail!("the neighbour proxy could not be configured");
                };
                let opts = clip_cluster::attention::AttentionTraining {
                    k: cfg.engine.search_k.min(10),
                    t1: attention_t1,
                    epochs: attention_epochs,
                    seed,
                    ..Default::default()
                };
                eprintln!(
                    "training the proxy attention on {} faces of {n_ids} identities (decision at t1 {}, {} directions, strength {}, T {})",
                    feats.n(),
                    opts.t1,
                    proxy.directions.as_ref().map_or(0, |d| d.count()),
                    proxy.strength,
                    proxy.temperature
                );
                let (att, last) = clip_cluster::attention::train(
                    &feats,
                    &labs,
                    &proxy,
                    &opts,
                    &mut |r| {
                        eprintln!(
                        "epoch {:>3}/{attention_epochs}: train loss {:.4}, held-out loss {:.4}, held-out edge accuracy {:.4} (W = I: {:.4})",
                        r.epoch, r.train_loss, r.holdout_loss, r.holdout_accuracy, r.holdout_identity_accuracy
                    )
                    },
                )?;
                att.save(att_out)?;
                eprintln!(
                    "wrote {} (held-out edge accuracy {:.4} vs {:.4} with W = I)",
                    att_out.display(),
                    last.holdout_accuracy,
                    last.holdout_identity_accuracy
                );
            }
            Ok(())
        }
        Command::Hallucinate {
            features,
            clip_features,
            clip_dim,
            mapper,
            out,
        } => {
            let cfg = Config::load(cli.config.as_deref())?;
            let (_, directions) = clip_cluster::clip::from_config(&cfg.clip)?.context(
                "hallucinate needs CLIP for the text directions: set clip.weights (CLIP_CLUSTER__CLIP__WEIGHTS)",
            )?;
            let f = clip_cluster::weights::unit_rows(&read_features(&features, cfg.model.dim)?);
            let c = clip_cluster::weights::unit_rows(&read_features(&clip_features, clip_dim)?);
            anyhow::ensure!(
                f.n() == c.n(),
                "{} faces in {} but {} CLIP rows in {}",
                f.n(),
                features.display(),
                c.n(),
                clip_features.display()
            );
            let h = clip_cluster::hallucinate::Hallucinator {
                directions,
                mapper: clip_cluster::hallucinate::Mapper::load(&mapper, f.dim, clip_dim)?,
            };
            let mut data = Vec::with_capacity(f.n() * f.dim * h.directions.len());
            for i in 0..f.n() {
                for v in h.variants(f.row(i), c.row(i))? {
                    data.extend_from_slice(&v);
                }
            }
            let width = f.dim * h.directions.len();
            clip_cluster::features::write_features(&out, &Features { dim: width, data })?;
            eprintln!(
                "wrote {} faces x {} variants ({}) to {}",
                f.n(),
                h.directions.len(),
                h.directions
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                out.display()
            );
            Ok(())
        }
        Command::BenchEmbed {
            device,
            dtype,
            batch,
            iterations,
            model,
            json,
        } => {
            let cfg = Config::load(cli.config.as_deref())?;
            let model = model.unwrap_or(cfg.embed.model_path.clone());
            let dtypes = dtype
                .split(',')
                .map(|d| {
                    clip_cluster::embed_bench::dtype_of(d.trim()).with_context(|| {
                        format!("--dtype {d}: want f32, bf16 or f16 (comma-separated)")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let batches = batch
                .split(',')
                .map(|b| {
                    b.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|b| (1..=65_536).contains(b))
                        .with_context(|| format!("--batch {b}: want sizes in 1..=65536"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::ensure!(iterations >= 1, "--iterations must be at least 1");
            clip_cluster::embed_bench::run(&model, &device, &dtypes, &batches, iterations, &mut |r| {
                if json {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                } else {
                    println!(
                        "{} {} batch {:>5}: {:>9.1} faces/s ({} x {:.3} s); vs CPU f32 over {} faces: max |diff| {:.2e}, min cosine {:.6}",
                        r.device,
                        r.dtype,
                        r.batch,
                        r.faces_per_second,
                        r.iterations,
                        r.seconds / r.iterations as f64,
                        r.parity_faces,
                        r.max_abs_diff_vs_cpu_f32,
                        r.min_cosine_vs_cpu_f32
                    );
                }
            })
            .map_err(anyhow::Error::msg)?;
            Ok(())
        }
        Command::Calibrate {
            input,
            out,
            reference_out,
            order,
            seed,
        } => {
            let mut cfg = Config::load(cli.config.as_deref())?;
            let (feats, labs) = input.read(cfg.model.dim)?;
            let features = input.features;
            cfg.model.dim = feats.dim;
            let fit = clip_cluster::eval::calibrate(&cfg, &feats, &labs, order, seed, &|t1, f| {
                eprintln!("  t1 {t1:.4}: BCubed F {f:.4}");
            })?;
            std::fs::write(&out, fit.to_toml(&features.display().to_string()))
                .with_context(|| format!("writing {}", out.display()))?;
            if let Some(r) = &reference_out {
                std::fs::write(r, serde_json::to_string_pretty(&fit.profile)? + "\n")
                    .with_context(|| format!("writing {}", r.display()))?;
            }
            eprintln!(
                "profile: median {:.4}, spread {:.4}; best t1 {:.4}: BCubed F {:.4} (P {:.4} R {:.4}), pairwise F {:.4}; wrote {}",
                fit.profile.median,
                fit.profile.spread,
                fit.t1,
                fit.best.bcubed.f,
                fit.best.bcubed.precision,
                fit.best.bcubed.recall,
                fit.best.pairwise.f,
                out.display()
            );
            Ok(())
        }
        Command::Generate {
            out,
            labels_out,
            n,
            dim,
            seed,
        } => {
            let s =
                clip_cluster::synth::generate(clip_cluster::synth::SynthParams::new(n, dim, seed));
            let bytes: Vec<u8> = s.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
            let labels: String = s.labels.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(&labels_out, labels)
                .with_context(|| format!("writing {}", labels_out.display()))?;
            eprintln!(
                "wrote {n} faces of {} identities",
                s.labels.iter().max().map_or(0, |m| m + 1)
            );
            Ok(())
        }
        Command::Bench {
            faces,
            dim,
            batch,
            window,
            seed,
            features,
            synthetic_settings,
            state,
            keep,
            json,
        } => {
            let tmp;
            let state = match state {
                Some(s) => s,
                None => {
                    tmp = tempfile_dir()?;
                    tmp.join("state")
                }
            };
            anyhow::ensure!(
                !state.exists(),
                "{} exists; the benchmark needs a fresh state directory",
                state.display()
            );
            let env: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| k.starts_with(clip_cluster::config::ENV_PREFIX))
                .chain([
                    ("CLIP_CLUSTER__MODEL__DIM".to_string(), dim.to_string()),
                    (
                        "CLIP_CLUSTER__STORE__PATH".to_string(),
                        state.display().to_string(),
                    ),
                    (
                        "CLIP_CLUSTER__INDEX__CAPACITY_HINT".to_string(),
                        faces.to_string(),
                    ),
                ])
                .collect();
            let mut cfg = Config::load_from(cli.config.as_deref(), &env)?;
            if synthetic_settings {
                for c in cfg.use_synthetic_settings() {
                    eprintln!("synthetic faces: {c}");
                }
            }
            let (data, vectors) = match &features {
                Some(f) => {
                    let base = clip_cluster::features::read_features(f, dim)?;
                    anyhow::ensure!(base.n() > 0, "{} holds no vectors", f.display());
                    let v = clip_cluster::bench::dlib_like(&base, faces, seed);
                    (Some(v), format!("dlib-like {}", f.display()))
                }
                None => (None, "synthetic".to_string()),
            };
            let step = (faces / 20).max(1);
            let report =
                clip_cluster::bench::run(&cfg, faces, batch, window, seed, data, &vectors, &|i| {
                    if i % step == 0 || i == faces {
                        eprintln!("  {i} faces");
                    }
                })?;
            if !keep {
                let _ = std::fs::remove_dir_all(&state);
            }
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(())
        }
    }
}

/// As `only_people`, keeping the matching rows of `side` (per-face rows of another width, e.g.
/// CLIP embeddings or hallucinated variants, row i = face i) in step.
fn only_people_with(
    feats: Features,
    side: Option<Features>,
    labs: Vec<i64>,
    labels_path: &std::path::Path,
    people: Option<&std::path::Path>,
) -> anyhow::Result<(Features, Vec<i64>, Option<Features>)> {
    let Some(people) = people else {
        return Ok((feats, labs, side));
    };
    let Some(side) = side else {
        let (f, l) = only_people(feats, labs, labels_path, people)?;
        return Ok((f, l, None));
    };
    let (d, e) = (feats.dim, side.dim);
    anyhow::ensure!(
        side.n() == feats.n(),
        "{} per-face rows of {e} values for {} faces",
        side.n(),
        feats.n()
    );
    let mut joined = Vec::with_capacity(feats.n() * (d + e));
    for i in 0..feats.n() {
        joined.extend_from_slice(feats.row(i));
        joined.extend_from_slice(side.row(i));
    }
    let (j, l) = only_people(
        Features {
            dim: d + e,
            data: joined,
        },
        labs,
        labels_path,
        people,
    )?;
    let (mut f, mut c) = (Vec::with_capacity(j.n() * d), Vec::with_capacity(j.n() * e));
    for i in 0..j.n() {
        f.extend_from_slice(&j.row(i)[..d]);
        c.extend_from_slice(&j.row(i)[d..]);
    }
    Ok((
        Features { dim: d, data: f },
        l,
        Some(Features { dim: e, data: c }),
    ))
}

/// The rows whose identity (from the names file `<labels>.names`) is listed in `people`.
fn only_people(
    feats: Features,
    labs: Vec<i64>,
    labels_path: &std::path::Path,
    people: &std::path::Path,
) -> anyhow::Result<(Features, Vec<i64>)> {
    let mut names_path = labels_path.as_os_str().to_owned();
    names_path.push(".names");
    let names: Vec<String> = std::fs::read_to_string(&names_path)
        .with_context(|| {
            format!(
                "--people needs the names file {} that `embed` writes",
                PathBuf::from(&names_path).display()
            )
        })?
        .lines()
        .map(str::to_string)
        .collect();
    let keep: std::collections::HashSet<String> = clip_cluster::lfw::read_people(people)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut data = Vec::new();
    let mut out = Vec::new();
    for (i, &l) in labs.iter().enumerate() {
        let name = usize::try_from(l)
            .ok()
            .and_then(|l| names.get(l))
            .with_context(|| format!("label {l} has no line in the names file"))?;
        if keep.contains(name) {
            data.extend_from_slice(feats.row(i));
            out.push(l);
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "no row of {} belongs to the identities in {}",
        labels_path.display(),
        people.display()
    );
    eprintln!(
        "kept {} faces of the identities in {}",
        out.len(),
        people.display()
    );
    Ok((
        Features {
            dim: feats.dim,
            data,
        },
        out,
    ))
}

/// The configuration, with `embed.chip` overridden by a command's --chip.
fn config_with_chip(
    file: Option<&std::path::Path>,
    chip: Option<String>,
) -> anyhow::Result<Config> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(clip_cluster::config::ENV_PREFIX))
        .collect();
    if let Some(c) = chip {
        env.push(("CLIP_CLUSTER__EMBED__CHIP".into(), format!("\"{c}\"")));
    }
    Ok(Config::load_from(file, &env)?)
}

fn progress_bar(hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "  embedding {pos}/{len} faces [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Lists and embeds a labeled face directory with the configured embedder, with a progress bar.
fn embed_dir(
    cfg: &Config,
    dir: &std::path::Path,
    people: Option<&std::path::Path>,
    limit: Option<usize>,
) -> anyhow::Result<clip_cluster::dataset::Embedded> {
    let only = match people {
        Some(p) => Some(
            clip_cluster::lfw::read_people(p)?
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
        ),
        None => None,
    };
    let mut images = clip_cluster::dataset::list(dir, only.as_deref())?;
    if let Some(l) = limit {
        images.truncate(l);
    }
    let embedder = clip_cluster::embed::DlibEmbedder::from_config(cfg)?;
    eprintln!(
        "embedding {} images with {}",
        images.len(),
        clip_cluster::embed::FaceEmbedder::model_id(&embedder)
    );
    let bar = progress_bar(false);
    let e = clip_cluster::dataset::embed(&embedder, &images, 256, &|i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    Ok(e)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir().join(format!("clip-cluster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(base)
}
