//! Errors of the planner.

use datafusion::error::DataFusionError;

/// Errors raised while parsing and planning statements. The server maps each variant to a
/// SQLSTATE in one place.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The statement text is not valid SQL (42601).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The statement nests deeper than Sluice parses and plans safely (54001, PostgreSQL's
    /// `statement_too_complex`); the message says which limit.
    #[error("statement too complex: {0}")]
    TooComplex(String),
    /// Unknown table (42P01).
    #[error("table \"{0}\" does not exist")]
    UnknownTable(String),
    /// Unknown column (42703).
    #[error("{0}")]
    UnknownColumn(String),
    /// Object already exists (42P07).
    #[error("table \"{0}\" already exists")]
    AlreadyExists(String),
    /// The statement is valid SQL but Sluice cannot run it (0A000); the message says which part
    /// and why.
    #[error("{0}")]
    Unsupported(String),
    /// A type name Sluice does not know (42704).
    #[error("type \"{0}\" does not exist")]
    UnknownType(String),
    /// A bad `WITH` option or argument (22023).
    #[error("{0}")]
    InvalidParameter(String),
    /// Data does not match the column type (42804).
    #[error("{0}")]
    DatatypeMismatch(String),
    /// DataFusion failed planning or evaluating.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] sluice_catalog::CatalogError),
    /// A connector rejected its options.
    #[error(transparent)]
    Connector(#[from] sluice_connectors::ConnectorError),
}

impl From<sqlparser::parser::ParserError> for PlanError {
    fn from(e: sqlparser::parser::ParserError) -> Self {
        match e {
            sqlparser::parser::ParserError::RecursionLimitExceeded => PlanError::TooComplex(format!(
                "it nests more than {} levels of expressions and subqueries",
                crate::statement::PARSER_RECURSION_LIMIT
            )),
            e => PlanError::Syntax(e.to_string()),
        }
    }
}

impl From<sqlparser::tokenizer::TokenizerError> for PlanError {
    fn from(e: sqlparser::tokenizer::TokenizerError) -> Self {
        PlanError::Syntax(e.to_string())
    }
}

impl From<arrow::error::ArrowError> for PlanError {
    fn from(e: arrow::error::ArrowError) -> Self {
        PlanError::DataFusion(DataFusionError::ArrowError(Box::new(e), None))
    }
}

/// Result alias of the planner.
pub type Result<T, E = PlanError> = std::result::Result<T, E>;
