//! The two towers in candle (`VisionTransformer`, `TextTransformer`, `ResidualAttentionBlock` of
//! open_clip's `transformer.py`), loaded from tensors checked against the architecture, and seeded
//! random weights for benchmarks.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear};
use image::RgbImage;

use super::architecture::{Activation, ClipArchitecture, TowerShape, IGNORED};
use super::image::preprocess;
use super::ClipError;

const LN_EPS: f64 = 1e-5;

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

    /// Preprocessed pixels of a batch of RGB images of any size (see `image::preprocess`).
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
