//! The cluster rule as a function of the kept edges alone: `partition` (and `partition_with`,
//! honouring must-links, cannot-links and names), the partition that `support.rs` keeps up to date
//! over the regions a change touches and that a batch computes over the whole graph. The kept
//! edges are taken in descending score (ties by pair); with `support > 0` an edge between two
//! clusters A and B merges them only when the kept edges between them number at least
//! `max(1, ceil(support * min(|A|, |B|)))`; with `support = 0` and no constraints, the connected
//! components.

use super::FastMap;

/// Cluster label of each of `n` nodes (the smallest node of its cluster) for the undirected kept
/// `edges` (a < b, any order, duplicates allowed: the highest score counts).
pub(crate) fn partition(n: usize, edges: Vec<(u32, u32, f32)>, support: f32) -> Vec<u32> {
    partition_with(n, edges, support, &Rules::default())
}

/// Constraints over the nodes of one `partition_with` call (local node numbers).
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    /// Pairs never put in one cluster.
    pub cannot: Vec<(u32, u32)>,
    /// Per node, the name of its cluster (interned), if any: two different names never merge.
    /// Empty = no names.
    pub tags: Vec<Option<u32>>,
}

impl Rules {
    fn is_empty(&self) -> bool {
        self.cannot.is_empty() && self.tags.iter().all(Option::is_none)
    }
}

/// As `partition`, honouring constraints: an edge of score `f32::INFINITY` is a must-link (it
/// merges whatever the support), and no merge joins a cannot-linked pair or two different tags.
/// With constraints the cluster-level rule runs even at `support = 0` (every edge is supported
/// then), so that a refused merge leaves two clusters instead of a component.
pub(crate) fn partition_with(
    n: usize,
    edges: Vec<(u32, u32, f32)>,
    support: f32,
    rules: &Rules,
) -> Vec<u32> {
    partition_counted(n, edges, support, rules, n <= DENSE_MAX)
}

/// Up to this many nodes the rule counts the kept edges between clusters in an `n x n` table
/// (at most 64 KiB of counts at 128 nodes, `engine.support_region`'s default): a stream's region
/// costs no hash map per node. Beyond it, one map per cluster root, merged small into large.
const DENSE_MAX: usize = 128;

/// Kept edges between clusters, by cluster root.
enum Links {
    /// `n x n` counts, row by root.
    Dense {
        n: usize,
        count: Vec<u32>,
    },
    Sparse(Vec<FastMap<u32, u32>>),
}

impl Links {
    /// The counts of distinct edges (`edge_keys`) between single nodes.
    fn new(n: usize, keys: &[u128], dense: bool) -> Self {
        let edges = keys.iter().map(|&k| edge_of(k));
        if dense {
            let mut count = vec![0u32; n * n];
            for (a, b, _) in edges {
                count[a as usize * n + b as usize] += 1;
                count[b as usize * n + a as usize] += 1;
            }
            Links::Dense { n, count }
        } else {
            let mut between: Vec<FastMap<u32, u32>> = vec![FastMap::default(); n];
            for (a, b, _) in edges {
                *between[a as usize].entry(b).or_default() += 1;
                *between[b as usize].entry(a).or_default() += 1;
            }
            Links::Sparse(between)
        }
    }

    fn between(&self, ra: u32, rb: u32) -> u32 {
        match self {
            Links::Dense { n, count } => count[ra as usize * n + rb as usize],
            Links::Sparse(m) => m[ra as usize].get(&rb).copied().unwrap_or(0),
        }
    }

    /// Which of two roots stays when their clusters merge: the one whose counts are cheaper to
    /// fold into (the partition does not depend on it, only which node is the root).
    fn keep_of(&self, ra: u32, rb: u32) -> (u32, u32) {
        match self {
            Links::Dense { .. } => (ra, rb),
            Links::Sparse(m) => {
                if m[ra as usize].len() >= m[rb as usize].len() {
                    (ra, rb)
                } else {
                    (rb, ra)
                }
            }
        }
    }

    /// Folds root `gone`'s counts into root `keep`'s.
    fn merge(&mut self, keep: u32, gone: u32) {
        match self {
            Links::Dense { n, count } => {
                let n = *n;
                let (k, g) = (keep as usize, gone as usize);
                for c in 0..n {
                    let m = count[g * n + c];
                    if m == 0 {
                        continue;
                    }
                    count[g * n + c] = 0;
                    count[c * n + g] = 0;
                    if c != k {
                        count[k * n + c] += m;
                        count[c * n + k] += m;
                    }
                }
                count[k * n + g] = 0;
                count[g * n + k] = 0;
            }
            Links::Sparse(between) => {
                let moved = std::mem::take(&mut between[gone as usize]);
                for (c, m) in moved {
                    if c == keep {
                        continue;
                    }
                    *between[keep as usize].entry(c).or_default() += m;
                    let other = &mut between[c as usize];
                    other.remove(&gone);
                    *other.entry(keep).or_default() += m;
                }
                between[keep as usize].remove(&gone);
            }
        }
    }
}

/// A key that orders scores as `f32::total_cmp` does, reversed.
fn descending(x: f32) -> u32 {
    let b = x.to_bits();
    !(if b >> 31 == 1 { !b } else { b | 1 << 31 })
}

/// The score a `descending` key was made from.
fn from_descending(d: u32) -> f32 {
    let o = !d;
    f32::from_bits(if o >> 31 == 1 { o & !(1 << 31) } else { !o })
}

/// The edges `(a, b, score)` without repeated pairs (the highest score kept), as integer keys
/// `score descending, then pair`: sorted, they are the order the rule takes edges in.
fn edge_keys(edges: &[(u32, u32, f32)]) -> Vec<u128> {
    let pair = |a: u32, b: u32| u128::from(u64::from(a) << 32 | u64::from(b));
    let mut by_pair: Vec<u128> = edges
        .iter()
        .map(|&(a, b, s)| pair(a, b) << 32 | u128::from(descending(s)))
        .collect();
    by_pair.sort_unstable();
    by_pair.dedup_by_key(|k| *k >> 32);
    by_pair
        .iter()
        .map(|&k| (k & 0xFFFF_FFFF) << 64 | k >> 32)
        .collect()
}

/// An edge back from its key.
fn edge_of(k: u128) -> (u32, u32, f32) {
    (
        (k >> 32) as u32,
        k as u32,
        from_descending((k >> 64) as u32),
    )
}

/// `partition_with` with the link counts held dense or sparse (the same partition either way).
fn partition_counted(
    n: usize,
    edges: Vec<(u32, u32, f32)>,
    support: f32,
    rules: &Rules,
    dense: bool,
) -> Vec<u32> {
    let mut keys = edge_keys(&edges);
    drop(edges);
    let mut parent: Vec<u32> = (0..n as u32).collect();
    fn find(p: &mut [u32], mut x: u32) -> u32 {
        while p[x as usize] != x {
            p[x as usize] = p[p[x as usize] as usize];
            x = p[x as usize];
        }
        x
    }
    let constrained = !rules.is_empty();
    if support <= 0.0 && !constrained {
        for (a, b, _) in keys.iter().map(|&k| edge_of(k)) {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                parent[ra.max(rb) as usize] = ra.min(rb);
            }
        }
    } else {
        let support = support.max(0.0);
        // Per root: nodes it must never hold together with, and its tag.
        let mut forbid: Vec<Vec<u32>> = vec![Vec::new(); n];
        for &(a, b) in &rules.cannot {
            forbid[a as usize].push(b);
            forbid[b as usize].push(a);
        }
        let mut tag: Vec<Option<u32>> = if rules.tags.is_empty() {
            vec![None; n]
        } else {
            rules.tags.clone()
        };
        let mut size = vec![1u32; n];
        let mut links = Links::new(n, &keys, dense);
        keys.sort_unstable();
        for (a, b, score) in keys.iter().map(|&k| edge_of(k)) {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra == rb {
                continue;
            }
            if constrained {
                if let (Some(x), Some(y)) = (tag[ra as usize], tag[rb as usize]) {
                    if x != y {
                        continue;
                    }
                }
                let (fa, other) = if forbid[ra as usize].len() <= forbid[rb as usize].len() {
                    (ra, rb)
                } else {
                    (rb, ra)
                };
                let list = std::mem::take(&mut forbid[fa as usize]);
                let crossed = list.iter().any(|&y| find(&mut parent, y) == other);
                forbid[fa as usize] = list;
                if crossed {
                    continue;
                }
            }
            let smaller = size[ra as usize].min(size[rb as usize]) as f32;
            let need = ((support * smaller).ceil() as u32).max(1);
            if links.between(ra, rb) < need && score != f32::INFINITY {
                continue;
            }
            let (keep, gone) = links.keep_of(ra, rb);
            parent[gone as usize] = keep;
            size[keep as usize] += size[gone as usize];
            if constrained {
                let moved = std::mem::take(&mut forbid[gone as usize]);
                forbid[keep as usize].extend(moved);
                tag[keep as usize] = tag[keep as usize].or(tag[gone as usize]);
            }
            links.merge(keep, gone);
        }
    }
    // Label = smallest member.
    let roots: Vec<u32> = (0..n as u32).map(|i| find(&mut parent, i)).collect();
    let mut smallest: FastMap<u32, u32> = FastMap::default();
    for (i, &r) in roots.iter().enumerate() {
        smallest.entry(r).or_insert(i as u32);
    }
    roots.iter().map(|r| smallest[r]).collect()
}

#[cfg(test)]
mod tests {
    use super::{
        descending, edge_keys, edge_of, from_descending, partition, partition_counted, Rules,
    };
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_descending_key_reverses_total_cmp() {
        let xs = [
            f32::NEG_INFINITY,
            -1.5,
            -0.0,
            0.0,
            1e-30,
            0.5,
            0.97,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        for a in xs {
            assert_eq!(from_descending(descending(a)).to_bits(), a.to_bits());
            for b in xs {
                assert_eq!(
                    descending(a).cmp(&descending(b)),
                    b.total_cmp(&a),
                    "{a} {b}"
                );
            }
        }
        // Repeated pairs keep their highest score; sorted, the keys go by score, then by pair.
        let mut keys = edge_keys(&[
            (2, 5, 0.5),
            (0, 1, 0.5),
            (2, 5, 0.9),
            (0, 3, 0.7),
            (0, 1, 0.2),
            (1, 4, 0.7),
        ]);
        keys.sort_unstable();
        let order: Vec<(u32, u32, f32)> = keys.iter().map(|&k| edge_of(k)).collect();
        assert_eq!(
            order,
            vec![(2, 5, 0.9), (0, 3, 0.7), (1, 4, 0.7), (0, 1, 0.5)]
        );
    }

    #[test]
    fn dense_and_sparse_link_counts_give_the_same_partition() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..400 {
            let n = rng.gen_range(1..60usize);
            let m = rng.gen_range(0..n * 4);
            // Few distinct scores, so that ties and duplicate pairs occur.
            let edges: Vec<(u32, u32, f32)> = (0..m)
                .filter_map(|_| {
                    let (a, b) = (rng.gen_range(0..n as u32), rng.gen_range(0..n as u32));
                    let score = if rng.gen_bool(0.03) {
                        f32::INFINITY
                    } else {
                        rng.gen_range(0..8) as f32 / 8.0
                    };
                    (a != b).then(|| (a.min(b), a.max(b), score))
                })
                .collect();
            let mut rules = Rules::default();
            if round % 2 == 1 {
                for _ in 0..rng.gen_range(0..4) {
                    let (a, b) = (rng.gen_range(0..n as u32), rng.gen_range(0..n as u32));
                    if a != b {
                        rules.cannot.push((a, b));
                    }
                }
                rules.tags = (0..n)
                    .map(|_| rng.gen_bool(0.1).then(|| rng.gen_range(0..3)))
                    .collect();
            }
            let support = [0.0, 0.2, 0.5, 1.0][round % 4];
            let dense = partition_counted(n, edges.clone(), support, &rules, true);
            let sparse = partition_counted(n, edges, support, &rules, false);
            assert_eq!(dense, sparse, "round {round}");
        }
    }

    /// Two cliques of four (0..4, 4..8) and `bridges` weaker edges between them.
    fn two_cliques(bridges: u32) -> Vec<(u32, u32, f32)> {
        let mut e = Vec::new();
        for base in [0u32, 4] {
            for a in base..base + 4 {
                for b in a + 1..base + 4 {
                    e.push((a, b, 0.95));
                }
            }
        }
        for i in 0..bridges {
            e.push((i, 4 + i, 0.5));
        }
        e
    }

    #[test]
    fn merges_need_support_relative_to_the_smaller_cluster() {
        // Components: one bridge merges.
        assert_eq!(partition(8, two_cliques(1), 0.0), vec![0; 8]);
        // The cliques form first (higher scores); then 0.5 of 4 = 2 links are needed, counted
        // over every kept edge between the two.
        let one = partition(8, two_cliques(1), 0.5);
        assert_eq!(one, vec![0, 0, 0, 0, 4, 4, 4, 4], "{one:?}");
        let two = partition(8, two_cliques(2), 0.5);
        assert_eq!(two, vec![0; 8], "{two:?}");
        // Labels are the smallest member; a duplicate pair counts once.
        let mut dup = two_cliques(1);
        dup.push((0, 4, 0.3));
        assert_eq!(partition(8, dup, 0.5), vec![0, 0, 0, 0, 4, 4, 4, 4]);
    }
}
