//! `bench --operator`: the operator API's costs on the state the insert benchmark built, over
//! real HTTP to the API served in this process (the daemon's router and shared state): read and
//! search latency, a read right after a write (the cluster listing rebuilt), feedback applied
//! (committed with fsync, its events in the outbox: what a subscriber then receives is the
//! drainer's send, measured by `demo --rate`), erasure of a face and of a person, and a
//! compaction, which blocks the domain's ingestion while it runs.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{Access, Domains, Shared};
use crate::clusterer::Clusterer;
use crate::config::Config;
use crate::index::NeighborIndex;

/// Latencies of one kind of request, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if ms.is_empty() {
                0.0
            } else {
                ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1]
            }
        };
        Latency {
            n: ms.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct OperatorReport {
    pub n_faces: usize,
    /// Opening the state (sled load, HNSW snapshot): a restart's cost.
    pub open_seconds: f64,
    /// `GET /v1/faces/{id}`.
    pub read_face: Latency,
    /// `GET /v1/clusters/{id}?limit=20`, the listing current.
    pub read_cluster: Latency,
    /// `GET /v1/clusters?order=size&limit=50`, the listing current.
    pub list_clusters: Latency,
    /// `POST /v1/search {embedding, k: 10}`.
    pub search: Latency,
    /// `POST /v1/feedback` (`name`, then `not_in_cluster`): applied, committed (fsync), events
    /// in the outbox when it answers.
    pub feedback: Latency,
    /// `GET /v1/clusters/{id}` right after a write: the cluster listing is rebuilt first.
    pub read_after_write: Latency,
    /// `DELETE /v1/faces/{id}` (no compaction).
    pub erase_face: Latency,
    /// `DELETE /v1/clusters/{id}` of a random person, and the faces each held.
    pub erase_cluster: Latency,
    pub erase_cluster_faces: Vec<usize>,
    /// `DELETE /v1/faces/{id}?compact=true`: the index rebuilt at once without its tombstones,
    /// the domain taking no face meanwhile.
    pub compaction_seconds: f64,
    pub compaction_points: usize,
    /// Faces/s applied beside the API with no compaction under way.
    pub ingest_faces_per_second: f64,
    /// Faces/s while a compaction runs beside the stream (on its worker; over its window, or
    /// its first 50,000 faces), and the faces from its start to its swap
    /// (`index.compact_window` per live point).
    pub ingest_compacting_faces_per_second: f64,
    pub compaction_window_faces: usize,
    pub compact_window: f32,
}

/// Serves the API over the state at `cfg.store.path` (built by `bench::run`), and measures.
/// `data` are the benchmark's vectors (search queries are rows of it plus noise).
pub fn run(cfg: &Config, data: &[f32], ops: usize, seed: u64) -> anyhow::Result<OperatorReport> {
    let dim = cfg.model.dim;
    let n = data.len() / dim;
    // The erasures below start a compaction beside the stream (measured while faces come).
    let mut cfg = cfg.clone();
    cfg.index.compact_fraction = (20.0 / n as f32).min(1.0);
    let cfg = &cfg;
    let t = Instant::now();
    let c = Clusterer::open(cfg)?;
    let open_seconds = t.elapsed().as_secs_f64();
    let shared = Shared::new(c);
    let domains: Domains = Arc::new(RwLock::new(BTreeMap::from([(
        "bench".to_string(),
        shared.clone(),
    )])));
    let token = "bench-token";
    let access = Access {
        token: Some(token.into()),
        public_reads: false,
        max_body_bytes: 1 << 20,
    };
    let router = crate::api::router(domains, access, crate::telemetry::Metrics::new(), None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?.to_string();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = rt.spawn(crate::pipeline::admin::serve_until(
        listener, router, stop_rx,
    ));

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x6f70);
    let call = |method: &str, path: &str, body: Option<&Value>| -> anyhow::Result<(f64, Value)> {
        let t = Instant::now();
        let (status, v) = crate::cli::command::http(&addr, method, path, token, body)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(status == 200, "{method} {path}: {status} {v}");
        Ok((ms, v))
    };
    let live = |rng: &mut rand_chacha::ChaCha8Rng| -> usize { rng.gen_range(0..n) };

    // Warm: the first cluster read builds the listing.
    let mut clusters_seen: Vec<u64> = Vec::new();
    call("GET", "/v1/clusters?order=size&limit=50", None)?;
    let mut read_face = Vec::with_capacity(ops);
    for _ in 0..ops {
        let (ms, v) = call("GET", &format!("/v1/faces/bench-{}", live(&mut rng)), None)?;
        read_face.push(ms);
        clusters_seen.push(v["cluster_id"].as_u64().unwrap_or(0));
    }
    let mut read_cluster = Vec::with_capacity(ops);
    for &id in clusters_seen.iter().take(ops) {
        read_cluster.push(call("GET", &format!("/v1/clusters/{id}?limit=20"), None)?.0);
    }
    let mut list_clusters = Vec::new();
    for _ in 0..(ops / 10).max(10) {
        list_clusters.push(call("GET", "/v1/clusters?order=size&limit=50", None)?.0);
    }
    let mut search = Vec::with_capacity(ops);
    for _ in 0..ops {
        let row = &data[live(&mut rng) * dim..][..dim];
        let q: Vec<f32> = row
            .iter()
            .map(|x| x + 0.01 * (rng.gen::<f32>() - 0.5))
            .collect();
        search.push(
            call(
                "POST",
                "/v1/search",
                Some(&json!({"embedding": q, "k": 10})),
            )?
            .0,
        );
    }

    // Faces streaming in beside the API, no compaction under way: the baseline.
    let extra = (n / 5).clamp(1000, 20_000);
    let mut next_id = 0usize;
    let mut ingest = |count: usize, until_compacted: bool, rng: &mut rand_chacha::ChaCha8Rng| {
        let before = shared.lock().compactions();
        let t = Instant::now();
        let mut done = 0;
        while done < count {
            let faces: Vec<crate::engine::Face> = (0..500)
                .map(|_| {
                    let row = &data[rng.gen_range(0..n) * dim..][..dim];
                    let v = row
                        .iter()
                        .map(|x| x + 0.02 * (rng.gen::<f32>() - 0.5))
                        .collect();
                    next_id += 1;
                    crate::engine::Face::new(format!("more-{next_id}"), v)
                })
                .collect();
            let mut c = shared.lock();
            c.apply(&faces, &[])?;
            done += faces.len();
            if until_compacted && c.compactions() > before {
                break;
            }
        }
        anyhow::Ok((done, done as f64 / t.elapsed().as_secs_f64()))
    };
    let (_, ingest_baseline) = ingest(extra, false, &mut rng)?;

    // Writes, each followed by a read of its cluster (the listing is rebuilt).
    let mut feedback = Vec::new();
    let mut read_after_write = Vec::new();
    let writes = (ops / 10).max(10);
    for w in 0..writes {
        let i = live(&mut rng);
        let (_, face) = call("GET", &format!("/v1/faces/bench-{i}"), None)?;
        let cluster = face["cluster_id"].as_u64().unwrap_or(0);
        let body = if w % 2 == 0 {
            json!({"command_id": format!("bench-name-{w}"), "op": "name", "cluster_id": cluster,
                   "name": format!("person {w}")})
        } else {
            json!({"command_id": format!("bench-not-{w}"), "op": "not_in_cluster",
                   "face_id": format!("bench-{i}"), "cluster_id": cluster})
        };
        let t = Instant::now();
        let (status, v) =
            crate::cli::command::http(&addr, "POST", "/v1/feedback", token, Some(&body))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        // A face alone cannot leave its own cluster (400, 409): timed all the same.
        anyhow::ensure!(matches!(status, 200 | 400 | 409), "feedback: {status} {v}");
        feedback.push(ms);
        // The cluster may be gone: the command's re-link can regroup what is left of it.
        let t = Instant::now();
        let (status, v) = crate::cli::command::http(
            &addr,
            "GET",
            &format!("/v1/clusters/{cluster}?limit=20"),
            token,
            None,
        )?;
        anyhow::ensure!(
            status == 200 || status == 404,
            "read after write: {status} {v}"
        );
        read_after_write.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut erase_face = Vec::new();
    let mut erased = std::collections::HashSet::new();
    for _ in 0..writes {
        let i = live(&mut rng);
        if !erased.insert(i) {
            continue;
        }
        let t = Instant::now();
        let (status, v) = crate::cli::command::http(
            &addr,
            "DELETE",
            &format!("/v1/faces/bench-{i}"),
            token,
            None,
        )?;
        anyhow::ensure!(status == 200 || status == 404, "erase: {status} {v}");
        erase_face.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut erase_cluster = Vec::new();
    let mut erase_cluster_faces = Vec::new();
    for _ in 0..5 {
        let i = live(&mut rng);
        let (status, face) =
            crate::cli::command::http(&addr, "GET", &format!("/v1/faces/bench-{i}"), token, None)?;
        if status == 404 {
            continue; // erased already, alone or with its person
        }
        let cluster = face["cluster_id"].as_u64().unwrap_or(0);
        let (ms, v) = call("DELETE", &format!("/v1/clusters/{cluster}"), None)?;
        erase_cluster.push(ms);
        erase_cluster_faces.push(v["n_erased"].as_u64().unwrap_or(0) as usize);
    }
    // The erasures started a compaction beside the stream: faces until it is swapped in.
    // (At most 50,000 of them: at a million faces the window is a million faces long.)
    let pending = shared.lock().rebuild_pending();
    let Some(window_faces) = pending else {
        anyhow::bail!("the erasures started no compaction");
    };
    let (_, ingest_compacting) = ingest(window_faces.min(50_000), true, &mut rng)?;
    let target = {
        let c = shared.lock();
        let e = c.engine();
        (0..n)
            .find(|i| {
                e.seq_of(&format!("bench-{i}"))
                    .is_some_and(|s| !e.is_erased(s))
            })
            .unwrap_or(0)
    };
    let points = shared.lock().engine().index().len();
    let (ms, v) = call(
        "DELETE",
        &format!("/v1/faces/bench-{target}?compact=true"),
        None,
    )?;
    anyhow::ensure!(
        v["domains"][0]["compacted"] == json!(true),
        "no compaction: {v}"
    );
    let _ = stop_tx.send(true);
    let _ = rt.block_on(server);
    Ok(OperatorReport {
        n_faces: n,
        open_seconds,
        read_face: Latency::of(read_face),
        read_cluster: Latency::of(read_cluster),
        list_clusters: Latency::of(list_clusters),
        search: Latency::of(search),
        feedback: Latency::of(feedback),
        read_after_write: Latency::of(read_after_write),
        erase_face: Latency::of(erase_face),
        erase_cluster: Latency::of(erase_cluster),
        erase_cluster_faces,
        compaction_seconds: ms / 1e3,
        compaction_points: points,
        ingest_faces_per_second: ingest_baseline,
        ingest_compacting_faces_per_second: ingest_compacting,
        compaction_window_faces: window_faces,
        compact_window: cfg.index.compact_window,
    })
}
