//! Forgetting a face: its edges leave the graph, the faces that pointed at it take their next
//! best neighbour instead, its cluster re-links (splits and moves emitted), its constraints go,
//! and its id is refused from then on. The index keeps the point as a tombstone, filtered from
//! every result, until `Clusterer::compact` rebuilds it without.

use super::*;

impl<I: NeighborIndex, P: ProxyGenerator, S: EdgeScorer> Engine<I, P, S> {
    /// Whether face `seq` was erased.
    pub fn is_erased(&self, seq: u32) -> bool {
        self.erased.contains(seq)
    }

    /// Faces erased (by this state, ever).
    pub fn n_erased(&self) -> usize {
        self.erased.len()
    }

    /// The faces of the cluster `cluster_id`, sorted (empty when there is none).
    pub fn members_of(&self, cluster_id: u64) -> Vec<u32> {
        self.members(cluster_id).unwrap_or_default()
    }

    /// Erases the faces `seqs` (any order; erased ones and repeats skipped) for `reason`
    /// (`face`, `cluster`, `source`, `retention`), returning the events: for each face the splits
    /// and moves its absence caused, then its `FaceErased`.
    pub fn erase(&mut self, seqs: &[u32], reason: &str) -> Vec<Event> {
        let mut seqs: Vec<u32> = seqs
            .iter()
            .copied()
            .filter(|&s| (s as usize) < self.faces.len())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        let mut events = Vec::new();
        for s in seqs {
            if !self.erased.contains(s) {
                self.erase_one(s, reason, &mut events);
            }
        }
        events
    }

    fn erase_one(&mut self, e: u32, reason: &str, events: &mut Vec<Event>) {
        let p = self.params;
        let cluster_id = self.cluster_of(e);
        let pointing: Vec<u32> = self.faces[e as usize].inn.clone();
        // The faces whose out-list changes (e's and those pointing at it) and, with intimacy,
        // their in-neighbours: their kept flags are recomputed.
        let mut changed = pointing.clone();
        changed.push(e);
        let sources = self.sources_of(changed);
        let before = self.kept_pairs(&sources);
        let partners: Vec<u32> = self.rules.must_of(e).to_vec();
        // Every part its cluster may fall into holds one of these.
        let mut around: Vec<u32> = self.faces[e as usize].out.iter().map(|x| x.to()).collect();
        around.extend_from_slice(&pointing);
        around.extend_from_slice(&partners);
        around.sort_unstable();
        around.dedup();

        // Out of the graph.
        let out: Vec<u32> = self.faces[e as usize].out.iter().map(|x| x.to()).collect();
        for t in out {
            let inn = &mut self.faces[t as usize].inn;
            if let Ok(pos) = inn.binary_search(&e) {
                inn.remove(pos);
            }
        }
        self.faces[e as usize].out.clear();
        self.faces[e as usize].inn.clear();
        for &i in &pointing {
            self.faces[i as usize].out.retain(|x| x.to() != e);
            self.touch_face(i);
        }
        self.touch_face(e);
        self.erased.insert(e);
        self.idx_mut().remove(e);
        let indexed = self.proxy(e).to_vec();
        self.rules.forget_face(e);
        if self.track {
            for r in self.rules.scrub_commands(e, &self.face_ids[e as usize]) {
                self.changes.commands.push(r);
            }
        }
        if self.faces[e as usize].weak {
            self.faces[e as usize].weak = false;
            self.n_weak -= 1;
        }
        // The freed places take the next best faces of a fresh search.
        for &i in &pointing {
            self.refill(i);
        }
        // Out of its cluster, into a label of its own that the rule leaves alone (PENDING ids
        // take no part in heirs, merges or moves).
        let old = self.faces[e as usize].comp;
        let own = self.comps.len() as u32;
        self.comps.push(CompRecord {
            cluster_id: PENDING,
            size: 1,
        });
        self.live_comps += 1;
        self.faces[e as usize].comp = own;
        self.comps[old as usize].size -= 1;
        self.touch_comp(old);
        self.touch_comp(own);
        let cluster_deleted = self.comps[old as usize].size == 0;
        if cluster_deleted {
            self.live_comps -= 1;
            if self.rules.names.contains_key(&cluster_id) {
                self.set_name(cluster_id, None);
            }
        }
        if self.flags_needed() {
            for &s in &sources {
                self.refresh_kept(s);
            }
        }
        self.unannounced = e;
        // Its must-link partners are seeds too: a cluster may have been one through e's links.
        self.pre_split = Some((old, around));
        self.apply_kept_diff(&before, &sources, &partners, e, events);
        self.pre_split = None;
        self.unannounced = u32::MAX;
        let own = self.faces[e as usize].comp;
        debug_assert_eq!(self.comps[own as usize].size, 1, "an erased face is alone");
        self.comps[own as usize].size = 0;
        self.live_comps -= 1;
        self.touch_comp(own);
        // Its vectors leave the engine (the index keeps its tombstone until compaction).
        let d = p.dim;
        self.proxies[e as usize * d..(e as usize + 1) * d].fill(0.0);
        if !self.identities.is_empty() {
            self.identities[e as usize * d..(e as usize + 1) * d].fill(0.0);
        }
        if let Some(x) = self.extras.get_mut(e as usize) {
            *x = Vec::new();
        }
        let face_id = self.face_ids[e as usize].to_string();
        if self.track {
            self.changes.erased.push(ErasedFace {
                seq: e,
                face_id: face_id.clone(),
                indexed,
            });
        }
        events.push(self.emit(
            e,
            Event::FaceErased {
                face_id,
                cluster_id,
                cluster_deleted,
                reason: reason.to_string(),
            },
        ));
    }

    /// For the edge-by-edge rules (components, and the local rule past `support_region`), before
    /// they apply an erasure's other changes: splits what is left of the erased face's cluster
    /// into its connected parts. Its edges to the faces next to it are gone from every walk (it
    /// has a label of its own), so no cut of theirs would, and a union's walk would find a
    /// cluster in pieces. Each part holds one of those faces.
    pub(super) fn split_pending(&mut self, cause: u32, events: &mut Vec<Event>) {
        let Some((label, around)) = self.pre_split.take() else {
            return;
        };
        loop {
            let left: Vec<u32> = around
                .iter()
                .copied()
                .filter(|&x| self.faces[x as usize].comp == label)
                .collect();
            let Some((&first, rest)) = left.split_first() else {
                return;
            };
            let mut split = false;
            for &x in rest {
                self.cut(first, x, cause, events);
                if self.faces[first as usize].comp != label || self.faces[x as usize].comp != label
                {
                    split = true;
                    break;
                }
            }
            if !split {
                return;
            }
        }
    }

    /// Fills face `i`'s out-list back up to `k` from a fresh search: the best faces above `t1`
    /// not in it already.
    fn refill(&mut self, i: u32) {
        let p = self.params;
        if self.faces[i as usize].out.len() >= p.k {
            return;
        }
        let own = self.proxy(i).to_vec();
        let hits = self.idx().search(&own, p.search_k + 1);
        let out = &self.faces[i as usize].out;
        let fresh = hits
            .iter()
            .filter(|n| n.seq != i && !out.iter().any(|x| x.to() == n.seq));
        let cands = self.edges_to(&own, fresh);
        let room = p.k - self.faces[i as usize].out.len();
        for c in cands.into_iter().take(room) {
            self.adopt(i, c.to(), c.score, None);
        }
    }
}
