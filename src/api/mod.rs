//! The operator API: JSON over HTTP on `api.listen`, described by `schemas/openapi.json` (a
//! test checks that it lists every route here).
//!
//! - `GET /v1/domains`: the open domains.
//! - `GET /v1/faces/{face_id}`: a face, its cluster and origin; 404 when unknown.
//! - `GET /v1/faces/{face_id}/thumbnail`: its kept thumbnail (image bytes), else a redirect to
//!   the producer's `thumbnail_url`, else 404.
//! - `GET /v1/clusters?order=size|recent&unnamed=true&faces=N&limit=N&cursor=C&domain=D`: a page
//!   of clusters (each with a strip of N faces) and the cursor of the next.
//! - `GET /v1/clusters/{cluster_id}?limit=N&cursor=C&domain=D`: a cluster, a page of its faces,
//!   its representative faces.
//! - `POST /v1/search {embedding | image_b64, k, domain}`: the nearest faces and their clusters
//!   (an image is embedded as the stream's images are, where this daemon embeds).
//! - `POST /v1/feedback {command_id, op, ..., domain}`: an operator command (`merge
//!   {cluster_ids}`, `split {face_ids}`, `not_in_cluster {face_id, cluster_id}`, `assign
//!   {face_id, cluster_id}`, `name {cluster_id, name}`, `undo {target_command_id}`; see
//!   `engine::feedback`), durable when it returns: 200 with its report, 404 for unknown ids, 409
//!   when it contradicts the constraints held or reuses a command id, 400 when malformed. The
//!   same command id again returns the first report with `duplicate: true`.
//!
//! - `DELETE /v1/faces/{face_id}`, `DELETE /v1/clusters/{cluster_id}`, `DELETE
//!   /v1/sources/{source_id}` (`?domain=D&compact=true`): erasure (`erase.rs`).
//! - `GET /ui`: the review page (`ui.rs`), static, served without a token (it holds no data;
//!   everything it shows it reads through the routes above with the token the user gives it).
//!
//! Every request needs `Authorization: Bearer <token>` unless `api.public_reads` (reads only).
//! Reads lock the domain's state, so they wait for a batch being applied and see every batch
//! that was committed before they started. Errors are `{"error": "..."}` with a 4xx or 503
//! status, counted in `clip_cluster_api_requests_total{outcome}`; a refused request changes
//! nothing. Writes always need the token.

mod erase;
mod faces;
pub mod read;
mod search;
mod ui;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::clusterer::Clusterer;
use crate::telemetry::Metrics;

/// One domain's state as the daemon and the API share it.
pub struct Shared {
    clusterer: Mutex<Clusterer>,
    index: Mutex<Option<Arc<read::ClusterIndex>>>,
    /// Told how many events a write added to the outbox (the daemon counts and sends them).
    wrote: std::sync::OnceLock<Box<dyn Fn(usize) + Send + Sync>>,
}

impl Shared {
    pub fn new(c: Clusterer) -> Arc<Self> {
        Arc::new(Shared {
            clusterer: Mutex::new(c),
            index: Mutex::new(None),
            wrote: std::sync::OnceLock::new(),
        })
    }

    /// Sets what a write tells the daemon (once; later calls are ignored).
    pub fn on_write(&self, f: impl Fn(usize) + Send + Sync + 'static) {
        let _ = self.wrote.set(Box::new(f));
    }

    /// Tells the daemon that a write added `n` events to the outbox (nothing when none).
    pub fn wrote(&self, n: usize) {
        if let (Some(f), true) = (self.wrote.get(), n > 0) {
            f(n);
        }
    }

    /// The state, for the daemon's batch (on a blocking thread) and the API's reads.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Clusterer> {
        self.clusterer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster index of `c` (this domain's locked state), brought up to date by the events
    /// committed since, or rebuilt when they are no longer held.
    fn index(&self, c: &Clusterer) -> Arc<read::ClusterIndex> {
        let mut slot = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = slot.as_mut() {
            if i.current(c) || Arc::make_mut(i).follow(c) {
                return i.clone();
            }
        }
        let i = Arc::new(read::ClusterIndex::build(c));
        *slot = Some(i.clone());
        i
    }
}

/// The open domains by name, kept by the daemon as it opens and closes them.
pub type Domains = Arc<RwLock<BTreeMap<String, Arc<Shared>>>>;

/// How requests are let in.
#[derive(Debug, Clone)]
pub struct Access {
    /// None: no token is configured, so every request that needs one is refused.
    pub token: Option<String>,
    pub public_reads: bool,
    pub max_body_bytes: usize,
}

impl Access {
    /// From `api.*`: the token, else the first line of `token_file`.
    pub fn from_config(cfg: &crate::config::ApiConfig) -> Result<Self, String> {
        let token = if !cfg.token.is_empty() {
            Some(cfg.token.clone())
        } else if !cfg.token_file.is_empty() {
            let text = std::fs::read_to_string(&cfg.token_file)
                .map_err(|e| format!("api.token_file {}: {e}", cfg.token_file))?;
            let line = text.lines().next().unwrap_or("").trim().to_string();
            if line.is_empty() {
                return Err(format!(
                    "api.token_file {}: its first line is empty",
                    cfg.token_file
                ));
            }
            Some(line)
        } else {
            None
        };
        Ok(Access {
            token,
            public_reads: cfg.public_reads,
            max_body_bytes: cfg.max_body_bytes,
        })
    }
}

/// The daemon's face embedder, for searches by image (none in role cluster or with
/// `embed.enabled = false`).
pub type Embedder = Option<Arc<dyn crate::embed::FaceEmbedder>>;

#[derive(Clone)]
struct App {
    domains: Domains,
    access: Arc<Access>,
    metrics: Metrics,
    embedder: Embedder,
}

/// What became of a request (the metric's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    BadRequest,
    Unauthorized,
    NotFound,
    TooLarge,
    Conflict,
    Unavailable,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::BadRequest,
        Outcome::Unauthorized,
        Outcome::NotFound,
        Outcome::TooLarge,
        Outcome::Conflict,
        Outcome::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadRequest => "bad_request",
            Outcome::Unauthorized => "unauthorized",
            Outcome::NotFound => "not_found",
            Outcome::TooLarge => "too_large",
            Outcome::Conflict => "conflict",
            Outcome::Unavailable => "unavailable",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Outcome::Ok => StatusCode::OK,
            Outcome::BadRequest => StatusCode::BAD_REQUEST,
            Outcome::Unauthorized => StatusCode::UNAUTHORIZED,
            Outcome::NotFound => StatusCode::NOT_FOUND,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::Conflict => StatusCode::CONFLICT,
            Outcome::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A refused request: its outcome and the message the caller reads.
#[derive(Debug)]
struct Refusal(Outcome, String);

fn refuse(o: Outcome, msg: impl Into<String>) -> Refusal {
    Refusal(o, msg.into())
}

type Reply = Result<serde_json::Value, Refusal>;

impl App {
    fn finish(&self, r: Reply) -> Response {
        let (o, body) = match r {
            Ok(v) => (Outcome::Ok, v),
            Err(Refusal(o, msg)) => (o, json!({ "error": msg })),
        };
        self.count(o);
        (o.status(), Json(body)).into_response()
    }

    /// Counts a request's outcome (`clip_cluster_api_requests_total`).
    fn count(&self, o: Outcome) {
        self.metrics
            .api_requests
            .with_label_values(&[o.label()])
            .inc();
    }

    /// Lets a read in: a valid token, or none needed.
    fn check(&self, headers: &HeaderMap, write: bool) -> Result<(), Refusal> {
        if !write && self.access.public_reads {
            return Ok(());
        }
        let Some(token) = &self.access.token else {
            return Err(refuse(
                Outcome::Unauthorized,
                "no API token is configured: set api.token or api.token_file (or CLIP_CLUSTER__API__TOKEN), or api.public_reads = true for reads",
            ));
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => Err(refuse(
                Outcome::Unauthorized,
                "missing header: Authorization: Bearer <token>",
            )),
            Some(g) if same(g.trim().as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(refuse(Outcome::Unauthorized, "wrong token")),
        }
    }

    /// The domain a request names, or the only one open.
    fn domain(&self, name: Option<&str>) -> Result<(String, Arc<Shared>), Refusal> {
        let map = self.domains.read().unwrap_or_else(|p| p.into_inner());
        match name {
            Some(n) => map
                .get(n)
                .map(|s| (n.to_string(), s.clone()))
                .ok_or_else(|| refuse(Outcome::NotFound, format!("no open domain named {n:?}"))),
            None => match map.len() {
                0 => Err(refuse(Outcome::Unavailable, "no domain is open yet (the state is loading or no partition is assigned)")),
                1 => {
                    let (n, s) = map.iter().next().expect("one domain");
                    Ok((n.clone(), s.clone()))
                }
                _ => Err(refuse(
                    Outcome::BadRequest,
                    format!(
                        "several domains are open ({}): name one with ?domain= (or \"domain\" in the body)",
                        map.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )),
            },
        }
    }

    fn all_domains(&self) -> Vec<(String, Arc<Shared>)> {
        let map = self.domains.read().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(n, s)| (n.clone(), s.clone())).collect()
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs `f` on a blocking thread (it locks a state that a batch may hold).
async fn blocking<T, F>(f: F) -> Result<T, Refusal>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Refusal> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(refuse(Outcome::Unavailable, format!("request failed: {e}"))))
}

pub const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 50;

fn limit(l: Option<usize>) -> Result<usize, Refusal> {
    match l {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(refuse(
            Outcome::BadRequest,
            format!("limit {n}: must be in 1..={MAX_LIMIT}"),
        )),
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Refusal> {
    q.map(|Query(t)| t)
        .map_err(|e| refuse(Outcome::BadRequest, format!("bad query: {}", e.body_text())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    order: Option<String>,
    unnamed: Option<bool>,
    faces: Option<usize>,
    limit: Option<usize>,
    cursor: Option<u64>,
    domain: Option<String>,
}

async fn list_clusters(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let r = async {
        app.check(&headers, false)?;
        let q = query(q)?;
        let order = match q.order.as_deref() {
            None | Some("size") => read::Order::Size,
            Some("recent") => read::Order::Recent,
            Some(o) => {
                return Err(refuse(
                    Outcome::BadRequest,
                    format!("order {o:?}: size or recent"),
                ))
            }
        };
        let n = limit(q.limit)?;
        let unnamed = q.unnamed.unwrap_or(false);
        let strip = q.faces.unwrap_or(0);
        if strip > read::MAX_STRIP {
            return Err(refuse(
                Outcome::BadRequest,
                format!("faces {strip}: must be in 0..={}", read::MAX_STRIP),
            ));
        }
        let (name, shared) = app.domain(q.domain.as_deref())?;
        blocking(move || {
            let c = shared.lock();
            let idx = shared.index(&c);
            let (page, next) =
                read::clusters(&c, &idx, &name, (order, unnamed, strip), q.cursor, n)
                    .map_err(|e| refuse(Outcome::BadRequest, e))?;
            Ok(json!({ "clusters": page, "total": idx.n_clusters(), "next": next }))
        })
        .await
    }
    .await;
    app.finish(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterQuery {
    limit: Option<usize>,
    cursor: Option<u32>,
    domain: Option<String>,
}

async fn get_cluster(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<ClusterQuery>, QueryRejection>,
) -> Response {
    let r = async {
        app.check(&headers, false)?;
        let q = query(q)?;
        let id: u64 = id.parse().map_err(|_| {
            refuse(
                Outcome::BadRequest,
                format!("cluster id {id:?}: not a number"),
            )
        })?;
        let n = limit(q.limit)?;
        let (name, shared) = app.domain(q.domain.as_deref())?;
        blocking(move || {
            let c = shared.lock();
            let idx = shared.index(&c);
            read::cluster(&c, &idx, &name, id, q.cursor, n)
                .map_err(|e| refuse(Outcome::Unavailable, e))?
                .map(|v| serde_json::to_value(v).unwrap_or_default())
                .ok_or_else(|| {
                    refuse(
                        Outcome::NotFound,
                        format!("no cluster {id} in domain {name}"),
                    )
                })
        })
        .await
    }
    .await;
    app.finish(r)
}

async fn list_domains(State(app): State<App>, headers: HeaderMap) -> Response {
    let r = app
        .check(&headers, false)
        .map(|()| json!({ "domains": app.all_domains().into_iter().map(|(n, _)| n).collect::<Vec<_>>() }));
    app.finish(r)
}

/// `POST /v1/feedback {command_id, op, ..., domain}`: one operator command (`feedback::Op`).
async fn feedback(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    use crate::engine::feedback::FeedbackError;
    let r = async {
        app.check(&headers, true)?;
        let Json(v) = body.map_err(|e| body_refusal(&app, e))?;
        let req = crate::clusterer::request_from(v, false)
            .map_err(|e| refuse(Outcome::BadRequest, format!("bad body: {e}")))?;
        let crate::clusterer::Action::Feedback(cmd) = req.action else {
            unreachable!("request_from(_, false) gives feedback commands only")
        };
        let (name, shared) = app.domain(req.domain.as_deref())?;
        let shared2 = shared.clone();
        blocking(move || {
            let mut c = shared2.lock();
            match c.apply_feedback(&cmd) {
                Err(e) => Err(refuse(
                    Outcome::Unavailable,
                    format!("the command could not be stored: {e}"),
                )),
                Ok(Err(e)) => {
                    let o = match &e {
                        FeedbackError::UnknownCluster(_)
                        | FeedbackError::UnknownFace(_)
                        | FeedbackError::UnknownCommand(_) => Outcome::NotFound,
                        FeedbackError::Conflict(_) => Outcome::Conflict,
                        FeedbackError::Invalid(_) => Outcome::BadRequest,
                        FeedbackError::NotReady(_) => Outcome::Unavailable,
                    };
                    Err(refuse(o, e.to_string()))
                }
                Ok(Ok((report, events))) => {
                    drop(c);
                    if let Some(f) = shared2.wrote.get() {
                        if !events.is_empty() {
                            f(events.len());
                        }
                    }
                    let mut v = serde_json::to_value(&report).unwrap_or_default();
                    v["domain"] = json!(name);
                    Ok(v)
                }
            }
        })
        .await
    }
    .await;
    app.finish(r)
}

fn body_refusal(app: &App, e: JsonRejection) -> Refusal {
    match e {
        JsonRejection::BytesRejection(_) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => refuse(
            Outcome::TooLarge,
            format!(
                "body over api.max_body_bytes ({} bytes)",
                app.access.max_body_bytes
            ),
        ),
        e => refuse(Outcome::BadRequest, format!("bad body: {}", e.body_text())),
    }
}

async fn unknown(State(app): State<App>, uri: axum::http::Uri) -> Response {
    app.finish(Err(refuse(
        Outcome::NotFound,
        format!(
            "no such endpoint: {} (the API has /v1/domains, /v1/faces/{{id}}, /v1/faces/{{id}}/thumbnail, /v1/clusters, /v1/clusters/{{id}}, /v1/sources/{{id}}, /v1/search, /v1/feedback; the review page is /ui)",
            uri.path()
        ),
    )))
}

/// The API's routes and the review page.
pub fn router(domains: Domains, access: Access, metrics: Metrics, embedder: Embedder) -> Router {
    for o in Outcome::ALL {
        metrics.api_requests.with_label_values(&[o.label()]);
    }
    let limit = access.max_body_bytes;
    let app = App {
        domains,
        access: Arc::new(access),
        metrics,
        embedder,
    };
    Router::new()
        .route("/v1/domains", get(list_domains))
        .route(
            "/v1/faces/{face_id}",
            get(faces::get_face).delete(erase::erase_face),
        )
        .route("/v1/faces/{face_id}/thumbnail", get(faces::get_thumbnail))
        .route("/v1/clusters", get(list_clusters))
        .route(
            "/v1/clusters/{cluster_id}",
            get(get_cluster).delete(erase::erase_cluster),
        )
        .route("/v1/sources/{source_id}", delete(erase::erase_source))
        .route("/v1/search", post(search::search))
        .route("/v1/feedback", post(feedback))
        .merge(ui::routes())
        .fallback(unknown)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(token: Option<&str>, public_reads: bool) -> App {
        App {
            domains: Domains::default(),
            access: Arc::new(Access {
                token: token.map(str::to_string),
                public_reads,
                max_body_bytes: 4096,
            }),
            metrics: Metrics::new(),
            embedder: None,
        }
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn tokens_let_in_and_keep_out() {
        let a = app(Some("s3cret"), false);
        assert!(a.check(&bearer("s3cret"), false).is_ok());
        assert!(a.check(&bearer("s3cret"), true).is_ok());
        let Refusal(o, m) = a.check(&bearer("s3cre"), false).unwrap_err();
        assert_eq!((o, m.as_str()), (Outcome::Unauthorized, "wrong token"));
        let Refusal(_, m) = a.check(&HeaderMap::new(), false).unwrap_err();
        assert!(m.contains("Authorization: Bearer"), "{m}");
        // No token configured: refused, saying how to set one.
        let Refusal(_, m) = app(None, false).check(&bearer("x"), false).unwrap_err();
        assert!(m.contains("api.token"), "{m}");
        // Public reads: reads without a token, writes still need one.
        let p = app(None, true);
        assert!(p.check(&HeaderMap::new(), false).is_ok());
        assert!(p.check(&HeaderMap::new(), true).is_err());
    }

    #[test]
    fn the_token_file_gives_its_first_line() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("token");
        std::fs::write(&f, "abc123 \nignored\n").unwrap();
        let mut cfg = crate::config::Config::defaults().unwrap().api;
        cfg.token_file = f.display().to_string();
        assert_eq!(
            Access::from_config(&cfg).unwrap().token.as_deref(),
            Some("abc123")
        );
        std::fs::write(&f, "\n").unwrap();
        assert!(Access::from_config(&cfg)
            .unwrap_err()
            .contains("first line is empty"));
        cfg.token_file = d.path().join("missing").display().to_string();
        assert!(Access::from_config(&cfg)
            .unwrap_err()
            .contains("api.token_file"));
        // The token itself wins over the file.
        cfg.token = "direct".into();
        assert_eq!(
            Access::from_config(&cfg).unwrap().token.as_deref(),
            Some("direct")
        );
        assert_eq!(cfg.listen, "127.0.0.1:9465", "the documented default");
    }

    #[test]
    fn a_domain_must_be_open_and_exist() {
        let a = app(Some("t"), false);
        let Err(Refusal(o, _)) = a.domain(None) else {
            panic!("no domain is open")
        };
        assert_eq!(o, Outcome::Unavailable);
        let Err(Refusal(o, m)) = a.domain(Some("nope")) else {
            panic!("no such domain")
        };
        assert_eq!(o, Outcome::NotFound, "{m}");
    }

    /// Every (method, path) of `schemas/openapi.json` is a route that asks for the token; every
    /// other method on those paths is not one.
    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../schemas/openapi.json")).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            let a = app(Some("t"), false);
            let router = router(a.domains.clone(), (*a.access).clone(), a.metrics.clone(), None);
            tokio::spawn(async move { axum::serve(l, router).await });
            let status = move |method: String, path: String| {
                tokio::task::spawn_blocking(move || {
                    use std::io::{Read, Write};
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
                    s.write_all(req.as_bytes()).unwrap();
                    let mut text = String::new();
                    let _ = s.read_to_string(&mut text);
                    text.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0)
                })
            };
            assert!(paths.len() >= 6, "the document lists the API's paths");
            for (path, item) in paths {
                let concrete = path.replace(['{', '}'], "").replace("face_id", "f").replace("cluster_id", "1").replace("source_id", "s");
                for method in ["get", "post", "delete", "put", "patch"] {
                    let documented = item.get(method).is_some();
                    let got = status(method.to_uppercase(), concrete.clone()).await.unwrap();
                    if documented {
                        assert_eq!(got, 401, "{method} {path} is documented: a route that asks for the token");
                    } else {
                        assert!(got == 405 || got == 404, "{method} {path} is not documented, yet answers {got}");
                    }
                }
            }
            assert_eq!(status("GET".into(), "/v1/nothing".into()).await.unwrap(), 404);
        });
    }
}
