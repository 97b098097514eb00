//! Batch kNN + similarity threshold + connected components: the plain graph baseline.
//!
//! This is STAR-FC's back-end without the learned edge scorer and without node-intimacy
//! refinement (METHOD.md, section b): keep kNN edges whose score exceeds `t1`, and the
//! connected components are the clusters. Here the score is the raw cosine similarity, so
//! this baseline measures what the edge scorer and the proxies add on top of the embedding.
//! Every face is in a component, a singleton being its own cluster, so there is no `None`.

use super::{check_knn, check_threshold, dense_ids, BaselineError, UnionFind};
use crate::eval::features::Features;
use crate::eval::knn::Knn;

/// STAR-FC's edge threshold `t1 = 0.7`, applied directly to cosine similarity: an edge is
/// kept when similarity is STRICTLY greater.
pub const STOCK_THRESHOLD: f32 = 0.7;
/// STAR-FC's batch k.
pub const STOCK_K: usize = 80;

/// Parameters of the components baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnnComponentsParams {
    /// Edge when cosine similarity > threshold.
    pub threshold: f32,
}

impl Default for KnnComponentsParams {
    fn default() -> Self {
        KnnComponentsParams {
            threshold: STOCK_THRESHOLD,
        }
    }
}

/// Connected components of the thresholded kNN graph. Edges are undirected: an entry in
/// either face's list joins the two.
pub fn cluster(
    features: &Features,
    knn: &Knn,
    params: &KnnComponentsParams,
) -> Result<Vec<Option<u64>>, BaselineError> {
    check_knn(features, knn)?;
    check_threshold("knn_components", params.threshold)?;
    let n = features.n();
    let mut components = UnionFind::new(n);
    for (i, list) in knn.neighbors.iter().enumerate() {
        for &(j, similarity) in list {
            if similarity <= params.threshold {
                break;
            }
            components.union(i, j as usize);
        }
    }
    let roots: Vec<Option<usize>> = (0..n).map(|i| Some(components.find(i))).collect();
    Ok(dense_ids(&roots))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::baselines::test_support::{normalized, scattered, two_groups};

    #[test]
    fn two_tight_groups_become_two_components() {
        let (features, knn) = two_groups();
        let labels = cluster(&features, &knn, &KnnComponentsParams::default()).unwrap();
        assert_eq!(
            labels,
            vec![Some(0), Some(0), Some(0), Some(1), Some(1), Some(1)]
        );
    }

    #[test]
    fn nothing_within_threshold_gives_singletons() {
        let (features, knn) = scattered();
        let labels = cluster(&features, &knn, &KnnComponentsParams::default()).unwrap();
        assert_eq!(labels, (0..6).map(Some).collect::<Vec<_>>());
    }

    #[test]
    fn chains_are_joined_transitively() {
        // Angles 0, 30, 60 degrees: neighbours are cos 30 = 0.866 apart, the ends cos 60 =
        // 0.5. With threshold 0.8 the chain is one component even though the ends are not
        // linked; with 0.9 all three are apart.
        let deg = |a: f32| [a.to_radians().cos(), a.to_radians().sin()];
        let (features, knn) = normalized(&[deg(0.0), deg(30.0), deg(60.0)]);
        let chain = cluster(&features, &knn, &KnnComponentsParams { threshold: 0.8 }).unwrap();
        assert_eq!(chain, vec![Some(0); 3]);
        let apart = cluster(&features, &knn, &KnnComponentsParams { threshold: 0.9 }).unwrap();
        assert_eq!(apart, vec![Some(0), Some(1), Some(2)]);
    }
}
