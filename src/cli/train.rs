//! `clip-cluster train`: Learns from identity-labeled features: the proxy's hallucination directions (the leading eigenvectors of the within-identity scatter; --out, for proxy.directions_path) and the edge head (a pair classifier trained with candle-nn; --edge-out, for edge.weights_path), each as safetensors. Seeded and deterministic: the same input and seed give the same files.

use std::path::{Path, PathBuf};

use super::*;
use crate::config::Config;
use crate::eval::features::read_features;

#[derive(clap::Args)]
pub struct Args {
    /// The training identities' features and labels (e.g. `embed --people peopleDevTrain.txt`).
    #[command(flatten)]
    pub input: LabeledFeatures,
    /// Directions to keep.
    #[arg(long, default_value_t = 16)]
    pub directions: usize,
    /// Keep only these identities (LFW people format, e.g. peopleDevTrain.txt; names from
    /// `<labels>.names`).
    #[arg(long)]
    pub people: Option<PathBuf>,
    /// Where to write the directions.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to write the edge head (trains it).
    #[arg(long)]
    pub edge_out: Option<PathBuf>,
    /// Where to write the proxy's trained attention W_q, W_k (trains it for the configured
    /// [proxy] settings, with the directions of --out when given, else proxy.directions_path).
    #[arg(long)]
    pub attention_out: Option<PathBuf>,
    /// Attention: passes over the training faces.
    #[arg(long, default_value_t = 15)]
    pub attention_epochs: usize,
    /// Attention: the cosine threshold of the edge decision its loss trains for (the
    /// engine.t1 of the cosine scorer the attention is meant to run with).
    #[arg(long, default_value_t = 0.95)]
    attention_t1: f32,
    /// CLIP image embeddings of the same faces (row i = face i of --features; raw f32 rows),
    /// for the mapper H.
    #[arg(long)]
    pub clip_features: Option<PathBuf>,
    /// Row width of --clip-features (ViT-B/32: 512).
    #[arg(long, default_value_t = 512)]
    pub clip_dim: usize,
    /// Where to write the mapper H (trains it; needs --clip-features).
    #[arg(long)]
    pub mapper_out: Option<PathBuf>,
    /// Edge head: candidate edges per face (its nearest neighbours).
    #[arg(long, default_value_t = 10)]
    pub edge_k: usize,
    /// Edge head: hidden units.
    #[arg(long, default_value_t = 16)]
    pub edge_hidden: usize,
    /// Edge head: passes over the training pairs.
    #[arg(long, default_value_t = 40)]
    pub edge_epochs: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args {
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
    } = args;
    anyhow::ensure!(
        out.is_some() || edge_out.is_some() || attention_out.is_some() || mapper_out.is_some(),
        "nothing to train: give --out (directions), --edge-out (edge head), --attention-out (proxy attention) and/or --mapper-out (CLIP mapper H)"
    );
    anyhow::ensure!(
        mapper_out.is_none() || clip_features.is_some(),
        "--mapper-out needs --clip-features (CLIP image embeddings of the same faces)"
    );
    let cfg = Config::load(config)?;
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
        let opts = crate::train::edge::EdgeTraining {
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
        let (head, last) = crate::train::edge::train(&feats, &labs, &opts, &mut |r| {
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
        let d = crate::train::directions::learn_directions(&feats, &labs, directions)?;
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
        let opts = crate::train::mapper::MapperTraining {
            seed,
            ..Default::default()
        };
        eprintln!(
            "training the CLIP mapper H on same-identity pairs of {} faces of {n_ids} identities ({} identity + {clip_dim} CLIP values)",
            feats.n(),
            feats.dim
        );
        let (h, last) = crate::train::mapper::train(&feats, c, &labs, &opts, &mut |r| {
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
        c.proxy.mode = crate::config::ProxyMode::Neighbor;
        c.proxy.attention_path = PathBuf::new();
        if let Some(out) = &out {
            c.proxy.directions_path = out.clone();
        }
        let crate::proxy::ProxyModel::Neighbor(proxy) = crate::clusterer::proxy_model(&c)? else {
            anyhow::bail!("the neighbour proxy could not be configured");
        };
        let opts = crate::train::attention::AttentionTraining {
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
        let (att, last) = crate::train::attention::train(&feats, &labs, &proxy, &opts, &mut |r| {
            eprintln!(
                "epoch {:>3}/{attention_epochs}: train loss {:.4}, held-out loss {:.4}, held-out edge accuracy {:.4} (W = I: {:.4})",
                r.epoch, r.train_loss, r.holdout_loss, r.holdout_accuracy, r.holdout_identity_accuracy
            )
        })?;
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
