//! The operator API against the real daemon on the mock cluster: reads and search agree with the
//! state the daemon wrote, pages cover every cluster and face once, and bad requests (no token, a
//! wrong token, bad JSON, a wrong dimension, an oversized body, unknown ids and endpoints) get a
//! 4xx with a clear message, are counted, and change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::time::Duration;

use clip_cluster::clusterer::Clusterer;
use clip_cluster::eval::synth::{generate, SynthParams};
use clip_cluster::telemetry::Metrics;
use rdkafka::producer::Producer;
use serde_json::{json, Value};

use crate::support::*;

pub const TOKEN: &str = "api-test-token";

/// One HTTP/1.1 request: (status, JSON body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("API listens");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    if let Some(b) = body {
        // A refused oversized body may close the connection before all of it is written.
        let _ = s.write_all(b);
    }
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v = serde_json::from_str(body).unwrap_or_else(|_| json!({ "raw": body }));
    (status, v)
}

fn get(port: u16, path: &str) -> (u16, Value) {
    http(port, "GET", path, Some(TOKEN), None)
}

/// A 4xx whose message says `what`.
pub fn refused(r: (u16, Value), status: u16, what: &str) {
    assert_eq!(r.0, status, "{}", r.1);
    let msg = r.1["error"].as_str().unwrap_or_default();
    assert!(msg.contains(what), "message {msg:?} should say {what:?}");
}

#[test]
fn reads_and_search_match_the_state_and_bad_requests_are_refused() {
    let dim = 32;
    let n = 400;
    let s = generate(SynthParams::new(n, dim, 11));
    let vs: Vec<Vec<f32>> = s.data.chunks(dim).map(<[f32]>::to_vec).collect();
    let kafka = mock(1);
    let p = producer(kafka.bootstrap_servers());
    for (i, v) in vs.iter().enumerate() {
        send(&p, &format!("face-{i}"), &face_payload(i, v));
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut envs = env(
        kafka.bootstrap_servers(),
        &dir.path().join("state"),
        dim,
        "127.0.0.1:0",
    );
    envs.retain(|(k, _)| k != "CLIP_CLUSTER__API__LISTEN");
    envs.push((
        "CLIP_CLUSTER__API__LISTEN".into(),
        format!("127.0.0.1:{port}"),
    ));
    envs.push(("CLIP_CLUSTER__API__TOKEN".into(), TOKEN.into()));
    envs.push(("CLIP_CLUSTER__API__MAX_BODY_BYTES".into(), "4096".into()));
    let cfg = clip_cluster::config::Config::load_from(None, &envs).unwrap();

    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = metrics.clone();
    let answers = rt.block_on(async move {
        let daemon = clip_cluster::pipeline::run(cfg, m.clone(), stop_rx);
        let client = async move {
            wait_until(
                Duration::from_secs(120),
                || m.faces_applied.get() >= n as u64 && m.outbox_depth.get() == 0,
                || format!("applied {}", m.faces_applied.get()),
            )
            .await;
            let answers = tokio::task::spawn_blocking(move || requests(port, &vs))
                .await
                .unwrap();
            stop_tx.send(true).unwrap();
            answers
        };
        let (summary, answers) = tokio::join!(daemon, client);
        summary.unwrap();
        answers
    });

    // What the daemon wrote, read back from its state after it stopped.
    let cfg = config(kafka.bootstrap_servers(), &dir.path().join("state"), dim);
    let c = Clusterer::open(&cfg).unwrap();
    let e = c.engine();
    let mut want: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for i in 0..n {
        let seq = e.seq_of(&format!("face-{i}")).unwrap();
        want.entry(e.cluster_of(seq))
            .or_default()
            .insert(format!("face-{i}"));
    }
    assert_eq!(
        answers.clusters, want,
        "the pages of clusters and of their faces are the state's clusters"
    );
    assert_eq!(
        answers.face3_cluster,
        e.cluster_of(e.seq_of("face-3").unwrap())
    );
    let sizes: Vec<usize> = answers.sizes_in_order.clone();
    let mut sorted = sizes.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(sizes, sorted, "order=size lists the largest first");

    let count = |o: &str| metrics.api_requests.with_label_values(&[o]).get();
    assert!(count("unauthorized") >= 2, "refusals are counted");
    assert!(count("bad_request") >= 5);
    assert!(count("not_found") >= 3);
    assert_eq!(count("too_large"), 1);
    assert!(count("ok") >= 10);
}

struct Answers {
    /// Every cluster and its faces, as the pages told them.
    clusters: BTreeMap<u64, BTreeSet<String>>,
    sizes_in_order: Vec<usize>,
    face3_cluster: u64,
}

fn requests(port: u16, vs: &[Vec<f32>]) -> Answers {
    // Without a token, and with a wrong one.
    refused(
        http(port, "GET", "/v1/clusters", None, None),
        401,
        "Authorization: Bearer",
    );
    refused(
        http(port, "GET", "/v1/faces/face-1", Some("nope"), None),
        401,
        "wrong token",
    );

    // Every cluster, 7 to a page, and every face of each, 20 to a page.
    let mut clusters = BTreeMap::new();
    let mut sizes_in_order = Vec::new();
    let mut cursor: Option<u64> = None;
    let mut pages = 0;
    loop {
        let path = match cursor {
            None => "/v1/clusters?order=size&limit=7".to_string(),
            Some(c) => format!("/v1/clusters?order=size&limit=7&cursor={c}"),
        };
        let (st, page) = get(port, &path);
        assert_eq!(st, 200, "{page}");
        pages += 1;
        for cl in page["clusters"].as_array().unwrap() {
            let id = cl["cluster_id"].as_u64().unwrap();
            let size = cl["size"].as_u64().unwrap() as usize;
            assert!(
                cl["name"].is_null(),
                "nothing is named before the feedback below"
            );
            sizes_in_order.push(size);
            let faces = cluster_faces(port, id);
            assert_eq!(faces.len(), size, "cluster {id}: its pages hold its size");
            assert!(
                clusters.insert(id, faces).is_none(),
                "cluster {id} listed twice"
            );
        }
        match page["next"].as_u64() {
            Some(c) => cursor = Some(c),
            None => {
                assert_eq!(clusters.len() as u64, page["total"].as_u64().unwrap());
                break;
            }
        }
    }
    assert!(pages > 1);
    let (st, recent) = get(port, "/v1/clusters?order=recent&limit=1");
    assert_eq!(st, 200);
    assert_eq!(
        recent["clusters"][0]["newest_face_id"],
        json!(format!("face-{}", vs.len() - 1))
    );

    // One face, with its origin.
    let (st, f) = get(port, "/v1/faces/face-3");
    assert_eq!(st, 200, "{f}");
    assert_eq!(f["image_id"], json!("img-1"));
    assert_eq!(f["source_id"], json!("cam"));
    assert_eq!(f["ts"], json!(3));
    let face3_cluster = f["cluster_id"].as_u64().unwrap();
    assert!(clusters[&face3_cluster].contains("face-3"));

    // Search: a face's own vector finds it first, in its cluster.
    let body = serde_json::to_vec(&json!({ "embedding": vs[3], "k": 5 })).unwrap();
    let (st, hits) = http(port, "POST", "/v1/search", Some(TOKEN), Some(&body));
    assert_eq!(st, 200, "{hits}");
    assert_eq!(hits["faces"][0]["face_id"], json!("face-3"));
    assert!(hits["faces"][0]["score"].as_f64().unwrap() > 0.999);
    assert_eq!(hits["clusters"][0]["cluster_id"], json!(face3_cluster));
    assert_eq!(hits["faces"].as_array().unwrap().len(), 5);

    // Bad requests.
    refused(get(port, "/v1/faces/no-such-face"), 404, "no face");
    refused(get(port, "/v1/clusters/999999"), 404, "no cluster 999999");
    refused(get(port, "/v1/clusters/abc"), 400, "not a number");
    refused(get(port, "/v1/clusters?limit=0"), 400, "limit 0");
    refused(get(port, "/v1/clusters?order=name"), 400, "size or recent");
    refused(get(port, "/v1/clusters?colour=red"), 400, "bad query");
    refused(get(port, "/v1/nothing-here"), 404, "no such endpoint");
    let short = serde_json::to_vec(&json!({ "embedding": [0.5, 0.5], "k": 3 })).unwrap();
    refused(
        http(port, "POST", "/v1/search", Some(TOKEN), Some(&short)),
        400,
        "dimension",
    );
    refused(
        http(
            port,
            "POST",
            "/v1/search",
            Some(TOKEN),
            Some(b"{\"embedding\": [0.1,"),
        ),
        400,
        "bad body",
    );
    let huge = serde_json::to_vec(&json!({ "embedding": vec![0.25f32; 2000] })).unwrap();
    refused(
        http(port, "POST", "/v1/search", Some(TOKEN), Some(&huge)),
        413,
        "max_body_bytes",
    );
    // Searches by image need an embedder, which this vector-only daemon has not; a body gives
    // one query, not two or none.
    let by_image = serde_json::to_vec(&json!({ "image_b64": "/9j/4AAQ" })).unwrap();
    refused(
        http(port, "POST", "/v1/search", Some(TOKEN), Some(&by_image)),
        400,
        "does not embed images",
    );
    let both = serde_json::to_vec(&json!({ "embedding": vs[0], "image_b64": "/9j/" })).unwrap();
    refused(
        http(port, "POST", "/v1/search", Some(TOKEN), Some(&both)),
        400,
        "not both",
    );
    refused(
        http(port, "POST", "/v1/search", Some(TOKEN), Some(b"{}")),
        400,
        "give embedding",
    );
    // Pictures: none kept for embeddings without one; strips of faces, bounded.
    refused(
        get(port, "/v1/faces/face-3/thumbnail"),
        404,
        "has no thumbnail",
    );
    refused(get(port, "/v1/faces/nobody/thumbnail"), 404, "no face");
    assert_eq!(get(port, "/v1/faces/face-3").1["thumbnail"], Value::Null);
    assert_eq!(get(port, "/v1/domains").1["domains"], json!(["default"]));
    let strips = get(port, "/v1/clusters?limit=5&faces=3").1;
    for c in strips["clusters"].as_array().unwrap() {
        let f = c["faces"].as_array().unwrap();
        assert!(
            !f.is_empty() && f.len() <= 3 && f.len() <= c["size"].as_u64().unwrap() as usize,
            "{c}"
        );
        assert!(f.iter().all(|x| x["thumbnail"].is_null()), "{c}");
    }
    refused(get(port, "/v1/clusters?faces=13"), 400, "faces 13");
    let k0 = serde_json::to_vec(&json!({ "embedding": vs[0], "k": 0 })).unwrap();
    refused(
        http(port, "POST", "/v1/search", Some(TOKEN), Some(&k0)),
        400,
        "k 0",
    );

    // Feedback: a name (membership unchanged), durable when it returns and shown by the reads;
    // the same command again is a duplicate; bad commands are refused and change nothing.
    let fb = |body: Value, token: Option<&str>| {
        let b = serde_json::to_vec(&body).unwrap();
        http(port, "POST", "/v1/feedback", token, Some(&b))
    };
    let name = json!({ "command_id": "n-1", "op": "name", "cluster_id": face3_cluster, "name": "Face Three" });
    let (st, r) = fb(name.clone(), Some(TOKEN));
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["op"].as_str(), r["duplicate"].as_bool()),
        (Some("name"), Some(false))
    );
    let (st, r) = fb(name.clone(), Some(TOKEN));
    assert_eq!((st, r["duplicate"].as_bool()), (200, Some(true)), "{r}");
    let (_, c) = get(port, &format!("/v1/clusters/{face3_cluster}"));
    assert_eq!(c["name"], json!("Face Three"));
    let (_, listed) = get(port, "/v1/clusters?order=size&limit=1000");
    let named: Vec<&Value> = listed["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["name"].is_null())
        .collect();
    assert_eq!(named.len(), 1);
    let (_, unnamed) = get(port, "/v1/clusters?order=size&unnamed=true&limit=1000");
    assert!(unnamed["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["cluster_id"] != json!(face3_cluster)));
    refused(fb(name.clone(), None), 401, "Authorization: Bearer");
    refused(fb(name.clone(), Some("nope")), 401, "wrong token");
    refused(
        fb(
            json!({ "command_id": "n-1", "op": "name", "cluster_id": face3_cluster, "name": "Other" }),
            Some(TOKEN),
        ),
        409,
        "already used",
    );
    refused(
        fb(
            json!({ "command_id": "m-1", "op": "merge", "cluster_ids": [face3_cluster, 999999] }),
            Some(TOKEN),
        ),
        404,
        "no cluster 999999",
    );
    refused(
        fb(
            json!({ "command_id": "s-1", "op": "split", "face_ids": ["no-such-face"] }),
            Some(TOKEN),
        ),
        404,
        "no face",
    );
    refused(
        fb(
            json!({ "command_id": "x-1", "op": "explode", "cluster_id": 1 }),
            Some(TOKEN),
        ),
        400,
        "bad command",
    );
    refused(
        fb(
            json!({ "command_id": "x-2", "op": "name", "cluster_id": 1, "colour": "red" }),
            Some(TOKEN),
        ),
        400,
        "unknown field",
    );
    refused(
        fb(
            json!({ "op": "name", "cluster_id": 1, "name": "A" }),
            Some(TOKEN),
        ),
        400,
        "command_id is missing",
    );
    refused(
        http(
            port,
            "POST",
            "/v1/feedback",
            Some(TOKEN),
            Some(b"{\"op\": "),
        ),
        400,
        "bad body",
    );

    // Nothing above changed the membership: the same first page as before.
    let (st, again) = get(port, "/v1/clusters?order=size&limit=7");
    assert_eq!(st, 200);
    assert_eq!(again["total"].as_u64().unwrap(), clusters.len() as u64);
    Answers {
        clusters,
        sizes_in_order,
        face3_cluster,
    }
}

/// A cluster's faces through its pages; its representatives are among them.
fn cluster_faces(port: u16, id: u64) -> BTreeSet<String> {
    let mut faces = BTreeSet::new();
    let mut cursor: Option<u64> = None;
    loop {
        let path = match cursor {
            None => format!("/v1/clusters/{id}?limit=20"),
            Some(c) => format!("/v1/clusters/{id}?limit=20&cursor={c}"),
        };
        let (st, v) = get(port, &path);
        assert_eq!(st, 200, "{v}");
        for f in v["face_ids"].as_array().unwrap() {
            assert!(
                faces.insert(f.as_str().unwrap().to_string()),
                "face listed twice"
            );
        }
        let size = v["size"].as_u64().unwrap() as usize;
        let reps = v["representative_face_ids"].as_array().unwrap();
        assert_eq!(reps.len(), size.min(5));
        match v["next"].as_u64() {
            Some(c) => cursor = Some(c),
            None => {
                for r in reps {
                    assert!(
                        faces.contains(r.as_str().unwrap()),
                        "representative {r} is a member"
                    );
                }
                return faces;
            }
        }
    }
}

/// `demo --serve`: after the stream, the API line and a serving line on stderr; the API answers
/// with the printed token; SIGTERM ends it cleanly with the report.
#[test]
fn demo_serve_stays_up_until_sigterm() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_clip-cluster"))
        .args(["demo", "--synthetic", "300", "--serve", "--json"])
        .env("CLIP_CLUSTER__API__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("serving") {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no serving line:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let line = text
        .lines()
        .find(|l| l.starts_with("api: http://"))
        .expect("the API line");
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    let token = line.rsplit("token: ").next().unwrap().trim().to_string();
    assert!(token.len() >= 16, "{line}");
    let (st, v) = http(port, "GET", "/v1/clusters?limit=3", Some(&token), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["clusters"].as_array().unwrap().len(), 3);
    // The review page's address beside it; the page itself needs no token (it holds no data).
    let ui = text
        .lines()
        .find(|l| l.starts_with("review page: http://"))
        .expect("the review page line");
    assert!(ui.contains(&format!("127.0.0.1:{port}/ui")), "{ui}");
    let (st, page) = http(port, "GET", "/ui", None, None);
    assert_eq!(st, 200);
    assert!(page["raw"]
        .as_str()
        .unwrap()
        .contains("<title>clip-cluster review</title>"));
    refused(
        http(port, "GET", "/v1/clusters", Some("wrong"), None),
        401,
        "wrong token",
    );
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(report["n_faces"], json!(300));
}
