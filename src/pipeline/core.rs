//! The synchronous core of a batch: one domain's messages -> faces in stream order, images to
//! embed and dead letters (`prepare`, with the durable positions that skip what a restart already
//! applied); images embedded once per batch, in both roles (`embed_faces`: decoded once within the
//! limits, the identity network, then CLIP's variants on the same pixels, every vector checked).
//! Plain functions over a batch, called from the async loop (embedding on a blocking thread),
//! tested without Kafka.

use std::collections::HashMap;

use crate::decode::{check_vector, decode, Limits, Payload, Reason, Rejection};
use crate::embed::image::RgbImage;
use crate::embed::thumbnail::{thumbnail, ThumbnailSpec};
use crate::embed::{decode_all, embed_decoded_all, EmbedError, FaceEmbedder};
use crate::engine::Face;
use crate::hallucinate::ClipStage;
use crate::sink::DeadLetter;
use crate::source::{Msg, PartitionKey};

/// The dead letter a message becomes, with why.
pub fn dead_letter(m: Msg, rejection: Rejection) -> DeadLetter {
    DeadLetter {
        key: m.key,
        payload: m.payload,
        headers: m.headers,
        topic: m.topic,
        partition: m.partition,
        offset: m.offset,
        rejection,
    }
}

/// What one domain's messages of a batch become.
#[derive(Default)]
pub struct Prepared {
    /// Faces in stream order; an image's face has no vector until it is embedded.
    pub faces: Vec<Face>,
    /// (slot in `faces`, encoded image, its message for a dead letter should it not embed).
    pub images: Vec<(usize, Vec<u8>, Msg)>,
    pub dead: Vec<DeadLetter>,
    /// The next offset of each partition this batch reached.
    pub ends: HashMap<PartitionKey, i64>,
    /// Messages below their partition's durable position: applied before a restart, skipped.
    pub duplicates: u64,
    /// Offsets missing from the input (deleted by retention before they were read):
    /// (partition, first missing, first present).
    pub gaps: Vec<(PartitionKey, i64, i64)>,
}

/// Routes each message: below the durable position (`durable(partition)`, -1 for none) it is a
/// duplicate; otherwise it is decoded into a face, an image to embed (`images_refused` = None),
/// or a dead letter (images are refused with that message when this process does not embed).
pub fn prepare<E>(
    msgs: Vec<Msg>,
    durable: &mut dyn FnMut(&PartitionKey) -> Result<i64, E>,
    limits: &Limits,
    images_refused: Option<&str>,
) -> Result<Prepared, E> {
    let mut p = Prepared::default();
    for m in msgs {
        let key = (m.topic.clone(), m.partition);
        let position = durable(&key)?;
        let expected = p.ends.get(&key).copied().unwrap_or(position);
        if expected >= 0 && m.offset > expected {
            // Offsets of an idempotent, non-transactional producer have no holes.
            p.gaps.push((key.clone(), expected, m.offset));
        }
        let end = p.ends.entry(key).or_insert(m.offset + 1);
        *end = (*end).max(m.offset + 1);
        if m.offset < position {
            p.duplicates += 1;
            continue;
        }
        // Decoding checks every vector as the engine will: a bad one is dead-lettered before
        // the commit.
        let decoded =
            decode(m.key.as_deref(), &m.headers, m.payload.as_deref(), limits).and_then(|f| {
                let face = Face {
                    face_id: f.face_id,
                    vector: Vec::new(),
                    variants: f.variants,
                    meta: f.meta,
                    thumbnail: f.thumbnail,
                };
                match (f.payload, images_refused) {
                    (Payload::Embedding(v), _) => Ok((Face { vector: v, ..face }, None)),
                    (Payload::Image(bytes), None) => Ok((face, Some(bytes))),
                    (Payload::Image(_), Some(why)) => Err(Rejection {
                        reason: Reason::ImageUnsupported,
                        message: why.to_string(),
                    }),
                }
            });
        match decoded {
            Ok((face, None)) => p.faces.push(face),
            Ok((face, Some(bytes))) => {
                p.images.push((p.faces.len(), bytes, m));
                p.faces.push(face);
            }
            Err(rejection) => p.dead.push(dead_letter(m, rejection)),
        }
    }
    Ok(p)
}

/// A model failure (a device error): nothing of the batch is durable, a restart redoes it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ModelFailure(pub String);

/// Embeds each face's image: its vector and quality (the producer's own quality, when it sent
/// one, wins over the chip's) and, with `clip`, its hallucinated variants. One result per input,
/// in order: the image's faces ready (one, or with `embed.faces_per_image = "all"` every face
/// found, each `<face_id>#<n>` in reading order, the message's metadata shared), or why it was
/// refused.
pub fn embed_faces(
    embedder: &dyn FaceEmbedder,
    clip: Option<&ClipStage>,
    faces: Vec<(Face, Vec<u8>)>,
    dim: usize,
    thumbnails: Option<ThumbnailSpec>,
) -> Result<Vec<Result<Vec<Face>, Rejection>>, ModelFailure> {
    let (faces, bytes): (Vec<Face>, Vec<Vec<u8>>) = faces.into_iter().unzip();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let decoded = decode_all(&refs, embedder.limits());
    let all = embedder.faces_per_image_all();
    let results = embed_decoded_all(embedder, &decoded);
    if let Some(Err(EmbedError::Model(m))) = results
        .iter()
        .find(|r| matches!(r, Err(EmbedError::Model(_))))
    {
        return Err(ModelFailure(m.clone()));
    }
    // CLIP sees what the identity network saw: the whole image, or with "all" each face's
    // surroundings (its box, 2.2 times, as LFW-like crops are cut).
    let mut variants: Vec<Vec<Vec<f32>>> = results
        .iter()
        .map(|r| vec![Vec::new(); r.as_ref().map_or(0, Vec::len)])
        .collect();
    if let Some(clip) = clip {
        let mut crops: Vec<Option<RgbImage>> = Vec::new();
        let mut images: Vec<Option<&RgbImage>> = Vec::new();
        let mut ids: Vec<Option<&[f32]>> = Vec::new();
        for (d, r) in decoded.iter().zip(&results) {
            for f in r.iter().flatten() {
                let crop = match (all, d, &f.located) {
                    (true, Ok(img), Some(l)) => Some(face_surroundings(img, l.face_box)),
                    _ => None,
                };
                crops.push(crop);
                ids.push(Some(f.vector.as_slice()));
            }
        }
        let mut k = 0;
        for (d, r) in decoded.iter().zip(&results) {
            for _ in r.iter().flatten() {
                images.push(crops[k].as_ref().or(d.as_ref().ok()));
                k += 1;
            }
        }
        let mut flat = clip
            .variants(&images, &ids)
            .map_err(|e| ModelFailure(format!("CLIP: {e}")))?
            .into_iter();
        for v in variants.iter_mut().flatten() {
            *v = flat.next().unwrap_or_default();
        }
    }
    Ok(faces
        .into_iter()
        .zip(results)
        .zip(variants)
        .zip(&decoded)
        .map(|(((face, r), xs), img)| {
            let embedded = r.map_err(|e| Rejection {
                reason: Reason::from(&e),
                message: e.to_string(),
            })?;
            embedded
                .into_iter()
                .zip(xs)
                .enumerate()
                .map(|(n, (e, x))| {
                    let mut f = face.clone();
                    if all {
                        f.face_id = format!("{}#{n}", face.face_id);
                    }
                    check_vector(&f.face_id, &e.vector, dim)?;
                    f.vector = e.vector;
                    f.variants = x;
                    if let (Some(spec), Ok(img)) = (thumbnails, img) {
                        f.thumbnail = thumbnail(img, e.located.as_ref().map(|l| l.face_box), spec);
                    }
                    f.meta.quality = face.meta.quality.or(e.quality);
                    if let Some(l) = e.located {
                        f.meta.face_box = Some(l.face_box);
                        f.meta.located = Some(l.outcome.to_string());
                    }
                    Ok(f)
                })
                .collect()
        })
        .collect())
}

/// The square around `face_box` ([l, t, r, b] inclusive) of 2.2 times its side, clamped to the
/// image: what CLIP sees of one face of a photo.
fn face_surroundings(img: &RgbImage, face_box: [i64; 4]) -> RgbImage {
    let [l, t, r, b] = face_box;
    let centre = ((l + r) as f64 / 2.0, (t + b) as f64 / 2.0);
    img.crop_around(centre, 1.1 * ((r - l + 1).max(b - t + 1)) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::image::DecodeLimits;
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
                        located: None,
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
        let out: Vec<Result<Face, Rejection>> = embed_faces(&e, None, faces, 3, None)
            .unwrap()
            .into_iter()
            .map(|r| r.map(|mut f| f.remove(0)))
            .collect();
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
        let err = embed_faces(&e, None, faces, 3, None).unwrap_err();
        assert!(err.0.contains("device lost"), "{err}");
    }

    fn msg(partition: i32, offset: i64, payload: &[u8]) -> Msg {
        Msg {
            topic: "faces".into(),
            partition,
            offset,
            key: None,
            payload: Some(payload.to_vec()),
            headers: Vec::new(),
        }
    }

    fn envelope(id: &str, v: &[f32]) -> Vec<u8> {
        serde_json::json!({"face_id": id, "embedding": v})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn prepare_skips_durable_messages_reports_gaps_and_keeps_stream_order() {
        let limits = Limits {
            max_message_bytes: 1 << 20,
            dim: 3,
            key_is_face_id: false,
            image_id_names_faces: false,
        };
        let msgs = vec![
            msg(0, 4, &envelope("old", &[1.0, 0.0, 0.0])),
            msg(0, 5, &envelope("a", &[1.0, 0.0, 0.0])),
            msg(0, 6, &png(4, [1, 2, 3])),
            msg(0, 9, &envelope("tiny", &[1e-30, 0.0, 0.0])),
            msg(1, 0, &envelope("b", &[0.0, 1.0, 0.0])),
        ];
        let mut durable = |k: &PartitionKey| Ok::<_, ()>(if k.1 == 0 { 5 } else { -1 });
        let p = prepare(msgs, &mut durable, &limits, None).unwrap();
        assert_eq!(p.duplicates, 1);
        let ids: Vec<&str> = p.faces.iter().map(|f| f.face_id.as_str()).collect();
        // The raw image's id comes from its header or key; here it has none and is refused.
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(p.dead.len(), 2);
        assert_eq!(p.dead[1].rejection.reason, Reason::ZeroVector);
        assert_eq!(p.gaps, vec![(("faces".to_string(), 0), 7, 9)]);
        assert_eq!(p.ends[&("faces".to_string(), 0)], 10);
        assert_eq!(p.ends[&("faces".to_string(), 1)], 1);

        // An image with its id in the headers waits for the embedder, or is refused.
        let mut m = msg(2, 0, &png(4, [1, 2, 3]));
        m.headers.push(("face_id".into(), b"img".to_vec()));
        let mut none = |_: &PartitionKey| Ok::<_, ()>(-1);
        let p = prepare(vec![m.clone()], &mut none, &limits, None).unwrap();
        assert_eq!((p.faces.len(), p.images.len(), p.images[0].0), (1, 1, 0));
        let p = prepare(vec![m], &mut none, &limits, Some("no embedder here")).unwrap();
        assert_eq!(p.dead[0].rejection.reason, Reason::ImageUnsupported);
        assert_eq!(p.dead[0].rejection.message, "no embedder here");
    }
}
