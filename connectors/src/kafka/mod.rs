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
//!
//! - `options`: the typed `WITH (...)` options ([`KafkaOptions`]), the librdkafka client
//!   configuration built from them, and the error of a task's step ([`TaskError`]).
//! - `source`: the source task ([`KafkaSource`]).
//! - `sink`: the sink task ([`KafkaSink`]).

mod options;
mod sink;
mod source;

pub use options::{DeliveryGuarantee, ErrorMode, KafkaOptions, StartupMode, TaskError};
pub use sink::KafkaSink;
pub use source::KafkaSource;
