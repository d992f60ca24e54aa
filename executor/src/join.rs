//! Regular streaming join of two changelogs, as Flink's regular join: both inputs are kept in
//! state (unbounded), and every change on one side is joined with the other side's current
//! rows. Inner joins pass each input row's op through (`+I`, `-U`, `+U`, `-D`); outer joins also
//! emit NULL-padded rows for rows without a match and retract them when a match appears.
//! Rows whose key has a NULL never match (SQL equality).
//!
//! State per side: key -> (encoded row -> multiplicity), checkpointed incrementally under
//! `<side byte><key length u32><key><row>`.

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
use crate::state::{StateReader, StateWriter};

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
    dirty: [Vec<(Vec<u8>, Vec<u8>)>; 2],
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
            filter: filter.map(FilterOp::new),
        })
    }

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

/// Removes one occurrence of `row` under `key`; false if it was not there.
fn remove_row(state: &mut SideState, key: &[u8], row: &[u8]) -> bool {
    let Some(m) = state.get_mut(key) else { return false };
    match m.get_mut(row) {
        Some(c) if *c > 1 => *c -= 1,
        Some(_) => {
            m.remove(row);
            if m.is_empty() {
                state.remove(key);
            }
        }
        None => return false,
    }
    true
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
                *this_state.entry(key.to_vec()).or_default().entry(this.to_vec()).or_insert(0) += 1;
                dirty.push((key.to_vec(), this.to_vec()));
            } else {
                if !remove_row(this_state, key, this) {
                    // A retraction of a row this join never saw: nothing was emitted for it.
                    continue;
                }
                dirty.push((key.to_vec(), this.to_vec()));
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
        for side in 0..2 {
            for (key, row) in std::mem::take(&mut self.dirty[side]) {
                let mut k = Vec::with_capacity(5 + key.len() + row.len());
                k.push(side as u8);
                k.extend_from_slice(&(key.len() as u32).to_be_bytes());
                k.extend_from_slice(&key);
                k.extend_from_slice(&row);
                match self.state[side].get(&key).and_then(|m| m.get(&row)) {
                    Some(c) if *c > 0 => w.put(&k, &c.to_be_bytes()),
                    _ => w.delete(&k),
                }
            }
        }
        Ok(())
    }

    fn restore(&mut self, r: &StateReader<'_>) -> Result<()> {
        for (k, v) in r.entries()? {
            let bad = || ExecError::CorruptState("join state key".into());
            let side = *k.first().ok_or_else(bad)? as usize;
            let klen = u32::from_be_bytes(k.get(1..5).ok_or_else(bad)?.try_into().unwrap()) as usize;
            let key = k.get(5..5 + klen).ok_or_else(bad)?.to_vec();
            let row = k[5 + klen..].to_vec();
            let count = i64::from_be_bytes(v.as_slice().try_into().map_err(|_| bad())?);
            self.state.get_mut(side).ok_or_else(bad)?.entry(key).or_default().insert(row, count);
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "Join"
    }
}
