//! The decode stage: encoded face-crop bytes in, the 150x150 RGB chip the face-recognition network
//! takes out. It owns the input limits (checked from the header, before any pixel buffer is
//! allocated), the decoders, a bit-exact port of Pillow's bilinear resampler, the centre chip, and
//! `Preprocessor`, the one entry point the embedder calls. Landmarks and the aligned chip live in
//! `align`.
//!
//! # The pipeline, exactly
//! 1. Empty input and input over `DecodeLimits::max_image_bytes` are refused.
//! 2. The format comes from the magic bytes: JPEG, PNG or WebP; anything else is refused.
//! 3. Width and height are read from the header alone. A side over `max_image_side_px`, a pixel
//!    count over `max_image_pixels` (decompression bombs: a 100-byte PNG can claim 10^10 pixels)
//!    or a side under `min_image_side_px` is refused before a pixel buffer exists.
//! 4. Decoding to RGB8, row-major HWC:
//!    - JPEG with libjpeg-turbo through its TurboJPEG API at its defaults (accurate integer IDCT,
//!      "fancy" triangular chroma upsampling). These are Pillow's defaults too, so the pixels are
//!      bit-identical to Pillow's `Image.open(..).convert("RGB")`, which the dlib reference
//!      fixtures were made with. The pure-Rust decoder inside `image` (zune-jpeg) differs from it
//!      in 13.7% of the bytes of 50 LFW images, by up to 13 levels, and a 1-level change moves
//!      the dlib embedding by up to 4e-3: hence the C library. Progressive JPEGs are limited to
//!      `MAX_JPEG_SCANS` scans (a known slow-decode attack). CMYK/YCCK JPEGs are refused.
//!    - PNG and WebP with the `image` crate, with its own allocation limits as a second fence.
//!    - Grey is replicated to R = G = B; alpha is dropped, not composited (as Pillow's
//!      `convert("RGB")`); 16-bit samples are scaled to 8 bits by `image`.
//!    - A panic anywhere in steps 1 to 4 (a decoder's bug on crafted bytes) is caught
//!      (`guard_decode`) and refused as `DecodeError::Panicked`, dead-lettered as `image_decode`
//!      like any undecodable image: otherwise one such message would stop the daemon and be read
//!      again on every restart. This needs the default `panic = "unwind"` (Cargo.toml sets no
//!      `panic = "abort"`); the default panic hook still prints the panic to stderr.
//! 5. The chip, by `ChipMode`:
//!    - `Centre`: a square crop of side `floor(crop_fraction * min(w, h) + 0.5)` at
//!      `((w - side) / 2, (h - side) / 2)` (integer division), resized to 150x150 with Pillow's
//!      `Image.resize(.., BILINEAR)` reproduced bit for bit (`resize_bilinear`). For 250x250 LFW
//!      and 0.5 this is Pillow's `crop((62, 62, 187, 187)).resize((150, 150), BILINEAR)`, the
//!      preprocessing of `tests/fixtures/dlib/embeddings.json`.
//!    - `Aligned`: dlib's 5-point landmarks on a centred box (optionally predicted again from the
//!      box those landmarks imply, `landmark_passes`), then dlib's `get_face_chip`
//!      (`align::face_chip`), the preprocessing dlib's face-recognition model was trained with.

use std::io::Cursor;

use thiserror::Error;

/// Side of the chip the face-recognition network takes.
pub const CHIP_SIZE_PX: usize = 150;

/// Most scans a progressive JPEG may have. libjpeg-turbo's documentation suggests a limit for
/// untrusted input because each scan re-decodes the image; real encoders write about 10.
pub const MAX_JPEG_SCANS: u32 = 500;

/// What an input image may be. Checked from the header before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest encoded input in bytes; bigger messages are refused unread.
    pub max_image_bytes: usize,
    /// Most pixels (width * height) the header may claim; bounds the RGB buffer to 3x this.
    pub max_image_pixels: u64,
    /// Longest side in pixels (also bounds the resampler's coefficient tables).
    pub max_image_side_px: u32,
    /// Shortest usable side in pixels; smaller images hold no recognisable face.
    pub min_image_side_px: u32,
}

impl DecodeLimits {
    /// The limits the configuration sets (`source.max_message_bytes`, `source.max_image_pixels`,
    /// `embed.max_image_side`): every stage that decodes an image (the embedder, the CLIP stage)
    /// takes these, so no stage accepts an image another refuses.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        DecodeLimits {
            max_image_bytes: cfg.source.max_message_bytes,
            max_image_pixels: cfg.source.max_image_pixels,
            max_image_side_px: cfg.embed.max_image_side,
            ..DecodeLimits::default()
        }
    }
}

impl Default for DecodeLimits {
    /// Generous for face crops: 16 MiB, 4096x4096 pixels (48 MiB decoded), 8192 px a side, 16 px
    /// minimum.
    fn default() -> Self {
        DecodeLimits {
            max_image_bytes: 16 << 20,
            max_image_pixels: 4096 * 4096,
            max_image_side_px: 8192,
            min_image_side_px: 16,
        }
    }
}

/// A decoded image: 8-bit RGB, row-major, `width * height * 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Wraps `pixels`; `None` when the length is not `width * height * 3`.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Option<Self> {
        (width.checked_mul(height)?.checked_mul(3)? == pixels.len()).then_some(RgbImage {
            width,
            height,
            pixels,
        })
    }

    /// The pixel at column `x`, row `y` (caller keeps them in range).
    #[inline]
    pub fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// The square of half-side `half` around (`cx`, `cy`), clamped to the image (so not square
    /// at a border), its rows copied out.
    pub fn crop_around(&self, (cx, cy): (f64, f64), half: f64) -> RgbImage {
        let clamp = |v: f64, hi: usize| (v.round().max(0.0) as usize).min(hi);
        let (x0, x1) = (
            clamp(cx - half, self.width - 1),
            clamp(cx + half, self.width - 1),
        );
        let (y0, y1) = (
            clamp(cy - half, self.height - 1),
            clamp(cy + half, self.height - 1),
        );
        let (w, h) = (x1 - x0 + 1, y1 - y0 + 1);
        let mut pixels = Vec::with_capacity(w * h * 3);
        for y in y0..=y1 {
            let row = (y * self.width + x0) * 3;
            pixels.extend_from_slice(&self.pixels[row..row + w * 3]);
        }
        RgbImage {
            width: w,
            height: h,
            pixels,
        }
    }
}

/// Why bytes did not become a chip. Every variant is refused without a panic and without
/// allocating more than the limits allow (a decoder's own panic becomes `Panicked`).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DecodeError {
    #[error("empty input (0 bytes)")]
    Empty,
    #[error("{n_bytes} bytes exceeds max_image_bytes = {max_image_bytes}")]
    TooManyBytes {
        n_bytes: usize,
        max_image_bytes: usize,
    },
    #[error("{width}x{height} has a side over max_image_side_px = {max_image_side_px}")]
    SideTooLong {
        width: u64,
        height: u64,
        max_image_side_px: u32,
    },
    #[error("{width}x{height} = {} pixels exceeds max_image_pixels = {max_image_pixels}", width * height)]
    TooManyPixels {
        width: u64,
        height: u64,
        max_image_pixels: u64,
    },
    #[error("{width}x{height} has a side under min_image_side_px = {min_image_side_px}")]
    TooSmall {
        width: u64,
        height: u64,
        min_image_side_px: u32,
    },
    #[error("not a JPEG, PNG or WebP image (unrecognised leading bytes)")]
    UnknownFormat,
    #[error("unsupported image format: {0}")]
    UnsupportedFormat(String),
    #[error("corrupt or truncated {format}: {detail}")]
    Corrupt {
        format: &'static str,
        detail: String,
    },
    /// A decoder panicked on the input: a bug in it that crafted bytes reach, not a daemon bug.
    #[error("the image decoder panicked on this input: {0}")]
    Panicked(String),
}

impl DecodeError {
    /// A bounded snake_case label for metrics and dead-letter reasons.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooManyBytes { .. } => "too_many_bytes",
            DecodeError::SideTooLong { .. } => "side_too_long",
            DecodeError::TooManyPixels { .. } => "too_many_pixels",
            DecodeError::TooSmall { .. } => "too_small",
            DecodeError::UnknownFormat => "unknown_format",
            DecodeError::UnsupportedFormat(_) => "unsupported_format",
            DecodeError::Corrupt { .. } => "corrupt",
            DecodeError::Panicked(_) => "decoder_panic",
        }
    }
}

/// The formats we decode, from the magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jpeg,
    Png,
    WebP,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::WebP => "webp",
        }
    }
}

fn sniff(bytes: &[u8]) -> Result<Format, DecodeError> {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => Ok(Format::Jpeg),
        Ok(image::ImageFormat::Png) => Ok(Format::Png),
        Ok(image::ImageFormat::WebP) => Ok(Format::WebP),
        Ok(other) => Err(DecodeError::UnsupportedFormat(
            format!("{other:?}").to_lowercase(),
        )),
        Err(_) => Err(DecodeError::UnknownFormat),
    }
}

fn check_dimensions(width: u64, height: u64, limits: &DecodeLimits) -> Result<(), DecodeError> {
    let side = u64::from(limits.max_image_side_px);
    if width > side || height > side {
        return Err(DecodeError::SideTooLong {
            width,
            height,
            max_image_side_px: limits.max_image_side_px,
        });
    }
    // Sides are bounded by a u32 here, so the product cannot overflow a u64.
    if width * height > limits.max_image_pixels {
        return Err(DecodeError::TooManyPixels {
            width,
            height,
            max_image_pixels: limits.max_image_pixels,
        });
    }
    let min = u64::from(limits.min_image_side_px.max(1));
    if width < min || height < min {
        return Err(DecodeError::TooSmall {
            width,
            height,
            min_image_side_px: limits.min_image_side_px,
        });
    }
    Ok(())
}

/// Runs `f`, a decode, turning a panic inside it into `DecodeError::Panicked` with the panic's
/// message. The decoders (libjpeg-turbo's wrapper, `image`'s PNG and WebP readers) work on bytes
/// from the network; a panic in one of them is a property of the message, so it must be
/// dead-lettered like any bad message rather than unwind through the stage and stop the daemon.
///
/// `f`'s captures are asserted unwind-safe: a decode's inputs are read-only and its buffers are
/// its own, dropped on the unwind, so nothing half-written outlives the panic. A caller whose
/// closure writes to state it keeps must not read that state after a `Panicked`.
pub fn guard_decode<T, F: FnOnce() -> Result<T, DecodeError>>(f: F) -> Result<T, DecodeError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            Err(DecodeError::Panicked(detail))
        }
    }
}

/// Decodes JPEG, PNG or WebP bytes to RGB8 within `limits` (see the module docs for the order of
/// the checks and what each decoder does). A decoder's panic is returned as
/// `DecodeError::Panicked` (`guard_decode`).
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    guard_decode(|| decode_unguarded(bytes, limits))
}

fn decode_unguarded(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > limits.max_image_bytes {
        return Err(DecodeError::TooManyBytes {
            n_bytes: bytes.len(),
            max_image_bytes: limits.max_image_bytes,
        });
    }
    match sniff(bytes)? {
        Format::Jpeg => decode_jpeg(bytes, limits),
        format => decode_with_image(bytes, format, limits),
    }
}

fn jpeg_error(e: turbojpeg::Error) -> DecodeError {
    DecodeError::Corrupt {
        format: "jpeg",
        detail: e.to_string(),
    }
}

fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let mut tj = turbojpeg::Decompressor::new().map_err(jpeg_error)?;
    let header = tj.read_header(bytes).map_err(jpeg_error)?;
    check_dimensions(header.width as u64, header.height as u64, limits)?;
    if matches!(
        header.colorspace,
        turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
    ) {
        return Err(DecodeError::UnsupportedFormat("cmyk jpeg".into()));
    }
    tj.set_scan_limit(MAX_JPEG_SCANS).map_err(jpeg_error)?;
    let (width, height) = (header.width, header.height);
    let mut pixels = vec![0u8; width * height * 3];
    let out = turbojpeg::Image {
        pixels: pixels.as_mut_slice(),
        width,
        pitch: width * 3,
        height,
        format: turbojpeg::PixelFormat::RGB,
    };
    // libjpeg-turbo reports a truncated file as a warning after filling the rest with grey;
    // TurboJPEG turns that warning into an error, which is what we want (Pillow refuses too).
    tj.decompress(bytes, out).map_err(jpeg_error)?;
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

/// Width and height from a PNG's IHDR chunk, which the format requires to come first. Read by
/// hand because the `image` crate's PNG reader wants the stream up to the first IDAT before it
/// reports a size, and a bomb need not have one.
fn png_dimensions(bytes: &[u8]) -> Result<(u32, u32), DecodeError> {
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if bytes.len() < 24 || &bytes[12..16] != b"IHDR" {
        return Err(DecodeError::Corrupt {
            format: "png",
            detail: "no IHDR chunk after the signature".into(),
        });
    }
    Ok((be(16), be(20)))
}

fn decode_with_image(
    bytes: &[u8],
    format: Format,
    limits: &DecodeLimits,
) -> Result<RgbImage, DecodeError> {
    let image_format = match format {
        Format::Png => image::ImageFormat::Png,
        _ => image::ImageFormat::WebP,
    };
    let corrupt = |e: image::ImageError| DecodeError::Corrupt {
        format: format.name(),
        detail: e.to_string(),
    };
    let (w, h) = match format {
        Format::Png => png_dimensions(bytes)?,
        // The WebP reader parses the RIFF chunk headers only.
        _ => image::ImageReader::with_format(Cursor::new(bytes), image_format)
            .into_dimensions()
            .map_err(corrupt)?,
    };
    check_dimensions(u64::from(w), u64::from(h), limits)?;
    // The `image` crate's own limits are a second fence (its decoders check them before
    // allocating): the decoded buffer, up to 8 bytes a pixel for 16-bit RGBA, plus scratch.
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), image_format);
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_image_side_px);
    l.max_image_height = Some(limits.max_image_side_px);
    l.max_alloc = Some(limits.max_image_pixels.saturating_mul(16));
    reader.limits(l);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => DecodeError::TooManyPixels {
            width: u64::from(w),
            height: u64::from(h),
            max_image_pixels: limits.max_image_pixels,
        },
        e => corrupt(e),
    })?;
    let rgb = img.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Ok(RgbImage {
        width,
        height,
        pixels: rgb.into_raw(),
    })
}

// ------------------------------------------------------------------------------------------------
// Pillow's bilinear resampler (src/libImaging/Resample.c), bit for bit.

/// Pillow's fixed-point precision for 8-bit images: 32 bits minus 8 for the pixel minus 2 spare.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position along one axis: the first input index, how many inputs, and their
/// fixed-point weights (`ksize` slots each).
struct AxisCoeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear (triangle) filter, support 1
/// scaled by the downscale factor. The source window is `[0, in_size)`; the crop offset is applied
/// by the caller, as Pillow's `crop(..).resize(..)` does. Every expression keeps Pillow's order
/// of double operations so the rounded weights are identical.
fn axis_coeffs(in_size: usize, out_size: usize) -> AxisCoeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero, like `as i64`.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let (xmin, n) = (xmin as usize, xmax.max(0) as usize);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let t = (((x + xmin) as f64 - center + 0.5) * ss).abs();
            *wx = if t < 1.0 { 1.0 - t } else { 0.0 };
            ww += *wx;
        }
        for x in 0..n {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let f = v * f64::from(1u32 << PRECISION_BITS);
            k[xx * ksize + x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    AxisCoeffs { ksize, bounds, k }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's `img.crop((x0, y0, x0 + w, y0 + h)).resize((out_w, out_h), Image.BILINEAR)` on RGB8,
/// bit for bit: the horizontal pass first (rounded to 8 bits), then the vertical pass.
///
/// # Panics
/// When `window` (x0, y0, width, height) is empty or not inside `src`: callers derive it from the
/// image (`centre_crop`), so that is a bug, not bad data. The accumulators are i32 like Pillow's: bilinear weights are
/// positive and sum to 2^22 plus at most half a unit a tap, so 255 times that stays under 2^31.
pub fn resize_bilinear(
    src: &RgbImage,
    window: (usize, usize, usize, usize),
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    let (x0, y0, w, h) = window;
    assert!(
        x0 + w <= src.width && y0 + h <= src.height && w > 0 && h > 0,
        "resize window {window:?} outside the image"
    );
    let hc = axis_coeffs(w, out_w);
    let vc = axis_coeffs(h, out_h);
    // Rows of the window the vertical pass reads, as Pillow's ybox_first..ybox_last.
    let row_first = vc.bounds[0].0;
    let row_last = vc
        .bounds
        .iter()
        .map(|&(a, n)| a + n)
        .max()
        .unwrap_or(row_first);
    let half = 1i32 << (PRECISION_BITS - 1);
    let need_horizontal = w != out_w;
    let need_vertical = h != out_h;

    // Horizontal pass over the rows the vertical pass needs.
    let n_rows = row_last - row_first;
    let tmp_w = if need_horizontal { out_w } else { w };
    let mut tmp = vec![0u8; n_rows * tmp_w * 3];
    for r in 0..n_rows {
        let src_row = &src.pixels[((y0 + row_first + r) * src.width + x0) * 3..];
        let dst_row = &mut tmp[r * tmp_w * 3..(r + 1) * tmp_w * 3];
        if !need_horizontal {
            dst_row.copy_from_slice(&src_row[..w * 3]);
            continue;
        }
        for (xx, &(xmin, n)) in hc.bounds.iter().enumerate() {
            let k = &hc.k[xx * hc.ksize..xx * hc.ksize + n];
            let (mut s0, mut s1, mut s2) = (half, half, half);
            for (x, &kx) in k.iter().enumerate() {
                let p = &src_row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                s0 += i32::from(p[0]) * kx;
                s1 += i32::from(p[1]) * kx;
                s2 += i32::from(p[2]) * kx;
            }
            dst_row[xx * 3] = clip8(s0);
            dst_row[xx * 3 + 1] = clip8(s1);
            dst_row[xx * 3 + 2] = clip8(s2);
        }
    }
    if !need_vertical {
        return tmp;
    }

    // Vertical pass.
    let mut out = vec![0u8; out_h * tmp_w * 3];
    for (yy, &(ymin, n)) in vc.bounds.iter().enumerate() {
        let k = &vc.k[yy * vc.ksize..yy * vc.ksize + n];
        let dst_row = &mut out[yy * tmp_w * 3..(yy + 1) * tmp_w * 3];
        for (xc, d) in dst_row.iter_mut().enumerate() {
            let mut s = half;
            for (y, &ky) in k.iter().enumerate() {
                s += i32::from(tmp[(ymin - row_first + y) * tmp_w * 3 + xc]) * ky;
            }
            *d = clip8(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::EmbedError;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let mut px = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                px.extend_from_slice(&[
                    (x * 255 / w.max(2)) as u8,
                    (y * 255 / h.max(2)) as u8,
                    ((x + y) % 256) as u8,
                ]);
            }
        }
        RgbImage::new(w, h, px).unwrap()
    }

    #[test]
    fn resize_identity_and_constant() {
        let g = gradient(40, 30);
        assert_eq!(resize_bilinear(&g, (0, 0, 40, 30), 40, 30), g.pixels);
        let flat = RgbImage::new(7, 9, vec![77; 7 * 9 * 3]).unwrap();
        // Weights are normalised, so a flat image stays flat up- and downscaled.
        assert!(resize_bilinear(&flat, (0, 0, 7, 9), 150, 150)
            .iter()
            .all(|&v| v == 77));
        let big = RgbImage::new(400, 300, vec![200; 400 * 300 * 3]).unwrap();
        assert!(resize_bilinear(&big, (10, 20, 300, 250), 150, 150)
            .iter()
            .all(|&v| v == 200));
    }

    #[test]
    fn coefficients_match_pillow_for_125_to_150() {
        // Pillow: scale = 125/150, support 1, output 0 centred at 0.41667 reads inputs 0..1.
        let c = axis_coeffs(125, 150);
        assert_eq!(c.ksize, 3);
        assert_eq!(c.bounds[0], (0, 1));
        assert_eq!(c.k[0], 1 << PRECISION_BITS);
        let total: i64 = c.k[3..6].iter().map(|&v| i64::from(v)).sum();
        assert!((total - (1 << PRECISION_BITS)).abs() <= 2, "{total}");
    }

    #[test]
    fn limits_before_decoding() {
        let l = DecodeLimits::default();
        assert_eq!(decode(&[], &l), Err(DecodeError::Empty));
        let small = DecodeLimits {
            max_image_bytes: 3,
            ..l.clone()
        };
        assert_eq!(
            decode(&[0xff, 0xd8, 0xff, 0xe0], &small)
                .unwrap_err()
                .class(),
            "too_many_bytes"
        );
        assert_eq!(
            decode(b"hello world, not an image", &l),
            Err(DecodeError::UnknownFormat)
        );
        assert_eq!(
            decode(b"GIF89a\x01\x00\x01\x00", &l).unwrap_err().class(),
            "unsupported_format"
        );
    }

    #[test]
    fn errors_map_to_embed_classes() {
        let too_big = DecodeError::TooManyPixels {
            width: 100_000,
            height: 100_000,
            max_image_pixels: 1,
        };
        assert_eq!(EmbedError::from(too_big).class(), "image_too_large");
        let small = DecodeError::TooSmall {
            width: 2,
            height: 2,
            min_image_side_px: 16,
        };
        assert_eq!(EmbedError::from(small).class(), "image_unusable");
        assert_eq!(
            EmbedError::from(DecodeError::UnknownFormat).class(),
            "image_decode"
        );
        assert_eq!(EmbedError::from(DecodeError::Empty).class(), "image_decode");
        let panicked = DecodeError::Panicked("index out of bounds".into());
        assert_eq!(panicked.class(), "decoder_panic");
        assert_eq!(EmbedError::from(panicked).class(), "image_decode");
    }

    #[test]
    fn a_decoder_panic_is_a_decode_error() {
        // A decoder that panics on crafted bytes, as `image`'s or a codec crate's might: the panic
        // stops at the guard, with its message, and the caller gets an ordinary error.
        let bytes = b"\x89PNG\r\n\x1a\n crafted";
        let e = guard_decode(|| -> Result<RgbImage, DecodeError> {
            let n = bytes.len();
            panic!("crafted chunk length {n} past the end")
        })
        .unwrap_err();
        assert_eq!(
            e,
            DecodeError::Panicked("crafted chunk length 16 past the end".into())
        );
        assert_eq!(e.class(), "decoder_panic");
        // Dead-lettered and counted as an undecodable image.
        let reason = crate::decode::Reason::from(&EmbedError::from(e));
        assert_eq!(reason, crate::decode::Reason::ImageDecode);
        assert_eq!(reason.class(), "image_decode");
        // A panic payload that is a &'static str, and one that is neither string type.
        let e = guard_decode(|| -> Result<(), DecodeError> { panic!("static message") });
        assert_eq!(e, Err(DecodeError::Panicked("static message".into())));
        let e = guard_decode(|| -> Result<(), DecodeError> { std::panic::panic_any(7u32) });
        assert_eq!(e, Err(DecodeError::Panicked("(no message)".into())));
        // What the guard lets through unchanged: the result, good or bad.
        assert_eq!(guard_decode(|| Ok(3)), Ok(3));
        assert_eq!(
            guard_decode(|| -> Result<(), _> { Err(DecodeError::Empty) }),
            Err(DecodeError::Empty)
        );
        // The process goes on after the panics above (the profile unwinds, it does not abort),
        // and decodes the next image.
        assert_eq!(
            decode(&[], &DecodeLimits::default()),
            Err(DecodeError::Empty)
        );
    }
}
