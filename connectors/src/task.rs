//! What connector tasks share: the table they write into or read from, their positions, and the
//! status `SHOW CONNECTORS` / `DESCRIBE CONNECTOR` print.
//!
//! A *source task* reads an outside system (a Kafka topic, a Postgres replication slot) and
//! appends changelog rows to a table's topic through [`IngestTarget::append`], which stores the
//! source position (Kafka offsets, an LSN) in the same atomic write as the rows: a restart
//! resumes exactly after the last rows written, so nothing is lost or counted twice.
//!
//! A *sink task* tails a table's topic and delivers its changelog to an outside system (Kafka,
//! MongoDB), storing its read position once the outside system acknowledged the rows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use sluice_catalog::ChangeBatch;

use crate::error::{ConnectorError, Result};

/// Where a source task writes: one table's topic, plus a key-value area for positions.
pub trait IngestTarget: Send + Sync {
    /// Appends `rows` (the table's physical columns) to the table's topic, atomically with the
    /// `positions` (key, value) pairs, which land in the store's meta area. `dead_letters`
    /// (rows of [`crate::format::dead_letter_schema`]) go to the table's dead-letter table,
    /// written just before.
    ///
    /// Errors: a NOT NULL column given NULL, or the store failing; nothing is written then.
    fn append(&self, rows: Vec<ChangeBatch>, dead_letters: Option<RecordBatch>, positions: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()>;
    /// A position stored by an earlier [`IngestTarget::append`] or [`IngestTarget::put_position`].
    fn position(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Stores a position on its own (a sink's read position).
    fn put_position(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// The rows the table holds now under the primary keys of `rows` (a batch of the table's
    /// physical columns; only its key columns are read), for filling in values a source left out
    /// (Postgres's unchanged TOAST values): one row per row of `rows`, in order, and for each
    /// whether the table holds a row with that key (the row is all NULL where it does not).
    ///
    /// Errors: the table has no primary key, or the store failing. The default body is for
    /// targets that keep no rows, and always fails.
    fn lookup(&self, rows: &RecordBatch) -> Result<(RecordBatch, Vec<bool>)> {
        let _ = rows;
        Err(ConnectorError::Write("this target keeps no rows to look up".into()))
    }
    /// Every row the table holds now (its physical columns), for a snapshot taken again after
    /// a crash to find the rows the source no longer has.
    ///
    /// Errors: the store failing. The default body is for targets that keep no rows, and
    /// always fails.
    fn current_rows(&self) -> Result<RecordBatch> {
        Err(ConnectorError::Write("this target keeps no rows to read".into()))
    }
}

/// Lifecycle of a connector task, as Kafka Connect names connector states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Starting, or taking the initial snapshot.
    Starting,
    /// Copying changes.
    Running,
    /// Waiting for the outside system, retrying with backoff.
    Retrying,
    /// Failed; the error says why. Restarting the daemon retries.
    Failed,
    /// Stopped by DROP.
    Stopped,
}

impl TaskState {
    /// Upper-case name as `SHOW CONNECTORS` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Starting => "STARTING",
            TaskState::Running => "RUNNING",
            TaskState::Retrying => "RETRYING",
            TaskState::Failed => "FAILED",
            TaskState::Stopped => "STOPPED",
        }
    }
}

/// Live status of one connector task; shared between the task and the server.
#[derive(Debug)]
pub struct TaskStatus {
    state: Mutex<(TaskState, Option<String>)>,
    /// Rows copied so far in this process.
    pub rows: AtomicU64,
    /// Messages sent to the dead-letter table so far in this process.
    pub dead_letters: AtomicU64,
    /// The last position committed, as text (`topic/partition@offset`, an LSN).
    pub position: Mutex<String>,
    /// Snapshot progress: rows read of the initial snapshot (CDC).
    pub snapshot_rows: AtomicU64,
    /// Lag in milliseconds between a change's commit at the source and its append here (CDC).
    pub lag_ms: AtomicU64,
    /// Set to ask the task to stop.
    pub stop: AtomicBool,
}

impl Default for TaskStatus {
    fn default() -> Self {
        TaskStatus {
            state: Mutex::new((TaskState::Starting, None)),
            rows: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            position: Mutex::new(String::new()),
            snapshot_rows: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }
}

impl TaskStatus {
    /// A new status, shared.
    pub fn new() -> Arc<TaskStatus> {
        Arc::new(TaskStatus::default())
    }

    /// Sets the state and its message (the error of `Failed` / `Retrying`).
    pub fn set(&self, state: TaskState, message: Option<String>) {
        *self.state.lock().unwrap() = (state, message);
    }

    /// The state and its message.
    pub fn get(&self) -> (TaskState, Option<String>) {
        self.state.lock().unwrap().clone()
    }

    /// True once asked to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `d` unless asked to stop first; true when asked to stop.
    pub fn sleep(&self, d: Duration) -> bool {
        let step = Duration::from_millis(20);
        let mut left = d;
        while left > Duration::ZERO {
            if self.stopping() {
                return true;
            }
            std::thread::sleep(step.min(left));
            left = left.saturating_sub(step);
        }
        self.stopping()
    }
}

/// Exponential backoff for retries against an outside system: 100 ms doubling to 10 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Duration::from_millis(100) }
    }
}

impl Backoff {
    /// The wait before the next attempt; each call doubles it, up to 10 s.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(10));
        d
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}
