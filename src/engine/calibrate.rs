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
//!   raw vectors, the graph rules (`k`, `t2`) unchanged, and a threshold read off the stream
//!   (`threshold`):
//!   - `"valley"` (the default): the valley between the two modes of the faces' nearest-face
//!     cosines (Otsu's split of their histogram): a face whose nearest face is the same person
//!     sits above it, one whose nearest is a stranger below. It is read from the warm-up faces,
//!     then again each time the stream doubles (`warmup * 2^j` faces, up to `refit_until`),
//!     since the nearest stranger gets nearer as faces accumulate; a new threshold only ever
//!     rises (out-lists hold edges above `t1`, so a rise is exact: edges at or below it are
//!     dropped and the clusters recomputed, `Engine::raise_threshold`). Capped at
//!     `median + z_max * spread` of the warm-up's pairs: a stream whose faces nearly all have a
//!     same-person partner (camera repeats) has no stranger mode, and Otsu would split its
//!     same-person mode instead;
//!   - `"profile"` (states written before 2026-12-07): `t1 = median + z * spread` of the
//!     warm-up's pairs, once.
//!
//! Each decision is a function of the stream's first faces only (the warm-up, then the first
//! `warmup * 2^j`), so it is the same on every replay; the store keeps the latest
//! (`m:calibration`) and a restart never decides again.

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

/// How a stream decision's threshold is read (`[calibration] threshold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdRule {
    /// The valley of the nearest-face cosines, read again as the stream doubles.
    Valley,
    /// `median + z * spread` of the warm-up's pairs, once.
    Profile,
}

/// What the engine runs with, decided once per state (a stream decision's threshold is read
/// again as the stream grows, `CalibrationParams::refit`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Decision {
    /// The configured edge scorer, proxy and `engine.t1`.
    Trained { seen: Option<Comparison> },
    /// Cosine of the raw vectors with this threshold, read after the stream's first `faces`
    /// faces (0: by the profile rule, before the valley rule existed).
    Stream {
        t1: f32,
        seen: Comparison,
        #[serde(default)]
        faces: u32,
    },
}

/// The calibration settings (`[calibration]`, the reference read from its file).
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationParams {
    pub mode: CalibrationMode,
    pub warmup: usize,
    pub threshold: ThresholdRule,
    pub z: f32,
    pub z_max: f32,
    pub valley_margin: f32,
    pub refit_until: usize,
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

    /// Decides from the stream's first faces (`rows`, row-major, `dim` wide, unit length): their
    /// profile and nearest-face cosines, from one pass over their pairs.
    pub fn decide_rows(&self, rows: &[f32], dim: usize) -> Decision {
        let (sims, nearest) = pair_cosines(rows, dim);
        self.decide(&profile_of(centroid(rows, dim), sims), &nearest)
    }

    /// Decides from the profile of the stream's first faces and their nearest-face cosines
    /// (`nearest`, one per face among those faces).
    pub fn decide(&self, p: &SpaceProfile, nearest: &[f32]) -> Decision {
        let seen = self.compare(p);
        let calibrated = Decision::Stream {
            t1: self.stream_t1(&seen, nearest),
            seen,
            faces: p.faces(),
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

    /// The threshold of a stream whose warm-up was `seen` and whose faces' nearest-face cosines
    /// are `nearest`.
    fn stream_t1(&self, seen: &Comparison, nearest: &[f32]) -> f32 {
        let profile = seen.median + self.z * seen.spread;
        let t1 = match self.threshold {
            ThresholdRule::Profile => profile,
            ThresholdRule::Valley => {
                let cap = seen.median + self.z_max * seen.spread;
                valley(nearest).map_or(profile, |v| (v + self.valley_margin * seen.spread).min(cap))
            }
        };
        t1.clamp(-0.99, 0.999)
    }

    /// Whether a stream decision's threshold is read again once the stream holds `n` faces:
    /// the valley rule, at `warmup * 2^j` faces (j >= 1) up to `refit_until`.
    pub fn refits_at(&self, n: usize) -> bool {
        self.threshold == ThresholdRule::Valley
            && self.mode != CalibrationMode::Trained
            && n > self.warmup
            && n <= self.refit_until
            && n % self.warmup == 0
            && (n / self.warmup).is_power_of_two()
    }

    /// The decision after the stream's `n`-th face, when `decision` is a stream decision due
    /// for a new reading (`refits_at`); `nearest` gives the faces' nearest-face cosines and is
    /// called only then. The threshold never falls (see the module docs).
    pub fn refit(
        &self,
        decision: &Decision,
        n: usize,
        nearest: impl FnOnce() -> Vec<f32>,
    ) -> Option<Decision> {
        let Decision::Stream { t1, seen, faces } = *decision else {
            return None;
        };
        if !self.refits_at(n) || faces as usize >= n {
            return None;
        }
        Some(Decision::Stream {
            t1: self.stream_t1(&seen, &nearest()).max(t1),
            seen,
            faces: n as u32,
        })
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

impl SpaceProfile {
    /// The faces the profile was measured on (from its pairs).
    pub fn faces(&self) -> u32 {
        // n (n - 1) / 2 = pairs
        ((1.0 + (1.0 + 8.0 * self.pairs as f64).sqrt()) / 2.0).round() as u32
    }
}

/// Histogram bins of the valley.
const VALLEY_BINS: usize = 400;

/// The valley between the two modes of `values`: Otsu's split of their histogram
/// (`VALLEY_BINS` bins over their range), the bin edge that maximises the between-class
/// variance. `None` for fewer than two distinct values.
pub fn valley(values: &[f32]) -> Option<f32> {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if hi <= lo {
        return None;
    }
    let width = f64::from(hi - lo) / VALLEY_BINS as f64;
    let mut hist = [0u64; VALLEY_BINS];
    for v in values.iter().filter(|v| v.is_finite()) {
        let b = ((f64::from(*v - lo) / width) as usize).min(VALLEY_BINS - 1);
        hist[b] += 1;
    }
    let centre = |b: usize| f64::from(lo) + (b as f64 + 0.5) * width;
    let total: f64 = hist.iter().sum::<u64>() as f64;
    let sum: f64 = (0..VALLEY_BINS).map(|b| hist[b] as f64 * centre(b)).sum();
    let (mut w0, mut s0) = (0f64, 0f64);
    let mut best: Option<(f64, usize)> = None;
    for b in 1..VALLEY_BINS {
        w0 += hist[b - 1] as f64;
        s0 += hist[b - 1] as f64 * centre(b - 1);
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (s0 / w0, (sum - s0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if best.is_none_or(|(v, _)| between > v) {
            best = Some((between, b));
        }
    }
    best.map(|(_, b)| (f64::from(lo) + b as f64 * width) as f32)
}

/// The cosines of all pairs of `rows` (row-major, `dim` wide, unit length), and each row's cosine
/// to its nearest other row (empty for fewer than two rows).
fn pair_cosines(rows: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = rows.len().checked_div(dim).unwrap_or(0);
    let mut sims = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    let mut best = vec![f32::NEG_INFINITY; n];
    for i in 0..n {
        let a = &rows[i * dim..(i + 1) * dim];
        for j in i + 1..n {
            let s = crate::index::dot(a, &rows[j * dim..(j + 1) * dim]);
            sims.push(s);
            best[i] = best[i].max(s);
            best[j] = best[j].max(s);
        }
    }
    if n < 2 {
        best.clear();
    }
    (sims, best)
}

/// The profile of `rows` (row-major, `dim` wide, unit length): all pairs.
pub fn profile(rows: &[f32], dim: usize) -> SpaceProfile {
    profile_of(centroid(rows, dim), pair_cosines(rows, dim).0)
}

/// The profile of a space with this centroid from its pair cosines `sims`.
fn profile_of(centroid: Vec<f32>, mut sims: Vec<f32>) -> SpaceProfile {
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
            threshold: ThresholdRule::Profile,
            z: 3.0,
            z_max: 3.5,
            valley_margin: 0.0,
            refit_until: 64,
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
            auto.decide(&same, &[]),
            Decision::Trained { seen: Some(_) }
        ));
        for other in [shifted, elsewhere] {
            match auto.decide(&other, &[]) {
                Decision::Stream { t1, seen, .. } => {
                    assert!((t1 - (other.median + 3.0 * other.spread)).abs() < 1e-6);
                    assert_eq!(seen.median, other.median);
                }
                d => panic!("{other:?} -> {d:?}"),
            }
        }
        assert!(matches!(
            params(CalibrationMode::Stream).decide(&same, &[]),
            Decision::Stream { .. }
        ));
        assert!(matches!(
            params(CalibrationMode::Trained).decide(&same, &[]),
            Decision::Trained { seen: None }
        ));
        assert!(!params(CalibrationMode::Trained).needs_warmup());
    }

    #[test]
    fn the_valley_splits_two_modes_where_they_part() {
        // 60 values around 0.90 and 40 around 0.97: the split lies between the modes.
        let mut v: Vec<f32> = (0..60).map(|i| 0.88 + 0.04 * (i as f32 / 59.0)).collect();
        v.extend((0..40).map(|i| 0.955 + 0.03 * (i as f32 / 39.0)));
        let t = valley(&v).unwrap();
        assert!(t > 0.92 && t < 0.955, "{t}");
        // Moving the lower mode up moves the split with it.
        let shifted: Vec<f32> = v
            .iter()
            .map(|x| if *x < 0.95 { x + 0.01 } else { *x })
            .collect();
        let u = valley(&shifted).unwrap();
        assert!(u > t + 0.005 && u < 0.955, "{u} vs {t}");
        assert_eq!(valley(&[0.5, 0.5, 0.5]), None);
        assert_eq!(valley(&[]), None);
        assert_eq!(valley(&[f32::NAN, 0.3]), None);
    }

    #[test]
    fn nearest_is_each_rows_best_cosine_to_another() {
        let rows = unit_rows(&[0.0, 10.0, 90.0]);
        let nn = pair_cosines(&rows, 2).1;
        let c10 = 10f32.to_radians().cos();
        let c80 = 80f32.to_radians().cos();
        assert!(
            (nn[0] - c10).abs() < 1e-6 && (nn[1] - c10).abs() < 1e-6,
            "{nn:?}"
        );
        assert!((nn[2] - c80).abs() < 1e-6, "{nn:?}");
        assert!(pair_cosines(&unit_rows(&[5.0]), 2).1.is_empty());
    }

    #[test]
    fn the_valley_rule_reads_the_threshold_again_as_the_stream_doubles_and_never_lowers_it() {
        let mut c = params(CalibrationMode::Stream);
        c.threshold = ThresholdRule::Valley;
        let p = SpaceProfile {
            centroid: vec![1.0, 0.0],
            median: 0.8,
            spread: 0.04,
            pairs: 6,
        };
        assert_eq!(p.faces(), 4);
        let mut nn: Vec<f32> = vec![0.90; 6];
        nn.extend([0.97; 4]);
        let Decision::Stream { t1, faces, .. } = c.decide(&p, &nn) else {
            panic!()
        };
        assert!(
            t1 > 0.90 && t1 < 0.94,
            "the valley, under the cap 0.94: {t1}"
        );
        assert_eq!(faces, 4);
        let d = c.decide(&p, &nn);
        // Due at 8, 16, 32, 64 (warm-up 4, refit_until 64); not between, not after.
        let due: Vec<usize> = (1..200).filter(|&n| c.refits_at(n)).collect();
        assert_eq!(due, vec![8, 16, 32, 64]);
        assert_eq!(c.refit(&d, 12, || panic!("not due")), None);
        // A higher valley raises it, capped at median + z_max * spread = 0.94.
        let higher: Vec<f32> = [0.95; 6].into_iter().chain([0.99; 4]).collect();
        let Some(Decision::Stream { t1: up, faces, .. }) = c.refit(&d, 8, || higher) else {
            panic!()
        };
        assert!((up - 0.94).abs() < 1e-6 && faces == 8, "{up}");
        // A lower one leaves it where it was.
        let lower: Vec<f32> = [0.7; 6].into_iter().chain([0.75; 4]).collect();
        let Some(Decision::Stream { t1: same, .. }) = c.refit(&d, 8, || lower) else {
            panic!()
        };
        assert_eq!(same, t1);
        // Not for the profile rule, a trained decision, or a decision already read at n.
        c.threshold = ThresholdRule::Profile;
        assert!(!c.refits_at(8));
        c.threshold = ThresholdRule::Valley;
        assert_eq!(
            c.refit(&Decision::Trained { seen: None }, 8, Vec::new),
            None
        );
        let Some(at8) = c.refit(&d, 8, || vec![0.9, 0.95]) else {
            panic!()
        };
        assert_eq!(c.refit(&at8, 8, || panic!("read already")), None);
    }

    #[test]
    fn a_decision_stored_before_the_valley_rule_reads_as_read_at_no_face() {
        let old =
            r#"{"mode":"stream","t1":0.95,"seen":{"median":0.8,"spread":0.04,"centroid_cos":0.1}}"#;
        let d: Decision = serde_json::from_str(old).unwrap();
        assert!(matches!(d, Decision::Stream { faces: 0, .. }), "{d:?}");
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
