//! Exact k-nearest-neighbour lists by cosine similarity, computed by brute force.
//!
//! This module owns the batch kNN graph that the baselines and the batch evaluation share.
//! Rows are expected to be L2-normalized (as [`crate::eval::features::read_features`] returns
//! them), so cosine similarity is a plain dot product. Brute force is exact, which is the
//! point: the baselines should be judged on their rules, not on an index's recall.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::eval::features::Features;

/// Query rows per block: a block of queries is scored against a block of data rows so the
/// data rows are read from cache once per query block rather than once per query.
const QUERY_BLOCK_ROWS: usize = 32;
/// Data rows per block; 256 rows of 512 f32 values is 512 KiB, about one L2 cache.
const DATA_BLOCK_ROWS: usize = 256;

/// For each row, its most similar other rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Knn {
    /// `neighbors[i]` holds up to `k` pairs `(j, similarity)` with `j != i`, sorted by
    /// similarity descending, ties broken by the smaller index first.
    pub neighbors: Vec<Vec<(u32, f32)>>,
}

/// A candidate neighbour, ordered so that the heap's maximum is the WORST candidate kept
/// (lowest similarity; among equal similarities, the larger index).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    similarity: f32,
    index: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        // "Greater" means worse: lower similarity, then larger index. total_cmp keeps the
        // order total even if a caller hands in unvalidated rows with NaN.
        other
            .similarity
            .total_cmp(&self.similarity)
            .then(self.index.cmp(&other.index))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Exact kNN for the rows in `rows`, against all rows of `features`.
fn knn_rows(features: &Features, k: usize, rows: std::ops::Range<usize>) -> Vec<Vec<(u32, f32)>> {
    if k == 0 {
        return vec![Vec::new(); rows.len()];
    }
    let n = features.n();
    let mut heaps: Vec<BinaryHeap<Candidate>> =
        rows.clone().map(|_| BinaryHeap::with_capacity(k)).collect();
    let mut query_start = rows.start;
    while query_start < rows.end {
        let query_end = (query_start + QUERY_BLOCK_ROWS).min(rows.end);
        let mut data_start = 0;
        while data_start < n {
            let data_end = (data_start + DATA_BLOCK_ROWS).min(n);
            for q in query_start..query_end {
                let query = features.row(q);
                let heap = &mut heaps[q - rows.start];
                for d in data_start..data_end {
                    if d == q {
                        continue;
                    }
                    let candidate = Candidate {
                        similarity: dot(query, features.row(d)),
                        index: d as u32,
                    };
                    if heap.len() < k {
                        heap.push(candidate);
                    } else if let Some(mut worst) = heap.peek_mut() {
                        if candidate < *worst {
                            *worst = candidate;
                        }
                    }
                }
            }
            data_start = data_end;
        }
        query_start = query_end;
    }
    heaps
        .into_iter()
        .map(|heap| {
            heap.into_sorted_vec()
                .into_iter()
                .map(|c| (c.index, c.similarity))
                .collect()
        })
        .collect()
}

/// Exact kNN of every row by dot product, using all available cores.
///
/// Each row gets `min(k, n - 1)` neighbours. Rows are split into one contiguous range per
/// thread; the work per row is identical, so equal ranges balance well.
///
/// # Panics
/// If there are more than `u32::MAX` rows (neighbour ids are stored as `u32` to halve the
/// graph's memory).
pub fn brute_force(features: &Features, k: usize) -> Knn {
    let n = features.n();
    assert!(
        u32::try_from(n).is_ok(),
        "brute_force: {n} rows do not fit u32 ids"
    );
    let threads = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1)
        .clamp(1, n.max(1));
    let chunk = n.div_ceil(threads).max(1);
    let neighbors = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(n);
                scope.spawn(move || knn_rows(features, k, start..end))
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for handle in handles {
            match handle.join() {
                Ok(part) => all.extend(part),
                // A worker can only panic on a bug; re-raise it on the caller's thread.
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
        all
    });
    Knn { neighbors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_features(n: usize, dim: usize, seed: u64) -> Features {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut data = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let row: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            data.extend(row.iter().map(|v| v / norm));
        }
        Features { dim, data }
    }

    fn naive(features: &Features, k: usize) -> Vec<Vec<(u32, f32)>> {
        (0..features.n())
            .map(|i| {
                let mut all: Vec<(u32, f32)> = (0..features.n())
                    .filter(|&j| j != i)
                    .map(|j| (j as u32, dot(features.row(i), features.row(j))))
                    .collect();
                all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                all.truncate(k);
                all
            })
            .collect()
    }

    #[test]
    fn matches_naive_on_random_rows() {
        // More rows than one data block and one query block, so blocking is exercised.
        let features = random_features(600, 8, 7);
        for k in [1, 5, 80] {
            assert_eq!(brute_force(&features, k).neighbors, naive(&features, k));
        }
    }

    #[test]
    fn ties_prefer_smaller_index_and_k_is_capped() {
        // Rows 1, 2 and 3 are identical, so from row 0 they tie.
        let features = Features {
            dim: 2,
            data: vec![1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
        };
        let knn = brute_force(&features, 10);
        assert_eq!(knn.neighbors[0], vec![(1, 0.0), (2, 0.0), (3, 0.0)]);
        assert_eq!(knn.neighbors[2], vec![(1, 1.0), (3, 1.0), (0, 0.0)]);
        assert_eq!(brute_force(&features, 0).neighbors, vec![Vec::new(); 4]);
    }

    #[test]
    fn empty_and_single_row() {
        let empty = Features {
            dim: 3,
            data: vec![],
        };
        assert!(brute_force(&empty, 4).neighbors.is_empty());
        let one = Features {
            dim: 1,
            data: vec![1.0],
        };
        assert_eq!(brute_force(&one, 4).neighbors, vec![Vec::new()]);
    }
}
