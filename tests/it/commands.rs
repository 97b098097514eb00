//! Operator commands by every road against the real daemon on the mock cluster: the command
//! topic (applied once, refusals and bad messages counted, nothing applied again after a
//! restart), erasure over the API (bad requests refused and counted, nothing changed), and the
//! CLI through the API, the topic and a stopped daemon's state.

use std::time::Duration;

use clip_cluster::clusterer::Clusterer;
use clip_cluster::eval::synth::{generate, SynthParams};
use clip_cluster::telemetry::Metrics;
use rdkafka::producer::Producer;
use serde_json::{json, Value};

use crate::api::{http, refused, TOKEN};
use crate::support::*;

/// The CLI's `command` with the test daemon's configuration: (exit ok, stdout, stderr).
fn cli(envs: &[(String, String)], args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clip-cluster"))
        .arg("command")
        .args(args)
        .envs(envs.iter().cloned())
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the daemon in-process until `client` returns, then stops it.
fn with_daemon<T: Send + 'static>(
    envs: &[(String, String)],
    metrics: &Metrics,
    client: impl FnOnce(Metrics) -> T + Send + 'static,
) -> T {
    let cfg = clip_cluster::config::Config::load_from(None, envs).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = metrics.clone();
    rt.block_on(async move {
        let daemon = clip_cluster::pipeline::run(cfg, m.clone(), stop_rx);
        let client = async move {
            let r = tokio::task::spawn_blocking(move || client(m))
                .await
                .unwrap();
            stop_tx.send(true).unwrap();
            r
        };
        let (summary, r) = tokio::join!(daemon, client);
        summary.unwrap();
        r
    })
}

/// Blocks until `done` holds (at most 60 s), saying `what` otherwise.
fn wait(done: impl Fn() -> bool, what: impl Fn() -> String) {
    let t = std::time::Instant::now();
    while !done() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "not done: {}",
            what()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn counts(m: &Metrics) -> [u64; 4] {
    ["applied", "duplicate", "refused", "bad"].map(|o| m.commands.with_label_values(&[o]).get())
}

#[test]
fn commands_by_topic_api_and_cli_apply_once_and_bad_ones_change_nothing() {
    let (dim, n) = (32, 240);
    let s = generate(SynthParams::new(n, dim, 5));
    let vs: Vec<Vec<f32>> = s.data.chunks(dim).map(<[f32]>::to_vec).collect();
    let kafka = mock(1);
    let p = producer(kafka.bootstrap_servers());
    for (i, v) in vs.iter().enumerate() {
        send(&p, &format!("face-{i}"), &face_payload(i, v));
    }
    // Three faces of another source, for erasure by source.
    for (i, v) in vs.iter().take(3).enumerate() {
        let meta = clip_cluster::engine::FaceMeta {
            source_id: Some("cam-x".into()),
            ..Default::default()
        };
        let id = format!("x-{i}");
        send(
            &p,
            &id,
            &clip_cluster::decode::embedding_envelope(&id, &meta, v),
        );
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let mut envs = env(kafka.bootstrap_servers(), &state, dim, "127.0.0.1:0");
    envs.retain(|(k, _)| k != "CLIP_CLUSTER__API__LISTEN");
    envs.push((
        "CLIP_CLUSTER__API__LISTEN".into(),
        format!("127.0.0.1:{port}"),
    ));
    envs.push(("CLIP_CLUSTER__API__TOKEN".into(), TOKEN.into()));
    let get = move |path: &str| http(port, "GET", path, Some(TOKEN), None);

    let metrics = Metrics::new();
    let (bootstrap, envs2) = (kafka.bootstrap_servers().to_string(), envs.clone());
    let (a, b, c, gone) = with_daemon(&envs, &metrics, move |m| {
        wait(
            || m.faces_applied.get() >= (n + 3) as u64 && m.outbox_depth.get() == 0,
            || format!("applied {}", m.faces_applied.get()),
        );
        let (st, page) = get("/v1/clusters?order=size&limit=3");
        assert_eq!(st, 200, "{page}");
        let ids: Vec<u64> = page["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cluster_id"].as_u64().unwrap())
            .collect();
        let (a, b, c) = (ids[0], ids[1], ids[2]);
        let faces_of = |id: u64| -> Vec<String> {
            get(&format!("/v1/clusters/{id}?limit=50")).1["face_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect()
        };
        let (fb, fc) = (faces_of(b), faces_of(c));
        let (erase_by_topic, erase_by_api) = (fb[0].clone(), fc[0].clone());

        // The command topic: good, bad, refused and repeated commands.
        let p = producer(&bootstrap);
        for cmd in [
            json!({"command_id": "k1", "op": "name", "cluster_id": a, "name": "Ann"}).to_string(),
            "not json".to_string(),
            json!({"command_id": "k2", "op": "fly"}).to_string(),
            json!({"command_id": "k3", "op": "name", "cluster_id": a, "name": "x", "domain": "elsewhere"}).to_string(),
            json!({"command_id": "k4", "op": "erase_face", "face_id": erase_by_topic}).to_string(),
            json!({"command_id": "k1", "op": "name", "cluster_id": a, "name": "Ann"}).to_string(),
            json!({"command_id": "k5", "op": "erase_cluster", "cluster_id": 999_999}).to_string(),
            json!({"command_id": "k6", "op": "erase_source", "source_id": "cam-x"}).to_string(),
        ] {
            send_command(&p, cmd.as_bytes());
        }
        p.flush(Duration::from_secs(10)).unwrap();
        wait(
            || counts(&m) == [3, 1, 1, 3],
            || {
                format!(
                    "commands [applied, duplicate, refused, bad] = {:?}",
                    counts(&m)
                )
            },
        );
        assert_eq!(get(&format!("/v1/clusters/{a}")).1["name"], "Ann");
        refused(get(&format!("/v1/faces/{erase_by_topic}")), 404, "no face");
        for i in 0..3 {
            refused(get(&format!("/v1/faces/x-{i}")), 404, "no face");
        }

        // Erasure over the API: bad requests first, each refused and changing nothing.
        let path = format!("/v1/faces/{erase_by_api}");
        refused(
            http(port, "DELETE", &path, None, None),
            401,
            "Authorization: Bearer",
        );
        refused(
            http(port, "DELETE", &path, Some("nope"), None),
            401,
            "wrong token",
        );
        refused(
            http(port, "DELETE", "/v1/clusters/abc", None, None),
            401,
            "Authorization",
        );
        refused(
            http(port, "DELETE", "/v1/clusters/abc", Some(TOKEN), None),
            400,
            "not a number",
        );
        refused(
            http(port, "DELETE", "/v1/clusters/999999", Some(TOKEN), None),
            404,
            "no cluster",
        );
        refused(
            http(port, "DELETE", "/v1/faces/nobody", Some(TOKEN), None),
            404,
            "no face",
        );
        refused(
            http(
                port,
                "DELETE",
                &format!("{path}?compact=maybe"),
                Some(TOKEN),
                None,
            ),
            400,
            "compact",
        );
        refused(
            http(
                port,
                "DELETE",
                &format!("{path}?colour=red"),
                Some(TOKEN),
                None,
            ),
            400,
            "colour",
        );
        refused(
            http(
                port,
                "DELETE",
                &format!("{path}?domain=elsewhere"),
                Some(TOKEN),
                None,
            ),
            404,
            "elsewhere",
        );
        assert_eq!(get(&path).0, 200, "the refused erasures left the face");
        let (st, r) = http(
            port,
            "DELETE",
            &format!("{path}?compact=true"),
            Some(TOKEN),
            None,
        );
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["n_erased"], 1);
        assert_eq!(r["domains"][0]["erased"], json!([erase_by_api]));
        assert_eq!(r["domains"][0]["compacted"], true);
        refused(get(&path), 404, "no face");
        refused(
            http(port, "DELETE", &path, Some(TOKEN), None),
            404,
            "no face",
        );

        // The CLI through the API and through the command topic.
        let named = json!({"op": "name", "cluster_id": b, "name": "Bob"}).to_string();
        let (ok, out, err) = cli(&envs2, &[&named]);
        assert!(ok, "{err}");
        let report: Value = serde_json::from_str(&out).expect("the CLI prints the report");
        assert_eq!(report["op"], "name", "{out}");
        assert!(report["command_id"].as_str().unwrap().starts_with("cli-"));
        assert_eq!(get(&format!("/v1/clusters/{b}")).1["name"], "Bob");
        let (ok, _, err) = cli(&envs2, &[r#"{"op":"merge","cluster_ids":[999999,999998]}"#]);
        assert!(
            !ok && err.contains("404"),
            "a refused command fails the CLI: {err}"
        );
        let (ok, _, err) = cli(&envs2, &["{\"op\":"]);
        assert!(!ok && err.contains("not JSON"), "{err}");
        let queued =
            json!({"command_id": "k7", "op": "name", "cluster_id": c, "name": "Cy"}).to_string();
        let (ok, out, err) = cli(&envs2, &["--via", "kafka", &queued]);
        assert!(ok, "{err}");
        assert!(out.contains("\"queued\": true"), "{out}");
        wait(
            || counts(&m)[0] == 4,
            || format!("commands {:?}", counts(&m)),
        );
        assert_eq!(get(&format!("/v1/clusters/{c}")).1["name"], "Cy");
        (a, b, c, [erase_by_topic, erase_by_api])
    });
    let api_refusals = |o: &str| metrics.api_requests.with_label_values(&[o]).get();
    assert!(api_refusals("unauthorized") >= 3);
    assert!(api_refusals("bad_request") >= 3);
    assert!(api_refusals("not_found") >= 4);

    // A restart reads the topic from each domain's position: nothing is applied again; a new
    // command is.
    let again = Metrics::new();
    let bootstrap = kafka.bootstrap_servers().to_string();
    with_daemon(&envs, &again, move |m| {
        wait(|| m.ready.get() == 1, || "ready".into());
        let p = producer(&bootstrap);
        let cmd = json!({"command_id": "k8", "op": "name", "cluster_id": a, "name": "Anna"});
        send_command(&p, cmd.to_string().as_bytes());
        p.flush(Duration::from_secs(10)).unwrap();
        wait(
            || counts(&m)[0] == 1,
            || format!("commands {:?}", counts(&m)),
        );
        // Anything still to be re-read would have come before k8.
        assert_eq!(counts(&m), [1, 0, 0, 0], "only the new command is read");
    });

    // The CLI on the stopped daemon's state.
    let last = (9..12)
        .map(|i| format!("face-{i}"))
        .find(|f| !gone.contains(f))
        .unwrap();
    let cmd = json!({"op": "erase_face", "face_id": last}).to_string();
    let (ok, out, err) = cli(&envs, &["--via", "state", &cmd]);
    assert!(ok, "{err}");
    assert!(out.contains(&last), "{out}");
    let cfg = clip_cluster::config::Config::load_from(None, &envs).unwrap();
    let cl = Clusterer::open(&cfg).unwrap();
    let e = cl.engine();
    assert!(e.is_erased(e.seq_of(&last).unwrap()));
    assert_eq!(
        e.n_erased(),
        6,
        "k4's, three of cam-x, the API's, the CLI's"
    );
    assert_eq!(e.cluster_name(a), Some("Anna"));
    assert_eq!(e.cluster_name(b), Some("Bob"));
    assert_eq!(e.cluster_name(c), Some("Cy"));
}

/// `retention.max_age` in the daemon: faces captured before it are erased by the sweeps, with
/// their `FaceErased` events (reason `retention`) on the events topic; the others stay.
#[test]
fn the_daemon_forgets_faces_past_retention() {
    let (dim, n) = (32, 60);
    let s = generate(SynthParams::new(n, dim, 8));
    let kafka = mock(1);
    let p = producer(kafka.bootstrap_servers());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (i, v) in s.data.chunks(dim).enumerate() {
        let meta = clip_cluster::engine::FaceMeta {
            ts: Some(if i % 3 == 0 { now - 7_200_000 } else { now }),
            ..Default::default()
        };
        let id = format!("face-{i}");
        send(
            &p,
            &id,
            &clip_cluster::decode::embedding_envelope(&id, &meta, v),
        );
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut envs = env(kafka.bootstrap_servers(), &state, dim, "127.0.0.1:0");
    envs.push(("CLIP_CLUSTER__RETENTION__MAX_AGE".into(), "1h".into()));
    envs.push((
        "CLIP_CLUSTER__RETENTION__SWEEP_INTERVAL_S".into(),
        "1".into(),
    ));
    let metrics = Metrics::new();
    with_daemon(&envs, &metrics, move |m| {
        let erased = || m.faces_erased.with_label_values(&["retention"]).get();
        wait(
            || {
                m.faces_applied.get() == n as u64
                    && erased() == (n / 3) as u64
                    && m.outbox_depth.get() == 0
            },
            || format!("applied {}, erased {}", m.faces_applied.get(), erased()),
        );
    });
    let records = read_topic(
        kafka.bootstrap_servers(),
        EVENTS,
        Duration::from_secs(30),
        |r| {
            events(r)
                .iter()
                .filter(|(_, e)| e["type"] == "FaceErased" && e["reason"] == "retention")
                .count()
                == n / 3
        },
    );
    let gone: Vec<String> = events(&records)
        .into_iter()
        .filter(|(_, e)| e["type"] == "FaceErased")
        .map(|(_, e)| e["face_id"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..n).step_by(3).map(|i| format!("face-{i}")).collect();
    let mut got = gone.clone();
    got.sort_by_key(|f| f[5..].parse::<usize>().unwrap());
    assert_eq!(got, want);
    let cfg = clip_cluster::config::Config::load_from(None, &envs).unwrap();
    let c = Clusterer::open(&cfg).unwrap();
    assert_eq!(c.engine().n_erased(), n / 3);
}
