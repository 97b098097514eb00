//! The face and component records (`r:<seq>`, `c:<label>`) as a log beside records in place.
//!
//! A face's out-list changes whenever a newer face enters it (about `k` older faces per
//! insertion), so writing every changed record in place rewrote ~9 records at random keys per
//! face, and at a million faces sled spends ~12 us on each such write, 4-5x a write in key order
//! (BENCHMARKS.md section 17). So a commit writes its changed records as log entries `l:<n>`
//! (sequential keys, one value each), and a **sweep** rewrites a few records in place per commit,
//! in key order (faces, then component labels), from the engine's current state
//! (`Engine::take_changes_swept`). Reading back (`Store::load`): the records in place, then every
//! log entry in order, the later value winning.
//!
//! Why that is exact: every change is in a log entry. A sweep round starts when the log's next
//! entry is `A` and ends when its cursors have passed the last face and label; every record was
//! rewritten in place during the round with its value at that moment. When a round ends, the
//! entries before its `A` go: a record whose last change is older than the sweep's write of it is
//! current in place, and one changed after that has its change in an entry >= `A`, and the last
//! entry that holds it gives its current value. The log keeps at most two rounds.
//! Progress (`m:records`) is written in the same atomic batch as the entries and sweep it
//! describes.

use std::ops::Range;

use super::codec::*;
use super::*;
use crate::engine::{CompRecord, FaceRecord, Sweep};

/// Records per log entry at most (a commit with more writes several entries).
const ENTRY_RECORDS: usize = 4096;

/// Records swept per applied face: `max(SWEEP_MIN, ceil(records / SWEEP_SCALE))`, where records
/// counts faces and component labels (a new face usually takes a new label, so both grow by about
/// one per face: the sweep must outpace two per face to finish a round). A round then spans at
/// most about `records / (per face - 2)` faces, and the log holds about two rounds of changes
/// (~9 face records per face).
const SWEEP_SCALE: u64 = 262_144;
const SWEEP_MIN: u64 = 4;

/// The sweep's progress and the log's extent, `m:records`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct RecordLog {
    /// The next entry's number.
    next: u64,
    /// The first entry of the current round.
    round_start: u64,
    /// Entries below this are deleted.
    deleted_below: u64,
    face_cursor: u32,
    comp_cursor: u32,
}

impl RecordLog {
    pub(super) fn next(&self) -> u64 {
        self.next
    }

    pub(super) fn decode(v: &[u8]) -> Option<Self> {
        let mut r = Reader { b: v, at: 0 };
        let s = RecordLog {
            next: r.u64()?,
            round_start: r.u64()?,
            deleted_below: r.u64()?,
            face_cursor: r.u32()?,
            comp_cursor: r.u32()?,
        };
        (r.done() && s.deleted_below <= s.round_start && s.round_start <= s.next).then_some(s)
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(&self.next.to_le_bytes());
        v.extend_from_slice(&self.round_start.to_le_bytes());
        v.extend_from_slice(&self.deleted_below.to_le_bytes());
        v.extend_from_slice(&self.face_cursor.to_le_bytes());
        v.extend_from_slice(&self.comp_cursor.to_le_bytes());
        v
    }
}

fn encode_comp(c: &CompRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&c.cluster_id.to_le_bytes());
    v.extend_from_slice(&c.size.to_le_bytes());
    v
}

pub(super) fn decode_comp(v: &[u8]) -> Option<CompRecord> {
    let mut r = Reader { b: v, at: 0 };
    let c = read_comp(&mut r)?;
    r.done().then_some(c)
}

fn read_comp(r: &mut Reader<'_>) -> Option<CompRecord> {
    Some(CompRecord {
        cluster_id: r.u64()?,
        size: r.u32()?,
    })
}

pub(super) fn decode_record(v: &[u8]) -> Option<FaceRecord> {
    let mut r = Reader { b: v, at: 0 };
    let rec = read_record(&mut r)?;
    r.done().then_some(rec)
}

fn read_record(r: &mut Reader<'_>) -> Option<FaceRecord> {
    let comp = r.u32()?;
    let len = r.u32()? as usize;
    let mut out = Vec::with_capacity(len.min(1024));
    for _ in 0..len {
        let to = r.u32()?;
        let s = f32::from_le_bytes(r.take(4)?.try_into().ok()?);
        out.push((to, s));
    }
    Some(FaceRecord { comp, out })
}

/// A log entry: `[faces u32] ([seq u32] [record])* [comps u32] ([label u32] [0 | 1 comp])*`.
fn encode_entry(faces: &[(u32, FaceRecord)], comps: &[(u32, Option<CompRecord>)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + faces.len() * 80 + comps.len() * 17);
    v.extend_from_slice(&(faces.len() as u32).to_le_bytes());
    for (seq, r) in faces {
        v.extend_from_slice(&seq.to_le_bytes());
        v.extend_from_slice(&encode_record(r));
    }
    v.extend_from_slice(&(comps.len() as u32).to_le_bytes());
    for (label, c) in comps {
        v.extend_from_slice(&label.to_le_bytes());
        match c {
            Some(c) => {
                v.push(1);
                v.extend_from_slice(&encode_comp(c));
            }
            None => v.push(0),
        }
    }
    v
}

/// A log entry's records, in the order written.
pub(super) type Entry = (Vec<(u32, FaceRecord)>, Vec<(u32, Option<CompRecord>)>);

pub(super) fn decode_entry(v: &[u8]) -> Option<Entry> {
    let mut r = Reader { b: v, at: 0 };
    let n = r.u32()? as usize;
    let mut faces = Vec::with_capacity(n.min(ENTRY_RECORDS));
    for _ in 0..n {
        let seq = r.u32()?;
        faces.push((seq, read_record(&mut r)?));
    }
    let n = r.u32()? as usize;
    let mut comps = Vec::with_capacity(n.min(ENTRY_RECORDS));
    for _ in 0..n {
        let label = r.u32()?;
        let c = match r.take(1)?[0] {
            0 => None,
            1 => Some(read_comp(&mut r)?),
            _ => return None,
        };
        comps.push((label, c));
    }
    r.done().then_some((faces, comps))
}

/// The records `cs` carries, written into `b`: its changes as log entries, its swept records
/// in place, and the progress that follows. Returns the progress to keep once `b` is durable.
pub(super) fn write_records(log: &RecordLog, cs: &ChangeSet, b: &mut sled::Batch) -> RecordLog {
    let mut st = *log;
    let entries = cs
        .faces
        .len()
        .div_ceil(ENTRY_RECORDS)
        .max(cs.comps.len().div_ceil(ENTRY_RECORDS));
    for i in 0..entries {
        let part = |n: usize| (i * ENTRY_RECORDS).min(n)..((i + 1) * ENTRY_RECORDS).min(n);
        let v = encode_entry(
            &cs.faces[part(cs.faces.len())],
            &cs.comps[part(cs.comps.len())],
        );
        b.insert(key(b'l', &st.next.to_be_bytes()), v);
        st.next += 1;
    }
    // The sweep, only where it continues from the cursor (a change set taken without one, or
    // for another plan, moves nothing).
    if contiguous(cs.swept_faces.iter().map(|x| x.0), st.face_cursor) {
        for (seq, r) in &cs.swept_faces {
            b.insert(key(b'r', &seq.to_be_bytes()), encode_record(r));
            st.face_cursor = seq + 1;
        }
    }
    if contiguous(cs.swept_comps.iter().map(|x| x.0), st.comp_cursor) {
        for (label, c) in &cs.swept_comps {
            let k = key(b'c', &label.to_be_bytes());
            match c {
                Some(c) => b.insert(k, encode_comp(c)),
                None => b.remove(k),
            }
            st.comp_cursor = label + 1;
        }
    }
    let swept_all =
        st.face_cursor >= cs.counters.n_faces && st.comp_cursor >= cs.counters.next_comp;
    if swept_all && (st.face_cursor > 0 || st.comp_cursor > 0) {
        for e in st.deleted_below..st.round_start {
            b.remove(key(b'l', &e.to_be_bytes()));
        }
        st.deleted_below = st.round_start;
        st.round_start = st.next;
        st.face_cursor = 0;
        st.comp_cursor = 0;
    }
    if st != *log {
        b.insert(&b"m:records"[..], st.encode());
    }
    st
}

fn contiguous(mut seqs: impl Iterator<Item = u32>, from: u32) -> bool {
    let mut want = from;
    seqs.all(|s| {
        let ok = s == want;
        want = want.wrapping_add(1);
        ok
    })
}

/// The records the next commit should sweep, given how many faces it applies and how many
/// faces and component labels the engine then holds.
pub(super) fn plan(log: &RecordLog, new_faces: usize, n_faces: u32, n_comps: u32) -> Sweep {
    if new_faces == 0 {
        return Sweep::default();
    }
    let total = n_faces as u64 + n_comps as u64;
    let per_face = total.div_ceil(SWEEP_SCALE).max(SWEEP_MIN);
    let mut budget = (new_faces as u64 * per_face).min(u32::MAX as u64) as u32;
    let faces: Range<u32> = log.face_cursor
        ..log
            .face_cursor
            .saturating_add(budget)
            .min(n_faces.max(log.face_cursor));
    budget -= faces.len() as u32;
    let comps: Range<u32> = log.comp_cursor
        ..log
            .comp_cursor
            .saturating_add(budget)
            .min(n_comps.max(log.comp_cursor));
    Sweep { faces, comps }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_as_written_and_a_short_one_is_refused() {
        let faces = vec![
            (
                3,
                FaceRecord {
                    comp: 7,
                    out: vec![(1, 0.5), (2, 0.25)],
                },
            ),
            (
                9,
                FaceRecord {
                    comp: 0,
                    out: vec![],
                },
            ),
        ];
        let comps = vec![
            (
                1,
                Some(CompRecord {
                    cluster_id: 42,
                    size: 3,
                }),
            ),
            (2, None),
        ];
        let v = encode_entry(&faces, &comps);
        assert_eq!(decode_entry(&v), Some((faces, comps)));
        assert_eq!(decode_entry(&v[..v.len() - 1]), None);
        let log = RecordLog {
            next: 5,
            round_start: 3,
            deleted_below: 1,
            face_cursor: 10,
            comp_cursor: 2,
        };
        assert_eq!(RecordLog::decode(&log.encode()), Some(log));
        let bad = RecordLog {
            deleted_below: 4,
            ..log
        };
        assert_eq!(RecordLog::decode(&bad.encode()), None);
    }

    #[test]
    fn a_plan_sweeps_faces_then_labels_and_grows_with_the_state() {
        let log = RecordLog {
            face_cursor: 95,
            ..Default::default()
        };
        assert_eq!(plan(&log, 0, 100, 10), Sweep::default());
        // 2 faces x 4 records: 5 faces left, then 3 labels.
        let p = plan(&log, 2, 100, 10);
        assert_eq!((p.faces, p.comps), (95..100, 0..3));
        // Two million records: 8 per face.
        let p = plan(&RecordLog::default(), 128, 1_000_000, 1_097_152);
        assert_eq!(p.faces, 0..1024);
    }
}
