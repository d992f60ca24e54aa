//! Errors of the catalog crate.

/// Errors raised by the catalog, the change-batch model and the persistent store.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// An object with this name already exists (SQLSTATE 42P07 at the server).
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// No object with this name (SQLSTATE 42P01 at the server).
    #[error("{kind} \"{name}\" does not exist")]
    NotFound { kind: &'static str, name: String },
    /// The object is in use by something that depends on it (SQLSTATE 2BP01).
    #[error("{0}")]
    InUse(String),
    /// A value does not fit its column's declared length, `VARCHAR(n)` or `CHAR(n)` (SQLSTATE
    /// 22001, `string_data_right_truncation`); the message is PostgreSQL's, `value too long for
    /// type character varying(3) (column "v" of table "t")`.
    #[error("{message}")]
    ValueTooLong {
        /// PostgreSQL's message, naming the column and the table.
        message: String,
        /// The row that holds the value, as [`crate::ChangeBatch::to_text`] prints it
        /// (`+I 1 abcdef`), for errors that name it (a job's).
        row: String,
    },
    /// A bad option value (SQLSTATE 22023, `invalid_parameter_value`); the message names the
    /// option.
    #[error("{0}")]
    InvalidOption(String),
    /// RocksDB failed (I/O, corruption, lock held by another process).
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// The data directory is held by another daemon (RocksDB's lock file).
    #[error("{0}")]
    Locked(String),
    /// A stored record could not be decoded.
    #[error("corrupt catalog record: {0}")]
    Corrupt(String),
    /// Arrow failed while building or decoding a batch.
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Result alias of the catalog crate.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

impl From<serde_json::Error> for CatalogError {
    fn from(e: serde_json::Error) -> Self {
        CatalogError::Corrupt(e.to_string())
    }
}
