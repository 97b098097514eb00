//! The embed stage: encoded face crops in, identity vectors out. `FaceEmbedder` is the seam the
//! daemon and the commands use; `DlibEmbedder` (decode -> chip -> dlib ResNet) is the implementation.
//! Inference is synchronous and batched; callers run it on dedicated threads, never on the reactor.

use thiserror::Error;

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
