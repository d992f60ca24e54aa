//! What the parts of the Kafka topic backend share: the in-memory state of one table topic, the
//! rows of a pending append, and the error of a Kafka call.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use rdkafka::consumer::BaseConsumer;

use crate::error::ConnectorError;

/// How long Kafka calls that answer at once (metadata, watermarks, topic admin) may take.
pub(super) const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A reader's consumer, assigned to one partition, and the offset it will return next.
pub(super) struct Reader {
    pub(super) consumer: BaseConsumer,
    pub(super) next: u64,
}

/// One table topic: its Kafka topic, the ends readers may see, and the append and read state.
pub(super) struct KafkaTopic {
    pub(super) name: String,
    pub(super) kafka: String,
    pub(super) partitions: u32,
    /// Topic form (columns then the op column), known from the first append.
    pub(super) schema: RwLock<Option<SchemaRef>>,
    /// Per partition: the end of what is acknowledged by Kafka and visible to readers.
    pub(super) ends: Vec<AtomicU64>,
    /// Held by an append from its write-ahead entry until its rows are acknowledged.
    pub(super) append: Mutex<()>,
    /// Per partition: idle consumers, reused by the next read at their offset.
    pub(super) readers: Vec<Mutex<Vec<Reader>>>,
    /// Sequence number of the next append's write-ahead entries.
    pub(super) wal_seq: AtomicU64,
    /// Set when an append failed with its entries left in the store: later appends fail too.
    pub(super) failed: Mutex<Option<String>>,
}

impl KafkaTopic {
    pub(super) fn new(name: &str, kafka: String, partitions: u32, schema: Option<SchemaRef>, wal_seq: u64) -> KafkaTopic {
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

/// One partition's rows of a pending append: the offset they start at and the rows.
pub(super) struct Pending {
    pub(super) partition: u32,
    pub(super) start: u64,
    pub(super) batch: RecordBatch,
}

/// A failed Kafka call, as [`ConnectorError::External`] (the kind an append retries).
pub(super) fn kafka_err(what: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::External(format!("kafka {what}: {e}"))
}
