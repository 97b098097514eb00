//! The edge scorer of the graph (METHOD.md (c) 4): cosine similarity of the two proxies, or a
//! trained edge head in the manner of STAR-FC's pair classifier.
//!
//! The head is a two-layer perceptron on a symmetric description of the pair,
//! x = [a * b, |a - b|, cos(a, b)] (element-wise; 2d + 1 values), with one hidden ReLU layer and a
//! logit out; the score is sigmoid(logit) = P(same identity), compared with `engine.t1` like the
//! cosine. It learns which dimensions of the identity space separate people and which vary within
//! one person, which a single cosine threshold cannot.
//!
//! Its training lives apart, in `crate::train::edge`.
//!
//! Inference is plain Rust over the weights (a few microseconds per pair): the engine scores a
//! handful of candidate edges per insert, where a tensor round trip would cost more than the
//! arithmetic.

use std::path::Path;

use crate::engine::EdgeScorer;
use crate::weights::WeightsError;

const PART: &str = "edge head";

/// The trained pair classifier. Weights row-major as candle's `Linear` keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeHead {
    pub dim: usize,
    pub hidden: usize,
    /// `[hidden, 2 * dim + 1]`.
    pub w1: Vec<f32>,
    /// `[hidden]`.
    pub b1: Vec<f32>,
    /// `[hidden]` (the single output row).
    pub w2: Vec<f32>,
    pub b2: f32,
    /// `w1`'s product and difference columns transposed, `[dim, hidden]` each: the forward pass
    /// runs all hidden units at once per input dimension (SIMD across units), each unit's sum
    /// still in input order, so the result is bit-identical to the row-by-row formula.
    by_input: (Vec<f32>, Vec<f32>),
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The pair description the head reads: [a * b, |a - b|, cos].
pub fn pair_input(a: &[f32], b: &[f32], cosine: f32, out: &mut Vec<f32>) {
    out.clear();
    out.extend(a.iter().zip(b).map(|(x, y)| x * y));
    out.extend(a.iter().zip(b).map(|(x, y)| (x - y).abs()));
    out.push(cosine);
}

impl EdgeHead {
    /// A head from its weights (shapes as the fields say).
    pub fn new(
        dim: usize,
        hidden: usize,
        w1: Vec<f32>,
        b1: Vec<f32>,
        w2: Vec<f32>,
        b2: f32,
    ) -> Self {
        let w = Self::input_width(dim);
        let mut prod = vec![0f32; dim * hidden];
        let mut diff = vec![0f32; dim * hidden];
        for h in 0..hidden {
            for i in 0..dim {
                prod[i * hidden + h] = w1[h * w + i];
                diff[i * hidden + h] = w1[h * w + dim + i];
            }
        }
        EdgeHead {
            dim,
            hidden,
            w1,
            b1,
            w2,
            b2,
            by_input: (prod, diff),
        }
    }

    pub fn input_width(dim: usize) -> usize {
        2 * dim + 1
    }

    /// The logit of P(same identity) for unit vectors `a`, `b` with cosine `cosine`.
    pub fn logit(&self, a: &[f32], b: &[f32], cosine: f32) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            match self.hidden {
                16 => return unsafe { self.logit_avx2::<16>(a, b, cosine) },
                32 => return unsafe { self.logit_avx2::<32>(a, b, cosine) },
                64 => return unsafe { self.logit_avx2::<64>(a, b, cosine) },
                _ => {}
            }
        }
        match self.hidden {
            16 => self.logit_across::<16>(a, b, cosine),
            32 => self.logit_across::<32>(a, b, cosine),
            64 => self.logit_across::<64>(a, b, cosine),
            _ => self.logit_by_unit(a, b, cosine),
        }
    }

    /// `logit_across` compiled for AVX2: eight units per instruction instead of four. The
    /// operations and their order are the same (no fused multiply-add), so the result is too.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn logit_avx2<const H: usize>(&self, a: &[f32], b: &[f32], cosine: f32) -> f32 {
        self.logit_across::<H>(a, b, cosine)
    }

    /// The forward pass with all `H` (= `hidden`) units at once per input dimension.
    #[inline(always)]
    fn logit_across<const H: usize>(&self, a: &[f32], b: &[f32], cosine: f32) -> f32 {
        let dim = self.dim;
        let w = Self::input_width(dim);
        let mut z = [0f32; H];
        for (h, zh) in z.iter_mut().enumerate() {
            *zh = self.b1[h] + self.w1[h * w + 2 * dim] * cosine;
        }
        let (prod, diff) = &self.by_input;
        let rows = prod.chunks_exact(H).zip(diff.chunks_exact(H));
        for ((&ai, &bi), (p, q)) in a.iter().zip(b).zip(rows).take(dim) {
            let d = (ai - bi).abs();
            for h in 0..H {
                // The same operations, in the same order, as `logit_by_unit` for this unit.
                z[h] += p[h] * ai * bi + q[h] * d;
            }
        }
        let mut out = self.b2;
        for (h, zh) in z.iter().enumerate() {
            if *zh > 0.0 {
                out += self.w2[h] * zh;
            }
        }
        out
    }

    /// The forward pass one hidden unit at a time: the reference `logit` equals bit for bit, and
    /// the path for a hidden width without its own.
    fn logit_by_unit(&self, a: &[f32], b: &[f32], cosine: f32) -> f32 {
        let w = Self::input_width(self.dim);
        let mut out = self.b2;
        for h in 0..self.hidden {
            let row = &self.w1[h * w..(h + 1) * w];
            let (prod, rest) = row.split_at(self.dim);
            let (diff, last) = rest.split_at(self.dim);
            let mut z = self.b1[h] + last[0] * cosine;
            for i in 0..self.dim {
                z += prod[i] * a[i] * b[i] + diff[i] * (a[i] - b[i]).abs();
            }
            if z > 0.0 {
                out += self.w2[h] * z;
            }
        }
        out
    }

    pub fn probability(&self, a: &[f32], b: &[f32], cosine: f32) -> f32 {
        sigmoid(self.logit(a, b, cosine))
    }

    /// Writes `edge.w1`, `edge.b1`, `edge.w2`, `edge.b2` as safetensors.
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        let w = Self::input_width(self.dim);
        crate::weights::write(
            path,
            &[
                ("edge.w1", &self.w1, &[self.hidden, w]),
                ("edge.b1", &self.b1, &[self.hidden]),
                ("edge.w2", &self.w2, &[1, self.hidden]),
                ("edge.b2", &[self.b2], &[1]),
            ],
        )
        .map_err(|detail| WeightsError::Write {
            part: PART,
            path: path.display().to_string(),
            detail,
        })
    }

    /// Reads what `save` wrote; the head must take vectors of dimension `dim`.
    pub fn load(path: &Path, dim: usize) -> Result<Self, WeightsError> {
        let p = path.display().to_string();
        let m = crate::weights::read(path).map_err(|detail| WeightsError::Read {
            part: PART,
            path: p.clone(),
            detail,
        })?;
        let shape = |detail: String| WeightsError::Shape {
            part: PART,
            path: p.clone(),
            detail: format!("{detail} (a head for model.dim = {dim})"),
        };
        let w = Self::input_width(dim);
        let hidden = crate::weights::dims(&m, "edge.w1")
            .map_err(shape)?
            .first()
            .copied()
            .unwrap_or(0);
        let get =
            |name: &str, dims: &[usize]| crate::weights::values(&m, name, dims).map_err(shape);
        Ok(EdgeHead::new(
            dim,
            hidden,
            get("edge.w1", &[hidden, w])?,
            get("edge.b1", &[hidden])?,
            get("edge.w2", &[1, hidden])?,
            get("edge.b2", &[1])?[0],
        ))
    }
}

/// The edge scorer a state runs with (chosen by `[edge]`).
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeModel {
    Cosine,
    Learned(EdgeHead),
}

impl EdgeScorer for EdgeModel {
    fn score(&self, cosine: f32, a: &[f32], b: &[f32]) -> f32 {
        match self {
            EdgeModel::Cosine => cosine,
            EdgeModel::Learned(h) => h.probability(a, b, cosine),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_forward_across_units_equals_the_unit_by_unit_formula_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (dim, hidden) in [(128, 16), (128, 32), (7, 64), (5, 3), (3, 70)] {
            let w = EdgeHead::input_width(dim);
            let mut r =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect() };
            let head = EdgeHead::new(dim, hidden, r(hidden * w), r(hidden), r(hidden), 0.1);
            for _ in 0..50 {
                let (a, b) = (r(dim), r(dim));
                let cos = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>();
                let reference = head.logit_by_unit(&a, &b, cos).to_bits();
                assert_eq!(head.logit(&a, &b, cos).to_bits(), reference);
                if hidden == 16 {
                    // The path without AVX2 as well, whatever this CPU has.
                    assert_eq!(head.logit_across::<16>(&a, &b, cos).to_bits(), reference);
                }
            }
        }
    }

    #[test]
    fn the_cosine_scorer_is_the_cosine() {
        assert_eq!(EdgeModel::Cosine.score(0.42, &[1.0], &[0.0]), 0.42);
    }
}
