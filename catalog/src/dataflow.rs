//! The streaming dataflow plan: what the planner produces from a DataFusion `LogicalPlan` and
//! the executor runs. Expressions are DataFusion physical expressions evaluated on Arrow batches.
//!
//! A plan is a tree of [`Node`]s whose leaves are sources (tables); each node's output is a
//! changelog ([`crate::ChangeBatch`]es) in the node's `schema`.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use crate::table::TableDef;

/// A DataFusion physical expression.
pub type ExprRef = Arc<dyn PhysicalExpr>;

/// An aggregate function with the retraction support streaming needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    /// `COUNT(*)` / `COUNT(x)` (non-null values).
    Count,
    /// `COUNT(DISTINCT x)`.
    CountDistinct,
    /// `SUM(x)`; NULL when no non-null value.
    Sum,
    /// `AVG(x)`.
    Avg,
    /// `MIN(x)`.
    Min,
    /// `MAX(x)`.
    Max,
}

/// One aggregate call of an aggregation node.
#[derive(Debug, Clone)]
pub struct AggCall {
    /// The function.
    pub kind: AggKind,
    /// The argument evaluated on the input; `None` for `COUNT(*)`.
    pub arg: Option<ExprRef>,
}

/// Window information of a windowed aggregation (a window TVF under a `GROUP BY`).
#[derive(Debug, Clone)]
pub struct WindowAgg {
    /// Position, among the group expressions, of `window_end`: a window's groups are emitted,
    /// once, when the input watermark reaches this value.
    pub end_group_index: usize,
}

/// How a source node reads a table.
#[derive(Debug, Clone)]
pub struct SourceNode {
    /// Index of this source among the plan's sources (its id in checkpoints).
    pub id: usize,
    /// The table read.
    pub table: TableDef,
    /// What the topic stores (the table's physical columns).
    pub physical_schema: SchemaRef,
    /// The rows the source emits: physical and computed columns in declaration order.
    pub schema: SchemaRef,
    /// Computed columns: expressions over the physical columns giving the full row; `None`
    /// when the table has no computed column.
    pub computed: Option<Vec<ExprRef>>,
    /// The watermark expression over the full row, if the table declares one; a partition's
    /// watermark is the largest value it has produced (ms since the epoch).
    pub watermark: Option<ExprRef>,
    /// Primary-key column indices when the table is an upsert table: the source then turns
    /// upserts into a proper changelog (Flink's ChangelogNormalize).
    pub upsert_key: Option<Vec<usize>>,
}

/// A node of the dataflow.
#[derive(Debug, Clone)]
pub enum Node {
    /// Reads a table's topic (or generator) from the checkpointed offsets.
    Source(SourceNode),
    /// Keeps rows where the predicate is true.
    Filter {
        /// Input node.
        input: Box<Node>,
        /// Boolean expression over the input schema.
        predicate: ExprRef,
    },
    /// Computes expressions over each row.
    Project {
        /// Input node.
        input: Box<Node>,
        /// One expression per output column.
        exprs: Vec<ExprRef>,
        /// Output schema.
        schema: SchemaRef,
    },
    /// A regular (unbounded-state) equi-join of two changelogs, as Flink's regular join.
    Join {
        /// Left input.
        left: Box<Node>,
        /// Right input.
        right: Box<Node>,
        /// Key expressions over the left schema.
        left_keys: Vec<ExprRef>,
        /// Key expressions over the right schema, pairwise equal to `left_keys`.
        right_keys: Vec<ExprRef>,
        /// Extra condition over the joined row (inner joins only).
        filter: Option<ExprRef>,
        /// Emit left rows without a match padded with NULLs (LEFT / FULL joins).
        left_outer: bool,
        /// Emit right rows without a match padded with NULLs (RIGHT / FULL joins).
        right_outer: bool,
        /// Output schema: left columns then right columns.
        schema: SchemaRef,
    },
    /// Grouped aggregation. Without a window it emits an updating changelog (`-U`/`+U`) as
    /// results change; with one it emits each window's final rows once, as Flink's window
    /// aggregation does.
    Aggregate {
        /// Input node.
        input: Box<Node>,
        /// Group-by expressions over the input.
        group_exprs: Vec<ExprRef>,
        /// Aggregate calls.
        aggs: Vec<AggCall>,
        /// Set when the group includes a window TVF's `window_end`.
        window: Option<WindowAgg>,
        /// Output schema: group columns then aggregate columns.
        schema: SchemaRef,
    },
    /// `UNION ALL` of inputs with one schema.
    Union {
        /// Inputs.
        inputs: Vec<Node>,
        /// Output schema.
        schema: SchemaRef,
    },
}

impl Node {
    /// The output schema of the node.
    pub fn schema(&self) -> SchemaRef {
        match self {
            Node::Source(s) => s.schema.clone(),
            Node::Filter { input, .. } => input.schema(),
            Node::Project { schema, .. }
            | Node::Join { schema, .. }
            | Node::Aggregate { schema, .. }
            | Node::Union { schema, .. } => schema.clone(),
        }
    }

    /// True when the node can emit retractions (its output is not append-only).
    pub fn is_updating(&self) -> bool {
        match self {
            Node::Source(s) => s.upsert_key.is_some(),
            Node::Filter { input, .. } | Node::Project { input, .. } => input.is_updating(),
            Node::Join { left, right, left_outer, right_outer, .. } => {
                left.is_updating() || right.is_updating() || *left_outer || *right_outer
            }
            Node::Aggregate { input, window, .. } => window.is_none() || input.is_updating(),
            Node::Union { inputs, .. } => inputs.iter().any(|i| i.is_updating()),
        }
    }

    /// The source nodes below this node, in id order.
    pub fn sources(&self) -> Vec<&SourceNode> {
        let mut out = Vec::new();
        fn walk<'a>(n: &'a Node, out: &mut Vec<&'a SourceNode>) {
            match n {
                Node::Source(s) => out.push(s),
                Node::Filter { input, .. } | Node::Project { input, .. } | Node::Aggregate { input, .. } => {
                    walk(input, out)
                }
                Node::Join { left, right, .. } => {
                    walk(left, out);
                    walk(right, out);
                }
                Node::Union { inputs, .. } => inputs.iter().for_each(|i| walk(i, out)),
            }
        }
        walk(self, &mut out);
        out.sort_by_key(|s| s.id);
        out
    }

    fn fmt_indent(&self, f: &mut fmt::Formatter<'_>, depth: usize) -> fmt::Result {
        let pad = "  ".repeat(depth);
        let list = |e: &[ExprRef]| e.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
        let mode = if self.is_updating() { "changelog" } else { "append-only" };
        match self {
            Node::Source(s) => {
                write!(f, "{pad}Source: table={} [{mode}]", s.table.name)?;
                if let Some(w) = &s.watermark {
                    write!(f, " watermark={w}")?;
                }
                if let Some(k) = &s.upsert_key {
                    write!(f, " upsert_key={k:?}")?;
                }
                writeln!(f)
            }
            Node::Filter { input, predicate } => {
                writeln!(f, "{pad}Filter: {predicate} [{mode}]")?;
                input.fmt_indent(f, depth + 1)
            }
            Node::Project { input, exprs, .. } => {
                writeln!(f, "{pad}Project: {} [{mode}]", list(exprs))?;
                input.fmt_indent(f, depth + 1)
            }
            Node::Join { left, right, left_keys, right_keys, filter, left_outer, right_outer, .. } => {
                let kind = match (left_outer, right_outer) {
                    (false, false) => "Inner",
                    (true, false) => "Left",
                    (false, true) => "Right",
                    (true, true) => "Full",
                };
                write!(f, "{pad}Join: {kind} on [{}] = [{}]", list(left_keys), list(right_keys))?;
                if let Some(x) = filter {
                    write!(f, " filter={x}")?;
                }
                writeln!(f, " [{mode}]")?;
                left.fmt_indent(f, depth + 1)?;
                right.fmt_indent(f, depth + 1)
            }
            Node::Aggregate { input, group_exprs, aggs, window, .. } => {
                let aggs = aggs
                    .iter()
                    .map(|a| format!("{:?}({})", a.kind, a.arg.as_ref().map(|x| x.to_string()).unwrap_or("*".into())))
                    .collect::<Vec<_>>()
                    .join(", ");
                let name = if window.is_some() { "WindowAggregate (emit on watermark)" } else { "GroupAggregate" };
                writeln!(f, "{pad}{name}: group=[{}] aggs=[{aggs}] [{mode}]", list(group_exprs))?;
                input.fmt_indent(f, depth + 1)
            }
            Node::Union { inputs, .. } => {
                writeln!(f, "{pad}Union [{mode}]")?;
                inputs.iter().try_for_each(|i| i.fmt_indent(f, depth + 1))
            }
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_indent(f, 0)
    }
}

/// A persistent query's plan: the dataflow and the sink it writes.
#[derive(Debug, Clone)]
pub struct DataflowPlan {
    /// The dataflow.
    pub root: Node,
    /// The table written.
    pub sink: TableDef,
    /// One expression per physical column of the sink over the root's output: the casts (and
    /// NULLs for columns the query does not write) that make rows fit the sink.
    pub sink_exprs: Vec<ExprRef>,
    /// The sink's physical schema.
    pub sink_schema: SchemaRef,
    /// How long operators keep state for a key they have not written ([`crate::state_ttl`]);
    /// `None` keeps it forever. Set from the job's options, not by the planner; not part of the
    /// plan's fingerprint, so a job may change it when resumed.
    pub state_ttl: Option<std::time::Duration>,
}

impl fmt::Display for DataflowPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.root.is_updating() { "changelog" } else { "append-only" };
        writeln!(f, "Sink: table={} [{mode}]", self.sink.name)?;
        self.root.fmt_indent(f, 1)
    }
}
