//! The safetensors files of the trained parts (`attention`, `edge`, `hallucinate`) and what their
//! training shares: reading a file and checking each tensor's shape and values, writing one, the
//! seeded split of identities into fitted and held-out parts, unit rows.
//!
//! Errors are plain details; each part wraps them in its own error type with the file's name.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;

use crate::eval::features::Features;

/// All tensors of a safetensors file, on the CPU. Err: why the file cannot be read.
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>, String> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| e.to_string())
}

/// The shape of tensor `name`. Err: it is missing.
pub fn dims(m: &HashMap<String, Tensor>, name: &str) -> Result<Vec<usize>, String> {
    m.get(name)
        .map(|t| t.dims().to_vec())
        .ok_or_else(|| format!("no tensor '{name}'"))
}

/// Tensor `name`'s values, row-major, when it has exactly `shape` and only finite values.
pub fn values(
    m: &HashMap<String, Tensor>,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, String> {
    let t = m.get(name).ok_or_else(|| format!("no tensor '{name}'"))?;
    if t.dims() != shape {
        return Err(format!("'{name}' has shape {:?}, want {shape:?}", t.dims()));
    }
    let v = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| format!("'{name}': {e}"))?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(format!("'{name}' has non-finite values"));
    }
    Ok(v)
}

/// Writes `(name, row-major values, shape)` tensors as one safetensors file.
pub fn write(path: &Path, tensors: &[(&str, &[f32], &[usize])]) -> Result<(), String> {
    let mut m = HashMap::new();
    for (name, data, shape) in tensors {
        let t = Tensor::from_vec(data.to_vec(), shape.to_vec(), &Device::Cpu)
            .map_err(|e| e.to_string())?;
        m.insert(name.to_string(), t);
    }
    candle_core::safetensors::save(&m, path).map_err(|e| e.to_string())
}

/// The identities held out from a fit: `fraction` of the distinct labels, drawn from `rng`.
pub fn held_out_identities(
    labels: &[i64],
    fraction: f64,
    rng: &mut impl rand::Rng,
) -> HashSet<i64> {
    let mut ids: Vec<i64> = labels.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids.shuffle(rng);
    let n = ((ids.len() as f64) * fraction).round() as usize;
    ids[..n.min(ids.len())].iter().copied().collect()
}

/// `features` with every row scaled to unit length (zero rows stay zero).
pub fn unit_rows(features: &Features) -> Features {
    let mut out = features.clone();
    for r in out.data.chunks_mut(features.dim) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|v| *v /= n);
        }
    }
    out
}

/// A trained variable's values, row-major.
pub fn var_values(v: &Var) -> candle_core::Result<Vec<f32>> {
    v.as_tensor().flatten_all()?.to_vec1::<f32>()
}
