//! Erasure over the API: `DELETE /v1/faces/{face_id}`, `DELETE /v1/clusters/{cluster_id}` (a
//! person) and `DELETE /v1/sources/{source_id}` (every face a camera, album or feed sent), each
//! with `?domain=D` (faces and sources: every open domain when absent) and `?compact=true`
//! (rebuild the index without the erased points at once, instead of at
//! `index.compact_fraction`). Durable when it returns: 200 with what was erased; 404 for an
//! unknown (or already erased) face or cluster.

use super::*;
use crate::clusterer::EraseTarget;
use crate::engine::feedback::FeedbackError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EraseQuery {
    domain: Option<String>,
    compact: Option<bool>,
}

/// Erases `target` in one domain; `Ok(None)` when the domain does not know it.
fn erase_in(
    (name, shared): (&str, &Shared),
    target: &EraseTarget,
    compact: bool,
    metrics: &Metrics,
) -> Result<Option<serde_json::Value>, Refusal> {
    let mut c = shared.lock();
    match c.erase(target, compact) {
        Err(e) => Err(refuse(
            Outcome::Unavailable,
            format!("the erasure could not be stored: {e}"),
        )),
        Ok(Err(FeedbackError::UnknownFace(_) | FeedbackError::UnknownCluster(_))) => Ok(None),
        Ok(Err(e)) => Err(refuse(Outcome::Unavailable, e.to_string())),
        Ok(Ok((report, events))) => {
            drop(c);
            metrics
                .faces_erased
                .with_label_values(&[target.reason()])
                .inc_by(report.erased.len() as u64);
            if let (Some(f), false) = (shared.wrote.get(), events.is_empty()) {
                f(events.len());
            }
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            v["domain"] = json!(name);
            Ok(Some(v))
        }
    }
}

async fn erase(
    app: App,
    headers: HeaderMap,
    target: EraseTarget,
    q: Result<Query<EraseQuery>, QueryRejection>,
) -> Response {
    let r = async {
        app.check(&headers, true)?;
        let q = query(q)?;
        let compact = q.compact.unwrap_or(false);
        let domains = match (&q.domain, &target) {
            (None, EraseTarget::Face(_) | EraseTarget::Source(_)) => app.all_domains(),
            (d, _) => vec![app.domain(d.as_deref())?],
        };
        let metrics = app.metrics.clone();
        blocking(move || {
            let mut results = Vec::new();
            for (name, shared) in &domains {
                if let Some(v) = erase_in((name, shared), &target, compact, &metrics)? {
                    results.push(v);
                    if matches!(target, EraseTarget::Face(_)) {
                        break;
                    }
                }
            }
            match (&target, results.is_empty()) {
                (EraseTarget::Face(id), true) => {
                    Err(refuse(Outcome::NotFound, format!("no face {id:?}")))
                }
                (EraseTarget::Cluster(id), true) => {
                    Err(refuse(Outcome::NotFound, format!("no cluster {id}")))
                }
                _ => {
                    let n: usize = results
                        .iter()
                        .map(|v| v["erased"].as_array().map_or(0, Vec::len))
                        .sum();
                    Ok(json!({ "n_erased": n, "domains": results }))
                }
            }
        })
        .await
    }
    .await;
    app.finish(r)
}

pub(super) async fn erase_face(
    State(app): State<App>,
    headers: HeaderMap,
    Path(face_id): Path<String>,
    q: Result<Query<EraseQuery>, QueryRejection>,
) -> Response {
    erase(app, headers, EraseTarget::Face(face_id), q).await
}

pub(super) async fn erase_cluster(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<EraseQuery>, QueryRejection>,
) -> Response {
    // The token first, as everywhere: an anonymous caller learns nothing from the id check.
    if let Err(r) = app.check(&headers, true) {
        return app.finish(Err(r));
    }
    let Ok(id) = id.parse::<u64>() else {
        let msg = format!("cluster id {id:?}: not a number");
        return app.finish(Err(refuse(Outcome::BadRequest, msg)));
    };
    erase(app, headers, EraseTarget::Cluster(id), q).await
}

pub(super) async fn erase_source(
    State(app): State<App>,
    headers: HeaderMap,
    Path(source_id): Path<String>,
    q: Result<Query<EraseQuery>, QueryRejection>,
) -> Response {
    erase(app, headers, EraseTarget::Source(source_id), q).await
}
