//! A route: where one captured table's rows go, through its transforms, to its target table.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::CastOptions;
use arrow::datatypes::{Schema, SchemaRef};
use pg_walstream::RowData;
use sluice_catalog::{ChangeBatch, Op};

use super::fill::value;
use super::table::PgTable;
use super::text::text_column;
use crate::error::Result;
use crate::smt::{check_fields, Shape, Transform};
use crate::task::IngestTarget;

/// Where one captured table's rows go: its transforms, and the table they are appended to.
pub struct Route {
    /// The captured Postgres table.
    pub source: PgTable,
    /// Transforms applied in order, each with the schema after it.
    pub transforms: Vec<(Transform, SchemaRef)>,
    /// The target table's physical schema (rows are matched to it by column name).
    pub target_schema: SchemaRef,
    /// The target table's primary key (names in `target_schema`), by which an update's
    /// unchanged TOAST values are looked up (see [`Route::fill_unchanged`]).
    pub target_key: Vec<String>,
    /// The target.
    pub target: Arc<dyn IngestTarget>,
    /// Key under which the LSN of this route's last appended transaction is stored.
    pub position_key: Vec<u8>,
}

impl Route {
    /// Builds the route of `source` through `transforms`; returns it with the shape of the rows
    /// after the transforms (name, schema, key), from which the target table is made.
    ///
    /// Errors: a transform naming a column that does not exist.
    pub fn shape(source: &PgTable, prefix: &str, transforms: &[Transform]) -> Result<(Shape, Vec<(Transform, SchemaRef)>)> {
        let mut shape = Route::source_shape(source, prefix);
        let mut steps = Vec::new();
        for t in transforms {
            shape = t.shape(shape)?;
            steps.push((t.clone(), shape.schema.clone()));
        }
        Ok((shape, steps))
    }

    /// The shapes of all captured tables through `transforms` (each as [`Route::shape`]), in the
    /// order of `sources`, once the fields the transforms name are checked over all of them
    /// ([`check_fields`]: a MaskField field some tables lack is fine).
    ///
    /// Errors: a field no captured table has, or one [`Route::shape`] refuses.
    pub fn shapes(sources: &[PgTable], prefix: &str, transforms: &[Transform]) -> Result<Vec<(Shape, Vec<(Transform, SchemaRef)>)>> {
        let inputs: Vec<Shape> = sources.iter().map(|s| Route::source_shape(s, prefix)).collect();
        check_fields(transforms, &inputs)?;
        sources.iter().map(|s| Route::shape(s, prefix, transforms)).collect()
    }

    /// A captured table's shape before any transform: `<prefix>.<schema>.<table>`, its columns
    /// and its primary key.
    fn source_shape(source: &PgTable, prefix: &str) -> Shape {
        Shape { name: format!("{prefix}.{}.{}", source.schema, source.name), schema: source.arrow_schema(), key: source.primary_key.clone() }
    }

    /// Captured rows (column name → text), in the order they were captured, as a change batch
    /// of the target table.
    ///
    /// Errors: a value that does not convert, a transform failing, an unchanged TOAST value with
    /// no row to take it from ([`Route::fill_unchanged`]).
    pub(super) fn rows(&self, rows: &[(Op, &RowData)]) -> Result<ChangeBatch> {
        let schema = self.source.arrow_schema();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (i, f) in schema.fields().iter().enumerate() {
            let name = &self.source.columns[i].name;
            cols.push(text_column((0..rows.len()).map(|r| value(rows, r, name)), f.data_type())?);
        }
        let cols = self.fill_unchanged(rows, cols)?;
        let batch = RecordBatch::try_new(schema, cols)?;
        self.transform(ChangeBatch::new(batch, rows.iter().map(|(op, _)| *op).collect()))
    }

    /// The index in the target table of the column that source column `name` becomes: renamed
    /// or dropped by the transforms, then matched as [`Route::fit`] matches; `None` when dropped.
    pub(super) fn target_column(&self, name: &str) -> Option<usize> {
        let mut name = name.to_string();
        for (t, _) in &self.transforms {
            name = t.output_name(&name)?;
        }
        let out = self.transforms.last().map(|(_, s)| s.clone()).unwrap_or_else(|| self.source.arrow_schema());
        let j = out.index_of(&name).ok()?;
        self.matches(&out).iter().position(|m| *m == Some(j))
    }

    /// Applies the transforms to captured rows, then fits them to the target table.
    pub(super) fn transform(&self, mut change: ChangeBatch) -> Result<ChangeBatch> {
        for (t, out) in &self.transforms {
            change = t.apply(change, out)?;
        }
        self.fit(change)
    }

    /// For each target column, the column of `input` it is filled from: the one of the same
    /// name, else one whose name differs only in case (Flink DDL written in upper case).
    fn matches(&self, input: &Schema) -> Vec<Option<usize>> {
        self.target_schema
            .fields()
            .iter()
            .map(|f| {
                input.index_of(f.name()).ok().or_else(|| input.fields().iter().position(|g| g.name().eq_ignore_ascii_case(f.name())))
            })
            .collect()
    }

    /// Matches columns to the target table by name (see [`Route::matches`]), casting where the
    /// declared type differs.
    fn fit(&self, change: ChangeBatch) -> Result<ChangeBatch> {
        let input = change.data.schema();
        let n = change.num_rows();
        let cols = self
            .target_schema
            .fields()
            .iter()
            .zip(self.matches(&input))
            .map(|(f, found)| match found {
                Some(i) => {
                    let c = change.data.column(i);
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        Ok(arrow::compute::cast_with_options(c, f.data_type(), &CastOptions { safe: false, ..Default::default() })?)
                    }
                }
                None => Ok(arrow::array::new_null_array(f.data_type(), n)),
            })
            .collect::<Result<Vec<_>>>()?;
        let relaxed = Arc::new(Schema::new(
            self.target_schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        Ok(ChangeBatch::new(RecordBatch::try_new(relaxed, cols)?, change.ops))
    }
}
