//! Persistent queries: planning `INSERT INTO ... SELECT` into a dataflow, starting, stopping
//! and resuming jobs, and `SHOW JOBS`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use sluice_catalog::enforcer::{LENGTH_SESSION_OPTION, SESSION_OPTION};
use sluice_catalog::state_ttl::{self, format_ttl, ttl_for_sink};
use sluice_catalog::{JobDef, JobState, NotNullEnforcer, TypeLengthEnforcer};
use sluice_connectors::options::{External, TableConnector};
use sluice_planner::stream::plan_dataflow;
use sluice_planner::{parse_statement, streaming_logical_plan, SluiceStatement};
use sqlparser::ast::{Insert, Statement, TableObject};

use crate::errors::{SqlError, SqlResult};
use crate::session::Session;
use crate::engine::*;

impl Engine {
    pub(crate) async fn plan_job(&self, ins: &Insert) -> SqlResult<sluice_catalog::dataflow::DataflowPlan> {
        let TableObject::TableName(tn) = &ins.table else {
            return Err(SqlError::unsupported("INSERT INTO a table function"));
        };
        let sink = self.table(&table_name(tn))?;
        let source = ins.source.clone().ok_or_else(|| SqlError::unsupported("INSERT without a query"))?;
        let plan = self.df_plan(Statement::Query(source), None).await?;
        let plan = streaming_logical_plan(&self.ctx, plan)?;
        let columns: Vec<String> = ins.columns.iter().map(table_name).collect();
        let tables = self.tables.read().unwrap().clone();
        Ok(plan_dataflow(&self.ctx, &Lookup(&tables), &plan, &sink.def, &columns)?)
    }

    /// Starts a persistent query, with the NOT NULL and length enforcers of its sink's options
    /// or else of the session ([`NotNullEnforcer::for_sink`], [`TypeLengthEnforcer::for_sink`]),
    /// stored with the job.
    pub(crate) async fn create_job(self: &Arc<Self>, ins: Insert, sql: &str, session: &Session) -> SqlResult<Output> {
        let _g = self.ddl.lock().await;
        let plan = self.plan_job(&ins).await?;
        let enforcer = NotNullEnforcer::for_sink(&plan.sink.options, session.option(SESSION_OPTION).as_deref())?;
        let lengths = TypeLengthEnforcer::for_sink(&plan.sink.options, session.option(LENGTH_SESSION_OPTION).as_deref())?;
        let ttl = ttl_for_sink(&plan.sink.options, session.option(state_ttl::SESSION_OPTION).as_deref())?;
        if enforcer == NotNullEnforcer::Log {
            self.ensure_dead_letter_table(&plan.sink.name).await?;
        }
        self.prepare_sink(&plan.sink.name)?;
        let id = new_job_id();
        let job = JobDef {
            id: id.clone(),
            sql: sql.to_string(),
            sink: plan.sink.name.clone(),
            sources: plan.root.sources().iter().map(|s| s.table.name.clone()).collect(),
            state: JobState::Running,
            error: None,
            seq: self.store.next_counter("job")?,
            not_null_enforcer: enforcer,
            type_length_enforcer: lengths,
            state_ttl_ms: ttl.map(|d| d.as_millis() as u64),
        };
        let mut plan = plan;
        plan.state_ttl = ttl;
        let nulls = self.sink_policy(&job)?;
        self.store.put_job(&job)?;
        let plan_sink = plan.sink.name.clone();
        self.runtime.start_with(&id, plan, nulls)?;
        self.jobs.write().unwrap().insert(id.clone(), job);
        let sink = self.table(&plan_sink)?;
        if matches!(&sink.connector, TableConnector::Topic { external: Some(External::Kafka(_)), .. }) {
            self.start_table_connector(&sink.def, &sink.connector)?;
        }
        tracing::info!(job = %id, "persistent query started");
        Ok(Output::Command {
            tag: "INSERT 0 0".into(),
            notice: Some(format!("persistent query started as job {id} (SHOW JOBS; STOP JOB '{id}')")),
        })
    }

    pub(crate) async fn start_job(&self, job: &JobDef) -> SqlResult<()> {
        let SluiceStatement::Sql(stmt) = parse_statement(&job.sql)? else {
            return Err(SqlError::new("XX000", "stored job is not an INSERT"));
        };
        let Statement::Insert(ins) = *stmt else {
            return Err(SqlError::new("XX000", "stored job is not an INSERT"));
        };
        let mut plan = self.plan_job(&ins).await?;
        plan.state_ttl = job.state_ttl_ms.map(Duration::from_millis);
        self.runtime.start_with(&job.id, plan, self.sink_policy(job)?)?;
        Ok(())
    }

    pub(crate) async fn stop_job(&self, id: &str) -> SqlResult<Output> {
        let _g = self.ddl.lock().await;
        let mut job = self
            .jobs
            .read()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| SqlError::new("42704", format!("job '{id}' does not exist")))?;
        let rt = self.runtime.clone();
        let id2 = id.to_string();
        tokio::task::spawn_blocking(move || rt.stop(&id2)).await.map_err(|e| SqlError::new("XX000", e.to_string()))?;
        job.state = JobState::Stopped;
        self.store.put_job(&job)?;
        self.jobs.write().unwrap().insert(id.to_string(), job);
        Ok(Output::Command { tag: "STOP JOB".into(), notice: None })
    }

    /// `RESUME JOB '<id>' [WITH (...)]`: starts a failed or stopped job again from its last
    /// complete checkpoint (after the cause of its failure was fixed), re-planned from its SQL,
    /// so the input of the epoch that failed is processed again. `WITH` changes the job's
    /// options for good ([`Engine::resume_options`]). A job whose state is refused (another
    /// plan or state format) fails again with that error.
    ///
    /// Errors: 42704 unknown job; 55000 the job is running; 22023 an unknown option or value.
    pub(crate) async fn resume_job(self: &Arc<Self>, id: &str, options: &BTreeMap<String, String>) -> SqlResult<Output> {
        let _g = self.ddl.lock().await;
        let mut job = self
            .jobs
            .read()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| SqlError::new("42704", format!("job '{id}' does not exist")))?;
        if self.runtime.status(id).is_some_and(|s| s.is_running()) {
            return Err(SqlError::new("55000", format!("job '{id}' is running")));
        }
        self.resume_options(&mut job, options).await?;
        let rt = self.runtime.clone();
        let id2 = id.to_string();
        // Joins the ended thread of the job, if any.
        tokio::task::spawn_blocking(move || rt.stop(&id2)).await.map_err(|e| SqlError::new("XX000", e.to_string()))?;
        // Stored as running before it starts: when the store refuses the write (a full disk,
        // 53100) RESUME JOB fails having changed nothing, instead of starting a job that the
        // catalog still calls stopped or failed.
        job.state = JobState::Running;
        job.error = None;
        self.store.put_job(&job)?;
        let started = self.start_job(&job).await;
        if let Err(e) = &started {
            job.state = JobState::Failed;
            job.error = Some(e.message.clone());
            // The start's error is the one reported; if this write fails too, the job is
            // stored as running and its next start fails it again.
            if let Err(w) = self.store.put_job(&job) {
                tracing::warn!(job = %id, error = %w, "cannot store the failed start of a resumed job");
            }
        }
        self.jobs.write().unwrap().insert(id.to_string(), job);
        started?;
        tracing::info!(job = %id, "job resumed");
        Ok(Output::Command { tag: "RESUME JOB".into(), notice: None })
    }

    pub(crate) fn show_tables(&self) -> SqlResult<Output> {
        let names: Vec<String> = self.tables.read().unwrap().keys().cloned().collect();
        let schema = text_schema(&["table_name"]);
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(names))])?;
        Ok(Output::Rows { schema, batches: vec![batch] })
    }

    /// `SHOW JOBS` as one batch (also the `sluice_jobs` table).
    pub fn jobs_batch(&self) -> SqlResult<RecordBatch> {
        match self.show_jobs()? {
            Output::Rows { mut batches, .. } => Ok(batches.remove(0)),
            _ => unreachable!("show_jobs returns rows"),
        }
    }

    pub(crate) fn show_jobs(&self) -> SqlResult<Output> {
        let jobs: Vec<JobDef> = {
            let mut v: Vec<JobDef> = self.jobs.read().unwrap().values().cloned().collect();
            v.sort_by_key(|j| j.seq);
            v
        };
        let mut ids = Vec::new();
        let mut states = Vec::new();
        let mut sinks = Vec::new();
        let (mut rin, mut rout, mut late, mut nulls, mut ckpt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut state_rows, mut state_bytes, mut ttls) = (Vec::new(), Vec::new(), Vec::new());
        let mut errors = Vec::new();
        let mut sqls = Vec::new();
        use std::sync::atomic::Ordering::Relaxed;
        for j in jobs {
            let st = self.runtime.status(&j.id);
            ids.push(j.id.clone());
            // A job that could not start (its state refused at RESUME JOB or at the daemon's
            // start) is FAILED with that error; a runtime status left from an earlier run of it
            // tells nothing about it.
            let state = match (&st, j.state) {
                (_, JobState::Stopped) => "STOPPED".to_string(),
                (_, JobState::Failed) => "FAILED".to_string(),
                (Some(s), _) => s.state().to_string(),
                (None, s) => s.as_str().to_string(),
            };
            states.push(state);
            sinks.push(j.sink.clone());
            rin.push(st.as_ref().map(|s| s.rows_in.load(Relaxed)).unwrap_or(0));
            rout.push(st.as_ref().map(|s| s.rows_out.load(Relaxed)).unwrap_or(0));
            late.push(st.as_ref().map(|s| s.late_rows.load(Relaxed)).unwrap_or(0));
            nulls.push(st.as_ref().map(|s| s.null_rows.load(Relaxed)).unwrap_or(0));
            ckpt.push(st.as_ref().map(|s| s.checkpoints.load(Relaxed)).unwrap_or(0));
            state_rows.push(st.as_ref().map(|s| s.state_rows.load(Relaxed)).unwrap_or(0));
            state_bytes.push(st.as_ref().map(|s| s.state_bytes.load(Relaxed)).unwrap_or(0));
            ttls.push(format_ttl(j.state_ttl_ms.map(Duration::from_millis)));
            let run_error = st.as_ref().and_then(|s| s.error.lock().unwrap().clone());
            errors.push(if j.state == JobState::Failed { j.error.clone().or(run_error) } else { run_error.or(j.error.clone()) });
            sqls.push(j.sql.clone());
        }
        let schema = jobs_schema();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(states)),
            Arc::new(StringArray::from(sinks)),
            Arc::new(UInt64Array::from(rin)),
            Arc::new(UInt64Array::from(rout)),
            Arc::new(UInt64Array::from(late)),
            Arc::new(UInt64Array::from(nulls)),
            Arc::new(UInt64Array::from(ckpt)),
            Arc::new(UInt64Array::from(state_rows)),
            Arc::new(UInt64Array::from(state_bytes)),
            Arc::new(StringArray::from(ttls)),
            Arc::new(StringArray::from(errors)),
            Arc::new(StringArray::from(sqls)),
        ];
        rows_output(schema, cols)
    }

}
