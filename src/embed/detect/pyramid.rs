//! dlib's tiled image pyramid, the input of the MMOD detector (`input_rgb_image_pyramid
//! <pyramid_down<6>>`): the image and its 5/6, 25/36, ... scalings packed into one tensor, so one
//! forward pass of the fully convolutional network scans every scale. Also the geometry that maps
//! a window found in that tensor back to the image.
//!
//! References (dlib 20): `dlib/image_transforms/image_pyramid.h`
//! (`compute_tiled_image_pyramid_details`, `tiled_pyramid_to_image`, `pyramid_down<N>::point_up`),
//! `dlib/dnn/input.h` (`input_image_pyramid::create_tiled_pyramid`: levels are resized from the
//! previous level with `resize_bilinear` on the normalised float tensor, padding 10, outer
//! padding 11), `dlib/image_transforms/interpolation.h` (`resize_image`, bilinear).

/// dlib's `rectangle`: inclusive integer corners (`width = right - left + 1`), empty when
/// `left > right` or `top > bottom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IRect {
    pub l: i64,
    pub t: i64,
    pub r: i64,
    pub b: i64,
}

impl IRect {
    /// `rectangle(width, height)`: the rectangle at the origin.
    pub fn sized(width: i64, height: i64) -> IRect {
        IRect {
            l: 0,
            t: 0,
            r: width - 1,
            b: height - 1,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.l > self.r || self.t > self.b
    }
    pub fn width(&self) -> i64 {
        if self.is_empty() {
            0
        } else {
            self.r - self.l + 1
        }
    }
    pub fn height(&self) -> i64 {
        if self.is_empty() {
            0
        } else {
            self.b - self.t + 1
        }
    }
    pub fn area(&self) -> i64 {
        self.width() * self.height()
    }
    pub fn intersect(&self, o: &IRect) -> IRect {
        IRect {
            l: self.l.max(o.l),
            t: self.t.max(o.t),
            r: self.r.min(o.r),
            b: self.b.min(o.b),
        }
    }
    fn translate(&self, x: i64, y: i64) -> IRect {
        IRect {
            l: self.l + x,
            t: self.t + y,
            r: self.r + x,
            b: self.b + y,
        }
    }
    pub(crate) fn contains(&self, x: i64, y: i64) -> bool {
        self.l <= x && x <= self.r && self.t <= y && y <= self.b
    }
}

/// dlib's `drectangle` (double corners) as `[left, top, right, bottom]`.
pub type DRect = [f64; 4];

/// `drectangle` -> `rectangle`: each corner rounded to the nearest integer, halves away from zero
/// (`std::round`; dlib 20 on George_W_Bush_0022 gives left -13 for -12.5).
pub fn round_rect(d: DRect) -> IRect {
    let r = |v: f64| v.round() as i64;
    IRect {
        l: r(d[0]),
        t: r(d[1]),
        r: r(d[2]),
        b: r(d[3]),
    }
}

/// `centered_drect(p, width, height)`.
pub fn centered_drect(x: f64, y: f64, width: f64, height: f64) -> DRect {
    let (w, h) = ((width - 1.0) / 2.0, (height - 1.0) / 2.0);
    [x - w, y - h, x + w, y + h]
}

/// The pyramid's downsampling: `pyramid_down<N>` keeps (N-1)/N of each side per level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pyramid {
    pub n: u32,
    /// Space between tiles, and around the whole (dlib 20: 10 and 11).
    pub padding: i64,
    pub outer_padding: i64,
}

/// Where each level of one image lies in the tiled tensor, and the tensor's size.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub rows: usize,
    pub cols: usize,
    /// Level 0 (the image) first.
    pub rects: Vec<IRect>,
}

impl Pyramid {
    fn rate(&self) -> f64 {
        (f64::from(self.n) - 1.0) / f64::from(self.n)
    }

    /// `compute_tiled_image_pyramid_details`: levels down to 5 rows, the first column of tiles
    /// top to bottom, the rest right-aligned bottom to top beside them, stopping before a tile
    /// would overlap the image.
    pub fn layout(&self, rows: usize, cols: usize) -> Layout {
        let (padding, outer) = (self.padding, self.outer_padding);
        if rows * cols == 0 {
            return Layout {
                rows: 0,
                cols: 0,
                rects: Vec::new(),
            };
        }
        let (mut nr, mut nc) = (rows as i64, cols as i64);
        let mut rects = vec![IRect::sized(nc, nr)];
        let rate = self.rate();
        loop {
            nr = (rate * nr as f64).floor() as i64;
            nc = (rate * nc as f64).floor() as i64;
            if nr * nc == 0 || nr < 5 {
                break;
            }
            rects.push(IRect::sized(nc, nr));
        }
        let first = rects[0];
        let total_height: i64 =
            rects.iter().map(|r| r.height() + padding).sum::<i64>() - 2 * padding;
        let (mut height, mut prev_width) = (0i64, 0i64);
        for r in &rects {
            if r.width() <= first.width() - prev_width - padding
                && (height - first.height()) * 2 >= total_height - first.height()
            {
                break;
            }
            height += r.height() + padding;
            prev_width = r.width();
        }
        height -= padding;
        let width = first.width();
        let (out_rows, out_cols) = (height + 2 * outer, width + 2 * outer);

        let mut y = outer;
        let mut i = 0;
        while y < height + outer && i < rects.len() {
            rects[i] = rects[i].translate(outer, y);
            y += rects[i].height() + padding;
            i += 1;
        }
        y -= padding;
        while i < rects.len() {
            // rectangle(p1, p1 - br_corner): right-aligned, its bottom at y - 1.
            let (px, py) = (outer + width - 1, y - 1);
            let rect = IRect {
                l: px - rects[i].r,
                t: py - rects[i].b,
                r: px,
                b: py,
            };
            if !rects[0].intersect(&rect).is_empty() {
                break;
            }
            rects[i] = rect;
            y -= rects[i].height() + padding;
            i += 1;
        }
        rects.truncate(i);
        Layout {
            rows: out_rows as usize,
            cols: out_cols as usize,
            rects,
        }
    }

    /// `pyramid_down<N>::point_up`, `levels` times.
    fn point_up(&self, mut x: f64, mut y: f64, levels: usize) -> (f64, f64) {
        let ratio = f64::from(self.n) / (f64::from(self.n) - 1.0);
        for _ in 0..levels {
            x = x * ratio + 0.3;
            y = y * ratio + 0.3;
        }
        (x, y)
    }

    /// The inverse of `point_up`: an image point on level `levels`.
    fn point_down(&self, mut x: f64, mut y: f64, levels: usize) -> (f64, f64) {
        let ratio = f64::from(self.n) / (f64::from(self.n) - 1.0);
        for _ in 0..levels {
            x = (x - 0.3) / ratio;
            y = (y - 0.3) / ratio;
        }
        (x, y)
    }

    /// An image point on level `level`, in the tiled tensor.
    pub(crate) fn image_to_tensor(
        &self,
        layout: &Layout,
        x: f64,
        y: f64,
        level: usize,
    ) -> (f64, f64) {
        let o = layout.rects[level];
        let (x, y) = self.point_down(x, y, level);
        (x + o.l as f64, y + o.t as f64)
    }

    /// `tiled_pyramid_to_image`: the level whose tile is nearest the rectangle's centre, then
    /// the rectangle relative to that tile scaled up to the image.
    pub fn tensor_to_image(&self, layout: &Layout, r: DRect) -> DRect {
        let (cx, cy) = ((r[0] + r[2]) / 2.0, (r[1] + r[3]) / 2.0);
        let level = nearest_rect(&layout.rects, cx, cy);
        let o = layout.rects[level];
        let (l, t) = self.point_up(r[0] - o.l as f64, r[1] - o.t as f64, level);
        let (rr, b) = self.point_up(r[2] - o.l as f64, r[3] - o.t as f64, level);
        [l, t, rr, b]
    }
}

/// `nearest_rect`: the first rectangle containing the point (rounded to integers as dlib's
/// `point` conversion does), else the one at the least distance.
fn nearest_rect(rects: &[IRect], x: f64, y: f64) -> usize {
    let (px, py) = ((x + 0.5).floor() as i64, (y + 0.5).floor() as i64);
    let mut best = (f64::INFINITY, 0);
    for (i, r) in rects.iter().enumerate() {
        if r.contains(px, py) {
            return i;
        }
        let dx = (px.clamp(r.l, r.r) - px) as f64;
        let dy = (py.clamp(r.t, r.b) - py) as f64;
        let d = (dx * dx + dy * dy).sqrt();
        if d < best.0 {
            best = (d, i);
        }
    }
    best.1
}

/// Builds one image's tiled pyramid into `out` (3 planes of `layout.rows * layout.cols`, zeros
/// outside the tiles): level 0 is `(pixel - mean) / 256` per channel, each further level the
/// previous one resized by dlib's bilinear `resize_image`.
pub fn fill(layout: &Layout, width: usize, rgb: &[u8], mean: [f32; 3], out: &mut [f32]) {
    let plane = layout.rows * layout.cols;
    debug_assert_eq!(out.len(), 3 * plane);
    let Some(first) = layout.rects.first() else {
        return;
    };
    for c in 0..3 {
        let p = &mut out[c * plane..(c + 1) * plane];
        for (y, row) in rgb.chunks_exact(width * 3).enumerate() {
            let base = (first.t as usize + y) * layout.cols + first.l as usize;
            for (x, px) in row.chunks_exact(3).enumerate() {
                p[base + x] = (f32::from(px[c]) - mean[c]) / 256.0;
            }
        }
        for i in 1..layout.rects.len() {
            resize_within(p, layout.cols, layout.rects[i - 1], layout.rects[i]);
        }
    }
}

/// dlib's bilinear `resize_image` from the tile `src` to the tile `dst` of one plane of row
/// stride `stride` (the tiles never overlap). Coordinates advance by accumulation, as dlib's do.
fn resize_within(plane: &mut [f32], stride: usize, src: IRect, dst: IRect) {
    let (in_nr, in_nc) = (src.height(), src.width());
    let (out_nr, out_nc) = (dst.height(), dst.width());
    let x_scale = (in_nc - 1) as f64 / (out_nc - 1).max(1) as f64;
    let y_scale = (in_nr - 1) as f64 / (out_nr - 1).max(1) as f64;
    let at = |p: &[f32], r: i64, c: i64| -> f64 {
        f64::from(p[(src.t + r) as usize * stride + (src.l + c) as usize])
    };
    let mut y = -y_scale;
    for r in 0..out_nr {
        y += y_scale;
        let top = y.floor() as i64;
        let bottom = (top + 1).min(in_nr - 1);
        let tb = y - top as f64;
        let mut x = -x_scale;
        for c in 0..out_nc {
            x += x_scale;
            let left = x.floor() as i64;
            let right = (left + 1).min(in_nc - 1);
            let lr = x - left as f64;
            let v = (1.0 - tb) * ((1.0 - lr) * at(plane, top, left) + lr * at(plane, top, right))
                + tb * ((1.0 - lr) * at(plane, bottom, left) + lr * at(plane, bottom, right));
            plane[(dst.t + r) as usize * stride + (dst.l + c) as usize] = v as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DLIB: Pyramid = Pyramid {
        n: 6,
        padding: 10,
        outer_padding: 11,
    };

    #[test]
    fn layout_tiles_do_not_overlap_and_fit() {
        for (rows, cols) in [(250, 250), (125, 125), (560, 560), (540, 800), (30, 400)] {
            let l = DLIB.layout(rows, cols);
            assert_eq!(
                l.rects[0],
                IRect::sized(cols as i64, rows as i64).translate(11, 11)
            );
            let bounds = IRect::sized(l.cols as i64, l.rows as i64);
            for (i, a) in l.rects.iter().enumerate() {
                assert_eq!(bounds.intersect(a), *a, "{rows}x{cols} level {i} outside");
                for b in &l.rects[i + 1..] {
                    assert!(
                        a.intersect(b).is_empty(),
                        "{rows}x{cols}: {a:?} overlaps {b:?}"
                    );
                }
            }
            // Each level is floor(5/6) of the one before, down to 5 rows.
            for w in l.rects.windows(2) {
                assert_eq!(
                    w[1].height(),
                    (w[0].height() as f64 * 5.0 / 6.0).floor() as i64
                );
            }
            assert!(l.rects.last().map_or(0, IRect::height) >= 5);
        }
    }

    #[test]
    fn level_zero_maps_to_itself_and_level_one_scales_up() {
        let l = DLIB.layout(250, 250);
        let o = l.rects[0];
        let r = [
            o.l as f64 + 10.0,
            o.t as f64 + 20.0,
            o.l as f64 + 89.0,
            o.t as f64 + 99.0,
        ];
        assert_eq!(DLIB.tensor_to_image(&l, r), [10.0, 20.0, 89.0, 99.0]);
        let o1 = l.rects[1];
        let r1 = [
            o1.l as f64,
            o1.t as f64,
            o1.l as f64 + 50.0,
            o1.t as f64 + 50.0,
        ];
        let back = DLIB.tensor_to_image(&l, r1);
        assert!((back[0] - 0.3).abs() < 1e-12 && (back[2] - 60.3).abs() < 1e-12);
    }

    #[test]
    fn resize_keeps_constants_and_corners() {
        let l = DLIB.layout(40, 60);
        let mut out = vec![0f32; 3 * l.rows * l.cols];
        let rgb: Vec<u8> = (0..40 * 60)
            .flat_map(|i| [100u8, (i % 256) as u8, 7])
            .collect();
        fill(&l, 60, &rgb, [100.0, 0.0, 0.0], &mut out);
        let plane = l.rows * l.cols;
        for r in &l.rects {
            for y in r.t..=r.b {
                for x in r.l..=r.r {
                    assert_eq!(
                        out[y as usize * l.cols + x as usize],
                        0.0,
                        "constant red plane"
                    );
                }
            }
        }
        // The corners of every level equal the corners of the level above (bilinear endpoints).
        let g = &out[plane..2 * plane];
        for w in l.rects.windows(2) {
            let at = |r: i64, c: i64| g[r as usize * l.cols + c as usize];
            assert_eq!(at(w[0].t, w[0].l), at(w[1].t, w[1].l));
            assert_eq!(at(w[0].b, w[0].r), at(w[1].b, w[1].r));
        }
    }
}
