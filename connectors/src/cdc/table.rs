//! The captured tables as Postgres's catalog describes them, and the Arrow and SQL types
//! Sluice gives their columns.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::PostgresCdcOptions;
use crate::error::{ConnectorError, Result};

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

pub(super) fn quote_ident(s: &str) -> String {
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
