//! `COPY t [(cols)] FROM STDIN`: PostgreSQL's text and CSV formats, as psql's `\copy` and client
//! libraries send them.
//!
//! The whole input is parsed and cast before anything is written, so a bad line writes nothing;
//! the error names the line (1-based, counting a CSV header) and the column.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::SchemaRef;
use sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption};

use crate::errors::{SqlError, SqlResult};

/// How the incoming data is formatted.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyFormat {
    /// CSV (true) or PostgreSQL's text format (false).
    pub csv: bool,
    /// The first line is a header (CSV only).
    pub header: bool,
    /// Field delimiter: tab for text, comma for CSV by default.
    pub delimiter: u8,
    /// The string that means NULL: `\N` for text, an unquoted empty field for CSV.
    pub null: String,
    /// CSV quote character.
    pub quote: u8,
}

impl CopyFormat {
    /// Reads the options of a `COPY` statement.
    ///
    /// Errors: 0A000 for `FORMAT binary`, 22023 for unknown formats.
    pub fn from_options(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> SqlResult<CopyFormat> {
        let mut csv = false;
        let mut header = false;
        let mut delimiter = None;
        let mut null = None;
        let mut quote = b'"';
        for o in options {
            match o {
                CopyOption::Format(f) => match f.value.to_lowercase().as_str() {
                    "csv" => csv = true,
                    "text" => csv = false,
                    "binary" => return Err(SqlError::unsupported("COPY FORMAT binary is not supported; use text or csv")),
                    other => return Err(SqlError::new("22023", format!("COPY format \"{other}\" not recognized"))),
                },
                CopyOption::Delimiter(c) => delimiter = Some(*c as u8),
                CopyOption::Null(n) => null = Some(n.clone()),
                CopyOption::Header(h) => header = *h,
                CopyOption::Quote(q) => quote = *q as u8,
                _ => {}
            }
        }
        for o in legacy {
            match o {
                CopyLegacyOption::Binary => {
                    return Err(SqlError::unsupported("COPY BINARY is not supported; use text or csv"))
                }
                CopyLegacyOption::Delimiter(c) => delimiter = Some(*c as u8),
                CopyLegacyOption::Null(n) => null = Some(n.clone()),
                CopyLegacyOption::Csv(opts) => {
                    csv = true;
                    for c in opts {
                        match c {
                            CopyLegacyCsvOption::Header => header = true,
                            CopyLegacyCsvOption::Quote(q) => quote = *q as u8,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(CopyFormat {
            csv,
            header,
            delimiter: delimiter.unwrap_or(if csv { b',' } else { b'\t' }),
            null: null.unwrap_or_else(|| if csv { String::new() } else { "\\N".into() }),
            quote,
        })
    }
}

/// Decodes text-format escapes (`\t`, `\n`, `\\`, ...).
fn unescape_text(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

/// Parses `data` into rows of `schema` (the target columns, in order).
///
/// Errors: 22P02 naming the line and column for a wrong field count or a value that does not
/// cast to the column type.
pub fn parse(data: &[u8], format: &CopyFormat, schema: &SchemaRef) -> SqlResult<RecordBatch> {
    let ncols = schema.fields().len();
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::new(); ncols];
    let mut lines: Vec<usize> = Vec::new();
    if format.csv {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .delimiter(format.delimiter)
            .quote(format.quote)
            .flexible(true)
            .from_reader(data);
        let mut first = true;
        for rec in rdr.byte_records() {
            let rec = rec.map_err(|e| SqlError::bad_value(format!("COPY: malformed CSV: {e}")))?;
            let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
            if first && format.header {
                first = false;
                continue;
            }
            first = false;
            if rec.len() == 1 && rec.get(0) == Some(b"\\.") {
                break;
            }
            if rec.len() != ncols {
                return Err(SqlError::bad_value(format!(
                    "COPY: line {line}: expected {ncols} fields, found {}",
                    rec.len()
                )));
            }
            for (i, f) in rec.iter().enumerate() {
                let s = std::str::from_utf8(f)
                    .map_err(|_| SqlError::new("22021", format!("COPY: line {line}: invalid UTF-8")))?;
                // An unquoted empty field is NULL; the csv crate cannot tell quoted from
                // unquoted empties, so an empty field is NULL unless NULL was set otherwise.
                columns[i].push(if s == format.null { None } else { Some(s.to_string()) });
            }
            lines.push(line);
        }
    } else {
        let text = std::str::from_utf8(data).map_err(|_| SqlError::new("22021", "COPY: invalid UTF-8"))?;
        for (n, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line == "\\." {
                break;
            }
            if line.is_empty() && ncols > 1 {
                continue;
            }
            let fields: Vec<&str> = line.split(format.delimiter as char).collect();
            if fields.len() != ncols {
                return Err(SqlError::bad_value(format!(
                    "COPY: line {}: expected {ncols} fields, found {}",
                    n + 1,
                    fields.len()
                )));
            }
            for (i, f) in fields.iter().enumerate() {
                columns[i].push(if *f == format.null { None } else { Some(unescape_text(f)) });
            }
            lines.push(n + 1);
        }
    }
    let opts = CastOptions { safe: false, ..Default::default() };
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(ncols);
    for (i, field) in schema.fields().iter().enumerate() {
        let strings = StringArray::from(std::mem::take(&mut columns[i]));
        let arr = match cast_with_options(&strings, field.data_type(), &opts) {
            Ok(a) => a,
            Err(e) => {
                // Find the first row that fails, to report its line.
                let row = (0..strings.len())
                    .find(|r| cast_with_options(&strings.slice(*r, 1), field.data_type(), &opts).is_err())
                    .unwrap_or(0);
                return Err(SqlError::bad_value(format!(
                    "COPY: line {}, column {}: invalid input \"{}\" for type {}: {e}",
                    lines.get(row).copied().unwrap_or(0),
                    field.name(),
                    strings.value(row),
                    field.data_type()
                )));
            }
        };
        if !field.is_nullable() && arr.null_count() > 0 {
            let row = (0..arr.len()).find(|r| arr.is_null(*r)).unwrap_or(0);
            return Err(SqlError::new(
                "23502",
                format!("COPY: line {}: null value in column \"{}\" violates not-null constraint", lines.get(row).copied().unwrap_or(0), field.name()),
            ));
        }
        arrays.push(arr);
    }
    Ok(RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(schema.fields().clone())), arrays)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false), Field::new("b", DataType::Utf8, true)]))
    }

    #[test]
    fn text_and_csv_with_errors_by_line() {
        let text = CopyFormat { csv: false, header: false, delimiter: b'\t', null: "\\N".into(), quote: b'"' };
        let b = parse(b"1\tx\\ty\n2\t\\N\n", &text, &schema()).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert!(b.column(1).is_null(1));
        let e = parse(b"1\tx\nzz\ty\n", &text, &schema()).unwrap_err();
        assert_eq!(e.code, "22P02");
        assert!(e.message.contains("line 2"), "{}", e.message);
        let csv = CopyFormat { csv: true, header: true, delimiter: b',', null: String::new(), quote: b'"' };
        let b = parse(b"a,b\n1,\"hello, world\"\n2,\n", &csv, &schema()).unwrap();
        assert_eq!(b.num_rows(), 2);
        let e = parse(b"a,b\n1,x\n2\n", &csv, &schema()).unwrap_err();
        assert!(e.message.contains("line 3"), "{}", e.message);
    }
}
