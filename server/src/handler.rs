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
use pgwire::api::auth::noop::NoopStartupHandler;
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
use pgwire::messages::PgWireBackendMessage;

use crate::copy::CopyParser;
use crate::engine::{Engine, Output};
use crate::errors::{SqlError, SqlResult};
use crate::session::{CopyIn, Session};

/// Per-server handler shared by all connections.
pub struct Handler {
    engine: Arc<Engine>,
    parser: Arc<SluiceParser>,
}

impl Handler {
    /// A handler over `engine`.
    pub fn new(engine: Arc<Engine>) -> Arc<Handler> {
        Arc::new(Handler { engine, parser: Arc::new(SluiceParser) })
    }

    /// Runs one statement for `session`: the engine executes it, the session applies the
    /// transaction-block rules to its result.
    async fn run(&self, session: &Session, sql: &str, params: Option<datafusion::common::ParamValues>) -> SqlResult<Output> {
        session.after(self.engine.execute_for(session, sql, params).await?)
    }

    async fn respond<C>(&self, client: &mut C, out: Output, format: &Format) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
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
                Response::Execution(Tag::new(&tag))
            }
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
fn to_pg(e: SqlError) -> PgWireError {
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
        for sql in stmts {
            tracing::debug!(sql = %sluice_connectors::options::redact_sql(&sql), "simple query");
            match self.run(&session, &sql, None).await {
                Ok(o) => {
                    let copy = matches!(o, Output::CopyIn(_));
                    out.push(self.respond(client, o, &Format::UnifiedText).await?);
                    if copy {
                        break;
                    }
                }
                Err(e) => {
                    out.push(error_response(e));
                    break;
                }
            }
        }
        Ok(out)
    }
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

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        stmt: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (types, schema) = self.engine.describe(&stmt.statement).await.map_err(to_pg)?;
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
        _client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (_, schema) = self.engine.describe(&portal.statement.statement).await.map_err(to_pg)?;
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
            let (types, _): (Vec<Option<DataType>>, _) = self.engine.describe(sql).await.map_err(to_pg)?;
            Some(crate::params::bind(portal, &types).map_err(to_pg)?)
        } else {
            None
        };
        match self.run(&Session::of(client), sql, params).await {
            Ok(o) => self.respond(client, o, &portal.result_column_format).await,
            Err(e) => Err(to_pg(e)),
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

impl NoopStartupHandler for Handler {}

/// The handler factory pgwire asks for each connection.
pub struct Handlers(pub Arc<Handler>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.0.clone()
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.0.clone()
    }
}
