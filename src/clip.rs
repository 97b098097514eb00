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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear};
use image::RgbImage;

use crate::clip_image::preprocess;
use crate::clip_tokenizer::{ClipTokenizer, TokenizerError, CONTEXT};
use crate::prompts::{Direction, Prompts, PromptsError};

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

/// The MLP's non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: OpenAI's CLIP and OpenCLIP's `-quickgelu` models.
    QuickGelu,
    /// Exact (erf) GELU, PyTorch's `nn.GELU()`: most OpenCLIP trainings.
    Gelu,
}

/// One transformer stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TowerShape {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    /// Hidden width of the MLP (4 x width in every released CLIP).
    pub mlp_width: usize,
}

/// Everything the tensors' shapes do not say on their own (heads, activation) plus what they do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipArchitecture {
    pub embed_dim: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub vision: TowerShape,
    pub context_length: usize,
    pub vocab_size: usize,
    pub text: TowerShape,
    pub activation: Activation,
}

/// OpenAI's head width: both towers of every OpenAI CLIP use 64-wide heads.
const HEAD_WIDTH: usize = 64;
const LN_EPS: f64 = 1e-5;
/// Tensors a checkpoint may carry that inference does not read (open_clip's logit scale, and
/// OpenAI's original state dict's buffers and scalars).
const IGNORED: [&str; 5] = [
    "logit_scale",
    "attn_mask",
    "input_resolution",
    "context_length",
    "vocab_size",
];

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenClipJson {
    embed_dim: usize,
    #[serde(default)]
    quick_gelu: bool,
    #[serde(default)]
    custom_text: bool,
    vision_cfg: OpenClipVision,
    text_cfg: OpenClipText,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenClipVision {
    image_size: usize,
    layers: usize,
    width: usize,
    patch_size: usize,
    #[serde(default = "default_head_width")]
    head_width: usize,
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: f64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenClipText {
    #[serde(default = "default_context")]
    context_length: usize,
    #[serde(default = "default_vocab")]
    vocab_size: usize,
    width: usize,
    heads: usize,
    layers: usize,
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: f64,
}

fn default_head_width() -> usize {
    HEAD_WIDTH
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_context() -> usize {
    CONTEXT
}
fn default_vocab() -> usize {
    crate::clip_tokenizer::VOCAB_SIZE
}

impl ClipArchitecture {
    /// OpenAI's ViT-B/32 (`open_clip/model_configs/ViT-B-32.json` with QuickGELU).
    pub fn vit_b_32() -> Self {
        Self {
            embed_dim: 512,
            image_size: 224,
            patch_size: 32,
            vision: TowerShape {
                width: 768,
                layers: 12,
                heads: 12,
                mlp_width: 3072,
            },
            context_length: CONTEXT,
            vocab_size: crate::clip_tokenizer::VOCAB_SIZE,
            text: TowerShape {
                width: 512,
                layers: 12,
                heads: 8,
                mlp_width: 2048,
            },
            activation: Activation::QuickGelu,
        }
    }

    /// Reads an open_clip model config (`open_clip/model_configs/*.json`). Keys that change the
    /// architecture beyond what is implemented here are refused by name.
    pub fn from_open_clip_json(path: &Path) -> Result<Self, ClipError> {
        let arch_err = |reason: String| ClipError::Architecture {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| arch_err(e.to_string()))?;
        let j: OpenClipJson = serde_json::from_str(&text).map_err(|e| {
            arch_err(format!(
                "not a supported open_clip model config: {e} (supported: embed_dim, quick_gelu, custom_text, vision_cfg.{{image_size, layers, width, patch_size, head_width, mlp_ratio}}, text_cfg.{{context_length, vocab_size, width, heads, layers, mlp_ratio}})"
            ))
        })?;
        let _ = j.custom_text; // the text prefix is read from the tensor names
        let v = &j.vision_cfg;
        let t = &j.text_cfg;
        if v.head_width == 0 || v.width % v.head_width != 0 {
            return Err(arch_err(format!(
                "vision width {} is not a multiple of head_width {}",
                v.width, v.head_width
            )));
        }
        let a = Self {
            embed_dim: j.embed_dim,
            image_size: v.image_size,
            patch_size: v.patch_size,
            vision: TowerShape {
                width: v.width,
                layers: v.layers,
                heads: v.width / v.head_width,
                mlp_width: (v.width as f64 * v.mlp_ratio) as usize,
            },
            context_length: t.context_length,
            vocab_size: t.vocab_size,
            text: TowerShape {
                width: t.width,
                layers: t.layers,
                heads: t.heads,
                mlp_width: (t.width as f64 * t.mlp_ratio) as usize,
            },
            activation: if j.quick_gelu {
                Activation::QuickGelu
            } else {
                Activation::Gelu
            },
        };
        a.check().map_err(arch_err)?;
        Ok(a)
    }

    fn check(&self) -> Result<(), String> {
        if self.patch_size == 0 || self.image_size % self.patch_size != 0 {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        for (name, t) in [("vision", &self.vision), ("text", &self.text)] {
            if t.heads == 0 || t.width % t.heads != 0 {
                return Err(format!(
                    "{name} width {} is not divisible into {} heads",
                    t.width, t.heads
                ));
            }
        }
        if self.context_length != CONTEXT {
            return Err(format!(
                "context_length {} (the CLIP tokenizer produces {CONTEXT})",
                self.context_length
            ));
        }
        Ok(())
    }

    /// Every tensor inference reads, with its shape. `text` is the text tower's name prefix.
    fn expected_tensors(&self, text: &str) -> Vec<(String, Vec<usize>)> {
        let (vw, tw, e) = (self.vision.width, self.text.width, self.embed_dim);
        let grid = self.image_size / self.patch_size;
        let mut out = vec![
            (
                "visual.conv1.weight".to_string(),
                vec![vw, 3, self.patch_size, self.patch_size],
            ),
            ("visual.class_embedding".into(), vec![vw]),
            (
                "visual.positional_embedding".into(),
                vec![grid * grid + 1, vw],
            ),
            ("visual.ln_pre.weight".into(), vec![vw]),
            ("visual.ln_pre.bias".into(), vec![vw]),
            ("visual.ln_post.weight".into(), vec![vw]),
            ("visual.ln_post.bias".into(), vec![vw]),
            ("visual.proj".into(), vec![vw, e]),
            (
                format!("{text}token_embedding.weight"),
                vec![self.vocab_size, tw],
            ),
            (
                format!("{text}positional_embedding"),
                vec![self.context_length, tw],
            ),
            (format!("{text}ln_final.weight"), vec![tw]),
            (format!("{text}ln_final.bias"), vec![tw]),
            (format!("{text}text_projection"), vec![tw, e]),
        ];
        let mut blocks = |prefix: String, t: &TowerShape| {
            for i in 0..t.layers {
                let (w, m) = (t.width, t.mlp_width);
                let p = format!("{prefix}transformer.resblocks.{i}.");
                for (n, s) in [
                    ("ln_1.weight", vec![w]),
                    ("ln_1.bias", vec![w]),
                    ("attn.in_proj_weight", vec![3 * w, w]),
                    ("attn.in_proj_bias", vec![3 * w]),
                    ("attn.out_proj.weight", vec![w, w]),
                    ("attn.out_proj.bias", vec![w]),
                    ("ln_2.weight", vec![w]),
                    ("ln_2.bias", vec![w]),
                    ("mlp.c_fc.weight", vec![m, w]),
                    ("mlp.c_fc.bias", vec![m]),
                    ("mlp.c_proj.weight", vec![w, m]),
                    ("mlp.c_proj.bias", vec![w]),
                ] {
                    out.push((format!("{p}{n}"), s));
                }
            }
        };
        blocks("visual.".into(), &self.vision);
        blocks(text.into(), &self.text);
        out
    }

    /// The architecture from the tensors' shapes, with OpenAI's conventions for what shapes do not
    /// say: 64-wide heads and QuickGELU.
    fn infer(
        shapes: &HashMap<String, Vec<usize>>,
        text: &str,
        path: &Path,
    ) -> Result<Self, ClipError> {
        let get = |name: &str, rank: usize| -> Result<&Vec<usize>, ClipError> {
            let s = shapes.get(name).ok_or_else(|| ClipError::MissingTensor {
                path: path.to_path_buf(),
                name: name.to_string(),
                expected: format!("rank {rank}"),
            })?;
            if s.len() != rank {
                return Err(ClipError::Architecture {
                    path: path.to_path_buf(),
                    reason: format!("tensor `{name}` has shape {s:?}, expected rank {rank}"),
                });
            }
            Ok(s)
        };
        let conv = get("visual.conv1.weight", 4)?;
        let (vw, patch) = (conv[0], conv[2]);
        let n_pos = get("visual.positional_embedding", 2)?[0];
        let grid = ((n_pos.saturating_sub(1)) as f64).sqrt().round() as usize;
        if grid * grid + 1 != n_pos {
            return Err(ClipError::Architecture {
                path: path.to_path_buf(),
                reason: format!(
                    "visual.positional_embedding has {n_pos} rows, not a square grid plus the class token"
                ),
            });
        }
        let tok = get(&format!("{text}token_embedding.weight"), 2)?;
        let (vocab, tw) = (tok[0], tok[1]);
        let ctx = get(&format!("{text}positional_embedding"), 2)?[0];
        let embed = get("visual.proj", 2)?[1];
        let count = |prefix: &str| {
            (0..)
                .take_while(|i| {
                    shapes.contains_key(&format!("{prefix}transformer.resblocks.{i}.ln_1.weight"))
                })
                .count()
        };
        let mlp = |prefix: &str, w: usize| {
            shapes
                .get(&format!("{prefix}transformer.resblocks.0.mlp.c_fc.weight"))
                .map_or(4 * w, |s| s[0])
        };
        let heads = |name: &str, w: usize| {
            if w % HEAD_WIDTH == 0 {
                Ok(w / HEAD_WIDTH)
            } else {
                Err(ClipError::Architecture {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{name} width {w} is not a multiple of 64, so the number of heads cannot be inferred: give the open_clip model config ([clip] model_config)"
                    ),
                })
            }
        };
        let a = Self {
            embed_dim: embed,
            image_size: grid * patch,
            patch_size: patch,
            vision: TowerShape {
                width: vw,
                layers: count("visual."),
                heads: heads("vision", vw)?,
                mlp_width: mlp("visual.", vw),
            },
            context_length: ctx,
            vocab_size: vocab,
            text: TowerShape {
                width: tw,
                layers: count(text),
                heads: heads("text", tw)?,
                mlp_width: mlp(text, tw),
            },
            activation: Activation::QuickGelu,
        };
        a.check().map_err(|reason| ClipError::Architecture {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(a)
    }
}

/// A pre-LN residual attention block (`ResidualAttentionBlock`).
struct Block {
    ln_1: LayerNorm,
    in_proj: Linear,
    out_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    heads: usize,
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        act: Activation,
    ) -> candle_core::Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self.in_proj.forward(&self.ln_1.forward(x)?)?;
        let split = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(2, i * d, d)?
                .reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = (split(0)? * (1.0 / (hd as f64).sqrt()))?;
        let (k, v) = (split(1)?, split(2)?);
        let mut att = q.matmul(&k.t()?)?;
        if let Some(m) = mask {
            att = att.broadcast_add(m)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        let x = (x + self.out_proj.forward(&y)?)?;
        let h = self.c_fc.forward(&self.ln_2.forward(&x)?)?;
        let h = match act {
            Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        x + self.c_proj.forward(&h)?
    }
}

/// The two towers. Immutable after loading; inference takes `&self`.
pub struct ClipModel {
    arch: ClipArchitecture,
    device: Device,
    conv1: Tensor,
    class_embedding: Tensor,
    vision_positions: Tensor,
    ln_pre: LayerNorm,
    vision_blocks: Vec<Block>,
    ln_post: LayerNorm,
    /// [vision width, embed_dim]: used as `x @ proj`, as stored.
    visual_proj: Tensor,
    token_embedding: Tensor,
    text_positions: Tensor,
    text_blocks: Vec<Block>,
    ln_final: LayerNorm,
    text_projection: Tensor,
    /// [context, context], -inf above the diagonal.
    causal_mask: Tensor,
}

impl std::fmt::Debug for ClipModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipModel")
            .field("arch", &self.arch)
            .finish()
    }
}

impl ClipModel {
    /// Loads a safetensors file. `arch` (from the open_clip model config) is required when the
    /// tensors alone do not determine the model (heads of a width not a multiple of 64, GELU
    /// instead of OpenAI's QuickGELU); without it the architecture is inferred.
    pub fn load(
        weights: &Path,
        arch: Option<&ClipArchitecture>,
        device: &Device,
    ) -> Result<Self, ClipError> {
        let tensors = candle_core::safetensors::load(weights, &Device::Cpu).map_err(|e| {
            ClipError::Weights {
                path: weights.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        Self::from_tensors(tensors, arch, weights, device)
    }

    /// As `load`, from tensors already in memory (`source` names them in errors).
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        arch: Option<&ClipArchitecture>,
        source: &Path,
        device: &Device,
    ) -> Result<Self, ClipError> {
        let path = source.to_path_buf();
        if tensors
            .keys()
            .any(|k| k.starts_with("vision_model.") || k.starts_with("text_model."))
        {
            return Err(ClipError::Naming {
                path,
                reason: "Hugging Face transformers naming (vision_model.*, text_model.*); give the OpenAI/OpenCLIP checkpoint (visual.*, token_embedding.weight, ...)".into(),
            });
        }
        let text = if tensors.contains_key("text.token_embedding.weight") {
            "text."
        } else {
            ""
        };
        let shapes: HashMap<String, Vec<usize>> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        let arch = match arch {
            Some(a) => {
                a.check().map_err(|reason| ClipError::Architecture {
                    path: path.clone(),
                    reason,
                })?;
                a.clone()
            }
            None => ClipArchitecture::infer(&shapes, text, &path)?,
        };
        let expected = arch.expected_tensors(text);
        for (name, shape) in &expected {
            match shapes.get(name) {
                None => {
                    return Err(ClipError::MissingTensor {
                        path,
                        name: name.clone(),
                        expected: format!("{shape:?}"),
                    })
                }
                Some(found) if found != shape => {
                    return Err(ClipError::WrongShape {
                        path,
                        name: name.clone(),
                        expected: shape.clone(),
                        found: found.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        for name in names {
            let known = expected.iter().any(|(n, _)| n == name)
                || IGNORED
                    .iter()
                    .any(|i| name == i || name.strip_prefix(text) == Some(i));
            if !known {
                return Err(ClipError::UnexpectedTensor {
                    path,
                    name: name.clone(),
                });
            }
        }
        let get = |name: &str| -> Result<Tensor, ClipError> {
            Ok(tensors[name].to_dtype(DType::F32)?.to_device(device)?)
        };
        let ln = |p: &str| -> Result<LayerNorm, ClipError> {
            Ok(LayerNorm::new(
                get(&format!("{p}.weight"))?,
                get(&format!("{p}.bias"))?,
                LN_EPS,
            ))
        };
        let linear = |w: &str, b: &str| -> Result<Linear, ClipError> {
            Ok(Linear::new(get(w)?, Some(get(b)?)))
        };
        let blocks = |prefix: &str, t: &TowerShape| -> Result<Vec<Block>, ClipError> {
            (0..t.layers)
                .map(|i| {
                    let p = format!("{prefix}transformer.resblocks.{i}.");
                    Ok(Block {
                        ln_1: ln(&format!("{p}ln_1"))?,
                        in_proj: linear(
                            &format!("{p}attn.in_proj_weight"),
                            &format!("{p}attn.in_proj_bias"),
                        )?,
                        out_proj: linear(
                            &format!("{p}attn.out_proj.weight"),
                            &format!("{p}attn.out_proj.bias"),
                        )?,
                        ln_2: ln(&format!("{p}ln_2"))?,
                        c_fc: linear(&format!("{p}mlp.c_fc.weight"), &format!("{p}mlp.c_fc.bias"))?,
                        c_proj: linear(
                            &format!("{p}mlp.c_proj.weight"),
                            &format!("{p}mlp.c_proj.bias"),
                        )?,
                        heads: t.heads,
                    })
                })
                .collect()
        };
        let ctx = arch.context_length;
        let mask: Vec<f32> = (0..ctx * ctx)
            .map(|i| {
                if i % ctx > i / ctx {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Self {
            conv1: get("visual.conv1.weight")?,
            class_embedding: get("visual.class_embedding")?,
            vision_positions: get("visual.positional_embedding")?,
            ln_pre: ln("visual.ln_pre")?,
            vision_blocks: blocks("visual.", &arch.vision)?,
            ln_post: ln("visual.ln_post")?,
            visual_proj: get("visual.proj")?,
            token_embedding: get(&format!("{text}token_embedding.weight"))?,
            text_positions: get(&format!("{text}positional_embedding"))?,
            text_blocks: blocks(text, &arch.text)?,
            ln_final: ln(&format!("{text}ln_final"))?,
            text_projection: get(&format!("{text}text_projection"))?,
            causal_mask: Tensor::from_vec(mask, (ctx, ctx), device)?,
            device: device.clone(),
            arch,
        })
    }

    pub fn architecture(&self) -> &ClipArchitecture {
        &self.arch
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Raw (unnormalized) image features, `[batch, embed_dim]`, of preprocessed pixels
    /// `[batch, 3, image_size, image_size]` (see [`ClipModel::pixels`]).
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor, ClipError> {
        let (b, c, h, w) = pixels.dims4()?;
        let s = self.arch.image_size;
        if c != 3 || h != s || w != s {
            return Err(ClipError::Input(format!(
                "pixels of shape {:?}, expected [batch, 3, {s}, {s}]",
                pixels.dims()
            )));
        }
        let width = self.arch.vision.width;
        let x = pixels.conv2d(&self.conv1, 0, self.arch.patch_size, 1, 1)?; // [b, width, g, g]
        let x = x.flatten_from(2)?.transpose(1, 2)?; // [b, g*g, width]
        let cls = self
            .class_embedding
            .reshape((1, 1, width))?
            .broadcast_as((b, 1, width))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.vision_positions)?;
        let mut x = self.ln_pre.forward(&x)?;
        for blk in &self.vision_blocks {
            x = blk.forward(&x, None, self.arch.activation)?;
        }
        let x = self.ln_post.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        Ok(x.matmul(&self.visual_proj)?)
    }

    /// Raw text features, `[batch, embed_dim]`, of token rows of `context_length` ids.
    pub fn text_features(&self, ids: &[Vec<u32>]) -> Result<Tensor, ClipError> {
        let ctx = self.arch.context_length;
        if ids.is_empty() {
            return Err(ClipError::Input("no texts".into()));
        }
        let mut flat = Vec::with_capacity(ids.len() * ctx);
        let mut eot_rows = Vec::with_capacity(ids.len());
        for (i, row) in ids.iter().enumerate() {
            if row.len() != ctx {
                return Err(ClipError::Input(format!(
                    "token row of length {}, expected {ctx}",
                    row.len()
                )));
            }
            if let Some(&bad) = row.iter().find(|&&t| t as usize >= self.arch.vocab_size) {
                return Err(ClipError::Input(format!(
                    "token id {bad} outside the vocabulary of {}",
                    self.arch.vocab_size
                )));
            }
            // torch.argmax: the first position of the largest id (the end-of-text token).
            let max = row.iter().copied().max().unwrap_or(0);
            let pos = row.iter().position(|&t| t == max).unwrap_or(0);
            eot_rows.push((i * ctx + pos) as u32);
            flat.extend_from_slice(row);
        }
        let b = ids.len();
        let width = self.arch.text.width;
        let idx = Tensor::from_vec(flat, b * ctx, &self.device)?;
        let x = self
            .token_embedding
            .index_select(&idx, 0)?
            .reshape((b, ctx, width))?
            .broadcast_add(&self.text_positions)?;
        let mut x = x;
        for blk in &self.text_blocks {
            x = blk.forward(&x, Some(&self.causal_mask), self.arch.activation)?;
        }
        let x = self.ln_final.forward(&x)?.reshape((b * ctx, width))?;
        let rows = Tensor::from_vec(eot_rows, b, &self.device)?;
        Ok(x.index_select(&rows, 0)?.matmul(&self.text_projection)?)
    }

    /// Preprocessed pixels of a batch of RGB images of any size (see `clip_image::preprocess`).
    pub fn pixels(&self, images: &[RgbImage]) -> Result<Tensor, ClipError> {
        if images.is_empty() {
            return Err(ClipError::Input("no images".into()));
        }
        let s = self.arch.image_size;
        let mut data = Vec::with_capacity(images.len() * 3 * s * s);
        for img in images {
            if img.width() == 0 || img.height() == 0 {
                return Err(ClipError::Input("an empty image".into()));
            }
            data.extend(preprocess(img, s));
        }
        Ok(Tensor::from_vec(
            data,
            (images.len(), 3, s, s),
            &self.device,
        )?)
    }
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
        if tokenizer.n_tokens() != model.arch.vocab_size {
            return Err(ClipError::Input(format!(
                "the vocabulary has {} tokens, the text tower's token_embedding {} rows",
                tokenizer.n_tokens(),
                model.arch.vocab_size
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
            .map(|t| self.tokenizer.tokenize(t, self.model.arch.context_length))
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

/// Random weights of an architecture, in OpenAI naming (benchmarks and tests; no file needed).
/// Scaled like a trained network's (unit-variance activations), from a seeded generator.
pub fn random_tensors(
    arch: &ClipArchitecture,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>, ClipError> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // splitmix64, mapped to a uniform in [-sqrt(3), sqrt(3)) (unit variance)
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 1.732_050_8
    };
    let mut out = HashMap::new();
    for (name, shape) in arch.expected_tensors("") {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("ln_1.weight")
            || name.ends_with("ln_2.weight")
            || name.ends_with("ln_pre.weight")
            || name.ends_with("ln_post.weight")
            || name.ends_with("ln_final.weight")
        {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            let fan_in = match shape.len() {
                4 => shape[1] * shape[2] * shape[3],
                2 if name.ends_with("weight") => shape[1],
                2 if name.ends_with("proj") || name.ends_with("projection") => shape[0],
                _ => 1,
            };
            let scale = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| next() * scale).collect()
        };
        out.insert(name, Tensor::from_vec(data, shape, device)?);
    }
    Ok(out)
}
