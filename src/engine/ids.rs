//! The faces' external ids, each held once: their bytes end to end in one buffer with the end of
//! each by sequence number, and a hash table of sequence numbers that finds a face by its id
//! (hashed again from the buffer when the table grows). A map from id to sequence number would hold
//! every id twice; a boxed string per id costs a pointer, a length and an allocation each.

use std::hash::BuildHasher;

use hashbrown::HashTable;

#[derive(Debug, Default, Clone)]
pub(super) struct FaceIds {
    /// Every id's bytes, in sequence order (each a whole `str`, so any slice between two ends is
    /// valid UTF-8).
    bytes: String,
    /// `ends[s]`: where id `s` ends in `bytes` (it starts where id `s - 1` ends).
    ends: Vec<u64>,
    table: HashTable<u32>,
    hasher: std::collections::hash_map::RandomState,
}

/// Id `seq` in `bytes` by `ends`.
fn id_at<'a>(bytes: &'a str, ends: &[u64], seq: usize) -> &'a str {
    let start = if seq == 0 { 0 } else { ends[seq - 1] as usize };
    &bytes[start..ends[seq] as usize]
}

impl FaceIds {
    /// The sequence number of `id`, if held.
    pub fn get(&self, id: &str) -> Option<u32> {
        let h = self.hasher.hash_one(id);
        self.table
            .find(h, |&s| id_at(&self.bytes, &self.ends, s as usize) == id)
            .copied()
    }

    /// Holds `id` as the next sequence number and returns it; the caller has checked that `id`
    /// is not held.
    pub fn push(&mut self, id: &str) -> u32 {
        debug_assert!(self.get(id).is_none());
        let seq = self.ends.len() as u32;
        self.bytes.push_str(id);
        self.ends.push(self.bytes.len() as u64);
        let (bytes, ends, hasher) = (&self.bytes, &self.ends, &self.hasher);
        self.table.insert_unique(hasher.hash_one(id), seq, |&s| {
            hasher.hash_one(id_at(bytes, ends, s as usize))
        });
        seq
    }

    /// Replaces every id by `ids` (sequence numbers in order).
    pub fn from_ids(ids: Vec<String>) -> Self {
        let mut out = Self::default();
        out.bytes.reserve_exact(ids.iter().map(|i| i.len()).sum());
        out.ends.reserve_exact(ids.len());
        // The table is empty: nothing to rehash while it grows here.
        out.table.reserve(ids.len(), |_| 0);
        for id in ids {
            out.push(&id);
        }
        out
    }
}

impl std::ops::Index<usize> for FaceIds {
    type Output = str;

    fn index(&self, seq: usize) -> &str {
        id_at(&self.bytes, &self.ends, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_id_by_its_sequence_number_across_growth() {
        let mut ids = FaceIds::default();
        for i in 0..10_000u32 {
            assert_eq!(ids.push(&format!("face-{i}")), i);
        }
        for i in (0..10_000u32).step_by(97) {
            assert_eq!(ids.get(&format!("face-{i}")), Some(i));
            assert_eq!(&ids[i as usize], format!("face-{i}"));
        }
        assert_eq!(ids.get("face-10000"), None);
        assert_eq!(ids.get(""), None);
        // Ids that are prefixes of one another, empty and not ASCII, stay apart.
        let mut odd = FaceIds::default();
        for id in ["ab", "a", "", "abc", "é", "aé"] {
            odd.push(id);
        }
        for (s, id) in ["ab", "a", "", "abc", "é", "aé"].iter().enumerate() {
            assert_eq!((odd.get(id), &odd[s]), (Some(s as u32), *id));
        }
        assert_eq!(odd.get("b"), None);
        let back = FaceIds::from_ids(vec!["a".into(), "b".into()]);
        assert_eq!(
            (back.get("a"), back.get("b"), back.get("c")),
            (Some(0), Some(1), None)
        );
    }
}
