//! Statement dispatch: one method per statement kind, over the catalog, the topic log, the job
//! runtime and a DataFusion context for batch queries.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, ParamValues, TableReference};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use sluice_catalog::{ConnectorDef, JobDef, JobState, Op, Store, TableDef};
use sluice_connectors::kafka::ErrorMode;
use sluice_connectors::options::{External, TableConnector};
use sluice_connectors::{EmbeddedLog, KafkaLog, TopicLog};

/// Meta key naming the topic backend a data directory was made with (`embedded` or `kafka`).
const BACKEND_KEY: &[u8] = b"topic-backend";
use sluice_executor::{JobRuntime, MaterializedTable};
use sluice_planner::stream::TableLookup;
use sluice_planner::{parse_statement, resolve_table, streaming_logical_plan, SluiceStatement};
use sqlparser::ast::{
    AssignmentTarget, CopySource, CopyTarget, FromTable, ObjectName, ObjectNamePart, Query, SetExpr,
    Statement, TableFactor,
};

use crate::connect::ConnectorRuntime;
use crate::copy::CopyFormat;
use crate::errors::{SqlError, SqlResult};
use crate::provider::{LogHandle, SluiceTable, TableEntry};
use crate::session::Session;
use crate::sink_nulls::logs_into;

/// What a statement returns to the client.
#[derive(Debug)]
pub enum Output {
    /// Rows.
    Rows {
        /// Their schema.
        schema: SchemaRef,
        /// The rows.
        batches: Vec<RecordBatch>,
    },
    /// A command tag (`CREATE TABLE`, `INSERT 0 3`, ...) and an optional notice.
    Command {
        /// The tag.
        tag: String,
        /// Sent as a NOTICE before the tag.
        notice: Option<String>,
    },
    /// `COPY FROM STDIN`: the server now expects copy data for this target.
    CopyIn(CopyInTarget),
    /// `COPY ... TO STDOUT`: rows to send as copy data ([`crate::copy_out`]).
    CopyOut(crate::copy_out::CopyOut),
    /// Rows sent as they are produced: a batch `SELECT`, a cursor's `FETCH` ([`crate::streaming`]).
    Stream(crate::streaming::RowStream),
    /// `SUBSCRIBE`: rows sent as they commit ([`crate::subscribe`]).
    Live(Box<crate::subscribe::LiveResult>),
}

/// The target of a `COPY FROM STDIN` in progress.
#[derive(Debug, Clone)]
pub struct CopyInTarget {
    /// The table.
    pub table: String,
    /// The columns the data holds, in order.
    pub columns: Vec<String>,
    /// The Arrow fields of `columns`, in the same order.
    pub schema: SchemaRef,
    /// The data format.
    pub format: CopyFormat,
}

/// How long `FLUSH` waits at most.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// The engine behind every session.
pub struct Engine {
    pub(crate) store: Store,
    pub(crate) log: Arc<dyn TopicLog>,
    pub(crate) runtime: Arc<JobRuntime>,
    pub(crate) ctx: SessionContext,
    pub(crate) tables: RwLock<BTreeMap<String, Arc<TableEntry>>>,
    pub(crate) jobs: RwLock<BTreeMap<String, JobDef>>,
    /// Connectors created with `CREATE SOURCE|SINK CONNECTOR`.
    pub(crate) connector_defs: RwLock<BTreeMap<String, ConnectorDef>>,
    /// The running connector tasks (tables with an outside connector, and connectors).
    pub(crate) connectors: Arc<ConnectorRuntime>,
    /// `--kafka-bootstrap`: the default bootstrap servers of Kafka tables.
    pub(crate) kafka_bootstrap: Option<String>,
    /// Serializes catalog changes (CREATE / DROP / job start) against each other.
    pub(crate) ddl: tokio::sync::Mutex<()>,
    /// Serializes writes per table, so a write's rows stay together.
    pub(crate) writes: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

pub(crate) struct Lookup<'a>(pub(crate) &'a BTreeMap<String, Arc<TableEntry>>);

impl TableLookup for Lookup<'_> {
    fn table(&self, name: &str) -> Option<TableDef> {
        self.0.get(name).map(|e| e.def.clone())
    }
}

/// The table name an `ObjectName` refers to: its last part, lower-cased unless quoted.
pub fn table_name(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(id)) => {
            if id.quote_style.is_some() {
                id.value.clone()
            } else {
                id.value.to_lowercase()
            }
        }
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

pub(crate) fn ident_name(id: &sqlparser::ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

pub(crate) fn text_schema(cols: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(cols.iter().map(|c| Field::new(*c, DataType::Utf8, true)).collect::<Vec<_>>()))
}

pub(crate) fn new_job_id() -> String {
    use rand::Rng;
    let mut r = rand::rng();
    format!("{:016x}{:016x}", r.random::<u64>(), r.random::<u64>())
}

/// True when the query reads a table (then `INSERT INTO ... SELECT` is a persistent query).
pub(crate) fn reads_tables(q: &Query) -> bool {
    fn set_expr(s: &SetExpr) -> bool {
        match s {
            SetExpr::Select(sel) => !sel.from.is_empty(),
            SetExpr::Query(q) => reads_tables(q),
            SetExpr::SetOperation { left, right, .. } => set_expr(left) || set_expr(right),
            SetExpr::Values(_) => false,
            _ => true,
        }
    }
    set_expr(&q.body)
}

impl Engine {
    /// Opens the data directory: the store, the topic log, the catalog; restarts the jobs that
    /// were running, each from its last checkpoint.
    pub async fn open(data_dir: &Path) -> SqlResult<Arc<Engine>> {
        Engine::open_with(data_dir, None, sluice_connectors::kafka_log::DEFAULT_TOPIC_PREFIX).await
    }

    /// [`Engine::open`] with a Kafka cluster: when `kafka_bootstrap` is given, every table's
    /// topic is the Kafka topic `<topic_prefix><table>` ([`KafkaLog`]) and the cluster is the
    /// default one of Kafka tables. Also starts the connector tasks of tables and connectors.
    ///
    /// Errors: a data directory made with the other topic backend (its topics would be missing),
    /// or Kafka not reachable.
    pub async fn open_with(data_dir: &Path, kafka_bootstrap: Option<String>, topic_prefix: &str) -> SqlResult<Arc<Engine>> {
        let store = Store::open(data_dir)?;
        let backend = if kafka_bootstrap.is_some() { "kafka" } else { "embedded" };
        match store.get_meta(BACKEND_KEY)? {
            Some(v) if v != backend.as_bytes() => {
                return Err(SqlError::new(
                    "55000",
                    format!(
                        "data directory {} keeps its topics in the {} backend; start {} --kafka-bootstrap, or use another --data-dir",
                        data_dir.display(),
                        String::from_utf8_lossy(&v),
                        if backend == "kafka" { "without" } else { "with" }
                    ),
                ))
            }
            Some(_) => {}
            None if backend == "kafka" && !store.tables()?.is_empty() => {
                return Err(SqlError::new(
                    "55000",
                    format!("data directory {} keeps its topics in the embedded log; start without --kafka-bootstrap, or use another --data-dir", data_dir.display()),
                ))
            }
            None => store.put_meta(BACKEND_KEY, backend.as_bytes())?,
        }
        let log: Arc<dyn TopicLog> = match &kafka_bootstrap {
            Some(bootstrap) => {
                let (store, bootstrap, prefix) = (store.clone(), bootstrap.clone(), topic_prefix.to_string());
                let log = tokio::task::spawn_blocking(move || KafkaLog::open(store, &bootstrap, &prefix))
                    .await
                    .map_err(|e| SqlError::new("XX000", e.to_string()))??;
                Arc::new(log)
            }
            None => Arc::new(EmbeddedLog::open(store.clone())?),
        };
        let runtime = JobRuntime::new(store.clone(), log.clone());
        let ctx = sluice_planner::session_context();
        crate::pg_functions::register(&ctx);
        let engine = Arc::new(Engine {
            ctx,
            store: store.clone(),
            log,
            runtime,
            tables: RwLock::new(BTreeMap::new()),
            jobs: RwLock::new(BTreeMap::new()),
            connector_defs: RwLock::new(BTreeMap::new()),
            connectors: Arc::new(ConnectorRuntime::default()),
            kafka_bootstrap,
            ddl: tokio::sync::Mutex::new(()),
            writes: Mutex::new(HashMap::new()),
        });
        engine.ctx.register_table(
            TableReference::bare("sluice_jobs"),
            Arc::new(crate::provider::JobsTable { engine: Arc::downgrade(&engine), schema: jobs_schema() }),
        )?;
        crate::pg_catalog::register(&engine)?;
        for def in store.tables()? {
            let (def, connector) = resolve_table(&engine.ctx, def)?;
            engine.register(def, connector)?;
        }
        for job in store.jobs()? {
            let id = job.id.clone();
            let running = job.state == JobState::Running;
            engine.jobs.write().unwrap().insert(id.clone(), job.clone());
            if running {
                if let Err(e) = engine.start_job(&job).await {
                    tracing::error!(job = %id, error = %e.message, "could not resume job");
                    let mut j = job.clone();
                    j.state = JobState::Failed;
                    j.error = Some(e.message.clone());
                    store.put_job(&j)?;
                    engine.jobs.write().unwrap().insert(id, j);
                }
            }
        }
        // Connector tasks start once jobs are known: a Kafka table written by a job is a sink.
        let entries: Vec<Arc<TableEntry>> = engine.tables.read().unwrap().values().cloned().collect();
        for e in entries {
            if let Err(err) = engine.start_table_connector(&e.def, &e.connector) {
                tracing::error!(table = %e.def.name, error = %err.message, "could not start the table's connector");
            }
        }
        for c in store.connectors()? {
            engine.connector_defs.write().unwrap().insert(c.name.clone(), c.clone());
            if let Err(err) = engine.start_connector(&c) {
                tracing::error!(connector = %c.name, error = %err.message, "could not start connector");
            }
        }
        Ok(engine)
    }

    /// Stops every connector task, then every job, each committing a last checkpoint.
    pub fn shutdown(&self) {
        self.connectors.stop_all();
        self.runtime.stop_all();
    }

    fn register(&self, def: TableDef, connector: TableConnector) -> SqlResult<Arc<TableEntry>> {
        let schema = def.schema()?;
        let computed = if def.has_computed_columns() {
            let physical = def.physical_schema()?;
            let df = DFSchema::try_from(physical.as_ref().clone())?;
            let mut exprs = Vec::new();
            for c in &def.columns {
                let e = match &c.computed {
                    Some(sql) => self.ctx.parse_sql_expr(sql, &df)?,
                    None => datafusion::logical_expr::col(datafusion::common::Column::from_name(&c.name)),
                };
                exprs.push(self.ctx.state().create_physical_expr(e, &df)?);
            }
            Some(exprs)
        } else {
            None
        };
        let materialized = match connector {
            TableConnector::Topic { .. } => Some(MaterializedTable::try_new(&def, self.log.partitions(def.topic())?)?),
            _ => None,
        };
        let entry = Arc::new(TableEntry { def, connector, schema, computed, materialized: Mutex::new(materialized) });
        let provider = SluiceTable { entry: entry.clone(), log: Arc::new(LogHandle(self.log.clone())) };
        self.ctx.register_table(TableReference::bare(entry.def.name.clone()), Arc::new(provider))?;
        self.tables.write().unwrap().insert(entry.def.name.clone(), entry.clone());
        Ok(entry)
    }

    pub(crate) fn table(&self, name: &str) -> SqlResult<Arc<TableEntry>> {
        self.tables.read().unwrap().get(name).cloned().ok_or_else(|| SqlError::unknown_table(name))
    }

    /// Runs one statement outside any client session (its session options are the defaults).
    /// `params` are the bound values of `$n` placeholders.
    pub async fn execute(self: &Arc<Self>, sql: &str, params: Option<ParamValues>) -> SqlResult<Output> {
        self.execute_for(&Session::default(), sql, params).await
    }

    /// Runs one statement for a client's session: `SET 'key' = 'value'` and `RESET` change
    /// its options, and a persistent query takes the ones it needs from it.
    pub async fn execute_for(self: &Arc<Self>, session: &Session, sql: &str, params: Option<ParamValues>) -> SqlResult<Output> {
        // Role statements (which may hold a password) never reach the planner; every other
        // statement is checked against the session's privileges (`crate::auth`).
        if let Some(out) = crate::auth::role_statement(self, session, sql)? {
            return Ok(out);
        }
        // A large INSERT ... VALUES is parsed in pieces (see `values::split_values`).
        let large = sql.len() >= crate::values::LARGE_STATEMENT_BYTES;
        if large && params.as_ref().is_none_or(|p| matches!(p, ParamValues::List(l) if l.is_empty())) {
            if let Some(pieces) = crate::values::split_values(sql) {
                if let (Some(first), Some(_)) = (pieces.first(), session.role.get()) {
                    crate::auth::authorize(self, session, &parse_statement(first)?)?;
                }
                return self.insert_pieces(&pieces).await;
            }
        }
        if let Some(c) = crate::cursors::parse(sql)? {
            if let crate::cursors::CursorStatement::Declare { query, .. } = &c {
                crate::auth::authorize(self, session, &parse_statement(query)?)?;
            }
            return crate::cursors::execute(self, session, c, params).await;
        }
        let stmt = parse_statement(sql)?;
        crate::auth::authorize(self, session, &stmt)?;
        match stmt {
            SluiceStatement::CreateTable(ct) => self.create_table(ct.def, ct.if_not_exists).await,
            SluiceStatement::ShowTables => self.show_tables(),
            SluiceStatement::ShowJobs => self.show_jobs(),
            SluiceStatement::ShowCreateTable(n) => {
                let t = self.table(&n)?;
                one_row(&["create_table"], vec![sluice_catalog::redact_text(&t.def.create_sql, &t.def.options)])
            }
            SluiceStatement::CreateConnector { source, name, if_not_exists, options } => {
                self.create_connector(source, name, if_not_exists, options).await
            }
            SluiceStatement::ShowConnectors => self.show_connectors(),
            SluiceStatement::DescribeConnector(n) => self.describe_connector(&n),
            SluiceStatement::DropConnector { name, if_exists } => self.drop_connector(&name, if_exists).await,
            SluiceStatement::Describe(n) => self.describe_table(&n),
            SluiceStatement::StopJob(id) => self.stop_job(&id).await,
            SluiceStatement::ResumeJob { id, options } => self.resume_job(&id, &options).await,
            SluiceStatement::SetOption { key, value } => self.set_option(session, &key, &value),
            SluiceStatement::ResetOption(key) => {
                session.reset_option(key.as_deref());
                Ok(Output::Command { tag: "RESET".into(), notice: None })
            }
            SluiceStatement::Flush => {
                // A job that could not even resume (its state refused, its plan invalid) is a
                // failed job too: FLUSH names it until it is stopped or resumed.
                let failed: Vec<String> = self
                    .jobs
                    .read()
                    .unwrap()
                    .values()
                    .filter(|j| j.state == JobState::Failed)
                    .map(|j| format!("job {} (into {}) failed: {}", j.id, j.sink, j.error.clone().unwrap_or_default()))
                    .collect();
                if !failed.is_empty() {
                    return Err(SqlError::new("55000", format!("FLUSH: {}", failed.join("; "))));
                }
                let rt = self.runtime.clone();
                tokio::task::spawn_blocking(move || rt.flush(FLUSH_TIMEOUT))
                    .await
                    .map_err(|e| SqlError::new("XX000", e.to_string()))??;
                Ok(Output::Command { tag: "FLUSH".into(), notice: None })
            }
            SluiceStatement::DropTable { name, if_exists } => self.drop_table(&name, if_exists).await,
            SluiceStatement::Explain(inner) => self.explain(&inner).await,
            SluiceStatement::Subscribe(sub) => self.subscribe(sub).await,
            SluiceStatement::Sql(stmt) => self.execute_sql(*stmt, sql, params, session).await,
        }
    }

    async fn execute_sql(self: &Arc<Self>, stmt: Statement, sql: &str, params: Option<ParamValues>, session: &Session) -> SqlResult<Output> {
        match stmt {
            Statement::Query(ref q) => {
                let q = q.clone();
                let plan = self.df_plan(stmt, params).await?;
                let df = self.ctx.execute_logical_plan(plan).await?;
                crate::streaming::select(df, &q).await
            }
            Statement::Insert(ins) => self.insert(ins, sql, params, session).await,
            Statement::Update(u) => {
                let name = match &u.table.relation {
                    TableFactor::Table { name, .. } => table_name(name),
                    other => return Err(SqlError::unsupported(format!("UPDATE of {other}"))),
                };
                let entry = self.upsert_table(&name, "UPDATE")?;
                let mut assigned: HashMap<String, String> = HashMap::new();
                for a in &u.assignments {
                    match &a.target {
                        AssignmentTarget::ColumnName(c) => {
                            assigned.insert(table_name(c), a.value.to_string());
                        }
                        AssignmentTarget::Tuple(_) => return Err(SqlError::unsupported("UPDATE of a column tuple")),
                    }
                }
                for k in assigned.keys() {
                    if entry.def.primary_key.contains(k) {
                        return Err(SqlError::unsupported(format!("UPDATE of primary key column \"{k}\"")));
                    }
                    if entry.def.column_index(k).is_none() {
                        return Err(SqlError::new("42703", format!("column \"{k}\" of table \"{name}\" does not exist")));
                    }
                }
                let cols = entry
                    .def
                    .columns
                    .iter()
                    .filter(|c| c.computed.is_none())
                    .map(|c| {
                        let q = quote_ident(&c.name);
                        match assigned.get(&c.name) {
                            Some(v) => format!("{v} AS {q}"),
                            None => q,
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let filter = u.selection.as_ref().map(|s| format!(" WHERE {s}")).unwrap_or_default();
                let select = format!("SELECT {cols} FROM {}{filter}", quote_ident(&name));
                let n = self.write_query_rows(&entry, &select, params, Op::UpdateAfter).await?;
                Ok(Output::Command { tag: format!("UPDATE {n}"), notice: None })
            }
            Statement::Delete(d) => {
                let tables = match &d.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                let name = match tables.first().map(|t| &t.relation) {
                    Some(TableFactor::Table { name, .. }) => table_name(name),
                    _ => return Err(SqlError::unsupported("DELETE needs one table")),
                };
                let entry = self.upsert_table(&name, "DELETE")?;
                let cols = entry
                    .def
                    .columns
                    .iter()
                    .filter(|c| c.computed.is_none())
                    .map(|c| quote_ident(&c.name))
                    .collect::<Vec<_>>()
                    .join(", ");
                let filter = d.selection.as_ref().map(|s| format!(" WHERE {s}")).unwrap_or_default();
                let select = format!("SELECT {cols} FROM {}{filter}", quote_ident(&name));
                let n = self.write_query_rows(&entry, &select, params, Op::Delete).await?;
                Ok(Output::Command { tag: format!("DELETE {n}"), notice: None })
            }
            Statement::Copy { source, to, target, options, legacy_options, .. } => {
                if to {
                    return self.copy_out(source, target, &options, &legacy_options, params).await;
                }
                if !matches!(target, CopyTarget::Stdin) {
                    return Err(SqlError::unsupported("COPY FROM a file; use COPY ... FROM STDIN (psql's \\copy)"));
                }
                let CopySource::Table { table_name: tn, columns } = source else {
                    return Err(SqlError::unsupported("COPY of a query"));
                };
                let name = table_name(&tn);
                let entry = self.table(&name)?;
                if !matches!(entry.connector, TableConnector::Topic { .. }) {
                    return Err(SqlError::unsupported(format!("COPY into a {} table", entry.def.connector().unwrap_or("?"))));
                }
                let physical: Vec<String> =
                    entry.def.columns.iter().filter(|c| c.computed.is_none()).map(|c| c.name.clone()).collect();
                let columns: Vec<String> = if columns.is_empty() { physical.clone() } else { columns.iter().map(ident_name).collect() };
                for c in &columns {
                    if !physical.contains(c) {
                        return Err(SqlError::new("42703", format!("column \"{c}\" of table \"{name}\" does not exist")));
                    }
                }
                let format = CopyFormat::from_options(&options, &legacy_options)?;
                let fields = entry.def.physical_schema()?;
                let fields: Vec<Field> =
                    columns.iter().map(|c| fields.field_with_name(c).cloned()).collect::<Result<_, _>>()?;
                Ok(Output::CopyIn(CopyInTarget { table: name, columns, schema: Arc::new(Schema::new(fields)), format }))
            }
            Statement::Set(set) => match crate::pg_params::option_assignment(&set) {
                // Flink's `SET key = value` without quotes is Sluice's `SET 'key' = 'value'`.
                Some((key, value)) => self.set_option(session, &key, &value),
                None => crate::pg_params::execute_set(session, &set),
            },
            Statement::Reset(r) => crate::pg_params::execute_reset(session, &r.reset),
            Statement::StartTransaction { .. } => Ok(Output::Command { tag: "BEGIN".into(), notice: None }),
            // Prepared statements live in the protocol's portal store; `DEALLOCATE [ALL]`, which
            // SQLAlchemy and pgJDBC send on reset, has nothing to release here.
            Statement::Deallocate { .. } => Ok(Output::Command { tag: "DEALLOCATE".into(), notice: None }),
            Statement::Commit { .. } => Ok(Output::Command { tag: "COMMIT".into(), notice: None }),
            Statement::Rollback { .. } => Ok(Output::Command { tag: "ROLLBACK".into(), notice: None }),
            // Drivers open savepoints around statements (psycopg's nested transactions);
            // Sluice's statements are each atomic, so a savepoint marks nothing.
            Statement::Savepoint { .. } => Ok(Output::Command { tag: "SAVEPOINT".into(), notice: None }),
            Statement::ReleaseSavepoint { .. } => Ok(Output::Command { tag: "RELEASE".into(), notice: None }),
            Statement::ShowVariable { variable } => {
                let name = variable.iter().map(|i| i.value.clone()).collect::<Vec<_>>().join(" ");
                crate::pg_params::show(session, &name)
            }
            other => Err(SqlError::unsupported(format!(
                "the statement {} is not supported",
                other.to_string().split_whitespace().take(2).collect::<Vec<_>>().join(" ")
            ))),
        }
    }

    pub(crate) async fn df_plan(&self, stmt: Statement, params: Option<ParamValues>) -> SqlResult<LogicalPlan> {
        let stmt = crate::pg_catalog::rewrite::rewrite(stmt);
        let plan = self.ctx.state().statement_to_plan(DfStatement::Statement(Box::new(stmt))).await?;
        Ok(match params {
            Some(p) => plan.with_param_values(p)?,
            None => plan,
        })
    }

    /// Plans a statement without running it: the parameter types and the row schema (None when
    /// it returns no rows), for the extended protocol's Describe.
    pub async fn describe(&self, sql: &str) -> SqlResult<(Vec<Option<DataType>>, Option<SchemaRef>)> {
        if crate::auth::roles::is_role_statement(sql) {
            return Ok((vec![], None));
        }
        let stmt = parse_statement(sql)?;
        let fixed = |cols: &[&str]| Ok((vec![], Some(text_schema(cols))));
        match stmt {
            SluiceStatement::ShowTables => fixed(&["table_name"]),
            SluiceStatement::ShowJobs => Ok((vec![], Some(jobs_schema()))),
            SluiceStatement::ShowCreateTable(_) => fixed(&["create_table"]),
            SluiceStatement::Describe(_) => Ok((vec![], Some(describe_schema()))),
            SluiceStatement::Explain(_) => fixed(&["plan_type", "plan"]),
            SluiceStatement::Subscribe(sub) => Ok((vec![], Some(self.subscription_schema(&sub).await?))),
            SluiceStatement::Sql(s) => match *s {
                Statement::Query(ref q) => {
                    let q = q.clone();
                    let plan = self.df_plan(*s, None).await?;
                    let schema = crate::pg_names::rename(&Arc::new(plan.schema().as_arrow().clone()), &q);
                    let mut types = param_types(&plan)?;
                    crate::params::cast_types(&Statement::Query(q), &mut types);
                    Ok((types, Some(schema)))
                }
                Statement::Insert(ref ins) if ins.source.as_ref().map(|q| !reads_tables(q)).unwrap_or(false) => {
                    let stmt = (*s).clone();
                    let plan = self.df_plan(*s, None).await?;
                    let mut types = param_types(&plan)?;
                    crate::params::cast_types(&stmt, &mut types);
                    Ok((types, None))
                }
                Statement::ShowVariable { ref variable } => {
                    let name = variable.iter().map(|i| i.value.clone()).collect::<Vec<_>>().join(" ");
                    Ok((vec![], Some(text_schema(&[&crate::pg_params::canonical_name(&name)]))))
                }
                Statement::Update(_) | Statement::Delete(_) => Ok((placeholder_count_types(sql), None)),
                _ => Ok((vec![], None)),
            },
            _ => Ok((vec![], None)),
        }
    }

    async fn create_table(self: &Arc<Self>, def: TableDef, if_not_exists: bool) -> SqlResult<Output> {
        let _g = self.ddl.lock().await;
        if self.tables.read().unwrap().contains_key(&def.name) {
            if if_not_exists {
                return Ok(Output::Command { tag: "CREATE TABLE".into(), notice: None });
            }
            return Err(SqlError::new("42P07", format!("table \"{}\" already exists", def.name)));
        }
        self.create_table_locked(def).await?;
        Ok(Output::Command { tag: "CREATE TABLE".into(), notice: None })
    }

    /// Creates a table (the caller holds the DDL lock), with its dead-letter table when its
    /// connector sends bad messages there, and starts its connector task.
    pub(crate) async fn create_table_locked(self: &Arc<Self>, def: TableDef) -> SqlResult<()> {
        if self.tables.read().unwrap().contains_key(&def.name) {
            return Err(SqlError::new("42P07", format!("table \"{}\" already exists", def.name)));
        }
        let (def, connector) = resolve_table(&self.ctx, def)?;
        if let TableConnector::Topic { external: Some(ext), .. } = &connector {
            match ext {
                External::Kafka(k) => {
                    k.bootstrap(self.kafka_bootstrap.as_deref())?;
                    sluice_connectors::format::RecordDecoder::new(k.format.clone(), def.physical_schema()?)?;
                    if let Some(c) = k.key_columns(&def.primary_key).iter().find(|c| def.column_index(c).is_none()) {
                        return Err(SqlError::new("42703", format!("key field \"{c}\" is not a column of \"{}\"", def.name)));
                    }
                    if k.error_mode == ErrorMode::Log {
                        Box::pin(self.ensure_dead_letter_table(&def.name)).await?;
                    }
                }
                External::PostgresCdc(_) if def.primary_key.is_empty() => {
                    return Err(SqlError::new(
                        "42P10",
                        format!("a 'postgres-cdc' table needs a PRIMARY KEY (\"{}\" has none), as in Flink CDC", def.name),
                    ));
                }
                _ => {}
            }
        }
        if let TableConnector::Topic { partitions, .. } = &connector {
            // On the Kafka backend this waits for Kafka to create the topic.
            blocking(|| self.log.create_topic(def.topic(), *partitions))?;
        }
        if let Err(e) = self.store.put_table(&def) {
            let _ = blocking(|| self.log.delete_topic(def.topic()));
            return Err(e.into());
        }
        let entry = self.register(def, connector)?;
        self.start_table_connector(&entry.def, &entry.connector)?;
        Ok(())
    }

    async fn drop_table(self: &Arc<Self>, name: &str, if_exists: bool) -> SqlResult<Output> {
        let _g = self.ddl.lock().await;
        let Some(entry) = self.tables.read().unwrap().get(name).cloned() else {
            if if_exists {
                return Ok(Output::Command { tag: "DROP TABLE".into(), notice: None });
            }
            return Err(SqlError::unknown_table(name));
        };
        for job in self.jobs.read().unwrap().values() {
            let running = self.runtime.status(&job.id).map(|s| s.is_running()).unwrap_or(false);
            if running && (job.sink == name || job.sources.iter().any(|s| s == name) || logs_into(job, name)) {
                return Err(SqlError::new(
                    "2BP01",
                    format!(
                        "cannot drop table \"{name}\" because running job {} {} it; STOP JOB '{}' first",
                        job.id,
                        if job.sink == name { "writes" } else { "reads" },
                        job.id
                    ),
                ));
            }
        }
        if let Some(c) = self.connector_defs.read().unwrap().values().find(|c| c.tables.iter().any(|t| t == name)) {
            return Err(SqlError::new(
                "2BP01",
                format!("cannot drop table \"{name}\" because connector \"{}\" uses it; DROP CONNECTOR {} first", c.name, c.name),
            ));
        }
        // The stopped or failed jobs that read or write the table keep checkpoints that point
        // into its topic: once it is gone (and perhaps created again, with its offsets from 0),
        // none of them may be restored. Marked first, so a crash part way fails closed.
        for job in self.jobs.read().unwrap().values() {
            let role = if job.sink == name {
                "writes"
            } else if job.sources.iter().any(|s| s == name) {
                "reads"
            } else {
                continue;
            };
            let what = if role == "reads" { "a table it reads changed" } else { "the table it writes changed" };
            self.runtime.invalidate(&job.id, &format!("table \"{name}\" it {role} was dropped after its last checkpoint ({what})"))?;
        }
        let rt = self.connectors.clone();
        let key = name.to_string();
        tokio::task::spawn_blocking(move || rt.stop_owner(&key)).await.map_err(|e| SqlError::new("XX000", e.to_string()))?;
        let mut notice = None;
        if let TableConnector::Topic { external: Some(External::PostgresCdc(o)), .. } = &entry.connector {
            notice = Some(self.drop_slot(name, o).await);
        }
        self.forget_positions(name)?;
        self.ctx.deregister_table(TableReference::bare(name.to_string()))?;
        self.tables.write().unwrap().remove(name);
        self.store.delete_table(name)?;
        if matches!(entry.connector, TableConnector::Topic { .. }) {
            // On the Kafka backend this waits for Kafka to delete the topic.
            blocking(|| self.log.delete_topic(entry.def.topic()))?;
        }
        Ok(Output::Command { tag: "DROP TABLE".into(), notice })
    }

    fn describe_table(&self, name: &str) -> SqlResult<Output> {
        let t = self.table(name)?;
        let mut names = Vec::new();
        let mut types = Vec::new();
        let mut nulls = Vec::new();
        let mut keys = Vec::new();
        let mut extras = Vec::new();
        let mut wms = Vec::new();
        for c in &t.def.columns {
            names.push(c.name.clone());
            types.push(c.sql_type.clone());
            nulls.push(c.nullable);
            keys.push(t.def.primary_key.contains(&c.name).then(|| format!("PRI({})", t.def.primary_key.join(", "))));
            extras.push(c.computed.as_ref().map(|e| format!("AS {e}")));
            wms.push(t.def.watermark.as_ref().filter(|w| w.column == c.name).map(|w| w.expr.clone()));
        }
        let schema = describe_schema();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(types)),
            Arc::new(BooleanArray::from(nulls)),
            Arc::new(StringArray::from(keys)),
            Arc::new(StringArray::from(extras)),
            Arc::new(StringArray::from(wms)),
        ];
        rows_output(schema, cols)
    }

    async fn explain(&self, inner: &str) -> SqlResult<Output> {
        let stmt = match parse_statement(inner)? {
            SluiceStatement::Sql(s) => *s,
            _ => return Err(SqlError::unsupported("EXPLAIN of this statement")),
        };
        let mut rows = Vec::new();
        match stmt {
            Statement::Insert(ins) if ins.source.as_ref().map(|q| reads_tables(q)).unwrap_or(false) => {
                let plan = self.plan_job(&ins).await?;
                rows.push(("streaming_plan".to_string(), plan.to_string().trim_end().to_string()));
            }
            Statement::Query(q) => {
                let plan = self.df_plan(Statement::Query(q), None).await?;
                let streaming = streaming_logical_plan(&self.ctx, plan.clone())?;
                let tables = self.tables.read().unwrap().clone();
                let text = {
                    let lookup = Lookup(&tables);
                    let mut p = sluice_planner::stream::StreamPlanner::new(&self.ctx, &lookup);
                    match p.plan_node(&streaming) {
                        Ok(node) => node.to_string().trim_end().to_string(),
                        Err(e) => format!("not runnable as a persistent query: {e}"),
                    }
                };
                rows.push(("streaming_plan".to_string(), text));
                let optimized = self.ctx.state().optimize(&plan)?;
                rows.push(("batch_plan".to_string(), optimized.display_indent().to_string()));
            }
            _ => return Err(SqlError::unsupported("EXPLAIN of this statement; EXPLAIN a SELECT or INSERT INTO ... SELECT")),
        }
        // One row per plan line, so psql and sqllogictest show the tree line by line.
        let rows: Vec<(String, String)> = rows
            .into_iter()
            .flat_map(|(t, text)| text.lines().map(|l| (t.clone(), l.to_string())).collect::<Vec<_>>())
            .collect();
        let schema = text_schema(&["plan_type", "plan"]);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>())),
            ],
        )?;
        Ok(Output::Rows { schema, batches: vec![batch] })
    }
}


pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Rows made of `cols` in `schema`, as one batch.
pub(crate) fn rows_output(schema: SchemaRef, cols: Vec<ArrayRef>) -> SqlResult<Output> {
    Ok(Output::Rows { schema: schema.clone(), batches: vec![RecordBatch::try_new(schema, cols)?] })
}

pub(crate) fn one_row(cols: &[&str], values: Vec<String>) -> SqlResult<Output> {
    let arrays: Vec<ArrayRef> = values.into_iter().map(|v| Arc::new(StringArray::from(vec![v])) as ArrayRef).collect();
    rows_output(text_schema(cols), arrays)
}


fn describe_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("null", DataType::Boolean, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("extras", DataType::Utf8, true),
        Field::new("watermark", DataType::Utf8, true),
    ]))
}

/// `$1..$n` types of a plan, in order.
fn param_types(plan: &LogicalPlan) -> SqlResult<Vec<Option<DataType>>> {
    let types = plan.get_parameter_types()?;
    let mut out = vec![None; types.len()];
    for (k, v) in types {
        if let Some(i) = k.trim_start_matches('$').parse::<usize>().ok().filter(|i| *i >= 1 && *i <= out.len()) {
            out[i - 1] = v;
        }
    }
    Ok(out)
}

/// For statements DataFusion does not plan directly: one untyped parameter per `$n`.
fn placeholder_count_types(sql: &str) -> Vec<Option<DataType>> {
    let mut max = 0;
    let b = sql.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'$' {
            let n: String = sql[i + 1..].chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(n) = n.parse::<usize>() {
                max = max.max(n);
            }
        }
    }
    vec![None; max]
}

/// Runs blocking work (an fsync, a wait for Kafka) from an async session: on the daemon's
/// multi-threaded runtime through [`tokio::task::block_in_place`], so the worker's other tasks
/// move to another thread; elsewhere (connector threads, current-thread runtimes) directly.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The columns of `SHOW JOBS` and of the `sluice_jobs` table.
pub fn jobs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("job_id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("sink", DataType::Utf8, false),
        Field::new("rows_in", DataType::UInt64, false),
        Field::new("rows_out", DataType::UInt64, false),
        Field::new("late_rows", DataType::UInt64, false),
        // Output rows with NULL in a NOT NULL column of the sink, dropped or dead-lettered.
        Field::new("null_rows", DataType::UInt64, false),
        Field::new("checkpoints", DataType::UInt64, false),
        // Entries in operator state (join rows, groups), and their bytes in the store, at the
        // last checkpoint; the state TTL ('table.exec.state.ttl', "0 ms" for none).
        Field::new("state_rows", DataType::UInt64, false),
        Field::new("state_bytes", DataType::UInt64, false),
        Field::new("state_ttl", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("query", DataType::Utf8, false),
    ]))
}
