//! The batch path of a state: the calibration warm-up, then runs of faces through the engine
//! with their commits, and what acts between two faces (calibration readings, compaction steps,
//! snapshots).

use super::*;

/// Faces of a run of `Clusterer::apply` between two commits of its changes (the batch's last
/// commit carries its positions). These commits overlap the index thread
/// (`Engine::insert_many`), so the store's work (most of a commit) no longer waits for the
/// run to end (BENCHMARKS.md section 16).
const WRITE_EVERY: usize = 128;

impl Clusterer {
    /// Takes `face` into the warm-up queue (checked first; a face id already waiting is a
    /// duplicate). Returns whether it was taken.
    fn wait(
        &mut self,
        face: &crate::engine::Face,
        extras: &mut crate::store::Extras,
    ) -> Result<bool, EngineError> {
        crate::engine::check_face(
            &face.face_id,
            &face.vector,
            &face.variants,
            self.cfg.model.dim,
        )?;
        if self.waiting.iter().any(|w| w.face_id == face.face_id) {
            return Ok(false);
        }
        let w = face.clone();
        extras.waiting.push((self.waiting.len() as u32, w.clone()));
        self.waiting.push(w);
        Ok(true)
    }

    /// Decides from the waiting faces, rebuilds the engine for the decision and applies them.
    fn decide(
        &mut self,
        res: &mut BatchResult,
        extras: &mut crate::store::Extras,
    ) -> Result<(), ClustererError> {
        let d = self.cfg.model.dim;
        let mut rows = Vec::with_capacity(self.waiting.len() * d);
        for w in &self.waiting {
            // Checked when it was taken.
            if let Ok(v) = crate::engine::normalize(&w.face_id, &w.vector, d) {
                rows.extend_from_slice(&v);
            }
        }
        let decision = self.calibration.decide_rows(&rows, d);
        log_decision(&decision);
        let (params, proxy, scorer) = stages_for(&self.cfg, &decision)?;
        let mut hnsw = self.cfg.hnsw_params();
        hnsw.capacity_hint = hnsw.capacity_hint.max(self.waiting.len());
        self.engine = Engine::with_stages(params, HnswIndex::new(hnsw), proxy, scorer);
        for w in std::mem::take(&mut self.waiting) {
            let (o, events) = self
                .engine
                .insert_face(w.view())
                .map_err(|e| StoreError::Write {
                    path: self.cfg.store.path.clone(),
                    reason: format!("a waiting face no longer applies: {e}"),
                })?;
            if let Outcome::Applied { seq } = o {
                res.applied += 1;
                res.events.extend(events);
                if self.cfg.api.keep_thumbnails && !w.thumbnail.is_empty() {
                    extras.thumbnails.push((seq, w.thumbnail));
                }
            }
            extras.clear_waiting += 1;
        }
        res.waiting = 0;
        extras.waiting.clear();
        extras.decision = Some(decision);
        self.decision = Some(decision);
        Ok(())
    }

    /// Applies one batch in stream order: each face is checked, waits for the calibration
    /// decision while there is none, then goes into the engine; the batch ends with a store
    /// commit (fsync) with `positions` (the input offsets this batch ends at). Only after it
    /// returns may the caller acknowledge the input. Faces the engine refuses are reported in
    /// `rejected`.
    ///
    /// Runs of faces go through `Engine::insert_many` (the index halves on the engine's index
    /// thread: the same result as one at a time), each run ending where something acts between
    /// two faces: a snapshot, a calibration reading. While a run goes on, its changes are
    /// committed every `WRITE_EVERY` faces without positions (whole faces: a crash leaves a prefix
    /// of the batch, which the redelivery completes, as after a snapshot's commit). While a
    /// compaction is under way faces go one at a time.
    pub fn apply(
        &mut self,
        faces: &[crate::engine::Face],
        positions: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<BatchResult, ClustererError> {
        let mut res = BatchResult::default();
        let refreshed_before = self.engine.n_refreshed();
        let mut extras = crate::store::Extras::default();
        let mut i = 0;
        while i < faces.len() {
            let face = &faces[i];
            if self.decision.is_none() {
                match self.wait(face, &mut extras) {
                    Ok(true) => res.waiting += 1,
                    Ok(false) => res.duplicates += 1,
                    Err(e) => res.rejected.push((i, e)),
                }
                if self.waiting.len() >= self.calibration.warmup {
                    self.decide(&mut res, &mut extras)?;
                }
                i += 1;
                continue;
            }
            if self.rebuild.is_some() {
                let r = self.engine.insert_face(face.view());
                self.after_insert(i, face, r, true, &mut res, &mut extras)?;
                i += 1;
                continue;
            }
            let views: Vec<_> = faces[i..].iter().map(|f| f.view()).collect();
            let every = self.snapshot_every as usize;
            let stream = matches!(
                self.decision,
                Some(crate::engine::calibrate::Decision::Stream { .. })
            );
            let calibration = &self.calibration;
            let stop = |n: usize| n % every == 0 || (stream && calibration.refits_at(n));
            // While the index thread goes on, this thread commits what the run changed so far,
            // every `WRITE_EVERY` faces (thumbnails with their faces), without the positions:
            // as a snapshot's commit does, it leaves a durable state of whole faces, a prefix of
            // the batch, which a redelivery completes (applied faces are no-ops).
            let (store, recent) = (&self.store, &mut self.recent);
            let keep_thumbnails = self.cfg.api.keep_thumbnails;
            let mut failed = None;
            let mut unwritten = 0;
            let (consumed, results) =
                self.engine
                    .insert_many(&views, &stop, &mut |engine, so_far| {
                        let j = so_far.len() - 1;
                        if let Some(Ok((Outcome::Applied { seq }, _))) = so_far.last() {
                            let f = &faces[i + j];
                            if keep_thumbnails && !f.thumbnail.is_empty() {
                                extras.thumbnails.push((*seq, f.thumbnail.clone()));
                            }
                            unwritten += 1;
                        }
                        if unwritten >= WRITE_EVERY && failed.is_none() {
                            unwritten = 0;
                            let changes = super::take_changes(engine, store);
                            let w = std::mem::take(&mut extras);
                            match store.commit_with(&changes, &w, &[]) {
                                Ok(()) => remember(recent, changes.events),
                                Err(e) => failed = Some(e),
                            }
                        }
                    });
            if let Some(e) = failed {
                return Err(e.into());
            }
            for (j, r) in results.into_iter().enumerate() {
                self.after_insert(i + j, &faces[i + j], r, false, &mut res, &mut extras)?;
            }
            i += consumed;
        }
        self.commit_engine(&extras, positions)?;
        res.refreshed = (self.engine.n_refreshed() - refreshed_before) as usize;
        Ok(res)
    }

    /// What follows one insertion of `apply`, in stream order: the result counted, the
    /// thumbnail kept (unless `insert_many`'s caller kept it already: `thumbnail` false), and
    /// what acts at this face count (a calibration reading, a compaction step, a snapshot).
    fn after_insert(
        &mut self,
        i: usize,
        face: &crate::engine::Face,
        r: crate::engine::InsertResult,
        thumbnail: bool,
        res: &mut BatchResult,
        extras: &mut crate::store::Extras,
    ) -> Result<(), ClustererError> {
        match r {
            Ok((Outcome::Applied { seq }, events)) => {
                res.applied += 1;
                res.events.extend(events);
                if thumbnail && self.cfg.api.keep_thumbnails && !face.thumbnail.is_empty() {
                    extras.thumbnails.push((seq, face.thumbnail.clone()));
                }
                if let Some(d) = self.decision {
                    if let Some((new, events)) =
                        self.engine
                            .refit_calibration(&self.calibration, &d, seq as usize + 1)
                    {
                        log_decision(&new);
                        res.events.extend(events);
                        extras.decision = Some(new);
                        self.decision = Some(new);
                    }
                }
                if self.rebuild.is_some() {
                    let v = self.engine.indexed_vector_of_new(seq).to_vec();
                    if self.rebuild_step(seq, &v)? {
                        // The dump may only cover what is durable.
                        let w = std::mem::take(extras);
                        self.commit_engine(&w, &[])?;
                        self.finish_rebuild()?;
                        self.compact_if_due()?;
                    }
                }
                if (seq + 1) % self.snapshot_every == 0 {
                    // The snapshot may only cover what is durable.
                    let w = std::mem::take(extras);
                    self.commit_engine(&w, &[])?;
                    let t = std::time::Instant::now();
                    snapshot(
                        &self.store,
                        &self.index_dir,
                        self.engine.index(),
                        seq + 1,
                        &[],
                    )?;
                    self.snapshot_seconds += t.elapsed().as_secs_f64();
                }
            }
            Ok((Outcome::Duplicate { seq }, _)) if self.engine.is_erased(seq) => {
                res.erased_redelivered += 1
            }
            Ok((Outcome::Duplicate { .. }, _)) => res.duplicates += 1,
            Err(e) => res.rejected.push((i, e)),
        }
        Ok(())
    }
}
