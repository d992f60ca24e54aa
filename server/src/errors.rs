//! The server's error type and the one place where errors become SQLSTATE codes.

use datafusion::error::DataFusionError;
use pgwire::error::{ErrorInfo, PgWireError};
use sluice_executor::ExecError;
use sluice_planner::PlanError;

/// An error sent to a client: a SQLSTATE code and a message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} (SQLSTATE {code})")]
pub struct SqlError {
    /// The five-character SQLSTATE.
    pub code: &'static str,
    /// The message.
    pub message: String,
}

impl SqlError {
    /// An error with an explicit code.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        SqlError { code, message: message.into() }
    }

    /// 42P01: undefined table.
    pub fn unknown_table(name: &str) -> Self {
        Self::new("42P01", format!("table \"{name}\" does not exist"))
    }

    /// 0A000: feature not supported.
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Self::new("0A000", msg)
    }

    /// 22P02: invalid text representation.
    pub fn bad_value(msg: impl Into<String>) -> Self {
        Self::new("22P02", msg)
    }
}

/// Result alias of the server.
pub type SqlResult<T> = std::result::Result<T, SqlError>;

/// Classifies a DataFusion error by its kind and message.
fn classify_datafusion(e: &DataFusionError) -> &'static str {
    let msg = e.to_string();
    let has = |s: &str| msg.contains(s);
    if has("recursion limit exceeded") {
        "54001"
    } else if has("non-nullable but contains null") {
        "23502"
    } else if has("No field named") || has("not found in schema") {
        "42703"
    } else if has("table '") && has("not found") || has("Table or CTE with name") {
        "42P01"
    } else if has("Can't cast value") {
        // arrow's cast of a number that does not fit the target type.
        "22003"
    } else if has("Cast error") || has("Cannot cast") || has("cannot be cast") || has("Parser error") || has("Unparsable") || has("invalid digit") || has("Error parsing") {
        "22P02"
    } else if has("Divide by zero") || has("division by zero") {
        "22012"
    } else if has("ParserError") || has("sql parser error") || has("SQL error") {
        "42601"
    } else if has("Invalid function") || has("No function matches") {
        "42883"
    } else if has("overflow") {
        "22003"
    } else {
        match e {
            DataFusionError::NotImplemented(_) => "0A000",
            DataFusionError::Plan(_) | DataFusionError::SchemaError(_, _) => "42000",
            DataFusionError::Execution(_) | DataFusionError::ArrowError(_, _) => "22000",
            DataFusionError::Context(_, inner) => classify_datafusion(inner),
            _ => "XX000",
        }
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        let code = classify_datafusion(&e);
        let msg = e.to_string();
        // DataFusion prefixes messages with its error kind; keep the part a user needs.
        let msg = msg
            .trim_start_matches("Error during planning: ")
            .trim_start_matches("Schema error: ")
            .trim_start_matches("Execution error: ")
            .trim_start_matches("Arrow error: ")
            .trim_start_matches("SQL error: ")
            .to_string();
        SqlError { code, message: msg }
    }
}

impl From<PlanError> for SqlError {
    fn from(e: PlanError) -> Self {
        let code = match &e {
            PlanError::Syntax(_) => "42601",
            PlanError::TooComplex(_) => "54001",
            PlanError::UnknownTable(_) => "42P01",
            PlanError::UnknownColumn(_) => "42703",
            PlanError::AlreadyExists(_) => "42P07",
            PlanError::Unsupported(_) => "0A000",
            PlanError::UnknownType(_) => "42704",
            PlanError::InvalidParameter(_) => "22023",
            PlanError::DatatypeMismatch(_) => "42804",
            PlanError::DataFusion(_) => "",
            PlanError::Catalog(_) => "XX000",
            PlanError::Connector(_) => "22023",
        };
        if let PlanError::DataFusion(d) = e {
            return SqlError::from(d);
        }
        SqlError { code, message: e.to_string() }
    }
}

impl From<ExecError> for SqlError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::DataFusion(d) => SqlError::from(d),
            ExecError::Arrow(a) => SqlError::from(DataFusionError::ArrowError(Box::new(a), None)),
            ExecError::Unsupported(m) => SqlError::new("0A000", m),
            ExecError::StateMismatch(m) | ExecError::JobsFailed(m) => SqlError::new("55000", m),
            ExecError::FlushTimeout(m) => SqlError::new("57014", m),
            ExecError::NotNull(m) => SqlError::new("23502", m),
            ExecError::ValueTooLong(m) => SqlError::new("22001", m),
            other => {
                let m = other.to_string();
                SqlError::new(internal_or_disk_full(&m), m)
            }
        }
    }
}

/// `53100` (disk_full) for a storage error that says the disk is full (RocksDB reports
/// ENOSPC as "No space left on device"), else `XX000`.
fn internal_or_disk_full(message: &str) -> &'static str {
    if message.contains("No space left on device") || message.contains("ENOSPC") {
        "53100"
    } else {
        "XX000"
    }
}

impl From<sluice_catalog::CatalogError> for SqlError {
    fn from(e: sluice_catalog::CatalogError) -> Self {
        use sluice_catalog::CatalogError as C;
        let code = match &e {
            C::AlreadyExists { .. } => "42P07",
            C::NotFound { .. } => "42P01",
            C::InUse(_) => "2BP01",
            C::ValueTooLong { .. } => "22001",
            C::InvalidOption(_) => "22023",
            _ => internal_or_disk_full(&e.to_string()),
        };
        SqlError { code, message: e.to_string() }
    }
}

impl From<sluice_connectors::ConnectorError> for SqlError {
    fn from(e: sluice_connectors::ConnectorError) -> Self {
        use sluice_connectors::ConnectorError as C;
        let code = match &e {
            C::InvalidOption(_) => "22023",
            C::UnknownTopic(_) => "42P01",
            // connection_exception: the outside system is unreachable or refused.
            C::External(_) => "08000",
            _ => internal_or_disk_full(&e.to_string()),
        };
        SqlError { code, message: e.to_string() }
    }
}

impl From<arrow::error::ArrowError> for SqlError {
    fn from(e: arrow::error::ArrowError) -> Self {
        SqlError::from(DataFusionError::ArrowError(Box::new(e), None))
    }
}

impl From<SqlError> for PgWireError {
    fn from(e: SqlError) -> Self {
        PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".to_owned(), e.code.to_owned(), e.message)))
    }
}

