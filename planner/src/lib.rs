//! SQL text to statements, catalog changes and streaming dataflow plans.
//!
//! - [`statement`]: classifies a statement: Sluice's own (Flink's `CREATE TABLE`, `SHOW JOBS`,
//!   `STOP JOB`, `FLUSH`, ...) or standard SQL parsed by sqlparser after the window TVF rewrite.
//! - [`ddl`]: Flink `CREATE TABLE` parsing and type mapping.
//! - [`rewrite`]: window TVFs (`TUMBLE`, `HOP`) rewritten to relational SQL.
//! - [`functions`]: the scalar functions Sluice adds to DataFusion.
//! - [`stream`]: a DataFusion `LogicalPlan` translated into a streaming dataflow.
//! - [`subscribe`]: Materialize's `SUBSCRIBE` statement (live results).
//! - [`tokens`]: the token cursor the hand-written parsers share.

pub mod ddl;
pub mod error;
pub mod functions;
pub mod rewrite;
pub mod statement;
pub mod stream;
pub mod subscribe;
pub mod tokens;

use datafusion::common::DFSchema;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_catalog::TableDef;
use sluice_connectors::options::{parse_table_options, TableConnector};

pub use error::{PlanError, Result};
pub use statement::{parse_statement, SluiceStatement};

/// A DataFusion context configured as Sluice needs it: Sluice's functions registered,
/// identifiers normalized as PostgreSQL does, the default catalog named `sluice`.
pub fn session_context() -> SessionContext {
    let config = SessionConfig::new()
        .with_default_catalog_and_schema("sluice", "public")
        .with_information_schema(true)
        .with_target_partitions(2);
    let ctx = SessionContext::new_with_config(config);
    for f in functions::udfs() {
        ctx.register_udf(f);
    }
    ctx
}

/// Prepares a query's logical plan for [`stream::plan_dataflow`]: DataFusion's analyzer (type
/// coercion) and logical optimizer (equi-join keys, filter and projection pushdown, DISTINCT as
/// GROUP BY). The rewrites keep the operators the streaming planner knows; window columns stay
/// recognisable because they are computed by [`functions::WINDOW_FN`].
pub fn streaming_logical_plan(ctx: &SessionContext, plan: LogicalPlan) -> Result<LogicalPlan> {
    Ok(ctx.state().optimize(&plan)?)
}

/// Completes and validates a parsed `CREATE TABLE`: types the computed columns with DataFusion,
/// checks the watermark expression, and validates the `WITH` options of its connector.
///
/// Errors: [`PlanError::InvalidParameter`] for bad options or expressions,
/// [`PlanError::DatatypeMismatch`] for a watermark that is not a timestamp.
pub fn resolve_table(ctx: &SessionContext, mut def: TableDef) -> Result<(TableDef, TableConnector)> {
    let connector = parse_table_options(&def.options)?;
    if let TableConnector::Topic { partitions, .. } = &connector {
        def.partitions = *partitions;
    }
    if def.has_computed_columns() {
        let physical = def.physical_schema()?;
        let df = DFSchema::try_from(physical.as_ref().clone())?;
        for c in def.columns.iter_mut() {
            if let Some(sql) = &c.computed {
                let e = ctx
                    .parse_sql_expr(sql, &df)
                    .map_err(|e| PlanError::InvalidParameter(format!("computed column \"{}\": {e}", c.name)))?;
                let p = ctx.state().create_physical_expr(e, &df)?;
                let dt = p.data_type(&physical)?;
                c.sql_type = ddl::sql_type_name(&dt);
                c.data_type = dt.to_string();
            }
        }
    }
    let full = def.schema()?;
    if let Some(w) = &def.watermark {
        let df = DFSchema::try_from(full.as_ref().clone())?;
        let e = ctx
            .parse_sql_expr(&w.expr, &df)
            .map_err(|e| PlanError::InvalidParameter(format!("watermark expression: {e}")))?;
        let p = ctx.state().create_physical_expr(e, &df)?;
        if !matches!(p.data_type(&full)?, arrow::datatypes::DataType::Timestamp(_, _)) {
            return Err(PlanError::DatatypeMismatch(format!(
                "the watermark expression of \"{}\" must be a TIMESTAMP, found {}",
                def.name,
                p.data_type(&full)?
            )));
        }
    }
    if let TableConnector::Datagen(d) = &connector {
        d.validate(&def.physical_schema()?)?;
    }
    Ok((def, connector))
}
