//! `POST /v1/search {embedding | image_b64, k, domain}`: the nearest faces to an embedding, or
//! to the face the daemon's embedder finds in an image, and their clusters.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchBody {
    embedding: Option<Vec<f32>>,
    /// A photo or face crop (JPEG, PNG or WebP, base64), embedded as the stream's images are.
    image_b64: Option<String>,
    k: Option<usize>,
    domain: Option<String>,
}

/// The query vector of a search: the embedding given, or the given image's face embedded (and
/// where it was found, when the embedder located it).
fn query_vector(
    app: &App,
    b: &mut SearchBody,
) -> Result<(Vec<f32>, Option<serde_json::Value>), Refusal> {
    use base64::Engine as _;
    match (b.embedding.take(), b.image_b64.take()) {
        (Some(v), None) => Ok((v, None)),
        (None, Some(b64)) => {
            let Some(embedder) = &app.embedder else {
                return Err(refuse(
                    Outcome::BadRequest,
                    "this daemon does not embed images (role cluster, or embed.enabled = false): send an embedding",
                ));
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim().as_bytes())
                .map_err(|e| refuse(Outcome::BadRequest, format!("image_b64: {e}")))?;
            let face = embedder
                .embed_encoded(&[&bytes])
                .pop()
                .ok_or_else(|| refuse(Outcome::Unavailable, "the embedder gave no result"))?
                .map_err(|e| match e {
                    crate::embed::EmbedError::Model(m) => {
                        refuse(Outcome::Unavailable, format!("the embedder failed: {m}"))
                    }
                    e => refuse(Outcome::BadRequest, format!("image_b64: {e}")),
                })?;
            let found = face
                .located
                .map(|l| json!({ "face_box": l.face_box, "located": l.outcome }));
            Ok((face.vector, found))
        }
        (Some(_), Some(_)) => Err(refuse(
            Outcome::BadRequest,
            "bad body: give embedding or image_b64, not both",
        )),
        (None, None) => Err(refuse(
            Outcome::BadRequest,
            "bad body: give embedding (a vector of model.dim) or image_b64 (a photo, base64)",
        )),
    }
}

pub(super) async fn search(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<SearchBody>, JsonRejection>,
) -> Response {
    let r = async {
        app.check(&headers, false)?;
        let Json(mut b) = body.map_err(|e| body_refusal(&app, e))?;
        let k = b.k.unwrap_or(10);
        if !(1..=MAX_LIMIT).contains(&k) {
            return Err(refuse(Outcome::BadRequest, format!("k {k}: must be in 1..={MAX_LIMIT}")));
        }
        let (name, shared) = app.domain(b.domain.as_deref())?;
        let app2 = app.clone();
        blocking(move || {
            let (embedding, found) = query_vector(&app2, &mut b)?;
            let c = shared.lock();
            let hits = read::search(&c, &name, &embedding, k).map_err(|e| refuse(Outcome::BadRequest, e))?;
            // The clusters among the hits, best first, with how many hits each holds.
            let mut clusters: Vec<(u64, f32, usize)> = Vec::new();
            for h in &hits {
                match clusters.iter_mut().find(|c| c.0 == h.cluster_id) {
                    Some(c) => c.2 += 1,
                    None => clusters.push((h.cluster_id, h.score, 1)),
                }
            }
            let clusters: Vec<_> = clusters
                .into_iter()
                .map(|(id, best, hits)| json!({ "cluster_id": id, "best_score": best, "hits": hits }))
                .collect();
            let mut v = json!({ "domain": name, "faces": hits, "clusters": clusters });
            if let Some(f) = found {
                v["query"] = f;
            }
            Ok(v)
        })
        .await
    }
    .await;
    app.finish(r)
}
