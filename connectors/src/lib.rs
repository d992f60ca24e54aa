//! Topic logs, sources and sinks.
//!
//! - [`log`]: the [`log::TopicLog`] trait (a durable, partitioned, offset-addressed log of
//!   change batches) and its embedded implementation on RocksDB, the default backend.
//! - [`datagen`]: Flink's `datagen` test connector, a deterministic generator of rows.
//! - [`options`]: parsing of `WITH (...)` options into typed structs, unknown keys rejected.
//! - [`error`]: the crate's error type.

pub mod datagen;
pub mod error;
pub mod log;
pub mod options;

pub use error::{ConnectorError, Result};
pub use log::{EmbeddedLog, LogRecord, TopicLog};
