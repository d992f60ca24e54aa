//! Row encoding helpers: Arrow's row format as state keys and values.
//!
//! `arrow::row` encodes a row of any column types into bytes that compare like the values, which
//! makes them usable as hash-map keys, ordered-map keys (MIN/MAX) and RocksDB values.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;
use sluice_catalog::dataflow::ExprRef;

use crate::error::Result;

/// A row converter for the given column types.
pub fn converter(types: &[DataType]) -> Result<RowConverter> {
    Ok(RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?)
}

/// A row converter for every column of `schema`.
pub fn schema_converter(schema: &SchemaRef) -> Result<RowConverter> {
    converter(&schema.fields().iter().map(|f| f.data_type().clone()).collect::<Vec<_>>())
}

/// Evaluates expressions on a batch into arrays.
pub fn eval(exprs: &[ExprRef], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    exprs
        .iter()
        .map(|e| Ok(e.evaluate(batch)?.into_array(batch.num_rows())?))
        .collect()
}

/// The types of expressions over `schema`.
pub fn expr_types(exprs: &[ExprRef], schema: &SchemaRef) -> Result<Vec<DataType>> {
    exprs.iter().map(|e| Ok(PhysicalExpr::data_type(e.as_ref(), schema)?)).collect()
}

/// For each row, whether any of `arrays` is null there.
pub fn any_null(arrays: &[ArrayRef], row: usize) -> bool {
    arrays.iter().any(|a| a.is_null(row))
}

/// Decodes encoded rows into columns; `None` entries become NULL rows.
pub fn decode_optional(conv: &RowConverter, types: &[DataType], rows: &[Option<&[u8]>]) -> Result<Vec<ArrayRef>> {
    let present: Vec<&[u8]> = rows.iter().filter_map(|r| *r).collect();
    let parser = conv.parser();
    let decoded: Vec<ArrayRef> = if present.is_empty() {
        types.iter().map(|t| arrow::array::new_empty_array(t)).collect()
    } else {
        conv.convert_rows(present.iter().map(|r| parser.parse(r)))?
    };
    if present.len() == rows.len() {
        return Ok(decoded);
    }
    let mut next = 0u32;
    let idx: UInt32Array = rows
        .iter()
        .map(|r| {
            r.map(|_| {
                next += 1;
                next - 1
            })
        })
        .collect();
    decoded
        .iter()
        .zip(types)
        .map(|(a, t)| {
            if a.is_empty() {
                Ok(arrow::array::new_null_array(t, rows.len()))
            } else {
                Ok(take(a.as_ref(), &idx, None)?)
            }
        })
        .collect()
}

/// Decodes encoded rows (all present) into columns.
pub fn decode(conv: &RowConverter, types: &[DataType], rows: &[&[u8]]) -> Result<Vec<ArrayRef>> {
    if rows.is_empty() {
        return Ok(types.iter().map(|t| arrow::array::new_empty_array(t)).collect());
    }
    let parser = conv.parser();
    Ok(conv.convert_rows(rows.iter().map(|r| parser.parse(r)))?)
}

/// Shorthand for an `Arc`ed schema's column types.
pub fn types_of(schema: &SchemaRef) -> Vec<DataType> {
    schema.fields().iter().map(|f| f.data_type().clone()).collect()
}

/// Keeps the compiler honest about `Arc` use in callers.
pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}
