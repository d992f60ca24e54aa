//! Session options, and the enforcers of persistent queries' sinks (see
//! [`sluice_catalog::enforcer`]): the NOT NULL enforcer (Flink's
//! `table.exec.sink.not-null-enforcer`) and the length enforcer (Flink's
//! `table.exec.sink.type-length-enforcer`), each chosen when a job is created, stored with it
//! and changed by `RESUME JOB '<id>' WITH (...)`; and the dead-letter table `<sink>_dlq` that
//! the NOT NULL enforcer's `LOG` writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_catalog::enforcer::{LENGTH_SESSION_OPTION, SESSION_OPTION};
use sluice_catalog::state_ttl;
use sluice_catalog::{JobDef, NotNullEnforcer, TypeLengthEnforcer};
use sluice_connectors::format::dead_letter_schema;
use sluice_executor::SinkPolicy;
use sluice_planner::{parse_statement, SluiceStatement};

use crate::connect::dead_letter_table;
use crate::engine::{Engine, Output};
use crate::errors::{SqlError, SqlResult};
use crate::session::Session;

/// True when `job` writes its refused rows into `table` (its sink's dead-letter table).
pub(crate) fn logs_into(job: &JobDef, table: &str) -> bool {
    job.not_null_enforcer == NotNullEnforcer::Log && dead_letter_table(&job.sink) == table
}

impl Engine {
    /// `SET 'key' = 'value'` for the session. A key Sluice reads has its value checked here;
    /// other keys are kept and have no effect (Flink scripts set many).
    ///
    /// Errors: 22023 for a bad value of [`SESSION_OPTION`], [`LENGTH_SESSION_OPTION`] or
    /// [`state_ttl::SESSION_OPTION`].
    pub(crate) fn set_option(&self, session: &Session, key: &str, value: &str) -> SqlResult<Output> {
        if key == SESSION_OPTION {
            NotNullEnforcer::parse(key, value)?;
        }
        if key == LENGTH_SESSION_OPTION {
            TypeLengthEnforcer::parse(key, value)?;
        }
        if key == state_ttl::SESSION_OPTION {
            state_ttl::parse_ttl(key, value)?;
        }
        session.set_option(key, value);
        Ok(Output::Command { tag: "SET".into(), notice: None })
    }

    /// How the stored job `job` treats NULL in a NOT NULL column of its sink, and strings that
    /// do not fit a `VARCHAR(n)`/`CHAR(n)` column of it.
    ///
    /// Errors: 42P01 when it logs and its dead-letter table is gone.
    pub(crate) fn sink_policy(&self, job: &JobDef) -> SqlResult<SinkPolicy> {
        let dead_letter_topic = match job.not_null_enforcer {
            NotNullEnforcer::Log => Some(self.table(&dead_letter_table(&job.sink))?.def.topic().to_string()),
            _ => None,
        };
        Ok(SinkPolicy { not_null: job.not_null_enforcer, dead_letter_topic, type_length: job.type_length_enforcer })
    }

    /// Applies the options of `RESUME JOB '<id>' WITH (...)` to `job` (stored by the caller):
    /// [`SESSION_OPTION`] replaces the job's NOT NULL enforcer, so the rows of the epoch that
    /// failed it are dropped or dead-lettered when they are read again; [`LENGTH_SESSION_OPTION`]
    /// replaces its length enforcer, so the values of the epoch that failed it are cut (or
    /// stored as they are) when they are read again. Both values are checked before either is
    /// applied. The caller holds the DDL lock.
    ///
    /// Errors: 22023 for another key or a bad value; those of [`Engine::ensure_dead_letter_table`].
    pub(crate) async fn resume_options(self: &Arc<Self>, job: &mut JobDef, options: &BTreeMap<String, String>) -> SqlResult<()> {
        let known = [SESSION_OPTION, LENGTH_SESSION_OPTION, state_ttl::SESSION_OPTION];
        if let Some(k) = options.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(SqlError::new(
                "22023",
                format!(
                    "unknown option '{k}' for RESUME JOB (supported: '{SESSION_OPTION}', '{LENGTH_SESSION_OPTION}', '{}')",
                    state_ttl::SESSION_OPTION
                ),
            ));
        }
        let ttl = options.get(state_ttl::SESSION_OPTION).map(|v| state_ttl::parse_ttl(state_ttl::SESSION_OPTION, v)).transpose()?;
        let lengths = options.get(LENGTH_SESSION_OPTION).map(|v| TypeLengthEnforcer::parse(LENGTH_SESSION_OPTION, v)).transpose()?;
        if let Some(v) = options.get(SESSION_OPTION) {
            let enforcer = NotNullEnforcer::parse(SESSION_OPTION, v)?;
            if enforcer == NotNullEnforcer::Log {
                self.ensure_dead_letter_table(&job.sink).await?;
            }
            if enforcer != job.not_null_enforcer {
                tracing::info!(job = %job.id, from = job.not_null_enforcer.as_str(), to = enforcer.as_str(), "not-null enforcer changed");
            }
            job.not_null_enforcer = enforcer;
        }
        if let Some(enforcer) = lengths {
            if enforcer != job.type_length_enforcer {
                tracing::info!(job = %job.id, from = job.type_length_enforcer.as_str(), to = enforcer.as_str(), "type-length enforcer changed");
            }
            job.type_length_enforcer = enforcer;
        }
        if let Some(ttl) = ttl {
            // State already kept is not re-timed: a longer TTL keeps it longer from now on.
            job.state_ttl_ms = ttl.map(|d| d.as_millis() as u64);
        }
        Ok(())
    }

    /// Creates the dead-letter table of `table`, `<table>_dlq` with the columns of
    /// [`dead_letter_schema`] (topic, partition, offset, raw, error), unless it exists; returns
    /// its name. Kafka sources in `'error-handling.mode' = 'log'` and jobs whose enforcer is
    /// `LOG` write there. The caller holds the DDL lock.
    ///
    /// Errors: 42P07 when a table of that name exists with other columns.
    pub(crate) async fn ensure_dead_letter_table(self: &Arc<Self>, table: &str) -> SqlResult<String> {
        let dlq = dead_letter_table(table);
        let shape = dead_letter_schema();
        let existing = self.tables.read().unwrap().get(&dlq).cloned();
        if let Some(e) = existing {
            let schema = e.def.physical_schema()?;
            let same = schema.fields().len() == shape.fields().len()
                && schema.fields().iter().zip(shape.fields()).all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
            if !same {
                return Err(SqlError::new(
                    "42P07",
                    format!("table \"{dlq}\" exists and is not a dead-letter table (topic, partition, offset, raw, error); drop or rename it"),
                ));
            }
            return Ok(dlq);
        }
        let cols: Vec<String> = shape
            .fields()
            .iter()
            .map(|f| format!("`{}` {}", f.name(), sluice_connectors::cdc::sql_type_of(f.data_type())))
            .collect();
        let sql = format!("CREATE TABLE `{dlq}` ({})", cols.join(", "));
        if let SluiceStatement::CreateTable(ct) = parse_statement(&sql)? {
            Box::pin(self.create_table_locked(ct.def)).await?;
        }
        Ok(dlq)
    }
}
