//! The chip the identity network takes (150x150 RGB) from a decoded image: the centred square
//! (`Centre`, Pillow's bilinear resize) or dlib's aligned chip on the 5 landmarks (`Aligned`).
//! `Preprocessor` is the one entry point the embedder calls: encoded bytes -> `image::decode`
//! within the limits -> the chip.

use std::sync::Arc;

use crate::embed::align;
use crate::embed::image::{
    decode, resize_bilinear, DecodeError, DecodeLimits, RgbImage, CHIP_SIZE_PX,
};
use crate::embed::landmarks::{self, ShapePredictor};

/// The centred square crop `Centre` mode takes: `(left, top, side)` with
/// `side = floor(crop_fraction * min(w, h) + 0.5)` clamped to `1..=min(w, h)`.
pub fn centre_crop(width: usize, height: usize, crop_fraction: f64) -> (usize, usize, usize) {
    let short = width.min(height);
    let side = ((crop_fraction * short as f64 + 0.5).floor().max(1.0) as usize).min(short);
    ((width - side) / 2, (height - side) / 2, side)
}

/// The `Centre` chip: `centre_crop` resized to `size` x `size` with Pillow's bilinear filter.
/// Returns `size * size * 3` bytes, RGB HWC.
pub fn centre_chip(rgb: &RgbImage, crop_fraction: f64, size: usize) -> Vec<u8> {
    let (left, top, side) = centre_crop(rgb.width, rgb.height, crop_fraction);
    resize_bilinear(rgb, (left, top, side, side), size, size)
}

// ------------------------------------------------------------------------------------------------

/// How the chip is cut from the decoded crop.
#[derive(Debug, Clone)]
pub enum ChipMode {
    /// A centred square, `crop_fraction` of the shorter side, resized (no landmarks). 0.5 on
    /// LFW's 250x250 deep-funneled images reproduces the embedding fixtures' preprocessing.
    Centre { crop_fraction: f32 },
    /// dlib's alignment: 5 landmarks predicted on a centred square box of side `box_fraction` of
    /// the shorter side (the daemon gets face crops, not photos, so there is no detector), then
    /// dlib's face chip with `padding` (dlib's default 0.25). On 50 LFW images (crops 2.2x the
    /// detector box) the landmarks from the 1/2.2 box lie 0.40 px on average from dlib's on its
    /// own HOG-detector box, and any fraction from 0.34 to 0.50 gives 0.34 to 0.43 px: the
    /// predictor's first cascade levels absorb most of the box error. Predicting again on a box
    /// merely re-centred on the landmarks did not bring them closer (0.35 to 0.66 px); with
    /// `landmark_passes` > 1 each further pass starts from the detector-like box
    /// `landmarks::DETECTOR_BOX_MAP` derives from the previous landmarks (`landmarks::refined_box`).
    /// Those lie nearer dlib's, but LFW accuracy does not move (98.67% vs 98.70%, as the real
    /// dlib's from its own detector box, 98.73%: BENCHMARKS.md section 5).
    Aligned {
        predictor: Arc<ShapePredictor>,
        box_fraction: f32,
        padding: f32,
        /// Shape-predictor passes, at least 1 (`embed.landmark_passes`).
        landmark_passes: u32,
    },
}

/// Encoded bytes to the network's 150x150 RGB chip: `decode` within `limits`, then `mode`.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    pub limits: DecodeLimits,
    pub mode: ChipMode,
}

impl Preprocessor {
    /// The chip for one encoded image: 150 * 150 * 3 bytes, RGB, row-major HWC.
    pub fn chip(&self, bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let rgb = decode(bytes, &self.limits)?;
        Ok(self.chip_of(&rgb))
    }

    /// The chip for an already decoded image, the landmarks started from the fixed box.
    pub fn chip_of(&self, rgb: &RgbImage) -> Vec<u8> {
        self.chips_at(rgb, None, false).pop().unwrap_or_default()
    }

    /// The chips of every landmark pass, first to last (`Aligned` with `landmark_passes` = n: n
    /// chips, the last one `chip_of`'s); `Centre` has one. `embed.average_passes` averages their
    /// vectors: each pass aligns the face slightly differently, and the mean of the vectors is
    /// a steadier estimate than any one (as dlib's `num_jitters`, without the randomness).
    pub fn pass_chips_of(&self, rgb: &RgbImage) -> Vec<Vec<u8>> {
        self.chips_at(rgb, None, true)
    }

    /// The fixed face box of `Aligned` for an image of this size (`box_fraction`), or None.
    pub fn fixed_box(&self, width: usize, height: usize) -> Option<landmarks::Rect> {
        match &self.mode {
            ChipMode::Centre { .. } => None,
            ChipMode::Aligned { box_fraction, .. } => Some(landmarks::centred_box(
                width,
                height,
                f64::from(*box_fraction),
            )),
        }
    }

    /// The chips with the landmarks started from `face` (a detector's box; None: the fixed box):
    /// every pass's with `all_passes`, else the last pass's only. `Centre` ignores `face`.
    pub fn chips_at(
        &self,
        rgb: &RgbImage,
        face: Option<landmarks::Rect>,
        all_passes: bool,
    ) -> Vec<Vec<u8>> {
        match &self.mode {
            ChipMode::Centre { crop_fraction } => {
                vec![centre_chip(rgb, f64::from(*crop_fraction), CHIP_SIZE_PX)]
            }
            ChipMode::Aligned {
                predictor,
                box_fraction,
                padding,
                landmark_passes,
            } => {
                let rect = face.unwrap_or_else(|| {
                    landmarks::centred_box(rgb.width, rgb.height, f64::from(*box_fraction))
                });
                let chip =
                    |parts: &_| align::face_chip(rgb, parts, CHIP_SIZE_PX, f64::from(*padding));
                if all_passes {
                    predictor
                        .predict_each_pass(
                            rgb,
                            rect,
                            *landmark_passes,
                            &landmarks::DETECTOR_BOX_MAP,
                        )
                        .iter()
                        .map(chip)
                        .collect()
                } else {
                    let parts = predictor.predict_passes(
                        rgb,
                        rect,
                        *landmark_passes,
                        &landmarks::DETECTOR_BOX_MAP,
                    );
                    vec![chip(&parts)]
                }
            }
        }
    }

    /// A short description for the state fingerprint: `centre0.5`, or
    /// `align5-<first 8 hex of the predictor's SHA-256>-b<box_fraction>-p<padding>`, with
    /// `-l<landmark_passes>` appended when there is more than one pass (so one-pass ids are those
    /// of before the option existed). Floats print in Rust's shortest round-trip form, so two
    /// different settings never share an id.
    pub fn id(&self) -> String {
        match &self.mode {
            ChipMode::Centre { crop_fraction } => format!("centre{crop_fraction}"),
            ChipMode::Aligned {
                predictor,
                box_fraction,
                padding,
                landmark_passes,
            } => {
                let passes = if *landmark_passes > 1 {
                    format!("-l{landmark_passes}")
                } else {
                    String::new()
                };
                format!(
                    "align5-{}-b{box_fraction}-p{padding}{passes}",
                    &predictor.sha256()[..8]
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_crop_box() {
        assert_eq!(centre_crop(250, 250, 0.5), (62, 62, 125));
        assert_eq!(centre_crop(300, 200, 0.5), (100, 50, 100));
        assert_eq!(centre_crop(3, 3, 0.01), (1, 1, 1));
    }
}
