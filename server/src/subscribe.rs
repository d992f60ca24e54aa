//! `SUBSCRIBE` (Materialize's): live results over the wire.
//!
//! `SUBSCRIBE t` is `SUBSCRIBE (SELECT * FROM t)`. The query is planned as a persistent query
//! and runs as a subscription's dataflow ([`sluice_executor::subscribe`]) from offset 0 of its
//! sources. Before it starts, the sources' end offsets are taken: the epochs up to the one
//! whose positions reach them are folded into the snapshot (a multiset of rows: `+I`/`+U` add
//! a row, `-U`/`-D` take one away), sent as `+I` rows with that epoch. After the snapshot
//! every epoch's changes are sent as they commit, each row with its op. With
//! `SNAPSHOT = false` the folded rows are left out; with `PROGRESS = true` a row whose
//! `progressed` is true (and the rest NULL) follows each epoch, meaning every change up to
//! that epoch was sent, as Materialize's progress rows.
//!
//! Result columns: `op` (text: `+I`, `-U`, `+U`, `-D`), `epoch` (bigint, the commit
//! position), `progressed` (boolean, only with `PROGRESS`), then the query's columns.
//!
//! A plain query sends the rows of each epoch and flushes the socket; it ends when `LIMIT n`
//! rows were sent, when the client cancels (57014), or when the client has gone away (found at
//! the next write: the rows of an epoch, or a `ParameterStatus` sent after a second without
//! changes). Its dataflow stops with it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use futures::{Sink, SinkExt};
use pgwire::api::portal::Format;
use pgwire::api::results::{Response, Tag};
use pgwire::api::ClientInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::RowDescription;
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::PgWireBackendMessage;
use sluice_catalog::dataflow::DataflowPlan;
use sluice_catalog::table::{ColumnDef, TableDef};
use sluice_catalog::{ChangeBatch, Op};
use sluice_connectors::options::{parse_table_options, TableConnector};
use sluice_executor::{EpochOutput, Subscription};
use sluice_planner::stream::plan_dataflow;
use sluice_planner::subscribe::Subscribe;
use sluice_planner::{parse_statement, streaming_logical_plan, SluiceStatement};
use sqlparser::ast::Statement;

use crate::engine::{new_job_id, Engine, Lookup, Output};
use crate::errors::{SqlError, SqlResult};

/// How long a subscription without changes waits before it checks that its client is still
/// connected.
const IDLE_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

/// A subscription being delivered: see the module docs.
pub struct LiveResult {
    /// The result's columns (`op`, `epoch`, [`progressed`], the query's).
    pub schema: SchemaRef,
    /// Set by the simple-query path: send a RowDescription first (the extended protocol sent
    /// it at Describe).
    pub send_describe: bool,
    sub: Subscription,
    /// The query's columns.
    data_schema: SchemaRef,
    /// `Some` until the snapshot is complete: the sources' end offsets it must reach, and the
    /// rows folded so far.
    snapshot: Option<Fold>,
    /// `SNAPSHOT`: send the folded rows.
    send_snapshot: bool,
    progress: bool,
    /// Change rows still to send (`LIMIT`).
    remaining: Option<u64>,
}

impl Debug for LiveResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveResult").field("schema", &self.schema).field("remaining", &self.remaining).finish()
    }
}

struct Fold {
    until: HashMap<(String, u32), u64>,
    conv: RowConverter,
    rows: HashMap<OwnedRow, i64>,
}

impl Engine {
    /// Plans `sub`'s query as a subscription's dataflow: the plan (its sink a stand-in table
    /// with the query's columns) and the result's column names as PostgreSQL would give them.
    ///
    /// Errors: the query does not parse or plan as a persistent query (42601, 42P01, 0A000, ...).
    pub(crate) async fn plan_subscription(&self, sub: &Subscribe) -> SqlResult<(DataflowPlan, SchemaRef)> {
        let sql = sub.query_sql();
        let SluiceStatement::Sql(stmt) = parse_statement(&sql)? else {
            return Err(SqlError::new("42601", "SUBSCRIBE needs a table or a (SELECT ...) query"));
        };
        let Statement::Query(query) = *stmt else {
            return Err(SqlError::new("42601", "SUBSCRIBE needs a table or a (SELECT ...) query"));
        };
        let plan = self.df_plan(Statement::Query(query.clone()), None).await?;
        let plan = streaming_logical_plan(&self.ctx, plan)?;
        let names = crate::pg_names::rename(&Arc::new(plan.schema().as_arrow().clone()), &query);
        let columns = names
            .fields()
            .iter()
            .map(|f| ColumnDef {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: true,
                computed: None,
                sql_type: String::new(),
            })
            .collect();
        let sink = TableDef {
            name: "subscription".into(),
            columns,
            primary_key: vec![],
            watermark: None,
            options: [("connector".to_string(), "blackhole".to_string())].into(),
            create_sql: String::new(),
            partitions: 1,
        };
        let tables = self.tables.read().unwrap().clone();
        let dataflow = plan_dataflow(&self.ctx, &Lookup(&tables), &plan, &sink, &[])?;
        let data_schema = sink.schema()?;
        Ok((dataflow, data_schema))
    }

    /// The result columns of `sub`, for Describe.
    pub(crate) async fn subscription_schema(&self, sub: &Subscribe) -> SqlResult<SchemaRef> {
        let (_, data) = self.plan_subscription(sub).await?;
        Ok(result_schema(&data, sub.progress))
    }

    /// Starts `sub`: see the module docs.
    ///
    /// Errors: as [`Engine::plan_subscription`]; the sources' offsets cannot be read (58030).
    pub(crate) async fn subscribe(&self, sub: Subscribe) -> SqlResult<Output> {
        let (plan, data_schema) = self.plan_subscription(&sub).await?;
        let mut until = HashMap::new();
        for s in plan.root.sources() {
            if let TableConnector::Topic { .. } = parse_table_options(&s.table.options).map_err(|e| SqlError::new("22023", e.to_string()))? {
                let topic = s.table.topic().to_string();
                let log = self.log.clone();
                let t = topic.clone();
                let ends = crate::engine::blocking(move || -> Result<Vec<u64>, sluice_connectors::ConnectorError> {
                    (0..log.partitions(&t)?).map(|p| log.end_offset(&t, p)).collect()
                })
                .map_err(|e| SqlError::new("58030", format!("SUBSCRIBE: cannot read the offsets of {}: {e}", s.table.name)))?;
                for (p, end) in ends.into_iter().enumerate() {
                    if end > 0 {
                        until.insert((topic.clone(), p as u32), end);
                    }
                }
            }
        }
        let sub_id = format!("subscribe-{}", new_job_id());
        let runtime = self.runtime.clone();
        let handle = crate::engine::blocking(move || runtime.subscribe(&sub_id, plan))?;
        let conv = RowConverter::new(data_schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?;
        let snapshot = Some(Fold { until, conv, rows: HashMap::new() });
        let mut live = LiveResult {
            schema: result_schema(&data_schema, sub.progress),
            send_describe: false,
            sub: handle,
            data_schema,
            snapshot,
            send_snapshot: sub.snapshot,
            progress: sub.progress,
            remaining: sub.limit,
        };
        if live.snapshot.as_ref().is_some_and(|f| f.until.is_empty()) {
            // Nothing was written to the sources yet: the snapshot is empty.
            live.snapshot = None;
        }
        Ok(Output::Live(Box::new(live)))
    }
}

/// `op`, `epoch`, [`progressed`], then `data`'s columns.
fn result_schema(data: &SchemaRef, progress: bool) -> SchemaRef {
    let mut fields = vec![Field::new("op", DataType::Utf8, true), Field::new("epoch", DataType::Int64, false)];
    if progress {
        fields.push(Field::new("progressed", DataType::Boolean, false));
    }
    fields.extend(data.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)));
    Arc::new(Schema::new(fields))
}

impl LiveResult {
    /// The subscription as a stream of result batches (for `COPY (SUBSCRIBE ...) TO STDOUT` and
    /// cursors), ending as [`LiveResult::next`] does; dropping it ends the subscription.
    pub fn into_stream(self: Box<Self>) -> datafusion::execution::SendableRecordBatchStream {
        let schema = self.schema.clone();
        let batches = futures::stream::unfold(self, |mut live| async move {
            let next = live.next().await?;
            Some((next.map_err(|e| datafusion::error::DataFusionError::External(Box::new(e))), live))
        });
        Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, batches))
    }

    /// The next rows to send; None once the subscription has ended (its `LIMIT` reached).
    ///
    /// Errors: the dataflow failed (XX000, with its error), or a batch does not convert.
    pub async fn next(&mut self) -> Option<SqlResult<RecordBatch>> {
        loop {
            if self.remaining == Some(0) {
                return None;
            }
            let Some(epoch) = self.sub.epochs.recv().await else {
                let error = self.sub.status.error.lock().unwrap().clone();
                return Some(Err(SqlError::new(
                    "XX000",
                    format!("the subscription's dataflow ended: {}", error.as_deref().unwrap_or("stopped")),
                )));
            };
            match self.epoch(epoch) {
                Ok(Some(b)) => return Some(Ok(b)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// One committed epoch: folded into the snapshot, or turned into change rows.
    fn epoch(&mut self, out: EpochOutput) -> SqlResult<Option<RecordBatch>> {
        let changes = out.batches.iter().map(ChangeBatch::from_topic_batch).collect::<Result<Vec<_>, _>>()?;
        let mut parts: Vec<(Vec<Option<&'static str>>, RecordBatch)> = Vec::new();
        if let Some(fold) = &mut self.snapshot {
            for c in &changes {
                let rows = fold.conv.convert_columns(c.data.columns())?;
                for (i, op) in c.ops.iter().enumerate() {
                    *fold.rows.entry(rows.row(i).owned()).or_insert(0) += op.weight();
                }
            }
            if !fold.until.iter().all(|(k, end)| out.positions.get(k).is_some_and(|p| p >= end)) {
                return Ok(None);
            }
            let fold = self.snapshot.take().expect("folding");
            if self.send_snapshot {
                let rows: Vec<_> = fold.rows.iter().filter(|(_, n)| **n > 0).flat_map(|(r, n)| std::iter::repeat_n(r, *n as usize)).collect();
                let cols = fold.conv.convert_rows(rows.iter().map(|r| r.row()))?;
                let data = RecordBatch::try_new(self.data_schema.clone(), cols)?;
                parts.push((vec![Some(Op::Insert.short()); data.num_rows()], data));
            }
        } else {
            for c in changes {
                let ops = c.ops.iter().map(|o| Some(o.short())).collect();
                parts.push((ops, c.data));
            }
        }
        let mut batches = Vec::new();
        for (ops, data) in parts {
            let (ops, data) = self.limit(ops, data)?;
            if data.num_rows() > 0 {
                batches.push(self.result_batch(ops, out.epoch, false, &data)?);
            }
        }
        if self.progress && self.remaining != Some(0) {
            let nulls = RecordBatch::try_new(
                self.data_schema.clone(),
                self.data_schema.fields().iter().map(|f| arrow::array::new_null_array(f.data_type(), 1)).collect(),
            )?;
            batches.push(self.result_batch(vec![None], out.epoch, true, &nulls)?);
        }
        if batches.is_empty() {
            return Ok(None);
        }
        Ok(Some(arrow::compute::concat_batches(&self.schema, &batches)?))
    }

    /// At most the rows `LIMIT` still allows.
    fn limit(&mut self, mut ops: Vec<Option<&'static str>>, data: RecordBatch) -> SqlResult<(Vec<Option<&'static str>>, RecordBatch)> {
        let Some(left) = self.remaining else { return Ok((ops, data)) };
        let n = (data.num_rows() as u64).min(left) as usize;
        self.remaining = Some(left - n as u64);
        ops.truncate(n);
        let keep = UInt32Array::from_iter_values(0..n as u32);
        Ok((ops, take_record_batch(&data, &keep)?))
    }

    fn result_batch(&self, ops: Vec<Option<&'static str>>, epoch: u64, progressed: bool, data: &RecordBatch) -> SqlResult<RecordBatch> {
        let n = data.num_rows();
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(ops)), Arc::new(Int64Array::from(vec![epoch as i64; n]))];
        if self.progress {
            cols.push(Arc::new(BooleanArray::from(vec![progressed; n])));
        }
        cols.extend(data.columns().iter().cloned());
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

/// Sends a subscription's rows to `client` as they commit (a RowDescription first when
/// [`LiveResult::send_describe`]), flushing after each epoch, and answers `SUBSCRIBE n` once
/// it ends.
///
/// Errors: the dataflow failed; the socket could not be written (the client went away).
pub async fn deliver<C>(client: &mut C, mut live: Box<LiveResult>, format: &Format) -> PgWireResult<Response>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let fields = Arc::new(arrow_schema_to_pg_fields(&live.schema, format, None)?);
    if live.send_describe {
        let desc = RowDescription::new(fields.iter().map(Into::into).collect());
        client.send(PgWireBackendMessage::RowDescription(desc)).await?;
    }
    let mut sent = 0usize;
    loop {
        // While nothing changes, a ParameterStatus now and then finds out whether the client
        // is still there (clients take it at any time); the dataflow ends with the client.
        let next = tokio::select! {
            n = live.next() => n,
            _ = tokio::time::sleep(IDLE_PROBE) => {
                let probe = ParameterStatus::new("server_version".into(), crate::pg_params::SERVER_VERSION.into());
                client.send(PgWireBackendMessage::ParameterStatus(probe)).await?;
                continue;
            }
        };
        let Some(batch) = next else { break };
        let batch = batch.map_err(crate::handler::to_pg)?;
        let batch = crate::pgtext::postgres_text(batch, &fields).map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        for row in encode_recordbatch(fields.clone(), batch) {
            client.feed(PgWireBackendMessage::DataRow(row?)).await?;
            sent += 1;
        }
        client.flush().await?;
    }
    Ok(Response::Execution(Tag::new("SUBSCRIBE").with_rows(sent)))
}
