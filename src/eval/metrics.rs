//! Clustering quality scores, exactly as the learn-to-cluster evaluation code defines them.
//!
//! This module owns the numbers every result table reports: pairwise precision/recall/F,
//! BCubed precision/recall/F and NMI. With `n_ij` the number of faces of true class `i`
//! in predicted cluster `j`, `a_i` the class sizes, `b_j` the cluster sizes and `N` faces:
//!
//! - Pairwise: `tp = sum n_ij^2 - N`, `P = tp / (sum b_j^2 - N)`, `R = tp / (sum a_i^2 - N)`.
//! - BCubed: `P = (1/N) sum n_ij^2 / b_j`, `R = (1/N) sum n_ij^2 / a_i`.
//! - NMI: mutual information over the arithmetic mean of the two entropies.
//! - F is always `2PR / (P + R)`, and 0 when `P + R = 0`.
//!
//! An unassigned face (`None`) is its own singleton cluster, never a member of one shared
//! "noise" cluster: a shared noise cluster would reward an algorithm for refusing to
//! decide, because all its noise faces would count as one huge, impure cluster only in
//! precision while recall would be inflated.
//!
//! Degenerate denominators get documented values rather than NaN, so a sweep over
//! thresholds never produces a NaN that poisons an `argmax`:
//! - pairwise precision is 1.0 when every predicted cluster is a singleton
//!   (`sum b_j^2 - N = 0`: no predicted pairs, so none are wrong);
//! - pairwise recall is 1.0 when every true class is a singleton (no true pairs to miss);
//! - with `N = 0` all scores are 1.0 (nothing to get wrong);
//! - NMI is 1.0 when both entropies are 0 (both partitions are the single trivial block).

use std::collections::HashMap;

use serde::Serialize;

/// Precision, recall and their harmonic mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prf {
    /// Fraction of predicted "same identity" decisions that are right.
    pub precision: f64,
    /// Fraction of true "same identity" relations that were found.
    pub recall: f64,
    /// Harmonic mean of the two; 0 when both are 0.
    pub f: f64,
}

impl Prf {
    fn new(precision: f64, recall: f64) -> Self {
        let sum = precision + recall;
        let f = if sum > 0.0 {
            2.0 * precision * recall / sum
        } else {
            0.0
        };
        Prf {
            precision,
            recall,
            f,
        }
    }
}

/// All scores for one clustering of one labeled set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    /// Pairwise scores (learn-to-cluster's headline metric).
    pub pairwise: Prf,
    /// BCubed scores (per-face averages, less dominated by large classes).
    pub bcubed: Prf,
    /// Normalized mutual information, arithmetic-mean normalization.
    pub nmi: f64,
}

/// Scores a predicted clustering against true identity labels.
///
/// `predicted[i]` is the cluster of face `i`, or `None` when the algorithm left it
/// unassigned; each `None` counts as its own singleton cluster.
///
/// # Panics
/// If `labels` and `predicted` have different lengths: that is a caller bug (the two
/// describe different face sets), and no score for it would mean anything.
pub fn evaluate(labels: &[i64], predicted: &[Option<u64>]) -> Scores {
    assert_eq!(
        labels.len(),
        predicted.len(),
        "evaluate: {} labels but {} predictions",
        labels.len(),
        predicted.len()
    );
    let n = labels.len() as u64;
    if n == 0 {
        return Scores {
            pairwise: Prf::new(1.0, 1.0),
            bcubed: Prf::new(1.0, 1.0),
            nmi: 1.0,
        };
    }

    // Dense ids keep the size tables as plain vectors.
    let mut class_ids: HashMap<i64, usize> = HashMap::new();
    let mut cluster_ids: HashMap<u64, usize> = HashMap::new();
    let mut class_sizes: Vec<u64> = Vec::new();
    let mut cluster_sizes: Vec<u64> = Vec::new();
    let mut contingency: HashMap<(usize, usize), u64> = HashMap::new();
    for (&label, &cluster) in labels.iter().zip(predicted) {
        let next_class = class_ids.len();
        let class = *class_ids.entry(label).or_insert(next_class);
        if class == class_sizes.len() {
            class_sizes.push(0);
        }
        class_sizes[class] += 1;

        let cluster = match cluster {
            Some(id) => {
                let next_cluster = cluster_sizes.len();
                *cluster_ids.entry(id).or_insert(next_cluster)
            }
            // A fresh id per unassigned face: its own singleton.
            None => cluster_sizes.len(),
        };
        if cluster == cluster_sizes.len() {
            cluster_sizes.push(0);
        }
        cluster_sizes[cluster] += 1;

        *contingency.entry((class, cluster)).or_insert(0) += 1;
    }

    let sum_sq = |sizes: &[u64]| sizes.iter().map(|&s| s * s).sum::<u64>();
    let sum_nij_sq: u64 = contingency.values().map(|&c| c * c).sum();
    let tp = sum_nij_sq - n;
    let predicted_pairs = sum_sq(&cluster_sizes) - n;
    let true_pairs = sum_sq(&class_sizes) - n;
    let pairwise_precision = if predicted_pairs == 0 {
        1.0
    } else {
        tp as f64 / predicted_pairs as f64
    };
    let pairwise_recall = if true_pairs == 0 {
        1.0
    } else {
        tp as f64 / true_pairs as f64
    };

    let nf = n as f64;
    let mut bcubed_precision = 0.0;
    let mut bcubed_recall = 0.0;
    let mut mutual_information = 0.0;
    for (&(class, cluster), &count) in &contingency {
        let c = count as f64;
        let a = class_sizes[class] as f64;
        let b = cluster_sizes[cluster] as f64;
        bcubed_precision += c * c / b;
        bcubed_recall += c * c / a;
        mutual_information += (c / nf) * (nf * c / (a * b)).ln();
    }
    bcubed_precision /= nf;
    bcubed_recall /= nf;

    let entropy = |sizes: &[u64]| {
        -sizes
            .iter()
            .map(|&s| {
                let p = s as f64 / nf;
                p * p.ln()
            })
            .sum::<f64>()
    };
    let mean_entropy = 0.5 * (entropy(&class_sizes) + entropy(&cluster_sizes));
    let nmi = if mean_entropy <= 0.0 {
        1.0
    } else {
        // Rounding can push a perfect score a hair past 1 or a null one below 0.
        (mutual_information / mean_entropy).clamp(0.0, 1.0)
    };

    Scores {
        pairwise: Prf::new(pairwise_precision, pairwise_recall),
        bcubed: Prf::new(bcubed_precision, bcubed_recall),
        nmi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn assert_prf(prf: Prf, p: f64, r: f64, f: f64) {
        assert!(
            close(prf.precision, p),
            "precision {} != {p}",
            prf.precision
        );
        assert!(close(prf.recall, r), "recall {} != {r}", prf.recall);
        assert!(close(prf.f, f), "f {} != {f}", prf.f);
    }

    #[test]
    fn readme_style_example() {
        // Classes A={0,1,2}, B={3,4}, C={5}; clusters X={0,1}, Y={2,3,4}, Z={5}.
        // n: A∩X=2, A∩Y=1, B∩Y=2, C∩Z=1; a=(3,2,1), b=(2,3,1), N=6.
        // Pairwise: sum n^2 = 10, tp = 4; sum b^2 - N = 8; sum a^2 - N = 8 -> P = R = F = 1/2.
        // BCubed P = (4/2 + 1/3 + 4/3 + 1/1)/6 = 7/9; R = (4/3 + 1/3 + 4/2 + 1/1)/6 = 7/9.
        // MI = (1/3)ln2 + (1/6)ln(2/3) + (1/3)ln2 + (1/6)ln6 = ln 2.
        // H(true) = H(pred) = (1/2)ln2 + (1/3)ln3 + (1/6)ln6, so NMI = ln2 / H.
        let s = evaluate(
            &[0, 0, 0, 1, 1, 2],
            &[Some(0), Some(0), Some(1), Some(1), Some(1), Some(2)],
        );
        assert_prf(s.pairwise, 0.5, 0.5, 0.5);
        assert_prf(s.bcubed, 7.0 / 9.0, 7.0 / 9.0, 7.0 / 9.0);
        let h = 0.5 * 2f64.ln() + 3f64.ln() / 3.0 + 6f64.ln() / 6.0;
        assert!(close(s.nmi, 2f64.ln() / h));
    }

    #[test]
    fn all_singletons() {
        // Classes {0,1},{2,3}; four singleton clusters.
        // Pairwise: no predicted pairs -> P = 1 by definition; tp = 0, true pairs = 4 -> R = 0.
        // BCubed: P = 1; R = (4 * 1/2)/4 = 1/2; F = 2/3.
        // MI = H(true) = ln2, H(pred) = ln4 -> NMI = ln2 / (1.5 ln2) = 2/3.
        let s = evaluate(&[0, 0, 1, 1], &[Some(0), Some(1), Some(2), Some(3)]);
        assert_prf(s.pairwise, 1.0, 0.0, 0.0);
        assert_prf(s.bcubed, 1.0, 0.5, 2.0 / 3.0);
        assert!(close(s.nmi, 2.0 / 3.0));
    }

    #[test]
    fn unassigned_faces_are_singletons_not_one_noise_cluster() {
        let singletons = evaluate(&[0, 0, 1, 1], &[Some(0), Some(1), Some(2), Some(3)]);
        let unassigned = evaluate(&[0, 0, 1, 1], &[None, None, None, None]);
        assert_eq!(singletons, unassigned);
        // Mixed: a None beside an assigned cluster id that happens to be 0 stays apart.
        let mixed = evaluate(&[0, 0, 1], &[Some(0), None, None]);
        assert_prf(mixed.pairwise, 1.0, 0.0, 0.0);
    }

    #[test]
    fn one_big_cluster() {
        // Classes {0,1},{2,3}, one cluster of 4.
        // Pairwise: tp = 8 - 4 = 4; predicted pairs = 16 - 4 = 12 -> P = 1/3; R = 4/4 = 1; F = 1/2.
        // BCubed: P = (4/4 + 4/4)/4 = 1/2; R = (4/2 + 4/2)/4 = 1; F = 2/3.
        // H(pred) = 0 -> MI = 0 -> NMI = 0.
        let s = evaluate(&[0, 0, 1, 1], &[Some(9); 4]);
        assert_prf(s.pairwise, 1.0 / 3.0, 1.0, 0.5);
        assert_prf(s.bcubed, 0.5, 1.0, 2.0 / 3.0);
        assert!(close(s.nmi, 0.0));
    }

    #[test]
    fn perfect_clustering() {
        let s = evaluate(
            &[5, 5, 7, 9, 9, 9],
            &[Some(1), Some(1), Some(0), Some(4), Some(4), Some(4)],
        );
        assert_prf(s.pairwise, 1.0, 1.0, 1.0);
        assert_prf(s.bcubed, 1.0, 1.0, 1.0);
        assert!(close(s.nmi, 1.0));
    }

    #[test]
    fn trivial_partitions() {
        // One class, one cluster: both entropies 0 -> NMI 1 by definition.
        let s = evaluate(&[3, 3, 3], &[Some(1); 3]);
        assert!(close(s.nmi, 1.0));
        assert_prf(s.pairwise, 1.0, 1.0, 1.0);
        // All singleton classes, all singleton clusters: no pairs anywhere.
        let s = evaluate(&[0, 1, 2], &[None, None, None]);
        assert_prf(s.pairwise, 1.0, 1.0, 1.0);
        let s = evaluate(&[], &[]);
        assert_prf(s.bcubed, 1.0, 1.0, 1.0);
    }

    fn labels_and_prediction() -> impl Strategy<Value = (Vec<i64>, Vec<Option<u64>>)> {
        (1usize..40).prop_flat_map(|n| {
            (
                proptest::collection::vec(0i64..6, n),
                proptest::collection::vec(proptest::option::of(0u64..6), n),
            )
        })
    }

    fn all_scores(s: &Scores) -> [f64; 7] {
        [
            s.pairwise.precision,
            s.pairwise.recall,
            s.pairwise.f,
            s.bcubed.precision,
            s.bcubed.recall,
            s.bcubed.f,
            s.nmi,
        ]
    }

    proptest! {
        #[test]
        fn scores_are_in_unit_interval((labels, predicted) in labels_and_prediction()) {
            let s = evaluate(&labels, &predicted);
            for v in all_scores(&s) {
                prop_assert!((0.0..=1.0 + 1e-12).contains(&v), "score {} out of range", v);
            }
        }

        #[test]
        fn perfect_prediction_under_any_relabeling(
            labels in proptest::collection::vec(-3i64..6, 1..40),
            seed in any::<u64>(),
        ) {
            // An injective map from label to cluster id: a seeded odd multiplier and offset.
            let mult = seed | 1;
            let predicted: Vec<Option<u64>> = labels
                .iter()
                .map(|&l| Some((l as u64).wrapping_mul(mult).wrapping_add(seed >> 7)))
                .collect();
            let s = evaluate(&labels, &predicted);
            for v in all_scores(&s) {
                prop_assert!((v - 1.0).abs() < 1e-9, "score {} != 1", v);
            }
        }

        #[test]
        fn invariant_under_cluster_id_permutation(
            (labels, predicted) in labels_and_prediction(),
            seed in any::<u64>(),
        ) {
            let mult = seed | 1;
            let renamed: Vec<Option<u64>> = predicted
                .iter()
                .map(|p| p.map(|c| c.wrapping_mul(mult).wrapping_add(seed >> 3)))
                .collect();
            let a = all_scores(&evaluate(&labels, &predicted));
            let b = all_scores(&evaluate(&labels, &renamed));
            for (x, y) in a.iter().zip(b.iter()) {
                prop_assert!((x - y).abs() < 1e-12, "{} != {}", x, y);
            }
        }
    }
}
