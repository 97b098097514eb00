//! The photo check (`clip-cluster verify --photos N`): collages of 2 to 6 LFW images on one grey
//! canvas, as a media pipeline sends a group photo, embedded with `embed.faces_per_image = "all"`.
//! Each placed image should give one face (of those whose box centre is inside the image's tile,
//! the one nearest the tile's centre), embedded as the same image embedded alone gives it
//! (`faces_per_image = "one"`), compared by cosine.
//!
//! Collages: the distinct images of pairs.txt (or of a people list's people, `--people`), shuffled with a fixed seed, taken 2 to 6 at a time
//! in a grid of up to 3 columns, a random gap of 0 to 40 px between and around the tiles, grey 128
//! elsewhere. The same on every machine.

use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::embed::image::{DecodeLimits, RgbImage};
use crate::embed::FaceEmbedder;
use crate::eval::dataset::DatasetError;

/// What the photo check measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhotoReport {
    pub model_id: String,
    pub collages: usize,
    /// Images placed on the collages.
    pub placed: usize,
    /// Placed images with a face found in their tile.
    pub found: usize,
    pub found_fraction: f64,
    /// Faces found outside every tile, or besides the one nearest a tile's centre (LFW images
    /// hold bystanders).
    pub extra: usize,
    /// Found faces whose vector is within cosine 0.99 of the image embedded alone.
    pub within_099: usize,
    pub within_099_fraction: f64,
    pub cosine_min: f64,
    pub cosine_median: f64,
    /// Each found face below cosine 0.99: its image, the cosine, and the box the landmarks started
    /// from alone and in the collage (moved to the image's own pixels).
    pub below_099: Vec<PhotoMiss>,
    /// Collages refused whole (the reason, e.g. no_face), and images refused alone.
    pub refused: Vec<String>,
    pub seconds: f64,
}

/// A face embedded differently in a collage than alone.
#[derive(Debug, Clone, Serialize)]
pub struct PhotoMiss {
    pub image: String,
    pub cosine: f64,
    pub box_alone: Option<[i64; 4]>,
    pub box_in_photo: Option<[i64; 4]>,
}

/// The cosine to the image embedded alone that a face in a collage must reach.
const WITHIN: f64 = 0.99;

struct Tile {
    image: usize,
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

fn paste(canvas: &mut RgbImage, img: &RgbImage, x: usize, y: usize) {
    for r in 0..img.height {
        let src = r * img.width * 3;
        let dst = ((y + r) * canvas.width + x) * 3;
        canvas.pixels[dst..dst + img.width * 3]
            .copy_from_slice(&img.pixels[src..src + img.width * 3]);
    }
}

/// Builds the collages over `images` (decoded), `n` of them at most.
fn collages(images: &[RgbImage], n: usize, seed: u64) -> Vec<(RgbImage, Vec<Tile>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..images.len()).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
    let mut out = Vec::new();
    let mut at = 0;
    while out.len() < n {
        let k = rng.gen_range(2..=6usize);
        if at + k > order.len() {
            break;
        }
        let parts = &order[at..at + k];
        at += k;
        let cols = k.min(3);
        let rows = k.div_ceil(cols);
        let gap = rng.gen_range(0..=40usize);
        let cw = images[parts[0]].width.max(1);
        let ch = images[parts[0]].height.max(1);
        let (w, h) = (cols * (cw + gap) + gap, rows * (ch + gap) + gap);
        let mut canvas = RgbImage {
            width: w,
            height: h,
            pixels: vec![128; w * h * 3],
        };
        let mut tiles = Vec::new();
        for (i, &p) in parts.iter().enumerate() {
            let img = &images[p];
            if img.width > cw || img.height > ch {
                continue;
            }
            let (x, y) = (gap + (i % cols) * (cw + gap), gap + (i / cols) * (ch + gap));
            paste(&mut canvas, img, x, y);
            tiles.push(Tile {
                image: p,
                x,
                y,
                w: img.width,
                h: img.height,
            });
        }
        out.push((canvas, tiles));
    }
    out
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// Runs the check on `n` collages of the LFW root's pair images: `all` embeds every face of a
/// collage, `one` each image alone.
pub fn photos(
    root: &Path,
    all: &dyn FaceEmbedder,
    one: &dyn FaceEmbedder,
    n: usize,
    people: Option<&Path>,
    progress: &dyn Fn(usize, usize),
) -> Result<PhotoReport, DatasetError> {
    let start = Instant::now();
    let mut keys = match people {
        None => {
            let (_, pairs) = crate::eval::lfw::read_pairs(&root.join("pairs.txt"))
                .map_err(|e| DatasetError::Model(e.to_string()))?;
            crate::eval::lfw::pair_images(&pairs)
        }
        Some(list) => crate::eval::lfw::read_people(list)
            .map_err(|e| DatasetError::Model(e.to_string()))?
            .into_iter()
            .flat_map(|(name, count)| (1..=count).map(move |i| (name.clone(), i)))
            .collect(),
    };
    // Enough images for n collages of up to 6.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
    rand::seq::SliceRandom::shuffle(keys.as_mut_slice(), &mut rng);
    keys.truncate((6 * n).min(keys.len()));
    keys.sort();
    let limits = DecodeLimits::default();
    let mut images = Vec::with_capacity(keys.len());
    for (name, i) in &keys {
        let path = crate::eval::lfw::image_path(root, name, *i);
        let bytes = std::fs::read(&path).map_err(|source| DatasetError::Read {
            path: path.clone(),
            source,
        })?;
        let img = crate::embed::image::decode(&bytes, &limits)
            .map_err(|e| DatasetError::Model(format!("{}: {e}", path.display())))?;
        images.push(img);
    }
    let sheets = collages(&images, n, 15);
    let mut report = PhotoReport {
        model_id: all.model_id(),
        collages: sheets.len(),
        placed: 0,
        found: 0,
        found_fraction: 0.0,
        extra: 0,
        within_099: 0,
        within_099_fraction: 0.0,
        cosine_min: f64::NAN,
        cosine_median: f64::NAN,
        below_099: Vec::new(),
        refused: Vec::new(),
        seconds: 0.0,
    };
    let mut cosines = Vec::new();
    let model = |e: &crate::embed::EmbedError| match e {
        crate::embed::EmbedError::Model(m) => Some(DatasetError::Model(m.clone())),
        _ => None,
    };
    for (c, chunk) in sheets.chunks(8).enumerate() {
        let refs: Vec<&RgbImage> = chunk.iter().map(|(img, _)| img).collect();
        let found = all.embed_images_all(&refs);
        for ((_, tiles), r) in chunk.iter().zip(found) {
            report.placed += tiles.len();
            let faces = match r {
                Ok(f) => f,
                Err(e) => {
                    if let Some(m) = model(&e) {
                        return Err(m);
                    }
                    report.refused.push(e.class().to_string());
                    continue;
                }
            };
            let singles: Vec<&RgbImage> = tiles.iter().map(|t| &images[t.image]).collect();
            let alone = one.embed_images(&singles);
            // Each tile's face is the one the image embedded alone would choose: the subject
            // rule (`embed::locate::subject`) over the faces detected in the tile, with the tile
            // as the picture; other faces (a bystander in the picture) count as extra.
            let mut in_tile: Vec<Vec<(crate::embed::landmarks::Rect, f32, usize)>> =
                vec![Vec::new(); tiles.len()];
            for (i, f) in faces.iter().enumerate() {
                let Some(l) = f.located.as_ref().filter(|l| l.outcome == "detected") else {
                    report.extra += 1;
                    continue;
                };
                let [fl, ft, fr, fb] = l.face_box;
                let (x, y) = ((fl + fr) as f64 / 2.0, (ft + fb) as f64 / 2.0);
                let tile = tiles.iter().position(|t| {
                    (t.x as f64..(t.x + t.w) as f64).contains(&x)
                        && (t.y as f64..(t.y + t.h) as f64).contains(&y)
                });
                let Some(t) = tile else {
                    report.extra += 1;
                    continue;
                };
                let r = crate::embed::landmarks::Rect {
                    left: fl,
                    top: ft,
                    right: fr,
                    bottom: fb,
                };
                in_tile[t].push((r, l.score.unwrap_or(0.0), i));
            }
            let mut best: Vec<Option<usize>> = vec![None; tiles.len()];
            for (t, cands) in in_tile.iter().enumerate() {
                if cands.is_empty() {
                    continue;
                }
                report.extra += cands.len() - 1;
                let tc = &tiles[t];
                let area = [tc.x, tc.y, tc.x + tc.w, tc.y + tc.h];
                let (r, _) = crate::embed::locate::subject(
                    cands.iter().map(|(r, c, _)| (*r, *c)).collect(),
                    area,
                );
                best[t] = cands.iter().find(|(q, _, _)| *q == r).map(|(_, _, i)| *i);
            }
            for (t, b) in best.iter().enumerate() {
                let Some(i) = b else { continue };
                report.found += 1;
                match &alone[t] {
                    Ok(a) => {
                        let c = cosine(&faces[*i].vector, &a.vector);
                        if c < WITHIN {
                            let tc = &tiles[t];
                            let (dx, dy) = (tc.x as i64, tc.y as i64);
                            let (name, n) = &keys[tc.image];
                            report.below_099.push(PhotoMiss {
                                image: format!("{name}_{n:04}"),
                                cosine: c,
                                box_alone: a.located.as_ref().map(|l| l.face_box),
                                box_in_photo: faces[*i].located.as_ref().map(|l| {
                                    let [l, t, r, b] = l.face_box;
                                    [l - dx, t - dy, r - dx, b - dy]
                                }),
                            });
                        }
                        cosines.push(c);
                    }
                    Err(e) => {
                        if let Some(m) = model(e) {
                            return Err(m);
                        }
                        report.refused.push(format!("alone: {}", e.class()));
                    }
                }
            }
        }
        progress((c * 8 + chunk.len()).min(sheets.len()), sheets.len());
    }
    cosines.sort_by(f64::total_cmp);
    report.found_fraction = report.found as f64 / report.placed.max(1) as f64;
    report.within_099 = cosines.iter().filter(|c| **c >= WITHIN).count();
    report.within_099_fraction = report.within_099 as f64 / cosines.len().max(1) as f64;
    if !cosines.is_empty() {
        report.cosine_min = cosines[0];
        report.cosine_median = cosines[cosines.len() / 2];
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collages_place_every_image_once_without_overlap() {
        let images: Vec<RgbImage> = (0..40u8)
            .map(|i| RgbImage {
                width: 20,
                height: 20,
                pixels: vec![i; 20 * 20 * 3],
            })
            .collect();
        let sheets = collages(&images, 10, 3);
        assert_eq!(sheets.len(), 10);
        let mut seen = std::collections::HashSet::new();
        for (canvas, tiles) in &sheets {
            assert!((2..=6).contains(&tiles.len()));
            for t in tiles {
                assert!(seen.insert(t.image), "image {} placed twice", t.image);
                let px = ((t.y + 5) * canvas.width + t.x + 5) * 3;
                assert_eq!(canvas.pixels[px], t.image as u8);
            }
        }
        // The same on every run.
        let again = collages(&images, 10, 3);
        assert_eq!(again[3].0.pixels, sheets[3].0.pixels);
    }
}
