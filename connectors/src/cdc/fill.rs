//! The values of unchanged TOASTed columns, which pgoutput leaves out of an UPDATE's new row.

use std::collections::HashMap;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::CastOptions;
use arrow::row::{RowConverter, SortField};
use pg_walstream::{ColumnValue, RowData};
use sluice_catalog::{ChangeBatch, Op};

use super::route::Route;
use crate::error::{ConnectorError, Result};

impl Route {
    /// Fills in the values of unchanged TOASTed columns that updates' new rows lack.
    ///
    /// pgoutput leaves a large (TOASTed) value out of an UPDATE's new row when the update did
    /// not change it (tuple data kind `'u'`, which pg_walstream drops from the row), whatever the
    /// table's replica identity. Storing NULL for it would silently lose the value, so the rule
    /// is: the column did not change, so its new value is its value before the update, taken
    /// from, in order,
    /// 1. the update's old row, when Postgres sent it whole (REPLICA IDENTITY FULL; see [`value`]);
    /// 2. the latest row of the same key earlier in `rows` (captured in this batch, so not yet in
    ///    the target table);
    /// 3. the row the target table holds for the key ([`IngestTarget::lookup`]), the table being
    ///    keyed by the captured table's primary key;
    ///
    /// the key being the old row's when the update changed it. A column that a transform drops
    /// or the target table lacks needs no value and is left NULL. With no row to take the value
    /// from (a row older than the capture, with `snapshot.mode` = `never`) it is an error.
    pub(super) fn fill_unchanged(&self, rows: &[(Op, &RowData)], cols: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
        let names: Vec<&str> = self.source.columns.iter().map(|c| c.name.as_str()).collect();
        let targets: Vec<Option<usize>> = names.iter().map(|n| self.target_column(n)).collect();
        let holes: Vec<Vec<usize>> = (0..rows.len())
            .map(|i| match rows[i].0 {
                Op::UpdateAfter => (0..names.len()).filter(|c| targets[*c].is_some() && value(rows, i, names[*c]).is_none()).collect(),
                _ => Vec::new(),
            })
            .collect();
        let Some(first) = holes.iter().position(|h| !h.is_empty()) else { return Ok(cols) };
        let unfilled = |c: usize, why: &str| {
            ConnectorError::Write(format!(
                "postgres sent an UPDATE of {}.{} without the unchanged TOASTed value of column '{}', and {why}; \
                 Sluice does not store NULL for it. Set REPLICA IDENTITY FULL on the table (or re-create the connector \
                 with a snapshot) so that the value is known",
                self.source.schema, self.source.name, names[c]
            ))
        };
        if self.target_key.is_empty() {
            return Err(unfilled(holes[first][0], "the target table has no primary key to find the row's stored value by"));
        }
        // Every row's target key, through the transforms (as inserts, which no transform drops).
        let keyed = self.transform(ChangeBatch::inserts(RecordBatch::try_new(self.source.arrow_schema(), cols.clone())?))?;
        let key_cols = self
            .target_key
            .iter()
            .map(|k| Ok(keyed.data.column(self.target_schema.index_of(k)?).clone()))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let converter = RowConverter::new(key_cols.iter().map(|c| SortField::new(c.data_type().clone())).collect())?;
        let keys = converter.convert_columns(&key_cols)?;

        // Where each hole (row, column) takes its value from.
        #[derive(Clone, Copy)]
        enum Source {
            /// The same column of an earlier row of this batch (one without a hole there).
            Row(usize),
            /// The target table's row for the `n`-th key looked up.
            Stored(usize),
        }
        let mut fills: HashMap<(usize, usize), Source> = HashMap::new();
        // The latest row of each key in this batch; `None` once deleted.
        let mut latest: HashMap<arrow::row::Row<'_>, Option<usize>> = HashMap::new();
        let mut lookups: Vec<u32> = Vec::new();
        for (i, (op, _)) in rows.iter().enumerate() {
            let own = keys.row(i);
            match op {
                Op::Insert => {
                    latest.insert(own, Some(i));
                }
                Op::Delete => {
                    latest.insert(own, None);
                }
                // Its new row, next, holds the key's new value.
                Op::UpdateBefore => {}
                Op::UpdateAfter => {
                    let key = keys.row(old_row(rows, i).unwrap_or(i));
                    if !holes[i].is_empty() {
                        match latest.get(&key) {
                            Some(Some(j)) => {
                                for c in &holes[i] {
                                    let from = fills.get(&(*j, *c)).copied().unwrap_or(Source::Row(*j));
                                    fills.insert((i, *c), from);
                                }
                            }
                            Some(None) => return Err(unfilled(holes[i][0], "the row was deleted earlier in the same batch")),
                            None => {
                                for c in &holes[i] {
                                    fills.insert((i, *c), Source::Stored(lookups.len()));
                                }
                                lookups.push(old_row(rows, i).unwrap_or(i) as u32);
                            }
                        }
                    }
                    latest.insert(key, None);
                    latest.insert(own, Some(i));
                }
            }
        }
        let stored = if lookups.is_empty() {
            None
        } else {
            let wanted = arrow::compute::take_record_batch(&keyed.data, &UInt32Array::from(lookups))?;
            let (stored, found) = self.target.lookup(&wanted)?;
            if let Some(n) = found.iter().position(|f| !f) {
                let ((_, c), _) = fills.iter().find(|(_, s)| matches!(s, Source::Stored(k) if *k == n)).expect("a hole per lookup");
                return Err(unfilled(*c, "Sluice holds no row with its key"));
            }
            Some(stored)
        };
        let mut out = cols;
        for c in 0..names.len() {
            if !holes.iter().any(|h| h.contains(&c)) {
                continue;
            }
            let dt = out[c].data_type().clone();
            let from_table = match (&stored, targets[c]) {
                (Some(s), Some(t)) => arrow::compute::cast_with_options(s.column(t), &dt, &CastOptions { safe: false, ..Default::default() })?,
                _ => arrow::array::new_null_array(&dt, 0),
            };
            let indices: Vec<(usize, usize)> = (0..rows.len())
                .map(|i| match fills.get(&(i, c)) {
                    None => (0, i),
                    Some(Source::Row(j)) => (0, *j),
                    Some(Source::Stored(k)) => (1, *k),
                })
                .collect();
            out[c] = arrow::compute::interleave(&[out[c].as_ref(), from_table.as_ref()], &indices)?;
        }
        Ok(out)
    }
}

/// The value of column `name` in row `i` of captured rows. An update's new row that lacks it
/// (an unchanged TOAST value) takes it from the update's old row when Postgres sent that whole
/// (REPLICA IDENTITY FULL): the column did not change, so its old value is its new value.
pub(super) fn value<'a>(rows: &[(Op, &'a RowData)], i: usize, name: &str) -> Option<&'a ColumnValue> {
    rows[i].1.get(name).or_else(|| old_row(rows, i).and_then(|o| rows[o].1.get(name)))
}

/// For an update's new row (`+U`) in captured rows, the index of its old row (`-U`): the capture
/// loop puts it just before, when Postgres sends one (the key changed, or REPLICA IDENTITY FULL).
fn old_row(rows: &[(Op, &RowData)], i: usize) -> Option<usize> {
    (rows[i].0 == Op::UpdateAfter && i > 0 && rows[i - 1].0 == Op::UpdateBefore).then(|| i - 1)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::StringArray;
    use arrow::datatypes::DataType;

    use super::*;
    use crate::cdc::{PgColumn, PgTable};
    use crate::task::IngestTarget;

    /// A target table holding `doc` values by `id`, as the server's materialized table would.
    struct Stored(HashMap<i64, &'static str>);

    impl IngestTarget for Stored {
        fn append(&self, _: Vec<ChangeBatch>, _: Option<RecordBatch>, _: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
            Ok(())
        }
        fn position(&self, _: &[u8]) -> Result<Option<Vec<u8>>> {
            Ok(None)
        }
        fn put_position(&self, _: &[u8], _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn lookup(&self, rows: &RecordBatch) -> Result<(RecordBatch, Vec<bool>)> {
            let ids = rows.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
            let docs: Vec<Option<&str>> = ids.iter().map(|id| self.0.get(&id.unwrap()).copied()).collect();
            let found = docs.iter().map(Option::is_some).collect();
            let n = arrow::array::new_null_array(&DataType::Int32, rows.num_rows());
            let batch = RecordBatch::try_new(rows.schema(), vec![rows.column(0).clone(), Arc::new(StringArray::from(docs)), n])?;
            Ok((batch, found))
        }
    }

    fn route(stored: &[(i64, &'static str)]) -> Route {
        let col = |name: &str, pg: &str, dt: DataType| PgColumn { name: name.into(), pg_type: pg.into(), arrow_type: dt, not_null: false };
        let source = PgTable {
            schema: "public".into(),
            name: "docs".into(),
            columns: vec![col("id", "int8", DataType::Int64), col("doc", "text", DataType::Utf8), col("n", "int4", DataType::Int32)],
            primary_key: vec!["id".into()],
        };
        Route {
            target_schema: source.arrow_schema(),
            source,
            transforms: Vec::new(),
            target_key: vec!["id".into()],
            target: Arc::new(Stored(stored.iter().copied().collect())),
            position_key: Vec::new(),
        }
    }

    fn row(values: &[(&str, &str)]) -> RowData {
        RowData::from_pairs(values.iter().map(|(k, v)| (*k, ColumnValue::text(v))).collect())
    }

    #[test]
    fn unchanged_toast_values_are_filled_from_the_batch_and_the_table() {
        let r = route(&[(1, "big-1"), (3, "big-3")]);
        let rows = [
            // The stored row's value.
            (Op::UpdateAfter, row(&[("id", "1"), ("n", "10")])),
            // The value of a row earlier in the batch, through a second update.
            (Op::Insert, row(&[("id", "2"), ("doc", "two"), ("n", "0")])),
            (Op::UpdateAfter, row(&[("id", "2"), ("n", "20")])),
            (Op::UpdateAfter, row(&[("id", "2"), ("n", "21")])),
            // A key change: the old key's stored row.
            (Op::UpdateBefore, row(&[("id", "3")])),
            (Op::UpdateAfter, row(&[("id", "4"), ("n", "40")])),
            // REPLICA IDENTITY FULL: the old row's value.
            (Op::UpdateBefore, row(&[("id", "5"), ("doc", "old-5"), ("n", "0")])),
            (Op::UpdateAfter, row(&[("id", "5"), ("n", "50")])),
        ];
        let refs: Vec<(Op, &RowData)> = rows.iter().map(|(op, r)| (*op, r)).collect();
        assert_eq!(
            r.rows(&refs).unwrap().to_text(),
            "+U 1 big-1 10\n+I 2 two 0\n+U 2 two 20\n+U 2 two 21\n-U 3 NULL NULL\n+U 4 big-3 40\n-U 5 old-5 0\n+U 5 old-5 50\n"
        );
        // No row to take the value from: an error, not a NULL.
        let missing = [(Op::UpdateAfter, row(&[("id", "9"), ("n", "90")]))];
        let refs: Vec<(Op, &RowData)> = missing.iter().map(|(op, r)| (*op, r)).collect();
        let err = r.rows(&refs).unwrap_err().to_string();
        assert!(err.contains("column 'doc'") && err.contains("no row with its key"), "{err}");
    }

}
