//! Re-clustering a state under a new configuration: every live face comes back, erased ids stay
//! refused, every constraint holds, names follow the faces they were on and two names never
//! share a cluster, surviving clusters keep their ids, the new state's events take a subscriber
//! from the old clusters to the new ones, the old state is untouched, and the new one opens
//! under the new configuration and goes on. Under the same configuration (exact rule, no names)
//! nothing changes.

use std::collections::{BTreeMap, HashMap, HashSet};

use clip_cluster::clusterer::{recluster, Clusterer, EraseTarget};
use clip_cluster::engine::feedback::{Command, Op};
use clip_cluster::engine::{Event, Face, FaceMeta};
use rand::SeedableRng;

use crate::support::{clustered_vectors, small_config};

/// Faces `f<from>..` of `vs`, two to a photo, from three cameras.
pub(crate) fn faces(vs: &[Vec<f32>], from: usize) -> Vec<Face> {
    vs.iter()
        .enumerate()
        .map(|(i, v)| Face {
            meta: FaceMeta {
                source_id: Some(format!("cam{}", (from + i) % 3)),
                // Pairs of faces share a photo: the photo rule keeps them apart.
                image_id: Some(format!("img{}", (from + i) / 2)),
                ts: Some(1_700_000_000_000 + (from + i) as i64),
                ..Default::default()
            },
            ..Face::new(format!("f{}", from + i), v.clone())
        })
        .collect()
}

fn cmd(c: &mut Clusterer, id: &str, op: Op) {
    c.apply_feedback(&Command {
        command_id: id.into(),
        op,
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("{id}: {e}"));
}

/// Clusters by id: id -> sorted face ids (live faces only).
fn clusters(c: &Clusterer) -> BTreeMap<u64, Vec<String>> {
    let e = c.engine();
    let mut m: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for s in 0..e.n_faces() as u32 {
        if !e.is_erased(s) {
            m.entry(e.cluster_of(s))
                .or_default()
                .push(e.face_id(s).to_string());
        }
    }
    m
}

/// Builds the old state: 240 faces, names, "not this person", a split, erasures.
fn old_state(dir: &std::path::Path, extra: &[(&str, &str)], names: bool) -> Clusterer {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let vs = clustered_vectors(&mut rng, 240, 6);
    let mut c = Clusterer::open(&small_config(dir, extra)).unwrap();
    c.apply(&faces(&vs[..200], 0), &[]).unwrap();
    let mut by_size: Vec<(u64, Vec<String>)> = clusters(&c).into_iter().collect();
    by_size.sort_by_key(|(id, f)| (std::cmp::Reverse(f.len()), *id));
    assert!(by_size.len() >= 3, "a few clusters: {}", by_size.len());
    if names {
        cmd(
            &mut c,
            "n1",
            Op::Name {
                cluster_id: by_size[0].0,
                name: Some("alice".into()),
            },
        );
        cmd(
            &mut c,
            "n2",
            Op::Name {
                cluster_id: by_size[1].0,
                name: Some("bob".into()),
            },
        );
    }
    cmd(
        &mut c,
        "not",
        Op::NotInCluster {
            face_id: by_size[0].1[3].clone(),
            cluster_id: by_size[0].0,
        },
    );
    cmd(
        &mut c,
        "split",
        Op::Split {
            face_ids: by_size[1].1[..3].to_vec(),
        },
    );
    c.erase(&EraseTarget::Face(by_size[2].1[0].clone()), false)
        .unwrap()
        .unwrap();
    c.erase(&EraseTarget::Face("f7".into()), false)
        .unwrap()
        .unwrap();
    c.apply(&faces(&vs[200..], 200), &[]).unwrap();
    c
}

#[test]
fn recluster_carries_faces_constraints_names_ids_and_erasures() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let old = old_state(&a, &[], true);
    let before = clusters(&old);
    let old_names: HashMap<u64, String> = old.engine().constraints().names().clone();
    let old_assign: HashMap<String, u64> = before
        .iter()
        .flat_map(|(id, fs)| fs.iter().map(move |f| (f.clone(), *id)))
        .collect();
    let erased: Vec<String> = (0..old.engine().n_faces() as u32)
        .filter(|&s| old.engine().is_erased(s))
        .map(|s| old.engine().face_id(s).to_string())
        .collect();
    assert_eq!(erased.len(), 2);
    let old_next = old.engine().counters().next_cluster_id;
    let old_cannot = old.engine().constraints().cannot_pairs().len();
    let old_must = old.engine().constraints().must_pairs().len();
    drop(old);

    // A stricter threshold and the plain components rule: another fingerprint.
    let new_cfg = small_config(&b, &[("ENGINE__T1", "0.9"), ("ENGINE__SUPPORT", "0")]);
    assert!(
        Clusterer::open(&small_config(
            &a,
            &[("ENGINE__T1", "0.9"), ("ENGINE__SUPPORT", "0")]
        ))
        .is_err(),
        "the old state refuses the new configuration"
    );
    let report = recluster(&a, &new_cfg).unwrap();
    assert_eq!(report.faces, 238);
    assert_eq!(report.erased, 2);
    assert_eq!(report.commands, 4);
    assert_eq!(report.regrouped.clusters_before, before.len() as u64);

    let mut c = Clusterer::open(&new_cfg).unwrap();
    let after = clusters(&c);
    let e = c.engine();
    assert_eq!(after.len() as u64, report.regrouped.clusters_after);
    // Every live face is back; erased ids are held and refused.
    let live: usize = after.values().map(Vec::len).sum();
    assert_eq!(live, 238);
    for id in &erased {
        let s = e.seq_of(id).expect("the erased id is held");
        assert!(e.is_erased(s), "{id} stays erased");
    }
    // Constraints: the same number of pairs, each honoured.
    let r = e.constraints();
    assert_eq!(r.cannot_pairs().len(), old_cannot);
    assert_eq!(r.must_pairs().len(), old_must);
    for (x, y) in r.cannot_pairs() {
        assert_ne!(e.cluster_of(x), e.cluster_of(y), "cannot-link crossed");
    }
    for (x, y) in r.must_pairs() {
        assert_eq!(e.cluster_of(x), e.cluster_of(y), "must-link broken");
    }
    // Names: on the cluster holding most of the named faces; two names never share a cluster.
    for (old_id, name) in &old_names {
        let mut count: HashMap<u64, usize> = HashMap::new();
        for f in &before[old_id] {
            *count.entry(e.cluster_of(e.seq_of(f).unwrap())).or_default() += 1;
        }
        let most = *count.values().max().unwrap();
        let holder = r
            .names()
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| *id)
            .unwrap_or_else(|| panic!("{name} was carried"));
        assert_eq!(count.get(&holder).copied(), Some(most), "{name}");
    }
    let tagged: HashMap<&str, &String> = old_names
        .iter()
        .flat_map(|(id, n)| before[id].iter().map(move |f| (f.as_str(), n)))
        .collect();
    for fs in after.values() {
        let names: HashSet<&String> = fs
            .iter()
            .filter_map(|f| tagged.get(f.as_str()).copied())
            .collect();
        assert!(names.len() <= 1, "two names in one cluster: {names:?}");
    }
    // Ids: an old id (heir) or a fresh one above every old id.
    for id in after.keys() {
        assert!(before.contains_key(id) || *id >= old_next, "id {id}");
    }
    assert_eq!(
        report.regrouped.kept_ids + report.regrouped.new_ids,
        after.len() as u64
    );
    // The events take a subscriber from the old clusters to the new ones; Reclustered last.
    let outbox = c.store().outbox(usize::MAX).unwrap();
    assert_eq!(outbox.len() as u64, report.events);
    let mut map = old_assign.clone();
    for (i, o) in outbox.iter().enumerate() {
        assert_eq!(o.event_seq, i as u64, "gap-free from 0");
        if let Event::FaceMoved { face_id, from, to } = &o.event {
            assert_eq!(map.insert(face_id.clone(), *to), Some(*from));
        }
    }
    for (id, fs) in &after {
        for f in fs {
            assert_eq!(map[f], *id, "{f} replays to its cluster");
        }
    }
    let moved = outbox
        .iter()
        .filter(|o| matches!(o.event, Event::FaceMoved { .. }))
        .count() as u64;
    assert_eq!(moved, report.regrouped.moved);
    assert!(moved > 0, "the stricter threshold moved faces");
    assert!(matches!(
        &outbox.last().unwrap().event,
        Event::Reclustered { from_state, faces: 238, .. } if *from_state == report.from_state
    ));

    // The old state is untouched.
    let old = Clusterer::open(&small_config(&a, &[])).unwrap();
    assert_eq!(clusters(&old), before);
    drop(old);

    // The new state goes on: an erased id is refused, new faces cluster, a restart holds.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let more = clustered_vectors(&mut rng, 20, 6);
    let res = c.apply(&faces(&more, 1000), &[]).unwrap();
    assert_eq!(res.applied, 20);
    let res = c
        .apply(&[Face::new(erased[0].clone(), more[0].clone())], &[])
        .unwrap();
    assert_eq!(res.erased_redelivered, 1);
    let now = clusters(&c);
    drop(c);
    let c = Clusterer::open(&new_cfg).unwrap();
    assert_eq!(clusters(&c), now);
    drop(c);

    // A target that holds a state, or another model's dimension, is refused.
    assert!(recluster(&a, &new_cfg).is_err());
    let other = small_config(&root.path().join("c"), &[("MODEL__DIM", "8")]);
    assert!(recluster(&a, &other).is_err());
}

#[test]
fn recluster_under_the_same_configuration_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    // The exact rule everywhere: the stream's clusters are the rule's partition.
    let extra = [("ENGINE__SUPPORT_REGION", "0")];
    let old = old_state(&a, &extra, false);
    let before = clusters(&old);
    drop(old);
    let report = recluster(&a, &small_config(&b, &extra)).unwrap();
    let c = Clusterer::open(&small_config(&b, &extra)).unwrap();
    assert_eq!(clusters(&c), before, "same clusters, same ids");
    assert_eq!(report.regrouped.moved, 0);
    assert_eq!(report.regrouped.new_ids, 0);
    assert_eq!(report.regrouped.retired_ids, 0);
    assert_eq!(report.events, 1, "only Reclustered");
}

/// The command line: a JSON report on stdout, the new state opens; a target that holds a state
/// is refused with a message and a non-zero exit.
#[test]
fn recluster_command_writes_the_new_state_and_refuses_a_used_target() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    drop(old_state(&a, &[], true));
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_clip-cluster"))
            .args(["recluster", "--from"])
            .arg(&a)
            .arg("--to")
            .arg(&b)
            .envs([
                ("CLIP_CLUSTER__MODEL__DIM", "6"),
                ("CLIP_CLUSTER__PROXY__MODE", "identity"),
                ("CLIP_CLUSTER__EDGE__SCORER", "cosine"),
                ("CLIP_CLUSTER__ENGINE__T1", "0.9"),
                ("CLIP_CLUSTER__CALIBRATION__MODE", "trained"),
                ("CLIP_CLUSTER__EMBED__ENABLED", "false"),
            ])
            .output()
            .unwrap()
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["faces"], 238);
    assert_eq!(report["names"], 2);
    assert!(stderr.contains("recluster: 238 faces"), "{stderr}");
    let again = run();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("holds a state already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
