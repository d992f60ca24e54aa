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

/// A DataFusion error's text as a SQL user reads it: the innermost cause of a chain
/// (`Optimizer rule 'simplify_expressions' failed caused by Arrow error: ...` is about the
/// statement, not the optimizer), without DataFusion's and Arrow's kind prefixes, and worded as
/// PostgreSQL words the errors of a value (22003, 22012).
fn sql_message(code: &str, text: &str) -> String {
    let inner = text.rsplit("caused by").next().unwrap_or(text).trim();
    let mut msg = inner;
    for prefix in ["Error during planning: ", "Schema error: ", "Execution error: ", "Arrow error: ", "SQL error: ", "Compute error: ", "Arithmetic overflow: ", "Divide by zero error"] {
        msg = msg.trim_start_matches(prefix).trim_start();
    }
    match code {
        "22003" if !msg.contains("out of range") => format!("value out of range: {msg}"),
        "22012" => "division by zero".to_string(),
        _ if msg.is_empty() => inner.to_string(),
        _ => msg.to_string(),
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        // A SQL error carried through a DataFusion stream (a canceled statement's rows, see
        // `crate::cancel`) keeps its SQLSTATE.
        if let DataFusionError::External(inner) = &e {
            if let Some(s) = inner.downcast_ref::<SqlError>() {
                return s.clone();
            }
        }
        let code = classify_datafusion(&e);
        SqlError { code, message: sql_message(code, &e.to_string()) }
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


#[cfg(test)]
mod tests {
    use super::sql_message;

    #[test]
    fn messages_speak_sql() {
        let overflow = "Optimizer rule 'simplify_expressions' failed\ncaused by\nArrow error: Arithmetic overflow: Overflow happened on: 9223372036854775807 + 1";
        assert_eq!(sql_message("22003", overflow), "value out of range: Overflow happened on: 9223372036854775807 + 1");
        assert_eq!(sql_message("22012", "Arrow error: Divide by zero error"), "division by zero");
        assert_eq!(sql_message("42P01", "Error during planning: table 'sluice.public.x' not found"), "table 'sluice.public.x' not found");
    }
}
