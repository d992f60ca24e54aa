//! The streaming planner on DataFusion plans of common query shapes.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use sluice_planner::{session_context, streaming_logical_plan};

#[tokio::test]
async fn join_on_equality_has_equi_keys() {
    let ctx = session_context();
    let t = Arc::new(Schema::new(vec![Field::new("user_id", DataType::Int64, true), Field::new("amount", DataType::Float64, true)]));
    let c = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("name", DataType::Utf8, true)]));
    ctx.register_table("tx", Arc::new(MemTable::try_new(t, vec![vec![]]).unwrap())).unwrap();
    ctx.register_table("customers", Arc::new(MemTable::try_new(c, vec![vec![]]).unwrap())).unwrap();
    let plan = ctx
        .state()
        .create_logical_plan("SELECT t.user_id, c.name FROM tx t INNER JOIN customers c ON t.user_id = c.id")
        .await
        .unwrap();
    let plan = streaming_logical_plan(&ctx, plan).unwrap();
    let text = plan.display_indent().to_string();
    assert!(text.contains("Inner Join: t.user_id = c.id"), "{text}");
}
