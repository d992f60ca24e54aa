//! Typed `WITH (...)` options of tables, as RisingWave does: each connector's options parse into
//! a struct with one documented field per key, and unknown keys are rejected at `CREATE TABLE`.

use std::collections::BTreeMap;

use std::collections::BTreeSet;

use sluice_catalog::enforcer::{
    NotNullEnforcer, TypeLengthEnforcer, LENGTH_TABLE_OPTION as TABLE_LENGTH_ENFORCER, TABLE_OPTION as TABLE_NOT_NULL_ENFORCER,
};

use crate::cdc::PostgresCdcOptions;
use crate::datagen::DatagenOptions;
use crate::error::{ConnectorError, Result};
use crate::kafka::KafkaOptions;
use crate::mongo::MongoOptions;

/// What backs a table, decided by its `connector` option.
#[derive(Debug, Clone, PartialEq)]
pub enum TableConnector {
    /// No `connector` option: the table is a topic of the configured log (embedded by default).
    Topic {
        /// `'partitions' = 'N'`: number of partitions of the topic (default 1).
        partitions: u32,
        /// An outside system the topic is fed from or delivered to, if any: the table is still
        /// a topic (jobs and batch SELECTs read it as any other), and a connector task copies
        /// rows between it and the outside system (see `sluice_server::connect`).
        external: Option<External>,
    },
    /// `'connector' = 'datagen'`: Flink's generator of test rows (a source only).
    Datagen(DatagenOptions),
    /// `'connector' = 'blackhole'`: Flink's sink that discards every row (a sink only).
    Blackhole,
}

/// A connector of a table to an outside system, by the table's `connector` option.
#[derive(Debug, Clone, PartialEq)]
pub enum External {
    /// `'connector' = 'kafka'`, Flink's Kafka connector: a source, or a sink once a persistent
    /// query writes into the table.
    Kafka(KafkaOptions),
    /// `'connector' = 'postgres-cdc'`, Flink CDC's Postgres connector: a source.
    PostgresCdc(PostgresCdcOptions),
    /// `'connector' = 'mongodb'`, Flink's MongoDB connector: a sink.
    MongoDb(MongoOptions),
}

/// Reads `WITH (...)` options key by key and rejects, at [`OptionReader::finish`], the keys no
/// one asked for, naming them (RisingWave and Flink both refuse unknown options).
pub struct OptionReader<'a> {
    map: &'a BTreeMap<String, String>,
    used: BTreeSet<String>,
    what: String,
}

impl<'a> OptionReader<'a> {
    /// A reader over `map`; `what` names the connector in error messages.
    pub fn new(map: &'a BTreeMap<String, String>, what: &str) -> Self {
        let mut used = BTreeSet::new();
        used.insert("connector".to_string());
        used.insert("connector.class".to_string());
        OptionReader { map, used, what: what.to_string() }
    }

    /// The value of `key`, if given.
    pub fn get(&mut self, key: &str) -> Option<&'a str> {
        self.used.insert(key.to_string());
        self.map.get(key).map(|s| s.as_str())
    }

    /// The value of the first of `keys` that is given (aliases, as Debezium's renamed options).
    pub fn get_any(&mut self, keys: &[&str]) -> Option<&'a str> {
        let mut found = None;
        for k in keys {
            let v = self.get(k);
            if found.is_none() {
                found = v;
            }
        }
        found
    }

    /// The value of `key`. Errors: [`ConnectorError::InvalidOption`] when it is missing.
    pub fn required(&mut self, key: &str) -> Result<&'a str> {
        self.get(key).ok_or_else(|| {
            ConnectorError::InvalidOption(format!("option '{key}' is required for {}", self.what))
        })
    }

    /// The value of `key` parsed as `T`, or `default`. Errors: a value that does not parse.
    pub fn parse_or<T: std::str::FromStr>(&mut self, key: &str, default: T) -> Result<T> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                ConnectorError::InvalidOption(format!("option '{key}' has a bad value '{v}' for {}", self.what))
            }),
        }
    }

    /// One of `allowed`, or `default`. Errors: any other value, listing the allowed ones.
    pub fn choice(&mut self, key: &str, allowed: &[&str], default: &str) -> Result<String> {
        let v = self.get(key).unwrap_or(default);
        if allowed.contains(&v) {
            Ok(v.to_string())
        } else {
            Err(ConnectorError::InvalidOption(format!(
                "option '{key}' must be one of {} for {}, got '{v}'",
                allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", "),
                self.what
            )))
        }
    }

    /// Every option whose key starts with `prefix`, with the prefix removed.
    pub fn prefixed(&mut self, prefix: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in self.map {
            if let Some(rest) = k.strip_prefix(prefix) {
                self.used.insert(k.clone());
                out.insert(rest.to_string(), v.clone());
            }
        }
        out
    }

    /// Errors: [`ConnectorError::InvalidOption`] naming the first key that was never read.
    pub fn finish(self) -> Result<()> {
        match self.map.keys().find(|k| !self.used.contains(*k)) {
            Some(k) => Err(unknown(k, &self.what)),
            None => Ok(()),
        }
    }
}

/// The `partitions` option of a topic-backed table (default 1).
fn partitions_option(r: &mut OptionReader<'_>) -> Result<u32> {
    match r.get("partitions") {
        None => Ok(1),
        Some(v) => v.parse().ok().filter(|p| *p >= 1).ok_or_else(|| {
            ConnectorError::InvalidOption(format!("option 'partitions' must be a positive integer, got '{v}'"))
        }),
    }
}

/// The source option that lets a partition without data stop holding the watermark back
/// (Flink's `scan.watermark.idle-timeout`, FLIP-296; the session-wide equivalent is
/// `table.exec.source.idle-timeout`).
pub const WATERMARK_IDLE_TIMEOUT: &str = "scan.watermark.idle-timeout";

/// Parses a duration as Flink writes them (`TimeUtils.parseDuration`): a number and a unit,
/// `ms`, `s`, `min`, `h` or `d` (or their long forms, `500 ms`, `5 s`, `1 min`); a bare number
/// is milliseconds.
///
/// Errors: [`ConnectorError::InvalidOption`] naming `key` when `v` is not such a duration.
pub fn parse_duration(key: &str, v: &str) -> Result<std::time::Duration> {
    let bad = || ConnectorError::InvalidOption(format!("option '{key}' must be a duration such as '500 ms', '5 s' or '1 min', got '{v}'"));
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split].parse().map_err(|_| bad())?;
    let ms_per = match t[split..].trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_millis(n.checked_mul(ms_per).ok_or_else(bad)?))
}

/// The table's watermark idle timeout ([`WATERMARK_IDLE_TIMEOUT`]), if set.
///
/// Errors: [`ConnectorError::InvalidOption`] for a value that is not a duration.
pub fn watermark_idle_timeout(options: &BTreeMap<String, String>) -> Result<Option<std::time::Duration>> {
    options.get(WATERMARK_IDLE_TIMEOUT).map(|v| parse_duration(WATERMARK_IDLE_TIMEOUT, v)).transpose()
}

/// Parses a table's options.
///
/// Errors: [`ConnectorError::InvalidOption`] for an unknown connector, an unknown key or a bad
/// value, naming the key.
pub fn parse_table_options(options: &BTreeMap<String, String>) -> Result<TableConnector> {
    if let Some(v) = options.get(TABLE_NOT_NULL_ENFORCER) {
        // Any sink may carry it; the job reads it (see `NotNullEnforcer::for_sink`).
        NotNullEnforcer::parse(TABLE_NOT_NULL_ENFORCER, v).map_err(|e| ConnectorError::InvalidOption(e.to_string()))?;
        let mut rest = options.clone();
        rest.remove(TABLE_NOT_NULL_ENFORCER);
        return parse_table_options(&rest);
    }
    if let Some(v) = options.get(TABLE_LENGTH_ENFORCER) {
        // Any sink may carry it; the job reads it (see `TypeLengthEnforcer::for_sink`).
        TypeLengthEnforcer::parse(TABLE_LENGTH_ENFORCER, v).map_err(|e| ConnectorError::InvalidOption(e.to_string()))?;
        let mut rest = options.clone();
        rest.remove(TABLE_LENGTH_ENFORCER);
        return parse_table_options(&rest);
    }
    if let Some(v) = options.get(sluice_catalog::state_ttl::TABLE_OPTION) {
        // Any sink may carry it; the job reads it (see `ttl_for_sink`).
        let key = sluice_catalog::state_ttl::TABLE_OPTION;
        sluice_catalog::state_ttl::parse_ttl(key, v).map_err(|e| ConnectorError::InvalidOption(e.to_string()))?;
        let mut rest = options.clone();
        rest.remove(key);
        return parse_table_options(&rest);
    }
    if options.contains_key(WATERMARK_IDLE_TIMEOUT) {
        // Any source may carry it; the job reads it (see `watermark_idle_timeout`).
        watermark_idle_timeout(options)?;
        let mut rest = options.clone();
        rest.remove(WATERMARK_IDLE_TIMEOUT);
        return parse_table_options(&rest);
    }
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
            Ok(TableConnector::Topic { partitions, external: None })
        }
        Some("kafka") | Some("upsert-kafka") => {
            let mut r = OptionReader::new(options, "connector 'kafka'");
            let partitions = partitions_option(&mut r)?;
            let k = KafkaOptions::parse(&mut r)?;
            r.finish()?;
            Ok(TableConnector::Topic { partitions, external: Some(External::Kafka(k)) })
        }
        Some("postgres-cdc") => {
            let mut r = OptionReader::new(options, "connector 'postgres-cdc'");
            let partitions = partitions_option(&mut r)?;
            let c = PostgresCdcOptions::parse_flink(&mut r)?;
            r.finish()?;
            Ok(TableConnector::Topic { partitions, external: Some(External::PostgresCdc(c)) })
        }
        Some("mongodb") => {
            let mut r = OptionReader::new(options, "connector 'mongodb'");
            let partitions = partitions_option(&mut r)?;
            let m = MongoOptions::parse_flink(&mut r)?;
            r.finish()?;
            Ok(TableConnector::Topic { partitions, external: Some(External::MongoDb(m)) })
        }
        Some("datagen") => Ok(TableConnector::Datagen(DatagenOptions::parse(options)?)),
        Some("blackhole") => {
            if let Some(k) = options.keys().find(|k| k.as_str() != "connector") {
                return Err(unknown(k, "connector 'blackhole'"));
            }
            Ok(TableConnector::Blackhole)
        }
        Some(other) => Err(ConnectorError::InvalidOption(format!(
            "unknown connector '{other}' (supported: kafka, upsert-kafka, postgres-cdc, mongodb, datagen, blackhole; tables without a connector are topics)"
        ))),
    }
}

pub(crate) fn unknown(key: &str, what: &str) -> ConnectorError {
    ConnectorError::InvalidOption(format!("unknown option '{key}' for {what}"))
}

/// `sql` with the values of secret options hidden, for logs: a `'...password...'`,
/// `'...secret...'` or `'...jaas...'` key's value becomes `***`, and so does the user-info part of
/// a URI (`mongodb://user:pw@host` becomes `mongodb://***@host`).
pub fn redact_sql(sql: &str) -> String {
    use std::sync::OnceLock;
    static SECRET: OnceLock<regex::Regex> = OnceLock::new();
    static URI: OnceLock<regex::Regex> = OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        regex::Regex::new(r"(?i)('[^']*(?:password|secret|jaas)[^']*'\s*=\s*)'(?:[^']|'')*'").expect("valid regex")
    });
    let uri = URI.get_or_init(|| regex::Regex::new(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^'@/\s]*@").expect("valid regex"));
    let s = secret.replace_all(sql, "$1'***'");
    uri.replace_all(&s, "$1***@").into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn any_table_takes_the_sink_enforcers() {
        let opts = |v: &str| [("sink.not-null-enforcer".to_string(), v.to_string())].into_iter().collect();
        assert!(matches!(super::parse_table_options(&opts("drop")), Ok(super::TableConnector::Topic { .. })));
        let e = super::parse_table_options(&opts("maybe")).unwrap_err().to_string();
        assert!(e.contains("'sink.not-null-enforcer'") && e.contains("'maybe'"), "{e}");
        let opts = |v: &str| [("sink.type-length-enforcer".to_string(), v.to_string())].into_iter().collect();
        assert!(matches!(super::parse_table_options(&opts("trim_pad")), Ok(super::TableConnector::Topic { .. })));
        let e = super::parse_table_options(&opts("cut")).unwrap_err().to_string();
        assert!(e.contains("'sink.type-length-enforcer'") && e.contains("'cut'"), "{e}");
    }

    #[test]
    fn secrets_are_hidden_in_statement_text() {
        let sql = "CREATE TABLE t (a INT) WITH ('password' = 'it''s', 'database.password' = 'x', 'uri' = 'mongodb://u:p@h:1', 'port' = '5')";
        assert_eq!(
            super::redact_sql(sql),
            "CREATE TABLE t (a INT) WITH ('password' = '***', 'database.password' = '***', 'uri' = 'mongodb://***@h:1', 'port' = '5')"
        );
    }
}
