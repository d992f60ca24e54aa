//! Flink's `datagen` connector: generated rows, for tests and benchmarks.
//!
//! Options as Flink documents them: `rows-per-second` (default 10000), `number-of-rows`
//! (unbounded when absent), and per field `fields.<f>.kind` = `random` (default) or `sequence`,
//! `fields.<f>.start` / `.end` for sequences (both required), `fields.<f>.min` / `.max` for random
//! numbers, `fields.<f>.length` for random strings (default 100), `fields.<f>.null-rate`.
//! A sequence bounds the number of rows to `end - start + 1`.
//!
//! Generation is deterministic: row `i` is a pure function of `i` and the field, so a job that
//! restarts from a checkpointed row offset regenerates exactly the same rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, Int8Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use crate::error::{ConnectorError, Result};
use crate::options::unknown;

/// How one field is generated.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    /// `start, start+1, ..., end`.
    Sequence {
        /// First value.
        start: i64,
        /// Last value (inclusive).
        end: i64,
    },
    /// Uniformly random values.
    Random {
        /// Smallest number (numeric fields).
        min: Option<f64>,
        /// Largest number (numeric fields).
        max: Option<f64>,
        /// String length in characters (default 100).
        length: usize,
    },
}

/// Generation options of one field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldOptions {
    /// The generator.
    pub kind: FieldKind,
    /// Fraction of rows where the field is NULL, in `[0, 1]`.
    pub null_rate: f64,
}

/// Parsed options of a `datagen` table.
#[derive(Debug, Clone, PartialEq)]
pub struct DatagenOptions {
    /// Rows generated per second, across the table (`rows-per-second`, default 10000).
    pub rows_per_second: u64,
    /// Total rows (`number-of-rows`); `None` is unbounded unless a sequence field bounds it.
    pub number_of_rows: Option<u64>,
    /// Per-field options keyed by field name; fields without options are random.
    pub fields: BTreeMap<String, FieldOptions>,
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| ConnectorError::InvalidOption(format!("option '{key}' has an invalid value '{v}'")))
}

impl DatagenOptions {
    /// Parses the options; unknown keys are errors.
    pub fn parse(options: &BTreeMap<String, String>) -> Result<DatagenOptions> {
        let mut rows_per_second = 10_000;
        let mut number_of_rows = None;
        let mut raw: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (k, v) in options {
            match k.as_str() {
                "connector" => {}
                "rows-per-second" => rows_per_second = num(k, v)?,
                "number-of-rows" => number_of_rows = Some(num(k, v)?),
                _ => {
                    let rest = k.strip_prefix("fields.").ok_or_else(|| unknown(k, "connector 'datagen'"))?;
                    let (field, prop) = rest.rsplit_once('.').ok_or_else(|| unknown(k, "connector 'datagen'"))?;
                    raw.entry(field.to_string()).or_default().insert(prop.to_string(), v.clone());
                }
            }
        }
        let mut fields = BTreeMap::new();
        for (field, props) in raw {
            let key = |p: &str| format!("fields.{field}.{p}");
            for p in props.keys() {
                if !["kind", "start", "end", "min", "max", "length", "null-rate", "max-past"].contains(&p.as_str()) {
                    return Err(unknown(&key(p), "connector 'datagen'"));
                }
            }
            let kind = match props.get("kind").map(|s| s.as_str()).unwrap_or("random") {
                "sequence" => {
                    let start = props.get("start").ok_or_else(|| {
                        ConnectorError::InvalidOption(format!("option '{}' is required for a sequence", key("start")))
                    })?;
                    let end = props.get("end").ok_or_else(|| {
                        ConnectorError::InvalidOption(format!("option '{}' is required for a sequence", key("end")))
                    })?;
                    FieldKind::Sequence { start: num(&key("start"), start)?, end: num(&key("end"), end)? }
                }
                "random" => FieldKind::Random {
                    min: props.get("min").map(|v| num(&key("min"), v)).transpose()?,
                    max: props.get("max").map(|v| num(&key("max"), v)).transpose()?,
                    length: props.get("length").map(|v| num(&key("length"), v)).transpose()?.unwrap_or(100),
                },
                other => {
                    return Err(ConnectorError::InvalidOption(format!(
                        "option '{}' must be 'random' or 'sequence', got '{other}'",
                        key("kind")
                    )))
                }
            };
            let null_rate = props.get("null-rate").map(|v| num(&key("null-rate"), v)).transpose()?.unwrap_or(0.0);
            fields.insert(field, FieldOptions { kind, null_rate });
        }
        Ok(DatagenOptions { rows_per_second, number_of_rows, fields })
    }

    /// Checks that every configured field exists in `schema` (physical columns).
    pub fn validate(&self, schema: &SchemaRef) -> Result<()> {
        for f in self.fields.keys() {
            if schema.field_with_name(f).is_err() {
                return Err(ConnectorError::InvalidOption(format!("datagen option names unknown field '{f}'")));
            }
        }
        Ok(())
    }

    /// Total rows the table produces, if bounded.
    pub fn total_rows(&self) -> Option<u64> {
        let seq = self
            .fields
            .values()
            .filter_map(|f| match f.kind {
                FieldKind::Sequence { start, end } => Some((end - start + 1).max(0) as u64),
                _ => None,
            })
            .min();
        match (seq, self.number_of_rows) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Generates rows `from .. from + n` in `schema` (physical columns).
    pub fn generate(&self, schema: &SchemaRef, from: u64, n: usize) -> Result<RecordBatch> {
        let default = FieldOptions { kind: FieldKind::Random { min: None, max: None, length: 100 }, null_rate: 0.0 };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (fi, field) in schema.fields().iter().enumerate() {
            let opts = self.fields.get(field.name()).unwrap_or(&default);
            columns.push(gen_column(field.data_type(), opts, fi as u64, from, n)?);
        }
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// SplitMix64: a fast, well-mixed hash of (field, row).
fn mix(field: u64, row: u64) -> u64 {
    let mut z = row.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ field.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

macro_rules! int_column {
    ($builder:ty, $t:ty, $opts:expr, $field:expr, $from:expr, $n:expr, $lo:expr, $hi:expr) => {{
        let mut b = <$builder>::with_capacity($n);
        for r in $from..$from + $n as u64 {
            let h = mix($field, r);
            if $opts.null_rate > 0.0 && unit(mix($field ^ 0xABCD, r)) < $opts.null_rate {
                b.append_null();
                continue;
            }
            let v: i64 = match &$opts.kind {
                FieldKind::Sequence { start, .. } => start + r as i64,
                FieldKind::Random { min, max, .. } => {
                    let lo = min.map(|m| m as i64).unwrap_or($lo);
                    let hi = max.map(|m| m as i64).unwrap_or($hi);
                    let span = (hi as i128 - lo as i128 + 1).max(1) as u128;
                    (lo as i128 + (h as u128 % span) as i128) as i64
                }
            };
            b.append_value(v as $t);
        }
        Arc::new(b.finish()) as ArrayRef
    }};
}

fn gen_column(dt: &DataType, opts: &FieldOptions, field: u64, from: u64, n: usize) -> Result<ArrayRef> {
    Ok(match dt {
        DataType::Int8 => int_column!(Int8Builder, i8, opts, field, from, n, i8::MIN as i64, i8::MAX as i64),
        DataType::Int16 => int_column!(Int16Builder, i16, opts, field, from, n, i16::MIN as i64, i16::MAX as i64),
        DataType::Int32 => int_column!(Int32Builder, i32, opts, field, from, n, i32::MIN as i64, i32::MAX as i64),
        DataType::Int64 => int_column!(Int64Builder, i64, opts, field, from, n, i64::MIN / 2, i64::MAX / 2),
        DataType::Timestamp(TimeUnit::Millisecond, tz) => {
            // Random timestamps are spread over the past day from a fixed origin, sequences are
            // milliseconds since the epoch.
            let a = int_column!(Int64Builder, i64, opts, field, from, n, 1_700_000_000_000i64 - 86_400_000, 1_700_000_000_000i64);
            let a = a.as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
            let mut b = TimestampMillisecondBuilder::with_capacity(n);
            for v in a.iter() {
                b.append_option(v);
            }
            Arc::new(b.finish().with_timezone_opt(tz.clone()))
        }
        DataType::Float32 | DataType::Float64 => {
            let (lo, hi) = match &opts.kind {
                FieldKind::Random { min, max, .. } => (min.unwrap_or(0.0), max.unwrap_or(1.0)),
                FieldKind::Sequence { .. } => (0.0, 0.0),
            };
            let vals = (from..from + n as u64).map(|r| {
                if opts.null_rate > 0.0 && unit(mix(field ^ 0xABCD, r)) < opts.null_rate {
                    return None;
                }
                Some(match &opts.kind {
                    FieldKind::Sequence { start, .. } => (start + r as i64) as f64,
                    FieldKind::Random { .. } => lo + unit(mix(field, r)) * (hi - lo),
                })
            });
            if *dt == DataType::Float64 {
                let mut b = Float64Builder::with_capacity(n);
                vals.for_each(|v| b.append_option(v));
                Arc::new(b.finish())
            } else {
                let mut b = Float32Builder::with_capacity(n);
                vals.for_each(|v| b.append_option(v.map(|x| x as f32)));
                Arc::new(b.finish())
            }
        }
        DataType::Utf8 => {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            for r in from..from + n as u64 {
                if opts.null_rate > 0.0 && unit(mix(field ^ 0xABCD, r)) < opts.null_rate {
                    b.append_null();
                    continue;
                }
                match &opts.kind {
                    FieldKind::Sequence { start, .. } => b.append_value((start + r as i64).to_string()),
                    FieldKind::Random { length, .. } => {
                        let mut s = String::with_capacity(*length);
                        let mut h = mix(field, r);
                        for i in 0..*length {
                            if i % 10 == 0 && i > 0 {
                                h = mix(h, i as u64);
                            }
                            s.push(ALNUM[(h % 36) as usize] as char);
                            h /= 36;
                        }
                        b.append_value(s);
                    }
                }
            }
            Arc::new(b.finish())
        }
        DataType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(n);
            for r in from..from + n as u64 {
                b.append_value(mix(field, r) & 1 == 1);
            }
            Arc::new(b.finish())
        }
        other => {
            return Err(ConnectorError::InvalidOption(format!("datagen cannot generate type {other}")));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn sequence_bounds_rows_and_is_deterministic() {
        let opts: BTreeMap<String, String> = [
            ("connector", "datagen"),
            ("fields.seq.kind", "sequence"),
            ("fields.seq.start", "1"),
            ("fields.seq.end", "100"),
            ("fields.amount.min", "1"),
            ("fields.amount.max", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let d = DatagenOptions::parse(&opts).unwrap();
        assert_eq!(d.total_rows(), Some(100));
        let schema = Arc::new(Schema::new(vec![
            Field::new("seq", DataType::Int64, false),
            Field::new("amount", DataType::Float64, false),
        ]));
        let a = d.generate(&schema, 10, 5).unwrap();
        let b = d.generate(&schema, 10, 5).unwrap();
        assert_eq!(a, b);
        let seq = a.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
        assert_eq!(seq.value(0), 11);
        let amt = a.column(1).as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
        assert!(amt.iter().all(|v| (1.0..=10.0).contains(&v.unwrap())));
        let mut bad = opts.clone();
        bad.insert("fields.seq.speed".into(), "1".into());
        assert!(DatagenOptions::parse(&bad).is_err());
    }
}
