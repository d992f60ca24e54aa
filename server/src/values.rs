//! `INSERT INTO t [(cols)] VALUES (...), ...` made only of literals, converted straight from
//! sqlparser's rows into Arrow columns of the table, a bounded number of rows at a time.
//!
//! Planned by DataFusion, a million-row `VALUES` becomes a million-row logical plan of boxed
//! expressions that its analyzer and optimizer copy several times (a 60 MB statement took the
//! daemon from 50 MB to 6.9 GB). Literals need no planning: each is typed as DataFusion types
//! it (`parse_sql_number`: `i64`, else `u64`, else `f64`; strings `Utf8`; `TRUE`/`FALSE`;
//! `NULL`), a column of one kind becomes one Arrow array, and that array is cast to the
//! column's type as the planned path casts it. Any other shape (an expression, a typed
//! literal such as `TIMESTAMP '...'`, a column mixing strings and numbers, an unknown column
//! name) is left to DataFusion, so that its answers and errors stay the reference.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use sluice_catalog::ChangeBatch;
use sqlparser::ast::{Expr, Insert, ObjectNamePart, SetExpr, UnaryOperator, Value};

use crate::errors::SqlResult;

/// Rows converted at a time: the statement's AST is consumed as they are, so the rows'
/// expressions and their Arrow form are not both held whole.
const CHUNK_ROWS: usize = 65_536;

/// A literal's kind, as DataFusion would type it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Int,
    UInt,
    Float,
    Str,
    Bool,
}

/// The number (with its sign) of a numeric literal, or the literal's kind.
fn kind(e: &Expr) -> Option<Kind> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Null => Some(Kind::Null),
            Value::Boolean(_) => Some(Kind::Bool),
            Value::SingleQuotedString(_) => Some(Kind::Str),
            Value::Number(n, false) => number_kind(&n.to_string(), false),
            _ => None,
        },
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, false) => number_kind(&n.to_string(), true),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn number_kind(n: &str, negative: bool) -> Option<Kind> {
    if n.contains('_') {
        return None;
    }
    let signed = if negative { format!("-{n}") } else { n.to_string() };
    if signed.parse::<i64>().is_ok() {
        Some(Kind::Int)
    } else if !negative && n.parse::<u64>().is_ok() {
        Some(Kind::UInt)
    } else if signed.parse::<f64>().is_ok() {
        Some(Kind::Float)
    } else {
        None
    }
}

/// The text of a numeric literal with its sign.
fn number_text(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(n.to_string()),
            _ => None,
        },
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => number_text(expr).map(|n| format!("-{n}")),
        _ => None,
    }
}

/// The one kind of a column's literals (`Null` when all are NULL), with integers and floats
/// together as floats, as DataFusion's `VALUES` coercion takes them; `None` for other mixes.
fn column_kind(kinds: impl Iterator<Item = Kind>) -> Option<Kind> {
    let mut out = Kind::Null;
    for k in kinds {
        out = match (out, k) {
            (a, Kind::Null) => a,
            (Kind::Null, b) => b,
            (a, b) if a == b => a,
            (Kind::Int | Kind::Float, Kind::Int | Kind::Float) => Kind::Float,
            _ => return None,
        };
    }
    Some(out)
}

/// The rows of `ins` as batches of `schema` (the table's physical columns, every field
/// nullable: NOT NULL is the append's to report), or `None` when the statement is not made of
/// literals alone (see the module docs); then `ins` is left as it was.
///
/// Errors: a value that does not convert to its column's type (as the cast of the planned
/// path: 22P02, 22003).
pub(crate) fn literal_rows(ins: &mut Insert, schema: &SchemaRef) -> SqlResult<Option<Vec<ChangeBatch>>> {
    let Some(q) = ins.source.as_mut() else { return Ok(None) };
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() || !ins.after_columns.is_empty() {
        return Ok(None);
    }
    let SetExpr::Values(values) = q.body.as_mut() else { return Ok(None) };
    // Target column of each position in a row.
    let targets: Vec<usize> = if ins.columns.is_empty() {
        (0..schema.fields().len()).collect()
    } else {
        let mut t = Vec::new();
        for c in &ins.columns {
            let [ObjectNamePart::Identifier(ident)] = c.0.as_slice() else { return Ok(None) };
            let name = if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() };
            match schema.index_of(&name) {
                Ok(i) if !t.contains(&i) => t.push(i),
                _ => return Ok(None),
            }
        }
        t
    };
    let width = targets.len();
    if values.rows.is_empty() || values.rows.iter().any(|r| r.content.len() != width) {
        return Ok(None);
    }
    let mut kinds = Vec::with_capacity(width);
    for j in 0..width {
        let mut all = Vec::with_capacity(values.rows.len());
        for r in &values.rows {
            match kind(&r.content[j]) {
                Some(k) => all.push(k),
                None => return Ok(None),
            }
        }
        match column_kind(all.into_iter()) {
            Some(k) => kinds.push(k),
            None => return Ok(None),
        }
    }
    let rows = std::mem::take(&mut values.rows);
    let relaxed = Arc::new(Schema::new(schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()));
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Expr>> = rows.by_ref().take(CHUNK_ROWS).map(|r| r.content).collect();
        let n = chunk.len();
        let mut cols: Vec<ArrayRef> = schema.fields().iter().map(|f| arrow::array::new_null_array(f.data_type(), n)).collect();
        for (j, &t) in targets.iter().enumerate() {
            let array = literal_column(&chunk, j, kinds[j])?;
            cols[t] = crate::dml::cast_column(&array, schema.field(t).data_type())?;
        }
        out.push(ChangeBatch::inserts(RecordBatch::try_new(relaxed.clone(), cols)?));
    }
    Ok(Some(out))
}

/// Column `j` of `rows` (all of kind `kind` or NULL) as one array.
fn literal_column(rows: &[Vec<Expr>], j: usize, kind: Kind) -> SqlResult<ArrayRef> {
    let is_null = |e: &Expr| matches!(e, Expr::Value(v) if v.value == Value::Null);
    let number = |e: &Expr| if is_null(e) { None } else { number_text(e) };
    Ok(match kind {
        Kind::Null => arrow::array::new_null_array(&DataType::Null, rows.len()),
        Kind::Int => Arc::new(rows.iter().map(|r| number(&r[j]).and_then(|n| n.parse::<i64>().ok())).collect::<Int64Array>()),
        Kind::UInt => Arc::new(rows.iter().map(|r| number(&r[j]).and_then(|n| n.parse::<u64>().ok())).collect::<UInt64Array>()),
        Kind::Float => Arc::new(rows.iter().map(|r| number(&r[j]).and_then(|n| n.parse::<f64>().ok())).collect::<Float64Array>()),
        Kind::Bool => Arc::new(
            rows.iter()
                .map(|r| match &r[j] {
                    Expr::Value(v) => match v.value {
                        Value::Boolean(b) => Some(b),
                        _ => None,
                    },
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
        Kind::Str => Arc::new(
            rows.iter()
                .map(|r| match &r[j] {
                    Expr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) => Some(s.as_str()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect::<StringArray>(),
        ),
    })
}


/// Statements at least this long (bytes of SQL) are cut by [`split_values`] when they can be.
pub(crate) const LARGE_STATEMENT_BYTES: usize = 1 << 20;

/// Rows per piece when a large `INSERT ... VALUES` is parsed in pieces ([`split_values`]).
pub(crate) const PIECE_ROWS: usize = 50_000;

/// A large `INSERT INTO t [(cols)] VALUES (...), (...), ...` cut into statements of at most
/// [`PIECE_ROWS`] rows each (the same head, a slice of the rows), so that parsing it never
/// holds the whole statement's tokens and syntax tree: a 60 MB statement's took 5 GB. The
/// pieces are ordinary statements, parsed and checked as the whole would be, and the caller
/// appends their rows in one write, so the statement stays all or nothing.
///
/// `None` unless the text is exactly that shape: after `VALUES`, only parenthesized rows,
/// commas, whitespace and a final `;`; no comments, dollar quotes or `E'...'` strings (whose
/// quoting a byte scan cannot follow), nothing after the rows (`ON CONFLICT`, `RETURNING`).
pub(crate) fn split_values(sql: &str) -> Option<Vec<String>> {
    let b = sql.as_bytes();
    let text = sql.trim_start();
    if !text.get(..6)?.eq_ignore_ascii_case("INSERT") || sql.contains("--") || sql.contains("/*") || sql.contains('$') {
        return None;
    }
    // Find the first `VALUES` word outside quotes and parentheses.
    let mut i = 0;
    let mut depth = 0i32;
    let values_at = loop {
        if i >= b.len() {
            return None;
        }
        match b[i] {
            b'\'' | b'"' => i = skip_quoted(b, i)?,
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth -= 1;
                i += 1;
            }
            c if depth == 0 && (c == b'v' || c == b'V') => {
                let word = b.get(i..i + 6)?;
                let before = i == 0 || !is_word(b[i - 1]);
                let after = b.get(i + 6).is_none_or(|c| !is_word(*c));
                if word.eq_ignore_ascii_case(b"VALUES") && before && after {
                    break i;
                }
                i += 1;
            }
            c if c == b'e' || c == b'E' => {
                // An E'...' string has backslash escapes.
                if b.get(i + 1) == Some(&b'\'') && (i == 0 || !is_word(b[i - 1])) {
                    return None;
                }
                i += 1;
            }
            _ => i += 1,
        }
    };
    let head = &sql[..values_at + 6];
    // The rows: `(` ... `)` at depth 0, separated by commas.
    let mut pieces = Vec::new();
    let mut i = values_at + 6;
    let mut piece_start = i;
    let mut rows = 0usize;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'(') {
            return None;
        }
        // One row, to its matching parenthesis.
        let mut depth = 0i32;
        loop {
            match *b.get(i)? {
                b'\'' | b'"' => i = skip_quoted(b, i)?,
                b'(' => {
                    depth += 1;
                    i += 1;
                }
                b')' => {
                    depth -= 1;
                    i += 1;
                    if depth == 0 {
                        break;
                    }
                }
                c if (c == b'e' || c == b'E') && b.get(i + 1) == Some(&b'\'') && !is_word(b[i - 1]) => return None,
                _ => i += 1,
            }
        }
        rows += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        match b.get(i) {
            Some(b',') => {
                if rows % PIECE_ROWS == 0 {
                    pieces.push(format!("{head} {}", &sql[piece_start..i]));
                    piece_start = i + 1;
                }
                i += 1;
            }
            None | Some(b';') => {
                if sql[i..].trim_start_matches(';').trim().is_empty() {
                    pieces.push(format!("{head} {}", &sql[piece_start..i]));
                    return Some(pieces);
                }
                return None;
            }
            _ => return None,
        }
    }
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The index just past the quoted string or identifier that starts at `i` (`''` and `""` are
/// the quote doubled); `None` when it is not closed.
fn skip_quoted(b: &[u8], i: usize) -> Option<usize> {
    let q = b[i];
    let mut j = i + 1;
    loop {
        if *b.get(j)? == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            return Some(j + 1);
        }
        j += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_datafusion_number_typing() {
        assert_eq!(number_kind("9223372036854775807", false), Some(Kind::Int));
        assert_eq!(number_kind("9223372036854775808", true), Some(Kind::Int));
        assert_eq!(number_kind("9223372036854775808", false), Some(Kind::UInt));
        assert_eq!(number_kind("18446744073709551616", false), Some(Kind::Float));
        assert_eq!(number_kind("1.5e3", false), Some(Kind::Float));
        assert_eq!(column_kind([Kind::Null, Kind::Int, Kind::Float].into_iter()), Some(Kind::Float));
        assert_eq!(column_kind([Kind::Int, Kind::UInt].into_iter()), None);
        assert_eq!(column_kind([Kind::Str, Kind::Int].into_iter()), None);
        assert_eq!(column_kind([Kind::Null, Kind::Null].into_iter()), Some(Kind::Null));
    }

    #[test]
    fn large_values_are_cut_between_rows() {
        let rows: Vec<String> = (0..PIECE_ROWS * 2 + 7).map(|i| format!("({i}, 'a''b,(c)', \"x\")")).collect();
        let sql = format!("insert into t (a, b) values {};", rows.join(", "));
        let pieces = split_values(&sql).unwrap();
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| p.starts_with("insert into t (a, b) values ")));
        assert_eq!(pieces[0].matches("'a''b,(c)'").count(), PIECE_ROWS);
        assert!(pieces[2].trim_end().ends_with(&rows[rows.len() - 1]));
        let total: usize = pieces.iter().map(|p| p.matches("'a''b,(c)'").count()).sum();
        assert_eq!(total, rows.len());
        // Shapes a byte scan cannot follow, or that are not rows alone, are left whole.
        for sql in [
            "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
            "INSERT INTO t VALUES (1), (E'\\'')",
            "INSERT INTO t VALUES (1) -- c",
            "INSERT INTO t SELECT 1",
            "INSERT INTO t VALUES (1), 2",
            "INSERT INTO t VALUES ('open",
            "SELECT 1",
        ] {
            assert_eq!(split_values(sql), None, "{sql}");
        }
        assert_eq!(split_values("INSERT INTO \"values\" VALUES (1)").unwrap(), vec!["INSERT INTO \"values\" VALUES  (1)".to_string()]);
    }
}
