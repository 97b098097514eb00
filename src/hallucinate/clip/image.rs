//! CLIP's image preprocessing, bit for bit as open_clip's OpenAI transform with Pillow does it:
//! `Resize(size, BICUBIC)` of the shorter side, `CenterCrop(size)`, `ToTensor()`,
//! `Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)`.
//!
//! The resize is Pillow's `ImagingResample` (libImaging/Resample.c): separable, horizontal pass
//! then vertical, a bicubic kernel with a = -0.5 widened by the scale when shrinking (antialias),
//! coefficients normalized per output pixel and rounded to 22-bit fixed point, each pass rounding to
//! 8 bits. Sizes follow torchvision: the longer side becomes `int(size * long / short)`, the crop
//! offsets `int(round((n - size) / 2))` with Python's half-to-even `round`.

use image::RgbImage;

/// OpenAI's CLIP normalisation (open_clip `OPENAI_DATASET_MEAN` / `_STD`), digits as written
/// upstream (the f32 rounding is the same as PyTorch's float32 tensors of them).
#[allow(clippy::excessive_precision)]
pub const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Pillow's PRECISION_BITS for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// `[3, size, size]` normalized pixels (CHW), ready for the vision tower.
pub fn preprocess(img: &RgbImage, size: usize) -> Vec<f32> {
    let chip = resize_and_crop(img, size);
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in chip.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px.0[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    out
}

/// The 8-bit square the tower sees: shorter side resized to `size` (bicubic), centre-cropped.
pub fn resize_and_crop(img: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = if w <= h {
        (size, (size as f64 * h as f64 / w as f64) as usize)
    } else {
        ((size as f64 * w as f64 / h as f64) as usize, size)
    };
    let resized = resize_bicubic(img, nw, nh);
    let left = round_half_even((nw as f64 - size as f64) / 2.0);
    let top = round_half_even((nh as f64 - size as f64) / 2.0);
    crop(&resized, left, top, size)
}

/// Python 3's `round` (to the nearest integer, ties to even), then `int`.
fn round_half_even(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// Pillow's crop: pixels outside the image are black (never happens for CLIP's crop of a resized
/// image, but a negative offset is well defined).
fn crop(img: &RgbImage, left: i64, top: i64, size: usize) -> RgbImage {
    let mut out = RgbImage::new(size as u32, size as u32);
    for y in 0..size as i64 {
        for x in 0..size as i64 {
            let (sx, sy) = (x + left, y + top);
            if sx >= 0 && sy >= 0 && (sx as u32) < img.width() && (sy as u32) < img.height() {
                out.put_pixel(x as u32, y as u32, *img.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output index, the first input index
/// and the fixed-point weights.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let w: Vec<f64> = (0..n)
                .map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    let v = k * (1u32 << PRECISION_BITS) as f64;
                    if k < 0.0 {
                        (-0.5 + v) as i32
                    } else {
                        (0.5 + v) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((w, h), BICUBIC)` for RGB images (identity when the size is unchanged,
/// as Pillow returns a copy then).
pub fn resize_bicubic(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    if (in_w, in_h) == (out_w, out_h) {
        return img.clone();
    }
    let src = img.as_raw();
    // Horizontal pass (skipped when the width is unchanged, as Pillow does).
    let (tmp, tmp_w) = if out_w != in_w {
        let coeffs = coefficients(in_w, out_w);
        let mut tmp = vec![0u8; out_w * in_h * 3];
        for y in 0..in_h {
            let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for (x, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &kk) in k.iter().enumerate() {
                        acc += row[(xmin + i) * 3 + c] as i64 * kk as i64;
                    }
                    tmp[(y * out_w + x) * 3 + c] = clip8(acc);
                }
            }
        }
        (tmp, out_w)
    } else {
        (src.to_vec(), in_w)
    };
    // Vertical pass.
    let out = if out_h != in_h {
        let coeffs = coefficients(in_h, out_h);
        let mut out = vec![0u8; tmp_w * out_h * 3];
        for (y, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..tmp_w {
                for c in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &kk) in k.iter().enumerate() {
                        acc += tmp[((ymin + i) * tmp_w + x) * 3 + c] as i64 * kk as i64;
                    }
                    out[(y * tmp_w + x) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    } else {
        tmp
    };
    RgbImage::from_raw(out_w as u32, out_h as u32, out).expect("buffer sized for the image")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_round_is_half_to_even() {
        for (x, want) in [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (8.5, 8),
            (9.5, 10),
            (1.4, 1),
            (1.6, 2),
            (0.0, 0),
        ] {
            assert_eq!(round_half_even(x), want, "{x}");
        }
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(40, 35), (29, 32), (224, 224), (1000, 224), (7, 224)] {
            for (_, k) in coefficients(i, o) {
                let s: i64 = k.iter().map(|&v| v as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    #[test]
    fn flat_images_stay_flat_and_sizes_follow_torchvision() {
        let img = RgbImage::from_pixel(50, 30, image::Rgb([10, 200, 77]));
        let out = resize_and_crop(&img, 16);
        assert_eq!(out.dimensions(), (16, 16));
        assert!(out.pixels().all(|p| p.0 == [10, 200, 77]));
        let p = preprocess(&img, 16);
        assert_eq!(p.len(), 3 * 16 * 16);
        assert!((p[0] - (10.0 / 255.0 - MEAN[0]) / STD[0]).abs() < 1e-6);
    }
}
