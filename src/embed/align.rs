//! dlib's aligned face chip, without dlib: `get_face_chip_details` (the similarity transform
//! from the 5 landmarks to dlib's mean face, with padding) and `extract_image_chips` (pyramid
//! down while the chip is much smaller than the face, then bilinear sampling), bit-exact with
//! dlib as `landmarks` describes. `chip::Preprocessor` calls this in `ChipMode::Aligned`.
//!
//! References: `dlib/image_transforms/interpolation.h` (`get_face_chip_details`, `chip_details`,
//! `extract_image_chips`, `interpolate_bilinear`), `dlib/image_transforms/image_pyramid.h`
//! (`pyramid_down<2>` for RGB).

use crate::embed::image::RgbImage;
use crate::embed::landmarks::{similarity, Point, Rect, N_PARTS};

/// dlib's `drectangle`: double corners, inclusive like `rectangle` (`width = right - left + 1`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct DRect {
    l: f64,
    t: f64,
    r: f64,
    b: f64,
}

impl DRect {
    const EMPTY: DRect = DRect {
        l: 0.0,
        t: 0.0,
        r: -1.0,
        b: -1.0,
    };
    fn point(p: [f64; 2]) -> DRect {
        DRect {
            l: p[0],
            t: p[1],
            r: p[0],
            b: p[1],
        }
    }
    fn is_empty(&self) -> bool {
        self.t > self.b || self.l > self.r
    }
    fn width(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            self.r - self.l + 1.0
        }
    }
    fn height(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            self.b - self.t + 1.0
        }
    }
    fn area(&self) -> f64 {
        self.width() * self.height()
    }
    fn union(self, o: DRect) -> DRect {
        if o.is_empty() {
            self
        } else if self.is_empty() {
            o
        } else {
            DRect {
                l: self.l.min(o.l),
                t: self.t.min(o.t),
                r: self.r.max(o.r),
                b: self.b.max(o.b),
            }
        }
    }
    fn intersect(self, o: DRect) -> DRect {
        DRect {
            l: self.l.max(o.l),
            t: self.t.max(o.t),
            r: self.r.min(o.r),
            b: self.b.min(o.b),
        }
    }
    fn center(&self) -> [f64; 2] {
        [(self.l + self.r) / 2.0, (self.t + self.b) / 2.0]
    }
    fn tl(&self) -> [f64; 2] {
        [self.l, self.t]
    }
    fn tr(&self) -> [f64; 2] {
        [self.r, self.t]
    }
    fn bl(&self) -> [f64; 2] {
        [self.l, self.b]
    }
    fn br(&self) -> [f64; 2] {
        [self.r, self.b]
    }
    /// dlib's conversion to `rectangle`: each corner rounded with `floor(x + 0.5)`.
    fn round(&self) -> Rect {
        let f = |v: f64| (v + 0.5).floor() as i64;
        Rect {
            left: f(self.l),
            top: f(self.t),
            right: f(self.r),
            bottom: f(self.b),
        }
    }
    /// `pyramid_down<2>::rect_down`: each corner `p / 2 - (1.25, 0.75)`.
    fn down(&self) -> DRect {
        let d = |p: [f64; 2]| DRect::point([p[0] / 2.0 - 1.25, p[1] / 2.0 - 0.75]);
        d(self.tl()).union(d(self.br()))
    }
}

/// `rotate_point(center, p, angle)`.
fn rotate(center: [f64; 2], p: [f64; 2], sin: f64, cos: f64) -> [f64; 2] {
    let (x, y) = (p[0] - center[0], p[1] - center[1]);
    [cos * x - sin * y + center[0], sin * x + cos * y + center[1]]
}

/// dlib's `chip_details`: where the chip lies in the image (a rectangle rotated by `angle` about
/// its centre) and its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChipDetails {
    rect: DRect,
    angle: f64,
    rows: usize,
    cols: usize,
}

/// dlib's mean 5-point face in chip coordinates (`get_face_chip_details`, 5 parts).
const MEAN_FACE_5: [[f64; 2]; N_PARTS] = [
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
];

/// `get_face_chip_details(det, size, padding)` for 5 landmarks.
pub fn face_chip_details(parts: &[Point; N_PARTS], size: usize, padding: f64) -> ChipDetails {
    let from: Vec<[f64; 2]> = MEAN_FACE_5
        .iter()
        .map(|p| {
            [
                (padding + p[0]) / (2.0 * padding + 1.0) * size as f64,
                (padding + p[1]) / (2.0 * padding + 1.0) * size as f64,
            ]
        })
        .collect();
    let to: Vec<[f64; 2]> = parts.iter().map(|p| [p.x as f64, p.y as f64]).collect();
    // chip_details(chip_points, img_points, dims)
    let (m, b) = similarity(&from, &to);
    let angle = m[1][0].atan2(m[0][0]);
    let scale = (m[0][0] * m[0][0] + m[1][0] * m[1][0]).sqrt();
    let half = [size as f64 / 2.0, size as f64 / 2.0];
    let c = [
        (m[0][0] * half[0] + m[0][1] * half[1]) + b[0],
        (m[1][0] * half[0] + m[1][1] * half[1]) + b[1],
    ];
    // centered_drect(c, cols * scale, rows * scale)
    let w = size as f64 * scale - 1.0;
    let h = size as f64 * scale - 1.0;
    let rect = DRect {
        l: c[0] - w / 2.0,
        t: c[1] - h / 2.0,
        r: c[0] + w / 2.0,
        b: c[1] + h / 2.0,
    };
    ChipDetails {
        rect,
        angle,
        rows: size,
        cols: size,
    }
}

/// dlib's aligned face chip: `extract_image_chip(img, get_face_chip_details(parts, size,
/// padding))`. Returns `size * size * 3` bytes, RGB HWC; chip pixels whose source falls outside
/// the image are black, as in dlib.
pub fn face_chip(img: &RgbImage, parts: &[Point; N_PARTS], size: usize, padding: f64) -> Vec<u8> {
    extract_image_chip(img, &face_chip_details(parts, size, padding))
}

/// A window into an RGB buffer (dlib's `sub_image`).
#[derive(Clone, Copy)]
struct View<'a> {
    pixels: &'a [u8],
    stride_px: usize,
    x0: usize,
    y0: usize,
    width: usize,
    height: usize,
}

impl<'a> View<'a> {
    fn of(img: &'a RgbImage) -> Self {
        View {
            pixels: &img.pixels,
            stride_px: img.width,
            x0: 0,
            y0: 0,
            width: img.width,
            height: img.height,
        }
    }
    #[inline]
    fn at(&self, x: usize, y: usize) -> &'a [u8] {
        let i = ((self.y0 + y) * self.stride_px + self.x0 + x) * 3;
        &self.pixels[i..i + 3]
    }
}

/// `pyramid_down<2>` for RGB (`impl::pyramid_down_2_1`): a 1-4-6-4-1 filter each way in 16-bit
/// integers, every other row and column kept, divided by 256 with truncation.
fn pyramid_down(src: View<'_>) -> RgbImage {
    if src.height <= 8 || src.width <= 8 {
        return RgbImage {
            width: 0,
            height: 0,
            pixels: Vec::new(),
        };
    }
    let tw = (src.width - 3) / 2;
    let (dw, dh) = (tw, (src.height - 3) / 2);
    let mut tmp = vec![0u16; src.height * tw * 3];
    for r in 0..src.height {
        for c in 0..tw {
            for ch in 0..3 {
                let p = |k: usize| u16::from(src.at(2 * c + k, r)[ch]);
                tmp[(r * tw + c) * 3 + ch] = p(0) + 4 * p(1) + 6 * p(2) + 4 * p(3) + p(4);
            }
        }
    }
    let mut out = vec![0u8; dw * dh * 3];
    for (dr, r) in (2..src.height - 2).step_by(2).enumerate().take(dh) {
        for c in 0..tw {
            for ch in 0..3 {
                let t = |rr: usize| tmp[(rr * tw + c) * 3 + ch];
                // The sum is at most 16 * 16 * 255 = 65280, inside dlib's uint16.
                let s = t(r - 2) + 4 * t(r - 1) + 6 * t(r) + 4 * t(r + 1) + t(r + 2);
                out[(dr * dw + c) * 3 + ch] = (s / 256) as u8;
            }
        }
    }
    RgbImage {
        width: dw,
        height: dh,
        pixels: out,
    }
}

/// `extract_image_chip(img, details)` with `interpolate_bilinear`: when the chip is much smaller
/// than its region, dlib first builds a `pyramid_down<2>` over the region's bounding box and
/// samples the level whose size is just above the chip's, so bilinear sampling never skips
/// pixels.
pub fn extract_image_chip(img: &RgbImage, d: &ChipDetails) -> Vec<u8> {
    let (rows, cols) = (d.rows, d.cols);
    let mut chip = vec![0u8; rows * cols * 3];
    // dlib requires a non-empty chip; without one the pyramid-depth loop below would not end.
    if rows * cols == 0 {
        return chip;
    }
    let size = (rows * cols) as f64;
    // No rotation and no scaling: a plain copy (black outside the image).
    if d.angle == 0.0 && rows as f64 == d.rect.height() && cols as f64 == d.rect.width() {
        let loc = d.rect.round();
        for r in 0..rows {
            for c in 0..cols {
                let (x, y) = (loc.left + c as i64, loc.top + r as i64);
                if x >= 0 && y >= 0 && (x as usize) < img.width && (y as usize) < img.height {
                    chip[(r * cols + c) * 3..(r * cols + c) * 3 + 3]
                        .copy_from_slice(View::of(img).at(x as usize, y as usize));
                }
            }
        }
        return chip;
    }

    // Pyramid depth and the bounding box of the rotated region, grown by the filter's reach.
    let mut depth = 0usize;
    let mut grow = 2.0f64;
    let mut rect = d.rect.down();
    while rect.area() > size {
        rect = rect.down();
        depth += 1;
        grow = grow * 2.0 + 2.0;
    }
    let (sin, cos) = (d.angle.sin(), d.angle.cos());
    let cent = d.rect.center();
    let rot = [d.rect.tl(), d.rect.tr(), d.rect.bl(), d.rect.br()]
        .iter()
        .fold(DRect::EMPTY, |acc, &p| {
            acc.union(DRect::point(rotate(cent, p, sin, cos)))
        });
    let img_rect = DRect {
        l: 0.0,
        t: 0.0,
        r: img.width as f64 - 1.0,
        b: img.height as f64 - 1.0,
    };
    let grown = DRect {
        l: rot.l - grow,
        t: rot.t - grow,
        r: rot.r + grow,
        b: rot.b + grow,
    };
    let bbox = grown.intersect(img_rect).round();
    if bbox.is_empty() {
        return chip;
    }
    // sub_image clips to the image; after the intersection above it already lies inside.
    let sub = View {
        pixels: &img.pixels,
        stride_px: img.width,
        x0: bbox.left.max(0) as usize,
        y0: bbox.top.max(0) as usize,
        width: (bbox.width() as usize).min(img.width),
        height: (bbox.height() as usize).min(img.height),
    };
    let mut levels: Vec<RgbImage> = Vec::with_capacity(depth);
    for i in 0..depth {
        let next = if i == 0 {
            pyramid_down(sub)
        } else {
            pyramid_down(View::of(&levels[i - 1]))
        };
        levels.push(next);
    }

    // Which level to sample, and the chip -> level affine map through three corners.
    let mut level: isize = -1;
    let mut rect = DRect {
        l: d.rect.l - bbox.left as f64,
        t: d.rect.t - bbox.top as f64,
        r: d.rect.r - bbox.left as f64,
        b: d.rect.b - bbox.top as f64,
    };
    while rect.down().area() > size {
        level += 1;
        rect = rect.down();
    }
    let c = rect.center();
    let (tl, tr, bl) = (
        rotate(c, rect.tl(), sin, cos),
        rotate(c, rect.tr(), sin, cos),
        rotate(c, rect.bl(), sin, cos),
    );
    let wx = (cols.max(2) - 1) as f64;
    let hy = (rows.max(2) - 1) as f64;
    let m = [
        [(tr[0] - tl[0]) / wx, (bl[0] - tl[0]) / hy],
        [(tr[1] - tl[1]) / wx, (bl[1] - tl[1]) / hy],
    ];
    let src = if level < 0 {
        sub
    } else {
        match levels.get(level as usize) {
            Some(l) => View::of(l),
            // dlib computes the same loop twice, so the level always exists; stay black if not.
            None => return chip,
        }
    };

    for r in 0..rows {
        for col in 0..cols {
            let (fc, fr) = (col as f64, r as f64);
            let x = (m[0][0] * fc + m[0][1] * fr) + tl[0];
            let y = (m[1][0] * fc + m[1][1] * fr) + tl[1];
            let (left, top) = (x.floor(), y.floor());
            // interpolate_bilinear: all four neighbours must be inside, else the background.
            if !(left >= 0.0
                && top >= 0.0
                && left + 1.0 < src.width as f64
                && top + 1.0 < src.height as f64)
            {
                continue;
            }
            let (li, ti) = (left as usize, top as usize);
            let (lr, tb) = (x - left, y - top);
            let (ptl, ptr, pbl, pbr) = (
                src.at(li, ti),
                src.at(li + 1, ti),
                src.at(li, ti + 1),
                src.at(li + 1, ti + 1),
            );
            let out = &mut chip[(r * cols + col) * 3..(r * cols + col) * 3 + 3];
            for ch in 0..3 {
                let v = (1.0 - tb) * ((1.0 - lr) * f64::from(ptl[ch]) + lr * f64::from(ptr[ch]))
                    + tb * ((1.0 - lr) * f64::from(pbl[ch]) + lr * f64::from(pbr[ch]));
                // dlib's assign_pixel(unsigned char, double): clamp, then truncate; `as` does both.
                out[ch] = v as u8;
            }
        }
    }
    chip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyramid_halves_and_keeps_flat_images_flat() {
        let img = RgbImage::new(41, 30, vec![90; 41 * 30 * 3]).unwrap();
        let d = pyramid_down(View::of(&img));
        assert_eq!((d.width, d.height), (19, 13));
        // 16 * 16 * 90 / 256 = 90
        assert!(d.pixels.iter().all(|&v| v == 90));
    }
}
