//! Topic logs, sources and sinks.
//!
//! - [`log`]: the [`log::TopicLog`] trait (a durable, partitioned, offset-addressed log of
//!   change batches) and its embedded implementation on RocksDB, the default backend.
//! - [`datagen`]: Flink's `datagen` test connector, a deterministic generator of rows.
//! - [`options`]: parsing of `WITH (...)` options into typed structs, unknown keys rejected.
//! - [`format`]: message formats (`json`, `debezium-json`, `csv`, `raw`) to and from rows.
//! - [`partition`]: placement of keys in partitions (Kafka's murmur2 default partitioner).
//! - [`task`]: what source and sink tasks share (the ingest target, status, backoff).
//! - [`kafka`]: Flink's Kafka connector (source and sink) on rdkafka.
//! - [`kafka_log`]: the Kafka topic backend (`--kafka-bootstrap`), a [`log::TopicLog`] on Kafka.
//! - [`cdc`]: change data capture from Postgres logical replication (pgoutput).
//! - [`smt`]: Kafka Connect's single message transforms, applied to captured rows.
//! - [`mongo`]: the MongoDB sink.
//! - [`error`]: the crate's error type.

pub mod cdc;
pub mod datagen;
pub mod error;
pub mod format;
pub mod kafka;
pub mod kafka_log;
pub mod log;
pub mod mongo;
pub mod options;
pub mod partition;
pub mod smt;
pub mod task;

pub use error::{ConnectorError, Result};
pub use kafka_log::KafkaLog;
pub use log::{EmbeddedLog, LogRecord, TopicLog};
