//! Flink's Kafka connector (`'connector' = 'kafka'` and `'upsert-kafka'`), through rdkafka.
//!
//! As a source, a task consumes the Kafka topic and appends the decoded rows to the table's
//! topic together with the Kafka offsets it consumed up to (see [`crate::task`]): the offsets
//! live in Sluice's checkpointed store, not only in a consumer group, so a restart neither skips
//! nor re-counts a message. Offsets are also committed to the consumer group (`properties.group.id`,
//! default `sluice-<table>`) for monitoring tools.
//!
//! As a sink (once a persistent query writes into the table), a task tails the table's topic and
//! produces each change to Kafka. `'sink.delivery-guarantee'`:
//! - `at-least-once` (default): produce, wait for every acknowledgement, then store the read
//!   position; a crash in between re-sends the last batch.
//! - `exactly-once`: each batch is one Kafka transaction (`transactional.id` from
//!   `'sink.transactional-id-prefix'`), and each message carries a `sluice.position` header; at
//!   start the task reads the committed tail of the Kafka topic (`read_committed`) and resumes
//!   after the last position found there, so a crash between the commit and storing the position
//!   sends nothing twice.
//! - `none`: produce without waiting.
//!
//! Changes a format cannot express fail the task with an error naming them, as Flink refuses an
//! updating query into an append-only Kafka table: `json`, `csv` and `raw` carry inserts only,
//! `debezium-json` carries every change (an update-before as a `d` event, an update-after as a
//! `c` event, as Flink writes them), `upsert-kafka` writes a tombstone for a delete.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Schema, SchemaRef};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde_json::Value;
use sluice_catalog::{ChangeBatch, Op};

use crate::error::{ConnectorError, Result};
use crate::format::{dead_letter_schema, rows_to_csv, rows_to_json, rows_to_json_bytes, rows_to_raw, Format, RecordDecoder};
use crate::log::TopicLog;
use crate::options::OptionReader;
use crate::task::{Backoff, IngestTarget, TaskState, TaskStatus};

/// Where a source starts when Sluice has no stored offset yet (`'scan.startup.mode'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupMode {
    /// `earliest-offset`.
    Earliest,
    /// `latest-offset`.
    Latest,
    /// `group-offsets` (Flink's default): the consumer group's committed offsets, else
    /// `properties.auto.offset.reset` (default `earliest`).
    GroupOffsets,
}

/// `'sink.delivery-guarantee'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryGuarantee {
    /// `none`.
    None,
    /// `at-least-once` (default).
    AtLeastOnce,
    /// `exactly-once`, with Kafka transactions.
    ExactlyOnce,
}

/// What happens to a message that does not decode (`'error-handling.mode'`, Confluent's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorMode {
    /// `fail` (default): the task fails with an error naming topic, partition and offset.
    Fail,
    /// `log`: the message goes to the dead-letter table `<table>_dlq` and the task goes on.
    Log,
}

/// Parsed options of a Kafka table.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaOptions {
    /// `'topic'`.
    pub topic: String,
    /// `'properties.bootstrap.servers'`; when absent, the daemon's `--kafka-bootstrap`.
    pub bootstrap_servers: Option<String>,
    /// `'properties.group.id'`.
    pub group_id: Option<String>,
    /// Every other `'properties.*'` option, passed to librdkafka as is.
    pub properties: BTreeMap<String, String>,
    /// `'scan.startup.mode'`.
    pub startup_mode: StartupMode,
    /// `'format'` / `'value.format'`.
    pub format: Format,
    /// `'key.format'`, with `'key.fields'` (for upsert-kafka, the primary key).
    pub key_format: Option<Format>,
    /// `'key.fields'`, `;`-separated as Flink writes them.
    pub key_fields: Vec<String>,
    /// `'value.fields-include'` = `EXCEPT_KEY`: the value does not repeat the key fields.
    pub value_except_key: bool,
    /// True for `'connector' = 'upsert-kafka'`.
    pub upsert: bool,
    /// `'error-handling.mode'`.
    pub error_mode: ErrorMode,
    /// `'sink.delivery-guarantee'`.
    pub delivery: DeliveryGuarantee,
    /// `'sink.transactional-id-prefix'`.
    pub transactional_id_prefix: Option<String>,
}

impl KafkaOptions {
    /// Options of a sink that mirrors a table's changelog to the Kafka topic of the same name as
    /// Debezium change events (`debezium-json`, keyed by `key` as JSON), at least once.
    pub fn debezium_mirror(topic: &str, key: &[String]) -> KafkaOptions {
        KafkaOptions {
            topic: topic.to_string(),
            bootstrap_servers: None,
            group_id: None,
            properties: BTreeMap::new(),
            startup_mode: StartupMode::Earliest,
            format: Format::DebeziumJson,
            key_format: (!key.is_empty()).then_some(Format::Json),
            key_fields: key.to_vec(),
            value_except_key: false,
            upsert: false,
            error_mode: ErrorMode::Fail,
            delivery: DeliveryGuarantee::AtLeastOnce,
            transactional_id_prefix: None,
        }
    }

    /// Parses the options of a Kafka table. Errors: a missing `topic` or format, a bad value.
    pub fn parse(r: &mut OptionReader<'_>) -> Result<KafkaOptions> {
        let upsert = r.get("connector") == Some("upsert-kafka");
        let topic = r.required("topic")?.to_string();
        let bootstrap_servers = r.get("properties.bootstrap.servers").map(str::to_string);
        let group_id = r.get("properties.group.id").map(str::to_string);
        let mut properties = r.prefixed("properties.");
        properties.remove("bootstrap.servers");
        properties.remove("group.id");
        let startup_mode = match r
            .choice("scan.startup.mode", &["earliest-offset", "latest-offset", "group-offsets"], "group-offsets")?
            .as_str()
        {
            "earliest-offset" => StartupMode::Earliest,
            "latest-offset" => StartupMode::Latest,
            _ => StartupMode::GroupOffsets,
        };
        let delimiter = r.get("csv.field-delimiter");
        let format_name = r.get_any(&["format", "value.format"]).ok_or_else(|| {
            ConnectorError::InvalidOption("option 'format' (or 'value.format') is required for connector 'kafka'".into())
        })?;
        let format = Format::parse(format_name, delimiter)?;
        let key_format = r.get("key.format").map(|f| Format::parse(f, delimiter)).transpose()?;
        let key_fields: Vec<String> = r
            .get("key.fields")
            .map(|s| s.split(';').map(|f| f.trim().to_string()).filter(|f| !f.is_empty()).collect())
            .unwrap_or_default();
        let value_except_key =
            r.choice("value.fields-include", &["ALL", "EXCEPT_KEY"], "ALL")? == "EXCEPT_KEY";
        if value_except_key && key_fields.is_empty() && !upsert {
            return Err(ConnectorError::InvalidOption(
                "'value.fields-include' = 'EXCEPT_KEY' needs 'key.fields'".into(),
            ));
        }
        if upsert && key_format.is_none() {
            return Err(ConnectorError::InvalidOption("option 'key.format' is required for connector 'upsert-kafka'".into()));
        }
        let error_mode = if r.choice("error-handling.mode", &["fail", "log"], "fail")? == "log" {
            ErrorMode::Log
        } else {
            ErrorMode::Fail
        };
        let delivery = match r
            .choice("sink.delivery-guarantee", &["none", "at-least-once", "exactly-once"], "at-least-once")?
            .as_str()
        {
            "none" => DeliveryGuarantee::None,
            "exactly-once" => DeliveryGuarantee::ExactlyOnce,
            _ => DeliveryGuarantee::AtLeastOnce,
        };
        let transactional_id_prefix = r.get("sink.transactional-id-prefix").map(str::to_string);
        // Accepted as Flink documents them; Sluice reads all partitions with one task.
        let _ = r.get("scan.topic-partition-discovery.interval");
        let _ = r.get("sink.parallelism");
        let _ = r.get("json.ignore-parse-errors");
        let _ = r.get("json.fail-on-missing-field");
        let _ = r.get("json.timestamp-format.standard");
        let _ = r.get("changelog.mode");
        Ok(KafkaOptions {
            topic,
            bootstrap_servers,
            group_id,
            properties,
            startup_mode,
            format,
            key_format,
            key_fields,
            value_except_key,
            upsert,
            error_mode,
            delivery,
            transactional_id_prefix,
        })
    }

    /// The bootstrap servers: the table's own, else `default`.
    ///
    /// Errors: [`ConnectorError::InvalidOption`] when neither is set.
    pub fn bootstrap(&self, default: Option<&str>) -> Result<String> {
        self.bootstrap_servers.clone().or_else(|| default.map(str::to_string)).ok_or_else(|| {
            ConnectorError::InvalidOption(
                "option 'properties.bootstrap.servers' is required for connector 'kafka' (or start sluice with --kafka-bootstrap)".into(),
            )
        })
    }

    /// The key columns: `key.fields`, else the primary key for `upsert-kafka`.
    pub fn key_columns(&self, primary_key: &[String]) -> Vec<String> {
        if self.key_fields.is_empty() && self.upsert {
            primary_key.to_vec()
        } else {
            self.key_fields.clone()
        }
    }

    fn client_config(&self, bootstrap: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Key of a stored source offset: the next offset to read of one Kafka partition.
fn source_position_key(table: &str, partition: i32) -> Vec<u8> {
    format!("kafka-source/{table}/{partition}").into_bytes()
}

/// Key of a sink's read position in one partition of the table's topic.
fn sink_position_key(table: &str, partition: u32) -> Vec<u8> {
    format!("kafka-sink/{table}/{partition}").into_bytes()
}

fn decode_u64(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_be_bytes)
}

/// A Kafka source task of one table.
pub struct KafkaSource {
    /// Table name (for positions, the default group id and dead letters).
    pub table: String,
    /// The table's options.
    pub options: KafkaOptions,
    /// The bootstrap servers in effect.
    pub bootstrap: String,
    /// The table's physical schema.
    pub schema: SchemaRef,
    /// The table's primary key.
    pub primary_key: Vec<String>,
}

impl KafkaSource {
    /// Runs until `status.stop` is set: connects (retrying with backoff while the broker or
    /// topic is missing), then consumes and appends. A message that does not decode fails the
    /// task (`error-handling.mode` = `fail`) or goes to the dead-letter table.
    pub fn run(self, target: Arc<dyn IngestTarget>, status: Arc<TaskStatus>) {
        let mut backoff = Backoff::default();
        while !status.stopping() {
            match self.consume(&*target, &status, &mut backoff) {
                Ok(()) => return,
                Err(Fatal(e)) => {
                    tracing::error!(table = %self.table, error = %e, "kafka source failed");
                    status.set(TaskState::Failed, Some(e));
                    return;
                }
                Err(Retry(e)) => {
                    tracing::warn!(table = %self.table, error = %e, "kafka source retrying");
                    status.set(TaskState::Retrying, Some(e));
                    if status.sleep(backoff.next_delay()) {
                        return;
                    }
                }
            }
        }
    }

    fn consume(&self, target: &dyn IngestTarget, status: &TaskStatus, backoff: &mut Backoff) -> std::result::Result<(), TaskError> {
        let o = &self.options;
        let group = o.group_id.clone().unwrap_or_else(|| format!("sluice-{}", self.table));
        let mut config = o.client_config(&self.bootstrap);
        config.set("group.id", &group).set("enable.auto.commit", "false").set("enable.partition.eof", "false");
        if !o.properties.contains_key("auto.offset.reset") {
            config.set("auto.offset.reset", "earliest");
        }
        if !o.properties.contains_key("isolation.level") {
            config.set("isolation.level", "read_committed");
        }
        // Ask for moderate fetches, but accept large responses: some brokers answer a fetch
        // with everything they have, past librdkafka's 100 MB default.
        for (k, v) in [("max.partition.fetch.bytes", "4194304"), ("fetch.max.bytes", "16777216"), ("receive.message.max.bytes", "1000000000")] {
            if !o.properties.contains_key(k) {
                config.set(k, v);
            }
        }
        let consumer: BaseConsumer = config.create().map_err(|e| Fatal(format!("kafka: {e}")))?;
        let md = consumer
            .fetch_metadata(Some(&o.topic), Duration::from_secs(5))
            .map_err(|e| Retry(format!("kafka metadata of topic '{}': {e}", o.topic)))?;
        let partitions = md
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if partitions == 0 {
            return Err(Retry(format!("kafka topic '{}' does not exist yet", o.topic)));
        }
        let mut tpl = TopicPartitionList::new();
        // The next offset to read of every partition known so far (stored by an earlier run, or
        // consumed in this one): what `DESCRIBE CONNECTOR` shows as the position.
        let mut reached: BTreeMap<i32, i64> = BTreeMap::new();
        for p in 0..partitions as i32 {
            let stored = target
                .position(&source_position_key(&self.table, p))
                .map_err(|e| Fatal(e.to_string()))?
                .and_then(|v| decode_u64(&v));
            if let Some(next) = stored {
                reached.insert(p, next as i64);
            }
            let offset = match (stored, o.startup_mode) {
                (Some(next), _) => Offset::Offset(next as i64),
                (None, StartupMode::Earliest) => Offset::Beginning,
                (None, StartupMode::Latest) => Offset::End,
                (None, StartupMode::GroupOffsets) => Offset::Stored,
            };
            tpl.add_partition_offset(&o.topic, p, offset).map_err(|e| Fatal(e.to_string()))?;
        }
        consumer.assign(&tpl).map_err(|e| Retry(format!("kafka assign: {e}")))?;
        let key_columns = o.key_columns(&self.primary_key);
        let value_schema = if o.value_except_key {
            Arc::new(Schema::new(
                self.schema.fields().iter().filter(|f| !key_columns.contains(f.name())).cloned().collect::<Vec<_>>(),
            ))
        } else {
            self.schema.clone()
        };
        let key_schema = Arc::new(Schema::new(
            self.schema.fields().iter().filter(|f| key_columns.contains(f.name())).cloned().collect::<Vec<_>>(),
        ));
        let value_decoder = RecordDecoder::new(o.format.clone(), value_schema).map_err(|e| Fatal(e.to_string()))?;
        let key_decoder = match &o.key_format {
            Some(f) if !key_columns.is_empty() => Some(RecordDecoder::new(f.clone(), key_schema).map_err(|e| Fatal(e.to_string()))?),
            _ => None,
        };
        *status.position.lock().unwrap() = self.position_text(&reached);
        status.set(TaskState::Running, None);
        backoff.reset();
        let mut pending: Vec<BorrowedMessage<'_>> = Vec::new();
        let mut next_commit = Instant::now() + Duration::from_secs(5);
        while !status.stopping() {
            let started = Instant::now();
            pending.clear();
            // The clock is read once per 256 messages: reading it per message cost a tenth of the time.
            while pending.len() < SOURCE_BATCH_ROWS && (pending.len() % 256 != 0 || started.elapsed() < Duration::from_millis(100)) {
                match consumer.poll(Duration::from_millis(20)) {
                    None => {
                        if !pending.is_empty() {
                            break;
                        }
                    }
                    Some(Ok(m)) => pending.push(m),
                    Some(Err(e)) => return Err(Retry(format!("kafka consume: {e}"))),
                }
            }
            if pending.is_empty() {
                continue;
            }
            reached.extend(self.ingest(&pending, &value_decoder, key_decoder.as_ref(), &key_columns, target, status)?);
            *status.position.lock().unwrap() = self.position_text(&reached);
            if Instant::now() > next_commit {
                // Informational only: Sluice's own offsets are what a restart uses.
                let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async);
                next_commit = Instant::now() + Duration::from_secs(5);
            }
        }
        Ok(())
    }

    /// `topic/partition@next-offset` of every partition in `reached`, by partition.
    fn position_text(&self, reached: &BTreeMap<i32, i64>) -> String {
        reached.iter().map(|(p, o)| format!("{}/{p}@{o}", self.options.topic)).collect::<Vec<_>>().join(", ")
    }

    /// Decodes `msgs` and appends their rows (and dead letters) with the offsets they reach;
    /// returns those offsets: the next offset to read of each partition in `msgs`.
    fn ingest(
        &self,
        msgs: &[BorrowedMessage<'_>],
        value_decoder: &RecordDecoder,
        key_decoder: Option<&RecordDecoder>,
        key_columns: &[String],
        target: &dyn IngestTarget,
        status: &TaskStatus,
    ) -> std::result::Result<HashMap<i32, i64>, TaskError> {
        let o = &self.options;
        let values: Vec<Option<&[u8]>> = msgs.iter().map(|m| m.payload()).collect();
        let mut errors: Vec<(usize, String)> = Vec::new();
        let mut batches = Vec::new();
        if o.upsert || o.value_except_key {
            // Key and value decoded separately and put together; a tombstone deletes by key.
            let (Some(kd), true) = (key_decoder, !key_columns.is_empty()) else {
                return Err(Fatal("'key.format' and 'key.fields' are needed to read keys".into()));
            };
            for (i, m) in msgs.iter().enumerate() {
                let (key, kerr) = kd.decode(&[m.key()]).map_err(|e| Fatal(e.to_string()))?;
                if let Some(e) = kerr.first().map(|e| e.message.clone()).or_else(|| (key.num_rows() != 1).then(|| "no key".to_string())) {
                    errors.push((i, format!("key: {e}")));
                    continue;
                }
                let (value, op) = match m.payload() {
                    None if o.upsert => (None, Op::Delete),
                    None => continue,
                    Some(v) => {
                        let (vb, verr) = value_decoder.decode(&[Some(v)]).map_err(|e| Fatal(e.to_string()))?;
                        if let Some(e) = verr.first() {
                            errors.push((i, e.message.clone()));
                            continue;
                        }
                        (Some(vb.data), Op::Insert)
                    }
                };
                let cols: Vec<ArrayRef> = self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| {
                        if let Ok(k) = key.data.schema().index_of(f.name()) {
                            return key.data.column(k).clone();
                        }
                        match value.as_ref().and_then(|v| v.schema().index_of(f.name()).ok().map(|j| v.column(j).clone())) {
                            Some(c) => c,
                            None => arrow::array::new_null_array(f.data_type(), 1),
                        }
                    })
                    .collect();
                let relaxed = value_decoder_relaxed(&self.schema);
                let batch = RecordBatch::try_new(relaxed, cols).map_err(|e| Fatal(e.to_string()))?;
                let change = ChangeBatch::new(batch, vec![op]);
                // A NULL in a NOT NULL column is a bad message like one that does not decode.
                match not_null_violation(&self.schema, &change) {
                    Some(e) => errors.push((i, e)),
                    None => batches.push(change),
                }
            }
        } else {
            let (rows, errs) = value_decoder.decode(&values).map_err(|e| Fatal(e.to_string()))?;
            errors.extend(errs.into_iter().map(|e| (e.index, e.message)));
            if not_null_violation(&self.schema, &rows).is_some() {
                // Rare: find the messages at fault one at a time; the others are kept.
                let failed: std::collections::HashSet<usize> = errors.iter().map(|(i, _)| *i).collect();
                for (i, v) in values.iter().enumerate().filter(|(i, _)| !failed.contains(i)) {
                    let (one, _) = value_decoder.decode(&[*v]).map_err(|e| Fatal(e.to_string()))?;
                    match not_null_violation(&self.schema, &one) {
                        Some(e) => errors.push((i, e)),
                        None if !one.is_empty() => batches.push(one),
                        None => {}
                    }
                }
                errors.sort_by_key(|(i, _)| *i);
            } else if !rows.is_empty() {
                batches.push(rows);
            }
        }
        let mut dead = None;
        if !errors.is_empty() {
            match o.error_mode {
                ErrorMode::Fail => {
                    let (i, e) = &errors[0];
                    let m = &msgs[*i];
                    return Err(Fatal(format!(
                        "kafka message at topic '{}' partition {} offset {} does not decode as {}: {e} (set 'error-handling.mode' = 'log' to send such messages to the table {}_dlq)",
                        o.topic,
                        m.partition(),
                        m.offset(),
                        o.format.name(),
                        self.table
                    )));
                }
                ErrorMode::Log => {
                    let n = errors.len();
                    let topic: StringArray = std::iter::repeat_n(Some(o.topic.as_str()), n).collect();
                    let partition: Int32Array = errors.iter().map(|(i, _)| Some(msgs[*i].partition())).collect();
                    let offset: Int64Array = errors.iter().map(|(i, _)| Some(msgs[*i].offset())).collect();
                    let raw: StringArray = errors
                        .iter()
                        .map(|(i, _)| msgs[*i].payload().map(|v| String::from_utf8_lossy(v).into_owned()))
                        .collect();
                    let error: StringArray = errors.iter().map(|(_, e)| Some(e.as_str())).collect();
                    let cols: Vec<ArrayRef> =
                        vec![Arc::new(topic), Arc::new(partition), Arc::new(offset), Arc::new(raw), Arc::new(error)];
                    dead = Some(RecordBatch::try_new(dead_letter_schema(), cols).map_err(|e| Fatal(e.to_string()))?);
                    status.dead_letters.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        let mut next: HashMap<i32, i64> = HashMap::new();
        for m in msgs {
            let e = next.entry(m.partition()).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let positions: Vec<(Vec<u8>, Vec<u8>)> = next
            .iter()
            .map(|(p, o)| (source_position_key(&self.table, *p), (*o as u64).to_be_bytes().to_vec()))
            .collect();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        target.append(batches, dead, positions).map_err(|e| Fatal(e.to_string()))?;
        status.rows.fetch_add(rows as u64, Ordering::Relaxed);
        Ok(next)
    }
}

/// The message naming the first NOT NULL column of `schema` that a row of `change` leaves NULL
/// (for deletions only the columns present in a tombstone's key matter, so only insertions
/// and update-afters are checked), as PostgreSQL words it.
fn not_null_violation(schema: &SchemaRef, change: &ChangeBatch) -> Option<String> {
    let checked: Vec<usize> = (0..change.num_rows()).filter(|r| change.ops[*r].is_insertion()).collect();
    if checked.is_empty() {
        return None;
    }
    for (i, f) in schema.fields().iter().enumerate() {
        if f.is_nullable() || i >= change.data.num_columns() {
            continue;
        }
        let col = change.data.column(i);
        if col.null_count() > 0 && checked.iter().any(|r| col.is_null(*r)) {
            return Some(format!("null value in column \"{}\" violates not-null constraint", f.name()));
        }
    }
    None
}

fn value_decoder_relaxed(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    ))
}

/// Why a connector task's step failed.
#[derive(Debug)]
pub enum TaskError {
    /// The outside system is not reachable (or not ready): wait and retry.
    Retry(String),
    /// Bad data or configuration: the task fails.
    Fatal(String),
}
use TaskError::{Fatal, Retry};

/// Counts delivery failures reported by librdkafka.
#[derive(Default)]
struct DeliveryContext {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap() = Some(e.to_string());
        }
    }
}

/// A Kafka sink task: the table's topic delivered to a Kafka topic.
pub struct KafkaSink {
    /// Table name.
    pub table: String,
    /// The table's options.
    pub options: KafkaOptions,
    /// The bootstrap servers in effect.
    pub bootstrap: String,
    /// The table's primary key.
    pub primary_key: Vec<String>,
}

const POSITION_HEADER: &str = "sluice.position";

/// Messages a source decodes and appends as one write (one fsync), at most.
const SOURCE_BATCH_ROWS: usize = 65_536;

/// Rows a sink reads from one partition of the table's topic per round: one producer flush (or
/// one transaction) each, so larger rounds wait on the broker less often.
const SINK_BATCH_ROWS: usize = 100_000;

impl KafkaSink {
    /// Runs until `status.stop` is set, retrying with backoff while Kafka is unreachable.
    pub fn run(self, log: Arc<dyn TopicLog>, target: Arc<dyn IngestTarget>, status: Arc<TaskStatus>) {
        let mut backoff = Backoff::default();
        while !status.stopping() {
            match self.deliver(&*log, &*target, &status, &mut backoff) {
                Ok(()) => return,
                Err(Fatal(e)) => {
                    tracing::error!(table = %self.table, error = %e, "kafka sink failed");
                    status.set(TaskState::Failed, Some(e));
                    return;
                }
                Err(Retry(e)) => {
                    tracing::warn!(table = %self.table, error = %e, "kafka sink retrying");
                    status.set(TaskState::Retrying, Some(e));
                    if status.sleep(backoff.next_delay()) {
                        return;
                    }
                }
            }
        }
    }

    fn deliver(&self, log: &dyn TopicLog, target: &dyn IngestTarget, status: &TaskStatus, backoff: &mut Backoff) -> std::result::Result<(), TaskError> {
        let o = &self.options;
        let local_partitions = log.partitions(&self.table).map_err(|e| Fatal(e.to_string()))?;
        let mut positions = Vec::new();
        for p in 0..local_partitions {
            let v = target.position(&sink_position_key(&self.table, p)).map_err(|e| Fatal(e.to_string()))?;
            positions.push(v.and_then(|v| decode_u64(&v)).unwrap_or(0));
        }
        self.ensure_topic(o, local_partitions)?;
        let mut config = o.client_config(&self.bootstrap);
        let exactly_once = o.delivery == DeliveryGuarantee::ExactlyOnce;
        if exactly_once {
            let prefix = o.transactional_id_prefix.clone().unwrap_or_else(|| "sluice".to_string());
            config.set("transactional.id", format!("{prefix}-{}", self.table));
        } else if o.delivery == DeliveryGuarantee::AtLeastOnce {
            config.set("enable.idempotence", "true");
        }
        // Larger producer batches: the broker's per-request cost dominated with small ones.
        for (k, v) in [("linger.ms", "10"), ("batch.num.messages", "100000"), ("batch.size", "4000000"), ("queue.buffering.max.messages", "1000000")] {
            if !o.properties.contains_key(k) {
                config.set(k, v);
            }
        }
        let producer: BaseProducer<DeliveryContext> =
            config.create_with_context(DeliveryContext::default()).map_err(|e| Fatal(format!("kafka: {e}")))?;
        if exactly_once {
            // Fences a previous producer of this sink and aborts its open transaction, so the
            // committed tail read next is final.
            producer.init_transactions(Duration::from_secs(30)).map_err(|e| Retry(format!("kafka init_transactions: {e}")))?;
            for (p, pos) in self.committed_tail(o)?.into_iter().enumerate() {
                if let Some(next) = pos {
                    if p < positions.len() && next > positions[p] {
                        positions[p] = next;
                    }
                }
            }
        }
        let key_columns = o.key_columns(&self.primary_key);
        status.set(TaskState::Running, None);
        backoff.reset();
        let mut seen = log.version();
        while !status.stopping() {
            let mut any = false;
            for p in 0..local_partitions {
                let records = log.read(&self.table, p, positions[p as usize], SINK_BATCH_ROWS).map_err(|e| Fatal(e.to_string()))?;
                if records.is_empty() {
                    continue;
                }
                any = true;
                if exactly_once {
                    producer.begin_transaction().map_err(|e| Retry(format!("kafka begin_transaction: {e}")))?;
                }
                let mut next = positions[p as usize];
                let mut sent = 0u64;
                for r in &records {
                    let change = ChangeBatch::from_topic_batch(&r.batch).map_err(|e| Fatal(e.to_string()))?;
                    let end = r.offset + change.num_rows() as u64;
                    let messages = self.encode(&change, &key_columns)?;
                    let pos = format!("{p}:{end}");
                    for (key, value) in &messages {
                        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&o.topic);
                        if exactly_once {
                            // Only exactly-once recovery reads the header; without it messages
                            // are smaller and cost no allocation each.
                            rec = rec.headers(OwnedHeaders::new().insert(Header { key: POSITION_HEADER, value: Some(pos.as_bytes()) }));
                        }
                        if let Some(k) = key {
                            rec = rec.key(k.as_slice());
                        }
                        if let Some(v) = value {
                            rec = rec.payload(v.as_slice());
                        }
                        let mut rec = rec;
                        loop {
                            match producer.send(rec) {
                                Ok(()) => break,
                                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                                    producer.poll(Duration::from_millis(10));
                                    rec = back;
                                }
                                Err((e, _)) => return Err(Retry(format!("kafka produce: {e}"))),
                            }
                        }
                        sent += 1;
                    }
                    next = end;
                }
                if exactly_once {
                    if let Err(e) = producer.commit_transaction(Duration::from_secs(30)) {
                        let _ = producer.abort_transaction(Duration::from_secs(30));
                        return Err(Retry(format!("kafka commit_transaction: {e}")));
                    }
                } else if o.delivery == DeliveryGuarantee::AtLeastOnce {
                    producer.flush(Duration::from_secs(30)).map_err(|e| Retry(format!("kafka flush: {e}")))?;
                }
                let failed = producer.context().failed.swap(0, Ordering::Relaxed);
                if failed > 0 && o.delivery != DeliveryGuarantee::None {
                    let e = producer.context().last_error.lock().unwrap().clone().unwrap_or_default();
                    return Err(Retry(format!("kafka: {failed} messages not delivered: {e}")));
                }
                // Crash injection: produced (and committed) but the position not yet stored.
                sluice_catalog::failpoint::check("kafka_sink::after_produce").map_err(Fatal)?;
                target
                    .put_position(&sink_position_key(&self.table, p), &next.to_be_bytes())
                    .map_err(|e| Fatal(e.to_string()))?;
                positions[p as usize] = next;
                status.rows.fetch_add(sent, Ordering::Relaxed);
                *status.position.lock().unwrap() = format!("{}/{p}@{next}", self.table);
            }
            if !any {
                producer.poll(Duration::ZERO);
                log.wait(seen, Duration::from_millis(100));
                seen = log.version();
            }
        }
        if o.delivery != DeliveryGuarantee::None {
            let _ = producer.flush(Duration::from_secs(10));
        }
        Ok(())
    }

    /// Creates the Kafka topic when it does not exist, with as many partitions as the table's.
    fn ensure_topic(&self, o: &KafkaOptions, partitions: u32) -> std::result::Result<(), TaskError> {
        let consumer: BaseConsumer = o.client_config(&self.bootstrap).create().map_err(|e| Fatal(format!("kafka: {e}")))?;
        let md = consumer
            .fetch_metadata(Some(&o.topic), Duration::from_secs(5))
            .map_err(|e| Retry(format!("kafka metadata of topic '{}': {e}", o.topic)))?;
        let exists = md.topics().first().is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
        if exists {
            return Ok(());
        }
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            o.client_config(&self.bootstrap).create().map_err(|e| Fatal(format!("kafka: {e}")))?;
        let topic = rdkafka::admin::NewTopic::new(&o.topic, partitions as i32, rdkafka::admin::TopicReplication::Fixed(1));
        let results = futures::executor::block_on(admin.create_topics(&[topic], &rdkafka::admin::AdminOptions::new()))
            .map_err(|e| Retry(format!("kafka create topic '{}': {e}", o.topic)))?;
        for r in results {
            if let Err((t, e)) = r {
                if e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(Retry(format!("kafka create topic '{t}': {e}")));
                }
            }
        }
        Ok(())
    }

    /// Encodes one change batch as (key, value) messages, refusing changes the format cannot carry.
    fn encode(&self, change: &ChangeBatch, key_columns: &[String]) -> std::result::Result<Vec<(Option<Vec<u8>>, Option<Vec<u8>>)>, TaskError> {
        let o = &self.options;
        let n = change.num_rows();
        let keys: Vec<Option<Vec<u8>>> = if key_columns.is_empty() {
            vec![None; n]
        } else {
            let idx: Vec<usize> = key_columns
                .iter()
                .map(|k| change.data.schema().index_of(k).map_err(|_| Fatal(format!("key field '{k}' is not a column"))))
                .collect::<std::result::Result<_, _>>()?;
            let kb = change.data.project(&idx).map_err(|e| Fatal(e.to_string()))?;
            match o.key_format.as_ref().unwrap_or(&Format::Json) {
                Format::Csv { delimiter } => rows_to_csv(&kb, *delimiter).map_err(|e| Fatal(e.to_string()))?.into_iter().map(Some).collect(),
                Format::Raw => rows_to_raw(&kb).map_err(|e| Fatal(e.to_string()))?,
                _ => rows_to_json_bytes(&kb).map_err(|e| Fatal(e.to_string()))?.into_iter().map(Some).collect(),
            }
        };
        let value_batch = if o.value_except_key {
            let idx: Vec<usize> = (0..change.data.num_columns())
                .filter(|i| !key_columns.contains(change.data.schema().field(*i).name()))
                .collect();
            change.data.project(&idx).map_err(|e| Fatal(e.to_string()))?
        } else {
            change.data.clone()
        };
        let mut out = Vec::with_capacity(n);
        let values: Vec<Option<Vec<u8>>> = match &o.format {
            Format::Json => rows_to_json_bytes(&value_batch).map_err(|e| Fatal(e.to_string()))?.into_iter().map(Some).collect(),
            Format::Csv { delimiter } => rows_to_csv(&value_batch, *delimiter).map_err(|e| Fatal(e.to_string()))?.into_iter().map(Some).collect(),
            Format::Raw => rows_to_raw(&value_batch).map_err(|e| Fatal(e.to_string()))?,
            Format::DebeziumJson => rows_to_json(&value_batch)
                .map_err(|e| Fatal(e.to_string()))?
                .into_iter()
                .zip(&change.ops)
                .map(|(row, op)| {
                    let env = if op.is_insertion() {
                        serde_json::json!({"before": null, "after": Value::Object(row), "op": "c"})
                    } else {
                        serde_json::json!({"before": Value::Object(row), "after": null, "op": "d"})
                    };
                    Some(serde_json::to_vec(&env).unwrap_or_default())
                })
                .collect(),
        };
        for (i, (key, value)) in keys.into_iter().zip(values).enumerate() {
            let op = change.ops[i];
            match (&o.format, op.is_insertion()) {
                (Format::DebeziumJson, _) | (_, true) => out.push((key, value)),
                (_, false) if o.upsert => {
                    // upsert-kafka: an update-before is implied by the next value; a delete is a tombstone.
                    if op == Op::Delete {
                        out.push((key, None));
                    }
                }
                (f, false) => {
                    return Err(Fatal(format!(
                        "table '{}' receives {} changes, which Kafka format '{}' cannot carry; use 'debezium-json' or connector 'upsert-kafka'",
                        self.table,
                        if op == Op::Delete { "delete" } else { "update" },
                        f.name()
                    )))
                }
            }
        }
        Ok(out)
    }

    /// For exactly-once: the next local offset per partition after the last message committed to
    /// Kafka, read from the `sluice.position` headers of the topic's committed tail.
    fn committed_tail(&self, o: &KafkaOptions) -> std::result::Result<Vec<Option<u64>>, TaskError> {
        let mut config = o.client_config(&self.bootstrap);
        config
            .set("group.id", format!("sluice-recover-{}", self.table))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer = config.create().map_err(|e| Fatal(format!("kafka: {e}")))?;
        let md = consumer
            .fetch_metadata(Some(&o.topic), Duration::from_secs(5))
            .map_err(|e| Retry(format!("kafka metadata: {e}")))?;
        let partitions = md.topics().first().filter(|t| t.error().is_none()).map(|t| t.partitions().len()).unwrap_or(0);
        let mut found: Vec<Option<u64>> = Vec::new();
        let mut tpl = TopicPartitionList::new();
        let mut open = 0;
        for p in 0..partitions as i32 {
            let (low, high) = consumer
                .fetch_watermarks(&o.topic, p, Duration::from_secs(5))
                .map_err(|e| Retry(format!("kafka watermarks: {e}")))?;
            if high > low {
                tpl.add_partition_offset(&o.topic, p, Offset::Offset((high - 50_000).max(low))).map_err(|e| Fatal(e.to_string()))?;
                open += 1;
            }
        }
        if open == 0 {
            return Ok(found);
        }
        consumer.assign(&tpl).map_err(|e| Retry(format!("kafka assign: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while open > 0 && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
                Some(Err(e)) => return Err(Retry(format!("kafka recover: {e}"))),
                Some(Ok(m)) => {
                    if let Some(h) = m.headers() {
                        for h in h.iter() {
                            if h.key == POSITION_HEADER {
                                if let Some((lp, end)) = h.value.and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.split_once(':')) {
                                    if let (Ok(lp), Ok(end)) = (lp.parse::<usize>(), end.parse::<u64>()) {
                                        if found.len() <= lp {
                                            found.resize(lp + 1, None);
                                        }
                                        found[lp] = Some(found[lp].map_or(end, |f| f.max(end)));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(found)
    }
}
