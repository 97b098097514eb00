//! dlib's 5-point face landmarks, without dlib: the shape predictor read from dlib's own
//! `shape_predictor_5_face_landmarks.dat` (the chip they align is in `align`). `chip::Preprocessor`
//! calls this in `ChipMode::Aligned`.
//!
//! References (dlib 19.x/20.x headers; the Python wheel used for the fixtures is dlib 20.0.1):
//! - `dlib/image_processing/shape_predictor.h`: the cascade of regression-tree forests
//!   (Kazemi and Sullivan, "One Millisecond Face Alignment with an Ensemble of Regression Trees",
//!   CVPR 2014), its file layout, `find_tform_between_shapes`, `unnormalizing_tform`,
//!   `extract_feature_pixel_values`;
//! - `dlib/geometry/point_transforms.h`: `find_similarity_transform` (Umeyama);
//! - `dlib/image_transforms/interpolation.h`: `get_face_chip_details`, `chip_details`,
//!   `extract_image_chips`, `interpolate_bilinear`;
//! - `dlib/image_transforms/image_pyramid.h`: `pyramid_down<2>` for RGB;
//! - `dlib/pixel.h`: grey of an RGB pixel = `(r + g + b) / 3` in integers; a double assigned to a
//!   byte is clamped to 0..=255 and truncated.
//!
//! What is exact: the arithmetic follows dlib's types operation by operation (f32 where dlib uses
//! float, f64 where it uses double, its rounding `floor(x + 0.5)` to integer points, its
//! truncating pixel writes). Where dlib solves a least-squares problem with an SVD or a
//! pseudo-inverse (the similarity and affine transforms) we use the closed forms, which agree to
//! a few units in the last place of a double; a result can then differ from dlib's only where a
//! value falls within ~1e-13 of a rounding boundary. The tests compare landmarks and chips with
//! the real dlib on synthetic and LFW images.

use std::path::Path;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::embed::dlib_format::{FormatError, Reader};
use crate::embed::image::RgbImage;

/// An integer pixel position, as dlib's `point` (landmarks are rounded to whole pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Point {
    pub x: i64,
    pub y: i64,
}

/// dlib's `rectangle`: inclusive corners, so `width = right - left + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub left: i64,
    pub top: i64,
    pub right: i64,
    pub bottom: i64,
}

impl Rect {
    pub fn is_empty(&self) -> bool {
        self.top > self.bottom || self.left > self.right
    }
    pub fn width(&self) -> i64 {
        if self.is_empty() {
            0
        } else {
            self.right - self.left + 1
        }
    }
    pub fn height(&self) -> i64 {
        if self.is_empty() {
            0
        } else {
            self.bottom - self.top + 1
        }
    }
}

/// The face box the predictor runs on when there is no detector: a centred square of side
/// `floor(fraction * min(w, h) + 0.5)` at `((w - side) / 2, (h - side) / 2)`. For LFW-style crops
/// (2.2x the detector box) a fraction near 1/2.2 puts it where a detector would.
pub fn centred_box(width: usize, height: usize, fraction: f64) -> Rect {
    let short = width.min(height);
    let side = ((fraction * short as f64 + 0.5).floor().max(1.0) as usize) as i64;
    let left = (width as i64 - side).div_euclid(2);
    let top = (height as i64 - side).div_euclid(2);
    Rect {
        left,
        top,
        right: left + side - 1,
        bottom: top + side - 1,
    }
}

/// A linear map from 5 landmarks to a face box, in a frame that follows the face: with `c` the
/// landmarks' centroid, `s` their RMS distance from it and `q` the 10 coordinates `(p - c) / s`
/// (x0, y0, x1, y1, ...), the box centre is `c + s * (cx . q + cx[10], cy . q + cy[10])` and its
/// side `s * (side . q + side[10])`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxMap {
    /// Centre x offset: 10 weights on `q`, then the constant.
    pub cx: [f64; 11],
    /// Centre y offset: 10 weights on `q`, then the constant.
    pub cy: [f64; 11],
    /// Side: 10 weights on `q`, then the constant.
    pub side: [f64; 11],
}

/// The box dlib's HOG frontal face detector (`get_frontal_face_detector()`, upsample 1, the
/// detection nearest the image centre) draws around a face, predicted from the landmarks.
/// Fitted by least squares on LFW's training identities only (peopleDevTrain.txt, 9479
/// images with a detection; never peopleDevTest.txt or a pair list):
/// `python3 tools/dlib/fit_refined_box.py --lfw ../shared/data/lfw --models models
/// --out tools/dlib/refined_box.json` (dlib 20.0.1). On peopleDevTest.txt's
/// identities (held out, 3687 of 3708) the box corners lie 4.1 px from the detector's
/// (the fixed box: 7.5 px) and the landmarks predicted from it 0.40 px from dlib's on the
/// detector box (from the fixed box: 0.47 px).
pub const DETECTOR_BOX_MAP: BoxMap = BoxMap {
    cx: [
        -0.38899819981480127,
        0.04426500658045622,
        -0.5744607379629312,
        0.18296298553449994,
        0.9231541036966022,
        0.2090467862261371,
        0.10493217932355711,
        0.04866202499979851,
        -0.06462734524242976,
        -0.48493680334089867,
        2.477197895158183,
    ],
    cy: [
        0.8259104241693442,
        0.025715734016092562,
        0.38978430845777556,
        -0.426069240901268,
        -0.9624207089975019,
        0.07222364484344694,
        -0.27885498419828564,
        -0.43243111123427563,
        0.025580960568671384,
        0.7605609732760149,
        -2.999542114410501,
    ],
    side: [
        -2.395981902494104,
        2.0021165500800953,
        -1.6235200512562389,
        -1.262230581611049,
        2.302323734092454,
        1.8067823546649224,
        1.8213406282823912,
        -0.635160812646587,
        -0.1041624086245176,
        -1.9115075104874235,
        14.675340173636233,
    ],
};

/// The face box `map` predicts from `parts`: a square of side `floor(side + 0.5)` (at least 1)
/// whose left and top are `floor(centre - side / 2 + 0.5)`, as `tools/dlib/lfw_common.py`
/// `refined_box` computes it.
pub fn refined_box(parts: &[Point; N_PARTS], map: &BoxMap) -> Rect {
    let n = N_PARTS as f64;
    let cx = parts.iter().map(|p| p.x as f64).sum::<f64>() / n;
    let cy = parts.iter().map(|p| p.y as f64).sum::<f64>() / n;
    let ms = parts
        .iter()
        .map(|p| (p.x as f64 - cx).powi(2) + (p.y as f64 - cy).powi(2))
        .sum::<f64>()
        / n;
    // Five landmarks on one pixel would give s = 0; a unit scale keeps the box finite.
    let s = ms.sqrt().max(1.0);
    let mut q = [0.0f64; 2 * N_PARTS];
    for (i, p) in parts.iter().enumerate() {
        q[2 * i] = (p.x as f64 - cx) / s;
        q[2 * i + 1] = (p.y as f64 - cy) / s;
    }
    let apply = |w: &[f64; 11]| q.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + w[10];
    let (bx, by) = (cx + s * apply(&map.cx), cy + s * apply(&map.cy));
    let side = ((s * apply(&map.side) + 0.5).floor().max(1.0)) as i64;
    let left = (bx - side as f64 / 2.0 + 0.5).floor() as i64;
    let top = (by - side as f64 / 2.0 + 0.5).floor() as i64;
    Rect {
        left,
        top,
        right: left + side - 1,
        bottom: top + side - 1,
    }
}

/// Why a shape predictor file could not be used. Loading happens at start-up, so these are fatal
/// configuration errors, not per-image ones.
#[derive(Debug, Error)]
pub enum AlignError {
    #[error(
        "cannot read shape predictor {path}: {source} (fetch it with tools/dlib/fetch_models.sh)"
    )]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable dlib 5-point shape predictor: {detail}")]
    Model { path: String, detail: String },
}

/// One split node: go left when `feature[idx1] - feature[idx2] > thresh`.
#[derive(Debug, Clone, Copy)]
struct Split {
    idx1: u32,
    idx2: u32,
    thresh: f32,
}

/// A complete binary regression tree: `splits.len() + 1` leaves, each a shape increment.
#[derive(Debug, Clone)]
struct Tree {
    splits: Vec<Split>,
    /// `n_leaves * n_coords` values, leaf-major.
    leaves: Vec<f32>,
}

/// dlib's `shape_predictor` for 5 landmarks: a cascade of forests; each level reads pixel
/// intensities at points defined relative to the current shape estimate.
#[derive(Clone)]
pub struct ShapePredictor {
    /// The mean shape in box-normalised coordinates, x0 y0 x1 y1 ... (10 values).
    initial_shape: Vec<f32>,
    forests: Vec<Vec<Tree>>,
    /// Per cascade level, per feature pixel: the landmark it is anchored to ...
    anchor_idx: Vec<Vec<u32>>,
    /// ... and its offset from that landmark in the initial shape.
    deltas: Vec<Vec<[f32; 2]>>,
    /// Hex SHA-256 of the file, for the preprocessing id in the state fingerprint.
    sha256: String,
}

/// Landmarks the face chip needs (dlib's 5-point scheme).
pub const N_PARTS: usize = 5;

impl std::fmt::Debug for ShapePredictor {
    /// A summary: the trees are megabytes of numbers.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShapePredictor")
            .field("levels", &self.forests.len())
            .field("trees", &self.forests.iter().map(Vec::len).sum::<usize>())
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl ShapePredictor {
    /// Reads `shape_predictor_5_face_landmarks.dat`.
    pub fn load(path: &Path) -> Result<Self, AlignError> {
        let bytes = std::fs::read(path).map_err(|source| AlignError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses dlib's serialization of a shape predictor; `name` labels errors.
    ///
    /// Layout (`serialize(const shape_predictor&)`): int version (1); `matrix<float,0,1>`
    /// initial_shape; `vector<vector<regression_tree>>` forests, a tree being
    /// `vector<split_feature{ulong idx1, ulong idx2, float thresh}>` then
    /// `vector<matrix<float,0,1>>` leaf values; `vector<vector<ulong>>` anchor_idx;
    /// `vector<vector<vector<float,2>>>` deltas (x then y). Every index is checked, so a bad file
    /// is an error here rather than a panic at prediction time.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self, AlignError> {
        let bad = |detail: String| AlignError::Model {
            path: name.to_string(),
            detail,
        };
        let fmt = |e: FormatError| bad(e.to_string());
        let mut r = Reader::new(bytes);
        let version = r.int().map_err(fmt)?;
        if version != 1 {
            return Err(bad(format!(
                "shape_predictor version {version}, expected 1"
            )));
        }
        let (nr, nc, init) = r.matrix(1 << 16).map_err(fmt)?;
        if nc != 1 || nr != 2 * N_PARTS {
            return Err(bad(format!(
                "initial shape is {nr}x{nc}, expected {}x1 ({N_PARTS} landmarks)",
                2 * N_PARTS
            )));
        }
        let initial_shape: Vec<f32> = init.iter().map(|&v| v as f32).collect();
        let n_coords = initial_shape.len();

        let n_levels = r.count("cascade levels", 1 << 10).map_err(fmt)?;
        let mut forests = Vec::with_capacity(n_levels);
        for _ in 0..n_levels {
            let n_trees = r.count("trees per level", 1 << 16).map_err(fmt)?;
            let mut trees = Vec::with_capacity(n_trees);
            for _ in 0..n_trees {
                let n_splits = r.count("splits", 1 << 16).map_err(fmt)?;
                let mut splits = Vec::with_capacity(n_splits);
                for _ in 0..n_splits {
                    let idx1 = r.count("split idx1", u32::MAX as u64).map_err(fmt)? as u32;
                    let idx2 = r.count("split idx2", u32::MAX as u64).map_err(fmt)? as u32;
                    let thresh = r.float().map_err(fmt)? as f32;
                    splits.push(Split { idx1, idx2, thresh });
                }
                let n_leaves = r.count("leaves", 1 << 17).map_err(fmt)?;
                if n_leaves != n_splits + 1 || !n_leaves.is_power_of_two() {
                    return Err(bad(format!(
                        "tree with {n_splits} splits and {n_leaves} leaves is not complete"
                    )));
                }
                let mut leaves = Vec::with_capacity(n_leaves * n_coords);
                for _ in 0..n_leaves {
                    let (lr, lc, v) = r.matrix(1 << 16).map_err(fmt)?;
                    if lr * lc != n_coords {
                        return Err(bad(format!(
                            "leaf of {lr}x{lc} values, expected {n_coords}"
                        )));
                    }
                    leaves.extend(v.iter().map(|&x| x as f32));
                }
                trees.push(Tree { splits, leaves });
            }
            forests.push(trees);
        }
        let n = r.count("anchor levels", 1 << 10).map_err(fmt)?;
        let mut anchor_idx = Vec::with_capacity(n);
        for _ in 0..n {
            let m = r.count("anchors", 1 << 20).map_err(fmt)?;
            let level = (0..m)
                .map(|_| {
                    r.count("anchor index", (N_PARTS - 1) as u64)
                        .map(|v| v as u32)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(fmt)?;
            anchor_idx.push(level);
        }
        let n = r.count("delta levels", 1 << 10).map_err(fmt)?;
        let mut deltas = Vec::with_capacity(n);
        for _ in 0..n {
            let m = r.count("deltas", 1 << 20).map_err(fmt)?;
            let mut level = Vec::with_capacity(m);
            for _ in 0..m {
                let x = r.float().map_err(fmt)? as f32;
                let y = r.float().map_err(fmt)? as f32;
                level.push([x, y]);
            }
            deltas.push(level);
        }
        if !r.at_end() {
            return Err(bad(format!(
                "{} trailing bytes after the model",
                bytes.len() - r.offset()
            )));
        }
        if anchor_idx.len() != n_levels || deltas.len() != n_levels {
            return Err(bad(format!(
                "{n_levels} forests but {} anchor and {} delta levels",
                anchor_idx.len(),
                deltas.len()
            )));
        }
        for (level, trees) in forests.iter().enumerate() {
            let n_features = deltas[level].len();
            if anchor_idx[level].len() != n_features {
                return Err(bad(format!(
                    "level {level}: {} anchors for {n_features} deltas",
                    anchor_idx[level].len()
                )));
            }
            if let Some(s) = trees
                .iter()
                .flat_map(|t| &t.splits)
                .find(|s| s.idx1 as usize >= n_features || s.idx2 as usize >= n_features)
            {
                return Err(bad(format!(
                    "level {level}: split reads feature {} of {n_features}",
                    s.idx1.max(s.idx2)
                )));
            }
        }
        let sha256 = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(ShapePredictor {
            initial_shape,
            forests,
            anchor_idx,
            deltas,
            sha256,
        })
    }

    /// Hex SHA-256 of the model file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The 5 landmarks of the face in `rect`, as dlib's `shape_predictor::operator()(img, rect)`
    /// on an RGB image: dlib's order is (right-of-image eye outer corner, its inner corner, the
    /// other eye's outer corner, its inner corner, the base of the nose).
    pub fn predict(&self, img: &RgbImage, rect: Rect) -> [Point; N_PARTS] {
        let shape = self.predict_normalised(img, rect);
        let mut parts = [Point::default(); N_PARTS];
        for (i, p) in parts.iter_mut().enumerate() {
            *p = to_image(rect, shape[2 * i], shape[2 * i + 1]);
        }
        parts
    }

    /// The landmarks after `passes` predictions (at least one): the first on `rect`, each
    /// further one on the box `map` derives from the previous landmarks (`refined_box`). With a
    /// fixed box in place of a face detector, a second pass starts the predictor from a box like
    /// the ones it was trained on.
    pub fn predict_passes(
        &self,
        img: &RgbImage,
        rect: Rect,
        passes: u32,
        map: &BoxMap,
    ) -> [Point; N_PARTS] {
        let mut parts = self.predict(img, rect);
        for _ in 1..passes {
            parts = self.predict(img, refined_box(&parts, map));
        }
        parts
    }

    /// The landmarks of every pass of `predict_passes`, first to last (`passes.max(1)` of them).
    pub fn predict_each_pass(
        &self,
        img: &RgbImage,
        rect: Rect,
        passes: u32,
        map: &BoxMap,
    ) -> Vec<[Point; N_PARTS]> {
        let mut all = vec![self.predict(img, rect)];
        for _ in 1..passes {
            let last = all[all.len() - 1];
            all.push(self.predict(img, refined_box(&last, map)));
        }
        all
    }

    /// The final shape in box-normalised coordinates (before `unnormalizing_tform`).
    fn predict_normalised(&self, img: &RgbImage, rect: Rect) -> Vec<f32> {
        let mut shape = self.initial_shape.clone();
        let mut features = Vec::new();
        for (level, trees) in self.forests.iter().enumerate() {
            // extract_feature_pixel_values: the initial->current similarity (linear part only,
            // cast to float as dlib does), applied to each delta in float, added to its anchor
            // landmark in float, then mapped to pixels in double and rounded to the nearest pixel.
            let t = similarity_linear_f32(&self.initial_shape, &shape);
            features.clear();
            for (d, &a) in self.deltas[level].iter().zip(&self.anchor_idx[level]) {
                let a = a as usize;
                let x = (t[0][0] * d[0] + t[0][1] * d[1]) + shape[2 * a];
                let y = (t[1][0] * d[0] + t[1][1] * d[1]) + shape[2 * a + 1];
                let p = to_image(rect, x, y);
                let v = if p.x >= 0
                    && p.y >= 0
                    && (p.x as usize) < img.width
                    && (p.y as usize) < img.height
                {
                    let [r, g, b] = img.rgb(p.x as usize, p.y as usize);
                    ((u32::from(r) + u32::from(g) + u32::from(b)) / 3) as f32
                } else {
                    0.0
                };
                features.push(v);
            }
            for tree in trees {
                let mut i = 0usize;
                while i < tree.splits.len() {
                    let s = tree.splits[i];
                    i = if features[s.idx1 as usize] - features[s.idx2 as usize] > s.thresh {
                        2 * i + 1
                    } else {
                        2 * i + 2
                    };
                }
                let leaf = i - tree.splits.len();
                let n = shape.len();
                for (c, v) in shape.iter_mut().zip(&tree.leaves[leaf * n..(leaf + 1) * n]) {
                    *c += *v;
                }
            }
        }
        shape
    }
}

/// `unnormalizing_tform(rect)` then dlib's conversion to an integer point: (0,0) maps to the top
/// left corner and (1,1) to the bottom right one (inclusive), so the scale is `right - left`.
#[inline]
fn to_image(rect: Rect, x: f32, y: f32) -> Point {
    let fx = (rect.right - rect.left) as f64 * f64::from(x) + rect.left as f64;
    let fy = (rect.bottom - rect.top) as f64 * f64::from(y) + rect.top as f64;
    Point {
        x: (fx + 0.5).floor() as i64,
        y: (fy + 0.5).floor() as i64,
    }
}

/// Umeyama's least-squares similarity `to ~ c R from + t` for 2-D points, in dlib's order of
/// double operations for the means, variance and covariance. For 2-D the optimum has a closed
/// form: with `cov = [[a, b], [c, d]]`, `c R = [[a + d, b - c], [c - b, a + d]] / sigma_from`,
/// which is what dlib's SVD computes (`trace(D S)` is `hypot(a + d, c - b)`, including its
/// reflection handling).
pub(crate) fn similarity(from: &[[f64; 2]], to: &[[f64; 2]]) -> ([[f64; 2]; 2], [f64; 2]) {
    let n = from.len() as f64;
    let (mut mf, mut mt) = ([0.0f64; 2], [0.0f64; 2]);
    for (f, t) in from.iter().zip(to) {
        mf[0] += f[0];
        mf[1] += f[1];
        mt[0] += t[0];
        mt[1] += t[1];
    }
    mf = [mf[0] / n, mf[1] / n];
    mt = [mt[0] / n, mt[1] / n];
    let mut sigma_from = 0.0;
    let mut cov = [[0.0f64; 2]; 2];
    for (f, t) in from.iter().zip(to) {
        let df = [f[0] - mf[0], f[1] - mf[1]];
        let dt = [t[0] - mt[0], t[1] - mt[1]];
        sigma_from += df[0] * df[0] + df[1] * df[1];
        for r in 0..2 {
            for c in 0..2 {
                cov[r][c] += dt[r] * df[c];
            }
        }
    }
    sigma_from /= n;
    for row in cov.iter_mut() {
        for v in row.iter_mut() {
            *v /= n;
        }
    }
    let p = cov[0][0] + cov[1][1];
    let q = cov[1][0] - cov[0][1];
    // dlib keeps c = 1 when the source points coincide; the rotation is then undefined anyway.
    let s = if sigma_from != 0.0 {
        1.0 / sigma_from
    } else {
        1.0
    };
    let m = [[p * s, -q * s], [q * s, p * s]];
    let b = [
        mt[0] - (m[0][0] * mf[0] + m[0][1] * mf[1]),
        mt[1] - (m[1][0] * mf[0] + m[1][1] * mf[1]),
    ];
    (m, b)
}

/// `matrix_cast<float>(find_tform_between_shapes(from, to).get_m())` for flat x,y shapes.
fn similarity_linear_f32(from: &[f32], to: &[f32]) -> [[f32; 2]; 2] {
    let pts = |s: &[f32]| {
        s.chunks_exact(2)
            .map(|p| [f64::from(p[0]), f64::from(p[1])])
            .collect::<Vec<_>>()
    };
    let (m, _) = similarity(&pts(from), &pts(to));
    [
        [m[0][0] as f32, m[0][1] as f32],
        [m[1][0] as f32, m[1][1] as f32],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_transform() {
        let from = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0]];
        let (a, s, t) = (0.3f64, 2.5, [10.0, -4.0]);
        let to: Vec<[f64; 2]> = from
            .iter()
            .map(|p| {
                [
                    s * (a.cos() * p[0] - a.sin() * p[1]) + t[0],
                    s * (a.sin() * p[0] + a.cos() * p[1]) + t[1],
                ]
            })
            .collect();
        let (m, b) = similarity(&from, &to);
        assert!((m[0][0] - s * a.cos()).abs() < 1e-12 && (m[1][0] - s * a.sin()).abs() < 1e-12);
        assert!((m[0][1] + s * a.sin()).abs() < 1e-12 && (m[1][1] - s * a.cos()).abs() < 1e-12);
        assert!((b[0] - t[0]).abs() < 1e-12 && (b[1] - t[1]).abs() < 1e-12);
    }

    #[test]
    fn centred_box_for_lfw() {
        assert_eq!(
            centred_box(250, 250, 1.0 / 2.2),
            Rect {
                left: 68,
                top: 68,
                right: 181,
                bottom: 181
            }
        );
        assert_eq!(
            centred_box(300, 200, 0.5),
            Rect {
                left: 100,
                top: 50,
                right: 199,
                bottom: 149
            }
        );
    }

    /// Golden boxes from `tools/dlib/lfw_common.py` `refined_box` with the coefficients of
    /// `tools/dlib/refined_box.json`: the first landmarks are dlib's on AJ_Cook_0001 (whose HOG
    /// detector box is (67, 80, 175, 187)), the second a larger, tilted face, the last degenerate.
    #[test]
    fn refined_box_matches_the_fit_script() {
        let pts = |v: [[i64; 2]; N_PARTS]| v.map(|[x, y]| Point { x, y });
        let rect = |left, top, right, bottom| Rect {
            left,
            top,
            right,
            bottom,
        };
        let map = &DETECTOR_BOX_MAP;
        let aj_cook = pts([[157, 115], [140, 116], [96, 116], [113, 116], [119, 146]]);
        assert_eq!(refined_box(&aj_cook, map), rect(67, 79, 177, 189));
        let tilted = pts([[300, 180], [270, 190], [200, 215], [230, 205], [250, 260]]);
        assert_eq!(refined_box(&tilted, map), rect(140, 118, 362, 340));
        assert_eq!(
            refined_box(&[Point { x: 5, y: 5 }; N_PARTS], map),
            rect(0, -5, 14, 9)
        );
    }

    #[test]
    fn bad_model_files_are_typed_errors() {
        let e = ShapePredictor::from_bytes(&[], "empty.dat").unwrap_err();
        assert!(e.to_string().contains("empty.dat"), "{e}");
        // version 2
        let e = ShapePredictor::from_bytes(&[0x01, 0x02], "v2.dat").unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        // version 1, then a 3x1 initial shape of zeros (mantissa 0, exponent 0)
        let bytes = [0x01, 0x01, 0x01, 0x03, 0x01, 0x01, 0, 0, 0, 0, 0, 0];
        let e = ShapePredictor::from_bytes(&bytes, "x.dat").unwrap_err();
        assert!(e.to_string().contains("initial shape is 3x1"), "{e}");
    }
}
