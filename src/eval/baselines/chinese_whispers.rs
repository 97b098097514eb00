//! dlib's Chinese-whispers face clustering, as dlib's own face-clustering entry point runs it.
//!
//! Upstream (davisking/dlib):
//! - `tools/python/src/face_recognition.cpp`, `chinese_whispers_clustering(descriptors,
//!   threshold)`: adds an edge `(i, j)` for every pair with `j >= i` whose Euclidean distance
//!   is `< threshold` — so every face also gets a SELF-LOOP (distance 0) — with the default
//!   `sample_pair` weight 1, then calls `chinese_whispers(edges, labels)` with the default
//!   100 iterations and a default-seeded `dlib::rand`. dlib's `face_clustering.py` example
//!   calls it with threshold 0.5.
//! - `dlib/clustering/chinese_whispers.h`: labels start as node ids; the loop runs
//!   `num_nodes * num_iterations` times, each time picking ONE node uniformly at random
//!   (with replacement, not a shuffled sweep) and setting its label to the label with the
//!   largest summed edge weight among its edges (self-loop included). Label weights are
//!   accumulated in a `std::map` and scanned in ascending label order with a strict `>`,
//!   so a tie goes to the SMALLEST label. Finally labels are renumbered in order of first
//!   appearance by node index.
//! - `convert_unordered_to_ordered` (dlib/graph_utils/edge_list_graphs.h) emits a self-loop
//!   once and other edges in both directions, which is why the self-loop weighs 1, not 2.
//!
//! This mirror differs in two documented ways: the random source is a seeded ChaCha8 rather
//! than dlib's generator (so runs are reproducible here but not bit-identical to dlib), and
//! edges come from the symmetrized kNN lists instead of all pairs, which caps each face's
//! degree at k (plus the reverse edges). Every face ends up in some cluster (the self-loop
//! guarantees it is a node), so the output has no `None`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{check_knn, check_threshold, cos_from_euclidean, dense_ids, BaselineError};
use crate::eval::features::Features;
use crate::eval::knn::Knn;

/// dlib's face-clustering threshold, Euclidean distance 0.5 between unit descriptors, as a
/// cosine similarity: `1 - 0.5^2 / 2 = 0.875`. An edge exists when similarity is STRICTLY
/// greater (dlib tests `distance < threshold`).
pub const STOCK_THRESHOLD: f32 = cos_from_euclidean(0.5);
/// kNN lists per face. dlib compares all pairs; 80 (STAR-FC's batch k) caps the degree.
pub const STOCK_K: usize = 80;
/// dlib's default `num_iterations`.
pub const STOCK_ITERATIONS: usize = 100;

/// Parameters of Chinese whispers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChineseWhispersParams {
    /// Edge when cosine similarity > threshold.
    pub threshold: f32,
    /// Random node picks per node (dlib's `num_iterations`).
    pub iterations: usize,
    /// Seed of the node-picking random stream; same seed, same clusters.
    pub seed: u64,
}

impl Default for ChineseWhispersParams {
    fn default() -> Self {
        ChineseWhispersParams {
            threshold: STOCK_THRESHOLD,
            iterations: STOCK_ITERATIONS,
            seed: 0,
        }
    }
}

/// Clusters faces with Chinese whispers over the thresholded, symmetrized kNN graph.
pub fn cluster(
    features: &Features,
    knn: &Knn,
    params: &ChineseWhispersParams,
) -> Result<Vec<Option<u64>>, BaselineError> {
    check_knn(features, knn)?;
    check_threshold("chinese_whispers", params.threshold)?;
    let n = features.n();
    if n == 0 {
        return Ok(Vec::new());
    }

    // Adjacency with the self-loop first; kNN lists are sorted by similarity, so the
    // accepted entries are a prefix.
    let mut adjacency: Vec<Vec<u32>> = (0..n as u32).map(|i| vec![i]).collect();
    for (i, list) in knn.neighbors.iter().enumerate() {
        for &(j, similarity) in list {
            if similarity <= params.threshold {
                break;
            }
            adjacency[i].push(j);
            adjacency[j as usize].push(i as u32);
        }
    }
    for list in &mut adjacency {
        // An edge found from both ends is still one edge of weight 1.
        list[1..].sort_unstable();
        list.dedup();
    }

    let mut labels: Vec<u32> = (0..n as u32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let mut scratch: Vec<u32> = Vec::new();
    let picks = n.saturating_mul(params.iterations);
    for _ in 0..picks {
        let node = rng.gen_range(0..n);
        scratch.clear();
        scratch.extend(adjacency[node].iter().map(|&j| labels[j as usize]));
        scratch.sort_unstable();
        // Ascending scan with strict '>' = dlib's std::map scan: ties go to the smallest label.
        let mut best_label = labels[node];
        let mut best_count = 0usize;
        let mut start = 0;
        while start < scratch.len() {
            let label = scratch[start];
            let end = start + scratch[start..].iter().take_while(|&&l| l == label).count();
            if end - start > best_count {
                best_count = end - start;
                best_label = label;
            }
            start = end;
        }
        labels[node] = best_label;
    }

    let keys: Vec<Option<u32>> = labels.into_iter().map(Some).collect();
    Ok(dense_ids(&keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::baselines::test_support::{scattered, two_groups};

    #[test]
    fn stock_threshold_is_dlib_half_unit_distance() {
        assert_eq!(STOCK_THRESHOLD, 0.875);
    }

    #[test]
    fn two_tight_groups_become_two_clusters() {
        let (features, knn) = two_groups();
        let labels = cluster(&features, &knn, &ChineseWhispersParams::default()).unwrap();
        assert_eq!(
            labels,
            vec![Some(0), Some(0), Some(0), Some(1), Some(1), Some(1)]
        );
    }

    #[test]
    fn nothing_within_threshold_gives_singletons() {
        let (features, knn) = scattered();
        let labels = cluster(&features, &knn, &ChineseWhispersParams::default()).unwrap();
        assert_eq!(labels, (0..6).map(Some).collect::<Vec<_>>());
    }

    #[test]
    fn same_seed_same_result_and_knn_mismatch_is_refused() {
        let (features, knn) = two_groups();
        let params = ChineseWhispersParams {
            threshold: -1.0,
            ..Default::default()
        };
        let a = cluster(&features, &knn, &params).unwrap();
        let b = cluster(&features, &knn, &params).unwrap();
        assert_eq!(a, b);
        // Everything connected to everything collapses to one label.
        assert!(a.iter().all(|&l| l == Some(0)));
        let short = Knn {
            neighbors: vec![Vec::new()],
        };
        assert!(matches!(
            cluster(&features, &short, &params),
            Err(BaselineError::KnnMismatch { .. })
        ));
    }

    #[test]
    fn tie_goes_to_smallest_label() {
        // Two faces joined by one edge: each sees its own label and the other's once.
        // The first pick adopts the smaller label 0, after which both agree on 0.
        let (features, knn) =
            crate::eval::baselines::test_support::normalized(&[[1.0f32, 0.0], [1.0, 0.01]]);
        let labels = cluster(&features, &knn, &ChineseWhispersParams::default()).unwrap();
        assert_eq!(labels, vec![Some(0), Some(0)]);
    }
}
