//! The messages of the Kafka topic backend: topic-form rows to and from `debezium-json` values.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use sluice_catalog::{ChangeBatch, Op, OP_COLUMN};

use crate::error::{ConnectorError, Result};
use crate::format::{rows_to_json_bytes, Format, RecordDecoder};

/// Encodes topic-form rows (columns, then the op column) as `debezium-json` message values, as
/// Flink writes the format: insertions as `c` events, retractions as `d` events.
pub(super) fn encode_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let change = ChangeBatch::from_topic_batch(batch)?;
    let rows = rows_to_json_bytes(&change.data)?;
    Ok(rows
        .into_iter()
        .zip(&change.ops)
        .map(|(row, op)| {
            let mut v = Vec::with_capacity(row.len() + 40);
            if op.is_insertion() {
                v.extend_from_slice(b"{\"before\":null,\"after\":");
                v.extend_from_slice(&row);
                v.extend_from_slice(b",\"op\":\"c\"}");
            } else {
                v.extend_from_slice(b"{\"before\":");
                v.extend_from_slice(&row);
                v.extend_from_slice(b",\"after\":null,\"op\":\"d\"}");
            }
            v
        })
        .collect())
}

const INSERT_HEAD: &[u8] = b"{\"before\":null,\"after\":";
const INSERT_TAIL: &[u8] = b",\"op\":\"c\"}";
const DELETE_HEAD: &[u8] = b"{\"before\":";
const DELETE_TAIL: &[u8] = b",\"after\":null,\"op\":\"d\"}";

/// Decodes message values written by [`encode_rows`] into topic-form rows of `schema`.
///
/// Messages in exactly the layout [`encode_rows`] writes are cut down to their row objects and
/// decoded as one line-delimited JSON document by Arrow's JSON reader; anything else (a message
/// written by another Debezium-JSON producer) goes through the general `debezium-json` decoder.
pub(super) fn decode_rows(values: &[Vec<u8>], schema: &SchemaRef) -> Result<RecordBatch> {
    let fields: Vec<Field> = schema.fields().iter().filter(|f| f.name() != OP_COLUMN).map(|f| f.as_ref().clone()).collect();
    let data_schema = Arc::new(Schema::new(fields));
    let mut lines = Vec::with_capacity(values.iter().map(Vec::len).sum::<usize>());
    let mut ops = Vec::with_capacity(values.len());
    let mut fast = true;
    for v in values {
        let (row, op) = if v.starts_with(INSERT_HEAD) && v.ends_with(INSERT_TAIL) && v.len() > INSERT_HEAD.len() + INSERT_TAIL.len() {
            (&v[INSERT_HEAD.len()..v.len() - INSERT_TAIL.len()], Op::Insert)
        } else if v.starts_with(DELETE_HEAD) && v.ends_with(DELETE_TAIL) && v.len() > DELETE_HEAD.len() + DELETE_TAIL.len() {
            (&v[DELETE_HEAD.len()..v.len() - DELETE_TAIL.len()], Op::Delete)
        } else {
            fast = false;
            break;
        };
        if row.first() != Some(&b'{') || row.contains(&b'\n') {
            fast = false;
            break;
        }
        lines.extend_from_slice(row);
        lines.push(b'\n');
        ops.push(op);
    }
    if fast {
        let mut reader = arrow::json::ReaderBuilder::new(data_schema.clone())
            .with_batch_size(values.len().max(1))
            .build(std::io::Cursor::new(lines))?;
        let data = match reader.next() {
            Some(b) => b?,
            None => RecordBatch::new_empty(data_schema.clone()),
        };
        if data.num_rows() == ops.len() {
            let topic = ChangeBatch::new(data, ops).to_topic_batch()?;
            return Ok(RecordBatch::try_new(schema.clone(), topic.columns().to_vec())?);
        }
    }
    let decoder = RecordDecoder::new(Format::DebeziumJson, data_schema)?;
    let refs: Vec<Option<&[u8]>> = values.iter().map(|v| Some(v.as_slice())).collect();
    let (change, errors) = decoder.decode(&refs)?;
    if let Some(e) = errors.first() {
        return Err(ConnectorError::Write(format!("a message of the topic does not decode: {}", e.message)));
    }
    let topic = change.to_topic_batch()?;
    // Back to the exact schema the rows were appended with (the decoder relaxes nullability).
    Ok(RecordBatch::try_new(schema.clone(), topic.columns().to_vec())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, Int8Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, TimeUnit};

    #[test]
    fn rows_round_trip_through_debezium_json() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new(OP_COLUMN, DataType::Int8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c\"q"), Some("d")])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(2.0), None, Some(-3.25)])),
                Arc::new(TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), None, Some(0), Some(5)])),
                Arc::new(Int8Array::from(vec![0, 1, 2, 3])),
            ],
        )
        .unwrap();
        let values = encode_rows(&batch).unwrap();
        assert!(String::from_utf8_lossy(&values[1]).contains("\"op\":\"d\""));
        // The fast path (our own layout) and the general one (another producer's spacing).
        let respaced: Vec<Vec<u8>> = values.iter().map(|v| String::from_utf8_lossy(v).replace("\"op\":", "\"op\": ").into_bytes()).collect();
        for values in [values, respaced] {
            let back = decode_rows(&values, &schema).unwrap();
            // Update-before reads back as a delete, update-after as an insert (Flink's encoding).
            let ops = back.column(4).as_any().downcast_ref::<Int8Array>().unwrap();
            assert_eq!(ops.values().to_vec(), vec![0, 1, 1, 0]);
            for c in 0..4 {
                assert_eq!(back.column(c).as_ref(), batch.column(c).as_ref(), "column {c}");
            }
        }
    }
}
