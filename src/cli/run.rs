//! `clip-cluster run`: The daemon: consume faces from Kafka, cluster them durably, emit events. Stops cleanly on SIGTERM or SIGINT.

use std::path::Path;

use super::*;
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// all | cluster | embed (overrides daemon.role).
    #[arg(long)]
    pub role: Option<String>,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let Args { role } = args;
    let flags = crate::config::Overrides {
        role,
        ..Default::default()
    };
    let cfg = Config::load_overriding(config, &flags)?;
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
        crate::pipeline::run(cfg, crate::telemetry::Metrics::new(), stop_rx).await
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
