//! A stream threshold read again (`calibrate::CalibrationParams::refit`): the faces' nearest-face
//! similarities, and the engine moved to a higher `t1` as if it had run there from the start.

use super::recluster::Regrouped;
use super::*;

impl<I: NeighborIndex, P: ProxyGenerator, S: EdgeScorer> Engine<I, P, S> {
    /// The similarity of each live face's indexed vector to its nearest other indexed face (a
    /// fresh index search each, in sequence order; faces alone in the index have none). The
    /// calibration reads it below `t1` too, where no out-list reaches.
    pub fn nearest_similarities(&self) -> Vec<f32> {
        (0..self.faces.len() as u32)
            .filter(|&s| !self.is_erased(s))
            .filter_map(|s| {
                self.idx()
                    .search(self.proxy(s), 2)
                    .into_iter()
                    .find(|n| n.seq != s)
                    .map(|n| n.similarity)
            })
            .collect()
    }

    /// Reads a stream decision's threshold again after the stream's `n`-th face when it is due
    /// (`CalibrationParams::refit`: the nearest-face similarities of every face so far) and
    /// raises the engine to it. Returns the new decision and the events of the recomputation
    /// (none when the threshold stayed); `None` when nothing was due.
    pub fn refit_calibration(
        &mut self,
        calibration: &calibrate::CalibrationParams,
        decision: &calibrate::Decision,
        n: usize,
    ) -> Option<(calibrate::Decision, Vec<Event>)> {
        let new = calibration.refit(decision, n, || self.nearest_similarities())?;
        let calibrate::Decision::Stream { t1, .. } = new else {
            return None;
        };
        let (_, events) =
            self.raise_threshold(t1, &format!("calibration: t1 {t1:.4} at {n} faces"));
        Some((new, events))
    }

    /// Raises `t1` to `t1` and recomputes every cluster under it: out-edges at or below it are
    /// dropped (an out-list holds a face's best `k` edges above `t1`, so what remains is exactly
    /// the list the higher threshold gives), kept flags are recomputed, and the rule regroups
    /// all live faces with the constraints and names held, each new cluster keeping the id of
    /// the cluster it is heir to (`regroup_as`). Emits `FaceMoved` for each face whose cluster
    /// changed and one `Reclustered` whose `from_state` is `why`; returns the counts and those
    /// events. A lower or equal `t1` changes nothing.
    pub fn raise_threshold(&mut self, t1: f32, why: &str) -> (Regrouped, Vec<Event>) {
        if t1 <= self.params.t1 {
            return (Regrouped::default(), Vec::new());
        }
        self.params.t1 = t1;
        let n = self.faces.len() as u32;
        for s in 0..n {
            if self.is_erased(s) || self.faces[s as usize].out.iter().all(|e| e.score > t1) {
                continue;
            }
            let (keep, cut): (Vec<Edge>, Vec<Edge>) = self.faces[s as usize]
                .out
                .iter()
                .partition(|e| e.score > t1);
            self.faces[s as usize].out = keep;
            for e in cut {
                let inn = &mut self.faces[e.to() as usize].inn;
                if let Ok(pos) = inn.binary_search(&s) {
                    inn.remove(pos);
                }
            }
            self.touch_face(s);
        }
        if self.flags_needed() {
            for s in 0..n {
                if self.is_erased(s) {
                    continue;
                }
                let before: Vec<bool> = self.faces[s as usize]
                    .out
                    .iter()
                    .map(|e| e.kept())
                    .collect();
                self.refresh_kept(s);
                if self.faces[s as usize]
                    .out
                    .iter()
                    .map(|e| e.kept())
                    .ne(before)
                {
                    self.touch_face(s);
                }
            }
        }
        let old = self.assignments();
        let names = self.rules.names().clone();
        let first = self.changes.events.len();
        let report = self.regroup_as(&old, &names, self.next_cluster_id, why);
        let events = self.changes.events[first..]
            .iter()
            .map(|(_, _, e)| e.clone())
            .collect();
        (report, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ExactIndex;

    fn unit(deg: f32) -> Vec<f32> {
        vec![deg.to_radians().cos(), deg.to_radians().sin()]
    }

    fn engine(t1: f32) -> Engine<ExactIndex, IdentityProxy, CosineScorer> {
        let p = super::super::insert::tests::params(2, 4, t1, 0.3);
        let mut e = Engine::new(p, ExactIndex::new(2));
        e.set_tracking(true);
        e
    }

    #[test]
    fn a_raised_threshold_equals_a_run_at_it_from_the_start() {
        // Two groups 4 degrees apart inside, 10 degrees between them.
        let angles = [0.0, 2.0, 4.0, 14.0, 16.0, 18.0, 1.0, 17.0];
        let mut low = engine(10f32.to_radians().cos() - 0.001);
        let t_high = 5f32.to_radians().cos() - 0.0001;
        let mut high = engine(t_high);
        for (i, a) in angles.iter().enumerate() {
            low.insert(&format!("f{i}"), &unit(*a)).unwrap();
            high.insert(&format!("f{i}"), &unit(*a)).unwrap();
        }
        assert_eq!(low.n_clusters(), 1, "the low threshold chains both groups");
        assert_eq!(high.n_clusters(), 2);
        low.take_changes();
        let before = low.assignments();
        let (r, events) = low.raise_threshold(t_high, "calibration");
        assert_eq!(low.n_clusters(), 2);
        assert_eq!(low.params().t1, t_high);
        for s in 0..angles.len() as u32 {
            assert_eq!(low.out_list(s), high.out_list(s), "face {s}");
        }
        // Same partition; the older group keeps the id, the other moves to a fresh one.
        let a = low.assignments();
        let same = |x: &[u64]| {
            (0..8)
                .map(|i| (0..8).map(|j| x[i] == x[j]).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_eq!(same(&a), same(&high.assignments()));
        assert_eq!(a[0], before[0]);
        assert_ne!(a[3], before[3]);
        assert_eq!((r.clusters_before, r.clusters_after, r.moved), (1, 2, 4));
        let moved = events
            .iter()
            .filter(|e| matches!(e, Event::FaceMoved { .. }))
            .count();
        assert_eq!(moved, 4);
        assert!(
            matches!(events.last(), Some(Event::Reclustered { from_state, .. }) if from_state == "calibration")
        );
        assert_eq!(
            low.take_changes().events.len(),
            events.len(),
            "recorded for the store"
        );
        // Not lower.
        let (r, events) = low.raise_threshold(0.5, "calibration");
        assert!(events.is_empty() && r == Regrouped::default());
        assert_eq!(low.params().t1, t_high);
    }

    #[test]
    fn nearest_similarities_reach_below_the_threshold() {
        let mut e = engine(0.999);
        for (i, a) in [0.0f32, 30.0, 100.0].iter().enumerate() {
            e.insert(&format!("f{i}"), &unit(*a)).unwrap();
        }
        let nn = e.nearest_similarities();
        let c30 = 30f32.to_radians().cos();
        let c70 = 70f32.to_radians().cos();
        assert_eq!(nn.len(), 3);
        assert!(
            (nn[0] - c30).abs() < 1e-5 && (nn[1] - c30).abs() < 1e-5 && (nn[2] - c70).abs() < 1e-5,
            "{nn:?}"
        );
    }
}
