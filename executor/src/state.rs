//! Operator state in the store's `state` column family.
//!
//! Keys: `s/<job id>/<operator index, 4 digits>/<operator's own key>`. Operators keep state in
//! memory, track what changed during the epoch, and write only those keys at a checkpoint
//! (incremental checkpoints); a restore scans the operator's prefix.

use rocksdb::WriteBatch;
use sluice_catalog::store::CF_STATE;
use sluice_catalog::Store;

use crate::error::Result;

/// The key prefix of one operator's state.
pub fn operator_prefix(job: &str, op: usize) -> Vec<u8> {
    format!("s/{job}/{op:04}/").into_bytes()
}

/// The key prefix of all of a job's state and checkpoint metadata.
pub fn job_prefix(job: &str) -> Vec<u8> {
    format!("s/{job}/").into_bytes()
}

/// Writes one operator's state changes into an epoch's write batch.
pub struct StateWriter<'a> {
    store: &'a Store,
    batch: &'a mut WriteBatch,
    prefix: Vec<u8>,
}

impl<'a> StateWriter<'a> {
    /// A writer for the operator whose prefix is `prefix`.
    pub fn new(store: &'a Store, batch: &'a mut WriteBatch, prefix: Vec<u8>) -> Self {
        StateWriter { store, batch, prefix }
    }

    fn key(&self, k: &[u8]) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(k);
        key
    }

    /// Sets `k` to `v`.
    pub fn put(&mut self, k: &[u8], v: &[u8]) {
        let key = self.key(k);
        self.batch.put_cf(self.store.cf(CF_STATE), key, v);
    }

    /// Removes every key in `[from, to)`.
    pub fn delete_range(&mut self, from: &[u8], to: &[u8]) {
        let (a, b) = (self.key(from), self.key(to));
        self.batch.delete_range_cf(self.store.cf(CF_STATE), a, b);
    }

    /// Removes `k`.
    pub fn delete(&mut self, k: &[u8]) {
        let key = self.key(k);
        self.batch.delete_cf(self.store.cf(CF_STATE), key);
    }
}

/// Reads one operator's state at restore.
pub struct StateReader<'a> {
    store: &'a Store,
    prefix: Vec<u8>,
}

impl<'a> StateReader<'a> {
    /// A reader for the operator whose prefix is `prefix`.
    pub fn new(store: &'a Store, prefix: Vec<u8>) -> Self {
        StateReader { store, prefix }
    }

    /// Every `(key, value)` of the operator, keys without the prefix.
    pub fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .store
            .scan_prefix(CF_STATE, &self.prefix)?
            .into_iter()
            .map(|(k, v)| (k[self.prefix.len()..].to_vec(), v))
            .collect())
    }
}

/// Processing time in ms since the Unix epoch, as a state TTL counts it
/// ([`sluice_catalog::state_ttl`]).
pub(crate) fn processing_time_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Entries that may be dropped (empty groups, expired rows) before a table is rebuilt without
/// them: at least this many, and at least as many as the entries kept, so that rebuilding
/// costs O(1) per dropped entry.
const REBUILD_MIN: usize = 1024;

/// True when a table of `total` entries, `removable` of which may be dropped, is worth
/// rebuilding (see [`REBUILD_MIN`]).
pub(crate) fn worth_rebuilding(removable: usize, total: usize) -> bool {
    removable >= REBUILD_MIN && 2 * removable >= total
}

/// Largest snapshot record.
const SNAPSHOT_CHUNK: usize = 32 << 20;

/// A changelog state backend for one operator, as Flink's changelog state backend: each
/// checkpoint writes the epoch's changes as one delta record (`d<seq u64 BE>`), so the store
/// sees one write per epoch rather than one per row; when the deltas outgrow twice the last
/// snapshot (plus 16 MiB), a snapshot of the whole state (`s<chunk u32 BE>`, 32 MiB chunks)
/// replaces the snapshot and deltas before it. A restore applies the snapshot chunks, then the
/// deltas in order. What a record holds is the operator's business.
#[derive(Debug, Default)]
pub struct DeltaLog {
    next: u64,
    log_bytes: usize,
    snapshot_bytes: usize,
    /// The next commit writes a snapshot, even without a delta.
    snapshot_next: bool,
}

/// Receives a snapshot's bytes and cuts them into records.
pub struct SnapshotWriter<'w, 'a> {
    w: &'w mut StateWriter<'a>,
    chunk: Vec<u8>,
    n: u32,
    total: usize,
}

impl SnapshotWriter<'_, '_> {
    /// The buffer to append whole entries to; a full chunk is written out first.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        if self.chunk.len() >= SNAPSHOT_CHUNK {
            self.flush();
        }
        &mut self.chunk
    }

    fn flush(&mut self) {
        let mut k = b"s".to_vec();
        k.extend_from_slice(&self.n.to_be_bytes());
        self.w.put(&k, &self.chunk);
        self.total += self.chunk.len();
        self.n += 1;
        self.chunk.clear();
    }
}

impl DeltaLog {
    /// Writes the epoch's `delta` (nothing when empty), or a snapshot produced by `snapshot`
    /// when the deltas have grown large.
    pub fn commit(&mut self, w: &mut StateWriter<'_>, delta: &[u8], snapshot: impl FnOnce(&mut SnapshotWriter<'_, '_>)) {
        if delta.is_empty() && !self.snapshot_next {
            return;
        }
        self.log_bytes += delta.len();
        if std::mem::take(&mut self.snapshot_next) || self.log_bytes > 2 * self.snapshot_bytes + (16 << 20) {
            w.delete_range(b"d", b"e");
            w.delete_range(b"s", b"t");
            let mut sw = SnapshotWriter { w, chunk: Vec::new(), n: 0, total: 0 };
            snapshot(&mut sw);
            sw.flush();
            self.snapshot_bytes = sw.total;
            self.log_bytes = 0;
        } else {
            let mut k = b"d".to_vec();
            k.extend_from_slice(&self.next.to_be_bytes());
            w.put(&k, delta);
        }
        self.next += 1;
    }

    /// Passes every record of the last checkpoint to `apply`: snapshot chunks, then deltas.
    pub fn restore(&mut self, r: &StateReader<'_>, mut apply: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let entries = r.entries()?;
        for (_, v) in entries.iter().filter(|(k, _)| k.first() == Some(&b's')) {
            self.snapshot_bytes += v.len();
            apply(v)?;
        }
        for (k, v) in entries.iter().filter(|(k, _)| k.first() == Some(&b'd')) {
            let seq = k.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            let seq = seq.ok_or_else(|| crate::ExecError::CorruptState("state delta key".into()))?;
            self.next = self.next.max(seq + 1);
            self.log_bytes += v.len();
            apply(v)?;
        }
        Ok(())
    }

    /// Bytes of this operator's state in the store: the last snapshot and the deltas after it.
    /// Bounded by about three times the live state plus 16 MiB, as deltas are replaced by a
    /// snapshot once they outgrow twice the last one.
    pub fn stored_bytes(&self) -> u64 {
        (self.snapshot_bytes + self.log_bytes) as u64
    }

    /// Makes the next commit write a snapshot, with or without a delta: after the operator
    /// rebuilt its state (dropped entries, new ids), deltas over the old one no longer apply.
    pub fn snapshot_next(&mut self) {
        self.snapshot_next = true;
    }
}
