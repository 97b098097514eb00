//! The safetensors files of the trained parts (edge head, proxy directions and attention, CLIP
//! mapper): reading a file and checking each tensor's shape and values, writing one, and the one
//! error type all of them report (`WeightsError`, naming the part and the file).
//!
//! The low-level functions return plain details; the parts wrap them in `WeightsError`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

/// A trained part's file that cannot be read, does not fit, or cannot be written. `part` names it
/// as the user knows it ("edge head", "proxy weights", "attention weights", "mapper").
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read {part} {path}: {detail}")]
    Read {
        part: &'static str,
        path: String,
        detail: String,
    },
    #[error("{part} {path}: {detail}")]
    Shape {
        part: &'static str,
        path: String,
        detail: String,
    },
    #[error("cannot write {part} {path}: {detail}")]
    Write {
        part: &'static str,
        path: String,
        detail: String,
    },
}

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
