//! dlib's MMOD CNN face detector network (`mmod_human_face_detector.dat`, CC0), read from dlib's
//! own file, in candle.
//!
//! Upstream reference: dlib `examples/dnn_mmod_face_detection_ex.cpp` (the network type),
//! `dlib/dnn/loss.h` (`loss_mmod_`, `mmod_options` serialization), `dlib/dnn/layers.h` (`con_`,
//! `bn_` in inference mode: `g * (x - running_mean) / sqrt(running_var + eps) + b`).
//!
//! Architecture, in forward order: the tiled pyramid (`pyramid`), three 5x5/2 convolutions (16,
//! 32, 32 filters, no padding), three 5x5/1 (45 filters, padding 2), each with batch norm and
//! relu, then a 9x9/1 convolution (padding 4) to one channel per detector window (80x80 for this
//! file): the window's score at each position. Batch norm is folded into the convolution before
//! it at load time, exact in real arithmetic.

use candle_core::{Device, Tensor};

use crate::embed::dlib_format::{ConParams, FormatError, Reader};

/// `mmod_options` fields the detector uses at inference.
#[derive(Debug, Clone, PartialEq)]
pub struct MmodOptions {
    /// Detector windows (width, height), one output channel each.
    pub windows: Vec<(u64, u64)>,
    /// Non-maximum suppression: a detection is dropped when its IoU with a kept one exceeds
    /// `nms_iou`, or it covers (or is covered by) more than `nms_covered` of a kept one's area.
    pub nms_iou: f64,
    pub nms_covered: f64,
}

/// A convolution with its batch norm folded in, and what it does to coordinates.
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    pub stride: usize,
    pub padding: usize,
    pub kernel: usize,
    relu: bool,
}

/// A convolution as stored, with the batch norm (scale, shift per filter) and relu after it.
pub struct StoredConv {
    pub con: ConParams,
    pub bn: Option<(Vec<f32>, Vec<f32>)>,
    pub relu: bool,
}

/// The file as read: options, input means and pyramid padding, layers.
pub struct Parsed {
    pub options: MmodOptions,
    pub mean: [f32; 3],
    pub padding: (i64, i64),
    pub convs: Vec<StoredConv>,
}

fn layout(msg: String) -> FormatError {
    FormatError::Layout(msg)
}

fn test_box_overlap(r: &mut Reader) -> Result<(f64, f64), FormatError> {
    Ok((r.float()?, r.float()?))
}

/// Parses the loss header, the input layer and the layers (forward order).
pub fn parse(data: &[u8]) -> Result<Parsed, FormatError> {
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
    if loss != "loss_mmod_" {
        return Err(layout(format!(
            "loss layer '{loss}', expected loss_mmod_ (a detector)"
        )));
    }
    let at = r.offset();
    let version = r.int()?;
    let windows = match version {
        1 => vec![(
            r.count("window width", 1 << 16)? as u64,
            r.count("window height", 1 << 16)? as u64,
        )],
        2..=4 => {
            let n = r.count("detector windows", 64)?;
            let mut w = Vec::with_capacity(n);
            for _ in 0..n {
                let dv = r.int()?;
                let width = r.count("window width", 1 << 16)? as u64;
                let height = r.count("window height", 1 << 16)? as u64;
                if dv == 2 {
                    r.string(256)?;
                }
                w.push((width, height));
            }
            w
        }
        v => {
            return Err(FormatError::Version {
                what: "mmod_options",
                version: v,
                offset: at,
            })
        }
    };
    r.float()?; // loss per false alarm
    r.float()?; // loss per missed target
    r.float()?; // truth match IoU threshold
    let (nms_iou, nms_covered) = test_box_overlap(&mut r)?;
    test_box_overlap(&mut r)?; // overlaps_ignore
    if version >= 3 {
        r.int()?; // assume_image_pyramid
    }
    if version >= 4 && r.bool()? {
        return Err(layout("bounding-box regression is not supported".into()));
    }
    if version >= 4 {
        r.float()?; // bbr lambda
    }
    // The subnet's nested add_layer versions, then the input layer and the layers in forward order.
    while matches!(r.peek_int()?, 1..=3) {
        r.int()?;
    }
    let input = r.string(64)?;
    let mean = [r.float()? as f32, r.float()? as f32, r.float()? as f32];
    let padding = match input.as_str() {
        "input_rgb_image_pyramid" => (10, 11),
        "input_rgb_image_pyramid2" => (
            r.count("pyramid padding", 1 << 16)? as i64,
            r.count("pyramid outer padding", 1 << 16)? as i64,
        ),
        other => {
            return Err(layout(format!(
                "input layer '{other}', expected input_rgb_image_pyramid"
            )))
        }
    };
    let mut convs: Vec<StoredConv> = Vec::new();
    let mut n_layers = 0;
    while !r.at_end() {
        let name = r.string(64)?;
        match name.as_str() {
            "con_4" => convs.push(StoredConv {
                con: r.con_4()?,
                bn: None,
                relu: false,
            }),
            "bn_con2" => {
                let (_, params) = r.tensor()?;
                r.alias_tensor()?;
                r.alias_tensor()?;
                r.tensor()?; // means (training)
                r.tensor()?; // invstds (training)
                let (_, mean) = r.tensor()?;
                let (_, var) = r.tensor()?;
                r.int()?; // num_updates
                r.int()?; // running stats window
                for _ in 0..4 {
                    r.float()?;
                }
                let eps = r.float()? as f32;
                let Some(last) = convs.last_mut().filter(|c| c.bn.is_none() && !c.relu) else {
                    return Err(layout("bn_con without a conv before it".into()));
                };
                let k = last.con.filters;
                if params.len() != 2 * k || mean.len() != k || var.len() != k {
                    return Err(layout(format!(
                        "bn_con of {} values after {k} filters",
                        params.len()
                    )));
                }
                let scale: Vec<f32> = (0..k).map(|i| params[i] / (var[i] + eps).sqrt()).collect();
                let shift: Vec<f32> = (0..k).map(|i| params[k + i] - mean[i] * scale[i]).collect();
                last.bn = Some((scale, shift));
            }
            "relu_" => match convs.last_mut() {
                Some(last) if !last.relu => last.relu = true,
                _ => return Err(layout("relu without a conv before it".into())),
            },
            other => return Err(layout(format!("unsupported layer '{other}'"))),
        }
        n_layers += 1;
        r.layer_trailer(n_layers == 1)?;
        if n_layers > 1000 {
            return Err(layout("more than 1000 layers".into()));
        }
    }
    match convs.last() {
        Some(c) if c.con.filters == windows.len() && c.bn.is_none() && !c.relu => {}
        _ => {
            return Err(layout(
                "the last layer must be a convolution with one filter per detector window".into(),
            ))
        }
    }
    Ok(Parsed {
        options: MmodOptions {
            windows,
            nms_iou,
            nms_covered,
        },
        mean,
        padding,
        convs,
    })
}

/// The network on one device (f32).
pub struct MmodNet {
    pub convs: Vec<Conv>,
}

impl MmodNet {
    pub fn build(convs: Vec<StoredConv>, device: &Device) -> candle_core::Result<Self> {
        let convs = convs
            .into_iter()
            .map(|StoredConv { con: c, bn, relu }| {
                let (mut w, mut b) = (c.weights, c.bias);
                if let Some((scale, shift)) = bn {
                    let per = c.shape[1] * c.shape[2] * c.shape[3];
                    for (f, chunk) in w.chunks_mut(per).enumerate() {
                        chunk.iter_mut().for_each(|v| *v *= scale[f]);
                    }
                    b = (0..c.filters).map(|f| b[f] * scale[f] + shift[f]).collect();
                }
                Ok(Conv {
                    weight: Tensor::from_vec(w, c.shape.to_vec(), device)?,
                    bias: Tensor::from_vec(b, (1, c.filters, 1, 1), device)?,
                    stride: c.stride,
                    padding: c.padding,
                    kernel: c.shape[2],
                    relu,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(MmodNet { convs })
    }

    /// NCHW pyramid tensor -> NCHW window scores.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for c in &self.convs {
            x = x
                .conv2d(&c.weight, c.padding, c.stride, 1, 1)?
                .broadcast_add(&c.bias)?;
            if c.relu {
                x = x.relu()?;
            }
        }
        Ok(x)
    }

    /// dlib's `output_tensor_to_input_tensor` for one coordinate: each layer from the output down
    /// maps `p -> p * stride - padding + kernel / 2`.
    pub fn output_to_input(&self, p: f64) -> f64 {
        self.convs.iter().rev().fold(p, |p, c| {
            p * c.stride as f64 - c.padding as f64 + (c.kernel / 2) as f64
        })
    }
}
