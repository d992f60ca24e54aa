//! Regular streaming join of two changelogs, as Flink's regular join: both inputs are kept in
//! state (unbounded), and every change on one side is joined with the other side's current
//! rows. Inner joins pass each input row's op through (`+I`, `-U`, `+U`, `-D`); outer joins also
//! emit NULL-padded rows for rows without a match and retract them when a match appears.
//! Rows whose key has a NULL never match (SQL equality).
//!
//! State per side is columnar: the input batches themselves are kept as chunks (Arrow arrays,
//! shared with the batch, no per-row copy), with a live flag per row, and a hash index from the
//! join key (Arrow row encoding, inline when short) to the newest live row holding it; older
//! rows with the same key are chained through a per-chunk `next` array, as in a classic hash
//! join table, so adding a row is one lookup and one sequential write. A batch is processed in three
//! vectorized steps: its keys are row-encoded at once, each row probes the other side's index
//! (one hash lookup) and records which output rows it produces as index pairs, and the output
//! columns are gathered with Arrow's `take` (this side) and `interleave` (the other side's
//! chunks). A retraction finds the row it retracts by whole-row hash among the rows with its
//! key, confirmed by comparing row encodings; hashes of stored rows are computed only when a
//! retraction first looks at a chunk, so append-only inputs never pay for them. When more than
//! half of a side's stored rows are dead, the side is compacted.
//!
//! With a state TTL (Flink's `table.exec.state.ttl`, processing time) a stored row expires once
//! it has been in state for the TTL: each chunk remembers when it was stored, and every
//! checkpoint drops the chunks stored before `now - TTL` (the oldest rows of every key's chain,
//! so the chains are cut short) without emitting anything, as Flink expires join state. The
//! rows stay until that checkpoint, so a row matches for at least the TTL. Chunks are stored
//! in checkpoints with their time, and the cut-off of each expiry is a checkpoint entry too, so
//! a restore rebuilds the same state and the TTL counts across restarts.
//!
//! A checkpoint writes the epoch's changes as one delta record (`d<seq>`), so the store sees one
//! write per epoch rather than one per row, as a changelog state backend does: the batches of
//! rows added (each as Arrow IPC) and the rows removed (key and row encodings). When the deltas outgrow
//! twice the last snapshot, a snapshot (`s<chunk>`) of every live row replaces them. A restore
//! applies the snapshot, then the deltas in order.

use arrow::array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, interleave, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, Rows};
use datafusion::common::hash_utils::{create_hashes, RandomState};
use datafusion::common::HashMap;
use sluice_catalog::dataflow::ExprRef;
use sluice_catalog::{ChangeBatch, Op};
use sluice_connectors::log::{decode_batch, encode_batch};

use crate::error::{ExecError, Result};
use crate::filter::FilterOp;
use crate::operator::Operator;
use crate::rows::{any_null, converter, eval, expr_types, schema_converter, types_of};
use crate::state::{processing_time_ms, DeltaLog, StateReader, StateWriter};

/// Rows per chunk after a compaction.
const COMPACT_CHUNK_ROWS: usize = 65_536;
/// Dead rows a side tolerates before it may compact (it does once they outnumber live rows).
const COMPACT_MIN_DEAD: usize = 65_536;
/// Expired (emptied) chunks a side tolerates before it compacts (it does once they are half
/// of its chunks).
const COMPACT_MIN_EXPIRED: usize = 1024;

/// A stored row: its chunk and its index within the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowRef {
    chunk: u32,
    row: u32,
}

/// The end of a key's chain of rows.
const NONE: RowRef = RowRef { chunk: u32::MAX, row: u32::MAX };

/// A join key's row encoding, inline when short (a BIGINT key is 9 bytes), so that a probe
/// compares bytes inside the hash table rather than behind a pointer.
#[derive(Debug, Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; 22] },
    Heap(Box<[u8]>),
}

impl Key {
    fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..*len as usize],
            Key::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for Key {
    fn from(b: &[u8]) -> Key {
        if b.len() <= 22 {
            let mut bytes = [0u8; 22];
            bytes[..b.len()].copy_from_slice(b);
            Key::Inline { len: b.len() as u8, bytes }
        } else {
            Key::Heap(b.into())
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes, so that lookups by `&[u8]` find the key.
        self.as_slice().hash(state)
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

/// A key's live rows: the most recently added one and how many there are. The rest of the
/// chain runs through each chunk's `next`.
#[derive(Debug, Clone, Copy)]
struct Head {
    first: RowRef,
    count: u32,
}

/// A batch of stored rows.
struct Chunk {
    data: RecordBatch,
    /// Whether each row is still in the state.
    live: Vec<bool>,
    /// The next (older) row with the same key, or [`NONE`].
    next: Vec<RowRef>,
    /// Whole-row hashes, computed when a retraction first looks into this chunk.
    hashes: Option<Vec<u64>>,
    /// When the rows were stored (processing time, ms since the Unix epoch), for a state TTL.
    born: i64,
}

/// One input's rows: chunks, the key index, and the changes since the last checkpoint.
#[derive(Default)]
struct Side {
    chunks: Vec<Chunk>,
    /// Join key (row-encoded) -> the chain of live rows with that key.
    index: HashMap<Key, Head>,
    live: usize,
    dead: usize,
    /// Chunks before this one have expired: their rows are gone and their data dropped.
    expired_upto: usize,
    /// Batches of rows added this epoch, with when they were stored.
    appended: Vec<(i64, RecordBatch)>,
    /// Rows removed this epoch: key and row encodings.
    removed: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A fixed seed: stored rows and retractions must hash alike across restarts.
fn row_hash_state() -> RandomState {
    RandomState::with_seed(0x6a6f_696e_5f72_6f77)
}

fn hash_rows(cols: &[ArrayRef], n: usize) -> Result<Vec<u64>> {
    let mut hashes = vec![0u64; n];
    create_hashes(cols, &row_hash_state(), &mut hashes)?;
    Ok(hashes)
}

impl Side {
    /// Adds every row of `data` (all with non-null keys `keys`) stored at `born`, as a
    /// restore does.
    fn add_all(&mut self, data: RecordBatch, keys: &Rows, born: i64) {
        let n = data.num_rows();
        let chunk = self.chunks.len() as u32;
        self.chunks.push(Chunk { live: vec![true; n], next: vec![NONE; n], data, hashes: None, born });
        for i in 0..n {
            self.link(keys.row(i).data(), RowRef { chunk, row: i as u32 });
        }
        self.live += n;
    }

    /// Puts row `r` (in an existing chunk) at the head of `key`'s chain.
    #[inline]
    fn link(&mut self, key: &[u8], r: RowRef) {
        match self.index.get_mut(key) {
            Some(h) => {
                self.chunks[r.chunk as usize].next[r.row as usize] = h.first;
                h.first = r;
                h.count += 1;
            }
            None => {
                self.index.insert(Key::from(key), Head { first: r, count: 1 });
            }
        }
    }

    /// The live rows with `key`, newest first.
    fn rows<'a>(&'a self, head: Option<Head>) -> impl Iterator<Item = RowRef> + 'a {
        let mut cur = head.map_or(NONE, |h| h.first);
        std::iter::from_fn(move || {
            if cur == NONE {
                return None;
            }
            let r = cur;
            cur = self.chunks[r.chunk as usize].next[r.row as usize];
            Some(r)
        })
    }

    /// Removes one live row equal to `row` (its encoding, whole-row `hash`) under `key`;
    /// false when there is none.
    fn remove(&mut self, key: &[u8], row: &[u8], hash: u64, conv: &RowConverter) -> Result<bool> {
        let Some(head) = self.index.get(key).copied() else { return Ok(false) };
        let (mut prev, mut cur) = (NONE, head.first);
        while cur != NONE {
            let chunk = &mut self.chunks[cur.chunk as usize];
            let next = chunk.next[cur.row as usize];
            if chunk.hashes.is_none() {
                chunk.hashes = Some(hash_rows(chunk.data.columns(), chunk.data.num_rows())?);
            }
            if chunk.hashes.as_ref().map(|h| h[cur.row as usize]) == Some(hash)
                && conv.convert_columns(chunk.data.slice(cur.row as usize, 1).columns())?.row(0).data() == row
            {
                break;
            }
            (prev, cur) = (cur, next);
        }
        if cur == NONE {
            return Ok(false);
        }
        let next = self.chunks[cur.chunk as usize].next[cur.row as usize];
        if head.count == 1 {
            self.index.remove(key);
        } else {
            let h = self.index.get_mut(key).ok_or_else(bad_state)?;
            h.count -= 1;
            if prev == NONE {
                h.first = next;
            } else {
                self.chunks[prev.chunk as usize].next[prev.row as usize] = next;
            }
        }
        self.chunks[cur.chunk as usize].live[cur.row as usize] = false;
        self.live -= 1;
        self.dead += 1;
        Ok(true)
    }

    /// Number of live rows with `key`.
    fn count(&self, key: &[u8]) -> usize {
        self.index.get(key).map_or(0, |h| h.count as usize)
    }

    /// Every live row, as batches with when they were stored, oldest first.
    fn live_batches(&self) -> Result<Vec<(i64, RecordBatch)>> {
        let mut out = Vec::new();
        for c in &self.chunks {
            let live = c.live.iter().filter(|l| **l).count();
            if live == 0 {
                continue;
            }
            if live == c.data.num_rows() {
                out.push((c.born, c.data.clone()));
            } else {
                out.push((c.born, filter_record_batch(&c.data, &BooleanArray::from(c.live.clone()))?));
            }
        }
        Ok(out)
    }

    /// Drops the rows stored at or before `cutoff` (ms), from the oldest chunk on; returns
    /// how many rows expired. Chunks are stored in time order, and a key's chain runs from its
    /// newest row to its oldest, so the expired rows are the end of every chain they are in.
    fn expire(&mut self, cutoff: i64, keys: &[ExprRef], key_conv: &RowConverter) -> Result<usize> {
        let start = self.expired_upto;
        let mut end = start;
        while end < self.chunks.len() && self.chunks[end].born <= cutoff {
            end += 1;
        }
        if end == start {
            return Ok(0);
        }
        let mut cut: HashMap<Key, ()> = HashMap::default();
        let mut expired = 0;
        for c in &mut self.chunks[start..end] {
            let live: Vec<u32> = (0..c.live.len() as u32).filter(|r| c.live[*r as usize]).collect();
            if !live.is_empty() {
                let k = key_conv.convert_columns(&eval(keys, &c.data)?)?;
                for r in &live {
                    cut.insert(Key::from(k.row(*r as usize).data()), ());
                }
            }
            expired += live.len();
            self.dead -= c.data.num_rows() - live.len();
            *c = Chunk { data: c.data.slice(0, 0), live: vec![], next: vec![], hashes: None, born: c.born };
        }
        self.live -= expired;
        for key in cut.into_keys() {
            let Some(head) = self.index.get(key.as_slice()).copied() else { return Err(bad_state()) };
            let (mut prev, mut cur, mut kept) = (NONE, head.first, 0);
            while cur != NONE && cur.chunk as usize >= end {
                prev = cur;
                kept += 1;
                cur = self.chunks[cur.chunk as usize].next[cur.row as usize];
            }
            if kept == 0 {
                self.index.remove(key.as_slice());
            } else {
                self.chunks[prev.chunk as usize].next[prev.row as usize] = NONE;
                self.index.get_mut(key.as_slice()).ok_or_else(bad_state)?.count = kept;
            }
        }
        self.expired_upto = end;
        Ok(expired)
    }

    /// Rewrites the chunks without dead rows when those outnumber the live ones, and without
    /// expired chunks when those are many. Chunks are merged into larger ones only without a
    /// TTL (`merge`): with one, each chunk keeps its own time.
    fn maybe_compact(&mut self, keys: &[ExprRef], key_conv: &RowConverter, schema: &SchemaRef, merge: bool) -> Result<()> {
        let dead = self.dead >= COMPACT_MIN_DEAD && self.dead >= self.live;
        let expired = self.expired_upto >= COMPACT_MIN_EXPIRED && 2 * self.expired_upto >= self.chunks.len();
        if !dead && !expired {
            return Ok(());
        }
        let live = self.live_batches()?;
        let (appended, removed) = (std::mem::take(&mut self.appended), std::mem::take(&mut self.removed));
        *self = Side { appended, removed, ..Side::default() };
        let mut group: Vec<RecordBatch> = Vec::new();
        let mut rows = 0;
        for (i, (born, b)) in live.iter().enumerate() {
            rows += b.num_rows();
            group.push(b.clone());
            if !merge || rows >= COMPACT_CHUNK_ROWS || i + 1 == live.len() {
                let data = concat_batches(schema, &group)?;
                let k = key_conv.convert_columns(&eval(keys, &data)?)?;
                // The newest time of the merged chunks: no row expires early.
                self.add_all(data, &k, *born);
                group.clear();
                rows = 0;
            }
        }
        Ok(())
    }
}

/// See the module docs.
pub struct JoinOp {
    keys: [Vec<ExprRef>; 2],
    outer: [bool; 2],
    schema: SchemaRef,
    inputs: [SchemaRef; 2],
    types: [Vec<DataType>; 2],
    key_conv: RowConverter,
    row_conv: [RowConverter; 2],
    state: [Side; 2],
    /// How the state is checkpointed.
    log: DeltaLog,
    filter: Option<FilterOp>,
    /// The state TTL in ms, if any.
    ttl_ms: Option<i64>,
}

impl JoinOp {
    /// Builds a join of inputs with schemas `left` and `right` producing `schema`, keeping a
    /// stored row for `ttl` (forever for `None`).
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
        ttl: Option<std::time::Duration>,
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
            inputs: [left, right],
            keys: [left_keys, right_keys],
            outer: [left_outer, right_outer],
            schema,
            state: [Side::default(), Side::default()],
            log: DeltaLog::default(),
            filter: filter.map(FilterOp::new),
            ttl_ms: ttl.map(|d| d.as_millis() as i64),
        })
    }

    /// Every live row as `(side, key encoding, row encoding)`, sorted (tests).
    #[cfg(test)]
    fn contents(&self) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for side in 0..2 {
            for (_, b) in self.state[side].live_batches().unwrap() {
                let k = self.key_conv.convert_columns(&eval(&self.keys[side], &b).unwrap()).unwrap();
                let r = self.row_conv[side].convert_columns(b.columns()).unwrap();
                for i in 0..b.num_rows() {
                    out.push((side, k.row(i).data().to_vec(), r.row(i).data().to_vec()));
                }
            }
        }
        out.sort();
        out
    }
}

fn bad_state() -> ExecError {
    ExecError::CorruptState("join state".into())
}

/// Delta and snapshot entries: `3, side, stored at i64 LE, len u32 LE, IPC batch` adds rows
/// (`0, side, len, IPC`, without the time, in state written before TTLs); `1, side, key len
/// u32 LE, key, row len u32 LE, row` removes one row; `2, side, cut-off i64 LE` expires the
/// rows stored at or before the cut-off.
fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

fn encode_added(buf: &mut Vec<u8>, side: usize, born: i64, batch: &RecordBatch) -> Result<()> {
    buf.push(3);
    buf.push(side as u8);
    buf.extend_from_slice(&born.to_le_bytes());
    put_bytes(buf, &encode_batch(batch)?);
    Ok(())
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos + n).ok_or_else(bad_state)?;
        self.pos += n;
        Ok(s)
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().unwrap()) as usize;
        self.take(n)
    }
}

/// Output rows under construction: op, this side's input row (`None` = NULL padding), the
/// other side's row as `(chunk, row)` for `interleave` (the chunk past the last is all NULL).
#[derive(Default)]
struct Out {
    ops: Vec<Op>,
    this: Vec<Option<u32>>,
    other: Vec<(usize, usize)>,
}

impl Out {
    fn push(&mut self, op: Op, this: Option<u32>, other: (usize, usize)) {
        self.ops.push(op);
        self.this.push(this);
        self.other.push(other);
    }
}

impl Operator for JoinOp {
    fn process(&mut self, side: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let n = batch.num_rows();
        let other_side = 1 - side;
        let key_cols = eval(&self.keys[side], &batch.data)?;
        let keys = self.key_conv.convert_columns(&key_cols)?;
        let any_key_null = key_cols.iter().any(|c| c.null_count() > 0);
        let retracting = !batch.ops.iter().all(|o| o.is_insertion());
        let (rows, hashes) = if retracting {
            (Some(self.row_conv[side].convert_columns(batch.data.columns())?), hash_rows(batch.data.columns(), n)?)
        } else {
            (None, Vec::new())
        };
        let JoinOp { state, row_conv, outer, .. } = self;
        let (this, other) = {
            let (a, b) = state.split_at_mut(1);
            if side == 0 {
                (&mut a[0], &b[0])
            } else {
                (&mut b[0], &a[0])
            }
        };
        let (outer_this, outer_other) = (outer[side], outer[other_side]);
        let null_other = (other.chunks.len(), 0);
        let chunk_id = this.chunks.len() as u32;
        let born = processing_time_ms();
        this.chunks.push(Chunk { data: batch.data.clone(), live: vec![false; n], next: vec![NONE; n], hashes: None, born });
        let mut added = vec![false; n];
        let mut n_added = 0;
        let mut out = Out { ops: Vec::with_capacity(n), this: Vec::with_capacity(n), other: Vec::with_capacity(n) };
        for i in 0..n {
            let op = batch.ops[i];
            if any_key_null && any_null(&key_cols, i) {
                if outer_this {
                    out.push(op, Some(i as u32), null_other);
                }
                continue;
            }
            let key = keys.row(i).data();
            let head = other.index.get(key).copied();
            let matched = head.is_some();
            // The other side's NULL-padded rows exist exactly while this side has no row with
            // the key: the first insertion retracts them, the last retraction restores them.
            if op.is_insertion() {
                if outer_other && matched && this.count(key) == 0 {
                    for m in other.rows(head) {
                        out.push(Op::Delete, None, (m.chunk as usize, m.row as usize));
                    }
                }
                if !matched {
                    if outer_this {
                        out.push(op, Some(i as u32), null_other);
                    }
                } else {
                    for m in other.rows(head) {
                        out.push(op, Some(i as u32), (m.chunk as usize, m.row as usize));
                    }
                }
                this.link(key, RowRef { chunk: chunk_id, row: i as u32 });
                this.chunks[chunk_id as usize].live[i] = true;
                this.live += 1;
                added[i] = true;
                n_added += 1;
            } else {
                let row = rows.as_ref().map(|r| r.row(i)).ok_or_else(bad_state)?;
                if !this.remove(key, row.data(), hashes[i], &row_conv[side])? {
                    // A retraction of a row this join never saw: nothing was emitted for it.
                    continue;
                }
                this.removed.push((key.to_vec(), row.data().to_vec()));
                if !matched {
                    if outer_this {
                        out.push(op, Some(i as u32), null_other);
                    }
                } else {
                    for m in other.rows(head) {
                        out.push(op, Some(i as u32), (m.chunk as usize, m.row as usize));
                    }
                }
                if outer_other && matched && this.count(key) == 0 {
                    for m in other.rows(head) {
                        out.push(Op::Insert, None, (m.chunk as usize, m.row as usize));
                    }
                }
            }
        }
        if n_added == 0 {
            this.chunks.pop();
        } else {
            this.dead += n - n_added;
            this.appended.push((
                born,
                if n_added == n { batch.data.clone() } else { filter_record_batch(&batch.data, &BooleanArray::from(added))? },
            ));
        }
        let joined = if out.ops.is_empty() {
            None
        } else {
            // Each input row joined once, in order (an inner join on a unique key): this side's
            // columns are the input's.
            let identity = out.this.len() == n && out.this.iter().enumerate().all(|(i, r)| *r == Some(i as u32));
            let this_cols = if identity {
                batch.data.columns().to_vec()
            } else {
                let this_idx = UInt32Array::from(std::mem::take(&mut out.this));
                batch.data.columns().iter().map(|c| Ok(take(c.as_ref(), &this_idx, None)?)).collect::<Result<Vec<ArrayRef>>>()?
            };
            let mut other_cols = Vec::with_capacity(self.types[other_side].len());
            for (c, t) in self.types[other_side].iter().enumerate() {
                let nulls = new_null_array(t, 1);
                let mut arrays: Vec<&dyn Array> = other.chunks.iter().map(|ch| ch.data.column(c).as_ref()).collect();
                arrays.push(nulls.as_ref());
                other_cols.push(interleave(&arrays, &out.other)?);
            }
            let cols = if side == 0 { [this_cols, other_cols].concat() } else { [other_cols, this_cols].concat() };
            Some(ChangeBatch::new(RecordBatch::try_new(self.schema.clone(), cols)?, out.ops))
        };
        let JoinOp { state, keys: key_exprs, key_conv, inputs, ttl_ms, .. } = self;
        state[side].maybe_compact(&key_exprs[side], key_conv, &inputs[side], ttl_ms.is_none())?;
        let Some(joined) = joined else { return Ok(vec![]) };
        match &mut self.filter {
            Some(f) => f.process(0, joined),
            None => Ok(vec![joined]),
        }
    }

    fn checkpoint(&mut self, w: &mut StateWriter<'_>) -> Result<()> {
        let mut delta = Vec::new();
        let cutoff = self.ttl_ms.map(|ttl| processing_time_ms() - ttl);
        for side in 0..2 {
            let s = &mut self.state[side];
            for (born, b) in std::mem::take(&mut s.appended) {
                encode_added(&mut delta, side, born, &b)?;
            }
            for (key, row) in std::mem::take(&mut s.removed) {
                delta.push(1);
                delta.push(side as u8);
                put_bytes(&mut delta, &key);
                put_bytes(&mut delta, &row);
            }
            // Expiry after the epoch's changes, in the order a restore applies them.
            if let Some(cutoff) = cutoff {
                if s.expire(cutoff, &self.keys[side], &self.key_conv)? > 0 {
                    delta.push(2);
                    delta.push(side as u8);
                    delta.extend_from_slice(&cutoff.to_le_bytes());
                }
            }
        }
        let state = &self.state;
        let mut snap_err = None;
        self.log.commit(w, &delta, |snap| {
            for (side, s) in state.iter().enumerate() {
                match s.live_batches() {
                    Ok(batches) => {
                        for (born, b) in batches {
                            if let Err(e) = encode_added(snap.buf(), side, born, &b) {
                                snap_err = Some(e);
                            }
                        }
                    }
                    Err(e) => snap_err = Some(e),
                }
            }
        });
        snap_err.map_or(Ok(()), Err)
    }

    fn restore(&mut self, r: &StateReader<'_>) -> Result<()> {
        let JoinOp { state, keys, key_conv, row_conv, log, .. } = self;
        // Rows stored without a time (state written before TTLs) count from now.
        let now = processing_time_ms();
        log.restore(r, |v| {
            let mut rd = Reader { b: v, pos: 0 };
            while rd.pos < v.len() {
                let tag = rd.take(1)?[0];
                let side = rd.take(1)?[0] as usize;
                if side > 1 {
                    return Err(bad_state());
                }
                match tag {
                    0 | 3 => {
                        let born = if tag == 3 { i64::from_le_bytes(rd.take(8)?.try_into().unwrap()) } else { now };
                        let data = decode_batch(rd.bytes()?)?;
                        let k = key_conv.convert_columns(&eval(&keys[side], &data)?)?;
                        state[side].add_all(data, &k, born);
                    }
                    2 => {
                        let cutoff = i64::from_le_bytes(rd.take(8)?.try_into().unwrap());
                        state[side].expire(cutoff, &keys[side], key_conv)?;
                    }
                    1 => {
                        let key = rd.bytes()?;
                        let row = rd.bytes()?;
                        let parser = row_conv[side].parser();
                        let cols = row_conv[side].convert_rows([parser.parse(row)])?;
                        let hash = hash_rows(&cols, 1)?[0];
                        if !state[side].remove(key, row, hash, &row_conv[side])? {
                            return Err(bad_state());
                        }
                    }
                    _ => return Err(bad_state()),
                }
            }
            Ok(())
        })?;
        for s in state.iter_mut() {
            s.appended.clear();
            s.removed.clear();
        }
        Ok(())
    }

    fn state_rows(&self) -> u64 {
        (self.state[0].live + self.state[1].live) as u64
    }

    fn state_bytes(&self) -> u64 {
        self.log.stored_bytes()
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
        JoinOp::try_new(schema.clone(), schema.clone(), vec![key.clone()], vec![key], None, true, false, out, None).unwrap()
    }

    #[test]
    fn rows_stored_longer_than_the_ttl_expire_at_a_checkpoint_and_across_restores() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("s", DataType::Utf8, true)]));
        let ttl = Some(std::time::Duration::from_secs(3600));
        let mk = || {
            let out = Arc::new(Schema::new(
                schema.fields().iter().chain(schema.fields().iter()).map(|f| f.as_ref().clone()).collect::<Vec<_>>(),
            ));
            let key: ExprRef = Arc::new(Column::new("id", 0));
            JoinOp::try_new(schema.clone(), schema.clone(), vec![key.clone()], vec![key], None, false, false, out, ttl).unwrap()
        };
        let mut j = mk();
        // Key 1 has an old row and a new one; key 2 only an old one.
        j.process(0, batch(&schema, &[1, 2], &["old1", "old2"], &[Op::Insert, Op::Insert])).unwrap();
        j.process(0, batch(&schema, &[1], &["new1"], &[Op::Insert])).unwrap();
        // As if the first batch had been stored an hour ago.
        let old = processing_time_ms() - 3_600_001;
        j.state[0].chunks[0].born = old;
        j.state[0].appended[0].0 = old;
        let dir = std::env::temp_dir().join(format!("sluice-join-ttl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let mut wb = WriteBatch::default();
        j.checkpoint(&mut StateWriter::new(&store, &mut wb, operator_prefix("x", 0))).unwrap();
        store.write(wb).unwrap();
        assert_eq!(j.state[0].live, 1);
        let mut restored = mk();
        restored.restore(&StateReader::new(&store, operator_prefix("x", 0))).unwrap();
        assert_eq!(restored.contents(), j.contents());
        assert_eq!(restored.state[0].chunks[0].born, j.state[0].chunks[0].born);
        for x in [&mut j, &mut restored] {
            // Only the row that had not expired matches; key 2 matches nothing.
            let out = x.process(1, batch(&schema, &[1, 2], &["r1", "r2"], &[Op::Insert, Op::Insert])).unwrap();
            assert_eq!(out[0].to_text(), "+I 1 new1 1 r1\n");
            // Retracting an expired row does nothing; the kept one retracts.
            let out = x.process(0, batch(&schema, &[1, 1], &["old1", "new1"], &[Op::Delete, Op::Delete])).unwrap();
            assert_eq!(out[0].to_text(), "-D 1 new1 1 r1\n");
        }
        let _ = std::fs::remove_dir_all(&dir);
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
        j.log.snapshot_next();
        commit(&mut j);
        j.process(0, batch(&schema, &[2], &["b"], &[Op::Delete])).unwrap();
        j.process(0, batch(&schema, &[3], &["c"], &[Op::Insert])).unwrap();
        commit(&mut j);

        let mut restored = join(&schema);
        restored.restore(&StateReader::new(&store, operator_prefix("t", 0))).unwrap();
        assert_eq!(restored.contents(), j.contents());
        let out = restored.process(1, batch(&schema, &[3], &["z"], &[Op::Delete])).unwrap();
        assert_eq!(out[0].to_text(), "-D 3 c 3 z\n+I 3 c NULL NULL\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn duplicate_rows_retract_one_at_a_time_and_compaction_keeps_the_live_rows() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("s", DataType::Utf8, true)]));
        let mut j = join(&schema);
        // 100 000 rows on the left, 100 keys, names repeating so rows have duplicates.
        let n = 100_000i64;
        let ids: Vec<i64> = (0..n).map(|i| i % 100).collect();
        let names: Vec<String> = (0..n).map(|i| format!("n{}", i % 1000)).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        j.process(0, batch(&schema, &ids, &refs, &vec![Op::Insert; n as usize])).unwrap();
        // Retract the first 80 000: dead rows outnumber live ones, so the side compacts.
        let k = 80_000usize;
        j.process(0, batch(&schema, &ids[..k], &refs[..k], &vec![Op::Delete; k])).unwrap();
        assert_eq!(j.state[0].live, n as usize - k);
        assert_eq!(j.state[0].dead, 0, "compacted");
        // Key 7 has 1 000 rows, 200 of them left; a right row with key 7 retracts their 200
        // NULL-padded rows (a left join) and joins each once.
        let out = j.process(1, batch(&schema, &[7], &["r"], &[Op::Insert])).unwrap();
        assert_eq!(out[0].ops.iter().filter(|o| **o == Op::Delete).count(), 200);
        assert_eq!(out[0].ops.iter().filter(|o| **o == Op::Insert).count(), 200);
        // A retraction of a row that is no longer there does nothing.
        assert!(j.process(0, batch(&schema, &[7], &["n8"], &[Op::Delete])).unwrap().is_empty());
        // A remaining duplicate goes one copy at a time.
        let left_7: Vec<_> = j.contents().into_iter().filter(|(s, _, _)| *s == 0).collect();
        assert_eq!(left_7.len(), n as usize - k);
        let out = j.process(0, batch(&schema, &[7], &["n807"], &[Op::Delete])).unwrap();
        assert_eq!(out[0].to_text(), "-D 7 n807 7 r\n");
        assert_eq!(j.state[0].live, n as usize - k - 1);

        // Everything survives a checkpoint and restore, including the compacted side.
        let dir = std::env::temp_dir().join(format!("sluice-join-compact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let mut wb = WriteBatch::default();
        j.checkpoint(&mut StateWriter::new(&store, &mut wb, operator_prefix("c", 0))).unwrap();
        store.write(wb).unwrap();
        let mut restored = join(&schema);
        restored.restore(&StateReader::new(&store, operator_prefix("c", 0))).unwrap();
        assert_eq!(restored.contents(), j.contents());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
