//! The shared model of Sluice: what every other crate agrees on.
//!
//! - [`change`]: the change batch, an Arrow `RecordBatch` plus one changelog op per row
//!   (insert, delete, update-before, update-after), the unit that flows between operators and
//!   is stored in topics.
//! - [`table`]: catalog entries for tables (columns, primary key, watermark, `WITH` options) and
//!   persistent queries (jobs).
//! - [`store`]: the persistent store under the data directory, one RocksDB instance whose column
//!   families hold the catalog, the embedded topic logs and operator state, so one atomic write
//!   batch can commit a checkpoint across all three.
//! - [`enforcer`]: what a job does with NULL in a NOT NULL column of its sink (Flink's
//!   `table.exec.sink.not-null-enforcer`) and with a string that does not fit its sink column's
//!   `VARCHAR(n)`/`CHAR(n)` (Flink's `table.exec.sink.type-length-enforcer`).
//! - [`lengths`]: declared string lengths applied to rows being written: PostgreSQL's 22001
//!   rule and `CHAR(n)` blank-padding for client writes, the length enforcer for jobs' output.
//! - [`state_ttl`]: how long a job keeps state for keys it no longer sees (Flink's
//!   `table.exec.state.ttl`).
//! - [`role`]: roles (users): attributes, password verifiers (never a password), table
//!   privileges.
//! - [`failpoint`]: crash injection at commit boundaries (the `fail` crate).
//! - [`error`]: the crate's error type.

pub mod change;
pub mod dataflow;
pub mod enforcer;
pub mod error;
pub mod failpoint;
pub mod lengths;
pub mod role;
pub mod state_ttl;
pub mod store;
pub mod table;

pub use change::{ChangeBatch, Op, OP_COLUMN};
pub use enforcer::{NotNullEnforcer, TypeLengthEnforcer};
pub use error::{CatalogError, Result};
pub use role::{Privilege, RoleDef};
pub use store::Store;
pub use table::{redact_options, redact_text, ColumnDef, ConnectorDef, JobDef, JobState, TableDef, WatermarkDef};
