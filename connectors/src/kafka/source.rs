//! The Kafka source task: consumes a Kafka topic and appends the decoded rows, with the Kafka
//! offsets they reach, to the table's topic (see the parent module's docs).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Schema, SchemaRef};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_catalog::{ChangeBatch, Op};

use super::options::TaskError::{self, Fatal, Retry};
use super::options::{decode_u64, ErrorMode, KafkaOptions, StartupMode};
use crate::format::{dead_letter_schema, RecordDecoder};
use crate::task::{Backoff, IngestTarget, TaskState, TaskStatus};

/// Key of a stored source offset: the next offset to read of one Kafka partition.
fn source_position_key(table: &str, partition: i32) -> Vec<u8> {
    format!("kafka-source/{table}/{partition}").into_bytes()
}

/// Messages a source decodes and appends as one write (one fsync), at most.
const SOURCE_BATCH_ROWS: usize = 65_536;

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
