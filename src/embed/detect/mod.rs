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
    /// default 0). Images of one size share forward passes of up to `batch` images.
    pub fn detect(
        &self,
        images: &[&RgbImage],
        threshold: f32,
        batch: usize,
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
                    out[i] = self.to_detections(&layout, &s, threshold);
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
    ) -> Vec<Detection> {
        let mut cands: Vec<Detection> = Vec::new();
        for (k, &(ww, wh)) in self.options.windows.iter().enumerate() {
            for r in 0..*rows {
                for c in 0..*cols {
                    let score = s[(k * rows + r) * cols + c];
                    if score > threshold {
                        let x = self.net.output_to_input(c as f64);
                        let y = self.net.output_to_input(r as f64);
                        let rect = centered_drect(x, y, ww as f64, wh as f64);
                        let rect = round_rect(self.pyramid.tensor_to_image(layout, rect));
                        cands.push(Detection {
                            rect,
                            confidence: score,
                        });
                    }
                }
            }
        }
        // Highest score first; equal scores keep scan order.
        cands.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        let mut kept: Vec<Detection> = Vec::new();
        for d in cands {
            if !kept.iter().any(|k| self.overlaps(&k.rect, &d.rect)) {
                kept.push(d);
            }
        }
        kept
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
