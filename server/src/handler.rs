//! The pgwire front end: simple and extended query protocols and `COPY FROM STDIN`, kept thin:
//! statements go to the [`Engine`], rows come back as Arrow batches encoded by `arrow-pg` (text
//! columns of floats and timestamps first spelled as PostgreSQL does, see [`crate::pgtext`]),
//! and errors carry their SQLSTATE. Per-connection state (a `BEGIN` block, a `COPY` in
//! progress) is the [`Session`]'s; bound parameters are decoded by [`crate::params`].

use std::fmt::Debug;
use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use futures::{stream, Sink, SinkExt};
use pgwire::api::auth::StartupHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    CopyResponse, DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::data::{NoData, ParameterDescription};
use pgwire::messages::extendedquery::{Describe, Execute, TARGET_TYPE_BYTE_STATEMENT};
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::copy::CopyParser;
use crate::engine::{Engine, Output};
use crate::errors::{SqlError, SqlResult};
use crate::session::{CopyIn, Session};

/// Per-server handler shared by all connections.
pub struct Handler {
    engine: Arc<Engine>,
    parser: Arc<SluiceParser>,
    startup: crate::pg_params::Startup,
    /// Client authentication, before `startup` ([`crate::auth`]).
    auth: Arc<crate::auth::Authenticator>,
    /// The sessions cancel requests can reach ([`crate::cancel`]).
    cancels: crate::cancel::Cancels,
}

impl Handler {
    /// A handler over `engine`, authenticating clients with `auth`.
    pub fn new(engine: Arc<Engine>, auth: Arc<crate::auth::Authenticator>) -> Arc<Handler> {
        Arc::new(Handler { engine, parser: Arc::new(SluiceParser), startup: Default::default(), auth, cancels: Default::default() })
    }

    /// Runs one statement for `session`: the engine executes it, the session applies the
    /// transaction-block rules to its result.
    /// A statement that fails inside a block aborts it (see [`Session::before`]).
    /// A cancel request or `statement_timeout` stops it (see [`crate::cancel`]).
    async fn run(
        &self,
        session: &Arc<Session>,
        sql: &str,
        params: Option<datafusion::common::ParamValues>,
        cancel: &mut crate::cancel::StatementCancel,
    ) -> SqlResult<Output> {
        session.before(sql)?;
        // The session's parameters are what `current_setting` and `pg_settings` show.
        match cancel.run(crate::pg_catalog::in_session(session.clone(), self.engine.execute_for(session, sql, params))).await {
            Ok(o) => session.after(cancel.guard_output(o)),
            Err(e) => {
                session.failed();
                Err(e)
            }
        }
    }

    async fn respond<C>(&self, client: &mut C, out: Output, format: &Format, cancel: &mut crate::cancel::StatementCancel) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // ParameterStatus for the reported parameters a SET changed, as PostgreSQL sends them.
        for (k, v) in Session::of(client).with_params(|p| p.take_pending()) {
            client.send(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(k, v))).await?;
        }
        Ok(match out {
            Output::Rows { schema, batches } => {
                let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, None)?);
                let mut rows = Vec::new();
                for b in batches {
                    let b = crate::pgtext::postgres_text(b, &fields).map_err(|e| PgWireError::ApiError(Box::new(e)))?;
                    rows.extend(encode_recordbatch(fields.clone(), b));
                }
                Response::Query(QueryResponse::new(fields, stream::iter(rows)))
            }
            Output::Command { tag, notice } => {
                if let Some(n) = notice {
                    let info = ErrorInfo::new("NOTICE".to_owned(), "00000".to_owned(), n);
                    client.send(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(info))).await?;
                }
                // pgwire derives ReadyForQuery's transaction status from these.
                match tag.as_str() {
                    "BEGIN" => Response::TransactionStart(Tag::new(&tag)),
                    "COMMIT" | "ROLLBACK" => Response::TransactionEnd(Tag::new(&tag)),
                    _ => Response::Execution(Tag::new(&tag)),
                }
            }
            Output::Live(live) => cancel.run_pg(crate::subscribe::deliver(client, live, format)).await?,
            Output::CopyOut(copy) => crate::copy_out::completion(crate::copy_out::send(client, copy, cancel).await?),
            Output::Stream(rows) => Response::Query(crate::streaming::into_response(rows, format, Session::of(client))?),
            Output::CopyIn(target) => {
                let columns = target.columns.len();
                let parser = CopyParser::new(target.format.clone(), target.schema.clone());
                Session::of(client).start_copy(CopyIn { target, parser, error: None });
                Response::CopyIn(CopyResponse::new(0, columns, stream::empty()))
            }
        })
    }
}

/// A SQL error as pgwire's error (outside the generic handlers, whose bounds make `From`
/// ambiguous).
pub(crate) fn to_pg(e: SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".to_owned(), e.code.to_owned(), e.message)))
}

/// The RowDescription of a statement's rows (none for statements without rows).
fn describe_fields(schema: Option<arrow::datatypes::SchemaRef>, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    match schema {
        Some(s) => arrow_schema_to_pg_fields(&s, format, None),
        None => Ok(vec![]),
    }
}

fn error_response(e: SqlError) -> Response {
    Response::Error(Box::new(ErrorInfo::new("ERROR".to_owned(), e.code.to_owned(), e.message)))
}

#[async_trait]
impl SimpleQueryHandler for Handler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmts = match sluice_planner::tokens::split_statements(query) {
            Ok(s) => s,
            Err(e) => return Ok(vec![error_response(e.into())]),
        };
        let session = Session::of(client);
        let mut out = Vec::new();
        let n = stmts.len();
        for (i, sql) in stmts.into_iter().enumerate() {
            tracing::debug!(sql = %crate::auth::redact_sql(&sql), "simple query");
            let mut cancel = crate::cancel::StatementCancel::begin(client, &session, &sql).await;
            // Rows that later statements follow are read before those run.
            match crate::streaming::settle(self.run(&session, &sql, None, &mut cancel).await, &session, i + 1 < n).await {
                Ok(mut o) => {
                    if let Output::Live(live) = &mut o {
                        live.send_describe = true;
                    }
                    let copy = matches!(o, Output::CopyIn(_));
                    let format = crate::streaming::simple_format(&o);
                    // COPY TO sends its data now: the answers of the statements before it first.
                    let earlier = match o {
                        Output::CopyOut(_) if !out.is_empty() => Some(crate::copy_out::send_earlier(client, &mut out).await?),
                        _ => None,
                    };
                    let r = self.respond(client, o, &format, &mut cancel).await?;
                    out.push(match earlier {
                        Some(status) => crate::copy_out::carry_status(r, status),
                        None => r,
                    });
                    if copy {
                        break;
                    }
                }
                Err(e) => {
                    // pgwire moves an open block's status to E on an error; a failed ROLLBACK
                    // (25000) has ended the block, so the status must be I: answer what came
                    // before here, and the error as this call's error.
                    if session.status() == pgwire::messages::response::TransactionStatus::Idle && block_open(client.transaction_status(), &out) {
                        for r in out.drain(..) {
                            match r {
                                Response::Query(q) => pgwire::api::query::send_query_response(client, q, true).await?,
                                Response::Execution(t) | Response::TransactionStart(t) | Response::TransactionEnd(t) => {
                                    pgwire::api::query::send_execution_response(client, t).await?
                                }
                                Response::Error(e) => client.feed(PgWireBackendMessage::ErrorResponse((*e).into())).await?,
                                _ => {}
                            }
                        }
                        client.set_transaction_status(pgwire::messages::response::TransactionStatus::Idle);
                        return Err(to_pg(e));
                    }
                    out.push(error_response(e));
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// Whether pgwire, starting from `status`, sees a block open after `responses`.
fn block_open(status: pgwire::messages::response::TransactionStatus, responses: &[Response]) -> bool {
    let mut s = status;
    for r in responses {
        s = match r {
            Response::TransactionStart(_) => s.to_in_transaction_state(),
            Response::TransactionEnd(_) => s.to_idle_state(),
            Response::Error(_) => s.to_error_state(),
            _ => s,
        };
    }
    s != pgwire::messages::response::TransactionStatus::Idle
}

/// Keeps the statement text; planning happens at Describe and Execute.
pub struct SluiceParser;

#[async_trait]
impl QueryParser for SluiceParser {
    type Statement = String;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<String>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        Ok(Some(sql.trim().trim_end_matches(';').to_string()))
    }

    fn get_parameter_types(&self, _stmt: &String) -> PgWireResult<Vec<Type>> {
        Ok(vec![])
    }

    fn get_result_schema(&self, _stmt: &String, _format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        Ok(vec![])
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handler {
    type Statement = String;
    type QueryParser = SluiceParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// As pgwire's, except that a statement without rows answers ParameterDescription and
    /// NoData, as PostgreSQL does (pgwire sends an empty RowDescription when it has parameters).
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use pgwire::api::store::PortalStore;
        if crate::cursors::describe_portal(client, &message).await? {
            return Ok(());
        }
        if message.target_type == TARGET_TYPE_BYTE_STATEMENT {
            let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
            if let Some(pgwire::api::store::Entry::Value(stmt)) = client.portal_store().get_statement(name) {
                let r = self.do_describe_statement(client, &stmt).await?;
                if r.fields.is_empty() {
                    let oids = r.parameters.iter().map(|t| t.oid()).collect();
                    client.send(PgWireBackendMessage::ParameterDescription(ParameterDescription::new(oids))).await?;
                    client.send(PgWireBackendMessage::NoData(NoData::new())).await?;
                    return Ok(());
                }
                return pgwire::api::query::send_describe_response(client, &r).await;
            }
        }
        self._on_describe(client, message).await
    }

    /// Sends a portal's rows as they are produced, at most the row limit of the `Execute`,
    /// then `PortalSuspended` until the rows end (see [`crate::streaming::execute`]).
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        crate::streaming::execute(self, client, message).await
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        stmt: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (types, schema) = crate::cursors::describe(&self.engine, &Session::of(client), &stmt.statement).await.map_err(to_pg)?;
        let n = types.len().max(stmt.parameter_types.len());
        let mut params = Vec::with_capacity(n);
        for i in 0..n {
            let given = stmt.parameter_types.get(i).cloned().flatten().filter(|t| *t != Type::UNKNOWN);
            params.push(match (given, types.get(i).cloned().flatten()) {
                (Some(t), _) => t,
                (None, Some(dt)) => into_pg_type(&dt)?,
                (None, None) => Type::TEXT,
            });
        }
        Ok(DescribeStatementResponse::new(params, describe_fields(schema, &Format::UnifiedText)?))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (_, schema) = crate::cursors::describe(&self.engine, &Session::of(client), &portal.statement.statement).await.map_err(to_pg)?;
        Ok(DescribePortalResponse::new(describe_fields(schema, &portal.result_column_format)?))
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Self::Statement>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = &portal.statement.statement;
        let params = if portal.parameter_len() > 0 {
            let (types, _): (Vec<Option<DataType>>, _) = crate::cursors::describe(&self.engine, &Session::of(client), sql).await.map_err(to_pg)?;
            Some(crate::params::bind(portal, &types).map_err(to_pg)?)
        } else {
            None
        };
        let session = Session::of(client);
        let mut cancel = crate::cancel::StatementCancel::begin(client, &session, sql).await;
        match self.run(&session, sql, params, &mut cancel).await {
            Ok(o) => self.respond(client, o, &portal.result_column_format, &mut cancel).await,
            Err(e) => {
                // pgwire's error path reports this status moved to E when a block is open.
                client.set_transaction_status(session.status());
                Err(to_pg(e))
            }
        }
    }
}

#[async_trait]
impl CopyHandler for Handler {
    /// Parses the data as it arrives (see [`CopyParser`]); after an error the rest is dropped
    /// and `CopyDone` reports it.
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Session::of(client).with_copy(|c| {
            if c.error.is_none() {
                if let Err(e) = c.parser.feed(&copy_data.data) {
                    c.error = Some(e);
                }
            }
        });
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = Session::of(client);
        let Some(copy) = session.take_copy() else {
            return Err(to_pg(SqlError::new("08P01", "COPY data without a COPY statement")));
        };
        if let Some(e) = copy.error {
            return Err(to_pg(e));
        }
        let engine = self.engine.clone();
        let n = tokio::task::spawn_blocking(move || {
            let batches = copy.parser.finish()?;
            engine.copy_in(&copy.target, batches)
        })
        .await
        .map_err(|e| to_pg(SqlError::new("XX000", e.to_string())))?
        .map_err(to_pg)?;
        session.copied(n);
        client
            .send(PgWireBackendMessage::CommandComplete(Tag::new(&format!("COPY {n}")).into()))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Session::of(client).take_copy();
        to_pg(SqlError::new("57014", format!("COPY from stdin failed: {}", fail.message)))
    }
}

#[async_trait]
impl StartupHandler for Handler {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.auth.on_startup(client, message, &self.startup).await?;
        self.cancels.register(client);
        Ok(())
    }
}

/// The handler factory pgwire asks for each connection.
pub struct Handlers(pub Arc<Handler>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.0.clone()
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.0.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::new(self.0.cancels.clone())
    }
}
