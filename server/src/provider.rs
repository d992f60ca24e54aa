//! Tables as DataFusion sees them, for batch queries over materialized state.

use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::CastOptions;
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::scalar::ScalarValue;
use datafusion::physical_plan::ExecutionPlan;
use sluice_catalog::dataflow::ExprRef;
use sluice_catalog::TableDef;
use sluice_connectors::options::TableConnector;
use sluice_connectors::TopicLog;
use sluice_executor::MaterializedTable;

/// Rows per batch a batch query of a bounded `datagen` table generates at a time.
const DATAGEN_BATCH_ROWS: usize = 65_536;

/// A table of the catalog: its definition and, for topic-backed tables, its materialization.
pub struct TableEntry {
    /// The definition.
    pub def: TableDef,
    /// What backs it.
    pub connector: TableConnector,
    /// Full schema (physical and computed columns).
    pub schema: SchemaRef,
    /// Computed-column expressions over the physical columns, if any.
    pub computed: Option<Vec<ExprRef>>,
    /// Current contents, advanced on each read.
    pub materialized: Mutex<Option<MaterializedTable>>,
}

impl std::fmt::Debug for TableEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableEntry").field("name", &self.def.name).finish()
    }
}

impl TableEntry {
    /// The table's current rows in its full schema.
    ///
    /// Errors: a `datagen` table is not materialized (batch scans stream it, see
    /// [`DatagenPartition`]).
    pub fn current_rows(&self, log: &dyn TopicLog) -> DfResult<RecordBatch> {
        let physical = match &self.connector {
            TableConnector::Topic { .. } => {
                let mut m = self.materialized.lock().unwrap();
                let m = m.as_mut().expect("topic tables are materialized");
                m.catch_up(log).map_err(ext)?;
                m.snapshot().map_err(ext)?
            }
            TableConnector::Datagen(_) => {
                return Err(DataFusionError::Internal(format!("datagen table \"{}\" is streamed, not materialized", self.def.name)))
            }
            TableConnector::Blackhole => return Ok(RecordBatch::new_empty(self.schema.clone())),
        };
        with_computed(&self.schema, self.computed.as_deref(), physical)
    }

    /// At most `limit` of the table's current rows, in its full schema (see
    /// [`MaterializedTable::snapshot_limit`]).
    pub fn some_rows(&self, log: &dyn TopicLog, limit: usize) -> DfResult<RecordBatch> {
        if !matches!(self.connector, TableConnector::Topic { .. }) {
            return self.current_rows(log);
        }
        let mut m = self.materialized.lock().unwrap();
        let m = m.as_mut().expect("topic tables are materialized");
        m.catch_up(log).map_err(ext)?;
        with_computed(&self.schema, self.computed.as_deref(), m.snapshot_limit(Some(limit)).map_err(ext)?)
    }

    /// The current rows whose single-column primary key is one of `keys`, in the full schema,
    /// read from the materialized state by key rather than decoding every row. `None` when
    /// the table has no such key or a value does not convert to the key's type (the caller
    /// then scans).
    pub fn rows_by_key(&self, log: &dyn TopicLog, keys: &[ScalarValue]) -> DfResult<Option<RecordBatch>> {
        let mut m = self.materialized.lock().unwrap();
        let Some(m) = m.as_mut() else { return Ok(None) };
        let [k] = m.key_columns().unwrap_or_default() else { return Ok(None) };
        let k = *k;
        m.catch_up(log).map_err(ext)?;
        let physical = self.def.physical_schema().map_err(ext)?;
        let key_type = physical.field(k).data_type().clone();
        let Ok(values) = ScalarValue::iter_to_array(keys.iter().cloned()) else { return Ok(None) };
        let cast = CastOptions { safe: false, ..Default::default() };
        let Ok(values) = arrow::compute::cast_with_options(&values, &key_type, &cast) else { return Ok(None) };
        let n = values.len();
        let cols: Vec<ArrayRef> = physical
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| if i == k { values.clone() } else { arrow::array::new_null_array(f.data_type(), n) })
            .collect();
        let relaxed = Arc::new(Schema::new(physical.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()));
        let probe = RecordBatch::try_new(relaxed, cols)?;
        let Some((rows, found)) = m.lookup(&probe).map_err(ext)? else { return Ok(None) };
        let rows = arrow::compute::filter_record_batch(&rows, &BooleanArray::from(found))?;
        Ok(Some(with_computed(&self.schema, self.computed.as_deref(), rows)?))
    }
}

/// The values `filter` pins column `key` to: `key = v`, `v = key` or `key IN (v, ...)` with
/// literal values, without NULLs and duplicates (a NULL never equals the key). `None` for any
/// other filter.
fn key_values(filter: &Expr, key: &str) -> Option<Vec<ScalarValue>> {
    let is_key = |e: &Expr| matches!(e, Expr::Column(c) if c.name == key);
    let literal = |e: &Expr| match e {
        Expr::Literal(v, _) => Some(v.clone()),
        _ => None,
    };
    let values: Vec<ScalarValue> = match filter {
        Expr::BinaryExpr(b) if b.op == Operator::Eq => {
            if is_key(&b.left) {
                vec![literal(&b.right)?]
            } else if is_key(&b.right) {
                vec![literal(&b.left)?]
            } else {
                return None;
            }
        }
        Expr::InList(l) if !l.negated && is_key(&l.expr) => l.list.iter().map(literal).collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    let mut out: Vec<ScalarValue> = Vec::new();
    for v in values {
        if !v.is_null() && !out.contains(&v) {
            out.push(v);
        }
    }
    Some(out)
}

/// The full row (physical and computed columns) of physical rows.
fn with_computed(schema: &SchemaRef, computed: Option<&[ExprRef]>, physical: RecordBatch) -> DfResult<RecordBatch> {
    match computed {
        None => Ok(RecordBatch::try_new(schema.clone(), physical.columns().to_vec())?),
        Some(exprs) => {
            let cols =
                exprs.iter().map(|e| e.evaluate(&physical)?.into_array(physical.num_rows())).collect::<DfResult<Vec<_>>>()?;
            Ok(RecordBatch::try_new(schema.clone(), cols)?)
        }
    }
}

/// A batch scan of a bounded `datagen` table: every row it will ever produce (as Flink's
/// bounded `datagen` source reads in batch mode), generated lazily in batches of
/// [`DATAGEN_BATCH_ROWS`], so memory stays bounded and a `LIMIT` stops generation early. An
/// unbounded one is refused (SQLSTATE 0A000) rather than cut at some size.
#[derive(Debug)]
pub struct DatagenPartition {
    entry: Arc<TableEntry>,
    opts: sluice_connectors::datagen::DatagenOptions,
    physical: SchemaRef,
    rows: u64,
}

impl DatagenPartition {
    /// Errors: the table is unbounded.
    fn try_new(entry: Arc<TableEntry>, opts: &sluice_connectors::datagen::DatagenOptions, limit: Option<usize>) -> DfResult<Self> {
        let total = opts.total_rows().ok_or_else(|| {
            DataFusionError::NotImplemented(format!(
                "table \"{}\" is an unbounded datagen source, which a batch query would never finish reading: set 'number-of-rows' (or a sequence's end), or read it with a persistent query",
                entry.def.name
            ))
        })?;
        let rows = limit.map_or(total, |l| total.min(l as u64));
        let physical = entry.def.physical_schema().map_err(ext)?;
        Ok(DatagenPartition { opts: opts.clone(), physical, rows, entry })
    }
}

impl datafusion::physical_plan::streaming::PartitionStream for DatagenPartition {
    fn schema(&self) -> &SchemaRef {
        &self.entry.schema
    }

    fn execute(&self, _ctx: Arc<datafusion::execution::TaskContext>) -> datafusion::execution::SendableRecordBatchStream {
        let (entry, opts, physical, rows) = (self.entry.clone(), self.opts.clone(), self.physical.clone(), self.rows);
        let batches = (0..rows).step_by(DATAGEN_BATCH_ROWS).map(move |from| {
            let n = DATAGEN_BATCH_ROWS.min((rows - from) as usize);
            let batch = opts.generate(&physical, from, n).map_err(ext)?;
            with_computed(&entry.schema, entry.computed.as_deref(), batch)
        });
        Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
            self.entry.schema.clone(),
            futures::stream::iter(batches),
        ))
    }
}

/// A scan over one in-memory batch.
fn single_batch_exec(batch: RecordBatch, schema: &SchemaRef, projection: Option<&Vec<usize>>) -> DfResult<Arc<dyn ExecutionPlan>> {
    Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], schema.clone(), projection.cloned())?)
}

fn ext<E: std::error::Error + Send + Sync + 'static>(e: E) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The DataFusion view of a table: a scan returns its current contents.
#[derive(Debug)]
pub struct SluiceTable {
    /// The table.
    pub entry: Arc<TableEntry>,
    /// The topic log its rows live in.
    pub log: Arc<LogHandle>,
}

/// A `Debug` wrapper around the topic log.
pub struct LogHandle(pub Arc<dyn TopicLog>);

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopicLog")
    }
}

#[async_trait]
impl TableProvider for SluiceTable {
    fn schema(&self) -> SchemaRef {
        self.entry.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters that pin a single-column primary key to literal values (`k = 1`, `k IN (1, 2)`)
    /// are used to read those rows by key; DataFusion still applies every filter after the
    /// scan (`Inexact`). Never `Exact`: the streaming planner (`planner/src/stream.rs`)
    /// relies on DataFusion keeping every filter above the scan.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        let key = self.single_key();
        Ok(filters
            .iter()
            .map(|f| match key {
                Some(k) if key_values(f, k).is_some() => TableProviderFilterPushDown::Inexact,
                _ => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if let TableConnector::Datagen(opts) = &self.entry.connector {
            let part = DatagenPartition::try_new(self.entry.clone(), opts, limit)?;
            let exec = datafusion::physical_plan::streaming::StreamingTableExec::try_new(
                self.entry.schema.clone(),
                vec![Arc::new(part)],
                projection,
                Vec::<datafusion::physical_expr::LexOrdering>::new(),
                false,
                limit,
            )?;
            return Ok(Arc::new(exec));
        }
        // A point lookup by primary key reads only those rows.
        if let Some(keys) = self.single_key().and_then(|k| filters.iter().find_map(|f| key_values(f, k))) {
            if let Some(batch) = crate::engine::blocking(|| self.entry.rows_by_key(self.log.0.as_ref(), &keys))? {
                return single_batch_exec(batch, &self.entry.schema, projection);
            }
        }
        // Catching up reads the log (RocksDB, or Kafka on that backend): off the async worker.
        // DataFusion passes a limit only when no filter remains to apply after the scan.
        let batch = match limit {
            Some(n) => crate::engine::blocking(|| self.entry.some_rows(self.log.0.as_ref(), n))?,
            None => crate::engine::blocking(|| self.entry.current_rows(self.log.0.as_ref()))?,
        };
        single_batch_exec(batch, &self.entry.schema, projection)
    }
}

impl SluiceTable {
    /// The name of the table's primary key when it is one column of an upsert table.
    fn single_key(&self) -> Option<&str> {
        match self.entry.def.primary_key.as_slice() {
            [k] if self.entry.def.is_upsert() && matches!(self.entry.connector, TableConnector::Topic { .. }) => Some(k),
            _ => None,
        }
    }
}

/// `sluice_jobs`: the persistent queries as a table (the rows of `SHOW JOBS`), so that SQL
/// clients and BI tools can filter and join them.
pub struct JobsTable {
    /// The engine whose jobs are listed.
    pub engine: std::sync::Weak<crate::engine::Engine>,
    /// `SHOW JOBS`'s schema.
    pub schema: SchemaRef,
}

impl std::fmt::Debug for JobsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobsTable")
    }
}

#[async_trait]
impl TableProvider for JobsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let engine = self.engine.upgrade().ok_or_else(|| DataFusionError::Execution("server is shutting down".into()))?;
        let batch = engine.jobs_batch().map_err(|e| DataFusionError::Execution(e.message))?;
        single_batch_exec(batch, &self.schema, projection)
    }
}
