//! `pg_catalog`: PostgreSQL's system catalogs over Sluice's real tables, so that psql's `\dt`,
//! `\d`, `\d t`, `\dn`, `\l`, `\dv` and clients' catalog queries plan and run.
//!
//! Each catalog table is a [`CatalogTable`] whose rows are built at scan time from the engine's
//! tables (as [`crate::provider::JobsTable`] is), registered in the schema `pg_catalog` of the
//! DataFusion catalog `sluice`. Table OIDs are stable: derived from a hash of the name (see
//! [`rel_oid`]), so that joins across catalogs in one query, and across queries, agree.
//! `functions` and `session_functions` hold the functions the catalog queries call, `rewrite`
//! turns PostgreSQL syntax DataFusion does not plan into syntax it does, `information_schema`
//! is the SQL-standard view of the same tables, `settings` is `pg_settings`.
//!
//! The functions and catalogs that show the session (`current_setting`, `pg_settings`,
//! `current_user`) read the session the statement runs for: the handler runs each statement
//! inside [`in_session`].

mod functions;
mod globals;
pub mod information_schema;
mod relations;
pub mod rewrite;
mod session_functions;
mod settings;
mod srf;
mod types;

use std::sync::{Arc, Weak};

use arrow::array::{new_empty_array, ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, Session};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;
use sluice_catalog::TableDef;

use crate::engine::Engine;
use crate::errors::{SqlError, SqlResult};
use crate::pg_params::SessionParams;
use crate::session::Session as ClientSession;

tokio::task_local! {
    /// The session of the statement being planned or run (see [`in_session`]).
    static SESSION: Arc<ClientSession>;
}

/// Runs `f` (a statement's planning and execution) with `session` as the session the catalog
/// functions and `pg_settings` read.
pub async fn in_session<F: std::future::Future>(session: Arc<ClientSession>, f: F) -> F::Output {
    SESSION.scope(session, f).await
}

/// Runs `f` on the parameters of the current statement's session; outside [`in_session`] (a
/// statement run by the engine itself, a Describe) on a fresh session's, the defaults.
pub fn with_session_params<R>(f: impl FnOnce(&mut SessionParams) -> R) -> R {
    match SESSION.try_with(|s| s.clone()) {
        Ok(s) => s.with_params(f),
        Err(_) => f(&mut SessionParams::default()),
    }
}

/// OID of the schema `pg_catalog`, as in PostgreSQL.
pub const PG_CATALOG_OID: i64 = 11;
/// OID of the schema `public`, as in PostgreSQL.
pub const PUBLIC_OID: i64 = 2200;
/// OID of the schema `information_schema` (PostgreSQL assigns it at initdb; any fixed value).
pub const INFORMATION_SCHEMA_OID: i64 = 13000;
/// OID of the one role, `sluice` (PostgreSQL's bootstrap superuser has OID 10).
pub const SLUICE_ROLE_OID: i64 = 10;
/// OID of `pg_database_owner`, the owner of `public` in PostgreSQL 15.
pub const DATABASE_OWNER_OID: i64 = 6171;
/// The one database's name and OID.
pub const DATABASE: (&str, i64) = ("sluice", 16384);

/// The catalog tables a bare name (`pg_class`) resolves to, as PostgreSQL searches
/// `pg_catalog` before `public`.
pub const TABLES: &[&str] = &[
    "pg_namespace", "pg_class", "pg_attribute", "pg_type", "pg_index", "pg_constraint", "pg_attrdef",
    "pg_description", "pg_inherits", "pg_tables", "pg_views", "pg_matviews", "pg_database", "pg_roles",
    "pg_user", "pg_am", "pg_collation", "pg_settings", "pg_proc", "pg_range", "pg_enum", "pg_tablespace",
    "pg_extension", "pg_opclass", "pg_stat_activity", "pg_stat_user_tables", "sluice_index_keys",
];

/// A stable OID >= 16384 for a name in a kind of object (`rel`, `idx`, `con`): FNV-1a of
/// `kind:name`. Distinct names may collide (about one pair in 2^31); Sluice accepts that.
fn oid_of(kind: &str, name: &str) -> i64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in kind.bytes().chain([b':']).chain(name.bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    16385 + (h as i64 % (i32::MAX as i64 - 16385))
}

/// The OID of table `name` in `pg_class`.
pub fn rel_oid(name: &str) -> i64 {
    oid_of("rel", name)
}

/// The OID of table `name`'s primary-key index (`<name>_pkey`) in `pg_class` and `pg_index`.
pub fn index_oid(name: &str) -> i64 {
    oid_of("idx", name)
}

/// The OID of table `name`'s primary-key constraint in `pg_constraint`.
pub fn constraint_oid(name: &str) -> i64 {
    oid_of("con", name)
}

/// What a catalog is built from: the engine's tables, by name.
pub(crate) struct Snapshot {
    pub tables: Vec<TableDef>,
}

/// Builds a catalog's rows, each in the order of its column spec.
type Build = fn(&Snapshot) -> Vec<Vec<ScalarValue>>;

/// A `pg_catalog` table: a schema and a function that builds its rows from the engine's state
/// at scan time.
pub struct CatalogTable {
    engine: Weak<Engine>,
    schema: SchemaRef,
    build: Build,
}

impl std::fmt::Debug for CatalogTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatalogTable")
    }
}

/// A schema from a compact spec: `name:type` words, types `i8` (Int64, also for OIDs), `i4`
/// (Int32, also for int2), `f4`, `b` (bool), `t` (text, also `"char"` and `name`), `ta` (text[]).
fn spec(spec: &str) -> SchemaRef {
    let fields = spec
        .split_whitespace()
        .map(|w| {
            let (name, ty) = w.split_once(':').expect("name:type");
            let dt = match ty {
                "i8" => DataType::Int64,
                "i4" => DataType::Int32,
                "f4" => DataType::Float32,
                "b" => DataType::Boolean,
                "t" => DataType::Utf8,
                "ta" => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                other => panic!("unknown spec type {other}"),
            };
            Field::new(name, dt, true)
        })
        .collect::<Vec<_>>();
    Arc::new(Schema::new(fields))
}

/// Text.
fn t(s: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(s.into()))
}
/// An OID or int8.
fn i8(v: i64) -> ScalarValue {
    ScalarValue::Int64(Some(v))
}
/// An int4 or int2.
fn i4(v: i32) -> ScalarValue {
    ScalarValue::Int32(Some(v))
}
/// A bool.
fn b(v: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(v))
}
/// NULL (typed by the column when the batch is built).
fn null() -> ScalarValue {
    ScalarValue::Null
}

/// One batch of `rows` in `schema`; a NULL takes its column's type.
fn to_batch(schema: &SchemaRef, rows: Vec<Vec<ScalarValue>>) -> DfResult<RecordBatch> {
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        if rows.is_empty() {
            cols.push(new_empty_array(f.data_type()));
            continue;
        }
        let typed_null = ScalarValue::try_from(f.data_type())?;
        let values = rows.iter().map(|r| {
            let v = r.get(i).cloned().unwrap_or(ScalarValue::Null);
            if v.is_null() { typed_null.clone() } else { v }
        });
        cols.push(ScalarValue::iter_to_array(values)?);
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

#[async_trait]
impl TableProvider for CatalogTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let engine = self.engine.upgrade().ok_or_else(|| DataFusionError::Execution("server is shutting down".into()))?;
        let snap = Snapshot { tables: engine.tables.read().unwrap().values().map(|e| e.def.clone()).collect() };
        let batch = to_batch(&self.schema, (self.build)(&snap))?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema.clone(), projection.cloned())?)
    }
}

/// Registers the schema `pg_catalog` with every catalog table, and the catalog functions, in
/// the engine's DataFusion context.
///
/// Errors: the context has no catalog `sluice` (it always has, see
/// `sluice_planner::session_context`).
pub fn register(engine: &Arc<Engine>) -> SqlResult<()> {
    let catalog = engine.ctx.catalog("sluice").ok_or_else(|| SqlError::new("XX000", "no catalog sluice"))?;
    let schema = Arc::new(MemorySchemaProvider::new());
    let tables: Vec<(&str, &str, Build)> =
        relations::tables().into_iter().chain(globals::tables()).chain(types::tables()).chain(settings::tables()).collect();
    for (name, cols, build) in tables {
        let table = CatalogTable { engine: Arc::downgrade(engine), schema: spec(cols), build };
        schema.register_table(name.to_string(), Arc::new(table))?;
    }
    catalog.register_schema("pg_catalog", schema)?;
    let info = Arc::new(MemorySchemaProvider::new());
    for (name, cols, build) in information_schema::tables() {
        let table = CatalogTable { engine: Arc::downgrade(engine), schema: spec(cols), build };
        info.register_table(name.to_string(), Arc::new(table))?;
    }
    catalog.register_schema(information_schema::SCHEMA, info)?;
    for f in functions::udfs(Arc::downgrade(engine)).into_iter().chain(session_functions::udfs(Arc::downgrade(engine))) {
        engine.ctx.register_udf(f);
    }
    Ok(())
}
