//! Finding faces in an image: dlib's MMOD CNN face detector (`mmod_human_face_detector.dat`) in
//! candle, CPU or CUDA, batched over images of one size. Golden-tested against the real dlib
//! (`tests/fixtures/detector/`, `tools/dlib/detector_reference.py`): the same boxes, the same
//! confidences to float rounding.
//!
//! The path is dlib's `loss_mmod_::to_label`: the tiled pyramid (`pyramid`) -> the network
//! (`model`) -> every output position scoring above the threshold becomes its detector window
//! centred on the position's input point, mapped from the pyramid tile back to the image and
//! rounded -> sorted by score, highest first -> non-maximum suppression against the kept ones.

pub mod model;
pub mod pyramid;

use std::path::Path;

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::embed::dlib_format::FormatError;
use crate::embed::image::RgbImage;
use model::{MmodNet, MmodOptions};
pub use pyramid::IRect;
use pyramid::{centered_drect, round_rect, Layout, Pyramid};

/// SHA-256 of the file this module was written and tested against.
pub const DETECTOR_SHA256: &str =
    "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6";

#[derive(Debug, Error)]
pub enum DetectorError {
    #[error("cannot read face detector file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("face detector file {path} is not dlib's MMOD detector: {source}")]
    Format { path: String, source: FormatError },
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `refine` (embed.refine_box): the windows within this many output positions (8 pyramid pixels
/// each) of a kept box's centre, on its level and the two beside it, weigh into its box ...
pub const REFINE_RADIUS: i64 = 2;

/// ... each by `exp((score - best) / REFINE_TEMPERATURE)`. Both chosen on TRAINING identities
/// (`tests/it/detector.rs`, `refined_boxes_follow_the_face_across_the_picture`: 10 LFW training
/// images pasted at 8 places of a 400x380 picture; a box corner's spread across the places, mean
/// over the images, dlib's boxes 19.0 px): temperature 0.1 / 0.25 / 0.5 / 1 at radius 2: 4.7 /
/// 4.5 / 4.6 / 5.3 px; radius 1 / 2 / 3 at 0.25: 7.0 / 4.5 / 4.4 px; a parabola through the
/// three scores around the peak on each axis and across levels instead: 9.8 px.
pub const REFINE_TEMPERATURE: f64 = 0.25;

/// One face found: its box in image pixels (dlib's inclusive `rectangle`) and the detector's
/// score (dlib's `detection_confidence`; dlib reports those above 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub rect: IRect,
    pub confidence: f32,
}

/// The loaded detector on one device.
pub struct FaceDetector {
    net: MmodNet,
    options: MmodOptions,
    pyramid: Pyramid,
    mean: [f32; 3],
    device: Device,
    sha256: String,
}

impl FaceDetector {
    pub fn load(path: &Path, device: &Device) -> Result<Self, DetectorError> {
        let p = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| DetectorError::Io {
            path: p.clone(),
            source,
        })?;
        Self::from_bytes(&data, &p, device)
    }

    pub fn from_bytes(data: &[u8], name: &str, device: &Device) -> Result<Self, DetectorError> {
        let parsed = model::parse(data).map_err(|source| DetectorError::Format {
            path: name.to_string(),
            source,
        })?;
        Ok(FaceDetector {
            net: MmodNet::build(parsed.convs, device)?,
            options: parsed.options,
            pyramid: Pyramid {
                n: 6,
                padding: parsed.padding.0,
                outer_padding: parsed.padding.1,
            },
            mean: parsed.mean,
            device: device.clone(),
            sha256: format!("{:x}", Sha256::digest(data)),
        })
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The side of the smallest face the detector finds without upsampling (its window).
    pub fn window_px(&self) -> u64 {
        self.options
            .windows
            .iter()
            .map(|w| w.0.min(w.1))
            .min()
            .unwrap_or(0)
    }

    /// Faces in each image, dlib's order (highest score first), scores above `threshold` (dlib's
    /// default 0), dlib's boxes exactly. Images of one size share forward passes of up to `batch`
    /// images.
    pub fn detect(
        &self,
        images: &[&RgbImage],
        threshold: f32,
        batch: usize,
    ) -> Result<Vec<Vec<Detection>>, DetectorError> {
        self.detect_with(images, threshold, batch, false)
    }

    /// `detect`, with `refine` each kept box moved and scaled between the network's output
    /// positions and the pyramid's levels (`refined`): the same faces, order and scores, boxes
    /// that follow the face wherever it lies in the picture instead of snapping to the output grid
    /// (8 pyramid pixels) and to the levels (a factor 1.2 apart).
    pub fn detect_with(
        &self,
        images: &[&RgbImage],
        threshold: f32,
        batch: usize,
        refine: bool,
    ) -> Result<Vec<Vec<Detection>>, DetectorError> {
        let mut out = vec![Vec::new(); images.len()];
        // Group by size, in first-seen order.
        let mut groups: Vec<((usize, usize), Vec<usize>)> = Vec::new();
        for (i, img) in images.iter().enumerate() {
            let key = (img.width, img.height);
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => g.1.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        for ((w, h), idx) in groups {
            let layout = self.pyramid.layout(h, w);
            if layout.rects.is_empty() {
                continue;
            }
            for part in idx.chunks(batch.max(1)) {
                let scores =
                    self.scores(&layout, part.iter().map(|&i| images[i]), part.len(), w)?;
                for (&i, s) in part.iter().zip(scores) {
                    out[i] = self.to_detections(&layout, &s, threshold, refine);
                }
            }
        }
        Ok(out)
    }

    /// Every window's raw score for images of `images[0]`'s size (others are skipped: `detect`
    /// groups by size), per image in the network's output order; empty when the image is smaller
    /// than the detector's window. For device parity checks (`bench-embed --detector`).
    pub fn score_maps(&self, images: &[&RgbImage]) -> Result<Vec<Vec<f32>>, DetectorError> {
        let Some(first) = images.first() else {
            return Ok(Vec::new());
        };
        let (w, h) = (first.width, first.height);
        let same: Vec<&RgbImage> = images
            .iter()
            .copied()
            .filter(|i| (i.width, i.height) == (w, h))
            .collect();
        let layout = self.pyramid.layout(h, w);
        if layout.rects.is_empty() {
            return Ok(vec![Vec::new(); same.len()]);
        }
        let n = same.len();
        Ok(self
            .scores(&layout, same.into_iter(), n, w)?
            .into_iter()
            .map(|(_, _, v)| v)
            .collect())
    }

    /// The window scores of `n` images of one size: per image (rows, cols, values).
    fn scores<'a>(
        &self,
        layout: &Layout,
        images: impl Iterator<Item = &'a RgbImage>,
        n: usize,
        width: usize,
    ) -> Result<Vec<(usize, usize, Vec<f32>)>, DetectorError> {
        let per = 3 * layout.rows * layout.cols;
        let mut data = vec![0f32; n * per];
        let imgs: Vec<&RgbImage> = images.collect();
        {
            use rayon::prelude::*;
            data.par_chunks_mut(per)
                .zip(imgs.par_iter())
                .for_each(|(d, img)| pyramid::fill(layout, width, &img.pixels, self.mean, d));
        }
        let x = Tensor::from_vec(data, (n, 3, layout.rows, layout.cols), &self.device)?;
        let y = self.net.forward(&x)?;
        let (_, k, rows, cols) = y.dims4()?;
        let flat = y.flatten_all()?.to_vec1::<f32>()?;
        let per_out = k * rows * cols;
        Ok(flat
            .chunks(per_out.max(1))
            .take(n)
            .map(|c| (rows, cols, c.to_vec()))
            .collect())
    }

    /// `tensor_to_dets` then non-maximum suppression (`loss_mmod_::to_label`).
    fn to_detections(
        &self,
        layout: &Layout,
        (rows, cols, s): &(usize, usize, Vec<f32>),
        threshold: f32,
        refine: bool,
    ) -> Vec<Detection> {
        let mut cands: Vec<(Detection, usize, usize, usize)> = Vec::new();
        for (k, &(ww, wh)) in self.options.windows.iter().enumerate() {
            for r in 0..*rows {
                for c in 0..*cols {
                    let score = s[(k * rows + r) * cols + c];
                    if score > threshold {
                        let x = self.net.output_to_input(c as f64);
                        let y = self.net.output_to_input(r as f64);
                        let rect = centered_drect(x, y, ww as f64, wh as f64);
                        let rect = round_rect(self.pyramid.tensor_to_image(layout, rect));
                        cands.push((
                            Detection {
                                rect,
                                confidence: score,
                            },
                            k,
                            r,
                            c,
                        ));
                    }
                }
            }
        }
        // Highest score first; equal scores keep scan order.
        cands.sort_by(|a, b| b.0.confidence.total_cmp(&a.0.confidence));
        let mut kept: Vec<(Detection, usize, usize, usize)> = Vec::new();
        for d in cands {
            if !kept.iter().any(|k| self.overlaps(&k.0.rect, &d.0.rect)) {
                kept.push(d);
            }
        }
        kept.into_iter()
            .map(|(d, k, r, c)| {
                if refine {
                    self.refined(layout, (*rows, *cols, s), d, k, r, c)
                } else {
                    d
                }
            })
            .collect()
    }

    /// The kept detection's box as the score-weighted mean of the windows around it: every output
    /// position within `REFINE_RADIUS` of the box's centre on its pyramid level and on the levels
    /// just above and below (the same image point mapped there), weighted by
    /// `exp((score - best) / REFINE_TEMPERATURE)`; the centre averaged in image pixels, the side
    /// in logarithm. A face between two output positions or two levels gets a box between
    /// theirs, so its box follows it wherever it lies in the picture.
    fn refined(
        &self,
        layout: &Layout,
        (rows, cols, s): (usize, usize, &[f32]),
        d: Detection,
        k: usize,
        r: usize,
        c: usize,
    ) -> Detection {
        let at = |r: usize, c: usize| s[(k * rows + r) * cols + c] as f64;
        let (ww, wh) = self.options.windows[k];
        let level = |x: f64, y: f64| {
            let (px, py) = ((x + 0.5).floor() as i64, (y + 0.5).floor() as i64);
            layout.rects.iter().position(|q| q.contains(px, py))
        };
        let win = |rr: usize, cc: usize| {
            let x = self.net.output_to_input(cc as f64);
            let y = self.net.output_to_input(rr as f64);
            (
                level(x, y),
                self.pyramid
                    .tensor_to_image(layout, centered_drect(x, y, ww as f64, wh as f64)),
            )
        };
        let (Some(home), rect) = win(r, c) else {
            return d;
        };
        let (cx, cy) = ((rect[0] + rect[2]) / 2.0, (rect[1] + rect[3]) / 2.0);
        let a = self.net.output_to_input(1.0) - self.net.output_to_input(0.0);
        let b = self.net.output_to_input(0.0);
        let peak = at(r, c);
        let (mut sw, mut sx, mut sy, mut sl) = (0.0, 0.0, 0.0, 0.0);
        let lo = home.saturating_sub(1);
        let hi = (home + 1).min(layout.rects.len() - 1);
        for lv in lo..=hi {
            let (tx, ty) = self.pyramid.image_to_tensor(layout, cx, cy, lv);
            let (pc, pr) = (((tx - b) / a).round() as i64, ((ty - b) / a).round() as i64);
            for rr in pr - REFINE_RADIUS..=pr + REFINE_RADIUS {
                for cc in pc - REFINE_RADIUS..=pc + REFINE_RADIUS {
                    if rr < 0 || cc < 0 || rr as usize >= rows || cc as usize >= cols {
                        continue;
                    }
                    let (l, q) = win(rr as usize, cc as usize);
                    if l != Some(lv) {
                        continue;
                    }
                    let w = ((at(rr as usize, cc as usize) - peak) / REFINE_TEMPERATURE).exp();
                    sw += w;
                    sx += w * (q[0] + q[2]) / 2.0;
                    sy += w * (q[1] + q[3]) / 2.0;
                    sl += w * (q[2] - q[0]).ln();
                }
            }
        }
        if sw <= 0.0 || !sw.is_finite() {
            return d;
        }
        let (mx, my) = (sx / sw, sy / sw);
        let half = (sl / sw).exp() / 2.0;
        let hh = half * (rect[3] - rect[1]) / (rect[2] - rect[0]);
        Detection {
            rect: round_rect([mx - half, my - hh, mx + half, my + hh]),
            confidence: d.confidence,
        }
    }

    /// dlib's `test_box_overlap(iou, percent_covered)`. Its "union" is the area of the smallest
    /// rectangle holding both (`(a + b).area()`), not of their union: with the true union one
    /// box dlib 20 keeps on George_W_Bush_0022 is suppressed (0.339 against 0.338).
    fn overlaps(&self, a: &IRect, b: &IRect) -> bool {
        let inner = a.intersect(b).area() as f64;
        if inner == 0.0 {
            return false;
        }
        let hull = IRect {
            l: a.l.min(b.l),
            t: a.t.min(b.t),
            r: a.r.max(b.r),
            b: a.b.max(b.b),
        };
        let outer = hull.area() as f64;
        inner / outer > self.options.nms_iou
            || inner / a.area() as f64 > self.options.nms_covered
            || inner / b.area() as f64 > self.options.nms_covered
    }
}
