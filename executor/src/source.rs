//! The source operator: turns a topic's records into the table's rows.
//!
//! It evaluates computed columns, measures the batch's watermark candidate (the largest value
//! of the watermark expression), and for upsert tables turns upserts into a proper changelog
//! by keeping the latest row per key (Flink's ChangelogNormalize): a write to an existing key
//! becomes `-U old, +U new`, a delete of a missing key disappears.

use datafusion::common::{HashMap, HashSet};

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::row::RowConverter;
use sluice_catalog::dataflow::{ExprRef, SourceNode};
use sluice_catalog::{ChangeBatch, Op};

use crate::error::{ExecError, Result};
use crate::operator::Operator;
use crate::rows::{decode, eval, schema_converter, types_of};
use crate::state::{StateReader, StateWriter};

struct Normalize {
    key_idx: Vec<usize>,
    key_conv: RowConverter,
    row_conv: RowConverter,
    rows: HashMap<Vec<u8>, Vec<u8>>,
    dirty: HashSet<Vec<u8>>,
}

/// See the module docs.
pub struct SourceOp {
    schema: SchemaRef,
    computed: Option<Vec<ExprRef>>,
    watermark: Option<ExprRef>,
    normalize: Option<Normalize>,
}

impl SourceOp {
    /// Builds the operator for a plan's source node.
    pub fn try_new(node: &SourceNode) -> Result<SourceOp> {
        let schema = node.schema.clone();
        let normalize = match &node.upsert_key {
            Some(k) => {
                let key_types: Vec<_> = k.iter().map(|i| schema.field(*i).data_type().clone()).collect();
                Some(Normalize {
                    key_idx: k.clone(),
                    key_conv: crate::rows::converter(&key_types)?,
                    row_conv: schema_converter(&schema)?,
                    rows: HashMap::default(),
                    dirty: HashSet::default(),
                })
            }
            None => None,
        };
        Ok(SourceOp { schema, computed: node.computed.clone(), watermark: node.watermark.clone(), normalize })
    }

    /// True when the table declares a watermark.
    pub fn declares_watermark(&self) -> bool {
        self.watermark.is_some()
    }

    /// Evaluates computed columns and returns the rows with the batch's largest watermark value
    /// (ms since the epoch), if the table declares a watermark.
    pub fn rows(&self, batch: ChangeBatch) -> Result<(ChangeBatch, Option<i64>)> {
        let batch = match &self.computed {
            Some(exprs) => {
                let cols = eval(exprs, &batch.data)?;
                batch.with_columns(self.schema.clone(), cols)?
            }
            None => batch,
        };
        let wm = match &self.watermark {
            Some(e) if batch.num_rows() > 0 => {
                let v = e.evaluate(&batch.data)?.into_array(batch.num_rows())?;
                let ms = to_millis(&v)?;
                ms.iter().flatten().max()
            }
            _ => None,
        };
        Ok((batch, wm))
    }
}

/// Casts a timestamp array to milliseconds since the epoch.
pub fn to_millis(a: &arrow::array::ArrayRef) -> Result<Int64Array> {
    use arrow::datatypes::{DataType, TimeUnit};
    let ms = arrow::compute::cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    let ms = ms.as_any().downcast_ref::<arrow::array::TimestampMillisecondArray>().ok_or_else(|| {
        ExecError::Unsupported("watermark expression is not a timestamp".into())
    })?;
    Ok(Int64Array::new(ms.values().clone(), ms.nulls().cloned()))
}

impl Operator for SourceOp {
    fn process(&mut self, _side: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let Some(n) = &mut self.normalize else {
            return Ok(vec![batch]);
        };
        let keys = n.key_conv.convert_columns(
            &n.key_idx.iter().map(|i| batch.data.column(*i).clone()).collect::<Vec<_>>(),
        )?;
        let rows = n.row_conv.convert_columns(batch.data.columns())?;
        let mut out_rows: Vec<Vec<u8>> = Vec::new();
        let mut out_ops = Vec::new();
        for i in 0..batch.num_rows() {
            let k = keys.row(i).as_ref().to_vec();
            let r = rows.row(i).as_ref().to_vec();
            let old = n.rows.get(&k).cloned();
            if batch.ops[i].is_insertion() {
                match old {
                    Some(o) if o == r => continue,
                    Some(o) => {
                        out_rows.push(o);
                        out_ops.push(Op::UpdateBefore);
                        out_rows.push(r.clone());
                        out_ops.push(Op::UpdateAfter);
                    }
                    None => {
                        out_rows.push(r.clone());
                        out_ops.push(Op::Insert);
                    }
                }
                n.rows.insert(k.clone(), r);
            } else {
                match old {
                    Some(o) => {
                        out_rows.push(o);
                        out_ops.push(Op::Delete);
                        n.rows.remove(&k);
                    }
                    None => continue,
                }
            }
            n.dirty.insert(k);
        }
        let refs: Vec<&[u8]> = out_rows.iter().map(|r| r.as_slice()).collect();
        let cols = decode(&n.row_conv, &types_of(&self.schema), &refs)?;
        let data = RecordBatch::try_new(self.schema.clone(), cols)?;
        Ok(vec![ChangeBatch::new(data, out_ops)])
    }

    fn checkpoint(&mut self, w: &mut StateWriter<'_>) -> Result<()> {
        if let Some(n) = &mut self.normalize {
            for k in n.dirty.drain() {
                match n.rows.get(&k) {
                    Some(r) => w.put(&k, r),
                    None => w.delete(&k),
                }
            }
        }
        Ok(())
    }

    fn restore(&mut self, r: &StateReader<'_>) -> Result<()> {
        if let Some(n) = &mut self.normalize {
            for (k, v) in r.entries()? {
                n.rows.insert(k, v);
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "Source"
    }
}
