//! The peers' clustering algorithms, re-implemented over one shared kNN graph.
//!
//! This module owns the baselines that METHOD.md says we must beat on the same embeddings:
//! dlib's Chinese whispers, Immich's incremental core-face rule, PhotoPrism's DBSCAN with
//! centre matching, and batch kNN + threshold + connected components. Each lives in its own
//! file, cites the upstream code it mirrors, and has the same shape:
//!
//! ```text
//! cluster(features, knn, params) -> Result<Vec<Option<u64>>, BaselineError>
//! ```
//!
//! where `knn` was computed by the caller (with the baseline's `STOCK_K` or its own k) and
//! `None` means the algorithm left the face unassigned. Every `threshold` is a COSINE
//! SIMILARITY on L2-normalized vectors, whatever distance the peer used, so one sweep can
//! tune all baselines on the same axis. The conversions are:
//! - Euclidean distance `d` on unit vectors: `|x - y|^2 = 2 - 2 cos`, so `cos = 1 - d^2 / 2`;
//! - cosine distance `d` (pgvector's `<=>`): `cos = 1 - d`.
//!
//! The peers search all faces; here each face only sees its k nearest neighbours. With k = 80
//! and thresholds that accept a few dozen neighbours at most, this cap rarely binds, and it
//! keeps every baseline at the same `O(n k)` cost as our own method.

pub mod chinese_whispers;
pub mod dbscan;
pub mod immich;
pub mod knn_components;

use thiserror::Error;

use crate::eval::features::Features;
use crate::eval::knn::Knn;

/// Why a baseline refused to run.
#[derive(Debug, Error)]
pub enum BaselineError {
    /// The kNN graph was computed for a different face set.
    #[error("the kNN graph has {n_knn} rows but there are {n_faces} faces; recompute the kNN on these features")]
    KnnMismatch { n_faces: usize, n_knn: usize },
    /// A parameter is outside the range the algorithm is defined for.
    #[error("{baseline}: parameter {name} = {value} is invalid: {reason}")]
    InvalidParam {
        baseline: &'static str,
        name: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Cosine similarity equivalent to Euclidean distance `d` between unit vectors.
pub const fn cos_from_euclidean(d: f32) -> f32 {
    1.0 - d * d / 2.0
}

/// Euclidean distance between unit vectors with cosine similarity `cos`.
pub fn euclidean_from_cos(cos: f32) -> f32 {
    (2.0 - 2.0 * cos).max(0.0).sqrt()
}

/// Cosine similarity equivalent to cosine distance `d`.
pub const fn cos_from_cosine_distance(d: f32) -> f32 {
    1.0 - d
}

/// Checks that `knn` belongs to `features`.
fn check_knn(features: &Features, knn: &Knn) -> Result<(), BaselineError> {
    if knn.neighbors.len() != features.n() {
        return Err(BaselineError::KnnMismatch {
            n_faces: features.n(),
            n_knn: knn.neighbors.len(),
        });
    }
    Ok(())
}

/// Checks that a similarity threshold is a number; any finite value (even outside [-1, 1])
/// is meaningful, it just accepts everything or nothing.
fn check_threshold(baseline: &'static str, threshold: f32) -> Result<(), BaselineError> {
    if threshold.is_nan() {
        return Err(BaselineError::InvalidParam {
            baseline,
            name: "threshold",
            value: threshold.to_string(),
            reason: "must be a number (a cosine similarity)",
        });
    }
    Ok(())
}

/// Union-find with path halving and union by size, for connected components.
#[derive(Debug, Clone)]
pub(crate) struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl UnionFind {
    pub(crate) fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    pub(crate) fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    pub(crate) fn union(&mut self, a: usize, b: usize) {
        let (mut ra, mut rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        if self.size[ra] < self.size[rb] {
            std::mem::swap(&mut ra, &mut rb);
        }
        self.parent[rb] = ra;
        self.size[ra] += self.size[rb];
    }
}

/// Renumbers arbitrary group keys to dense cluster ids in order of first appearance, so
/// outputs are stable and readable (face 0 is always in cluster 0 when assigned).
fn dense_ids<K: std::hash::Hash + Eq + Copy>(keys: &[Option<K>]) -> Vec<Option<u64>> {
    let mut ids: std::collections::HashMap<K, u64> = std::collections::HashMap::new();
    keys.iter()
        .map(|key| {
            key.map(|k| {
                let next = ids.len() as u64;
                *ids.entry(k).or_insert(next)
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::eval::features::Features;
    use crate::eval::knn::{brute_force, Knn};

    /// Two tight groups far apart: rows 0..3 near the x axis, rows 3..6 near the y axis.
    /// Within a group cos > 0.99; across groups cos < 0.1.
    pub(crate) fn two_groups() -> (Features, Knn) {
        let raw: [[f32; 3]; 6] = [
            [1.0, 0.02, 0.0],
            [1.0, 0.0, 0.03],
            [1.0, -0.02, 0.01],
            [0.02, 1.0, 0.0],
            [0.0, 1.0, 0.03],
            [-0.02, 1.0, 0.01],
        ];
        normalized(&raw)
    }

    /// Six mutually orthogonal-ish rows: no pair has cos above 0.1.
    pub(crate) fn scattered() -> (Features, Knn) {
        let mut raw = [[0.0f32; 6]; 6];
        for (i, row) in raw.iter_mut().enumerate() {
            row[i] = 1.0;
            row[(i + 1) % 6] = 0.05;
        }
        normalized(&raw)
    }

    pub(crate) fn normalized<const D: usize>(raw: &[[f32; D]]) -> (Features, Knn) {
        let mut data = Vec::new();
        for row in raw {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            data.extend(row.iter().map(|v| v / norm));
        }
        let features = Features { dim: D, data };
        let knn = brute_force(&features, 80);
        (features, knn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        assert_eq!(cos_from_euclidean(0.5), 0.875);
        assert!((euclidean_from_cos(cos_from_euclidean(0.64)) - 0.64).abs() < 1e-6);
        assert_eq!(cos_from_cosine_distance(0.5), 0.5);
    }

    #[test]
    fn union_find_joins_components() {
        let mut uf = UnionFind::new(5);
        uf.union(0, 1);
        uf.union(3, 4);
        uf.union(1, 0);
        assert_eq!(uf.find(0), uf.find(1));
        assert_ne!(uf.find(1), uf.find(3));
        assert_eq!(uf.find(3), uf.find(4));
        assert_ne!(uf.find(2), uf.find(0));
    }

    #[test]
    fn dense_ids_follow_first_appearance() {
        assert_eq!(
            dense_ids(&[Some(9), None, Some(4), Some(9)]),
            vec![Some(0), None, Some(1), Some(0)]
        );
    }
}
