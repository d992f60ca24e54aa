//! Delivery of appends to Kafka: the idempotent producer, and the attempts that produce a pending
//! append's rows and wait for their acknowledgement (see the parent module's docs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use super::codec::encode_rows;
use super::topic::{kafka_err, KafkaTopic, Pending, ADMIN_TIMEOUT};
use crate::error::{ConnectorError, Result};
use crate::task::Backoff;

/// How long one attempt waits for Kafka to acknowledge what it produced.
pub(super) const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Delivery outcome of the messages of one append.
#[derive(Default)]
pub(super) struct Ack {
    failed: AtomicU64,
    error: Mutex<Option<String>>,
}

/// Reports each message's delivery to the [`Ack`] of its append.
pub(super) struct LogContext;

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

/// The producer of a [`super::KafkaLog`]'s appends (idempotent), replaced by a new one after an
/// attempt that failed.
pub(super) struct LogProducer {
    bootstrap: String,
    producer: Mutex<Arc<BaseProducer<LogContext>>>,
}

impl LogProducer {
    /// A producer for the cluster at `bootstrap`.
    pub(super) fn new(bootstrap: &str) -> Result<LogProducer> {
        Ok(LogProducer { bootstrap: bootstrap.to_string(), producer: Mutex::new(Arc::new(Self::new_producer(bootstrap)?)) })
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

    /// The current producer (its client also answers metadata and watermark requests).
    pub(super) fn current(&self) -> Arc<BaseProducer<LogContext>> {
        self.producer.lock().unwrap().clone()
    }

    /// Produces `pending` to Kafka and waits until every message is acknowledged, retrying with
    /// backoff while Kafka is unreachable, for up to `budget` (a zero budget makes one
    /// attempt). With `check` (or after a failure) each partition's high watermark first says
    /// how many rows already arrived.
    ///
    /// Errors: [`ConnectorError::External`] once the budget is spent (the rows stay in their
    /// write-ahead entries), or the error of a cause retrying cannot cure.
    pub(super) fn ship(&self, topic: &KafkaTopic, pending: &[Pending], check: bool, budget: Duration) -> Result<()> {
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

    /// One attempt of [`LogProducer::ship`]; waiting for room in the producer's queue ends at
    /// `deadline`.
    fn try_ship(&self, topic: &KafkaTopic, pending: &[Pending], check: bool, deadline: Instant) -> Result<()> {
        let producer = self.current();
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
}
