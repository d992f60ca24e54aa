//! Catalog entries: tables and persistent queries (jobs).
//!
//! A table's definition is kept as the `CREATE TABLE` text the user wrote plus its parsed form,
//! so `SHOW CREATE TABLE` returns what was typed and a restart rebuilds the same plan.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::enforcer::{NotNullEnforcer, TypeLengthEnforcer};
use crate::error::{CatalogError, Result};

/// One column of a table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnDef {
    /// Column name, case preserved as declared (unquoted names are lower-cased by the planner).
    pub name: String,
    /// The Arrow type, stored in its `Display` form (e.g. `Timestamp(Millisecond, None)`).
    pub data_type: String,
    /// False for `NOT NULL` columns and primary-key columns.
    pub nullable: bool,
    /// The SQL text of the expression for a computed column (`ts AS TO_TIMESTAMP_LTZ(seq, 3)`):
    /// computed columns are evaluated when a row is written and stored like other columns.
    pub computed: Option<String>,
    /// The type as the user wrote it (`STRING`, `TIMESTAMP(0)`), for `DESCRIBE`.
    pub sql_type: String,
}

impl ColumnDef {
    /// The Arrow data type of the column.
    pub fn arrow_type(&self) -> Result<DataType> {
        DataType::from_str(&self.data_type)
            .map_err(|e| CatalogError::Corrupt(format!("column {}: {e}", self.name)))
    }

    /// The declared length of a `VARCHAR(n)` or `CHAR(n)` column (also spelled
    /// `CHARACTER VARYING(n)`, `CHARACTER(n)`): at most n characters, as PostgreSQL's
    /// `character varying(n)`. Read from [`ColumnDef::sql_type`], which the planner writes as
    /// `VARCHAR(3)`, so tables created before lengths were enforced are checked too. None for
    /// other types, and for `VARCHAR`, `STRING` and `TEXT` without a length.
    pub fn max_chars(&self) -> Option<usize> {
        let (name, rest) = self.sql_type.split_once('(')?;
        let name = name.trim().to_uppercase();
        if !matches!(name.as_str(), "VARCHAR" | "CHAR" | "CHARACTER" | "CHARACTER VARYING") {
            return None;
        }
        rest.strip_suffix(')')?.trim().parse().ok()
    }

    /// True for a `CHAR(n)` (`CHARACTER(n)`) column: fixed-length, its values blank-padded to
    /// n characters when written, as PostgreSQL stores `character(n)` (see
    /// [`crate::lengths`]). False for `VARCHAR(n)` and for `CHAR` without a length, which has
    /// no limit here.
    pub fn is_blank_padded(&self) -> bool {
        let name = self.sql_type.split('(').next().unwrap_or("").trim().to_uppercase();
        (name == "CHAR" || name == "CHARACTER") && self.max_chars().is_some()
    }

    /// PostgreSQL's name of a length-limited character type, as its errors print it:
    /// `character varying(3)`, `character(3)`.
    pub(crate) fn character_type_name(&self, n: usize) -> String {
        if self.is_blank_padded() {
            format!("character({n})")
        } else {
            format!("character varying({n})")
        }
    }
}

/// A watermark declaration, as Flink's `WATERMARK FOR col AS col - INTERVAL '5' SECOND`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WatermarkDef {
    /// The event-time column (a timestamp column of the table).
    pub column: String,
    /// The watermark expression's SQL text, evaluated per row; the watermark of a partition is
    /// the largest value seen so far.
    pub expr: String,
}

/// A table: a schema over a topic.
///
/// With a primary key the topic is an upsert changelog (each write replaces the row with the
/// same key); without one it is append-only unless a persistent query writes retractions into
/// it, in which case the table carries that changelog (see README, "Changelogs").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableDef {
    /// Table name as the user wrote it (quoted names keep case and dots, e.g. `ORCL.ADMIN.CUSTOMERS`).
    pub name: String,
    /// Columns in declaration order, computed columns included.
    pub columns: Vec<ColumnDef>,
    /// Primary-key column names (`PRIMARY KEY (...) NOT ENFORCED`), empty when there is none.
    pub primary_key: Vec<String>,
    /// The watermark declaration, if any.
    pub watermark: Option<WatermarkDef>,
    /// The `WITH (...)` options, keys lower-cased.
    pub options: BTreeMap<String, String>,
    /// The statement text as the user sent it.
    pub create_sql: String,
    /// Number of partitions of the backing topic (at least 1).
    pub partitions: u32,
}

impl TableDef {
    /// The Arrow schema of the table's rows (without the op column).
    pub fn schema(&self) -> Result<SchemaRef> {
        let fields = self
            .columns
            .iter()
            .map(|c| Ok(Field::new(&c.name, c.arrow_type()?, c.nullable)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The Arrow schema of what the topic stores: the columns that are not computed.
    /// Computed columns are evaluated when the table is read, as in Flink.
    pub fn physical_schema(&self) -> Result<SchemaRef> {
        let fields = self
            .columns
            .iter()
            .filter(|c| c.computed.is_none())
            .map(|c| Ok(Field::new(&c.name, c.arrow_type()?, c.nullable)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    /// True when some column is computed.
    pub fn has_computed_columns(&self) -> bool {
        self.columns.iter().any(|c| c.computed.is_some())
    }

    /// The topic that backs the table: its name.
    pub fn topic(&self) -> &str {
        &self.name
    }

    /// True when the table has a primary key (an upsert table).
    pub fn is_upsert(&self) -> bool {
        !self.primary_key.is_empty()
    }

    /// Index of a column by exact name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The value of the `connector` option, if the table has one (`datagen`, `blackhole`, ...).
    pub fn connector(&self) -> Option<&str> {
        self.options.get("connector").map(|s| s.as_str())
    }
}

/// Lifecycle of a persistent query.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum JobState {
    /// Running (or resuming after a restart).
    Running,
    /// Stopped by `STOP JOB`; kept in `SHOW JOBS` but never resumed.
    Stopped,
    /// Failed with an error; the message is in [`JobDef::error`].
    Failed,
}

impl JobState {
    /// Upper-case name as `SHOW JOBS` prints it (Flink's job states).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "RUNNING",
            JobState::Stopped => "STOPPED",
            JobState::Failed => "FAILED",
        }
    }
}

/// A persistent query: `INSERT INTO sink SELECT ...`, kept running until stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobDef {
    /// Job id, a 32-hex-digit string as Flink prints job ids.
    pub id: String,
    /// The full `INSERT INTO ... SELECT ...` text.
    pub sql: String,
    /// The table the job writes.
    pub sink: String,
    /// The tables the job reads.
    pub sources: Vec<String>,
    /// Current state.
    pub state: JobState,
    /// The error that failed the job, if it failed.
    pub error: Option<String>,
    /// Creation order, used to restart jobs in the order they were created.
    pub seq: u64,
    /// What the job does with an output row that has NULL in a NOT NULL column of the sink,
    /// chosen at creation ([`NotNullEnforcer::for_sink`]) or by `RESUME JOB ... WITH (...)`;
    /// `ERROR` for jobs stored before the field existed, which is how they behaved.
    #[serde(default)]
    pub not_null_enforcer: NotNullEnforcer,
    /// What the job does with a value longer than its sink column's `VARCHAR(n)`/`CHAR(n)`,
    /// and with a `CHAR(n)` value shorter than n: chosen at creation
    /// ([`TypeLengthEnforcer::for_sink`], `ERROR` unless set) or by `RESUME JOB ... WITH
    /// (...)`. `IGNORE` for jobs stored before the field existed, which is how they behaved
    /// ([`TypeLengthEnforcer::stored_before_enforcer`]).
    #[serde(default = "TypeLengthEnforcer::stored_before_enforcer")]
    pub type_length_enforcer: TypeLengthEnforcer,
    /// How long its joins and non-windowed aggregates keep state for a key they have not
    /// written, in ms ([`crate::state_ttl`]; `None`: forever, also for jobs stored before the
    /// field existed), chosen at creation ([`crate::state_ttl::ttl_for_sink`]) or by `RESUME
    /// JOB ... WITH (...)`.
    #[serde(default)]
    pub state_ttl_ms: Option<u64>,
}

/// A connector created with `CREATE SOURCE CONNECTOR` / `CREATE SINK CONNECTOR` (ksqlDB's
/// statements over Kafka Connect's configuration keys).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectorDef {
    /// Connector name.
    pub name: String,
    /// True for a source connector, false for a sink.
    pub source: bool,
    /// The `WITH (...)` options, keys lower-cased. They may hold a password: never print them
    /// whole (see [`ConnectorDef::redacted_options`]).
    pub options: BTreeMap<String, String>,
    /// The tables the connector writes (a source: one per captured table) or reads (a sink).
    pub tables: Vec<String>,
    /// Creation order.
    pub seq: u64,
}

impl std::fmt::Debug for ConnectorDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorDef")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("options", &self.redacted_options())
            .field("tables", &self.tables)
            .finish()
    }
}

impl ConnectorDef {
    /// The `connector.class` option (or `connector`).
    pub fn class(&self) -> &str {
        self.options.get("connector.class").or_else(|| self.options.get("connector")).map(|s| s.as_str()).unwrap_or("")
    }

    /// The options with every secret (a key naming a password, or a URI with credentials) as `***`.
    pub fn redacted_options(&self) -> BTreeMap<String, String> {
        redact_options(&self.options)
    }
}

/// `options` with the values of secret keys replaced by `***`: keys containing `password` or
/// `secret`, and URIs (`uri`, `connection.uri`) that carry a `user:password@` part.
pub fn redact_options(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    options
        .iter()
        .map(|(k, v)| {
            let secret = k.contains("password") || k.contains("secret") || k.contains("sasl.jaas.config");
            let uri_with_password = k.ends_with("uri") && v.contains('@') && v.contains("://");
            (k.clone(), if secret || uri_with_password { "***".to_string() } else { v.clone() })
        })
        .collect()
}

/// `text` (a statement as the user typed it) with the values of `options`' secrets replaced by
/// `***`, for `SHOW CREATE TABLE` and logs.
pub fn redact_text(text: &str, options: &BTreeMap<String, String>) -> String {
    let redacted = redact_options(options);
    let mut out = text.to_string();
    for (k, v) in options {
        if redacted.get(k).map(|r| r != v).unwrap_or(false) && !v.is_empty() {
            out = out.replace(&format!("'{}'", v.replace('\'', "''")), "'***'");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_stored_before_the_length_enforcer_ignore_lengths() {
        let old = r#"{"id":"j1","sql":"INSERT INTO d SELECT * FROM s","sink":"d","sources":["s"],"state":"Running","error":null,"seq":1}"#;
        let job: JobDef = serde_json::from_str(old).unwrap();
        assert_eq!((job.not_null_enforcer, job.type_length_enforcer), (NotNullEnforcer::Error, TypeLengthEnforcer::Ignore));
        let again: JobDef = serde_json::from_str(&serde_json::to_string(&JobDef { type_length_enforcer: TypeLengthEnforcer::TrimPad, ..job }).unwrap()).unwrap();
        assert_eq!(again.type_length_enforcer, TypeLengthEnforcer::TrimPad);
    }

    #[test]
    fn blank_padded_types() {
        let col = |sql_type: &str| ColumnDef { name: "c".into(), data_type: "Utf8".into(), nullable: true, computed: None, sql_type: sql_type.into() };
        assert!(col("CHAR(2)").is_blank_padded() && col("character(2)").is_blank_padded());
        assert!(!col("CHAR").is_blank_padded() && !col("VARCHAR(2)").is_blank_padded() && !col("CHARACTER VARYING(2)").is_blank_padded());
        assert_eq!(col("CHARACTER VARYING(4)").character_type_name(4), "character varying(4)");
        assert_eq!(col("CHAR(4)").character_type_name(4), "character(4)");
    }
}
