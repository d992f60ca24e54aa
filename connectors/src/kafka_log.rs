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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use sluice_catalog::store::CF_META;
use sluice_catalog::{ChangeBatch, Op, Store, OP_COLUMN};

use crate::error::{ConnectorError, Result};
use crate::format::{rows_to_json_bytes, Format, RecordDecoder};
use crate::log::{decode_batch, encode_batch, LogRecord, TopicLog};
use crate::task::Backoff;

/// The topic-name prefix used when none is configured.
pub const DEFAULT_TOPIC_PREFIX: &str = "sluice.";

/// How long Kafka calls that answer at once (metadata, watermarks, topic admin) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a read waits for messages Kafka has acknowledged before it reports an error.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an append keeps retrying while Kafka is unreachable before it fails (its rows stay
/// in the write-ahead entry and are delivered by the next append to the topic, or the next
/// start). One attempt may overrun it by its own timeouts ([`ADMIN_TIMEOUT`] per partition's
/// watermarks, [`FLUSH_TIMEOUT`]).
const SHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one attempt waits for Kafka to acknowledge what it produced.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long topic creation and deletion wait for the cluster's answer.
const TOPIC_ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    kafka: String,
    partitions: u32,
}

/// A reader's consumer, assigned to one partition, and the offset it will return next.
struct Reader {
    consumer: BaseConsumer,
    next: u64,
}

struct KafkaTopic {
    name: String,
    kafka: String,
    partitions: u32,
    /// Topic form (columns then the op column), known from the first append.
    schema: RwLock<Option<SchemaRef>>,
    /// Per partition: the end of what is acknowledged by Kafka and visible to readers.
    ends: Vec<AtomicU64>,
    /// Held by an append from its write-ahead entry until its rows are acknowledged.
    append: Mutex<()>,
    /// Per partition: idle consumers, reused by the next read at their offset.
    readers: Vec<Mutex<Vec<Reader>>>,
    /// Sequence number of the next append's write-ahead entries.
    wal_seq: AtomicU64,
    /// Set when an append failed with its entries left in the store: later appends fail too.
    failed: Mutex<Option<String>>,
}

impl KafkaTopic {
    fn new(name: &str, kafka: String, partitions: u32, schema: Option<SchemaRef>, wal_seq: u64) -> KafkaTopic {
        KafkaTopic {
            name: name.to_string(),
            kafka,
            partitions,
            schema: RwLock::new(schema),
            ends: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            append: Mutex::new(()),
            readers: (0..partitions).map(|_| Mutex::new(Vec::new())).collect(),
            wal_seq: AtomicU64::new(wal_seq),
            failed: Mutex::new(None),
        }
    }
}

/// Delivery outcome of the messages of one append.
#[derive(Default)]
struct Ack {
    failed: AtomicU64,
    error: Mutex<Option<String>>,
}

struct LogContext;

impl ClientContext for LogContext {}

impl ProducerContext for LogContext {
    type DeliveryOpaque = Arc<Ack>;
    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<Ack>) {
        if let Err((e, _)) = result {
            ack.failed.fetch_add(1, Ordering::Relaxed);
            *ack.error.lock().unwrap() = Some(e.to_string());
        }
    }
}

/// One partition's rows of a pending append: the offset they start at and the rows.
struct Pending {
    partition: u32,
    start: u64,
    batch: RecordBatch,
}

/// The Kafka topic backend (see the module docs).
pub struct KafkaLog {
    store: Store,
    bootstrap: String,
    prefix: String,
    producer: Mutex<Arc<BaseProducer<LogContext>>>,
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

fn kafka_err(what: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::External(format!("kafka {what}: {e}"))
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
            producer: Mutex::new(Arc::new(Self::new_producer(bootstrap)?)),
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
            let client = log.producer().clone();
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

    fn new_producer(bootstrap: &str) -> Result<BaseProducer<LogContext>> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("batch.num.messages", "100000")
            .set("batch.size", "4000000")
            .set("queue.buffering.max.messages", "1000000");
        c.create_with_context(LogContext).map_err(|e| kafka_err("producer", e))
    }

    fn producer(&self) -> Arc<BaseProducer<LogContext>> {
        self.producer.lock().unwrap().clone()
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
        self.ship(topic, &pending, true, budget)?;
        let mut wb = WriteBatch::default();
        for (k, _) in &entries {
            wb.delete_cf(self.store.cf(CF_META), k);
        }
        self.store.write(wb)?;
        Ok(())
    }

    /// Produces `pending` to Kafka and waits until every message is acknowledged, retrying with
    /// backoff while Kafka is unreachable, for up to `budget` (a zero budget makes one
    /// attempt). With `check` (or after a failure) each partition's high watermark first says
    /// how many rows already arrived.
    ///
    /// Errors: [`ConnectorError::External`] once the budget is spent (the rows stay in their
    /// write-ahead entries), or the error of a cause retrying cannot cure.
    fn ship(&self, topic: &KafkaTopic, pending: &[Pending], check: bool, budget: Duration) -> Result<()> {
        let mut backoff = Backoff::default();
        let mut check = check;
        let deadline = Instant::now() + budget;
        loop {
            let shipped = self.try_ship(topic, pending, check, deadline);
            match shipped {
                Ok(()) => {
                    for p in pending {
                        let end = p.start + p.batch.num_rows() as u64;
                        topic.ends[p.partition as usize].fetch_max(end, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                Err(ConnectorError::External(e)) => {
                    // A producer that reported failures may be fenced or fatal, and may still
                    // queue messages of this attempt: start a new one. Dropping the old one
                    // purges its queue, so none of them is sent after the next attempt's
                    // watermark check (or after this append gave up).
                    if let Ok(p) = Self::new_producer(&self.bootstrap) {
                        *self.producer.lock().unwrap() = Arc::new(p);
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ConnectorError::External(format!(
                            "{e} (retried for {} s; the rows are committed to the write-ahead log and delivered by the next append to the topic, or the next start)",
                            budget.as_secs()
                        )));
                    }
                    tracing::warn!(topic = %topic.kafka, error = %e, "append to Kafka failed; retrying");
                    check = true;
                    std::thread::sleep(backoff.next_delay().min(deadline - now));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt of [`KafkaLog::ship`]; waiting for room in the producer's queue ends at
    /// `deadline`.
    fn try_ship(&self, topic: &KafkaTopic, pending: &[Pending], check: bool, deadline: Instant) -> Result<()> {
        let producer = self.producer();
        let ack = Arc::new(Ack::default());
        // With `check`: each partition's high watermark, read before anything is produced, says
        // how much of the append (records in offset order) already arrived.
        let mut highs: HashMap<u32, u64> = HashMap::new();
        if check {
            for p in pending {
                if highs.contains_key(&p.partition) {
                    continue;
                }
                let (_, high) = producer
                    .client()
                    .fetch_watermarks(&topic.kafka, p.partition as i32, ADMIN_TIMEOUT)
                    .map_err(|e| kafka_err("watermarks", e))?;
                let high = high.max(0) as u64;
                let first = pending.iter().filter(|q| q.partition == p.partition).map(|q| q.start).min().unwrap_or(0);
                if high < first {
                    return Err(ConnectorError::Write(format!(
                        "Kafka topic '{}' partition {} ends at offset {high}, before offset {first} up to which Sluice had its rows acknowledged; it was deleted or truncated outside Sluice",
                        topic.kafka, p.partition
                    )));
                }
                highs.insert(p.partition, high);
            }
        }
        for p in pending {
            let n = p.batch.num_rows() as u64;
            let skip = match highs.get(&p.partition) {
                Some(high) => high.saturating_sub(p.start).min(n),
                None => 0,
            };
            if skip == n {
                continue;
            }
            let batch = p.batch.slice(skip as usize, (n - skip) as usize);
            for value in encode_rows(&batch)? {
                let mut rec: BaseRecord<'_, [u8], [u8], Arc<Ack>> =
                    BaseRecord::with_opaque_to(&topic.kafka, ack.clone()).partition(p.partition as i32).payload(&value);
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) if Instant::now() >= deadline => {
                            return Err(kafka_err("produce", "the producer's queue stayed full (Kafka does not acknowledge)"));
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            producer.poll(Duration::from_millis(5));
                            rec = back;
                        }
                        Err((e, _)) => return Err(kafka_err("produce", e)),
                    }
                }
            }
        }
        sluice_catalog::failpoint::check("kafka_log::before_ack").map_err(|e| kafka_err("produce", e))?;
        producer.flush(FLUSH_TIMEOUT).map_err(|e| kafka_err("flush", e))?;
        let failed = ack.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let e = ack.error.lock().unwrap().clone().unwrap_or_default();
            return Err(kafka_err("delivery", format!("{failed} messages not acknowledged: {e}")));
        }
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
            let producer = self.producer();
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

/// Encodes topic-form rows (columns, then the op column) as `debezium-json` message values, as
/// Flink writes the format: insertions as `c` events, retractions as `d` events.
fn encode_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let change = ChangeBatch::from_topic_batch(batch)?;
    let rows = rows_to_json_bytes(&change.data)?;
    Ok(rows
        .into_iter()
        .zip(&change.ops)
        .map(|(row, op)| {
            let mut v = Vec::with_capacity(row.len() + 40);
            if op.is_insertion() {
                v.extend_from_slice(b"{\"before\":null,\"after\":");
                v.extend_from_slice(&row);
                v.extend_from_slice(b",\"op\":\"c\"}");
            } else {
                v.extend_from_slice(b"{\"before\":");
                v.extend_from_slice(&row);
                v.extend_from_slice(b",\"after\":null,\"op\":\"d\"}");
            }
            v
        })
        .collect())
}

const INSERT_HEAD: &[u8] = b"{\"before\":null,\"after\":";
const INSERT_TAIL: &[u8] = b",\"op\":\"c\"}";
const DELETE_HEAD: &[u8] = b"{\"before\":";
const DELETE_TAIL: &[u8] = b",\"after\":null,\"op\":\"d\"}";

/// Decodes message values written by [`encode_rows`] into topic-form rows of `schema`.
///
/// Messages in exactly the layout [`encode_rows`] writes are cut down to their row objects and
/// decoded as one line-delimited JSON document by Arrow's JSON reader; anything else (a message
/// written by another Debezium-JSON producer) goes through the general `debezium-json` decoder.
fn decode_rows(values: &[Vec<u8>], schema: &SchemaRef) -> Result<RecordBatch> {
    let fields: Vec<Field> = schema.fields().iter().filter(|f| f.name() != OP_COLUMN).map(|f| f.as_ref().clone()).collect();
    let data_schema = Arc::new(Schema::new(fields));
    let mut lines = Vec::with_capacity(values.iter().map(Vec::len).sum::<usize>());
    let mut ops = Vec::with_capacity(values.len());
    let mut fast = true;
    for v in values {
        let (row, op) = if v.starts_with(INSERT_HEAD) && v.ends_with(INSERT_TAIL) && v.len() > INSERT_HEAD.len() + INSERT_TAIL.len() {
            (&v[INSERT_HEAD.len()..v.len() - INSERT_TAIL.len()], Op::Insert)
        } else if v.starts_with(DELETE_HEAD) && v.ends_with(DELETE_TAIL) && v.len() > DELETE_HEAD.len() + DELETE_TAIL.len() {
            (&v[DELETE_HEAD.len()..v.len() - DELETE_TAIL.len()], Op::Delete)
        } else {
            fast = false;
            break;
        };
        if row.first() != Some(&b'{') || row.contains(&b'\n') {
            fast = false;
            break;
        }
        lines.extend_from_slice(row);
        lines.push(b'\n');
        ops.push(op);
    }
    if fast {
        let mut reader = arrow::json::ReaderBuilder::new(data_schema.clone())
            .with_batch_size(values.len().max(1))
            .build(std::io::Cursor::new(lines))?;
        let data = match reader.next() {
            Some(b) => b?,
            None => RecordBatch::new_empty(data_schema.clone()),
        };
        if data.num_rows() == ops.len() {
            let topic = ChangeBatch::new(data, ops).to_topic_batch()?;
            return Ok(RecordBatch::try_new(schema.clone(), topic.columns().to_vec())?);
        }
    }
    let decoder = RecordDecoder::new(Format::DebeziumJson, data_schema)?;
    let refs: Vec<Option<&[u8]>> = values.iter().map(|v| Some(v.as_slice())).collect();
    let (change, errors) = decoder.decode(&refs)?;
    if let Some(e) = errors.first() {
        return Err(ConnectorError::Write(format!("a message of the topic does not decode: {}", e.message)));
    }
    let topic = change.to_topic_batch()?;
    // Back to the exact schema the rows were appended with (the decoder relaxes nullability).
    Ok(RecordBatch::try_new(schema.clone(), topic.columns().to_vec())?)
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
            .and_then(|()| self.ship(&handle, &pending, false, SHIP_TIMEOUT))
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
    use arrow::array::{Float64Array, Int64Array, Int8Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, TimeUnit};

    #[test]
    fn topic_names_are_legal_kafka_names() {
        assert_eq!(kafka_topic_name("sluice.", "ORCL.ADMIN.CUSTOMERS"), "sluice.ORCL.ADMIN.CUSTOMERS");
        assert_eq!(kafka_topic_name("", "my table/1"), "my_table_1");
    }

    #[test]
    fn rows_round_trip_through_debezium_json() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new(OP_COLUMN, DataType::Int8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c\"q"), Some("d")])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(2.0), None, Some(-3.25)])),
                Arc::new(TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), None, Some(0), Some(5)])),
                Arc::new(Int8Array::from(vec![0, 1, 2, 3])),
            ],
        )
        .unwrap();
        let values = encode_rows(&batch).unwrap();
        assert!(String::from_utf8_lossy(&values[1]).contains("\"op\":\"d\""));
        // The fast path (our own layout) and the general one (another producer's spacing).
        let respaced: Vec<Vec<u8>> = values.iter().map(|v| String::from_utf8_lossy(v).replace("\"op\":", "\"op\": ").into_bytes()).collect();
        for values in [values, respaced] {
            let back = decode_rows(&values, &schema).unwrap();
            // Update-before reads back as a delete, update-after as an insert (Flink's encoding).
            let ops = back.column(4).as_any().downcast_ref::<Int8Array>().unwrap();
            assert_eq!(ops.values().to_vec(), vec![0, 1, 1, 0]);
            for c in 0..4 {
                assert_eq!(back.column(c).as_ref(), batch.column(c).as_ref(), "column {c}");
            }
        }
    }
}
