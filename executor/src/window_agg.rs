//! Window aggregation over a window TVF (Flink's WindowAggregate), vectorized.
//!
//! Each open window (keyed by `window_end`, ms since the epoch) holds a group table
//! ([`crate::groups`]): DataFusion's `GroupValues` interns the group columns of whole batches at once into dense
//! group ids, and one typed vector per aggregate indexed by group id (sums, counts, multisets
//! for MIN/MAX/COUNT(DISTINCT)). A batch is split by `window_end` (usually one or two windows
//! per batch), each part is interned, and the accumulators are updated in tight loops over the
//! group ids. When the watermark reaches a window's end the window emits every group once as
//! `+I`, in one batch (key columns from the group table, aggregate columns built from the
//! vectors), and is dropped. Rows for windows the watermark already passed are late: dropped
//! and counted in the job's `late_rows`, never silently.
//!
//! Retractions in the input (an updating join upstream) are accepted while their window is
//! open: they subtract from COUNT/SUM/AVG and from the MIN/MAX multisets, and a group whose row
//! count returns to zero is not emitted.
//!
//! Checkpoints are incremental: a window's delta holds the key columns of the groups created
//! during the epoch (Arrow IPC, in id order, so a restore re-interns them to the same ids) and
//! the accumulator values of the groups changed during the epoch; fired windows are recorded as
//! dropped. Snapshots (see [`DeltaLog`]) write every open window whole.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, concat_batches, filter_record_batch, take};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::new_group_values;
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use sluice_catalog::dataflow::{AggCall, ExprRef};
use sluice_catalog::ChangeBatch;
use sluice_connectors::log::{decode_batch, encode_batch};

use crate::aggregate::{agg_specs, eval_args, AggSpec};
use crate::error::{ExecError, Result};
use crate::operator::Operator;
use crate::groups::{put_bytes, GroupTable, Reader};
use crate::rows::{eval, expr_types};
use crate::source::to_millis;
use crate::state::{DeltaLog, StateReader, StateWriter};

/// See the module docs.
pub struct WindowAggregateOp {
    group_exprs: Vec<ExprRef>,
    /// Schema of the group columns (all nullable), for the group tables.
    key_schema: SchemaRef,
    aggs: Vec<AggSpec>,
    window_end_index: usize,
    schema: SchemaRef,
    windows: BTreeMap<i64, GroupTable>,
    /// Windows emitted since the last checkpoint.
    fired: Vec<i64>,
    log: DeltaLog,
    watermark: i64,
    late_rows: Arc<AtomicU64>,
    gids: Vec<usize>,
}

impl WindowAggregateOp {
    /// Builds the operator over an input with schema `input`, producing `schema` (group columns
    /// then one column per aggregate); `window_end_index` is the position of `window_end` among
    /// the group expressions. `late_rows` counts rows dropped behind the watermark.
    ///
    /// Errors: an aggregate without the argument it needs, or group types DataFusion cannot
    /// group by.
    pub fn try_new(
        input: SchemaRef,
        group_exprs: Vec<ExprRef>,
        aggs: &[AggCall],
        window_end_index: usize,
        schema: SchemaRef,
        late_rows: Arc<AtomicU64>,
    ) -> Result<WindowAggregateOp> {
        let types = expr_types(&group_exprs, &input)?;
        let key_schema = Arc::new(Schema::new(
            types.iter().enumerate().map(|(i, t)| Field::new(format!("g{i}"), t.clone(), true)).collect::<Vec<_>>(),
        ));
        // Fails early when DataFusion cannot group by these types.
        new_group_values(key_schema.clone(), &GroupOrdering::None)?;
        Ok(WindowAggregateOp {
            aggs: agg_specs(&input, group_exprs.len(), aggs, &schema)?,
            group_exprs,
            key_schema,
            window_end_index,
            schema,
            windows: BTreeMap::new(),
            fired: Vec::new(),
            log: DeltaLog::default(),
            watermark: i64::MIN,
            late_rows,
            gids: Vec::new(),
        })
    }

    /// Adds rows (`keys`, `args`, optional `weights`) that all belong to the window ending at
    /// `we`.
    fn update(&mut self, we: i64, keys: &[ArrayRef], args: &[Option<ArrayRef>], weights: Option<&[i64]>) -> Result<()> {
        let w = match self.windows.entry(we) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => v.insert(GroupTable::new(&self.key_schema, &self.aggs)?),
        };
        w.intern(&self.key_schema, keys, &mut self.gids, true)?;
        w.update(&self.aggs, &self.gids, args, weights)
    }

    /// The window's result rows: every group with a positive row count.
    fn emit(&self, mut w: GroupTable) -> Result<Option<RecordBatch>> {
        let live = w.rows.iter().filter(|r| **r > 0).count();
        if live == 0 {
            return Ok(None);
        }
        let mut cols = w.groups.emit(EmitTo::All)?;
        cols.extend(w.agg_columns(&self.aggs, None)?);
        let cols = cols
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { cast(&c, f.data_type()) })
            .collect::<Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(self.schema.clone(), cols)?;
        if live == w.len() {
            return Ok(Some(batch));
        }
        Ok(Some(filter_record_batch(&batch, &BooleanArray::from_iter(w.rows.iter().map(|r| Some(*r > 0))))?))
    }
}

impl Operator for WindowAggregateOp {
    fn process(&mut self, _side: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(vec![]);
        }
        let keys = eval(&self.group_exprs, &batch.data)?;
        let args = eval_args(&self.aggs, &batch.data)?;
        let ends = to_millis(&keys[self.window_end_index])?;
        let weights: Option<Vec<i64>> =
            (!batch.is_append_only()).then(|| batch.ops.iter().map(|o| o.weight()).collect());
        // Fast path: the whole batch falls into one open window.
        if ends.null_count() == 0 {
            let v = ends.values();
            let first = v[0];
            if first > self.watermark && v.iter().all(|e| *e == first) {
                self.update(first, &keys, &args, weights.as_deref())?;
                return Ok(vec![]);
            }
        }
        // Split by window end, dropping late rows.
        let mut parts: Vec<(i64, Vec<u32>)> = Vec::new();
        let mut late = 0u64;
        for i in 0..n {
            if ends.is_null(i) {
                continue;
            }
            let e = ends.value(i);
            if e <= self.watermark {
                late += 1;
                continue;
            }
            match parts.iter_mut().rev().find(|(w, _)| *w == e) {
                Some((_, idx)) => idx.push(i as u32),
                None => parts.push((e, vec![i as u32])),
            }
        }
        if late > 0 {
            self.late_rows.fetch_add(late, Ordering::Relaxed);
        }
        for (e, idx) in parts {
            let idx = UInt32Array::from(idx);
            let k = keys.iter().map(|c| Ok(take(c.as_ref(), &idx, None)?)).collect::<Result<Vec<_>>>()?;
            let a = args
                .iter()
                .map(|c| c.as_ref().map(|c| take(c.as_ref(), &idx, None)).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            let w: Option<Vec<i64>> = weights.as_ref().map(|w| idx.values().iter().map(|i| w[*i as usize]).collect());
            self.update(e, &k, &a, w.as_deref())?;
        }
        Ok(vec![])
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<Vec<ChangeBatch>> {
        if watermark <= self.watermark {
            return Ok(vec![]);
        }
        self.watermark = watermark;
        let open = self.windows.split_off(&watermark.saturating_add(1));
        let closed = std::mem::replace(&mut self.windows, open);
        let mut out = Vec::new();
        for (we, w) in closed {
            if let Some(b) = self.emit(w)? {
                out.push(b);
            }
            self.fired.push(we);
        }
        if out.is_empty() {
            return Ok(vec![]);
        }
        let data = concat_batches(&self.schema, &out)?;
        Ok(vec![ChangeBatch::inserts(data)])
    }

    fn checkpoint(&mut self, wr: &mut StateWriter<'_>) -> Result<()> {
        // Entries: 2 = drop a fired window; 0 = append group keys (IPC) to a window; 1 = set
        // the accumulators of listed groups of a window.
        let mut delta = Vec::new();
        for we in self.fired.drain(..) {
            delta.push(2);
            delta.extend_from_slice(&we.to_le_bytes());
        }
        for (we, w) in self.windows.iter_mut() {
            if !w.new_keys.is_empty() {
                let keys = concat_batches(&self.key_schema, &std::mem::take(&mut w.new_keys))?;
                delta.push(0);
                delta.extend_from_slice(&we.to_le_bytes());
                // The id of the first of these groups: ids are explicit, see `groups`.
                delta.extend_from_slice(&((w.rows.len() - keys.num_rows()) as u32).to_le_bytes());
                put_bytes(&mut delta, &encode_batch(&keys)?);
            }
            if !w.dirty.is_empty() {
                delta.push(1);
                delta.extend_from_slice(&we.to_le_bytes());
                delta.extend_from_slice(&(w.dirty.len() as u32).to_le_bytes());
                for g in std::mem::take(&mut w.dirty) {
                    w.is_dirty[g as usize] = false;
                    delta.extend_from_slice(&g.to_le_bytes());
                    w.encode_group(g as usize, &mut delta);
                }
            }
        }
        let (windows, key_schema) = (&mut self.windows, &self.key_schema);
        let mut snap_err = None;
        self.log.commit(wr, &delta, |snap| {
            for (we, w) in windows.iter_mut() {
                let res = (|| -> Result<()> {
                    let keys = w.keys(key_schema)?;
                    let batch = RecordBatch::try_new(key_schema.clone(), keys)?;
                    let buf = snap.buf();
                    buf.push(0);
                    buf.extend_from_slice(&we.to_le_bytes());
                    buf.extend_from_slice(&0u32.to_le_bytes());
                    put_bytes(buf, &encode_batch(&batch)?);
                    buf.push(1);
                    buf.extend_from_slice(&we.to_le_bytes());
                    buf.extend_from_slice(&(w.rows.len() as u32).to_le_bytes());
                    for g in 0..w.rows.len() {
                        buf.extend_from_slice(&(g as u32).to_le_bytes());
                        w.encode_group(g, buf);
                    }
                    Ok(())
                })();
                if let Err(e) = res {
                    snap_err = Some(e);
                }
            }
        });
        snap_err.map_or(Ok(()), Err)
    }

    fn restore(&mut self, r: &StateReader<'_>) -> Result<()> {
        let WindowAggregateOp { windows, key_schema, aggs, log, gids, .. } = self;
        log.restore(r, |v| {
            let mut rd = Reader { b: v, pos: 0 };
            while rd.pos < v.len() {
                let tag = rd.take(1)?[0];
                let we = rd.i64()?;
                match tag {
                    0 => {
                        let first = rd.u32()?;
                        let keys = decode_batch(rd.bytes()?)?;
                        let w = match windows.entry(we) {
                            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                            std::collections::btree_map::Entry::Vacant(e) => e.insert(GroupTable::new(key_schema, aggs)?),
                        };
                        w.restore_keys(key_schema, first, keys.columns(), gids)?;
                    }
                    1 => {
                        let w = windows.get_mut(&we).ok_or_else(|| ExecError::CorruptState("window state before its keys".into()))?;
                        let count = rd.u32()?;
                        for _ in 0..count {
                            let g = rd.u32()? as usize;
                            if g >= w.rows.len() {
                                return Err(ExecError::CorruptState("window group id".into()));
                            }
                            w.decode_group(g, &mut rd)?;
                        }
                    }
                    2 => {
                        windows.remove(&we);
                    }
                    t => return Err(ExecError::CorruptState(format!("window state entry {t}"))),
                }
            }
            Ok(())
        })
    }

    fn state_bytes(&self) -> u64 {
        self.log.stored_bytes()
    }

    /// Groups of the windows not fired yet.
    fn state_rows(&self) -> u64 {
        self.windows.values().map(|w| w.len() as u64).sum()
    }

    fn name(&self) -> &'static str {
        "WindowAggregate"
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::DataType;
    use datafusion::physical_expr::expressions::Column;
    use rocksdb::WriteBatch;
    use sluice_catalog::dataflow::AggKind;
    use sluice_catalog::{Op, Store};

    use super::*;
    use crate::state::operator_prefix;

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("we", DataType::Int64, true),
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
        ]))
    }

    fn op() -> WindowAggregateOp {
        let out = Arc::new(Schema::new(vec![
            Field::new("we", DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None), true),
            Field::new("k", DataType::Utf8, true),
            Field::new("sum", DataType::Float64, true),
            Field::new("max", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let col = |n: &str, i: usize| -> ExprRef { Arc::new(Column::new(n, i)) };
        let we: ExprRef = Arc::new(datafusion::physical_expr::expressions::CastExpr::new(
            col("we", 0),
            DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
            None,
        ));
        let aggs = vec![
            AggCall { kind: AggKind::Sum, arg: Some(col("v", 2)) },
            AggCall { kind: AggKind::Max, arg: Some(col("v", 2)) },
            AggCall { kind: AggKind::Count, arg: None },
        ];
        WindowAggregateOp::try_new(input(), vec![we, col("k", 1)], &aggs, 0, out, Arc::new(AtomicU64::new(0))).unwrap()
    }

    fn batch(we: &[i64], k: &[&str], v: &[f64], ops: &[Op]) -> ChangeBatch {
        let data = RecordBatch::try_new(
            input(),
            vec![
                Arc::new(Int64Array::from(we.to_vec())),
                Arc::new(StringArray::from(k.to_vec())),
                Arc::new(Float64Array::from(v.to_vec())),
            ],
        )
        .unwrap();
        ChangeBatch::new(data, ops.to_vec())
    }

    fn text(out: Vec<ChangeBatch>) -> String {
        let mut lines: Vec<String> = out.iter().flat_map(|b| b.to_text().lines().map(String::from).collect::<Vec<_>>()).collect();
        lines.sort();
        lines.join("\n")
    }

    #[test]
    fn windows_fire_once_with_retractions_and_survive_restore() {
        use Op::*;
        let mut a = op();
        a.process(0, batch(&[10, 10, 20, 10], &["x", "y", "x", "x"], &[1.0, 2.0, 3.0, 4.0], &[Insert; 4])).unwrap();
        // A retraction in an open window, and a group retracted to nothing.
        a.process(0, batch(&[10, 20], &["x", "x"], &[4.0, 3.0], &[Delete, Delete])).unwrap();
        let dir = std::env::temp_dir().join(format!("sluice-window-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let commit = |a: &mut WindowAggregateOp| {
            let mut wb = WriteBatch::default();
            a.checkpoint(&mut StateWriter::new(&store, &mut wb, operator_prefix("t", 0))).unwrap();
            store.write(wb).unwrap();
        };
        commit(&mut a);
        a.process(0, batch(&[20, 30], &["y", "z"], &[5.0, 6.0], &[Insert, Insert])).unwrap();
        a.log.snapshot_next();
        commit(&mut a);
        a.process(0, batch(&[30], &["z"], &[7.0], &[Insert])).unwrap();
        commit(&mut a);

        let mut b = op();
        b.restore(&StateReader::new(&store, operator_prefix("t", 0))).unwrap();
        for agg in [&mut a, &mut b] {
            assert_eq!(
                text(agg.on_watermark(20).unwrap()),
                "+I 1970-01-01T00:00:00.010 x 1.0 1.0 1\n+I 1970-01-01T00:00:00.010 y 2.0 2.0 1\n+I 1970-01-01T00:00:00.020 y 5.0 5.0 1"
            );
            // Late: its window has fired.
            agg.process(0, batch(&[20], &["q"], &[1.0], &[Insert])).unwrap();
            assert_eq!(agg.late_rows.load(Ordering::Relaxed), 1);
            assert_eq!(text(agg.on_watermark(30).unwrap()), "+I 1970-01-01T00:00:00.030 z 13.0 7.0 2");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
