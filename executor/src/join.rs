//! Regular streaming join of two changelogs, as Flink's regular join: both inputs are kept in
//! state (unbounded), and every change on one side is joined with the other side's current
//! rows. Inner joins pass each input row's op through (`+I`, `-U`, `+U`, `-D`); outer joins also
//! emit NULL-padded rows for rows without a match and retract them when a match appears.
//! Rows whose key has a NULL never match (SQL equality).
//!
//! State per side: key -> (encoded row -> multiplicity), held in memory. A checkpoint writes the
//! entries changed during the epoch as one delta record (`d<seq>`), so the store sees one write
//! per epoch rather than one per row, as a changelog state backend does; when the deltas outgrow
//! twice the last snapshot, a new snapshot (`s<chunk>`, 32 MiB chunks) of the whole state
//! replaces them. A restore
//! applies the snapshot, then the deltas in order.

use datafusion::common::HashMap;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::RowConverter;
use sluice_catalog::dataflow::ExprRef;
use sluice_catalog::{ChangeBatch, Op};

use crate::error::{ExecError, Result};
use crate::filter::FilterOp;
use crate::operator::Operator;
use crate::rows::{any_null, converter, decode_optional, eval, expr_types, schema_converter, types_of};
use crate::state::{DeltaLog, StateReader, StateWriter};

type SideState = HashMap<Vec<u8>, HashMap<Vec<u8>, i64>>;

/// See the module docs.
pub struct JoinOp {
    keys: [Vec<ExprRef>; 2],
    outer: [bool; 2],
    schema: SchemaRef,
    types: [Vec<DataType>; 2],
    key_conv: RowConverter,
    row_conv: [RowConverter; 2],
    state: [SideState; 2],
    /// State changes since the last checkpoint, in order; repeats are harmless (the
    /// checkpoint writes each entry's final count).
    dirty: [Vec<(Vec<u8>, Vec<u8>, i64)>; 2],
    /// How the state is checkpointed.
    log: DeltaLog,
    filter: Option<FilterOp>,
}

/// One output row: op, left row, right row (`None` = NULL padding), borrowed from the input's
/// encoded rows and the other side's state.
type OutRow<'a> = (Op, Option<&'a [u8]>, Option<&'a [u8]>);

impl JoinOp {
    /// Builds a join of inputs with schemas `left` and `right` producing `schema`.
    ///
    /// Errors: when the key types of the two sides differ and cannot be compared.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        left: SchemaRef,
        right: SchemaRef,
        left_keys: Vec<ExprRef>,
        right_keys: Vec<ExprRef>,
        filter: Option<ExprRef>,
        left_outer: bool,
        right_outer: bool,
        schema: SchemaRef,
    ) -> Result<JoinOp> {
        let lt = expr_types(&left_keys, &left)?;
        let rt = expr_types(&right_keys, &right)?;
        if lt != rt {
            return Err(ExecError::Unsupported(format!("join key types differ: {lt:?} and {rt:?}")));
        }
        Ok(JoinOp {
            key_conv: converter(&lt)?,
            row_conv: [schema_converter(&left)?, schema_converter(&right)?],
            types: [types_of(&left), types_of(&right)],
            keys: [left_keys, right_keys],
            outer: [left_outer, right_outer],
            schema,
            state: [HashMap::default(), HashMap::default()],
            dirty: [Vec::new(), Vec::new()],
            log: DeltaLog::default(),
            filter: filter.map(FilterOp::new),
        })
    }

}

fn bad_state() -> ExecError {
    ExecError::CorruptState("join state".into())
}

/// One state entry: side byte, key length (u32 LE), key, row length (u32 LE), row, count (i64
/// LE; 0 when the row is gone).
fn encode_entry(buf: &mut Vec<u8>, side: usize, key: &[u8], row: &[u8], count: i64) {
    buf.push(side as u8);
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(&(row.len() as u32).to_le_bytes());
    buf.extend_from_slice(row);
    buf.extend_from_slice(&count.to_le_bytes());
}

fn decode_entry<'a>(buf: &'a [u8], pos: &mut usize) -> Result<(usize, &'a [u8], &'a [u8], i64)> {
    let mut take = |n: usize| -> Result<&'a [u8]> {
        let s = buf.get(*pos..*pos + n).ok_or_else(bad_state)?;
        *pos += n;
        Ok(s)
    };
    let side = take(1)?[0] as usize;
    if side > 1 {
        return Err(bad_state());
    }
    let klen = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
    let key = take(klen)?;
    let rlen = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
    let row = take(rlen)?;
    let count = i64::from_le_bytes(take(8)?.try_into().unwrap());
    Ok((side, key, row, count))
}

/// Decodes output rows into a batch of `schema` (left columns, then right columns).
fn build(conv: &[RowConverter; 2], types: &[Vec<DataType>; 2], schema: &SchemaRef, out: Vec<OutRow<'_>>) -> Result<ChangeBatch> {
    let left: Vec<Option<&[u8]>> = out.iter().map(|r| r.1).collect();
    let right: Vec<Option<&[u8]>> = out.iter().map(|r| r.2).collect();
    let mut cols: Vec<ArrayRef> = decode_optional(&conv[0], &types[0], &left)?;
    cols.extend(decode_optional(&conv[1], &types[1], &right)?);
    let data = RecordBatch::try_new(schema.clone(), cols)?;
    Ok(ChangeBatch::new(data, out.into_iter().map(|r| r.0).collect()))
}

/// Rows with `key` on one side, counted with multiplicity.
fn side_total(state: &SideState, key: &[u8]) -> i64 {
    state.get(key).map(|m| m.values().sum()).unwrap_or(0)
}

/// Removes one occurrence of `row` under `key`; returns the count left, or `None` if the row
/// was not there.
fn remove_row(state: &mut SideState, key: &[u8], row: &[u8]) -> Option<i64> {
    let m = state.get_mut(key)?;
    match m.get_mut(row) {
        Some(c) if *c > 1 => {
            *c -= 1;
            Some(*c)
        }
        Some(_) => {
            m.remove(row);
            if m.is_empty() {
                state.remove(key);
            }
            Some(0)
        }
        None => None,
    }
}

/// An output row with `this` on the input's side and `that` on the other.
fn oriented<'a>(side: usize, op: Op, this: Option<&'a [u8]>, that: Option<&'a [u8]>) -> OutRow<'a> {
    if side == 0 {
        (op, this, that)
    } else {
        (op, that, this)
    }
}

/// `this` joined with every match (each as often as its multiplicity), or NULL-padded when
/// there is none and its side is preserved by an outer join.
fn emit_joined<'a>(out: &mut Vec<OutRow<'a>>, side: usize, op: Op, this: &'a [u8], matches: &[(&'a [u8], i64)], outer: bool) {
    if matches.is_empty() {
        if outer {
            out.push(oriented(side, op, Some(this), None));
        }
        return;
    }
    for (r, c) in matches {
        for _ in 0..*c {
            out.push(oriented(side, op, Some(this), Some(r)));
        }
    }
}

/// The other side's rows, NULL-padded on this side.
fn emit_other_padded<'a>(out: &mut Vec<OutRow<'a>>, side: usize, op: Op, matches: &[(&'a [u8], i64)]) {
    for (r, c) in matches {
        for _ in 0..*c {
            out.push(oriented(side, op, None, Some(r)));
        }
    }
}

impl Operator for JoinOp {
    fn process(&mut self, side: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let other = 1 - side;
        let key_cols = eval(&self.keys[side], &batch.data)?;
        let keys = self.key_conv.convert_columns(&key_cols)?;
        let rows = self.row_conv[side].convert_columns(batch.data.columns())?;
        let (this_state, other_state) = {
            let (a, b) = self.state.split_at_mut(1);
            if side == 0 {
                (&mut a[0], &b[0])
            } else {
                (&mut b[0], &a[0])
            }
        };
        let dirty = &mut self.dirty[side];
        let (outer_this, outer_other) = (self.outer[side], self.outer[other]);
        let mut out: Vec<OutRow<'_>> = Vec::new();
        for i in 0..batch.num_rows() {
            let op = batch.ops[i];
            let this = rows.row(i).data();
            if any_null(&key_cols, i) {
                if outer_this {
                    out.push(oriented(side, op, Some(this), None));
                }
                continue;
            }
            let key = keys.row(i).data();
            let matches: Vec<(&[u8], i64)> = other_state
                .get(key)
                .map(|m| m.iter().filter(|(_, c)| **c > 0).map(|(r, c)| (r.as_slice(), *c)).collect())
                .unwrap_or_default();
            // The other side's NULL-padded rows exist exactly while this side has no row with
            // the key: the first insertion retracts them, the last retraction restores them.
            if op.is_insertion() {
                if outer_other && !matches.is_empty() && side_total(this_state, key) == 0 {
                    emit_other_padded(&mut out, side, Op::Delete, &matches);
                }
                emit_joined(&mut out, side, op, this, &matches, outer_this);
                let count = this_state.entry_ref(key).or_default().entry_ref(this).or_insert(0);
                *count += 1;
                dirty.push((key.to_vec(), this.to_vec(), *count));
            } else {
                let Some(left) = remove_row(this_state, key, this) else {
                    // A retraction of a row this join never saw: nothing was emitted for it.
                    continue;
                };
                dirty.push((key.to_vec(), this.to_vec(), left));
                emit_joined(&mut out, side, op, this, &matches, outer_this);
                if outer_other && !matches.is_empty() && side_total(this_state, key) == 0 {
                    emit_other_padded(&mut out, side, Op::Insert, &matches);
                }
            }
        }
        if out.is_empty() {
            return Ok(vec![]);
        }
        let joined = build(&self.row_conv, &self.types, &self.schema, out)?;
        match &mut self.filter {
            Some(f) => f.process(0, joined),
            None => Ok(vec![joined]),
        }
    }

    fn checkpoint(&mut self, w: &mut StateWriter<'_>) -> Result<()> {
        let mut delta = Vec::new();
        for side in 0..2 {
            // Each change carries its count after the change; a restore applies them in order.
            for (key, row, count) in std::mem::take(&mut self.dirty[side]) {
                encode_entry(&mut delta, side, &key, &row, count);
            }
        }
        let state = &self.state;
        self.log.commit(w, &delta, |snap| {
            for (side, m) in state.iter().enumerate() {
                for (key, rows) in m {
                    for (row, count) in rows {
                        encode_entry(snap.buf(), side, key, row, *count);
                    }
                }
            }
        });
        Ok(())
    }

    fn restore(&mut self, r: &StateReader<'_>) -> Result<()> {
        let state = &mut self.state;
        self.log.restore(r, |v| {
            let mut pos = 0;
            while pos < v.len() {
                let (side, key, row, count) = decode_entry(v, &mut pos)?;
                let m = state[side].entry(key.to_vec()).or_default();
                if count > 0 {
                    m.insert(row.to_vec(), count);
                } else {
                    m.remove(row);
                    if m.is_empty() {
                        state[side].remove(key);
                    }
                }
            }
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "Join"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;
    use rocksdb::WriteBatch;
    use sluice_catalog::Store;

    use super::*;
    use crate::state::operator_prefix;

    fn batch(schema: &SchemaRef, ids: &[i64], names: &[&str], ops: &[Op]) -> ChangeBatch {
        let data = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(ids.to_vec())), Arc::new(StringArray::from(names.to_vec()))],
        )
        .unwrap();
        ChangeBatch::new(data, ops.to_vec())
    }

    fn join(schema: &SchemaRef) -> JoinOp {
        let out = Arc::new(Schema::new(
            schema.fields().iter().chain(schema.fields().iter()).map(|f| f.as_ref().clone()).collect::<Vec<_>>(),
        ));
        let key: ExprRef = Arc::new(Column::new("id", 0));
        JoinOp::try_new(schema.clone(), schema.clone(), vec![key.clone()], vec![key], None, true, false, out).unwrap()
    }

    #[test]
    fn left_join_changelog_and_state_round_trip() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("s", DataType::Utf8, true)]));
        let mut j = join(&schema);
        let out = j.process(0, batch(&schema, &[1, 2], &["a", "b"], &[Op::Insert, Op::Insert])).unwrap();
        assert_eq!(out[0].to_text(), "+I 1 a NULL NULL\n+I 2 b NULL NULL\n");
        let out = j.process(1, batch(&schema, &[1], &["x"], &[Op::Insert])).unwrap();
        assert_eq!(out[0].to_text(), "-D 1 a NULL NULL\n+I 1 a 1 x\n");
        let out = j.process(1, batch(&schema, &[1], &["x"], &[Op::Delete])).unwrap();
        assert_eq!(out[0].to_text(), "-D 1 a 1 x\n+I 1 a NULL NULL\n");

        let dir = std::env::temp_dir().join(format!("sluice-join-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let commit = |j: &mut JoinOp| {
            let mut wb = WriteBatch::default();
            j.checkpoint(&mut StateWriter::new(&store, &mut wb, operator_prefix("t", 0))).unwrap();
            store.write(wb).unwrap();
        };
        commit(&mut j);
        j.process(1, batch(&schema, &[2, 3], &["y", "z"], &[Op::Insert, Op::Insert])).unwrap();
        j.log.force_snapshot();
        commit(&mut j);
        j.process(0, batch(&schema, &[2], &["b"], &[Op::Delete])).unwrap();
        j.process(0, batch(&schema, &[3], &["c"], &[Op::Insert])).unwrap();
        commit(&mut j);

        let mut restored = join(&schema);
        restored.restore(&StateReader::new(&store, operator_prefix("t", 0))).unwrap();
        assert_eq!(restored.state, j.state);
        let out = restored.process(1, batch(&schema, &[3], &["z"], &[Op::Delete])).unwrap();
        assert_eq!(out[0].to_text(), "-D 3 c 3 z\n+I 3 c NULL NULL\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
