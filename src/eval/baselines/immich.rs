//! Immich's incremental face-recognition rule (core faces found people, others wait).
//!
//! Upstream (immich-app/immich, server):
//! - `server/src/services/person.service.ts`, `handleRecognizeFaces({ id, deferred })`:
//!   1. `matches = searchFaces({ embedding, maxDistance, numResults: minFaces })` — the
//!      `minFaces` nearest faces of the whole library within `maxDistance`, nearest first,
//!      and "`matches` also includes the face itself".
//!   2. If `minFaces > 1 && matches.length <= 1` the face matched only itself: it is
//!      skipped for good (not deferred) and stays without a person.
//!   3. `isCore = matches.length >= minFaces`. A non-core face on its first visit is
//!      re-queued with `deferred: true` (BullMQ appends it behind the faces already
//!      queued, so deferred faces run after the first pass) and skipped for now.
//!   4. `personId` = the first match (nearest first) that already has a person; if none,
//!      a second search `numResults: 1, hasPerson: true` takes the nearest face WITH a
//!      person within `maxDistance`.
//!   5. A core face with no such person founds a new person; any face with a `personId`
//!      joins it. So a deferred (non-core) face joins the nearest person within reach, or
//!      stays unassigned — it never founds one.
//! - `server/src/repositories/search.repository.ts`, `searchFaces`: orders by
//!   `face_search.embedding <=> embedding` (pgvector cosine distance), `limit numResults`,
//!   then keeps `distance <= maxDistance` — an INCLUSIVE bound.
//! - Defaults in the server's system config: `facialRecognition.maxDistance = 0.5`,
//!   `minFaces = 3`.
//!
//! Mirror: faces are processed in input order (the order their recognition jobs were
//! queued); all faces are already "in the table" (Immich waits for face detection to finish
//! before queueing recognition), and "the whole table" is each face's kNN list, which caps
//! the person search at k neighbours. The face's own match (step 1) is counted without
//! being in the kNN list: `matches.length = 1 + min(minFaces - 1, #neighbours within reach)`.

use super::{check_knn, check_threshold, cos_from_cosine_distance, BaselineError};
use crate::eval::features::Features;
use crate::eval::knn::Knn;

/// Immich's `maxDistance` 0.5 (cosine distance) as a cosine similarity: `1 - 0.5 = 0.5`.
/// A neighbour counts when similarity >= threshold (Immich keeps `distance <= maxDistance`).
pub const STOCK_THRESHOLD: f32 = cos_from_cosine_distance(0.5);
/// kNN lists per face. Immich searches the whole face table; 80 caps the person search.
pub const STOCK_K: usize = 80;
/// Immich's `minFaces`: matches (the face itself included) needed to be a core face.
pub const STOCK_MIN_FACES: usize = 3;

/// Parameters of Immich's rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImmichParams {
    /// A neighbour matches when cosine similarity >= threshold.
    pub threshold: f32,
    /// Matches, counting the face itself, that make a face core (Immich's `minFaces`).
    pub min_faces: usize,
}

impl Default for ImmichParams {
    fn default() -> Self {
        ImmichParams {
            threshold: STOCK_THRESHOLD,
            min_faces: STOCK_MIN_FACES,
        }
    }
}

/// Runs Immich's recognition jobs over all faces: a first pass in input order, then the
/// deferred (non-core) faces in the order they were deferred.
pub fn cluster(
    features: &Features,
    knn: &Knn,
    params: &ImmichParams,
) -> Result<Vec<Option<u64>>, BaselineError> {
    check_knn(features, knn)?;
    check_threshold("immich", params.threshold)?;
    if params.min_faces == 0 {
        // Immich validates numResults = minFaces to be at least 1.
        return Err(BaselineError::InvalidParam {
            baseline: "immich",
            name: "min_faces",
            value: "0".to_string(),
            reason: "must be at least 1 (the face itself always matches)",
        });
    }
    let n = features.n();
    let mut person: Vec<Option<u64>> = vec![None; n];
    let mut next_person: u64 = 0;
    let mut deferred: Vec<usize> = Vec::new();

    for face in 0..n {
        if let Some(face) = recognize(face, false, knn, params, &mut person, &mut next_person) {
            deferred.push(face);
        }
    }
    for face in deferred {
        // A deferred job never defers again, so nothing comes back from this pass.
        let _ = recognize(face, true, knn, params, &mut person, &mut next_person);
    }
    Ok(person)
}

/// One `handleRecognizeFaces` job. Returns `Some(face)` when the face must be deferred.
fn recognize(
    face: usize,
    is_deferred: bool,
    knn: &Knn,
    params: &ImmichParams,
    person: &mut [Option<u64>],
    next_person: &mut u64,
) -> Option<usize> {
    if person[face].is_some() {
        return None;
    }
    // Neighbours within reach, nearest first (kNN lists are sorted by similarity).
    let mut within = knn.neighbors[face]
        .iter()
        .take_while(|&&(_, similarity)| similarity >= params.threshold)
        .map(|&(j, _)| j as usize);
    // `matches` is the face itself plus up to minFaces - 1 nearest neighbours in reach.
    let others: Vec<usize> = within.by_ref().take(params.min_faces - 1).collect();
    let match_count = 1 + others.len();
    if params.min_faces > 1 && match_count <= 1 {
        return None;
    }
    let is_core = match_count >= params.min_faces;
    if !is_core && !is_deferred {
        return Some(face);
    }
    // First match with a person, else the nearest face in reach with a person. The rest of
    // `within` continues after `others`, so chaining them scans the list exactly once.
    let found = others.iter().copied().chain(within).find_map(|j| person[j]);
    let assigned = match found {
        Some(p) => Some(p),
        None if is_core => {
            let p = *next_person;
            *next_person += 1;
            Some(p)
        }
        None => None,
    };
    person[face] = assigned;
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::baselines::test_support::{normalized, scattered, two_groups};

    #[test]
    fn stock_values() {
        assert_eq!(STOCK_THRESHOLD, 0.5);
        assert_eq!(STOCK_MIN_FACES, 3);
    }

    #[test]
    fn two_tight_groups_become_two_people() {
        let (features, knn) = two_groups();
        let people = cluster(&features, &knn, &ImmichParams::default()).unwrap();
        assert_eq!(
            people,
            vec![Some(0), Some(0), Some(0), Some(1), Some(1), Some(1)]
        );
    }

    #[test]
    fn isolated_faces_stay_unassigned() {
        let (features, knn) = scattered();
        let people = cluster(&features, &knn, &ImmichParams::default()).unwrap();
        assert_eq!(people, vec![None; 6]);
    }

    #[test]
    fn pairs_are_not_core_and_never_found_a_person() {
        // Two faces close together and nothing else: each matches itself and one other,
        // 2 < minFaces = 3, so both are deferred, and in the deferred pass neither finds a
        // person to join.
        let (features, knn) = normalized(&[[1.0f32, 0.0], [1.0, 0.01], [0.0, 1.0]]);
        let people = cluster(&features, &knn, &ImmichParams::default()).unwrap();
        assert_eq!(people, vec![None, None, None]);
        // With minFaces = 2 the pair is core: the first founds a person, the second joins.
        let params = ImmichParams {
            min_faces: 2,
            ..Default::default()
        };
        assert_eq!(
            cluster(&features, &knn, &params).unwrap(),
            vec![Some(0), Some(0), None]
        );
    }

    #[test]
    fn deferred_face_joins_nearest_person() {
        // Faces 0..3 form a tight core group; face 4 is within reach of face 3 only
        // (cos(face 4, face 3) ~ 0.69, cos(face 4, others) < 0.39): one neighbour, not core,
        // deferred, then joins face 3's person in the second pass.
        let raw: [[f32; 2]; 5] = [[1.0, 0.0], [1.0, 0.05], [1.0, 0.1], [1.0, 0.5], [0.3, 1.0]];
        let (features, knn) = normalized(&raw);
        let params = ImmichParams {
            threshold: 0.5,
            min_faces: 3,
        };
        let sim = |a: usize, b: usize| -> f32 {
            features
                .row(a)
                .iter()
                .zip(features.row(b))
                .map(|(x, y)| x * y)
                .sum()
        };
        assert!(sim(4, 3) >= 0.5 && sim(4, 2) < 0.5, "fixture geometry");
        let people = cluster(&features, &knn, &params).unwrap();
        assert_eq!(people, vec![Some(0); 5]);
    }

    #[test]
    fn zero_min_faces_is_refused() {
        let (features, knn) = two_groups();
        let params = ImmichParams {
            min_faces: 0,
            ..Default::default()
        };
        assert!(matches!(
            cluster(&features, &knn, &params),
            Err(BaselineError::InvalidParam {
                name: "min_faces",
                ..
            })
        ));
    }
}
