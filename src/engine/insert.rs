//! One insertion: search, proxy, out-list and re-linking, node intimacy on the touched
//! neighbourhood, weak faces, and the kept-edge difference handed to the cluster rule.

use super::many::{prepare, score_edges, Admit, Prepared, INDEX_AWAY};
use super::*;

impl<I: NeighborIndex, P: ProxyGenerator, S: EdgeScorer> Engine<I, P, S> {
    /// Inserts one face with no upstream variants and no origin (see `insert_face`).
    pub fn insert(
        &mut self,
        face_id: &str,
        vector: &[f32],
    ) -> Result<(Outcome, Vec<Event>), EngineError> {
        self.insert_face(FaceRef {
            face_id,
            vector,
            variants: &[],
            meta: &NO_META,
        })
    }

    /// Inserts one face: its origin is carried into its assignment event, its upstream
    /// hallucinated variants (whole vectors of `dim`, row after row; see `ProxyGenerator::proxy`)
    /// join the proxy's candidates. On error nothing changed. The events this insertion caused
    /// are returned (and recorded in the change set).
    pub fn insert_face(&mut self, face: FaceRef<'_>) -> Result<(Outcome, Vec<Event>), EngineError> {
        let seq = self.faces.len();
        match self.admit(face, seq, |_| None)? {
            Admit::Repeat(of) => Ok((Outcome::Duplicate { seq: of }, Vec::new())),
            Admit::Insert(identity) => Ok(self.insert_checked(face, seq as u32, identity)),
        }
    }

    /// Whether `face`, offered as face number `next`, is inserted (its normalized vector) or
    /// repeats an applied face, or why it is refused: the vector's checks, then the id (held by
    /// the engine, or by `earlier`: ids a run took before it), then room for one more face.
    pub(super) fn admit(
        &self,
        face: FaceRef<'_>,
        next: usize,
        earlier: impl Fn(&str) -> Option<u32>,
    ) -> Result<Admit, EngineError> {
        let identity = check_face(face.face_id, face.vector, face.variants, self.params.dim)?;
        if let Some(seq) = self
            .face_ids
            .get(face.face_id)
            .or_else(|| earlier(face.face_id))
        {
            return Ok(Admit::Repeat(seq));
        }
        if next >= u32::MAX as usize - 1 {
            return Err(EngineError::Full(next));
        }
        Ok(Admit::Insert(identity))
    }

    /// Inserts a checked face (`check_face` gave `identity`; its id is new) as face `seq`, both
    /// halves on this thread. From here on nothing can fail: the face enters the index now.
    pub(super) fn insert_checked(
        &mut self,
        face: FaceRef<'_>,
        seq: u32,
        identity: Vec<f32>,
    ) -> (Outcome, Vec<Event>) {
        let prep = prepare(
            self.index.as_mut().expect(INDEX_AWAY),
            &mut self.proxies,
            &self.proxy_gen,
            &self.scorer,
            &self.params,
            seq,
            identity,
            face.variants,
        );
        self.finish(face, prep)
    }

    /// The graph half of an insertion, after its index half (`prepare`): out-list and
    /// re-linking, kept flags, the cluster rule, events. Reads nothing of the index side
    /// (index, proxies, proxy generator, scorer), so `insert_many` runs it beside the next faces'
    /// index halves.
    pub(super) fn finish(&mut self, face: FaceRef<'_>, prep: Prepared) -> (Outcome, Vec<Event>) {
        let FaceRef {
            face_id,
            variants: extra,
            meta,
            ..
        } = face;
        let Prepared {
            seq,
            identity,
            generated,
            proxy,
            cands,
            scored,
        } = prep;
        debug_assert_eq!(seq as usize, self.faces.len());
        let p = self.params;
        let weak = meta.quality.is_some_and(|q| q < p.min_quality);
        let own_out: Vec<Edge> = scored.iter().take(p.k).copied().collect();

        // Reverse re-linking: every candidate whose list the new face improves adopts it.
        // (adopter, evicted)
        let mut adopters: Vec<(u32, Option<u32>)> = Vec::new();
        for e in &scored {
            let f = &self.faces[e.to() as usize];
            let me = Edge::new(seq, e.score);
            if f.out.len() < p.k {
                adopters.push((e.to(), None));
            } else if let Some(w) = f.out.last() {
                if edge_rank(&me, w) == std::cmp::Ordering::Less {
                    adopters.push((e.to(), Some(w.to())));
                }
            }
        }

        // Faces whose out-list changes, and the sources whose kept flags may change.
        let sources = self.sources_of(adopters.iter().map(|a| a.0).collect());
        // Undirected status before the change, for every pair an out-edge of a source touches.
        let before = self.kept_pairs(&sources);

        // Apply the list changes (the proxy is in `proxies` already: `prepare`).
        if p.refresh > 0 {
            self.identities.extend_from_slice(&identity);
            self.extras.push(extra.to_vec());
        }
        let comp = self.comps.len() as u32;
        self.comps.push(CompRecord {
            cluster_id: PENDING,
            size: 1,
        });
        self.live_comps += 1;
        self.touch_comp(comp);
        self.faces.push(Node {
            out: own_out.clone(),
            inn: Vec::new(),
            comp,
            weak,
        });
        self.n_weak += usize::from(weak);
        self.mark.push(0);
        self.face_ids.push(face_id);
        for e in &own_out {
            add_in(&mut self.faces[e.to() as usize].inn, seq);
        }
        for &(j, evicted) in &adopters {
            let score = scored
                .iter()
                .find(|e| e.to() == j)
                .map(|e| e.score)
                .unwrap_or(0.0);
            self.adopt(j, seq, score, evicted);
        }
        self.touch_face(seq);
        if let (true, Some(image)) = (p.same_image_cannot_link, &meta.image_id) {
            self.rules.add_photo_face(image, seq);
        }
        if self.flags_needed() {
            // The new face's in-list now holds its adopters; their in-neighbours are sources too.
            let mut all = sources.clone();
            all.push(seq);
            for &s in &all {
                self.refresh_kept(s);
            }
        }

        // Undirected status after, and the diff applied to the components.
        let mut sources_after = sources.clone();
        sources_after.push(seq);
        let mut events = Vec::new();
        self.unannounced = seq;
        self.apply_kept_diff(&before, &sources_after, &[], seq, &mut events);
        self.unannounced = u32::MAX;

        let comp = self.faces[seq as usize].comp;
        if self.comps[comp as usize].cluster_id == PENDING {
            let id = self.next_cluster_id;
            self.next_cluster_id += 1;
            self.comps[comp as usize].cluster_id = id;
            self.touch_comp(comp);
            events.push(self.emit(
                seq,
                Event::ClusterCreated {
                    cluster_id: id,
                    face_id: face_id.to_string(),
                },
            ));
        }
        let best = self.faces[seq as usize]
            .out
            .iter()
            .filter(|e| e.kept())
            .map(|e| e.score)
            .chain(
                self.faces[seq as usize]
                    .inn
                    .iter()
                    .filter(|&&j| self.directed_kept(j, seq))
                    .filter_map(|&j| {
                        self.faces[j as usize]
                            .out
                            .iter()
                            .find(|e| e.to() == seq)
                            .map(|e| e.score)
                    }),
            )
            .fold(0.0f32, f32::max);
        let cluster_id = self.comps[comp as usize].cluster_id;
        events.push(self.emit(
            seq,
            Event::FaceAssigned {
                face_id: face_id.to_string(),
                cluster_id,
                score: best,
                source_id: meta.source_id.clone(),
                image_id: meta.image_id.clone(),
                ts: meta.ts,
                quality: meta.quality,
                low_quality: weak,
                face_box: meta.face_box,
                located: meta.located.clone(),
            },
        ));
        if self.track {
            self.changes.new_faces.push(NewFace {
                seq,
                face_id: face_id.to_string(),
                proxy,
                identity: generated.then_some(identity),
                variants: extra.to_vec(),
                weak,
                meta: (meta != &FaceMeta::default()).then(|| meta.clone()),
            });
        }
        self.refresh_around(seq, &cands, &mut events);
        (Outcome::Applied { seq }, events)
    }

    /// The candidate edges from a face with proxy `from` to the faces `cands` (index hits)
    /// scoring above `t1`, ranked.
    pub(super) fn edges_to<'a>(
        &self,
        from: &[f32],
        cands: impl Iterator<Item = &'a Neighbor>,
    ) -> Vec<Edge> {
        score_edges(&self.proxies, &self.scorer, &self.params, from, cands)
    }

    pub(super) fn directed_kept(&self, a: u32, b: u32) -> bool {
        self.faces[a as usize]
            .out
            .iter()
            .any(|e| e.to() == b && e.kept())
    }

    pub(super) fn undirected_kept(&self, a: u32, b: u32) -> bool {
        self.directed_kept(a, b) || self.directed_kept(b, a)
    }

    /// Recomputes the kept flags of `s`'s out-edges.
    /// - Intimacy (t2 > 0). With self-loops, E' = E + I: common(i,j) = |({i} + out(i)) & ({j} +
    ///   in(j))|, deg(x) = |out(x)| + 1, and i->j passes when max(common/deg(i), common/deg(j)) > t2.
    /// - Weak faces: no edge to a weak face is kept, and a weak face keeps only its first edge to
    ///   a face that is not weak, so it hangs on one cluster and never joins two. (Letting weak
    ///   faces also link to each other by their best edge cost more than it gained: BENCHMARKS.md,
    ///   QUALITY.)
    pub(super) fn refresh_kept(&mut self, s: u32) {
        let t2 = self.params.t2;
        let sure = self.weak_threshold();
        let n_out = self.faces[s as usize].out.len();
        let weak_s = self.faces[s as usize].weak;
        let mut anchored = false;
        for idx in 0..n_out {
            let j = self.faces[s as usize].out[idx].to();
            let fj = &self.faces[j as usize];
            let certain = self.faces[s as usize].out[idx].score > sure;
            if !certain && (fj.weak || (weak_s && anchored)) {
                self.faces[s as usize].out[idx].set_kept(false);
                continue;
            }
            if !fj.weak {
                anchored = true;
            }
            if t2 <= 0.0 {
                self.faces[s as usize].out[idx].set_kept(true);
                continue;
            }
            let fs = &self.faces[s as usize];
            // s itself is in {j}+in(j) because s->j; j is in {s}+out(s) and in {j}.
            let mut common = 2usize;
            for e in &fs.out {
                if e.to() != j && fj.inn.binary_search(&e.to()).is_ok() {
                    common += 1;
                }
            }
            let deg_s = (fs.out.len() + 1) as f32;
            let deg_j = (fj.out.len() + 1) as f32;
            let c = common as f32;
            let kept = (c / deg_s).max(c / deg_j) > t2;
            self.faces[s as usize].out[idx].set_kept(kept);
        }
    }

    /// The score above which an edge touching a weak face is kept like any other.
    pub(super) fn weak_threshold(&self) -> f32 {
        let p = &self.params;
        if p.weak_margin >= 1.0 {
            f32::INFINITY
        } else {
            p.t1 + p.weak_margin * (1.0 - p.t1)
        }
    }

    /// Face `j` takes the edge j -> `to` with `score` into its out-list (rank order), first
    /// dropping its weakest edge, to `evicted`, when the list is full.
    pub(super) fn adopt(&mut self, j: u32, to: u32, score: f32, evicted: Option<u32>) {
        let me = Edge::new(to, score);
        if let Some(w) = evicted {
            self.faces[j as usize].out.pop();
            let inn = &mut self.faces[w as usize].inn;
            if let Ok(pos) = inn.binary_search(&j) {
                inn.remove(pos);
            }
        }
        add_out(&mut self.faces[j as usize].out, me, self.params.k);
        add_in(&mut self.faces[to as usize].inn, j);
        self.touch_face(j);
    }

    /// The faces whose kept flags may change when the out-lists of `changed` change: those faces,
    /// and with intimacy (`t2 > 0`) their in-neighbours too; sorted, once each.
    pub(super) fn sources_of(&self, mut changed: Vec<u32>) -> Vec<u32> {
        if self.params.t2 > 0.0 {
            for i in 0..changed.len() {
                let c = changed[i] as usize;
                changed.extend_from_slice(&self.faces[c].inn);
            }
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// Undirected kept status of every pair an out-edge of a `sources` face touches.
    pub(super) fn kept_pairs(&self, sources: &[u32]) -> FastMap<(u32, u32), bool> {
        let mut before: FastMap<(u32, u32), bool> = FastMap::default();
        for &s in sources {
            for e in &self.faces[s as usize].out {
                let pr = pair(s, e.to());
                if let std::collections::hash_map::Entry::Vacant(v) = before.entry(pr) {
                    v.insert(self.undirected_kept(s, e.to()));
                }
            }
        }
        before
    }

    /// After the out-lists of `sources_after` (sorted; every face whose out-list or kept flags
    /// changed) were rewritten (and, for a refresh, `rescored`'s edges all rescored): the undirected edges that appeared or vanished since `before`
    /// (from `kept_pairs` over the same faces before the change) are applied to the components,
    /// additions first, then removals, a face that bridges two parts being linked before the
    /// eviction that would otherwise split and re-merge them.
    pub(super) fn apply_kept_diff(
        &mut self,
        before: &FastMap<(u32, u32), bool>,
        sources_after: &[u32],
        rescored: &[u32],
        cause: u32,
        events: &mut Vec<Event>,
    ) {
        let in_sources = |x: u32| sources_after.binary_search(&x).is_ok();
        let mut after_pairs: Vec<(u32, u32)> = Vec::new();
        for &s in sources_after {
            for e in &self.faces[s as usize].out {
                after_pairs.push(pair(s, e.to()));
            }
        }
        let mut added: Vec<(u32, u32)> = Vec::new();
        let mut removed: Vec<(u32, u32)> = Vec::new();
        for (&pr, &was) in before {
            let now = self.undirected_kept(pr.0, pr.1);
            if was && !now {
                removed.push(pr);
            } else if !was && now {
                added.push(pr);
            }
        }
        after_pairs.sort_unstable();
        after_pairs.dedup();
        for pr in after_pairs {
            if before.contains_key(&pr) {
                continue;
            }
            // A directed edge that is new. Its reverse did not change unless its source is a source.
            let (a, b) = pr;
            let was = (!in_sources(a) && self.directed_kept(a, b))
                || (!in_sources(b) && self.directed_kept(b, a));
            let now = self.undirected_kept(a, b);
            if was && !now {
                removed.push(pr);
            } else if !was && now {
                added.push(pr);
            }
        }
        added.sort_unstable();
        removed.sort_unstable();
        if self.params.support > 0.0 || !self.rules.is_empty() {
            // The rule also reads scores: a face whose edges were rescored is a seed too.
            let mut seeds: Vec<u32> = added
                .iter()
                .chain(&removed)
                .flat_map(|&(a, b)| [a, b])
                .chain(rescored.iter().copied())
                .collect();
            if seeds.is_empty() {
                return;
            }
            seeds.sort_unstable();
            seeds.dedup();
            if self.regroup(&seeds, cause, events) {
                return;
            }
            // The component is over `support_region`: the rule applied locally (support.rs).
            self.bounded_regroups += 1;
            self.regroup_locally(&added, &removed, cause, events);
            return;
        }
        self.visible = removed.clone();
        self.split_pending(cause, events);
        for &(a, b) in &added {
            self.union(a, b, cause, events);
        }
        for (n, &(a, b)) in removed.iter().enumerate() {
            self.visible = removed[n + 1..].to_vec();
            self.cut(a, b, cause, events);
        }
        self.visible.clear();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::index::ExactIndex;

    /// Engine parameters of the unit tests: these four, every other rule off.
    pub(in crate::engine) fn params(dim: usize, k: usize, t1: f32, t2: f32) -> EngineParams {
        EngineParams {
            dim,
            k,
            search_k: 1000,
            t1,
            t2,
            refresh: 0,
            refresh_min_change: 0.0,
            min_quality: 0.0,
            weak_margin: 1.0,
            support: 0.0,
            support_region: 0,
            same_image_cannot_link: true,
        }
    }

    #[test]
    fn lists_grow_by_half_and_an_out_list_never_past_k() {
        let (mut out, mut inn) = (Vec::<u32>::new(), Vec::<u32>::new());
        let (mut out_caps, mut inn_caps) = (Vec::new(), Vec::new());
        for i in 0..20 {
            if out.len() < 8 {
                room_for_one(&mut out, 8);
                out.push(i);
                out_caps.push(out.capacity());
            }
            room_for_one(&mut inn, usize::MAX);
            inn.push(i);
            inn_caps.push(inn.capacity());
        }
        out_caps.dedup();
        inn_caps.dedup();
        assert_eq!(out_caps, [4, 6, 8]);
        assert_eq!(inn_caps, [4, 6, 9, 13, 19, 28]);
    }

    #[test]
    fn bad_vectors_are_refused_and_change_nothing() {
        let mut e = Engine::new(params(3, 2, 0.5, 0.0), ExactIndex::new(3));
        assert!(matches!(
            e.insert("a", &[1.0, 0.0]),
            Err(EngineError::WrongDimension { .. })
        ));
        assert!(matches!(
            e.insert("a", &[f32::NAN, 0.0, 0.0]),
            Err(EngineError::NotFinite { position: 0, .. })
        ));
        assert!(matches!(
            e.insert("a", &[0.0, 0.0, 0.0]),
            Err(EngineError::ZeroVector { .. })
        ));
        assert!(matches!(
            e.insert("", &[1.0, 0.0, 0.0]),
            Err(EngineError::EmptyId { .. })
        ));
        let meta = FaceMeta::default();
        for extra in [&[1.0f32, 0.0][..], &[1.0, f32::INFINITY, 0.0][..]] {
            assert!(matches!(
                e.insert_face(FaceRef {
                    face_id: "a",
                    vector: &[1.0, 0.0, 0.0],
                    variants: extra,
                    meta: &meta,
                }),
                Err(EngineError::BadVariants { .. })
            ));
        }
        assert_eq!(e.n_faces(), 0);
        assert!(e.take_changes().is_empty());
    }

    #[test]
    fn merge_keeps_older_id_and_duplicate_is_a_no_op() {
        let mut e = Engine::new(params(2, 2, 0.6, 0.0), ExactIndex::new(2));
        let (_, ev) = e.insert("a", &[1.0, 0.0]).unwrap();
        assert!(matches!(ev[0], Event::ClusterCreated { cluster_id: 1, .. }));
        e.insert("b", &[0.0, 1.0]).unwrap();
        assert_eq!(e.cluster_of(1), 2);
        // c is within t1 of both a and b: cluster 2 merges into the older cluster 1.
        let (_, ev) = e.insert("c", &[1.0, 1.0]).unwrap();
        assert_eq!(
            ev,
            vec![
                Event::ClustersMerged {
                    into: 1,
                    from: 2,
                    n_faces: 1
                },
                Event::FaceAssigned {
                    face_id: "c".into(),
                    cluster_id: 1,
                    score: 0.70710677,
                    source_id: None,
                    image_id: None,
                    ts: None,
                    quality: None,
                    low_quality: false,
                    face_box: None,
                    located: None,
                }
            ]
        );
        let (o, ev) = e.insert("c", &[1.0, 0.0]).unwrap();
        assert_eq!(o, Outcome::Duplicate { seq: 2 });
        assert!(ev.is_empty());
        assert_eq!(e.assignments(), vec![1, 1, 1]);
    }

    #[test]
    fn a_weak_face_joins_one_cluster_and_never_bridges_two() {
        let v = |deg: f32| {
            let r = deg.to_radians();
            [r.cos(), r.sin()]
        };
        let mut p = params(2, 4, 0.95, 0.0);
        p.min_quality = 0.5;
        let meta = |q: f32| FaceMeta {
            quality: Some(q),
            ..Default::default()
        };
        // Two clusters 28 degrees apart (cos 0.9994 inside each, at most 0.883 between them).
        let mut weak = Engine::new(p, ExactIndex::new(2));
        let mut good = Engine::new(p, ExactIndex::new(2));
        for (id, deg) in [("a", 0.0), ("b", 2.0), ("c", 30.0), ("d", 32.0)] {
            for e in [&mut weak, &mut good] {
                e.insert_face(FaceRef {
                    face_id: id,
                    vector: &v(deg),
                    variants: &[],
                    meta: &meta(0.9),
                })
                .unwrap();
            }
        }
        assert_eq!(weak.n_clusters(), 2);
        // x sits between them, close to both: as a good face it merges them; as a weak one it
        // hangs on its best neighbour's cluster only.
        let (_, ev) = good
            .insert_face(FaceRef {
                face_id: "x",
                vector: &v(16.0),
                variants: &[],
                meta: &meta(0.9),
            })
            .unwrap();
        assert!(ev.iter().any(|e| matches!(e, Event::ClustersMerged { .. })));
        assert_eq!(good.n_clusters(), 1);
        let (_, ev) = weak
            .insert_face(FaceRef {
                face_id: "x",
                vector: &v(17.0),
                variants: &[],
                meta: &meta(0.2),
            })
            .unwrap();
        assert!(!ev.iter().any(|e| matches!(e, Event::ClustersMerged { .. })));
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::FaceAssigned {
                low_quality: true,
                quality: Some(q),
                ..
            } if *q == 0.2
        )));
        assert_eq!(weak.n_clusters(), 2);
        assert_eq!(weak.n_weak(), 1);
        // Its best neighbour is c (13 degrees away, b 15): x joins c's cluster.
        assert_eq!(weak.cluster_of(4), weak.cluster_of(2));
        // A second weak face right next to x does not link to it (weak to weak), but to its
        // first neighbour that is not weak.
        weak.insert_face(FaceRef {
            face_id: "y",
            vector: &v(17.5),
            variants: &[],
            meta: &meta(0.1),
        })
        .unwrap();
        assert!(!weak.kept_edges().contains(&(4, 5)));
        assert_eq!(weak.n_clusters(), 2);
        assert_eq!(weak.cluster_of(5), weak.cluster_of(2));
    }

    #[test]
    fn eviction_splits_and_the_larger_part_keeps_the_id() {
        // k = 1: each face links only to its best neighbour.
        let mut e = Engine::new(params(2, 1, 0.5, 0.0), ExactIndex::new(2));
        let v = |deg: f32| {
            let r = deg.to_radians();
            [r.cos(), r.sin()]
        };
        e.insert("a", &v(0.0)).unwrap();
        e.insert("b", &v(40.0)).unwrap(); // a-b
        assert_eq!(e.n_clusters(), 1);
        e.insert("c", &v(45.0)).unwrap(); // b-c mutual; a->b stays: one cluster
        assert_eq!(e.n_clusters(), 1);
        // d at 1 degree: a adopts d, evicting b; b's list holds c. {a,d} splits from {b,c}.
        let (_, ev) = e.insert("d", &v(1.0)).unwrap();
        assert!(
            ev.iter().any(|x| matches!(x, Event::ClusterSplit { .. })),
            "{ev:?}"
        );
        assert_eq!(e.n_clusters(), 2);
        let a = e.assignments();
        assert_eq!(a[0], a[3]);
        assert_eq!(a[1], a[2]);
        assert_ne!(a[0], a[1]);
    }
}
