//! The persistent store: one RocksDB instance under the data directory.
//!
//! Column families:
//! - `catalog`: `table/<name>` and `job/<id>` entries, JSON-encoded [`TableDef`] / [`JobDef`];
//! - `log`: the embedded topic logs (owned by `sluice-connectors`);
//! - `state`: operator state and checkpoint metadata (owned by `sluice-executor`);
//! - `meta`: counters and other small records.
//!
//! One store holds all three so that a checkpoint (source offsets, operator state and the output
//! rows of the epoch) commits in a single atomic `WriteBatch`.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::error::{CatalogError, Result};
use crate::table::{JobDef, TableDef};

/// Column family names.
pub const CF_CATALOG: &str = "catalog";
/// Column family of the embedded topic logs.
pub const CF_LOG: &str = "log";
/// Column family of operator state and checkpoints.
pub const CF_STATE: &str = "state";
/// Column family for counters.
pub const CF_META: &str = "meta";

/// Handle to the data directory's RocksDB. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

impl Store {
    /// Opens (creating if missing) the store in `dir/rocksdb`.
    ///
    /// Errors: [`CatalogError::Storage`] when the directory is not writable or another process
    /// holds the lock.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| CatalogError::Corrupt(format!("{}: {e}", dir.display())))?;
        // No preallocation (fallocate) of files. RocksDB would otherwise reserve 1.1 write
        // buffers (~70 MiB) for each WAL up front: an idle daemon would hold most of a small
        // volume, and on a full disk writes would go on into the reservation and fail only at
        // the next memtable flush. Without it the write that does not fit fails at once with
        // ENOSPC (SQLSTATE 53100 at the server); RocksDB then refuses writes with the same
        // error and resumes by itself (its SstFileManager polls every 5 s) once one write
        // buffer (64 MiB) is free again.
        let mut opts = Options::default().get_options_from_string("allow_fallocate=false")?;
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Hot data stays uncompressed (the log is read back soon after it is written, state is
        // small and random); the bottommost level, where old data settles, is LZ4-compressed.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        let cfs = [CF_CATALOG, CF_LOG, CF_STATE, CF_META]
            .into_iter()
            .map(|n| {
                let mut o = Options::default();
                o.set_compression_type(rocksdb::DBCompressionType::None);
                o.set_bottommost_compression_type(rocksdb::DBCompressionType::Lz4);
                ColumnFamilyDescriptor::new(n, o)
            });
        let db = DB::open_cf_descriptors(&opts, dir.join("rocksdb"), cfs).map_err(|e| {
            // RocksDB's "IO error: While lock file: .../LOCK: Resource temporarily unavailable".
            if e.to_string().contains("lock file") {
                CatalogError::Locked(format!(
                    "the data directory {} is in use by another sluice daemon (its lock file rocksdb/LOCK is held); stop that daemon or give another --data-dir",
                    dir.display()
                ))
            } else {
                CatalogError::from(e)
            }
        })?;
        Ok(Store { db: Arc::new(db) })
    }

    /// The underlying database, for crates that own a column family.
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// A column family handle by name (one of the `CF_*` constants).
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// Commits a write batch durably (fsync of the WAL): a checkpoint or an INSERT is on disk
    /// when this returns.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// All `(key, value)` pairs of a column family whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, cf: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(cf),
            rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Adds the deletion of every key with `prefix` in `cf` to `batch`.
    pub fn delete_prefix(&self, batch: &mut WriteBatch, cf: &str, prefix: &[u8]) -> Result<()> {
        let mut end = prefix.to_vec();
        // The smallest key greater than every key with this prefix.
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                break;
            }
        }
        if end.is_empty() {
            for (k, _) in self.scan_prefix(cf, prefix)? {
                batch.delete_cf(self.cf(cf), k);
            }
        } else {
            batch.delete_range_cf(self.cf(cf), prefix, &end);
        }
        Ok(())
    }

    /// Stores a table definition (create or replace).
    pub fn put_table(&self, t: &TableDef) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_CATALOG), format!("table/{}", t.name), serde_json::to_vec(t)?);
        self.write(b)
    }

    /// Removes a table definition.
    pub fn delete_table(&self, name: &str) -> Result<()> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_CATALOG), format!("table/{name}"));
        self.write(b)
    }

    /// All stored tables.
    pub fn tables(&self) -> Result<Vec<TableDef>> {
        self.scan_prefix(CF_CATALOG, b"table/")?
            .into_iter()
            .map(|(_, v)| Ok(serde_json::from_slice(&v)?))
            .collect()
    }

    /// Stores a job definition (create or replace).
    pub fn put_job(&self, j: &JobDef) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_CATALOG), format!("job/{}", j.id), serde_json::to_vec(j)?);
        self.write(b)
    }

    /// All stored jobs, in creation order.
    pub fn jobs(&self) -> Result<Vec<JobDef>> {
        let mut jobs: Vec<JobDef> = self
            .scan_prefix(CF_CATALOG, b"job/")?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v))
            .collect::<Result<_, _>>()?;
        jobs.sort_by_key(|j| j.seq);
        Ok(jobs)
    }

    /// Stores a connector definition (create or replace).
    pub fn put_connector(&self, c: &crate::ConnectorDef) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_CATALOG), format!("connector/{}", c.name), serde_json::to_vec(c)?);
        self.write(b)
    }

    /// Removes a connector definition.
    pub fn delete_connector(&self, name: &str) -> Result<()> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_CATALOG), format!("connector/{name}"));
        self.write(b)
    }

    /// All stored connectors, in creation order.
    pub fn connectors(&self) -> Result<Vec<crate::ConnectorDef>> {
        let mut out: Vec<crate::ConnectorDef> = self
            .scan_prefix(CF_CATALOG, b"connector/")?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v))
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|c| c.seq);
        Ok(out)
    }

    /// Reads a key of the `meta` family (connector positions and flags).
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_META), key)?)
    }

    /// Writes a key of the `meta` family, durably.
    pub fn put_meta(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_META), key, value);
        self.write(b)
    }

    /// Increments and returns a persistent counter (`name` in the `meta` family).
    pub fn next_counter(&self, name: &str) -> Result<u64> {
        let key = format!("counter/{name}");
        let cur = self
            .db
            .get_cf(self.cf(CF_META), &key)?
            .map(|v| u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8])))
            .unwrap_or(0);
        let next = cur + 1;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_META), key, next.to_be_bytes());
        self.write(b)?;
        Ok(next)
    }
}
