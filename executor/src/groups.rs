//! Group tables shared by the aggregate operators: group keys interned by DataFusion's
//! [`GroupValues`] into dense ids (a whole batch at a time), and one typed accumulator vector
//! per aggregate indexed by group id, with retraction support: COUNT, SUM and AVG subtract, and
//! MIN, MAX and COUNT(DISTINCT) keep a multiset of values ordered by Arrow's row encoding.
//!
//! A table also tracks what a checkpoint needs: the keys of groups created since the last one
//! (in id order, each batch with the id of its first group) and the ids of groups whose
//! accumulators changed. Ids are explicit in the checkpoint: a restore re-interns the keys and
//! checks that every group gets back the id it was stored under, and fails (rather than
//! attaching accumulators to the wrong groups) when the `GroupValues` implementation hands
//! them out in another order.
//!
//! A `GroupValues` cannot forget a key, so a group whose rows were all retracted (or whose
//! state expired, [`crate::ttl`]) stays as an empty group until [`GroupTable::retain`] rebuilds
//! the table with the live groups only, giving them new dense ids.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, Float64Array, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, SchemaRef};
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use sluice_catalog::dataflow::AggKind;

use crate::aggregate::AggSpec;
use crate::error::{ExecError, Result};
use crate::rows::decode_optional;

/// A multiset of row-encoded values with positive multiplicities (MIN, MAX, COUNT(DISTINCT)).
/// Most groups hold one distinct value, kept inline.
#[derive(Debug, Clone, Default)]
pub(crate) enum MultiSet {
    #[default]
    Empty,
    One(Vec<u8>, i64),
    Many(BTreeMap<Vec<u8>, i64>),
}

impl MultiSet {
    /// Adds `w` occurrences of `v` (removes for negative `w`; removing an absent value does
    /// nothing).
    fn add(&mut self, v: &[u8], w: i64) {
        match self {
            MultiSet::Empty => {
                if w > 0 {
                    *self = MultiSet::One(v.to_vec(), w);
                }
            }
            MultiSet::One(x, c) if x.as_slice() == v => {
                *c += w;
                if *c <= 0 {
                    *self = MultiSet::Empty;
                }
            }
            MultiSet::One(x, c) => {
                if w > 0 {
                    let mut m = BTreeMap::new();
                    m.insert(std::mem::take(x), *c);
                    m.insert(v.to_vec(), w);
                    *self = MultiSet::Many(m);
                }
            }
            MultiSet::Many(m) => match m.get_mut(v) {
                Some(c) => {
                    *c += w;
                    if *c <= 0 {
                        m.remove(v);
                    }
                }
                None if w > 0 => {
                    m.insert(v.to_vec(), w);
                }
                None => {}
            },
        }
    }

    fn min(&self) -> Option<&[u8]> {
        match self {
            MultiSet::Empty => None,
            MultiSet::One(x, _) => Some(x),
            MultiSet::Many(m) => m.keys().next().map(|k| k.as_slice()),
        }
    }

    fn max(&self) -> Option<&[u8]> {
        match self {
            MultiSet::Empty => None,
            MultiSet::One(x, _) => Some(x),
            MultiSet::Many(m) => m.keys().next_back().map(|k| k.as_slice()),
        }
    }

    fn distinct(&self) -> usize {
        match self {
            MultiSet::Empty => 0,
            MultiSet::One(..) => 1,
            MultiSet::Many(m) => m.len(),
        }
    }

    fn entries(&self) -> Vec<(&[u8], i64)> {
        match self {
            MultiSet::Empty => vec![],
            MultiSet::One(x, c) => vec![(x.as_slice(), *c)],
            MultiSet::Many(m) => m.iter().map(|(k, c)| (k.as_slice(), *c)).collect(),
        }
    }
}

/// One aggregate's accumulators, indexed by group id.
pub(crate) enum AccCol {
    Count(Vec<i64>),
    /// SUM over floats and AVG: sum and count of non-null values.
    Float { sum: Vec<f64>, n: Vec<i64> },
    /// SUM over integers and decimals (unscaled).
    Int { sum: Vec<i128>, n: Vec<i64> },
    Values(Vec<MultiSet>),
}

impl AccCol {
    /// Empties group `g`'s accumulator.
    fn reset(&mut self, g: usize) {
        match self {
            AccCol::Count(c) => c[g] = 0,
            AccCol::Float { sum, n } => {
                sum[g] = 0.0;
                n[g] = 0;
            }
            AccCol::Int { sum, n } => {
                sum[g] = 0;
                n[g] = 0;
            }
            AccCol::Values(v) => v[g] = MultiSet::Empty,
        }
    }

    fn new(spec: &AggSpec) -> AccCol {
        match spec.kind {
            AggKind::Count => AccCol::Count(Vec::new()),
            AggKind::Sum if spec.acc_type != Some(DataType::Float64) => AccCol::Int { sum: Vec::new(), n: Vec::new() },
            AggKind::Sum | AggKind::Avg => AccCol::Float { sum: Vec::new(), n: Vec::new() },
            AggKind::Min | AggKind::Max | AggKind::CountDistinct => AccCol::Values(Vec::new()),
        }
    }

    /// Keeps the accumulators of the groups `picks` (old ids, ascending), which become ids
    /// `0..picks.len()`.
    fn select(&mut self, picks: &[usize]) {
        fn pick<T: Clone>(v: &[T], picks: &[usize]) -> Vec<T> {
            picks.iter().map(|g| v[*g].clone()).collect()
        }
        match self {
            AccCol::Count(c) => *c = pick(c, picks),
            AccCol::Float { sum, n } => {
                *sum = pick(sum, picks);
                *n = pick(n, picks);
            }
            AccCol::Int { sum, n } => {
                *sum = pick(sum, picks);
                *n = pick(n, picks);
            }
            AccCol::Values(v) => *v = picks.iter().map(|g| std::mem::take(&mut v[*g])).collect(),
        }
    }

    fn resize(&mut self, len: usize) {
        match self {
            AccCol::Count(c) => c.resize(len, 0),
            AccCol::Float { sum, n } => {
                sum.resize(len, 0.0);
                n.resize(len, 0);
            }
            AccCol::Int { sum, n } => {
                sum.resize(len, 0);
                n.resize(len, 0);
            }
            AccCol::Values(v) => v.resize(len, MultiSet::Empty),
        }
    }
}

/// The weight of row `j`: +1 unless `weights` says otherwise.
#[inline]
fn weight(weights: Option<&[i64]>, j: usize) -> i64 {
    weights.map_or(1, |w| w[j])
}

/// Adds one part's argument values into `acc` for the rows' group ids.
fn accumulate(acc: &mut AccCol, spec: &AggSpec, arg: Option<&ArrayRef>, gids: &[usize], weights: Option<&[i64]>) -> Result<()> {
    let valid = |j: usize| arg.is_none_or(|a| a.is_valid(j));
    match acc {
        AccCol::Count(c) => {
            if arg.is_none_or(|a| a.null_count() == 0) && weights.is_none() {
                for g in gids {
                    c[*g] += 1;
                }
            } else {
                for (j, g) in gids.iter().enumerate() {
                    if valid(j) {
                        c[*g] += weight(weights, j);
                    }
                }
            }
        }
        AccCol::Float { sum, n } => {
            let a = arg.ok_or_else(|| ExecError::Unsupported("SUM/AVG need an argument".into()))?;
            let v = a.as_primitive::<Float64Type>();
            if v.null_count() == 0 && weights.is_none() {
                for (x, g) in v.values().iter().zip(gids) {
                    sum[*g] += *x;
                    n[*g] += 1;
                }
            } else {
                for (j, g) in gids.iter().enumerate() {
                    if v.is_valid(j) {
                        let w = weight(weights, j);
                        sum[*g] += v.value(j) * w as f64;
                        n[*g] += w;
                    }
                }
            }
        }
        AccCol::Int { sum, n } => {
            let a = arg.ok_or_else(|| ExecError::Unsupported("SUM needs an argument".into()))?;
            let value: Box<dyn Fn(usize) -> i128> = match a.data_type() {
                DataType::Decimal128(_, _) => {
                    let d = a.as_primitive::<Decimal128Type>();
                    Box::new(move |j| d.value(j))
                }
                _ => {
                    let d = a.as_primitive::<Int64Type>();
                    Box::new(move |j| d.value(j) as i128)
                }
            };
            for (j, g) in gids.iter().enumerate() {
                if a.is_valid(j) {
                    let w = weight(weights, j);
                    sum[*g] += value(j) * w as i128;
                    n[*g] += w;
                }
            }
        }
        AccCol::Values(sets) => {
            let a = arg.ok_or_else(|| ExecError::Unsupported("MIN/MAX need an argument".into()))?;
            let (conv, _) = spec.conv.as_ref().ok_or_else(|| ExecError::Unsupported("MIN/MAX without encoding".into()))?;
            let enc = conv.convert_columns(std::slice::from_ref(a))?;
            for (j, g) in gids.iter().enumerate() {
                if a.is_valid(j) {
                    sets[*g].add(enc.row(j).data(), weight(weights, j));
                }
            }
        }
    }
    Ok(())
}

/// A table of groups: DataFusion's [`GroupValues`] interns group keys into dense ids, and each
/// aggregate keeps a typed vector indexed by group id.
pub(crate) struct GroupTable {
    pub(crate) groups: Box<dyn GroupValues>,
    /// Multiplicity of each group (rows in minus rows retracted).
    pub(crate) rows: Vec<i64>,
    pub(crate) accs: Vec<AccCol>,
    /// Groups changed since the last checkpoint, each listed once.
    pub(crate) dirty: Vec<u32>,
    pub(crate) is_dirty: Vec<bool>,
    /// Key columns of the groups created since the last checkpoint, in id order.
    pub(crate) new_keys: Vec<RecordBatch>,
    /// With a state TTL: when each group was last written, in ms since the Unix epoch
    /// (processing time, as Flink's state TTL); `None` without one.
    pub(crate) last_access: Option<Vec<i64>>,
}

impl GroupTable {
    pub(crate) fn new(key_schema: &SchemaRef, specs: &[AggSpec]) -> Result<GroupTable> {
        Ok(GroupTable {
            groups: new_group_values(key_schema.clone(), &GroupOrdering::None)?,
            rows: Vec::new(),
            accs: specs.iter().map(AccCol::new).collect(),
            dirty: Vec::new(),
            is_dirty: Vec::new(),
            new_keys: Vec::new(),
            last_access: None,
        })
    }

    /// Keeps when each group was last written, for a state TTL.
    pub(crate) fn track_access(mut self) -> GroupTable {
        self.last_access = Some(vec![0; self.len()]);
        self
    }

    /// Records that the groups `gids` were written at `now` (ms); nothing without a TTL.
    pub(crate) fn touch(&mut self, gids: &[usize], now: i64) {
        if let Some(t) = &mut self.last_access {
            for g in gids {
                t[*g] = now;
            }
        }
    }

    /// Empties group `g` (its rows and accumulators) and marks it changed, as a state TTL
    /// expires it.
    pub(crate) fn clear_group(&mut self, g: usize) {
        self.rows[g] = 0;
        for a in &mut self.accs {
            a.reset(g);
        }
        if !self.is_dirty[g] {
            self.is_dirty[g] = true;
            self.dirty.push(g as u32);
        }
    }

    /// Rebuilds the table with the groups `keep` says to keep, which get the ids `0..` in
    /// their old order; the others are forgotten (keys and accumulators). What changed since
    /// the last checkpoint is no longer tracked: the caller writes a snapshot next.
    ///
    /// Errors: `GroupValues` handed the kept keys other ids.
    pub(crate) fn retain(&mut self, key_schema: &SchemaRef, keep: &[bool]) -> Result<()> {
        let picks: Vec<usize> = (0..self.len()).filter(|g| keep[*g]).collect();
        let keys = self.groups.emit(datafusion::logical_expr::EmitTo::All)?;
        self.groups = new_group_values(key_schema.clone(), &GroupOrdering::None)?;
        if !picks.is_empty() {
            let idx = UInt32Array::from_iter_values(picks.iter().map(|g| *g as u32));
            let kept = keys.iter().map(|c| Ok(take(c.as_ref(), &idx, None)?)).collect::<Result<Vec<_>>>()?;
            let mut gids = Vec::new();
            self.groups.intern(&kept, &mut gids)?;
            check_ids(&gids, 0)?;
        }
        self.rows = picks.iter().map(|g| self.rows[*g]).collect();
        if let Some(t) = &mut self.last_access {
            *t = picks.iter().map(|g| t[*g]).collect();
        }
        for a in &mut self.accs {
            a.select(&picks);
        }
        self.dirty.clear();
        self.is_dirty = vec![false; picks.len()];
        self.new_keys.clear();
        Ok(())
    }

    /// Interns `keys` (columns of `key_schema`), growing the accumulators for new groups and,
    /// when `track`, remembering new groups' keys for the next checkpoint.
    pub(crate) fn intern(&mut self, key_schema: &SchemaRef, keys: &[ArrayRef], gids: &mut Vec<usize>, track: bool) -> Result<()> {
        let before = self.groups.len();
        self.groups.intern(keys, gids)?;
        let after = self.groups.len();
        if after > before {
            if track {
                // The first row of each new group, by id (whatever order the ids came in).
                let mut first = vec![u32::MAX; after - before];
                for (j, g) in gids.iter().enumerate() {
                    if *g >= before && first[*g - before] == u32::MAX {
                        first[*g - before] = j as u32;
                    }
                }
                if first.contains(&u32::MAX) {
                    return Err(ExecError::CorruptState("a new group id was handed out without a row".into()));
                }
                let idx = UInt32Array::from(first);
                let cols = keys.iter().map(|c| Ok(take(c.as_ref(), &idx, None)?)).collect::<Result<Vec<_>>>()?;
                self.new_keys.push(RecordBatch::try_new(key_schema.clone(), cols)?);
            }
            self.rows.resize(after, 0);
            self.is_dirty.resize(after, false);
            if let Some(t) = &mut self.last_access {
                t.resize(after, 0);
            }
            for a in &mut self.accs {
                a.resize(after);
            }
        }
        Ok(())
    }

    /// Accumulator state of group `g`: rows (i64 LE), then per aggregate its fields.
    pub(crate) fn encode_group(&self, g: usize, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.rows[g].to_le_bytes());
        for a in &self.accs {
            match a {
                AccCol::Count(c) => buf.extend_from_slice(&c[g].to_le_bytes()),
                AccCol::Float { sum, n } => {
                    buf.extend_from_slice(&sum[g].to_le_bytes());
                    buf.extend_from_slice(&n[g].to_le_bytes());
                }
                AccCol::Int { sum, n } => {
                    buf.extend_from_slice(&sum[g].to_le_bytes());
                    buf.extend_from_slice(&n[g].to_le_bytes());
                }
                AccCol::Values(v) => {
                    let e = v[g].entries();
                    buf.extend_from_slice(&(e.len() as u32).to_le_bytes());
                    for (x, c) in e {
                        buf.extend_from_slice(&(x.len() as u32).to_le_bytes());
                        buf.extend_from_slice(x);
                        buf.extend_from_slice(&c.to_le_bytes());
                    }
                }
            }
        }
    }

    pub(crate) fn decode_group(&mut self, g: usize, r: &mut Reader<'_>) -> Result<()> {
        self.rows[g] = r.i64()?;
        for a in &mut self.accs {
            match a {
                AccCol::Count(c) => c[g] = r.i64()?,
                AccCol::Float { sum, n } => {
                    sum[g] = f64::from_le_bytes(r.take(8)?.try_into().unwrap());
                    n[g] = r.i64()?;
                }
                AccCol::Int { sum, n } => {
                    sum[g] = i128::from_le_bytes(r.take(16)?.try_into().unwrap());
                    n[g] = r.i64()?;
                }
                AccCol::Values(v) => {
                    let len = r.u32()?;
                    let mut set = MultiSet::Empty;
                    for _ in 0..len {
                        let x = r.bytes()?;
                        set.add(x, r.i64()?);
                    }
                    v[g] = set;
                }
            }
        }
        Ok(())
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos + n).ok_or_else(|| ExecError::CorruptState("short aggregate state".into()))?;
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

pub(crate) fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}


impl GroupTable {
    /// Number of groups ever interned (emptied groups keep their id).
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Adds rows with group ids `gids`, argument columns `args` (one per aggregate, `None` for
    /// `COUNT(*)`) and optional `weights` (+1 / -1 per row; all +1 when `None`). A group whose
    /// row count returns to zero starts again from empty accumulators.
    pub(crate) fn update(&mut self, specs: &[AggSpec], gids: &[usize], args: &[Option<ArrayRef>], weights: Option<&[i64]>) -> Result<()> {
        for (j, g) in gids.iter().enumerate() {
            self.rows[*g] += weight(weights, j);
            if !self.is_dirty[*g] {
                self.is_dirty[*g] = true;
                self.dirty.push(*g as u32);
            }
        }
        for ((acc, spec), arg) in self.accs.iter_mut().zip(specs).zip(args) {
            accumulate(acc, spec, arg.as_ref(), gids, weights)?;
        }
        if weights.is_some() {
            for g in gids {
                if self.rows[*g] == 0 {
                    for a in &mut self.accs {
                        a.reset(*g);
                    }
                }
            }
        }
        Ok(())
    }

    /// The aggregates' output columns (types of `specs`' outputs) for the groups `gids`, or for
    /// every group when `None`.
    pub(crate) fn agg_columns(&self, specs: &[AggSpec], gids: Option<&[usize]>) -> Result<Vec<ArrayRef>> {
        let all: Vec<usize>;
        let gids = match gids {
            Some(g) => g,
            None => {
                all = (0..self.len()).collect();
                &all
            }
        };
        let mut cols = Vec::with_capacity(specs.len());
        for (spec, acc) in specs.iter().zip(&self.accs) {
            let col: ArrayRef = match acc {
                AccCol::Count(c) => Arc::new(Int64Array::from_iter_values(gids.iter().map(|g| c[*g]))),
                AccCol::Float { sum, n } => {
                    let avg = spec.kind == AggKind::Avg;
                    Arc::new(Float64Array::from_iter(gids.iter().map(|g| {
                        (n[*g] != 0).then(|| if avg { sum[*g] / n[*g] as f64 } else { sum[*g] })
                    })))
                }
                AccCol::Int { sum, n } => match &spec.acc_type {
                    Some(DataType::Decimal128(p, s)) => Arc::new(
                        Decimal128Array::from_iter(gids.iter().map(|g| (n[*g] != 0).then_some(sum[*g])))
                            .with_precision_and_scale(*p, *s)?,
                    ),
                    _ => Arc::new(Int64Array::from_iter(gids.iter().map(|g| (n[*g] != 0).then_some(sum[*g] as i64)))),
                },
                AccCol::Values(sets) => match spec.kind {
                    AggKind::CountDistinct => {
                        Arc::new(Int64Array::from_iter_values(gids.iter().map(|g| sets[*g].distinct() as i64)))
                    }
                    kind => {
                        let (conv, t) =
                            spec.conv.as_ref().ok_or_else(|| ExecError::Unsupported("MIN/MAX without encoding".into()))?;
                        let picked: Vec<Option<&[u8]>> = gids
                            .iter()
                            .map(|g| if kind == AggKind::Min { sets[*g].min() } else { sets[*g].max() })
                            .collect();
                        decode_optional(conv, std::slice::from_ref(t), &picked)?.remove(0)
                    }
                },
            };
            cols.push(if col.data_type() == &spec.out_type { col } else { cast(&col, &spec.out_type)? });
        }
        Ok(cols)
    }

    /// Every group's key columns, leaving the table as it was: reading a group table empties
    /// it, so the keys are interned again into a fresh one, which gives them the same ids.
    pub(crate) fn keys(&mut self, key_schema: &SchemaRef) -> Result<Vec<ArrayRef>> {
        let keys = self.groups.emit(datafusion::logical_expr::EmitTo::All)?;
        self.groups = new_group_values(key_schema.clone(), &GroupOrdering::None)?;
        let mut gids = Vec::new();
        self.groups.intern(&keys, &mut gids)?;
        check_ids(&gids, 0)?;
        Ok(keys)
    }

    /// Re-interns the keys of groups stored with ids `first..first + n` (a checkpoint's key
    /// entry). Errors: the ids do not continue the table, or the keys got other ids back.
    pub(crate) fn restore_keys(&mut self, key_schema: &SchemaRef, first: u32, keys: &[ArrayRef], gids: &mut Vec<usize>) -> Result<()> {
        if first as usize != self.len() {
            return Err(ExecError::CorruptState(format!("group keys stored from id {first}, the table has {} groups", self.len())));
        }
        self.intern(key_schema, keys, gids, false)?;
        check_ids(gids, first as usize)
    }
}

/// Checks that interning distinct keys handed out the ids `first, first + 1, ...` in order.
fn check_ids(gids: &[usize], first: usize) -> Result<()> {
    if gids.iter().enumerate().any(|(j, g)| *g != first + j) {
        return Err(ExecError::CorruptState(
            "group keys did not get back the ids they were checkpointed with (GroupValues handed out ids in another order)".into(),
        ));
    }
    Ok(())
}
