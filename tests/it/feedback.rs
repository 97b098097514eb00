//! Operator feedback: random interleavings of insertions and commands keep every constraint (a
//! cannot-link never inside a cluster, a must-link never across two) and, with the exact rule,
//! keep the clusters equal to the constrained rule computed at once; refused commands change
//! nothing; a repeated command id is a no-op; the faces of one photo are never one cluster; a
//! restart anywhere between commands equals an uninterrupted run.

use std::collections::BTreeMap;

use clip_cluster::clusterer::Clusterer;
use clip_cluster::engine::feedback::{Command, FeedbackError, Op};
use clip_cluster::engine::{Engine, Face, FaceMeta, FaceRef};
use clip_cluster::index::ExactIndex;
use rand::{Rng, SeedableRng};

use crate::support::{clustered_vectors, small_config, small_params};

/// Canonical partition: sorted member lists.
fn canon<L: Ord + Copy>(labels: &[L]) -> Vec<Vec<u32>> {
    let mut m: BTreeMap<L, Vec<u32>> = BTreeMap::new();
    for (i, l) in labels.iter().enumerate() {
        m.entry(*l).or_default().push(i as u32);
    }
    let mut v: Vec<Vec<u32>> = m.into_values().collect();
    v.sort();
    v
}

/// Every constraint held: cannot-links apart, must-links together, names on live clusters.
fn check(e: &Engine<ExactIndex>, what: &str) {
    let a = e.assignments();
    let r = e.constraints();
    for (x, y) in r.cannot_pairs() {
        assert_ne!(
            a[x as usize], a[y as usize],
            "{what}: cannot-link {x}-{y} crossed"
        );
    }
    for (x, y) in r.must_pairs() {
        assert_eq!(
            a[x as usize], a[y as usize],
            "{what}: must-link {x}-{y} broken"
        );
    }
    for id in r.names().keys() {
        assert!(
            a.contains(id),
            "{what}: name on a cluster {id} that is gone"
        );
    }
}

/// A random command over the current state (ids that exist, mostly).
fn command(e: &Engine<ExactIndex>, rng: &mut impl Rng, n: usize, names: bool) -> Command {
    let a = e.assignments();
    let pick = |rng: &mut dyn rand::RngCore| a[rng.gen_range(0..a.len())];
    let face =
        |rng: &mut dyn rand::RngCore| e.face_id(rng.gen_range(0..a.len() as u32)).to_string();
    let op = match rng.gen_range(0..if names { 6 } else { 5 }) {
        0 => Op::Merge {
            cluster_ids: vec![pick(rng), pick(rng)],
        },
        1 => {
            let c = pick(rng);
            let members: Vec<u32> = (0..a.len() as u32)
                .filter(|&s| a[s as usize] == c)
                .collect();
            let take = rng.gen_range(1..=members.len());
            Op::Split {
                face_ids: members[..take]
                    .iter()
                    .map(|&s| e.face_id(s).to_string())
                    .collect(),
            }
        }
        2 => Op::NotInCluster {
            face_id: face(rng),
            cluster_id: pick(rng),
        },
        3 => Op::Assign {
            face_id: face(rng),
            cluster_id: pick(rng),
        },
        4 => Op::Undo {
            command_id: format!("c{}", rng.gen_range(0..n.max(1))),
        },
        _ => Op::Name {
            cluster_id: pick(rng),
            name: ["ann", "bob", "cy"]
                .get(rng.gen_range(0..4))
                .map(|s| s.to_string()),
        },
    };
    Command {
        command_id: format!("c{n}"),
        op,
    }
}

fn meta(rng: &mut impl Rng, i: usize) -> FaceMeta {
    FaceMeta {
        // About one face in three shares its photo with the one before.
        image_id: Some(format!(
            "img-{}",
            i - usize::from(i > 0 && rng.gen_bool(0.35))
        )),
        ..Default::default()
    }
}

/// Inserts and commands interleaved at random, the constraints and (when `exact`) the rule's
/// partition checked after every step. Returns (commands applied, refused).
fn interleave(seed: u64, support: f32, region: usize, names: bool) -> (usize, usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let p = small_params(support, region);
    let vs = clustered_vectors(&mut rng, 160, p.dim);
    let mut e = Engine::new(p, ExactIndex::new(p.dim));
    e.set_tracking(false);
    let (mut applied, mut refused, mut n_cmd) = (0, 0, 0);
    let mut last: Option<Command> = None;
    let mut i = 0;
    while i < vs.len() {
        if i < 10 || rng.gen_bool(0.7) {
            let m = meta(&mut rng, i);
            e.insert_face(FaceRef {
                face_id: &format!("f{i}"),
                vector: &vs[i],
                variants: &[],
                meta: &m,
            })
            .unwrap();
            i += 1;
        } else {
            let cmd = command(&e, &mut rng, n_cmd, names);
            let (before, pairs) = (e.assignments(), e.constraints().cannot_pairs());
            match e.apply_feedback(&cmd) {
                Ok((r, _)) => {
                    assert!(!r.duplicate);
                    applied += 1;
                    n_cmd += 1;
                    match &cmd.op {
                        Op::Merge { cluster_ids } => {
                            // The merged clusters' oldest faces are one cluster now (the rest
                            // follow by their edges, the rule recomputed).
                            let a = e.assignments();
                            let olds: Vec<u32> = cluster_ids
                                .iter()
                                .filter_map(|c| before.iter().position(|x| x == c))
                                .map(|s| s as u32)
                                .collect();
                            assert!(
                                olds.windows(2)
                                    .all(|w| a[w[0] as usize] == a[w[1] as usize]),
                                "seed {seed}: merge holds"
                            );
                        }
                        Op::Split { face_ids } => {
                            let a = e.assignments();
                            let seqs: Vec<u32> =
                                face_ids.iter().map(|f| e.seq_of(f).unwrap()).collect();
                            let c = a[seqs[0] as usize];
                            assert!(
                                seqs.iter().all(|&s| a[s as usize] == c),
                                "seed {seed}: split faces together"
                            );
                            let old = before[seqs[0] as usize];
                            assert!(
                                (0..before.len()).all(|s| before[s] != old
                                    || seqs.contains(&(s as u32))
                                    || a[s] != c),
                                "seed {seed}: split faces apart from the rest"
                            );
                        }
                        _ => {}
                    }
                    last = Some(cmd);
                }
                Err(err) => {
                    refused += 1;
                    assert!(
                        matches!(
                            err,
                            FeedbackError::Conflict(_)
                                | FeedbackError::Invalid(_)
                                | FeedbackError::UnknownCommand(_)
                        ),
                        "seed {seed}: {err}"
                    );
                    assert_eq!(
                        e.assignments(),
                        before,
                        "seed {seed}: a refused command changes nothing"
                    );
                    assert_eq!(e.constraints().cannot_pairs(), pairs);
                }
            }
            if let Some(c) = &last {
                if rng.gen_bool(0.2) {
                    let before = e.assignments();
                    let (r, events) = e.apply_feedback(c).unwrap();
                    assert!(r.duplicate && events.is_empty());
                    assert_eq!(e.assignments(), before);
                }
            }
        }
        let what = format!("seed {seed}, {i} faces, {n_cmd} commands");
        check(&e, &what);
        if region == 0 && !names {
            assert_eq!(
                canon(&e.assignments()),
                canon(&e.rule_partition()),
                "{what}: the stream is the constrained rule"
            );
        }
    }
    (applied, refused)
}

#[test]
fn random_interleavings_keep_every_constraint_and_the_rule() {
    let mut totals = (0, 0);
    for seed in 0..6 {
        for (support, region, names) in [
            (0.3, 0, false),
            (0.0, 0, false),
            (0.3, 8, true),
            (0.0, 8, true),
        ] {
            let (a, r) = interleave(seed, support, region, names);
            totals.0 += a;
            totals.1 += r;
        }
    }
    // Both paths were exercised: commands applied and commands refused.
    assert!(totals.0 > 200 && totals.1 > 50, "{totals:?}");
}

#[test]
fn names_follow_ids_and_two_names_never_merge() {
    let p = small_params(0.0, 0);
    let mut e = Engine::new(p, ExactIndex::new(p.dim));
    let v = |x: f32| vec![1.0, x, 0.0, 0.0, 0.0, 0.0];
    for (i, x) in [0.0, 0.05, 3.0, 3.05].iter().enumerate() {
        e.insert(&format!("f{i}"), &v(*x)).unwrap();
    }
    let (a, b) = (e.cluster_of(0), e.cluster_of(2));
    assert_ne!(a, b);
    let name = |e: &mut Engine<ExactIndex>, id: &str, c: u64, n: &str| {
        e.apply_feedback(&Command {
            command_id: id.into(),
            op: Op::Name {
                cluster_id: c,
                name: Some(n.into()),
            },
        })
    };
    name(&mut e, "n1", a, "  Ann ").unwrap();
    assert_eq!(e.cluster_name(a), Some("Ann"), "trimmed");
    name(&mut e, "n2", b, "Bob").unwrap();
    let merge = Command {
        command_id: "m1".into(),
        op: Op::Merge {
            cluster_ids: vec![a, b],
        },
    };
    let Err(FeedbackError::Conflict(m)) = e.apply_feedback(&merge) else {
        panic!("two names merged")
    };
    assert!(m.contains("Ann") && m.contains("Bob"), "{m}");
    // The same id for another command is a conflict; the same command again a duplicate.
    assert!(matches!(
        name(&mut e, "n2", b, "Other"),
        Err(FeedbackError::Conflict(_))
    ));
    assert!(name(&mut e, "n2", b, "Bob").unwrap().0.duplicate);
    // A face that bridges the two named clusters joins one; they never merge.
    e.insert("bridge", &v(1.5)).unwrap();
    assert_ne!(e.cluster_of(0), e.cluster_of(2));
    assert_eq!(
        (
            e.cluster_name(e.cluster_of(0)),
            e.cluster_name(e.cluster_of(2))
        ),
        (Some("Ann"), Some("Bob"))
    );
    // Clear Bob's name: the merge goes through and keeps the named id.
    e.apply_feedback(&Command {
        command_id: "n3".into(),
        op: Op::Name {
            cluster_id: b,
            name: None,
        },
    })
    .unwrap();
    let (r, events) = e.apply_feedback(&merge).unwrap();
    assert_eq!(r.clusters, vec![a]);
    assert_eq!(e.cluster_of(2), a, "merged into the named cluster");
    assert!(events
        .iter()
        .any(|ev| matches!(ev, clip_cluster::engine::Event::FeedbackApplied { .. })));
    // Bad names and ids are refused.
    for bad in ["", "   ", "a\u{7}b"] {
        assert!(
            matches!(
                name(&mut e, &format!("bad{bad}"), a, bad),
                Err(FeedbackError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        name(&mut e, "x", 999, "Z"),
        Err(FeedbackError::UnknownCluster(999))
    ));
    // Undo the merge: its must-link goes; the bridge face still holds them (no name apart now).
    e.apply_feedback(&Command {
        command_id: "u1".into(),
        op: Op::Undo {
            command_id: "m1".into(),
        },
    })
    .unwrap();
    assert!(e.constraints().must_pairs().is_empty());
    assert!(matches!(
        e.apply_feedback(&Command {
            command_id: "u2".into(),
            op: Op::Undo {
                command_id: "m1".into()
            }
        }),
        Err(FeedbackError::Conflict(_))
    ));
}

#[test]
fn faces_of_one_photo_are_never_one_cluster() {
    let mut p = small_params(0.0, 0);
    let same = vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    for rule in [true, false] {
        p.same_image_cannot_link = rule;
        let mut e = Engine::new(p, ExactIndex::new(p.dim));
        for i in 0..3 {
            let m = FaceMeta {
                image_id: Some(if i < 2 {
                    "photo".into()
                } else {
                    "other".into()
                }),
                ..Default::default()
            };
            e.insert_face(FaceRef {
                face_id: &format!("f{i}"),
                vector: &same,
                variants: &[],
                meta: &m,
            })
            .unwrap();
        }
        let a = e.assignments();
        assert_eq!(a[0] != a[1], rule, "rule {rule}: {a:?}");
        assert!(
            a[2] == a[0] || a[2] == a[1],
            "the other photo's face joins one of them"
        );
    }
}

/// Faces in batches of 20, and after each batch a command chosen from the state (so the same
/// state gives the same command).
fn run(c: &mut Clusterer, vs: &[Vec<f32>], batches: std::ops::Range<usize>) {
    for b in batches {
        let faces: Vec<Face> = (b * 20..(b + 1) * 20)
            .map(|i| Face {
                face_id: format!("f{i}"),
                vector: vs[i].clone(),
                meta: FaceMeta {
                    image_id: Some(format!("img-{}", i / 2)),
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect();
        c.apply(&faces, &[]).unwrap();
        let a = c.engine().assignments();
        let mut sizes: BTreeMap<u64, usize> = BTreeMap::new();
        for id in &a {
            *sizes.entry(*id).or_default() += 1;
        }
        let mut by_size: Vec<(usize, u64)> = sizes.iter().map(|(id, n)| (*n, *id)).collect();
        by_size.sort_unstable_by(|x, y| y.cmp(x));
        let top = by_size[0].1;
        let members: Vec<u32> = (0..a.len() as u32)
            .filter(|&s| a[s as usize] == top)
            .collect();
        let op = match b % 4 {
            0 => Op::Name {
                cluster_id: top,
                name: Some(format!("person {b}")),
            },
            1 if by_size.len() > 1 => Op::Merge {
                cluster_ids: vec![top, by_size[1].1],
            },
            2 if members.len() > 2 => Op::Split {
                face_ids: members[..members.len() / 2]
                    .iter()
                    .map(|&s| c.engine().face_id(s).to_string())
                    .collect(),
            },
            _ => Op::NotInCluster {
                face_id: c.engine().face_id(members[0]).to_string(),
                cluster_id: by_size[by_size.len() - 1].1,
            },
        };
        // Refusals are part of the run too (the same in both).
        let _ = c
            .apply_feedback(&Command {
                command_id: format!("cmd-{b}"),
                op,
            })
            .unwrap();
    }
}

#[test]
fn restart_with_feedback_equals_an_uninterrupted_run() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let vs = clustered_vectors(&mut rng, 200, 6);
    let full = tempfile::tempdir().unwrap();
    let mut a = Clusterer::open(&small_config(full.path(), &[])).unwrap();
    run(&mut a, &vs, 0..10);
    let names = |c: &Clusterer| {
        let mut v: Vec<(u64, String)> = c
            .engine()
            .constraints()
            .names()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        v.sort();
        v
    };
    let want = (
        a.engine().assignments(),
        crate::support::outbox_events(&a),
        names(&a),
        a.engine().constraints().cannot_pairs(),
    );
    assert!(!want.2.is_empty(), "names were set");
    drop(a);
    for stop in [1, 3, 6, 9] {
        let d = tempfile::tempdir().unwrap();
        let mut b = Clusterer::open(&small_config(d.path(), &[])).unwrap();
        run(&mut b, &vs, 0..stop);
        drop(b);
        let mut b = Clusterer::open(&small_config(d.path(), &[])).unwrap();
        run(&mut b, &vs, stop..10);
        assert_eq!(b.engine().assignments(), want.0, "stopped at batch {stop}");
        assert_eq!(
            crate::support::outbox_events(&b),
            want.1,
            "stopped at batch {stop}"
        );
        assert_eq!(names(&b), want.2);
        assert_eq!(b.engine().constraints().cannot_pairs(), want.3);
    }
}
