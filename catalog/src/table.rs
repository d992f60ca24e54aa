//! Catalog entries: tables and persistent queries (jobs).
//!
//! A table's definition is kept as the `CREATE TABLE` text the user wrote plus its parsed form,
//! so `SHOW CREATE TABLE` returns what was typed and a restart rebuilds the same plan.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::change::ChangeBatch;
use crate::enforcer::NotNullEnforcer;
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

    /// PostgreSQL's name of a length-limited character type, as its errors print it:
    /// `character varying(3)`, `character(3)`.
    fn character_type_name(&self, n: usize) -> String {
        let name = self.sql_type.split('(').next().unwrap_or("").trim().to_uppercase();
        if name == "CHAR" || name == "CHARACTER" {
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

    /// Applies the declared lengths of the `VARCHAR(n)` and `CHAR(n)` columns (see
    /// [`ColumnDef::max_chars`]) to rows about to be written; `batch` is in the physical schema.
    /// As in PostgreSQL, a value longer than n characters is an error unless the excess is all
    /// spaces, which are cut off. Retractions (`-D`, `-U`) are not checked: they name rows that
    /// are already stored.
    ///
    /// Errors: [`CatalogError::ValueTooLong`] (SQLSTATE 22001 at the server), and nothing of the
    /// batch should be written then.
    pub fn enforce_lengths(&self, batch: ChangeBatch) -> Result<ChangeBatch> {
        let physical = self.columns.iter().filter(|c| c.computed.is_none());
        let mut replaced: Option<Vec<ArrayRef>> = None;
        for (i, c) in physical.enumerate() {
            let Some(n) = c.max_chars() else { continue };
            let Some(values) = batch.data.columns().get(i).and_then(|a| a.as_string_opt::<i32>()) else {
                continue;
            };
            // A value of at most n bytes has at most n characters: the common case.
            if values.value_data().len() <= n {
                continue;
            }
            // The byte length each inserted value is cut to, when only spaces follow it.
            let mut cuts: Vec<Option<usize>> = vec![None; values.len()];
            let mut any_cut = false;
            for (r, v) in values.iter().enumerate() {
                let Some(s) = v.filter(|s| s.len() > n && batch.ops[r].is_insertion()) else { continue };
                if let Some((end, _)) = s.char_indices().nth(n) {
                    if s.as_bytes()[end..].iter().any(|b| *b != b' ') {
                        return Err(CatalogError::ValueTooLong(format!(
                            "value too long for type {} (column \"{}\" of table \"{}\")",
                            c.character_type_name(n),
                            c.name,
                            self.name
                        )));
                    }
                    cuts[r] = Some(end);
                    any_cut = true;
                }
            }
            if any_cut {
                let cut: StringArray = values
                    .iter()
                    .zip(&cuts)
                    .map(|(v, cut)| v.map(|s| cut.map_or(s, |end| &s[..end])))
                    .collect();
                replaced.get_or_insert_with(|| batch.data.columns().to_vec())[i] = Arc::new(cut);
            }
        }
        match replaced {
            None => Ok(batch),
            Some(columns) => batch.with_columns(batch.schema(), columns),
        }
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
    use crate::change::Op;
    use arrow::array::RecordBatch;

    fn table() -> TableDef {
        let col = |name: &str, sql_type: &str| ColumnDef {
            name: name.into(),
            data_type: DataType::Utf8.to_string(),
            nullable: true,
            computed: None,
            sql_type: sql_type.into(),
        };
        TableDef {
            name: "t".into(),
            columns: vec![col("v", "VARCHAR(3)"), col("c", "CHARACTER(2)"), col("s", "STRING")],
            primary_key: vec![],
            watermark: None,
            options: BTreeMap::new(),
            create_sql: String::new(),
            partitions: 1,
        }
    }

    fn batch(v: &str, c: &str, op: Op) -> ChangeBatch {
        let t = table();
        let cols: Vec<ArrayRef> = [v, c, "long enough"].iter().map(|s| Arc::new(StringArray::from(vec![*s])) as ArrayRef).collect();
        ChangeBatch::new(RecordBatch::try_new(t.physical_schema().unwrap(), cols).unwrap(), vec![op])
    }

    #[test]
    fn declared_lengths_as_postgres() {
        let t = table();
        assert_eq!(t.columns[0].max_chars(), Some(3));
        assert_eq!(t.columns[2].max_chars(), None);
        assert_eq!(t.enforce_lengths(batch("äbc", "ab", Op::Insert)).unwrap().to_text(), "+I äbc ab long enough\n");
        let e = t.enforce_lengths(batch("abcdef", "ab", Op::Insert)).unwrap_err();
        assert!(e.to_string().starts_with("value too long for type character varying(3)"), "{e}");
        let e = t.enforce_lengths(batch("a", "abc", Op::UpdateAfter)).unwrap_err();
        assert!(e.to_string().starts_with("value too long for type character(2)"), "{e}");
        // Trailing spaces beyond the length are cut, as PostgreSQL does.
        assert_eq!(t.enforce_lengths(batch("ab    ", "x", Op::Insert)).unwrap().to_text(), "+I ab  x long enough\n");
        // A retraction names a stored row: not checked.
        assert!(t.enforce_lengths(batch("abcdef", "ab", Op::Delete)).is_ok());
    }
}
