//! What `recluster` reads from an old state and carries into a new one beside the engine's own
//! changes: the fingerprint it was written with, the input positions, the retention clock.

use super::codec::*;
use super::*;

/// A committed input position as `commit` takes it: (name, value).
pub type Position = (Vec<u8>, Vec<u8>);

impl Store {
    /// Opens an existing state as it was written, whatever the configuration says now: its
    /// fingerprint is read from the marker file beside the database (the real one, which may
    /// have gained an embedder since, from the database). For reading it, not to apply to it.
    pub fn open_as_written(
        path: &Path,
        cache_bytes: u64,
    ) -> Result<(Self, Fingerprint), StoreError> {
        let marker = path.join(MARKER);
        let bytes = std::fs::read(&marker).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: format!("no clip-cluster state here ({}: {e})", marker.display()),
        })?;
        let written: Fingerprint =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: format!("{} is not a state marker: {e}", marker.display()),
            })?;
        let store = Self::open(path, &written, cache_bytes)?;
        let fp = store
            .get(b"m:fingerprint")?
            .ok_or_else(|| store.corrupt("m:fingerprint", "missing"))?;
        let stored: Fingerprint = serde_json::from_slice(&fp)
            .map_err(|e| store.corrupt("m:fingerprint", &e.to_string()))?;
        Ok((store, stored))
    }

    /// Whether `path` holds a state (its marker file).
    pub fn holds_state(path: &Path) -> bool {
        path.join(MARKER).exists()
    }

    /// Every input position committed (`x:` records), as `commit` takes them.
    pub fn positions(&self) -> Result<Vec<Position>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(b"x:") {
            let (k, v) = kv.map_err(|e| self.iter_err(e))?;
            out.push((k[2..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// When face `seq`'s age starts counting for retention (capture time, else arrival).
    pub fn face_since(&self, seq: u32) -> Result<Option<u64>, StoreError> {
        self.face_time(seq)
    }

    /// Writes faces' thumbnails (`(seq, JPEG)`, as a recluster carries them). One batch, fsync.
    pub fn put_thumbnails(&self, thumbnails: &[(u32, Vec<u8>)]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (seq, t) in thumbnails {
            b.insert(key(b'j', &seq.to_be_bytes()), t.as_slice());
        }
        self.write(b)
    }

    /// Sets the retention clock of faces (`(seq, ms)`): a recluster keeps the arrival times of
    /// the old state's faces. One batch, fsync.
    pub fn set_face_times(&self, times: &[(u32, u64)]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for &(seq, at) in times {
            if let Some(old) = self.face_time(seq)? {
                b.remove(super::time_key(old, seq));
            }
            b.insert(super::time_key(at, seq), &[][..]);
            b.insert(key(b'i', &seq.to_be_bytes()), &at.to_le_bytes()[..]);
        }
        self.write(b)
    }

    /// The compaction under way beside the stream, if any (`m:rebuild`).
    pub fn rebuild(&self) -> Result<Option<RebuildRecord>, StoreError> {
        match self.get(b"m:rebuild")? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.corrupt("m:rebuild", &e.to_string())),
        }
    }

    /// Records a compaction started beside the stream (fsync); a compaction's dump ends it.
    pub fn set_rebuild(&self, r: &RebuildRecord) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        let v = serde_json::to_vec(r).map_err(|e| self.corrupt("m:rebuild", &e.to_string()))?;
        b.insert(&b"m:rebuild"[..], v);
        self.write(b)
    }

    /// The vector face `seq` is indexed with: its `v:` proxy, or, erased and still a tombstone
    /// of the index, its `z:` vector. A face the index holds always has one: none is corrupt
    /// state.
    pub fn indexed_vector(&self, seq: u32) -> Result<Vec<f32>, StoreError> {
        Ok(self.replay_vectors(seq)?.0)
    }

    /// What a replay of face `seq`'s insertion needs: the vector it is indexed with, and the
    /// vector its insertion searched with first (`NeighborIndex::search_then_insert`: its
    /// identity vector, which is the indexed one when no proxy was generated). From its `v:`
    /// record, or, erased and still a tombstone of the index, its `z:` record.
    pub fn replay_vectors(&self, seq: u32) -> Result<(Vec<f32>, Vec<f32>), StoreError> {
        let k = seq.to_be_bytes();
        if let Some(v) = self.get(&key(b'v', &k))? {
            let (_, proxy, identity) = decode_face_vectors(&v, self.dim)
                .ok_or_else(|| self.corrupt(&format!("v:{seq}"), "bad encoding"))?;
            let query = identity.unwrap_or_else(|| proxy.clone());
            return Ok((proxy, query));
        }
        match self.get(&key(b'z', &k))? {
            None => Err(self.corrupt(
                &format!("v:{seq}"),
                "a face the index holds has neither a vector nor a tombstone vector",
            )),
            Some(v) => decode_tombstone(&v, self.dim)
                .ok_or_else(|| self.corrupt(&format!("z:{seq}"), "bad encoding")),
        }
    }
}

/// A compaction under way beside the stream: decided when the state held `covers` faces; the
/// new index holds every face below it but the erased ones the old index held then
/// (`dropped`, sorted), and every face from it on; it replaces the old one when the state
/// holds `swap_at` faces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuildRecord {
    pub covers: u32,
    pub dropped: Vec<u32>,
    pub swap_at: u32,
}
