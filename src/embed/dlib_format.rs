//! dlib's binary serialization, read without dlib: the primitives that the face-recognition
//! ResNet (`network`) and the 5-point shape predictor (`landmarks`) are stored in.
//!
//! Format (dlib/serialize.h, dlib/float_details.h, dlib/dnn/tensor.h):
//! - integers: a control byte (low nibble = number of magnitude bytes, bit 0x80 = negative), then
//!   the magnitude in little-endian bytes;
//! - float/double: `float_details` = integer mantissa then integer exponent,
//!   value = mantissa * 2^exponent (exponents 32000/32001/32002 = +inf/-inf/NaN);
//! - `std::string`: integer length then the raw bytes; `bool`: one ASCII byte `'0'` or `'1'`;
//! - dnn tensor: integer version; version 2 = n, k, nr, nc then n*k*nr*nc little-endian f32,
//!   version 1 = the same shape then each value as `float_details`;
//! - `matrix<T>`: nr, nc as integers (dlib writes them negated for column vectors in some
//!   versions; the absolute values are the shape) then nr*nc values row-major.
//!
//! Every read is bounds-checked and a malformed file is a typed error naming the byte offset, never
//! a panic: model files come from operators.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum FormatError {
    #[error("unexpected end of file at byte {offset} (wanted {wanted} more bytes)")]
    Eof { offset: usize, wanted: usize },
    #[error("bad integer control byte 0x{byte:02x} at byte {offset}")]
    BadInt { byte: u8, offset: usize },
    #[error("integer at byte {offset} does not fit: {detail}")]
    IntRange { offset: usize, detail: String },
    #[error("bad bool byte 0x{byte:02x} at byte {offset}")]
    BadBool { byte: u8, offset: usize },
    #[error("unknown {what} version {version} at byte {offset}")]
    Version {
        what: &'static str,
        version: i64,
        offset: usize,
    },
    #[error("{0}")]
    Layout(String),
}

/// A cursor over a dlib-serialized byte buffer.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    /// Byte offset of the next read (for error messages).
    pub fn offset(&self) -> usize {
        self.pos
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(FormatError::Eof {
                offset: self.pos,
                wanted: n,
            }),
        }
    }

    pub fn byte(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    /// dlib's variable-length signed integer.
    pub fn int(&mut self) -> Result<i64, FormatError> {
        let offset = self.pos;
        let c = self.byte()?;
        let n = (c & 0x0F) as usize;
        if n > 8 || (c & 0x70) != 0 {
            return Err(FormatError::BadInt { byte: c, offset });
        }
        let mut v: u64 = 0;
        for (i, b) in self.take(n)?.iter().enumerate() {
            v |= (*b as u64) << (8 * i);
        }
        let v = i64::try_from(v).map_err(|_| FormatError::IntRange {
            offset,
            detail: format!("magnitude {v} exceeds i64"),
        })?;
        Ok(if c & 0x80 != 0 { -v } else { v })
    }

    /// The next integer without consuming it.
    pub fn peek_int(&mut self) -> Result<i64, FormatError> {
        let save = self.pos;
        let v = self.int();
        self.pos = save;
        v
    }

    /// A non-negative integer used as a count or a size, bounded by `max`.
    pub fn count(&mut self, what: &str, max: u64) -> Result<usize, FormatError> {
        let offset = self.pos;
        let v = self.int()?;
        if v < 0 || v as u64 > max {
            return Err(FormatError::IntRange {
                offset,
                detail: format!("{what} = {v}, allowed 0..={max}"),
            });
        }
        Ok(v as usize)
    }

    /// dlib `float_details` as f64.
    pub fn float(&mut self) -> Result<f64, FormatError> {
        let offset = self.pos;
        let m = self.int()?;
        let e = self.int()?;
        Ok(match e {
            32000 => f64::INFINITY,
            32001 => f64::NEG_INFINITY,
            32002 => f64::NAN,
            e if (-2000..=2000).contains(&e) => (m as f64) * 2f64.powi(e as i32),
            _ => {
                return Err(FormatError::IntRange {
                    offset,
                    detail: format!("float exponent {e}"),
                })
            }
        })
    }

    pub fn string(&mut self, max_len: u64) -> Result<String, FormatError> {
        let n = self.count("string length", max_len)?;
        Ok(self.take(n)?.iter().map(|&b| b as char).collect())
    }

    pub fn bool(&mut self) -> Result<bool, FormatError> {
        let offset = self.pos;
        match self.byte()? {
            b'0' => Ok(false),
            b'1' => Ok(true),
            byte => Err(FormatError::BadBool { byte, offset }),
        }
    }

    /// A dnn `tensor`: shape (n, k, nr, nc) and its values, NCHW.
    pub fn tensor(&mut self) -> Result<([usize; 4], Vec<f32>), FormatError> {
        let offset = self.pos;
        let version = self.int()?;
        let mut shape = [0usize; 4];
        for s in shape.iter_mut() {
            *s = self.count("tensor dimension", 1 << 31)?;
        }
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= 1 << 30)
            .ok_or_else(|| FormatError::IntRange {
                offset,
                detail: format!("tensor of shape {shape:?} is too large"),
            })?;
        let values = match version {
            2 => self
                .take(n.saturating_mul(4))?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            1 => (0..n)
                .map(|_| self.float().map(|v| v as f32))
                .collect::<Result<_, _>>()?,
            v => {
                return Err(FormatError::Version {
                    what: "tensor",
                    version: v,
                    offset,
                })
            }
        };
        Ok((shape, values))
    }

    /// A dnn `alias_tensor` (shape only).
    pub fn alias_tensor(&mut self) -> Result<[usize; 4], FormatError> {
        let offset = self.pos;
        let version = self.int()?;
        if version != 1 {
            return Err(FormatError::Version {
                what: "alias_tensor",
                version,
                offset,
            });
        }
        let mut shape = [0usize; 4];
        for s in shape.iter_mut() {
            *s = self.count("alias_tensor dimension", 1 << 31)?;
        }
        Ok(shape)
    }

    /// A `matrix<float or double>`: (rows, cols, row-major values as f64).
    pub fn matrix(&mut self, max_len: u64) -> Result<(usize, usize, Vec<f64>), FormatError> {
        let offset = self.pos;
        let nr = self.int()?.unsigned_abs();
        let nc = self.int()?.unsigned_abs();
        let n = nr
            .checked_mul(nc)
            .filter(|&n| n <= max_len)
            .ok_or_else(|| FormatError::IntRange {
                offset,
                detail: format!("matrix {nr}x{nc} exceeds {max_len} values"),
            })?;
        let values = (0..n)
            .map(|_| self.float())
            .collect::<Result<Vec<_>, _>>()?;
        Ok((nr as usize, nc as usize, values))
    }
}

/// A `con_` layer as dlib 19/20 store it (`con_4`): filters, square kernel, stride and padding,
/// weights `[filters, channels, kh, kw]` then one bias per filter.
#[derive(Debug)]
pub struct ConParams {
    pub filters: usize,
    pub shape: [usize; 4],
    pub stride: usize,
    pub padding: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Reader<'_> {
    /// Two equal counts (dlib stores y then x); anything else is a layout error.
    pub fn square(&mut self, what: &str) -> Result<usize, FormatError> {
        let a = self.count(what, 1 << 16)?;
        let b = self.count(what, 1 << 16)?;
        if a != b {
            return Err(FormatError::Layout(format!("{what} {a}x{b} is not square")));
        }
        Ok(a)
    }

    /// The body of a `con_4` layer (after its name): params tensor, num_filters, kernel, stride,
    /// padding (each rows then columns), the filter and bias alias tensors, four multipliers.
    pub fn con_4(&mut self) -> Result<ConParams, FormatError> {
        let (_, params) = self.tensor()?;
        let filters = self.count("num_filters", 1 << 16)?;
        let _kernel = self.square("kernel")?;
        let stride = self.square("stride")?;
        let padding = self.square("padding")?;
        let shape = self.alias_tensor()?;
        let bias_shape = self.alias_tensor()?;
        for _ in 0..4 {
            self.float()?; // learning-rate and weight-decay multipliers
        }
        let nw: usize = shape.iter().product();
        let nb: usize = bias_shape.iter().product();
        if params.len() != nw + nb || shape[0] != filters || nb != filters {
            return Err(FormatError::Layout(format!(
                "conv: {} parameters for filters {shape:?} and bias {bias_shape:?}",
                params.len()
            )));
        }
        Ok(ConParams {
            filters,
            shape,
            stride,
            padding,
            weights: params[..nw].to_vec(),
            bias: params[nw..].to_vec(),
        })
    }

    /// The `add_layer` trailer after a layer's details: three bools, three (empty) tensors; the
    /// innermost layer (the one on the input) adds its sample expansion factor.
    pub fn layer_trailer(&mut self, innermost: bool) -> Result<(), FormatError> {
        for _ in 0..3 {
            self.bool()?;
        }
        for _ in 0..3 {
            let (shape, _) = self.tensor()?;
            if shape.iter().product::<usize>() != 0 {
                return Err(FormatError::Layout(format!(
                    "non-empty trailer tensor {shape:?}"
                )));
            }
        }
        if innermost {
            self.int()?; // sample expansion factor
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_floats_strings_and_errors() {
        // 300 = 0x012c in two bytes; -5 = 0x81 0x05; 0 = 0x00.
        let mut r = Reader::new(&[0x02, 0x2c, 0x01, 0x81, 0x05, 0x00]);
        assert_eq!(r.int().unwrap(), 300);
        assert_eq!(r.int().unwrap(), -5);
        assert_eq!(r.int().unwrap(), 0);
        assert!(r.at_end());
        assert!(matches!(r.int(), Err(FormatError::Eof { .. })));

        // 3 * 2^-1 = 1.5
        let mut r = Reader::new(&[0x01, 0x03, 0x81, 0x01]);
        assert_eq!(r.float().unwrap(), 1.5);

        let mut r = Reader::new(&[0x01, 0x02, b'h', b'i', b'1', b'x']);
        assert_eq!(r.string(10).unwrap(), "hi");
        assert!(r.bool().unwrap());
        assert!(matches!(
            r.bool(),
            Err(FormatError::BadBool { byte: b'x', .. })
        ));

        // control byte with a 9-byte length is refused, not read past.
        let mut r = Reader::new(&[0x09, 1, 2, 3]);
        assert!(matches!(r.int(), Err(FormatError::BadInt { .. })));
        // a tensor that claims more data than the file holds
        let mut r = Reader::new(&[
            0x01, 0x02, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x10, 0, 0,
        ]);
        assert!(matches!(r.tensor(), Err(FormatError::Eof { .. })));
    }
}
