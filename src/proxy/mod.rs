//! Attribute hallucination and the neighbour-aware proxy generator (METHOD.md (c) 2-3), with
//! directions learned from identity-labeled features (the direction source that needs no CLIP).
//!
//! Per face, with f its normalized identity vector:
//! - hallucinated variants: f_a± = norm(f ± s_a u_a) for each learned direction u_a (a leading
//!   eigenvector of the within-identity scatter: the ways one person's vectors vary, e.g. pose,
//!   age, expression, light) with strength s_a (the within-identity standard deviation along u_a
//!   times `proxy.strength`);
//! - context: q = similarity-weighted mean of the proxies of the face's `context_k` nearest
//!   indexed faces (weights = max(cosine, 0));
//! - attention: alpha = softmax_h((W_q q) . (W_k h) / T) over the candidates h in {f, f_a±}
//!   (plus q itself when `with_context`), W_q = W_k = I (the parameter-free default) or trained
//!   (`attention`);
//! - proxy: p = norm(sum_h alpha_h h). Cold start (fewer than `min_neighbors` neighbours): p = f.
//!
//! A variant that points toward the neighbourhood wins attention, so the proxy moves toward its
//! neighbours only along directions in which one identity varies: faces of one person split by
//! pose or age are pulled together, while the identity-discriminative directions are untouched.

pub mod attention;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::engine::{IdentityProxy, ProxyGenerator};
use crate::index::Neighbor;
use crate::weights::WeightsError;

const PART: &str = "proxy weights";

/// Learned attribute directions in identity space.
#[derive(Debug, Clone, PartialEq)]
pub struct Directions {
    pub dim: usize,
    /// Unit vectors, row-major, `count * dim`.
    pub vectors: Vec<f32>,
    /// Within-identity standard deviation along each direction.
    pub sigmas: Vec<f32>,
}

impl Directions {
    pub fn count(&self) -> usize {
        self.sigmas.len()
    }

    pub fn vector(&self, a: usize) -> &[f32] {
        &self.vectors[a * self.dim..(a + 1) * self.dim]
    }

    /// Writes `directions` [count, dim] and `sigmas` [count] as safetensors.
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        let err = |e: candle_core::Error| WeightsError::Write {
            part: PART,
            path: path.display().to_string(),
            detail: e.to_string(),
        };
        let mut m = HashMap::new();
        m.insert(
            "directions".to_string(),
            Tensor::from_vec(self.vectors.clone(), (self.count(), self.dim), &Device::Cpu)
                .map_err(err)?,
        );
        m.insert(
            "sigmas".to_string(),
            Tensor::from_vec(self.sigmas.clone(), self.count(), &Device::Cpu).map_err(err)?,
        );
        candle_core::safetensors::save(&m, path).map_err(err)
    }

    /// Reads what `save` wrote; the dimension must be `dim`.
    pub fn load(path: &Path, dim: usize) -> Result<Self, WeightsError> {
        let p = path.display().to_string();
        let m =
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| WeightsError::Read {
                part: PART,
                path: p.clone(),
                detail: e.to_string(),
            })?;
        let shape = |detail: String| WeightsError::Shape {
            part: PART,
            path: p.clone(),
            detail,
        };
        let dirs = m
            .get("directions")
            .ok_or_else(|| shape("no tensor 'directions'".into()))?;
        let sig = m
            .get("sigmas")
            .ok_or_else(|| shape("no tensor 'sigmas'".into()))?;
        let (count, d) = dirs.dims2().map_err(|_| {
            shape(format!(
                "'directions' has shape {:?}, want [count, {dim}]",
                dirs.dims()
            ))
        })?;
        if d != dim || sig.dims() != [count] {
            return Err(shape(format!(
                "'directions' {:?} and 'sigmas' {:?} do not fit model.dim = {dim}",
                dirs.dims(),
                sig.dims()
            )));
        }
        let read = |t: &Tensor| -> Result<Vec<f32>, WeightsError> {
            t.to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| shape(e.to_string()))
        };
        let out = Directions {
            dim,
            vectors: read(dirs)?,
            sigmas: read(sig)?,
        };
        if out
            .vectors
            .iter()
            .chain(&out.sigmas)
            .any(|v| !v.is_finite())
        {
            return Err(shape("non-finite values".into()));
        }
        Ok(out)
    }
}

/// Settings of the neighbour-aware proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighborProxy {
    /// Hallucination directions; None = no hallucination (candidates f and, with
    /// `with_context`, q).
    pub directions: Option<Directions>,
    /// Global factor on each direction's strength (s_a = strength * sigma_a).
    pub strength: f32,
    /// Attention temperature T (the 1/sqrt(d) of METHOD.md is folded into it).
    pub temperature: f32,
    /// Neighbours whose proxies form the context q.
    pub context_k: usize,
    /// Fewer indexed neighbours than this: cold start, p = f.
    pub min_neighbors: usize,
    /// Whether q itself is a candidate (neighbour smoothing).
    pub with_context: bool,
    /// Trained W_q, W_k (`attention`); None = W_q = W_k = I.
    pub attention: Option<crate::proxy::attention::Attention>,
}

fn norm(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

impl NeighborProxy {
    /// The candidates for `f` (normalized): f, then f_a+ and f_a- for each direction.
    pub fn candidates(&self, f: &[f32]) -> Vec<Vec<f32>> {
        let mut c = vec![f.to_vec()];
        if let Some(d) = &self.directions {
            for a in 0..d.count() {
                let s = self.strength * d.sigmas[a];
                for sign in [1.0f32, -1.0] {
                    let mut h: Vec<f32> = f
                        .iter()
                        .zip(d.vector(a))
                        .map(|(x, u)| x + sign * s * u)
                        .collect();
                    norm(&mut h);
                    c.push(h);
                }
            }
        }
        c
    }
}

impl ProxyGenerator for NeighborProxy {
    /// The upstream variants (`extra`, e.g. CLIP hallucinations f_a) join the candidates beside
    /// the learned-direction variants.
    fn proxy(
        &self,
        identity: &[f32],
        extra: &[f32],
        neighbors: &[Neighbor],
        proxy_of: &dyn Fn(u32) -> Vec<f32>,
    ) -> Option<Vec<f32>> {
        if neighbors.len() < self.min_neighbors.max(1) {
            return None;
        }
        let d = identity.len();
        let mut q = vec![0f32; d];
        let mut total = 0f32;
        for n in neighbors.iter().take(self.context_k) {
            let w = n.similarity.max(0.0);
            if w <= 0.0 {
                continue;
            }
            for (qi, pi) in q.iter_mut().zip(proxy_of(n.seq)) {
                *qi += w * pi;
            }
            total += w;
        }
        if total <= 0.0 {
            return None;
        }
        norm(&mut q);
        let mut cands = self.candidates(identity);
        for v in extra.chunks_exact(d) {
            let mut h = v.to_vec();
            norm(&mut h);
            cands.push(h);
        }
        if self.with_context {
            cands.push(q.clone());
        }
        if cands.len() == 1 {
            return None;
        }
        let r = match &self.attention {
            Some(a) => a.query(&q),
            None => q,
        };
        let logits: Vec<f32> = cands
            .iter()
            .map(|h| h.iter().zip(&r).map(|(a, b)| a * b).sum::<f32>() / self.temperature)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let z: f32 = w.iter().sum();
        let mut p = vec![0f32; d];
        for (h, wi) in cands.iter().zip(&w) {
            for (pi, hi) in p.iter_mut().zip(h) {
                *pi += wi / z * hi;
            }
        }
        norm(&mut p);
        Some(p)
    }
}

/// The proxy generator a state runs with (chosen by `[proxy]`).
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyModel {
    Identity,
    Neighbor(NeighborProxy),
}

impl ProxyGenerator for ProxyModel {
    fn needs_neighbors(&self) -> bool {
        !matches!(self, ProxyModel::Identity)
    }

    fn proxy(
        &self,
        identity: &[f32],
        extra: &[f32],
        neighbors: &[Neighbor],
        proxy_of: &dyn Fn(u32) -> Vec<f32>,
    ) -> Option<Vec<f32>> {
        match self {
            ProxyModel::Identity => IdentityProxy.proxy(identity, extra, neighbors, proxy_of),
            ProxyModel::Neighbor(p) => p.proxy(identity, extra, neighbors, proxy_of),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_moves_toward_the_neighbourhood_along_the_direction_only() {
        let directions = Directions {
            dim: 3,
            vectors: vec![0.0, 0.0, 1.0],
            sigmas: vec![0.5],
        };
        let gen = NeighborProxy {
            directions: Some(directions),
            strength: 1.0,
            temperature: 0.01,
            context_k: 10,
            min_neighbors: 1,
            with_context: false,
            attention: None,
        };
        let f = [1.0f32, 0.0, 0.0];
        // The neighbour sits off f along both axis 1 (identity) and axis 2 (the direction).
        let mut nb = vec![0.8f32, 0.3, 0.5];
        norm(&mut nb);
        let neighbors = [Neighbor {
            seq: 0,
            similarity: 0.8,
        }];
        let p = gen.proxy(&f, &[], &neighbors, &|_| nb.clone()).unwrap();
        assert!(p[2] > 0.3, "moved along the direction: {p:?}");
        assert!(p[1].abs() < 1e-6, "not along the identity axis: {p:?}");
        // Cold start: no neighbours, no proxy.
        assert!(gen.proxy(&f, &[], &[], &|_| nb.clone()).is_none());
    }
}
