//! Subscriptions' dataflows (Materialize's `SUBSCRIBE`): a job whose sink is one client.
//!
//! The dataflow runs as any persistent query does (the same operators, epochs and watermarks),
//! but each committed epoch's output goes into a bounded channel to the subscriber instead of
//! into a topic, and nothing is checkpointed: a subscription ends with its client and is never
//! restored. It reads its sources from offset 0, so its first epochs rebuild the query's
//! current result; the server folds them into the snapshot.
//!
//! Backlog: the channel holds at most [`BACKLOG_EPOCHS`] epochs (each at most the job's epoch
//! size, 200 000 rows). When the subscriber reads slower than changes arrive, the channel
//! fills and the dataflow waits before its next epoch. Its input stays in the durable topic
//! log, so nothing is lost and no other job or session waits: the subscription falls behind,
//! and catches up when the client reads again. Memory stays bounded by the backlog.
//!
//! The dataflow stops when the [`Subscription`] is dropped (the client ended it, went away or
//! was cancelled), within one poll of its sources (100 ms).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use sluice_catalog::dataflow::DataflowPlan;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::error::Result;
use crate::job::JobRuntime;
use crate::sink_nulls::SinkPolicy;
use crate::status::JobStatus;

/// Epochs buffered between a subscription's dataflow and its client.
pub const BACKLOG_EPOCHS: usize = 2;

/// How long a dataflow with a full channel waits between checks of the channel and its stop
/// flag.
const FULL_WAIT: Duration = Duration::from_millis(5);

/// One committed epoch of a subscription's dataflow.
#[derive(Debug)]
pub struct EpochOutput {
    /// The epoch, counted from 1 for the subscription's dataflow.
    pub epoch: u64,
    /// The epoch's output rows in topic form: the query's columns, then the op column
    /// (`sluice_catalog::ChangeBatch::from_topic_batch` reads them).
    pub batches: Vec<RecordBatch>,
    /// The sources' positions once the epoch is committed: `(topic, partition) -> offset`
    /// (the next offset to read). Generated sources are not listed.
    pub positions: HashMap<(String, u32), u64>,
}

/// The job side of a subscription's channel.
pub(crate) struct ChannelSink {
    tx: mpsc::Sender<EpochOutput>,
}

impl ChannelSink {
    /// Hands an epoch to the subscriber, waiting while the channel is full. False when the
    /// subscriber is gone or `stop` is set while waiting: the dataflow should end.
    pub(crate) fn deliver(&self, mut out: EpochOutput, stop: &AtomicBool) -> bool {
        loop {
            match self.tx.try_send(out) {
                Ok(()) => return true,
                Err(TrySendError::Closed(_)) => return false,
                Err(TrySendError::Full(o)) => {
                    if stop.load(Ordering::Relaxed) {
                        return false;
                    }
                    out = o;
                    std::thread::sleep(FULL_WAIT);
                }
            }
        }
    }
}

/// A running subscription's dataflow, as the server holds it. Dropping it stops the dataflow.
pub struct Subscription {
    /// The dataflow's status (counters, its error if it failed).
    pub status: Arc<JobStatus>,
    /// Committed epochs, in order. Closed when the dataflow ends (failed or stopped).
    pub epochs: mpsc::Receiver<EpochOutput>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.status.stop.store(true, Ordering::Relaxed);
    }
}

impl JobRuntime {
    /// Starts a subscription's dataflow for `plan` (its sink describes the query's columns;
    /// its connector is not used), reading every source from offset 0.
    ///
    /// Errors: operator construction failed, as for [`JobRuntime::start_with`].
    pub fn subscribe(self: &Arc<Self>, id: &str, plan: DataflowPlan) -> Result<Subscription> {
        let (tx, epochs) = mpsc::channel(BACKLOG_EPOCHS);
        let status = self.start_inner(id, plan, SinkPolicy::default(), Some(ChannelSink { tx }))?;
        Ok(Subscription { status, epochs })
    }
}
