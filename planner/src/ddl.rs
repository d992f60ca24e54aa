//! Flink SQL `CREATE TABLE`, parsed by Sluice (sqlparser does not know watermarks or computed
//! columns):
//!
//! ```sql
//! CREATE TABLE [IF NOT EXISTS] name (
//!     col TYPE [NOT NULL] [PRIMARY KEY [NOT ENFORCED]],
//!     col AS expr,                                   -- computed column
//!     WATERMARK FOR col AS expr,
//!     [CONSTRAINT c] PRIMARY KEY (col, ...) [NOT ENFORCED]
//! ) [WITH ('key' = 'value', ...)]
//! ```
//!
//! Types are Flink's (`STRING`, `BIGINT`, `DOUBLE`, `DECIMAL(p, s)`, `TIMESTAMP(p)`,
//! `TIMESTAMP_LTZ(p)`, ...) and PostgreSQL's (`TEXT`, `VARCHAR(n)`, `INTEGER`, ...), mapped to
//! Arrow types by [`parse_type`]. Timestamps keep millisecond precision.

use std::collections::BTreeMap;

use arrow::datatypes::{DataType, TimeUnit};
use sluice_catalog::{ColumnDef, TableDef, WatermarkDef};
use sqlparser::tokenizer::Token;

use crate::error::{PlanError, Result};
use crate::tokens::Cursor;

/// A parsed `CREATE TABLE`.
#[derive(Debug, Clone)]
pub struct CreateTable {
    /// The table definition (options not yet validated against a connector).
    pub def: TableDef,
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
}

/// Parses `('key' = 'value', ...)`, the list after `WITH`; keys are lower-cased.
///
/// Errors: [`PlanError::Syntax`] for a malformed list.
pub fn parse_with_options(c: &mut Cursor) -> Result<BTreeMap<String, String>> {
    let mut options = BTreeMap::new();
    c.expect(&Token::LParen, "'(' after WITH")?;
    if !c.eat(&Token::RParen) {
        loop {
            let k = c.string()?;
            c.expect(&Token::Eq, "'=' in WITH options")?;
            let v = match c.next() {
                Token::SingleQuotedString(s) => s,
                Token::Number(n, _) => n,
                other => return Err(PlanError::Syntax(format!("expected a quoted option value, found {other}"))),
            };
            options.insert(k.to_lowercase(), v);
            if !c.eat(&Token::Comma) {
                break;
            }
        }
        c.expect(&Token::RParen, "')' closing WITH")?;
    }
    Ok(options)
}

/// Parses `CREATE TABLE ...` (the cursor is positioned after `CREATE TABLE`).
///
/// Errors: [`PlanError::Syntax`] for malformed text, [`PlanError::UnknownType`] for a type name
/// Sluice does not know, [`PlanError::UnknownColumn`] for a key or watermark on a missing column.
pub fn parse_create_table(c: &mut Cursor, create_sql: &str) -> Result<CreateTable> {
    let if_not_exists = c.eat_kws(&["IF", "NOT", "EXISTS"]);
    let name = c.object_name()?;
    c.expect(&Token::LParen, "'(' after the table name")?;
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut primary_key: Vec<String> = Vec::new();
    let mut watermark = None;
    loop {
        if c.eat_kw("WATERMARK") {
            if !c.eat_kw("FOR") {
                return Err(PlanError::Syntax("expected FOR after WATERMARK".into()));
            }
            let column = c.ident()?;
            if !c.eat_kw("AS") {
                return Err(PlanError::Syntax("expected AS in the WATERMARK clause".into()));
            }
            let expr = c.until_list_end();
            watermark = Some(WatermarkDef { column, expr });
        } else if c.peek_kw("CONSTRAINT") || c.peek_kw("PRIMARY") {
            if c.eat_kw("CONSTRAINT") {
                c.ident()?;
            }
            if !c.eat_kws(&["PRIMARY", "KEY"]) {
                return Err(PlanError::Syntax("expected PRIMARY KEY".into()));
            }
            c.expect(&Token::LParen, "'(' after PRIMARY KEY")?;
            loop {
                primary_key.push(c.ident()?);
                if !c.eat(&Token::Comma) {
                    break;
                }
            }
            c.expect(&Token::RParen, "')' closing the key columns")?;
            c.eat_kws(&["NOT", "ENFORCED"]);
        } else {
            let col = c.ident()?;
            if c.eat_kw("AS") {
                let expr = c.until_list_end();
                columns.push(ColumnDef {
                    name: col,
                    data_type: String::new(),
                    nullable: true,
                    computed: Some(expr),
                    sql_type: String::new(),
                });
            } else {
                let (dt, sql_type) = parse_type(c)?;
                let mut nullable = true;
                loop {
                    if c.eat_kws(&["NOT", "NULL"]) {
                        nullable = false;
                    } else if c.eat_kw("NULL") {
                    } else if c.eat_kws(&["PRIMARY", "KEY"]) {
                        c.eat_kws(&["NOT", "ENFORCED"]);
                        primary_key.push(col.clone());
                    } else if c.eat_kw("COMMENT") {
                        c.string()?;
                    } else {
                        break;
                    }
                }
                columns.push(ColumnDef {
                    name: col,
                    data_type: dt.to_string(),
                    nullable,
                    computed: None,
                    sql_type,
                });
            }
        }
        if c.eat(&Token::Comma) {
            continue;
        }
        c.expect(&Token::RParen, "',' or ')' in the column list")?;
        break;
    }
    let options = if c.eat_kw("WITH") { parse_with_options(c)? } else { BTreeMap::new() };
    if !c.at_end() {
        return Err(PlanError::Syntax(format!("unexpected {} after CREATE TABLE", c.peek())));
    }
    if columns.is_empty() {
        return Err(PlanError::Syntax("a table needs at least one column".into()));
    }
    for k in &primary_key {
        let col = columns
            .iter_mut()
            .find(|c| &c.name == k)
            .ok_or_else(|| PlanError::UnknownColumn(format!("primary key column \"{k}\" does not exist")))?;
        if col.computed.is_some() {
            return Err(PlanError::Unsupported(format!("primary key column \"{k}\" cannot be computed")));
        }
        col.nullable = false;
    }
    if let Some(w) = &watermark {
        if !columns.iter().any(|c| c.name == w.column) {
            return Err(PlanError::UnknownColumn(format!("watermark column \"{}\" does not exist", w.column)));
        }
    }
    let partitions = options.get("partitions").and_then(|p| p.parse().ok()).unwrap_or(1);
    Ok(CreateTable {
        def: TableDef {
            name,
            columns,
            primary_key,
            watermark,
            options,
            create_sql: create_sql.to_string(),
            partitions,
        },
        if_not_exists,
    })
}

fn paren_args(c: &mut Cursor) -> Result<Vec<u32>> {
    let mut args = Vec::new();
    if c.eat(&Token::LParen) {
        loop {
            match c.next() {
                Token::Number(n, _) => args.push(n.parse().map_err(|_| PlanError::Syntax(format!("bad type argument {n}")))?),
                other => return Err(PlanError::Syntax(format!("expected a number in the type, found {other}"))),
            }
            if !c.eat(&Token::Comma) {
                break;
            }
        }
        c.expect(&Token::RParen, "')' closing the type arguments")?;
    }
    Ok(args)
}

/// Parses a SQL type at the cursor into an Arrow type and the text as written.
///
/// Mapping: `BOOLEAN`→Boolean, `TINYINT`→Int8, `SMALLINT`→Int16, `INT`/`INTEGER`→Int32,
/// `BIGINT`→Int64, `FLOAT`/`REAL`→Float32, `DOUBLE [PRECISION]`→Float64, `DECIMAL(p,s)`→Decimal128,
/// `STRING`/`VARCHAR(n)`/`CHAR(n)`/`TEXT`→Utf8, `BYTES`/`BYTEA`→Binary, `DATE`→Date32,
/// `TIMESTAMP(p)`→Timestamp(ms), `TIMESTAMP_LTZ(p)` and `TIMESTAMP(p) WITH LOCAL TIME ZONE`→
/// Timestamp(ms, UTC).
pub fn parse_type(c: &mut Cursor) -> Result<(DataType, String)> {
    let name = match c.next() {
        Token::Word(w) => w.value.to_uppercase(),
        other => return Err(PlanError::Syntax(format!("expected a type name, found {other}"))),
    };
    let mut text = name.clone();
    let dt = match name.as_str() {
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TINYINT" => DataType::Int8,
        "SMALLINT" | "INT2" => DataType::Int16,
        "INT" | "INTEGER" | "INT4" => DataType::Int32,
        "BIGINT" | "INT8" => DataType::Int64,
        "FLOAT" | "REAL" | "FLOAT4" => DataType::Float32,
        "DOUBLE" | "FLOAT8" => {
            if c.eat_kw("PRECISION") {
                text.push_str(" PRECISION");
            }
            DataType::Float64
        }
        "DECIMAL" | "NUMERIC" | "DEC" => {
            let a = paren_args(c)?;
            let p = a.first().copied().unwrap_or(10).min(38) as u8;
            let s = a.get(1).copied().unwrap_or(0) as i8;
            text = format!("DECIMAL({p}, {s})");
            DataType::Decimal128(p, s)
        }
        "STRING" | "TEXT" | "VARCHAR" | "CHAR" | "CHARACTER" => {
            if name == "CHARACTER" && c.eat_kw("VARYING") {
                text.push_str(" VARYING");
            }
            let a = paren_args(c)?;
            if let Some(n) = a.first() {
                text = format!("{text}({n})");
            }
            DataType::Utf8
        }
        "BYTES" | "BYTEA" | "BINARY" | "VARBINARY" => {
            paren_args(c)?;
            DataType::Binary
        }
        "DATE" => DataType::Date32,
        "TIMESTAMP" | "TIMESTAMP_LTZ" => {
            let a = paren_args(c)?;
            if let Some(p) = a.first() {
                text = format!("{text}({p})");
            }
            let mut ltz = name == "TIMESTAMP_LTZ";
            if c.eat_kws(&["WITH", "LOCAL", "TIME", "ZONE"]) {
                text.push_str(" WITH LOCAL TIME ZONE");
                ltz = true;
            } else if c.eat_kws(&["WITH", "TIME", "ZONE"]) {
                text.push_str(" WITH TIME ZONE");
                ltz = true;
            } else if c.eat_kws(&["WITHOUT", "TIME", "ZONE"]) {
                text.push_str(" WITHOUT TIME ZONE");
            }
            DataType::Timestamp(TimeUnit::Millisecond, ltz.then(|| "+00:00".into()))
        }
        other => return Err(PlanError::UnknownType(other.to_lowercase())),
    };
    Ok((dt, text))
}

/// The SQL name of an Arrow type, as `DESCRIBE` shows it (Flink's type names).
pub fn sql_type_name(dt: &DataType) -> String {
    match dt {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTES".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP(3)".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP_LTZ(3)".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_tables() {
        let sql = "CREATE TABLE fd_transactions_enriched(
            `user_id` BIGINT, `credit_card_number` STRING, `amount` DOUBLE,
            `transaction_timestamp` TIMESTAMP(0), `first_name` STRING,
            WATERMARK FOR transaction_timestamp AS transaction_timestamp)";
        let mut c = Cursor::new(sql).unwrap();
        assert!(c.eat_kws(&["CREATE", "TABLE"]));
        let t = parse_create_table(&mut c, sql).unwrap().def;
        assert_eq!(t.name, "fd_transactions_enriched");
        assert_eq!(t.columns.len(), 5);
        assert_eq!(t.columns[3].data_type, "Timestamp(ms)".replace("Timestamp(ms)", &DataType::Timestamp(TimeUnit::Millisecond, None).to_string()));
        assert_eq!(t.watermark.as_ref().unwrap().column, "transaction_timestamp");

        let sql = "CREATE TABLE `ORCL.ADMIN.CUSTOMERS` (ID BIGINT, EMAIL STRING, PRIMARY KEY (ID) NOT ENFORCED) WITH ('partitions' = '2')";
        let mut c = Cursor::new(sql).unwrap();
        c.eat_kws(&["CREATE", "TABLE"]);
        let t = parse_create_table(&mut c, sql).unwrap().def;
        assert_eq!(t.name, "ORCL.ADMIN.CUSTOMERS");
        assert_eq!(t.primary_key, vec!["id".to_string()]);
        assert!(!t.columns[0].nullable);
        assert_eq!(t.partitions, 2);

        let sql = "CREATE TABLE g (seq BIGINT, user_id AS seq % 10000, ts AS TO_TIMESTAMP_LTZ(seq * 10, 3)) WITH ('connector' = 'datagen')";
        let mut c = Cursor::new(sql).unwrap();
        c.eat_kws(&["CREATE", "TABLE"]);
        let t = parse_create_table(&mut c, sql).unwrap().def;
        assert_eq!(t.columns[1].computed.as_deref(), Some("seq % 10000"));

        let mut c = Cursor::new("CREATE TABLE x (a FOO)").unwrap();
        c.eat_kws(&["CREATE", "TABLE"]);
        assert!(matches!(parse_create_table(&mut c, ""), Err(PlanError::UnknownType(_))));
    }
}
