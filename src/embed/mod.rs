//! The embed stage: encoded face crops in, identity vectors out. `FaceEmbedder` is the seam the
//! daemon and the commands use; `DlibEmbedder` (decode -> chip -> dlib ResNet) is the implementation.
//! Inference is synchronous and batched; callers run it on dedicated threads, never on the reactor.

pub mod align;
pub mod chip;
pub mod detect;
pub mod dlib_format;
pub mod image;
pub mod landmarks;
pub mod locate;
pub mod network;
pub mod outcome;
pub mod quality;
pub mod thumbnail;

use std::sync::Arc;

use candle_core::{DType, Device};
use thiserror::Error;

use crate::config::{ChipKind, Config, EmbedConfig, Locate, Precision};
use crate::embed::chip::{ChipMode, Preprocessor};
use crate::embed::detect::{DetectorError, FaceDetector};
use crate::embed::image::{DecodeLimits, RgbImage};
use crate::embed::landmarks::{AlignError, ShapePredictor};
pub use crate::embed::locate::{Locator, Placement, Spot};
use crate::embed::network::{DlibResNet, ResNetError, DIM};
pub use crate::embed::outcome::{EmbedError, EmbeddedFace, Located};

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
    /// Every face of each image (`embed.faces_per_image = "all"`, in reading order; with "one",
    /// or an embedder without a detector, the one face `embed_images` gives). One result per
    /// input, never an empty list.
    fn embed_images_all(&self, images: &[&RgbImage]) -> Vec<Result<Vec<EmbeddedFace>, EmbedError>> {
        self.embed_images(images)
            .into_iter()
            .map(|r| r.map(|f| vec![f]))
            .collect()
    }
    /// Whether `embed_images_all` may give several faces per image (ids `<face_id>#<n>`).
    fn faces_per_image_all(&self) -> bool {
        false
    }
    /// Decodes a batch of encoded images (JPEG/PNG/WebP bytes) within `limits` and embeds them:
    /// `decode_all`, then `embed_images`. Callers that need the decoded pixels again (CLIP) call
    /// the two themselves, so that no image is decoded twice.
    fn embed_encoded(&self, images: &[&[u8]]) -> Vec<Result<EmbeddedFace, EmbedError>> {
        let decoded = decode_all(images, self.limits());
        embed_decoded(self, &decoded)
    }
    /// `embed_encoded` with every face of each image (`embed_images_all`).
    fn embed_encoded_all(&self, images: &[&[u8]]) -> Vec<Result<Vec<EmbeddedFace>, EmbedError>> {
        let decoded = decode_all(images, self.limits());
        embed_decoded_all(self, &decoded)
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
    beside_refusals(decoded, embedder.embed_images(&ok))
}

/// The embedder's results for the decoded images, put back among the decode refusals.
fn beside_refusals<T>(
    decoded: &[Result<RgbImage, EmbedError>],
    results: Vec<Result<T, EmbedError>>,
) -> Vec<Result<T, EmbedError>> {
    let mut results = results.into_iter();
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

/// `embed_decoded` with every face of each image (`FaceEmbedder::embed_images_all`).
pub fn embed_decoded_all<E: FaceEmbedder + ?Sized>(
    embedder: &E,
    decoded: &[Result<RgbImage, EmbedError>],
) -> Vec<Result<Vec<EmbeddedFace>, EmbedError>> {
    let ok: Vec<&RgbImage> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
    beside_refusals(decoded, embedder.embed_images_all(&ok))
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
                max_face_outside: e.max_face_outside,
                max_side: e.detect_max_side,
                refine_box: e.refine_box,
                all: e.faces_per_image == crate::config::FacesPerImage::All,
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
            None => Ok(images.iter().map(|_| Ok(vec![(None, None)])).collect()),
        }
    }

    /// Chips for a batch of decoded images, cut in parallel (rayon): for each image, for each of
    /// its spots (`place`), its chip, or with `average_passes` the chip of every landmark pass.
    pub fn chips(&self, images: &[&RgbImage], placed: &[Placement]) -> Vec<Vec<Vec<Vec<u8>>>> {
        use rayon::prelude::*;
        images
            .par_iter()
            .zip(placed.par_iter())
            .map(|(rgb, p)| match p {
                Ok(spots) => spots
                    .iter()
                    .map(|(rect, _)| self.prep.chips_at(rgb, *rect, self.average_passes))
                    .collect(),
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
                "+det{}-s{}-m{}-x{}-c{}-subj{}-{}-{}-in{}{}",
                &l.detector.sha256()[..8],
                l.min_face_score,
                l.min_face_px,
                l.max_side,
                l.max_face_outside,
                crate::embed::locate::SUBJECT_MARGIN,
                crate::embed::locate::SUBJECT_CENTRE,
                crate::embed::locate::SUBJECT_SIZE,
                crate::embed::locate::MARGIN_TOLERANCE,
                if l.refine_box { "-rb" } else { "" }
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

    fn faces_per_image_all(&self) -> bool {
        self.locator.as_ref().is_some_and(|l| l.all)
    }

    fn limits(&self) -> &DecodeLimits {
        &self.prep.limits
    }

    fn embed_images(&self, images: &[&RgbImage]) -> Vec<Result<EmbeddedFace, EmbedError>> {
        self.embed_images_all(images)
            .into_iter()
            .map(|r| r.map(|faces| faces.into_iter().next().expect("one face at least")))
            .collect()
    }

    fn embed_images_all(&self, images: &[&RgbImage]) -> Vec<Result<Vec<EmbeddedFace>, EmbedError>> {
        let placed = match self.place(images) {
            Ok(p) => p,
            Err(e) => return images.iter().map(|_| Err(e.clone())).collect(),
        };
        let chips = self.chips(images, &placed);
        let side = crate::embed::network::CHIP;
        let params = crate::embed::quality::QualityParams::default();
        let ok: Vec<&[u8]> = chips
            .iter()
            .flatten()
            .flatten()
            .map(Vec::as_slice)
            .collect();
        let mut vectors = match self.embed_chips(&ok) {
            Ok(v) => v.into_iter(),
            Err(e) => return chips.iter().map(|_| Err(e.clone())).collect(),
        };
        let missing = || EmbedError::Model("missing output row".into());
        let mut one = |group: &[Vec<u8>], located: Option<Located>| {
            // The mean of the face's chips' vectors (one chip: that chip's vector).
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
        };
        chips
            .into_iter()
            .zip(placed)
            .map(|(groups, placement)| {
                let spots = placement?;
                groups
                    .iter()
                    .zip(spots)
                    .map(|(group, (_, located))| one(group, located))
                    .collect()
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
