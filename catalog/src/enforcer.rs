//! What a persistent query does with an output row that does not fit its sink's schema:
//!
//! - NULL in a NOT NULL column (a primary-key column, which is NOT NULL as in Flink, or one
//!   declared `NOT NULL`): Flink's `table.exec.sink.not-null-enforcer`, with `LOG` added
//!   ([`NotNullEnforcer`]);
//! - a string longer than its `VARCHAR(n)`/`CHAR(n)` column, or shorter than its `CHAR(n)`:
//!   Flink's `table.exec.sink.type-length-enforcer`, with `ERROR` added and made the default
//!   ([`TypeLengthEnforcer`]; the rule itself is [`crate::lengths`]).
//!
//! Each is chosen when the job is created (the sink table's option, else the session's `SET`),
//! stored with the job, and changed by `RESUME JOB '<id>' WITH (...)`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{CatalogError, Result};

/// The session option, as Flink names it: `SET 'table.exec.sink.not-null-enforcer' = 'DROP'`.
/// Also the one key `RESUME JOB '<id>' WITH (...)` takes.
pub const SESSION_OPTION: &str = "table.exec.sink.not-null-enforcer";

/// The sink table's option, `WITH ('sink.not-null-enforcer' = 'LOG')`; it takes precedence over
/// the session option (as Flink's table options take precedence over its job configuration).
pub const TABLE_OPTION: &str = "sink.not-null-enforcer";

/// The enforcer of a job's sink, chosen when the job is created and stored with it
/// ([`crate::JobDef::not_null_enforcer`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum NotNullEnforcer {
    /// Flink's default: the job fails with SQLSTATE 23502 naming the column and the sink, and
    /// nothing of the epoch that produced the row commits.
    #[default]
    Error,
    /// The row is left out of the sink, silently but counted (`SHOW JOBS`' `null_rows`).
    Drop,
    /// The row goes to the sink's dead-letter table `<sink>_dlq` (the shape Kafka sources use
    /// in `'error-handling.mode' = 'log'`), in the same epoch as the sink's other rows; counted
    /// in `null_rows` too. Not in Flink.
    Log,
}

impl NotNullEnforcer {
    /// Parses `ERROR`, `DROP` or `LOG`, in any case (Flink parses enum options so), given as
    /// the value of `key`.
    ///
    /// Errors: [`CatalogError::InvalidOption`] (SQLSTATE 22023) for any other value.
    pub fn parse(key: &str, value: &str) -> Result<NotNullEnforcer> {
        match value.trim().to_ascii_uppercase().as_str() {
            "ERROR" => Ok(NotNullEnforcer::Error),
            "DROP" => Ok(NotNullEnforcer::Drop),
            "LOG" => Ok(NotNullEnforcer::Log),
            _ => Err(CatalogError::InvalidOption(format!(
                "option '{key}' must be 'ERROR', 'DROP' or 'LOG', got '{value}'"
            ))),
        }
    }

    /// The enforcer of a new job into a sink with `table_options`: the table's
    /// [`TABLE_OPTION`] if set, else the session's [`SESSION_OPTION`] value if set, else
    /// [`NotNullEnforcer::Error`].
    ///
    /// Errors: [`CatalogError::InvalidOption`] for a value that is not an enforcer.
    pub fn for_sink(table_options: &BTreeMap<String, String>, session: Option<&str>) -> Result<NotNullEnforcer> {
        match (table_options.get(TABLE_OPTION), session) {
            (Some(v), _) => NotNullEnforcer::parse(TABLE_OPTION, v),
            (None, Some(v)) => NotNullEnforcer::parse(SESSION_OPTION, v),
            (None, None) => Ok(NotNullEnforcer::Error),
        }
    }

    /// `ERROR`, `DROP` or `LOG`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotNullEnforcer::Error => "ERROR",
            NotNullEnforcer::Drop => "DROP",
            NotNullEnforcer::Log => "LOG",
        }
    }
}

/// The session option of the length enforcer, as Flink names it:
/// `SET 'table.exec.sink.type-length-enforcer' = 'TRIM_PAD'`. `RESUME JOB '<id>' WITH (...)`
/// takes it too.
pub const LENGTH_SESSION_OPTION: &str = "table.exec.sink.type-length-enforcer";

/// The sink table's option of the length enforcer, `WITH ('sink.type-length-enforcer' =
/// 'IGNORE')`; it takes precedence over [`LENGTH_SESSION_OPTION`], as [`TABLE_OPTION`] does.
pub const LENGTH_TABLE_OPTION: &str = "sink.type-length-enforcer";

/// What a job does with a value of its output that does not fit the declared length of its
/// sink's `VARCHAR(n)` or `CHAR(n)` column (n characters, not bytes): Flink's
/// `table.exec.sink.type-length-enforcer` (`IGNORE`, Flink's default, and `TRIM_PAD`), with
/// `ERROR` added as Sluice's default, which fails closed as PostgreSQL's assignment does.
/// Chosen when the job is created ([`TypeLengthEnforcer::for_sink`]) and stored with it
/// ([`crate::JobDef::type_length_enforcer`]). Applied by [`crate::TableDef::fit_lengths`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TypeLengthEnforcer {
    /// Sluice's default, PostgreSQL's rule for a value assigned to `character varying(n)` or
    /// `character(n)`: a value longer than n characters fails the job with SQLSTATE 22001
    /// naming the column, the sink and the job, and nothing of the epoch that produced it
    /// commits; unless the characters beyond n are all spaces, which are cut off. A `CHAR(n)`
    /// value shorter than n is blank-padded to n, as PostgreSQL stores it. Not in Flink.
    #[default]
    Error,
    /// Flink's `TRIM_PAD`: a value longer than n characters is cut to its first n characters,
    /// and a `CHAR(n)` value shorter than n is padded with spaces to n.
    TrimPad,
    /// Flink's `IGNORE` (Flink's default): values are stored as they are, whatever their
    /// length. Also what jobs stored before the enforcer existed do
    /// ([`TypeLengthEnforcer::stored_before_enforcer`]).
    Ignore,
}

impl TypeLengthEnforcer {
    /// Parses `ERROR`, `TRIM_PAD` or `IGNORE`, in any case, given as the value of `key`.
    ///
    /// Errors: [`CatalogError::InvalidOption`] (SQLSTATE 22023) for any other value.
    pub fn parse(key: &str, value: &str) -> Result<TypeLengthEnforcer> {
        match value.trim().to_ascii_uppercase().as_str() {
            "ERROR" => Ok(TypeLengthEnforcer::Error),
            "TRIM_PAD" => Ok(TypeLengthEnforcer::TrimPad),
            "IGNORE" => Ok(TypeLengthEnforcer::Ignore),
            _ => Err(CatalogError::InvalidOption(format!(
                "option '{key}' must be 'ERROR', 'TRIM_PAD' or 'IGNORE', got '{value}'"
            ))),
        }
    }

    /// The length enforcer of a new job into a sink with `table_options`: the table's
    /// [`LENGTH_TABLE_OPTION`] if set, else the session's [`LENGTH_SESSION_OPTION`] value if
    /// set, else [`TypeLengthEnforcer::Error`].
    ///
    /// Errors: [`CatalogError::InvalidOption`] for a value that is not an enforcer.
    pub fn for_sink(table_options: &BTreeMap<String, String>, session: Option<&str>) -> Result<TypeLengthEnforcer> {
        match (table_options.get(LENGTH_TABLE_OPTION), session) {
            (Some(v), _) => TypeLengthEnforcer::parse(LENGTH_TABLE_OPTION, v),
            (None, Some(v)) => TypeLengthEnforcer::parse(LENGTH_SESSION_OPTION, v),
            (None, None) => Ok(TypeLengthEnforcer::Error),
        }
    }

    /// The enforcer of a job stored before the field existed: [`TypeLengthEnforcer::Ignore`],
    /// which is what such a job did. Not `ERROR`: padding or cutting values from the middle of
    /// a job's changelog on would make its later retractions miss the rows it stored before
    /// (an upsert key `'ab'` stored, `'ab  '` deleted). `STOP JOB` and `RESUME JOB ... WITH`
    /// change it.
    pub fn stored_before_enforcer() -> TypeLengthEnforcer {
        TypeLengthEnforcer::Ignore
    }

    /// `ERROR`, `TRIM_PAD` or `IGNORE`.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeLengthEnforcer::Error => "ERROR",
            TypeLengthEnforcer::TrimPad => "TRIM_PAD",
            TypeLengthEnforcer::Ignore => "IGNORE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_option_wins_over_the_session() {
        let mut opts = BTreeMap::new();
        assert_eq!(NotNullEnforcer::for_sink(&opts, None).unwrap(), NotNullEnforcer::Error);
        assert_eq!(NotNullEnforcer::for_sink(&opts, Some("drop")).unwrap(), NotNullEnforcer::Drop);
        opts.insert(TABLE_OPTION.to_string(), "LOG".to_string());
        assert_eq!(NotNullEnforcer::for_sink(&opts, Some("DROP")).unwrap(), NotNullEnforcer::Log);
        let e = NotNullEnforcer::parse(SESSION_OPTION, "skip").unwrap_err().to_string();
        assert!(e.contains("'table.exec.sink.not-null-enforcer'") && e.contains("'skip'"), "{e}");
        // Stored jobs older than the field read as ERROR, the behaviour they had.
        #[derive(Deserialize)]
        struct Old {
            #[serde(default)]
            e: NotNullEnforcer,
        }
        assert_eq!(serde_json::from_str::<Old>("{}").unwrap().e, NotNullEnforcer::Error);
        assert_eq!(serde_json::to_string(&NotNullEnforcer::Drop).unwrap(), "\"DROP\"");
    }

    #[test]
    fn length_enforcer_options() {
        let mut opts = BTreeMap::new();
        assert_eq!(TypeLengthEnforcer::for_sink(&opts, None).unwrap(), TypeLengthEnforcer::Error);
        assert_eq!(TypeLengthEnforcer::for_sink(&opts, Some("trim_pad")).unwrap(), TypeLengthEnforcer::TrimPad);
        opts.insert(LENGTH_TABLE_OPTION.to_string(), "Ignore".to_string());
        assert_eq!(TypeLengthEnforcer::for_sink(&opts, Some("TRIM_PAD")).unwrap(), TypeLengthEnforcer::Ignore);
        let e = TypeLengthEnforcer::parse(LENGTH_SESSION_OPTION, "trim").unwrap_err().to_string();
        assert!(e.contains("'table.exec.sink.type-length-enforcer'") && e.contains("'trim'"), "{e}");
        assert_eq!(serde_json::to_string(&TypeLengthEnforcer::TrimPad).unwrap(), "\"TRIM_PAD\"");
        assert_eq!(serde_json::from_str::<TypeLengthEnforcer>("\"IGNORE\"").unwrap(), TypeLengthEnforcer::Ignore);
    }
}
