//! Grouped aggregation over changelogs.
//!
//! Without a window (Flink's GroupAggregate) each change updates its group's accumulators and
//! the operator emits the group's new result as `+I` (first row), `-U old` / `+U new` (changed)
//! or `-D old` (group emptied). Accumulators support retraction: COUNT and SUM/AVG subtract,
//! MIN/MAX/COUNT(DISTINCT) keep a multiset of values ordered by Arrow's row encoding.
//!
//! Aggregation over a window TVF is [`crate::window_agg`].

use std::collections::BTreeMap;

use datafusion::common::{HashMap, HashSet};

use arrow::array::{Array, ArrayRef, Decimal128Array, Float64Array, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::RowConverter;
use datafusion::common::ScalarValue;
use sluice_catalog::dataflow::{AggCall, AggKind, ExprRef};
use sluice_catalog::{ChangeBatch, Op};

use crate::error::{ExecError, Result};
use crate::operator::Operator;
use crate::rows::{converter, decode, decode_optional, eval, expr_types};
use crate::state::{DeltaLog, StateReader, StateWriter};

#[derive(Debug, Clone, PartialEq)]
enum Acc {
    Count(i64),
    SumInt { sum: i128, n: i64 },
    SumFloat { sum: f64, n: i64 },
    Avg { sum: f64, n: i64 },
    /// Multiset of encoded values: MIN, MAX, COUNT(DISTINCT).
    Values(BTreeMap<Vec<u8>, i64>),
}

#[derive(Debug, Clone)]
struct Group {
    rows: i64,
    accs: Vec<Acc>,
    /// Listed in the operator's dirty keys since the last checkpoint (not stored).
    dirty: bool,
}

impl Group {
    /// Compact binary form for the state store: `rows`, a reserved i64 (i64::MIN), the
    /// accumulator count, then per accumulator a tag byte and its fields, little-endian.
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32);
        b.extend_from_slice(&self.rows.to_le_bytes());
        b.extend_from_slice(&i64::MIN.to_le_bytes());
        b.extend_from_slice(&(self.accs.len() as u16).to_le_bytes());
        for a in &self.accs {
            match a {
                Acc::Count(n) => {
                    b.push(0);
                    b.extend_from_slice(&n.to_le_bytes());
                }
                Acc::SumInt { sum, n } => {
                    b.push(1);
                    b.extend_from_slice(&sum.to_le_bytes());
                    b.extend_from_slice(&n.to_le_bytes());
                }
                Acc::SumFloat { sum, n } => {
                    b.push(2);
                    b.extend_from_slice(&sum.to_le_bytes());
                    b.extend_from_slice(&n.to_le_bytes());
                }
                Acc::Avg { sum, n } => {
                    b.push(3);
                    b.extend_from_slice(&sum.to_le_bytes());
                    b.extend_from_slice(&n.to_le_bytes());
                }
                Acc::Values(m) => {
                    b.push(4);
                    b.extend_from_slice(&(m.len() as u32).to_le_bytes());
                    for (v, c) in m {
                        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        b.extend_from_slice(v);
                        b.extend_from_slice(&c.to_le_bytes());
                    }
                }
            }
        }
        b
    }

    fn decode(b: &[u8]) -> Result<Group> {
        let mut r = Reader { b, pos: 0 };
        let rows = r.i64()?;
        let _reserved = r.i64()?;
        let n = u16::from_le_bytes(r.take(2)?.try_into().unwrap());
        let mut accs = Vec::with_capacity(n as usize);
        for _ in 0..n {
            accs.push(match r.take(1)?[0] {
                0 => Acc::Count(r.i64()?),
                1 => Acc::SumInt { sum: i128::from_le_bytes(r.take(16)?.try_into().unwrap()), n: r.i64()? },
                2 => Acc::SumFloat { sum: f64::from_le_bytes(r.take(8)?.try_into().unwrap()), n: r.i64()? },
                3 => Acc::Avg { sum: f64::from_le_bytes(r.take(8)?.try_into().unwrap()), n: r.i64()? },
                4 => {
                    let len = u32::from_le_bytes(r.take(4)?.try_into().unwrap());
                    let mut m = BTreeMap::new();
                    for _ in 0..len {
                        let l = u32::from_le_bytes(r.take(4)?.try_into().unwrap()) as usize;
                        let v = r.take(l)?.to_vec();
                        m.insert(v, r.i64()?);
                    }
                    Acc::Values(m)
                }
                t => return Err(ExecError::CorruptState(format!("aggregate state tag {t}"))),
            });
        }
        Ok(Group { rows, accs, dirty: false })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let s = self.b.get(self.pos..self.pos + n).ok_or_else(|| ExecError::CorruptState("short aggregate state".into()))?;
        self.pos += n;
        Ok(s)
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

/// A `put` entry: tag 0, key length (u32 LE), key, value length (u32 LE), encoded group.
fn put_entry(buf: &mut Vec<u8>, key: &[u8], g: &Group) {
    let v = g.encode();
    buf.push(0);
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
    buf.extend_from_slice(&v);
}

/// One aggregate's output for a group: a value, or a MIN/MAX still in Arrow's row encoding
/// (`None` when the group has no non-null value).
#[derive(Debug, Clone, PartialEq)]
enum AggOut {
    Scalar(ScalarValue),
    Encoded(Option<Vec<u8>>),
}

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
    group_types: Vec<DataType>,
    group_conv: RowConverter,
    aggs: Vec<AggSpec>,
    schema: SchemaRef,
    groups: HashMap<Vec<u8>, Group>,
    /// Groups changed since the last checkpoint, in order; repeats are harmless.
    dirty: Vec<Vec<u8>>,
    /// How the state is checkpointed.
    log: DeltaLog,
}

impl AggregateOp {
    /// Builds the operator over an input with schema `input`, producing `schema` (group columns
    /// then one column per aggregate).
    ///
    /// Errors: an aggregate without the argument it needs.
    pub fn try_new(input: SchemaRef, group_exprs: Vec<ExprRef>, aggs: &[AggCall], schema: SchemaRef) -> Result<AggregateOp> {
        let group_types = expr_types(&group_exprs, &input)?;
        let specs = agg_specs(&input, group_exprs.len(), aggs, &schema)?;
        Ok(AggregateOp {
            group_conv: converter(&group_types)?,
            group_types,
            group_exprs,
            aggs: specs,
            schema,
            groups: HashMap::default(),
            dirty: Vec::new(),
            log: DeltaLog::default(),
        })
    }

    /// The group's current output values, one per aggregate. MIN and MAX stay row-encoded
    /// until [`Self::build`] decodes a whole column at once.
    fn results(&self, g: &Group) -> Result<Vec<AggOut>> {
        let mut out = Vec::with_capacity(self.aggs.len());
        for (spec, acc) in self.aggs.iter().zip(&g.accs) {
            let v = match acc {
                Acc::Count(n) => ScalarValue::Int64(Some(*n)),
                Acc::SumInt { n: 0, .. } | Acc::SumFloat { n: 0, .. } | Acc::Avg { n: 0, .. } => {
                    ScalarValue::try_from(&spec.out_type)?
                }
                Acc::SumInt { sum, .. } => match &spec.acc_type {
                    Some(DataType::Decimal128(p, s)) => ScalarValue::Decimal128(Some(*sum), *p, *s),
                    _ => ScalarValue::Int64(Some(*sum as i64)),
                },
                Acc::SumFloat { sum, .. } => ScalarValue::Float64(Some(*sum)),
                Acc::Avg { sum, n } => ScalarValue::Float64(Some(*sum / *n as f64)),
                Acc::Values(m) => {
                    let pick = match spec.kind {
                        AggKind::CountDistinct => {
                            out.push(AggOut::Scalar(ScalarValue::Int64(Some(m.len() as i64)).cast_to(&spec.out_type)?));
                            continue;
                        }
                        AggKind::Min => m.keys().next(),
                        _ => m.keys().next_back(),
                    };
                    out.push(AggOut::Encoded(pick.cloned()));
                    continue;
                }
            };
            out.push(AggOut::Scalar(if v.data_type() == spec.out_type { v } else { v.cast_to(&spec.out_type)? }));
        }
        Ok(out)
    }

    fn build(&self, rows: Vec<(Op, Vec<u8>, Vec<AggOut>)>) -> Result<ChangeBatch> {
        let keys: Vec<&[u8]> = rows.iter().map(|r| r.1.as_slice()).collect();
        let mut cols: Vec<ArrayRef> = decode(&self.group_conv, &self.group_types, &keys)?;
        for (i, spec) in self.aggs.iter().enumerate() {
            if rows.is_empty() {
                cols.push(arrow::array::new_empty_array(&spec.out_type));
            } else if let (Some((conv, t)), true) = (&spec.conv, matches!(spec.kind, AggKind::Min | AggKind::Max)) {
                let encoded: Vec<Option<&[u8]>> = rows
                    .iter()
                    .map(|r| match &r.2[i] {
                        AggOut::Encoded(e) => e.as_deref(),
                        AggOut::Scalar(_) => None,
                    })
                    .collect();
                let col = decode_optional(conv, std::slice::from_ref(t), &encoded)?.remove(0);
                cols.push(if col.data_type() == &spec.out_type { col } else { cast(&col, &spec.out_type)? });
            } else {
                cols.push(ScalarValue::iter_to_array(rows.iter().map(|r| match &r.2[i] {
                    AggOut::Scalar(v) => v.clone(),
                    AggOut::Encoded(_) => ScalarValue::Null,
                }))?);
            }
        }
        let cols = cols
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { cast(&c, f.data_type()) })
            .collect::<Result<Vec<_>, _>>()?;
        let data = RecordBatch::try_new(self.schema.clone(), cols)?;
        Ok(ChangeBatch::new(data, rows.into_iter().map(|r| r.0).collect()))
    }
}

/// A fresh group for the aggregates `aggs`.
fn new_group(aggs: &[AggSpec]) -> Group {
    let accs = aggs
        .iter()
        .map(|a| match a.kind {
            AggKind::Count => Acc::Count(0),
            AggKind::Sum => match a.acc_type {
                Some(DataType::Float64) => Acc::SumFloat { sum: 0.0, n: 0 },
                _ => Acc::SumInt { sum: 0, n: 0 },
            },
            AggKind::Avg => Acc::Avg { sum: 0.0, n: 0 },
            AggKind::Min | AggKind::Max | AggKind::CountDistinct => Acc::Values(BTreeMap::new()),
        })
        .collect();
    Group { rows: 0, accs, dirty: false }
}

/// An aggregate's argument column, downcast once per batch.
enum Arg<'a> {
    /// `COUNT(*)`.
    Star,
    I64(&'a Int64Array),
    F64(&'a Float64Array),
    Dec(&'a Decimal128Array),
    /// MIN / MAX / COUNT(DISTINCT): the column and its row encoding.
    Encoded(&'a ArrayRef, &'a arrow::row::Rows),
    Other(&'a ArrayRef),
}

impl<'a> Arg<'a> {
    fn new(arr: Option<&'a ArrayRef>, enc: Option<&'a arrow::row::Rows>) -> Arg<'a> {
        let Some(a) = arr else { return Arg::Star };
        if let Some(e) = enc {
            return Arg::Encoded(a, e);
        }
        if let Some(x) = a.as_any().downcast_ref::<Int64Array>() {
            Arg::I64(x)
        } else if let Some(x) = a.as_any().downcast_ref::<Float64Array>() {
            Arg::F64(x)
        } else if let Some(x) = a.as_any().downcast_ref::<Decimal128Array>() {
            Arg::Dec(x)
        } else {
            Arg::Other(a)
        }
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            Arg::Star => false,
            Arg::I64(a) => a.is_null(i),
            Arg::F64(a) => a.is_null(i),
            Arg::Dec(a) => a.is_null(i),
            Arg::Encoded(a, _) | Arg::Other(a) => a.is_null(i),
        }
    }
}

/// Reads row `i` of an argument array into the accumulator with multiplicity `w`.
fn accumulate(acc: &mut Acc, arg: &Arg<'_>, i: usize, w: i64) {
    if arg.is_null(i) {
        return;
    }
    match acc {
        Acc::Count(n) => *n += w,
        Acc::SumInt { sum, n } => {
            let v = match arg {
                Arg::I64(a) => a.value(i) as i128,
                Arg::Dec(a) => a.value(i),
                _ => 0,
            };
            *sum += v * w as i128;
            *n += w;
        }
        Acc::SumFloat { sum, n } | Acc::Avg { sum, n } => {
            let v = match arg {
                Arg::F64(a) => a.value(i),
                _ => 0.0,
            };
            *sum += v * w as f64;
            *n += w;
        }
        Acc::Values(m) => {
            let Arg::Encoded(_, enc) = arg else { return };
            let row = enc.row(i);
            let key = row.data();
            match m.get_mut(key) {
                Some(c) => {
                    *c += w;
                    if *c <= 0 {
                        m.remove(key);
                    }
                }
                None if w > 0 => {
                    m.insert(key.to_vec(), w);
                }
                None => {}
            }
        }
    }
}

impl Operator for AggregateOp {
    fn process(&mut self, _side: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let n = batch.num_rows();
        let group_cols = eval(&self.group_exprs, &batch.data)?;
        let keys = self.group_conv.convert_columns(&group_cols)?;
        let args = eval_args(&self.aggs, &batch.data)?;
        let mut encoded: Vec<Option<arrow::row::Rows>> = Vec::new();
        for (spec, a) in self.aggs.iter().zip(&args) {
            encoded.push(match (&spec.conv, a) {
                (Some((conv, _)), Some(a)) => Some(conv.convert_columns(std::slice::from_ref(a))?),
                _ => None,
            });
        }
        let arg_views: Vec<Arg<'_>> = args.iter().zip(&encoded).map(|(a, e)| Arg::new(a.as_ref(), e.as_ref())).collect();
        let mut touched: Vec<(Vec<u8>, Option<Vec<AggOut>>)> = Vec::new();
        let mut seen: HashSet<Vec<u8>> = HashSet::default();
        for i in 0..n {
            let row = keys.row(i);
            let key = row.data();
            if !seen.contains(key) {
                let old = match self.groups.get(key) {
                    Some(g) if g.rows > 0 => Some(self.results(g)?),
                    _ => None,
                };
                seen.insert(key.to_vec());
                touched.push((key.to_vec(), old));
            }
            let aggs = &self.aggs;
            let g = self.groups.entry_ref(key).or_insert_with(|| new_group(aggs));
            let w = batch.ops[i].weight();
            g.rows += w;
            for (acc, arg) in g.accs.iter_mut().zip(&arg_views) {
                accumulate(acc, arg, i, w);
            }
            if !g.dirty {
                g.dirty = true;
                self.dirty.push(key.to_vec());
            }
        }
        let mut out = Vec::new();
        for (key, old) in touched {
            let new = match self.groups.get(&key) {
                Some(g) if g.rows > 0 => Some(self.results(g)?),
                _ => {
                    self.groups.remove(&key);
                    None
                }
            };
            match (old, new) {
                (Some(o), Some(nw)) if o == nw => {}
                (Some(o), Some(nw)) => {
                    out.push((Op::UpdateBefore, key.clone(), o));
                    out.push((Op::UpdateAfter, key, nw));
                }
                (Some(o), None) => out.push((Op::Delete, key, o)),
                (None, Some(nw)) => out.push((Op::Insert, key, nw)),
                (None, None) => {}
            }
        }
        if out.is_empty() {
            return Ok(vec![]);
        }
        Ok(vec![self.build(out)?])
    }

    fn checkpoint(&mut self, w: &mut StateWriter<'_>) -> Result<()> {
        // Entries: 0 = put a group, 1 = delete a group.
        let mut delta = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            match self.groups.get_mut(&key) {
                Some(g) => {
                    g.dirty = false;
                    put_entry(&mut delta, &key, g);
                }
                None => {
                    delta.push(1);
                    delta.extend_from_slice(&(key.len() as u32).to_le_bytes());
                    delta.extend_from_slice(&key);
                }
            }
        }
        let groups = &self.groups;
        self.log.commit(w, &delta, |snap| {
            for (key, g) in groups.iter() {
                put_entry(snap.buf(), key, g);
            }
        });
        Ok(())
    }

    fn restore(&mut self, r: &StateReader<'_>) -> Result<()> {
        let groups = &mut self.groups;
        self.log.restore(r, |v| {
            let mut rd = Reader { b: v, pos: 0 };
            while rd.pos < v.len() {
                match rd.take(1)?[0] {
                    0 => {
                        let klen = u32::from_le_bytes(rd.take(4)?.try_into().unwrap()) as usize;
                        let key = rd.take(klen)?.to_vec();
                        let vlen = u32::from_le_bytes(rd.take(4)?.try_into().unwrap()) as usize;
                        let g = Group::decode(rd.take(vlen)?)?;
                        groups.insert(key, g);
                    }
                    1 => {
                        let klen = u32::from_le_bytes(rd.take(4)?.try_into().unwrap()) as usize;
                        groups.remove(rd.take(klen)?);
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
