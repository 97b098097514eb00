//! Face quality from the network's chip: how much identity the pixels can carry.
//!
//! Measured on the chip's central square (the face without dlib's padding), in luma:
//! - `brightness`: the mean, 0..255 (dark or burnt-out faces sit at the ends);
//! - `contrast`: the standard deviation (flat, washed-out or fogged faces are low);
//! - `sharpness`: the mean absolute 4-neighbour Laplacian divided by the contrast plus one, so
//!   that blur, low resolution and smeared compression read low whatever the exposure.
//!
//! The score is the smallest of three ramps, each 0 at its `lo` and 1 at its `hi` (see
//! `QualityParams`), so one bad property is enough to make a face low quality. The ramps were
//! fitted on LFW's training identities, clean against degraded (tools/scenarios.md); the engine
//! uses the score through `quality.min_score` only: a face below it is assigned but never links
//! two other faces (src/engine.rs, "weak faces").

use serde::Serialize;

/// The raw measures of one chip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChipQuality {
    pub brightness: f32,
    pub contrast: f32,
    pub sharpness: f32,
}

/// Where each measure's ramp starts (score 0) and ends (score 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityParams {
    pub dark: (f32, f32),
    pub contrast: (f32, f32),
    pub sharpness: (f32, f32),
}

impl Default for QualityParams {
    fn default() -> Self {
        QualityParams {
            dark: (25.0, 50.0),
            contrast: (12.0, 18.0),
            sharpness: (0.055, 0.075),
        }
    }
}

fn ramp(x: f32, (lo, hi): (f32, f32)) -> f32 {
    ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
}

impl ChipQuality {
    /// The quality score in [0, 1]: the smallest of the brightness, contrast and sharpness
    /// ramps (brightness counts from both ends: a burnt-out face is as bad as a dark one).
    pub fn score(&self, p: &QualityParams) -> f32 {
        let b = ramp(self.brightness, p.dark).min(ramp(255.0 - self.brightness, p.dark));
        b.min(ramp(self.contrast, p.contrast))
            .min(ramp(self.sharpness, p.sharpness))
    }
}

/// Measures a chip of `side` x `side` RGB pixels (row-major, 3 bytes each). A chip of another
/// length measures as zero quality rather than panicking.
pub fn measure(chip: &[u8], side: usize) -> ChipQuality {
    let zero = ChipQuality {
        brightness: 0.0,
        contrast: 0.0,
        sharpness: 0.0,
    };
    if side < 8 || chip.len() != side * side * 3 {
        return zero;
    }
    // The face without dlib's padding (0.25 on each side: the central 2/3).
    let lo = side / 6;
    let hi = side - lo;
    let w = hi - lo;
    let mut luma = vec![0f32; w * w];
    for y in 0..w {
        for x in 0..w {
            let i = ((y + lo) * side + x + lo) * 3;
            luma[y * w + x] = 0.299 * f32::from(chip[i])
                + 0.587 * f32::from(chip[i + 1])
                + 0.114 * f32::from(chip[i + 2]);
        }
    }
    let n = luma.len() as f64;
    let mean = luma.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = luma
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = var.sqrt();
    let mut lap = 0f64;
    for y in 1..w - 1 {
        for x in 1..w - 1 {
            let c = luma[y * w + x];
            let l = 4.0 * c
                - luma[(y - 1) * w + x]
                - luma[(y + 1) * w + x]
                - luma[y * w + x - 1]
                - luma[y * w + x + 1];
            lap += f64::from(l.abs());
        }
    }
    let lap = lap / ((w - 2) * (w - 2)) as f64;
    ChipQuality {
        brightness: mean as f32,
        contrast: std as f32,
        sharpness: (lap / (std + 1.0)) as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chip(side: usize, f: impl Fn(usize, usize) -> u8) -> Vec<u8> {
        let mut v = Vec::with_capacity(side * side * 3);
        for y in 0..side {
            for x in 0..side {
                let g = f(x, y);
                v.extend_from_slice(&[g, g, g]);
            }
        }
        v
    }

    #[test]
    fn textured_mid_grey_is_good_and_each_defect_lowers_the_score() {
        let p = QualityParams::default();
        // A seeded texture: a checker of 3-pixel cells around mid grey.
        let texture = |x: usize, y: usize| if (x / 3 + y / 3) % 2 == 0 { 90 } else { 170 };
        let good = measure(&chip(150, texture), 150);
        assert!(good.score(&p) > 0.99, "{good:?}");
        let dark = measure(&chip(150, |x, y| texture(x, y) / 12), 150);
        assert!(dark.score(&p) < 0.5, "{dark:?}");
        let flat = measure(&chip(150, |x, y| 120 + texture(x, y) / 40), 150);
        assert!(flat.score(&p) < 0.5, "{flat:?}");
        // Smooth: a slow ramp has contrast but no detail.
        let smooth = measure(&chip(150, |x, _| (40 + x) as u8), 150);
        assert!(
            smooth.contrast > 22.0 && smooth.score(&p) < 0.1,
            "{smooth:?}"
        );
        let burnt = measure(&chip(150, |x, y| 240 + texture(x, y) / 20), 150);
        assert!(burnt.score(&p) < 0.5, "{burnt:?}");
    }

    #[test]
    fn a_chip_of_the_wrong_size_is_zero_quality() {
        let q = measure(&[1, 2, 3], 150);
        assert_eq!(q.score(&QualityParams::default()), 0.0);
    }
}
