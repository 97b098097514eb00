//! The faces' external ids, each held once: a vector by sequence number and a hash table of
//! sequence numbers that finds a face by its id (hashed again from the vector when the table
//! grows). A map from id to sequence number would hold every id twice.

use std::hash::BuildHasher;

use hashbrown::HashTable;

#[derive(Debug, Default, Clone)]
pub(super) struct FaceIds {
    ids: Vec<Box<str>>,
    table: HashTable<u32>,
    hasher: std::collections::hash_map::RandomState,
}

impl FaceIds {
    /// The sequence number of `id`, if held.
    pub fn get(&self, id: &str) -> Option<u32> {
        let h = self.hasher.hash_one(id);
        self.table
            .find(h, |&s| &*self.ids[s as usize] == id)
            .copied()
    }

    /// Holds `id` as the next sequence number and returns it; the caller has checked that `id`
    /// is not held.
    pub fn push(&mut self, id: &str) -> u32 {
        debug_assert!(self.get(id).is_none());
        let seq = self.ids.len() as u32;
        self.ids.push(id.into());
        let (ids, hasher) = (&self.ids, &self.hasher);
        self.table.insert_unique(hasher.hash_one(id), seq, |&s| {
            hasher.hash_one(&*ids[s as usize])
        });
        seq
    }

    /// Replaces every id by `ids` (sequence numbers in order).
    pub fn from_ids(ids: Vec<String>) -> Self {
        let mut out = Self::default();
        out.ids.reserve_exact(ids.len());
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
        &self.ids[seq]
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
        let back = FaceIds::from_ids(vec!["a".into(), "b".into()]);
        assert_eq!(
            (back.get("a"), back.get("b"), back.get("c")),
            (Some(0), Some(1), None)
        );
    }
}
