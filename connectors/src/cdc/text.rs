//! Postgres's text output (pgoutput values, `COPY ... TO STDOUT` lines) as Arrow arrays.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray};
use arrow::compute::CastOptions;
use arrow::datatypes::DataType;
use pg_walstream::ColumnValue;

use crate::error::Result;

/// Postgres text output of one column as an Arrow array of `dt`.
pub(super) fn text_column<'a>(values: impl Iterator<Item = Option<&'a ColumnValue>>, dt: &DataType) -> Result<ArrayRef> {
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
pub(super) fn copy_fields(line: &[u8]) -> Vec<Option<String>> {
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

#[cfg(test)]
mod tests {
    use arrow::datatypes::TimeUnit;

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
}
