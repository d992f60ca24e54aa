//! What a persistent query does with an output row that has NULL in a NOT NULL column of its
//! sink (a primary-key column, which is NOT NULL as in Flink, or one declared `NOT NULL`):
//! Flink's `table.exec.sink.not-null-enforcer`, with `LOG` added.

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
}
