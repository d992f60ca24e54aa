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
