//! Faces: `GET /v1/faces/{face_id}` (its cluster and origin) and `GET
//! /v1/faces/{face_id}/thumbnail` (its kept picture, else a redirect to the producer's URL).

use super::*;

pub(super) async fn get_face(
    State(app): State<App>,
    headers: HeaderMap,
    Path(face_id): Path<String>,
) -> Response {
    let r = async {
        app.check(&headers, false)?;
        let domains = app.all_domains();
        blocking(move || {
            for (name, shared) in domains {
                let c = shared.lock();
                if let Some(f) =
                    read::face(&c, &name, &face_id).map_err(|e| refuse(Outcome::Unavailable, e))?
                {
                    return Ok(serde_json::to_value(f).unwrap_or_default());
                }
            }
            Err(refuse(Outcome::NotFound, format!("no face {face_id:?}")))
        })
        .await
    }
    .await;
    app.finish(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FaceQuery {
    domain: Option<String>,
}

/// `GET /v1/faces/{face_id}/thumbnail`: the kept picture, else a redirect to the producer's URL.
pub(super) async fn get_thumbnail(
    State(app): State<App>,
    headers: HeaderMap,
    Path(face_id): Path<String>,
    q: Result<Query<FaceQuery>, QueryRejection>,
) -> Response {
    let r = async {
        app.check(&headers, false)?;
        let q = query(q)?;
        let domains = match &q.domain {
            Some(d) => vec![app.domain(Some(d))?],
            None => app.all_domains(),
        };
        blocking(move || {
            for (_, shared) in domains {
                let c = shared.lock();
                match read::picture(&c, &face_id) {
                    Err(_) => continue,
                    Ok(Some(p)) => return Ok(p),
                    Ok(None) => {
                        return Err(refuse(
                            Outcome::NotFound,
                            format!("face {face_id:?} has no thumbnail (none was kept: api.keep_thumbnails off, or it came as an embedding without thumbnail_b64 or thumbnail_url)"),
                        ))
                    }
                }
            }
            Err(refuse(Outcome::NotFound, format!("no face {face_id:?}")))
        })
        .await
    }
    .await;
    match r {
        Ok(p) => {
            app.count(Outcome::Ok);
            use axum::http::header;
            match p {
                read::Picture::Stored(bytes) => (
                    StatusCode::OK,
                    [
                        (header::CONTENT_TYPE, image_type(&bytes)),
                        (header::CACHE_CONTROL, "private, max-age=60"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    bytes,
                )
                    .into_response(),
                read::Picture::Url(url) => {
                    (StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response()
                }
            }
        }
        Err(e) => app.finish(Err(e)),
    }
}

/// The media type of stored picture bytes (checked as images when they arrived).
fn image_type(b: &[u8]) -> &'static str {
    image::guess_format(b).map_or("image/jpeg", |f| f.to_mime_type())
}
