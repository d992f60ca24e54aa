//! The Kafka topic backend: with `--kafka-bootstrap`, every table's topic is a Kafka topic.
//!
//! [`KafkaLog`] implements [`TopicLog`] on a Kafka cluster through rdkafka, so persistent
//! queries, batch `SELECT`s and sink tasks consume from Kafka and jobs produce to it, with the
//! planner and executor unchanged.
//!
//! - **Names.** Table `t` lives in the Kafka topic `<prefix>t` (prefix `sluice.` unless
//!   configured), with as many partitions as the table. Characters Kafka does not allow in a
//!   topic name become `_`.
//! - **Messages.** One message per changelog row, in the `debezium-json` envelope as Flink's
//!   `debezium-json` format writes it: `+I` and `+U` rows are `{"before":null,"after":{...},
//!   "op":"c"}`, `-D` and `-U` rows are `{"before":{...},"after":null,"op":"d"}`. Any Kafka
//!   client can read the topics, and Flink, ksqlDB or another Sluice can declare tables over them
//!   with `'format' = 'debezium-json'`. An update therefore reads back as a delete and an insert
//!   of the same key, which has the same effect on every operator.
//! - **Offsets** are Kafka offsets. Sluice is the only producer of these topics and does not use
//!   transactions on them, so a partition's offsets are dense and a record of `n` rows appended
//!   at offset `o` occupies `o .. o + n`, as the [`TopicLog`] contract says.
//! - **Exactly-once appends.** An append first writes its rows to a write-ahead entry in the
//!   store, in the same RocksDB write as the caller's checkpoint (operator state and source
//!   offsets), and then produces them with an idempotent producer. Once every message is
//!   acknowledged the entry is deleted and readers may see the rows. If Sluice dies in between,
//!   [`KafkaLog::open`] compares each partition's Kafka high watermark with the offset the entry
//!   started at and produces only the rows that did not arrive, so each row reaches Kafka once.
//!   While Kafka is unreachable an append retries with backoff; the writer waits, nothing is
//!   dropped. Each append's entries have keys of their own (a per-topic sequence number, then
//!   the record's index), so an entry is never overwritten by a later append. An error that
//!   retrying cannot cure (the topic truncated outside Sluice, a row that does not encode)
//!   leaves the entries in place and fails the topic: every later append to it fails with the
//!   first error, so no later append can take offsets that belong to the failed one, and the
//!   next start of the daemon finishes the failed append from its entries.
//! - **Catalog.** The registry of topics (partitions, Arrow schema) is kept in the store under
//!   the data directory, with the rest of the catalog.
//!
//! - `topic`: the state of one table topic and what the other parts share.
//! - `produce`: delivery of an append's rows to Kafka (the idempotent producer).
//! - `codec`: rows to and from the `debezium-json` message values.

mod codec;
mod produce;
mod topic;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use sluice_catalog::store::CF_META;
use sluice_catalog::Store;

use crate::error::{ConnectorError, Result};
use crate::log::{decode_batch, encode_batch, LogRecord, TopicLog};
use codec::decode_rows;
use produce::LogProducer;
use topic::{kafka_err, KafkaTopic, Pending, Reader, ADMIN_TIMEOUT};

/// The topic-name prefix used when none is configured.
pub const DEFAULT_TOPIC_PREFIX: &str = "sluice.";

/// How long a read waits for messages Kafka has acknowledged before it reports an error.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an append keeps retrying while Kafka is unreachable before it fails (its rows stay
/// in the write-ahead entry and are delivered by the next append to the topic, or the next
/// start). One attempt may overrun it by its own timeouts ([`ADMIN_TIMEOUT`] per partition's
/// watermarks, [`produce::FLUSH_TIMEOUT`]).
const SHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long topic creation and deletion wait for the cluster's answer.
const TOPIC_ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    kafka: String,
    partitions: u32,
}

/// The Kafka topic backend (see the module docs).
pub struct KafkaLog {
    store: Store,
    bootstrap: String,
    prefix: String,
    producer: LogProducer,
    topics: RwLock<HashMap<String, Arc<KafkaTopic>>>,
    version: Mutex<u64>,
    appended: Condvar,
}

fn topic_key(name: &str) -> String {
    format!("kafka-topic/{name}")
}

fn schema_key(name: &str) -> String {
    format!("kafka-schema/{name}")
}

fn wal_prefix(name: &str) -> Vec<u8> {
    let mut k = format!("kafka-wal/{name}").into_bytes();
    k.push(0);
    k
}

/// The key of record `index` of the append numbered `seq`: keys sort in append order.
fn wal_key(name: &str, seq: u64, index: u32) -> Vec<u8> {
    let mut k = wal_prefix(name);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The Kafka topic name of table topic `name`: the prefix, then the name with every character
/// Kafka does not allow (anything but ASCII letters, digits, `.`, `_`, `-`) as `_`.
pub fn kafka_topic_name(prefix: &str, name: &str) -> String {
    let cleaned: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    format!("{prefix}{cleaned}")
}

impl KafkaLog {
    /// Connects to the cluster at `bootstrap`, loads the topic registry from `store`, and
    /// finishes any append a crash interrupted (see the module docs).
    ///
    /// Errors: [`ConnectorError::External`] when Kafka cannot be reached or a topic lost
    /// acknowledged messages.
    pub fn open(store: Store, bootstrap: &str, prefix: &str) -> Result<KafkaLog> {
        let log = KafkaLog {
            store,
            bootstrap: bootstrap.to_string(),
            prefix: prefix.to_string(),
            producer: LogProducer::new(bootstrap)?,
            topics: RwLock::new(HashMap::new()),
            version: Mutex::new(0),
            appended: Condvar::new(),
        };
        for (k, v) in log.store.scan_prefix(CF_META, b"kafka-topic/")? {
            let name = String::from_utf8_lossy(&k["kafka-topic/".len()..]).to_string();
            let meta: TopicMeta = serde_json::from_slice(&v)
                .map_err(|e| ConnectorError::InvalidOption(format!("kafka topic registry: {e}")))?;
            let schema = match log.store.get_meta(schema_key(&name).as_bytes())? {
                Some(bytes) => Some(decode_batch(&bytes)?.schema()),
                None => None,
            };
            let topic = Arc::new(KafkaTopic::new(&name, meta.kafka, meta.partitions, schema, 0));
            let client = log.producer.current();
            for p in 0..meta.partitions {
                let (_, high) = client
                    .client()
                    .fetch_watermarks(&topic.kafka, p as i32, ADMIN_TIMEOUT)
                    .map_err(|e| kafka_err(&format!("watermarks of topic '{}'", topic.kafka), e))?;
                topic.ends[p as usize].store(high.max(0) as u64, Ordering::Relaxed);
            }
            log.recover(&topic, SHIP_TIMEOUT)?;
            log.topics.write().unwrap().insert(name, topic);
        }
        Ok(log)
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    fn new_reader(&self, topic: &KafkaTopic, partition: u32, from: u64) -> Result<Reader> {
        let mut c = self.client_config();
        c.set("group.id", "sluice-topic-log")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // A read below the log start (retention deleted it) is an error, never a skip.
            .set("auto.offset.reset", "error")
            .set("queued.max.messages.kbytes", "16384");
        let consumer: BaseConsumer = c.create().map_err(|e| kafka_err("consumer", e))?;
        let mut reader = Reader { consumer, next: u64::MAX };
        Self::seek(&mut reader, topic, partition, from)?;
        Ok(reader)
    }

    fn seek(reader: &mut Reader, topic: &KafkaTopic, partition: u32, from: u64) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic.kafka, partition as i32, Offset::Offset(from as i64))
            .map_err(|e| kafka_err("assign", e))?;
        reader.consumer.assign(&tpl).map_err(|e| kafka_err("assign", e))?;
        reader.next = from;
        Ok(())
    }

    fn handle(&self, topic: &str) -> Result<Arc<KafkaTopic>> {
        self.topics.read().unwrap().get(topic).cloned().ok_or_else(|| ConnectorError::UnknownTopic(topic.to_string()))
    }

    fn bump(&self) {
        *self.version.lock().unwrap() += 1;
        self.appended.notify_all();
    }

    /// Produces what a crash (or a failed append) left in the write-ahead entries of `topic`,
    /// retrying for up to `budget`, then deletes them.
    fn recover(&self, topic: &KafkaTopic, budget: Duration) -> Result<()> {
        let entries = self.store.scan_prefix(CF_META, &wal_prefix(&topic.name))?;
        if entries.is_empty() {
            return Ok(());
        }
        let mut pending = Vec::new();
        for (k, v) in &entries {
            if k.len() != wal_prefix(&topic.name).len() + 12 {
                return Err(ConnectorError::InvalidOption(format!(
                    "write-ahead entry of topic {} has a key of another format version; finish it with the Sluice that wrote it",
                    topic.name
                )));
            }
            if v.len() < 12 {
                return Err(ConnectorError::InvalidOption(format!("corrupt write-ahead entry of topic {}", topic.name)));
            }
            let partition = u32::from_be_bytes(v[..4].try_into().unwrap());
            let start = u64::from_be_bytes(v[4..12].try_into().unwrap());
            pending.push(Pending { partition, start, batch: decode_batch(&v[12..])? });
        }
        tracing::info!(topic = %topic.kafka, records = pending.len(), "finishing an interrupted append to Kafka");
        self.producer.ship(topic, &pending, true, budget)?;
        let mut wb = WriteBatch::default();
        for (k, _) in &entries {
            wb.delete_cf(self.store.cf(CF_META), k);
        }
        self.store.write(wb)?;
        Ok(())
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>> {
        self.client_config().create().map_err(|e| kafka_err("admin client", e))
    }

    /// Creates the Kafka topic, or adopts an empty one of that name with the same partitions
    /// (one being deleted is waited for).
    fn create_kafka_topic(&self, kafka: &str, partitions: u32) -> Result<()> {
        let admin = self.admin()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let new = NewTopic::new(kafka, partitions as i32, TopicReplication::Fixed(1));
            let opts = AdminOptions::new().request_timeout(Some(TOPIC_ADMIN_TIMEOUT));
            let results = futures::executor::block_on(admin.create_topics(&[new], &opts))
                .map_err(|e| kafka_err(&format!("create topic '{kafka}'"), e))?;
            let error = results.into_iter().find_map(|r| r.err());
            let Some((_, code)) = error else { return Ok(()) };
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(kafka_err(&format!("create topic '{kafka}'"), code));
            }
            // It exists: adopt it if it is empty and shaped like the table.
            let producer = self.producer.current();
            let md = producer
                .client()
                .fetch_metadata(Some(kafka), ADMIN_TIMEOUT)
                .map_err(|e| kafka_err(&format!("metadata of topic '{kafka}'"), e))?;
            let existing = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as u32;
            let mut messages = 0i64;
            for p in 0..existing {
                let (low, high) = producer
                    .client()
                    .fetch_watermarks(kafka, p as i32, ADMIN_TIMEOUT)
                    .map_err(|e| kafka_err("watermarks", e))?;
                messages += high - low;
                if high > 0 && low == high {
                    // Offsets do not start at 0: readers of a new table would start in a gap.
                    messages += 1;
                }
            }
            if existing == partitions && messages == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ConnectorError::InvalidOption(format!(
                    "Kafka topic '{kafka}' already exists ({existing} partitions, not empty); Sluice keeps each table in a topic of its own. Drop it, or read it with 'connector' = 'kafka'"
                )));
            }
            // Perhaps a topic of a dropped table that Kafka is still deleting.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl TopicLog for KafkaLog {
    fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        let partitions = partitions.max(1);
        let kafka = kafka_topic_name(&self.prefix, topic);
        {
            let topics = self.topics.read().unwrap();
            if topics.contains_key(topic) {
                return Err(ConnectorError::InvalidOption(format!("topic \"{topic}\" already exists")));
            }
            if let Some(other) = topics.values().find(|t| t.kafka == kafka) {
                return Err(ConnectorError::InvalidOption(format!(
                    "Kafka topic '{kafka}' already holds table topic \"{}\"; rename the table",
                    other.name
                )));
            }
        }
        self.create_kafka_topic(&kafka, partitions)?;
        let meta = TopicMeta { kafka: kafka.clone(), partitions };
        self.store.put_meta(topic_key(topic).as_bytes(), &serde_json::to_vec(&meta).expect("serializable"))?;
        let handle = KafkaTopic::new(topic, kafka, partitions, None, 0);
        self.topics.write().unwrap().insert(topic.to_string(), Arc::new(handle));
        Ok(())
    }

    fn delete_topic(&self, topic: &str) -> Result<()> {
        let handle = self.topics.write().unwrap().remove(topic);
        let Some(handle) = handle else {
            return Err(ConnectorError::UnknownTopic(topic.to_string()));
        };
        let mut wb = WriteBatch::default();
        wb.delete_cf(self.store.cf(CF_META), topic_key(topic));
        wb.delete_cf(self.store.cf(CF_META), schema_key(topic));
        self.store.delete_prefix(&mut wb, CF_META, &wal_prefix(topic))?;
        self.store.write(wb)?;
        let admin = self.admin()?;
        let opts = AdminOptions::new().request_timeout(Some(TOPIC_ADMIN_TIMEOUT));
        match futures::executor::block_on(admin.delete_topics(&[handle.kafka.as_str()], &opts)) {
            Ok(results) => {
                for r in results {
                    if let Err((t, e)) = r {
                        tracing::warn!(topic = %t, error = %e, "could not delete the Kafka topic of a dropped table");
                    }
                }
            }
            Err(e) => tracing::warn!(topic = %handle.kafka, error = %e, "could not delete the Kafka topic of a dropped table"),
        }
        Ok(())
    }

    fn partitions(&self, topic: &str) -> Result<u32> {
        Ok(self.handle(topic)?.partitions)
    }

    fn append(
        &self,
        topic: &str,
        writes: &[(u32, RecordBatch)],
        extra: &mut dyn FnMut(&mut WriteBatch) -> Result<()>,
    ) -> Result<()> {
        let handle = self.handle(topic)?;
        // A writer that panicked in `extra` wrote nothing: the lock guards no data, so a poisoned
        // one is sound.
        let _serial = handle.append.lock().unwrap_or_else(|e| e.into_inner());
        // Bound first: a guard in the `if let` scrutinee would live through the block (edition
        // 2021), and clearing the flag below would wait for it forever.
        let failed = handle.failed.lock().unwrap().clone();
        if let Some(e) = failed {
            // Deliver the failed append's rows first, from its write-ahead entries, so that no
            // later append takes their offsets. One attempt: the failed append already retried
            // for its whole time, and writers queued behind it must not wait that long each.
            // Nothing of this append is written when that fails.
            self.recover(&handle, Duration::ZERO).map_err(|again| {
                let msg = format!(
                    "topic {topic}: an earlier append failed ({e}) and its rows still cannot be delivered ({again}); they are kept in its write-ahead entry, and nothing of this append was written"
                );
                match again {
                    ConnectorError::External(_) => ConnectorError::External(msg),
                    _ => ConnectorError::Write(msg),
                }
            })?;
            *handle.failed.lock().unwrap() = None;
        }
        let seq = handle.wal_seq.fetch_add(1, Ordering::Relaxed);
        let mut wb = WriteBatch::default();
        let mut next: Vec<u64> = handle.ends.iter().map(|e| e.load(Ordering::Relaxed)).collect();
        let mut pending = Vec::new();
        for (p, batch) in writes.iter().filter(|(_, b)| b.num_rows() > 0) {
            let slot = next
                .get_mut(*p as usize)
                .ok_or_else(|| ConnectorError::InvalidOption(format!("topic {topic} has no partition {p}")))?;
            {
                let mut schema = handle.schema.write().unwrap();
                if schema.is_none() {
                    let empty = batch.slice(0, 0);
                    wb.put_cf(self.store.cf(CF_META), schema_key(topic), encode_batch(&empty)?);
                    *schema = Some(batch.schema());
                }
            }
            let mut value = Vec::with_capacity(batch.get_array_memory_size() + 64);
            value.extend_from_slice(&p.to_be_bytes());
            value.extend_from_slice(&slot.to_be_bytes());
            value.extend_from_slice(&encode_batch(batch)?);
            wb.put_cf(self.store.cf(CF_META), wal_key(topic, seq, pending.len() as u32), value);
            pending.push(Pending { partition: *p, start: *slot, batch: batch.clone() });
            *slot += batch.num_rows() as u64;
        }
        extra(&mut wb)?;
        // Durable here: the rows (as a write-ahead entry) with the caller's checkpoint.
        self.store.write(wb)?;
        if pending.is_empty() {
            return Ok(());
        }
        // From here on the rows are committed: a failure leaves them to the next start.
        let shipped = sluice_catalog::failpoint::check("kafka_log::after_wal")
            .map_err(ConnectorError::Write)
            .and_then(|()| self.producer.ship(&handle, &pending, false, SHIP_TIMEOUT))
            .and_then(|()| sluice_catalog::failpoint::check("kafka_log::after_ack").map_err(ConnectorError::Write));
        if let Err(e) = shipped {
            tracing::error!(topic = %handle.kafka, error = %e, "append to Kafka failed; its rows are delivered by the next append to the topic, or the next start");
            *handle.failed.lock().unwrap() = Some(e.to_string());
            return Err(e);
        }
        let mut wb = WriteBatch::default();
        for i in 0..pending.len() {
            wb.delete_cf(self.store.cf(CF_META), wal_key(topic, seq, i as u32));
        }
        self.store.write(wb)?;
        self.bump();
        Ok(())
    }

    fn read(&self, topic: &str, partition: u32, from: u64, max_rows: usize) -> Result<Vec<LogRecord>> {
        let handle = self.handle(topic)?;
        let end = handle
            .ends
            .get(partition as usize)
            .ok_or_else(|| ConnectorError::InvalidOption(format!("topic {topic} has no partition {partition}")))?
            .load(Ordering::Relaxed);
        if from >= end {
            return Ok(Vec::new());
        }
        let Some(schema) = handle.schema.read().unwrap().clone() else {
            return Err(ConnectorError::InvalidOption(format!("topic {topic} has rows but no known schema")));
        };
        let until = end.min(from.saturating_add(max_rows.max(1) as u64));
        let mut reader = {
            let mut pool = handle.readers[partition as usize].lock().unwrap();
            match pool.iter().position(|r| r.next == from) {
                Some(i) => Some(pool.swap_remove(i)),
                None => pool.pop(),
            }
        };
        let mut reader = match reader.take() {
            Some(mut r) => {
                if r.next != from {
                    Self::seek(&mut r, &handle, partition, from)?;
                }
                r
            }
            None => self.new_reader(&handle, partition, from)?,
        };
        // Runs of consecutive offsets, each one record.
        let mut runs: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
        let deadline = Instant::now() + READ_TIMEOUT;
        let mut next = from;
        while next < until {
            match reader.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let offset = m.offset() as u64;
                    if offset < next {
                        continue;
                    }
                    let value = m.payload().unwrap_or_default().to_vec();
                    match runs.last_mut() {
                        Some((start, values)) if *start + values.len() as u64 == offset => values.push(value),
                        _ => runs.push((offset, vec![value])),
                    }
                    next = offset + 1;
                }
                Some(Err(e)) => return Err(kafka_err(&format!("read of topic '{}' partition {partition}", handle.kafka), e)),
                None if Instant::now() > deadline => {
                    return Err(kafka_err(
                        &format!("read of topic '{}' partition {partition}", handle.kafka),
                        format!("offsets {next}..{until} were acknowledged but did not arrive within {} s", READ_TIMEOUT.as_secs()),
                    ))
                }
                None => {}
            }
        }
        reader.next = next;
        handle.readers[partition as usize].lock().unwrap().push(reader);
        runs.into_iter()
            .map(|(offset, values)| Ok(LogRecord { offset, batch: decode_rows(&values, &schema)? }))
            .collect()
    }

    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        let handle = self.handle(topic)?;
        let end = handle
            .ends
            .get(partition as usize)
            .ok_or_else(|| ConnectorError::InvalidOption(format!("topic {topic} has no partition {partition}")))?;
        Ok(end.load(Ordering::Relaxed))
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

    #[test]
    fn topic_names_are_legal_kafka_names() {
        assert_eq!(kafka_topic_name("sluice.", "ORCL.ADMIN.CUSTOMERS"), "sluice.ORCL.ADMIN.CUSTOMERS");
        assert_eq!(kafka_topic_name("", "my table/1"), "my_table_1");
    }
}
