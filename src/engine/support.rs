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

use super::{CompRecord, EdgeScorer, Engine, Event, FastMap, FastSet, ProxyGenerator, PENDING};
use crate::index::NeighborIndex;

/// Cluster label of each of `n` nodes (the smallest node of its cluster) for the undirected kept
/// `edges` (a < b, any order, duplicates allowed: the highest score counts).
pub(crate) fn partition(n: usize, edges: Vec<(u32, u32, f32)>, support: f32) -> Vec<u32> {
    partition_with(n, edges, support, &Rules::default())
}

/// Constraints over the nodes of one `partition_with` call (local node numbers).
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    /// Pairs never put in one cluster.
    pub cannot: Vec<(u32, u32)>,
    /// Per node, the name of its cluster (interned), if any: two different names never merge.
    /// Empty = no names.
    pub tags: Vec<Option<u32>>,
}

impl Rules {
    fn is_empty(&self) -> bool {
        self.cannot.is_empty() && self.tags.iter().all(Option::is_none)
    }
}

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

/// As `partition`, honouring constraints: an edge of score `f32::INFINITY` is a must-link (it
/// merges whatever the support), and no merge joins a cannot-linked pair or two different tags.
/// With constraints the cluster-level rule runs even at `support = 0` (every edge is supported
/// then), so that a refused merge leaves two clusters instead of a component.
pub(crate) fn partition_with(
    n: usize,
    edges: Vec<(u32, u32, f32)>,
    support: f32,
    rules: &Rules,
) -> Vec<u32> {
    partition_counted(n, edges, support, rules, n <= DENSE_MAX)
}

/// Up to this many nodes the rule counts the kept edges between clusters in an `n x n` table
/// (at most 64 KiB of counts at 128 nodes, `engine.support_region`'s default): a stream's region
/// costs no hash map per node. Beyond it, one map per cluster root, merged small into large.
const DENSE_MAX: usize = 128;

/// Kept edges between clusters, by cluster root.
enum Links {
    /// `n x n` counts, row by root.
    Dense {
        n: usize,
        count: Vec<u32>,
    },
    Sparse(Vec<FastMap<u32, u32>>),
}

impl Links {
    /// The counts of distinct edges (`a < b`, no duplicates) between single nodes.
    fn new(n: usize, edges: &[(u32, u32, f32)], dense: bool) -> Self {
        if dense {
            let mut count = vec![0u32; n * n];
            for &(a, b, _) in edges {
                count[a as usize * n + b as usize] += 1;
                count[b as usize * n + a as usize] += 1;
            }
            Links::Dense { n, count }
        } else {
            let mut between: Vec<FastMap<u32, u32>> = vec![FastMap::default(); n];
            for &(a, b, _) in edges {
                *between[a as usize].entry(b).or_default() += 1;
                *between[b as usize].entry(a).or_default() += 1;
            }
            Links::Sparse(between)
        }
    }

    fn between(&self, ra: u32, rb: u32) -> u32 {
        match self {
            Links::Dense { n, count } => count[ra as usize * n + rb as usize],
            Links::Sparse(m) => m[ra as usize].get(&rb).copied().unwrap_or(0),
        }
    }

    /// Which of two roots stays when their clusters merge: the one whose counts are cheaper to
    /// fold into (the partition does not depend on it, only which node is the root).
    fn keep_of(&self, ra: u32, rb: u32) -> (u32, u32) {
        match self {
            Links::Dense { .. } => (ra, rb),
            Links::Sparse(m) => {
                if m[ra as usize].len() >= m[rb as usize].len() {
                    (ra, rb)
                } else {
                    (rb, ra)
                }
            }
        }
    }

    /// Folds root `gone`'s counts into root `keep`'s.
    fn merge(&mut self, keep: u32, gone: u32) {
        match self {
            Links::Dense { n, count } => {
                let n = *n;
                let (k, g) = (keep as usize, gone as usize);
                for c in 0..n {
                    let m = count[g * n + c];
                    if m == 0 {
                        continue;
                    }
                    count[g * n + c] = 0;
                    count[c * n + g] = 0;
                    if c != k {
                        count[k * n + c] += m;
                        count[c * n + k] += m;
                    }
                }
                count[k * n + g] = 0;
                count[g * n + k] = 0;
            }
            Links::Sparse(between) => {
                let moved = std::mem::take(&mut between[gone as usize]);
                for (c, m) in moved {
                    if c == keep {
                        continue;
                    }
                    *between[keep as usize].entry(c).or_default() += m;
                    let other = &mut between[c as usize];
                    other.remove(&gone);
                    *other.entry(keep).or_default() += m;
                }
                between[keep as usize].remove(&gone);
            }
        }
    }
}

/// A key that orders scores as `f32::total_cmp` does, reversed.
fn descending(x: f32) -> u32 {
    let b = x.to_bits();
    !(if b >> 31 == 1 { !b } else { b | 1 << 31 })
}

/// `partition_with` with the link counts held dense or sparse (the same partition either way).
fn partition_counted(
    n: usize,
    mut edges: Vec<(u32, u32, f32)>,
    support: f32,
    rules: &Rules,
    dense: bool,
) -> Vec<u32> {
    // Integer keys (pair, then score descending as `f32::total_cmp` orders it); unstable sorts:
    // elements equal under these orders are equal values.
    let pair = |e: &(u32, u32, f32)| u64::from(e.0) << 32 | u64::from(e.1);
    edges.sort_unstable_by_key(|e| (pair(e), descending(e.2)));
    edges.dedup_by(|x, y| x.0 == y.0 && x.1 == y.1);
    let mut parent: Vec<u32> = (0..n as u32).collect();
    fn find(p: &mut [u32], mut x: u32) -> u32 {
        while p[x as usize] != x {
            p[x as usize] = p[p[x as usize] as usize];
            x = p[x as usize];
        }
        x
    }
    let constrained = !rules.is_empty();
    if support <= 0.0 && !constrained {
        for &(a, b, _) in &edges {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                parent[ra.max(rb) as usize] = ra.min(rb);
            }
        }
    } else {
        let support = support.max(0.0);
        // Per root: nodes it must never hold together with, and its tag.
        let mut forbid: Vec<Vec<u32>> = vec![Vec::new(); n];
        for &(a, b) in &rules.cannot {
            forbid[a as usize].push(b);
            forbid[b as usize].push(a);
        }
        let mut tag: Vec<Option<u32>> = if rules.tags.is_empty() {
            vec![None; n]
        } else {
            rules.tags.clone()
        };
        let mut size = vec![1u32; n];
        let mut links = Links::new(n, &edges, dense);
        edges.sort_unstable_by_key(|e| (descending(e.2), pair(e)));
        for &(a, b, score) in &edges {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra == rb {
                continue;
            }
            if constrained {
                if let (Some(x), Some(y)) = (tag[ra as usize], tag[rb as usize]) {
                    if x != y {
                        continue;
                    }
                }
                let (fa, other) = if forbid[ra as usize].len() <= forbid[rb as usize].len() {
                    (ra, rb)
                } else {
                    (rb, ra)
                };
                let list = std::mem::take(&mut forbid[fa as usize]);
                let crossed = list.iter().any(|&y| find(&mut parent, y) == other);
                forbid[fa as usize] = list;
                if crossed {
                    continue;
                }
            }
            let smaller = size[ra as usize].min(size[rb as usize]) as f32;
            let need = ((support * smaller).ceil() as u32).max(1);
            if links.between(ra, rb) < need && score != f32::INFINITY {
                continue;
            }
            let (keep, gone) = links.keep_of(ra, rb);
            parent[gone as usize] = keep;
            size[keep as usize] += size[gone as usize];
            if constrained {
                let moved = std::mem::take(&mut forbid[gone as usize]);
                forbid[keep as usize].extend(moved);
                tag[keep as usize] = tag[keep as usize].or(tag[gone as usize]);
            }
            links.merge(keep, gone);
        }
    }
    // Label = smallest member.
    let roots: Vec<u32> = (0..n as u32).map(|i| find(&mut parent, i)).collect();
    let mut smallest: FastMap<u32, u32> = FastMap::default();
    for (i, &r) in roots.iter().enumerate() {
        smallest.entry(r).or_insert(i as u32);
    }
    roots.iter().map(|r| smallest[r]).collect()
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

#[cfg(test)]
mod tests {
    use super::{descending, partition, partition_counted, Rules};
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_descending_key_reverses_total_cmp() {
        let xs = [
            f32::NEG_INFINITY,
            -1.5,
            -0.0,
            0.0,
            1e-30,
            0.5,
            0.97,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        for a in xs {
            for b in xs {
                assert_eq!(
                    descending(a).cmp(&descending(b)),
                    b.total_cmp(&a),
                    "{a} {b}"
                );
            }
        }
    }

    #[test]
    fn dense_and_sparse_link_counts_give_the_same_partition() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..400 {
            let n = rng.gen_range(1..60usize);
            let m = rng.gen_range(0..n * 4);
            // Few distinct scores, so that ties and duplicate pairs occur.
            let edges: Vec<(u32, u32, f32)> = (0..m)
                .filter_map(|_| {
                    let (a, b) = (rng.gen_range(0..n as u32), rng.gen_range(0..n as u32));
                    let score = if rng.gen_bool(0.03) {
                        f32::INFINITY
                    } else {
                        rng.gen_range(0..8) as f32 / 8.0
                    };
                    (a != b).then(|| (a.min(b), a.max(b), score))
                })
                .collect();
            let mut rules = Rules::default();
            if round % 2 == 1 {
                for _ in 0..rng.gen_range(0..4) {
                    let (a, b) = (rng.gen_range(0..n as u32), rng.gen_range(0..n as u32));
                    if a != b {
                        rules.cannot.push((a, b));
                    }
                }
                rules.tags = (0..n)
                    .map(|_| rng.gen_bool(0.1).then(|| rng.gen_range(0..3)))
                    .collect();
            }
            let support = [0.0, 0.2, 0.5, 1.0][round % 4];
            let dense = partition_counted(n, edges.clone(), support, &rules, true);
            let sparse = partition_counted(n, edges, support, &rules, false);
            assert_eq!(dense, sparse, "round {round}");
        }
    }

    /// Two cliques of four (0..4, 4..8) and `bridges` weaker edges between them.
    fn two_cliques(bridges: u32) -> Vec<(u32, u32, f32)> {
        let mut e = Vec::new();
        for base in [0u32, 4] {
            for a in base..base + 4 {
                for b in a + 1..base + 4 {
                    e.push((a, b, 0.95));
                }
            }
        }
        for i in 0..bridges {
            e.push((i, 4 + i, 0.5));
        }
        e
    }

    #[test]
    fn merges_need_support_relative_to_the_smaller_cluster() {
        // Components: one bridge merges.
        assert_eq!(partition(8, two_cliques(1), 0.0), vec![0; 8]);
        // The cliques form first (higher scores); then 0.5 of 4 = 2 links are needed, counted
        // over every kept edge between the two.
        let one = partition(8, two_cliques(1), 0.5);
        assert_eq!(one, vec![0, 0, 0, 0, 4, 4, 4, 4], "{one:?}");
        let two = partition(8, two_cliques(2), 0.5);
        assert_eq!(two, vec![0; 8], "{two:?}");
        // Labels are the smallest member; a duplicate pair counts once.
        let mut dup = two_cliques(1);
        dup.push((0, 4, 0.3));
        assert_eq!(partition(8, dup, 0.5), vec![0, 0, 0, 0, 4, 4, 4, 4]);
    }
}
