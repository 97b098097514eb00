//! Compaction: the HNSW index rebuilt without the points of erased faces once they are
//! `index.compact_fraction` of it.
//!
//! By default the rebuild runs on a worker thread beside the stream: when it is due (after an
//! erasure, or at open), the faces the index holds then, but the erased ones, are the new
//! index's base; the worker inserts them in sequence order, then each face applied since, in
//! order, as the stream hands them over (each also goes into the old index, which serves
//! meanwhile). After `index.compact_window` times as many new faces as the base holds, the
//! stream takes the new index (waiting for the worker if it is behind), sets the tombstones of
//! the faces erased meanwhile, and dumps it. `m:rebuild` records where the rebuild started and
//! where the swap falls; both are functions of the faces applied, so every run of the same
//! stream, and every restart (which starts the worker again from the store), holds the same
//! index at every face. An explicit compaction (`?compact=true`) or a window of 0 rebuilds at
//! once from the live vectors, the domain blocked.

use std::sync::mpsc;

use tracing::info;

use super::*;
use crate::store::RebuildRecord;

/// A compaction under way beside the stream.
pub(super) struct Rebuild {
    record: RebuildRecord,
    /// The faces below `record.covers` the new index holds, in order.
    base: Vec<u32>,
    /// Faces applied since the start, to the worker.
    tx: Option<mpsc::Sender<(u32, Vec<f32>)>>,
    worker: Option<std::thread::JoinHandle<Result<HnswIndex, StoreError>>>,
    /// Tells the worker to stop early (a rebuild dropped).
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Rebuild {
    /// The worker's index once it has every face it was handed (it waits for them).
    fn join(&mut self) -> Result<HnswIndex, ClustererError> {
        self.tx = None;
        let worker = self.worker.take().expect("joined once");
        match worker.join() {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Write {
                path: std::path::PathBuf::new(),
                reason: "the compaction worker panicked".into(),
            }
            .into()),
        }
    }
}

impl Drop for Rebuild {
    /// A rebuild dropped (an explicit compaction, a closed state): its worker ends with the
    /// channel and is waited for, so it never outlives the store it reads.
    fn drop(&mut self) {
        self.tx = None;
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Clusterer {
    /// When the tombstones reach `index.compact_fraction` of the index's points: compacts, at
    /// once (`index.compact_window` = 0) or by starting a rebuild beside the stream.
    /// Nothing while a rebuild is under way. Returns whether the index was compacted now.
    pub(super) fn compact_if_due(&mut self) -> Result<bool, ClustererError> {
        let idx = self.engine.index();
        let removed = idx.n_removed();
        let due = removed > 0
            && removed as f64 >= f64::from(self.cfg.index.compact_fraction) * idx.len() as f64;
        if !due || self.rebuild.is_some() {
            return Ok(false);
        }
        let window = self.cfg.index.compact_window;
        if window <= 0.0 {
            self.compact()?;
            return Ok(true);
        }
        let (points, live) = (idx.len(), idx.len() - removed);
        let covers = self.engine.n_faces() as u32;
        let dropped = self.store.tombstoned_seqs()?;
        let swap_at = covers + ((live as f64 * f64::from(window)).ceil() as u32).max(1);
        let record = RebuildRecord {
            covers,
            dropped,
            swap_at,
        };
        self.store.set_rebuild(&record)?;
        info!(
            faces = covers,
            points,
            erased_points = removed,
            swap_at,
            "HNSW compaction started beside the stream"
        );
        self.rebuild = Some(self.start_rebuild(record)?);
        Ok(false)
    }

    /// The rebuild `record` describes, its worker started on the base.
    fn start_rebuild(&self, record: RebuildRecord) -> Result<Rebuild, ClustererError> {
        let e = &self.engine;
        // Live faces below `covers`, and those erased since (their `z:` vectors are kept while
        // the old index holds them).
        let mut base: Vec<u32> = (0..record.covers).filter(|&s| !e.is_erased(s)).collect();
        for s in self.store.tombstoned_seqs()? {
            if s < record.covers && record.dropped.binary_search(&s).is_err() {
                base.push(s);
            }
        }
        base.sort_unstable();
        let mut params = self.cfg.hnsw_params();
        params.capacity_hint = params.capacity_hint.max(record.swap_at as usize);
        let (tx, rx) = mpsc::channel::<(u32, Vec<f32>)>();
        let store = self.store.clone();
        let order = base.clone();
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = cancel.clone();
        let stopped = move || stop.load(std::sync::atomic::Ordering::Relaxed);
        let worker = std::thread::Builder::new()
            .name("compaction".into())
            .spawn(move || {
                let mut index = HnswIndex::new(params);
                for s in order {
                    if stopped() {
                        break;
                    }
                    index.insert(s, &store.indexed_vector(s)?);
                }
                for (s, v) in rx {
                    if stopped() {
                        break;
                    }
                    index.insert(s, &v);
                }
                Ok(index)
            })
            .map_err(|e| StoreError::Write {
                path: self.store.path().to_path_buf(),
                reason: format!("cannot start the compaction worker: {e}"),
            })?;
        Ok(Rebuild {
            record,
            base,
            tx: Some(tx),
            worker: Some(worker),
            cancel,
        })
    }

    /// Restores a rebuild a restart interrupted: its worker started again, the faces applied
    /// since it began handed over from the store, and the swap if it is due.
    pub(super) fn resume_rebuild(&mut self) -> Result<(), ClustererError> {
        let Some(record) = self.store.rebuild()? else {
            return Ok(());
        };
        let (covers, swap_at) = (record.covers, record.swap_at);
        self.rebuild = Some(self.start_rebuild(record)?);
        let n = self.engine.n_faces() as u32;
        for seq in covers..n.min(swap_at) {
            let v = self.store.indexed_vector(seq)?;
            self.rebuild_step(seq, &v)?;
        }
        if n >= swap_at {
            self.finish_rebuild()?;
            // Faces after the swap went into the new index as they came.
            let replay = self.engine.replay_search_k();
            for later in swap_at..n {
                let (v, query) = self.store.replay_vectors(later)?;
                replay_insert(self.engine.index_mut(), replay, later, &v, &query);
                if self.engine.is_erased(later) {
                    self.engine.index_mut().remove(later);
                }
            }
        }
        Ok(())
    }

    /// After face `seq` (indexed with `v`) was applied: handed to the worker. Returns whether
    /// the swap is due now (the caller commits, then `finish_rebuild`).
    pub(super) fn rebuild_step(&mut self, seq: u32, v: &[f32]) -> Result<bool, ClustererError> {
        let Some(r) = self.rebuild.as_mut() else {
            return Ok(false);
        };
        if seq < r.record.swap_at {
            if let Some(tx) = &r.tx {
                // A worker that ended early (an error) says why at the join.
                let _ = tx.send((seq, v.to_vec()));
            }
        }
        Ok(seq + 1 == r.record.swap_at)
    }

    /// Takes the worker's index (waiting for it if it is behind) at the swap point, sets the
    /// tombstones of the faces erased since it began, swaps it in, dumps it (the faces below
    /// the swap point must be committed) and forgets the vectors of the erased points it left
    /// out.
    pub(super) fn finish_rebuild(&mut self) -> Result<(), ClustererError> {
        let Some(mut r) = self.rebuild.take() else {
            return Ok(());
        };
        let waited = std::time::Instant::now();
        let mut index = r.join()?;
        let n = r.record.swap_at;
        for s in 0..n {
            let held = s >= r.record.covers || r.base.binary_search(&s).is_ok();
            if held && self.engine.is_erased(s) {
                index.remove(s);
            }
        }
        let before = self.install(index, n, &r.record.dropped)?;
        info!(
            points_before = before,
            points = self.engine.index().len(),
            dropped = r.record.dropped.len(),
            faces_since_start = n - r.record.covers,
            waited_seconds = waited.elapsed().as_secs_f64(),
            "HNSW index compacted beside the stream: erased faces' points are gone from memory and disk"
        );
        Ok(())
    }

    /// Rebuilds the index from the live faces' stored vectors in sequence order, without the
    /// tombstones, swaps it in and dumps it, blocking the domain meanwhile; the tombstones'
    /// vectors are then forgotten. A rebuild under way beside the stream is dropped.
    pub fn compact(&mut self) -> Result<(), ClustererError> {
        let started = std::time::Instant::now();
        self.rebuild = None;
        let mut fresh = HnswIndex::new(self.cfg.hnsw_params());
        self.store.for_each_indexed(|seq, v| fresh.insert(seq, v))?;
        let dropped = self.store.tombstoned_seqs()?;
        let before = self.install(fresh, self.engine.n_faces() as u32, &dropped)?;
        info!(
            points_before = before,
            points = self.engine.index().len(),
            dropped = dropped.len(),
            seconds = started.elapsed().as_secs_f64(),
            "HNSW index compacted: erased faces' points are gone from memory and disk"
        );
        Ok(())
    }

    /// Swaps in a compacted `index` holding the faces below `covers`, dumps it and forgets the
    /// vectors of the erased points it left out (`dropped`). Returns the old index's points.
    fn install(
        &mut self,
        index: HnswIndex,
        covers: u32,
        dropped: &[u32],
    ) -> Result<usize, ClustererError> {
        let before = self.engine.index().len();
        *self.engine_mut().index_mut() = index;
        self.compactions += 1;
        snapshot_of(
            &self.store,
            &self.index_dir,
            self.engine.index(),
            covers,
            dropped,
            true,
        )?;
        Ok(before)
    }

    /// Compactions this process finished (at once or beside the stream).
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// Whether a compaction is under way beside the stream: the faces until its swap.
    pub fn rebuild_pending(&self) -> Option<usize> {
        self.rebuild
            .as_ref()
            .map(|r| (r.record.swap_at as usize).saturating_sub(self.engine.n_faces()))
    }
}
