//! Retention (`retention.max_age`): each open domain forgets its faces older than that, a
//! bounded number per sweep, as an erasure does (events with reason `retention`).

use tracing::{error, info};

use super::Daemon;

impl Daemon {
    /// One sweep over the open domains, each on a blocking thread in turn.
    pub(super) async fn sweep(&mut self, max_age_ms: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let limit = self.cfg.retention.max_per_sweep;
        for (name, dom) in &self.domains {
            let s = dom.clusterer.clone();
            let r =
                tokio::task::spawn_blocking(move || s.lock().expire(now, max_age_ms, limit)).await;
            match r {
                Ok(Ok((report, events))) if !report.erased.is_empty() => {
                    self.metrics
                        .faces_erased
                        .with_label_values(&["retention"])
                        .inc_by(report.erased.len() as u64);
                    dom.clusterer.wrote(events.len());
                    info!(domain = %name, erased = report.erased.len(), compacted = report.compacted, "retention: faces older than retention.max_age erased");
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    error!(domain = %name, error = %e, "retention: the sweep could not be stored; retried at the next")
                }
                Err(e) => {
                    error!(domain = %name, error = %e, "retention: the sweep's thread failed")
                }
            }
        }
    }
}
