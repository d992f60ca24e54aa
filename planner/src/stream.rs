//! Translates a DataFusion `LogicalPlan` into Sluice's streaming dataflow
//! ([`sluice_catalog::dataflow`]).
//!
//! Semantics follow Flink SQL: a regular join keeps both inputs in state and emits changes as
//! either side changes; a `GROUP BY` without a window emits an updating changelog; a `GROUP BY`
//! over a window TVF's `window_start`/`window_end` emits each window once, when the watermark
//! passes `window_end`. What cannot run incrementally (ORDER BY, LIMIT, OVER windows, joins
//! without an equality) is refused with a message naming the part and the reason.

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan};
use datafusion::physical_expr::expressions::{cast, Column as PhysColumn, Literal};
use datafusion::prelude::SessionContext;
use sluice_catalog::dataflow::{AggCall, AggKind, DataflowPlan, ExprRef, Node, SourceNode, WindowAgg};
use sluice_catalog::TableDef;

use crate::error::{PlanError, Result};
use crate::functions::WINDOW_FN;

/// What a column of an intermediate result is, as far as windows are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Plain,
    WindowStart,
    WindowEnd,
}

/// Looks up table definitions by name.
pub trait TableLookup {
    /// The table named `name`, if it exists.
    fn table(&self, name: &str) -> Option<TableDef>;
}

/// Plans `query` (already optimized for streaming by [`crate::streaming_logical_plan`]) as a
/// dataflow writing into `sink`. `columns` is the optional `INSERT INTO t (a, b)` column list.
///
/// Errors: [`PlanError::Unsupported`] for parts that cannot run in streaming mode,
/// [`PlanError::DatatypeMismatch`] when the query's columns do not fit the sink.
pub fn plan_dataflow(
    ctx: &SessionContext,
    tables: &dyn TableLookup,
    query: &LogicalPlan,
    sink: &TableDef,
    columns: &[String],
) -> Result<DataflowPlan> {
    let mut p = StreamPlanner { ctx, tables, next_source: 0 };
    let (root, _) = p.plan(query)?;
    let root_schema = root.schema();
    let sink_schema = sink.physical_schema()?;
    let mut sink_exprs: Vec<ExprRef> = Vec::new();
    let physical: Vec<_> = sink.columns.iter().filter(|c| c.computed.is_none()).collect();
    if columns.is_empty() && root_schema.fields().len() != physical.len() {
        return Err(PlanError::DatatypeMismatch(format!(
            "the query produces {} columns but table \"{}\" has {} writable columns",
            root_schema.fields().len(),
            sink.name,
            physical.len()
        )));
    }
    if !columns.is_empty() && columns.len() != root_schema.fields().len() {
        return Err(PlanError::DatatypeMismatch(format!(
            "INSERT names {} columns but the query produces {}",
            columns.len(),
            root_schema.fields().len()
        )));
    }
    for c in &columns[..] {
        if !physical.iter().any(|p| &p.name == c) {
            return Err(PlanError::UnknownColumn(format!("column \"{c}\" of table \"{}\" does not exist", sink.name)));
        }
    }
    for (i, field) in sink_schema.fields().iter().enumerate() {
        let source_idx = if columns.is_empty() { Some(i) } else { columns.iter().position(|c| c == field.name()) };
        let e: ExprRef = match source_idx {
            Some(j) => {
                let col: ExprRef = Arc::new(PhysColumn::new(root_schema.field(j).name(), j));
                if root_schema.field(j).data_type() == field.data_type() {
                    col
                } else {
                    cast(col, &root_schema, field.data_type().clone()).map_err(|_| {
                        PlanError::DatatypeMismatch(format!(
                            "column \"{}\" is of type {} but the query gives {}",
                            field.name(),
                            field.data_type(),
                            root_schema.field(j).data_type()
                        ))
                    })?
                }
            }
            None => Arc::new(Literal::new(ScalarValue::try_from(field.data_type())?)),
        };
        sink_exprs.push(e);
    }
    Ok(DataflowPlan { root, sink: sink.clone(), sink_exprs, sink_schema, state_ttl: None })
}

/// Translates logical plans into dataflow nodes; see [`plan_dataflow`].
pub struct StreamPlanner<'a> {
    ctx: &'a SessionContext,
    tables: &'a dyn TableLookup,
    next_source: usize,
}

fn unsupported<T>(what: &str) -> Result<T> {
    Err(PlanError::Unsupported(format!("{what} is not supported in a persistent (streaming) query")))
}

/// The schema with every field nullable: streaming operators build rows whose nullability
/// the logical plan may state more strictly (outer-join padding, retractions).
fn relaxed(schema: &Schema) -> arrow::datatypes::SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    ))
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

impl<'a> StreamPlanner<'a> {
    /// A planner resolving tables through `tables`.
    pub fn new(ctx: &'a SessionContext, tables: &'a dyn TableLookup) -> Self {
        StreamPlanner { ctx, tables, next_source: 0 }
    }

    /// The dataflow of a query without a sink (for `EXPLAIN SELECT`).
    pub fn plan_node(&mut self, plan: &LogicalPlan) -> Result<Node> {
        Ok(self.plan(plan)?.0)
    }

    fn phys(&self, e: &Expr, schema: &DFSchema) -> Result<ExprRef> {
        Ok(self.ctx.state().create_physical_expr(e.clone(), schema)?)
    }

    fn tag_of(&self, e: &Expr, input: &DFSchema, tags: &[Tag]) -> Tag {
        match unalias(e) {
            Expr::Column(c) => input.index_of_column(c).ok().map(|i| tags[i]).unwrap_or(Tag::Plain),
            Expr::ScalarFunction(f) if f.func.name() == WINDOW_FN => match f.args.get(4) {
                Some(Expr::Literal(ScalarValue::Int64(Some(0)), _)) => Tag::WindowStart,
                Some(Expr::Literal(ScalarValue::Int64(Some(1)), _)) => Tag::WindowEnd,
                _ => Tag::Plain,
            },
            _ => Tag::Plain,
        }
    }

    fn plan(&mut self, plan: &LogicalPlan) -> Result<(Node, Vec<Tag>)> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let name = scan.table_name.table();
                let table = self.tables.table(name).ok_or_else(|| PlanError::UnknownTable(name.to_string()))?;
                let source = self.source(table)?;
                let width = source.schema().fields().len();
                let node = match &scan.projection {
                    Some(proj) if proj.len() != width || proj.iter().enumerate().any(|(i, p)| i != *p) => {
                        let full = source.schema();
                        let exprs: Vec<ExprRef> =
                            proj.iter().map(|&i| Arc::new(PhysColumn::new(full.field(i).name(), i)) as ExprRef).collect();
                        Node::Project { input: Box::new(source), exprs, schema: relaxed(&full.project(proj)?) }
                    }
                    _ => source,
                };
                // A scan's own filters (`scan.filters`) are left out: Sluice's tables accept
                // filters only as `Inexact` (a batch scan uses key filters to read rows by key),
                // so DataFusion keeps every one of them in a Filter above the scan as well.
                let n = scan.projected_schema.fields().len();
                Ok((node, vec![Tag::Plain; n]))
            }
            LogicalPlan::Projection(p) => {
                let (input, tags) = self.plan(&p.input)?;
                let in_schema = p.input.schema();
                let exprs = p.expr.iter().map(|e| self.phys(e, in_schema)).collect::<Result<Vec<_>>>()?;
                let out_tags = p.expr.iter().map(|e| self.tag_of(e, in_schema, &tags)).collect();
                let schema = relaxed(p.schema.as_arrow());
                Ok((Node::Project { input: Box::new(input), exprs, schema }, out_tags))
            }
            LogicalPlan::Filter(f) => {
                let (input, tags) = self.plan(&f.input)?;
                let predicate = self.phys(&f.predicate, f.input.schema())?;
                Ok((Node::Filter { input: Box::new(input), predicate }, tags))
            }
            LogicalPlan::SubqueryAlias(a) => self.plan(&a.input),
            LogicalPlan::Join(j) => {
                let (left_outer, right_outer) = match j.join_type {
                    JoinType::Inner => (false, false),
                    JoinType::Left => (true, false),
                    JoinType::Right => (false, true),
                    JoinType::Full => (true, true),
                    other => return unsupported(&format!("a {other} join")),
                };
                if j.on.is_empty() {
                    return unsupported("a join without an equality condition between its inputs (a cross join)");
                }
                if j.filter.is_some() && (left_outer || right_outer) {
                    return unsupported("an outer join with a non-equality condition");
                }
                let (left, mut ltags) = self.plan(&j.left)?;
                let (right, rtags) = self.plan(&j.right)?;
                let left_keys = j.on.iter().map(|(l, _)| self.phys(l, j.left.schema())).collect::<Result<Vec<_>>>()?;
                let right_keys = j.on.iter().map(|(_, r)| self.phys(r, j.right.schema())).collect::<Result<Vec<_>>>()?;
                let filter = j.filter.as_ref().map(|f| self.phys(f, &j.schema)).transpose()?;
                ltags.extend(rtags);
                let schema = relaxed(j.schema.as_arrow());
                Ok((
                    Node::Join {
                        left: Box::new(left),
                        right: Box::new(right),
                        left_keys,
                        right_keys,
                        filter,
                        left_outer,
                        right_outer,
                        schema,
                    },
                    ltags,
                ))
            }
            LogicalPlan::Aggregate(a) => {
                let (input, tags) = self.plan(&a.input)?;
                let in_schema = a.input.schema();
                let mut group_exprs = Vec::new();
                let mut out_tags = Vec::new();
                let mut window = None;
                for (i, g) in a.group_expr.iter().enumerate() {
                    if matches!(g, Expr::GroupingSet(_)) {
                        return unsupported("GROUPING SETS / CUBE / ROLLUP");
                    }
                    group_exprs.push(self.phys(g, in_schema)?);
                    let tag = self.tag_of(g, in_schema, &tags);
                    if tag == Tag::WindowEnd && window.is_none() {
                        window = Some(WindowAgg { end_group_index: i });
                    }
                    out_tags.push(tag);
                }
                if window.is_none() && out_tags.contains(&Tag::WindowStart) {
                    return Err(PlanError::Unsupported(
                        "a window aggregation must group by window_end as well as window_start (as Flink requires)".into(),
                    ));
                }
                let mut aggs = Vec::new();
                for e in &a.aggr_expr {
                    let Expr::AggregateFunction(f) = unalias(e) else {
                        return unsupported(&format!("the aggregate expression {e}"));
                    };
                    if f.params.filter.is_some() || !f.params.order_by.is_empty() {
                        return unsupported("an aggregate with FILTER or ORDER BY");
                    }
                    let name = f.func.name().to_lowercase();
                    let kind = match (name.as_str(), f.params.distinct) {
                        ("count", false) => AggKind::Count,
                        ("count", true) => AggKind::CountDistinct,
                        ("sum", false) => AggKind::Sum,
                        ("avg" | "mean", false) => AggKind::Avg,
                        ("min", _) => AggKind::Min,
                        ("max", _) => AggKind::Max,
                        (n, true) => return unsupported(&format!("{}(DISTINCT ...)", n.to_uppercase())),
                        (n, false) => {
                            return Err(PlanError::Unsupported(format!(
                                "the aggregate function {} is not supported in a persistent query (supported: COUNT, SUM, AVG, MIN, MAX)",
                                n.to_uppercase()
                            )))
                        }
                    };
                    let arg = match f.params.args.first() {
                        None => None,
                        Some(x) => Some(self.phys(x, in_schema)?),
                    };
                    aggs.push(AggCall { kind, arg });
                    out_tags.push(Tag::Plain);
                }
                if window.is_some() {
                    if input.is_updating() {
                        return unsupported("a window aggregation over an updating input (one that retracts rows)");
                    }
                    if input.sources().iter().all(|s| s.watermark.is_none()) {
                        return Err(PlanError::Unsupported(
                            "a window aggregation needs a watermark on its time column: declare WATERMARK FOR <column> AS ... on the source table".into(),
                        ));
                    }
                }
                let schema = relaxed(a.schema.as_arrow());
                Ok((Node::Aggregate { input: Box::new(input), group_exprs, aggs, window, schema }, out_tags))
            }
            LogicalPlan::Union(u) => {
                let mut inputs = Vec::new();
                let mut tags = Vec::new();
                for (i, inp) in u.inputs.iter().enumerate() {
                    let (n, t) = self.plan(inp)?;
                    if i == 0 {
                        tags = t;
                    }
                    inputs.push(n);
                }
                let schema = relaxed(u.schema.as_arrow());
                Ok((Node::Union { inputs, schema }, tags))
            }
            LogicalPlan::Sort(_) => unsupported("ORDER BY"),
            LogicalPlan::Limit(_) => unsupported("LIMIT"),
            LogicalPlan::Window(_) => unsupported("an OVER window"),
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
                unsupported("a query without a table (VALUES); use INSERT INTO ... VALUES for one-off rows")
            }
            other => unsupported(&format!("the plan node {}", other.display())),
        }
    }

    fn source(&mut self, table: TableDef) -> Result<Node> {
        if table.connector() == Some("blackhole") {
            return Err(PlanError::Unsupported(format!(
                "table \"{}\" uses the blackhole connector, which can only be written",
                table.name
            )));
        }
        let id = self.next_source;
        self.next_source += 1;
        let physical_schema = table.physical_schema()?;
        let full = table.schema()?;
        let computed = if table.has_computed_columns() {
            let df = DFSchema::try_from(physical_schema.as_ref().clone())?;
            let mut exprs = Vec::new();
            for (i, c) in table.columns.iter().enumerate() {
                let e = match &c.computed {
                    Some(sql) => self.ctx.parse_sql_expr(sql, &df)?,
                    None => Expr::Column(datafusion::common::Column::from_name(&c.name)),
                };
                let p = self.phys(&e, &df)?;
                let want = full.field(i).data_type();
                exprs.push(if p.data_type(&physical_schema)? == *want { p } else { cast(p, &physical_schema, want.clone())? });
            }
            Some(exprs)
        } else {
            None
        };
        let watermark = match &table.watermark {
            Some(w) => {
                let df = DFSchema::try_from(full.as_ref().clone())?;
                let e = self.ctx.parse_sql_expr(&w.expr, &df)?;
                let p = self.phys(&e, &df)?;
                match p.data_type(&full)? {
                    DataType::Timestamp(_, _) => Some(p),
                    other => {
                        return Err(PlanError::DatatypeMismatch(format!(
                            "the watermark of \"{}\" must be a TIMESTAMP expression, found {other}",
                            table.name
                        )))
                    }
                }
            }
            None => None,
        };
        let upsert_key = if table.is_upsert() {
            Some(table.primary_key.iter().map(|k| full.index_of(k)).collect::<Result<Vec<_>, _>>()?)
        } else {
            None
        };
        Ok(Node::Source(SourceNode { id, table, physical_schema, schema: full, computed, watermark, upsert_key }))
    }
}

