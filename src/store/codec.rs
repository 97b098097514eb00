//! The byte layout of sled keys and values: a one-byte prefix per tree-like keyspace, big-endian
//! sequence numbers (so sled's order is the stream's), and the records' fixed encodings.

use super::*;

pub(super) fn key(prefix: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.len());
    k.push(prefix);
    k.push(b':');
    k.extend_from_slice(id);
    k
}

pub(super) fn encode_counters(c: &Counters) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&c.n_faces.to_le_bytes());
    v.extend_from_slice(&c.next_cluster_id.to_le_bytes());
    v.extend_from_slice(&c.next_event_seq.to_le_bytes());
    v.extend_from_slice(&c.next_comp.to_le_bytes());
    v
}

pub(super) fn encode_record(r: &FaceRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + 4 + r.out.len() * 8);
    v.extend_from_slice(&r.comp.to_le_bytes());
    v.extend_from_slice(&(r.out.len() as u32).to_le_bytes());
    for (to, s) in &r.out {
        v.extend_from_slice(&to.to_le_bytes());
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

/// A little cursor over a value, with errors that name the key.
pub(super) struct Reader<'a> {
    pub(super) b: &'a [u8],
    pub(super) at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(super) fn f32s(&mut self, n: usize) -> Option<Vec<f32>> {
        let raw = self.take(n * 4)?;
        Some(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
    pub(super) fn done(&self) -> bool {
        self.at == self.b.len()
    }
}

/// A `v:` value: the face id, the indexed proxy and the identity vector when it differs.
pub(super) fn decode_face_vectors(
    v: &[u8],
    d: usize,
) -> Option<(String, Vec<f32>, Option<Vec<f32>>)> {
    let mut r = Reader { b: v, at: 0 };
    let len = r.u32()? as usize;
    let id = String::from_utf8(r.take(len)?.to_vec()).ok()?;
    let has_identity = r.take(1)?[0] == 1;
    let proxy = r.f32s(d)?;
    let identity = if has_identity { Some(r.f32s(d)?) } else { None };
    r.done().then_some((id, proxy, identity))
}

/// A value that is exactly `n` little-endian f32s.
pub(super) fn decode_f32s(v: &[u8], n: usize) -> Option<Vec<f32>> {
    let mut r = Reader { b: v, at: 0 };
    r.f32s(n).filter(|_| r.done())
}

/// A tombstone (`z:`): the indexed vector, then the query its insertion searched with. One
/// written before the one-traversal insertion (BENCHMARKS.md 18) holds the indexed vector
/// alone; it stands for both.
pub(super) fn decode_tombstone(v: &[u8], d: usize) -> Option<(Vec<f32>, Vec<f32>)> {
    if let Some(indexed) = decode_f32s(v, d) {
        let query = indexed.clone();
        return Some((indexed, query));
    }
    let both = decode_f32s(v, 2 * d)?;
    Some((both[..d].to_vec(), both[d..].to_vec()))
}

pub(super) fn seq_from_key(k: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(k.get(2..6)?.try_into().ok()?))
}
