//! A table's current contents, maintained from its topic for batch `SELECT`.
//!
//! The changelog is applied incrementally from the last offset read: an append-only topic keeps
//! its batches; an upsert table (primary key) keeps the latest row per key (insertions replace,
//! retractions delete the key); a table without a key that receives retractions (an updating
//! query written into it) keeps a multiset of rows, each `-D`/`-U` cancelling one equal row.

use std::sync::Arc;

use datafusion::common::HashMap;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::row::RowConverter;
use sluice_catalog::{ChangeBatch, TableDef};
use sluice_connectors::TopicLog;

use crate::error::Result;
use crate::rows::{converter, decode, decode_optional, schema_converter, types_of};

enum Contents {
    Append(Vec<RecordBatch>),
    Keyed { key_idx: Vec<usize>, key_conv: RowConverter, rows: HashMap<Vec<u8>, Vec<u8>> },
    Multiset(HashMap<Vec<u8>, i64>),
}

/// See the module docs. Holds the table's physical columns.
pub struct MaterializedTable {
    topic: String,
    schema: SchemaRef,
    row_conv: RowConverter,
    offsets: Vec<u64>,
    contents: Contents,
}

impl MaterializedTable {
    /// An empty materialization of `def` (nothing read yet).
    pub fn try_new(def: &TableDef, partitions: u32) -> Result<MaterializedTable> {
        let schema = def.physical_schema()?;
        let contents = if def.is_upsert() {
            let key_idx: Vec<usize> = def.primary_key.iter().map(|k| schema.index_of(k)).collect::<Result<_, _>>()?;
            let key_types: Vec<_> = key_idx.iter().map(|i| schema.field(*i).data_type().clone()).collect();
            Contents::Keyed { key_idx, key_conv: converter(&key_types)?, rows: HashMap::default() }
        } else {
            Contents::Append(Vec::new())
        };
        Ok(MaterializedTable {
            topic: def.topic().to_string(),
            row_conv: schema_converter(&schema)?,
            schema,
            offsets: vec![0; partitions as usize],
            contents,
        })
    }

    /// Applies everything appended to the topic since the last call.
    pub fn catch_up(&mut self, log: &dyn TopicLog) -> Result<()> {
        for p in 0..self.offsets.len() {
            loop {
                let recs = log.read(&self.topic, p as u32, self.offsets[p], 1 << 20)?;
                if recs.is_empty() {
                    break;
                }
                for r in recs {
                    self.offsets[p] = r.offset + r.batch.num_rows() as u64;
                    self.apply(ChangeBatch::from_topic_batch(&r.batch)?)?;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, b: ChangeBatch) -> Result<()> {
        if let Contents::Append(batches) = &mut self.contents {
            if b.is_append_only() {
                batches.push(b.data);
                return Ok(());
            }
            // Retractions in a table without a key: switch to a multiset of rows.
            let mut counts = HashMap::default();
            for batch in batches.iter() {
                let rows = self.row_conv.convert_columns(batch.columns())?;
                for r in rows.iter() {
                    *counts.entry(r.as_ref().to_vec()).or_insert(0) += 1;
                }
            }
            self.contents = Contents::Multiset(counts);
        }
        let rows = self.row_conv.convert_columns(b.data.columns())?;
        match &mut self.contents {
            Contents::Append(_) => unreachable!("handled above"),
            Contents::Keyed { key_idx, key_conv, rows: map } => {
                let cols: Vec<_> = key_idx.iter().map(|i| b.data.column(*i).clone()).collect();
                let keys = key_conv.convert_columns(&cols)?;
                for i in 0..b.num_rows() {
                    let k = keys.row(i).as_ref().to_vec();
                    if b.ops[i].is_insertion() {
                        map.insert(k, rows.row(i).as_ref().to_vec());
                    } else {
                        map.remove(&k);
                    }
                }
            }
            Contents::Multiset(counts) => {
                for i in 0..b.num_rows() {
                    let r = rows.row(i).as_ref().to_vec();
                    let c = counts.entry(r.clone()).or_insert(0);
                    *c += b.ops[i].weight();
                    if *c <= 0 {
                        counts.remove(&r);
                    }
                }
            }
        }
        Ok(())
    }

    /// The current rows (physical columns) as one batch.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        self.snapshot_limit(None)
    }

    /// At most `limit` of the current rows (all of them with `None`), as one batch: a `LIMIT`
    /// without a filter decodes only the rows it returns.
    pub fn snapshot_limit(&self, limit: Option<usize>) -> Result<RecordBatch> {
        let limit = limit.unwrap_or(usize::MAX);
        let types = types_of(&self.schema);
        let cols = match &self.contents {
            Contents::Append(batches) => {
                let mut taken = Vec::new();
                let mut n = 0;
                for b in batches {
                    if n >= limit {
                        break;
                    }
                    let len = b.num_rows().min(limit - n);
                    taken.push(b.slice(0, len));
                    n += len;
                }
                return Ok(concat_batches(&self.schema, &taken)?);
            }
            Contents::Keyed { rows, .. } => {
                let refs: Vec<&[u8]> = rows.values().take(limit).map(|r| r.as_slice()).collect();
                decode(&self.row_conv, &types, &refs)?
            }
            Contents::Multiset(counts) => {
                let mut refs: Vec<&[u8]> = Vec::new();
                'rows: for (r, c) in counts {
                    for _ in 0..*c {
                        if refs.len() >= limit {
                            break 'rows;
                        }
                        refs.push(r.as_slice());
                    }
                }
                decode(&self.row_conv, &types, &refs)?
            }
        };
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }

    /// The primary key's column indexes in the physical schema, for a table that has one.
    pub fn key_columns(&self) -> Option<&[usize]> {
        match &self.contents {
            Contents::Keyed { key_idx, .. } => Some(key_idx),
            _ => None,
        }
    }

    /// The current rows under the primary keys of `rows` (a batch of the physical columns):
    /// one row per row of `rows`, all NULL where no row has that key, with whether one does.
    /// `None` for a table without a primary key, which has no rows by key.
    pub fn lookup(&self, rows: &RecordBatch) -> Result<Option<(RecordBatch, Vec<bool>)>> {
        let Contents::Keyed { key_idx, key_conv, rows: map } = &self.contents else { return Ok(None) };
        let cols: Vec<_> = key_idx.iter().map(|i| rows.column(*i).clone()).collect();
        let keys = key_conv.convert_columns(&cols)?;
        let stored: Vec<Option<&[u8]>> = (0..rows.num_rows()).map(|i| map.get(keys.row(i).as_ref()).map(Vec::as_slice)).collect();
        let cols = decode_optional(&self.row_conv, &types_of(&self.schema), &stored)?;
        let found = stored.iter().map(Option::is_some).collect();
        // Every column nullable: a key not found is a row of NULLs.
        let schema = Arc::new(Schema::new(
            self.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        Ok(Some((RecordBatch::try_new(schema, cols)?, found)))
    }

    /// Number of current rows.
    pub fn row_count(&self) -> usize {
        match &self.contents {
            Contents::Append(b) => b.iter().map(|b| b.num_rows()).sum(),
            Contents::Keyed { rows, .. } => rows.len(),
            Contents::Multiset(c) => c.values().map(|v| *v as usize).sum(),
        }
    }
}
