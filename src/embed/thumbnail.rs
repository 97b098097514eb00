//! A small JPEG of a face for people to look at (the review page): the square around the face
//! box, 1.6 times its side (hair and chin in view), clamped to the image, scaled to fit `px`.

use super::image::RgbImage;

/// How thumbnails are cut: their longest side, and the face box assumed when the embedder did not
/// locate one (`embed.locate = "fixed"`: the centred box of `box_fraction`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThumbnailSpec {
    pub px: u32,
    pub box_fraction: f64,
}

impl ThumbnailSpec {
    /// From `api.keep_thumbnails` / `api.thumbnail_px` and the fixed box; None when none are kept.
    pub fn from_config(cfg: &crate::config::Config) -> Option<Self> {
        cfg.api.keep_thumbnails.then_some(ThumbnailSpec {
            px: cfg.api.thumbnail_px,
            box_fraction: cfg.embed.box_fraction as f64,
        })
    }
}

/// JPEG quality: small files (about 3 KB at 96 px) that still show a face.
const QUALITY: u8 = 80;

/// The thumbnail of the face at `face_box` (`[l, t, r, b]` inclusive; None: the centred box).
pub fn thumbnail(img: &RgbImage, face_box: Option<[i64; 4]>, spec: ThumbnailSpec) -> Vec<u8> {
    let (w, h) = (img.width as f64, img.height as f64);
    let (cx, cy, side) = match face_box {
        Some([l, t, r, b]) => (
            (l + r) as f64 / 2.0,
            (t + b) as f64 / 2.0,
            ((r - l + 1).max(b - t + 1)) as f64,
        ),
        None => (
            (w - 1.0) / 2.0,
            (h - 1.0) / 2.0,
            spec.box_fraction * w.min(h),
        ),
    };
    let cut = img.crop_around((cx, cy), 0.8 * side);
    let Some(crop) = image::RgbImage::from_raw(cut.width as u32, cut.height as u32, cut.pixels)
    else {
        return Vec::new();
    };
    let scale = (spec.px as f64 / crop.width().max(crop.height()) as f64).min(1.0);
    let (tw, th) = (
        ((crop.width() as f64 * scale).round() as u32).max(1),
        ((crop.height() as f64 * scale).round() as u32).max(1),
    );
    let small = image::imageops::thumbnail(&crop, tw, th);
    let mut out = Vec::new();
    match image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, QUALITY).encode_image(&small)
    {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let mut px = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                px.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 128]);
            }
        }
        RgbImage::new(w, h, px).unwrap()
    }

    fn size(jpeg: &[u8]) -> (u32, u32) {
        let i = image::load_from_memory(jpeg).expect("a JPEG");
        (i.width(), i.height())
    }

    #[test]
    fn a_thumbnail_is_a_small_jpeg_of_the_face_box() {
        let spec = ThumbnailSpec {
            px: 96,
            box_fraction: 0.4545,
        };
        let img = gradient(640, 480);
        let t = thumbnail(&img, Some([300, 200, 399, 299]), spec);
        assert!(t.starts_with(&[0xFF, 0xD8, 0xFF]));
        assert_eq!(size(&t), (96, 96));
        assert!(t.len() < 8 * 1024, "{} bytes", t.len());
        // The crop's centre is the box's: the red channel there is about x = 350 (94), not the
        // image's centre (x = 320: 64); JPEG's chroma costs a few levels.
        let i = image::load_from_memory(&t).unwrap().to_rgb8();
        let red = i.get_pixel(48, 48)[0] as i32;
        assert!((red - 350 % 256).abs() < 15, "red {red}");
        // A box at the corner is clamped to the image, not padded (nor scaled up: 66 px left).
        let c = thumbnail(&img, Some([0, 0, 49, 49]), spec);
        assert_eq!(size(&c), (66, 66));
        // Without a box: the centred box; a tiny image is not scaled up.
        assert_eq!(size(&thumbnail(&gradient(250, 250), None, spec)), (96, 96));
        assert_eq!(size(&thumbnail(&gradient(40, 30), None, spec)), (22, 22));
    }
}
