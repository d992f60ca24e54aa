//! Errors of the executor.

use datafusion::error::DataFusionError;

/// Errors raised while running dataflows.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Evaluating an expression failed (a cast of bad data, a division by zero...).
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// Arrow failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// The catalog or store failed.
    #[error(transparent)]
    Catalog(#[from] sluice_catalog::CatalogError),
    /// A topic log or connector failed.
    #[error(transparent)]
    Connector(#[from] sluice_connectors::ConnectorError),
    /// RocksDB failed.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// Stored state could not be decoded.
    #[error("corrupt state: {0}")]
    CorruptState(String),
    /// The operation is not possible (e.g. reading an unbounded generator as a batch).
    #[error("{0}")]
    Unsupported(String),
    /// An armed failpoint fired (crash-injection tests, [`sluice_catalog::failpoint`]).
    #[error("{0}")]
    Failpoint(String),
    /// Stored state does not belong to this plan or this version of Sluice (SQLSTATE 55000 at
    /// the server): restoring it would compute wrong results.
    #[error("{0}")]
    StateMismatch(String),
    /// `FLUSH` found failed jobs (SQLSTATE 55000 at the server); the message names each.
    #[error("{0}")]
    JobsFailed(String),
    /// A job's output row has NULL in a NOT NULL column of its sink and the sink's enforcer
    /// is `ERROR` (SQLSTATE 23502 at the server; the text without the code is in the field).
    /// Nothing of the epoch that produced the row commits.
    #[error("{0} (SQLSTATE 23502)")]
    NotNull(String),
    /// A job's output row has a value longer than its sink column's `VARCHAR(n)`/`CHAR(n)` and
    /// the job's length enforcer is `ERROR` (SQLSTATE 22001 at the server; the text without
    /// the code is in the field). Nothing of the epoch that produced the row commits.
    #[error("{0} (SQLSTATE 22001)")]
    ValueTooLong(String),
    /// `FLUSH` timed out (SQLSTATE 57014 at the server); the message names the jobs behind.
    #[error("{0}")]
    FlushTimeout(String),
}

/// Result alias of the executor.
pub type Result<T, E = ExecError> = std::result::Result<T, E>;

/// Evaluates the failpoint `name` ([`sluice_catalog::failpoint::check`]) as an executor error.
pub(crate) fn failpoint(name: &str) -> Result<()> {
    sluice_catalog::failpoint::check(name).map_err(ExecError::Failpoint)
}
