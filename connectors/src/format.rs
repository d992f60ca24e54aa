//! Record formats of outside systems, as Flink names them (`'format' = ...`): how a Kafka
//! message's bytes become changelog rows of a table, and how rows become messages again.
//!
//! - `json`: one JSON object per message, fields matched to columns by name; missing fields are
//!   NULL, extra fields are ignored (Flink's `json` format with `json.fail-on-missing-field`
//!   false). Decoded by arrow's JSON decoder, many messages at a time.
//! - `debezium-json`: Debezium's change event envelope (`before`, `after`, `op` = `c`/`r`/`u`/`d`,
//!   optionally wrapped in `{"schema": ..., "payload": ...}`). `c`/`r` become inserts, `u` an
//!   update-before/update-after pair, `d` a delete; tombstones (null values) are skipped, as
//!   Flink's format does.
//! - `csv`: one line per message, columns in declaration order, no header.
//! - `raw`: the whole message as the table's single `STRING` or `BYTES` column.
//!
//! A message that does not decode is reported with its index and the error, never dropped
//! silently; the caller routes it to the dead-letter table or fails the job.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::Value;
use sluice_catalog::{ChangeBatch, Op};

use crate::error::{ConnectorError, Result};

/// A message format (`'format'` / `'value.format'`).
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// `json`.
    Json,
    /// `debezium-json`.
    DebeziumJson,
    /// `csv`, with its field delimiter (`'csv.field-delimiter'`, default `,`).
    Csv {
        /// The delimiter byte.
        delimiter: u8,
    },
    /// `raw`.
    Raw,
}

impl Format {
    /// Parses a format name; `delimiter` is the `csv.field-delimiter` option.
    ///
    /// Errors: [`ConnectorError::InvalidOption`] for an unknown name.
    pub fn parse(name: &str, delimiter: Option<&str>) -> Result<Format> {
        Ok(match name {
            "json" => Format::Json,
            "debezium-json" => Format::DebeziumJson,
            "csv" => Format::Csv {
                delimiter: match delimiter {
                    None => b',',
                    Some(d) if d.len() == 1 => d.as_bytes()[0],
                    Some("\\t") => b'\t',
                    Some(d) => {
                        return Err(ConnectorError::InvalidOption(format!(
                            "option 'csv.field-delimiter' must be one character, got '{d}'"
                        )))
                    }
                },
            },
            "raw" => Format::Raw,
            other => {
                return Err(ConnectorError::InvalidOption(format!(
                    "unknown format '{other}' (supported: json, debezium-json, csv, raw)"
                )))
            }
        })
    }

    /// The name as written in `WITH (...)`.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::DebeziumJson => "debezium-json",
            Format::Csv { .. } => "csv",
            Format::Raw => "raw",
        }
    }
}

/// One message that did not decode: its index in the input and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// Index of the message in the slice given to [`RecordDecoder::decode`].
    pub index: usize,
    /// The error.
    pub message: String,
}

/// The same schema with every field nullable: a missing JSON field is a NULL here, and NOT NULL
/// is checked when the rows are written, with a SQLSTATE.
fn relaxed(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    ))
}

/// Decodes message values of one format into changelog rows of `schema` (a table's physical
/// columns).
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    format: Format,
    schema: SchemaRef,
}

impl RecordDecoder {
    /// A decoder into `schema`. Errors: `raw` needs exactly one `STRING` or `BYTES` column.
    pub fn new(format: Format, schema: SchemaRef) -> Result<RecordDecoder> {
        if format == Format::Raw
            && (schema.fields().len() != 1
                || !matches!(schema.field(0).data_type(), DataType::Utf8 | DataType::Binary | DataType::LargeUtf8))
        {
            return Err(ConnectorError::InvalidOption(
                "format 'raw' needs a table with exactly one STRING or BYTES column".into(),
            ));
        }
        Ok(RecordDecoder { format, schema: relaxed(&schema) })
    }

    /// The decoded rows' schema (the table's physical columns, all nullable).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes message values (`None` is a Kafka tombstone). Returns the rows of the messages that
    /// decoded, in message order, and one [`DecodeError`] per message that did not.
    pub fn decode(&self, values: &[Option<&[u8]>]) -> Result<(ChangeBatch, Vec<DecodeError>)> {
        match &self.format {
            Format::Json => self.decode_json(values),
            Format::Csv { delimiter } => self.decode_csv(values, *delimiter),
            Format::Raw => self.decode_raw(values),
            Format::DebeziumJson => {
                let mut rows = Vec::new();
                let mut ops = Vec::new();
                let mut errors = Vec::new();
                for (index, v) in values.iter().enumerate() {
                    let Some(bytes) = v else { continue };
                    match debezium_rows(bytes) {
                        Ok(rs) => {
                            for (op, row) in rs {
                                ops.push(op);
                                rows.push(row);
                            }
                        }
                        Err(message) => errors.push(DecodeError { index, message }),
                    }
                }
                let data = self.serialize_rows(&rows)?;
                Ok((ChangeBatch::new(data, ops), errors))
            }
        }
    }

    /// Decodes JSON objects already parsed (rows of a change event), one row each.
    ///
    /// Errors: a value whose fields do not convert to the columns' types.
    pub fn serialize_rows(&self, rows: &[Value]) -> Result<RecordBatch> {
        let mut decoder = arrow::json::ReaderBuilder::new(self.schema.clone())
            .with_batch_size(rows.len().max(1))
            .with_coerce_primitive(true)
            .build_decoder()?;
        decoder.serialize(rows)?;
        Ok(decoder.flush()?.unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
    }

    fn json_batch(&self, values: &[&[u8]]) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
        let mut decoder = arrow::json::ReaderBuilder::new(self.schema.clone())
            .with_batch_size(values.len().max(1))
            .with_coerce_primitive(true)
            .build_decoder()?;
        for v in values {
            decoder.decode(v)?;
            decoder.decode(b"\n")?;
        }
        if decoder.has_partial_record() {
            return Err(arrow::error::ArrowError::JsonError("incomplete JSON value".into()));
        }
        Ok(decoder.flush()?.unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
    }

    fn decode_json(&self, values: &[Option<&[u8]>]) -> Result<(ChangeBatch, Vec<DecodeError>)> {
        let present: Vec<(usize, &[u8])> =
            values.iter().enumerate().filter_map(|(i, v)| v.map(|b| (i, b))).collect();
        let all: Vec<&[u8]> = present.iter().map(|(_, b)| *b).collect();
        // Fast path: every message decodes, and each is exactly one object.
        if let Ok(batch) = self.json_batch(&all) {
            if batch.num_rows() == all.len() {
                return Ok((ChangeBatch::inserts(batch), Vec::new()));
            }
        }
        // Slow path: one message at a time, to name the ones that do not decode.
        let mut good = Vec::new();
        let mut errors = Vec::new();
        for (i, b) in present {
            match self.json_batch(&[b]) {
                Ok(batch) if batch.num_rows() == 1 => good.push(batch),
                Ok(batch) => errors.push(DecodeError {
                    index: i,
                    message: format!("expected one JSON object, found {} values", batch.num_rows()),
                }),
                Err(e) => errors.push(DecodeError { index: i, message: e.to_string() }),
            }
        }
        let batch = arrow::compute::concat_batches(&self.schema, &good)?;
        Ok((ChangeBatch::inserts(batch), errors))
    }

    fn csv_batch(&self, values: &[&[u8]], delimiter: u8) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
        let mut buf = Vec::new();
        for v in values {
            buf.extend_from_slice(v);
            if !v.ends_with(b"\n") {
                buf.push(b'\n');
            }
        }
        let reader = arrow::csv::ReaderBuilder::new(self.schema.clone())
            .with_header(false)
            .with_delimiter(delimiter)
            .with_batch_size(values.len().max(1))
            .build(std::io::Cursor::new(buf))?;
        let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
        arrow::compute::concat_batches(&self.schema, &batches)
    }

    fn decode_csv(&self, values: &[Option<&[u8]>], delimiter: u8) -> Result<(ChangeBatch, Vec<DecodeError>)> {
        let present: Vec<(usize, &[u8])> =
            values.iter().enumerate().filter_map(|(i, v)| v.map(|b| (i, b))).collect();
        let all: Vec<&[u8]> = present.iter().map(|(_, b)| *b).collect();
        if let Ok(batch) = self.csv_batch(&all, delimiter) {
            if batch.num_rows() == all.len() {
                return Ok((ChangeBatch::inserts(batch), Vec::new()));
            }
        }
        let mut good = Vec::new();
        let mut errors = Vec::new();
        for (i, b) in present {
            match self.csv_batch(&[b], delimiter) {
                Ok(batch) if batch.num_rows() == 1 => good.push(batch),
                Ok(batch) => errors.push(DecodeError {
                    index: i,
                    message: format!("expected one CSV line, found {} lines", batch.num_rows()),
                }),
                Err(e) => errors.push(DecodeError { index: i, message: e.to_string() }),
            }
        }
        let batch = arrow::compute::concat_batches(&self.schema, &good)?;
        Ok((ChangeBatch::inserts(batch), errors))
    }

    fn decode_raw(&self, values: &[Option<&[u8]>]) -> Result<(ChangeBatch, Vec<DecodeError>)> {
        let field = self.schema.field(0);
        let mut errors = Vec::new();
        let col: ArrayRef = match field.data_type() {
            DataType::Binary => Arc::new(values.iter().copied().collect::<BinaryArray>()),
            _ => {
                let mut out: Vec<Option<&str>> = Vec::with_capacity(values.len());
                for (index, v) in values.iter().enumerate() {
                    match v.map(std::str::from_utf8) {
                        None => out.push(None),
                        Some(Ok(s)) => out.push(Some(s)),
                        Some(Err(e)) => {
                            errors.push(DecodeError { index, message: format!("not UTF-8: {e}") });
                        }
                    }
                }
                let arr = StringArray::from(out);
                arrow::compute::cast(&arr, field.data_type())?
            }
        };
        let batch = RecordBatch::try_new(self.schema.clone(), vec![col])?;
        Ok((ChangeBatch::inserts(batch), errors))
    }
}

/// The rows of one Debezium change event, with their ops.
///
/// Errors: the message (not JSON, no `op`, an unknown `op`, a missing image) as text.
pub fn debezium_rows(bytes: &[u8]) -> std::result::Result<Vec<(Op, Value)>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let env = match v.get("payload") {
        Some(p) if v.get("schema").is_some() => p.clone(),
        _ => v,
    };
    if env.is_null() {
        return Ok(Vec::new());
    }
    let op = env.get("op").and_then(Value::as_str).ok_or("no \"op\" field in the Debezium envelope")?;
    let image = |name: &str| -> std::result::Result<Value, String> {
        match env.get(name) {
            Some(v) if v.is_object() => Ok(v.clone()),
            _ => Err(format!("Debezium op '{op}' without a \"{name}\" image")),
        }
    };
    Ok(match op {
        "c" | "r" => vec![(Op::Insert, image("after")?)],
        "u" => {
            let mut out = Vec::new();
            if let Ok(before) = image("before") {
                out.push((Op::UpdateBefore, before));
            }
            out.push((Op::UpdateAfter, image("after")?));
            out
        }
        "d" => vec![(Op::Delete, image("before")?)],
        // Truncate and message events carry no rows.
        "t" | "m" => Vec::new(),
        other => return Err(format!("unknown Debezium op '{other}'")),
    })
}

/// Encodes a batch's rows as JSON objects, one per row, every column present (NULL as `null`).
/// Timestamps are written as ISO-8601 text, as Flink's `json` format writes them.
///
/// Errors: an Arrow type the JSON writer does not support.
pub fn rows_to_json(batch: &RecordBatch) -> Result<Vec<serde_json::Map<String, Value>>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::writer::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    let mut out = Vec::with_capacity(batch.num_rows());
    for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(m)) => out.push(m),
            _ => return Err(ConnectorError::Arrow(arrow::error::ArrowError::JsonError("bad row".into()))),
        }
    }
    Ok(out)
}

/// Encodes a batch's rows as JSON objects, one message value per row, every column present.
/// Same text as [`rows_to_json`], without building a JSON tree per row.
///
/// Errors: an Arrow type the JSON writer does not support.
pub fn rows_to_json_bytes(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut buf = Vec::with_capacity(batch.num_rows() * 64);
    {
        let mut w = arrow::json::writer::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    Ok(buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| l.to_vec()).collect())
}

/// Encodes a batch's rows as CSV lines, one per row, columns in order, no header.
///
/// Errors: an Arrow type the CSV writer does not support.
pub fn rows_to_csv(batch: &RecordBatch, delimiter: u8) -> Result<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new().with_header(false).with_delimiter(delimiter).build(&mut buf);
        w.write(batch)?;
    }
    Ok(buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| l.to_vec()).collect())
}

/// Encodes a batch's single column as raw message values (`raw` format).
pub fn rows_to_raw(batch: &RecordBatch) -> Result<Vec<Option<Vec<u8>>>> {
    let col = batch.column(0);
    if let Some(b) = col.as_any().downcast_ref::<BinaryArray>() {
        return Ok(b.iter().map(|v| v.map(|v| v.to_vec())).collect());
    }
    let s = arrow::compute::cast(col, &DataType::Utf8)?;
    let s = s.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
    Ok(s.iter().map(|v| v.map(|v| v.as_bytes().to_vec())).collect())
}

/// The schema of a dead-letter table: where the message came from, its bytes, and the error.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new("raw", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
        ]))
    }

    #[test]
    fn json_decodes_and_names_bad_messages() {
        let d = RecordDecoder::new(Format::Json, schema()).unwrap();
        let msgs: Vec<Option<&[u8]>> = vec![
            Some(br#"{"id": 1, "name": "a", "amount": 2.5}"#),
            Some(br#"{"id": "x"#),
            Some(br#"{"id": 3, "extra": true}"#),
        ];
        let (rows, errors) = d.decode(&msgs).unwrap();
        assert_eq!(rows.num_rows(), 2);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].index, 1);
        let text = rows.to_text();
        assert_eq!(text, "+I 1 a 2.5\n+I 3 NULL NULL\n");
    }

    #[test]
    fn debezium_envelope_becomes_a_changelog() {
        let d = RecordDecoder::new(Format::DebeziumJson, schema()).unwrap();
        let msgs: Vec<Option<&[u8]>> = vec![
            Some(br#"{"before": null, "after": {"id": 1, "name": "a", "amount": 1.0}, "op": "r"}"#),
            Some(br#"{"schema": {}, "payload": {"before": {"id": 1, "name": "a", "amount": 1.0}, "after": {"id": 1, "name": "b", "amount": 1.0}, "op": "u"}}"#),
            Some(br#"{"before": {"id": 1, "name": "b", "amount": 1.0}, "after": null, "op": "d"}"#),
            None,
            Some(br#"{"after": {"id": 2}}"#),
        ];
        let (rows, errors) = d.decode(&msgs).unwrap();
        assert_eq!(rows.ops, vec![Op::Insert, Op::UpdateBefore, Op::UpdateAfter, Op::Delete]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].index, 4);
    }

    #[test]
    fn csv_and_raw() {
        let d = RecordDecoder::new(Format::Csv { delimiter: b',' }, schema()).unwrap();
        let msgs: Vec<Option<&[u8]>> = vec![Some(b"1,a,2.5"), Some(b"zz,b,1"), Some(b"2,,")];
        let (rows, errors) = d.decode(&msgs).unwrap();
        assert_eq!(rows.num_rows(), 2);
        assert_eq!(errors[0].index, 1);
        let one = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
        let r = RecordDecoder::new(Format::Raw, one).unwrap();
        let (rows, errors) = r.decode(&[Some(b"hello"), None]).unwrap();
        assert_eq!(rows.num_rows(), 2);
        assert!(errors.is_empty());
        assert!(RecordDecoder::new(Format::Raw, schema()).is_err());
    }

    #[test]
    fn rows_round_trip_through_json() {
        let d = RecordDecoder::new(Format::Json, schema()).unwrap();
        let (rows, _) = d.decode(&[Some(br#"{"id": 7, "name": null, "amount": 1.5}"#)]).unwrap();
        let json = rows_to_json(&rows.data).unwrap();
        assert_eq!(Value::Object(json[0].clone()), serde_json::json!({"id": 7, "name": null, "amount": 1.5}));
    }
}
