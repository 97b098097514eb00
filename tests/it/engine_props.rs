//! Properties of the engine over random insertion sequences.

use clip_cluster::engine::{batch, Engine, EngineParams, FaceRef};
use clip_cluster::index::ExactIndex;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// Clustered random vectors in a low dimension, so that edges above t1 are common and evictions,
/// merges and splits all happen.
fn data(seed: u64, n: usize, dim: usize, centers: usize, spread: f32) -> Vec<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let cs: Vec<Vec<f32>> = (0..centers)
        .map(|_| (0..dim).map(|_| rng.gen::<f32>() - 0.5).collect())
        .collect();
    (0..n)
        .map(|_| {
            let c = &cs[rng.gen_range(0..centers)];
            c.iter()
                .map(|x| x + spread * (rng.gen::<f32>() - 0.5))
                .collect()
        })
        .collect()
}

/// Connected components of the kept edges, as a canonical partition (sorted member lists).
fn components(n: usize, edges: &[(u32, u32)]) -> Vec<Vec<u32>> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    fn find(p: &mut [u32], mut x: u32) -> u32 {
        while p[x as usize] != x {
            x = p[x as usize];
        }
        x
    }
    for &(a, b) in edges {
        let (ra, rb) = (find(&mut p, a), find(&mut p, b));
        p[ra.max(rb) as usize] = ra.min(rb);
    }
    let labels: Vec<u32> = (0..n as u32).map(|i| find(&mut p, i)).collect();
    partition(&labels)
}

fn partition<L: Copy + Ord>(labels: &[L]) -> Vec<Vec<u32>> {
    let mut m = std::collections::BTreeMap::<L, Vec<u32>>::new();
    for (i, l) in labels.iter().enumerate() {
        m.entry(*l).or_default().push(i as u32);
    }
    let mut v: Vec<Vec<u32>> = m.into_values().collect();
    v.sort();
    v
}

fn params(dim: usize, k: usize, t1: f32, t2: f32, search_k: usize) -> EngineParams {
    EngineParams {
        dim,
        k,
        search_k,
        t1,
        t2,
        refresh: 0,
        refresh_min_change: 0.0,
        min_quality: 0.0,
        weak_margin: 1.0,
        support: 0.0,
        support_region: 0,
        same_image_cannot_link: true,
    }
}

/// Every `every`-th face (0: none) has quality 0.1, below the tests' `min_quality` 0.5; the
/// others 0.9 or none.
fn quality_meta(i: usize, every: usize) -> clip_cluster::engine::FaceMeta {
    let quality = if every > 0 && i % every == 1 {
        Some(0.1)
    } else if i % 2 == 0 {
        Some(0.9)
    } else {
        None
    };
    clip_cluster::engine::FaceMeta {
        quality,
        ..Default::default()
    }
}

/// The stream over `vs` on an exact index (every `weak_every`-th face weak, see `quality_meta`),
/// and the batch computation over the stream's proxies: (stream engine, batch labels, weak flags).
fn stream_and_batch(
    p: EngineParams,
    vs: &[Vec<f32>],
    weak_every: usize,
) -> (Engine<ExactIndex>, Vec<u32>, Vec<bool>) {
    let dim = p.dim;
    let mut e = Engine::new(p, ExactIndex::new(dim));
    let mut idx = ExactIndex::new(dim);
    let mut proxies = Vec::new();
    let weak: Vec<bool> = (0..vs.len())
        .map(|i| quality_meta(i, weak_every).quality == Some(0.1))
        .collect();
    for (i, v) in vs.iter().enumerate() {
        e.insert_face(FaceRef {
            face_id: &format!("f{i}"),
            vector: v,
            variants: &[],
            meta: &quality_meta(i, weak_every),
        })
        .unwrap();
        let pv = e.proxy(i as u32).to_vec();
        clip_cluster::index::NeighborIndex::insert(&mut idx, i as u32, &pv);
        proxies.extend_from_slice(&pv);
    }
    let b = batch(&p, &proxies, &idx, &weak);
    (e, b, weak)
}

/// A neighbour proxy in 4-D whose proxies visibly move with the neighbourhood (two strong
/// directions), for the refresh properties.
fn moving_proxy() -> clip_cluster::proxy::NeighborProxy {
    use clip_cluster::proxy::{Directions, NeighborProxy};
    NeighborProxy {
        directions: Some(Directions {
            dim: 4,
            vectors: vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            sigmas: vec![0.3, 0.2],
        }),
        strength: 1.0,
        temperature: 0.05,
        context_k: 3,
        min_neighbors: 1,
        with_context: false,
        attention: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// After every insertion, clusters are exactly the connected components of the kept edges.
    #[test]
    fn clusters_are_components_after_every_insert(
        seed in 0u64..10_000, n in 2usize..90, k in 1usize..6,
        t1 in 0.3f32..0.95, t2 in prop::sample::select(vec![0.0f32, 0.3, 0.6]),
        centers in 1usize..8, weak_every in prop::sample::select(vec![0usize, 2, 3, 5]),
    ) {
        let dim = 4;
        let mut p = params(dim, k, t1, t2, 1000);
        p.min_quality = 0.5;
        let mut e = Engine::new(p, ExactIndex::new(dim));
        for (i, v) in data(seed, n, dim, centers, 0.6).iter().enumerate() {
            e.insert_face(FaceRef { face_id: &format!("f{i}"), vector: v, variants: &[], meta: &quality_meta(i, weak_every) }).unwrap();
            let m = e.n_faces();
            prop_assert_eq!(partition(&e.assignments()), components(m, &e.kept_edges()));
            prop_assert_eq!(e.n_clusters(), components(m, &e.kept_edges()).len());
        }
    }

    /// With the neighbour proxy and the bounded refresh (older faces' proxies recomputed and
    /// re-linked after each insert), clusters stay exactly the connected components of the kept
    /// edges, every out-list stays ranked, short and above t1, and the events replay to every
    /// face's cluster (a refresh that splits the new face off after its assignment moves it).
    #[test]
    fn refresh_keeps_clusters_equal_to_components(
        seed in 0u64..10_000, n in 2usize..70, k in 1usize..5,
        t1 in 0.3f32..0.95, t2 in prop::sample::select(vec![0.0f32, 0.3, 0.6]),
        centers in 1usize..6, refresh in 1usize..6,
    ) {
        let dim = 4;
        let proxy = moving_proxy();
        let mut p = params(dim, k, t1, t2, 8);
        p.refresh = refresh;
        let mut e = Engine::with_stages(p, ExactIndex::new(dim), proxy, clip_cluster::engine::CosineScorer);
        let mut map = std::collections::HashMap::new();
        for (i, v) in data(seed, n, dim, centers, 0.6).iter().enumerate() {
            let (_, events) = e.insert(&format!("f{i}"), v).unwrap();
            replay(&mut map, &events);
            check_replay(&map, &e, i)?;
            let m = e.n_faces();
            prop_assert_eq!(partition(&e.assignments()), components(m, &e.kept_edges()));
            prop_assert_eq!(e.n_clusters(), components(m, &e.kept_edges()).len());
            for s in 0..m as u32 {
                let out = e.out_list(s);
                prop_assert!(out.len() <= k);
                prop_assert!(out.iter().all(|&(to, score)| score > t1 && to != s));
                prop_assert!(out.windows(2).all(|w| w[0].1 >= w[1].1));
            }
        }
    }

    /// With an exact index that shows every face, the stream equals the batch computation.
    #[test]
    fn stream_equals_batch(
        seed in 0u64..10_000, n in 2usize..120, k in 1usize..8,
        t1 in 0.3f32..0.95, t2 in prop::sample::select(vec![0.0f32, 0.4, 0.7]),
        centers in 1usize..10, weak_every in prop::sample::select(vec![0usize, 2, 4]),
    ) {
        let dim = 5;
        let mut p = params(dim, k, t1, t2, 1000);
        p.min_quality = 0.5;
        let (e, b, weak) = stream_and_batch(p, &data(seed, n, dim, centers, 0.5), weak_every);
        prop_assert_eq!(partition(&e.assignments()), partition(&b));
        prop_assert_eq!(e.n_weak(), weak.iter().filter(|w| **w).count());
        // Weak faces never join two clusters: the faces that are not weak are grouped exactly
        // as the kept edges among themselves alone group them, and no kept edge links two weak
        // faces.
        for (a, b) in e.kept_edges() {
            prop_assert!(!(weak[a as usize] && weak[b as usize]));
        }
        let good: Vec<u32> = (0..n as u32).filter(|&i| !weak[i as usize]).collect();
        let among: Vec<(u32, u32)> = e
            .kept_edges()
            .into_iter()
            .filter(|&(a, b)| !weak[a as usize] && !weak[b as usize])
            .collect();
        let alone = components(n, &among);
        let clusters = e.assignments();
        for (x, &a) in good.iter().enumerate() {
            for &b in &good[x + 1..] {
                let same_alone = alone.iter().any(|c| c.contains(&a) && c.contains(&b));
                prop_assert_eq!(clusters[a as usize] == clusters[b as usize], same_alone, "faces {} and {}", a, b);
            }
        }
    }

    /// The same input order gives the same events, and re-applying a face id is a no-op.
    #[test]
    fn deterministic_and_idempotent(seed in 0u64..10_000, n in 2usize..80, t2 in prop::sample::select(vec![0.0f32, 0.5])) {
        let dim = 4;
        let vs = data(seed, n, dim, 4, 0.6);
        let run = |dups: bool| {
            let mut e = Engine::new(params(dim, 3, 0.6, t2, 8), ExactIndex::new(dim));
            let mut events = Vec::new();
            for (i, v) in vs.iter().enumerate() {
                events.extend(e.insert(&format!("f{i}"), v).unwrap().1);
                if dups && i > 0 {
                    // A redelivery of an earlier face, even with another vector, changes nothing.
                    let (o, ev) = e.insert(&format!("f{}", i / 2), &vs[0]).unwrap();
                    assert!(matches!(o, clip_cluster::engine::Outcome::Duplicate { .. }));
                    assert!(ev.is_empty());
                }
            }
            (events, e.assignments())
        };
        let a = run(false);
        prop_assert_eq!(&a, &run(false));
        prop_assert_eq!(&a, &run(true));
    }
}

/// The HNSW-backed stream agrees with the exact batch result on clustered data: it may differ only
/// where the approximate search misses a neighbour.
#[test]
fn hnsw_stream_agrees_with_exact_batch() {
    use clip_cluster::eval::metrics::evaluate;
    use clip_cluster::eval::synth::{generate, SynthParams};
    use clip_cluster::index::{HnswIndex, HnswParams, NeighborIndex};
    let dim = 128;
    let s = generate(SynthParams::new(3000, dim, 9));
    let p = params(dim, 10, 0.93, 0.0, 32);
    let hp = HnswParams {
        m: 16,
        ef_construction: 48,
        ef_search: 48,
        capacity_hint: 3000,
    };
    let mut e = Engine::new(p, HnswIndex::new(hp));
    let mut exact = ExactIndex::new(dim);
    for (i, v) in s.data.chunks(dim).enumerate() {
        e.insert(&i.to_string(), v).unwrap();
        exact.insert(i as u32, v);
    }
    let b: Vec<i64> = batch(&p, &s.data, &exact, &[])
        .into_iter()
        .map(i64::from)
        .collect();
    let stream: Vec<Option<u64>> = e.assignments().into_iter().map(Some).collect();
    let agreement = evaluate(&b, &stream);
    assert!(agreement.bcubed.f > 0.97, "{agreement:?}");
    // And both are real clusterings of the synthetic identities, not one blob or all singletons.
    let truth = evaluate(&s.labels, &stream);
    assert!(truth.bcubed.f > 0.8, "{truth:?}");
}

/// The refresh property above is not vacuous: on such data faces are re-linked.
#[test]
fn refresh_relinks_faces_on_clustered_data() {
    let dim = 4;
    let proxy = moving_proxy();
    let mut p = params(dim, 3, 0.6, 0.3, 8);
    p.refresh = 3;
    let mut e = Engine::with_stages(
        p,
        ExactIndex::new(dim),
        proxy,
        clip_cluster::engine::CosineScorer,
    );
    for (i, v) in data(7, 60, dim, 4, 0.6).iter().enumerate() {
        e.insert(&format!("f{i}"), v).unwrap();
    }
    assert!(e.n_refreshed() > 30, "{} re-links", e.n_refreshed());
}

/// The kept undirected edges with their scores (the higher of the two directions).
fn kept_scored<I, P, S>(e: &Engine<I, P, S>) -> Vec<(u32, u32, f32)>
where
    I: clip_cluster::index::NeighborIndex,
    P: clip_cluster::engine::ProxyGenerator,
    S: clip_cluster::engine::EdgeScorer,
{
    let mut m = std::collections::BTreeMap::<(u32, u32), f32>::new();
    for s in 0..e.n_faces() as u32 {
        for (to, score, kept) in e.out_edges(s) {
            if kept {
                let k = (s.min(to), s.max(to));
                let v = m.entry(k).or_insert(f32::NEG_INFINITY);
                *v = v.max(score);
            }
        }
    }
    m.into_iter().map(|((a, b), s)| (a, b, s)).collect()
}

/// Cluster-level linkage written plainly (quadratic): kept edges in descending score (ties by
/// pair); an edge between two clusters merges them when the kept edges between the two number at
/// least max(1, ceil(support * smaller size)).
fn support_oracle(n: usize, edges: &[(u32, u32, f32)], support: f32) -> Vec<Vec<u32>> {
    let mut lab: Vec<usize> = (0..n).collect();
    let mut order = edges.to_vec();
    order.sort_by(|x, y| y.2.total_cmp(&x.2).then((x.0, x.1).cmp(&(y.0, y.1))));
    for &(a, b, _) in &order {
        let (la, lb) = (lab[a as usize], lab[b as usize]);
        if la == lb {
            continue;
        }
        let size = |l: usize| lab.iter().filter(|&&x| x == l).count();
        let links = edges
            .iter()
            .filter(|&&(x, y, _)| {
                let (lx, ly) = (lab[x as usize], lab[y as usize]);
                (lx == la && ly == lb) || (lx == lb && ly == la)
            })
            .count() as u32;
        let need = ((support * size(la).min(size(lb)) as f32).ceil() as u32).max(1);
        if links >= need {
            for l in lab.iter_mut() {
                if *l == lb {
                    *l = la;
                }
            }
        }
    }
    partition(&lab)
}

/// Replays the engine's events into a face -> cluster map.
pub(crate) fn replay(
    map: &mut std::collections::HashMap<String, u64>,
    events: &[clip_cluster::engine::Event],
) {
    use clip_cluster::engine::Event;
    for ev in events {
        match ev {
            Event::FaceAssigned {
                face_id,
                cluster_id,
                ..
            } => {
                map.insert(face_id.clone(), *cluster_id);
            }
            Event::ClustersMerged { into, from, .. } => {
                for c in map.values_mut() {
                    if c == from {
                        *c = *into;
                    }
                }
            }
            Event::FaceMoved { face_id, to, .. } => {
                map.insert(face_id.clone(), *to);
            }
            Event::FaceErased { face_id, .. } => {
                map.remove(face_id);
            }
            Event::ClusterCreated { .. }
            | Event::ClusterSplit { .. }
            | Event::ClusterNamed { .. }
            | Event::FeedbackApplied { .. }
            | Event::Reclustered { .. } => {}
        }
    }
}

/// Whether the replayed `map` gives every face of `e` its cluster id (after insert `i`).
fn check_replay<I, P, S>(
    map: &std::collections::HashMap<String, u64>,
    e: &Engine<I, P, S>,
    i: usize,
) -> Result<(), TestCaseError>
where
    I: clip_cluster::index::NeighborIndex,
    P: clip_cluster::engine::ProxyGenerator,
    S: clip_cluster::engine::EdgeScorer,
{
    for (s, id) in e.assignments().iter().enumerate() {
        prop_assert_eq!(
            map.get(&format!("f{s}")),
            Some(id),
            "face {} after insert {}",
            s,
            i
        );
    }
    Ok(())
}

/// The cluster-level rule's property engine: 4-D, the moving neighbour proxy, the cosine, weak
/// faces below 0.5 with near-certain links above t1 + 0.5 (1 - t1).
fn support_engine(
    k: usize,
    t1: f32,
    t2: f32,
    support: f32,
    region: usize,
    refresh: usize,
) -> Engine<ExactIndex, clip_cluster::proxy::NeighborProxy, clip_cluster::engine::CosineScorer> {
    let mut p = params(4, k, t1, t2, 8);
    p.support = support;
    p.support_region = region;
    p.min_quality = 0.5;
    p.weak_margin = 0.5;
    p.refresh = refresh;
    Engine::with_stages(
        p,
        ExactIndex::new(4),
        moving_proxy(),
        clip_cluster::engine::CosineScorer,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// With cluster-level linkage, after every insertion the clusters are exactly the rule's
    /// partition of the kept edges, the cluster count is right, and the events replayed give
    /// every face's cluster id.
    #[test]
    fn support_clusters_follow_the_rule_and_the_events(
        seed in 0u64..10_000, n in 2usize..80, k in 1usize..6,
        t1 in 0.3f32..0.95, t2 in prop::sample::select(vec![0.0f32, 0.3]),
        support in prop::sample::select(vec![0.2f32, 0.5, 1.0]),
        centers in 1usize..6, weak_every in prop::sample::select(vec![0usize, 3]),
        refresh in prop::sample::select(vec![0usize, 3]),
    ) {
        let mut e = support_engine(k, t1, t2, support, 0, refresh);
        let mut map = std::collections::HashMap::new();
        for (i, v) in data(seed, n, 4, centers, 0.6).iter().enumerate() {
            let (_, events) = e.insert_face(FaceRef { face_id: &format!("f{i}"), vector: v, variants: &[], meta: &quality_meta(i, weak_every) }).unwrap();
            replay(&mut map, &events);
            let m = e.n_faces();
            let want = support_oracle(m, &kept_scored(&e), support);
            prop_assert_eq!(partition(&e.assignments()), want.clone());
            prop_assert_eq!(e.n_clusters(), want.len());
            check_replay(&map, &e, i)?;
        }
    }

    /// With cluster-level linkage and near-certain weak links, the stream still equals the batch
    /// computation over an exact index.
    #[test]
    fn support_stream_equals_batch(
        seed in 0u64..10_000, n in 2usize..120, k in 1usize..8,
        t1 in 0.3f32..0.95, t2 in prop::sample::select(vec![0.0f32, 0.4]),
        support in prop::sample::select(vec![0.3f32, 0.7]),
        centers in 1usize..10, weak_every in prop::sample::select(vec![0usize, 2, 4]),
    ) {
        let dim = 5;
        let mut p = params(dim, k, t1, t2, 1000);
        p.min_quality = 0.5;
        p.weak_margin = 0.6;
        p.support = support;
        let (e, b, weak) = stream_and_batch(p, &data(seed, n, dim, centers, 0.5), weak_every);
        prop_assert_eq!(partition(&e.assignments()), partition(&b));
        // A kept edge that touches a weak face is the weak face's one anchor or near-certain.
        let sure = t1 + 0.6 * (1.0 - t1);
        for (a, b, s) in kept_scored(&e) {
            if weak[a as usize] && weak[b as usize] {
                prop_assert!(s > sure, "weak pair {}-{} kept at {}", a, b, s);
            }
        }
    }
}

/// Whether every cluster of `e` is connected by the kept edges between its own faces.
fn clusters_connected<I, P, S>(e: &Engine<I, P, S>) -> bool
where
    I: clip_cluster::index::NeighborIndex,
    P: clip_cluster::engine::ProxyGenerator,
    S: clip_cluster::engine::EdgeScorer,
{
    let labels = e.assignments();
    let inside: Vec<(u32, u32)> = kept_scored(e)
        .into_iter()
        .filter(|&(a, b, _)| labels[a as usize] == labels[b as usize])
        .map(|(a, b, _)| (a, b))
        .collect();
    components(labels.len(), &inside) == partition(&labels)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// With a small `support_region` the rule runs locally on most insertions: the events still
    /// replay to every face's cluster, every cluster stays connected by its own kept edges, the
    /// cluster count is right, and a run that never went over the bound is the exact rule.
    #[test]
    fn support_local_rule_keeps_the_invariants(
        seed in 0u64..10_000, n in 2usize..120, k in 1usize..6,
        t1 in 0.3f32..0.95, t2 in prop::sample::select(vec![0.0f32, 0.3]),
        support in prop::sample::select(vec![0.3f32, 0.7]),
        region in 2usize..16,
        centers in 1usize..6, weak_every in prop::sample::select(vec![0usize, 3]),
        refresh in prop::sample::select(vec![0usize, 3]),
    ) {
        let mut e = support_engine(k, t1, t2, support, region, refresh);
        let mut map = std::collections::HashMap::new();
        for (i, v) in data(seed, n, 4, centers, 0.6).iter().enumerate() {
            let (_, events) = e.insert_face(FaceRef { face_id: &format!("f{i}"), vector: v, variants: &[], meta: &quality_meta(i, weak_every) }).unwrap();
            replay(&mut map, &events);
            check_replay(&map, &e, i)?;
            let ids = e.assignments();
            prop_assert!(clusters_connected(&e), "a cluster not connected after insert {}", i);
            prop_assert_eq!(e.n_clusters(), partition(&ids).len());
        }
        if e.bounded_regroups() == 0 {
            prop_assert_eq!(partition(&e.assignments()), support_oracle(e.n_faces(), &kept_scored(&e), support));
        }
    }
}

/// A stream whose kept graph is one chain over the bound runs the local rule (counted), and the
/// same stream with no bound runs the exact rule; both keep their clusters connected.
#[test]
fn a_component_over_the_bound_runs_the_local_rule() {
    let run = |region: usize| {
        let mut p = params(2, 2, 0.9, 0.0, 1000);
        p.support = 0.3;
        p.support_region = region;
        let mut e = Engine::new(p, ExactIndex::new(2));
        // Points on an arc, each close to the previous: one chain of kept edges.
        for i in 0..40 {
            let a = 0.02 * i as f32;
            e.insert(&format!("f{i}"), &[a.cos(), a.sin()]).unwrap();
        }
        e
    };
    let local = run(8);
    assert!(local.bounded_regroups() > 0);
    assert!(clusters_connected(&local));
    let exact = run(0);
    assert_eq!(exact.bounded_regroups(), 0);
    assert!(clusters_connected(&exact));
}

/// One false edge does not merge two grown clusters under cluster-level linkage; with connected
/// components the same insert merges everything.
#[test]
fn a_single_bridge_does_not_merge_two_clusters() {
    use clip_cluster::engine::Event;
    let unit = |v: [f32; 3]| {
        let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        vec![v[0] / n, v[1] / n, v[2] / n]
    };
    let run = |support: f32, region: usize| {
        let mut p = params(3, 2, 0.6, 0.0, 1000);
        p.support = support;
        p.support_region = region;
        let mut e = Engine::new(p, ExactIndex::new(3));
        // Two tight groups of four, orthogonal to each other (cos ~0: no edge between them).
        for i in 0..4 {
            let d = 0.01 * i as f32;
            e.insert(&format!("a{i}"), &unit([1.0, d, 0.0])).unwrap();
            e.insert(&format!("b{i}"), &unit([0.0, d, 1.0])).unwrap();
        }
        assert_eq!(e.n_clusters(), 2);
        // Halfway between: cos 0.707 to a0 and to b0, one kept edge to each group.
        let (_, ev) = e.insert("bridge", &unit([1.0, 0.0, 1.0])).unwrap();
        (e, ev)
    };
    // The exact rule, and the local one (the bridge's component, 9 faces, is over 3).
    for region in [0, 3] {
        let (e, ev) = run(0.5, region);
        let (a, b, bridge) = (e.cluster_of(0), e.cluster_of(1), e.cluster_of(8));
        assert_ne!(a, b, "one bridge face merged two clusters of four: {ev:?}");
        assert!(!ev.iter().any(|x| matches!(x, Event::ClustersMerged { .. })));
        // A single face joins a cluster by one edge.
        assert!(bridge == a || bridge == b);
        assert_eq!(e.n_clusters(), 2);
        assert_eq!(e.bounded_regroups() > 0, region > 0);
    }
    let (e, ev) = run(0.0, 0);
    assert_eq!(e.n_clusters(), 1);
    assert!(ev.iter().any(|x| matches!(x, Event::ClustersMerged { .. })));
}
