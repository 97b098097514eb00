//! Input messages: what a face looks like on the wire, and the decoding that turns bytes into a
//! face or a typed rejection. Pure functions over bytes, no Kafka types, so every bad-input case is
//! unit-tested here. Formats (JSON Schema: `schemas/face-message.schema.json`):
//!
//! (a) raw JPEG/PNG/WebP bytes with headers `face_id`, `source_id`, `image_id`, `ts`;
//! (b) a JSON envelope `{face_id, source_id, image_id, ts, image_b64 | embedding}`.
//!
//! The face id comes from the envelope or the `face_id` header. A message without one is refused
//! as `missing_face_id`, unless `source.key_is_face_id` declares the message key to be the face id:
//! producers key messages by their domain (tenant, camera group) for scale-out, and that key taken
//! as the face id would make every face of a domain after the first a duplicate, silently.
//! Image payloads are recognized here and embedded by the pipeline (role all / embed); a role
//! without an embedder rejects them with `image_unsupported`.

use crate::engine::{normalize, EngineError};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub use crate::engine::FaceMeta;

#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Embedding(Vec<f32>),
    Image(Vec<u8>),
}

/// A decoded input message.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceMessage {
    pub face_id: String,
    pub meta: FaceMeta,
    pub payload: Payload,
    /// Hallucinated variants of the face made upstream (the envelope's `hallucinated`, e.g. by
    /// an embedding worker with CLIP): whole vectors of `dim`, row after row; empty when none.
    pub variants: Vec<f32>,
    /// A picture of the face sent with its embedding (the envelope's `thumbnail_b64`, e.g. by an
    /// embedding worker that kept one); empty when none.
    pub thumbnail: Vec<u8>,
}

/// Most hallucinated variants one message may carry.
pub const MAX_VARIANTS: usize = 64;

mod thumbnail;
use thumbnail::{check_thumbnail, check_thumbnail_url};
pub use thumbnail::{MAX_THUMBNAIL_BYTES, MAX_THUMBNAIL_URL};

/// What decoding a message checks it against: limits checked before anything is allocated for
/// it, and where its face id may come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub dim: usize,
    /// `source.key_is_face_id`: a message without a face id takes its key as the face id,
    /// instead of being refused as `missing_face_id`.
    pub key_is_face_id: bool,
    /// `embed.faces_per_image = "all"`: an image without a face id (nor a key taken as one)
    /// names its faces after its `image_id` (`<image_id>#<n>`).
    pub image_id_names_faces: bool,
}

impl Limits {
    /// The limits `cfg` sets (`source.*`, `model.dim`).
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Limits {
            max_message_bytes: cfg.source.max_message_bytes,
            dim: cfg.model.dim,
            key_is_face_id: cfg.source.key_is_face_id,
            image_id_names_faces: cfg.embed.faces_per_image == crate::config::FacesPerImage::All,
        }
    }
}

/// Why a message was rejected: a bounded set, used as the metric label and the dead-letter
/// header `clip_cluster.error.class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    TooLarge,
    Empty,
    UnknownFormat,
    BadJson,
    MissingFaceId,
    BadBase64,
    BothPayloads,
    NoPayload,
    WrongDimension,
    NotFinite,
    ZeroVector,
    BadHeader,
    ImageUnsupported,
    ImageDecode,
    ImageTooLarge,
    ImageUnusable,
    NoFace,
    FaceUncertain,
    FaceTooSmall,
    FaceCut,
    Duplicate,
    BadQuality,
}

impl Reason {
    pub const ALL: [Reason; 22] = [
        Reason::TooLarge,
        Reason::Empty,
        Reason::UnknownFormat,
        Reason::BadJson,
        Reason::MissingFaceId,
        Reason::BadBase64,
        Reason::BothPayloads,
        Reason::NoPayload,
        Reason::WrongDimension,
        Reason::NotFinite,
        Reason::ZeroVector,
        Reason::BadHeader,
        Reason::ImageUnsupported,
        Reason::ImageDecode,
        Reason::ImageTooLarge,
        Reason::ImageUnusable,
        Reason::NoFace,
        Reason::FaceUncertain,
        Reason::FaceTooSmall,
        Reason::FaceCut,
        Reason::Duplicate,
        Reason::BadQuality,
    ];

    pub fn class(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::Empty => "empty",
            Reason::UnknownFormat => "unknown_format",
            Reason::BadJson => "bad_json",
            Reason::MissingFaceId => "missing_face_id",
            Reason::BadBase64 => "bad_base64",
            Reason::BothPayloads => "both_payloads",
            Reason::NoPayload => "no_payload",
            Reason::WrongDimension => "wrong_dimension",
            Reason::NotFinite => "not_finite",
            Reason::ZeroVector => "zero_vector",
            Reason::BadHeader => "bad_header",
            Reason::ImageUnsupported => "image_unsupported",
            Reason::ImageDecode => "image_decode",
            Reason::ImageTooLarge => "image_too_large",
            Reason::ImageUnusable => "image_unusable",
            Reason::NoFace => "no_face",
            Reason::FaceUncertain => "face_uncertain",
            Reason::FaceTooSmall => "face_too_small",
            Reason::FaceCut => "face_cut",
            Reason::Duplicate => "duplicate_in_batch",
            Reason::BadQuality => "bad_quality",
        }
    }
}

impl From<&crate::embed::EmbedError> for Reason {
    fn from(e: &crate::embed::EmbedError) -> Self {
        use crate::embed::EmbedError;
        match e {
            EmbedError::Decode(_) => Reason::ImageDecode,
            EmbedError::TooLarge(_) => Reason::ImageTooLarge,
            EmbedError::Unusable(_) | EmbedError::Model(_) => Reason::ImageUnusable,
            EmbedError::NoFace(_) => Reason::NoFace,
            EmbedError::FaceUncertain(_) => Reason::FaceUncertain,
            EmbedError::FaceTooSmall(_) => Reason::FaceTooSmall,
            EmbedError::FaceCut(_) => Reason::FaceCut,
        }
    }
}

/// A rejected message: the class and a sentence for the operator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", reason.class())]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

fn reject(reason: Reason, message: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        message: message.into(),
    }
}

/// The JSON envelope, as written by producers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_id: Option<String>,
    #[serde(flatten)]
    pub meta: FaceMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_b64: Option<String>,
    /// Read as f64 so that a value beyond f32's range is reported as not finite, not as bad JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f64>>,
    /// Hallucinated variants of the face in identity space (with `embedding` only), each of
    /// `model.dim` values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hallucinated: Option<Vec<Vec<f64>>>,
    /// A small JPEG/PNG/WebP picture of the face, base64 (with `embedding` only), kept for the
    /// review page when `api.keep_thumbnails` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_b64: Option<String>,
}

/// The envelope as written: values as f32, so each prints in its shortest f32 form (about half
/// the bytes of the f64 form) and reads back exactly.
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    face_id: &'a str,
    #[serde(flatten)]
    meta: &'a FaceMeta,
    embedding: &'a [f32],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hallucinated: Vec<&'a [f32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thumbnail_b64: Option<String>,
}

/// Serializes an embedding message (the format `produce` and `demo` write).
pub fn embedding_envelope(face_id: &str, meta: &FaceMeta, embedding: &[f32]) -> Vec<u8> {
    embedding_envelope_with(face_id, meta, embedding, &[], &[])
}

/// As `embedding_envelope`, with the face's hallucinated variants (`variants`: whole vectors of
/// the embedding's length, row after row) and its thumbnail (none when empty), as embedding
/// workers write them.
pub fn embedding_envelope_with(
    face_id: &str,
    meta: &FaceMeta,
    embedding: &[f32],
    variants: &[f32],
    thumbnail: &[u8],
) -> Vec<u8> {
    let hallucinated = if embedding.is_empty() {
        Vec::new()
    } else {
        variants.chunks(embedding.len()).collect()
    };
    serde_json::to_vec(&EnvelopeOut {
        face_id,
        meta,
        embedding,
        hallucinated,
        thumbnail_b64: (!thumbnail.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(thumbnail)),
    })
    .unwrap_or_default()
}

fn is_image(b: &[u8]) -> bool {
    b.starts_with(&[0xFF, 0xD8, 0xFF])
        || b.starts_with(b"\x89PNG\r\n\x1a\n")
        || (b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP")
}

fn header_str(headers: &[(String, Vec<u8>)], name: &str) -> Result<Option<String>, Rejection> {
    match headers.iter().find(|(k, _)| k == name) {
        None => Ok(None),
        Some((_, v)) => String::from_utf8(v.clone())
            .map(Some)
            .map_err(|_| reject(Reason::BadHeader, format!("header {name} is not UTF-8"))),
    }
}

/// Decodes one message. `key` is the Kafka message key, the face id of a message without one
/// only when `limits.key_is_face_id`.
pub fn decode(
    key: Option<&[u8]>,
    headers: &[(String, Vec<u8>)],
    payload: Option<&[u8]>,
    limits: &Limits,
) -> Result<FaceMessage, Rejection> {
    let bytes = payload.unwrap_or_default();
    if bytes.len() > limits.max_message_bytes {
        return Err(reject(
            Reason::TooLarge,
            format!(
                "message of {} bytes exceeds source.max_message_bytes = {}",
                bytes.len(),
                limits.max_message_bytes
            ),
        ));
    }
    if bytes.is_empty() {
        return Err(reject(Reason::Empty, "message has no payload"));
    }
    let key_id = key
        .filter(|_| limits.key_is_face_id)
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| !k.is_empty())
        .map(str::to_string);
    let missing = |carrier: &str| {
        let hint = if limits.key_is_face_id {
            " and no (UTF-8) message key"
        } else {
            "; send one (the message key is the face id only with source.key_is_face_id = true; an image's image_id names its faces only with embed.faces_per_image = \"all\")"
        };
        reject(Reason::MissingFaceId, format!("no face_id {carrier}{hint}"))
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first == Some(b'{') {
        let env: Envelope = serde_json::from_slice(bytes)
            .map_err(|e| reject(Reason::BadJson, format!("JSON envelope: {e}")))?;
        if let Some(q) = env.meta.quality {
            if !(q.is_finite() && (0.0..=1.0).contains(&q)) {
                return Err(reject(
                    Reason::BadQuality,
                    format!("quality {q} is not a score in [0, 1]"),
                ));
            }
        }
        let by_image = env
            .image_b64
            .as_ref()
            .and(env.meta.image_id.clone())
            .filter(|s| limits.image_id_names_faces && !s.is_empty());
        let face_id = env
            .face_id
            .filter(|s| !s.is_empty())
            .or(key_id)
            .or(by_image)
            .ok_or_else(|| missing("in the envelope"))?;
        let payload = match (env.embedding, env.image_b64) {
            (Some(_), Some(_)) => {
                return Err(reject(
                    Reason::BothPayloads,
                    "envelope has both embedding and image_b64",
                ))
            }
            (None, None) => {
                return Err(reject(
                    Reason::NoPayload,
                    "envelope has neither embedding nor image_b64",
                ))
            }
            (Some(v), None) => Payload::Embedding(check_embedding(v, limits.dim)?),
            (None, Some(b64)) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| reject(Reason::BadBase64, format!("image_b64: {e}")))?;
                Payload::Image(raw)
            }
        };
        let variants = match (env.hallucinated, &payload) {
            (None, _) => Vec::new(),
            (Some(_), Payload::Image(_)) => {
                return Err(reject(
                    Reason::BadJson,
                    "hallucinated variants come with an embedding, not with an image",
                ))
            }
            (Some(h), Payload::Embedding(_)) => check_variants(h, limits.dim)?,
        };
        let thumbnail =
            match (env.thumbnail_b64, &payload) {
                (None, _) => Vec::new(),
                (Some(_), Payload::Image(_)) => return Err(reject(
                    Reason::BadJson,
                    "thumbnail_b64 comes with an embedding (an image's thumbnail is cut from it)",
                )),
                (Some(b64), Payload::Embedding(_)) => check_thumbnail(&b64)?,
            };
        if let Some(url) = &env.meta.thumbnail_url {
            check_thumbnail_url(url)?;
        }
        return Ok(FaceMessage {
            face_id,
            meta: env.meta,
            payload,
            variants,
            thumbnail,
        });
    }
    if is_image(bytes) {
        let by_image = header_str(headers, "image_id")?
            .filter(|s| limits.image_id_names_faces && !s.is_empty());
        let face_id = header_str(headers, "face_id")?
            .filter(|s| !s.is_empty())
            .or(key_id)
            .or(by_image)
            .ok_or_else(|| missing("header"))?;
        let ts = match header_str(headers, "ts")? {
            None => None,
            Some(s) => Some(s.trim().parse::<i64>().map_err(|_| {
                reject(
                    Reason::BadHeader,
                    format!("header ts = {s:?} is not an integer (ms since epoch)"),
                )
            })?),
        };
        let meta = FaceMeta {
            source_id: header_str(headers, "source_id")?,
            image_id: header_str(headers, "image_id")?,
            ts,
            quality: None,
            face_box: None,
            located: None,
            thumbnail_url: None,
        };
        return Ok(FaceMessage {
            face_id,
            meta,
            payload: Payload::Image(bytes.to_vec()),
            variants: Vec::new(),
            thumbnail: Vec::new(),
        });
    }
    Err(reject(
        Reason::UnknownFormat,
        "payload is neither a JSON envelope nor a JPEG/PNG/WebP image",
    ))
}

fn check_variants(h: Vec<Vec<f64>>, dim: usize) -> Result<Vec<f32>, Rejection> {
    if h.len() > MAX_VARIANTS {
        return Err(reject(
            Reason::TooLarge,
            format!("{} hallucinated variants, at most {MAX_VARIANTS}", h.len()),
        ));
    }
    let mut out = Vec::with_capacity(h.len() * dim);
    for (a, v) in h.into_iter().enumerate() {
        if v.len() != dim {
            return Err(reject(
                Reason::WrongDimension,
                format!(
                    "hallucinated[{a}] has {} values, model.dim is {dim}",
                    v.len()
                ),
            ));
        }
        for (i, x) in v.into_iter().enumerate() {
            let y = x as f32;
            if !y.is_finite() {
                return Err(reject(
                    Reason::NotFinite,
                    format!("hallucinated[{a}][{i}] is not finite"),
                ));
            }
            out.push(y);
        }
    }
    Ok(out)
}

fn check_embedding(v: Vec<f64>, dim: usize) -> Result<Vec<f32>, Rejection> {
    let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
    match normalize("", &v, dim) {
        Ok(_) => Ok(v),
        Err(EngineError::WrongDimension { got, .. }) => Err(reject(
            Reason::WrongDimension,
            format!("embedding has {got} values, model.dim is {dim}"),
        )),
        Err(EngineError::NotFinite { position, .. }) => Err(reject(
            Reason::NotFinite,
            format!("embedding[{position}] is not finite"),
        )),
        Err(e) => Err(reject(
            engine_reason(&e),
            "embedding has no direction (all zeros, or too small or too large to normalize)",
        )),
    }
}

/// The dead-letter reason of a vector the engine would refuse.
pub fn engine_reason(e: &EngineError) -> Reason {
    match e {
        EngineError::WrongDimension { .. } | EngineError::BadVariants { .. } => {
            Reason::WrongDimension
        }
        EngineError::NotFinite { .. } => Reason::NotFinite,
        EngineError::ZeroVector { .. } => Reason::ZeroVector,
        EngineError::EmptyId { .. } => Reason::MissingFaceId,
        EngineError::Full(_) => Reason::TooLarge,
    }
}

/// A vector checked as the engine will check it (dimension, finite, not zero): the one check
/// the pipeline makes before the commit, so that a bad vector is dead-lettered and never reaches
/// the engine. The engine normalizes the original (normalizing twice would shift the last bits).
pub fn check_vector(face_id: &str, vector: &[f32], dim: usize) -> Result<(), Rejection> {
    normalize(face_id, vector, dim)
        .map(|_| ())
        .map_err(|e| Rejection {
            reason: engine_reason(&e),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_message_bytes: 4096,
        dim: 3,
        key_is_face_id: false,
        image_id_names_faces: false,
    };

    fn dec_with(
        limits: &Limits,
        key: Option<&str>,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<FaceMessage, Rejection> {
        let h: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        decode(key.map(str::as_bytes), &h, Some(payload), limits)
    }

    fn dec(
        key: Option<&str>,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<FaceMessage, Rejection> {
        dec_with(&L, key, headers, payload)
    }

    #[test]
    fn embedding_envelope_round_trips() {
        let meta = FaceMeta {
            source_id: Some("cam-1".into()),
            image_id: Some("frame-9".into()),
            ts: Some(1700000000000),
            quality: None,
            ..Default::default()
        };
        let bytes = embedding_envelope("f1", &meta, &[0.1, 0.2, 0.3]);
        let m = dec(None, &[], &bytes).unwrap();
        assert_eq!(m.face_id, "f1");
        assert_eq!(m.meta, meta);
        assert_eq!(m.payload, Payload::Embedding(vec![0.1, 0.2, 0.3]));
    }

    #[test]
    fn a_producers_quality_rides_with_the_face_and_is_checked() {
        let meta = FaceMeta {
            quality: Some(0.25),
            ..Default::default()
        };
        let bytes = embedding_envelope("f1", &meta, &[0.1, 0.2, 0.3]);
        assert_eq!(dec(None, &[], &bytes).unwrap().meta.quality, Some(0.25));
        for q in ["1.5", "-0.1", "1e40"] {
            let bytes = format!(r#"{{"face_id":"f","quality":{q},"embedding":[0.1,0.2,0.3]}}"#);
            let e = dec(None, &[], bytes.as_bytes()).unwrap_err();
            assert_eq!(e.reason, Reason::BadQuality, "{q}: {e}");
        }
    }

    #[test]
    fn a_thumbnail_and_its_url_ride_with_the_embedding_and_are_checked() {
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3];
        let meta = FaceMeta {
            thumbnail_url: Some("https://photos.example/f1.jpg".into()),
            ..Default::default()
        };
        let bytes = embedding_envelope_with("f1", &meta, &[1.0, 0.0, 0.0], &[], &jpeg);
        let m = dec(None, &[], &bytes).unwrap();
        assert_eq!((m.thumbnail, m.meta), (jpeg.to_vec(), meta));
        let plain = embedding_envelope("f1", &FaceMeta::default(), &[1.0, 0.0, 0.0]);
        assert!(!String::from_utf8_lossy(&plain).contains("thumbnail"));
        // Each is checked (the rules: thumbnail.rs) and refused with its reason.
        for (payload, reason) in [
            (
                r#"{"face_id":"a","embedding":[1,0,0],"thumbnail_b64":"aGVsbG8="}"#,
                Reason::UnknownFormat,
            ),
            (
                r#"{"face_id":"a","image_b64":"AA==","thumbnail_b64":"/9j/"}"#,
                Reason::BadJson,
            ),
            (
                r#"{"face_id":"a","embedding":[1,0,0],"thumbnail_url":"javascript:alert(1)"}"#,
                Reason::BadJson,
            ),
        ] {
            let e = dec(None, &[], payload.as_bytes()).unwrap_err();
            assert_eq!(e.reason, reason, "{e}");
        }
    }

    #[test]
    fn hallucinated_variants_ride_with_the_embedding_and_are_checked() {
        let meta = FaceMeta::default();
        let bytes = embedding_envelope_with(
            "f1",
            &meta,
            &[1.0, 0.0, 0.0],
            &[0.0, 1.0, 0.0, 0.5, 0.5, 0.0],
            &[],
        );
        let m = dec(None, &[], &bytes).unwrap();
        assert_eq!(m.variants, vec![0.0, 1.0, 0.0, 0.5, 0.5, 0.0]);
        // Without variants the envelope has no such field, and none come back.
        let plain = embedding_envelope("f1", &meta, &[1.0, 0.0, 0.0]);
        assert!(!String::from_utf8_lossy(&plain).contains("hallucinated"));
        assert!(dec(None, &[], &plain).unwrap().variants.is_empty());
        let many = format!(
            r#"{{"face_id":"a","embedding":[1,0,0],"hallucinated":[{}]}}"#,
            vec!["[1,0,0]"; MAX_VARIANTS + 1].join(",")
        );
        for (payload, reason) in [
            (
                br#"{"face_id":"a","embedding":[1,0,0],"hallucinated":[[1,0]]}"#.to_vec(),
                Reason::WrongDimension,
            ),
            (
                br#"{"face_id":"a","embedding":[1,0,0],"hallucinated":[[1,0,1e39]]}"#.to_vec(),
                Reason::NotFinite,
            ),
            (
                br#"{"face_id":"a","image_b64":"AA==","hallucinated":[[1,0,0]]}"#.to_vec(),
                Reason::BadJson,
            ),
            (many.into_bytes(), Reason::TooLarge),
        ] {
            let e = dec(None, &[], &payload).unwrap_err();
            assert_eq!(e.reason, reason, "{}", e.message);
        }
    }

    #[test]
    fn a_keyed_message_without_face_id_is_refused_by_default() {
        // Producers key by domain (tenant): that key is not a face id, so the message is refused
        // rather than every face of the tenant after the first becoming a duplicate.
        let jpeg = [0xFFu8, 0xD8, 0xFF, 0xE0, 0, 0];
        for (headers, payload) in [
            (&[][..], &br#"{"embedding":[1,0,0]}"#[..]),
            (
                &[("face_id", "")][..],
                &br#"{"face_id":"","embedding":[1,0,0]}"#[..],
            ),
            (&[][..], &jpeg[..]),
            (&[("face_id", ""), ("image_id", "p1")][..], &jpeg[..]),
        ] {
            let e = dec(Some("tenant-1"), headers, payload).unwrap_err();
            assert_eq!(e.reason, Reason::MissingFaceId, "{e}");
            assert_eq!(e.reason.class(), "missing_face_id");
            assert!(e.message.contains("source.key_is_face_id"), "{e}");
        }
        // A face id of its own is taken, key or no key.
        let m = dec(
            Some("tenant-1"),
            &[],
            br#"{"face_id":"f1","embedding":[1,0,0]}"#,
        )
        .unwrap();
        assert_eq!(m.face_id, "f1");
        let m = dec(Some("tenant-1"), &[("face_id", "f2")], &jpeg).unwrap();
        assert_eq!(m.face_id, "f2");
    }

    #[test]
    fn an_images_id_names_its_faces_only_with_faces_per_image_all() {
        let jpeg = [0xFFu8, 0xD8, 0xFF, 0xE0, 0, 0];
        let headers = [("image_id", "photo-3")];
        let err = dec(None, &headers, &jpeg).unwrap_err();
        assert_eq!(err.reason, Reason::MissingFaceId);
        assert!(err.message.contains("faces_per_image"), "{}", err.message);
        let all = Limits {
            image_id_names_faces: true,
            ..L
        };
        assert_eq!(
            dec_with(&all, None, &headers, &jpeg).unwrap().face_id,
            "photo-3"
        );
        // A face id given wins; an embedding is one face and needs its own id.
        let named = [("image_id", "photo-3"), ("face_id", "f9")];
        assert_eq!(dec_with(&all, None, &named, &jpeg).unwrap().face_id, "f9");
        let env = br#"{"image_id":"photo-3","embedding":[1,0,0]}"#;
        assert_eq!(
            dec_with(&all, None, &[], env).unwrap_err().reason,
            Reason::MissingFaceId
        );
    }

    #[test]
    fn key_is_the_face_id_when_configured() {
        let keyed = Limits {
            key_is_face_id: true,
            ..L
        };
        let jpeg = [0xFFu8, 0xD8, 0xFF, 0xE0, 0, 0];
        let m = dec_with(&keyed, Some("k7"), &[], br#"{"embedding":[1,0,0]}"#).unwrap();
        assert_eq!(m.face_id, "k7");
        let m = dec_with(&keyed, Some("k8"), &[], &jpeg).unwrap();
        assert_eq!(m.face_id, "k8");
        // The message's own face id still wins over the key.
        let m = dec_with(&keyed, Some("k7"), &[("face_id", "f9")], &jpeg).unwrap();
        assert_eq!(m.face_id, "f9");
        // No key (or an empty or non-UTF-8 one): nothing to take.
        for key in [None, Some("")] {
            let e = dec_with(&keyed, key, &[], br#"{"embedding":[1,0,0]}"#).unwrap_err();
            assert_eq!(e.reason, Reason::MissingFaceId);
        }
        let h = Vec::new();
        let e = decode(
            Some(&[0xff, 0xfe][..]),
            &h,
            Some(&br#"{"embedding":[1,0,0]}"#[..]),
            &keyed,
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::MissingFaceId);
    }

    #[test]
    fn bad_messages_get_their_reason() {
        let cases: Vec<(&[u8], Reason)> = vec![
            (b"", Reason::Empty),
            (b"\x00\x01garbage", Reason::UnknownFormat),
            (br#"{"face_id":"a","embedding":[1,0"#, Reason::BadJson),
            (
                br#"{"face_id":"a","embedding":[1,0,0],"colour":1}"#,
                Reason::BadJson,
            ),
            (
                br#"{"face_id":"a","embedding":[1,0]}"#,
                Reason::WrongDimension,
            ),
            (
                br#"{"face_id":"a","embedding":[0,0,0]}"#,
                Reason::ZeroVector,
            ),
            (
                br#"{"face_id":"a","embedding":[1,0,0],"image_b64":"AA=="}"#,
                Reason::BothPayloads,
            ),
            (br#"{"face_id":"a"}"#, Reason::NoPayload),
            (br#"{"face_id":"a","image_b64":"!!!"}"#, Reason::BadBase64),
        ];
        for (bytes, reason) in cases {
            assert_eq!(
                dec(Some("k"), &[], bytes).unwrap_err().reason,
                reason,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // JSON cannot carry NaN, but a producer may send a huge number that overflows f32.
        let e = dec(Some("k"), &[], br#"{"face_id":"a","embedding":[1e39,0,0]}"#).unwrap_err();
        assert_eq!(e.reason, Reason::NotFinite, "{e}");
        let big = vec![b' '; 5000];
        assert_eq!(
            dec(Some("k"), &[], &big).unwrap_err().reason,
            Reason::TooLarge
        );
    }

    #[test]
    fn raw_images_take_ids_from_headers() {
        let jpeg = [0xFFu8, 0xD8, 0xFF, 0xE0, 0, 0];
        let m = dec(
            Some("k"),
            &[("face_id", "f9"), ("image_id", "p1"), ("ts", "12")],
            &jpeg,
        )
        .unwrap();
        assert_eq!(m.face_id, "f9");
        assert_eq!(m.meta.image_id.as_deref(), Some("p1"));
        assert_eq!(m.meta.ts, Some(12));
        assert!(matches!(m.payload, Payload::Image(_)));
        let e = dec(Some("k"), &[("face_id", "f9"), ("ts", "noon")], &jpeg).unwrap_err();
        assert_eq!(e.reason, Reason::BadHeader);
    }
}
