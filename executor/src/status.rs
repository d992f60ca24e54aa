//! A job's live status and counters, shared between its thread and the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Live status and counters of a job, shared with the server for `SHOW JOBS` and `FLUSH`.
#[derive(Debug)]
pub struct JobStatus {
    /// Job id.
    pub id: String,
    /// The table written.
    pub sink: String,
    /// Rows read from sources.
    pub rows_in: AtomicU64,
    /// Rows written to the sink (committed).
    pub rows_out: AtomicU64,
    /// Rows dropped because they arrived behind the watermark.
    pub late_rows: Arc<AtomicU64>,
    /// Output rows with NULL in a NOT NULL column of the sink, left out (`DROP`) or written to
    /// the dead-letter table (`LOG`), in committed epochs ([`crate::sink_nulls`]).
    pub null_rows: AtomicU64,
    /// Completed checkpoints.
    pub checkpoints: AtomicU64,
    /// Entries in the job's operator state (join rows, groups) at the last checkpoint.
    pub state_rows: AtomicU64,
    /// Bytes of the job's operator state in the store at the last checkpoint.
    pub state_bytes: AtomicU64,
    /// Set when the job failed; the job thread has ended.
    pub error: Mutex<Option<String>>,
    /// Committed positions: `(topic, partition) -> offset`, for `FLUSH`. Unbounded generators
    /// are not listed.
    pub committed: Mutex<HashMap<(String, u32), u64>>,
    /// Bounded generators not yet exhausted.
    pub pending_generators: AtomicU64,
    pub(crate) stop: AtomicBool,
    pub(crate) running: AtomicBool,
    /// Set when every source was bounded and has ended: the job committed its last epoch.
    pub(crate) finished: AtomicBool,
    pub(crate) handle: Mutex<Option<JoinHandle<()>>>,
}

impl JobStatus {
    /// `RUNNING`, `FAILED`, `FINISHED` (every source bounded and ended) or `STOPPED`.
    pub fn state(&self) -> &'static str {
        if self.error.lock().unwrap().is_some() {
            "FAILED"
        } else if self.running.load(Ordering::Relaxed) {
            "RUNNING"
        } else if self.finished.load(Ordering::Relaxed) {
            "FINISHED"
        } else {
            "STOPPED"
        }
    }

    /// True while the job thread runs.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
}

