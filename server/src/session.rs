//! Per-connection state: the transaction block a client opened with `BEGIN`, the
//! `COPY FROM STDIN` in progress, and the session options set with Flink SQL client's
//! `SET 'key' = 'value'` (read when a statement needs them, as `INSERT INTO ... SELECT` reads
//! `table.exec.sink.not-null-enforcer` and `table.exec.sink.type-length-enforcer`). It lives in
//! pgwire's session extensions, so it goes away with the connection.
//!
//! Sluice has no multi-statement transactions: every statement is committed when it runs (an
//! `INSERT`, `UPDATE`, `DELETE` or `COPY` is one atomic append to its table's topic). `BEGIN`
//! ... `COMMIT` is accepted, so drivers that wrap statements in a block work, and the session
//! remembers what the block changed: a `ROLLBACK` of a block that changed something fails with
//! 25000 (`invalid_transaction_state`) and says the changes were already committed, instead of
//! answering `ROLLBACK` as if they were undone. A `ROLLBACK` of a block that only read is fine.
//! Either way the block ends.
//!
//! As in PostgreSQL (docs "55.2.2. Simple Query" and `ReadyForQuery`), a statement that fails
//! inside a block puts it in the aborted state: every later statement but `ROLLBACK` and
//! `COMMIT` fails with 25P02 until the block ends, and `COMMIT` of an aborted block answers
//! `ROLLBACK` (or fails with 25000, as `ROLLBACK` does, when the block changed something before
//! the error: those changes stay committed). [`Session::status`] is what `ReadyForQuery` reports.
//! The session's PostgreSQL parameters (`SET TimeZone ...`) are [`crate::pg_params`]'s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pgwire::api::ClientInfo;
use pgwire::messages::response::TransactionStatus;

use crate::copy::CopyParser;
use crate::engine::{CopyInTarget, Output};
use crate::errors::{SqlError, SqlResult};
use crate::pg_params::SessionParams;

/// How many of a block's changes the `ROLLBACK` error names.
const NAMED_CHANGES: usize = 5;

/// A `COPY FROM STDIN` waiting for its data.
pub struct CopyIn {
    /// Where the rows go.
    pub target: CopyInTarget,
    /// The rows parsed so far.
    pub parser: CopyParser,
    /// The first error in the data: later data is dropped, and `CopyDone` reports it.
    pub error: Option<SqlError>,
}

#[derive(Default)]
struct State {
    /// `Some` inside a `BEGIN` block: the command tags of the statements that changed data or
    /// the catalog in it.
    block: Option<Vec<String>>,
    /// A statement failed inside the block: only `ROLLBACK` and `COMMIT` run until it ends.
    aborted: bool,
    copy: Option<CopyIn>,
    /// `SET 'key' = 'value'` options, keys lower-cased.
    options: BTreeMap<String, String>,
    /// PostgreSQL session parameters (`SET TimeZone = ...`, start-up parameters).
    params: SessionParams,
}

/// The state of one client connection.
#[derive(Default)]
pub struct Session {
    state: Mutex<State>,
    /// The cursors of `DECLARE` ([`crate::cursors`]).
    pub(crate) cursors: crate::cursors::Cursors,
    /// The role the client logged in as ([`crate::auth`]); unset for statements the daemon
    /// runs itself.
    pub(crate) role: std::sync::OnceLock<crate::auth::SessionRole>,
}

impl Session {
    /// The session of `client`'s connection (created on first use).
    pub fn of<C: ClientInfo + ?Sized>(client: &C) -> Arc<Session> {
        client.session_extensions().get_or_insert_with(Session::default)
    }

    /// Checks that `sql` may run: inside an aborted block only `ROLLBACK` and `COMMIT` (and
    /// their spellings `ABORT`, `END`) do.
    ///
    /// Errors: 25P02 `current transaction is aborted` for any other statement.
    pub fn before(&self, sql: &str) -> SqlResult<()> {
        if !self.state.lock().unwrap().aborted {
            return Ok(());
        }
        let first = sql.trim_start().split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("").to_uppercase();
        if matches!(first.as_str(), "ROLLBACK" | "COMMIT" | "ABORT" | "END") {
            return Ok(());
        }
        Err(SqlError::new("25P02", "current transaction is aborted, commands ignored until end of transaction block"))
    }

    /// Records that a statement failed: inside a block, the block is aborted.
    pub fn failed(&self) {
        let mut st = self.state.lock().unwrap();
        if st.block.is_some() {
            st.aborted = true;
        }
    }

    /// The transaction status `ReadyForQuery` reports: idle, in a block, or in an aborted block.
    pub fn status(&self) -> TransactionStatus {
        let st = self.state.lock().unwrap();
        match (&st.block, st.aborted) {
            (None, _) => TransactionStatus::Idle,
            (Some(_), false) => TransactionStatus::Transaction,
            (Some(_), true) => TransactionStatus::Error,
        }
    }

    /// Runs `f` on the session's PostgreSQL parameters.
    pub fn with_params<R>(&self, f: impl FnOnce(&mut SessionParams) -> R) -> R {
        f(&mut self.state.lock().unwrap().params)
    }

    /// Applies the transaction-block rules to a statement's result: `BEGIN` opens a block,
    /// `COMMIT` closes it, `ROLLBACK` closes it and fails if the block changed anything;
    /// changes inside a block are remembered. Other results pass through.
    ///
    /// Errors: 25000 for a `ROLLBACK` that cannot undo the block's changes.
    pub fn after(&self, out: Output) -> SqlResult<Output> {
        let (tag, notice) = match out {
            Output::Command { tag, notice } => (tag, notice),
            other => return Ok(other),
        };
        let mut st = self.state.lock().unwrap();
        if matches!(tag.as_str(), "COMMIT" | "ROLLBACK") && st.block.is_some() {
            // The block ends, and with it its cursors (see `crate::cursors`).
            self.cursors.end_block(tag == "COMMIT" && !st.aborted);
        }
        let notice = match tag.as_str() {
            "BEGIN" if st.block.is_some() => Some("there is already a transaction in progress".to_string()),
            "BEGIN" => {
                st.block = Some(Vec::new());
                notice
            }
            "COMMIT" | "ROLLBACK" if st.block.is_none() => Some("there is no transaction in progress".to_string()),
            "COMMIT" if st.aborted => {
                st.aborted = false;
                let changes = st.block.take().unwrap_or_default();
                if !changes.is_empty() {
                    return Err(rollback_error(&changes));
                }
                return Ok(Output::Command { tag: "ROLLBACK".into(), notice });
            }
            "COMMIT" => {
                st.block = None;
                notice
            }
            "ROLLBACK" => {
                st.aborted = false;
                let changes = st.block.take().unwrap_or_default();
                if !changes.is_empty() {
                    return Err(rollback_error(&changes));
                }
                notice
            }
            _ => {
                if let Some(changes) = st.block.as_mut().filter(|_| changes_something(&tag, notice.is_some())) {
                    changes.push(tag.clone());
                }
                notice
            }
        };
        Ok(Output::Command { tag, notice })
    }

    /// Records a finished `COPY` of `rows` rows (a change, inside a block, when rows > 0).
    pub fn copied(&self, rows: usize) {
        if let Some(changes) = self.state.lock().unwrap().block.as_mut().filter(|_| rows > 0) {
            changes.push(format!("COPY {rows}"));
        }
    }

    /// Starts a `COPY FROM STDIN` (replacing one that was never finished).
    pub fn start_copy(&self, copy: CopyIn) {
        self.state.lock().unwrap().copy = Some(copy);
    }

    /// Runs `f` on the `COPY` in progress; None when there is none.
    pub fn with_copy<R>(&self, f: impl FnOnce(&mut CopyIn) -> R) -> Option<R> {
        self.state.lock().unwrap().copy.as_mut().map(f)
    }

    /// Sets a session option (`SET 'key' = 'value'`); the caller has checked the value.
    pub fn set_option(&self, key: &str, value: &str) {
        self.state.lock().unwrap().options.insert(key.to_lowercase(), value.to_string());
    }

    /// Resets one session option to its default (`RESET 'key'`), or all (`RESET`).
    pub fn reset_option(&self, key: Option<&str>) {
        let mut st = self.state.lock().unwrap();
        match key {
            Some(k) => {
                st.options.remove(&k.to_lowercase());
            }
            None => st.options.clear(),
        }
    }

    /// The value of a session option, if `SET`.
    pub fn option(&self, key: &str) -> Option<String> {
        self.state.lock().unwrap().options.get(&key.to_lowercase()).cloned()
    }

    /// Ends the `COPY` in progress, returning it.
    pub fn take_copy(&self) -> Option<CopyIn> {
        self.state.lock().unwrap().copy.take()
    }
}

/// True when a statement that answered `tag` changed data or the catalog: a write of at least
/// one row, a persistent query started (an `INSERT ... SELECT`, which answers with a notice),
/// or a `CREATE`, `DROP`, `STOP JOB` or `RESUME JOB`.
fn changes_something(tag: &str, has_notice: bool) -> bool {
    let mut words = tag.split_whitespace();
    match words.next() {
        Some("INSERT" | "UPDATE" | "DELETE" | "COPY") => {
            has_notice || words.last().and_then(|n| n.parse::<u64>().ok()).map(|n| n > 0).unwrap_or(true)
        }
        Some("CREATE" | "DROP" | "STOP" | "RESUME") => true,
        _ => false,
    }
}

fn rollback_error(changes: &[String]) -> SqlError {
    let mut named = changes.iter().take(NAMED_CHANGES).cloned().collect::<Vec<_>>().join(", ");
    if changes.len() > NAMED_CHANGES {
        named.push_str(&format!(" and {} more", changes.len() - NAMED_CHANGES));
    }
    SqlError::new(
        "25000",
        format!(
            "ROLLBACK cannot undo this transaction block's changes ({named}): Sluice commits every statement when it runs, so they are already committed"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(tag: &str) -> Output {
        Output::Command { tag: tag.into(), notice: None }
    }

    fn tag(out: SqlResult<Output>) -> String {
        match out {
            Ok(Output::Command { tag, .. }) => tag,
            Ok(other) => panic!("{other:?}"),
            Err(e) => format!("{} {}", e.code, e.message),
        }
    }

    #[test]
    fn rollback_of_a_block_that_wrote_fails() {
        let s = Session::default();
        assert_eq!(tag(s.after(cmd("BEGIN"))), "BEGIN");
        assert_eq!(tag(s.after(cmd("UPDATE 0"))), "UPDATE 0");
        assert_eq!(tag(s.after(cmd("ROLLBACK"))), "ROLLBACK");

        s.after(cmd("BEGIN")).unwrap();
        s.after(cmd("INSERT 0 2")).unwrap();
        s.copied(3);
        let e = tag(s.after(cmd("ROLLBACK")));
        assert!(e.starts_with("25000 ROLLBACK cannot undo") && e.contains("INSERT 0 2, COPY 3"), "{e}");
        // The block ended with the failed ROLLBACK.
        assert_eq!(tag(s.after(cmd("ROLLBACK"))), "ROLLBACK");

        // Writes outside a block, and committed blocks, are not remembered.
        s.after(cmd("INSERT 0 1")).unwrap();
        s.after(cmd("BEGIN")).unwrap();
        s.after(cmd("CREATE TABLE")).unwrap();
        s.after(cmd("COMMIT")).unwrap();
        s.after(cmd("BEGIN")).unwrap();
        assert_eq!(tag(s.after(cmd("ROLLBACK"))), "ROLLBACK");
    }

    #[test]
    fn an_error_aborts_the_block() {
        let s = Session::default();
        assert_eq!(s.status(), TransactionStatus::Idle);
        s.failed();
        assert_eq!(s.status(), TransactionStatus::Idle);
        s.after(cmd("BEGIN")).unwrap();
        assert_eq!(s.status(), TransactionStatus::Transaction);
        s.before("SELECT 1").unwrap();
        s.failed();
        assert_eq!(s.status(), TransactionStatus::Error);
        assert_eq!(s.before("SELECT 1").unwrap_err().code, "25P02");
        s.before(" commit").unwrap();
        assert_eq!(tag(s.after(cmd("COMMIT"))), "ROLLBACK");
        assert_eq!(s.status(), TransactionStatus::Idle);
        s.before("SELECT 1").unwrap();

        // An aborted block that wrote: COMMIT cannot roll its changes back either.
        s.after(cmd("BEGIN")).unwrap();
        s.after(cmd("INSERT 0 1")).unwrap();
        s.failed();
        assert!(tag(s.after(cmd("COMMIT"))).starts_with("25000"));
        assert_eq!(s.status(), TransactionStatus::Idle);
    }
}
