//! Which space the stream's vectors live in, and the edge threshold for a space nobody trained on.
//!
//! The trained parts (edge head, proxy directions, attention) were fitted in one space: the
//! built-in embedder's, on LFW's training identities. Vectors of another model, or of the same
//! model on other crops, share neither its calibration nor its geometry, and the head's
//! probabilities mean nothing there. So before the first face is linked the engine looks at the
//! stream's first `warmup` faces:
//! - their *profile*: the direction of their mean vector (the space's centroid), and the median
//!   cosine of all pairs among them with its spread (1.4826 times the median absolute
//!   deviation). Almost every pair of a stream is two different people, so the median and
//!   spread describe the impostor distribution, robust to the few same-person pairs;
//! - compared to the reference of the space the trained parts were fitted in
//!   (`calibration.reference_path`, written by `clip-cluster calibrate --reference-out`): a
//!   centroid at a cosine below `min_centroid_cos` to the reference's (another model: a
//!   different region of the sphere), or a median further than `tolerance` reference spreads
//!   away (the same model on other crops or images), is another space;
//! - another space (or `mode = "stream"`) runs without the trained parts: the cosine of the
//!   raw vectors, with `t1 = median + z * spread` (`z` fitted on the training scenarios of
//!   tools/scenarios.md, three spaces), the graph rules (`k`, `t2`) unchanged.
//!
//! The decision is a function of the first `warmup` faces only, so it is the same on every
//! replay; the store keeps it (`m:calibration`) and a restart never decides again.

use serde::{Deserialize, Serialize};

/// The profile of a set of vectors: their mean direction and impostor-similarity distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpaceProfile {
    /// The unit direction of the mean vector.
    pub centroid: Vec<f32>,
    /// Median cosine over all pairs.
    pub median: f32,
    /// 1.4826 x the median absolute deviation of those cosines (a standard deviation for a
    /// normal distribution, unmoved by a few same-person pairs).
    pub spread: f32,
    /// Pairs it was measured on.
    pub pairs: u64,
}

/// `[calibration] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationMode {
    /// Check the stream's profile against the trained space's; calibrate when they differ.
    Auto,
    /// Always apply the configured (trained) parts and threshold.
    Trained,
    /// Always calibrate from the stream.
    Stream,
}

/// How a stream's profile compares to the reference's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub median: f32,
    pub spread: f32,
    /// Cosine between the stream's centroid and the reference's.
    pub centroid_cos: f32,
}

/// What the engine runs with, decided once per state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Decision {
    /// The configured edge scorer, proxy and `engine.t1`.
    Trained { seen: Option<Comparison> },
    /// Cosine of the raw vectors with this threshold.
    Stream { t1: f32, seen: Comparison },
}

/// The calibration settings (`[calibration]`, the reference read from its file).
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationParams {
    pub mode: CalibrationMode,
    pub warmup: usize,
    pub z: f32,
    pub reference: SpaceProfile,
    pub min_centroid_cos: f32,
    pub tolerance: f32,
}

/// A reference file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("calibration reference {path}: {reason} (write one with `clip-cluster calibrate --reference-out`)")]
pub struct ReferenceError {
    pub path: String,
    pub reason: String,
}

/// Reads a reference profile (JSON, as `calibrate --reference-out` writes it) for `dim`.
pub fn read_reference(path: &std::path::Path, dim: usize) -> Result<SpaceProfile, ReferenceError> {
    let err = |reason: String| ReferenceError {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let p: SpaceProfile = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
    if p.centroid.len() != dim {
        return Err(err(format!(
            "its centroid has {} values, model.dim is {dim}",
            p.centroid.len()
        )));
    }
    if !(p.median.is_finite() && p.spread.is_finite() && p.spread > 0.0)
        || p.centroid.iter().any(|x| !x.is_finite())
    {
        return Err(err(
            "median, spread or centroid not finite (spread > 0)".into()
        ));
    }
    Ok(p)
}

impl CalibrationParams {
    /// Whether the engine must wait for `warmup` faces before it links any.
    pub fn needs_warmup(&self) -> bool {
        self.mode != CalibrationMode::Trained
    }

    /// Decides from the profile of the stream's first faces.
    pub fn decide(&self, p: &SpaceProfile) -> Decision {
        let seen = self.compare(p);
        let calibrated = Decision::Stream {
            t1: (p.median + self.z * p.spread).clamp(-0.99, 0.999),
            seen,
        };
        match self.mode {
            CalibrationMode::Trained => Decision::Trained { seen: None },
            CalibrationMode::Stream => calibrated,
            CalibrationMode::Auto => {
                if self.matches(&seen) {
                    Decision::Trained { seen: Some(seen) }
                } else {
                    calibrated
                }
            }
        }
    }

    pub fn compare(&self, p: &SpaceProfile) -> Comparison {
        Comparison {
            median: p.median,
            spread: p.spread,
            centroid_cos: crate::index::dot(&p.centroid, &self.reference.centroid),
        }
    }

    /// Whether a stream is the trained space (see the module docs).
    pub fn matches(&self, c: &Comparison) -> bool {
        let r = &self.reference;
        c.centroid_cos >= self.min_centroid_cos
            && (c.median - r.median).abs() <= self.tolerance * r.spread
    }
}

/// The profile of `rows` (row-major, `dim` wide, unit length): all pairs.
pub fn profile(rows: &[f32], dim: usize) -> SpaceProfile {
    let n = rows.len().checked_div(dim).unwrap_or(0);
    let centroid = centroid(rows, dim);
    let mut sims = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for i in 0..n {
        let a = &rows[i * dim..(i + 1) * dim];
        for j in i + 1..n {
            sims.push(crate::index::dot(a, &rows[j * dim..(j + 1) * dim]));
        }
    }
    if sims.is_empty() {
        return SpaceProfile {
            centroid,
            median: 0.0,
            spread: 0.0,
            pairs: 0,
        };
    }
    let median = median_of(&mut sims);
    let mut dev: Vec<f32> = sims.iter().map(|s| (s - median).abs()).collect();
    let mad = median_of(&mut dev);
    SpaceProfile {
        centroid,
        median,
        spread: 1.4826 * mad,
        pairs: sims.len() as u64,
    }
}

/// The unit direction of the mean of `rows` (row-major, `dim` wide).
pub fn centroid(rows: &[f32], dim: usize) -> Vec<f32> {
    let mut c = vec![0f64; dim];
    for r in rows.chunks_exact(dim.max(1)) {
        c.iter_mut().zip(r).for_each(|(c, x)| *c += f64::from(*x));
    }
    let norm = c.iter().map(|c| c * c).sum::<f64>().sqrt().max(1e-12);
    c.iter().map(|c| (c / norm) as f32).collect()
}

fn median_of(v: &mut [f32]) -> f32 {
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f32::total_cmp);
    *m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mode: CalibrationMode) -> CalibrationParams {
        CalibrationParams {
            mode,
            warmup: 4,
            z: 3.0,
            reference: SpaceProfile {
                centroid: vec![1.0, 0.0],
                median: 0.5,
                spread: 0.1,
                pairs: 1,
            },
            min_centroid_cos: 0.9,
            tolerance: 2.0,
        }
    }

    fn unit_rows(degrees: &[f32]) -> Vec<f32> {
        degrees
            .iter()
            .flat_map(|d| [d.to_radians().cos(), d.to_radians().sin()])
            .collect()
    }

    #[test]
    fn profile_is_the_centroid_and_the_median_and_robust_spread_of_all_pairs() {
        // Four unit vectors at -60, 0, 60 and 180 degrees: pair cosines 0.5 x2, -0.5 x3, -1.
        let p = profile(&unit_rows(&[-60.0, 0.0, 60.0, 180.0]), 2);
        assert_eq!(p.pairs, 6);
        // Sorted: -1, -0.5, -0.5, -0.5, 0.5, 0.5; the upper median is -0.5.
        assert!((p.median + 0.5).abs() < 1e-5, "{p:?}");
        // |dev|: 0.5, 0, 0, 0, 1, 1 -> upper median 0.5.
        assert!((p.spread - 0.7413).abs() < 1e-4, "{p:?}");
        // The sum is (0, 0) + ... : cos -60 + cos 0 + cos 60 + cos 180 = 1, sines cancel.
        assert!((p.centroid[0] - 1.0).abs() < 1e-5 && p.centroid[1].abs() < 1e-5);
        assert_eq!(profile(&unit_rows(&[10.0]), 2).pairs, 0);
    }

    #[test]
    fn auto_keeps_the_trained_parts_only_in_their_own_space() {
        let same = SpaceProfile {
            centroid: vec![0.99, 0.141],
            median: 0.55,
            spread: 0.11,
            pairs: 10,
        };
        let shifted = SpaceProfile {
            median: 0.1,
            ..same.clone()
        };
        let elsewhere = SpaceProfile {
            centroid: vec![0.0, 1.0],
            ..same.clone()
        };
        let auto = params(CalibrationMode::Auto);
        assert!(matches!(
            auto.decide(&same),
            Decision::Trained { seen: Some(_) }
        ));
        for other in [shifted, elsewhere] {
            match auto.decide(&other) {
                Decision::Stream { t1, seen } => {
                    assert!((t1 - (other.median + 3.0 * other.spread)).abs() < 1e-6);
                    assert_eq!(seen.median, other.median);
                }
                d => panic!("{other:?} -> {d:?}"),
            }
        }
        assert!(matches!(
            params(CalibrationMode::Stream).decide(&same),
            Decision::Stream { .. }
        ));
        assert!(matches!(
            params(CalibrationMode::Trained).decide(&same),
            Decision::Trained { seen: None }
        ));
        assert!(!params(CalibrationMode::Trained).needs_warmup());
    }

    #[test]
    fn a_reference_file_of_the_wrong_width_or_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ref.json");
        let p = profile(&unit_rows(&[0.0, 30.0, 100.0]), 2);
        std::fs::write(&good, serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(read_reference(&good, 2).unwrap(), p);
        let e = read_reference(&good, 3).unwrap_err();
        assert!(e.to_string().contains("model.dim is 3"), "{e}");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, b"not json").unwrap();
        assert!(read_reference(&bad, 2).is_err());
        assert!(read_reference(&dir.path().join("missing.json"), 2).is_err());
    }
}
