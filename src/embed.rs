//! The embed stage: encoded face crops in, identity vectors out. `FaceEmbedder` is the seam the
//! daemon and the commands use; `DlibEmbedder` (decode -> chip -> dlib ResNet) is the implementation.
//! Inference is synchronous and batched; callers run it on dedicated threads, never on the reactor.

use std::sync::Arc;

use candle_core::{DType, Device};
use thiserror::Error;

use crate::align::{AlignError, ShapePredictor};
use crate::config::{ChipKind, Config, Precision};
use crate::decode::{ChipMode, DecodeLimits, Preprocessor};
use crate::dlib_resnet::{DlibResNet, ResNetError, DIM};

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
            EmbedError::Model(_) => "model_failure",
        }
    }
}

/// Turns encoded face crops into identity vectors.
pub trait FaceEmbedder: Send + Sync {
    /// Identifies the model and preprocessing; part of the state fingerprint, so a state built with
    /// one model is never extended with vectors from another.
    fn model_id(&self) -> String;
    /// Output dimension.
    fn dim(&self) -> usize;
    /// Embeds a batch of encoded images (JPEG/PNG/WebP bytes). One result per input, in order; a bad
    /// image fails alone and never its neighbours in the batch.
    fn embed_encoded(&self, images: &[&[u8]]) -> Vec<Result<Vec<f32>, EmbedError>>;
}

/// Why the embedder could not start: each message names the file or key and the fix.
#[derive(Debug, Error)]
pub enum EmbedSetupError {
    #[error(transparent)]
    Model(#[from] ResNetError),
    #[error(transparent)]
    Landmarks(#[from] AlignError),
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
}

impl DlibEmbedder {
    /// Builds the embedder `[embed]` describes; image limits come from `[embed]` and `[source]`.
    pub fn from_config(cfg: &Config) -> Result<Self, EmbedSetupError> {
        let e = &cfg.embed;
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
            },
        };
        let limits = DecodeLimits {
            max_image_bytes: cfg.source.max_message_bytes,
            max_image_pixels: cfg.source.max_image_pixels,
            max_image_side_px: e.max_image_side,
            ..DecodeLimits::default()
        };
        Ok(DlibEmbedder {
            net,
            prep: Preprocessor { limits, mode },
            batch_size: e.batch_size,
        })
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.prep
    }

    pub fn network(&self) -> &DlibResNet {
        &self.net
    }

    /// Chips for a batch of encoded images, decoded in parallel (rayon); one result per image.
    pub fn chips(&self, images: &[&[u8]]) -> Vec<Result<Vec<u8>, EmbedError>> {
        use rayon::prelude::*;
        images
            .par_iter()
            .map(|b| self.prep.chip(b).map_err(EmbedError::from))
            .collect()
    }

    /// Vectors for chips, `batch_size` at a time.
    pub fn embed_chips(&self, chips: &[&[u8]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(chips.len());
        for part in chips.chunks(self.batch_size) {
            out.extend(
                self.net
                    .embed_chips(part)
                    .map_err(|e| EmbedError::Model(e.to_string()))?,
            );
        }
        Ok(out)
    }
}

impl FaceEmbedder for DlibEmbedder {
    fn model_id(&self) -> String {
        format!(
            "dlib-resnet-v1-{}/{}",
            &self.net.sha256()[..8],
            self.prep.id()
        )
    }

    fn dim(&self) -> usize {
        DIM
    }

    fn embed_encoded(&self, images: &[&[u8]]) -> Vec<Result<Vec<f32>, EmbedError>> {
        let chips = self.chips(images);
        let ok: Vec<&[u8]> = chips
            .iter()
            .filter_map(|c| c.as_ref().ok().map(|c| c.as_slice()))
            .collect();
        let mut vectors = match self.embed_chips(&ok) {
            Ok(v) => v.into_iter(),
            Err(e) => return chips.iter().map(|_| Err(e.clone())).collect(),
        };
        chips
            .into_iter()
            .map(|c| {
                c.and_then(|_| {
                    vectors
                        .next()
                        .ok_or_else(|| EmbedError::Model("missing output row".into()))
                })
            })
            .collect()
    }
}
