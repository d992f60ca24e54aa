//! The Kafka sink task: tails the table's topic and produces each change to a Kafka topic, with
//! the delivery guarantee the table asks for (see the parent module's docs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde_json::Value;
use sluice_catalog::{ChangeBatch, Op};

use super::options::TaskError::{self, Fatal, Retry};
use super::options::{decode_u64, DeliveryGuarantee, KafkaOptions};
use crate::format::{rows_to_csv, rows_to_json, rows_to_json_bytes, rows_to_raw, Format};
use crate::log::TopicLog;
use crate::task::{Backoff, IngestTarget, TaskState, TaskStatus};

/// Key of a sink's read position in one partition of the table's topic.
fn sink_position_key(table: &str, partition: u32) -> Vec<u8> {
    format!("kafka-sink/{table}/{partition}").into_bytes()
}

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
