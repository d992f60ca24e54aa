//! Change batches: the changelog unit that flows between operators and lives in topics.
//!
//! As in Flink's `RowKind` and RisingWave's stream chunk, every row carries an op:
//! `+I` insert, `-D` delete, `-U` update-before (a retraction of the old value) and `+U`
//! update-after. An append-only stream only carries `+I`. In a topic the ops are stored as an
//! extra `Int8` column named [`OP_COLUMN`] after the table's columns.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int8Array, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::Result;

/// Name of the op column that topics append to a table's columns.
pub const OP_COLUMN: &str = "_op";

/// The kind of change a row carries (Flink's `RowKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i8)]
pub enum Op {
    /// `+I`: a new row.
    Insert = 0,
    /// `-D`: the row is removed.
    Delete = 1,
    /// `-U`: retraction of a row's old value; an `UpdateAfter` normally follows.
    UpdateBefore = 2,
    /// `+U`: a row's new value.
    UpdateAfter = 3,
}

impl Op {
    /// Decodes the value stored in the op column; unknown codes are treated as inserts.
    pub fn from_i8(v: i8) -> Op {
        match v {
            1 => Op::Delete,
            2 => Op::UpdateBefore,
            3 => Op::UpdateAfter,
            _ => Op::Insert,
        }
    }

    /// True for `+I` and `+U`: the row is added to the result.
    pub fn is_insertion(self) -> bool {
        matches!(self, Op::Insert | Op::UpdateAfter)
    }

    /// +1 for insertions, -1 for retractions: the multiplicity change the row makes.
    pub fn weight(self) -> i64 {
        if self.is_insertion() {
            1
        } else {
            -1
        }
    }

    /// The short name used in test text and `EXPLAIN`: `+I`, `-D`, `-U`, `+U`.
    pub fn short(self) -> &'static str {
        match self {
            Op::Insert => "+I",
            Op::Delete => "-D",
            Op::UpdateBefore => "-U",
            Op::UpdateAfter => "+U",
        }
    }
}

/// A batch of changelog rows: `data` holds the row values, `ops[i]` the op of row `i`.
///
/// Invariant: `ops.len() == data.num_rows()`.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    /// The row values, in the schema of the stream that carries them.
    pub data: RecordBatch,
    /// One op per row.
    pub ops: Vec<Op>,
}

impl ChangeBatch {
    /// A batch of inserts (an append-only stream).
    pub fn inserts(data: RecordBatch) -> Self {
        let ops = vec![Op::Insert; data.num_rows()];
        ChangeBatch { data, ops }
    }

    /// Builds a batch; panics in debug builds if the lengths differ.
    pub fn new(data: RecordBatch, ops: Vec<Op>) -> Self {
        debug_assert_eq!(data.num_rows(), ops.len());
        ChangeBatch { data, ops }
    }

    /// An empty batch with the given schema.
    pub fn empty(schema: SchemaRef) -> Self {
        ChangeBatch { data: RecordBatch::new_empty(schema), ops: vec![] }
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.ops.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// True when every row is an insert.
    pub fn is_append_only(&self) -> bool {
        self.ops.iter().all(|o| *o == Op::Insert)
    }

    /// The schema of the row values.
    pub fn schema(&self) -> SchemaRef {
        self.data.schema()
    }

    /// Keeps the rows where `mask` is true (nulls count as false).
    pub fn filter(&self, mask: &BooleanArray) -> Result<ChangeBatch> {
        let data = filter_record_batch(&self.data, mask)?;
        let ops = self
            .ops
            .iter()
            .zip(mask.iter())
            .filter_map(|(op, keep)| keep.unwrap_or(false).then_some(*op))
            .collect();
        Ok(ChangeBatch { data, ops })
    }

    /// Replaces the row values with `columns` (same row count) in `schema`.
    pub fn with_columns(&self, schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<ChangeBatch> {
        let data = RecordBatch::try_new(schema, columns)?;
        Ok(ChangeBatch { data, ops: self.ops.clone() })
    }

    /// Concatenates batches of one schema.
    pub fn concat(schema: &SchemaRef, batches: &[ChangeBatch]) -> Result<ChangeBatch> {
        let data = concat_batches(schema, batches.iter().map(|b| &b.data))?;
        let ops = batches.iter().flat_map(|b| b.ops.iter().copied()).collect();
        Ok(ChangeBatch { data, ops })
    }

    /// The topic form: the row values plus the [`OP_COLUMN`] column.
    pub fn to_topic_batch(&self) -> Result<RecordBatch> {
        let schema = self.data.schema();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(OP_COLUMN, DataType::Int8, false));
        let mut columns = self.data.columns().to_vec();
        columns.push(Arc::new(Int8Array::from_iter_values(self.ops.iter().map(|o| *o as i8))));
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
    }

    /// Reads the topic form back: the last column must be the [`OP_COLUMN`].
    pub fn from_topic_batch(batch: &RecordBatch) -> Result<ChangeBatch> {
        let n = batch.num_columns();
        let ops_col = batch
            .column(n - 1)
            .as_any()
            .downcast_ref::<Int8Array>()
            .ok_or_else(|| crate::CatalogError::Corrupt("topic batch without op column".into()))?;
        let ops = ops_col.values().iter().map(|v| Op::from_i8(*v)).collect();
        let data = batch.project(&(0..n - 1).collect::<Vec<_>>())?;
        Ok(ChangeBatch { data, ops })
    }

    /// Renders the batch as readable text, one row a line: `+I 1 alice`, `-U 5 3`.
    /// Nulls print as `NULL`. Used by tests and debugging logs.
    pub fn to_text(&self) -> String {
        let opts = FormatOptions::default().with_null("NULL");
        let formatters: Vec<_> = self
            .data
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).expect("formattable"))
            .collect();
        let mut out = String::new();
        for (i, op) in self.ops.iter().enumerate() {
            out.push_str(op.short());
            for f in &formatters {
                out.push(' ');
                out.push_str(&f.value(i).to_string());
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    #[test]
    fn topic_round_trip_keeps_ops() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let data =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![Some(1), None]))])
                .unwrap();
        let b = ChangeBatch::new(data, vec![Op::UpdateBefore, Op::UpdateAfter]);
        let back = ChangeBatch::from_topic_batch(&b.to_topic_batch().unwrap()).unwrap();
        assert_eq!(back.to_text(), "-U 1\n+U NULL\n");
        let mask = BooleanArray::from(vec![false, true]);
        assert_eq!(back.filter(&mask).unwrap().to_text(), "+U NULL\n");
    }
}
