//! The embed stage: encoded face crops in, identity vectors out. `FaceEmbedder` is the seam the
//! daemon and the commands use; `DlibEmbedder` (decode -> chip -> dlib ResNet) is the implementation.
//! Inference is synchronous and batched; callers run it on dedicated threads, never on the reactor.

pub mod align;
pub mod chip;
pub mod detect;
pub mod dlib_format;
pub mod image;
pub mod landmarks;
pub mod network;
pub mod quality;

use std::sync::Arc;

use candle_core::{DType, Device};
use thiserror::Error;

use crate::config::{ChipKind, Config, EmbedConfig, Locate, Precision};
use crate::embed::chip::{ChipMode, Preprocessor};
use crate::embed::detect::{DetectorError, FaceDetector};
use crate::embed::image::{DecodeError, DecodeLimits, RgbImage};
use crate::embed::landmarks::{AlignError, ShapePredictor};
use crate::embed::network::{DlibResNet, ResNetError, DIM};

/// Why one image could not be embedded. Each variant is a bounded metric label and dead-letter class.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum EmbedError {
    /// The bytes are not a decodable JPEG/PNG/WebP image (garbage, truncated, unknown format).
    #[error("image could not be decoded: {0}")]
    Decode(String),
    /// Refused before decoding: too many bytes, too many pixels, or a side too long.
    #[error("image too large: {0}")]
    TooLarge(String),
    /// Decodable but unusable (for example smaller than the chip needs).
    #[error("image unusable: {0}")]
    Unusable(String),
    /// `embed.locate = "detect"` with `no_face = "reject"`: nothing in the image scored near a face.
    #[error("no face found: {0}")]
    NoFace(String),
    /// `no_face = "reject"`: the best candidate scored below `embed.min_face_score`.
    #[error("face uncertain: {0}")]
    FaceUncertain(String),
    /// The located face is smaller than `embed.min_face_px`.
    #[error("face too small: {0}")]
    FaceTooSmall(String),
    /// The network failed on the batch (a device error); the message is retried, not dead-lettered.
    #[error("model failure: {0}")]
    Model(String),
}

impl EmbedError {
    pub fn class(&self) -> &'static str {
        match self {
            EmbedError::Decode(_) => "image_decode",
            EmbedError::TooLarge(_) => "image_too_large",
            EmbedError::Unusable(_) => "image_unusable",
            EmbedError::NoFace(_) => "no_face",
            EmbedError::FaceUncertain(_) => "face_uncertain",
            EmbedError::FaceTooSmall(_) => "face_too_small",
            EmbedError::Model(_) => "model_failure",
        }
    }
}

/// One embedded face: its identity vector and, when the embedder can tell, its quality score
/// (src/quality.rs, from the chip the network saw).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedFace {
    pub vector: Vec<f32>,
    pub quality: Option<f32>,
    /// With `embed.locate = "detect"`: where the face was taken from and how it was found.
    pub located: Option<Located>,
}

/// How the embedder found the face it embedded.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The box the landmarks started from, `[left, top, right, bottom]` inclusive, image pixels.
    pub face_box: [i64; 4],
    /// `detected` (the detector's box), or, embedded from the fixed box, `no_face` /
    /// `face_uncertain` (the `clip_cluster_embed_located_total` outcomes).
    pub outcome: &'static str,
    /// The detector's score of the face (or of the best candidate), when there was one.
    pub score: Option<f32>,
}

/// Turns encoded face crops into identity vectors.
pub trait FaceEmbedder: Send + Sync {
    /// Identifies the model and preprocessing; part of the state fingerprint, so a state built with
    /// one model is never extended with vectors from another.
    fn model_id(&self) -> String;
    /// Output dimension.
    fn dim(&self) -> usize;
    /// The limits an encoded image is decoded within (`source.*` image limits).
    fn limits(&self) -> &DecodeLimits;
    /// Embeds a batch of decoded images. One result per input, in order; a bad image fails alone
    /// and never its neighbours in the batch.
    fn embed_images(&self, images: &[&RgbImage]) -> Vec<Result<EmbeddedFace, EmbedError>>;
    /// Decodes a batch of encoded images (JPEG/PNG/WebP bytes) within `limits` and embeds them:
    /// `decode_all`, then `embed_images`. Callers that need the decoded pixels again (CLIP) call
    /// the two themselves, so that no image is decoded twice.
    fn embed_encoded(&self, images: &[&[u8]]) -> Vec<Result<EmbeddedFace, EmbedError>> {
        let decoded = decode_all(images, self.limits());
        embed_decoded(self, &decoded)
    }
}

/// Decodes every image in parallel (rayon) within `limits`; a decoder's panic is caught and
/// reported as that image's error.
pub fn decode_all(images: &[&[u8]], limits: &DecodeLimits) -> Vec<Result<RgbImage, EmbedError>> {
    use rayon::prelude::*;
    images
        .par_iter()
        .map(|b| crate::embed::image::decode(b, limits).map_err(EmbedError::from))
        .collect()
}

/// Embeds the images that decoded; the others keep their decode error, in order.
pub fn embed_decoded<E: FaceEmbedder + ?Sized>(
    embedder: &E,
    decoded: &[Result<RgbImage, EmbedError>],
) -> Vec<Result<EmbeddedFace, EmbedError>> {
    let ok: Vec<&RgbImage> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
    let mut results = embedder.embed_images(&ok).into_iter();
    decoded
        .iter()
        .map(|d| match d {
            Ok(_) => results
                .next()
                .unwrap_or_else(|| Err(EmbedError::Model("missing embedder output".into()))),
            Err(e) => Err(e.clone()),
        })
        .collect()
}

/// Why the embedder could not start: each message names the file or key and the fix.
#[derive(Debug, Error)]
pub enum EmbedSetupError {
    #[error(transparent)]
    Model(#[from] ResNetError),
    #[error(transparent)]
    Landmarks(#[from] AlignError),
    #[error("{0} (embed.locate = \"detect\" needs it: run tools/dlib/fetch_models.sh, or set embed.locate = \"fixed\")")]
    Detector(#[from] DetectorError),
    #[error("embed.device = \"{device}\": {detail}")]
    Device { device: String, detail: String },
}

/// The device named by `embed.device`: "cpu", "cuda" (= "cuda:0") or "cuda:N".
pub fn device(name: &str) -> Result<Device, EmbedSetupError> {
    let bad = |detail: String| EmbedSetupError::Device {
        device: name.to_string(),
        detail,
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| bad("expected cuda:N".into()))?,
                None => return Err(bad("expected cpu, cuda or cuda:N".into())),
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(bad(
                    "this binary was built without CUDA; rebuild with --features cuda (README)"
                        .into(),
                ));
            }
            Device::new_cuda(ordinal).map_err(|e| bad(e.to_string()))
        }
    }
}

/// decode -> chip -> dlib ResNet, batched.
pub struct DlibEmbedder {
    net: DlibResNet,
    prep: Preprocessor,
    batch_size: usize,
    /// Average each chip's output with its mirror image's (`embed.flip_average`).
    flip_average: bool,
    /// Average the vectors of every landmark pass's chip (`embed.average_passes`).
    average_passes: bool,
    /// `embed.locate = "detect"`: the face detector and what to do with its findings.
    locator: Option<Locator>,
}

/// The detector and the `embed.*` settings that decide which box an image's face comes from.
pub struct Locator {
    pub detector: crate::embed::detect::FaceDetector,
    pub no_face: crate::config::NoFace,
    pub min_face_px: u32,
    pub min_face_score: f32,
    pub max_side: u32,
}

/// Candidates this far below `min_face_score` still make an image `face_uncertain`, not `no_face`.
const UNCERTAIN_MARGIN: f32 = 0.5;

/// Where one image's face is: the box to start the landmarks from (None: the fixed box) and how
/// it was found, or why the image is refused.
type Placement = Result<(Option<landmarks::Rect>, Option<Located>), EmbedError>;

impl Locator {
    /// One placement per image, the detector batched over images of one size.
    fn place(
        &self,
        prep: &Preprocessor,
        images: &[&RgbImage],
        batch: usize,
    ) -> Result<Vec<Placement>, EmbedError> {
        // Scaled copies for the detector where an image is longer than max_side.
        let scaled: Vec<Option<(RgbImage, f64)>> = images
            .iter()
            .map(|img| {
                let long = img.width.max(img.height);
                (long > self.max_side as usize).then(|| {
                    let s = self.max_side as f64 / long as f64;
                    let (w, h) = (
                        ((img.width as f64 * s).round() as usize).max(1),
                        ((img.height as f64 * s).round() as usize).max(1),
                    );
                    let px = crate::embed::image::resize_bilinear(
                        img,
                        (0, 0, img.width, img.height),
                        w,
                        h,
                    );
                    (
                        RgbImage {
                            width: w,
                            height: h,
                            pixels: px,
                        },
                        img.width as f64 / w as f64,
                    )
                })
            })
            .collect();
        let refs: Vec<&RgbImage> = images
            .iter()
            .zip(&scaled)
            .map(|(img, s)| s.as_ref().map_or(*img, |(i, _)| i))
            .collect();
        let found = self
            .detector
            .detect(&refs, self.min_face_score - UNCERTAIN_MARGIN, batch)
            .map_err(|e| EmbedError::Model(format!("face detector: {e}")))?;
        Ok(images
            .iter()
            .zip(found)
            .zip(&scaled)
            .map(|((img, dets), s)| {
                let k = s.as_ref().map_or(1.0, |(_, k)| *k);
                let (cx, cy) = ((img.width as f64 - 1.0) / 2.0, (img.height as f64 - 1.0) / 2.0);
                let dist = |d: &crate::embed::detect::Detection| {
                    let (x, y) = ((d.rect.l + d.rect.r) as f64 * k / 2.0, (d.rect.t + d.rect.b) as f64 * k / 2.0);
                    (x - cx).hypot(y - cy)
                };
                // The certain face nearest the centre; else the best candidate, if any.
                let certain = dets
                    .iter()
                    .filter(|d| d.confidence >= self.min_face_score)
                    .min_by(|a, b| dist(a).total_cmp(&dist(b)));
                let scale = |r: crate::embed::detect::IRect| landmarks::Rect {
                    left: (r.l as f64 * k).round() as i64,
                    top: (r.t as f64 * k).round() as i64,
                    right: (r.r as f64 * k).round() as i64,
                    bottom: (r.b as f64 * k).round() as i64,
                };
                let size = format!("{}x{}", img.width, img.height);
                match certain {
                    Some(d) => {
                        let rect = scale(d.rect);
                        let side = rect.width().min(rect.height());
                        if side < i64::from(self.min_face_px) {
                            return Err(EmbedError::FaceTooSmall(format!(
                                "the face found is {side} px, below embed.min_face_px = {}", self.min_face_px
                            )));
                        }
                        Ok((Some(rect), Some(Located { face_box: [rect.left, rect.top, rect.right, rect.bottom], outcome: "detected", score: Some(d.confidence) })))
                    }
                    None => {
                        let best = dets.first().map(|d| d.confidence);
                        let (outcome, why) = match best {
                            Some(b) => ("face_uncertain", format!("the best candidate in the {size} image scored {b:.3}, below embed.min_face_score = {}", self.min_face_score)),
                            None => ("no_face", format!("the detector found nothing in the {size} image")),
                        };
                        if self.no_face == crate::config::NoFace::Reject {
                            return Err(if best.is_some() { EmbedError::FaceUncertain(why) } else { EmbedError::NoFace(why) });
                        }
                        let Some(rect) = prep.fixed_box(img.width, img.height) else {
                            return Ok((None, None));
                        };
                        let side = rect.width().min(rect.height());
                        if side < i64::from(self.min_face_px) {
                            return Err(EmbedError::FaceTooSmall(format!(
                                "{why}, and the fixed box of the {size} image is {side} px, below embed.min_face_px = {}", self.min_face_px
                            )));
                        }
                        Ok((None, Some(Located { face_box: [rect.left, rect.top, rect.right, rect.bottom], outcome, score: best })))
                    }
                }
            })
            .collect())
    }
}

impl DlibEmbedder {
    /// The embedder of a whole configuration: `[embed]`, with the image limits `[embed]` and
    /// `[source]` set.
    pub fn from_config(cfg: &Config) -> Result<Self, EmbedSetupError> {
        Self::new(&cfg.embed, DecodeLimits::from_config(cfg))
    }

    /// Builds the embedder `e` describes, decoding within `limits`.
    pub fn new(e: &EmbedConfig, limits: DecodeLimits) -> Result<Self, EmbedSetupError> {
        let dev = device(&e.device)?;
        let dtype = match e.dtype {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        };
        let net = DlibResNet::load(&e.model_path, &dev, dtype)?;
        let mode = match e.chip {
            ChipKind::Centre => ChipMode::Centre {
                crop_fraction: e.crop_fraction,
            },
            ChipKind::Aligned => ChipMode::Aligned {
                predictor: Arc::new(ShapePredictor::load(&e.landmarks_path)?),
                box_fraction: e.box_fraction,
                padding: e.padding,
                landmark_passes: e.landmark_passes,
            },
        };
        let locator = match (e.locate, e.chip) {
            (Locate::Detect, ChipKind::Aligned) => Some(Locator {
                detector: FaceDetector::load(&e.detector_path, &dev)?,
                no_face: e.no_face,
                min_face_px: e.min_face_px,
                min_face_score: e.min_face_score,
                max_side: e.detect_max_side,
            }),
            _ => None,
        };
        Ok(DlibEmbedder {
            net,
            prep: Preprocessor { limits, mode },
            batch_size: e.batch_size,
            flip_average: e.flip_average,
            average_passes: e.average_passes,
            locator,
        })
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.prep
    }

    pub fn network(&self) -> &DlibResNet {
        &self.net
    }

    /// Where each image's face is: the detector's placement with `locate = "detect"`, else the
    /// fixed box for all.
    pub fn place(&self, images: &[&RgbImage]) -> Result<Vec<Placement>, EmbedError> {
        match &self.locator {
            Some(l) => l.place(&self.prep, images, self.batch_size),
            None => Ok(images.iter().map(|_| Ok((None, None))).collect()),
        }
    }

    /// Chips for a batch of decoded images, cut in parallel (rayon); one group per image: its
    /// chip, or with `average_passes` the chip of every landmark pass, the landmarks started from
    /// the image's placement (`place`).
    pub fn chips(&self, images: &[&RgbImage], placed: &[Placement]) -> Vec<Vec<Vec<u8>>> {
        use rayon::prelude::*;
        images
            .par_iter()
            .zip(placed.par_iter())
            .map(|(rgb, p)| match p {
                Ok((rect, _)) => self.prep.chips_at(rgb, *rect, self.average_passes),
                Err(_) => Vec::new(),
            })
            .collect()
    }

    /// Vectors for chips, `batch_size` at a time; with `flip_average`, each vector is the mean of
    /// the chip's and its left-right mirror's.
    pub fn embed_chips(&self, chips: &[&[u8]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(chips.len());
        let model = |e: ResNetError| EmbedError::Model(e.to_string());
        for part in chips.chunks(self.batch_size) {
            let mut v = self.net.embed_chips(part).map_err(model)?;
            if self.flip_average {
                let mirrored: Vec<Vec<u8>> = part.iter().map(|c| mirror(c)).collect();
                let refs: Vec<&[u8]> = mirrored.iter().map(Vec::as_slice).collect();
                let m = self.net.embed_chips(&refs).map_err(model)?;
                for (a, b) in v.iter_mut().zip(m) {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x = 0.5 * (*x + y));
                }
            }
            out.extend(v);
        }
        Ok(out)
    }
}

impl FaceEmbedder for DlibEmbedder {
    fn model_id(&self) -> String {
        let flip = if self.flip_average { "+flip" } else { "" };
        let passes = if self.average_passes { "+passavg" } else { "" };
        // The detector is part of the embedder's identity; fixed-box ids are those of before it.
        let locate = match &self.locator {
            Some(l) => format!(
                "+det{}-s{}-m{}-x{}",
                &l.detector.sha256()[..8],
                l.min_face_score,
                l.min_face_px,
                l.max_side
            ),
            None => String::new(),
        };
        format!(
            "dlib-resnet-v1-{}/{}{flip}{passes}{locate}",
            &self.net.sha256()[..8],
            self.prep.id()
        )
    }

    fn dim(&self) -> usize {
        DIM
    }

    fn limits(&self) -> &DecodeLimits {
        &self.prep.limits
    }

    fn embed_images(&self, images: &[&RgbImage]) -> Vec<Result<EmbeddedFace, EmbedError>> {
        let placed = match self.place(images) {
            Ok(p) => p,
            Err(e) => return images.iter().map(|_| Err(e.clone())).collect(),
        };
        let chips = self.chips(images, &placed);
        let side = crate::embed::network::CHIP;
        let params = crate::embed::quality::QualityParams::default();
        let ok: Vec<&[u8]> = chips.iter().flatten().map(Vec::as_slice).collect();
        let mut vectors = match self.embed_chips(&ok) {
            Ok(v) => v.into_iter(),
            Err(e) => return chips.iter().map(|_| Err(e.clone())).collect(),
        };
        let missing = || EmbedError::Model("missing output row".into());
        chips
            .into_iter()
            .zip(placed)
            .map(|(group, placement)| {
                let located = match placement {
                    Ok((_, located)) => located,
                    Err(e) => return Err(e),
                };
                (|| {
                    // The mean of the image's chips' vectors (one chip: that chip's vector).
                    let mut sum = vectors.next().ok_or_else(missing)?;
                    for _ in 1..group.len() {
                        let v = vectors.next().ok_or_else(missing)?;
                        sum.iter_mut().zip(v).for_each(|(a, b)| *a += b);
                    }
                    let n = group.len().max(1) as f32;
                    sum.iter_mut().for_each(|a| *a /= n);
                    let quality = group
                        .last()
                        .map(|chip| crate::embed::quality::measure(chip, side).score(&params));
                    Ok(EmbeddedFace {
                        vector: sum,
                        quality,
                        located,
                    })
                })()
            })
            .collect()
    }
}

/// The left-right mirror of a 150x150x3 RGB chip (other sizes are returned unchanged and fail
/// the network's size check).
fn mirror(chip: &[u8]) -> Vec<u8> {
    let side = crate::embed::network::CHIP;
    if chip.len() != side * side * 3 {
        return chip.to_vec();
    }
    let mut out = vec![0u8; chip.len()];
    for r in 0..side {
        for c in 0..side {
            let (src, dst) = ((r * side + c) * 3, (r * side + side - 1 - c) * 3);
            out[dst..dst + 3].copy_from_slice(&chip[src..src + 3]);
        }
    }
    out
}

impl From<DecodeError> for EmbedError {
    fn from(e: DecodeError) -> Self {
        let msg = format!("{} ({e})", e.class());
        match e {
            DecodeError::TooManyBytes { .. }
            | DecodeError::SideTooLong { .. }
            | DecodeError::TooManyPixels { .. } => EmbedError::TooLarge(msg),
            DecodeError::TooSmall { .. } => EmbedError::Unusable(msg),
            DecodeError::Empty
            | DecodeError::UnknownFormat
            | DecodeError::UnsupportedFormat(_)
            | DecodeError::Corrupt { .. }
            | DecodeError::Panicked(_) => EmbedError::Decode(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_flips_columns_and_is_its_own_inverse() {
        let side = crate::embed::network::CHIP;
        let chip: Vec<u8> = (0..side * side * 3).map(|i| (i * 7 % 251) as u8).collect();
        let m = mirror(&chip);
        assert_ne!(m, chip);
        // Pixel (r, c) moves to (r, side-1-c), channels kept in order.
        let (r, c) = (3, 10);
        let src = (r * side + c) * 3;
        let dst = (r * side + side - 1 - c) * 3;
        assert_eq!(m[dst..dst + 3], chip[src..src + 3]);
        assert_eq!(mirror(&m), chip);
        assert_eq!(mirror(&[1, 2, 3]), vec![1, 2, 3]);
    }

    #[test]
    fn embed_errors_have_bounded_classes() {
        let classes: Vec<&str> = [
            EmbedError::Decode(String::new()),
            EmbedError::TooLarge(String::new()),
            EmbedError::Unusable(String::new()),
            EmbedError::Model(String::new()),
        ]
        .iter()
        .map(EmbedError::class)
        .collect();
        assert_eq!(
            classes,
            [
                "image_decode",
                "image_too_large",
                "image_unusable",
                "model_failure"
            ]
        );
    }
}
