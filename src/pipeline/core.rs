//! The synchronous core of a batch that both roles share: images embedded once per batch
//! (decoded once within the limits, the identity network, then CLIP's variants on the same
//! pixels), every vector checked and each face either ready or rejected with its reason. Plain
//! functions over a batch, run on a blocking thread by the callers, tested without Kafka.

use crate::decode::{check_vector, Reason, Rejection};
use crate::embed::{decode_all, embed_decoded, EmbedError, FaceEmbedder};
use crate::engine::Face;
use crate::hallucinate::ClipStage;

/// A model failure (a device error): nothing of the batch is durable, a restart redoes it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ModelFailure(pub String);

/// Embeds each face's image: its vector and quality (the producer's own quality, when it sent
/// one, wins over the chip's) and, with `clip`, its hallucinated variants. One result per input,
/// in order: the face ready, or why it was refused.
pub fn embed_faces(
    embedder: &dyn FaceEmbedder,
    clip: Option<&ClipStage>,
    faces: Vec<(Face, Vec<u8>)>,
    dim: usize,
) -> Result<Vec<Result<Face, Rejection>>, ModelFailure> {
    let (faces, bytes): (Vec<Face>, Vec<Vec<u8>>) = faces.into_iter().unzip();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let decoded = decode_all(&refs, embedder.limits());
    let results = embed_decoded(embedder, &decoded);
    if let Some(Err(EmbedError::Model(m))) = results
        .iter()
        .find(|r| matches!(r, Err(EmbedError::Model(_))))
    {
        return Err(ModelFailure(m.clone()));
    }
    let variants = match clip {
        None => vec![Vec::new(); faces.len()],
        Some(clip) => {
            let images: Vec<_> = decoded.iter().map(|d| d.as_ref().ok()).collect();
            let ids: Vec<Option<&[f32]>> = results
                .iter()
                .map(|r| r.as_ref().ok().map(|f| f.vector.as_slice()))
                .collect();
            clip.variants(&images, &ids)
                .map_err(|e| ModelFailure(format!("CLIP: {e}")))?
        }
    };
    Ok(faces
        .into_iter()
        .zip(results)
        .zip(variants)
        .map(|((mut face, r), x)| {
            let embedded = r.map_err(|e| Rejection {
                reason: Reason::from(&e),
                message: e.to_string(),
            })?;
            check_vector(&face.face_id, &embedded.vector, dim)?;
            face.vector = embedded.vector;
            face.variants = x;
            face.meta.quality = face.meta.quality.or(embedded.quality);
            Ok(face)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::image::{DecodeLimits, RgbImage};
    use crate::embed::EmbeddedFace;

    /// An embedder whose vector is the image's mean colour and whose failures are scripted by
    /// the image's width: 3 makes NaN, 5 a device failure.
    struct Colour(DecodeLimits);

    impl FaceEmbedder for Colour {
        fn model_id(&self) -> String {
            "colour".into()
        }
        fn dim(&self) -> usize {
            3
        }
        fn limits(&self) -> &DecodeLimits {
            &self.0
        }
        fn embed_images(&self, images: &[&RgbImage]) -> Vec<Result<EmbeddedFace, EmbedError>> {
            images
                .iter()
                .map(|img| {
                    if img.width == 5 {
                        return Err(EmbedError::Model("device lost".into()));
                    }
                    let n = (img.width * img.height) as f32;
                    let mut v = vec![0f32; 3];
                    for p in img.pixels.chunks(3) {
                        (0..3).for_each(|c| v[c] += p[c] as f32 / n);
                    }
                    if img.width == 3 {
                        v[0] = f32::NAN;
                    }
                    Ok(EmbeddedFace {
                        vector: v,
                        quality: Some(0.5),
                    })
                })
                .collect()
        }
    }

    fn png(w: u32, rgb: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, 4, image::Rgb(rgb));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn limits() -> DecodeLimits {
        DecodeLimits {
            min_image_side_px: 1,
            ..DecodeLimits::default()
        }
    }

    #[test]
    fn each_image_is_embedded_checked_or_refused_alone() {
        let e = Colour(limits());
        let mut own = Face::new("b", Vec::new());
        own.meta.quality = Some(0.9);
        let faces = vec![
            (Face::new("a", Vec::new()), png(4, [10, 20, 30])),
            (own, png(4, [1, 2, 3])),
            (Face::new("garbage", Vec::new()), b"not an image".to_vec()),
            (Face::new("nan", Vec::new()), png(3, [1, 1, 1])),
        ];
        let out = embed_faces(&e, None, faces, 3).unwrap();
        let a = out[0].as_ref().unwrap();
        assert_eq!(a.vector, vec![10.0, 20.0, 30.0]);
        assert_eq!(a.meta.quality, Some(0.5));
        // The producer's quality wins over the chip's.
        assert_eq!(out[1].as_ref().unwrap().meta.quality, Some(0.9));
        assert_eq!(out[2].as_ref().unwrap_err().reason, Reason::ImageDecode);
        assert_eq!(out[3].as_ref().unwrap_err().reason, Reason::NotFinite);
    }

    #[test]
    fn a_device_failure_fails_the_batch() {
        let e = Colour(limits());
        let faces = vec![
            (Face::new("a", Vec::new()), png(4, [10, 20, 30])),
            (Face::new("b", Vec::new()), png(5, [1, 2, 3])),
        ];
        let err = embed_faces(&e, None, faces, 3).unwrap_err();
        assert!(err.0.contains("device lost"), "{err}");
    }
}
