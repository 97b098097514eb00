//! Where an image's faces are: the face detector's boxes filtered by `embed.min_face_score`,
//! `embed.min_face_px` and `embed.max_face_outside`; one face (the subject: near the centre,
//! scoring near the best) or all of them (reading order); the `embed.no_face` fallback to the
//! fixed box.

use crate::embed::chip::Preprocessor;
use crate::embed::image::RgbImage;
use crate::embed::landmarks;
use crate::embed::outcome::{EmbedError, Located};

/// The detector and the `embed.*` settings that decide which box an image's face comes from.
pub struct Locator {
    pub detector: crate::embed::detect::FaceDetector,
    pub no_face: crate::config::NoFace,
    pub min_face_px: u32,
    pub min_face_score: f32,
    /// The fraction of a face box's width or height that may lie outside the image.
    pub max_face_outside: f32,
    pub max_side: u32,
    /// `embed.refine_box`: the detector's boxes between its grid positions and pyramid levels.
    pub refine_box: bool,
    /// `faces_per_image = "all"`: every certain face, not only the subject.
    pub all: bool,
}

/// Candidates this far below `min_face_score` still make an image `face_uncertain`, not `no_face`.
const UNCERTAIN_MARGIN: f32 = 0.5;

/// With `faces_per_image = "one"`, the subject is chosen among the faces scoring within this much
/// of the best (a bystander at the centre scores lower than the subject off it).
pub const SUBJECT_MARGIN: f32 = 0.1;

/// Of those, a face whose centre lies within this fraction of the image's shorter side from the
/// image's centre is the subject (the crop was centred on it) ...
pub const SUBJECT_CENTRE: f64 = 0.1;

/// ... and otherwise the face nearest the centre among those at least this fraction of the
/// largest one's side (an off-centre crop still shows its subject large).
///
/// The three were fitted on LFW's TRAINING identities only (`tools/dlib/subject_rule.py`: 2,708
/// pair images, 165 with several faces, each moved as the verify variants move it; BENCHMARKS.md,
/// section 10). The wrong face in the several-face trials, centred / shifted / on a larger canvas /
/// tight: nearest the centre alone 0 / 12.2 / 34.8 / 0%; the best score alone 10.3% everywhere;
/// nearest among the margin 0 / 4.9 / 14.4 / 0%; this rule 0 / 3.2 / 9.4 / 0% (size 0.9 alone,
/// with no central test: 2.4 / 3.3 / 7.4 / 0%; a central test of 0.05 / 0.15: 1.2 / 3.3 / 7.7 and
/// 0 / 3.3 / 11.5%; a size fraction of 0.95 the same as 0.9, 0.8 as no size test). Measured in
/// the picture's `content_box` instead of the whole image (the pictures made as the variants make
/// them, JPEG 95): this rule 0 / 1.4 / 0 / 0%; nearest among the margin 0 / 0.2 / 0 / 0%, but that
/// one has nothing to fall back on when a crop is off-centre without a margin (4.9 / 14.4% above),
/// so the rule stays and the centre is the content box's.
pub const SUBJECT_SIZE: f64 = 0.9;

/// One face of an image: the box to start the landmarks from (None: the fixed box) and how it
/// was found.
pub type Spot = (Option<landmarks::Rect>, Option<Located>);

/// Where one image's faces are (one, or with `faces_per_image = "all"` every one found, in reading
/// order), or why the image is refused.
pub type Placement = Result<Vec<Spot>, EmbedError>;

impl Locator {
    /// A copy of `img` no longer than `max_side` for the detector, and the factor back.
    pub(crate) fn detector_input(&self, img: &RgbImage) -> Option<(RgbImage, f64)> {
        let long = img.width.max(img.height);
        (long > self.max_side as usize).then(|| {
            let s = self.max_side as f64 / long as f64;
            let (w, h) = (
                ((img.width as f64 * s).round() as usize).max(1),
                ((img.height as f64 * s).round() as usize).max(1),
            );
            let px = crate::embed::image::resize_bilinear(img, (0, 0, img.width, img.height), w, h);
            let scaled = RgbImage {
                width: w,
                height: h,
                pixels: px,
            };
            (scaled, img.width as f64 / w as f64)
        })
    }

    /// One placement per image, the detector batched over images of one size.
    pub(crate) fn place(
        &self,
        prep: &Preprocessor,
        images: &[&RgbImage],
        batch: usize,
    ) -> Result<Vec<Placement>, EmbedError> {
        let scaled: Vec<Option<(RgbImage, f64)>> =
            images.iter().map(|img| self.detector_input(img)).collect();
        let refs: Vec<&RgbImage> = images
            .iter()
            .zip(&scaled)
            .map(|(img, s)| s.as_ref().map_or(*img, |(i, _)| i))
            .collect();
        let found = self
            .detector
            .detect_with(
                &refs,
                self.min_face_score - UNCERTAIN_MARGIN,
                batch,
                self.refine_box,
            )
            .map_err(|e| EmbedError::Model(format!("face detector: {e}")))?;
        Ok(images
            .iter()
            .zip(found)
            .zip(&scaled)
            .map(|((img, dets), s)| {
                let k = s.as_ref().map_or(1.0, |(_, k)| *k);
                let boxes: Vec<(landmarks::Rect, f32)> = dets
                    .iter()
                    .map(|d| {
                        let r = landmarks::Rect {
                            left: (d.rect.l as f64 * k).round() as i64,
                            top: (d.rect.t as f64 * k).round() as i64,
                            right: (d.rect.r as f64 * k).round() as i64,
                            bottom: (d.rect.b as f64 * k).round() as i64,
                        };
                        (r, d.confidence)
                    })
                    .collect();
                self.choose(prep, img, &boxes)
            })
            .collect())
    }

    /// The faces to embed among one image's candidates (`boxes`, in image pixels, best first).
    fn choose(
        &self,
        prep: &Preprocessor,
        img: &RgbImage,
        boxes: &[(landmarks::Rect, f32)],
    ) -> Placement {
        let size = format!("{}x{}", img.width, img.height);
        let side = |r: &landmarks::Rect| r.width().min(r.height());
        let spot = |r: landmarks::Rect, score: f32| {
            let located = Located {
                face_box: [r.left, r.top, r.right, r.bottom],
                outcome: "detected",
                score: Some(score),
            };
            (Some(r), Some(located))
        };
        let mut certain: Vec<(landmarks::Rect, f32)> = boxes
            .iter()
            .copied()
            .filter(|(_, c)| *c >= self.min_face_score)
            .collect();
        if !certain.is_empty() {
            let too_small = |r: &landmarks::Rect| {
                EmbedError::FaceTooSmall(format!(
                    "the face found is {} px, below embed.min_face_px = {}",
                    side(r),
                    self.min_face_px
                ))
            };
            let outside = |r: &landmarks::Rect| outside_fraction(r, img.width, img.height);
            let cut = |r: &landmarks::Rect| {
                EmbedError::FaceCut(format!(
                    "the face's box [{}, {}, {}, {}] has {:.0}% of its side past the edges of the {size} image (beyond what its size forces), more than embed.max_face_outside = {}",
                    r.left,
                    r.top,
                    r.right,
                    r.bottom,
                    100.0 * outside(r),
                    self.max_face_outside
                ))
            };
            // A face is usable when big enough and whole enough; the first refusal reported is
            // the size, then the border.
            let refuse = |r: &landmarks::Rect| {
                if side(r) < i64::from(self.min_face_px) {
                    Some(too_small(r))
                } else if outside(r) > f64::from(self.max_face_outside) {
                    Some(cut(r))
                } else {
                    None
                }
            };
            if self.all {
                // Every usable face, in reading order; only if none is: why the best one is not
                // (face_cut before face_too_small when some face is big enough).
                let first = certain
                    .iter()
                    .find(|(r, _)| side(r) >= i64::from(self.min_face_px))
                    .unwrap_or(&certain[0])
                    .0;
                certain.retain(|(r, _)| refuse(r).is_none());
                if certain.is_empty() {
                    return Err(refuse(&first).expect("refused"));
                }
                return Ok(reading_order(certain)
                    .into_iter()
                    .map(|(r, c)| spot(r, c))
                    .collect());
            }
            // (one face is the subject wherever the picture is: no margins to look for)
            let area = if certain.len() > 1 {
                content_box(img)
            } else {
                [0, 0, img.width, img.height]
            };
            let (r, c) = subject(certain, area);
            if let Some(e) = refuse(&r) {
                return Err(e);
            }
            return Ok(vec![spot(r, c)]);
        }
        let best = boxes.first().map(|(_, c)| *c);
        let (outcome, why) = match best {
            Some(b) => (
                "face_uncertain",
                format!(
                    "the best candidate in the {size} image scored {b:.3}, below embed.min_face_score = {}",
                    self.min_face_score
                ),
            ),
            None => (
                "no_face",
                format!("the detector found nothing in the {size} image"),
            ),
        };
        if self.no_face == crate::config::NoFace::Reject {
            return Err(if best.is_some() {
                EmbedError::FaceUncertain(why)
            } else {
                EmbedError::NoFace(why)
            });
        }
        let Some(rect) = prep.fixed_box(img.width, img.height) else {
            return Ok(vec![(None, None)]);
        };
        if side(&rect) < i64::from(self.min_face_px) {
            return Err(EmbedError::FaceTooSmall(format!(
                "{why}, and the fixed box of the {size} image is {} px, below embed.min_face_px = {}",
                side(&rect),
                self.min_face_px
            )));
        }
        let located = Located {
            face_box: [rect.left, rect.top, rect.right, rect.bottom],
            outcome,
            score: best,
        };
        Ok(vec![(None, Some(located))])
    }
}

/// How far the border cuts `r` in a `w` x `h` image: per axis, the part of the box past the edges
/// beyond what its size forces (a box longer than the image must overflow by the difference), as
/// a fraction of its side; the larger axis. A face bigger than a tight crop is not cut by it; a
/// face pushed off the frame is.
pub fn outside_fraction(r: &landmarks::Rect, w: usize, h: usize) -> f64 {
    let (w, h) = (w as i64, h as i64);
    let beyond = |lo: i64, hi: i64, n: i64| {
        let out = (-lo).max(0) + (hi - (n - 1)).max(0);
        let forced = (hi - lo + 1 - n).max(0);
        (out - forced).max(0) as f64
    };
    let fw = beyond(r.left, r.right, w) / r.width().max(1) as f64;
    let fh = beyond(r.top, r.bottom, h) / r.height().max(1) as f64;
    fw.max(fh)
}

/// A picture's rows or columns at an edge whose every pixel lies within this many levels (each
/// channel) of that edge's corner pixel are a margin (padding, a letterbox), not the picture.
pub const MARGIN_TOLERANCE: u8 = 10;

/// The part of `img` inside its uniform margins, `[x0, y0, x1, y1)`: the picture a crop was
/// made from when it was pasted on a plain canvas or padded where it met the photo's edge. Each
/// edge is trimmed on its own (the top and left against the top-left pixel, the bottom against
/// the bottom-left, the right against the top-right); the whole image when what is left is under
/// a quarter of its width or height (a plain image, a plain backdrop).
pub fn content_box(img: &RgbImage) -> [usize; 4] {
    let (w, h) = (img.width, img.height);
    let near = |p: [u8; 3], q: [u8; 3]| (0..3).all(|c| p[c].abs_diff(q[c]) <= MARGIN_TOLERANCE);
    let row = |y: usize, r: [u8; 3]| (0..w).all(|x| near(img.rgb(x, y), r));
    let col = |x: usize, r: [u8; 3]| (0..h).all(|y| near(img.rgb(x, y), r));
    if w == 0 || h == 0 {
        return [0, 0, w, h];
    }
    let (tl, bl, tr) = (img.rgb(0, 0), img.rgb(0, h - 1), img.rgb(w - 1, 0));
    let top = (0..h).take_while(|&y| row(y, tl)).count();
    let bottom = (0..h).rev().take_while(|&y| row(y, bl)).count();
    let left = (0..w).take_while(|&x| col(x, tl)).count();
    let right = (0..w).rev().take_while(|&x| col(x, tr)).count();
    let (x0, y0) = (left, top);
    let (x1, y1) = (w.saturating_sub(right), h.saturating_sub(bottom));
    if x1 < x0 + w.div_ceil(4) || y1 < y0 + h.div_ceil(4) {
        return [0, 0, w, h];
    }
    [x0, y0, x1, y1]
}

/// The subject among an image's certain faces (not empty), within the picture's `area`
/// (`[x0, y0, x1, y1)`, its `content_box`): of those scoring within `SUBJECT_MARGIN` of the best,
/// the one nearest the area's centre when it lies within `SUBJECT_CENTRE` of the area's shorter
/// side from it; otherwise the one nearest that centre among those at least `SUBJECT_SIZE` of the
/// largest one's side (ties: the one listed first).
pub fn subject(mut faces: Vec<(landmarks::Rect, f32)>, area: [usize; 4]) -> (landmarks::Rect, f32) {
    let top = faces.iter().map(|(_, c)| *c).fold(f32::MIN, f32::max);
    faces.retain(|(_, c)| *c >= top - SUBJECT_MARGIN);
    let [x0, y0, x1, y1] = area;
    let (w, h) = (x1 - x0, y1 - y0);
    let (cx, cy) = (
        ((x0 + x1) as f64 - 1.0) / 2.0,
        ((y0 + y1) as f64 - 1.0) / 2.0,
    );
    let dist = |r: &landmarks::Rect| {
        let x = (r.left + r.right) as f64 / 2.0;
        let y = (r.top + r.bottom) as f64 / 2.0;
        (x - cx).hypot(y - cy)
    };
    let nearest = |faces: &[(landmarks::Rect, f32)]| {
        *faces
            .iter()
            .min_by(|a, b| dist(&a.0).total_cmp(&dist(&b.0)))
            .expect("not empty")
    };
    let central = nearest(&faces);
    if dist(&central.0) <= SUBJECT_CENTRE * w.min(h) as f64 {
        return central;
    }
    let side = |r: &landmarks::Rect| r.width().min(r.height()) as f64;
    let largest = faces.iter().map(|(r, _)| side(r)).fold(0.0, f64::max);
    faces.retain(|(r, _)| side(r) >= SUBJECT_SIZE * largest);
    nearest(&faces)
}

/// Faces in reading order: rows from the top (a row is the highest face not yet placed and every
/// face whose vertical centre lies above that face's bottom), left to right within a row.
pub fn reading_order(mut faces: Vec<(landmarks::Rect, f32)>) -> Vec<(landmarks::Rect, f32)> {
    faces.sort_by_key(|(r, _)| (r.top, r.left, r.bottom, r.right));
    let mut out = Vec::with_capacity(faces.len());
    let mut i = 0;
    while i < faces.len() {
        let bottom = faces[i].0.bottom;
        let mut j = i + 1;
        while j < faces.len() && (faces[j].0.top + faces[j].0.bottom) / 2 <= bottom {
            j += 1;
        }
        let mut row = faces[i..j].to_vec();
        row.sort_by_key(|(r, _)| (r.left, r.top, r.right, r.bottom));
        out.extend(row);
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(left: i64, top: i64, side: i64) -> (landmarks::Rect, f32) {
        let r = landmarks::Rect {
            left,
            top,
            right: left + side - 1,
            bottom: top + side - 1,
        };
        (r, 1.0)
    }

    #[test]
    fn the_subject_is_the_central_face_among_the_best_scored() {
        let scored = |l, t, side, score| {
            let (r, _) = rect(l, t, side);
            (r, score)
        };
        // A bystander at the centre scoring 0.3 below the subject off it: the subject.
        let subject_off = scored(10, 10, 90, 1.05);
        let bystander = scored(110, 110, 60, 0.75);
        assert_eq!(
            subject(vec![bystander, subject_off], [0, 0, 250, 250])
                .0
                .left,
            10
        );
        // Two faces scoring alike: the one nearer the centre.
        let near = scored(90, 90, 80, 1.0);
        let far = scored(0, 0, 80, 1.04);
        assert_eq!(subject(vec![far, near], [0, 0, 250, 250]).0.left, 90);
        // Neither near the centre: a small face nearer the centre loses to a large one.
        let small = scored(60, 60, 40, 1.0);
        let large = scored(160, 150, 90, 1.0);
        assert_eq!(subject(vec![small, large], [0, 0, 250, 250]).0.left, 160);
        // The small face at the centre: the crop was centred on it.
        let small = scored(105, 105, 40, 1.0);
        assert_eq!(subject(vec![large, small], [0, 0, 250, 250]).0.left, 105);
        // One face: that one.
        assert_eq!(subject(vec![bystander], [0, 0, 250, 250]).1, 0.75);
        // The same crop pasted at (300, 20) of a plain 560 px canvas: the picture's centre, not
        // the canvas's, decides (the canvas's centre is nearer the bystander's new place).
        let at = |(r, c): (landmarks::Rect, f32)| {
            let m = landmarks::Rect {
                left: r.left + 300,
                top: r.top + 20,
                right: r.right + 300,
                bottom: r.bottom + 20,
            };
            (m, c)
        };
        let (near, far) = (scored(100, 100, 50, 1.0), scored(0, 200, 50, 1.0));
        let picked = subject(vec![at(far), at(near)], [300, 20, 550, 270]);
        assert_eq!(picked.0.left, 400);
        assert_eq!(
            subject(vec![at(far), at(near)], [0, 0, 560, 560]).0.left,
            300
        );
    }

    #[test]
    fn content_box_trims_plain_margins_and_nothing_else() {
        // A textured 40 x 30 picture at (25, 10) of a 100 x 60 grey canvas, with JPEG-like noise
        // of up to 3 levels on the grey.
        let (w, h) = (100usize, 60usize);
        let mut px = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let i = (y * w + x) * 3;
                let inside = (25..65).contains(&x) && (10..40).contains(&y);
                let v = if inside {
                    ((x * 37 + y * 91) % 251) as u8
                } else {
                    128 + ((x + y) % 4) as u8
                };
                px[i..i + 3].fill(v);
            }
        }
        let img = RgbImage::new(w, h, px).unwrap();
        assert_eq!(content_box(&img), [25, 10, 65, 40]);
        // A plain image, or a picture that would be under a quarter of it: the whole image.
        let plain = RgbImage::new(w, h, vec![128u8; w * h * 3]).unwrap();
        assert_eq!(content_box(&plain), [0, 0, w, h]);
        let mut speck = vec![128u8; w * h * 3];
        speck[(30 * w + 50) * 3..(30 * w + 50) * 3 + 3].fill(0);
        let speck = RgbImage::new(w, h, speck).unwrap();
        assert_eq!(content_box(&speck), [0, 0, w, h]);
        // Textured to every edge: nothing trimmed.
        let full: Vec<u8> = (0..w * h * 3).map(|i| ((i / 3) * 37 % 251) as u8).collect();
        let full = RgbImage::new(w, h, full).unwrap();
        assert_eq!(content_box(&full), [0, 0, w, h]);
    }

    #[test]
    fn faces_come_in_rows_top_down_and_left_to_right() {
        // A row of three at slightly different heights, a second row of two, one far below.
        let faces = vec![
            rect(500, 12, 90),
            rect(10, 20, 100),
            rect(260, 0, 95),
            rect(300, 200, 80),
            rect(40, 230, 90),
            rect(100, 600, 50),
        ];
        let lefts: Vec<i64> = reading_order(faces).iter().map(|(r, _)| r.left).collect();
        assert_eq!(lefts, [10, 260, 500, 40, 300, 100]);
    }

    #[test]
    fn a_box_overflowing_both_edges_alike_is_not_cut() {
        // A face bigger than a tight 125 px crop (a box of 138): 7 px past the left edge and 6
        // past the right, 18 past the bottom; 13 of them forced by its size.
        let tight = landmarks::Rect {
            left: -7,
            top: 5,
            right: 130,
            bottom: 142,
        };
        let f = outside_fraction(&tight, 125, 125);
        assert!((f - 5.0 / 138.0).abs() < 1e-9, "{f}");
        assert!(f < 0.1);
    }

    #[test]
    fn a_box_reaching_past_the_edges_is_measured_by_its_worse_side() {
        let r = landmarks::Rect {
            left: -20,
            top: 10,
            right: 79,
            bottom: 109,
        };
        assert!((outside_fraction(&r, 250, 250) - 0.2).abs() < 1e-9);
        let r = landmarks::Rect {
            left: 10,
            top: 200,
            right: 109,
            bottom: 299,
        };
        assert!((outside_fraction(&r, 250, 250) - 0.5).abs() < 1e-9);
        let inside = landmarks::Rect {
            left: 0,
            top: 0,
            right: 249,
            bottom: 249,
        };
        assert_eq!(outside_fraction(&inside, 250, 250), 0.0);
    }
}
