//! Results sent as they are produced: a batch `SELECT` is DataFusion's record-batch stream
//! (`DataFrame::execute_stream`), encoded row by row into `DataRow`s while the client reads
//! them, so the first rows leave before the last are computed and a result is never held
//! whole in memory by the front end (a table's scan may still hold its own rows).
//!
//! The extended protocol's `Execute` is answered here too ([`execute`]): as PostgreSQL does
//! (docs "55.2.3. Extended Query"), an `Execute` with a row limit sends at most that many rows
//! and then `PortalSuspended`, and the next `Execute` of the same portal continues where it
//! stopped; without a limit the rows go out as they come. (pgwire's default `Execute` gathers
//! the rows of each call in memory first.)

use std::fmt::{self, Debug};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::future::Either;
use futures::{stream, Sink, SinkExt, StreamExt, TryStreamExt};
use pgwire::api::portal::{Format, Portal, PortalExecutionState};
use pgwire::api::query::{send_execution_response, ExtendedQueryHandler};
use pgwire::api::results::{QueryResponse, Response, Tag};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionHandle, PgWireConnectionState, DEFAULT_NAME};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::extendedquery::{Execute, PortalSuspended};
use pgwire::messages::response::{EmptyQueryResponse, TransactionStatus};
use pgwire::messages::PgWireBackendMessage;
use sqlparser::ast::Query;

use crate::engine::Output;
use crate::errors::{SqlError, SqlResult};
use crate::session::Session;

/// Rows read as the client takes them: the result of a batch `SELECT`, or of a `FETCH` from a
/// cursor (see [`crate::cursors`]).
pub struct RowStream {
    /// The columns as the client sees them (PostgreSQL's names, see [`crate::pg_names`]).
    pub schema: SchemaRef,
    /// The batches, each under `schema`.
    pub batches: SendableRecordBatchStream,
    /// The command tag's verb: `SELECT`, or `FETCH` (the row count is added when the rows end).
    pub tag: &'static str,
    /// Rows of a `BINARY` cursor: binary columns when fetched with the simple protocol
    /// (with the extended protocol, Bind's formats win, as in PostgreSQL).
    pub binary: bool,
}

impl Debug for RowStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowStream").field("schema", &self.schema).field("tag", &self.tag).field("binary", &self.binary).finish()
    }
}

impl RowStream {
    /// Rows already in memory, as a stream.
    pub fn from_batches(schema: SchemaRef, batches: Vec<RecordBatch>, tag: &'static str) -> RowStream {
        let s = RecordBatchStreamAdapter::new(schema.clone(), stream::iter(batches.into_iter().map(Ok)));
        RowStream { schema, batches: Box::pin(s), tag, binary: false }
    }

    /// Reads every remaining batch.
    ///
    /// Errors: the first error of the stream (a failed scan, a bad cast, ...).
    pub async fn collect(self) -> SqlResult<Vec<RecordBatch>> {
        Ok(self.batches.try_collect::<Vec<_>>().await?)
    }
}

/// Starts `df` (the plan of the batch query `query`) and returns its rows as a stream, under
/// the names PostgreSQL gives `query`'s columns.
///
/// Errors: the physical plan cannot be made.
pub async fn select(df: DataFrame, query: &Query) -> SqlResult<Output> {
    let schema = crate::pg_names::rename(&Arc::new(df.schema().as_arrow().clone()), query);
    let batches = df.execute_stream().await?;
    Ok(Output::Stream(renamed(schema, batches)))
}

/// `batches` under `schema` (same columns, PostgreSQL's names).
fn renamed(schema: SchemaRef, batches: SendableRecordBatchStream) -> RowStream {
    let s = schema.clone();
    let mapped = batches.map(move |b| b.and_then(|b| RecordBatch::try_new(s.clone(), b.columns().to_vec()).map_err(DataFusionError::from)));
    RowStream { schema: schema.clone(), batches: Box::pin(RecordBatchStreamAdapter::new(schema, mapped)), tag: "SELECT", binary: false }
}

/// The result format of `out` when it is answered with the simple protocol: text, or binary
/// for the rows of a `BINARY` cursor (PostgreSQL docs, DECLARE: "BINARY causes the cursor to
/// return data in binary rather than in text format").
pub fn simple_format(out: &Output) -> Format {
    match out {
        Output::Stream(r) if r.binary => Format::UnifiedBinary,
        _ => Format::UnifiedText,
    }
}

/// For a statement of a simple query that other statements follow: its rows are read before
/// the next statement runs (so `SELECT ...; INSERT ...` shows the table before the insert).
/// A failure while reading them fails the statement (and aborts an open block, see
/// [`Session::failed`]).
pub async fn settle(result: SqlResult<Output>, session: &Session, more_follow: bool) -> SqlResult<Output> {
    match result {
        Ok(Output::Stream(rows)) if more_follow => {
            let (schema, tag, binary) = (rows.schema.clone(), rows.tag, rows.binary);
            match rows.collect().await {
                Ok(batches) => Ok(Output::Stream(RowStream { binary, ..RowStream::from_batches(schema, batches, tag) })),
                Err(e) => {
                    session.failed();
                    Err(e)
                }
            }
        }
        other => other,
    }
}

/// A SQL error as pgwire's error, its SQLSTATE kept.
pub(crate) fn pg_error(e: SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".to_owned(), e.code.to_owned(), e.message)))
}

/// `rows` as pgwire's response in `format`: each batch is encoded when the client is ready for
/// it (text floats and timestamps as PostgreSQL spells them, see [`crate::pgtext`]). An error
/// while producing the rows ends the result with that error and marks the statement failed in
/// `session`.
///
/// Errors: a column type with no PostgreSQL type.
pub fn into_response(rows: RowStream, format: &Format, session: Arc<Session>) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(arrow_schema_to_pg_fields(&rows.schema, format, None)?);
    let f = fields.clone();
    let data = rows.batches.flat_map(move |b| {
        let batch = b.map_err(SqlError::from).and_then(|b| crate::pgtext::postgres_text(b, &f).map_err(SqlError::from));
        let encoded: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send> = match batch {
            Ok(b) => encode_recordbatch(f.clone(), b),
            Err(e) => {
                session.failed();
                Box::new(std::iter::once(Err(pg_error(e))))
            }
        };
        stream::iter(encoded)
    });
    let mut response = QueryResponse::new(fields, data);
    response.set_command_tag(rows.tag);
    Ok(response)
}

/// Answers an `Execute` as pgwire's default does (running the portal with the handler's
/// `do_query` on its first `Execute`), except that rows are sent as they are produced, at most
/// `max_rows` of them when it is not 0, followed by `PortalSuspended` when the portal has more
/// (a later `Execute` continues it) or `CommandComplete` when it has ended. A cancel request
/// stops the statement while it runs or sends rows (57014).
///
/// Errors: the portal does not exist, the statement fails, or its rows fail part way (the portal
/// is then finished).
pub async fn execute<H, C>(handler: &H, client: &mut C, message: Execute) -> PgWireResult<()>
where
    H: ExtendedQueryHandler + ?Sized,
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore<Statement = H::Statement>,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
        return Err(PgWireError::NotReadyForQuery);
    }
    let name = message.name.as_deref().unwrap_or(DEFAULT_NAME).to_owned();
    let max_rows = message.max_rows.max(0) as usize;
    let portal = match client.portal_store().get_portal(&name) {
        Some(Entry::Value(p)) => p,
        Some(Entry::Empty) => {
            client.feed(PgWireBackendMessage::EmptyQueryResponse(EmptyQueryResponse::new())).await?;
            return Ok(());
        }
        None => return Err(PgWireError::PortalNotFound(name)),
    };
    let cancel = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
        Some(h) => Some(h.start_query().await),
        None => None,
    };
    let mut status = client.transaction_status();
    client.set_state(PgWireConnectionState::QueryInProgress);
    let work = run_portal(handler, client, &portal, max_rows, &mut status);
    let result = match cancel {
        Some(rx) => match futures::future::select(Box::pin(work), rx).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => Err(PgWireError::QueryCanceled),
        },
        None => work.await,
    };
    if result.is_err() {
        // A portal whose rows failed (or were cancelled) part way cannot continue. The
        // connection's state and transaction status are then pgwire's error path's to set.
        let state = portal.state();
        let mut st = state.lock().await;
        if matches!(*st, PortalExecutionState::Suspended(_)) {
            *st = PortalExecutionState::Finished;
        }
        return result;
    }
    if !matches!(client.state(), PgWireConnectionState::CopyInProgress(_)) {
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(status);
    }
    result
}

/// The body of [`execute`]: runs the portal on its first `Execute`, then sends its rows.
async fn run_portal<H, C>(
    handler: &H,
    client: &mut C,
    portal: &Portal<H::Statement>,
    max_rows: usize,
    status: &mut TransactionStatus,
) -> PgWireResult<()>
where
    H: ExtendedQueryHandler + ?Sized,
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore<Statement = H::Statement>,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let started = matches!(*portal.state().lock().await, PortalExecutionState::Initial);
    if started {
        match handler.do_query(client, portal, max_rows).await? {
            Response::Query(q) => portal.start(q).await,
            Response::EmptyQuery => {
                client.feed(PgWireBackendMessage::EmptyQueryResponse(EmptyQueryResponse::new())).await?;
                return Ok(());
            }
            Response::Execution(tag) => return send_execution_response(client, tag).await,
            Response::TransactionStart(tag) => {
                *status = status.to_in_transaction_state();
                return send_execution_response(client, tag).await;
            }
            Response::TransactionEnd(tag) => {
                *status = status.to_idle_state();
                client.portal_store().rm_portal(DEFAULT_NAME);
                return send_execution_response(client, tag).await;
            }
            Response::Error(e) => {
                *status = status.to_error_state();
                client.send(PgWireBackendMessage::ErrorResponse((*e).into())).await?;
                return Ok(());
            }
            Response::CopyIn(c) => {
                client.set_state(PgWireConnectionState::CopyInProgress(true));
                return pgwire::api::copy::send_copy_in_response(client, c).await;
            }
            Response::CopyOut(c) => return pgwire::api::copy::send_copy_out_response(client, c).await,
            Response::CopyBoth(c) => {
                client.set_state(PgWireConnectionState::CopyInProgress(true));
                return pgwire::api::copy::send_copy_both_response(client, c).await;
            }
        }
    }
    send_rows(client, &portal.state(), max_rows).await
}

/// Sends up to `max_rows` (0: all) of a started portal's rows, then `PortalSuspended` or
/// `CommandComplete`.
async fn send_rows<C>(client: &mut C, state: &Arc<tokio::sync::Mutex<PortalExecutionState>>, max_rows: usize) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let mut st = state.lock().await;
    let PortalExecutionState::Suspended(response) = &mut *st else {
        // Executed to its end before: no more rows.
        client.send(PgWireBackendMessage::CommandComplete(Tag::new("SELECT").with_rows(0).into())).await?;
        return Ok(());
    };
    let tag = response.command_tag().to_owned();
    let rows = response.data_rows();
    let mut sent = 0;
    let mut ended = false;
    while max_rows == 0 || sent < max_rows {
        match rows.next().await {
            Some(row) => {
                client.feed(PgWireBackendMessage::DataRow(row?)).await?;
                sent += 1;
            }
            None => {
                ended = true;
                break;
            }
        }
    }
    if ended {
        *st = PortalExecutionState::Finished;
        client.send(PgWireBackendMessage::CommandComplete(Tag::new(&tag).with_rows(sent).into())).await?;
    } else {
        client.send(PgWireBackendMessage::PortalSuspended(PortalSuspended::new())).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(schema: &SchemaRef, v: Vec<i64>) -> RecordBatch {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap()
    }

    #[tokio::test]
    async fn rows_are_renamed_and_encoded_batch_by_batch() {
        let df_schema = Arc::new(Schema::new(vec![Field::new("Int64(1)", DataType::Int64, false)]));
        let pg_schema = Arc::new(Schema::new(vec![Field::new("?column?", DataType::Int64, false)]));
        let input = RowStream::from_batches(df_schema.clone(), vec![batch(&df_schema, vec![1, 2]), batch(&df_schema, vec![3])], "SELECT");
        let rows = renamed(pg_schema, input.batches);
        assert_eq!(rows.schema.field(0).name(), "?column?");
        let response = into_response(rows, &Format::UnifiedText, Arc::new(Session::default())).unwrap();
        assert_eq!(response.row_schema()[0].name(), "?column?");
        assert_eq!(response.command_tag(), "SELECT");
        let n = response.data_rows.count().await;
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn a_failing_stream_fails_the_statement() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let s = RecordBatchStreamAdapter::new(
            schema.clone(),
            stream::iter(vec![Ok(batch(&schema, vec![1])), Err(DataFusionError::Execution("boom".into()))]),
        );
        let rows = RowStream { schema, batches: Box::pin(s), tag: "SELECT", binary: false };
        let session = Arc::new(Session::default());
        let e = settle(Ok(Output::Stream(rows)), &session, true).await.unwrap_err();
        assert_eq!(e.code, "22000");
        assert!(e.message.contains("boom"), "{}", e.message);
    }
}
