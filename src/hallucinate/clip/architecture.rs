//! What a CLIP checkpoint is: the shapes of its two towers, its heads and activation, read from an
//! open_clip model config or inferred from the tensors, and the list of tensors (OpenAI/OpenCLIP
//! names and shapes) that loading requires.

use std::collections::HashMap;
use std::path::Path;

use super::tokenizer::CONTEXT;
use super::ClipError;

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
/// Tensors a checkpoint may carry that inference does not read (open_clip's logit scale, and
/// OpenAI's original state dict's buffers and scalars).
pub(crate) const IGNORED: [&str; 5] = [
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
    /// Accepted and not needed: the text tower's prefix (`text.` or none) is read from the names.
    #[serde(default, rename = "custom_text")]
    _custom_text: bool,
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
    super::tokenizer::VOCAB_SIZE
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
            vocab_size: super::tokenizer::VOCAB_SIZE,
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

    pub(crate) fn check(&self) -> Result<(), String> {
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
    pub(crate) fn expected_tensors(&self, text: &str) -> Vec<(String, Vec<usize>)> {
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
    pub(crate) fn infer(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ClipArchitecture, ClipError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        std::fs::write(&p, json).unwrap();
        ClipArchitecture::from_open_clip_json(&p)
    }

    /// open_clip's own `model_configs/ViT-B-32-quickgelu.json` (open-clip-torch 3.3.0).
    const VIT_B_32_QUICKGELU: &str = r#"{
    "embed_dim": 512,
    "quick_gelu": true,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
}"#;

    #[test]
    fn open_clip_configs_read_as_their_architecture() {
        assert_eq!(
            parse(VIT_B_32_QUICKGELU).unwrap(),
            ClipArchitecture::vit_b_32()
        );
        // Without "quick_gelu" open_clip builds GELU (ViT-B-32.json, the LAION trainings).
        let gelu = parse(&VIT_B_32_QUICKGELU.replace("\"quick_gelu\": true,", "")).unwrap();
        assert_eq!(gelu.activation, Activation::Gelu);
        // ViT-H-14: 80-wide heads; ViT-bigG-14: int(1664 * 4.9231) = 8192 MLP width.
        let h = parse(r#"{"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14}, "text_cfg": {"width": 1024, "heads": 16, "layers": 24}}"#).unwrap();
        assert_eq!(
            (h.vision.heads, h.vision.mlp_width, h.text.mlp_width),
            (16, 5120, 4096)
        );
        let g = parse(r#"{"embed_dim": 1280, "vision_cfg": {"image_size": 224, "layers": 48, "width": 1664, "head_width": 104, "mlp_ratio": 4.9231, "patch_size": 14}, "text_cfg": {"width": 1280, "heads": 20, "layers": 32}}"#).unwrap();
        assert_eq!((g.vision.heads, g.vision.mlp_width), (16, 8192));
    }

    #[test]
    fn unsupported_variants_are_named() {
        for (json, word) in [
            (
                r#"{"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": [3, 4, 6, 3], "width": 64, "patch_size": null}, "text_cfg": {"width": 512, "heads": 8, "layers": 12}}"#,
                "layers",
            ),
            (
                r#"{"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit", "image_size": 224}, "text_cfg": {"width": 512, "heads": 8, "layers": 12}}"#,
                "timm_model_name",
            ),
            (
                r#"{"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32}, "text_cfg": {"width": 512, "heads": 8, "layers": 12, "pool_type": "last"}}"#,
                "pool_type",
            ),
            (
                r#"{"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32}, "text_cfg": {"width": 512, "heads": 8, "layers": 12, "context_length": 64}}"#,
                "context_length 64",
            ),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(e.contains(word) && e.contains("m.json"), "{word}: {e}");
        }
    }
}
