//! Declared string lengths applied to rows being written: the n of `VARCHAR(n)` and `CHAR(n)`
//! ([`ColumnDef::max_chars`]), counted in characters (Unicode scalar values), not bytes.
//!
//! Two writers use it:
//!
//! - client writes (`INSERT`, `UPDATE`, `COPY`), through [`TableDef::enforce_lengths`]:
//!   PostgreSQL's assignment rule, with a value longer than n characters an error (SQLSTATE
//!   22001) unless the excess is all spaces, which are cut off, and a `CHAR(n)` value
//!   blank-padded to n, as PostgreSQL stores `character(n)`;
//! - a persistent query's output, through [`TableDef::fit_lengths`] with the job's
//!   [`TypeLengthEnforcer`] (Flink's `table.exec.sink.type-length-enforcer`): `ERROR` is the
//!   rule above, `TRIM_PAD` cuts to n characters and pads `CHAR(n)` (Flink's), `IGNORE` stores
//!   values as they are (Flink's default).
//!
//! Padding makes a `CHAR(n)` value's trailing spaces part of the stored string: DataFusion
//! compares and concatenates it as the string it is (`c = 'ab'` is false for `'ab  '`), where
//! PostgreSQL would ignore them. NULL stays NULL.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, StringArray};

use crate::change::{ChangeBatch, Op};
use crate::enforcer::TypeLengthEnforcer;
use crate::error::{CatalogError, Result};
use crate::table::{ColumnDef, TableDef};

/// What [`TableDef::fit_lengths`] does with retractions (`-U`, `-D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retractions {
    /// Left as they are: a client's retraction names a row read back from the table, already
    /// stored as it was fitted then (or before lengths were enforced).
    Untouched,
    /// Cut and padded as an insertion of the same value would be, so that it names the row
    /// that insertion stored (a job retracts what it computed, not what the sink stored). Never
    /// an error: under `ERROR`, a retraction with a value too long is left as it is, since its
    /// insertion either failed the job or was stored under another enforcer.
    Fitted,
}

/// A value after its column's declared length was applied.
enum Fit<'a> {
    /// Unchanged.
    Same,
    /// Cut, padded, or both.
    Changed(Cow<'a, str>),
    /// Longer than n characters, with more than spaces beyond n, under `ERROR`.
    TooLong,
}

/// Applies length `n` to `s`: cut to n characters (under `ERROR` only when the rest is spaces),
/// then, when `pad` (a `CHAR(n)` column), padded with spaces to n characters.
fn fit(s: &str, n: usize, pad: bool, enforcer: TypeLengthEnforcer) -> Fit<'_> {
    // A string of at most n bytes has at most n characters.
    let kept = match s.len() > n { true => s.char_indices().nth(n).map(|(end, _)| end), false => None };
    let kept = match kept {
        Some(end) if enforcer == TypeLengthEnforcer::Error && s.as_bytes()[end..].iter().any(|b| *b != b' ') => {
            return Fit::TooLong
        }
        Some(end) => &s[..end],
        None => s,
    };
    let chars = if pad { kept.chars().count() } else { n };
    match (chars < n, kept.len() < s.len()) {
        (true, _) => {
            let mut padded = String::with_capacity(kept.len() + n - chars);
            padded.push_str(kept);
            padded.push_str(&" ".repeat(n - chars));
            Fit::Changed(Cow::Owned(padded))
        }
        (false, true) => Fit::Changed(Cow::Borrowed(kept)),
        (false, false) => Fit::Same,
    }
}

/// `values` with length `n` applied to the rows `ops` selects; `None` when nothing changes.
///
/// Errors: the index of the first row with a value too long.
fn fit_column(
    values: &StringArray,
    ops: &[Op],
    n: usize,
    pad: bool,
    enforcer: TypeLengthEnforcer,
    retractions: Retractions,
) -> std::result::Result<Option<StringArray>, usize> {
    // No value can be longer than n, and none needs padding: the common case.
    if !pad && values.value_data().len() <= n {
        return Ok(None);
    }
    let mut fitted: Vec<Option<Cow<'_, str>>> = Vec::new();
    for (r, v) in values.iter().enumerate() {
        let insertion = ops[r].is_insertion();
        let fit = match v {
            Some(s) if insertion || retractions == Retractions::Fitted => fit(s, n, pad, enforcer),
            _ => Fit::Same,
        };
        let changed = match fit {
            Fit::Same => None,
            Fit::TooLong if insertion => return Err(r),
            Fit::TooLong => None,
            Fit::Changed(c) => Some(c),
        };
        match changed {
            Some(c) => {
                if fitted.is_empty() {
                    fitted.extend(values.iter().take(r).map(|v| v.map(Cow::Borrowed)));
                }
                fitted.push(Some(c));
            }
            None if !fitted.is_empty() => fitted.push(v.map(Cow::Borrowed)),
            None => {}
        }
    }
    Ok((!fitted.is_empty()).then(|| fitted.into_iter().collect()))
}

impl TableDef {
    /// Applies the declared lengths of the `VARCHAR(n)` and `CHAR(n)` columns to a client's rows
    /// about to be written (`INSERT`, `UPDATE`, `COPY`); `batch` is in the physical schema. As
    /// in PostgreSQL, a value longer than n characters is an error unless the excess is all
    /// spaces, which are cut off, and a `CHAR(n)` value shorter than n is blank-padded to n.
    /// Retractions (`-D`, `-U`) are left as they are: they name rows that are already stored.
    ///
    /// Errors: [`CatalogError::ValueTooLong`] (SQLSTATE 22001 at the server), and nothing of the
    /// batch should be written then.
    pub fn enforce_lengths(&self, batch: ChangeBatch) -> Result<ChangeBatch> {
        self.fit_lengths(batch, TypeLengthEnforcer::Error, Retractions::Untouched)
    }

    /// Applies the declared lengths of the `VARCHAR(n)` and `CHAR(n)` columns to rows about to
    /// be written, in the physical schema, under `enforcer` (see [`TypeLengthEnforcer`]):
    /// `ERROR` as [`TableDef::enforce_lengths`], `TRIM_PAD` cuts every value to n characters
    /// and pads `CHAR(n)` values to n, `IGNORE` returns `batch` as it is. Retractions are
    /// fitted or not as `retractions` says. Columns that are not `Utf8` are left alone.
    ///
    /// Errors: [`CatalogError::ValueTooLong`] under `ERROR`, with PostgreSQL's message and the
    /// row; [`CatalogError::Arrow`] if the fitted columns do not make a batch.
    pub fn fit_lengths(&self, batch: ChangeBatch, enforcer: TypeLengthEnforcer, retractions: Retractions) -> Result<ChangeBatch> {
        if enforcer == TypeLengthEnforcer::Ignore {
            return Ok(batch);
        }
        let physical = self.columns.iter().filter(|c| c.computed.is_none());
        let mut replaced: Option<Vec<ArrayRef>> = None;
        for (i, c) in physical.enumerate() {
            let Some(n) = c.max_chars() else { continue };
            let Some(values) = batch.data.columns().get(i).and_then(|a| a.as_string_opt::<i32>()) else {
                continue;
            };
            match fit_column(values, &batch.ops, n, c.is_blank_padded(), enforcer, retractions) {
                Ok(None) => {}
                Ok(Some(fitted)) => replaced.get_or_insert_with(|| batch.data.columns().to_vec())[i] = Arc::new(fitted),
                Err(row) => return Err(self.too_long(c, n, &batch, row)),
            }
        }
        match replaced {
            None => Ok(batch),
            Some(columns) => batch.with_columns(batch.schema(), columns),
        }
    }

    /// PostgreSQL's error for a value of column `c` in row `row` of `batch` longer than `n`.
    fn too_long(&self, c: &ColumnDef, n: usize, batch: &ChangeBatch, row: usize) -> CatalogError {
        let one = ChangeBatch::new(batch.data.slice(row, 1), vec![batch.ops[row]]);
        CatalogError::ValueTooLong {
            message: format!(
                "value too long for type {} (column \"{}\" of table \"{}\")",
                c.character_type_name(n),
                c.name,
                self.name
            ),
            row: one.to_text().trim_end().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{Array, RecordBatch};
    use arrow::datatypes::DataType;

    use super::*;

    fn table() -> TableDef {
        let col = |name: &str, sql_type: &str| ColumnDef {
            name: name.into(),
            data_type: DataType::Utf8.to_string(),
            nullable: true,
            computed: None,
            sql_type: sql_type.into(),
        };
        TableDef {
            name: "t".into(),
            columns: vec![col("v", "VARCHAR(3)"), col("c", "CHARACTER(2)"), col("s", "STRING")],
            primary_key: vec![],
            watermark: None,
            options: BTreeMap::new(),
            create_sql: String::new(),
            partitions: 1,
        }
    }

    /// Rows of `t`, `(v, c, op)`; `s` is always `long enough`.
    fn batch(rows: &[(Option<&str>, Option<&str>, Op)]) -> ChangeBatch {
        let t = table();
        let v: StringArray = rows.iter().map(|r| r.0).collect();
        let c: StringArray = rows.iter().map(|r| r.1).collect();
        let s = StringArray::from(vec!["long enough"; rows.len()]);
        let cols: Vec<ArrayRef> = vec![Arc::new(v), Arc::new(c), Arc::new(s)];
        ChangeBatch::new(RecordBatch::try_new(t.physical_schema().unwrap(), cols).unwrap(), rows.iter().map(|r| r.2).collect())
    }

    /// The `v` and `c` values of `b` between bars, to show spaces: `|ab ||x |`.
    fn shown(b: &ChangeBatch) -> Vec<String> {
        let (v, c) = (b.data.column(0).as_string::<i32>(), b.data.column(1).as_string::<i32>());
        let text = |a: &StringArray, r: usize| if a.is_valid(r) { a.value(r).to_string() } else { "NULL".to_string() };
        (0..b.num_rows()).map(|r| format!("{} |{}|{}|", b.ops[r].short(), text(v, r), text(c, r))).collect()
    }

    #[test]
    fn declared_lengths_as_postgres() {
        let t = table();
        assert_eq!(t.columns[0].max_chars(), Some(3));
        assert_eq!(t.columns[2].max_chars(), None);
        assert!(t.columns[1].is_blank_padded() && !t.columns[0].is_blank_padded());
        let ok = t.enforce_lengths(batch(&[(Some("äbc"), Some("ab"), Op::Insert)])).unwrap();
        assert_eq!(ok.to_text(), "+I äbc ab long enough\n");
        let e = t.enforce_lengths(batch(&[(Some("ab"), None, Op::Insert), (Some("abcdef"), Some("ab"), Op::Insert)])).unwrap_err();
        assert_eq!(e.to_string(), "value too long for type character varying(3) (column \"v\" of table \"t\")");
        assert!(matches!(&e, CatalogError::ValueTooLong { row, .. } if row == "+I abcdef ab long enough"), "{e:?}");
        let e = t.enforce_lengths(batch(&[(Some("a"), Some("abc"), Op::UpdateAfter)])).unwrap_err();
        assert!(e.to_string().starts_with("value too long for type character(2)"), "{e}");
        // Trailing spaces beyond the length are cut, as PostgreSQL does.
        let cut = t.enforce_lengths(batch(&[(Some("ab    "), Some("x"), Op::Insert)])).unwrap();
        assert_eq!(shown(&cut), ["+I |ab |x |"]);
        // A retraction names a stored row: neither checked nor padded.
        let kept = t.enforce_lengths(batch(&[(Some("abcdef"), Some("a"), Op::Delete)])).unwrap();
        assert_eq!(shown(&kept), ["-D |abcdef|a|"]);
    }

    #[test]
    fn char_values_are_blank_padded_to_their_length() {
        let t = table();
        let rows = batch(&[
            (Some("a"), Some("é"), Op::Insert),
            (None, Some(""), Op::Insert),
            (Some("ab"), None, Op::UpdateAfter),
            (Some("xyz"), Some("xy"), Op::Insert),
        ]);
        let padded = t.enforce_lengths(rows).unwrap();
        // Characters, not bytes: 'é' is two bytes and one character, padded with one space.
        assert_eq!(shown(&padded), ["+I |a|é |", "+I |NULL|  |", "+U |ab|NULL|", "+I |xyz|xy|"]);
        assert_eq!(padded.data.column(1).as_string::<i32>().value(0).len(), 3);
    }

    #[test]
    fn trim_pad_cuts_to_characters_and_pads() {
        let t = table();
        let rows = || {
            batch(&[
                (Some("abcdef"), Some("x"), Op::Insert),
                (Some("日本語テキスト"), Some("ñandú"), Op::Insert),
                (Some("a😀b😀c"), Some("😀"), Op::Delete),
                (Some("ab"), Some("ab"), Op::UpdateBefore),
            ])
        };
        let fitted = t.fit_lengths(rows(), TypeLengthEnforcer::TrimPad, Retractions::Fitted).unwrap();
        // UTF-8 safe: cut at the third character, whatever its width in bytes; retractions as
        // the insertions of the same values.
        assert_eq!(shown(&fitted), ["+I |abc|x |", "+I |日本語|ña|", "-D |a😀b|😀 |", "-U |ab|ab|"]);
        // IGNORE stores them as they are.
        let ignored = t.fit_lengths(rows(), TypeLengthEnforcer::Ignore, Retractions::Fitted).unwrap();
        assert_eq!(shown(&ignored), shown(&rows()));
        // ERROR fails on the first insertion too long, in characters.
        let e = t.fit_lengths(rows(), TypeLengthEnforcer::Error, Retractions::Fitted).unwrap_err();
        assert!(matches!(&e, CatalogError::ValueTooLong { row, .. } if row == "+I abcdef x long enough"), "{e:?}");
        let e = t.fit_lengths(batch(&[(Some("日本語 "), Some("ñandú"), Op::Insert)]), TypeLengthEnforcer::Error, Retractions::Fitted).unwrap_err();
        assert!(e.to_string().starts_with("value too long for type character(2) (column \"c\""), "{e}");
    }

    #[test]
    fn error_fits_retractions_without_failing_on_them() {
        let t = table();
        let rows = batch(&[(Some("ab   "), Some("a"), Op::UpdateBefore), (Some("abcd"), Some("b"), Op::Delete), (Some("a"), Some("c"), Op::UpdateAfter)]);
        let fitted = t.fit_lengths(rows, TypeLengthEnforcer::Error, Retractions::Fitted).unwrap();
        // Spaces cut and CHAR padded as for an insertion; the value too long is left as it is.
        assert_eq!(shown(&fitted), ["-U |ab |a |", "-D |abcd|b |", "+U |a|c |"]);
    }
}
