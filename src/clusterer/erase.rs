//! Erasure and compaction: a face, a person (cluster) or a source forgotten durably, and the
//! HNSW index rebuilt without its tombstones once they are `index.compact_fraction` of it.
//!
//! The order is the write-ahead order of the rest of the clusterer: the engine forgets, the
//! store commits (records gone, tombstones and events in, fsync), and only then may the caller
//! answer. A compaction builds the new index from the store's live vectors in sequence order
//! (the structure an index built from the store after a crash has too), dumps it, and records
//! the dump and forgets the tombstone vectors in one batch.

use super::*;

/// What to erase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EraseTarget {
    Face(String),
    /// Every face of the cluster (a person), and so its name.
    Cluster(u64),
    /// Every face whose message named this `source_id`.
    Source(String),
}

impl EraseTarget {
    pub fn reason(&self) -> &'static str {
        match self {
            EraseTarget::Face(_) => "face",
            EraseTarget::Cluster(_) => "cluster",
            EraseTarget::Source(_) => "source",
        }
    }
}

/// What an erasure did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EraseReport {
    /// The faces forgotten.
    pub erased: Vec<String>,
    /// Events emitted (splits and moves it caused, one `FaceErased` per face).
    pub events: usize,
    /// The index was rebuilt without its tombstones afterwards.
    pub compacted: bool,
}

impl Clusterer {
    /// Erases `target` and commits (fsync) before it returns; with `compact`, or when the
    /// tombstones reach `index.compact_fraction`, the index is then rebuilt without them. The
    /// inner error is a refused request (nothing changed): an unknown face or cluster, or a
    /// state in its calibration warm-up.
    pub fn erase(
        &mut self,
        target: &EraseTarget,
        compact: bool,
    ) -> Result<Result<(EraseReport, Vec<Event>), FeedbackError>, ClustererError> {
        self.erase_at(target, compact, &[])
    }

    /// As `erase`, committing `positions` with it (alone when nothing is erased).
    pub(super) fn erase_at(
        &mut self,
        target: &EraseTarget,
        compact: bool,
        positions: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Result<(EraseReport, Vec<Event>), FeedbackError>, ClustererError> {
        let seqs = match self.erase_targets(target)? {
            Ok(s) => s,
            Err(e) => {
                if !positions.is_empty() {
                    self.store.commit_positions(positions)?;
                }
                return Ok(Err(e));
            }
        };
        self.erase_seqs(&seqs, target.reason(), compact, positions)
            .map(Ok)
    }

    /// Erases up to `limit` faces whose age (from their capture time, else their arrival)
    /// passed `max_age_ms` at `now_ms`, oldest first, with reason `retention`; commits (fsync)
    /// before it returns. Nothing in the calibration warm-up.
    pub fn expire(
        &mut self,
        now_ms: u64,
        max_age_ms: u64,
        limit: usize,
    ) -> Result<(EraseReport, Vec<Event>), ClustererError> {
        if self.not_ready("erasures").is_some() {
            return Ok(Default::default());
        }
        let seqs: Vec<u32> = self
            .store
            .older_than(now_ms.saturating_sub(max_age_ms), limit)?
            .into_iter()
            .filter(|&s| !self.engine.is_erased(s))
            .collect();
        if seqs.is_empty() {
            return Ok(Default::default());
        }
        self.erase_seqs(&seqs, "retention", false, &[])
    }

    /// Erases these live faces and commits with `positions`; then compacts when asked or due.
    fn erase_seqs(
        &mut self,
        seqs: &[u32],
        reason: &str,
        compact: bool,
        positions: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(EraseReport, Vec<Event>), ClustererError> {
        let erased: Vec<String> = seqs
            .iter()
            .map(|&s| self.engine.face_id(s).to_string())
            .collect();
        let events = self.engine.erase(seqs, reason);
        if !seqs.is_empty() {
            self.commit_engine(&Default::default(), positions)?;
        } else if !positions.is_empty() {
            self.store.commit_positions(positions)?;
        }
        let compacted = if compact && self.engine.index().n_removed() > 0 {
            self.compact()?;
            true
        } else {
            self.compact_if_due()?
        };
        let report = EraseReport {
            erased,
            events: events.len(),
            compacted,
        };
        Ok((report, events))
    }

    /// The live faces `target` names, or why none can be erased.
    fn erase_targets(
        &self,
        target: &EraseTarget,
    ) -> Result<Result<Vec<u32>, FeedbackError>, ClustererError> {
        if let Some(e) = self.not_ready("erasures") {
            return Ok(Err(e));
        }
        let engine = &self.engine;
        Ok(Ok(match target {
            EraseTarget::Face(id) => match engine.seq_of(id).filter(|&s| !engine.is_erased(s)) {
                Some(s) => vec![s],
                None => return Ok(Err(FeedbackError::UnknownFace(id.clone()))),
            },
            EraseTarget::Cluster(c) => {
                let m = engine.members_of(*c);
                if m.is_empty() {
                    return Ok(Err(FeedbackError::UnknownCluster(*c)));
                }
                m
            }
            EraseTarget::Source(src) => self
                .store
                .faces_of_source(src)?
                .into_iter()
                .filter(|&s| !engine.is_erased(s))
                .collect(),
        }))
    }
}
