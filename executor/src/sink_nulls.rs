//! A sink's NOT NULL columns enforced on a persistent query's output, as Flink's
//! `table.exec.sink.not-null-enforcer` ([`NotNullEnforcer`]), and the dead-letter outbox
//! that writes `LOG`'s rows exactly once.
//!
//! A job's output rows are checked as they are shaped to the sink's schema, before they are
//! buffered for the epoch. With `ERROR` the first row with NULL in a NOT NULL column fails the
//! job ([`ExecError::NotNull`], SQLSTATE 23502) and its epoch never commits, so the sink keeps
//! exactly the rows of the epochs before; with `DROP` such rows are left out and counted; with
//! `LOG` they become rows of the sink's dead-letter table. Every op is checked (a `-D` with a
//! NULL key cannot delete anything either).
//!
//! Dead letters go through an outbox: the epoch's commit, the one atomic write of its output,
//! state and positions, also stores the epoch's dead letters under the job's state prefix;
//! right after it they are appended to the dead-letter table's topic, in a write that deletes
//! the stored entry. A crash in between leaves the entry, and the job's next start ships it
//! before reading any input. So each dead letter is written once, and only for an epoch that
//! committed.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::kernels::boolean::{not, or};
use arrow::compute::{concat_batches, is_null};
use arrow::datatypes::{Schema, SchemaRef};
use rocksdb::WriteBatch;
use sluice_catalog::enforcer::{NotNullEnforcer, TypeLengthEnforcer, SESSION_OPTION};
use sluice_catalog::store::CF_STATE;
use sluice_catalog::{ChangeBatch, Store};
use sluice_connectors::format::{dead_letter_schema, rows_to_json_bytes};
use sluice_connectors::log::{decode_batch, encode_batch};
use sluice_connectors::TopicLog;

use crate::error::{ExecError, Result};
use crate::job::partition_batches;
use crate::state::job_prefix;

/// How a job enforces its sink's schema on its output rows: NULL in a NOT NULL column (this
/// module) and strings that do not fit a `VARCHAR(n)`/`CHAR(n)` column
/// ([`crate::sink_lengths`]). The default is Sluice's for a new job: `ERROR` for both.
#[derive(Debug, Clone, Default)]
pub struct SinkPolicy {
    /// What to do with a row that has NULL in a NOT NULL column.
    pub not_null: NotNullEnforcer,
    /// The topic of the sink's dead-letter table (`<sink>_dlq`): required with
    /// [`NotNullEnforcer::Log`], unused otherwise.
    pub dead_letter_topic: Option<String>,
    /// What to do with a value longer than its column's declared length, or a `CHAR(n)` value
    /// shorter than n.
    pub type_length: TypeLengthEnforcer,
}

/// The check of one job's output against its sink's NOT NULL columns.
pub(crate) struct NotNullCheck {
    enforcer: NotNullEnforcer,
    job: String,
    sink: String,
    /// Index and name of each NOT NULL column of the sink.
    columns: Vec<(usize, String)>,
    /// The sink's schema with every column nullable: output is shaped into it, then checked.
    pub(crate) relaxed: SchemaRef,
    /// The sink's schema.
    strict: SchemaRef,
}

/// Output rows after the check.
pub(crate) struct Checked {
    /// The rows to write, in the sink's schema.
    pub rows: ChangeBatch,
    /// How many rows were left out (`DROP`) or dead-lettered (`LOG`).
    pub refused: u64,
    /// `LOG`: the refused rows as rows of the dead-letter table.
    pub dead_letters: Option<RecordBatch>,
}

impl NotNullCheck {
    /// The check of job `job` writing `sink`, whose schema is `strict`.
    pub(crate) fn new(job: &str, sink: &str, strict: SchemaRef, enforcer: NotNullEnforcer) -> NotNullCheck {
        let columns = strict
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.is_nullable())
            .map(|(i, f)| (i, f.name().clone()))
            .collect();
        let relaxed = Arc::new(Schema::new(
            strict.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        NotNullCheck { enforcer, job: job.to_string(), sink: sink.to_string(), columns, relaxed, strict }
    }

    /// Checks rows shaped into [`NotNullCheck::relaxed`].
    ///
    /// Errors: [`ExecError::NotNull`] under `ERROR`, naming the column, the sink, the row and
    /// the way back.
    pub(crate) fn apply(&self, shaped: ChangeBatch) -> Result<Checked> {
        let mut bad: Option<BooleanArray> = None;
        for (i, _) in &self.columns {
            let col = shaped.data.column(*i);
            if col.null_count() > 0 {
                let nulls = is_null(col)?;
                bad = Some(match bad {
                    Some(b) => or(&b, &nulls)?,
                    None => nulls,
                });
            }
        }
        let Some(bad) = bad else {
            return Ok(Checked { rows: self.strict(&shaped)?, refused: 0, dead_letters: None });
        };
        if self.enforcer == NotNullEnforcer::Error {
            let row = (0..bad.len()).find(|r| bad.value(*r)).expect("a row with a null");
            let column = self.null_column(&shaped, row);
            let text = shaped.filter(&BooleanArray::from_iter((0..bad.len()).map(|r| Some(r == row))))?.to_text();
            return Err(ExecError::NotNull(format!(
                "null value in column \"{column}\" of table \"{sink}\" violates not-null constraint: job {job} produced the row {row}; \
                 nothing of this epoch was committed. Fix the query, or RESUME JOB '{job}' WITH ('{SESSION_OPTION}' = 'DROP') to drop such rows \
                 (or 'LOG' to write them to {sink}_dlq)",
                sink = self.sink,
                job = self.job,
                row = text.trim_end(),
            )));
        }
        let refused = shaped.filter(&bad)?;
        let rows = self.strict(&shaped.filter(&not(&bad)?)?)?;
        let dead_letters = match self.enforcer {
            NotNullEnforcer::Log => Some(self.dead_letters(&refused)?),
            _ => None,
        };
        Ok(Checked { rows, refused: refused.num_rows() as u64, dead_letters })
    }

    /// The rows in the sink's schema (they hold no NULL in its NOT NULL columns).
    fn strict(&self, rows: &ChangeBatch) -> Result<ChangeBatch> {
        Ok(rows.with_columns(self.strict.clone(), rows.data.columns().to_vec())?)
    }

    /// The first NOT NULL column that is NULL in `row`.
    fn null_column(&self, rows: &ChangeBatch, row: usize) -> &str {
        self.columns.iter().find(|(i, _)| rows.data.column(*i).is_null(row)).map(|(_, n)| n.as_str()).unwrap_or("?")
    }

    /// Dead-letter rows ([`dead_letter_schema`]) for refused rows: `topic` is the sink table,
    /// `partition` and `offset` are NULL (the row never had a place in a topic), `raw` is the
    /// row as a JSON object and `error` names the column, the job and the row's op.
    fn dead_letters(&self, refused: &ChangeBatch) -> Result<RecordBatch> {
        let n = refused.num_rows();
        let raw: Vec<String> = rows_to_json_bytes(&refused.data)?
            .into_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect();
        let errors: Vec<String> = (0..n)
            .map(|r| {
                format!(
                    "null value in column \"{}\" of table \"{}\" violates not-null constraint (job {}, op {})",
                    self.null_column(refused, r),
                    self.sink,
                    self.job,
                    refused.ops[r].short()
                )
            })
            .collect();
        Ok(RecordBatch::try_new(
            dead_letter_schema(),
            vec![
                Arc::new(StringArray::from(vec![self.sink.as_str(); n])),
                Arc::new(Int32Array::new_null(n)),
                Arc::new(Int64Array::new_null(n)),
                Arc::new(StringArray::from(raw)),
                Arc::new(StringArray::from(errors)),
            ],
        )?)
    }
}

fn outbox_key(job: &str) -> Vec<u8> {
    let mut k = job_prefix(job);
    k.extend_from_slice(b"dead-letters");
    k
}

/// The outbox entry of an epoch's dead letters bound for `topic`, to be put into the epoch's
/// commit ([`ship`] then writes them). `None` when there are none.
///
/// Errors: the batches do not concatenate or encode.
pub(crate) fn outbox_entry(job: &str, topic: &str, batches: &[RecordBatch]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let all = concat_batches(&dead_letter_schema(), batches)?;
    let mut value = (topic.len() as u32).to_be_bytes().to_vec();
    value.extend_from_slice(topic.as_bytes());
    value.extend_from_slice(&encode_batch(&ChangeBatch::inserts(all).to_topic_batch()?)?);
    Ok(Some((outbox_key(job), value)))
}

/// Puts an [`outbox_entry`] into a commit's write batch.
pub(crate) fn stage(store: &Store, wb: &mut WriteBatch, entry: &(Vec<u8>, Vec<u8>)) {
    wb.put_cf(store.cf(CF_STATE), &entry.0, &entry.1);
}

/// Appends the job's stored dead letters, if any, to their topic, deleting the outbox entry in
/// the same write; returns how many rows it wrote.
///
/// Errors: the entry does not decode; the topic is gone (the dead-letter table was dropped) or
/// cannot be written. The entry is kept then, and the next start tries again.
pub(crate) fn ship(store: &Store, log: &dyn TopicLog, job: &str) -> Result<usize> {
    let key = outbox_key(job);
    let Some(v) = store.db().get_cf(store.cf(CF_STATE), &key)? else { return Ok(0) };
    let corrupt = || ExecError::CorruptState(format!("job {job}: bad dead-letter outbox entry"));
    let len = u32::from_be_bytes(v.get(..4).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?) as usize;
    let topic = std::str::from_utf8(v.get(4..4 + len).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
    let batch = decode_batch(&v[4 + len..])?;
    let partitions = log.partitions(topic).map_err(|e| {
        ExecError::Unsupported(format!("job {job}: its dead letters cannot be written to table \"{topic}\": {e}"))
    })?;
    let key_cols: Vec<usize> = (0..dead_letter_schema().fields().len()).collect();
    let writes = partition_batches(&[batch.clone()], partitions, &key_cols)?;
    log.append(topic, &writes, &mut |wb| {
        wb.delete_cf(store.cf(CF_STATE), &key);
        Ok(())
    })?;
    tracing::info!(job, topic, rows = batch.num_rows(), "dead letters written");
    Ok(batch.num_rows())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};
    use sluice_catalog::Op;

    fn check(enforcer: NotNullEnforcer) -> NotNullCheck {
        let strict = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Int64, true)]));
        NotNullCheck::new("j1", "dst", strict, enforcer)
    }

    fn rows(c: &NotNullCheck) -> ChangeBatch {
        let k = Arc::new(Int64Array::from(vec![Some(1), None, Some(3), None]));
        let v = Arc::new(Int64Array::from(vec![Some(10), Some(40), None, None]));
        let data = RecordBatch::try_new(c.relaxed.clone(), vec![k, v]).unwrap();
        ChangeBatch::new(data, vec![Op::Insert, Op::Insert, Op::UpdateAfter, Op::Delete])
    }

    #[test]
    fn error_names_the_column_the_sink_and_the_row() {
        let c = check(NotNullEnforcer::Error);
        let e = c.apply(rows(&c)).err().expect("fails").to_string();
        assert!(e.starts_with("null value in column \"k\" of table \"dst\" violates not-null constraint: job j1 produced the row +I NULL 40;"), "{e}");
        assert!(e.ends_with("(SQLSTATE 23502)") && e.contains("RESUME JOB 'j1' WITH ('table.exec.sink.not-null-enforcer' = 'DROP')"), "{e}");
    }

    #[test]
    fn drop_keeps_the_valid_rows_and_counts_the_others() {
        let c = check(NotNullEnforcer::Drop);
        let out = c.apply(rows(&c)).unwrap();
        assert_eq!(out.rows.to_text(), "+I 1 10\n+U 3 NULL\n");
        assert!(!out.rows.schema().field(0).is_nullable());
        assert_eq!((out.refused, out.dead_letters.is_none()), (2, true));
    }

    #[test]
    fn log_turns_the_refused_rows_into_dead_letters() {
        let c = check(NotNullEnforcer::Log);
        let out = c.apply(rows(&c)).unwrap();
        assert_eq!(out.rows.num_rows(), 2);
        let dl = ChangeBatch::inserts(out.dead_letters.unwrap()).to_text();
        assert_eq!(
            dl,
            "+I dst NULL NULL {\"k\":null,\"v\":40} null value in column \"k\" of table \"dst\" violates not-null constraint (job j1, op +I)\n\
             +I dst NULL NULL {\"k\":null,\"v\":null} null value in column \"k\" of table \"dst\" violates not-null constraint (job j1, op -D)\n"
        );
    }
}
