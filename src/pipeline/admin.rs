//! The admin endpoints: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (state loaded, consumer running, and nothing that needs an operator: no blocked
//! domain, no single domain split across processes). The server task is spawned by `pipeline`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::telemetry::Metrics;

/// Readiness: started, and the problems an operator must fix, each under a key (e.g. the domain
/// it concerns) with a sentence that says what is wrong and what to do. Mirrors itself into
/// `clip_cluster_ready`.
pub struct Health {
    metrics: Metrics,
    state: Mutex<(bool, BTreeMap<String, String>)>,
}

impl Health {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            state: Mutex::new((false, BTreeMap::new())),
        }
    }

    fn update(&self, f: impl FnOnce(&mut (bool, BTreeMap<String, String>))) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        self.metrics.ready.set(i64::from(s.0 && s.1.is_empty()));
    }

    /// The consumer runs (true) or the daemon is stopping (false).
    pub fn set_started(&self, started: bool) {
        self.update(|s| s.0 = started);
    }

    pub fn set_problem(&self, key: &str, text: String) {
        self.update(|s| {
            s.1.insert(key.to_string(), text);
        });
    }

    pub fn clear_problem(&self, key: &str) {
        self.update(|s| {
            s.1.remove(key);
        });
    }

    /// Ready or not, and the body /readyz answers with.
    pub fn status(&self) -> (bool, String) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !s.0 {
            return (false, "starting or stopping\n".into());
        }
        if s.1.is_empty() {
            return (true, "ready\n".into());
        }
        let mut body = String::from("not ready:\n");
        for (k, v) in &s.1 {
            body.push_str(&format!("- {k}: {v}\n"));
        }
        (false, body)
    }
}

/// Serves the endpoints until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    health: std::sync::Arc<Health>,
    stop: watch::Receiver<bool>,
) {
    use axum::{http::StatusCode, routing::get, Router};
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.encode()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let h = health.clone();
                async move {
                    match h.status() {
                        (true, body) => (StatusCode::OK, body),
                        (false, body) => (StatusCode::SERVICE_UNAVAILABLE, body),
                    }
                }
            }),
        );
    serve_until(listener, app, stop).await;
}

/// Serves `app` on `listener` until `stop` turns true (the admin endpoints and the API).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) {
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_started_without_problems() {
        let m = Metrics::new();
        let h = Health::new(m.clone());
        assert!(!h.status().0);
        h.set_started(true);
        assert_eq!(h.status(), (true, "ready\n".to_string()));
        assert_eq!(m.ready.get(), 1);
        h.set_problem("faces-2", "blocked: no state".into());
        let (ok, body) = h.status();
        assert!(!ok && body.contains("faces-2: blocked: no state"), "{body}");
        assert_eq!(m.ready.get(), 0);
        h.clear_problem("faces-2");
        assert_eq!(m.ready.get(), 1);
        h.set_started(false);
        assert_eq!(m.ready.get(), 0);
    }
}
