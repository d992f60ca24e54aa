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
//! An emptied group keeps its id with empty accumulators, and comes back as `+I` if rows for
//! it arrive again. Once emptied groups are at least 1 024 and half the table, a checkpoint
//! rebuilds the table without them and writes a snapshot, so keys that come and go do not
//! accumulate. With a state TTL (Flink's `table.exec.state.ttl`, processing time), every
//! checkpoint first empties the groups not written for the TTL, without emitting anything, as
//! Flink expires state: their next row starts them again as `+I`. When each group was last
//! written is checkpointed with it, so the TTL counts across restarts.
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
use crate::state::{processing_time_ms, worth_rebuilding, DeltaLog, StateReader, StateWriter};

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

/// Entry 2 of the checkpoint: when the `n` groups `gids` were last written; nothing without a
/// TTL.
fn encode_access(t: &GroupTable, gids: impl Iterator<Item = usize>, n: usize, buf: &mut Vec<u8>) {
    let Some(access) = &t.last_access else { return };
    buf.push(2);
    buf.extend_from_slice(&(n as u32).to_le_bytes());
    for g in gids {
        buf.extend_from_slice(&(g as u32).to_le_bytes());
        buf.extend_from_slice(&access[g].to_le_bytes());
    }
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
    /// Groups with no rows, still in the table.
    empty: usize,
    /// The state TTL in ms, if any.
    ttl_ms: Option<i64>,
}

impl AggregateOp {
    /// Builds the operator over an input with schema `input`, producing `schema` (group columns
    /// then one column per aggregate), keeping a group's state for `ttl` after it was last
    /// written (forever for `None`).
    ///
    /// Errors: an aggregate without the argument it needs, or group types DataFusion cannot
    /// group by.
    pub fn try_new(
        input: SchemaRef,
        group_exprs: Vec<ExprRef>,
        aggs: &[AggCall],
        schema: SchemaRef,
        ttl: Option<std::time::Duration>,
    ) -> Result<AggregateOp> {
        let types = expr_types(&group_exprs, &input)?;
        let key_schema = Arc::new(Schema::new(
            types.iter().enumerate().map(|(i, t)| Field::new(format!("g{i}"), t.clone(), true)).collect::<Vec<_>>(),
        ));
        let aggs = agg_specs(&input, group_exprs.len(), aggs, &schema)?;
        let table = GroupTable::new(&key_schema, &aggs)?;
        Ok(AggregateOp {
            table: if ttl.is_some() { table.track_access() } else { table },
            group_exprs,
            key_schema,
            aggs,
            schema,
            log: DeltaLog::default(),
            gids: Vec::new(),
            touched_in: Vec::new(),
            batch_no: 0,
            empty: 0,
            ttl_ms: ttl.map(|d| d.as_millis() as i64),
        })
    }

    /// Empties the groups not written for the TTL, then rebuilds the table without its empty
    /// groups when they are many; true when it rebuilt (the next checkpoint is a snapshot).
    fn expire_and_drop_empty(&mut self, now: i64) -> Result<bool> {
        let t = &mut self.table;
        if let (Some(ttl), Some(access)) = (self.ttl_ms, &t.last_access) {
            let expired: Vec<usize> = (0..t.len()).filter(|g| t.rows[*g] != 0 && access[*g] + ttl <= now).collect();
            self.empty += expired.len();
            for g in expired {
                t.clear_group(g);
            }
        }
        if !worth_rebuilding(self.empty, t.len()) {
            return Ok(false);
        }
        let keep: Vec<bool> = t.rows.iter().map(|r| *r != 0).collect();
        t.retain(&self.key_schema, &keep)?;
        self.touched_in.clear();
        self.empty = 0;
        Ok(true)
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
        let existing = self.table.len();
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
        if self.ttl_ms.is_some() {
            self.table.touch(&touched, processing_time_ms());
        }
        for (t, g) in touched.iter().enumerate() {
            // An existing group with no rows was counted as empty.
            let was_empty = *g < existing && rows_before[t] == 0;
            let is_empty = self.table.rows[*g] == 0;
            match (was_empty, is_empty) {
                (false, true) => self.empty += 1,
                (true, false) => self.empty -= 1,
                _ => {}
            }
        }
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
        // Entries: 0 = append group keys (IPC); 1 = set the accumulators of listed groups;
        // 2 = when listed groups were last written (with a TTL).
        if self.expire_and_drop_empty(processing_time_ms())? {
            self.log.snapshot_next();
        }
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
            let dirty = std::mem::take(&mut t.dirty);
            delta.push(1);
            delta.extend_from_slice(&(dirty.len() as u32).to_le_bytes());
            for g in &dirty {
                t.is_dirty[*g as usize] = false;
                delta.extend_from_slice(&g.to_le_bytes());
                t.encode_group(*g as usize, &mut delta);
            }
            encode_access(t, dirty.iter().map(|g| *g as usize), dirty.len(), &mut delta);
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
                encode_access(t, 0..t.len(), t.len(), buf);
                Ok(())
            })();
            snap_err = res.err();
        });
        snap_err.map_or(Ok(()), Err)
    }

    fn restore(&mut self, r: &StateReader<'_>) -> Result<()> {
        let AggregateOp { table, key_schema, log, gids, .. } = self;
        // Groups stored without a time (state written without a TTL) count from now.
        let now = processing_time_ms();
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
                            if let Some(t) = &mut table.last_access {
                                t[g] = now;
                            }
                        }
                    }
                    2 => {
                        let count = rd.u32()?;
                        for _ in 0..count {
                            let g = rd.u32()? as usize;
                            let at = rd.i64()?;
                            if g >= table.len() {
                                return Err(ExecError::CorruptState("aggregate group id".into()));
                            }
                            if let Some(t) = &mut table.last_access {
                                t[g] = at;
                            }
                        }
                    }
                    t => return Err(ExecError::CorruptState(format!("aggregate state entry {t}"))),
                }
            }
            Ok(())
        })?;
        if let Some(t) = &mut self.table.last_access {
            t.iter_mut().filter(|at| **at == 0).for_each(|at| *at = now);
        }
        self.empty = self.table.rows.iter().filter(|r| **r == 0).count();
        Ok(())
    }

    /// Groups with rows: emptied and expired groups the table still holds are not counted.
    fn state_rows(&self) -> u64 {
        (self.table.len() - self.empty) as u64
    }

    fn state_bytes(&self) -> u64 {
        self.log.stored_bytes()
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
        AggregateOp::try_new(input(), vec![col("k", 0)], &aggs, out, None).unwrap()
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

    fn op_ttl(ttl: Option<std::time::Duration>) -> AggregateOp {
        let out = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new("n", DataType::Int64, true)]));
        let aggs = vec![AggCall { kind: AggKind::Count, arg: None }];
        AggregateOp::try_new(input(), vec![Arc::new(Column::new("k", 0))], &aggs, out, ttl).unwrap()
    }

    fn keys(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("k{i}")).collect()
    }

    fn rows_of(ks: &[String], op: Op) -> ChangeBatch {
        let k: Vec<Option<&str>> = ks.iter().map(|s| Some(s.as_str())).collect();
        batch(&k, &vec![0; ks.len()], &vec![op; ks.len()])
    }

    fn checkpoint_into(a: &mut AggregateOp, store: &Store, job: &str) {
        let mut wb = WriteBatch::default();
        a.checkpoint(&mut StateWriter::new(store, &mut wb, operator_prefix(job, 0))).unwrap();
        store.write(wb).unwrap();
    }

    #[test]
    fn emptied_groups_are_dropped_and_come_back_as_new() {
        let dir = std::env::temp_dir().join(format!("sluice-agg-empty-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let mut a = op_ttl(None);
        a.process(0, rows_of(&keys(0..3000), Op::Insert)).unwrap();
        checkpoint_into(&mut a, &store, "e");
        // 2 000 of the 3 000 groups emptied: at the next checkpoint the table forgets them.
        a.process(0, rows_of(&keys(0..2000), Op::Delete)).unwrap();
        assert_eq!((a.table.len(), a.empty), (3000, 2000));
        checkpoint_into(&mut a, &store, "e");
        assert_eq!((a.table.len(), a.empty), (1000, 0));
        let mut b = op_ttl(None);
        b.restore(&StateReader::new(&store, operator_prefix("e", 0))).unwrap();
        assert_eq!(b.table.len(), 1000);
        for x in [&mut a, &mut b] {
            // A forgotten group starts again; a kept one continues.
            assert_eq!(text(x.process(0, rows_of(&keys(1999..2001), Op::Insert)).unwrap()), "+I k1999 1
-U k2000 1
+U k2000 2
");
        }
        // Fewer than 1 024 empty groups are kept.
        a.process(0, rows_of(&keys(2001..2100), Op::Delete)).unwrap();
        checkpoint_into(&mut a, &store, "e");
        assert_eq!((a.table.len(), a.empty), (1001, 99));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn groups_not_written_for_the_ttl_expire_silently_and_across_restores() {
        let dir = std::env::temp_dir().join(format!("sluice-agg-ttl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let ttl = Some(std::time::Duration::from_secs(3600));
        let mut a = op_ttl(ttl);
        a.process(0, rows_of(&keys(0..2), Op::Insert)).unwrap();
        a.process(0, rows_of(&keys(0..2), Op::Insert)).unwrap();
        checkpoint_into(&mut a, &store, "t");
        // k0 was last written more than an hour ago: the next checkpoint expires it.
        let now = processing_time_ms();
        a.table.last_access.as_mut().unwrap()[0] = now - 3_600_001;
        checkpoint_into(&mut a, &store, "t");
        assert_eq!((a.table.rows[0], a.table.rows[1], a.empty), (0, 2, 1));
        let mut b = op_ttl(ttl);
        b.restore(&StateReader::new(&store, operator_prefix("t", 0))).unwrap();
        // The time k1 was written was restored, not reset to the restore's time.
        assert_eq!(b.table.last_access.as_ref().unwrap()[1], a.table.last_access.as_ref().unwrap()[1]);
        for x in [&mut a, &mut b] {
            assert_eq!(text(x.process(0, rows_of(&keys(0..2), Op::Insert)).unwrap()), "+I k0 1
-U k1 2
+U k1 3
");
        }
        // State written without a TTL, restored with one, counts from the restore.
        let mut c = op_ttl(None);
        c.process(0, rows_of(&keys(0..1), Op::Insert)).unwrap();
        checkpoint_into(&mut c, &store, "n");
        let mut d = op_ttl(ttl);
        d.restore(&StateReader::new(&store, operator_prefix("n", 0))).unwrap();
        assert!(d.table.last_access.as_ref().unwrap()[0] >= now);
        let _ = std::fs::remove_dir_all(&dir);
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
        a.log.snapshot_next();
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
