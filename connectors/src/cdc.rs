//! Change data capture from PostgreSQL logical replication (pgoutput), with no JVM and no
//! Debezium process.
//!
//! A capture task follows the steps Debezium's Postgres connector and Flink CDC take:
//! 1. make sure a publication covers the captured tables (`CREATE PUBLICATION ... FOR TABLE`);
//! 2. on first start, create the replication slot with an exported snapshot, read every captured
//!    table inside a `REPEATABLE READ` transaction at that snapshot (tokio-postgres, `COPY ... TO
//!    STDOUT`), and append the rows as inserts; the snapshot's consistent point is the first
//!    position;
//! 3. stream the slot's changes from the stored position (`pg_walstream` decodes pgoutput):
//!    inserts, updates (an update-before when the old row is sent, then an update-after) and
//!    deletes become changelog rows, appended per committed transaction together with the
//!    transaction's end LSN; then the LSN is confirmed to Postgres so it can recycle WAL.
//!
//! A restart resumes from the stored LSN without a new snapshot. A slot that was dropped or
//! invalidated (`wal_status = 'lost'`) is a connector error, never a silent gap. Passwords never
//! appear in errors: they are scrubbed from every message.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray, UInt32Array};
use arrow::compute::CastOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use futures::StreamExt;
use pg_walstream::{
    CancellationToken, ColumnValue, EventType, LogicalReplicationStream, ReplicationStreamConfig, RetryConfig,
    RowData, StreamingMode,
};
use sluice_catalog::{ChangeBatch, Op};

use crate::error::{ConnectorError, Result};
use crate::options::OptionReader;
use crate::smt::{check_fields, parse_transforms, Shape, Transform};
use crate::task::{Backoff, IngestTarget, TaskState, TaskStatus};

/// Connection and capture options of a Postgres source, from either the Flink CDC table options
/// or the Debezium connector options.
#[derive(Clone, PartialEq)]
pub struct PostgresCdcOptions {
    /// `hostname` / `database.hostname`.
    pub host: String,
    /// `port` / `database.port` (default 5432).
    pub port: u16,
    /// `username` / `database.user`.
    pub user: String,
    /// `password` / `database.password`; never printed.
    pub password: String,
    /// `database-name` / `database.dbname`.
    pub database: String,
    /// Flink CDC: the one captured table as (`schema-name`, `table-name`).
    pub table: Option<(String, String)>,
    /// Debezium: `table.include.list`, regular expressions matched against `schema.table`.
    pub include: Vec<String>,
    /// `slot.name` (Debezium's default `debezium`).
    pub slot: String,
    /// `publication.name` / `debezium.publication.name` (default `dbz_publication`, as Debezium).
    pub publication: String,
    /// `scan.startup.mode` = `initial` / `snapshot.mode` = `initial`: take a snapshot first
    /// (default); `latest-offset` / `never` / `no_data`: only changes from now on.
    pub snapshot: bool,
    /// Debezium: `topic.prefix` (or `database.server.name`), the first part of topic names.
    pub topic_prefix: Option<String>,
    /// Debezium: the single message transforms.
    pub transforms_present: bool,
}

impl std::fmt::Debug for PostgresCdcOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCdcOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"***")
            .field("database", &self.database)
            .field("table", &self.table)
            .field("include", &self.include)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .finish()
    }
}

impl PostgresCdcOptions {
    /// Parses Flink CDC's `postgres-cdc` table options.
    ///
    /// Errors: a missing required option, a plugin other than `pgoutput`, a bad number.
    pub fn parse_flink(r: &mut OptionReader<'_>) -> Result<PostgresCdcOptions> {
        let host = r.required("hostname")?.to_string();
        let port = r.parse_or("port", 5432u16)?;
        let user = r.required("username")?.to_string();
        let password = r.get("password").unwrap_or("").to_string();
        let database = r.required("database-name")?.to_string();
        let schema = r.get("schema-name").unwrap_or("public").to_string();
        let table = r.required("table-name")?.to_string();
        let slot = r.required("slot.name")?.to_string();
        r.choice("decoding.plugin.name", &["pgoutput"], "pgoutput")?;
        let publication = r.get("debezium.publication.name").map(str::to_string).unwrap_or_else(|| format!("sluice_{slot}"));
        let snapshot = r.choice("scan.startup.mode", &["initial", "latest-offset"], "initial")? == "initial";
        let _ = r.get("changelog-mode");
        let _ = r.get("scan.incremental.snapshot.enabled");
        Ok(PostgresCdcOptions {
            host,
            port,
            user,
            password,
            database,
            table: Some((schema, table)),
            include: Vec::new(),
            slot,
            publication,
            snapshot,
            topic_prefix: None,
            transforms_present: false,
        })
    }

    /// Parses Debezium's `io.debezium.connector.postgresql.PostgresConnector` options (a `CREATE
    /// SOURCE CONNECTOR`), with the transforms.
    ///
    /// Errors: a missing required option, a plugin other than `pgoutput`, a bad transform.
    pub fn parse_debezium(r: &mut OptionReader<'_>) -> Result<(PostgresCdcOptions, Vec<Transform>)> {
        let host = r.required("database.hostname")?.to_string();
        let port = r.parse_or("database.port", 5432u16)?;
        let user = r.required("database.user")?.to_string();
        let password = r.get("database.password").unwrap_or("").to_string();
        let database = r.required("database.dbname")?.to_string();
        let topic_prefix = r.get_any(&["topic.prefix", "database.server.name"]).map(str::to_string).ok_or_else(|| {
            ConnectorError::InvalidOption("option 'topic.prefix' (or 'database.server.name') is required".into())
        })?;
        let include: Vec<String> = r
            .get_any(&["table.include.list", "table.whitelist"])
            .map(|s| s.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect())
            .unwrap_or_default();
        let slot = r.get("slot.name").unwrap_or("debezium").to_string();
        r.choice("plugin.name", &["pgoutput"], "pgoutput")?;
        let publication = r.get("publication.name").unwrap_or("dbz_publication").to_string();
        let snapshot = r.choice("snapshot.mode", &["initial", "never", "no_data"], "initial")? == "initial";
        // Accepted as Debezium documents them; they do not change what Sluice does.
        for k in [
            "tasks.max",
            "key.converter",
            "value.converter",
            "key.converter.schemas.enable",
            "value.converter.schemas.enable",
            "decimal.handling.mode",
            "time.precision.mode",
            "publication.autocreate.mode",
            "output.data.format",
            "output.key.format",
        ] {
            let _ = r.get(k);
        }
        let transforms = parse_transforms(r)?;
        Ok((
            PostgresCdcOptions {
                host,
                port,
                user,
                password,
                database,
                table: None,
                include,
                slot,
                publication,
                snapshot,
                topic_prefix: Some(topic_prefix),
                transforms_present: !transforms.is_empty(),
            },
            transforms,
        ))
    }

    /// A tokio-postgres configuration for ordinary queries.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host).port(self.port).user(&self.user).dbname(&self.database);
        c.connect_timeout(Duration::from_secs(10));
        if !self.password.is_empty() {
            c.password(&self.password);
        }
        c
    }

    /// A libpq connection string for the replication connection.
    fn replication_dsn(&self) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut dsn = format!(
            "host={} port={} user={} dbname={} replication=database",
            q(&self.host),
            self.port,
            q(&self.user),
            q(&self.database)
        );
        if !self.password.is_empty() {
            dsn.push_str(&format!(" password={}", q(&self.password)));
        }
        dsn
    }

    /// `text` with the password replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        if self.password.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.password, "***")
        }
    }

    /// Connects for ordinary queries. Errors: Postgres unreachable (scrubbed message).
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = self
            .pg_config()
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| ConnectorError::External(self.scrub(&format!("postgres {}:{}: {e}", self.host, self.port))))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

/// One column of a captured Postgres table.
#[derive(Debug, Clone)]
pub struct PgColumn {
    /// Column name.
    pub name: String,
    /// Postgres type name (`int8`, `numeric`, `timestamptz`, ...).
    pub pg_type: String,
    /// The Arrow type Sluice stores it as.
    pub arrow_type: DataType,
    /// Declared NOT NULL.
    pub not_null: bool,
}

/// A captured Postgres table: its columns and primary key, read from the catalog.
#[derive(Debug, Clone)]
pub struct PgTable {
    /// Schema (namespace) name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in order.
    pub columns: Vec<PgColumn>,
    /// Primary-key columns.
    pub primary_key: Vec<String>,
}

impl PgTable {
    /// The Arrow schema of the captured rows.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns.iter().map(|c| Field::new(&c.name, c.arrow_type.clone(), true)).collect::<Vec<_>>(),
        ))
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The Arrow type Sluice gives a Postgres type, as Debezium maps them (with
/// `decimal.handling.mode` = `precise` for numerics with a declared scale, `double` otherwise).
pub fn arrow_type_of(pg_type: &str, numeric_precision: Option<i32>, numeric_scale: Option<i32>) -> DataType {
    match pg_type {
        "int2" => DataType::Int16,
        "int4" => DataType::Int32,
        "int8" => DataType::Int64,
        "float4" => DataType::Float32,
        "float8" => DataType::Float64,
        "numeric" => match (numeric_precision, numeric_scale) {
            (Some(p), Some(s)) if p <= 38 => DataType::Decimal128(p as u8, s as i8),
            _ => DataType::Float64,
        },
        "bool" => DataType::Boolean,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamptz" => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        "bytea" => DataType::Binary,
        _ => DataType::Utf8,
    }
}

/// The SQL type name Sluice's DDL uses for an Arrow type (for generated `CREATE TABLE` text).
pub fn sql_type_of(dt: &DataType) -> String {
    match dt {
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP(6)".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP_LTZ(6)".into(),
        DataType::Binary => "BYTES".into(),
        _ => "STRING".into(),
    }
}

/// Reads the captured tables' columns and keys from Postgres's catalog: the Flink CDC table, or
/// every table whose `schema.table` matches one of `include` (all user tables when empty).
///
/// Errors: Postgres unreachable, no table matching, a bad pattern.
pub async fn discover(opts: &PostgresCdcOptions) -> Result<Vec<PgTable>> {
    let client = opts.connect().await?;
    let ext = |e: tokio_postgres::Error| ConnectorError::External(opts.scrub(&format!("postgres: {e}")));
    let rows = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(ext)?;
    let patterns = opts
        .include
        .iter()
        .map(|p| regex::Regex::new(&format!("^(?:{p})$")))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ConnectorError::InvalidOption(format!("option 'table.include.list': {e}")))?;
    let mut out = Vec::new();
    for row in rows {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let wanted = match &opts.table {
            Some((s, t)) => *s == schema && *t == name,
            None => patterns.is_empty() || patterns.iter().any(|p| p.is_match(&format!("{schema}.{name}"))),
        };
        if !wanted {
            continue;
        }
        let cols = client
            .query(
                "SELECT a.attname, t.typname, a.attnotnull, \
                 information_schema._pg_numeric_precision(a.atttypid, a.atttypmod), \
                 information_schema._pg_numeric_scale(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = ($1 || '.' || $2)::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&quote_ident(&schema), &quote_ident(&name)],
            )
            .await
            .map_err(ext)?;
        let columns = cols
            .iter()
            .map(|c| {
                let pg_type: String = c.get(1);
                PgColumn {
                    name: c.get(0),
                    arrow_type: arrow_type_of(&pg_type, c.get(3), c.get(4)),
                    pg_type,
                    not_null: c.get(2),
                }
            })
            .collect();
        let pk = client
            .query(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = ($1 || '.' || $2)::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
                &[&quote_ident(&schema), &quote_ident(&name)],
            )
            .await
            .map_err(ext)?;
        out.push(PgTable { schema, name, columns, primary_key: pk.iter().map(|r| r.get(0)).collect() });
    }
    if out.is_empty() {
        return Err(ConnectorError::InvalidOption(match &opts.table {
            Some((s, t)) => format!("table {s}.{t} does not exist in database '{}'", opts.database),
            None => format!("no table in database '{}' matches 'table.include.list'", opts.database),
        }));
    }
    Ok(out)
}

/// Where one captured table's rows go: its transforms, and the table they are appended to.
pub struct Route {
    /// The captured Postgres table.
    pub source: PgTable,
    /// Transforms applied in order, each with the schema after it.
    pub transforms: Vec<(Transform, SchemaRef)>,
    /// The target table's physical schema (rows are matched to it by column name).
    pub target_schema: SchemaRef,
    /// The target table's primary key (names in `target_schema`), by which an update's
    /// unchanged TOAST values are looked up (see [`Route::fill_unchanged`]).
    pub target_key: Vec<String>,
    /// The target.
    pub target: Arc<dyn IngestTarget>,
    /// Key under which the LSN of this route's last appended transaction is stored.
    pub position_key: Vec<u8>,
}

impl Route {
    /// Builds the route of `source` through `transforms`; returns it with the shape of the rows
    /// after the transforms (name, schema, key), from which the target table is made.
    ///
    /// Errors: a transform naming a column that does not exist.
    pub fn shape(source: &PgTable, prefix: &str, transforms: &[Transform]) -> Result<(Shape, Vec<(Transform, SchemaRef)>)> {
        let mut shape = Route::source_shape(source, prefix);
        let mut steps = Vec::new();
        for t in transforms {
            shape = t.shape(shape)?;
            steps.push((t.clone(), shape.schema.clone()));
        }
        Ok((shape, steps))
    }

    /// The shapes of all captured tables through `transforms` (each as [`Route::shape`]), in the
    /// order of `sources`, once the fields the transforms name are checked over all of them
    /// ([`check_fields`]: a MaskField field some tables lack is fine).
    ///
    /// Errors: a field no captured table has, or one [`Route::shape`] refuses.
    pub fn shapes(sources: &[PgTable], prefix: &str, transforms: &[Transform]) -> Result<Vec<(Shape, Vec<(Transform, SchemaRef)>)>> {
        let inputs: Vec<Shape> = sources.iter().map(|s| Route::source_shape(s, prefix)).collect();
        check_fields(transforms, &inputs)?;
        sources.iter().map(|s| Route::shape(s, prefix, transforms)).collect()
    }

    /// A captured table's shape before any transform: `<prefix>.<schema>.<table>`, its columns
    /// and its primary key.
    fn source_shape(source: &PgTable, prefix: &str) -> Shape {
        Shape { name: format!("{prefix}.{}.{}", source.schema, source.name), schema: source.arrow_schema(), key: source.primary_key.clone() }
    }

    /// Captured rows (column name → text), in the order they were captured, as a change batch
    /// of the target table.
    ///
    /// Errors: a value that does not convert, a transform failing, an unchanged TOAST value with
    /// no row to take it from ([`Route::fill_unchanged`]).
    fn rows(&self, rows: &[(Op, &RowData)]) -> Result<ChangeBatch> {
        let schema = self.source.arrow_schema();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (i, f) in schema.fields().iter().enumerate() {
            let name = &self.source.columns[i].name;
            cols.push(text_column((0..rows.len()).map(|r| value(rows, r, name)), f.data_type())?);
        }
        let cols = self.fill_unchanged(rows, cols)?;
        let batch = RecordBatch::try_new(schema, cols)?;
        self.transform(ChangeBatch::new(batch, rows.iter().map(|(op, _)| *op).collect()))
    }

    /// Fills in the values of unchanged TOASTed columns that updates' new rows lack.
    ///
    /// pgoutput leaves a large (TOASTed) value out of an UPDATE's new row when the update did
    /// not change it (tuple data kind `'u'`, which pg_walstream drops from the row), whatever the
    /// table's replica identity. Storing NULL for it would silently lose the value, so the rule
    /// is: the column did not change, so its new value is its value before the update, taken
    /// from, in order,
    /// 1. the update's old row, when Postgres sent it whole (REPLICA IDENTITY FULL; see [`value`]);
    /// 2. the latest row of the same key earlier in `rows` (captured in this batch, so not yet in
    ///    the target table);
    /// 3. the row the target table holds for the key ([`IngestTarget::lookup`]), the table being
    ///    keyed by the captured table's primary key;
    ///
    /// the key being the old row's when the update changed it. A column that a transform drops
    /// or the target table lacks needs no value and is left NULL. With no row to take the value
    /// from (a row older than the capture, with `snapshot.mode` = `never`) it is an error.
    fn fill_unchanged(&self, rows: &[(Op, &RowData)], cols: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
        let names: Vec<&str> = self.source.columns.iter().map(|c| c.name.as_str()).collect();
        let targets: Vec<Option<usize>> = names.iter().map(|n| self.target_column(n)).collect();
        let holes: Vec<Vec<usize>> = (0..rows.len())
            .map(|i| match rows[i].0 {
                Op::UpdateAfter => (0..names.len()).filter(|c| targets[*c].is_some() && value(rows, i, names[*c]).is_none()).collect(),
                _ => Vec::new(),
            })
            .collect();
        let Some(first) = holes.iter().position(|h| !h.is_empty()) else { return Ok(cols) };
        let unfilled = |c: usize, why: &str| {
            ConnectorError::Write(format!(
                "postgres sent an UPDATE of {}.{} without the unchanged TOASTed value of column '{}', and {why}; \
                 Sluice does not store NULL for it. Set REPLICA IDENTITY FULL on the table (or re-create the connector \
                 with a snapshot) so that the value is known",
                self.source.schema, self.source.name, names[c]
            ))
        };
        if self.target_key.is_empty() {
            return Err(unfilled(holes[first][0], "the target table has no primary key to find the row's stored value by"));
        }
        // Every row's target key, through the transforms (as inserts, which no transform drops).
        let keyed = self.transform(ChangeBatch::inserts(RecordBatch::try_new(self.source.arrow_schema(), cols.clone())?))?;
        let key_cols = self
            .target_key
            .iter()
            .map(|k| Ok(keyed.data.column(self.target_schema.index_of(k)?).clone()))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let converter = RowConverter::new(key_cols.iter().map(|c| SortField::new(c.data_type().clone())).collect())?;
        let keys = converter.convert_columns(&key_cols)?;

        // Where each hole (row, column) takes its value from.
        #[derive(Clone, Copy)]
        enum Source {
            /// The same column of an earlier row of this batch (one without a hole there).
            Row(usize),
            /// The target table's row for the `n`-th key looked up.
            Stored(usize),
        }
        let mut fills: HashMap<(usize, usize), Source> = HashMap::new();
        // The latest row of each key in this batch; `None` once deleted.
        let mut latest: HashMap<arrow::row::Row<'_>, Option<usize>> = HashMap::new();
        let mut lookups: Vec<u32> = Vec::new();
        for (i, (op, _)) in rows.iter().enumerate() {
            let own = keys.row(i);
            match op {
                Op::Insert => {
                    latest.insert(own, Some(i));
                }
                Op::Delete => {
                    latest.insert(own, None);
                }
                // Its new row, next, holds the key's new value.
                Op::UpdateBefore => {}
                Op::UpdateAfter => {
                    let key = keys.row(old_row(rows, i).unwrap_or(i));
                    if !holes[i].is_empty() {
                        match latest.get(&key) {
                            Some(Some(j)) => {
                                for c in &holes[i] {
                                    let from = fills.get(&(*j, *c)).copied().unwrap_or(Source::Row(*j));
                                    fills.insert((i, *c), from);
                                }
                            }
                            Some(None) => return Err(unfilled(holes[i][0], "the row was deleted earlier in the same batch")),
                            None => {
                                for c in &holes[i] {
                                    fills.insert((i, *c), Source::Stored(lookups.len()));
                                }
                                lookups.push(old_row(rows, i).unwrap_or(i) as u32);
                            }
                        }
                    }
                    latest.insert(key, None);
                    latest.insert(own, Some(i));
                }
            }
        }
        let stored = if lookups.is_empty() {
            None
        } else {
            let wanted = arrow::compute::take_record_batch(&keyed.data, &UInt32Array::from(lookups))?;
            let (stored, found) = self.target.lookup(&wanted)?;
            if let Some(n) = found.iter().position(|f| !f) {
                let ((_, c), _) = fills.iter().find(|(_, s)| matches!(s, Source::Stored(k) if *k == n)).expect("a hole per lookup");
                return Err(unfilled(*c, "Sluice holds no row with its key"));
            }
            Some(stored)
        };
        let mut out = cols;
        for c in 0..names.len() {
            if !holes.iter().any(|h| h.contains(&c)) {
                continue;
            }
            let dt = out[c].data_type().clone();
            let from_table = match (&stored, targets[c]) {
                (Some(s), Some(t)) => arrow::compute::cast_with_options(s.column(t), &dt, &CastOptions { safe: false, ..Default::default() })?,
                _ => arrow::array::new_null_array(&dt, 0),
            };
            let indices: Vec<(usize, usize)> = (0..rows.len())
                .map(|i| match fills.get(&(i, c)) {
                    None => (0, i),
                    Some(Source::Row(j)) => (0, *j),
                    Some(Source::Stored(k)) => (1, *k),
                })
                .collect();
            out[c] = arrow::compute::interleave(&[out[c].as_ref(), from_table.as_ref()], &indices)?;
        }
        Ok(out)
    }

    /// The index in the target table of the column that source column `name` becomes: renamed
    /// or dropped by the transforms, then matched as [`Route::fit`] matches; `None` when dropped.
    fn target_column(&self, name: &str) -> Option<usize> {
        let mut name = name.to_string();
        for (t, _) in &self.transforms {
            name = t.output_name(&name)?;
        }
        let out = self.transforms.last().map(|(_, s)| s.clone()).unwrap_or_else(|| self.source.arrow_schema());
        let j = out.index_of(&name).ok()?;
        self.matches(&out).iter().position(|m| *m == Some(j))
    }

    /// Applies the transforms to captured rows, then fits them to the target table.
    fn transform(&self, mut change: ChangeBatch) -> Result<ChangeBatch> {
        for (t, out) in &self.transforms {
            change = t.apply(change, out)?;
        }
        self.fit(change)
    }

    /// For each target column, the column of `input` it is filled from: the one of the same
    /// name, else one whose name differs only in case (Flink DDL written in upper case).
    fn matches(&self, input: &Schema) -> Vec<Option<usize>> {
        self.target_schema
            .fields()
            .iter()
            .map(|f| {
                input.index_of(f.name()).ok().or_else(|| input.fields().iter().position(|g| g.name().eq_ignore_ascii_case(f.name())))
            })
            .collect()
    }

    /// Matches columns to the target table by name (see [`Route::matches`]), casting where the
    /// declared type differs.
    fn fit(&self, change: ChangeBatch) -> Result<ChangeBatch> {
        let input = change.data.schema();
        let n = change.num_rows();
        let cols = self
            .target_schema
            .fields()
            .iter()
            .zip(self.matches(&input))
            .map(|(f, found)| match found {
                Some(i) => {
                    let c = change.data.column(i);
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        Ok(arrow::compute::cast_with_options(c, f.data_type(), &CastOptions { safe: false, ..Default::default() })?)
                    }
                }
                None => Ok(arrow::array::new_null_array(f.data_type(), n)),
            })
            .collect::<Result<Vec<_>>>()?;
        let relaxed = Arc::new(Schema::new(
            self.target_schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        Ok(ChangeBatch::new(RecordBatch::try_new(relaxed, cols)?, change.ops))
    }
}

/// The value of column `name` in row `i` of captured rows. An update's new row that lacks it
/// (an unchanged TOAST value) takes it from the update's old row when Postgres sent that whole
/// (REPLICA IDENTITY FULL): the column did not change, so its old value is its new value.
fn value<'a>(rows: &[(Op, &'a RowData)], i: usize, name: &str) -> Option<&'a ColumnValue> {
    rows[i].1.get(name).or_else(|| old_row(rows, i).and_then(|o| rows[o].1.get(name)))
}

/// For an update's new row (`+U`) in captured rows, the index of its old row (`-U`): the capture
/// loop puts it just before, when Postgres sends one (the key changed, or REPLICA IDENTITY FULL).
fn old_row(rows: &[(Op, &RowData)], i: usize) -> Option<usize> {
    (rows[i].0 == Op::UpdateAfter && i > 0 && rows[i - 1].0 == Op::UpdateBefore).then(|| i - 1)
}

/// Postgres text output of one column as an Arrow array of `dt`.
fn text_column<'a>(values: impl Iterator<Item = Option<&'a ColumnValue>>, dt: &DataType) -> Result<ArrayRef> {
    let texts: Vec<Option<String>> = values
        .map(|v| match v {
            None | Some(ColumnValue::Null) => None,
            Some(v) => v.as_str().map(str::to_string).or_else(|| Some(String::from_utf8_lossy(v.as_bytes()).into_owned())),
        })
        .collect();
    texts_to_array(&texts, dt)
}

/// Converts Postgres text values to `dt`: booleans `t`/`f`, `bytea` as `\x` hex, time zones
/// `+HH` completed to `+HH:MM`, numbers and dates by Arrow's casts (which fail loudly).
pub fn texts_to_array(texts: &[Option<String>], dt: &DataType) -> Result<ArrayRef> {
    match dt {
        DataType::Binary => {
            let bytes: Vec<Option<Vec<u8>>> = texts
                .iter()
                .map(|t| t.as_ref().map(|s| decode_bytea(s)))
                .collect();
            Ok(Arc::new(bytes.iter().map(|b| b.as_deref()).collect::<BinaryArray>()))
        }
        DataType::Timestamp(_, Some(_)) => {
            let fixed: StringArray = texts.iter().map(|t| t.as_deref().map(fix_offset)).collect();
            Ok(arrow::compute::cast_with_options(&fixed, dt, &CastOptions { safe: false, ..Default::default() })?)
        }
        _ => {
            let arr: StringArray = texts.iter().map(|t| t.as_deref()).collect();
            Ok(arrow::compute::cast_with_options(&arr, dt, &CastOptions { safe: false, ..Default::default() })?)
        }
    }
}

fn fix_offset(s: &str) -> String {
    let b = s.as_bytes();
    if b.len() > 3 && (b[b.len() - 3] == b'+' || b[b.len() - 3] == b'-') && b[b.len() - 2..].iter().all(u8::is_ascii_digit) {
        format!("{s}:00")
    } else {
        s.to_string()
    }
}

fn decode_bytea(s: &str) -> Vec<u8> {
    match s.strip_prefix("\\x") {
        Some(hex) => (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect(),
        None => s.as_bytes().to_vec(),
    }
}

/// Splits one line of `COPY ... TO STDOUT` text format into fields (`\N` is NULL).
fn copy_fields(line: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for raw in line.split(|b| *b == b'\t') {
        if raw == b"\\N" {
            out.push(None);
            continue;
        }
        let mut s = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'\\' && i + 1 < raw.len() {
                i += 1;
                s.push(match raw[i] {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'b' => 8,
                    b'f' => 12,
                    b'v' => 11,
                    other => other,
                });
            } else {
                s.push(raw[i]);
            }
            i += 1;
        }
        out.push(Some(String::from_utf8_lossy(&s).into_owned()));
    }
    out
}

fn position_lsn(v: Option<Vec<u8>>) -> Option<u64> {
    v.and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
}

/// Key of the flag saying the connector created its slot (so DROP may drop it).
pub fn slot_created_key(name: &str) -> Vec<u8> {
    format!("cdc/{name}/slot-created").into_bytes()
}

/// A capture task: one slot, one publication, one or more routes.
pub struct CdcSource {
    /// Connector (or table) name, for positions and logs.
    pub name: String,
    /// Options.
    pub options: PostgresCdcOptions,
    /// Routes by `schema.table`.
    pub routes: Vec<Route>,
}

/// How long committed changes wait for more before they are appended: a few milliseconds of
/// latency buy one write (one fsync) for many small transactions.
const FLUSH_DELAY: Duration = Duration::from_millis(5);

/// Cancels the stream reader when the capture loop ends, however it ends.
struct CancelOnDrop(CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Why a capture step failed.
enum CdcError {
    Retry(String),
    Fatal(String),
}

impl From<ConnectorError> for CdcError {
    fn from(e: ConnectorError) -> Self {
        match e {
            ConnectorError::External(m) => CdcError::Retry(m),
            other => CdcError::Fatal(other.to_string()),
        }
    }
}

impl CdcSource {
    /// Runs on the current thread until `status.stop` is set (it builds its own single-threaded
    /// tokio runtime), retrying with backoff while Postgres is unreachable.
    pub fn run(self, status: Arc<TaskStatus>) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                status.set(TaskState::Failed, Some(e.to_string()));
                return;
            }
        };
        let mut backoff = Backoff::default();
        while !status.stopping() {
            match rt.block_on(self.capture(&status, &mut backoff)) {
                Ok(()) => return,
                Err(CdcError::Fatal(e)) => {
                    let e = self.options.scrub(&e);
                    tracing::error!(connector = %self.name, error = %e, "postgres capture failed");
                    status.set(TaskState::Failed, Some(e));
                    return;
                }
                Err(CdcError::Retry(e)) => {
                    let e = self.options.scrub(&e);
                    tracing::warn!(connector = %self.name, error = %e, "postgres capture retrying");
                    status.set(TaskState::Retrying, Some(e));
                    if status.sleep(backoff.next_delay()) {
                        return;
                    }
                }
            }
        }
    }

    async fn capture(&self, status: &TaskStatus, backoff: &mut Backoff) -> std::result::Result<(), CdcError> {
        let o = &self.options;
        let client = o.connect().await?;
        let pg = |e: tokio_postgres::Error| CdcError::Retry(format!("postgres: {e}"));
        let wal_level: String = client.query_one("SHOW wal_level", &[]).await.map_err(pg)?.get(0);
        if wal_level != "logical" {
            return Err(CdcError::Fatal(format!(
                "postgres at {}:{} has wal_level = {wal_level}; change data capture needs wal_level = logical",
                o.host, o.port
            )));
        }
        self.ensure_publication(&client).await?;
        let target0 = self.routes.first().map(|r| r.target.clone()).ok_or_else(|| CdcError::Fatal("no tables to capture".into()))?;
        let mut positions: Vec<Option<u64>> = Vec::new();
        for r in &self.routes {
            positions.push(position_lsn(r.target.position(&r.position_key)?));
        }
        let slot_row = client
            .query_opt("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&o.slot])
            .await
            .map_err(pg)?;
        let resumed = positions.iter().all(Option::is_some);
        if resumed {
            match &slot_row {
                None => {
                    return Err(CdcError::Fatal(format!(
                        "replication slot '{}' no longer exists; changes since the last checkpoint are lost to it. Drop and re-create the connector to take a new snapshot",
                        o.slot
                    )))
                }
                Some(r) if r.get::<_, Option<String>>(0).as_deref() == Some("lost") => {
                    return Err(CdcError::Fatal(format!(
                        "replication slot '{}' was invalidated (wal_status = lost); drop and re-create the connector to take a new snapshot",
                        o.slot
                    )))
                }
                _ => {}
            }
        }
        // A slot that exists before the first start and was not made by this connector (a DBA
        // created it) is used as it is: the snapshot is then read at a fresh REPEATABLE READ
        // snapshot, not at the slot's point, and changes from the slot's position on are
        // applied after it; on a keyed table replaying them converges to the same rows.
        let mut preexisting = false;
        if !resumed && slot_row.is_some() {
            if target0.position(&slot_created_key(&self.name))?.is_some() {
                // Sluice made it, but its snapshot did not finish: start over.
                client.execute("SELECT pg_drop_replication_slot($1)", &[&o.slot]).await.map_err(pg)?;
            } else {
                preexisting = true;
            }
        }
        let config = ReplicationStreamConfig::new(
            o.slot.clone(),
            o.publication.clone(),
            1,
            StreamingMode::Off,
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::from_secs(60),
            RetryConfig::default(),
        )
        .with_slot_options(pg_walstream::ReplicationSlotOptions { snapshot: Some("export".into()), ..Default::default() });
        let mut stream = LogicalReplicationStream::new(&o.replication_dsn(), config)
            .await
            .map_err(|e| CdcError::Retry(format!("postgres replication connection: {e}")))?;
        let start_lsn = if resumed {
            positions.iter().flatten().min().copied()
        } else {
            let exported = if preexisting {
                None
            } else {
                stream.ensure_replication_slot().await.map_err(|e| CdcError::Retry(format!("postgres: {e}")))?;
                target0.put_position(&slot_created_key(&self.name), b"1")?;
                Some(
                    stream
                        .exported_snapshot_name()
                        .ok_or_else(|| CdcError::Fatal("postgres did not export a snapshot for the new slot".into()))?
                        .to_string(),
                )
            };
            let lsn_text: String = client
                .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&o.slot])
                .await
                .map_err(pg)?
                .get(0);
            let lsn = pg_walstream::parse_lsn(&lsn_text).map_err(|e| CdcError::Fatal(e.to_string()))?;
            if o.snapshot {
                self.snapshot(exported.as_deref(), lsn, status).await?;
            } else {
                for r in &self.routes {
                    r.target.append(Vec::new(), None, vec![(r.position_key.clone(), lsn.to_be_bytes().to_vec())])?;
                }
            }
            positions = vec![Some(lsn); self.routes.len()];
            Some(lsn)
        };
        stream.start(start_lsn).await.map_err(|e| CdcError::Retry(format!("postgres start replication: {e}")))?;
        status.set(TaskState::Running, None);
        backoff.reset();
        // The stream is read by a task of its own that hands events over a channel: waiting on
        // the channel with a timeout is cancel-safe, waiting on the stream itself is not.
        let cancel = CancellationToken::new();
        let feedback = stream.shared_lsn_feedback.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::result::Result<pg_walstream::ChangeEvent, String>>(4096);
        let reader_cancel = cancel.clone();
        let reader = tokio::spawn(async move {
            loop {
                let r = stream.next_event(&reader_cancel).await;
                let stop = r.is_err();
                if tx.send(r.map_err(|e| e.to_string())).await.is_err() || stop {
                    break;
                }
            }
            let _ = stream.stop().await;
        });
        let _guard = CancelOnDrop(cancel.clone());
        let by_name: HashMap<(String, String), usize> =
            self.routes.iter().enumerate().map(|(i, r)| ((r.source.schema.clone(), r.source.name.clone()), i)).collect();
        // Changes of the open transaction, and of committed transactions not yet appended.
        let mut txn: Vec<(usize, Op, RowData)> = Vec::new();
        let mut ready: Vec<(usize, Op, RowData)> = Vec::new();
        let mut ready_lsn = 0u64;
        let mut ready_commit_ts: Option<chrono::DateTime<chrono::Utc>> = None;
        let mut first_ready: Option<Instant> = None;
        while !status.stopping() {
            let wait = match first_ready {
                Some(t) => FLUSH_DELAY.saturating_sub(t.elapsed()),
                None => Duration::from_millis(200),
            };
            let event = match tokio::time::timeout(wait, rx.recv()).await {
                Err(_) => None,
                Ok(None) => return Err(CdcError::Retry("postgres replication stream ended".into())),
                Ok(Some(Ok(e))) => Some(e),
                Ok(Some(Err(m))) => {
                    if m.contains("does not exist") || m.contains("invalidated") {
                        return Err(CdcError::Fatal(format!("replication slot '{}': {m}", o.slot)));
                    }
                    return Err(CdcError::Retry(format!("postgres replication: {m}")));
                }
            };
            if let Some(event) = event {
                match event.event_type {
                    EventType::Insert { schema, table, data, .. } => {
                        if let Some(i) = by_name.get(&(schema.to_string(), table.to_string())) {
                            txn.push((*i, Op::Insert, data));
                        }
                    }
                    EventType::Update { schema, table, old_data, new_data, .. } => {
                        if let Some(i) = by_name.get(&(schema.to_string(), table.to_string())) {
                            if let Some(old) = old_data {
                                txn.push((*i, Op::UpdateBefore, old));
                            }
                            txn.push((*i, Op::UpdateAfter, new_data));
                        }
                    }
                    EventType::Delete { schema, table, old_data, .. } => {
                        if let Some(i) = by_name.get(&(schema.to_string(), table.to_string())) {
                            txn.push((*i, Op::Delete, old_data));
                        }
                    }
                    EventType::Commit { end_lsn, commit_timestamp, .. } => {
                        ready.append(&mut txn);
                        ready_lsn = end_lsn.value();
                        ready_commit_ts = Some(commit_timestamp);
                        if first_ready.is_none() {
                            first_ready = Some(Instant::now());
                        }
                    }
                    _ => {}
                }
            }
            let due = first_ready.is_some_and(|t| t.elapsed() >= FLUSH_DELAY) || ready.len() >= 10_000;
            if due {
                self.flush(&mut ready, ready_lsn, &mut positions, status)?;
                if let Some(ts) = ready_commit_ts {
                    let lag = (chrono::Utc::now() - ts).num_milliseconds().max(0) as u64;
                    status.lag_ms.store(lag, Ordering::Relaxed);
                }
                feedback.update_flushed_lsn(ready_lsn);
                feedback.update_applied_lsn(ready_lsn);
                *status.position.lock().unwrap() = pg_walstream::format_lsn(ready_lsn);
                first_ready = None;
            }
        }
        cancel.cancel();
        let _ = reader.await;
        Ok(())
    }

    /// Appends the committed changes up to `lsn`, each route with its position, skipping what a
    /// route already holds (its stored LSN is at or past `lsn`).
    fn flush(&self, ready: &mut Vec<(usize, Op, RowData)>, lsn: u64, positions: &mut [Option<u64>], status: &TaskStatus) -> std::result::Result<(), CdcError> {
        let mut per_route: BTreeMap<usize, Vec<(Op, &RowData)>> = BTreeMap::new();
        for (i, op, row) in ready.iter() {
            per_route.entry(*i).or_default().push((*op, row));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if positions[i].is_some_and(|p| p >= lsn) {
                continue;
            }
            let rows = per_route.remove(&i).unwrap_or_default();
            let batches = if rows.is_empty() { Vec::new() } else { vec![r.rows(&rows).map_err(|e| CdcError::Fatal(e.to_string()))?] };
            let n: usize = batches.iter().map(|b| b.num_rows()).sum();
            r.target.append(batches, None, vec![(r.position_key.clone(), lsn.to_be_bytes().to_vec())])?;
            positions[i] = Some(lsn);
            status.rows.fetch_add(n as u64, Ordering::Relaxed);
        }
        ready.clear();
        Ok(())
    }

    async fn ensure_publication(&self, client: &tokio_postgres::Client) -> std::result::Result<(), CdcError> {
        let o = &self.options;
        let pg = |e: tokio_postgres::Error| CdcError::Retry(format!("postgres: {e}"));
        let exists = client
            .query_opt("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&o.publication])
            .await
            .map_err(pg)?;
        let tables: Vec<String> = self.routes.iter().map(|r| r.source.quoted()).collect();
        match exists {
            None => {
                client
                    .batch_execute(&format!("CREATE PUBLICATION {} FOR TABLE {}", quote_ident(&o.publication), tables.join(", ")))
                    .await
                    .map_err(|e| CdcError::Fatal(format!("postgres: cannot create publication '{}': {e}", o.publication)))?;
            }
            Some(row) if row.get::<_, bool>(0) => {}
            Some(_) => {
                for r in &self.routes {
                    let has = client
                        .query_opt(
                            "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                            &[&o.publication, &r.source.schema, &r.source.name],
                        )
                        .await
                        .map_err(pg)?;
                    if has.is_none() {
                        client
                            .batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(&o.publication), r.source.quoted()))
                            .await
                            .map_err(|e| CdcError::Fatal(format!("postgres: cannot add a table to publication '{}': {e}", o.publication)))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads every captured table at the exported snapshot (or, for a slot made by someone else,
    /// at a snapshot of its own) and appends the rows as inserts; the
    /// last append of each route stores `lsn` as its position.
    async fn snapshot(&self, snapshot: Option<&str>, lsn: u64, status: &TaskStatus) -> std::result::Result<(), CdcError> {
        let client = self.options.connect().await?;
        let pg = |e: tokio_postgres::Error| CdcError::Retry(format!("postgres snapshot: {e}"));
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(pg)?;
        if let Some(snapshot) = snapshot {
            client
                .batch_execute(&format!("SET TRANSACTION SNAPSHOT '{}'", snapshot.replace('\'', "''")))
                .await
                .map_err(pg)?;
        }
        client.batch_execute("SET LOCAL TIME ZONE 'UTC'").await.map_err(pg)?;
        for r in &self.routes {
            let cols: Vec<String> = r.source.columns.iter().map(|c| quote_ident(&c.name)).collect();
            let sql = format!("COPY (SELECT {} FROM {}) TO STDOUT", cols.join(", "), r.source.quoted());
            let stream = client.copy_out(&sql).await.map_err(pg)?;
            futures::pin_mut!(stream);
            let mut rest: Vec<u8> = Vec::new();
            let mut lines: Vec<Vec<Option<String>>> = Vec::new();
            loop {
                let chunk = stream.next().await;
                let done = chunk.is_none();
                if let Some(c) = chunk {
                    rest.extend_from_slice(&c.map_err(pg)?);
                    let mut start = 0;
                    while let Some(nl) = rest[start..].iter().position(|b| *b == b'\n') {
                        lines.push(copy_fields(&rest[start..start + nl]));
                        start += nl + 1;
                    }
                    rest.drain(..start);
                }
                if lines.len() >= 8192 || (done && !lines.is_empty()) {
                    let n = lines.len();
                    let batch = self.snapshot_batch(r, &lines).map_err(|e| CdcError::Fatal(e.to_string()))?;
                    r.target.append(vec![batch], None, Vec::new())?;
                    status.snapshot_rows.fetch_add(n as u64, Ordering::Relaxed);
                    status.rows.fetch_add(n as u64, Ordering::Relaxed);
                    lines.clear();
                }
                if done {
                    break;
                }
            }
            r.target.append(Vec::new(), None, vec![(r.position_key.clone(), lsn.to_be_bytes().to_vec())])?;
        }
        client.batch_execute("COMMIT").await.map_err(pg)?;
        Ok(())
    }

    fn snapshot_batch(&self, r: &Route, lines: &[Vec<Option<String>>]) -> Result<ChangeBatch> {
        let schema = r.source.arrow_schema();
        let mut cols = Vec::with_capacity(schema.fields().len());
        for (i, f) in schema.fields().iter().enumerate() {
            let texts: Vec<Option<String>> = lines.iter().map(|l| l.get(i).cloned().flatten()).collect();
            cols.push(texts_to_array(&texts, f.data_type())?);
        }
        r.transform(ChangeBatch::inserts(RecordBatch::try_new(schema, cols)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_text_values_convert() {
        let b = texts_to_array(&[Some("t".into()), Some("f".into()), None], &DataType::Boolean).unwrap();
        assert_eq!(b.null_count(), 1);
        let ts = texts_to_array(
            &[Some("2024-01-02 03:04:05.5+00".into())],
            &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        )
        .unwrap();
        assert_eq!(ts.len(), 1);
        let bytes = texts_to_array(&[Some("\\x0aff".into())], &DataType::Binary).unwrap();
        let bytes = bytes.as_any().downcast_ref::<BinaryArray>().unwrap();
        assert_eq!(bytes.value(0), &[10, 255]);
        assert!(texts_to_array(&[Some("abc".into())], &DataType::Int64).is_err());
        assert_eq!(copy_fields(b"1\t\\N\ta\\tb"), vec![Some("1".into()), None, Some("a\tb".into())]);
    }

    /// A target table holding `doc` values by `id`, as the server's materialized table would.
    struct Stored(HashMap<i64, &'static str>);

    impl IngestTarget for Stored {
        fn append(&self, _: Vec<ChangeBatch>, _: Option<RecordBatch>, _: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
            Ok(())
        }
        fn position(&self, _: &[u8]) -> Result<Option<Vec<u8>>> {
            Ok(None)
        }
        fn put_position(&self, _: &[u8], _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn lookup(&self, rows: &RecordBatch) -> Result<(RecordBatch, Vec<bool>)> {
            let ids = rows.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
            let docs: Vec<Option<&str>> = ids.iter().map(|id| self.0.get(&id.unwrap()).copied()).collect();
            let found = docs.iter().map(Option::is_some).collect();
            let n = arrow::array::new_null_array(&DataType::Int32, rows.num_rows());
            let batch = RecordBatch::try_new(rows.schema(), vec![rows.column(0).clone(), Arc::new(StringArray::from(docs)), n])?;
            Ok((batch, found))
        }
    }

    fn route(stored: &[(i64, &'static str)]) -> Route {
        let col = |name: &str, pg: &str, dt: DataType| PgColumn { name: name.into(), pg_type: pg.into(), arrow_type: dt, not_null: false };
        let source = PgTable {
            schema: "public".into(),
            name: "docs".into(),
            columns: vec![col("id", "int8", DataType::Int64), col("doc", "text", DataType::Utf8), col("n", "int4", DataType::Int32)],
            primary_key: vec!["id".into()],
        };
        Route {
            target_schema: source.arrow_schema(),
            source,
            transforms: Vec::new(),
            target_key: vec!["id".into()],
            target: Arc::new(Stored(stored.iter().copied().collect())),
            position_key: Vec::new(),
        }
    }

    fn row(values: &[(&str, &str)]) -> RowData {
        RowData::from_pairs(values.iter().map(|(k, v)| (*k, ColumnValue::text(v))).collect())
    }

    #[test]
    fn unchanged_toast_values_are_filled_from_the_batch_and_the_table() {
        let r = route(&[(1, "big-1"), (3, "big-3")]);
        let rows = [
            // The stored row's value.
            (Op::UpdateAfter, row(&[("id", "1"), ("n", "10")])),
            // The value of a row earlier in the batch, through a second update.
            (Op::Insert, row(&[("id", "2"), ("doc", "two"), ("n", "0")])),
            (Op::UpdateAfter, row(&[("id", "2"), ("n", "20")])),
            (Op::UpdateAfter, row(&[("id", "2"), ("n", "21")])),
            // A key change: the old key's stored row.
            (Op::UpdateBefore, row(&[("id", "3")])),
            (Op::UpdateAfter, row(&[("id", "4"), ("n", "40")])),
            // REPLICA IDENTITY FULL: the old row's value.
            (Op::UpdateBefore, row(&[("id", "5"), ("doc", "old-5"), ("n", "0")])),
            (Op::UpdateAfter, row(&[("id", "5"), ("n", "50")])),
        ];
        let refs: Vec<(Op, &RowData)> = rows.iter().map(|(op, r)| (*op, r)).collect();
        assert_eq!(
            r.rows(&refs).unwrap().to_text(),
            "+U 1 big-1 10\n+I 2 two 0\n+U 2 two 20\n+U 2 two 21\n-U 3 NULL NULL\n+U 4 big-3 40\n-U 5 old-5 0\n+U 5 old-5 50\n"
        );
        // No row to take the value from: an error, not a NULL.
        let missing = [(Op::UpdateAfter, row(&[("id", "9"), ("n", "90")]))];
        let refs: Vec<(Op, &RowData)> = missing.iter().map(|(op, r)| (*op, r)).collect();
        let err = r.rows(&refs).unwrap_err().to_string();
        assert!(err.contains("column 'doc'") && err.contains("no row with its key"), "{err}");
    }

    #[test]
    fn password_is_scrubbed_and_required_options_named() {
        let map: BTreeMap<String, String> = [
            ("connector", "postgres-cdc"),
            ("hostname", "127.0.0.1"),
            ("username", "u"),
            ("password", "s3cret"),
            ("database-name", "db"),
            ("table-name", "t"),
            ("slot.name", "s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut r = OptionReader::new(&map, "connector 'postgres-cdc'");
        let o = PostgresCdcOptions::parse_flink(&mut r).unwrap();
        r.finish().unwrap();
        assert_eq!(o.scrub("password s3cret failed"), "password *** failed");
        assert!(!format!("{}", o.scrub(&o.replication_dsn())).contains("s3cret"));
        let mut m2 = map.clone();
        m2.remove("slot.name");
        assert!(PostgresCdcOptions::parse_flink(&mut OptionReader::new(&m2, "x")).unwrap_err().to_string().contains("slot.name"));
    }
}
