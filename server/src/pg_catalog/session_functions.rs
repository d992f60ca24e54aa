//! The functions of PostgreSQL's "9.26. System Information Functions" and "9.27. System
//! Administration Functions" that drivers and BI tools call, as DataFusion scalar UDFs:
//! `current_schemas`, `current_setting`, `set_config`, `pg_backend_pid`, `to_regtype`,
//! `to_regclass`, `quote_ident`, `parse_ident`, `array_lower`, `array_upper`,
//! `pg_get_function_result`, `pg_get_function_arguments`, `pg_function_is_visible`,
//! `pg_type_is_visible`, `pg_get_viewdef`, `pg_is_in_recovery`, `pg_relation_is_publishable`,
//! and `sluice_regtype_oid(text)` (the OID half of a `'name'::regtype` cast).
//!
//! The session's values (`current_setting`, `set_config`, `pg_backend_pid`) are read from the
//! session the statement runs in ([`super::with_session_params`]); [`super::rewrite`] turns
//! calls with literal arguments into literals before planning, so these bodies only run for
//! calls over columns.

use std::sync::{Arc, Weak};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, ListBuilder, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field};
use datafusion::common::Result;
use datafusion::logical_expr::ScalarUDF;

use super::functions::{ints, nulls, texts, udf};
use super::rewrite::quote_ident;
use super::types::{format_type, type_oid};
use super::with_session_params;
use crate::engine::Engine;

fn text_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

fn bools(n: usize, v: bool) -> Result<ArrayRef> {
    Ok(Arc::new(BooleanArray::from(vec![v; n])))
}

/// PostgreSQL's `parse_ident`: a dotted name split into its parts, double-quoted parts kept as
/// written (`""` is one quote), others lower-cased.
pub fn parse_ident(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut chars = s.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        part.push('"');
                    } else {
                        break;
                    }
                } else {
                    part.push(c);
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
            part = part.trim().to_string();
        }
        parts.push(part);
        match chars.next() {
            Some('.') => continue,
            _ => break,
        }
    }
    parts
}

/// The session functions; `to_regclass` looks `engine`'s tables up.
pub(super) fn udfs(engine: Weak<Engine>) -> Vec<ScalarUDF> {
    vec![
        udf("current_schemas", &[1], text_list(), |a, n| {
            let implicit = arrow::compute::cast(&a[0], &DataType::Boolean)?;
            let implicit = implicit.as_boolean();
            let mut b = ListBuilder::new(StringBuilder::new());
            for i in 0..n {
                if implicit.is_valid(i) && implicit.value(i) {
                    b.values().append_value("pg_catalog");
                }
                b.values().append_value("public");
                b.append(true);
            }
            Ok(Arc::new(b.finish()))
        }),
        udf("current_setting", &[1, 2], DataType::Utf8, |a, _| {
            let names = texts(&a[0])?;
            let missing_ok = if a.len() > 1 { Some(arrow::compute::cast(&a[1], &DataType::Boolean)?) } else { None };
            let mut out = Vec::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                let ok = missing_ok.as_ref().is_some_and(|m| m.as_boolean().is_valid(i) && m.as_boolean().value(i));
                out.push(match name {
                    None => None,
                    Some(n) => match with_session_params(|p| p.show(n)) {
                        Ok(v) => Some(v),
                        Err(_) if ok => None,
                        Err(e) => return Err(datafusion::error::DataFusionError::Execution(e.message)),
                    },
                });
            }
            Ok(Arc::new(StringArray::from(out)))
        }),
        udf("set_config", &[3], DataType::Utf8, |a, _| {
            let (names, values) = (texts(&a[0])?, texts(&a[1])?);
            let mut out = Vec::with_capacity(names.len());
            for (name, value) in names.iter().zip(values.iter()) {
                let Some(name) = name else {
                    out.push(None);
                    continue;
                };
                let shown = with_session_params(|p| p.set(name, value).and_then(|_| p.show(name)))
                    .map_err(|e| datafusion::error::DataFusionError::Execution(e.message))?;
                out.push(Some(shown));
            }
            Ok(Arc::new(StringArray::from(out)))
        }),
        udf("sluice_current_user", &[0], DataType::Utf8, |_, n| {
            Ok(Arc::new(StringArray::from(vec![with_session_params(|p| p.user().to_string()); n])))
        }),
        udf("sluice_session_user", &[0], DataType::Utf8, |_, n| {
            Ok(Arc::new(StringArray::from(vec![with_session_params(|p| p.user().to_string()); n])))
        }),
        udf("pg_backend_pid", &[0], DataType::Int32, |_, n| {
            let pid = with_session_params(|p| p.backend_pid());
            Ok(Arc::new(Int32Array::from(vec![pid; n])))
        }),
        udf("to_regtype", &[1], DataType::Utf8, |a, _| {
            let names = texts(&a[0])?;
            Ok(Arc::new(names.iter().map(|s| s.and_then(type_oid).map(|o| format_type(o, None))).collect::<StringArray>()))
        }),
        udf("sluice_regtype_oid", &[1], DataType::Int64, |a, _| {
            let names = texts(&a[0])?;
            Ok(Arc::new(names.iter().map(|s| s.and_then(type_oid)).collect::<Int64Array>()))
        }),
        udf("to_regclass", &[1], DataType::Utf8, move |a, _| {
            let names = texts(&a[0])?;
            let engine = engine.upgrade();
            let out: StringArray = names
                .iter()
                .map(|s| {
                    let parts = parse_ident(s?);
                    let (schema, name) = match parts.as_slice() {
                        [n] => ("public", n.clone()),
                        [s, n] => (s.as_str(), n.clone()),
                        _ => return None,
                    };
                    let tables = engine.as_ref()?.tables.read().unwrap();
                    (schema == "public" && tables.contains_key(&name)).then(|| quote_ident(&name))
                })
                .collect();
            Ok(Arc::new(out))
        }),
        udf("quote_ident", &[1], DataType::Utf8, |a, _| {
            Ok(Arc::new(texts(&a[0])?.iter().map(|s| s.map(quote_ident)).collect::<StringArray>()))
        }),
        udf("parse_ident", &[1, 2], text_list(), |a, _| {
            let names = texts(&a[0])?;
            let mut b = ListBuilder::new(StringBuilder::new());
            for s in names.iter() {
                match s {
                    Some(s) => {
                        for p in parse_ident(s) {
                            b.values().append_value(p);
                        }
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
            Ok(Arc::new(b.finish()))
        }),
        udf("sluice_null_text_array", &[0], text_list(), |_, n| Ok(arrow::array::new_null_array(&text_list(), n))),
        udf("array_lower", &[2], DataType::Int32, |a, _| array_bound(a, false)),
        udf("array_upper", &[2], DataType::Int32, |a, _| array_bound(a, true)),
        udf("pg_get_function_result", &[1], DataType::Utf8, |_, n| nulls(n)),
        udf("pg_get_function_arguments", &[1], DataType::Utf8, |_, n| nulls(n)),
        udf("pg_get_viewdef", &[1, 2], DataType::Utf8, |_, n| nulls(n)),
        udf("pg_function_is_visible", &[1], DataType::Boolean, |_, n| bools(n, true)),
        udf("pg_type_is_visible", &[1], DataType::Boolean, |_, n| bools(n, true)),
        udf("pg_is_in_recovery", &[0], DataType::Boolean, |_, n| bools(n, false)),
        udf("pg_relation_is_publishable", &[1], DataType::Boolean, |_, n| bools(n, false)),
    ]
}

/// `array_lower(a, 1)` is 1 and `array_upper(a, 1)` the length of a non-empty one-dimensional
/// array; NULL for an empty array, another dimension, or a value that is not an array.
fn array_bound(a: &[ArrayRef], upper: bool) -> Result<ArrayRef> {
    let dims = ints(&a[1])?;
    let n = dims.len();
    let lens: Vec<Option<usize>> = match a[0].data_type() {
        DataType::List(_) => {
            let l = a[0].as_list::<i32>();
            (0..n).map(|i| l.is_valid(i).then(|| l.value_length(i) as usize)).collect()
        }
        DataType::LargeList(_) => {
            let l = a[0].as_list::<i64>();
            (0..n).map(|i| l.is_valid(i).then(|| l.value_length(i) as usize)).collect()
        }
        _ => vec![None; n],
    };
    let out: Int32Array = lens
        .into_iter()
        .zip(dims.iter())
        .map(|(len, dim)| match (len, dim) {
            (Some(len), Some(1)) if len > 0 => Some(if upper { len as i32 } else { 1 }),
            _ => None,
        })
        .collect();
    Ok(Arc::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ident_as_postgres() {
        assert_eq!(parse_ident("Public.Foo"), ["public", "foo"]);
        assert_eq!(parse_ident("\"My \"\"T\"\"\".x"), ["My \"T\"", "x"]);
    }
}
