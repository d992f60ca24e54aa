//! Regular streaming join of two changelogs, as Flink's regular join: both inputs are kept in
//! state (unbounded), and every change on one side is joined with the other side's current
//! rows. Inner joins pass each input row's op through (`+I`, `-U`, `+U`, `-D`); outer joins also
//! emit NULL-padded rows for rows without a match and retract them when a match appears.
//! Rows whose key has a NULL never match (SQL equality).
//!
//! State per side: key -> (encoded row -> multiplicity), checkpointed incrementally under
//! `<side byte><key length u32><key><row>`.

use datafusion::common::{HashMap, HashSet};

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
    dirty: [HashSet<(Vec<u8>, Vec<u8>)>; 2],
    filter: Option<FilterOp>,
}

/// One output row: op, left row, right row (`None` = NULL padding).
type OutRow = (Op, Option<Vec<u8>>, Option<Vec<u8>>);

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
            dirty: [HashSet::default(), HashSet::default()],
            filter: filter.map(FilterOp::new),
        })
    }

    fn side_total(&self, side: usize, key: &[u8]) -> i64 {
        self.state[side].get(key).map(|m| m.values().sum()).unwrap_or(0)
    }

    fn build(&self, out: Vec<OutRow>) -> Result<ChangeBatch> {
        let left: Vec<Option<&[u8]>> = out.iter().map(|r| r.1.as_deref()).collect();
        let right: Vec<Option<&[u8]>> = out.iter().map(|r| r.2.as_deref()).collect();
        let mut cols: Vec<ArrayRef> = decode_optional(&self.row_conv[0], &self.types[0], &left)?;
        cols.extend(decode_optional(&self.row_conv[1], &self.types[1], &right)?);
        let data = RecordBatch::try_new(self.schema.clone(), cols)?;
        Ok(ChangeBatch::new(data, out.into_iter().map(|r| r.0).collect()))
    }
}

impl Operator for JoinOp {
    fn process(&mut self, side: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let other = 1 - side;
        let key_cols = eval(&self.keys[side], &batch.data)?;
        let keys = self.key_conv.convert_columns(&key_cols)?;
        let rows = self.row_conv[side].convert_columns(batch.data.columns())?;
        let mut out: Vec<OutRow> = Vec::new();
        let pair = |this: Option<Vec<u8>>, that: Option<Vec<u8>>| if side == 0 { (this, that) } else { (that, this) };
        for i in 0..batch.num_rows() {
            let op = batch.ops[i];
            let this = rows.row(i).as_ref().to_vec();
            if any_null(&key_cols, i) {
                if self.outer[side] {
                    let (l, r) = pair(Some(this), None);
                    out.push((op, l, r));
                }
                continue;
            }
            let key = keys.row(i).as_ref().to_vec();
            let matches: Vec<(Vec<u8>, i64)> = self.state[other]
                .get(&key)
                .map(|m| m.iter().filter(|(_, c)| **c > 0).map(|(r, c)| (r.clone(), *c)).collect())
                .unwrap_or_default();
            let total_other: i64 = matches.iter().map(|m| m.1).sum();
            if op.is_insertion() {
                if self.outer[other] && total_other > 0 && self.side_total(side, &key) == 0 {
                    for (r, c) in &matches {
                        for _ in 0..*c {
                            let (l, rr) = pair(None, Some(r.clone()));
                            out.push((Op::Delete, l, rr));
                        }
                    }
                }
                if total_other == 0 {
                    if self.outer[side] {
                        let (l, r) = pair(Some(this.clone()), None);
                        out.push((op, l, r));
                    }
                } else {
                    for (r, c) in &matches {
                        for _ in 0..*c {
                            let (l, rr) = pair(Some(this.clone()), Some(r.clone()));
                            out.push((op, l, rr));
                        }
                    }
                }
                *self.state[side].entry(key.clone()).or_default().entry(this.clone()).or_insert(0) += 1;
                self.dirty[side].insert((key, this));
            } else {
                let present = self.state[side].get(&key).and_then(|m| m.get(&this)).copied().unwrap_or(0);
                if present <= 0 {
                    // A retraction of a row this join never saw: nothing was emitted for it.
                    continue;
                }
                let m = self.state[side].get_mut(&key).expect("present");
                if present == 1 {
                    m.remove(&this);
                    if m.is_empty() {
                        self.state[side].remove(&key);
                    }
                } else {
                    *m.get_mut(&this).expect("present") -= 1;
                }
                self.dirty[side].insert((key.clone(), this.clone()));
                if total_other == 0 {
                    if self.outer[side] {
                        let (l, r) = pair(Some(this.clone()), None);
                        out.push((op, l, r));
                    }
                } else {
                    for (r, c) in &matches {
                        for _ in 0..*c {
                            let (l, rr) = pair(Some(this.clone()), Some(r.clone()));
                            out.push((op, l, rr));
                        }
                    }
                }
                if self.outer[other] && total_other > 0 && self.side_total(side, &key) == 0 {
                    for (r, c) in &matches {
                        for _ in 0..*c {
                            let (l, rr) = pair(None, Some(r.clone()));
                            out.push((Op::Insert, l, rr));
                        }
                    }
                }
            }
        }
        if out.is_empty() {
            return Ok(vec![]);
        }
        let joined = self.build(out)?;
        match &mut self.filter {
            Some(f) => f.process(0, joined),
            None => Ok(vec![joined]),
        }
    }

    fn checkpoint(&mut self, w: &mut StateWriter<'_>) -> Result<()> {
        for side in 0..2 {
            for (key, row) in self.dirty[side].drain() {
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
