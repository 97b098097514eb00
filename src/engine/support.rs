//! The cluster rule over the kept edges. With `EngineParams::support = 0` clusters are the
//! connected components (single linkage), kept up to date edge by edge by `union` and `cut`. With
//! `support > 0` (cluster-level linkage) one false edge is not enough to merge two grown clusters:
//! the kept edges are taken in descending score (ties by pair), and an edge between two different
//! clusters A and B merges them only when the kept edges between A and B number at least
//! `max(1, ceil(support * min(|A|, |B|)))`. A face joins a cluster by one edge; two clusters of 10
//! need 3 edges between them at 0.3. The result is a function of the kept graph alone, and of each
//! connected component of it separately, so the stream recomputes it over the components an
//! insertion touched (`regroup`) and equals the batch computation over the whole graph.
//!
//! Ids stay stable across a recomputation: an old cluster's heir is the new part holding most of
//! its faces (ties: the part holding its oldest face); a part keeps the oldest id among the clusters
//! it is heir to (the others merged into it), a part heir to none gets a new id (a split; or, for
//! a new face alone, the id `insert` creates).

use super::rule::{partition_with, Rules};
use super::{CompRecord, EdgeScorer, Engine, Event, FastMap, FastSet, ProxyGenerator, PENDING};
use crate::index::NeighborIndex;

/// The faces of `region` (sorted) grouped by their label in `part` (one per face), parts in
/// order of their oldest face; and each label's part.
pub(super) fn parts_of(region: &[u32], part: &[u32]) -> (FastMap<u32, usize>, Vec<Vec<u32>>) {
    let mut part_index: FastMap<u32, usize> = FastMap::default();
    let mut parts: Vec<Vec<u32>> = Vec::new();
    for (li, &x) in region.iter().enumerate() {
        let p = *part_index.entry(part[li]).or_insert_with(|| {
            parts.push(Vec::new());
            parts.len() - 1
        });
        parts[p].push(x);
    }
    (part_index, parts)
}

impl<I: NeighborIndex, P: ProxyGenerator, S: EdgeScorer> Engine<I, P, S> {
    /// Cluster-level linkage after the kept edges around `seeds` changed: recomputes the rule over
    /// the connected components of the kept graph holding the seeds and applies the new partition
    /// with stable ids, emitting merges, splits and moves.
    /// Returns false, having changed nothing, when those components hold more than
    /// `support_region` faces.
    pub(super) fn regroup(&mut self, seeds: &[u32], cause: u32, events: &mut Vec<Event>) -> bool {
        let bound = match self.params.support_region {
            0 => usize::MAX,
            b => b,
        };
        // The region: every face connected to a seed by kept edges. Each old cluster that has a
        // face in it lies wholly inside (its faces were connected, and every edge that vanished
        // has both ends among the seeds), so the sizes of the clusters met so far bound the
        // region from below: the walk gives up as soon as they pass `bound`, most often at the
        // first seed in a stream whose people have many faces.
        let (stamp, _) = self.next_stamps();
        let mut region: Vec<u32> = Vec::new();
        let mut met: FastSet<u32> = FastSet::default();
        let mut lower = 0usize;
        let mut meet = |this: &Self, x: u32| {
            let l = this.faces[x as usize].comp;
            if met.insert(l) {
                lower += this.comps[l as usize].size as usize;
            }
            lower > bound
        };
        for &s in seeds {
            if self.mark[s as usize] != stamp {
                self.mark[s as usize] = stamp;
                region.push(s);
                if meet(self, s) {
                    return false;
                }
            }
        }
        let mut buf = Vec::new();
        let mut i = 0;
        while i < region.len() {
            let x = region[i];
            i += 1;
            self.adjacent(x, &mut buf);
            for &y in &buf {
                if self.mark[y as usize] != stamp {
                    self.mark[y as usize] = stamp;
                    region.push(y);
                    if meet(self, y) {
                        return false;
                    }
                }
            }
            if region.len() > bound {
                return false;
            }
        }
        region.sort_unstable();
        self.repartition(&region, cause, events);
        true
    }

    /// The rule recomputed over the faces of the clusters `labels` alone (edges to other faces
    /// ignored): how feedback applies when the kept-graph component is over `support_region`.
    pub(super) fn regroup_clusters(&mut self, labels: &[u32], cause: u32, events: &mut Vec<Event>) {
        let region: Vec<u32> = (0..self.faces.len() as u32)
            .filter(|&x| labels.binary_search(&self.faces[x as usize].comp).is_ok())
            .collect();
        self.repartition(&region, cause, events);
    }

    /// The constrained rule's input over `region` (sorted), in local numbers: its kept edges
    /// and must-links (infinite score), cannot-links and name tags; edges leaving it ignored.
    pub(super) fn rule_inputs(&self, region: &[u32]) -> (Vec<(u32, u32, f32)>, Rules) {
        let local = |x: u32| region.binary_search(&x).ok().map(|i| i as u32);
        let ordered = |a: u32, b: u32| if a < b { (a, b) } else { (b, a) };
        let mut edges: Vec<(u32, u32, f32)> = Vec::new();
        let mut rules = Rules::default();
        let constrained = !self.rules.is_empty();
        let mut names: std::collections::HashMap<&str, u32> = Default::default();
        for (li, &x) in region.iter().enumerate() {
            let li = li as u32;
            for e in &self.faces[x as usize].out {
                if let (true, Some(lj)) = (e.kept(), local(e.to())) {
                    let (a, b) = ordered(li, lj);
                    edges.push((a, b, e.score));
                }
            }
            if !constrained {
                continue;
            }
            for &y in self.rules.must_of(x) {
                if let Some(lj) = local(y).filter(|&lj| lj > li) {
                    edges.push((li, lj, f32::INFINITY));
                }
            }
            for &y in self.rules.cannot_of(x) {
                if let Some(lj) = local(y).filter(|&lj| lj > li) {
                    rules.cannot.push((li, lj));
                }
            }
            let id = self.comps[self.faces[x as usize].comp as usize].cluster_id;
            let tag = match self.rules.names.get(&id) {
                None => None,
                Some(name) => {
                    let next = names.len() as u32;
                    let t = *names.entry(name.as_str()).or_insert(next);
                    Some(t)
                }
            };
            rules.tags.push(tag);
        }
        (edges, rules)
    }

    /// Recomputes the rule over `region` (sorted; whole old clusters) with the constraints held,
    /// and applies the new partition with stable ids, emitting merges, splits and moves.
    fn repartition(&mut self, region: &[u32], cause: u32, events: &mut Vec<Event>) {
        let region = region.to_vec();
        let (edges, rules) = self.rule_inputs(&region);
        let part = partition_with(region.len(), edges, self.params.support, &rules);

        // Parts in order of their oldest face (labels are smallest members, region is sorted).
        let (_, parts) = parts_of(&region, &part);
        // Old labels (PENDING = the new face's own label) and each one's heir part.
        // label -> (part -> (count, oldest face))
        let mut spread: FastMap<u32, FastMap<usize, (u32, u32)>> = FastMap::default();
        for (pi, faces) in parts.iter().enumerate() {
            for &x in faces {
                let l = self.faces[x as usize].comp;
                let ent = spread.entry(l).or_default().entry(pi).or_insert((0, x));
                ent.0 += 1;
                ent.1 = ent.1.min(x);
            }
        }
        let mut heir: FastMap<u32, usize> = FastMap::default();
        for (&l, by_part) in &spread {
            if self.comps[l as usize].cluster_id == PENDING {
                continue;
            }
            let best = by_part
                .iter()
                .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)))
                .map(|(&p, _)| p)
                .expect("a label present in the region");
            debug_assert_eq!(
                by_part.values().map(|v| v.0).sum::<u32>(),
                self.comps[l as usize].size,
                "old cluster {l} wholly inside the region"
            );
            heir.insert(l, best);
        }
        let mut heirs_of: Vec<Vec<u32>> = vec![Vec::new(); parts.len()];
        for (&l, &p) in &heir {
            heirs_of[p].push(l);
        }
        // A part keeps a named cluster's id before an unnamed one's, then the oldest.
        for h in &mut heirs_of {
            h.sort_by_key(|&l| {
                let id = self.comps[l as usize].cluster_id;
                (!self.rules.names.contains_key(&id), id)
            });
        }
        let labels_before = self.labels_of(&region);

        // Every old label loses its faces first; parts then take theirs.
        for &l in &labels_before {
            self.comps[l as usize].size = 0;
            self.touch_comp(l);
        }
        let mut merges = Vec::new();
        for (pi, faces) in parts.iter().enumerate() {
            let size = faces.len() as u32;
            let (label, id) = if let Some(&l) = heirs_of[pi].first() {
                (l, self.comps[l as usize].cluster_id)
            } else if faces
                .iter()
                .all(|&x| self.comps[self.faces[x as usize].comp as usize].cluster_id == PENDING)
            {
                // The new face alone: `insert` names it (ClusterCreated).
                (self.faces[faces[0] as usize].comp, PENDING)
            } else {
                let l = self.comps.len() as u32;
                let id = self.next_cluster_id;
                self.next_cluster_id += 1;
                self.comps.push(CompRecord {
                    cluster_id: id,
                    size: 0,
                });
                (l, id)
            };
            self.comps[label as usize].size = size;
            self.touch_comp(label);
            // Merges: the other clusters this part is heir to, told after every part's splits
            // and moves, so that a face leaving a merged cluster for another part leaves it
            // before the cluster is gone.
            for &l in heirs_of[pi].iter().skip(1) {
                let n_faces = spread[&l][&pi].0 as u64;
                let gone = self.comps[l as usize].cluster_id;
                if self.rules.names.contains_key(&gone) {
                    // The same name as the part's (different names never merge).
                    self.set_name(gone, None);
                }
                merges.push(Event::ClustersMerged {
                    into: id,
                    from: gone,
                    n_faces,
                });
            }
            // Splits into a new cluster, then the faces that changed cluster without a merge.
            let is_new = heirs_of[pi].is_empty() && id != PENDING;
            if is_new {
                let mut from: Vec<u32> = spread
                    .iter()
                    .filter(|(&l, by)| {
                        by.contains_key(&pi) && self.comps[l as usize].cluster_id != PENDING
                    })
                    .map(|(&l, _)| l)
                    .collect();
                from.sort_by_key(|&l| self.comps[l as usize].cluster_id);
                for l in from {
                    let n_faces = spread[&l][&pi].0 as u64;
                    events.push(self.emit(
                        cause,
                        Event::ClusterSplit {
                            from: self.comps[l as usize].cluster_id,
                            into: id,
                            n_faces,
                        },
                    ));
                }
            }
            for &x in faces {
                let old = self.faces[x as usize].comp;
                if old == label {
                    continue;
                }
                let old_id = self.comps[old as usize].cluster_id;
                let merged = heir.get(&old) == Some(&pi);
                self.faces[x as usize].comp = label;
                self.touch_face(x);
                // The new face before its FaceAssigned has no id yet (PENDING): no move for it.
                if old_id != PENDING && !merged {
                    let face_id = self.face_ids[x as usize].to_string();
                    events.push(self.emit(
                        cause,
                        Event::FaceMoved {
                            face_id,
                            from: old_id,
                            to: id,
                        },
                    ));
                }
            }
        }
        for m in merges {
            events.push(self.emit(cause, m));
        }
        let labels_after = self.labels_of(&region);
        self.live_comps = self.live_comps + labels_after.len() - labels_before.len();
    }

    /// The rule applied locally, for a change whose component is over `support_region`: the
    /// added kept edges in descending score (ties by pair), each merging its two clusters when
    /// the kept edges between them number at least `max(1, ceil(support * smaller size))` (so a
    /// new face joins the cluster of its best edge); then each removed edge splits its cluster
    /// if the cluster fell apart. Clusters stay connected by their own kept edges; the cost is
    /// the clusters the change touched (the smaller of each pair counted), never the component.
    pub(super) fn regroup_locally(
        &mut self,
        added: &[(u32, u32)],
        removed: &[(u32, u32)],
        cause: u32,
        events: &mut Vec<Event>,
    ) {
        let mut added: Vec<(u32, u32, f32)> = added
            .iter()
            .map(|&(a, b)| (a, b, self.pair_score(a, b)))
            .collect();
        added.sort_by(|x, y| y.2.total_cmp(&x.2).then((x.0, x.1).cmp(&(y.0, y.1))));
        // Removed edges stay visible to the walks until their own cut, as with components.
        self.visible = removed.to_vec();
        self.split_pending(cause, events);
        for &(a, b, _) in &added {
            if self.supported(a, b) {
                self.union(a, b, cause, events);
            }
        }
        for (n, &(a, b)) in removed.iter().enumerate() {
            self.visible = removed[n + 1..].to_vec();
            self.cut(a, b, cause, events);
        }
        self.visible.clear();
    }

    /// The higher score of the kept directed edges between `a` and `b`.
    fn pair_score(&self, a: u32, b: u32) -> f32 {
        let one = |x: u32, y: u32| {
            self.faces[x as usize]
                .out
                .iter()
                .filter(|e| e.to() == y && e.kept())
                .map(|e| e.score)
                .fold(f32::NEG_INFINITY, f32::max)
        };
        one(a, b).max(one(b, a))
    }

    /// Whether the kept edges between the clusters of `a` and `b` (different clusters) reach the
    /// support: counted from the smaller cluster's faces, stopping as soon as they do.
    fn supported(&mut self, a: u32, b: u32) -> bool {
        let (la, lb) = (self.faces[a as usize].comp, self.faces[b as usize].comp);
        if la == lb {
            return false;
        }
        if self.refused(a, b) {
            return false;
        }
        let (sa, sb) = (self.comps[la as usize].size, self.comps[lb as usize].size);
        let need = ((self.params.support * sa.min(sb) as f32).ceil() as u32).max(1);
        if need <= 1 {
            return true; // the edge itself
        }
        let (start, own, other) = if sa <= sb { (a, la, lb) } else { (b, lb, la) };
        // Walk the smaller cluster (connected by its kept edges, or by removed edges not yet
        // cut) and count its distinct kept neighbours in the other.
        let (stamp, seen) = self.next_stamps();
        let mut stack = vec![start];
        self.mark[start as usize] = stamp;
        let mut buf = Vec::new();
        let mut links = 0u32;
        while let Some(x) = stack.pop() {
            self.adjacent(x, &mut buf);
            for &y in &buf {
                let l = self.faces[y as usize].comp;
                if l == own && self.mark[y as usize] != stamp {
                    self.mark[y as usize] = stamp;
                    stack.push(y);
                } else if l == other && self.mark[y as usize] != seen {
                    // Each (x, y) pair once: y's mark is reset per x below.
                    self.mark[y as usize] = seen;
                    if self.undirected_kept(x, y) {
                        links += 1;
                        if links >= need {
                            return true;
                        }
                    }
                }
            }
            // Unmark this face's neighbours in the other cluster, so that the next face counts its own.
            for &y in &buf {
                if self.faces[y as usize].comp == other {
                    self.mark[y as usize] = 0;
                }
            }
        }
        false
    }

    /// Whether the constraints forbid merging the clusters of `a` and `b` (different clusters):
    /// two different names, or a cannot-link between them (found from the smaller cluster).
    pub(super) fn refused(&mut self, a: u32, b: u32) -> bool {
        let (la, lb) = (self.faces[a as usize].comp, self.faces[b as usize].comp);
        let names = &self.rules.names;
        let name = |l: u32| names.get(&self.comps[l as usize].cluster_id);
        if let (Some(x), Some(y)) = (name(la), name(lb)) {
            if x != y {
                return true;
            }
        }
        if self.rules.cannot.is_empty() {
            return false;
        }
        let (start, own, other) = if self.comps[la as usize].size <= self.comps[lb as usize].size {
            (a, la, lb)
        } else {
            (b, lb, la)
        };
        let (stamp, _) = self.next_stamps();
        let mut stack = vec![start];
        self.mark[start as usize] = stamp;
        let mut buf = Vec::new();
        while let Some(x) = stack.pop() {
            if self
                .rules
                .cannot_of(x)
                .iter()
                .any(|&y| self.faces[y as usize].comp == other)
            {
                return true;
            }
            self.adjacent(x, &mut buf);
            for &y in &buf {
                if self.faces[y as usize].comp == own && self.mark[y as usize] != stamp {
                    self.mark[y as usize] = stamp;
                    stack.push(y);
                }
            }
        }
        false
    }

    /// The distinct cluster labels of `faces`, sorted.
    pub(super) fn labels_of(&self, faces: &[u32]) -> Vec<u32> {
        let mut labels: Vec<u32> = faces.iter().map(|&x| self.faces[x as usize].comp).collect();
        labels.sort_unstable();
        labels.dedup();
        labels
    }
}
