//! Durable state in sled: faces, their out-lists and components, cluster records, the counters,
//! the HNSW snapshot pointer, and the event outbox, all in one tree so that one `apply_batch`
//! writes a state change and the events describing it atomically. `commit` flushes (fsync) before
//! it returns: nothing is acknowledged before it is durable.
//!
//! Key layout (integers big-endian so that prefix scans come out in sequence order):
//! - `m:schema`, `m:fingerprint`, `m:counters`, `m:snapshot`: metadata
//! - `f:<face_id>` -> seq (u32)
//! - `v:<seq>` -> face id, proxy and optional identity vector (written once; the proxy is the
//!   vector the face was indexed with)
//! - `p:<seq>` -> the face's current proxy when a refresh replaced it (`proxy.refresh_per_insert`)
//! - `h:<seq>` -> the face's hallucinated variants made upstream (CLIP), when it had any
//! - `w:<seq>` -> (empty) the face was weak at insertion (quality below `quality.min_score`)
//! - `j:<seq>` -> the face's thumbnail (JPEG bytes), when it was kept (`api.keep_thumbnails`)
//! - `a:<seq>` -> the face's origin (`FaceMeta` JSON: source, image, time, quality, box), when
//!   the message told any (the faces of one photo share its image id)
//! - `q:<n>` -> a face of a new state waiting for the calibration decision (JSON); `m:calibration`
//!   -> the decision (JSON), written with the batch that applies the waiting faces
//! - `r:<seq>` -> component label and out-list, `c:<label>` -> cluster id and size: as of the
//!   sweep's last pass; `l:<n u64>` -> the records changed since, a log entry per commit;
//!   `m:records` -> the sweep's progress (`records`)
//! - `o:<event seq>` -> outbox entry (JSON), removed once delivered downstream
//! - `n:<cluster id u64>` -> the cluster's name (UTF-8), removed when cleared or merged away
//! - `k:<command seq u64>` -> an operator command resolved to its face pairs
//!   (`feedback::CommandRecord` JSON), rewritten when an undo marks it
//! - `x:<name>` -> positions owned by the caller (e.g. source offsets), written with the batch
//! - `e:<seq>` -> the id of an erased face (its tombstone: `f:<face_id>` stays, so the id is
//!   refused if it comes again; its `v:`, `p:`, `h:`, `w:`, `a:`, `j:` records are gone)
//! - `z:<seq>` -> the vector an erased face still has in the HNSW index as a tombstone (filtered
//!   from every result), then the identity vector its insertion searched with (tombstones
//!   written before the one-traversal insertion: the first alone), kept only until the index is compacted, so that an index
//!   rebuilt after a crash is the same structure; removed with the snapshot of the compacted index

mod carry;
pub use carry::{Position, RebuildRecord};

mod codec;
mod load;
mod outbox;
mod records;

use codec::*;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{ChangeSet, CompRecord, Counters, Event, Face, FaceRecord, Restored};

/// An erased face the index still holds (`z:`): what a replay of its insertion needs
/// (`Store::replay_vectors`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tombstone {
    pub seq: u32,
    /// The vector it is indexed with.
    pub indexed: Vec<f32>,
    /// The vector its insertion searched with first (its identity vector).
    pub query: Vec<f32>,
}

/// What the clusterer adds to a commit beside the engine's changes (see `Store::commit_with`):
/// the calibration warm-up and the applied faces' thumbnails.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Faces that start waiting, with their place in the queue.
    pub waiting: Vec<(u32, Face)>,
    /// The decision; with it, the first `clear_waiting` waiting faces leave the queue.
    pub decision: Option<crate::engine::calibrate::Decision>,
    pub clear_waiting: u32,
    /// Thumbnails of faces applied in this commit, by sequence number (`j:<seq>`).
    pub thumbnails: Vec<(u32, Vec<u8>)>,
}

/// A file beside the database that says "this directory holds clip-cluster state", so that a
/// database that comes back empty after damage is reported instead of silently started afresh.
const MARKER: &str = "clip-cluster-state.json";

/// How long `Store::open` waits for sled's lock to clear (a handle closed a moment ago, in this
/// process or another, e.g. the previous owner of a domain handing it over).
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Bumped whenever the key layout or a value encoding changes. 2: the record log (`records`);
/// a state of version 1 (every record in place, no log) is read as it is and marked 2 at open.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "state directory {path}: another process holds this state directory (its lock did not \
         clear in {waited_ms} ms); stop it or give store.path another directory"
    )]
    Locked { path: PathBuf, waited_ms: u64 },
    #[error(
        "state directory {path} is not a clip-cluster state directory ({reason}); \
         give store.path an empty or new directory"
    )]
    Foreign { path: PathBuf, reason: String },
    #[error("state directory {path} has schema version {found}, this build reads {expected}")]
    Schema {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error(
        "state directory {path} was written by a different model or graph configuration \
         (stored: {stored}; configured: {configured}); vectors are never mixed: restore the \
         configuration, use a new store.path, or rebuild this state's clusters under the new \
         graph configuration with `clip-cluster recluster --from {path} --to NEW_PATH`"
    )]
    Fingerprint {
        path: PathBuf,
        stored: String,
        configured: String,
    },
    #[error("state directory {path} is damaged at key {key}: {reason}")]
    Corrupt {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("state directory {path}: write failed: {reason}")]
    Write { path: PathBuf, reason: String },
    /// The blocking thread a store operation ran on failed (panicked or was cancelled).
    #[error("a store operation's blocking thread failed: {0}")]
    Blocking(String),
}

/// What produced the stored vectors and graph; a mismatch at open is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub model: String,
    pub dim: usize,
    /// The graph rules; a state built under other rules would mix two graphs.
    pub graph: String,
    /// The built-in embedder that turns image messages into vectors (network and landmark files,
    /// chip geometry, passes, flip, dtype), when it is enabled. States written before it was
    /// recorded have none and adopt the configured one at their next open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedder: Option<String>,
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "model {} dim {} graph {}",
            self.model, self.dim, self.graph
        )?;
        if let Some(e) = &self.embedder {
            write!(f, " embedder {e}")?;
        }
        Ok(())
    }
}

/// Which HNSW dump covers which prefix of the faces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub basename: String,
    pub covers: u32,
    /// Points the dump holds (faces below `covers` less those a compaction dropped); absent in
    /// states written before erasure existed, where it is `covers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<u32>,
}

/// One outbox entry: an event with its sequence and the face whose insertion caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub event_seq: u64,
    pub face_seq: u32,
    pub event: Event,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    dim: usize,
    /// The record log's progress as of the last commit (`m:records`), shared by the clones.
    records: std::sync::Arc<std::sync::Mutex<records::RecordLog>>,
}

/// Whether `path` is itself a state directory (a sled database or our marker), as opposed to a
/// directory that holds other things, e.g. one state directory per domain.
pub fn is_state_dir(path: &Path) -> bool {
    ["db", "conf", MARKER].iter().any(|f| path.join(f).exists())
}

impl Store {
    /// Opens (or creates) the state directory. A directory that holds anything but a clip-cluster
    /// sled database is refused, as is one written by a different fingerprint or schema.
    pub fn open(
        path: &Path,
        fingerprint: &Fingerprint,
        cache_bytes: u64,
    ) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        if path.exists() && !path.is_dir() {
            return Err(StoreError::Foreign {
                path: path.to_path_buf(),
                reason: "it is a file".into(),
            });
        }
        if path.is_dir() {
            let entries: Vec<String> = std::fs::read_dir(path)
                .map_err(|e| open_err(e.to_string()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let ours = ["conf", "db", "blobs", "snap", "index", MARKER];
            if !entries.is_empty() && !entries.iter().any(|e| e == "db" || e == "conf") {
                return Err(StoreError::Foreign {
                    path: path.to_path_buf(),
                    reason: format!("it holds {} and no sled database", entries.join(", ")),
                });
            }
            if let Some(other) = entries.iter().find(|e| {
                !ours
                    .iter()
                    .any(|o| e.as_str() == *o || e.starts_with("snap."))
            }) {
                return Err(StoreError::Foreign {
                    path: path.to_path_buf(),
                    reason: format!("unexpected entry {other}"),
                });
            }
        }
        // sled's file lock is released by its background threads shortly after the last handle
        // is dropped, so a state closed a moment ago (a restart in the same process) may still be
        // locked: wait a bounded time for it. A lock that stays is another live process.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            // sled panics on some damaged files rather than returning an error.
            let opened = std::panic::catch_unwind(|| {
                sled::Config::new()
                    .path(path)
                    .cache_capacity(cache_bytes)
                    .open()
            });
            match opened {
                Ok(Ok(db)) => break db,
                Ok(Err(e)) if e.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked {
                            path: path.to_path_buf(),
                            waited_ms: LOCK_WAIT.as_millis() as u64,
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Ok(Err(e)) => return Err(open_err(format!("sled cannot open it: {e}"))),
                Err(_) => return Err(open_err("sled panicked while opening it (damaged?)".into())),
            }
        };
        let store = Self {
            db,
            path: path.to_path_buf(),
            dim: fingerprint.dim,
            records: Default::default(),
        };
        let schema = store.get(b"m:schema")?;
        let marker = path.join(MARKER);
        match schema {
            None if marker.exists() => {
                return Err(store.corrupt(
                    "m:schema",
                    "the directory was initialized as clip-cluster state but its database is \
                     empty or unreadable; restore it from a backup or start a new store.path",
                ))
            }
            None => {
                if store.db.iter().next().is_some() {
                    return Err(StoreError::Foreign {
                        path: path.to_path_buf(),
                        reason: "the sled database has no clip-cluster schema key".into(),
                    });
                }
                let fp = serde_json::to_vec(fingerprint).map_err(|e| open_err(e.to_string()))?;
                let mut b = sled::Batch::default();
                b.insert(&b"m:schema"[..], &SCHEMA_VERSION.to_le_bytes()[..]);
                b.insert(&b"m:fingerprint"[..], fp.clone());
                // A random id for this state, so event ids stay unique across state directories.
                let state_id = format!("{:016x}", rand::random::<u64>());
                b.insert(&b"m:state_id"[..], state_id.as_bytes());
                store.write(b)?;
                // Written after the database, so its presence proves the database once held state.
                std::fs::write(&marker, fp).map_err(|e| open_err(e.to_string()))?;
            }
            Some(v) => {
                let found = v
                    .as_slice()
                    .try_into()
                    .map(u32::from_le_bytes)
                    .map_err(|_| store.corrupt("m:schema", "not a u32"))?;
                if found == 1 {
                    // Version 1 held every record in place and no log: valid as version 2.
                    let mut b = sled::Batch::default();
                    b.insert(&b"m:schema"[..], &SCHEMA_VERSION.to_le_bytes()[..]);
                    store.write(b)?;
                } else if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema {
                        path: path.to_path_buf(),
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
                let fp = store
                    .get(b"m:fingerprint")?
                    .ok_or_else(|| store.corrupt("m:fingerprint", "missing"))?;
                let stored: Fingerprint = serde_json::from_slice(&fp)
                    .map_err(|e| store.corrupt("m:fingerprint", &e.to_string()))?;
                // The embedder is compared only when both sides name one: a role that embeds
                // nothing (embed.enabled = false) cannot mix image vectors into the state.
                let same_graph = Fingerprint {
                    embedder: None,
                    ..stored.clone()
                } == Fingerprint {
                    embedder: None,
                    ..fingerprint.clone()
                };
                let adopt =
                    same_graph && stored.embedder.is_none() && fingerprint.embedder.is_some();
                let compatible = same_graph
                    && (stored.embedder.is_none()
                        || fingerprint.embedder.is_none()
                        || stored.embedder == fingerprint.embedder);
                if adopt {
                    // Written before the embedder was part of the fingerprint: record it now.
                    tracing::info!(
                        embedder = fingerprint.embedder.as_deref().unwrap_or_default(),
                        "the state's fingerprint names no embedder yet: recording the configured one; from now on another embedder setting is refused"
                    );
                    let fp = serde_json::to_vec(fingerprint)
                        .map_err(|e| store.corrupt("m:fingerprint", &e.to_string()))?;
                    let mut b = sled::Batch::default();
                    b.insert(&b"m:fingerprint"[..], fp);
                    store.write(b)?;
                } else if !compatible {
                    return Err(StoreError::Fingerprint {
                        path: path.to_path_buf(),
                        stored: stored.to_string(),
                        configured: fingerprint.to_string(),
                    });
                }
            }
        }
        if let Some(v) = store.get(b"m:records")? {
            let log = records::RecordLog::decode(&v)
                .ok_or_else(|| store.corrupt("m:records", "bad encoding"))?;
            *store.record_log_state() = log;
        }
        Ok(store)
    }

    /// The records the next commit's change set should carry for the sweep (`records`), given
    /// how many faces it applies and how many faces and component labels the engine holds then.
    pub fn sweep_plan(&self, new_faces: usize, n_faces: u32, n_comps: u32) -> crate::engine::Sweep {
        let log = *self.record_log_state();
        records::plan(&log, new_faces, n_faces, n_comps)
    }

    /// The record log (`records`): how many entries the state holds (about two sweep rounds'
    /// worth) and how many it has written.
    pub fn record_log(&self) -> Result<(usize, u64), StoreError> {
        let mut held = 0;
        for k in self.db.scan_prefix(b"l:").keys() {
            k.map_err(|e| self.iter_err(e))?;
            held += 1;
        }
        Ok((held, self.record_log_state().next()))
    }

    /// The record log's progress; a commit that panicked left it as before its write.
    fn record_log_state(&self) -> std::sync::MutexGuard<'_, records::RecordLog> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The random id given to this state directory at creation (part of every event id).
    pub fn state_id(&self) -> Result<String, StoreError> {
        let v = self
            .get(b"m:state_id")?
            .ok_or_else(|| self.corrupt("m:state_id", "missing"))?;
        String::from_utf8(v).map_err(|_| self.corrupt("m:state_id", "not UTF-8"))
    }

    fn corrupt(&self, key: &str, reason: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get(k)
            .map(|o| o.map(|v| v.to_vec()))
            .map_err(|e| StoreError::Open {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }

    fn write(&self, batch: sled::Batch) -> Result<(), StoreError> {
        let werr = |e: sled::Error| StoreError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        self.db.apply_batch(batch).map_err(werr)?;
        self.db.flush().map_err(werr)?;
        Ok(())
    }

    /// Writes a change set, its events and the caller's positions in one atomic batch, then
    /// flushes. `positions` are (name, value) pairs stored under `x:<name>`.
    pub fn commit(
        &self,
        cs: &ChangeSet,
        positions: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.commit_with(cs, &Extras::default(), positions)
    }

    /// As `commit`, with the calibration warm-up's changes in the same atomic batch: faces that
    /// wait for the decision (`q:<n>`), or the decision itself, which removes the waiting faces
    /// (they are in `cs` as applied faces then).
    pub fn commit_with(
        &self,
        cs: &ChangeSet,
        extras: &Extras,
        positions: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        let json_err = |e: serde_json::Error| StoreError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        for (n, f) in &extras.waiting {
            b.insert(
                key(b'q', &n.to_be_bytes()),
                serde_json::to_vec(f).map_err(json_err)?,
            );
        }
        if let Some(d) = &extras.decision {
            for n in 0..extras.clear_waiting {
                b.remove(key(b'q', &n.to_be_bytes()));
            }
            b.insert(
                &b"m:calibration"[..],
                serde_json::to_vec(d).map_err(json_err)?,
            );
        }
        let now = now_ms();
        for f in &cs.new_faces {
            let seq = f.seq.to_be_bytes();
            // The retention clock: capture time (never in the future), else arrival.
            let at = f
                .meta
                .as_ref()
                .and_then(|m| m.ts)
                .map_or(now, |ts| ts.clamp(0, now as i64) as u64);
            b.insert(time_key(at, f.seq), &[][..]);
            b.insert(key(b'i', &seq), &at.to_le_bytes()[..]);
            b.insert(key(b'f', f.face_id.as_bytes()), &f.seq.to_le_bytes()[..]);
            let mut v = Vec::with_capacity(4 + f.face_id.len() + 1 + 8 * self.dim);
            v.extend_from_slice(&(f.face_id.len() as u32).to_le_bytes());
            v.extend_from_slice(f.face_id.as_bytes());
            v.push(u8::from(f.identity.is_some()));
            for x in f.proxy.iter().chain(f.identity.iter().flatten()) {
                v.extend_from_slice(&x.to_le_bytes());
            }
            b.insert(key(b'v', &seq), v);
            if !f.variants.is_empty() {
                let h: Vec<u8> = f.variants.iter().flat_map(|x| x.to_le_bytes()).collect();
                b.insert(key(b'h', &seq), h);
            }
            if f.weak {
                b.insert(key(b'w', &seq), &[][..]);
            }
            if let Some(meta) = &f.meta {
                b.insert(key(b'a', &seq), serde_json::to_vec(meta).map_err(json_err)?);
            }
        }
        for (seq, jpeg) in &extras.thumbnails {
            b.insert(key(b'j', &seq.to_be_bytes()), jpeg.as_slice());
        }
        for f in &cs.erased {
            // The tombstone keeps what a replay of its insertion needs (`replay_vectors`): the
            // vector it is indexed with and the identity vector its insertion searched with.
            let query = match cs.new_faces.iter().find(|n| n.seq == f.seq) {
                Some(n) => n.identity.clone().unwrap_or_else(|| n.proxy.clone()),
                None => self.replay_vectors(f.seq)?.1,
            };
            let seq = f.seq.to_be_bytes();
            for prefix in [b'v', b'p', b'h', b'w', b'a', b'j', b'i'] {
                b.remove(key(prefix, &seq));
            }
            if let Some(at) = self.face_time(f.seq)? {
                b.remove(time_key(at, f.seq));
            }
            b.insert(key(b'e', &seq), f.face_id.as_bytes());
            let z: Vec<u8> = f
                .indexed
                .iter()
                .chain(&query)
                .flat_map(|x| x.to_le_bytes())
                .collect();
            b.insert(key(b'z', &seq), z);
        }
        for (seq, face_id) in &cs.tombstones {
            b.insert(key(b'f', face_id.as_bytes()), &seq.to_le_bytes()[..]);
            b.insert(key(b'e', &seq.to_be_bytes()), face_id.as_bytes());
        }
        let mut log = self.record_log_state();
        let next_log = records::write_records(&log, cs, &mut b);
        for (seq, proxy) in &cs.refreshed {
            let v: Vec<u8> = proxy.iter().flat_map(|x| x.to_le_bytes()).collect();
            b.insert(key(b'p', &seq.to_be_bytes()), v);
        }
        for (event_seq, face_seq, event) in &cs.events {
            let entry = OutboxEntry {
                event_seq: *event_seq,
                face_seq: *face_seq,
                event: event.clone(),
            };
            let json = serde_json::to_vec(&entry).map_err(|e| StoreError::Write {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            b.insert(key(b'o', &event_seq.to_be_bytes()), json);
        }
        for (id, name) in &cs.names {
            let k = key(b'n', &id.to_be_bytes());
            match name {
                Some(n) => b.insert(k, n.as_bytes()),
                None => b.remove(k),
            }
        }
        for r in &cs.commands {
            b.insert(
                key(b'k', &r.seq.to_be_bytes()),
                serde_json::to_vec(r).map_err(json_err)?,
            );
        }
        for (name, value) in positions {
            b.insert(key(b'x', name), value.as_slice());
        }
        b.insert(&b"m:counters"[..], encode_counters(&cs.counters));
        self.write(b)?;
        *log = next_log;
        Ok(())
    }

    /// Writes the caller's positions alone (`x:<name>`), then flushes.
    pub fn commit_positions(&self, positions: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (name, value) in positions {
            b.insert(key(b'x', name), value.as_slice());
        }
        self.write(b)
    }

    /// The calibration decision of this state, once made.
    pub fn calibration(&self) -> Result<Option<crate::engine::calibrate::Decision>, StoreError> {
        match self.get(b"m:calibration")? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.corrupt("m:calibration", &e.to_string())),
        }
    }

    /// The faces waiting for the calibration decision, in arrival order.
    pub fn waiting(&self) -> Result<Vec<Face>, StoreError> {
        let mut out = Vec::new();
        for (i, kv) in self.db.scan_prefix(b"q:").enumerate() {
            let (k, v) = kv.map_err(|e| self.iter_err(e))?;
            let kname = format!("q:{}", seq_from_key(&k).unwrap_or(u32::MAX));
            if seq_from_key(&k) != Some(i as u32) {
                return Err(self.corrupt(&kname, &format!("expected waiting face {i} here")));
            }
            out.push(serde_json::from_slice(&v).map_err(|e| self.corrupt(&kname, &e.to_string()))?);
        }
        Ok(out)
    }

    /// Whether a thumbnail of the face was kept.
    pub fn has_thumbnail(&self, seq: u32) -> Result<bool, StoreError> {
        self.db
            .contains_key(key(b'j', &seq.to_be_bytes()))
            .map_err(|e| StoreError::Open {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }

    /// A face's thumbnail (`j:<seq>`), None when none was kept.
    pub fn thumbnail(&self, seq: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(b'j', &seq.to_be_bytes()))
    }

    /// A face's sequence number by its id.
    pub fn face_seq(&self, face_id: &str) -> Result<Option<u32>, StoreError> {
        Ok(self.get(&key(b'f', face_id.as_bytes()))?.and_then(|v| {
            let b: [u8; 4] = v.as_slice().try_into().ok()?;
            Some(u32::from_le_bytes(b))
        }))
    }

    /// What the message told of a face's origin (`a:<seq>`: source, image, time, quality, box),
    /// None when it told nothing.
    pub fn face_meta(&self, seq: u32) -> Result<Option<crate::engine::FaceMeta>, StoreError> {
        let k = key(b'a', &seq.to_be_bytes());
        match self.get(&k)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.corrupt(&format!("a:{seq}"), &e.to_string())),
        }
    }

    /// A caller position written by `commit`.
    pub fn position(&self, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(b'x', name))
    }

    pub fn snapshot(&self) -> Result<Option<SnapshotInfo>, StoreError> {
        match self.get(b"m:snapshot")? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.corrupt("m:snapshot", &e.to_string())),
        }
    }

    pub fn set_snapshot(&self, info: &SnapshotInfo) -> Result<(), StoreError> {
        self.set_snapshot_compacted(Some(info), &[], false)
    }

    /// Records a snapshot and, in the same batch, forgets the `z:` vectors of the erased faces
    /// `dropped` that the dumped index no longer holds (a compaction).
    /// `None`: no dump (an index left empty: every face erased).
    pub fn set_snapshot_compacted(
        &self,
        info: Option<&SnapshotInfo>,
        dropped: &[u32],
        compaction: bool,
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        match info {
            Some(info) => {
                let v = serde_json::to_vec(info)
                    .map_err(|e| self.corrupt("m:snapshot", &e.to_string()))?;
                b.insert(&b"m:snapshot"[..], v);
            }
            None => b.remove(&b"m:snapshot"[..]),
        }
        for s in dropped {
            b.remove(key(b'z', &s.to_be_bytes()));
        }
        if compaction {
            // A compaction's dump: a rebuild under way (`m:rebuild`) is done or void.
            b.remove(&b"m:rebuild"[..]);
        }
        self.write(b)
    }

    /// The sequence numbers of the erased faces the index still holds as tombstones (`z:`), in
    /// order, without reading their vectors.
    pub fn tombstoned_seqs(&self) -> Result<Vec<u32>, StoreError> {
        let mut out = Vec::new();
        for k in self.db.scan_prefix(b"z:").keys() {
            let k = k.map_err(|e| self.iter_err(e))?;
            out.push(seq_from_key(&k).ok_or_else(|| self.corrupt("z:", "short key"))?);
        }
        Ok(out)
    }

    /// Erased faces whose vectors the index still holds as tombstones (`z:`), in order.
    pub fn tombstoned(&self) -> Result<Vec<Tombstone>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(b"z:") {
            let (k, v) = kv.map_err(|e| self.iter_err(e))?;
            let seq = seq_from_key(&k).ok_or_else(|| self.corrupt("z:", "short key"))?;
            let (indexed, query) = decode_tombstone(&v, self.dim)
                .ok_or_else(|| self.corrupt(&format!("z:{seq}"), "bad encoding"))?;
            out.push(Tombstone {
                seq,
                indexed,
                query,
            });
        }
        Ok(out)
    }

    /// The faces whose origin names `source_id` (a scan of every `a:` record: an operator's
    /// erasure, not a hot path), in order.
    pub fn faces_of_source(&self, source_id: &str) -> Result<Vec<u32>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(b"a:") {
            let (k, v) = kv.map_err(|e| self.iter_err(e))?;
            let seq = seq_from_key(&k).ok_or_else(|| self.corrupt("a:", "short key"))?;
            let meta: crate::engine::FaceMeta = serde_json::from_slice(&v)
                .map_err(|e| self.corrupt(&format!("a:{seq}"), &e.to_string()))?;
            if meta.source_id.as_deref() == Some(source_id) {
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// The time a face's age counts from (`i:<seq>`), ms since the epoch.
    fn face_time(&self, seq: u32) -> Result<Option<u64>, StoreError> {
        let v = self
            .db
            .get(key(b'i', &seq.to_be_bytes()))
            .map_err(|e| self.iter_err(e))?;
        Ok(v.and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes)))
    }

    /// Up to `limit` faces whose age counts from before `cutoff_ms`, oldest first (a range of
    /// the time index `t:`).
    pub fn older_than(&self, cutoff_ms: u64, limit: usize) -> Result<Vec<u32>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.range(time_key(0, 0)..time_key(cutoff_ms, 0)) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = kv.map_err(|e| self.iter_err(e))?;
            let seq = k
                .get(10..14)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| self.corrupt("t:", "short key"))?;
            out.push(seq);
        }
        Ok(out)
    }

    /// A failed read while scanning the database.
    fn iter_err(&self, e: sled::Error) -> StoreError {
        StoreError::Open {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Bytes sled holds on disk (for the benchmarks' accounting).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// `t:<ms u64 BE><seq u32 BE>`: the retention clock's index, in age order.
fn time_key(at_ms: u64, seq: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(14);
    k.extend_from_slice(b"t:");
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Milliseconds since the Unix epoch (the store's clock: arrival times for retention).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
