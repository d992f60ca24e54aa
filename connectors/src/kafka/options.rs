//! The typed options of a Kafka table (`'connector' = 'kafka'` and `'upsert-kafka'`), the
//! librdkafka client configuration built from them, and what the source and the sink tasks
//! share: the error of a task's step and the encoding of stored positions.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;

use crate::error::{ConnectorError, Result};
use crate::format::Format;
use crate::options::OptionReader;

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

    /// A librdkafka client configuration: `bootstrap`, then every `'properties.*'` option.
    pub(super) fn client_config(&self, bootstrap: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Why a connector task's step failed.
#[derive(Debug)]
pub enum TaskError {
    /// The outside system is not reachable (or not ready): wait and retry.
    Retry(String),
    /// Bad data or configuration: the task fails.
    Fatal(String),
}

/// A stored position: a big-endian `u64`; `None` when it is not 8 bytes long.
pub(super) fn decode_u64(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_be_bytes)
}
