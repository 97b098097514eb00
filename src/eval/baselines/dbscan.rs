//! PhotoPrism's face clustering: DBSCAN, then every face matched to the nearest cluster centre.
//!
//! Upstream (photoprism/photoprism):
//! - `internal/photoprism/faces_cluster.go`, `Faces.Cluster`: runs
//!   `clusters.DBSCAN(face.ClusterCore, face.ClusterDist, workers, EuclideanDist)` over the
//!   unclustered face embeddings and turns every DBSCAN cluster into a face cluster entity.
//! - `pkg/clusters/dbscan.go`: a point's neighbourhood is every point with Euclidean distance
//!   STRICTLY `< eps`, the point itself included; a point is core when its neighbourhood has
//!   `>= minpts` points. Points are visited in input order; an unvisited point that is not
//!   core is marked noise (-1) at once, and — unlike textbook DBSCAN — a point already marked
//!   noise is never reclaimed as a border point by a cluster found later (expansion only
//!   labels points whose label is still 0). Expansion appends the neighbourhoods of core
//!   neighbours and labels every unlabelled neighbour.
//! - `internal/ai/face/thresholds.go`: `ClusterDist = 0.64`, `ClusterCore = 4`,
//!   `MatchDist = 0.46` (later releases use 0.4 to 0.42).
//! - `internal/entity/face.go`, `SetEmbeddings` / `EmbeddingsMidpoint`: a cluster's centre is
//!   the mean of its (normalized) members, normalized; its sample radius is built by
//!   scanning members with `if d > radius { radius = d + 0.01 }` and is capped (0.35 in the
//!   release whose `Match` uses `MatchDist`; later `ClusterRadius = 0.42`).
//! - `internal/photoprism/faces_match.go`, `selectBestFace`: EVERY face marker, cluster
//!   members included, is assigned to the nearest centre among the clusters it matches,
//!   where it matches when `dist <= sampleRadius + MatchDist`; no match leaves it without a
//!   face.
//!
//! Mirror: neighbourhoods are the kNN entries within eps (so a neighbourhood is capped at
//! k + 1 points); a face's candidate centres are those of its own cluster and of its kNN
//! neighbours' clusters (PhotoPrism scans all clusters, pre-bucketed by a sign hash); the
//! face-size, detection-score and collision-radius filters are dropped because these data
//! sets carry no such metadata.

use super::{check_knn, check_threshold, cos_from_euclidean, dense_ids, BaselineError};
use crate::eval::features::Features;
use crate::eval::knn::Knn;

/// PhotoPrism's `ClusterDist` 0.64 (Euclidean, unit vectors) as a cosine similarity:
/// `1 - 0.64^2 / 2 = 0.7952`. A neighbour counts when similarity is STRICTLY greater
/// (PhotoPrism tests `distance < eps`).
pub const STOCK_THRESHOLD: f32 = cos_from_euclidean(0.64);
/// kNN lists per face; PhotoPrism scans all pairs, 80 caps a neighbourhood.
pub const STOCK_K: usize = 80;
/// PhotoPrism's `ClusterCore`: neighbourhood size, the point itself included, of a core point.
pub const STOCK_MIN_PTS: usize = 4;
/// PhotoPrism's `MatchDist`: Euclidean slack beyond a cluster's sample radius for matching.
pub const STOCK_MATCH_DIST: f32 = 0.46;
/// Cap on a cluster's sample radius (Euclidean), from the same PhotoPrism release.
pub const STOCK_MAX_SAMPLE_RADIUS: f32 = 0.35;

/// Parameters of PhotoPrism's DBSCAN + matching.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbscanParams {
    /// DBSCAN neighbour when cosine similarity > threshold.
    pub threshold: f32,
    /// Neighbourhood size, self included, that makes a point core.
    pub min_pts: usize,
    /// Euclidean distance added to a cluster's sample radius when matching faces to it.
    /// It stays in Euclidean units because PhotoPrism adds it to a radius.
    pub match_dist: f32,
    /// Cap on a cluster's sample radius, Euclidean.
    pub max_sample_radius: f32,
}

impl Default for DbscanParams {
    fn default() -> Self {
        DbscanParams {
            threshold: STOCK_THRESHOLD,
            min_pts: STOCK_MIN_PTS,
            match_dist: STOCK_MATCH_DIST,
            max_sample_radius: STOCK_MAX_SAMPLE_RADIUS,
        }
    }
}

fn invalid(name: &'static str, value: String, reason: &'static str) -> BaselineError {
    BaselineError::InvalidParam {
        baseline: "dbscan",
        name,
        value,
        reason,
    }
}

/// Clusters with DBSCAN and assigns every face to its best matching cluster centre.
pub fn cluster(
    features: &Features,
    knn: &Knn,
    params: &DbscanParams,
) -> Result<Vec<Option<u64>>, BaselineError> {
    check_knn(features, knn)?;
    check_threshold("dbscan", params.threshold)?;
    if params.min_pts == 0 {
        return Err(invalid("min_pts", "0".into(), "must be at least 1"));
    }
    for (name, value) in [
        ("match_dist", params.match_dist),
        ("max_sample_radius", params.max_sample_radius),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(invalid(
                name,
                value.to_string(),
                "must be a finite distance >= 0",
            ));
        }
    }
    let labels = dbscan(knn, params);
    let centres = centres(features, &labels);
    Ok(match_faces(features, knn, &labels, &centres, params))
}

/// The point itself plus its kNN entries within eps.
fn neighbourhood(knn: &Knn, i: usize, threshold: f32, out: &mut Vec<usize>) {
    out.clear();
    out.push(i);
    out.extend(
        knn.neighbors[i]
            .iter()
            .take_while(|&&(_, similarity)| similarity > threshold)
            .map(|&(j, _)| j as usize),
    );
}

/// PhotoPrism's DBSCAN: labels are 0 = unlabelled, -1 = noise, 1.. = cluster.
fn dbscan(knn: &Knn, params: &DbscanParams) -> Vec<i64> {
    let n = knn.neighbors.len();
    let mut labels = vec![0i64; n];
    let mut visited = vec![false; n];
    let mut next_cluster = 1i64;
    let mut queue: Vec<usize> = Vec::new();
    let mut scratch: Vec<usize> = Vec::new();
    for i in 0..n {
        if visited[i] {
            continue;
        }
        visited[i] = true;
        neighbourhood(knn, i, params.threshold, &mut queue);
        if queue.len() < params.min_pts {
            labels[i] = -1;
            continue;
        }
        labels[i] = next_cluster;
        let mut j = 0;
        while j < queue.len() {
            let x = queue[j];
            if !visited[x] {
                visited[x] = true;
                neighbourhood(knn, x, params.threshold, &mut scratch);
                if scratch.len() >= params.min_pts {
                    // Upstream appends the whole neighbourhood; points already labelled
                    // would be no-ops there, so only unlabelled ones are queued here.
                    queue.extend(scratch.iter().copied().filter(|&y| labels[y] == 0));
                }
            }
            if labels[x] == 0 {
                labels[x] = next_cluster;
            }
            j += 1;
        }
        next_cluster += 1;
    }
    labels
}

/// A cluster's normalized mean and its (uncapped) sample radius.
struct Centre {
    vector: Vec<f32>,
    radius: f64,
}

fn euclidean(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

/// Centres of clusters 1..=max label, indexed by label - 1.
fn centres(features: &Features, labels: &[i64]) -> Vec<Centre> {
    let clusters = labels.iter().copied().max().unwrap_or(0).max(0) as usize;
    let dim = features.dim;
    let mut sums = vec![vec![0f64; dim]; clusters];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); clusters];
    for (i, &label) in labels.iter().enumerate() {
        if label > 0 {
            let c = (label - 1) as usize;
            members[c].push(i);
            for (s, &v) in sums[c].iter_mut().zip(features.row(i)) {
                *s += f64::from(v);
            }
        }
    }
    sums.into_iter()
        .zip(members)
        .map(|(sum, members)| {
            if members.len() == 1 {
                // Upstream returns a lone embedding as its own midpoint, radius 0.
                return Centre {
                    vector: features.row(members[0]).to_vec(),
                    radius: 0.0,
                };
            }
            let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
            // Members are unit vectors; only exactly opposed members could cancel out,
            // and then any direction is as good as the (zero) mean.
            let vector: Vec<f32> = if norm > 0.0 {
                sum.iter().map(|v| (v / norm) as f32).collect()
            } else {
                sum.iter().map(|&v| v as f32).collect()
            };
            let mut radius = 0.0;
            for &m in &members {
                let d = euclidean(&vector, features.row(m));
                if d > radius {
                    radius = d + 0.01;
                }
            }
            Centre { vector, radius }
        })
        .collect()
}

/// PhotoPrism's `selectBestFace` for every face, over the candidate clusters near it.
fn match_faces(
    features: &Features,
    knn: &Knn,
    labels: &[i64],
    centres: &[Centre],
    params: &DbscanParams,
) -> Vec<Option<u64>> {
    let mut candidates: Vec<usize> = Vec::new();
    let keys: Vec<Option<usize>> = (0..labels.len())
        .map(|i| {
            candidates.clear();
            candidates.extend(
                std::iter::once(i)
                    .chain(knn.neighbors[i].iter().map(|&(j, _)| j as usize))
                    .filter(|&j| labels[j] > 0)
                    .map(|j| (labels[j] - 1) as usize),
            );
            candidates.sort_unstable();
            candidates.dedup();
            let mut best: Option<(usize, f64)> = None;
            for &c in &candidates {
                let centre = &centres[c];
                let dist = euclidean(&centre.vector, features.row(i));
                let radius = centre.radius.min(f64::from(params.max_sample_radius));
                if dist <= radius + f64::from(params.match_dist)
                    && best.is_none_or(|(_, best_dist)| dist < best_dist)
                {
                    best = Some((c, dist));
                }
            }
            best.map(|(c, _)| c)
        })
        .collect();
    dense_ids(&keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::baselines::test_support::{normalized, scattered, two_groups};

    #[test]
    fn stock_threshold_maps_euclidean_eps() {
        assert!((STOCK_THRESHOLD - 0.7952).abs() < 1e-6);
    }

    #[test]
    fn two_tight_groups_with_min_pts_three() {
        // Each group has 3 points: with minPts = 4 nobody is core, with 3 everybody is.
        let (features, knn) = two_groups();
        let stock = cluster(&features, &knn, &DbscanParams::default()).unwrap();
        assert_eq!(stock, vec![None; 6]);
        let params = DbscanParams {
            min_pts: 3,
            ..Default::default()
        };
        assert_eq!(
            cluster(&features, &knn, &params).unwrap(),
            vec![Some(0), Some(0), Some(0), Some(1), Some(1), Some(1)]
        );
    }

    #[test]
    fn nothing_within_eps_leaves_everything_unassigned() {
        let (features, knn) = scattered();
        let params = DbscanParams {
            min_pts: 2,
            ..Default::default()
        };
        assert_eq!(cluster(&features, &knn, &params).unwrap(), vec![None; 6]);
    }

    #[test]
    fn noise_near_a_centre_is_matched() {
        // Four tight points form a core cluster at the x axis; face 4 is outside eps of
        // every member (cos ~ 0.74 < 0.7952), so DBSCAN calls it noise. It is ~0.71 from
        // the centre: beyond radius (~0.025) + MatchDist (0.46) at stock settings, within
        // it once MatchDist is widened to 0.8.
        let raw: [[f32; 2]; 6] = [
            [1.0, 0.0],
            [1.0, 0.01],
            [1.0, -0.01],
            [1.0, 0.02],
            [1.0, 0.9],
            [-1.0, 0.0],
        ];
        let (features, knn) = normalized(&raw);
        let stock = cluster(&features, &knn, &DbscanParams::default()).unwrap();
        assert_eq!(stock, vec![Some(0), Some(0), Some(0), Some(0), None, None]);
        let wide = DbscanParams {
            match_dist: 0.8,
            ..Default::default()
        };
        let matched = cluster(&features, &knn, &wide).unwrap();
        // Face 4 joins the cluster; face 5 (opposite side, distance ~2) stays unassigned.
        assert_eq!(
            matched,
            vec![Some(0), Some(0), Some(0), Some(0), Some(0), None]
        );
    }

    #[test]
    fn noise_is_not_reclaimed_as_border() {
        // Angles (degrees) -40, -10, 0, 1, 2; eps is ~37.3 degrees. Face 0 is visited first
        // and only face 1 is within eps of it, so it is noise. Face 1 is core (faces 0, 2,
        // 3, 4 within eps) and its cluster reaches face 0, but PhotoPrism never relabels
        // noise. Face 0 is ~0.65 from the centre, beyond radius (~0.15) + MatchDist (0.46),
        // so it stays unassigned at stock settings and joins with a wider MatchDist.
        let deg = |a: f32| [a.to_radians().cos(), a.to_radians().sin()];
        let raw = [deg(-40.0), deg(-10.0), deg(0.0), deg(1.0), deg(2.0)];
        let (features, knn) = normalized(&raw);
        let params = DbscanParams::default();
        let labels = dbscan(&knn, &params);
        assert_eq!(labels, vec![-1, 1, 1, 1, 1]);
        let assigned = cluster(&features, &knn, &params).unwrap();
        assert_eq!(assigned, vec![None, Some(0), Some(0), Some(0), Some(0)]);
        let wide = DbscanParams {
            match_dist: 0.6,
            ..Default::default()
        };
        assert_eq!(cluster(&features, &knn, &wide).unwrap(), vec![Some(0); 5]);
    }

    #[test]
    fn invalid_params_are_refused() {
        let (features, knn) = two_groups();
        for params in [
            DbscanParams {
                min_pts: 0,
                ..Default::default()
            },
            DbscanParams {
                match_dist: -1.0,
                ..Default::default()
            },
            DbscanParams {
                threshold: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                cluster(&features, &knn, &params),
                Err(BaselineError::InvalidParam { .. })
            ));
        }
    }
}
