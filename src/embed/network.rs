//! dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`, CC0) in candle,
//! read from dlib's own file. 150x150 RGB chip -> 128-D identity vector.
//!
//! Upstream reference: dlib `examples/dnn_face_recognition_ex.cpp` (the network type) and
//! `dlib/dnn/layers.h` (layer semantics). The independent numpy port `tools/dlib/reference.py`
//! (itself checked against dlib 20 to 3e-7) produced the golden fixtures in
//! `tests/fixtures/dlib/`.
//!
//! Architecture, in forward order:
//! - input: `(pixel - mean_c) / 256` per channel, RGB, means from the file (122.782, 117.001, 104.298);
//! - conv 7x7/2 (32, no padding) + affine + relu -> 32x72x72; max pool 3x3/2 (no padding) -> 35x35;
//! - 14 residual units: 3 at 32 filters, then a down-sampling unit + 3 at 64, down + 2 at 128,
//!   down + 2 at 256, and a final down unit at 256. A unit is conv3x3 + affine + relu + conv3x3 +
//!   affine, added to its input, then relu. Stride-1 convs pad 1; down-sampling convs are stride 2
//!   without padding and their shortcut is a 2x2/2 average pool. `add_prev` adds tensors of
//!   different shapes by zero-padding both to the larger one (channels and, top-left aligned,
//!   rows/columns: 4x4 shortcut + 3x3 residual at the 128 -> 256 step);
//! - global average pool, then a 256 -> 128 fully connected layer without bias.
//!
//! The per-channel affine (batch norm frozen into scale and shift) is folded into the preceding
//! convolution at load time: conv(x, W * g) + (b * g + beta). That is exact in real arithmetic and
//! moves results by float rounding only (the golden test holds them to 1e-4).

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::embed::dlib_format::{FormatError, Reader};

/// SHA-256 of the file this module was written and tested against.
pub const MODEL_SHA256: &str = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30";
/// Side of the input chip in pixels.
pub const CHIP: usize = 150;
/// Output dimension.
pub const DIM: usize = 128;

#[derive(Debug, Error)]
pub enum ResNetError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("model file {path} is not dlib's face-recognition ResNet: {source}")]
    Format { path: String, source: FormatError },
    #[error("model file {path} has an unexpected layout: {detail}")]
    Layout { path: String, detail: String },
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("chip {index} has {got} bytes, expected {CHIP}x{CHIP}x3 = {}", CHIP * CHIP * 3)]
    ChipSize { index: usize, got: usize },
}

/// One layer as stored in the file.
#[derive(Debug)]
enum Layer {
    Input {
        mean: [f32; 3],
        rows: usize,
        cols: usize,
    },
    Conv {
        filters: usize,
        shape: [usize; 4],
        stride: usize,
        padding: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
    },
    Affine {
        gamma: Vec<f32>,
        beta: Vec<f32>,
    },
    Relu,
    MaxPool {
        size: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool {
        size: usize,
        stride: usize,
        padding: usize,
    },
    AddPrev,
    Fc {
        inputs: usize,
        outputs: usize,
        weights: Vec<f32>,
    },
}

impl Layer {
    fn kind(&self) -> &'static str {
        match self {
            Layer::Input { .. } => "input",
            Layer::Conv { .. } => "con",
            Layer::Affine { .. } => "affine",
            Layer::Relu => "relu",
            Layer::MaxPool { .. } => "max_pool",
            Layer::AvgPool { .. } => "avg_pool",
            Layer::AddPrev => "add_prev",
            Layer::Fc { .. } => "fc",
        }
    }
}

fn read_layer(r: &mut Reader, name: &str) -> Result<Layer, FormatError> {
    Ok(match name {
        "input_rgb_image_sized" => {
            let mean = [r.float()? as f32, r.float()? as f32, r.float()? as f32];
            let rows = r.count("input rows", 1 << 16)?;
            let cols = r.count("input cols", 1 << 16)?;
            Layer::Input { mean, rows, cols }
        }
        "con_4" => {
            let c = r.con_4()?;
            Layer::Conv {
                filters: c.filters,
                shape: c.shape,
                stride: c.stride,
                padding: c.padding,
                weights: c.weights,
                bias: c.bias,
            }
        }
        "affine_" => {
            let (_, params) = r.tensor()?;
            let g = r.alias_tensor()?;
            let b = r.alias_tensor()?;
            let mode = r.int()?;
            let ng: usize = g.iter().product();
            if mode != 0 || params.len() != ng + b.iter().product::<usize>() || g != [1, ng, 1, 1] {
                return Err(FormatError::Layout(format!(
                    "affine: mode {mode}, gamma {g:?}, beta {b:?}"
                )));
            }
            Layer::Affine {
                gamma: params[..ng].to_vec(),
                beta: params[ng..].to_vec(),
            }
        }
        "relu_" => Layer::Relu,
        "max_pool_2" | "avg_pool_2" => {
            let size = r.square("pool window")?;
            let stride = r.square("pool stride")?;
            let padding = r.square("pool padding")?;
            if name == "max_pool_2" {
                Layer::MaxPool {
                    size,
                    stride,
                    padding,
                }
            } else {
                Layer::AvgPool {
                    size,
                    stride,
                    padding,
                }
            }
        }
        "add_prev_" => Layer::AddPrev,
        "fc_2" => {
            let outputs = r.count("fc outputs", 1 << 20)?;
            let inputs = r.count("fc inputs", 1 << 20)?;
            let (_, params) = r.tensor()?;
            let w = r.alias_tensor()?;
            let _b = r.alias_tensor()?;
            let bias_mode = r.int()?;
            for _ in 0..4 {
                r.float()?;
            }
            let nw: usize = w.iter().product();
            if bias_mode != 1 || nw != inputs * outputs || params.len() < nw {
                return Err(FormatError::Layout(format!(
                    "fc: bias mode {bias_mode}, weights {w:?}"
                )));
            }
            Layer::Fc {
                inputs,
                outputs,
                weights: params[..nw].to_vec(),
            }
        }
        other => return Err(FormatError::Layout(format!("unsupported layer '{other}'"))),
    })
}

fn parse(data: &[u8]) -> Result<Vec<Layer>, FormatError> {
    let mut r = Reader::new(data);
    let v = r.int()?;
    if v != 1 {
        return Err(FormatError::Version {
            what: "add_loss_layer",
            version: v,
            offset: 0,
        });
    }
    let loss = r.string(64)?;
    if loss != "loss_metric_2" {
        return Err(FormatError::Layout(format!(
            "loss layer '{loss}', expected loss_metric_2"
        )));
    }
    r.float()?; // margin
    r.float()?; // distance threshold
                // The subnet is serialized before each layer's details: a run of nested version ints, then the
                // layers in forward order.
    while matches!(r.peek_int()?, 1..=3) {
        r.int()?;
    }
    let mut layers = Vec::new();
    while !r.at_end() {
        let name = r.string(64)?;
        let layer = read_layer(&mut r, &name)?;
        let is_input = matches!(layer, Layer::Input { .. });
        layers.push(layer);
        if !is_input {
            r.layer_trailer(layers.len() == 2)?;
        }
        if layers.len() > 1000 {
            return Err(FormatError::Layout("more than 1000 layers".into()));
        }
    }
    Ok(layers)
}

/// Residual units in forward order: (filters, down-sampling).
const UNITS: [(usize, bool); 14] = [
    (32, false),
    (32, false),
    (32, false),
    (64, true),
    (64, false),
    (64, false),
    (64, false),
    (128, true),
    (128, false),
    (128, false),
    (256, true),
    (256, false),
    (256, false),
    (256, true),
];

/// A convolution with its affine folded in.
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
            .broadcast_add(&self.bias)
    }
}

struct Unit {
    conv1: Conv,
    conv2: Conv,
    down: bool,
}

/// The loaded network on one device.
pub struct DlibResNet {
    mean: [f32; 3],
    stem: Conv,
    units: Vec<Unit>,
    fc: Tensor,
    device: Device,
    /// Arithmetic dtype.
    dtype: DType,
    /// Emulated half precision (CPU): activations are rounded to this dtype after every layer.
    round_to: Option<DType>,
    sha256: String,
}

impl DlibResNet {
    /// Reads the model file and places the network on `device` in `dtype`: F32, or BF16/F16. On
    /// the CPU (whose matmul has no BF16) a half dtype is emulated: weights and every activation
    /// are rounded to it, arithmetic and accumulation stay f32, as GPU half-precision kernels
    /// accumulate. That measures the accuracy cost of half precision without a GPU.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self, ResNetError> {
        let p = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| ResNetError::Io {
            path: p.clone(),
            source,
        })?;
        let sha256 = format!("{:x}", Sha256::digest(&data));
        let layers = parse(&data).map_err(|source| ResNetError::Format {
            path: p.clone(),
            source,
        })?;
        Self::build(layers, device, dtype, sha256).map_err(|e| match e {
            ResNetError::Layout { detail, .. } => ResNetError::Layout { path: p, detail },
            other => other,
        })
    }

    fn build(
        layers: Vec<Layer>,
        device: &Device,
        dtype: DType,
        sha256: String,
    ) -> Result<Self, ResNetError> {
        // CPU: half dtypes are emulated in f32 (see `load`).
        let compute = if device.is_cpu() { DType::F32 } else { dtype };
        let layout = |detail: String| ResNetError::Layout {
            path: String::new(),
            detail,
        };
        let kinds: Vec<&str> = layers.iter().map(Layer::kind).collect();
        let mut want = vec!["input", "con", "affine", "relu", "max_pool"];
        for (_, down) in UNITS {
            want.extend(["con", "affine", "relu", "con", "affine"]);
            if down {
                want.push("avg_pool");
            }
            want.extend(["add_prev", "relu"]);
        }
        want.extend(["avg_pool", "fc"]);
        if kinds != want {
            return Err(layout(format!(
                "layer sequence {kinds:?} differs from the expected {want:?}"
            )));
        }
        // The sequence is known now: split it into convs (each followed by its affine), pools, fc.
        let mut mean = None;
        let mut convs = Vec::new();
        let mut pools = Vec::new();
        let mut fc = None;
        let mut pending: Option<Layer> = None;
        for layer in layers {
            match layer {
                Layer::Input {
                    mean: m,
                    rows,
                    cols,
                } => {
                    if rows != CHIP || cols != CHIP {
                        return Err(layout(format!(
                            "input {rows}x{cols}, expected {CHIP}x{CHIP}"
                        )));
                    }
                    mean = Some(m);
                }
                conv @ Layer::Conv { .. } => pending = Some(conv),
                Layer::Affine { gamma, beta } => {
                    let Some(Layer::Conv {
                        filters,
                        shape,
                        stride,
                        padding,
                        weights: mut w,
                        bias,
                    }) = pending.take()
                    else {
                        return Err(layout("affine without a conv".into()));
                    };
                    if gamma.len() != filters || beta.len() != filters {
                        return Err(layout(format!(
                            "affine of {} channels after {filters} filters",
                            gamma.len()
                        )));
                    }
                    let per = shape[1] * shape[2] * shape[3];
                    for (f, chunk) in w.chunks_mut(per).enumerate() {
                        chunk.iter_mut().for_each(|v| *v *= gamma[f]);
                    }
                    let b: Vec<f32> = (0..filters).map(|f| bias[f] * gamma[f] + beta[f]).collect();
                    convs.push((
                        filters,
                        Conv {
                            weight: Tensor::from_vec(w, shape.to_vec(), device)?
                                .to_dtype(dtype)?
                                .to_dtype(compute)?,
                            bias: Tensor::from_vec(b, (1, filters, 1, 1), device)?
                                .to_dtype(dtype)?
                                .to_dtype(compute)?,
                            stride,
                            padding,
                        },
                    ));
                }
                Layer::MaxPool {
                    size,
                    stride,
                    padding,
                } => pools.push(("max", size, stride, padding)),
                Layer::AvgPool {
                    size,
                    stride,
                    padding,
                } => pools.push(("avg", size, stride, padding)),
                Layer::Relu | Layer::AddPrev => {}
                Layer::Fc {
                    inputs,
                    outputs,
                    weights,
                } => {
                    if inputs != 256 || outputs != DIM {
                        return Err(layout(format!(
                            "fc {inputs}->{outputs}, expected 256->{DIM}"
                        )));
                    }
                    fc = Some(
                        Tensor::from_vec(weights, (inputs, outputs), device)?
                            .to_dtype(dtype)?
                            .to_dtype(compute)?,
                    );
                }
            }
        }
        let (Some(mean), Some(fc)) = (mean, fc) else {
            return Err(layout("missing input or fc layer".into()));
        };
        // Pools: the stem max pool 3x3/2, one 2x2/2 shortcut pool per down unit, the global pool.
        let n_down = UNITS.iter().filter(|u| u.1).count();
        let mut want_pools = vec![("max", 3, 2, 0)];
        want_pools.extend(std::iter::repeat_n(("avg", 2, 2, 0), n_down));
        if pools.len() != want_pools.len() + 1
            || pools[..want_pools.len()] != want_pools[..]
            || pools.last().map(|p| (p.0, p.1)) != Some(("avg", 0))
        {
            return Err(layout(format!(
                "pools {pools:?}, expected {want_pools:?} then a global average pool"
            )));
        }
        let mut convs = convs.into_iter();
        let mut take = |filters: usize,
                        stride: usize,
                        padding: usize|
         -> Result<Conv, ResNetError> {
            match convs.next() {
                Some((f, c)) if f == filters && c.stride == stride && c.padding == padding => Ok(c),
                Some((f, c)) => Err(layout(format!(
                    "conv with {f} filters, stride {}, padding {}; expected {filters}, {stride}, {padding}",
                    c.stride, c.padding
                ))),
                None => Err(layout("too few convs".into())),
            }
        };
        let stem = take(32, 2, 0)?;
        let mut units = Vec::with_capacity(UNITS.len());
        for (filters, down) in UNITS {
            let conv1 = if down {
                take(filters, 2, 0)?
            } else {
                take(filters, 1, 1)?
            };
            let conv2 = take(filters, 1, 1)?;
            units.push(Unit { conv1, conv2, down });
        }
        Ok(DlibResNet {
            mean,
            stem,
            units,
            fc,
            device: device.clone(),
            dtype: compute,
            round_to: (compute != dtype).then_some(dtype),
            sha256,
        })
    }

    /// SHA-256 of the model file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Normalised NCHW f32 input for a batch of 150x150x3 RGB chips (row-major HWC bytes).
    pub fn input(&self, chips: &[&[u8]]) -> Result<Tensor, ResNetError> {
        let plane = CHIP * CHIP;
        let mut data = vec![0f32; chips.len() * 3 * plane];
        for (i, chip) in chips.iter().enumerate() {
            if chip.len() != plane * 3 {
                return Err(ResNetError::ChipSize {
                    index: i,
                    got: chip.len(),
                });
            }
            let out = &mut data[i * 3 * plane..(i + 1) * 3 * plane];
            for (p, px) in chip.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    out[c * plane + p] = (px[c] as f32 - self.mean[c]) / 256.0;
                }
            }
        }
        Ok(
            Tensor::from_vec(data, (chips.len(), 3, CHIP, CHIP), &self.device)?
                .to_dtype(self.dtype)?,
        )
    }

    /// The forward pass from a normalised NCHW input to the raw (unnormalised) 128-D output, f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ResNetError> {
        // Rounds to the emulated half dtype (identity when the dtype is native).
        let q = |t: Tensor| -> candle_core::Result<Tensor> {
            match self.round_to {
                Some(d) => t.to_dtype(d)?.to_dtype(self.dtype),
                None => Ok(t),
            }
        };
        let x = q(x.clone())?;
        let mut x = q(self.stem.forward(&x)?)?
            .relu()?
            .max_pool2d_with_stride(3, 2)?;
        for unit in &self.units {
            let y = q(unit.conv1.forward(&x)?)?.relu()?;
            let y = q(unit.conv2.forward(&y)?)?;
            let shortcut = if unit.down {
                q(x.avg_pool2d_with_stride(2, 2)?)?
            } else {
                x
            };
            x = q(add_prev(&shortcut, &y)?)?.relu()?;
        }
        let x = q(x.mean(D::Minus1)?.mean(D::Minus1)?)?;
        Ok(q(x.matmul(&self.fc)?)?.to_dtype(DType::F32)?)
    }

    /// Embeds a batch of chips: raw 128-D vectors (dlib's output, not normalised), one per chip.
    pub fn embed_chips(&self, chips: &[&[u8]]) -> Result<Vec<Vec<f32>>, ResNetError> {
        if chips.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.forward(&self.input(chips)?)?;
        Ok(out.to_vec2::<f32>()?)
    }
}

/// dlib's `add_prev`: the sum of two NCHW tensors zero-padded to their elementwise larger shape
/// (extra channels, rows and columns at the end).
fn add_prev(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (da, db) = (a.dims4()?, b.dims4()?);
    if da == db {
        return a + b;
    }
    let pad = |t: &Tensor, d: (usize, usize, usize, usize)| -> candle_core::Result<Tensor> {
        let t = t.pad_with_zeros(1, 0, da.1.max(db.1) - d.1)?;
        let t = t.pad_with_zeros(2, 0, da.2.max(db.2) - d.2)?;
        t.pad_with_zeros(3, 0, da.3.max(db.3) - d.3)
    };
    pad(a, da)? + pad(b, db)?
}
