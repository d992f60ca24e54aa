//! Persistent queries: one thread per job.
//!
//! A job reads its sources from their positions, pushes batches through its [`Graph`], and
//! buffers what reaches the root. An epoch ends when the job has caught up with its input, after
//! 200 ms, or when 200 000 output rows are buffered: then one checkpoint commits, in a single
//! fsynced RocksDB write, the epoch's output rows appended to the sink topic, every operator's
//! changed state, and the source positions and watermarks. In a single-threaded job the end of
//! an epoch is a barrier that every operator has already seen, so the checkpoint is aligned by
//! construction. After a crash the job restores the last checkpoint and re-reads its input from
//! the saved positions; output of the unfinished epoch was never written, so nothing is lost or
//! duplicated.
//!
//! A checkpoint is all or nothing: when any part of it fails (an operator's state, the store,
//! the sink topic), nothing of the epoch commits and the job is `FAILED` with the error; a
//! restart resumes from the last complete checkpoint. The checkpoint metadata carries the
//! plan's fingerprint and the state format version, and a restore refuses state written for
//! another plan or format, or for tables that were dropped since ([`JobRuntime::invalidate`]:
//! a table dropped and created again, even with the same columns, starts its topic again at
//! offset 0). A panic inside a job marks it `FAILED` with the panic's message.
//!
//! Bounded inputs end as in Flink: once a bounded source (a `datagen` table with an end) has
//! produced its last row, its watermark advances to the maximum, so every window still open
//! fires; once every source has ended, the job commits and is `FINISHED`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use sluice_catalog::dataflow::DataflowPlan;
use sluice_catalog::store::CF_STATE;
use sluice_catalog::{ChangeBatch, NotNullEnforcer, Store};
use sluice_connectors::datagen::DatagenOptions;
use sluice_connectors::options::{parse_table_options, watermark_idle_timeout, TableConnector};
use sluice_connectors::partition::partitions_of_rows;
use sluice_connectors::TopicLog;

use crate::error::{failpoint, ExecError, Result};
use crate::graph::{Graph, SourceWatermark};
use crate::rows::eval;
use crate::sink_lengths::LengthCheck;
use crate::sink_nulls::{self, NotNullCheck, SinkPolicy};
use crate::state::job_prefix;
use crate::status::JobStatus;
use crate::subscribe::{ChannelSink, EpochOutput};

/// Rows read from one partition per poll.
const READ_ROWS: usize = 16_384;
/// Longest epoch while input keeps arriving.
const EPOCH_INTERVAL: Duration = Duration::from_millis(200);
/// Output rows that end an epoch early.
const EPOCH_MAX_ROWS: usize = 200_000;

/// Version of the encodings of operator state and checkpoint metadata. Bump it whenever an
/// operator's state encoding changes: a restore refuses state of another version, except the
/// older versions this one still reads ([`OLDEST_READABLE_FORMAT`]). Version 3 added the
/// times a state TTL needs (join chunks, groups) as new entries.
pub const STATE_FORMAT_VERSION: u32 = 3;

/// The oldest state format a restore reads: version 2 is version 3 without TTL entries.
pub const OLDEST_READABLE_FORMAT: u32 = 2;

#[derive(Debug, Default, Serialize, Deserialize)]
struct CheckpointMeta {
    epoch: u64,
    positions: Vec<Vec<u64>>,
    watermarks: Vec<Vec<Option<i64>>>,
    /// [`STATE_FORMAT_VERSION`] of the state; absent in state older than the field.
    #[serde(default)]
    format: Option<u32>,
    /// [`Graph::fingerprint`] of the plan that wrote the state.
    #[serde(default)]
    fingerprint: Option<String>,
    /// Set by [`JobRuntime::invalidate`] when a table the job reads or writes was dropped
    /// after this checkpoint: why it may not be restored.
    #[serde(default)]
    invalidated: Option<String>,
}

enum SourceKind {
    Topic { topic: String },
    Datagen { opts: DatagenOptions, total: Option<u64>, started: Instant, base: u64 },
}

impl SourceRt {
    /// True for a bounded source that has produced its last row.
    fn ended(&self) -> bool {
        matches!(&self.kind, SourceKind::Datagen { total: Some(t), .. } if self.positions[0] >= *t)
    }
}

struct SourceRt {
    kind: SourceKind,
    schema: arrow::datatypes::SchemaRef,
    positions: Vec<u64>,
    watermarks: Vec<Option<i64>>,
    /// `scan.watermark.idle-timeout`: a partition without data for this long stops holding
    /// the source's watermark back.
    idle_timeout: Option<Duration>,
    /// When each partition last had data (the job's start for none yet).
    last_data: Vec<Instant>,
}

enum SinkKind {
    Topic { partitions: u32, key: Vec<usize> },
    Blackhole,
    /// A subscription's client ([`crate::subscribe`]): nothing is stored.
    Channel(ChannelSink),
}

/// Starts, tracks and stops jobs.
pub struct JobRuntime {
    store: Store,
    log: Arc<dyn TopicLog>,
    jobs: Mutex<HashMap<String, Arc<JobStatus>>>,
}

impl JobRuntime {
    /// A runtime over the store (state, checkpoints) and the topic log.
    pub fn new(store: Store, log: Arc<dyn TopicLog>) -> Arc<JobRuntime> {
        Arc::new(JobRuntime { store, log, jobs: Mutex::new(HashMap::new()) })
    }

    /// Builds the job's operators, restores its last checkpoint and starts its thread, with
    /// Sluice's default [`SinkPolicy`] (`ERROR` for NULL in a NOT NULL column of the sink, as
    /// Flink's default, and for a string longer than its column's length).
    ///
    /// Errors: operator construction or state restore failed (the job is not started).
    pub fn start(self: &Arc<Self>, id: &str, plan: DataflowPlan) -> Result<Arc<JobStatus>> {
        self.start_with(id, plan, SinkPolicy::default())
    }

    /// [`JobRuntime::start`] with the job's [`SinkPolicy`].
    ///
    /// Errors: as [`JobRuntime::start`]; [`ExecError::Unsupported`] for `LOG` without a
    /// dead-letter topic.
    pub fn start_with(self: &Arc<Self>, id: &str, plan: DataflowPlan, nulls: SinkPolicy) -> Result<Arc<JobStatus>> {
        self.start_inner(id, plan, nulls, None)
    }

    /// [`JobRuntime::start_with`], or with `channel` a subscription's dataflow: its output goes
    /// to the channel, nothing of it is checkpointed, and it is not one of the runtime's jobs
    /// (`SHOW JOBS`, `FLUSH` and [`JobRuntime::stop_all`] do not see it).
    pub(crate) fn start_inner(self: &Arc<Self>, id: &str, plan: DataflowPlan, nulls: SinkPolicy, channel: Option<ChannelSink>) -> Result<Arc<JobStatus>> {
        if nulls.not_null == NotNullEnforcer::Log && nulls.dead_letter_topic.is_none() {
            return Err(ExecError::Unsupported(format!("job {id}: 'LOG' needs the dead-letter table of {}", plan.sink.name)));
        }
        let late_rows = Arc::new(AtomicU64::new(0));
        let mut graph = Graph::build(&plan.root, late_rows.clone(), plan.state_ttl)?;
        let fingerprint = graph.fingerprint();
        let meta: CheckpointMeta = match self.store.db().get_cf(self.store.cf(CF_STATE), meta_key(id))? {
            Some(v) => {
                let meta: CheckpointMeta =
                    serde_json::from_slice(&v).map_err(|e| ExecError::CorruptState(e.to_string()))?;
                check_meta(id, &meta, &fingerprint)?;
                meta
            }
            None => CheckpointMeta::default(),
        };
        graph.restore(&self.store, id)?;
        let mut sources = Vec::new();
        for (i, s) in plan.root.sources().iter().enumerate() {
            let kind = match parse_table_options(&s.table.options)? {
                TableConnector::Datagen(opts) => {
                    let total = opts.total_rows();
                    SourceKind::Datagen { opts, total, started: Instant::now(), base: 0 }
                }
                TableConnector::Topic { .. } => SourceKind::Topic { topic: s.table.topic().to_string() },
                TableConnector::Blackhole => {
                    return Err(ExecError::Unsupported(format!("cannot read blackhole table {}", s.table.name)))
                }
            };
            let partitions = match &kind {
                SourceKind::Topic { topic } => self.log.partitions(topic)? as usize,
                SourceKind::Datagen { .. } => 1,
            };
            let positions = meta.positions.get(i).cloned().unwrap_or_else(|| vec![0; partitions]);
            let watermarks = meta.watermarks.get(i).cloned().unwrap_or_else(|| vec![None; partitions]);
            let idle_timeout = watermark_idle_timeout(&s.table.options)?;
            let last_data = vec![Instant::now(); positions.len()];
            let mut rt = SourceRt { kind, schema: s.physical_schema.clone(), positions, watermarks, idle_timeout, last_data };
            if let SourceKind::Datagen { base, .. } = &mut rt.kind {
                *base = rt.positions[0];
            }
            sources.push(rt);
        }
        let subscription = channel.is_some();
        let sink = match (channel, parse_table_options(&plan.sink.options)?) {
            (Some(c), _) => SinkKind::Channel(c),
            (None, TableConnector::Blackhole) => SinkKind::Blackhole,
            (None, TableConnector::Topic { .. }) => {
                let schema = &plan.sink_schema;
                let key = plan.sink.primary_key.iter().filter_map(|k| schema.index_of(k).ok()).collect::<Vec<_>>();
                let key = if key.is_empty() { (0..schema.fields().len()).collect() } else { key };
                SinkKind::Topic { partitions: self.log.partitions(plan.sink.topic())?, key }
            }
            (None, TableConnector::Datagen(_)) => {
                return Err(ExecError::Unsupported(format!("cannot write into datagen table {}", plan.sink.name)))
            }
        };
        let status = Arc::new(JobStatus {
            id: id.to_string(),
            sink: plan.sink.name.clone(),
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            late_rows,
            null_rows: AtomicU64::new(0),
            checkpoints: AtomicU64::new(meta.epoch),
            state_rows: AtomicU64::new(graph.state_rows()),
            state_bytes: AtomicU64::new(graph.state_bytes()),
            error: Mutex::new(None),
            committed: Mutex::new(HashMap::new()),
            pending_generators: AtomicU64::new(
                sources
                    .iter()
                    .filter(|s| matches!(&s.kind, SourceKind::Datagen { total: Some(t), .. } if s.positions[0] < *t))
                    .count() as u64,
            ),
            stop: AtomicBool::new(false),
            running: AtomicBool::new(true),
            finished: AtomicBool::new(false),
            handle: Mutex::new(None),
        });
        let not_null = NotNullCheck::new(id, &plan.sink.name, plan.sink_schema.clone(), nulls.not_null);
        let lengths = LengthCheck::new(id, &plan.sink, nulls.type_length);
        let mut job = RunningJob {
            not_null,
            lengths,
            dead_letter_topic: nulls.dead_letter_topic,
            dead_letters: Vec::new(),
            pending_refused: 0,
            id: id.to_string(),
            store: self.store.clone(),
            log: self.log.clone(),
            plan,
            graph,
            sources,
            sink,
            status: status.clone(),
            epoch: meta.epoch,
            fingerprint,
            pending: Vec::new(),
            pending_rows: 0,
            dirty: false,
        };
        job.publish_positions();
        let s2 = status.clone();
        let handle = std::thread::Builder::new()
            .name(format!("job-{}", &id[..8.min(id.len())]))
            .spawn(move || {
                tracing::info!(job = %job.id, epoch = job.epoch, "job started");
                let id = job.id.clone();
                // A panic in an operator fails this job alone, with the panic's message.
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| job.run()))
                    .unwrap_or_else(|panic| Err(ExecError::Unsupported(format!("job panicked: {}", panic_message(&panic)))));
                match result {
                    Ok(finished) => s2.finished.store(finished, Ordering::Relaxed),
                    Err(e) => {
                        tracing::error!(job = %id, error = %e, "job failed");
                        *s2.error.lock().unwrap() = Some(e.to_string());
                    }
                }
                s2.running.store(false, Ordering::Relaxed);
            })
            .map_err(|e| ExecError::Unsupported(format!("cannot start job thread: {e}")))?;
        *status.handle.lock().unwrap() = Some(handle);
        if !subscription {
            self.jobs.lock().unwrap().insert(id.to_string(), status.clone());
        }
        Ok(status)
    }

    /// The status of a job started in this process.
    pub fn status(&self, id: &str) -> Option<Arc<JobStatus>> {
        self.jobs.lock().unwrap().get(id).cloned()
    }

    /// Stops a job: its thread commits a last checkpoint and ends. Waits for it.
    pub fn stop(&self, id: &str) {
        let status = self.jobs.lock().unwrap().get(id).cloned();
        if let Some(s) = status {
            s.stop.store(true, Ordering::Relaxed);
            if let Some(h) = s.handle.lock().unwrap().take() {
                let _ = h.join();
            }
        }
    }

    /// Stops every job (daemon shutdown).
    pub fn stop_all(&self) {
        let ids: Vec<String> = self.jobs.lock().unwrap().keys().cloned().collect();
        for id in ids {
            self.stop(&id);
        }
    }

    /// Marks a stopped job's last checkpoint as one that may not be restored, with `reason`
    /// (a table the job reads or writes is being dropped: the positions it saved belong to a
    /// topic that goes away, its state and its sink's rows to data that no longer exists). A
    /// later start fails with [`ExecError::StateMismatch`] giving the reason. A job without a
    /// checkpoint has nothing to invalidate: it starts from the beginning of its inputs.
    ///
    /// Errors: the store cannot be read or written, or the checkpoint does not decode.
    pub fn invalidate(&self, id: &str, reason: &str) -> Result<()> {
        let Some(v) = self.store.db().get_cf(self.store.cf(CF_STATE), meta_key(id))? else { return Ok(()) };
        let mut meta: CheckpointMeta = serde_json::from_slice(&v).map_err(|e| ExecError::CorruptState(e.to_string()))?;
        if meta.invalidated.is_some() {
            return Ok(());
        }
        meta.invalidated = Some(reason.to_string());
        let bytes = serde_json::to_vec(&meta).map_err(|e| ExecError::CorruptState(e.to_string()))?;
        let mut b = WriteBatch::default();
        b.put_cf(self.store.cf(CF_STATE), meta_key(id), bytes);
        self.store.write(b)?;
        tracing::warn!(job = %id, reason, "checkpoint invalidated");
        Ok(())
    }

    /// Deletes a stopped job's state and checkpoints.
    pub fn drop_state(&self, id: &str) -> Result<()> {
        let mut b = WriteBatch::default();
        self.store.delete_prefix(&mut b, CF_STATE, &job_prefix(id))?;
        self.store.write(b)?;
        self.jobs.lock().unwrap().remove(id);
        Ok(())
    }

    /// Blocks until every running job has committed everything written to its sources, checked
    /// repeatedly so that chains of jobs drain too (RisingWave's `FLUSH`). Unbounded generators
    /// are not waited for; bounded ones are, until exhausted.
    ///
    /// Errors: [`ExecError::JobsFailed`] naming each job that failed (before or while
    /// waiting); [`ExecError::FlushTimeout`], when `timeout` passes first, naming each job still
    /// behind its input.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let all: Vec<Arc<JobStatus>> = self.jobs.lock().unwrap().values().cloned().collect();
            let failed: Vec<String> = all
                .iter()
                .filter_map(|j| j.error.lock().unwrap().as_ref().map(|e| format!("job {} (into {}) failed: {e}", j.id, j.sink)))
                .collect();
            if !failed.is_empty() {
                return Err(ExecError::JobsFailed(format!("FLUSH: {}", failed.join("; "))));
            }
            let jobs: Vec<Arc<JobStatus>> = all.into_iter().filter(|j| j.is_running()).collect();
            let ends_before = self.end_offsets(&jobs)?;
            let behind: Vec<&Arc<JobStatus>> = jobs
                .iter()
                .filter(|j| {
                    let c = j.committed.lock().unwrap();
                    j.pending_generators.load(Ordering::Relaxed) > 0
                        || c.iter().any(|(k, v)| ends_before.get(k).is_some_and(|e| v < e))
                })
                .collect();
            if behind.is_empty() && self.end_offsets(&jobs)? == ends_before {
                return Ok(());
            }
            if Instant::now() > deadline {
                let names: Vec<String> = behind.iter().map(|j| format!("{} (into {})", j.id, j.sink)).collect();
                return Err(ExecError::FlushTimeout(format!(
                    "FLUSH timed out after {} s waiting for job(s) still behind their input: {}",
                    timeout.as_secs(),
                    if names.is_empty() { "input still arriving".to_string() } else { names.join(", ") }
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn end_offsets(&self, jobs: &[Arc<JobStatus>]) -> Result<HashMap<(String, u32), u64>> {
        let mut out = HashMap::new();
        for j in jobs {
            for (topic, p) in j.committed.lock().unwrap().keys() {
                out.insert((topic.clone(), *p), self.log.end_offset(topic, *p)?);
            }
        }
        Ok(out)
    }
}

fn meta_key(job: &str) -> Vec<u8> {
    let mut k = job_prefix(job);
    k.extend_from_slice(b"meta");
    k
}

/// Refuses state written by another plan or state format, or invalidated because a table of
/// the job was dropped since (see the module docs).
fn check_meta(id: &str, meta: &CheckpointMeta, fingerprint: &str) -> Result<()> {
    if !meta.format.is_some_and(|f| (OLDEST_READABLE_FORMAT..=STATE_FORMAT_VERSION).contains(&f)) {
        return Err(ExecError::StateMismatch(format!(
            "job {id}: its checkpoint has state format {}, this Sluice reads formats {OLDEST_READABLE_FORMAT} to {STATE_FORMAT_VERSION}; drop and recreate the job (its state cannot be restored)",
            meta.format.map_or("unknown (older than format versions)".to_string(), |f| f.to_string())
        )));
    }
    if meta.fingerprint.as_deref() != Some(fingerprint) {
        return Err(ExecError::StateMismatch(format!(
            "job {id}: its checkpoint was written by a different plan (fingerprint {}, now {fingerprint}): a table it reads changed, or this version of Sluice plans the query differently; drop and recreate the job",
            meta.fingerprint.as_deref().unwrap_or("none")
        )));
    }
    if let Some(reason) = &meta.invalidated {
        return Err(ExecError::StateMismatch(format!(
            "job {id}: its checkpoint cannot be restored: {reason}, so the offsets and state it saved describe rows that no longer exist; start the query again as a new job"
        )));
    }
    Ok(())
}

/// How often a job with a state TTL checkpoints while idle, so that expired state goes: a
/// quarter of the TTL, between 1 s and 1 min.
fn ttl_check_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The message of a caught panic.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

struct RunningJob {
    id: String,
    store: Store,
    log: Arc<dyn TopicLog>,
    plan: DataflowPlan,
    graph: Graph,
    sources: Vec<SourceRt>,
    sink: SinkKind,
    status: Arc<JobStatus>,
    epoch: u64,
    /// [`Graph::fingerprint`], stored with every checkpoint.
    fingerprint: String,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    dirty: bool,
    /// The sink's NOT NULL columns and what to do with a NULL in them.
    not_null: NotNullCheck,
    /// The sink's `VARCHAR(n)`/`CHAR(n)` lengths, applied after [`NotNullCheck`].
    lengths: LengthCheck,
    /// `LOG`: the topic of the sink's dead-letter table.
    dead_letter_topic: Option<String>,
    /// `LOG`: the epoch's dead letters, committed with it ([`crate::sink_nulls`]).
    dead_letters: Vec<RecordBatch>,
    /// Rows of the epoch refused by [`NotNullCheck`], counted once it commits.
    pending_refused: u64,
}

impl RunningJob {
    /// The watermark of every source, as [`Graph::advance_watermarks`] combines them.
    fn source_watermarks(&self) -> Vec<SourceWatermark> {
        let now = Instant::now();
        self.sources
            .iter()
            .enumerate()
            .map(|(sid, s)| {
                // The end of a bounded input is the maximum watermark (Flink's end of input).
                if s.ended() {
                    return SourceWatermark::At(i64::MAX);
                }
                if !self.graph.declares_watermark(sid) {
                    return SourceWatermark::Undeclared;
                }
                // Per-partition watermarks combine by minimum; a partition without one holds
                // the source back, unless it has been idle (no data) for the source's idle
                // timeout. Once every partition is idle, the watermark is the one of the
                // partitions that had data last, as it was when the others went idle (a
                // watermark never goes back); a source idle without ever having produced a
                // watermark is left out of its operators' minimum.
                let idle = |t: &Instant| s.idle_timeout.is_some_and(|d| now.duration_since(*t) >= d);
                let latest = s.last_data.iter().max().copied();
                let all_idle = s.last_data.iter().all(idle);
                let active: Vec<Option<i64>> = s
                    .watermarks
                    .iter()
                    .zip(&s.last_data)
                    .filter(|(_, t)| if all_idle { Some(**t) == latest } else { !idle(t) })
                    .map(|(w, _)| *w)
                    .collect();
                if all_idle && active.iter().all(|w| w.is_none()) {
                    SourceWatermark::Idle
                } else if active.is_empty() || active.iter().any(|w| w.is_none()) {
                    SourceWatermark::Pending
                } else {
                    active.iter().flatten().min().map_or(SourceWatermark::Pending, |w| SourceWatermark::At(*w))
                }
            })
            .collect()
    }

    /// True when every source is bounded and has ended.
    fn all_ended(&self) -> bool {
        !self.sources.is_empty() && self.sources.iter().all(SourceRt::ended)
    }

    /// Runs until stopped (`Ok(false)`) or until every source has ended (`Ok(true)`).
    fn run(&mut self) -> Result<bool> {
        // Dead letters of the last committed epoch that a crash kept from their table.
        sink_nulls::ship(&self.store, self.log.as_ref(), &self.id)?;
        // Re-establish operator watermarks from the checkpoint (windows already emitted are
        // gone from state, so nothing is emitted twice).
        let wms = self.source_watermarks();
        let outs = self.graph.advance_watermarks(&wms)?;
        self.emit(outs)?;
        let mut last_commit = Instant::now();
        loop {
            if self.status.stop.load(Ordering::Relaxed) {
                self.commit()?;
                tracing::info!(job = %self.id, epoch = self.epoch, "job stopped");
                return Ok(false);
            }
            if self.all_ended() {
                // The last poll advanced every watermark to the maximum; commit what it fired.
                self.commit()?;
                tracing::info!(job = %self.id, epoch = self.epoch, "every input ended; job finished");
                return Ok(true);
            }
            let seen = self.log.version();
            let progressed = self.poll()?;
            // With a state TTL an idle job still checkpoints now and then, which expires state.
            if self.graph.state_ttl().is_some_and(|ttl| last_commit.elapsed() >= ttl_check_interval(ttl)) {
                self.dirty = true;
            }
            if self.dirty && (!progressed || last_commit.elapsed() > EPOCH_INTERVAL || self.pending_rows > EPOCH_MAX_ROWS) {
                self.commit()?;
                last_commit = Instant::now();
            }
            if !progressed {
                let generating = self.sources.iter().any(|s| matches!(s.kind, SourceKind::Datagen { .. }));
                if generating {
                    std::thread::sleep(Duration::from_millis(5));
                } else {
                    self.log.wait(seen, Duration::from_millis(100));
                }
            }
        }
    }

    /// Reads one round from every source partition; true if anything was read.
    fn poll(&mut self) -> Result<bool> {
        let mut progressed = false;
        for sid in 0..self.sources.len() {
            let parts = self.sources[sid].positions.len();
            for p in 0..parts {
                let pos = self.sources[sid].positions[p];
                let src = &self.sources[sid];
                let batches: Vec<(u64, ChangeBatch)> = match &src.kind {
                    SourceKind::Topic { topic } => {
                        // Large records (a big COPY) are cut into slices of READ_ROWS rows,
                        // so one step's memory stays bounded.
                        let mut out = Vec::new();
                        for r in self.log.read(topic, p as u32, pos, READ_ROWS)? {
                            let n = r.batch.num_rows();
                            let mut start = 0;
                            while start < n {
                                let len = READ_ROWS.min(n - start);
                                let slice = r.batch.slice(start, len);
                                start += len;
                                out.push((r.offset + start as u64, ChangeBatch::from_topic_batch(&slice)?));
                            }
                        }
                        out
                    }
                    SourceKind::Datagen { opts, total, started, base } => {
                        let by_rate = *base + (started.elapsed().as_secs_f64() * opts.rows_per_second as f64) as u64;
                        let limit = total.map(|t| t.min(by_rate)).unwrap_or(by_rate);
                        if limit > pos {
                            let n = ((limit - pos) as usize).min(READ_ROWS);
                            let batch = opts.generate(&src.schema, pos, n)?;
                            vec![(pos + n as u64, ChangeBatch::inserts(batch))]
                        } else {
                            vec![]
                        }
                    }
                };
                if !batches.is_empty() {
                    self.sources[sid].last_data[p] = Instant::now();
                }
                for (next, batch) in batches {
                    progressed = true;
                    self.dirty = true;
                    self.status.rows_in.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    let (rows, wm) = self.graph.source_rows(sid, batch)?;
                    if let Some(wm) = wm {
                        let w = &mut self.sources[sid].watermarks[p];
                        *w = Some(w.map_or(wm, |old| old.max(wm)));
                    }
                    let outs = self.graph.push_source(sid, rows)?;
                    self.emit(outs)?;
                    self.sources[sid].positions[p] = next;
                    if self.pending_rows > EPOCH_MAX_ROWS {
                        self.commit()?;
                    }
                }
            }
        }
        let wms = self.source_watermarks();
        let outs = self.graph.advance_watermarks(&wms)?;
        self.emit(outs)?;
        Ok(progressed)
    }

    fn emit(&mut self, outs: Vec<ChangeBatch>) -> Result<()> {
        for b in outs {
            if b.is_empty() {
                continue;
            }
            let cols = eval(&self.plan.sink_exprs, &b.data)?;
            let checked = self.not_null.apply(b.with_columns(self.not_null.relaxed.clone(), cols)?)?;
            self.pending_refused += checked.refused;
            self.dead_letters.extend(checked.dead_letters);
            self.dirty = true;
            if checked.rows.is_empty() {
                continue;
            }
            let rows = self.lengths.apply(checked.rows)?;
            self.pending_rows += rows.num_rows();
            self.pending.push(rows.to_topic_batch()?);
        }
        Ok(())
    }

    /// Commits the epoch: output, operator state, positions and watermarks in one write.
    ///
    /// All or nothing: when an operator's state cannot be written, the append (and with it
    /// the epoch's output, positions and state) is abandoned before anything reaches the store,
    /// and the error is returned, which fails the job.
    fn commit(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        failpoint("checkpoint::before_state")?;
        self.epoch += 1;
        let meta = CheckpointMeta {
            epoch: self.epoch,
            positions: self.sources.iter().map(|s| s.positions.clone()).collect(),
            watermarks: self.sources.iter().map(|s| s.watermarks.clone()).collect(),
            format: Some(STATE_FORMAT_VERSION),
            fingerprint: Some(self.fingerprint.clone()),
            invalidated: None,
        };
        let meta_bytes = serde_json::to_vec(&meta).map_err(|e| ExecError::CorruptState(e.to_string()))?;
        let outbox = match &self.dead_letter_topic {
            Some(topic) => sink_nulls::outbox_entry(&self.id, topic, &self.dead_letters)?,
            None => None,
        };
        let store = self.store.clone();
        let id = self.id.clone();
        let graph = &mut self.graph;
        let mut state_err = None;
        let mut fill = |wb: &mut WriteBatch| -> sluice_connectors::Result<()> {
            if let Err(e) = graph.checkpoint(&store, wb, &id) {
                state_err = Some(e);
                return Err(sluice_connectors::ConnectorError::Write("checkpoint abandoned: operator state could not be written".into()));
            }
            wb.put_cf(store.cf(CF_STATE), meta_key(&id), &meta_bytes);
            if let Some(entry) = &outbox {
                sink_nulls::stage(&store, wb, entry);
            }
            Ok(())
        };
        let appended = match &self.sink {
            SinkKind::Topic { partitions, key } => {
                let pending = std::mem::take(&mut self.pending);
                let writes = partition_batches(&pending, *partitions, key)?;
                self.log.append(self.plan.sink.topic(), &writes, &mut fill)
            }
            SinkKind::Blackhole => {
                let mut wb = WriteBatch::default();
                let r = fill(&mut wb).and_then(|()| Ok(self.store.write(wb)?));
                self.pending.clear();
                r
            }
            SinkKind::Channel(channel) => {
                // The state is built (operators expire and compact at checkpoints) but not
                // written: a subscription is never restored.
                let mut wb = WriteBatch::default();
                let r = fill(&mut wb);
                if r.is_ok() {
                    let positions = self
                        .sources
                        .iter()
                        .filter_map(|s| match &s.kind {
                            SourceKind::Topic { topic } => Some((topic, &s.positions)),
                            SourceKind::Datagen { .. } => None,
                        })
                        .flat_map(|(t, ps)| ps.iter().enumerate().map(move |(p, o)| ((t.clone(), p as u32), *o)))
                        .collect();
                    let out = EpochOutput { epoch: self.epoch, batches: std::mem::take(&mut self.pending), positions };
                    if !channel.deliver(out, &self.status.stop) {
                        // The subscriber is gone: end the dataflow.
                        self.status.stop.store(true, Ordering::Relaxed);
                    }
                }
                r
            }
        };
        if let Some(e) = state_err {
            return Err(e);
        }
        appended?;
        self.dead_letters.clear();
        if outbox.is_some() {
            failpoint("checkpoint::before_dead_letters")?;
            sink_nulls::ship(&self.store, self.log.as_ref(), &self.id)?;
        }
        failpoint("checkpoint::after_commit")?;
        self.status.null_rows.fetch_add(std::mem::take(&mut self.pending_refused), Ordering::Relaxed);
        self.status.rows_out.fetch_add(self.pending_rows as u64, Ordering::Relaxed);
        self.status.checkpoints.store(self.epoch, Ordering::Relaxed);
        self.status.state_rows.store(self.graph.state_rows(), Ordering::Relaxed);
        self.status.state_bytes.store(self.graph.state_bytes(), Ordering::Relaxed);
        self.pending_rows = 0;
        self.dirty = false;
        self.publish_positions();
        tracing::debug!(job = %self.id, epoch = self.epoch, "checkpoint committed");
        Ok(())
    }

    /// Publishes the committed positions, for FLUSH: topic offsets, and how many bounded
    /// generators have not yet committed their last row.
    fn publish_positions(&self) {
        let generators = self
            .sources
            .iter()
            .filter(|s| matches!(&s.kind, SourceKind::Datagen { total: Some(t), .. } if s.positions[0] < *t))
            .count() as u64;
        self.status.pending_generators.store(generators, Ordering::Relaxed);
        let mut c = self.status.committed.lock().unwrap();
        for s in &self.sources {
            if let SourceKind::Topic { topic } = &s.kind {
                for (p, pos) in s.positions.iter().enumerate() {
                    c.insert((topic.clone(), p as u32), *pos);
                }
            }
        }
    }
}

/// Splits output batches by partition: Kafka's default partitioner over the key columns (the
/// primary key, or the whole row) as a JSON object ([`sluice_connectors::partition`]), so one
/// key's changes stay in order in one partition, placed where any Kafka producer would put it.
pub fn partition_batches(pending: &[RecordBatch], partitions: u32, key: &[usize]) -> Result<Vec<(u32, RecordBatch)>> {
    if partitions <= 1 {
        return Ok(pending.iter().map(|b| (0, b.clone())).collect());
    }
    let mut out = Vec::new();
    for b in pending {
        let keys = b.project(key)?;
        let placed = partitions_of_rows(&keys, partitions)?;
        for p in 0..partitions {
            let idx: UInt32Array =
                placed.iter().enumerate().filter(|(_, q)| **q == p).map(|(i, _)| i as u32).collect();
            if !idx.is_empty() {
                out.push((p, take_record_batch(b, &idx)?));
            }
        }
    }
    Ok(out)
}
