//! Bounded proxy refresh (METHOD.md (c) 3-4). A face's proxy is made from the faces indexed
//! before it; a later face can change that neighbourhood. After each insertion the engine
//! recomputes the proxies of up to `refresh` of the new face's nearest faces, and re-links each
//! whose proxy moved by more than `refresh_min_change` (1 - cosine):
//! - its out-list is rebuilt from a search with the new proxy;
//! - the edges other faces hold to it are rescored (dropped when no longer above `t1`);
//! - faces whose lists the moved face now improves adopt it (as for a new face);
//! - the kept-edge diff is applied to the components: merges, splits and moves are emitted,
//!   caused by the inserted face.
//!
//! The index keeps the vector each face was inserted with (hnsw_rs cannot update a point, and a
//! restarted process must rebuild exactly the index an uninterrupted one holds); searches find
//! candidates by it, and every score is computed on the current proxies.

use super::*;

impl<I: NeighborIndex, P: ProxyGenerator, S: EdgeScorer> Engine<I, P, S> {
    /// Refreshes up to `params.refresh` faces of `near` (the new face `seq`'s neighbours, in rank
    /// order). Work per insert: that many proxy computations, and a re-link per moved proxy.
    pub(super) fn refresh_around(&mut self, seq: u32, near: &[Neighbor], events: &mut Vec<Event>) {
        let p = self.params;
        if p.refresh == 0 || !self.proxy_gen.needs_neighbors() {
            return;
        }
        let d = p.dim;
        for n in near.iter().take(p.refresh) {
            let j = n.seq;
            let identity = self.identities[j as usize * d..(j as usize + 1) * d].to_vec();
            let around: Vec<Neighbor> = self
                .idx()
                .search(&identity, p.search_k + 1)
                .into_iter()
                .filter(|x| x.seq != j)
                .take(p.search_k)
                .collect();
            let proxies = &self.proxies;
            let proxy_of = |s: u32| proxies[s as usize * d..(s as usize + 1) * d].to_vec();
            let new = self
                .proxy_gen
                .proxy(&identity, &self.extras[j as usize], &around, &proxy_of)
                .unwrap_or(identity);
            if 1.0 - dot(&new, self.proxy(j)) <= p.refresh_min_change {
                continue;
            }
            self.relink(j, new, seq, events);
        }
    }

    /// Gives face `j` the proxy `new` and re-links it; `cause` is the inserted face.
    fn relink(&mut self, j: u32, new: Vec<f32>, cause: u32, events: &mut Vec<Event>) {
        self.n_refreshed += 1;
        let p = self.params;
        let d = p.dim;
        let score_with = |this: &Self, other: u32| {
            let o = this.proxy(other);
            this.scorer.score(dot(&new, o), &new, o)
        };
        // j's new out-list.
        let mut scored: Vec<Edge> = self
            .idx()
            .search(&new, p.search_k + 1)
            .into_iter()
            .filter(|h| h.seq != j)
            .take(p.search_k)
            .map(|h| Edge::new(h.seq, score_with(self, h.seq)))
            .filter(|e| e.score > p.t1)
            .collect();
        scored.sort_by(edge_rank);
        let new_out: Vec<Edge> = scored.iter().take(p.k).copied().collect();
        // Edges others hold to j, rescored.
        let holders = self.faces[j as usize].inn.clone();
        let rescored: Vec<(u32, f32)> = holders.iter().map(|&i| (i, score_with(self, i))).collect();
        // Faces that do not point at j yet and whose lists j now improves.
        let mut adopters: Vec<(u32, Option<u32>, f32)> = Vec::new();
        for e in &scored {
            if holders.binary_search(&e.to()).is_ok() {
                continue;
            }
            let f = &self.faces[e.to() as usize];
            let me = Edge::new(j, e.score);
            if f.out.len() < p.k {
                adopters.push((e.to(), None, e.score));
            } else if let Some(w) = f.out.last() {
                if edge_rank(&me, w) == std::cmp::Ordering::Less {
                    adopters.push((e.to(), Some(w.to()), e.score));
                }
            }
        }

        let mut changed: Vec<u32> = vec![j];
        changed.extend_from_slice(&holders);
        changed.extend(adopters.iter().map(|a| a.0));
        let sources = self.sources_of(changed);
        let before = self.kept_pairs(&sources);

        // Apply: the proxy, j's out-list, the rescored in-edges, the adoptions.
        self.proxies[j as usize * d..(j as usize + 1) * d].copy_from_slice(&new);
        let old_out = std::mem::take(&mut self.faces[j as usize].out);
        for e in &old_out {
            let inn = &mut self.faces[e.to() as usize].inn;
            if let Ok(pos) = inn.binary_search(&j) {
                inn.remove(pos);
            }
        }
        for e in &new_out {
            add_in(&mut self.faces[e.to() as usize].inn, j);
        }
        self.faces[j as usize].out = new_out;
        for (i, score) in rescored {
            let out = &mut self.faces[i as usize].out;
            if let Some(pos) = out.iter().position(|e| e.to() == j) {
                out.remove(pos);
            }
            if score > p.t1 {
                add_out(out, Edge::new(j, score), p.k);
            } else {
                let inn = &mut self.faces[j as usize].inn;
                if let Ok(pos) = inn.binary_search(&i) {
                    inn.remove(pos);
                }
            }
            self.touch_face(i);
        }
        for (a, evicted, score) in adopters {
            self.adopt(a, j, score, evicted);
        }
        self.touch_face(j);
        if p.t2 > 0.0 {
            for &s in &sources {
                self.refresh_kept(s);
            }
        }
        self.apply_kept_diff(&before, &sources, &[j], cause, events);
        if self.track {
            let v = self.proxy(j).to_vec();
            match self.changes.refreshed.iter_mut().find(|(s, _)| *s == j) {
                Some(slot) => slot.1 = v,
                None => self.changes.refreshed.push((j, v)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ExactIndex;

    /// Moves each face to the mean of itself and its neighbours' proxies (a stand-in generator
    /// whose proxies visibly depend on who is indexed).
    struct MeanProxy;

    impl ProxyGenerator for MeanProxy {
        fn proxy(
            &self,
            identity: &[f32],
            _: &[f32],
            neighbors: &[Neighbor],
            proxy_of: &dyn Fn(u32) -> Vec<f32>,
        ) -> Option<Vec<f32>> {
            let n = neighbors.first()?;
            let o = proxy_of(n.seq);
            let mut v: Vec<f32> = identity.iter().zip(&o).map(|(a, b)| a + b).collect();
            let s = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= s);
            Some(v)
        }
    }

    fn params(refresh: usize, t2: f32) -> EngineParams {
        EngineParams {
            dim: 2,
            k: 2,
            search_k: 8,
            t1: 0.95,
            t2,
            refresh,
            refresh_min_change: 1e-4,
            min_quality: 0.0,
            weak_margin: 1.0,
            support: 0.0,
            support_region: 0,
            same_image_cannot_link: true,
        }
    }

    fn unit(angle_deg: f32) -> Vec<f32> {
        let a = angle_deg.to_radians();
        vec![a.cos(), a.sin()]
    }

    /// Rebuilds the undirected kept graph from scratch and checks that the component labels
    /// are exactly its connected components, and that in-lists mirror out-lists.
    fn check_invariants<P: ProxyGenerator, S: EdgeScorer>(e: &Engine<ExactIndex, P, S>) {
        let n = e.faces.len();
        for (s, f) in e.faces.iter().enumerate() {
            for ed in &f.out {
                assert!(e.faces[ed.to() as usize].inn.contains(&(s as u32)));
            }
            for &i in &f.inn {
                assert!(e.faces[i as usize].out.iter().any(|ed| ed.to() == s as u32));
            }
        }
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(p: &mut Vec<usize>, x: usize) -> usize {
            if p[x] != x {
                let r = find(p, p[x]);
                p[x] = r;
            }
            p[x]
        }
        for (a, b) in e.kept_edges() {
            let (ra, rb) = (find(&mut parent, a as usize), find(&mut parent, b as usize));
            parent[ra] = rb;
        }
        for a in 0..n {
            for b in 0..n {
                let same_truth = find(&mut parent, a) == find(&mut parent, b);
                let same_engine = e.faces[a].comp == e.faces[b].comp;
                assert_eq!(same_truth, same_engine, "faces {a} and {b}");
            }
        }
    }

    #[test]
    fn refresh_moves_older_proxies_and_keeps_components_exact() {
        for t2 in [0.0, 0.5] {
            // Faces spread over a few degrees: the later ones pull the earlier proxies along.
            let angles = [
                0.0, 14.0, 7.0, 30.0, 21.0, 3.0, 26.0, 10.0, 17.0, 45.0, 40.0,
            ];
            let mut plain =
                Engine::with_stages(params(0, t2), ExactIndex::new(2), MeanProxy, CosineScorer);
            let mut fresh =
                Engine::with_stages(params(3, t2), ExactIndex::new(2), MeanProxy, CosineScorer);
            let mut moved = false;
            for (i, a) in angles.iter().enumerate() {
                let v = unit(*a);
                plain.insert(&i.to_string(), &v).unwrap();
                fresh.insert(&i.to_string(), &v).unwrap();
                check_invariants(&fresh);
                let cs = fresh.take_changes();
                for (s, p) in &cs.refreshed {
                    assert_eq!(fresh.proxy(*s), p.as_slice());
                    moved = true;
                }
            }
            assert!(moved, "some proxy was refreshed");
            let differs = (0..angles.len() as u32).any(|s| plain.proxy(s) != fresh.proxy(s));
            assert!(differs, "refresh changed proxies relative to fixed ones");
            // Without refresh nothing is recorded.
            assert!(plain.take_changes().refreshed.is_empty());
        }
    }
}
