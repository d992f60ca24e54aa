//! Grouped aggregation over changelogs without a window (Flink's GroupAggregate), vectorized.
//!
//! Each change updates its group's accumulators, and for every group a batch touched the
//! operator emits the group's new result: `+I new` (the group's first row), `-U old` / `+U new`
//! (its result changed) or `-D old` (its last row was retracted). Groups live in one group table
//! ([`crate::groups`]): DataFusion's `GroupValues` interns the group columns of the whole batch
//! into group ids, and the accumulators are typed vectors indexed by group id. COUNT and
//! SUM/AVG subtract on retraction; MIN/MAX/COUNT(DISTINCT) keep a multiset of values. The results
//! before and after a batch are built as columns for the touched groups only, compared with
//! `IS DISTINCT FROM` semantics, and interleaved into the output.
//!
//! An emptied group keeps its id (a group table cannot forget a key) with empty accumulators,
//! and comes back as `+I` if rows for it arrive again.
//!
//! Checkpoints are incremental, as for windows: the keys of groups created during the epoch
//! (Arrow IPC, in id order) and the accumulators of the groups changed.
//!
//! Aggregation over a window TVF is [`crate::window_agg`].

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::kernels::cmp::distinct;
use arrow::compute::{cast, concat_batches, interleave, or, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::RowConverter;
use sluice_catalog::dataflow::{AggCall, AggKind, ExprRef};
use sluice_catalog::{ChangeBatch, Op};
use sluice_connectors::log::{decode_batch, encode_batch};

use crate::error::{ExecError, Result};
use crate::groups::{put_bytes, GroupTable, Reader};
use crate::operator::Operator;
use crate::rows::{converter, eval, expr_types};
use crate::state::{DeltaLog, StateReader, StateWriter};

/// How one aggregate reads its argument.
pub(crate) struct AggSpec {
    pub(crate) kind: AggKind,
    pub(crate) arg: Option<ExprRef>,
    /// The type the argument is cast to before accumulating.
    pub(crate) acc_type: Option<DataType>,
    /// The output type (from the plan's schema).
    pub(crate) out_type: DataType,
    /// Row encoding of the argument, for MIN/MAX/COUNT(DISTINCT).
    pub(crate) conv: Option<(RowConverter, DataType)>,
}

/// The specs of `aggs` over `input`, whose outputs follow `n_groups` group columns in `schema`.
pub(crate) fn agg_specs(input: &SchemaRef, n_groups: usize, aggs: &[AggCall], schema: &SchemaRef) -> Result<Vec<AggSpec>> {
    let mut specs = Vec::new();
    for (i, a) in aggs.iter().enumerate() {
        let out_type = schema.field(n_groups + i).data_type().clone();
        let arg_type = match &a.arg {
            Some(e) => Some(e.data_type(input)?),
            None => None,
        };
        let acc_type = match a.kind {
            AggKind::Sum => Some(match &out_type {
                DataType::Float32 | DataType::Float64 => DataType::Float64,
                d @ DataType::Decimal128(_, _) => d.clone(),
                _ => DataType::Int64,
            }),
            AggKind::Avg => Some(DataType::Float64),
            _ => arg_type.clone(),
        };
        let conv = match a.kind {
            AggKind::Min | AggKind::Max | AggKind::CountDistinct => {
                let t = arg_type.clone().ok_or_else(|| ExecError::Unsupported("MIN/MAX need an argument".into()))?;
                Some((converter(std::slice::from_ref(&t))?, t))
            }
            _ => None,
        };
        specs.push(AggSpec { kind: a.kind, arg: a.arg.clone(), acc_type, out_type, conv });
    }
    Ok(specs)
}

/// Evaluates each aggregate's argument on `batch`, cast to its accumulator type (`None` for
/// `COUNT(*)`).
pub(crate) fn eval_args(specs: &[AggSpec], batch: &RecordBatch) -> Result<Vec<Option<ArrayRef>>> {
    specs
        .iter()
        .map(|spec| {
            Ok(match &spec.arg {
                Some(e) => {
                    let a = e.evaluate(batch)?.into_array(batch.num_rows())?;
                    Some(match &spec.acc_type {
                        Some(t) if a.data_type() != t => cast(&a, t)?,
                        _ => a,
                    })
                }
                None => None,
            })
        })
        .collect()
}

/// See the module docs.
pub struct AggregateOp {
    group_exprs: Vec<ExprRef>,
    /// Schema of the group columns (all nullable), for the group table.
    key_schema: SchemaRef,
    aggs: Vec<AggSpec>,
    schema: SchemaRef,
    table: GroupTable,
    /// How the state is checkpointed.
    log: DeltaLog,
    gids: Vec<usize>,
    /// Per group, the last batch that touched it (`batch_no`), to list touched groups once.
    touched_in: Vec<u64>,
    batch_no: u64,
}

impl AggregateOp {
    /// Builds the operator over an input with schema `input`, producing `schema` (group columns
    /// then one column per aggregate).
    ///
    /// Errors: an aggregate without the argument it needs, or group types DataFusion cannot
    /// group by.
    pub fn try_new(input: SchemaRef, group_exprs: Vec<ExprRef>, aggs: &[AggCall], schema: SchemaRef) -> Result<AggregateOp> {
        let types = expr_types(&group_exprs, &input)?;
        let key_schema = Arc::new(Schema::new(
            types.iter().enumerate().map(|(i, t)| Field::new(format!("g{i}"), t.clone(), true)).collect::<Vec<_>>(),
        ));
        let aggs = agg_specs(&input, group_exprs.len(), aggs, &schema)?;
        Ok(AggregateOp {
            table: GroupTable::new(&key_schema, &aggs)?,
            group_exprs,
            key_schema,
            aggs,
            schema,
            log: DeltaLog::default(),
            gids: Vec::new(),
            touched_in: Vec::new(),
            batch_no: 0,
        })
    }
}

impl Operator for AggregateOp {
    fn process(&mut self, _side: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let keys = eval(&self.group_exprs, &batch.data)?;
        let args = eval_args(&self.aggs, &batch.data)?;
        let weights: Option<Vec<i64>> = (!batch.is_append_only()).then(|| batch.ops.iter().map(|o| o.weight()).collect());
        self.table.intern(&self.key_schema, &keys, &mut self.gids, true)?;
        // The touched groups, each once, in order of first appearance, with that row.
        self.batch_no += 1;
        self.touched_in.resize(self.table.len(), 0);
        let mut touched = Vec::new();
        let mut first_row = Vec::new();
        for (j, g) in self.gids.iter().enumerate() {
            if self.touched_in[*g] != self.batch_no {
                self.touched_in[*g] = self.batch_no;
                touched.push(*g);
                first_row.push(j as u32);
            }
        }
        let rows_before: Vec<i64> = touched.iter().map(|g| self.table.rows[*g]).collect();
        let before = self.table.agg_columns(&self.aggs, Some(&touched))?;
        self.table.update(&self.aggs, &self.gids, &args, weights.as_deref())?;
        let after = self.table.agg_columns(&self.aggs, Some(&touched))?;
        let mut changed: Option<BooleanArray> = None;
        for (b, a) in before.iter().zip(&after) {
            let d = distinct(b, a)?;
            changed = Some(match changed {
                Some(c) => or(&c, &d)?,
                None => d,
            });
        }
        // Output rows as (0 = before / 1 = after, touched index).
        let mut ops = Vec::new();
        let mut picks: Vec<(usize, usize)> = Vec::new();
        for (t, g) in touched.iter().enumerate() {
            let (was, is) = (rows_before[t] > 0, self.table.rows[*g] > 0);
            match (was, is) {
                (true, true) if changed.as_ref().is_none_or(|c| c.value(t)) => {
                    ops.extend([Op::UpdateBefore, Op::UpdateAfter]);
                    picks.extend([(0, t), (1, t)]);
                }
                (true, false) => {
                    ops.push(Op::Delete);
                    picks.push((0, t));
                }
                (false, true) => {
                    ops.push(Op::Insert);
                    picks.push((1, t));
                }
                _ => {}
            }
        }
        if ops.is_empty() {
            return Ok(vec![]);
        }
        let key_idx = UInt32Array::from_iter_values(picks.iter().map(|(_, t)| first_row[*t]));
        let mut cols: Vec<ArrayRef> = keys.iter().map(|k| take(k.as_ref(), &key_idx, None)).collect::<Result<_, _>>()?;
        for (b, a) in before.iter().zip(&after) {
            cols.push(interleave(&[b.as_ref(), a.as_ref()], &picks)?);
        }
        let cols = cols
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { cast(&c, f.data_type()) })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![ChangeBatch::new(RecordBatch::try_new(self.schema.clone(), cols)?, ops)])
    }

    fn checkpoint(&mut self, w: &mut StateWriter<'_>) -> Result<()> {
        // Entries: 0 = append group keys (IPC); 1 = set the accumulators of listed groups.
        let t = &mut self.table;
        let mut delta = Vec::new();
        if !t.new_keys.is_empty() {
            let keys = concat_batches(&self.key_schema, &std::mem::take(&mut t.new_keys))?;
            delta.push(0);
            // The id of the first of these groups: ids are explicit, see `groups`.
            delta.extend_from_slice(&((t.len() - keys.num_rows()) as u32).to_le_bytes());
            put_bytes(&mut delta, &encode_batch(&keys)?);
        }
        if !t.dirty.is_empty() {
            delta.push(1);
            delta.extend_from_slice(&(t.dirty.len() as u32).to_le_bytes());
            for g in std::mem::take(&mut t.dirty) {
                t.is_dirty[g as usize] = false;
                delta.extend_from_slice(&g.to_le_bytes());
                t.encode_group(g as usize, &mut delta);
            }
        }
        let key_schema = &self.key_schema;
        let mut snap_err = None;
        self.log.commit(w, &delta, |snap| {
            let res = (|| -> Result<()> {
                let keys = RecordBatch::try_new(key_schema.clone(), t.keys(key_schema)?)?;
                let buf = snap.buf();
                buf.push(0);
                buf.extend_from_slice(&0u32.to_le_bytes());
                put_bytes(buf, &encode_batch(&keys)?);
                buf.push(1);
                buf.extend_from_slice(&(t.len() as u32).to_le_bytes());
                for g in 0..t.len() {
                    buf.extend_from_slice(&(g as u32).to_le_bytes());
                    t.encode_group(g, buf);
                }
                Ok(())
            })();
            snap_err = res.err();
        });
        snap_err.map_or(Ok(()), Err)
    }

    fn restore(&mut self, r: &StateReader<'_>) -> Result<()> {
        let AggregateOp { table, key_schema, log, gids, .. } = self;
        log.restore(r, |v| {
            let mut rd = Reader { b: v, pos: 0 };
            while rd.pos < v.len() {
                match rd.take(1)?[0] {
                    0 => {
                        let first = rd.u32()?;
                        let keys = decode_batch(rd.bytes()?)?;
                        table.restore_keys(key_schema, first, keys.columns(), gids)?;
                    }
                    1 => {
                        let count = rd.u32()?;
                        for _ in 0..count {
                            let g = rd.u32()? as usize;
                            if g >= table.len() {
                                return Err(ExecError::CorruptState("aggregate group id".into()));
                            }
                            table.decode_group(g, &mut rd)?;
                        }
                    }
                    t => return Err(ExecError::CorruptState(format!("aggregate state entry {t}"))),
                }
            }
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "GroupAggregate"
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use datafusion::physical_expr::expressions::Column;
    use rocksdb::WriteBatch;
    use sluice_catalog::Store;

    use super::*;
    use crate::state::operator_prefix;

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new("v", DataType::Int64, true)]))
    }

    fn op() -> AggregateOp {
        let out = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("max", DataType::Int64, true),
            Field::new("sum", DataType::Int64, true),
        ]));
        let col = |n: &str, i: usize| -> ExprRef { Arc::new(Column::new(n, i)) };
        let aggs = vec![AggCall { kind: AggKind::Max, arg: Some(col("v", 1)) }, AggCall { kind: AggKind::Sum, arg: Some(col("v", 1)) }];
        AggregateOp::try_new(input(), vec![col("k", 0)], &aggs, out).unwrap()
    }

    fn batch(k: &[Option<&str>], v: &[i64], ops: &[Op]) -> ChangeBatch {
        let data = RecordBatch::try_new(
            input(),
            vec![Arc::new(StringArray::from(k.to_vec())), Arc::new(Int64Array::from(v.to_vec()))],
        )
        .unwrap();
        ChangeBatch::new(data, ops.to_vec())
    }

    fn text(out: Vec<ChangeBatch>) -> String {
        out.iter().map(|b| b.to_text()).collect()
    }

    #[test]
    fn changelog_of_group_results_and_restore() {
        use Op::*;
        let mut a = op();
        assert_eq!(
            text(a.process(0, batch(&[Some("x"), Some("y"), Some("x"), None], &[5, 1, 2, 7], &[Insert; 4])).unwrap()),
            "+I x 5 7\n+I y 1 1\n+I NULL 7 7\n"
        );
        // x: max drops back after the retraction of 5; y emptied; NULL group unchanged (0 added).
        assert_eq!(
            text(a.process(0, batch(&[Some("x"), Some("y"), None, None], &[5, 1, 0, 0], &[Delete, Delete, Insert, Delete])).unwrap()),
            "-U x 5 7\n+U x 2 2\n-D y 1 1\n"
        );
        let dir = std::env::temp_dir().join(format!("sluice-agg-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let commit = |a: &mut AggregateOp| {
            let mut wb = WriteBatch::default();
            a.checkpoint(&mut StateWriter::new(&store, &mut wb, operator_prefix("g", 0))).unwrap();
            store.write(wb).unwrap();
        };
        commit(&mut a);
        a.process(0, batch(&[Some("z")], &[3], &[Insert])).unwrap();
        a.log.force_snapshot();
        commit(&mut a);
        a.process(0, batch(&[Some("x")], &[9], &[Insert])).unwrap();
        commit(&mut a);
        let mut b = op();
        b.restore(&StateReader::new(&store, operator_prefix("g", 0))).unwrap();
        for agg in [&mut a, &mut b] {
            // y comes back as a new group; x's max stays, its sum grows; z empties.
            assert_eq!(
                text(agg.process(0, batch(&[Some("y"), Some("x"), Some("z")], &[4, 1, 3], &[Insert, Insert, Delete])).unwrap()),
                "+I y 4 4\n-U x 9 11\n+U x 9 12\n-D z 3 3\n"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
