//! SQL cursors, as PostgreSQL has them (docs: DECLARE, FETCH, MOVE, CLOSE):
//!
//! - `DECLARE name [BINARY] [ASENSITIVE | INSENSITIVE] [NO SCROLL] CURSOR [WITH HOLD | WITHOUT
//!   HOLD] FOR query` starts the batch query and keeps its result stream under `name`;
//! - `FETCH [direction] [FROM | IN] name` returns the next rows (`FETCH n`), `MOVE` skips them
//!   (`MOVE n`), with the directions `NEXT`, `count`, `ALL`, `FORWARD [count | ALL]`,
//!   `RELATIVE count`, `ABSOLUTE count` and `FIRST` when they move forward;
//! - `CLOSE name | ALL`.
//!
//! As in PostgreSQL, a cursor `WITHOUT HOLD` (the default) can only be declared inside a
//! transaction block (25P01 otherwise) and is closed when the block ends; a `WITH HOLD` cursor
//! lives until it is closed or the session ends, except that the `ROLLBACK` of the block that
//! declared it closes it. An unknown cursor is 34000, a name declared twice 42P03.
//!
//! Sluice's cursors read forward only: `SCROLL` is refused (0A000), and a motion that would
//! go back (`PRIOR`, `LAST`, `BACKWARD`, a negative count, an `ABSOLUTE` position at or before
//! the current row) fails as it does on a PostgreSQL `NO SCROLL` cursor (55000). `FETCH 0` /
//! `RELATIVE 0` return the current row again, as in PostgreSQL; a refused motion leaves the
//! cursor where it was. Rows are produced as they are
//! fetched: a cursor over a large or unbounded query holds only the batch it is reading. A
//! `FETCH` answers with the rows it asked for, gathered (a `FETCH ALL` of a large cursor holds
//! its rows until sent). A `FETCH` that fails, or is cancelled, closes the cursor.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ParamValues;
use futures::{Sink, StreamExt};
use pgwire::api::portal::Format;
use pgwire::api::results::DescribePortalResponse;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::extendedquery::{Describe, TARGET_TYPE_BYTE_PORTAL};
use pgwire::messages::PgWireBackendMessage;
use sluice_planner::{parse_statement, SluiceStatement};
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::engine::{Engine, Output};
use crate::errors::{SqlError, SqlResult};
use crate::session::Session;
use crate::streaming::RowStream;

/// A cursor statement, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum CursorStatement {
    /// `DECLARE`.
    Declare {
        /// The cursor's name (lower-cased unless quoted).
        name: String,
        /// `BINARY`: rows in binary format (simple protocol).
        binary: bool,
        /// `SCROLL` (Some(true)), `NO SCROLL` (Some(false)), or neither.
        scroll: Option<bool>,
        /// `WITH HOLD`.
        hold: bool,
        /// The text of the query after `FOR`.
        query: String,
    },
    /// `FETCH` (rows returned) or `MOVE` (rows skipped, `fetch` false).
    Fetch {
        /// The cursor.
        name: String,
        /// Where to move.
        motion: Motion,
        /// `FETCH` rather than `MOVE`.
        fetch: bool,
    },
    /// `CLOSE name`, or `CLOSE ALL` (None).
    Close(Option<String>),
}

/// A cursor motion, as PostgreSQL's `FetchDirection` (`NEXT` is `Relative(1)`, `count` and
/// `FORWARD count` are `Forward(count)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Motion {
    /// The next `n` rows (`n` may be 0 or negative: the current row, or backward).
    Forward(i64),
    /// All remaining rows.
    All,
    /// The one row `n` rows from the current one.
    Relative(i64),
    /// The one row at position `n` (1 is the first; negative counts from the end).
    Absolute(i64),
    /// Any backward motion (`PRIOR`, `BACKWARD`, `BACKWARD ALL`).
    Backward,
}

/// One open cursor.
struct Cursor {
    rows: RowStream,
    /// Rows read from the stream and not yet fetched.
    pending: Option<RecordBatch>,
    /// The row the cursor is on (what `FETCH 0` returns).
    current: Option<RecordBatch>,
    /// 0 before the first row, k on row k.
    position: u64,
    /// Positioned after the last row.
    at_end: bool,
    hold: bool,
    /// Declared in the transaction block still open (its ROLLBACK closes the cursor).
    in_block: bool,
}

/// The cursors of one session, by name.
#[derive(Default)]
pub struct Cursors {
    open: Mutex<BTreeMap<String, Cursor>>,
}

impl Cursors {
    /// The row schema of cursor `name`, if it is open.
    pub fn schema(&self, name: &str) -> Option<SchemaRef> {
        self.open.lock().unwrap().get(name).map(|c| c.rows.schema.clone())
    }

    /// Ends a transaction block (committed or rolled back): cursors without hold are closed,
    /// and held cursors the block declared are closed too when it rolled back.
    pub fn end_block(&self, committed: bool) {
        self.open.lock().unwrap().retain(|_, c| {
            let keep = c.hold && (committed || !c.in_block);
            c.in_block = false;
            keep
        });
    }
}

fn syntax(msg: impl Into<String>) -> SqlError {
    SqlError::new("42601", msg)
}

fn unknown(name: &str) -> SqlError {
    SqlError::new("34000", format!("cursor \"{name}\" does not exist"))
}

/// The SQLSTATE of a refused backward motion (`object_not_in_prerequisite_state`).
const FORWARD_ONLY: &str = "55000";

fn forward_only() -> SqlError {
    SqlError::new(FORWARD_ONLY, "cursor can only scan forward: Sluice's cursors are NO SCROLL cursors; read the rows forward, or declare a new cursor")
}

/// The byte offset in `sql` of a 1-based (line, column-in-characters) location.
fn offset(sql: &str, line: u64, column: u64) -> usize {
    let mut l = 1;
    let mut c = 1;
    for (i, ch) in sql.char_indices() {
        if l == line && c == column {
            return i;
        }
        if ch == '\n' {
            l += 1;
            c = 1;
        } else {
            c += 1;
        }
    }
    sql.len()
}

/// Parses a cursor statement; None when `sql` is another statement.
///
/// Errors: 42601 for a malformed cursor statement.
pub fn parse(sql: &str) -> SqlResult<Option<CursorStatement>> {
    let first = sql.trim_start().split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("").to_ascii_uppercase();
    if !matches!(first.as_str(), "DECLARE" | "FETCH" | "MOVE" | "CLOSE") {
        return Ok(None);
    }
    let tokens: Vec<TokenWithSpan> = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| syntax(e.to_string()))?
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let mut p = Words { tokens: &tokens, i: 1 };
    let stmt = match first.as_str() {
        "DECLARE" => {
            let name = p.name()?;
            let (mut binary, mut scroll) = (false, None);
            loop {
                if p.keyword(Keyword::BINARY) {
                    binary = true;
                } else if p.keyword(Keyword::INSENSITIVE) || p.keyword(Keyword::ASENSITIVE) {
                } else if p.keyword(Keyword::NO) {
                    p.expect(Keyword::SCROLL)?;
                    scroll = Some(false);
                } else if p.keyword(Keyword::SCROLL) {
                    scroll = Some(true);
                } else {
                    break;
                }
            }
            p.expect(Keyword::CURSOR)?;
            let hold = if p.keyword(Keyword::WITH) {
                p.expect(Keyword::HOLD)?;
                true
            } else if p.keyword(Keyword::WITHOUT) {
                p.expect(Keyword::HOLD)?;
                false
            } else {
                false
            };
            p.expect(Keyword::FOR)?;
            let Some(start) = tokens.get(p.i) else { return Err(syntax("syntax error at end of input: DECLARE needs a query after FOR")) };
            let at = offset(sql, start.span.start.line, start.span.start.column);
            let query = sql[at..].trim().trim_end_matches(';').trim_end().to_string();
            return Ok(Some(CursorStatement::Declare { name, binary, scroll, hold, query }));
        }
        "CLOSE" => {
            if p.keyword(Keyword::ALL) {
                CursorStatement::Close(None)
            } else {
                CursorStatement::Close(Some(p.name()?))
            }
        }
        _ => {
            let motion = p.motion()?;
            if !p.keyword(Keyword::FROM) {
                p.keyword(Keyword::IN);
            }
            CursorStatement::Fetch { name: p.name()?, motion, fetch: first == "FETCH" }
        }
    };
    p.end()?;
    Ok(Some(stmt))
}

/// A cursor over the tokens of a statement.
struct Words<'a> {
    tokens: &'a [TokenWithSpan],
    i: usize,
}

impl Words<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.i).map(|t| &t.token).filter(|t| !matches!(t, Token::EOF | Token::SemiColon))
    }

    fn keyword(&mut self, k: Keyword) -> bool {
        match self.peek() {
            Some(Token::Word(w)) if w.keyword == k && w.quote_style.is_none() => {
                self.i += 1;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, k: Keyword) -> SqlResult<()> {
        if self.keyword(k) {
            Ok(())
        } else {
            Err(syntax(format!("syntax error: expected {k:?}, found {}", self.found())))
        }
    }

    fn found(&self) -> String {
        self.peek().map(|t| format!("\"{t}\"")).unwrap_or_else(|| "end of input".into())
    }

    fn name(&mut self) -> SqlResult<String> {
        match self.peek() {
            Some(Token::Word(w)) => {
                let n = if w.quote_style.is_some() { w.value.clone() } else { w.value.to_lowercase() };
                self.i += 1;
                Ok(n)
            }
            _ => Err(syntax(format!("syntax error: expected a cursor name, found {}", self.found()))),
        }
    }

    /// A signed integer, if one comes next.
    fn number(&mut self) -> SqlResult<Option<i64>> {
        let (neg, at) = match self.peek() {
            Some(Token::Minus) => (true, self.i + 1),
            Some(Token::Plus) => (false, self.i + 1),
            _ => (false, self.i),
        };
        let Some(Token::Number(n, _)) = self.tokens.get(at).map(|t| &t.token) else { return Ok(None) };
        let v: i64 = n.parse().map_err(|_| syntax(format!("syntax error: bad row count {n}")))?;
        self.i = at + 1;
        Ok(Some(if neg { -v } else { v }))
    }

    fn count(&mut self) -> SqlResult<i64> {
        self.number()?.ok_or_else(|| syntax(format!("syntax error: expected a row count, found {}", self.found())))
    }

    /// `FETCH`'s direction; `NEXT` when it is left out (the cursor name follows directly).
    fn motion(&mut self) -> SqlResult<Motion> {
        if let Some(n) = self.number()? {
            return Ok(Motion::Forward(n));
        }
        // A lone word (and an optional FROM / IN before it) is the cursor's name.
        let rest = self.tokens[self.i..].iter().filter(|t| !matches!(t.token, Token::EOF | Token::SemiColon)).count();
        let from = matches!(self.peek(), Some(Token::Word(w)) if matches!(w.keyword, Keyword::FROM | Keyword::IN) && w.quote_style.is_none());
        if rest <= 1 || (rest == 2 && from) {
            return Ok(Motion::Relative(1));
        }
        Ok(if self.keyword(Keyword::NEXT) {
            Motion::Relative(1)
        } else if self.keyword(Keyword::PRIOR) {
            Motion::Backward
        } else if self.keyword(Keyword::FIRST) {
            Motion::Absolute(1)
        } else if self.keyword(Keyword::LAST) {
            Motion::Absolute(-1)
        } else if self.keyword(Keyword::ABSOLUTE) {
            Motion::Absolute(self.count()?)
        } else if self.keyword(Keyword::RELATIVE) {
            Motion::Relative(self.count()?)
        } else if self.keyword(Keyword::ALL) {
            Motion::All
        } else if self.keyword(Keyword::FORWARD) {
            if self.keyword(Keyword::ALL) {
                Motion::All
            } else {
                Motion::Forward(self.number()?.unwrap_or(1))
            }
        } else if self.keyword(Keyword::BACKWARD) {
            if !self.keyword(Keyword::ALL) && self.number()? == Some(0) {
                Motion::Forward(0)
            } else {
                Motion::Backward
            }
        } else {
            return Err(syntax(format!("syntax error at or near {}", self.found())));
        })
    }

    fn end(&self) -> SqlResult<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(syntax(format!("syntax error at or near {}", self.found()))),
        }
    }
}

/// Runs a cursor statement for `session`. `params` are the bound values of a `DECLARE`'s query.
///
/// Errors: 25P01 `DECLARE ... WITHOUT HOLD` outside a transaction block, 42P03 a cursor that
/// exists, 42601 a `DECLARE` of something else than a query, 0A000 `SCROLL`, 34000 an unknown
/// cursor, 55000 a backward motion, and the query's own errors.
pub async fn execute(engine: &Arc<Engine>, session: &Session, stmt: CursorStatement, params: Option<ParamValues>) -> SqlResult<Output> {
    let cursors = &session.cursors;
    match stmt {
        CursorStatement::Declare { name, binary, scroll, hold, query } => {
            let in_block = session.status() != pgwire::messages::response::TransactionStatus::Idle;
            if !hold && !in_block {
                return Err(SqlError::new("25P01", "DECLARE CURSOR can only be used in transaction blocks"));
            }
            if scroll == Some(true) {
                return Err(SqlError::unsupported("SCROLL cursors: Sluice's cursors read forward only; declare it NO SCROLL"));
            }
            if cursors.open.lock().unwrap().contains_key(&name) {
                return Err(SqlError::new("42P03", format!("cursor \"{name}\" already exists")));
            }
            let q = match parse_statement(&query)? {
                SluiceStatement::Sql(s) => match *s {
                    Statement::Query(q) => q,
                    other => return Err(syntax(format!("DECLARE CURSOR needs a SELECT or VALUES query, not {}", verb(&other.to_string())))),
                },
                _ => return Err(syntax(format!("DECLARE CURSOR needs a SELECT or VALUES query, not {}", verb(&query)))),
            };
            let plan = engine.df_plan(Statement::Query(q.clone()), params).await?;
            let df = engine.ctx.execute_logical_plan(plan).await?;
            let mut rows = match crate::streaming::select(df, &q).await? {
                Output::Stream(r) => r,
                other => return Err(SqlError::new("XX000", format!("a query answered {other:?}"))),
            };
            rows.binary = binary;
            let cursor = Cursor { rows, pending: None, current: None, position: 0, at_end: false, hold, in_block };
            let mut open = cursors.open.lock().unwrap();
            if open.contains_key(&name) {
                return Err(SqlError::new("42P03", format!("cursor \"{name}\" already exists")));
            }
            open.insert(name, cursor);
            Ok(Output::Command { tag: "DECLARE CURSOR".into(), notice: None })
        }
        CursorStatement::Close(None) => {
            cursors.open.lock().unwrap().clear();
            Ok(Output::Command { tag: "CLOSE CURSOR ALL".into(), notice: None })
        }
        CursorStatement::Close(Some(name)) => match cursors.open.lock().unwrap().remove(&name) {
            Some(_) => Ok(Output::Command { tag: "CLOSE CURSOR".into(), notice: None }),
            None => Err(unknown(&name)),
        },
        CursorStatement::Fetch { name, motion, fetch } => {
            // Out of the map while it reads; put back unless the read failed (a refused motion
            // reads nothing, and leaves the cursor as it was).
            let mut cursor = cursors.open.lock().unwrap().remove(&name).ok_or_else(|| unknown(&name))?;
            let (batches, n) = match cursor.advance(motion, fetch).await {
                Ok(r) => r,
                Err(e) => {
                    if e.code == FORWARD_ONLY {
                        cursors.open.lock().unwrap().insert(name, cursor);
                    }
                    return Err(e);
                }
            };
            let (schema, binary) = (cursor.rows.schema.clone(), cursor.rows.binary);
            cursors.open.lock().unwrap().insert(name, cursor);
            if fetch {
                let mut rows = RowStream::from_batches(schema, batches, "FETCH");
                rows.binary = binary;
                Ok(Output::Stream(rows))
            } else {
                Ok(Output::Command { tag: format!("MOVE {n}"), notice: None })
            }
        }
    }
}

fn verb(sql: &str) -> String {
    sql.split_whitespace().next().unwrap_or("").to_uppercase()
}

impl Cursor {
    /// Moves as `motion` says. Returns the rows a `FETCH` returns (kept only when `keep`, for
    /// `FETCH`; `MOVE` only counts them) and their count.
    async fn advance(&mut self, motion: Motion, keep: bool) -> SqlResult<(Vec<RecordBatch>, u64)> {
        match motion {
            Motion::Backward => Err(forward_only()),
            Motion::All => self.forward(None, keep).await,
            Motion::Forward(n) | Motion::Relative(n) if n < 0 => Err(forward_only()),
            Motion::Forward(0) | Motion::Relative(0) => Ok(self.current_row(keep)),
            Motion::Forward(n) => self.forward(Some(n as u64), keep).await,
            Motion::Relative(n) => {
                self.forward(Some(n as u64 - 1), false).await?;
                self.forward(Some(1), keep).await
            }
            Motion::Absolute(n) if n > 0 && !self.at_end && n as u64 == self.position => Ok(self.current_row(keep)),
            Motion::Absolute(n) if n > 0 && !self.at_end && (n as u64) > self.position => {
                self.forward(Some(n as u64 - self.position - 1), false).await?;
                self.forward(Some(1), keep).await
            }
            Motion::Absolute(0) if self.position == 0 && !self.at_end => Ok((vec![], 0)),
            Motion::Absolute(_) => Err(forward_only()),
        }
    }

    /// The row the cursor is on (none before the first row or after the last), and its count.
    fn current_row(&self, keep: bool) -> (Vec<RecordBatch>, u64) {
        let n = self.current.iter().count() as u64;
        (if keep { self.current.iter().cloned().collect() } else { vec![] }, n)
    }

    /// Reads the next `n` rows (None: all), moving onto the last one read, or past the end
    /// when fewer remain. Returns them (when `keep`) and how many there were.
    async fn forward(&mut self, n: Option<u64>, keep: bool) -> SqlResult<(Vec<RecordBatch>, u64)> {
        let mut out = Vec::new();
        let mut want = n.unwrap_or(u64::MAX);
        let mut read = 0;
        while want > 0 && !self.at_end {
            let batch = match self.pending.take() {
                Some(b) => b,
                None => match self.rows.batches.next().await {
                    Some(b) => b?,
                    None => {
                        self.at_end = true;
                        self.current = None;
                        break;
                    }
                },
            };
            let len = batch.num_rows() as u64;
            if len == 0 {
                continue;
            }
            let take = len.min(want);
            let head = batch.slice(0, take as usize);
            if take < len {
                self.pending = Some(batch.slice(take as usize, (len - take) as usize));
            }
            self.current = Some(head.slice(head.num_rows() - 1, 1));
            self.position += take;
            want -= take;
            read += take;
            if keep {
                out.push(head);
            }
        }
        Ok((out, read))
    }
}

/// Plans a statement for the extended protocol's Describe, cursor statements included: a
/// `DECLARE` has its query's parameters and no rows, a `FETCH` the rows of its cursor (none
/// when the cursor does not exist, as in PostgreSQL), `MOVE` and `CLOSE` neither. Other
/// statements are [`Engine::describe`]'s.
///
/// Errors: those of planning the statement.
pub async fn describe(engine: &Arc<Engine>, session: &Session, sql: &str) -> SqlResult<(Vec<Option<DataType>>, Option<SchemaRef>)> {
    match parse(sql)? {
        None => engine.describe(sql).await,
        Some(CursorStatement::Declare { query, .. }) => Ok((engine.describe(&query).await?.0, None)),
        Some(CursorStatement::Fetch { name, fetch: true, .. }) => Ok((vec![], session.cursors.schema(&name))),
        Some(_) => Ok((vec![], None)),
    }
}

/// Answers the Describe of a portal that is not a protocol portal but a cursor of `DECLARE`
/// (in PostgreSQL a cursor is a portal, and psycopg describes its named cursors so), with the
/// cursor's columns in text format. Returns false when `message` is not such a Describe.
///
/// Errors: the connection fails, or a column has no PostgreSQL type.
pub async fn describe_portal<C>(client: &mut C, message: &Describe) -> PgWireResult<bool>
where
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if message.target_type != TARGET_TYPE_BYTE_PORTAL {
        return Ok(false);
    }
    let Some(name) = message.name.as_deref() else { return Ok(false) };
    if client.portal_store().get_portal(name).is_some() {
        return Ok(false);
    }
    let Some(schema) = Session::of(client).cursors.schema(name) else { return Ok(false) };
    let fields = arrow_pg::datatypes::arrow_schema_to_pg_fields(&schema, &Format::UnifiedText, None)?;
    pgwire::api::query::send_describe_response(client, &DescribePortalResponse::new(fields)).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{Field, Schema};

    fn p(sql: &str) -> CursorStatement {
        parse(sql).unwrap().unwrap_or_else(|| panic!("{sql}: not a cursor statement"))
    }

    fn fetch(sql: &str) -> Motion {
        match p(sql) {
            CursorStatement::Fetch { motion, .. } => motion,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_as_postgres_writes_them() {
        assert_eq!(
            p("DECLARE _psql_cursor NO SCROLL CURSOR FOR select * from t where s = 'FOR x';"),
            CursorStatement::Declare {
                name: "_psql_cursor".into(),
                binary: false,
                scroll: Some(false),
                hold: false,
                query: "select * from t where s = 'FOR x'".into()
            }
        );
        assert_eq!(
            p("declare \"My\" binary cursor with hold for\n  values (1)"),
            CursorStatement::Declare { name: "My".into(), binary: true, scroll: None, hold: true, query: "values (1)".into() }
        );
        assert_eq!(fetch("FETCH FORWARD 2 FROM _psql_cursor"), Motion::Forward(2));
        assert_eq!(fetch("fetch c"), Motion::Relative(1));
        assert_eq!(fetch("fetch in c"), Motion::Relative(1));
        assert_eq!(fetch("FETCH NEXT FROM c"), Motion::Relative(1));
        assert_eq!(fetch("FETCH ALL c"), Motion::All);
        assert_eq!(fetch("FETCH FORWARD ALL FROM c"), Motion::All);
        assert_eq!(fetch("FETCH -2 FROM c"), Motion::Forward(-2));
        assert_eq!(fetch("FETCH ABSOLUTE 3 c"), Motion::Absolute(3));
        assert_eq!(fetch("FETCH PRIOR c"), Motion::Backward);
        assert_eq!(p("MOVE 5 IN c"), CursorStatement::Fetch { name: "c".into(), motion: Motion::Forward(5), fetch: false });
        assert_eq!(p("CLOSE ALL"), CursorStatement::Close(None));
        assert_eq!(p("close \"C\""), CursorStatement::Close(Some("C".into())));
        assert_eq!(parse("SELECT 1").unwrap(), None);
        for bad in ["FETCH", "FETCH 2 FROM", "DECLARE c FOR SELECT 1", "DECLARE c CURSOR", "CLOSE a b", "FETCH FORWARD x y"] {
            assert_eq!(parse(bad).unwrap_err().code, "42601", "{bad}");
        }
    }

    fn cursor(rows: Vec<Vec<i64>>) -> Cursor {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batches = rows.into_iter().map(|r| RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(r))]).unwrap()).collect();
        Cursor {
            rows: RowStream::from_batches(schema, batches, "SELECT"),
            pending: None,
            current: None,
            position: 0,
            at_end: false,
            hold: false,
            in_block: true,
        }
    }

    fn values(batches: &[RecordBatch]) -> Vec<i64> {
        batches.iter().flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()).collect()
    }

    async fn rows(c: &mut Cursor, m: Motion) -> Vec<i64> {
        let (batches, n) = c.advance(m, true).await.unwrap();
        let v = values(&batches);
        assert_eq!(v.len() as u64, n);
        v
    }

    #[tokio::test]
    async fn moves_forward_across_batches() {
        let mut c = cursor(vec![vec![1, 2, 3], vec![], vec![4, 5], vec![6, 7, 8]]);
        assert_eq!(rows(&mut c, Motion::Forward(2)).await, [1, 2]);
        assert_eq!(rows(&mut c, Motion::Forward(0)).await, [2]);
        assert_eq!(rows(&mut c, Motion::Forward(3)).await, [3, 4, 5]);
        assert_eq!(rows(&mut c, Motion::Absolute(5)).await, [5]);
        assert_eq!(c.advance(Motion::Absolute(4), true).await.unwrap_err().code, "55000");
        assert_eq!(c.advance(Motion::Backward, true).await.unwrap_err().code, "55000");
        assert_eq!(c.advance(Motion::Forward(-1), true).await.unwrap_err().code, "55000");
        assert_eq!(rows(&mut c, Motion::Relative(2)).await, [7]);
        assert_eq!(rows(&mut c, Motion::Absolute(8)).await, [8]);
        assert_eq!(rows(&mut c, Motion::All).await, Vec::<i64>::new());
        assert!(c.at_end);
        assert_eq!(rows(&mut c, Motion::Relative(1)).await, Vec::<i64>::new());
        assert_eq!(rows(&mut c, Motion::Forward(0)).await, Vec::<i64>::new());

        // MOVE counts without keeping.
        let mut c = cursor(vec![vec![1, 2, 3], vec![4]]);
        let (kept, n) = c.advance(Motion::Forward(3), false).await.unwrap();
        assert!(kept.is_empty());
        assert_eq!(n, 3);
        assert_eq!(rows(&mut c, Motion::All).await, [4]);

        let mut c = cursor(vec![vec![1, 2, 3]]);
        assert_eq!(rows(&mut c, Motion::Absolute(2)).await, [2]);
        assert_eq!(rows(&mut c, Motion::All).await, [3]);
    }

    #[test]
    fn a_block_end_closes_cursors_without_hold() {
        let cs = Cursors::default();
        let mut held = cursor(vec![]);
        held.hold = true;
        let mut held_before = cursor(vec![]);
        held_before.hold = true;
        held_before.in_block = false;
        {
            let mut open = cs.open.lock().unwrap();
            open.insert("plain".into(), cursor(vec![]));
            open.insert("held".into(), held);
            open.insert("held_before".into(), held_before);
        }
        cs.end_block(true);
        assert!(cs.schema("plain").is_none());
        assert!(cs.schema("held").is_some() && cs.schema("held_before").is_some());
        // Both are now outside any block: a later ROLLBACK keeps them.
        cs.end_block(false);
        assert!(cs.schema("held").is_some() && cs.schema("held_before").is_some());
    }
}
