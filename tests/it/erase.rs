//! Erasure: random interleavings of insertions, commands and erasures leave no erased face in
//! any edge, cluster or constraint, keep every constraint, and (exact rule) keep the clusters
//! equal to the rule computed at once over the live faces, and (any rule) every cluster
//! connected; erased ids are refused when they
//! come again; a restart anywhere (before and after compaction) equals an uninterrupted run;
//! the store forgets the face's records.

use std::collections::BTreeMap;

use clip_cluster::clusterer::{Clusterer, EraseTarget};
use clip_cluster::engine::feedback::{Command, Op};
use clip_cluster::engine::{Engine, Event, Face, FaceMeta, FaceRef};
use clip_cluster::index::{ExactIndex, NeighborIndex};
use rand::{Rng, SeedableRng};

use crate::support::{clustered_vectors, small_config, small_params};

/// Canonical partition of the live faces.
fn canon<L: Ord + Copy>(labels: &[L], live: &[bool]) -> Vec<Vec<u32>> {
    let mut m: BTreeMap<L, Vec<u32>> = BTreeMap::new();
    for (i, l) in labels.iter().enumerate() {
        if live[i] {
            m.entry(*l).or_default().push(i as u32);
        }
    }
    let mut v: Vec<Vec<u32>> = m.into_values().collect();
    v.sort();
    v
}

fn check(e: &Engine<ExactIndex>, what: &str) {
    let n = e.n_faces() as u32;
    let a = e.assignments();
    for s in 0..n {
        for (to, _) in e.out_list(s) {
            assert!(!e.is_erased(to), "{what}: {s} keeps an edge to erased {to}");
        }
        if e.is_erased(s) {
            assert!(e.out_list(s).is_empty(), "{what}: erased {s} has edges");
        }
    }
    let r = e.constraints();
    for (x, y) in r.cannot_pairs().into_iter().chain(r.must_pairs()) {
        assert!(
            !e.is_erased(x) && !e.is_erased(y),
            "{what}: a constraint on an erased face"
        );
    }
    for (x, y) in r.cannot_pairs() {
        assert_ne!(a[x as usize], a[y as usize], "{what}: cannot-link crossed");
    }
    for (x, y) in r.must_pairs() {
        assert_eq!(a[x as usize], a[y as usize], "{what}: must-link broken");
    }
    // Every cluster is connected by its kept edges and must-links (the rules cut along them,
    // so a cluster in pieces would never be split again).
    let mut adj: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut link = |x: u32, y: u32| {
        adj.entry(x).or_default().push(y);
        adj.entry(y).or_default().push(x);
    };
    for s in 0..n {
        for (to, _, kept) in e.out_edges(s) {
            if kept {
                link(s, to);
            }
        }
    }
    for (x, y) in r.must_pairs() {
        link(x, y);
    }
    let mut reached = vec![false; n as usize];
    let mut pieces: BTreeMap<u64, usize> = BTreeMap::new();
    for s in (0..n).filter(|&s| !e.is_erased(s)) {
        if reached[s as usize] {
            continue;
        }
        *pieces.entry(a[s as usize]).or_default() += 1;
        let mut stack = vec![s];
        reached[s as usize] = true;
        while let Some(x) = stack.pop() {
            for &y in adj.get(&x).into_iter().flatten() {
                if !reached[y as usize] && a[y as usize] == a[s as usize] {
                    reached[y as usize] = true;
                    stack.push(y);
                }
            }
        }
    }
    assert!(
        pieces.values().all(|&p| p == 1),
        "{what}: a cluster in pieces: {pieces:?}"
    );
    // Cluster sizes are the live members.
    let live: Vec<bool> = (0..n).map(|s| !e.is_erased(s)).collect();
    assert_eq!(
        canon(&a, &live).len(),
        e.n_clusters(),
        "{what}: every cluster has a live face and none holds an erased one"
    );
}

/// One random interleaving with the rule's `support`, `support_region` (0: the exact rule
/// always; small: the local rule on most changes) and the photo rule on or off (off and support
/// 0: plain connected components).
fn interleave(seed: u64, support: f32, region: usize, same_image: bool) -> usize {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut p = small_params(support, region);
    p.same_image_cannot_link = same_image;
    let vs = clustered_vectors(&mut rng, 150, p.dim);
    let mut e = Engine::new(p, ExactIndex::new(p.dim));
    e.set_tracking(false);
    let (mut erased, mut n_cmd) = (0, 0);
    let mut i = 0;
    while i < vs.len() {
        let roll = rng.gen_range(0..10);
        if i < 10 || roll < 6 {
            let m = FaceMeta {
                image_id: Some(format!(
                    "img-{}",
                    i - usize::from(i > 0 && rng.gen_bool(0.3))
                )),
                ..Default::default()
            };
            e.insert_face(FaceRef {
                face_id: &format!("f{i}"),
                vector: &vs[i],
                variants: &[],
                meta: &m,
            })
            .unwrap();
            i += 1;
        } else if roll < 8 {
            let s = rng.gen_range(0..i as u32);
            let was = e.is_erased(s);
            let before = e.cluster_of(s);
            let events = e.erase(&[s], "face");
            if was {
                assert!(events.is_empty(), "seed {seed}: erasing twice is a no-op");
                continue;
            }
            erased += 1;
            let last = events.last().expect("a FaceErased event");
            assert!(
                matches!(last, Event::FaceErased { face_id, cluster_id, .. }
                    if *face_id == format!("f{s}") && *cluster_id == before),
                "seed {seed}: {last:?}"
            );
            assert!(!events.iter().any(
                |ev| matches!(ev, Event::FaceMoved { face_id, .. } if *face_id == format!("f{s}"))
            ));
            // The id never comes back.
            let (o, ev) = e.insert(&format!("f{s}"), &vs[s as usize]).unwrap();
            assert!(ev.is_empty(), "seed {seed}: {o:?}");
            assert!(e.is_erased(s));
        } else {
            // A command naming faces that may be erased: refused for those, never applied.
            let a = e.assignments();
            let x = rng.gen_range(0..i as u32);
            let y = rng.gen_range(0..i as u32);
            let op = if rng.gen_bool(0.5) {
                Op::NotInCluster {
                    face_id: format!("f{x}"),
                    cluster_id: a[y as usize],
                }
            } else {
                Op::Assign {
                    face_id: format!("f{x}"),
                    cluster_id: a[y as usize],
                }
            };
            let r = e.apply_feedback(&Command {
                command_id: format!("c{n_cmd}"),
                op,
            });
            if e.is_erased(x) {
                assert!(
                    r.is_err(),
                    "seed {seed}: a command on an erased face is refused"
                );
            }
            n_cmd += usize::from(r.is_ok());
        }
        check(&e, &format!("seed {seed} step {i}"));
        let live: Vec<bool> = (0..e.n_faces() as u32).map(|s| !e.is_erased(s)).collect();
        if region == 0 && e.constraints().names().is_empty() {
            assert_eq!(
                canon(&e.assignments(), &live),
                canon(&e.rule_partition(), &live),
                "seed {seed}: clusters are the rule over the live faces"
            );
        }
    }
    erased
}

#[test]
fn random_interleavings_with_erasures_keep_every_invariant() {
    let mut total = 0;
    for seed in 0..24 {
        let support = if seed % 2 == 0 { 0.0 } else { 0.3 };
        let region = if seed % 3 == 2 { 6 } else { 0 };
        total += interleave(seed, support, region, seed % 4 != 3);
    }
    assert!(total > 100, "erasures were exercised: {total}");
}

#[test]
fn an_erased_face_leaves_every_search() {
    let mut idx = ExactIndex::new(2);
    idx.insert(0, &[1.0, 0.0]);
    idx.insert(1, &[0.0, 1.0]);
    idx.remove(0);
    assert_eq!(
        idx.search(&[1.0, 0.0], 2)
            .iter()
            .map(|h| h.seq)
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!((idx.len(), idx.n_removed()), (2, 1));
}

/// `compact` is (`index.compact_fraction`, `index.compact_window`).
/// `compact`: fraction and window; the proxy "identity", or "neighbor" (the neighbourhood
/// blended in, no directions: its insertions start from the identity vector's search, and a
/// replay must search again, from a tombstone's identity vector too).
fn config(
    dir: &std::path::Path,
    compact: (&str, &str),
    proxy: &str,
) -> clip_cluster::config::Config {
    small_config(
        dir,
        &[
            ("INDEX__COMPACT_FRACTION", compact.0),
            ("INDEX__COMPACT_WINDOW", compact.1),
            ("PROXY__MODE", proxy),
            ("PROXY__DIRECTIONS_PATH", ""),
            ("PROXY__WITH_CONTEXT", "true"),
        ],
    )
}

/// Batches of 20 faces (each redelivering the first face, which may be erased), then an
/// erasure chosen from the state: a face, a source, or the largest cluster.
fn run(c: &mut Clusterer, vs: &[Vec<f32>], batches: std::ops::Range<usize>) {
    for b in batches {
        let mut faces: Vec<Face> = (b * 20..(b + 1) * 20)
            .map(|i| Face {
                face_id: format!("f{i}"),
                vector: vs[i].clone(),
                meta: FaceMeta {
                    image_id: Some(format!("img-{}", i / 2)),
                    source_id: Some(format!("cam-{}", i % 7)),
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect();
        faces.push(Face::new("f0", vs[0].clone()));
        c.apply(&faces, &[]).unwrap();
        let a = c.engine().assignments();
        let target = match b % 3 {
            0 => EraseTarget::Face(format!("f{}", b * 20 + 3)),
            1 => EraseTarget::Source(format!("cam-{}", b % 7)),
            _ => {
                let mut sizes: BTreeMap<u64, usize> = BTreeMap::new();
                for (s, id) in a.iter().enumerate() {
                    if !c.engine().is_erased(s as u32) {
                        *sizes.entry(*id).or_default() += 1;
                    }
                }
                let top = sizes
                    .iter()
                    .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
                    .unwrap();
                EraseTarget::Cluster(*top.0)
            }
        };
        c.erase(&target, false).unwrap().unwrap();
        if b == 0 {
            c.engine().seq_of("f0").unwrap();
            c.erase(&EraseTarget::Face("f0".into()), false)
                .unwrap()
                .unwrap();
        }
    }
}

/// Assignments, events, faces erased, and the index: its points, its tombstones, the faces a
/// compaction beside the stream still needs, and the neighbours of a few probes (the structure
/// as searches see it).
#[allow(clippy::type_complexity)]
fn state(
    c: &Clusterer,
) -> (
    Vec<u64>,
    BTreeMap<u64, serde_json::Value>,
    usize,
    (usize, usize, Option<usize>, Vec<Vec<u32>>, u64),
) {
    let idx = c.engine().index();
    // The structure itself: a hash of its dumped graph (layers and every neighbour list), which
    // small exact searches alone would not tell apart.
    let dump = tempfile::tempdir().unwrap();
    let name = idx.dump(dump.path(), "probe").unwrap();
    let graph = std::fs::read(dump.path().join(format!("{name}.hnsw.graph"))).unwrap();
    let structure = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        graph.hash(&mut h);
        h.finish()
    };
    let probes = (0..5u32)
        .map(|i| {
            idx.search(c.engine().proxy(i * 7), 8)
                .into_iter()
                .map(|n| n.seq)
                .collect()
        })
        .collect();
    (
        c.engine().assignments(),
        crate::support::outbox_events(c),
        c.engine().n_erased(),
        (
            idx.len(),
            idx.n_removed(),
            c.rebuild_pending(),
            probes,
            structure,
        ),
    )
}

#[test]
fn restart_with_erasures_and_compaction_equals_an_uninterrupted_run() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let vs = clustered_vectors(&mut rng, 200, 6);
    // 0.2: compactions happen part-way, at once (window 0) or beside the stream (a window of
    // as many faces as the index holds live points, over several batches; one stop falls
    // after faces of a window were applied); 1.0: never (tombstones replayed from z: records).
    let cases = [("0.2", "0"), ("0.2", "1"), ("1.0", "1")]
        .into_iter()
        .flat_map(|c| [(c, "identity"), (c, "neighbor")]);
    for (compact, proxy) in cases {
        let fraction = compact.0;
        let config = |dir: &std::path::Path, compact| config(dir, compact, proxy);
        let full = tempfile::tempdir().unwrap();
        let mut a = Clusterer::open(&config(full.path(), compact)).unwrap();
        let mut pending_at = Vec::new();
        for b in 0..10 {
            run(&mut a, &vs, b..b + 1);
            if a.rebuild_pending().is_some() {
                pending_at.push(b + 1);
            }
        }
        // Stops: a few fixed ones, and one inside a compaction's window after faces of it.
        let mut stops = vec![1, 4, 7];
        let inside = pending_at
            .windows(2)
            .find(|w| w[1] == w[0] + 1 && w[1] < 10);
        if fraction == "0.2" && compact.1 != "0" {
            stops.push(inside.expect("a window spans batches")[1]);
        }
        let want = state(&a);
        assert!(want.2 > 20, "faces were erased: {}", want.2);
        // The erased faces' records are gone; the ids stay refused.
        for s in 0..a.engine().n_faces() as u32 {
            if a.engine().is_erased(s) {
                assert_eq!(a.store().face_meta(s).unwrap(), None);
            }
        }
        let tomb = a.store().tombstoned().unwrap().len();
        let removed = a.engine().index().n_removed();
        assert_eq!(tomb, removed, "z: records are the index's tombstones");
        if fraction == "1.0" {
            assert_eq!(removed, want.2);
        } else {
            assert!(removed < want.2, "a compaction dropped points: {removed}");
        }
        drop(a);
        for stop in stops {
            let d = tempfile::tempdir().unwrap();
            let mut b = Clusterer::open(&config(d.path(), compact)).unwrap();
            run(&mut b, &vs, 0..stop);
            drop(b);
            let mut b = Clusterer::open(&config(d.path(), compact)).unwrap();
            run(&mut b, &vs, stop..10);
            assert_eq!(
                state(&b),
                want,
                "{compact:?}, {proxy} proxy, stopped at batch {stop}"
            );
        }
    }
    // A compaction asked for at once leaves no tombstone.
    let config = |dir: &std::path::Path, compact| config(dir, compact, "identity");
    let d = tempfile::tempdir().unwrap();
    let mut c = Clusterer::open(&config(d.path(), ("1.0", "1"))).unwrap();
    run(&mut c, &vs, 0..2);
    let (r, _) = c
        .erase(&EraseTarget::Face("f30".into()), true)
        .unwrap()
        .unwrap();
    assert!(r.compacted && r.erased == ["f30"]);
    assert_eq!(c.engine().index().n_removed(), 0);
    assert!(c.store().tombstoned().unwrap().is_empty());
    assert!(c
        .erase(&EraseTarget::Face("f30".into()), false)
        .unwrap()
        .is_err());
    drop(c);
    let c = Clusterer::open(&config(d.path(), ("1.0", "1"))).unwrap();
    assert!(c.engine().is_erased(30));
}

/// Retention: faces go oldest first, by capture time (a future one counts from its arrival),
/// else by arrival; each sweep is bounded; a reopened state has no trace of the expired faces.
#[test]
fn retention_forgets_the_oldest_faces_first_and_boundedly() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let vs = clustered_vectors(&mut rng, 40, 6);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let day = 86_400_000u64;
    let d = tempfile::tempdir().unwrap();
    // Compaction at once: every face gone leaves an empty index (no dump).
    let sync = [("INDEX__COMPACT_WINDOW", "0")];
    let mut c = Clusterer::open(&small_config(d.path(), &sync)).unwrap();
    // f0..f9: captured 10..1 days ago; f10..f19: in the future; f20..: no capture time.
    let faces: Vec<Face> = vs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let ts = match i {
                0..=9 => Some((now - (10 - i as u64) * day) as i64),
                10..=19 => Some((now + 5 * day) as i64),
                _ => None,
            };
            Face {
                meta: FaceMeta {
                    ts,
                    ..Default::default()
                },
                ..Face::new(format!("f{i}"), v.clone())
            }
        })
        .collect();
    c.apply(&faces, &[]).unwrap();
    let expired = |c: &mut Clusterer, at: u64, limit: usize| {
        let (r, events) = c.expire(at, 3 * day + 1000, limit).unwrap();
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::FaceErased { reason, .. } if reason == "retention"))
                .count(),
            r.erased.len()
        );
        r.erased
    };
    // Faces captured 10..4 days ago are past 3 days; 4 at a time, oldest first.
    assert_eq!(expired(&mut c, now, 4), ["f0", "f1", "f2", "f3"]);
    assert_eq!(expired(&mut c, now, 4), ["f4", "f5", "f6"]);
    assert!(expired(&mut c, now, 4).is_empty());
    drop(c);
    let mut c = Clusterer::open(&small_config(d.path(), &sync)).unwrap();
    for i in 0..7 {
        let s = c.engine().seq_of(&format!("f{i}")).unwrap();
        assert!(c.engine().is_erased(s), "f{i} stays erased");
    }
    assert!(
        expired(&mut c, now, 100).is_empty(),
        "nothing is left behind in the time index"
    );
    // Four days on: the rest of the captured ones, and every face that arrived without a time
    // or with one in the future (they count from their arrival, now).
    let later = expired(&mut c, now + 4 * day, 100);
    assert_eq!(later.len(), 33, "{later:?}");
    assert_eq!(c.engine().n_erased(), 40);
    // Every face gone: the index is empty (no dump), and the state opens and goes on.
    assert_eq!(c.engine().index().len(), 0);
    drop(c);
    let mut c = Clusterer::open(&small_config(d.path(), &sync)).unwrap();
    assert_eq!(c.engine().n_erased(), 40);
    let r = c.apply(&[Face::new("new", vs[0].clone())], &[]).unwrap();
    assert_eq!(r.applied, 1);
}
