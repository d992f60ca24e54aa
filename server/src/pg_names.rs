//! Result column names as PostgreSQL gives them, for a batch `SELECT`'s RowDescription.
//!
//! PostgreSQL names an output column by its select-list entry (`FigureColname` in
//! `src/backend/parser/parse_target.c`; docs "7.3.2. Column Labels"): an alias always wins; a
//! bare column reference keeps the column's name; a function call, aggregate or window function
//! is named after the function (`count(*)` is `count`); a cast after its operand's name, or
//! after the target type when the operand has none (`1::int` is `int4`); `CASE` is `case`, a
//! scalar subquery takes its single column's name; anything else is `?column?`.
//!
//! DataFusion names the same columns by their expression (`Int64(1)`, `count(*)`). Only the
//! schema sent to the client is renamed: the plan, and the names persistent queries map to sink
//! columns, keep DataFusion's.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use sqlparser::ast::{DataType as SqlType, Expr, Function, Ident, ObjectName, Query, SelectItem, SetExpr};

/// PostgreSQL's name for an entry that gives none.
pub const UNNAMED: &str = "?column?";

/// The PostgreSQL names of `query`'s result columns, one per column of `schema` (DataFusion's
/// plan of it). Columns a wildcard expands to keep their names; when the wildcards' share of
/// the columns cannot be told apart (two wildcards) or the counts do not match, `schema` is
/// returned unchanged.
pub fn rename(schema: &SchemaRef, query: &Query) -> SchemaRef {
    let Some(items) = projection(&query.body) else { return schema.clone() };
    let wildcards = items.iter().filter(|i| matches!(i, SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..))).count();
    let named = items.len() - wildcards;
    let n = schema.fields().len();
    if wildcards > 1 || (wildcards == 0 && named != n) || named > n {
        return schema.clone();
    }
    let expanded = n - named;
    let mut names = Vec::with_capacity(n);
    let mut i = 0;
    for item in items {
        match item {
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                for _ in 0..expanded {
                    names.push(schema.field(i).name().clone());
                    i += 1;
                }
            }
            SelectItem::ExprWithAlias { alias, .. } => {
                names.push(ident(alias));
                i += 1;
            }
            SelectItem::UnnamedExpr(e) => {
                names.push(expr_name(e).unwrap_or_else(|| UNNAMED.to_string()));
                i += 1;
            }
            _ => {
                names.push(schema.field(i).name().clone());
                i += 1;
            }
        }
    }
    let fields: Vec<Field> = schema.fields().iter().zip(names).map(|(f, n)| f.as_ref().clone().with_name(n)).collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batches` under the renamed `schema` (same columns, new names).
///
/// Errors: a batch whose columns do not match `schema` (never, for a schema from [`rename`]).
pub fn with_schema(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    batches.into_iter().map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec())).collect()
}

/// The select list that names a query's columns: the first SELECT's, as in a set operation.
fn projection(body: &SetExpr) -> Option<&[SelectItem]> {
    match body {
        SetExpr::Select(s) => Some(&s.projection),
        SetExpr::Query(q) => projection(&q.body),
        SetExpr::SetOperation { left, .. } => projection(left),
        _ => None,
    }
}

fn ident(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

fn last(name: &ObjectName) -> Option<String> {
    name.0.last().and_then(|p| p.as_ident()).map(ident)
}

fn function_name(f: &Function) -> Option<String> {
    last(&f.name)
}

/// An expression's PostgreSQL name; None for `?column?`.
fn expr_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(id) => Some(ident(id)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident),
        Expr::Function(f) => function_name(f),
        Expr::Nested(inner) => expr_name(inner),
        Expr::Cast { expr, data_type, .. } => expr_name(expr).or_else(|| type_name(data_type).map(str::to_string)),
        Expr::Case { .. } => Some("case".into()),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Array(_) => Some("array".into()),
        Expr::Subquery(q) => projection(&q.body).and_then(|items| match items {
            [SelectItem::ExprWithAlias { alias, .. }] => Some(ident(alias)),
            [SelectItem::UnnamedExpr(e)] => expr_name(e),
            _ => None,
        }),
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Trim { .. } => Some("btrim".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        Expr::Overlay { .. } => Some("overlay".into()),
        _ => None,
    }
}

/// The name PostgreSQL gives a cast of an unnamed operand: its type's internal name.
fn type_name(t: &SqlType) -> Option<&'static str> {
    Some(match t {
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => "int4",
        SqlType::BigInt(_) | SqlType::Int8(_) => "int8",
        SqlType::SmallInt(_) | SqlType::Int2(_) => "int2",
        SqlType::Text | SqlType::String(_) => "text",
        SqlType::Varchar(_) | SqlType::CharacterVarying(_) => "varchar",
        SqlType::Char(_) | SqlType::Character(_) => "bpchar",
        SqlType::Boolean | SqlType::Bool => "bool",
        SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float8 => "float8",
        SqlType::Real | SqlType::Float4 => "float4",
        SqlType::Numeric(_) | SqlType::Decimal(_) => "numeric",
        SqlType::Date => "date",
        SqlType::Timestamp(_, tz) => match tz {
            sqlparser::ast::TimezoneInfo::WithTimeZone | sqlparser::ast::TimezoneInfo::Tz => "timestamptz",
            _ => "timestamp",
        },
        SqlType::Interval { .. } => "interval",
        SqlType::Bytea => "bytea",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;
    use sqlparser::ast::Statement;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn names(sql: &str, df_names: &[&str]) -> Vec<String> {
        let Statement::Query(q) = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0) else { panic!() };
        let schema = Arc::new(Schema::new(df_names.iter().map(|n| Field::new(*n, DataType::Int64, true)).collect::<Vec<_>>()));
        rename(&schema, &q).fields().iter().map(|f| f.name().clone()).collect()
    }

    #[test]
    fn named_as_postgres_names_them() {
        assert_eq!(names("select 1", &["Int64(1)"]), ["?column?"]);
        assert_eq!(names("select count(*), sum(x), x + 1, lower(s) from t", &["a", "b", "c", "d"]), ["count", "sum", "?column?", "lower"]);
        assert_eq!(names("select cast(x as int), 1::int, '1'::text, (t.X) from t", &["a", "b", "c", "d"]), ["x", "int4", "text", "x"]);
        assert_eq!(names("select x as \"Total\", y AS z from t", &["a", "b"]), ["Total", "z"]);
        assert_eq!(names("select case when x then 1 end, (select max(y) from u) from t", &["a", "b"]), ["case", "max"]);
        assert_eq!(names("select *, count(*) over () from t", &["id", "name", "c"]), ["id", "name", "count"]);
        assert_eq!(names("select 1 union all select 2", &["Int64(1)"]), ["?column?"]);
        assert_eq!(names("select now(), current_timestamp", &["a", "b"]), ["now", "current_timestamp"]);
        // Counts that do not add up leave DataFusion's names.
        assert_eq!(names("select *, * from t", &["a", "b"]), ["a", "b"]);
    }
}
