//! `plan_dataflow` on the query shapes of the seeds: the streaming dataflow it builds (joins
//! with their equi-keys, upsert sources normalized, window aggregates), and what it refuses.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use sluice_catalog::dataflow::{DataflowPlan, Node};
use sluice_catalog::TableDef;
use sluice_planner::stream::{plan_dataflow, TableLookup};
use sluice_planner::{parse_statement, resolve_table, session_context, streaming_logical_plan, PlanError, SluiceStatement};

struct Tables(BTreeMap<String, TableDef>);

impl TableLookup for Tables {
    fn table(&self, name: &str) -> Option<TableDef> {
        self.0.get(name).cloned()
    }
}

/// A context with the tables of `ddl` registered (empty), and their definitions.
fn catalog(ddl: &[&str]) -> (SessionContext, Tables) {
    let ctx = session_context();
    let mut tables = BTreeMap::new();
    for sql in ddl {
        let SluiceStatement::CreateTable(ct) = parse_statement(sql).unwrap() else { panic!("not a CREATE TABLE: {sql}") };
        let (def, _) = resolve_table(&ctx, ct.def).unwrap();
        let schema = def.schema().unwrap();
        ctx.register_table(def.name.as_str(), Arc::new(MemTable::try_new(schema, vec![vec![]]).unwrap())).unwrap();
        tables.insert(def.name.clone(), def);
    }
    (ctx, Tables(tables))
}

/// Plans `INSERT INTO <sink> <query>` as the daemon does.
async fn plan(ctx: &SessionContext, tables: &Tables, sink: &str, query: &str) -> Result<DataflowPlan, PlanError> {
    let SluiceStatement::Sql(stmt) = parse_statement(query)? else { panic!("not a query") };
    let logical = ctx.state().statement_to_plan(DfStatement::Statement(stmt)).await?;
    let logical = streaming_logical_plan(ctx, logical)?;
    plan_dataflow(ctx, tables, &logical, &tables.0[sink], &[])
}

/// Every node of the tree, parents before children.
fn nodes(n: &Node) -> Vec<&Node> {
    let mut out = vec![n];
    match n {
        Node::Source(_) => {}
        Node::Filter { input, .. } | Node::Project { input, .. } | Node::Aggregate { input, .. } => out.extend(nodes(input)),
        Node::Join { left, right, .. } => {
            out.extend(nodes(left));
            out.extend(nodes(right));
        }
        Node::Union { inputs, .. } => inputs.iter().for_each(|i| out.extend(nodes(i))),
    }
    out
}

const TX: &str = "CREATE TABLE tx (user_id BIGINT, amount DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)";
const CUSTOMERS: &str = "CREATE TABLE customers (id BIGINT, name STRING, spend DOUBLE, PRIMARY KEY (id) NOT ENFORCED)";

#[tokio::test]
async fn join_of_a_stream_and_an_upsert_table() {
    let (ctx, tables) = catalog(&[TX, CUSTOMERS, "CREATE TABLE enriched (user_id BIGINT, amount DOUBLE, name STRING)"]);
    let p = plan(&ctx, &tables, "enriched", "SELECT t.user_id, t.amount, c.name FROM tx t JOIN customers c ON t.user_id = c.id").await.unwrap();
    let all = nodes(&p.root);
    let joins: Vec<_> = all.iter().filter(|n| matches!(n, Node::Join { .. })).collect();
    assert_eq!(joins.len(), 1, "{:#?}", p.root);
    let Node::Join { left_keys, right_keys, left_outer, right_outer, .. } = joins[0] else { unreachable!() };
    assert_eq!((left_keys.len(), right_keys.len()), (1, 1));
    assert!(!left_outer && !right_outer);
    let sources = p.root.sources();
    assert_eq!(sources.len(), 2);
    let by_name = |n: &str| sources.iter().find(|s| s.table.name == n).unwrap();
    // The upsert table is normalized into a changelog by its key; the stream is not.
    assert!(by_name("customers").upsert_key.is_some());
    assert!(by_name("tx").upsert_key.is_none());
    assert!(by_name("tx").watermark.is_some());
    assert_eq!(p.sink.name, "enriched");
    assert_eq!(p.sink_schema.fields().len(), 3);
}

#[tokio::test]
async fn tumble_under_group_by_is_a_window_aggregate() {
    let (ctx, tables) = catalog(&[TX, "CREATE TABLE hourly (ws TIMESTAMP(3), we TIMESTAMP(3), user_id BIGINT, total DOUBLE)"]);
    let p = plan(
        &ctx,
        &tables,
        "hourly",
        "SELECT window_start, window_end, user_id, SUM(amount) FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' HOUR)) GROUP BY window_start, window_end, user_id",
    )
    .await
    .unwrap();
    let windowed = nodes(&p.root).into_iter().filter(|n| matches!(n, Node::Aggregate { window: Some(_), .. })).count();
    assert_eq!(windowed, 1, "{:#?}", p.root);
    // A GROUP BY without a window is an updating aggregate instead.
    let (ctx, tables) = catalog(&[TX, "CREATE TABLE totals (user_id BIGINT, total DOUBLE, PRIMARY KEY (user_id) NOT ENFORCED)"]);
    let p = plan(&ctx, &tables, "totals", "SELECT user_id, SUM(amount) FROM tx GROUP BY user_id").await.unwrap();
    assert!(nodes(&p.root).iter().any(|n| matches!(n, Node::Aggregate { window: None, .. })));
    assert!(p.root.is_updating());
}

#[tokio::test]
async fn what_cannot_run_incrementally_is_refused() {
    let (ctx, tables) = catalog(&[TX, "CREATE TABLE out1 (user_id BIGINT, amount DOUBLE)", "CREATE TABLE out2 (name STRING)"]);
    let err = plan(&ctx, &tables, "out1", "SELECT user_id, amount FROM tx ORDER BY amount").await.unwrap_err();
    assert!(matches!(err, PlanError::Unsupported(_)), "{err:?}");
    let err = plan(&ctx, &tables, "out1", "SELECT user_id, amount FROM tx LIMIT 3").await.unwrap_err();
    assert!(matches!(err, PlanError::Unsupported(_)), "{err:?}");
    // Two query columns do not fit a one-column sink.
    let err = plan(&ctx, &tables, "out2", "SELECT user_id, amount FROM tx").await.unwrap_err();
    assert!(matches!(err, PlanError::DatatypeMismatch(_)), "{err:?}");
}
