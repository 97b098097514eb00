//! The review page (`/ui`) in a real headless Chromium against the real daemon on the mock
//! cluster: real LFW photos embedded by the daemon, their thumbnails shown; a write without the
//! token refused with a visible message; the token asked once; a merge and a name done by
//! clicking, seen by the API and after a reload; a screenshot left for people to look at.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::api::{http, TOKEN};
use crate::cdp::Browser;
use crate::support::*;

const PEOPLE: [&str; 3] = ["George_W_Bush", "Colin_Powell", "Tony_Blair"];
const PHOTOS: usize = 4;

fn get(port: u16, path: &str) -> Value {
    let (st, v) = http(port, "GET", path, Some(TOKEN), None);
    assert_eq!(st, 200, "GET {path}: {v}");
    v
}

/// Runs `js` (a statement list) on the page; `true` at the end so the value is JSON.
fn run(b: &Browser, js: &str) {
    b.eval(&format!("{{ {js} }}; true"));
}

fn text(b: &Browser, id: &str) -> String {
    b.eval(&format!("document.getElementById({id:?}).textContent"))
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits for the page to finish drawing `view` (its `data-ready` mark).
fn ready(b: &Browser, view: &str) {
    b.wait_for(
        &format!("document.body.dataset.ready === {view:?}"),
        Duration::from_secs(90),
        &format!("the page shows {view}"),
    );
}

/// Types the API token into the page's token dialog and submits it.
fn give_token(b: &Browser) {
    run(
        b,
        &format!(
            "document.getElementById('token').value = {TOKEN:?}; \
             document.getElementById('token-form').requestSubmit();"
        ),
    );
}

/// Selects the opened cluster's last face by clicking it, then presses button `id`; its face id.
fn last_face_then(b: &Browser, id: &str) -> String {
    let face = b.eval("[...document.querySelectorAll('#faces .face')].pop().dataset.face");
    run(
        b,
        &format!(
            "[...document.querySelectorAll('#faces .face img')].pop().click(); \
             document.getElementById({id:?}).click();"
        ),
    );
    face.as_str().unwrap().to_string()
}

/// The message bar shows `what` (visible, not hidden).
fn message(b: &Browser, what: &str) {
    b.wait_for(
        &format!(
            "(() => {{ const m = document.getElementById('message'); return !m.hidden && m.offsetHeight > 0 && m.textContent.includes({what:?}); }})()"
        ),
        Duration::from_secs(90),
        &format!(
            "a visible message saying {what:?} (it says {:?})",
            b.eval("document.getElementById('message').textContent")
        ),
    );
}

#[test]
fn the_review_page_shows_thumbnails_and_its_merge_and_name_hold() {
    if models_dir().is_none() {
        return;
    }
    let Some(lfw) = lfw_root("review page") else {
        return;
    };
    let Some(b) = Browser::launch("review page") else {
        return;
    };
    let kafka = mock(1);
    let p = producer(kafka.bootstrap_servers());
    let mut ids = Vec::new();
    for name in PEOPLE {
        for n in 1..=PHOTOS {
            let bytes = std::fs::read(clip_cluster::eval::lfw::image_path(&lfw, name, n)).unwrap();
            let id = format!("{name}_{n}");
            let env = json!({
                "face_id": id,
                "source_id": "album",
                "image_b64": base64::engine::general_purpose::STANDARD.encode(&bytes),
            });
            send(&p, &id, &serde_json::to_vec(&env).unwrap());
            ids.push(id);
        }
    }
    // An embedding whose producer keeps its own crops: the page is given its URL.
    let mut v = vec![0.0f32; 128];
    v[0] = 1.0;
    let url = "https://photos.example/crops/far-away.jpg";
    send(
        &p,
        "far-away",
        &serde_json::to_vec(
            &json!({ "face_id": "far-away", "embedding": v, "thumbnail_url": url }),
        )
        .unwrap(),
    );
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(90)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (admin, api) = (free_port(), free_port());
    let mut envs = env(
        kafka.bootstrap_servers(),
        &dir.path().join("state"),
        128,
        &format!("127.0.0.1:{admin}"),
    );
    envs.retain(|(k, _)| k != "CLIP_CLUSTER__API__LISTEN");
    envs.extend([
        (
            "CLIP_CLUSTER__API__LISTEN".into(),
            format!("127.0.0.1:{api}"),
        ),
        ("CLIP_CLUSTER__API__TOKEN".into(), TOKEN.into()),
        // Reads without the token, writes with it: the page shows clusters at once and asks
        // for the token at the first write.
        ("CLIP_CLUSTER__API__PUBLIC_READS".into(), "true".into()),
    ]);
    let log = dir.path().join("daemon.log");
    let mut child = start(&envs, &log);
    let applied = || metric(admin, "clip_cluster_faces_applied_total").unwrap_or(0.0);
    let t0 = std::time::Instant::now();
    while applied() < (ids.len() + 1) as f64 {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "faces applied: {}\n{}",
            applied(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The domain's edge threshold is exported: the trained parts' engine.t1 (0.9) here.
    let (_, body) = http_get(admin, "/metrics").unwrap();
    let threshold: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with("clip_cluster_domain_edge_threshold{"))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    assert!(
        threshold.len() == 1 && (threshold[0] - 0.9).abs() < 1e-6,
        "{threshold:?}"
    );

    // The API's view: thumbnails kept for embedded images, the producer's URL for the other.
    let face = get(api, "/v1/faces/George_W_Bush_1");
    assert_eq!(face["thumbnail"], "/v1/faces/George_W_Bush_1/thumbnail");
    let (st, _) = http(api, "GET", "/v1/faces/far-away/thumbnail", None, None);
    assert_eq!(st, 303, "the producer's picture is elsewhere");
    assert_eq!(get(api, "/v1/faces/far-away")["thumbnail"], url);
    let list = get(api, "/v1/clusters?limit=50");
    let clusters = list["clusters"].as_array().unwrap().clone();
    assert!(clusters.len() >= 2, "{list}");
    let largest = &clusters[0];
    let id_of = |c: &Value| c["cluster_id"].as_u64().unwrap();
    let cluster_of = |face: &str| {
        get(api, &format!("/v1/faces/{face}"))["cluster_id"]
            .as_u64()
            .unwrap()
    };
    let size_of = |id: u64| {
        get(api, &format!("/v1/clusters/{id}"))["size"]
            .as_u64()
            .unwrap()
    };
    // What the reviewer merges: Tony Blair's cluster and another of his, if the stream split
    // him, else the next cluster in the list.
    let a = cluster_of("Tony_Blair_1");
    let b_id = (2..=PHOTOS)
        .map(|n| cluster_of(&format!("Tony_Blair_{n}")))
        .find(|&c| c != a)
        .unwrap_or_else(|| clusters.iter().map(id_of).find(|&c| c != a).unwrap());
    let (size_a, size_b) = (size_of(a), size_of(b_id));

    // The page: the largest cluster first, its thumbnails loaded from the API.
    b.navigate(&format!("http://127.0.0.1:{api}/ui"));
    ready(&b, "list");
    let first = b.eval("document.querySelector('.cluster').dataset.id");
    assert_eq!(first, json!(id_of(largest).to_string()), "{list}");
    let shown = b.eval("document.querySelectorAll('.cluster').length");
    assert_eq!(shown, json!(clusters.len().min(20)));
    assert!(
        text(&b, "clusters").contains(&format!("{} faces", largest["size"])),
        "{}",
        text(&b, "clusters")
    );
    b.wait_for(
        "(() => { const imgs = [...document.querySelector('.cluster').querySelectorAll('img')]; \
         return imgs.length > 0 && imgs.every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0); })()",
        Duration::from_secs(90),
        "the largest cluster's thumbnails loaded",
    );
    // Paged: every list request asked for one page, never for everything.
    let asked = b.eval(
        "performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/v1/clusters?'))",
    );
    let asked = asked.as_array().unwrap();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|u| u.as_str().unwrap().contains("limit=20")),
        "{asked:?}"
    );

    // A write without the token: refused, and the page says so where it can be seen.
    run(
        &b,
        &format!(
            "document.querySelector('.cluster[data-id=\"{}\"] .pick').click(); \
             document.querySelector('.cluster[data-id=\"{}\"] .pick').click(); \
             document.getElementById('merge').click();",
            a, b_id
        ),
    );
    message(&b, "refused (401)");
    assert!(
        text(&b, "message").contains("Authorization"),
        "{}",
        text(&b, "message")
    );
    assert_eq!(
        b.eval("document.getElementById('token-dialog').open"),
        json!(true)
    );
    assert_eq!(
        get(api, "/v1/clusters?limit=1")["total"],
        list["total"],
        "nothing changed"
    );

    // The token, once; then the same merge goes through.
    give_token(&b);
    ready(&b, "list");
    run(&b, "document.getElementById('merge').click();");
    message(&b, "merged 2 clusters");
    // A merge keeps the older id.
    let (kept, gone) = (a.min(b_id), a.max(b_id));
    assert_eq!(size_of(kept), size_a + size_b);
    let (st, _) = http(
        api,
        "GET",
        &format!("/v1/clusters/{gone}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(st, 404, "the merged-away cluster is gone");

    // Open the merged cluster and name it.
    run(&b, &format!("location.hash = '#/cluster/{kept}';"));
    ready(&b, "cluster");
    b.wait_for(
        "document.querySelectorAll('#faces img').length > 0 && \
         [...document.querySelectorAll('#faces img')].every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)",
        Duration::from_secs(90),
        "the opened cluster's faces loaded",
    );
    run(
        &b,
        "document.getElementById('name-input').value = 'Tony Blair'; \
         document.getElementById('name-form').requestSubmit();",
    );
    message(&b, "named");
    assert_eq!(
        get(api, &format!("/v1/clusters/{kept}"))["name"],
        "Tony Blair"
    );

    // After a reload (the token kept for the tab): the name and the merge are still there.
    b.reload();
    ready(&b, "cluster");
    assert!(text(&b, "detail-title").contains("Tony Blair"));

    // In another cluster (no merge's must-link in it), split a face off by clicking it: it
    // leaves for a cluster of its own.
    let other = clusters
        .iter()
        .map(id_of)
        .find(|&c| c != kept && c != gone && size_of(c) >= 2)
        .expect("another cluster of several faces");
    let other_size = size_of(other);
    let before: Vec<String> = get(api, &format!("/v1/clusters/{other}?limit=1000"))["face_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    run(&b, &format!("location.hash = '#/cluster/{other}';"));
    ready(&b, "cluster");
    let split_face = last_face_then(&b, "split");
    message(&b, "split 1 face off");
    let new_home = cluster_of(&split_face);
    assert_ne!(new_home, other, "{split_face} left");
    // What the split promises: the face is apart from every face it left. The faces that stayed
    // keep the links the graph gives them (those joined only through the split face part too).
    for f in before.iter().filter(|f| **f != split_face) {
        assert_ne!(
            cluster_of(f),
            new_home,
            "{f} stayed apart from {split_face}"
        );
    }
    assert!(size_of(other) < other_size, "the cluster lost a face");

    // "Not this person" for another of its faces: it leaves and stays out.
    let not_this = last_face_then(&b, "not-this");
    message(&b, "not this person");
    assert_ne!(cluster_of(&not_this), other, "{not_this} left");

    // Erasing a face asks for a second click, then forgets it and its picture (once the view
    // shows the faces left).
    b.wait_for(
        "document.querySelector('#faces .face img') !== null",
        Duration::from_secs(90),
        "the cluster's faces shown again",
    );
    let erased = b.eval("document.querySelector('#faces .face').dataset.face");
    let erased = erased.as_str().unwrap().to_string();
    run(
        &b,
        "document.querySelector('#faces .face img').click(); \
         document.getElementById('erase-faces').click();",
    );
    assert!(text(&b, "erase-faces").contains("click again"));
    assert_eq!(
        http(
            api,
            "GET",
            &format!("/v1/faces/{erased}"),
            Some(TOKEN),
            None
        )
        .0,
        200
    );
    run(&b, "document.getElementById('erase-faces').click();");
    message(&b, "erased 1 face");
    for path in [
        format!("/v1/faces/{erased}"),
        format!("/v1/faces/{erased}/thumbnail"),
    ] {
        assert_eq!(http(api, "GET", &path, Some(TOKEN), None).0, 404, "{path}");
    }

    // Search by a photo the stream never had: the nearest cluster is his.
    let photo = clip_cluster::eval::lfw::image_path(&lfw, "Tony_Blair", PHOTOS + 1);
    // The file goes in as a user's pick would (a File in the input, then its change event).
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&photo).unwrap());
    run(
        &b,
        &format!(
            "const bytes = Uint8Array.from(atob({b64:?}), c => c.charCodeAt(0)); \
             const t = new DataTransfer(); \
             t.items.add(new File([bytes], 'Tony_Blair_new.jpg', {{ type: 'image/jpeg' }})); \
             const input = document.getElementById('search-file'); \
             input.files = t.files; \
             input.dispatchEvent(new Event('change'));"
        ),
    );
    ready(&b, "search");
    let found = b.eval("document.querySelector('#search-results .cluster').dataset.id");
    assert_eq!(
        found,
        json!(kept.to_string()),
        "{}",
        text(&b, "search-results")
    );
    assert!(
        text(&b, "search-query").contains("detected"),
        "{}",
        text(&b, "search-query")
    );

    run(&b, "location.hash = '#/';");
    ready(&b, "list");
    let named = b.eval(&format!(
        "document.querySelector('.cluster[data-id=\"{kept}\"] .open').textContent"
    ));
    assert_eq!(named, json!("Tony Blair"), "{}", text(&b, "clusters"));
    b.wait_for(
        "[...document.querySelectorAll('.cluster img')].every(i => i.complete)",
        Duration::from_secs(90),
        "every picture settled",
    );
    let shot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-test/review-page.png");
    b.screenshot(&shot);
    eprintln!("review page screenshot: {}", shot.display());
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    let console = b.console();
    assert!(
        !console.iter().any(|l| l.starts_with("uncaught")),
        "{console:?}"
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

/// Thumbnails live with their faces: kept when `api.keep_thumbnails` is on (also through the
/// calibration warm-up and a restart), never when it is off, gone when the face is erased, and
/// carried to the new state by a recluster under the new sequence numbers.
#[test]
fn thumbnails_are_kept_erased_with_their_face_and_carried_by_a_recluster() {
    use clip_cluster::clusterer::{recluster, Clusterer, EraseTarget};
    use clip_cluster::engine::Face;
    use rand::SeedableRng;

    // Capture times: now (a time in the future would count from arrival), or long ago.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let vs = clustered_vectors(&mut rng, 40, 6);
    let jpeg = |i: usize| [&[0xFF, 0xD8, 0xFF][..], format!("face {i}").as_bytes()].concat();
    let faces: Vec<Face> = vs
        .iter()
        .enumerate()
        .map(|(i, v)| Face {
            thumbnail: if i % 4 == 3 { Vec::new() } else { jpeg(i) },
            meta: clip_cluster::engine::FaceMeta {
                // f38 and f39 were taken long ago: retention takes them.
                ts: Some(if i >= 38 { 1_000 } else { now }),
                ..Default::default()
            },
            ..Face::new(format!("f{i}"), v.clone())
        })
        .collect();
    let thumb = |c: &Clusterer, id: &str| {
        let seq = c.engine().seq_of(id).unwrap();
        c.store().thumbnail(seq).unwrap()
    };
    for warm_up in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mode = if warm_up { "stream" } else { "trained" };
        let cfg = small_config(
            &dir.path().join("a"),
            &[("CALIBRATION__MODE", mode), ("CALIBRATION__WARMUP", "10")],
        );
        {
            let mut c = Clusterer::open(&cfg).unwrap();
            for chunk in faces.chunks(7) {
                c.apply(chunk, &[]).unwrap();
            }
            c.erase(&EraseTarget::Face("f0".into()), false)
                .unwrap()
                .unwrap();
            // Retention erases by the time index, which the thumbnails must not be read as.
            let (report, _) = c.expire(now as u64 + 60_000, 86_400_000, 100).unwrap();
            assert_eq!(report.erased, ["f38", "f39"]);
        }
        let c = Clusterer::open(&cfg).unwrap();
        for i in 1..38 {
            let want = (i % 4 != 3).then(|| jpeg(i));
            assert_eq!(thumb(&c, &format!("f{i}")), want, "f{i} ({mode})");
        }
        for gone in ["f0", "f38"] {
            let erased = c.engine().seq_of(gone).unwrap();
            assert_eq!(
                c.store().thumbnail(erased).unwrap(),
                None,
                "erased with {gone}"
            );
        }
        drop(c);

        let new_cfg = small_config(
            &dir.path().join("b"),
            &[("CALIBRATION__MODE", mode), ("ENGINE__T1", "0.85")],
        );
        recluster(&dir.path().join("a"), &new_cfg).unwrap();
        let r = Clusterer::open(&new_cfg).unwrap();
        for i in 1..38 {
            let want = (i % 4 != 3).then(|| jpeg(i));
            assert_eq!(
                thumb(&r, &format!("f{i}")),
                want,
                "f{i} after the recluster"
            );
        }
    }
    // Off: none kept, whatever the faces carry.
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path(), &[("API__KEEP_THUMBNAILS", "false")]);
    let mut c = Clusterer::open(&cfg).unwrap();
    c.apply(&faces, &[]).unwrap();
    assert!((0..faces.len()).all(|i| thumb(&c, &format!("f{i}")).is_none()));
}

/// At 100,000 clusters the page still opens on one page of 20 (the list is paged: no request
/// asks for everything), pages forward, and opens a cluster; the API it calls is served
/// in-process over a state built directly (a vector-only domain where every face is alone).
#[test]
fn the_review_page_stays_usable_at_a_hundred_thousand_clusters() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, RwLock};

    use clip_cluster::api::{Access, Domains, Shared};
    use clip_cluster::clusterer::Clusterer;
    use clip_cluster::engine::Face;
    use rand::{Rng, SeedableRng};

    const N: usize = 100_000;
    let Some(b) = Browser::launch("100,000 clusters") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(
        dir.path(),
        &[
            ("MODEL__DIM", "16"),
            ("ENGINE__T1", "0.999"),
            ("ENGINE__K", "2"),
            ("INDEX__SNAPSHOT_EVERY_FACES", "1000000"),
        ],
    );
    let mut c = Clusterer::open(&cfg).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(100);
    let faces: Vec<Face> = (0..N)
        .map(|i| {
            Face::new(
                format!("f{i}"),
                (0..16).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            )
        })
        .collect();
    for chunk in faces.chunks(5_000) {
        c.apply(chunk, &[]).unwrap();
    }
    let domains: Domains = Arc::new(RwLock::new(BTreeMap::from([(
        "default".to_string(),
        Shared::new(c),
    )])));
    let access = Access {
        token: Some(TOKEN.into()),
        public_reads: false,
        max_body_bytes: 1 << 20,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = clip_cluster::api::router(
        domains,
        access,
        clip_cluster::telemetry::Metrics::new(),
        None,
    );
    rt.spawn(async move { axum::serve(listener, router).await });
    let total = get(port, "/v1/clusters?limit=1")["total"].as_u64().unwrap();
    assert!(total > 99_000, "{total} clusters");

    let t = std::time::Instant::now();
    b.navigate(&format!("http://127.0.0.1:{port}/ui"));
    b.wait_for(
        "document.getElementById('token-dialog').open",
        Duration::from_secs(90),
        "the token asked for",
    );
    give_token(&b);
    ready(&b, "list");
    let first_page = t.elapsed();
    assert_eq!(
        b.eval("document.querySelectorAll('.cluster').length"),
        json!(20)
    );
    assert!(text(&b, "total").contains(&format!("{total} clusters")));
    let first = b.eval("document.querySelector('.cluster').dataset.id");
    let t = std::time::Instant::now();
    run(&b, "document.getElementById('next').click();");
    b.wait_for(
        &format!(
            "document.body.dataset.ready === 'list' && document.getElementById('page').textContent === 'page 2' \
             && document.querySelector('.cluster').dataset.id !== {first}"
        ),
        Duration::from_secs(90),
        "the second page",
    );
    let second_page = t.elapsed();
    let t = std::time::Instant::now();
    run(&b, "document.querySelector('.cluster .open').click();");
    ready(&b, "cluster");
    let opened = t.elapsed();
    let asked = b.eval(
        "performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/v1/clusters?'))",
    );
    assert!(
        asked
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u.as_str().unwrap().contains("limit=20")),
        "{asked}"
    );
    eprintln!(
        "review page at {total} clusters: first page {first_page:?} (with the token dialog), next page {second_page:?}, a cluster opened {opened:?}"
    );
}
