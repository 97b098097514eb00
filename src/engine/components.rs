//! Clusters as connected components of the kept edges under insertion and deletion: walks,
//! relabelling (the larger part keeps the id), merges and splits with their events.

use super::*;

impl<I: NeighborIndex, P: ProxyGenerator, S: EdgeScorer> Engine<I, P, S> {
    /// Neighbours of `x` in the undirected kept graph as the component structure currently sees it.
    pub(super) fn adjacent(&self, x: u32, out: &mut Vec<u32>) {
        out.clear();
        let f = &self.faces[x as usize];
        for e in &f.out {
            if e.kept() {
                out.push(e.to());
            }
        }
        for &j in &f.inn {
            if self.directed_kept(j, x) {
                out.push(j);
            }
        }
        if !self.rules.must.is_empty() {
            out.extend_from_slice(self.rules.must_of(x));
        }
        for &(a, b) in &self.visible {
            if a == x {
                out.push(b);
            } else if b == x {
                out.push(a);
            }
        }
    }

    pub(super) fn next_stamps(&mut self) -> (u32, u32) {
        if self.stamp >= u32::MAX - 4 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.stamp = 0;
        }
        self.stamp += 2;
        (self.stamp - 1, self.stamp)
    }

    /// Relabels the component holding `start` (label `from`) to `to`, returning how many faces moved.
    pub(super) fn relabel(&mut self, start: u32, from: u32, to: u32) -> u32 {
        let mut stack = vec![start];
        let mut buf = Vec::new();
        self.faces[start as usize].comp = to;
        let mut n = 0;
        while let Some(x) = stack.pop() {
            n += 1;
            self.touch_face(x);
            self.adjacent(x, &mut buf);
            for &y in &buf {
                if self.faces[y as usize].comp == from {
                    self.faces[y as usize].comp = to;
                    stack.push(y);
                }
            }
        }
        n
    }

    /// Applies an added edge: merges two components, the smaller relabelled, the older id kept.
    pub(super) fn union(&mut self, a: u32, b: u32, cause: u32, events: &mut Vec<Event>) {
        let (ca, cb) = (self.faces[a as usize].comp, self.faces[b as usize].comp);
        if ca == cb {
            return;
        }
        let (big, small, small_face) =
            if self.comps[ca as usize].size >= self.comps[cb as usize].size {
                (ca, cb, b)
            } else {
                (cb, ca, a)
            };
        // The walk follows the smaller part's label, so it never crosses the new edge.
        let moved = self.relabel(small_face, small, big);
        let (id_big, id_small) = (
            self.comps[big as usize].cluster_id,
            self.comps[small as usize].cluster_id,
        );
        // The named id before an unnamed one (two different names never get here), then the older.
        let named = |id: u64| self.rules.names.contains_key(&id);
        let (into, from) = match (named(id_big), named(id_small)) {
            (true, false) => (id_big, id_small),
            (false, true) => (id_small, id_big),
            _ => (id_big.min(id_small), id_big.max(id_small)),
        };
        if named(from) {
            self.set_name(from, None);
        }
        let from_size = if from == id_small {
            self.comps[small as usize].size
        } else {
            self.comps[big as usize].size
        };
        debug_assert_eq!(moved, self.comps[small as usize].size);
        self.comps[big as usize].size += self.comps[small as usize].size;
        self.comps[big as usize].cluster_id = into;
        self.comps[small as usize].size = 0;
        self.live_comps -= 1;
        self.touch_comp(big);
        self.touch_comp(small);
        if from != PENDING {
            events.push(self.emit(
                cause,
                Event::ClustersMerged {
                    into,
                    from,
                    n_faces: from_size as u64,
                },
            ));
        }
    }

    /// Applies a removed edge: decides by an interleaved search from both ends whether the
    /// component fell apart, at a cost bounded by twice the smaller part; the smaller part gets a
    /// new id (on a tie, the part holding the oldest face keeps the id).
    pub(super) fn cut(&mut self, a: u32, b: u32, cause: u32, events: &mut Vec<Event>) {
        // The search stays inside the edge's cluster (with connected components, its component;
        // with the local support rule, an edge between two clusters splits nothing).
        let label = self.faces[a as usize].comp;
        if self.faces[b as usize].comp != label {
            return;
        }
        let (sa, sb) = self.next_stamps();
        let mut qa = vec![a];
        let mut qb = vec![b];
        let (mut ia, mut ib) = (0usize, 0usize);
        self.mark[a as usize] = sa;
        self.mark[b as usize] = sb;
        let mut buf = Vec::new();
        // One expansion per side per round; stop when the sides meet or one runs dry.
        let exhausted_a = loop {
            if ia == qa.len() {
                break true;
            }
            if ib == qb.len() {
                break false;
            }
            for (q, i, own, other) in [(&mut qa, &mut ia, sa, sb), (&mut qb, &mut ib, sb, sa)] {
                let x = q[*i];
                *i += 1;
                self.adjacent(x, &mut buf);
                for &y in &buf {
                    let m = self.mark[y as usize];
                    if m == other {
                        return; // still connected
                    }
                    if m != own && self.faces[y as usize].comp == label {
                        self.mark[y as usize] = own;
                        q.push(y);
                    }
                }
            }
        };
        // The dry side is complete. Finish the other only as far as needed to compare sizes.
        let (done, rest, mut ir, own_r) = if exhausted_a {
            (qa, qb, ib, sb)
        } else {
            (qb, qa, ia, sa)
        };
        let mut rest = rest;
        while ir < rest.len() && rest.len() <= done.len() {
            let x = rest[ir];
            ir += 1;
            self.adjacent(x, &mut buf);
            for &y in &buf {
                if self.mark[y as usize] != own_r && self.faces[y as usize].comp == label {
                    self.mark[y as usize] = own_r;
                    rest.push(y);
                }
            }
        }
        let rest_complete = ir == rest.len();
        let moved = if rest_complete && rest.len() < done.len() {
            rest
        } else if rest_complete && rest.len() == done.len() {
            let min_done = done.iter().min().copied().unwrap_or(u32::MAX);
            let min_rest = rest.iter().min().copied().unwrap_or(u32::MAX);
            if min_done < min_rest {
                rest
            } else {
                done
            }
        } else {
            done
        };
        let old = self.faces[moved[0] as usize].comp;
        let label = self.comps.len() as u32;
        let from_id = self.comps[old as usize].cluster_id;
        let new_id = self.next_cluster_id;
        self.next_cluster_id += 1;
        self.comps.push(CompRecord {
            cluster_id: new_id,
            size: moved.len() as u32,
        });
        self.live_comps += 1;
        self.comps[old as usize].size -= moved.len() as u32;
        self.touch_comp(old);
        self.touch_comp(label);
        let mut moved = moved;
        moved.sort_unstable();
        for &x in &moved {
            self.faces[x as usize].comp = label;
            self.touch_face(x);
        }
        events.push(self.emit(
            cause,
            Event::ClusterSplit {
                from: from_id,
                into: new_id,
                n_faces: moved.len() as u64,
            },
        ));
        for &x in &moved {
            if x != self.unannounced {
                let face_id = self.face_ids[x as usize].to_string();
                events.push(self.emit(
                    cause,
                    Event::FaceMoved {
                        face_id,
                        from: from_id,
                        to: new_id,
                    },
                ));
            }
        }
    }
}
