//! Errors of the connectors crate.

/// Errors raised by topic logs, sources and sinks.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The topic is not known to the log.
    #[error("topic \"{0}\" does not exist")]
    UnknownTopic(String),
    /// A `WITH (...)` option is missing, unknown or has a bad value (SQLSTATE 22023 at the server).
    #[error("{0}")]
    InvalidOption(String),
    /// The catalog or the store failed.
    #[error(transparent)]
    Catalog(#[from] sluice_catalog::CatalogError),
    /// RocksDB failed.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// An outside system (Kafka, Postgres, MongoDB) failed or refused a request.
    #[error("{0}")]
    External(String),
    /// Writing rows into a table failed (a NOT NULL column given NULL, the store failing).
    #[error("{0}")]
    Write(String),
    /// Arrow failed encoding or decoding a batch.
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Result alias of the connectors crate.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
