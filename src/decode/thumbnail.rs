//! A message's own picture of its face: `thumbnail_b64` (an image within a size) and
//! `thumbnail_url` (http(s) or a path on the API's host, nothing a page could run).

use base64::Engine as _;

use super::{is_image, reject, Reason, Rejection};

/// Largest thumbnail a message may carry, bytes (decoded).
pub const MAX_THUMBNAIL_BYTES: usize = 64 * 1024;

/// Longest `thumbnail_url`, bytes.
pub const MAX_THUMBNAIL_URL: usize = 2048;

/// A thumbnail's base64: decoded, an image, within `MAX_THUMBNAIL_BYTES`.
pub(super) fn check_thumbnail(b64: &str) -> Result<Vec<u8>, Rejection> {
    if b64.len() > MAX_THUMBNAIL_BYTES.div_ceil(3) * 4 + 4 {
        return Err(reject(
            Reason::TooLarge,
            format!("thumbnail_b64 is over {MAX_THUMBNAIL_BYTES} bytes"),
        ));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| reject(Reason::BadBase64, format!("thumbnail_b64: {e}")))?;
    if raw.len() > MAX_THUMBNAIL_BYTES {
        return Err(reject(
            Reason::TooLarge,
            format!("thumbnail_b64 is over {MAX_THUMBNAIL_BYTES} bytes"),
        ));
    }
    if !is_image(&raw) {
        return Err(reject(
            Reason::UnknownFormat,
            "thumbnail_b64 is not a JPEG, PNG or WebP image",
        ));
    }
    Ok(raw)
}

/// A `thumbnail_url`: http(s), or a path on the API's host; no spaces or control characters.
pub(super) fn check_thumbnail_url(url: &str) -> Result<(), Rejection> {
    let scheme_ok = url.starts_with("https://")
        || url.starts_with("http://")
        || (url.starts_with('/') && !url.starts_with("//"));
    if url.len() > MAX_THUMBNAIL_URL {
        return Err(reject(
            Reason::TooLarge,
            format!("thumbnail_url is over {MAX_THUMBNAIL_URL} bytes"),
        ));
    }
    if !scheme_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(reject(
            Reason::BadJson,
            format!(
                "thumbnail_url {url:?}: an http(s) URL or a path starting with /, without spaces"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_and_their_urls_are_checked() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        assert_eq!(
            check_thumbnail(&b64(&[0xFF, 0xD8, 0xFF, 9])).unwrap(),
            [0xFF, 0xD8, 0xFF, 9]
        );
        for (text, reason) in [
            ("!!".to_string(), Reason::BadBase64),
            (b64(b"hello"), Reason::UnknownFormat),
            (b64(&vec![0xFF; MAX_THUMBNAIL_BYTES + 1]), Reason::TooLarge),
            ("A".repeat(4 * MAX_THUMBNAIL_BYTES), Reason::TooLarge),
        ] {
            assert_eq!(check_thumbnail(&text).unwrap_err().reason, reason);
        }
        for ok in [
            "https://photos.example/a.jpg",
            "http://nas:8080/x",
            "/crops/a.jpg",
        ] {
            assert!(check_thumbnail_url(ok).is_ok(), "{ok}");
        }
        let long = format!("https://x/{}", "a".repeat(MAX_THUMBNAIL_URL));
        for (bad, reason) in [
            ("javascript:alert(1)", Reason::BadJson),
            ("//evil.example/x", Reason::BadJson),
            ("data:image/png;base64,AAAA", Reason::BadJson),
            ("https://x/a b.jpg", Reason::BadJson),
            ("https://x/\u{7}", Reason::BadJson),
            (long.as_str(), Reason::TooLarge),
        ] {
            assert_eq!(
                check_thumbnail_url(bad).unwrap_err().reason,
                reason,
                "{bad}"
            );
        }
    }
}
