//! The initial snapshot: every captured table read at the slot's exported snapshot.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::row::{RowConverter, SortField};
use futures::StreamExt;
use sluice_catalog::{ChangeBatch, Op};

use super::table::quote_ident;
use super::text::{copy_fields, texts_to_array};
use super::{CdcError, CdcSource, Position, Route};
use crate::error::Result;
use crate::task::{IngestTarget, TaskStatus};

/// The rows a target table held before a snapshot, by key, that the snapshot has not (yet)
/// read again: after a crash during an earlier snapshot, the table holds that snapshot's rows,
/// and those whose keys Postgres no longer has must be deleted, or they stay as ghosts.
struct Leftover {
    target: Arc<dyn IngestTarget>,
    /// The rows the table held (its physical columns).
    rows: RecordBatch,
    key_idx: Vec<usize>,
    conv: RowConverter,
    /// Key (row format) → index in `rows`, of the rows not read again yet.
    unseen: HashMap<Vec<u8>, usize>,
    /// The position of every route into this target, written with the deletes.
    positions: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Leftover {
    /// The rows `target` holds now, keyed by `key` (names in `schema`).
    ///
    /// Errors: a table without a primary key that holds rows (a second snapshot would
    /// duplicate them), or the store failing.
    fn of(r: &Route) -> std::result::Result<Leftover, CdcError> {
        let rows = r.target.current_rows()?;
        let key_idx: Vec<usize> = r.target_key.iter().map(|k| r.target_schema.index_of(k)).collect::<std::result::Result<_, _>>().map_err(fatal)?;
        if key_idx.is_empty() && rows.num_rows() > 0 {
            return Err(CdcError::Fatal(format!(
                "the snapshot of {} must be taken again, and its table has no primary key to replace its {} rows by",
                r.source.quoted(),
                rows.num_rows()
            )));
        }
        let conv = RowConverter::new(key_idx.iter().map(|i| SortField::new(r.target_schema.field(*i).data_type().clone())).collect()).map_err(fatal)?;
        let keys = conv.convert_columns(&key_cols(&rows, &key_idx)).map_err(fatal)?;
        let unseen = (0..rows.num_rows()).map(|i| (keys.row(i).as_ref().to_vec(), i)).collect();
        Ok(Leftover { target: r.target.clone(), rows, key_idx, conv, unseen, positions: Vec::new() })
    }

    /// Marks the keys of `batch` (the target's physical columns) as read again.
    fn seen(&mut self, batch: &RecordBatch) -> std::result::Result<(), CdcError> {
        if self.unseen.is_empty() {
            return Ok(());
        }
        let keys = self.conv.convert_columns(&key_cols(batch, &self.key_idx)).map_err(fatal)?;
        for k in keys.iter() {
            self.unseen.remove(k.as_ref());
        }
        Ok(())
    }

    /// Deletes of the rows Postgres no longer has, appended with the routes' positions.
    fn finish(self) -> std::result::Result<(), CdcError> {
        let mut ghosts: Vec<u32> = self.unseen.into_values().map(|i| i as u32).collect();
        ghosts.sort_unstable();
        let mut batches = Vec::new();
        if !ghosts.is_empty() {
            let rows = arrow::compute::take_record_batch(&self.rows, &UInt32Array::from(ghosts)).map_err(fatal)?;
            let n = rows.num_rows();
            batches.push(ChangeBatch::new(rows, vec![Op::Delete; n]));
        }
        self.target.append(batches, None, self.positions)?;
        Ok(())
    }
}

fn key_cols(batch: &RecordBatch, idx: &[usize]) -> Vec<ArrayRef> {
    idx.iter().map(|i| batch.column(*i).clone()).collect()
}

fn fatal(e: impl std::fmt::Display) -> CdcError {
    CdcError::Fatal(e.to_string())
}

impl CdcSource {
    /// Reads every captured table at the exported snapshot (or, for a slot made by someone else,
    /// at a snapshot of its own) and appends the rows as inserts. At the end, each target table
    /// gets, in one append with the positions (`lsn`) of the routes into it, the deletes of
    /// the rows it held before that the snapshot did not read: a snapshot taken again after a
    /// crash leaves no row Postgres no longer has (a first snapshot finds its table empty).
    pub(super) async fn snapshot(&self, snapshot: Option<&str>, lsn: u64, status: &TaskStatus) -> std::result::Result<(), CdcError> {
        let client = self.options.connect().await?;
        let pg = |e: tokio_postgres::Error| CdcError::Retry(format!("postgres snapshot: {e}"));
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(pg)?;
        if let Some(snapshot) = snapshot {
            client
                .batch_execute(&format!("SET TRANSACTION SNAPSHOT '{}'", snapshot.replace('\'', "''")))
                .await
                .map_err(pg)?;
        }
        client.batch_execute("SET LOCAL TIME ZONE 'UTC'").await.map_err(pg)?;
        // One per target table (several captured tables may go into one).
        let mut leftovers: Vec<Leftover> = Vec::new();
        for r in &self.routes {
            let at = match leftovers.iter().position(|l| Arc::ptr_eq(&l.target, &r.target)) {
                Some(at) => at,
                None => {
                    leftovers.push(Leftover::of(r)?);
                    leftovers.len() - 1
                }
            };
            leftovers[at].positions.push((r.position_key.clone(), Position::at(lsn).encode()));
            let cols: Vec<String> = r.source.columns.iter().map(|c| quote_ident(&c.name)).collect();
            let sql = format!("COPY (SELECT {} FROM {}) TO STDOUT", cols.join(", "), r.source.quoted());
            let stream = client.copy_out(&sql).await.map_err(pg)?;
            futures::pin_mut!(stream);
            let mut rest: Vec<u8> = Vec::new();
            let mut lines: Vec<Vec<Option<String>>> = Vec::new();
            loop {
                let chunk = stream.next().await;
                let done = chunk.is_none();
                if let Some(c) = chunk {
                    rest.extend_from_slice(&c.map_err(pg)?);
                    let mut start = 0;
                    while let Some(nl) = rest[start..].iter().position(|b| *b == b'\n') {
                        lines.push(copy_fields(&rest[start..start + nl]));
                        start += nl + 1;
                    }
                    rest.drain(..start);
                }
                if lines.len() >= 8192 || (done && !lines.is_empty()) {
                    let n = lines.len();
                    let batch = self.snapshot_batch(r, &lines).map_err(fatal)?;
                    leftovers[at].seen(&batch.data)?;
                    r.target.append(vec![batch], None, Vec::new())?;
                    sluice_catalog::failpoint::check("cdc::snapshot_chunk").map_err(CdcError::Fatal)?;
                    status.snapshot_rows.fetch_add(n as u64, Ordering::Relaxed);
                    status.rows.fetch_add(n as u64, Ordering::Relaxed);
                    lines.clear();
                }
                if done {
                    break;
                }
            }
        }
        for l in leftovers {
            l.finish()?;
        }
        client.batch_execute("COMMIT").await.map_err(pg)?;
        Ok(())
    }

    fn snapshot_batch(&self, r: &Route, lines: &[Vec<Option<String>>]) -> Result<ChangeBatch> {
        let schema = r.source.arrow_schema();
        let mut cols = Vec::with_capacity(schema.fields().len());
        for (i, f) in schema.fields().iter().enumerate() {
            let texts: Vec<Option<String>> = lines.iter().map(|l| l.get(i).cloned().flatten()).collect();
            cols.push(texts_to_array(&texts, f.data_type())?);
        }
        r.transform(ChangeBatch::inserts(RecordBatch::try_new(schema, cols)?))
    }
}
