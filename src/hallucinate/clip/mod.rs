//! CLIP's image and text towers in candle, read from operator-supplied weights in OpenAI / OpenCLIP
//! naming, and the text directions of the attribute prompts (METHOD.md (c) step 2).
//!
//! Architecture: Radford et al., "Learning Transferable Visual Models From Natural Language
//! Supervision" (ICML 2021); the reference is OpenAI's `clip/model.py` as carried by open_clip
//! (`open_clip/transformer.py`: `VisionTransformer`, `TextTransformer`, `ResidualAttentionBlock`).
//! - Vision: patch convolution (no bias), class token, positional embedding, `ln_pre`, residual
//!   attention blocks, `ln_post` on the class token, `@ proj`.
//! - Text: token + positional embedding, causal mask, the same blocks, `ln_final`, the row of the
//!   end-of-text token (the argmax of the ids), `@ text_projection`.
//! - Block (pre-LN): `x += out_proj(attn(ln_1(x)))` with the fused `in_proj`, then
//!   `x += c_proj(act(c_fc(ln_2(x))))`; `act` is QuickGELU for OpenAI's weights, GELU for most
//!   OpenCLIP trainings (the open_clip model config's `quick_gelu` says which).
//!
//! Tensor names are OpenAI's (`visual.conv1.weight`, `visual.class_embedding`,
//! `visual.transformer.resblocks.N.attn.in_proj_weight`, `token_embedding.weight`,
//! `text_projection`, ...); OpenCLIP's custom-text models keep the text tower under `text.`. Every
//! expected tensor must be present with its shape and no unknown tensor may be, or loading fails
//! with the file and the tensor named: a silently random or ignored tensor (candle-transformers'
//! CLIP fills a missing `class_embedding` with random values) would make every direction wrong.
//!
//! Proven against the independent numpy reference `tools/clip/reference.py` on a random-weight model
//! (`tests/fixtures/clip`, `tests/it/clip.rs`). Arithmetic is f32 whatever the stored dtype.
//!
//! Files: `architecture` (shapes, open_clip model configs, the expected tensors), `model` (the
//! towers), `tokenizer` (the BPE tokenizer), `image` (Pillow-exact preprocessing); this file pairs
//! model and tokenizer and starts them from `[clip]`.

pub mod architecture;
pub mod image;
pub mod model;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use ::image::RgbImage;
use candle_core::{Device, Tensor, D};

pub use architecture::{Activation, ClipArchitecture, TowerShape};
pub use model::{random_tensors, ClipModel};
pub use tokenizer::{ClipTokenizer, TokenizerError};

use crate::hallucinate::prompts::{Direction, Prompts, PromptsError};

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("cannot read CLIP weights {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("CLIP weights {path}: {reason}")]
    Naming { path: PathBuf, reason: String },
    #[error("CLIP weights {path} lack tensor `{name}` (expected shape {expected}); the file is not a complete OpenAI/OpenCLIP CLIP checkpoint")]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: String,
    },
    #[error("CLIP weights {path}: tensor `{name}` has shape {found:?}, expected {expected:?} for this architecture (check [clip] model_config)")]
    WrongShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("CLIP weights {path}: unexpected tensor `{name}`: this CLIP variant (layer scale, attention pooling, another projection...) is not supported")]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error("CLIP architecture ({path}): {reason}")]
    Architecture { path: PathBuf, reason: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Prompts(#[from] PromptsError),
    #[error("CLIP vocabulary {vocab} does not match the weights {weights}: {reason}")]
    VocabularyMismatch {
        vocab: PathBuf,
        weights: PathBuf,
        reason: String,
    },
    #[error("clip.device = \"{device}\": {detail}")]
    Device { device: String, detail: String },
    #[error("CLIP input: {0}")]
    Input(String),
    #[error("CLIP inference: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Rows of `x` scaled to unit length, as host vectors.
fn unit_rows(x: &Tensor) -> Result<Vec<Vec<f32>>, ClipError> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?.to_vec2::<f32>()?)
}

/// CLIP as the hallucination stage uses it: the towers and the tokenizer.
#[derive(Debug)]
pub struct Clip {
    model: ClipModel,
    tokenizer: ClipTokenizer,
}

impl Clip {
    /// Loads the weights (see [`ClipModel::load`]) and the BPE vocabulary.
    pub fn load(
        weights: &Path,
        vocab: &Path,
        arch: Option<&ClipArchitecture>,
        device: &Device,
    ) -> Result<Self, ClipError> {
        let tokenizer = ClipTokenizer::load(vocab)?;
        let model = ClipModel::load(weights, arch, device)?;
        Self::new(model, tokenizer).map_err(|e| match e {
            ClipError::Input(reason) => ClipError::VocabularyMismatch {
                vocab: vocab.to_path_buf(),
                weights: weights.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Pairs a model with a tokenizer; refused when the vocabulary's size is not the number of
    /// rows of the model's token embedding (a vocabulary that does not belong to the weights).
    pub fn new(model: ClipModel, tokenizer: ClipTokenizer) -> Result<Self, ClipError> {
        if tokenizer.n_tokens() != model.architecture().vocab_size {
            return Err(ClipError::Input(format!(
                "the vocabulary has {} tokens, the text tower's token_embedding {} rows",
                tokenizer.n_tokens(),
                model.architecture().vocab_size
            )));
        }
        Ok(Self { model, tokenizer })
    }

    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Unit image embeddings c, one per image (any size: resized and centre-cropped as CLIP's
    /// own preprocessing does).
    pub fn encode_images(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, ClipError> {
        unit_rows(&self.model.image_features(&self.model.pixels(images)?)?)
    }

    /// Unit text embeddings, one per text.
    pub fn encode_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ClipError> {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| {
                self.tokenizer
                    .tokenize(t, self.model.architecture().context_length)
            })
            .collect();
        unit_rows(&self.model.text_features(&ids)?)
    }

    /// The text direction of every prompt pair (computed once, at start-up).
    pub fn directions(&self, prompts: &Prompts) -> Result<Vec<Direction>, ClipError> {
        prompts.directions(|texts| self.encode_texts(texts))
    }
}

/// CLIP as `[clip]` configures it, with the directions of its prompts computed: what start-up
/// runs. `None` when CLIP is disabled (empty `weights`). The prompts, the vocabulary, the model
/// config and the weights are each read and checked here, so a bad file stops start-up with its
/// name and the problem.
pub fn from_config(
    cfg: &crate::config::ClipConfig,
) -> Result<Option<(Clip, Vec<Direction>)>, ClipError> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let prompts = Prompts::load(&cfg.prompts)?;
    let device = crate::embed::device(&cfg.device).map_err(|e| ClipError::Device {
        device: cfg.device.clone(),
        detail: match e {
            crate::embed::EmbedSetupError::Device { detail, .. } => detail,
            other => other.to_string(),
        },
    })?;
    let arch = if cfg.model_config.as_os_str().is_empty() {
        None
    } else {
        Some(ClipArchitecture::from_open_clip_json(&cfg.model_config)?)
    };
    let clip = Clip::load(&cfg.weights, &cfg.vocab, arch.as_ref(), &device)?;
    let directions = clip.directions(&prompts)?;
    Ok(Some((clip, directions)))
}
