//! An operator tree built from a dataflow plan.
//!
//! Nodes are stored in post-order (children before parents), so operator indices are stable
//! across restarts of the same plan and name their state. A batch enters at a source node and is
//! pushed up through each parent; watermarks are propagated bottom-up, a node's watermark being
//! the minimum over the watermarked sources below it. As in Flink, a watermarked source that
//! has not produced a watermark yet holds that minimum back (windows above it do not close on
//! the other inputs alone) until it produces one, is idle (`scan.watermark.idle-timeout`), or
//! ends.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use rocksdb::WriteBatch;
use sluice_catalog::dataflow::Node;
use sluice_catalog::{ChangeBatch, Store};

use crate::aggregate::AggregateOp;
use crate::error::Result;
use crate::filter::{FilterOp, ProjectOp, UnionOp};
use crate::join::JoinOp;
use crate::operator::Operator;
use crate::source::SourceOp;
use crate::state::{operator_prefix, StateReader, StateWriter};
use crate::window_agg::WindowAggregateOp;

struct GraphNode {
    op: Box<dyn Operator>,
    parent: Option<(usize, usize)>,
    /// Source ids below this node.
    sources: Vec<usize>,
    watermark: i64,
}

/// The watermark of one source as a job reports it to [`Graph::advance_watermarks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceWatermark {
    /// The table declares no watermark: it never holds event time back.
    Undeclared,
    /// Declared, but not produced yet: holds back every operator above the source.
    Pending,
    /// Idle without a watermark (`scan.watermark.idle-timeout`): left out of the minimum.
    Idle,
    /// At this event time, in ms since the epoch; `i64::MAX` once a bounded source ended.
    At(i64),
}

/// See the module docs.
pub struct Graph {
    nodes: Vec<GraphNode>,
    /// One line per node (post-order): what the node computes, for [`Graph::fingerprint`].
    shape: Vec<String>,
    /// Node index of each source id.
    source_nodes: Vec<usize>,
    /// Per source id: computed columns and watermark measurement.
    source_rows: Vec<SourceOp>,
    /// The state TTL of joins and non-windowed aggregates.
    state_ttl: Option<std::time::Duration>,
}

impl Graph {
    /// Builds the operators of `root`. `late_rows` counts rows dropped behind the watermark;
    /// joins and non-windowed aggregates keep state for a key for `state_ttl` after it was
    /// last written (forever for `None`; see [`sluice_catalog::state_ttl`]).
    pub fn build(root: &Node, late_rows: Arc<AtomicU64>, state_ttl: Option<std::time::Duration>) -> Result<Graph> {
        let n_sources = root.sources().len();
        let mut g = Graph {
            nodes: Vec::new(),
            shape: Vec::new(),
            source_nodes: vec![0; n_sources],
            source_rows: Vec::new(),
            state_ttl,
        };
        let mut rows: Vec<Option<SourceOp>> = (0..n_sources).map(|_| None).collect();
        g.add(root, &late_rows, &mut rows)?;
        g.source_rows = rows.into_iter().map(|r| r.expect("every source id is built")).collect();
        Ok(g)
    }

    fn add(&mut self, node: &Node, late: &Arc<AtomicU64>, rows: &mut [Option<SourceOp>]) -> Result<usize> {
        let (op, children): (Box<dyn Operator>, Vec<usize>) = match node {
            Node::Source(s) => {
                rows[s.id] = Some(SourceOp::try_new(s)?);
                self.shape.push(format!(
                    "source {} topic {} upsert {:?} watermark {} {}",
                    s.id,
                    s.table.topic(),
                    s.upsert_key,
                    s.watermark.as_ref().map(|w| w.to_string()).unwrap_or_default(),
                    schema_shape(&s.schema)
                ));
                let idx = self.push(Box::new(SourceOp::try_new(s)?), vec![s.id]);
                self.source_nodes[s.id] = idx;
                return Ok(idx);
            }
            Node::Filter { input, predicate } => {
                let c = self.add(input, late, rows)?;
                (Box::new(FilterOp::new(predicate.clone())), vec![c])
            }
            Node::Project { input, exprs, schema } => {
                let c = self.add(input, late, rows)?;
                (Box::new(ProjectOp::new(exprs.clone(), schema.clone())), vec![c])
            }
            Node::Join { left, right, left_keys, right_keys, filter, left_outer, right_outer, schema } => {
                let l = self.add(left, late, rows)?;
                let r = self.add(right, late, rows)?;
                let op = JoinOp::try_new(
                    left.schema(),
                    right.schema(),
                    left_keys.clone(),
                    right_keys.clone(),
                    filter.clone(),
                    *left_outer,
                    *right_outer,
                    schema.clone(),
                    self.state_ttl,
                )?;
                (Box::new(op), vec![l, r])
            }
            Node::Aggregate { input, group_exprs, aggs, window: Some(w), schema } => {
                let c = self.add(input, late, rows)?;
                let op = WindowAggregateOp::try_new(
                    input.schema(),
                    group_exprs.clone(),
                    aggs,
                    w.end_group_index,
                    schema.clone(),
                    late.clone(),
                )?;
                (Box::new(op), vec![c])
            }
            Node::Aggregate { input, group_exprs, aggs, window: None, schema } => {
                let c = self.add(input, late, rows)?;
                let op = AggregateOp::try_new(input.schema(), group_exprs.clone(), aggs, schema.clone(), self.state_ttl)?;
                (Box::new(op), vec![c])
            }
            Node::Union { inputs, schema } => {
                let cs = inputs.iter().map(|i| self.add(i, late, rows)).collect::<Result<Vec<_>>>()?;
                (Box::new(UnionOp::new(schema.clone())), cs)
            }
        };
        let sources = children.iter().flat_map(|c| self.nodes[*c].sources.clone()).collect();
        self.shape.push(format!("{} of {children:?} {} {}", op.name(), node_detail(node), schema_shape(&node.schema())));
        let idx = self.push(op, sources);
        for (side, c) in children.iter().enumerate() {
            // A union's inputs all arrive on side 0.
            let side = if matches!(node, Node::Union { .. }) { 0 } else { side };
            self.nodes[*c].parent = Some((idx, side));
        }
        Ok(idx)
    }

    fn push(&mut self, op: Box<dyn Operator>, sources: Vec<usize>) -> usize {
        self.nodes.push(GraphNode { op, parent: None, sources, watermark: i64::MIN });
        self.nodes.len() - 1
    }

    /// Computed columns and the watermark candidate of a batch read by source `id`.
    pub fn source_rows(&self, id: usize, batch: ChangeBatch) -> Result<(ChangeBatch, Option<i64>)> {
        self.source_rows[id].rows(batch)
    }

    /// Pushes rows read by source `id` through the graph; returns what reaches the root.
    pub fn push_source(&mut self, id: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let mut out = Vec::new();
        self.push_at(self.source_nodes[id], 0, batch, &mut out)?;
        Ok(out)
    }

    fn push_at(&mut self, idx: usize, side: usize, batch: ChangeBatch, out: &mut Vec<ChangeBatch>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let outs = self.nodes[idx].op.process(side, batch)?;
        self.forward(idx, outs, out)
    }

    fn forward(&mut self, idx: usize, outs: Vec<ChangeBatch>, out: &mut Vec<ChangeBatch>) -> Result<()> {
        match self.nodes[idx].parent {
            Some((p, s)) => {
                for o in outs {
                    self.push_at(p, s, o, out)?;
                }
            }
            None => out.extend(outs.into_iter().filter(|b| !b.is_empty())),
        }
        Ok(())
    }

    /// True when source `id`'s table declares a watermark.
    pub fn declares_watermark(&self, id: usize) -> bool {
        self.source_rows[id].declares_watermark()
    }

    /// A stable fingerprint (16 hex digits, FNV-1a 64) of what every operator computes, in
    /// order: checkpoints store it, and a restore refuses state written for another plan, since
    /// operator state is keyed by the operator's index in the plan.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for line in &self.shape {
            for b in line.bytes().chain(std::iter::once(b'\n')) {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    /// Propagates source watermarks and returns what the advance emits at the root. A node's
    /// watermark is the minimum over the sources below it that declare one and are not idle;
    /// a [`SourceWatermark::Pending`] source below it holds it back.
    pub fn advance_watermarks(&mut self, source_wms: &[SourceWatermark]) -> Result<Vec<ChangeBatch>> {
        let mut out = Vec::new();
        for idx in 0..self.nodes.len() {
            let mut wm: Option<i64> = None;
            let mut held = false;
            for s in &self.nodes[idx].sources {
                match source_wms.get(*s).copied().unwrap_or(SourceWatermark::Undeclared) {
                    SourceWatermark::Pending => held = true,
                    SourceWatermark::At(w) => wm = Some(wm.map_or(w, |m| m.min(w))),
                    SourceWatermark::Undeclared | SourceWatermark::Idle => {}
                }
            }
            if held {
                continue;
            }
            let Some(wm) = wm else { continue };
            if wm > self.nodes[idx].watermark {
                self.nodes[idx].watermark = wm;
                let outs = self.nodes[idx].op.on_watermark(wm)?;
                self.forward(idx, outs, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Entries kept in the state of every operator (join rows, groups).
    pub fn state_rows(&self) -> u64 {
        self.nodes.iter().map(|n| n.op.state_rows()).sum()
    }

    /// Bytes of every operator's state in the store.
    pub fn state_bytes(&self) -> u64 {
        self.nodes.iter().map(|n| n.op.state_bytes()).sum()
    }

    /// The state TTL the graph was built with.
    pub fn state_ttl(&self) -> Option<std::time::Duration> {
        self.state_ttl
    }

    /// Writes every operator's changed state into `batch`.
    pub fn checkpoint(&mut self, store: &Store, batch: &mut WriteBatch, job: &str) -> Result<()> {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let mut w = StateWriter::new(store, batch, operator_prefix(job, i));
            n.op.checkpoint(&mut w)?;
            if i == 0 {
                // Crash injection: a failure with part of the epoch's state already written.
                crate::error::failpoint("checkpoint::state_write")?;
            }
        }
        Ok(())
    }

    /// Loads every operator's state from the last checkpoint.
    pub fn restore(&mut self, store: &Store, job: &str) -> Result<()> {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.op.restore(&StateReader::new(store, operator_prefix(job, i)))?;
        }
        Ok(())
    }
}

/// Field names, types and nullability of a schema, for fingerprints.
fn schema_shape(schema: &arrow::datatypes::Schema) -> String {
    schema.fields().iter().map(|f| format!("{}:{}:{}", f.name(), f.data_type(), f.is_nullable())).collect::<Vec<_>>().join(",")
}

/// The expressions of a node, for fingerprints.
fn node_detail(node: &Node) -> String {
    let list = |v: &[sluice_catalog::dataflow::ExprRef]| v.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",");
    match node {
        Node::Source(_) => String::new(),
        Node::Filter { predicate, .. } => predicate.to_string(),
        Node::Project { exprs, .. } => list(exprs),
        Node::Join { left_keys, right_keys, filter, left_outer, right_outer, .. } => format!(
            "{} = {} filter {} outer {left_outer} {right_outer}",
            list(left_keys),
            list(right_keys),
            filter.as_ref().map(|f| f.to_string()).unwrap_or_default()
        ),
        Node::Aggregate { group_exprs, aggs, window, .. } => {
            let aggs: Vec<String> =
                aggs.iter().map(|a| format!("{:?}({})", a.kind, a.arg.as_ref().map(|e| e.to_string()).unwrap_or_default())).collect();
            format!("by {} aggs {} window {:?}", list(group_exprs), aggs.join(","), window.as_ref().map(|w| w.end_group_index))
        }
        Node::Union { inputs, .. } => format!("{} inputs", inputs.len()),
    }
}
