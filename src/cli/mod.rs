//! The command line: one file per command, each with its arguments (`Args`) and its `run`.
//! Errors reach the user as `anyhow` chains, with what to do about them; the library below
//! the CLI has one error type per stage.

pub mod bench;
pub mod bench_embed;
pub mod calibrate;
pub mod command;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod hallucinate;
pub mod mock;
pub mod produce;
pub mod recluster;
pub mod run;
pub mod train;
pub mod verify;

use crate::config::Config;
use crate::eval::features::{check_counts, read_features, read_labels, Features};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "clip-cluster",
    version,
    about = "Streaming face clustering by identity"
)]
pub struct Cli {
    /// Configuration file (overrides config/default.toml; environment overrides both).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Labelled learn-to-cluster files, as `train` and `calibrate` read them.
#[derive(clap::Args)]
pub struct LabeledFeatures {
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
    pub fn read(&self, default_dim: usize) -> anyhow::Result<(Features, Vec<i64>)> {
        let feats = read_features(&self.features, self.dim.unwrap_or(default_dim))?;
        let labs = read_labels(&self.labels)?;
        check_counts(&feats, &labs, &self.features, &self.labels)?;
        Ok((feats, labs))
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// The daemon: consume faces from Kafka, cluster them durably, emit events. Stops cleanly on
    /// SIGTERM or SIGINT.
    Run(run::Args),
    /// The embedded default: an in-process mock Kafka cluster, a stream of faces, the daemon, and
    /// a summary. Without --features or --faces it streams seeded synthetic faces.
    Demo(demo::Args),
    /// Publishes faces to a topic: a features file or synthetic vectors as embedding messages,
    /// or a directory of images (<identity>/<image>) as raw image messages with headers.
    Produce(produce::Args),
    /// Clusters labeled vectors with one algorithm and scores it (pairwise F, BCubed F, NMI).
    /// Without --features it runs on a seeded synthetic data set of 20,000 faces.
    Eval(eval::Args),
    /// Embeds a directory of face images (<identity>/<image>, or an LFW root) with the configured
    /// embedder into learn-to-cluster files: --out rows, --labels-out labels, and a names file
    /// (line i = identity of label i).
    Embed(embed::Args),
    /// The standard LFW verification protocol on pairs.txt: 10 folds, the Euclidean threshold
    /// chosen on nine and tested on the tenth; mean and standard deviation of the accuracy.
    Verify(verify::Args),
    /// Learns from identity-labeled features: the proxy's hallucination directions (the leading
    /// eigenvectors of the within-identity scatter; --out, for proxy.directions_path) and the edge
    /// head (a pair classifier trained with candle-nn; --edge-out, for edge.weights_path), each as
    /// safetensors. Seeded and deterministic: the same input and seed give the same files.
    Train(train::Args),
    /// Hallucinates each face's attribute variants in identity space from its identity vector and
    /// CLIP image embedding: f_a = norm(f + H([f ; c_a - c])), c_a = norm(c + lambda_a d_a), with
    /// the text directions of [clip] (weights, vocabulary, prompts) and the mapper H of
    /// `train --mapper-out`. Writes one row of (attributes x dim) values per face, for
    /// `eval --hallucinated`.
    Hallucinate(hallucinate::Args),
    /// Fits the stream to another embedding model from a labelled sample of the user's own faces:
    /// the cosine threshold with the best BCubed F on the sample and the space's profile, written
    /// as a configuration file to give with --config.
    Calibrate(calibrate::Args),
    /// Writes seeded synthetic identities in learn-to-cluster format (.bin rows + .meta labels).
    Generate(generate::Args),
    /// The identity network's faces/s at each batch size and dtype on a device, and its parity
    /// with the CPU in f32 (max |diff|, min cosine), on seeded synthetic chips. Made for the GPU
    /// machine (no Rust there): e.g. `bench-embed --device cuda:0 --dtype f32,bf16 --batch
    /// 64,512,2048`.
    BenchEmbed(bench_embed::Args),
    /// One operator command (feedback or erasure, as JSON: the command topic's form) to the
    /// running daemon's API (default), the command topic (--via kafka), or a stopped daemon's
    /// state (--via state). Prints the daemon's report.
    Command(command::Args),
    /// Rebuilds a state's clusters under this configuration (another threshold, rule, proxy or
    /// edge head) from its stored vectors into a new state (--to, else store.path): names,
    /// feedback, erased ids and input positions carry over, a surviving cluster keeps its id,
    /// and the new state's outbox tells subscribers every face's move. The old state is only read.
    Recluster(recluster::Args),
    /// Insert benchmark with durable state (throughput, growth, memory per face).
    Bench(bench::Args),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Run(a) => run::command(a, config),
        Command::Demo(a) => demo::command(a, config),
        Command::Produce(a) => produce::command(a, config),
        Command::Eval(a) => eval::command(a, config),
        Command::Embed(a) => embed::command(a, config),
        Command::Verify(a) => verify::command(a, config),
        Command::Train(a) => train::command(a, config),
        Command::Hallucinate(a) => hallucinate::command(a, config),
        Command::Calibrate(a) => calibrate::command(a, config),
        Command::Generate(a) => generate::command(a, config),
        Command::BenchEmbed(a) => bench_embed::command(a, config),
        Command::Bench(a) => bench::command(a, config),
        Command::Command(a) => command::command(a, config),
        Command::Recluster(a) => recluster::command(a, config),
    }
}

/// As `only_people`, keeping the matching rows of `side` (per-face rows of another width, e.g.
/// CLIP embeddings or hallucinated variants, row i = face i) in step.
pub fn only_people_with(
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
pub fn only_people(
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
    let keep: std::collections::HashSet<String> = crate::eval::lfw::read_people(people)?
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
pub fn config_with_chip(
    file: Option<&std::path::Path>,
    chip: Option<String>,
) -> anyhow::Result<Config> {
    let flags = crate::config::Overrides {
        embed_chip: chip,
        ..Default::default()
    };
    Ok(Config::load_overriding(file, &flags)?)
}

pub fn progress_bar(hidden: bool) -> indicatif::ProgressBar {
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
pub fn embed_dir(
    cfg: &Config,
    dir: &std::path::Path,
    people: Option<&std::path::Path>,
    limit: Option<usize>,
) -> anyhow::Result<crate::eval::dataset::Embedded> {
    let only = match people {
        Some(p) => Some(
            crate::eval::lfw::read_people(p)?
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
        ),
        None => None,
    };
    let mut images = crate::eval::dataset::list(dir, only.as_deref())?;
    if let Some(l) = limit {
        images.truncate(l);
    }
    let embedder = crate::embed::DlibEmbedder::from_config(cfg)?;
    eprintln!(
        "embedding {} images with {}",
        images.len(),
        crate::embed::FaceEmbedder::model_id(&embedder)
    );
    let bar = progress_bar(false);
    let e = crate::eval::dataset::embed(&embedder, &images, 256, &|i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    Ok(e)
}

pub async fn wait_for_signal() {
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

pub fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir().join(format!("clip-cluster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(base)
}
