//! Writes from clients: `INSERT ... VALUES` (literal rows straight to Arrow, large ones in
//! pieces), `UPDATE`/`DELETE` of upsert tables, COPY, and the append every write ends in.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Schema};
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use sluice_catalog::store::CF_META;
use sluice_catalog::{ChangeBatch, Op};
use sluice_connectors::options::TableConnector;
use sluice_executor::job::partition_batches;
use sluice_planner::{parse_statement, SluiceStatement};
use sqlparser::ast::{Insert, Statement, TableObject};

use crate::errors::{SqlError, SqlResult};
use crate::provider::TableEntry;
use crate::session::Session;
use crate::engine::*;

impl Engine {
    pub(crate) fn upsert_table(&self, name: &str, what: &str) -> SqlResult<Arc<TableEntry>> {
        let entry = self.table(name)?;
        if !entry.def.is_upsert() {
            return Err(SqlError::unsupported(format!(
                "{what} needs a table with a PRIMARY KEY; \"{name}\" is append-only"
            )));
        }
        Ok(entry)
    }

    /// Runs `select` (physical columns of `entry`) and writes its rows with `op`.
    pub(crate) async fn write_query_rows(&self, entry: &TableEntry, select: &str, params: Option<ParamValues>, op: Op) -> SqlResult<usize> {
        let stmt = match parse_statement(select)? {
            SluiceStatement::Sql(s) => *s,
            _ => return Err(SqlError::new("XX000", "internal: bad generated query")),
        };
        let plan = self.df_plan(stmt, params).await?;
        let batches = self.ctx.execute_logical_plan(plan).await?.collect().await?;
        let schema = entry.def.physical_schema()?;
        let mut out = Vec::new();
        for b in batches {
            let cols = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| cast_column(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            let data = RecordBatch::try_new(schema.clone(), cols)?;
            let n = data.num_rows();
            out.push(ChangeBatch::new(data, vec![op; n]));
        }
        self.append(entry, out)
    }

    /// Appends change batches to a table's topic; returns the row count.
    pub(crate) fn append(&self, entry: &TableEntry, batches: Vec<ChangeBatch>) -> SqlResult<usize> {
        if self.is_fed(&entry.def.name) {
            return Err(SqlError::unsupported(format!(
                "table \"{}\" is fed by its source connector; write to the outside system instead",
                entry.def.name
            )));
        }
        // The append fsyncs (and on the Kafka backend waits for acknowledgements): tell tokio
        // this worker blocks, so other sessions keep being served meanwhile.
        blocking(|| self.append_with(entry, batches, &[]))
    }

    /// Appends rows to a table's topic, atomically with `positions` (key, value) pairs written
    /// to the store's meta family (a source connector's offsets or LSN).
    ///
    /// Errors: 23502 for NULL in a NOT NULL column; nothing is written then.
    pub(crate) fn append_with(&self, entry: &TableEntry, batches: Vec<ChangeBatch>, positions: &[(Vec<u8>, Vec<u8>)]) -> SqlResult<usize> {
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        if n == 0 {
            if !positions.is_empty() {
                let mut wb = rocksdb::WriteBatch::default();
                for (k, v) in positions {
                    wb.put_cf(self.store.cf(CF_META), k, v);
                }
                self.store.write(wb)?;
            }
            return Ok(0);
        }
        let batches = batches.into_iter().map(|b| entry.def.enforce_lengths(b)).collect::<Result<Vec<_>, _>>()?;
        let schema = entry.def.physical_schema()?;
        for b in &batches {
            for (i, f) in schema.fields().iter().enumerate() {
                if !f.is_nullable() && b.data.column(i).null_count() > 0 {
                    return Err(SqlError::new(
                        "23502",
                        format!("null value in column \"{}\" of table \"{}\" violates not-null constraint", f.name(), entry.def.name),
                    ));
                }
            }
        }
        let topic_batches = batches.iter().map(|b| b.to_topic_batch()).collect::<Result<Vec<_>, _>>()?;
        let key: Vec<usize> = if entry.def.is_upsert() {
            entry.def.primary_key.iter().filter_map(|k| schema.index_of(k).ok()).collect()
        } else {
            (0..schema.fields().len()).collect()
        };
        let writes = partition_batches(&topic_batches, entry.def.partitions, &key)?;
        let lock = self.writes.lock().unwrap().entry(entry.def.name.clone()).or_default().clone();
        let _g = lock.lock().unwrap();
        let store = &self.store;
        self.log.append(entry.def.topic(), &writes, &mut |wb| {
            for (k, v) in positions {
                wb.put_cf(store.cf(CF_META), k, v);
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// Writes the rows of a `COPY FROM STDIN`, parsed by [`crate::copy::CopyParser`] into
    /// batches of `target.schema`, in one append: all of them or none.
    pub fn copy_in(&self, target: &CopyInTarget, parsed: Vec<RecordBatch>) -> SqlResult<usize> {
        let entry = self.table(&target.table)?;
        let physical = entry.def.physical_schema()?;
        let mut batches = Vec::with_capacity(parsed.len());
        for p in parsed {
            let cols: Vec<ArrayRef> = physical
                .fields()
                .iter()
                .map(|f| match target.columns.iter().position(|c| c == f.name()) {
                    Some(i) => p.column(i).clone(),
                    None => arrow::array::new_null_array(f.data_type(), p.num_rows()),
                })
                .collect();
            batches.push(ChangeBatch::inserts(RecordBatch::try_new(physical.clone(), cols)?));
        }
        self.append(&entry, batches)
    }

    pub(crate) async fn insert(self: &Arc<Self>, ins: Insert, sql: &str, params: Option<ParamValues>, session: &Session) -> SqlResult<Output> {
        let TableObject::TableName(tn) = &ins.table else {
            return Err(SqlError::unsupported("INSERT INTO a table function"));
        };
        let name = table_name(tn);
        let entry = self.table(&name)?;
        let Some(source) = &ins.source else {
            return Err(SqlError::unsupported("INSERT without VALUES or SELECT"));
        };
        if reads_tables(source) {
            if params.as_ref().map(|p| !matches!(p, ParamValues::List(l) if l.is_empty())).unwrap_or(false) {
                return Err(SqlError::unsupported("parameters in a persistent query"));
            }
            return self.create_job(ins, sql, session).await;
        }
        let out = self.values_batches(&entry, ins, params).await?;
        let n = self.append(&entry, out)?;
        Ok(Output::Command { tag: format!("INSERT 0 {n}"), notice: None })
    }

    /// A large `INSERT ... VALUES` cut into pieces by [`crate::values::split_values`]: each
    /// piece parsed and converted on its own, all their rows appended in one write.
    pub(crate) async fn insert_pieces(self: &Arc<Self>, pieces: &[String]) -> SqlResult<Output> {
        let mut rows = Vec::new();
        let mut target = None;
        for piece in pieces {
            let SluiceStatement::Sql(stmt) = parse_statement(piece)? else {
                return Err(SqlError::new("XX000", "internal: a piece of an INSERT is not an INSERT"));
            };
            let Statement::Insert(ins) = *stmt else {
                return Err(SqlError::new("XX000", "internal: a piece of an INSERT is not an INSERT"));
            };
            let TableObject::TableName(tn) = &ins.table else {
                return Err(SqlError::unsupported("INSERT INTO a table function"));
            };
            let entry = self.table(&table_name(tn))?;
            rows.extend(self.values_batches(&entry, ins, None).await?);
            target = Some(entry);
        }
        let entry = target.ok_or_else(|| SqlError::new("XX000", "internal: an INSERT without pieces"))?;
        let n = self.append(&entry, rows)?;
        Ok(Output::Command { tag: format!("INSERT 0 {n}"), notice: None })
    }

    /// The rows of an `INSERT ... VALUES` into `entry`, as batches of its physical columns.
    ///
    /// Errors: a table that is not topic-backed or has computed columns (0A000), a value that
    /// does not convert to its column's type.
    pub(crate) async fn values_batches(&self, entry: &TableEntry, ins: Insert, params: Option<ParamValues>) -> SqlResult<Vec<ChangeBatch>> {
        if !matches!(entry.connector, TableConnector::Topic { .. }) {
            return Err(SqlError::unsupported(format!(
                "INSERT ... VALUES into a {} table",
                entry.def.connector().unwrap_or("?")
            )));
        }
        if entry.computed.is_some() {
            return Err(SqlError::unsupported("INSERT ... VALUES into a table with computed columns"));
        }
        // Literal rows need no plan (and a large VALUES list would take gigabytes to plan).
        let mut ins = ins;
        if let Some(rows) = crate::values::literal_rows(&mut ins, &entry.def.physical_schema()?)? {
            return Ok(rows);
        }
        let plan = self.df_plan(Statement::Insert(ins), params).await?;
        let LogicalPlan::Dml(dml) = plan else {
            return Err(SqlError::new("XX000", "internal: INSERT did not plan as DML"));
        };
        let batches = self.ctx.execute_logical_plan(dml.input.as_ref().clone()).await?.collect().await?;
        let schema = entry.def.physical_schema()?;
        let mut out = Vec::new();
        for b in batches {
            let cols = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| cast_column(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            // Keep the declared nullability out of the batch check; `append` reports NOT NULL.
            let relaxed = Arc::new(Schema::new(
                schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
            ));
            let data = RecordBatch::try_new(relaxed, cols)?;
            out.push(ChangeBatch::inserts(data));
        }
        Ok(out)
    }

}

/// Casts a column being written to its table column's type. A value that does not convert is
/// an error (22P02, or 22003 when out of range), never a NULL: arrow's default cast is "safe"
/// and would store NULL instead.
pub(crate) fn cast_column(c: &ArrayRef, to: &DataType) -> Result<ArrayRef, arrow::error::ArrowError> {
    if c.data_type() == to {
        return Ok(c.clone());
    }
    arrow::compute::cast_with_options(c, to, &arrow::compute::CastOptions { safe: false, ..Default::default() })
}
