//! What embedding one image gives: its face (vector, quality, where it was found) or why it was
//! refused, one bounded class per reason.

use thiserror::Error;

use crate::embed::image::DecodeError;

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
    /// The border cuts the located face by more than `embed.max_face_outside` (`locate::outside_fraction`).
    #[error("face cut by the border: {0}")]
    FaceCut(String),
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
            EmbedError::FaceCut(_) => "face_cut",
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
