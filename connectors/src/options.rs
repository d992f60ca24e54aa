//! Typed `WITH (...)` options of tables, as RisingWave does: each connector's options parse into
//! a struct with one documented field per key, and unknown keys are rejected at `CREATE TABLE`.

use std::collections::BTreeMap;

use crate::datagen::DatagenOptions;
use crate::error::{ConnectorError, Result};

/// What backs a table, decided by its `connector` option.
#[derive(Debug, Clone, PartialEq)]
pub enum TableConnector {
    /// No `connector` option: the table is a topic of the configured log (embedded by default).
    Topic {
        /// `'partitions' = 'N'`: number of partitions of the topic (default 1).
        partitions: u32,
    },
    /// `'connector' = 'datagen'`: Flink's generator of test rows (a source only).
    Datagen(DatagenOptions),
    /// `'connector' = 'blackhole'`: Flink's sink that discards every row (a sink only).
    Blackhole,
}

/// Parses a table's options.
///
/// Errors: [`ConnectorError::InvalidOption`] for an unknown connector, an unknown key or a bad
/// value, naming the key.
pub fn parse_table_options(options: &BTreeMap<String, String>) -> Result<TableConnector> {
    match options.get("connector").map(|s| s.as_str()) {
        None => {
            let mut partitions = 1u32;
            for (k, v) in options {
                match k.as_str() {
                    "partitions" => {
                        partitions = v.parse().ok().filter(|p| *p >= 1).ok_or_else(|| {
                            ConnectorError::InvalidOption(format!(
                                "option 'partitions' must be a positive integer, got '{v}'"
                            ))
                        })?
                    }
                    // Accepted for compatibility with Flink DDL written for Kafka-backed tables
                    // on managed services; they do not change the embedded topic.
                    "changelog.mode" | "value.format" | "key.format" | "format" => {}
                    other => return Err(unknown(other, "a topic-backed table")),
                }
            }
            Ok(TableConnector::Topic { partitions })
        }
        Some("datagen") => Ok(TableConnector::Datagen(DatagenOptions::parse(options)?)),
        Some("blackhole") => {
            if let Some(k) = options.keys().find(|k| k.as_str() != "connector") {
                return Err(unknown(k, "connector 'blackhole'"));
            }
            Ok(TableConnector::Blackhole)
        }
        Some(other) => Err(ConnectorError::InvalidOption(format!(
            "unknown connector '{other}' (supported: datagen, blackhole; tables without a connector are topics)"
        ))),
    }
}

pub(crate) fn unknown(key: &str, what: &str) -> ConnectorError {
    ConnectorError::InvalidOption(format!("unknown option '{key}' for {what}"))
}
