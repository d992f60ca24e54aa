//! PostgreSQL's text output for floats and timestamps, where pgwire's differs.
//!
//! PostgreSQL (12 and later, `extra_float_digits` 1, the default) prints a `float8` as the
//! shortest digits that read back as the same value, in decimal notation when the decimal
//! exponent is in `-4..15` (`-4..6` for `float4`) and as `1.5e+20` / `1e-05` otherwise, so a
//! whole value is `591`, not `591.0`. It prints a `timestamp` without a fractional part when the
//! microseconds are zero and with trailing zeros trimmed otherwise (`2024-01-01 10:00:00`,
//! `2024-01-01 10:00:00.25`), and a `timestamptz` with its offset (`+00`, `+05:30`). Columns
//! sent in text format are rewritten into those strings before `arrow-pg` encodes them; the
//! RowDescription keeps their real types, and binary-format columns are untouched.

use std::fmt::Write;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema, TimeUnit, TimestampMicrosecondType};
use chrono::{DateTime, Offset, TimeZone, Timelike};
use pgwire::api::results::{FieldFormat, FieldInfo};

/// The text PostgreSQL prints for a float whose shortest round-trip form in Rust's `{:e}`
/// notation is `exp_form`; `max_exp` is 15 for `float8`, 6 for `float4`.
fn float_text(v: f64, exp_form: &str, max_exp: i32) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let (neg, rest) = match exp_form.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, exp_form),
    };
    let (mantissa, exp) = rest.split_once('e').unwrap_or((rest, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if neg {
        out.push('-');
    }
    if (-4..max_exp).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff trimmed]`.
fn timestamp_text<Tz: TimeZone>(t: &DateTime<Tz>, out: &mut String)
where
    Tz::Offset: std::fmt::Display,
{
    let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S"));
    let micros = t.nanosecond() / 1000;
    if micros != 0 {
        let frac = format!("{micros:06}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
}

/// A text-format column in PostgreSQL's spelling, or `None` when pgwire's is already right.
fn column_text(col: &ArrayRef) -> Result<Option<ArrayRef>, arrow::error::ArrowError> {
    let strings: StringArray = match col.data_type() {
        DataType::Float64 => {
            let a = col.as_primitive::<Float64Type>();
            a.iter().map(|v| v.map(|v| float_text(v, &format!("{v:e}"), 15))).collect()
        }
        DataType::Float32 => {
            let a = col.as_primitive::<Float32Type>();
            a.iter().map(|v| v.map(|v| float_text(v as f64, &format!("{v:e}"), 6))).collect()
        }
        DataType::Timestamp(_, tz) => {
            let micros = cast(col, &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))?;
            let a = micros.as_primitive::<TimestampMicrosecondType>();
            let zone = match tz {
                Some(z) => Some(arrow::array::timezone::Tz::from_str(z)?),
                None => None,
            };
            (0..a.len())
                .map(|i| {
                    if a.is_null(i) {
                        return None;
                    }
                    let mut s = String::with_capacity(32);
                    match zone {
                        None => timestamp_text(&DateTime::from_timestamp_micros(a.value(i))?, &mut s),
                        Some(z) => {
                            let t = DateTime::from_timestamp_micros(a.value(i))?.with_timezone(&z);
                            timestamp_text(&t, &mut s);
                            let secs = t.offset().fix().local_minus_utc();
                            let (sign, secs) = if secs < 0 { ('-', -secs) } else { ('+', secs) };
                            let _ = write!(s, "{sign}{:02}", secs / 3600);
                            if secs % 3600 != 0 {
                                let _ = write!(s, ":{:02}", secs % 3600 / 60);
                            }
                        }
                    }
                    Some(s)
                })
                .collect()
        }
        _ => return Ok(None),
    };
    Ok(Some(Arc::new(strings)))
}

/// Rewrites the text-format float and timestamp columns of `batch` (described by `fields`)
/// into PostgreSQL's text; other columns are returned as they are.
///
/// Errors: a timestamp column with a time zone Arrow cannot parse.
pub fn postgres_text(batch: RecordBatch, fields: &[FieldInfo]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut changed = false;
    let mut cols = Vec::with_capacity(batch.num_columns());
    let mut schema_fields = Vec::with_capacity(batch.num_columns());
    for (i, col) in batch.columns().iter().enumerate() {
        let field = batch.schema().field(i).clone();
        let text = fields.get(i).is_some_and(|f| f.format() == FieldFormat::Text);
        match if text { column_text(col)? } else { None } {
            Some(s) => {
                changed = true;
                schema_fields.push(Field::new(field.name(), DataType::Utf8, true));
                cols.push(s);
            }
            None => {
                schema_fields.push(field);
                cols.push(col.clone());
            }
        }
    }
    if !changed {
        return Ok(batch);
    }
    RecordBatch::try_new(Arc::new(Schema::new(schema_fields)), cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f8(v: f64) -> String {
        float_text(v, &format!("{v:e}"), 15)
    }

    #[test]
    fn floats_print_as_postgres_prints_them() {
        // Each pair is what `SELECT <v>::float8` prints in PostgreSQL 16.
        for (v, pg) in [
            (591.0, "591"),
            (591.5, "591.5"),
            (0.1, "0.1"),
            (-2.25, "-2.25"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e15, "1e+15"),
            (123456789012345.6, "123456789012345.6"),
            (1.5e20, "1.5e+20"),
            (100.0, "100"),
            (0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
        ] {
            assert_eq!(f8(v), pg, "{v}");
        }
        assert_eq!(float_text(1e6, &format!("{:e}", 1e6f32), 6), "1e+06");
        assert_eq!(float_text(123456.0, &format!("{:e}", 123456f32), 6), "123456");
    }

    #[test]
    fn timestamps_drop_zero_fractions() {
        let t = |micros: i64| {
            let mut s = String::new();
            timestamp_text(&DateTime::from_timestamp_micros(micros).unwrap(), &mut s);
            s
        };
        assert_eq!(t(1_704_103_200_000_000), "2024-01-01 10:00:00");
        assert_eq!(t(1_704_103_200_250_000), "2024-01-01 10:00:00.25");
        assert_eq!(t(1_704_103_200_000_001), "2024-01-01 10:00:00.000001");
    }
}
