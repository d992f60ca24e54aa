//! Runs streaming dataflows.
//!
//! - [`operator`]: the [`operator::Operator`] trait: one required method that turns an input
//!   change batch into output change batches, with watermark and checkpoint hooks.
//! - [`source`], [`filter`], [`join`], [`aggregate`]: the operators.
//! - [`graph`]: an operator tree built from a dataflow plan, pushing batches from sources to the
//!   root and watermarks bottom-up.
//! - [`job`]: a persistent query's thread: reads sources from checkpointed offsets, runs the
//!   graph, and commits barrier-aligned epochs (offsets, state and output in one atomic write).
//! - [`materialize`]: a table's current contents from its changelog, for batch `SELECT`.
//! - [`sink_nulls`]: the sink's NOT NULL columns enforced on a job's output (Flink's
//!   `table.exec.sink.not-null-enforcer`), and the outbox of dead-lettered rows.
//! - [`sink_lengths`]: the sink's `VARCHAR(n)`/`CHAR(n)` lengths enforced on a job's output
//!   (Flink's `table.exec.sink.type-length-enforcer`).
//! - [`state`]: key layout of operator state in the store.
//! - [`error`]: the crate's error type.

pub mod aggregate;
pub mod error;
pub mod filter;
pub mod graph;
pub(crate) mod groups;
pub mod job;
pub mod join;
pub mod materialize;
pub mod operator;
pub mod rows;
pub mod sink_lengths;
pub mod sink_nulls;
pub mod source;
pub mod state;
pub mod status;
pub mod subscribe;
pub mod window_agg;

pub use error::{ExecError, Result};
pub use job::JobRuntime;
pub use status::JobStatus;
pub use subscribe::{EpochOutput, Subscription};
pub use materialize::MaterializedTable;
pub use sink_nulls::SinkPolicy;
