//! The engine's construction, restoration from the store, read accessors and change tracking.

use super::*;

impl<I: NeighborIndex> Engine<I> {
    /// An engine with the identity proxy and the cosine scorer.
    pub fn new(params: EngineParams, index: I) -> Self {
        Self::with_stages(params, index, IdentityProxy, CosineScorer)
    }
}

impl<I: NeighborIndex, P: ProxyGenerator, S: EdgeScorer> Engine<I, P, S> {
    pub fn with_stages(params: EngineParams, index: I, proxy_gen: P, scorer: S) -> Self {
        Self {
            params,
            index: Some(index),
            proxy_gen,
            scorer,
            faces: Vec::new(),
            face_ids: ids::FaceIds::default(),
            proxies: Vec::new(),
            identities: Vec::new(),
            n_refreshed: 0,
            n_weak: 0,
            bounded_regroups: 0,
            unannounced: u32::MAX,
            extras: Vec::new(),
            comps: Vec::new(),
            live_comps: 0,
            next_cluster_id: 1,
            next_event_seq: 0,
            mark: Vec::new(),
            stamp: 0,
            track: true,
            changes: ChangeSet::default(),
            dirty_faces: FastSet::default(),
            dirty_comps: FastSet::default(),
            visible: Vec::new(),
            pre_split: None,
            rules: feedback::Constraints::default(),
            erased: crate::index::Tombstones::default(),
            index_thread: None,
        }
    }

    /// Rebuilds an engine from durable state. `index` must already hold the proxies of every
    /// restored face (the caller loads a snapshot and replays the rest).
    pub fn restore(
        params: EngineParams,
        index: I,
        proxy_gen: P,
        scorer: S,
        mut r: Restored,
    ) -> Self {
        let mut e = Self::with_stages(params, index, proxy_gen, scorer);
        e.restore_rules(&mut r);
        let n = r.faces.len();
        e.faces = r
            .faces
            .iter()
            .map(|f| Node {
                out: f
                    .out
                    .iter()
                    .map(|&(to, score)| Edge::new(to, score))
                    .collect(),
                inn: Vec::new(),
                comp: f.comp,
                weak: false,
            })
            .collect();
        for &s in &r.weak {
            e.faces[s as usize].weak = true;
        }
        e.n_weak = r.weak.len();
        for (seq, f) in r.faces.iter().enumerate() {
            for &(to, _) in &f.out {
                // Sequence order makes every in-list sorted without a sort.
                let inn = &mut e.faces[to as usize].inn;
                room_for_one(inn, usize::MAX);
                inn.push(seq as u32);
            }
        }
        if e.flags_needed() {
            for s in 0..n as u32 {
                e.refresh_kept(s);
            }
        }
        e.face_ids = ids::FaceIds::from_ids(r.face_ids);
        e.proxies = r.proxies;
        let d = params.dim;
        for (seq, p) in r.refreshed {
            e.proxies[seq as usize * d..(seq as usize + 1) * d].copy_from_slice(&p);
        }
        if params.refresh > 0 {
            e.identities = r.identities;
            e.extras = vec![Vec::new(); n];
            for (seq, v) in r.variants {
                e.extras[seq as usize] = v;
            }
        }
        e.comps = vec![
            CompRecord {
                cluster_id: PENDING,
                size: 0
            };
            r.counters.next_comp as usize
        ];
        for (label, c) in r.comps {
            e.comps[label as usize] = c;
        }
        e.live_comps = e.comps.iter().filter(|c| c.size > 0).count();
        e.next_cluster_id = r.counters.next_cluster_id;
        e.next_event_seq = r.counters.next_event_seq;
        e.mark = vec![0; n];
        for &s in &r.erased {
            e.erased.insert(s);
        }
        e
    }

    /// Stops recording changes (evaluation runs that keep no durable state).
    pub fn set_tracking(&mut self, on: bool) {
        self.track = on;
    }

    pub fn params(&self) -> &EngineParams {
        &self.params
    }

    pub fn index(&self) -> &I {
        self.idx()
    }

    /// How a replay inserts a face as this engine did (`clusterer::replay_insert`): from its
    /// identity vector's search of `search_k` when the proxy generator looks at neighbours.
    pub fn replay_search_k(&self) -> Option<usize> {
        self.proxy_gen
            .needs_neighbors()
            .then_some(self.params.search_k)
    }

    /// The index, for the caller's persistence (snapshots) between insertions.
    pub fn index_mut(&mut self) -> &mut I {
        self.idx_mut()
    }

    pub(super) fn idx(&self) -> &I {
        self.index.as_ref().expect(many::INDEX_AWAY)
    }

    pub(super) fn idx_mut(&mut self) -> &mut I {
        self.index.as_mut().expect(many::INDEX_AWAY)
    }

    pub fn n_faces(&self) -> usize {
        self.faces.len()
    }

    /// Faces held back from bridging because their quality is below `min_quality`.
    pub fn n_weak(&self) -> usize {
        self.n_weak
    }

    /// Changes the cluster rule applied locally because the kept-graph component was over
    /// `EngineParams::support_region` (since this engine was built or restored).
    pub fn bounded_regroups(&self) -> u64 {
        self.bounded_regroups
    }

    /// Whether kept flags are anything but "every edge": with intimacy, or with weak faces.
    pub(super) fn flags_needed(&self) -> bool {
        self.params.t2 > 0.0 || self.n_weak > 0
    }

    /// Proxies the bounded refresh recomputed and re-linked since this engine was built.
    pub fn n_refreshed(&self) -> u64 {
        self.n_refreshed
    }

    pub fn n_clusters(&self) -> usize {
        self.live_comps
    }

    pub fn counters(&self) -> Counters {
        Counters {
            n_faces: self.faces.len() as u32,
            next_cluster_id: self.next_cluster_id,
            next_event_seq: self.next_event_seq,
            next_comp: self.comps.len() as u32,
        }
    }

    pub fn seq_of(&self, face_id: &str) -> Option<u32> {
        self.face_ids.get(face_id)
    }

    pub fn face_id(&self, seq: u32) -> &str {
        &self.face_ids[seq as usize]
    }

    /// Public cluster id of every face, by sequence.
    pub fn assignments(&self) -> Vec<u64> {
        self.faces
            .iter()
            .map(|f| self.comps[f.comp as usize].cluster_id)
            .collect()
    }

    pub fn cluster_of(&self, seq: u32) -> u64 {
        self.comps[self.faces[seq as usize].comp as usize].cluster_id
    }

    /// The out-list of a face as (neighbour seq, score), in rank order.
    pub fn out_list(&self, seq: u32) -> Vec<(u32, f32)> {
        self.faces[seq as usize]
            .out
            .iter()
            .map(|e| (e.to(), e.score))
            .collect()
    }

    /// The out-list of a face as (neighbour seq, score, kept), in rank order.
    pub fn out_edges(&self, seq: u32) -> Vec<(u32, f32, bool)> {
        self.faces[seq as usize]
            .out
            .iter()
            .map(|e| (e.to(), e.score, e.kept()))
            .collect()
    }

    /// Whether a face is weak (quality below `min_quality`).
    pub fn is_weak(&self, seq: u32) -> bool {
        self.faces[seq as usize].weak
    }

    /// The kept undirected edges, each once as (smaller seq, larger seq), sorted.
    pub fn kept_edges(&self) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self
            .faces
            .iter()
            .enumerate()
            .flat_map(|(s, f)| {
                f.out
                    .iter()
                    .filter(|e| e.kept())
                    .map(move |e| pair(s as u32, e.to()))
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn proxy(&self, seq: u32) -> &[f32] {
        let d = self.params.dim;
        &self.proxies[seq as usize * d..(seq as usize + 1) * d]
    }

    /// The vector face `seq`, applied and not yet taken in a change set, was indexed with (its
    /// proxy as inserted).
    pub fn indexed_vector_of_new(&self, seq: u32) -> &[f32] {
        match self.changes.new_faces.iter().rev().find(|f| f.seq == seq) {
            Some(f) => &f.proxy,
            None => self.proxy(seq),
        }
    }

    /// How many faces the changes not yet taken apply.
    pub fn pending_faces(&self) -> usize {
        self.changes.new_faces.len()
    }

    /// Takes the changes recorded since the last call.
    pub fn take_changes(&mut self) -> ChangeSet {
        self.take_changes_swept(&Sweep::default())
    }

    /// As `take_changes`, with the current records of the faces and components `sweep` names
    /// (clamped to those that exist), which the store rewrites in place (`store::records`).
    pub fn take_changes_swept(&mut self, sweep: &Sweep) -> ChangeSet {
        let mut cs = std::mem::take(&mut self.changes);
        let mut faces: Vec<u32> = self.dirty_faces.drain().collect();
        faces.sort_unstable();
        cs.faces = faces.into_iter().map(|s| (s, self.record(s))).collect();
        let mut comps: Vec<u32> = self.dirty_comps.drain().collect();
        comps.sort_unstable();
        cs.comps = comps
            .into_iter()
            .map(|l| (l, self.comp_record(l)))
            .collect();
        let n = self.faces.len() as u32;
        let nc = self.comps.len() as u32;
        cs.swept_faces = (sweep.faces.start.min(n)..sweep.faces.end.min(n))
            .map(|s| (s, self.record(s)))
            .collect();
        cs.swept_comps = (sweep.comps.start.min(nc)..sweep.comps.end.min(nc))
            .map(|l| (l, self.comp_record(l)))
            .collect();
        cs.counters = self.counters();
        cs
    }

    fn record(&self, s: u32) -> FaceRecord {
        let f = &self.faces[s as usize];
        FaceRecord {
            comp: f.comp,
            out: f.out.iter().map(|e| (e.to(), e.score)).collect(),
        }
    }

    fn comp_record(&self, l: u32) -> Option<CompRecord> {
        let c = self.comps[l as usize];
        (c.size > 0).then_some(c)
    }

    pub(super) fn emit(&mut self, cause: u32, event: Event) -> Event {
        let seq = self.next_event_seq;
        self.next_event_seq += 1;
        if self.track {
            self.changes.events.push((seq, cause, event.clone()));
        }
        event
    }

    pub(super) fn touch_face(&mut self, s: u32) {
        if self.track {
            self.dirty_faces.insert(s);
        }
    }

    pub(super) fn touch_comp(&mut self, l: u32) {
        if self.track {
            self.dirty_comps.insert(l);
        }
    }
}
