//! `clip-cluster recluster`: rebuilds a state's clusters under the configuration given (another
//! threshold, rule, proxy, edge head) from its stored vectors, carrying names, feedback, erased
//! ids, input positions and, where a cluster survives, its id. The old state is only read.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// The state to re-cluster (a store.path, or one domain's directory under it).
    #[arg(long)]
    pub from: PathBuf,
    /// Where the new state goes (default: the configuration's store.path); it must not hold a
    /// state yet. Point the daemon's store.path at it afterwards.
    #[arg(long)]
    pub to: Option<PathBuf>,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let mut cfg = Config::load(config)?;
    if let Some(to) = args.to {
        cfg.store.path = to;
    }
    let report = crate::clusterer::recluster(&args.from, &cfg)
        .with_context(|| format!("re-clustering {}", args.from.display()))?;
    // The new state opens under the configuration (the check a daemon start makes).
    let c = crate::clusterer::Clusterer::open(&cfg)
        .with_context(|| format!("opening the new state at {}", cfg.store.path.display()))?;
    eprintln!(
        "recluster: {} faces, {} clusters -> {} ({} kept their id, {} new, {} ids retired), {} faces moved, {} names and {} commands carried, {} erased ids kept refused; {} events for subscribers in the new state's outbox; new state {} at {} (opens: {} clusters)",
        report.faces,
        report.regrouped.clusters_before,
        report.regrouped.clusters_after,
        report.regrouped.kept_ids,
        report.regrouped.new_ids,
        report.regrouped.retired_ids,
        report.regrouped.moved,
        report.regrouped.names,
        report.commands,
        report.erased,
        report.events,
        report.state,
        report.to,
        c.engine().n_clusters()
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
