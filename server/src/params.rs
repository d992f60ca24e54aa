//! Bound parameters of the extended protocol, decoded into the values a statement runs with.
//!
//! arrow-pg decodes each parameter by the type the client named in Parse, else by the type
//! Sluice inferred for it (the one Describe reported). Around that, [`bind`] applies the checks
//! PostgreSQL's input functions make, so a value that does not fit is an error and never a NULL:
//!
//! - a binary value shorter than its type's size (a `float8` is 8 bytes) is 08P01, as
//!   PostgreSQL's "insufficient data left in message"; a longer one 22P03;
//! - a text value that is not a number of its numeric type is 22P02, a number outside the
//!   type's range 22003 (`value "1180591620717411303424" is out of range for type bigint`);
//! - a value of another type than the parameter's (a client that bound text to a `BIGINT`
//!   column's parameter) is cast to the parameter's type, with the same errors;
//! - a non-NULL value that decoded to NULL (arrow-pg maps a `NUMERIC` too large for a `BIGINT`
//!   to NULL) is 22003.

use arrow::datatypes::{DataType, TimeUnit};
use arrow_pg::datatypes::df::deserialize_parameters;
use arrow_pg::datatypes::into_pg_type;
use datafusion::common::{ParamValues, ScalarValue};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::Type;
use pgwire::error::PgWireError;

use crate::errors::{SqlError, SqlResult};

/// Decodes the parameters bound to `portal`; `types` are the parameter types Sluice inferred
/// for the statement (None where it has none).
///
/// Errors: 08P01 or 22P03 for a binary value of the wrong length, 22P02 for a value that is not
/// of its type, 22003 for a number out of its type's range, 42804 for a value that cannot be
/// cast to its parameter's type.
pub fn bind<S: Clone>(portal: &Portal<S>, types: &[Option<DataType>]) -> SqlResult<ParamValues> {
    if let Format::Individual(codes) = &portal.parameter_format {
        if codes.len() != portal.parameters.len() {
            return Err(SqlError::new(
                "08P01",
                format!("bind message has {} parameter formats but {} parameters", codes.len(), portal.parameters.len()),
            ));
        }
    }
    for (i, raw) in portal.parameters.iter().enumerate() {
        let Some(raw) = raw else { continue };
        let wire = match portal.statement.parameter_types.get(i).cloned().flatten() {
            Some(t) => Some(t),
            None => types.get(i).cloned().flatten().and_then(|dt| into_pg_type(&dt).ok()),
        };
        let Some(wire) = wire else { continue };
        if portal.parameter_format.is_binary(i) {
            check_binary_length(i, &wire, raw.len())?;
        } else if let Some(target) = numeric_type(&wire) {
            let text = std::str::from_utf8(raw)
                .map_err(|_| SqlError::new("22021", format!("parameter ${}: invalid UTF-8", i + 1)))?;
            check_number(i, text, &target)?;
        }
    }
    let inferred: Vec<Option<&DataType>> = types.iter().map(|t| t.as_ref()).collect();
    let decoded = deserialize_parameters(portal, &inferred).map_err(|e| match e {
        PgWireError::FailedToParseParameter(e) => SqlError::bad_value(format!("invalid parameter value: {e}")),
        e => SqlError::new("22023", e.to_string()),
    })?;
    let values = match decoded {
        ParamValues::List(values) => values,
        named => return Ok(named),
    };
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let target = types.get(i).cloned().flatten();
        let sent = portal.parameters.get(i).is_some_and(|p| p.is_some());
        if sent && v.value.is_null() {
            let name = target.as_ref().map(pg_type_name).unwrap_or_else(|| "its type".into());
            return Err(SqlError::new("22003", format!("parameter ${}: value out of range for type {name}", i + 1)));
        }
        let value = match target {
            Some(t) if v.value.data_type() != t && !v.value.is_null() => cast(i, &v.value, &t)?,
            _ => v.value,
        };
        out.push(datafusion::common::metadata::ScalarAndMetadata::new(value, v.metadata));
    }
    Ok(ParamValues::List(out))
}

/// Fills in the types of `$n` placeholders DataFusion left untyped from their casts in `stmt`
/// (`$1::int8`, `CAST($2 AS TEXT)`), as PostgreSQL infers a parameter's type from a cast
/// (docs "PREPARE": "a parameter's data type ... is inferred from the context"). `types` grows
/// to the highest placeholder cast.
pub fn cast_types(stmt: &sqlparser::ast::Statement, types: &mut Vec<Option<DataType>>) {
    use sqlparser::ast::{Expr, Value};
    let _ = sqlparser::ast::visit_expressions(stmt, |e| {
        if let Expr::Cast { expr, data_type, .. } = e {
            if let Expr::Value(v) = expr.as_ref() {
                if let Value::Placeholder(p) = &v.value {
                    let n = p.trim_start_matches('$').parse::<usize>().ok().filter(|n| *n >= 1);
                    if let (Some(n), Some(t)) = (n, sql_type(data_type)) {
                        if types.len() < n {
                            types.resize(n, None);
                        }
                        if types[n - 1].is_none() {
                            types[n - 1] = Some(t);
                        }
                    }
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// The Arrow type Sluice stores a SQL type as, for the types parameters are cast to.
fn sql_type(t: &sqlparser::ast::DataType) -> Option<DataType> {
    use sqlparser::ast::{DataType as T, TimezoneInfo};
    Some(match t {
        T::SmallInt(_) | T::Int2(_) => DataType::Int16,
        T::Int(_) | T::Integer(_) | T::Int4(_) => DataType::Int32,
        T::BigInt(_) | T::Int8(_) => DataType::Int64,
        T::Real | T::Float4 => DataType::Float32,
        T::Double(_) | T::DoublePrecision | T::Float8 => DataType::Float64,
        T::Boolean | T::Bool => DataType::Boolean,
        T::Text | T::String(_) | T::Varchar(_) | T::CharacterVarying(_) => DataType::Utf8,
        T::Date => DataType::Date32,
        T::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        T::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Microsecond, None),
        T::Bytea => DataType::Binary,
        _ => return None,
    })
}

/// The size of a fixed-size type's binary form, as PostgreSQL's `*recv` functions read it.
fn binary_size(t: &Type) -> Option<usize> {
    Some(match *t {
        Type::BOOL | Type::CHAR => 1,
        Type::INT2 => 2,
        Type::INT4 | Type::FLOAT4 | Type::DATE | Type::OID => 4,
        Type::INT8 | Type::FLOAT8 | Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::TIME => 8,
        Type::UUID | Type::INTERVAL => 16,
        _ => return None,
    })
}

fn check_binary_length(i: usize, t: &Type, len: usize) -> SqlResult<()> {
    match binary_size(t) {
        Some(n) if len < n => Err(SqlError::new(
            "08P01",
            format!("insufficient data left in message: parameter ${} of type {} has {len} bytes, not {n}", i + 1, t.name()),
        )),
        Some(n) if len > n => Err(SqlError::new(
            "22P03",
            format!("incorrect binary data format in bind parameter {}: {len} bytes for type {}, not {n}", i + 1, t.name()),
        )),
        _ => Ok(()),
    }
}

/// The Arrow type a numeric wire type's text is read as.
fn numeric_type(t: &Type) -> Option<DataType> {
    Some(match *t {
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        _ => return None,
    })
}

/// Checks the text of a number as PostgreSQL's `int8in` / `float8in` do.
fn check_number(i: usize, text: &str, t: &DataType) -> SqlResult<()> {
    let s = text.trim();
    let ok = match t {
        DataType::Int16 => s.parse::<i16>().is_ok(),
        DataType::Int32 => s.parse::<i32>().is_ok(),
        DataType::Int64 => s.parse::<i64>().is_ok(),
        DataType::Float32 | DataType::Float64 => match s.parse::<f64>() {
            // Rust reads "1e999" as infinity; PostgreSQL calls it out of range.
            Ok(v) => v.is_finite() || s.to_ascii_lowercase().contains("inf"),
            Err(_) => false,
        },
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(text_error(i, text, t))
    }
}

/// The error for a text that does not read as type `t`: 22003 when it is a number (too large
/// for `t`), else 22P02.
fn text_error(i: usize, text: &str, t: &DataType) -> SqlError {
    let name = pg_type_name(t);
    let s = text.trim();
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    let number = integer || (t.is_floating() && s.parse::<f64>().is_ok());
    if number && (t.is_integer() || t.is_floating() || matches!(t, DataType::Decimal128(..))) {
        SqlError::new("22003", format!("value \"{text}\" is out of range for type {name} (parameter ${})", i + 1))
    } else {
        SqlError::bad_value(format!("invalid input syntax for type {name}: \"{text}\" (parameter ${})", i + 1))
    }
}

/// Casts a decoded value to its parameter's type, strictly (no NULL for what does not fit).
fn cast(i: usize, v: &ScalarValue, t: &DataType) -> SqlResult<ScalarValue> {
    v.cast_to(t).map_err(|e| match v {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => text_error(i, s, t),
        _ if e.to_string().contains("Can't cast value") => {
            SqlError::new("22003", format!("parameter ${}: {v} is out of range for type {}", i + 1, pg_type_name(t)))
        }
        _ => SqlError::new(
            "42804",
            format!("parameter ${} is of type {} but the statement expects {}", i + 1, v.data_type(), pg_type_name(t)),
        ),
    })
}

/// PostgreSQL's name of the type an Arrow type stands for, as its errors print it.
fn pg_type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(..) => "numeric".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Time64(TimeUnit::Microsecond) => "time".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_out_of_range_or_not_numbers() {
        assert!(check_number(0, "42", &DataType::Int64).is_ok());
        let e = check_number(0, "1180591620717411303424", &DataType::Int64).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), ("22003", "value \"1180591620717411303424\" is out of range for type bigint (parameter $1)"));
        assert_eq!(check_number(1, "x", &DataType::Float64).unwrap_err().code, "22P02");
        assert_eq!(check_number(1, "1e999", &DataType::Float64).unwrap_err().code, "22003");
        assert!(check_number(1, "-Infinity", &DataType::Float64).is_ok());
        assert_eq!(check_binary_length(0, &Type::FLOAT8, 1).unwrap_err().code, "08P01");
        assert_eq!(check_binary_length(0, &Type::INT4, 8).unwrap_err().code, "22P03");
        let e = cast(0, &ScalarValue::Utf8(Some("x".into())), &DataType::Float64).unwrap_err();
        assert_eq!(e.code, "22P02");
        let e = cast(0, &ScalarValue::Utf8(Some("1180591620717411303424".into())), &DataType::Int64).unwrap_err();
        assert_eq!(e.code, "22003");
        assert_eq!(cast(0, &ScalarValue::Utf8(Some("7".into())), &DataType::Int64).unwrap(), ScalarValue::Int64(Some(7)));
    }
}
