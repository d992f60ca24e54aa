//! `COPY table [(cols)] TO STDOUT` and `COPY (query) TO STDOUT`: a table's or a query's rows
//! in PostgreSQL's text, CSV or binary `COPY` format (docs "COPY", "File Formats"), as psql's
//! `\copy ... to` and drivers' copy-out read them.
//!
//! The rows are streamed: DataFusion's `execute_stream` hands over one batch at a time, each
//! row goes out as one `CopyData` message (as PostgreSQL sends it) and the socket is flushed
//! after each batch, so a large table is never held in memory. Values are spelled exactly as a
//! `SELECT` sends them (arrow-pg's encoders, with [`crate::pgtext`]'s PostgreSQL spelling of
//! floats and timestamps): in text format a row is those texts with PostgreSQL's backslash
//! escapes (`CopyAttributeOutText` in PostgreSQL's `copyto.c`), in CSV the fields that hold the
//! delimiter, the quote, a newline or the NULL string are quoted (`CopyAttributeOutCSV`), and the
//! binary format is the `PGCOPY\n\377\r\n\0` header, each row as the field count and the
//! length-prefixed binary values (the body of the row's `DataRow` in binary format), and the
//! `-1` trailer.
//!
//! As in PostgreSQL, `COPY table TO` without a column list copies every column except the
//! computed ones (PostgreSQL leaves generated columns out the same way); a column list may name
//! any column. A failure or a cancel part way ends the copy with an `ErrorResponse` after the
//! rows already sent, as PostgreSQL does; the client discards what it got.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use bytes::{BufMut, BytesMut};
use datafusion::common::ParamValues;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::portal::Format;
use pgwire::api::results::{Response, Tag};
use pgwire::api::ClientInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyOutResponse};
use pgwire::messages::response::{EmptyQueryResponse, TransactionStatus};
use pgwire::messages::PgWireBackendMessage;
use sluice_planner::{parse_statement, SluiceStatement};
use sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement};

use crate::cancel::StatementCancel;
use crate::engine::{ident_name, quote_ident, table_name, Engine, Output};
use crate::errors::{SqlError, SqlResult};
use crate::session::Session;

/// The binary format's signature, flags (no OIDs) and header extension length (none).
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The output format of a `COPY ... TO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyOutKind {
    /// PostgreSQL's text format: delimited fields with backslash escapes.
    Text,
    /// CSV.
    Csv,
    /// PostgreSQL's binary `COPY` format.
    Binary,
}

/// How `COPY ... TO` writes rows: its `WITH (...)` options (or the pre-9.0 ones: `BINARY`,
/// `CSV HEADER`, ...), with PostgreSQL's defaults and checks.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyOutFormat {
    /// Text, CSV or binary.
    pub kind: CopyOutKind,
    /// A first line with the column names (text and CSV).
    pub header: bool,
    /// The field delimiter: tab in text, comma in CSV.
    pub delimiter: u8,
    /// What a NULL is written as: `\N` in text, an unquoted empty field in CSV.
    pub null: String,
    /// CSV's quote character (`"`).
    pub quote: u8,
    /// CSV's escape character inside quotes, written before a quote or an escape (the quote).
    pub escape: u8,
    /// CSV columns whose non-NULL values are always quoted (`FORCE_QUOTE`).
    pub force_quote: Vec<String>,
}

impl CopyOutFormat {
    /// Reads the options of a `COPY ... TO`, checked as PostgreSQL checks them
    /// (`ProcessCopyOptions` in `copy.c`).
    ///
    /// Errors: 42601 for an option given twice, `DELIMITER` or `NULL` in binary, or an option
    /// `COPY TO` does not know; 0A000 for a CSV-only option outside CSV, `HEADER` in binary,
    /// `FORCE_NOT_NULL`/`FORCE_NULL` (COPY FROM only) and an `ENCODING` other than UTF8; 22023
    /// for an unknown format or a delimiter, quote or NULL string that cannot be told apart
    /// from the data.
    pub fn from_options(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> SqlResult<CopyOutFormat> {
        let mut seen = HashSet::new();
        let mut once = |name: &'static str| {
            if seen.insert(name) {
                Ok(())
            } else {
                Err(SqlError::new("42601", "conflicting or redundant options"))
            }
        };
        let mut kind = CopyOutKind::Text;
        let (mut header, mut delimiter, mut null, mut quote, mut escape, mut force_quote) = (false, None, None, None, None, None);
        for o in options {
            match o {
                CopyOption::Format(f) => {
                    once("format")?;
                    kind = match f.value.to_lowercase().as_str() {
                        "text" => CopyOutKind::Text,
                        "csv" => CopyOutKind::Csv,
                        "binary" => CopyOutKind::Binary,
                        other => return Err(SqlError::new("22023", format!("COPY format \"{other}\" not recognized"))),
                    }
                }
                CopyOption::Freeze(_) => once("freeze")?,
                CopyOption::Delimiter(c) => {
                    once("delimiter")?;
                    delimiter = Some(*c);
                }
                CopyOption::Null(n) => {
                    once("null")?;
                    null = Some(n.clone());
                }
                CopyOption::Header(h) => {
                    once("header")?;
                    header = *h;
                }
                CopyOption::Quote(q) => {
                    once("quote")?;
                    quote = Some(*q);
                }
                CopyOption::Escape(e) => {
                    once("escape")?;
                    escape = Some(*e);
                }
                CopyOption::ForceQuote(cols) => {
                    once("force_quote")?;
                    force_quote = Some(cols.iter().map(ident_name).collect::<Vec<_>>());
                }
                CopyOption::ForceNotNull(_) => return Err(SqlError::unsupported("COPY FORCE_NOT_NULL only available using COPY FROM")),
                CopyOption::ForceNull(_) => return Err(SqlError::unsupported("COPY FORCE_NULL only available using COPY FROM")),
                CopyOption::Encoding(e) => {
                    once("encoding")?;
                    if !matches!(e.to_uppercase().replace(['-', '_'], "").as_str(), "UTF8" | "UNICODE") {
                        return Err(SqlError::unsupported(format!("COPY ENCODING '{e}': Sluice writes UTF8 only")));
                    }
                }
            }
        }
        for o in legacy {
            match o {
                CopyLegacyOption::Binary => {
                    once("format")?;
                    kind = CopyOutKind::Binary;
                }
                CopyLegacyOption::Delimiter(c) => {
                    once("delimiter")?;
                    delimiter = Some(*c);
                }
                CopyLegacyOption::Null(n) => {
                    once("null")?;
                    null = Some(n.clone());
                }
                CopyLegacyOption::Header => {
                    once("header")?;
                    header = true;
                }
                CopyLegacyOption::Csv(opts) => {
                    once("format")?;
                    kind = CopyOutKind::Csv;
                    for c in opts {
                        match c {
                            CopyLegacyCsvOption::Header => {
                                once("header")?;
                                header = true;
                            }
                            CopyLegacyCsvOption::Quote(q) => {
                                once("quote")?;
                                quote = Some(*q);
                            }
                            CopyLegacyCsvOption::Escape(e) => {
                                once("escape")?;
                                escape = Some(*e);
                            }
                            CopyLegacyCsvOption::ForceQuote(cols) => {
                                once("force_quote")?;
                                force_quote = Some(cols.iter().map(ident_name).collect());
                            }
                            CopyLegacyCsvOption::ForceNotNull(_) => {
                                return Err(SqlError::unsupported("COPY FORCE_NOT_NULL only available using COPY FROM"))
                            }
                        }
                    }
                }
                other => return Err(SqlError::new("42601", format!("option \"{other}\" not recognized"))),
            }
        }
        let csv = kind == CopyOutKind::Csv;
        if kind == CopyOutKind::Binary {
            if delimiter.is_some() {
                return Err(SqlError::new("42601", "cannot specify DELIMITER in BINARY mode"));
            }
            if null.is_some() {
                return Err(SqlError::new("42601", "cannot specify NULL in BINARY mode"));
            }
            if header {
                return Err(SqlError::unsupported("cannot specify HEADER in BINARY mode"));
            }
        }
        if !csv {
            for (given, what) in [(quote.is_some(), "quote"), (escape.is_some(), "escape"), (force_quote.is_some(), "force quote")] {
                if given {
                    return Err(SqlError::unsupported(format!("COPY {what} available only in CSV mode")));
                }
            }
        }
        let byte = |c: char, what: &str| {
            u8::try_from(c).ok().filter(|b| b.is_ascii()).ok_or_else(|| SqlError::new("22023", format!("COPY {what} must be a single one-byte character")))
        };
        let delimiter = match delimiter {
            Some(c) => byte(c, "delimiter")?,
            None if csv => b',',
            None => b'\t',
        };
        let quote = match quote {
            Some(c) => byte(c, "quote")?,
            None => b'"',
        };
        let escape = match escape {
            Some(c) => byte(c, "escape")?,
            None => quote,
        };
        let null = null.unwrap_or_else(|| if csv { String::new() } else { "\\N".into() });
        let bad = |m: String| Err(SqlError::new("22023", m));
        if matches!(delimiter, b'\n' | b'\r') {
            return bad("COPY delimiter cannot be newline or carriage return".into());
        }
        if null.contains(['\n', '\r']) {
            return bad("COPY null representation cannot use newline or carriage return".into());
        }
        if kind == CopyOutKind::Text && b"\\.abcdefghijklmnopqrstuvwxyz0123456789".contains(&delimiter) {
            return bad(format!("COPY delimiter cannot be \"{}\"", delimiter as char));
        }
        if csv && delimiter == quote {
            return bad("COPY delimiter and quote must be different".into());
        }
        if kind != CopyOutKind::Binary && null.as_bytes().contains(&delimiter) {
            return bad("COPY delimiter must not appear in the NULL specification".into());
        }
        if csv && null.as_bytes().contains(&quote) {
            return bad("CSV quote character must not appear in the NULL specification".into());
        }
        Ok(CopyOutFormat { kind, header, delimiter, null, quote, escape, force_quote: force_quote.unwrap_or_default() })
    }
}

/// A `COPY ... TO STDOUT` ready to send: the rows, as they are produced, and how to write them.
pub struct CopyOut {
    /// The columns, named as the client sees them (PostgreSQL's names, for `HEADER`).
    pub schema: SchemaRef,
    /// The rows.
    pub rows: SendableRecordBatchStream,
    /// The format.
    pub format: CopyOutFormat,
}

impl Debug for CopyOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOut").field("schema", &self.schema).field("format", &self.format).finish()
    }
}

impl Engine {
    /// Plans `COPY source TO target`: the query that reads the rows, started as a stream.
    ///
    /// Errors: 0A000 for a target other than `STDOUT`; 42P01 for an unknown table; 42703 for
    /// an unknown column, 42701 for one named twice, 42P10 for a `FORCE_QUOTE` column the
    /// copy does not write; the option errors of [`CopyOutFormat::from_options`]; the query's
    /// planning errors.
    pub(crate) async fn copy_out(
        &self,
        source: CopySource,
        target: CopyTarget,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
        params: Option<ParamValues>,
    ) -> SqlResult<Output> {
        if !matches!(target, CopyTarget::Stdout) {
            return Err(SqlError::unsupported("COPY TO a file or program; use COPY ... TO STDOUT (psql's \\copy ... to)"));
        }
        let format = CopyOutFormat::from_options(options, legacy)?;
        let query = match source {
            CopySource::Query(q) => q,
            CopySource::Table { table_name: tn, columns } => {
                let name = table_name(&tn);
                let entry = self.table(&name)?;
                let columns: Vec<String> = if columns.is_empty() {
                    entry.def.columns.iter().filter(|c| c.computed.is_none()).map(|c| c.name.clone()).collect()
                } else {
                    columns.iter().map(ident_name).collect()
                };
                let mut named = HashSet::new();
                for c in &columns {
                    if entry.def.column_index(c).is_none() {
                        return Err(SqlError::new("42703", format!("column \"{c}\" of relation \"{name}\" does not exist")));
                    }
                    if !named.insert(c) {
                        return Err(SqlError::new("42701", format!("column \"{c}\" specified more than once")));
                    }
                }
                let list = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
                match parse_statement(&format!("SELECT {list} FROM {}", quote_ident(&name)))? {
                    SluiceStatement::Sql(s) => match *s {
                        Statement::Query(q) => q,
                        _ => return Err(SqlError::new("XX000", "COPY: the table's query did not parse as a query")),
                    },
                    _ => return Err(SqlError::new("XX000", "COPY: the table's query did not parse as a query")),
                }
            }
        };
        let plan = self.df_plan(Statement::Query(query.clone()), params).await?;
        let df = self.ctx.execute_logical_plan(plan).await?;
        let schema = crate::pg_names::rename(&Arc::new(df.schema().as_arrow().clone()), &query);
        for c in &format.force_quote {
            if schema.field_with_name(c).is_err() {
                return Err(SqlError::new("42P10", format!("FORCE_QUOTE column \"{c}\" not referenced by COPY")));
            }
        }
        let rows = df.execute_stream().await?;
        Ok(Output::CopyOut(CopyOut { schema, rows, format }))
    }
}

/// Sends a `COPY ... TO STDOUT`'s data to the client: `CopyOutResponse`, one `CopyData` per row
/// (the header line or binary header first), `CopyDone`. Returns the number of rows sent, for
/// the `COPY n` tag. The statement stops when `cancel` fires, with its 57014 error; on any
/// error the session records a failed statement (an open block is aborted) and the client's
/// transaction status follows it, for the `ReadyForQuery` after the error.
///
/// Errors: the encoding's errors (a value arrow-pg cannot encode), the query's execution
/// errors, 57014, and errors writing to the socket.
pub async fn send<C>(client: &mut C, copy: CopyOut, cancel: &mut StatementCancel) -> PgWireResult<usize>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let r = tokio::select! {
        biased;
        r = send_rows(client, copy) => r,
        e = cancel.stopped() => Err(pg(e)),
    };
    if r.is_err() {
        let session = Session::of(client);
        session.failed();
        client.set_transaction_status(session.status());
    }
    r
}

async fn send_rows<C>(client: &mut C, copy: CopyOut) -> PgWireResult<usize>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let CopyOut { schema, rows, format } = copy;
    // Computed on a task of its own, so that the cancel is seen while the query computes.
    let mut rows = crate::cancel::detach(rows);
    let binary = format.kind == CopyOutKind::Binary;
    let columns = schema.fields().len();
    let response = CopyOutResponse::new(binary as i8, columns as i16, vec![binary as i16; columns]);
    client.send(PgWireBackendMessage::CopyOutResponse(response)).await?;
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, if binary { &Format::UnifiedBinary } else { &Format::UnifiedText }, None)?);
    let force: Vec<bool> = schema.fields().iter().map(|f| format.force_quote.iter().any(|c| c == f.name())).collect();
    let mut pending_header = None;
    if binary {
        pending_header = Some(BINARY_HEADER);
    } else if format.header {
        let names: Vec<Option<&[u8]>> = schema.fields().iter().map(|f| Some(f.name().as_bytes())).collect();
        let mut line = BytesMut::new();
        write_line(&mut line, &format, &names, &vec![false; columns]);
        client.feed(copy_data(line)).await?;
    }
    let mut n = 0;
    while let Some(batch) = rows.next().await {
        let batch = batch.map_err(|e| pg(e.into()))?;
        let batch = if binary { batch } else { crate::pgtext::postgres_text(batch, &fields).map_err(|e| pg(e.into()))? };
        for row in encode_recordbatch(fields.clone(), batch) {
            let row = row?;
            let mut buf = BytesMut::with_capacity(row.data.len() + 16);
            if binary {
                if let Some(h) = pending_header.take() {
                    buf.put_slice(h);
                }
                buf.put_i16(row.field_count);
                buf.put_slice(&row.data);
            } else {
                let values = data_row_values(&row.data, columns).map_err(pg)?;
                write_line(&mut buf, &format, &values, &force);
            }
            client.feed(copy_data(buf)).await?;
            n += 1;
        }
        client.flush().await?;
    }
    if binary {
        let mut trailer = BytesMut::new();
        if let Some(h) = pending_header.take() {
            trailer.put_slice(h);
        }
        trailer.put_i16(-1);
        client.feed(copy_data(trailer)).await?;
    }
    client.send(PgWireBackendMessage::CopyDone(CopyDone::new())).await?;
    Ok(n)
}

/// A SQL error as pgwire's (inside the generic senders, whose bounds make `From` ambiguous).
fn pg(e: SqlError) -> PgWireError {
    PgWireError::from(e)
}

fn copy_data(buf: BytesMut) -> PgWireBackendMessage {
    PgWireBackendMessage::CopyData(CopyData::new(buf.freeze()))
}

/// The values of a `DataRow`'s body: per column a 32-bit length (-1 for NULL) and the bytes.
///
/// Errors: XX000 for a body that does not hold `columns` values (an encoder bug).
fn data_row_values(data: &[u8], columns: usize) -> SqlResult<Vec<Option<&[u8]>>> {
    let bad = || SqlError::new("XX000", "COPY: a row's encoding is truncated");
    let mut out = Vec::with_capacity(columns);
    let mut rest = data;
    for _ in 0..columns {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = i32::from_be_bytes(*len);
        if len < 0 {
            out.push(None);
            rest = tail;
        } else {
            let (v, tail) = tail.split_at_checked(len as usize).ok_or_else(bad)?;
            out.push(Some(v));
            rest = tail;
        }
    }
    Ok(out)
}

/// One text or CSV line: the values (None for NULL) escaped or quoted, delimited, `\n`-ended.
fn write_line(out: &mut BytesMut, format: &CopyOutFormat, values: &[Option<&[u8]>], force_quote: &[bool]) {
    let single = values.len() == 1;
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.put_u8(format.delimiter);
        }
        match v {
            None => out.put_slice(format.null.as_bytes()),
            Some(v) if format.kind == CopyOutKind::Csv => csv_field(out, format, v, force_quote.get(i).copied().unwrap_or(false), single),
            Some(v) => text_field(out, format.delimiter, v),
        }
    }
    out.put_u8(b'\n');
}

/// A value in the text format, as PostgreSQL's `CopyAttributeOutText` escapes it: backslash,
/// the delimiter, and the control characters `\b \f \n \r \t \v` get a backslash escape; other
/// bytes (UTF-8 included) are written as they are.
fn text_field(out: &mut BytesMut, delimiter: u8, v: &[u8]) {
    for &c in v {
        let escaped = match c {
            0x08 => Some(b'b'),
            0x0c => Some(b'f'),
            b'\n' => Some(b'n'),
            b'\r' => Some(b'r'),
            b'\t' => Some(b't'),
            0x0b => Some(b'v'),
            b'\\' => Some(b'\\'),
            c if c == delimiter => Some(c),
            _ => None,
        };
        match escaped {
            Some(e) => {
                out.put_u8(b'\\');
                out.put_u8(e);
            }
            None => out.put_u8(c),
        }
    }
}

/// A value in CSV, as PostgreSQL's `CopyAttributeOutCSV` writes it: quoted when forced, when it
/// equals the NULL string, when it holds the delimiter, the quote, `\n` or `\r`, or when it is
/// `\.` alone on a line; inside quotes, each quote and escape character is preceded by the
/// escape character.
fn csv_field(out: &mut BytesMut, format: &CopyOutFormat, v: &[u8], force: bool, single: bool) {
    let quote = force
        || v == format.null.as_bytes()
        || (single && v == b"\\.")
        || v.iter().any(|&c| c == format.delimiter || c == format.quote || c == b'\n' || c == b'\r');
    if !quote {
        out.put_slice(v);
        return;
    }
    out.put_u8(format.quote);
    for &c in v {
        if c == format.quote || c == format.escape {
            out.put_u8(format.escape);
        }
        out.put_u8(c);
    }
    out.put_u8(format.quote);
}

/// The `COPY n` answer of a copy-out whose data [`send`] has sent.
pub fn completion(rows: usize) -> Response {
    Response::Execution(Tag::new("COPY").with_rows(rows))
}

/// For the simple protocol, before a `COPY ... TO STDOUT` sends its data: sends the responses
/// of the statements before it in the same query string, which pgwire would otherwise send
/// after the copy's data. Returns pgwire's transaction status before them and the status
/// after them, for [`carry_status`].
///
/// Errors: errors writing to the socket.
pub async fn send_earlier<C>(client: &mut C, earlier: &mut Vec<Response>) -> PgWireResult<(TransactionStatus, TransactionStatus)>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let before = client.transaction_status();
    let mut after = before;
    for r in earlier.drain(..) {
        match r {
            Response::Query(q) => pgwire::api::query::send_query_response(client, q, true).await?,
            Response::Execution(t) => pgwire::api::query::send_execution_response(client, t).await?,
            Response::TransactionStart(t) => {
                after = after.to_in_transaction_state();
                pgwire::api::query::send_execution_response(client, t).await?
            }
            Response::TransactionEnd(t) => {
                after = after.to_idle_state();
                pgwire::api::query::send_execution_response(client, t).await?
            }
            Response::EmptyQuery => client.feed(PgWireBackendMessage::EmptyQueryResponse(EmptyQueryResponse::new())).await?,
            // An error ends the query string, and a COPY FROM STDIN too: neither comes before.
            _ => return Err(pg(SqlError::new("XX000", "COPY TO after a statement that ends the query string"))),
        }
    }
    Ok((before, after))
}

/// The copy's completion, as the response that moves pgwire's transaction status the way the
/// responses [`send_earlier`] sent did (pgwire derives `ReadyForQuery`'s status from the
/// responses it sends itself): a `BEGIN` sent early makes the `COPY n` a transaction start.
pub fn carry_status(completion: Response, (before, after): (TransactionStatus, TransactionStatus)) -> Response {
    let Response::Execution(tag) = completion else { return completion };
    match (before, after) {
        (TransactionStatus::Idle, TransactionStatus::Transaction) => Response::TransactionStart(tag),
        (TransactionStatus::Transaction, TransactionStatus::Idle) => Response::TransactionEnd(tag),
        _ => Response::Execution(tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(sql: &str) -> SqlResult<CopyOutFormat> {
        match parse_statement(sql).unwrap() {
            SluiceStatement::Sql(s) => match *s {
                Statement::Copy { options, legacy_options, .. } => CopyOutFormat::from_options(&options, &legacy_options),
                other => panic!("{other}"),
            },
            _ => panic!("{sql}"),
        }
    }

    fn line(f: &CopyOutFormat, values: &[Option<&str>]) -> String {
        let values: Vec<Option<&[u8]>> = values.iter().map(|v| v.map(str::as_bytes)).collect();
        let mut out = BytesMut::new();
        write_line(&mut out, f, &values, &vec![false; values.len()]);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn text_lines_escape_as_postgres() {
        let f = format("COPY t TO STDOUT").unwrap();
        assert_eq!(line(&f, &[Some("a\tb"), None, Some("back\\slash"), Some("two\nlines\r"), Some("é")]), "a\\tb\t\\N\tback\\\\slash\ttwo\\nlines\\r\té\n");
        let f = format("COPY t TO STDOUT (DELIMITER '|', NULL 'nil')").unwrap();
        assert_eq!(line(&f, &[Some("a|b"), None, Some("\x08\x0b\x0c")]), "a\\|b|nil|\\b\\v\\f\n");
    }

    #[test]
    fn csv_fields_quote_as_postgres() {
        let f = format("COPY t TO STDOUT WITH CSV HEADER").unwrap();
        assert!(f.header && f.kind == CopyOutKind::Csv);
        assert_eq!(line(&f, &[Some("plain"), Some("a,b"), Some("say \"hi\""), Some(""), None, Some("x\ny")]), "plain,\"a,b\",\"say \"\"hi\"\"\",\"\",,\"x\ny\"\n");
        assert_eq!(line(&f, &[Some("\\.")]), "\"\\.\"\n");
        let f = format("COPY t TO STDOUT (FORMAT csv, QUOTE '''', ESCAPE '\\', NULL 'NULL', DELIMITER ';')").unwrap();
        assert_eq!(line(&f, &[Some("it's"), Some("NULL"), None, Some("a\\b"), Some("a;b")]), "'it\\'s';'NULL';NULL;a\\b;'a;b'\n");
    }

    #[test]
    fn options_are_checked_as_postgres_checks_them() {
        assert_eq!(format("COPY t TO STDOUT (FORMAT binary)").unwrap().kind, CopyOutKind::Binary);
        assert_eq!(format("COPY t TO STDOUT BINARY").unwrap().kind, CopyOutKind::Binary);
        for (sql, code) in [
            ("COPY t TO STDOUT (FORMAT binary, HEADER)", "0A000"),
            ("COPY t TO STDOUT (FORMAT binary, NULL 'x')", "42601"),
            ("COPY t TO STDOUT (QUOTE '\"')", "0A000"),
            ("COPY t TO STDOUT (FORMAT csv, DELIMITER '\"')", "22023"),
            ("COPY t TO STDOUT (DELIMITER 'a')", "22023"),
            ("COPY t TO STDOUT (FORMAT csv, FORMAT text)", "42601"),
            ("COPY t TO STDOUT (FORMAT xml)", "22023"),
            ("COPY t TO STDOUT (FORMAT csv, NULL 'a,b')", "22023"),
            ("COPY t TO STDOUT (FORMAT csv, FORCE_NOT_NULL (a))", "0A000"),
            ("COPY t TO STDOUT (ENCODING 'LATIN1')", "0A000"),
        ] {
            assert_eq!(format(sql).unwrap_err().code, code, "{sql}");
        }
    }

    #[test]
    fn data_rows_split_into_values() {
        let mut b = BytesMut::new();
        b.put_i32(2);
        b.put_slice(b"ab");
        b.put_i32(-1);
        b.put_i32(0);
        let v = data_row_values(&b, 3).unwrap();
        assert_eq!(v, vec![Some(&b"ab"[..]), None, Some(&b""[..])]);
        assert!(data_row_values(&b[..5], 3).is_err());
    }

    #[test]
    fn binary_header_is_postgres_signature() {
        assert_eq!(&BINARY_HEADER[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(BINARY_HEADER.len(), 19);
    }
}
