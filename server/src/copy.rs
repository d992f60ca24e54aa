//! `COPY t [(cols)] FROM STDIN`: PostgreSQL's text and CSV formats, as psql's `\copy` and client
//! libraries send them.
//!
//! [`CopyParser`] takes the data as it arrives, one `CopyData` message at a time: complete lines
//! (CSV: records, whose quoted fields may hold newlines) are split into fields at once, and every
//! [`ROWS_PER_BATCH`] rows are cast into an Arrow batch, so the raw text is never held whole.
//! Nothing is written until the last message has been parsed, so a bad line writes nothing; the
//! error names the line (1-based, counting a header) and the column.
//!
//! As in PostgreSQL: every line is a row (the last line's newline ends it, it does not start an
//! empty row); a line `\.` ends the data; in the text format `\N` is NULL and backslash escapes
//! (`\t`, `\n`, `\\`, octal `\101`, hex `\x41`, an escaped delimiter) are decoded; in CSV an
//! unquoted empty field is NULL, a quoted one (`""`) the empty string, and a quote left open at
//! the end of the data is an error.

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
    /// CSV escape character inside quoted fields: it makes the next quote (or escape) literal.
    /// The quote character by default, so `""` is one `"`.
    pub escape: u8,
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
        let mut escape = None;
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
                CopyOption::Escape(e) => escape = Some(*e as u8),
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
                            CopyLegacyCsvOption::Escape(e) => escape = Some(*e as u8),
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
            escape: escape.unwrap_or(quote),
        })
    }
}

/// Rows cast into one Arrow batch at a time.
pub const ROWS_PER_BATCH: usize = 8192;

/// Parses the data of one `COPY FROM STDIN` as it arrives (see the module doc).
pub struct CopyParser {
    format: CopyFormat,
    /// The target columns, in the order the data holds them.
    schema: SchemaRef,
    /// The bytes of the record not complete yet.
    pending: Vec<u8>,
    /// How far `pending` has been scanned for the end of its record, and the scan state there:
    /// inside a CSV quoted field, after a text-format backslash, newlines inside quotes.
    scanned: usize,
    in_quotes: bool,
    escaped: bool,
    quoted_newlines: usize,
    /// Lines consumed before `pending`.
    line: usize,
    /// A header line is still to be skipped.
    header: bool,
    /// The end marker `\.` was seen: later data is ignored.
    ended: bool,
    /// Fields of the rows not cast yet, per column, and the line of each row.
    columns: Vec<Vec<Option<String>>>,
    lines: Vec<usize>,
    batches: Vec<RecordBatch>,
}

impl CopyParser {
    /// A parser of data in `format` for the columns of `schema`.
    pub fn new(format: CopyFormat, schema: SchemaRef) -> CopyParser {
        let ncols = schema.fields().len();
        CopyParser {
            header: format.header,
            format,
            schema,
            pending: Vec::new(),
            scanned: 0,
            in_quotes: false,
            escaped: false,
            quoted_newlines: 0,
            line: 0,
            ended: false,
            columns: vec![Vec::new(); ncols],
            lines: Vec::new(),
            batches: Vec::new(),
        }
    }

    /// Parses the complete lines of `data` (with what earlier calls left incomplete); keeps the
    /// rest for the next call.
    ///
    /// Errors: 22P02 naming the line and column for a wrong field count or a value that does not
    /// cast to its column's type, 22021 for invalid UTF-8, 23502 for NULL in a NOT NULL column.
    pub fn feed(&mut self, data: &[u8]) -> SqlResult<()> {
        if self.ended {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend_from_slice(data);
        let (quote, escape) = (self.format.quote, self.format.escape);
        let mut start = 0;
        let mut i = self.scanned;
        while i < pending.len() {
            let b = pending[i];
            let mut end = false;
            if !self.format.csv {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'\n' {
                    end = true;
                }
            } else if self.in_quotes {
                if b == escape && escape != quote {
                    // The escape makes a following quote or escape literal; wait to see it.
                    match pending.get(i + 1) {
                        None => break,
                        Some(n) if *n == quote || *n == escape => i += 1,
                        Some(_) => {}
                    }
                } else if b == quote {
                    self.in_quotes = false;
                } else if b == b'\n' {
                    self.quoted_newlines += 1;
                }
            } else if b == quote {
                self.in_quotes = true;
            } else if b == b'\n' {
                end = true;
            }
            i += 1;
            if end {
                let line = self.line + 1;
                self.line += 1 + std::mem::take(&mut self.quoted_newlines);
                let rec = &pending[start..i - 1];
                self.record(rec.strip_suffix(b"\r").unwrap_or(rec), line)?;
                start = i;
                if self.ended {
                    return Ok(());
                }
            }
        }
        pending.drain(..start);
        self.scanned = i - start;
        self.pending = pending;
        Ok(())
    }

    /// Parses the last line (data need not end with a newline) and returns the rows as batches
    /// in the schema given to [`CopyParser::new`].
    ///
    /// Errors: those of [`CopyParser::feed`], and 22P02 for a CSV quoted field never closed.
    pub fn finish(mut self) -> SqlResult<Vec<RecordBatch>> {
        if !self.ended && !self.pending.is_empty() {
            if self.in_quotes {
                return Err(SqlError::bad_value(format!(
                    "COPY: line {}: unterminated CSV quoted field",
                    self.line + 1
                )));
            }
            let rec = std::mem::take(&mut self.pending);
            self.record(rec.strip_suffix(b"\r").unwrap_or(&rec), self.line + 1)?;
        }
        self.flush()?;
        Ok(self.batches)
    }

    /// One complete line (CSV: record) without its line end.
    fn record(&mut self, rec: &[u8], line: usize) -> SqlResult<()> {
        if std::mem::take(&mut self.header) {
            return Ok(());
        }
        if rec == b"\\." {
            self.ended = true;
            return Ok(());
        }
        let fields = if self.format.csv { csv_fields(rec, &self.format) } else { text_fields(rec, &self.format) };
        let ncols = self.columns.len();
        if fields.len() != ncols {
            return Err(SqlError::bad_value(format!(
                "COPY: line {line}: expected {ncols} fields, found {}",
                fields.len()
            )));
        }
        for (i, f) in fields.into_iter().enumerate() {
            let value = match f {
                None => None,
                Some(bytes) => Some(
                    String::from_utf8(bytes)
                        .map_err(|_| SqlError::new("22021", format!("COPY: line {line}: invalid UTF-8")))?,
                ),
            };
            self.columns[i].push(value);
        }
        self.lines.push(line);
        if self.lines.len() >= ROWS_PER_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Casts the buffered rows into a batch.
    fn flush(&mut self) -> SqlResult<()> {
        if self.lines.is_empty() && !self.batches.is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(&mut self.lines);
        let opts = CastOptions { safe: false, ..Default::default() };
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (i, field) in self.schema.fields().iter().enumerate() {
            let strings = StringArray::from(std::mem::take(&mut self.columns[i]));
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
                    format!(
                        "COPY: line {}: null value in column \"{}\" violates not-null constraint",
                        lines.get(row).copied().unwrap_or(0),
                        field.name()
                    ),
                ));
            }
            arrays.push(arr);
        }
        let schema = Arc::new(arrow::datatypes::Schema::new(self.schema.fields().clone()));
        self.batches.push(RecordBatch::try_new(schema, arrays)?);
        Ok(())
    }
}

/// Parses all of `data` into one batch of `schema` (the target columns, in order): a
/// [`CopyParser`] fed at once.
///
/// Errors: as [`CopyParser::finish`].
pub fn parse(data: &[u8], format: &CopyFormat, schema: &SchemaRef) -> SqlResult<RecordBatch> {
    let mut p = CopyParser::new(format.clone(), schema.clone());
    p.feed(data)?;
    let batches = p.finish()?;
    Ok(arrow::compute::concat_batches(schema, &batches)?)
}

/// The fields of a text-format line: split at unescaped delimiters; `NULL` (`\N`) compared
/// before escapes are decoded, as PostgreSQL does.
fn text_fields(line: &[u8], format: &CopyFormat) -> Vec<Option<Vec<u8>>> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i <= line.len() {
        if i == line.len() || line[i] == format.delimiter {
            let raw = &line[start..i];
            fields.push(if raw == format.null.as_bytes() { None } else { Some(unescape_text(raw)) });
            start = i + 1;
        } else if line[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    fields
}

/// Decodes text-format escapes: `\b \f \n \r \t \v`, octal `\101`, hex `\x41`; any other
/// character after a backslash stands for itself (`\\`, an escaped delimiter).
fn unescape_text(s: &[u8]) -> Vec<u8> {
    if !s.contains(&b'\\') {
        return s.to_vec();
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = s.get(i) else {
            out.push(b'\\');
            break;
        };
        i += 1;
        match e {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match s.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' if s.get(i).is_some_and(|d| d.is_ascii_hexdigit()) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match s.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

/// The fields of one CSV record (its quotes balanced): a quote opens or closes a quoted part
/// anywhere in a field; inside quotes the escape character makes the next quote or escape
/// literal; an unquoted field equal to `NULL` is NULL.
fn csv_fields(rec: &[u8], format: &CopyFormat) -> Vec<Option<Vec<u8>>> {
    let (quote, escape, delimiter) = (format.quote, format.escape, format.delimiter);
    let mut fields = Vec::new();
    let mut field = Vec::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut i = 0;
    while i < rec.len() {
        let b = rec[i];
        i += 1;
        if in_quotes {
            if b == escape && rec.get(i).is_some_and(|n| *n == quote || (*n == escape && escape != quote)) {
                field.push(rec[i]);
                i += 1;
            } else if b == quote {
                in_quotes = false;
            } else {
                field.push(b);
            }
        } else if b == quote {
            in_quotes = true;
            quoted = true;
        } else if b == delimiter {
            let done = std::mem::take(&mut field);
            fields.push(if !quoted && done == format.null.as_bytes() { None } else { Some(done) });
            quoted = false;
        } else {
            field.push(b);
        }
    }
    fields.push(if !quoted && field == format.null.as_bytes() { None } else { Some(field) });
    fields
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
        let text = CopyFormat { csv: false, header: false, delimiter: b'\t', null: "\\N".into(), quote: b'"', escape: b'"' };
        let b = parse(b"1\tx\\ty\n2\t\\N\n", &text, &schema()).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert!(b.column(1).is_null(1));
        let e = parse(b"1\tx\nzz\ty\n", &text, &schema()).unwrap_err();
        assert_eq!(e.code, "22P02");
        assert!(e.message.contains("line 2"), "{}", e.message);
        let csv = CopyFormat { csv: true, header: true, delimiter: b',', null: String::new(), quote: b'"', escape: b'"' };
        let b = parse(b"a,b\n1,\"hello, world\"\n2,\n", &csv, &schema()).unwrap();
        assert_eq!(b.num_rows(), 2);
        let e = parse(b"a,b\n1,x\n2\n", &csv, &schema()).unwrap_err();
        assert!(e.message.contains("line 3"), "{}", e.message);
    }

    fn one_column() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]))
    }

    #[test]
    fn every_line_is_a_row_and_the_last_newline_ends_it() {
        let text = CopyFormat { csv: false, header: false, delimiter: b'\t', null: "\\N".into(), quote: b'"', escape: b'"' };
        assert_eq!(parse(b"a\nb\nc\n", &text, &one_column()).unwrap().num_rows(), 3);
        assert_eq!(parse(b"a\nb\nc", &text, &one_column()).unwrap().num_rows(), 3);
        assert_eq!(parse(b"a\n\\.\nignored\n", &text, &one_column()).unwrap().num_rows(), 1);
        // An empty line is a row: the empty string in one column, too few fields in two.
        let b = parse(b"a\n\nc\r\n", &text, &one_column()).unwrap();
        assert_eq!(b.column(0).as_any().downcast_ref::<StringArray>().unwrap().iter().collect::<Vec<_>>(), vec![Some("a"), Some(""), Some("c")]);
        assert!(parse(b"1\tx\n\n2\ty\n", &text, &schema()).unwrap_err().message.contains("line 2"));
        // Escapes, an escaped delimiter, octal and hex.
        let b = parse(b"a\\tb\\\tc\\101\\x42\\\\\n", &text, &one_column()).unwrap();
        assert_eq!(b.column(0).as_any().downcast_ref::<StringArray>().unwrap().value(0), "a\tb\tcAB\\");
    }

    #[test]
    fn csv_quotes_as_postgres() {
        let csv = CopyFormat { csv: true, header: false, delimiter: b',', null: String::new(), quote: b'"', escape: b'"' };
        let b = parse(b"1,\"two\nlines\"\n2,\"\"\n3,\n4,\"a\"\"b\"\n", &csv, &schema()).unwrap();
        let s = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![Some("two\nlines"), Some(""), None, Some("a\"b")]);
        // A quote left open swallows the rest: an error naming the line it opened on.
        let e = parse(b"1,ok\n2,\"open\n3,x\n", &csv, &schema()).unwrap_err();
        assert_eq!(e.code, "22P02");
        assert!(e.message.contains("line 2") && e.message.contains("unterminated"), "{}", e.message);
        // Another escape character.
        let esc = CopyFormat { escape: b'\\', ..csv.clone() };
        let b = parse(b"1,\"a\\\"b\"\n", &esc, &schema()).unwrap();
        assert_eq!(b.column(1).as_any().downcast_ref::<StringArray>().unwrap().value(0), "a\"b");
    }

    #[test]
    fn data_split_anywhere_parses_the_same() {
        let csv = CopyFormat { csv: true, header: true, delimiter: b',', null: String::new(), quote: b'"', escape: b'"' };
        let data: Vec<u8> = (0..20_000).fold(b"a,b\n".to_vec(), |mut d, i| {
            d.extend_from_slice(format!("{i},\"x\"\"\n{i}\"\r\n").as_bytes());
            d
        });
        for chunk in [1, 7, 4096] {
            let mut p = CopyParser::new(csv.clone(), schema());
            for piece in data.chunks(chunk) {
                p.feed(piece).unwrap();
            }
            let batches = p.finish().unwrap();
            assert!(batches.len() > 1);
            let b = arrow::compute::concat_batches(&schema(), &batches).unwrap();
            assert_eq!(b.num_rows(), 20_000);
            assert_eq!(b.column(1).as_any().downcast_ref::<StringArray>().unwrap().value(19_999), "x\"\n19999");
        }
    }
}
