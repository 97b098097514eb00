//! The API's cluster listing (`api::read::ClusterIndex`) follows the committed events instead of
//! being rebuilt over every face: after every step of a random interleaving of batches,
//! commands and erasures it equals one built afresh. The events themselves are checked as a
//! strict subscriber reads them: every move and erasure names the cluster the face is in, every
//! merge a cluster that exists.

use std::collections::HashMap;

use clip_cluster::clusterer::{Clusterer, EraseTarget};
use clip_cluster::engine::feedback::{Command, Op};
use clip_cluster::engine::Event;
use rand::SeedableRng;

use crate::recluster::faces;
use crate::support::{clustered_vectors, small_config};

/// The API's cluster listing follows the committed events instead of rebuilding: after every
/// step of a random interleaving of batches, commands and erasures it equals one built afresh;
/// it is rebuilt only when the events it missed are no longer held (a state just opened).
#[test]
fn the_cluster_listing_follows_every_change() {
    use clip_cluster::api::read::ClusterIndex;
    use rand::Rng;
    let root = tempfile::tempdir().unwrap();
    let cfg = small_config(root.path(), &[("ENGINE__SUPPORT_REGION", "8")]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let vs = clustered_vectors(&mut rng, 400, 6);
    let mut c = Clusterer::open(&cfg).unwrap();
    c.apply(&faces(&vs[..20], 0), &[]).unwrap();
    let mut idx = ClusterIndex::build(&c);
    let mut strict: HashMap<String, u64> = (0..c.engine().n_faces() as u32)
        .map(|s| (c.engine().face_id(s).to_string(), c.engine().cluster_of(s)))
        .collect();
    let mut seen = c.engine().counters().next_event_seq;
    let mut next = 20;
    let (mut followed, mut commands) = (0, 0);
    for step in 0..120 {
        match rng.gen_range(0..10) {
            0..=5 if next < vs.len() => {
                let n = rng.gen_range(1..12).min(vs.len() - next);
                c.apply(&faces(&vs[next..next + n], next), &[]).unwrap();
                next += n;
            }
            6 | 7 => {
                let live: Vec<u32> = (0..c.engine().n_faces() as u32)
                    .filter(|&s| !c.engine().is_erased(s))
                    .collect();
                let x = live[rng.gen_range(0..live.len())];
                let y = live[rng.gen_range(0..live.len())];
                let (e, id) = (c.engine(), format!("cmd{step}"));
                let op = match rng.gen_range(0..3) {
                    0 => Op::Merge {
                        cluster_ids: vec![e.cluster_of(x), e.cluster_of(y)],
                    },
                    1 => Op::NotInCluster {
                        face_id: e.face_id(x).to_string(),
                        cluster_id: e.cluster_of(x),
                    },
                    _ => Op::Split {
                        face_ids: vec![e.face_id(x).to_string()],
                    },
                };
                let r = c.apply_feedback(&Command { command_id: id, op }).unwrap();
                commands += usize::from(r.is_ok());
            }
            _ => {
                let live: Vec<u32> = (0..c.engine().n_faces() as u32)
                    .filter(|&s| !c.engine().is_erased(s))
                    .collect();
                let x = live[rng.gen_range(0..live.len())];
                let target = if rng.gen_bool(0.2) {
                    EraseTarget::Cluster(c.engine().cluster_of(x))
                } else {
                    EraseTarget::Face(c.engine().face_id(x).to_string())
                };
                c.erase(&target, false).unwrap().unwrap();
            }
        }
        for ev in c.events_since(seen).expect("held") {
            replay_strictly(&mut strict, ev, step);
        }
        seen = c.engine().counters().next_event_seq;
        let e = c.engine();
        for s in 0..e.n_faces() as u32 {
            let want = (!e.is_erased(s)).then(|| e.cluster_of(s));
            assert_eq!(
                strict.get(e.face_id(s)).copied(),
                want,
                "step {step}: replayed"
            );
        }
        if rng.gen_bool(0.7) {
            assert!(idx.follow(&c), "step {step}: the events since are held");
            followed += 1;
            assert_eq!(idx, ClusterIndex::build(&c), "step {step}");
        }
    }
    assert!(followed > 50 && commands > 5, "{followed} {commands}");
    // A state just opened holds no events of before: the listing must be rebuilt.
    let mut stale = ClusterIndex::build(&c);
    c.apply(&faces(&vs[next - 1..next], 999), &[]).unwrap();
    drop(c);
    let c = Clusterer::open(&cfg).unwrap();
    assert!(!stale.follow(&c), "nothing to follow from");
}

/// Applies `ev` to the face -> cluster map as a strict subscriber would, asserting that it
/// names clusters as they are at that point of the stream.
fn replay_strictly(m: &mut HashMap<String, u64>, ev: &Event, step: usize) {
    match ev {
        Event::FaceAssigned {
            face_id,
            cluster_id,
            ..
        } => {
            assert!(m.insert(face_id.clone(), *cluster_id).is_none(), "{ev:?}");
        }
        Event::ClustersMerged {
            into,
            from,
            n_faces,
        } => {
            let moved = m
                .values_mut()
                .filter(|c| **c == *from)
                .map(|c| *c = *into)
                .count() as u64;
            // `n_faces` may count the face being inserted, not announced yet.
            assert!(
                moved > 0 && (moved == *n_faces || moved + 1 == *n_faces),
                "step {step}: {ev:?} ({moved} faces)"
            );
        }
        Event::FaceMoved { face_id, from, to } => {
            let c = m.get_mut(face_id).expect("a face moved is known");
            assert_eq!(*c, *from, "step {step}: {ev:?} names the cluster it leaves");
            *c = *to;
        }
        Event::FaceErased {
            face_id,
            cluster_id,
            ..
        } => {
            assert_eq!(m.remove(face_id), Some(*cluster_id), "step {step}: {ev:?}");
        }
        _ => {}
    }
}
