//! The initial snapshot: every captured table read at the slot's exported snapshot.

use std::sync::atomic::Ordering;

use arrow::array::RecordBatch;
use futures::StreamExt;
use sluice_catalog::ChangeBatch;

use super::table::quote_ident;
use super::text::{copy_fields, texts_to_array};
use super::{CdcError, CdcSource, Route};
use crate::error::Result;
use crate::task::TaskStatus;

impl CdcSource {
    /// Reads every captured table at the exported snapshot (or, for a slot made by someone else,
    /// at a snapshot of its own) and appends the rows as inserts; the
    /// last append of each route stores `lsn` as its position.
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
        for r in &self.routes {
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
                    let batch = self.snapshot_batch(r, &lines).map_err(|e| CdcError::Fatal(e.to_string()))?;
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
            r.target.append(Vec::new(), None, vec![(r.position_key.clone(), lsn.to_be_bytes().to_vec())])?;
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
