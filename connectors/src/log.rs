//! Topic logs: durable, partitioned, offset-addressed logs of change batches.
//!
//! Every table is backed by a topic. A topic has `partitions` partitions; each partition is an
//! ordered log whose records are addressed by offset, counted in rows as Kafka counts messages:
//! a batch of `n` rows appended at offset `o` occupies offsets `o .. o + n`.
//!
//! The embedded backend keeps the log in the `log` column family of the store. RocksDB rather
//! than segment files because the same write batch can then carry a checkpoint's operator state
//! and source offsets, which makes exactly-once output a single atomic, fsynced write; it also
//! gives crash recovery, compaction of dropped topics and compression without code of our own.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use sluice_catalog::store::{CF_LOG, CF_META};
use sluice_catalog::Store;

use crate::error::{ConnectorError, Result};

/// One stored record batch of a partition: its first offset and its rows (topic form, i.e.
/// with the op column last).
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// Offset of the first row.
    pub offset: u64,
    /// The rows.
    pub batch: RecordBatch,
}

/// A durable, partitioned, offset-addressed log of record batches.
///
/// The embedded RocksDB log implements it; a Kafka backend implements the same calls, so the
/// planner and executor do not know which backend they run on.
pub trait TopicLog: Send + Sync {
    /// Creates a topic with `partitions` partitions. Creating an existing topic is an error.
    fn create_topic(&self, topic: &str, partitions: u32) -> Result<()>;
    /// Deletes a topic and its records.
    fn delete_topic(&self, topic: &str) -> Result<()>;
    /// Number of partitions of a topic.
    fn partitions(&self, topic: &str) -> Result<u32>;
    /// Appends `(partition, batch)` pairs, atomically with whatever `extra` adds to the same
    /// write batch (a checkpoint's state and offsets). The write is durable when this returns.
    fn append(
        &self,
        topic: &str,
        writes: &[(u32, RecordBatch)],
        extra: &mut dyn FnMut(&mut WriteBatch) -> Result<()>,
    ) -> Result<()>;
    /// Reads records from `from` on, at most about `max_rows` rows (whole records).
    fn read(&self, topic: &str, partition: u32, from: u64, max_rows: usize) -> Result<Vec<LogRecord>>;
    /// The offset the next appended row will get (the high watermark).
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64>;
    /// Blocks until some topic is appended to after `seen` (a value from [`TopicLog::version`])
    /// or `timeout` passes.
    fn wait(&self, seen: u64, timeout: Duration);
    /// A counter that grows with every append, for [`TopicLog::wait`].
    fn version(&self) -> u64;
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    id: u64,
    partitions: u32,
}

struct TopicHandle {
    id: u64,
    /// Next offset per partition; the mutex is held across an append's commit so that readers
    /// never see offsets out of order.
    next: Vec<Mutex<u64>>,
}

/// The embedded topic log on RocksDB (see the module docs).
pub struct EmbeddedLog {
    store: Store,
    topics: RwLock<HashMap<String, Arc<TopicHandle>>>,
    version: Mutex<u64>,
    appended: Condvar,
}

/// The key of a record: topic id, partition, and the offset *after* its last row, so that a
/// forward seek to `from + 1` lands on the record holding `from` without decoding any other.
fn record_key(id: u64, partition: u32, offset: u64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..12].copy_from_slice(&partition.to_be_bytes());
    k[12..].copy_from_slice(&offset.to_be_bytes());
    k
}

fn partition_prefix(id: u64, partition: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&partition.to_be_bytes());
    k
}

/// Encodes a batch as an Arrow IPC stream.
pub fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() + 256);
    {
        let mut w = StreamWriter::try_new(&mut buf, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(buf)
}

/// Decodes a batch written by [`encode_batch`].
pub fn decode_batch(bytes: &[u8]) -> Result<RecordBatch> {
    let mut r = StreamReader::try_new(Cursor::new(bytes), None)?;
    match r.next() {
        Some(b) => Ok(b?),
        None => Err(ConnectorError::Arrow(arrow::error::ArrowError::IpcError("empty record".into()))),
    }
}

impl EmbeddedLog {
    /// Opens the log kept in `store`, loading the topic registry and each partition's end offset.
    pub fn open(store: Store) -> Result<EmbeddedLog> {
        let log = EmbeddedLog {
            store,
            topics: RwLock::new(HashMap::new()),
            version: Mutex::new(0),
            appended: Condvar::new(),
        };
        for (k, v) in log.store.scan_prefix(CF_META, b"topic/")? {
            let name = String::from_utf8_lossy(&k[6..]).to_string();
            let meta: TopicMeta = serde_json::from_slice(&v)
                .map_err(|e| ConnectorError::InvalidOption(format!("topic registry: {e}")))?;
            let handle = log.load_handle(&meta)?;
            log.topics.write().unwrap().insert(name, Arc::new(handle));
        }
        Ok(log)
    }

    fn load_handle(&self, meta: &TopicMeta) -> Result<TopicHandle> {
        let mut next = Vec::new();
        for p in 0..meta.partitions {
            let end = self.last_record_end(meta.id, p)?;
            next.push(Mutex::new(end));
        }
        Ok(TopicHandle { id: meta.id, next })
    }

    fn last_record_end(&self, id: u64, partition: u32) -> Result<u64> {
        let db = self.store.db();
        let mut it = db.raw_iterator_cf(self.store.cf(CF_LOG));
        it.seek_for_prev(record_key(id, partition, u64::MAX));
        if it.valid() {
            let key = it.key().unwrap();
            if key.starts_with(&partition_prefix(id, partition)) {
                return Ok(u64::from_be_bytes(key[12..20].try_into().unwrap()));
            }
        }
        it.status()?;
        Ok(0)
    }

    fn handle(&self, topic: &str) -> Result<Arc<TopicHandle>> {
        self.topics
            .read()
            .unwrap()
            .get(topic)
            .cloned()
            .ok_or_else(|| ConnectorError::UnknownTopic(topic.to_string()))
    }

    fn bump(&self) {
        *self.version.lock().unwrap() += 1;
        self.appended.notify_all();
    }
}

impl TopicLog for EmbeddedLog {
    fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        let mut topics = self.topics.write().unwrap();
        if topics.contains_key(topic) {
            return Err(ConnectorError::InvalidOption(format!("topic \"{topic}\" already exists")));
        }
        let id = self.store.next_counter("topic")?;
        let meta = TopicMeta { id, partitions: partitions.max(1) };
        let mut b = WriteBatch::default();
        b.put_cf(
            self.store.cf(CF_META),
            format!("topic/{topic}"),
            serde_json::to_vec(&meta).expect("serializable"),
        );
        self.store.write(b)?;
        let handle = TopicHandle { id, next: (0..meta.partitions).map(|_| Mutex::new(0)).collect() };
        topics.insert(topic.to_string(), Arc::new(handle));
        Ok(())
    }

    fn delete_topic(&self, topic: &str) -> Result<()> {
        let handle = self.topics.write().unwrap().remove(topic);
        let Some(handle) = handle else {
            return Err(ConnectorError::UnknownTopic(topic.to_string()));
        };
        let mut b = WriteBatch::default();
        b.delete_cf(self.store.cf(CF_META), format!("topic/{topic}"));
        self.store.delete_prefix(&mut b, CF_LOG, &handle.id.to_be_bytes())?;
        self.store.write(b)?;
        Ok(())
    }

    fn partitions(&self, topic: &str) -> Result<u32> {
        Ok(self.handle(topic)?.next.len() as u32)
    }

    fn append(
        &self,
        topic: &str,
        writes: &[(u32, RecordBatch)],
        extra: &mut dyn FnMut(&mut WriteBatch) -> Result<()>,
    ) -> Result<()> {
        let handle = self.handle(topic)?;
        let mut parts: Vec<u32> = writes.iter().map(|(p, _)| *p).collect();
        parts.sort_unstable();
        parts.dedup();
        // Lock the partitions written, in order, across the commit.
        let mut guards = Vec::with_capacity(parts.len());
        for p in &parts {
            let slot = handle
                .next
                .get(*p as usize)
                .ok_or_else(|| ConnectorError::InvalidOption(format!("topic {topic} has no partition {p}")))?;
            // A writer that panicked in `extra` (a job's checkpoint) left the offset as it was:
            // the offset only moves after a successful write, so a poisoned lock is sound.
            guards.push((*p, slot.lock().unwrap_or_else(|e| e.into_inner())));
        }
        let mut next: Vec<u64> = guards.iter().map(|(_, g)| **g).collect();
        let mut wb = WriteBatch::default();
        for (p, batch) in writes.iter().filter(|(_, b)| b.num_rows() > 0) {
            let slot = parts.binary_search(p).expect("locked above");
            next[slot] += batch.num_rows() as u64;
            wb.put_cf(self.store.cf(CF_LOG), record_key(handle.id, *p, next[slot]), encode_batch(batch)?);
        }
        extra(&mut wb)?;
        sluice_catalog::failpoint::check("log::before_write").map_err(ConnectorError::Write)?;
        self.store.write(wb)?;
        let mut appended = false;
        for ((_, g), n) in guards.iter_mut().zip(next) {
            appended |= **g != n;
            **g = n;
        }
        drop(guards);
        if appended {
            self.bump();
        }
        Ok(())
    }

    fn read(&self, topic: &str, partition: u32, from: u64, max_rows: usize) -> Result<Vec<LogRecord>> {
        let handle = self.handle(topic)?;
        let prefix = partition_prefix(handle.id, partition);
        let db = self.store.db();
        let mut it = db.raw_iterator_cf(self.store.cf(CF_LOG));
        // Keys hold each record's end offset: the first key above `from` is the record
        // holding `from`, or the next one.
        it.seek(record_key(handle.id, partition, from.saturating_add(1)));
        let mut out = Vec::new();
        let mut rows = 0usize;
        while it.valid() {
            let key = it.key().unwrap();
            if !key.starts_with(&prefix) {
                break;
            }
            let end = u64::from_be_bytes(key[12..20].try_into().unwrap());
            let batch = decode_batch(it.value().unwrap())?;
            let offset = end - batch.num_rows() as u64;
            let skip = from.saturating_sub(offset) as usize;
            let batch = if skip > 0 { batch.slice(skip, batch.num_rows() - skip) } else { batch };
            rows += batch.num_rows();
            out.push(LogRecord { offset: offset + skip as u64, batch });
            if rows >= max_rows {
                break;
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        let handle = self.handle(topic)?;
        let next = handle
            .next
            .get(partition as usize)
            .ok_or_else(|| ConnectorError::InvalidOption(format!("topic {topic} has no partition {partition}")))?;
        let v = *next.lock().unwrap_or_else(|e| e.into_inner());
        Ok(v)
    }

    fn wait(&self, seen: u64, timeout: Duration) {
        let guard = self.version.lock().unwrap();
        if *guard != seen {
            return;
        }
        let _ = self.appended.wait_timeout(guard, timeout);
    }

    fn version(&self) -> u64 {
        *self.version.lock().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(vals: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vals.to_vec()))]).unwrap()
    }

    #[test]
    fn offsets_are_rows_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("sluice-log-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let log = EmbeddedLog::open(Store::open(&dir).unwrap()).unwrap();
            log.create_topic("t", 2).unwrap();
            log.append("t", &[(1, batch(&[1, 2, 3]))], &mut |_| Ok(())).unwrap();
            log.append("t", &[(1, batch(&[4]))], &mut |_| Ok(())).unwrap();
            assert_eq!(log.end_offset("t", 1).unwrap(), 4);
        }
        let log = EmbeddedLog::open(Store::open(&dir).unwrap()).unwrap();
        assert_eq!(log.end_offset("t", 1).unwrap(), 4);
        assert_eq!(log.end_offset("t", 0).unwrap(), 0);
        let recs = log.read("t", 1, 2, 100).unwrap();
        assert_eq!(recs[0].offset, 2);
        assert_eq!(recs[0].batch.num_rows(), 1);
        assert_eq!(recs[1].offset, 3);
        log.delete_topic("t").unwrap();
        assert!(log.read("t", 1, 0, 10).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
