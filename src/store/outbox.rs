//! The event outbox: events committed with their batch, read and removed by the drainer once
//! delivered (at-least-once).

use super::*;

impl Store {
    /// Outbox entries in event order, at most `limit`.
    pub fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut v = Vec::new();
        for kv in self.db.scan_prefix(b"o:").take(limit) {
            let (k, val) = kv.map_err(|e| StoreError::Open {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            let entry: OutboxEntry = serde_json::from_slice(&val)
                .map_err(|e| self.corrupt(&String::from_utf8_lossy(&k), &e.to_string()))?;
            v.push(entry);
        }
        Ok(v)
    }

    pub fn outbox_len(&self) -> usize {
        self.db.scan_prefix(b"o:").count()
    }

    /// Removes delivered outbox entries (and flushes).
    pub fn outbox_remove(&self, event_seqs: &[u64]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for s in event_seqs {
            b.remove(key(b'o', &s.to_be_bytes()));
        }
        self.write(b)
    }
}
