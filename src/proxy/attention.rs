//! The trained attention of the neighbour-aware proxy (METHOD.md (c) 3): the projections W_q and
//! W_k in alpha = softmax_h((W_q q) . (W_k h) / T), learned with candle-nn; W_q = W_k = I is the
//! parameter-free default the proxy runs with when no weights are configured.
//!
//! Inference folds the two into one vector per face: r = W_k^T (W_q q), logits = h . r / T, so a
//! trained proxy costs one extra d x d product per face over the default.
//!
//! Its training lives apart, in `crate::train::attention`.

use std::path::Path;

use crate::weights::WeightsError;

const PART: &str = "attention weights";

/// W_q and W_k, each `[dim, dim]` row-major (y = W x).
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    pub dim: usize,
    pub w_q: Vec<f32>,
    pub w_k: Vec<f32>,
}

impl Attention {
    pub fn identity(dim: usize) -> Self {
        let mut eye = vec![0f32; dim * dim];
        for i in 0..dim {
            eye[i * dim + i] = 1.0;
        }
        Self {
            dim,
            w_q: eye.clone(),
            w_k: eye,
        }
    }

    /// r = W_k^T (W_q q): the vector whose dot product with a candidate is its attention logit
    /// (before the temperature).
    pub fn query(&self, q: &[f32]) -> Vec<f32> {
        let d = self.dim;
        let wq: Vec<f32> = (0..d)
            .map(|i| crate::index::dot(&self.w_q[i * d..(i + 1) * d], q))
            .collect();
        let mut r = vec![0f32; d];
        for (i, wqi) in wq.iter().enumerate() {
            for (rj, kij) in r.iter_mut().zip(&self.w_k[i * d..(i + 1) * d]) {
                *rj += kij * wqi;
            }
        }
        r
    }

    /// Writes `attention.w_q` and `attention.w_k` as safetensors.
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        let d = self.dim;
        crate::weights::write(
            path,
            &[
                ("attention.w_q", &self.w_q, &[d, d]),
                ("attention.w_k", &self.w_k, &[d, d]),
            ],
        )
        .map_err(|detail| WeightsError::Write {
            part: PART,
            path: path.display().to_string(),
            detail,
        })
    }

    /// Reads what `save` wrote; both matrices must be `[dim, dim]`.
    pub fn load(path: &Path, dim: usize) -> Result<Self, WeightsError> {
        let p = path.display().to_string();
        let m = crate::weights::read(path).map_err(|detail| WeightsError::Read {
            part: PART,
            path: p.clone(),
            detail,
        })?;
        let get = |name: &str| {
            crate::weights::values(&m, name, &[dim, dim]).map_err(|detail| WeightsError::Shape {
                part: PART,
                path: p.clone(),
                detail: format!("{detail} (model.dim = {dim})"),
            })
        };
        Ok(Self {
            dim,
            w_q: get("attention.w_q")?,
            w_k: get("attention.w_k")?,
        })
    }
}
