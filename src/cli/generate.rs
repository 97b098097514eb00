//! `clip-cluster generate`: Writes seeded synthetic identities in learn-to-cluster format (.bin rows + .meta labels).

use std::path::{Path, PathBuf};

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub labels_out: PathBuf,
    #[arg(long, default_value_t = 20_000)]
    pub n: usize,
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn command(args: Args, _config: Option<&Path>) -> anyhow::Result<()> {
    let Args {
        out,
        labels_out,
        n,
        dim,
        seed,
    } = args;
    let s = crate::eval::synth::generate(crate::eval::synth::SynthParams::new(n, dim, seed));
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
