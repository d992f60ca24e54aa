//! A sink's declared string lengths enforced on a persistent query's output, as Flink's
//! `table.exec.sink.type-length-enforcer` ([`TypeLengthEnforcer`]; the rule for one batch is
//! [`TableDef::fit_lengths`]).
//!
//! A job's output rows are fitted after they are shaped to the sink's schema and have passed
//! its NOT NULL check ([`crate::sink_nulls`]), before they are buffered for the epoch. With
//! `ERROR` (Sluice's default) the first row with a value longer than its column's n characters,
//! beyond trailing spaces, fails the job ([`ExecError::ValueTooLong`], SQLSTATE 22001) and its
//! epoch never commits, so the sink keeps exactly the rows of the epochs before; spaces beyond
//! n are cut and `CHAR(n)` values padded to n, as PostgreSQL stores them. With `TRIM_PAD` values
//! are cut to n characters and `CHAR(n)` padded; with `IGNORE` they are written as they are.
//! Retractions are fitted as their insertions were, so they name the rows the sink stored.

use sluice_catalog::enforcer::{TypeLengthEnforcer, LENGTH_SESSION_OPTION};
use sluice_catalog::lengths::Retractions;
use sluice_catalog::{CatalogError, ChangeBatch, TableDef};

use crate::error::{ExecError, Result};

/// The length check of one job's output against its sink's `VARCHAR(n)`/`CHAR(n)` columns.
pub(crate) struct LengthCheck {
    enforcer: TypeLengthEnforcer,
    job: String,
    /// The sink table; `None` when nothing is to be done (no column has a length, or
    /// `IGNORE`).
    sink: Option<TableDef>,
}

impl LengthCheck {
    /// The check of job `job` writing `sink` under `enforcer`.
    pub(crate) fn new(job: &str, sink: &TableDef, enforcer: TypeLengthEnforcer) -> LengthCheck {
        let limited = sink.columns.iter().any(|c| c.computed.is_none() && c.max_chars().is_some());
        let sink = (limited && enforcer != TypeLengthEnforcer::Ignore).then(|| sink.clone());
        LengthCheck { enforcer, job: job.to_string(), sink }
    }

    /// Fits rows in the sink's physical schema to its declared lengths.
    ///
    /// Errors: [`ExecError::ValueTooLong`] under `ERROR`, with PostgreSQL's message (the
    /// column, the type and the sink), the job, the row and the way back.
    pub(crate) fn apply(&self, rows: ChangeBatch) -> Result<ChangeBatch> {
        let Some(sink) = &self.sink else { return Ok(rows) };
        match sink.fit_lengths(rows, self.enforcer, Retractions::Fitted) {
            Ok(rows) => Ok(rows),
            Err(CatalogError::ValueTooLong { message, row }) => Err(ExecError::ValueTooLong(format!(
                "{message}: job {job} produced the row {row}; nothing of this epoch was committed. Fix the query \
                 (SUBSTRING(x FROM 1 FOR n)), or RESUME JOB '{job}' WITH ('{LENGTH_SESSION_OPTION}' = 'TRIM_PAD') to cut such values \
                 to the column's length (or 'IGNORE' to store them as they are)",
                job = self.job,
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::DataType;
    use sluice_catalog::{ColumnDef, Op};

    use super::*;

    fn sink() -> TableDef {
        let col = |name: &str, data_type: DataType, sql_type: &str| ColumnDef {
            name: name.into(),
            data_type: data_type.to_string(),
            nullable: true,
            computed: None,
            sql_type: sql_type.into(),
        };
        TableDef {
            name: "dst".into(),
            columns: vec![col("k", DataType::Int64, "BIGINT"), col("code", DataType::Utf8, "VARCHAR(3)"), col("c", DataType::Utf8, "CHAR(4)")],
            primary_key: vec![],
            watermark: None,
            options: BTreeMap::new(),
            create_sql: String::new(),
            partitions: 1,
        }
    }

    fn rows() -> ChangeBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1, 2, 2])),
            Arc::new(StringArray::from(vec!["ab", "abcdef", "abcdef"])),
            Arc::new(StringArray::from(vec!["x", "y", "y"])),
        ];
        ChangeBatch::new(RecordBatch::try_new(sink().physical_schema().unwrap(), cols).unwrap(), vec![Op::Insert, Op::UpdateAfter, Op::Delete])
    }

    #[test]
    fn error_names_the_column_the_sink_the_job_and_the_row() {
        let e = LengthCheck::new("j1", &sink(), TypeLengthEnforcer::Error).apply(rows()).expect_err("fails").to_string();
        assert!(
            e.starts_with("value too long for type character varying(3) (column \"code\" of table \"dst\"): job j1 produced the row +U 2 abcdef y;"),
            "{e}"
        );
        assert!(e.ends_with("(SQLSTATE 22001)") && e.contains("RESUME JOB 'j1' WITH ('table.exec.sink.type-length-enforcer' = 'TRIM_PAD')"), "{e}");
    }

    #[test]
    fn trim_pad_and_ignore() {
        let out = LengthCheck::new("j1", &sink(), TypeLengthEnforcer::TrimPad).apply(rows()).unwrap();
        assert_eq!(out.to_text(), "+I 1 ab x   \n+U 2 abc y   \n-D 2 abc y   \n");
        let out = LengthCheck::new("j1", &sink(), TypeLengthEnforcer::Ignore).apply(rows()).unwrap();
        assert_eq!(out.to_text(), rows().to_text());
    }
}
