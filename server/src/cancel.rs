//! Cancel requests and `statement_timeout`: how a running statement is stopped.
//!
//! As in PostgreSQL (docs "55.2.7. Canceling Requests in Progress"): a client that wants to stop
//! its session's statement opens a second connection and sends a `CancelRequest` with the
//! process id and secret key it got in `BackendKeyData`. [`Cancels`] (pgwire's cancel handler)
//! finds the session by that pair; a wrong key finds nothing and does nothing. Each statement
//! arms a [`StatementCancel`] when it starts: a cancel that arrives while it runs (planning,
//! executing, `FLUSH`, sending rows or `COPY` data, a live result) stops it with SQLSTATE 57014
//! `canceling statement due to user request`; a cancel that arrives before the next statement
//! starts stops nothing.
//!
//! `statement_timeout` (docs "20.11.2. Statement Behavior"; in milliseconds when given without
//! a unit, 0 for none) ends a statement the same way, with 57014 `canceling statement due to
//! statement timeout`. As in PostgreSQL 13 and later, each statement of a multi-statement
//! simple query has its own timeout.
//!
//! Stopping a statement drops its future: DataFusion's streams stop at their next poll (its
//! spawned tasks are aborted when dropped), a write not yet appended is not appended. Work
//! already handed to a blocking thread (the wait of a `FLUSH`) is not interrupted there: the
//! session answers at once and the thread returns by itself, at the latest when `FLUSH`'s own
//! timeout passes. Either way the session stays usable; inside a `BEGIN` block, a canceled
//! statement aborts the block as any failed statement does.
//!
//! Rows streamed to the client after the statement's response was built (a batch `SELECT`'s
//! stream, a portal's remaining rows) carry the session's signal with them
//! ([`StatementCancel::guard_output`]): they stop at the cancel or timeout of the statement
//! running when they are read.
//!
//! pgwire's own `ConnectionManager` is not used: its one-shot handle, found by pgwire's query
//! loop, races only the building of a response against the cancel, not the sending of its rows,
//! and ends the statement without marking an open block aborted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::{Stream, StreamExt};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::{ClientInfo, PgWireConnectionState};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::engine::Output;
use crate::errors::{SqlError, SqlResult};
use crate::session::Session;

/// SQLSTATE `query_canceled`.
pub const QUERY_CANCELED: &str = "57014";

/// PostgreSQL's message for a statement stopped by a `CancelRequest`.
pub const USER_REQUEST: &str = "canceling statement due to user request";

/// PostgreSQL's message for a statement stopped by `statement_timeout`.
pub const STATEMENT_TIMEOUT: &str = "canceling statement due to statement timeout";

/// The statement a session runs now, as its stop signal sees it.
#[derive(Debug, Clone, Default)]
struct Current {
    /// Counts the session's statements; a [`StatementCancel`] stops only its own.
    statement: u64,
    /// A cancel request arrived for it.
    canceled: bool,
    /// When its `statement_timeout` ends it.
    deadline: Option<Instant>,
}

/// One session's stop signal, in its connection's session extensions.
#[derive(Debug)]
struct Signal {
    current: watch::Sender<Current>,
    /// Set once the session is registered for cancel requests; unregisters when dropped.
    registration: OnceLock<Registration>,
}

impl Default for Signal {
    fn default() -> Self {
        Signal { current: watch::Sender::new(Current::default()), registration: OnceLock::new() }
    }
}

type Key = (i32, Bytes);

/// The entry of a session in [`Cancels`], removed when the session's connection ends.
#[derive(Debug)]
struct Registration {
    key: Key,
    sessions: Arc<Mutex<HashMap<Key, Weak<Signal>>>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions.lock().unwrap().remove(&self.key);
    }
}

/// The server's sessions by the process id and secret key of their `BackendKeyData`: pgwire's
/// cancel handler.
#[derive(Debug, Default, Clone)]
pub struct Cancels {
    sessions: Arc<Mutex<HashMap<Key, Weak<Signal>>>>,
}

impl Cancels {
    /// Registers `client`'s connection for cancel requests under the process id and secret key
    /// its start-up sent in `BackendKeyData`. Does nothing before the start-up has finished
    /// (pgwire calls the start-up handler once per authentication message) or when already
    /// registered.
    pub fn register<C: ClientInfo + ?Sized>(&self, client: &C) {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return;
        }
        let signal = client.session_extensions().get_or_insert_with(Signal::default);
        if signal.registration.get().is_some() {
            return;
        }
        let (pid, secret) = client.pid_and_secret_key();
        let key = (pid, secret.to_bytes());
        self.sessions.lock().unwrap().insert(key.clone(), Arc::downgrade(&signal));
        let _ = signal.registration.set(Registration { key, sessions: self.sessions.clone() });
        tracing::debug!(pid, "session registered for cancel requests");
    }

    /// Stops the running statement of the session with `pid` and `secret`; false when no
    /// session has that pair.
    pub fn cancel(&self, pid: i32, secret: Bytes) -> bool {
        let signal = self.sessions.lock().unwrap().get(&(pid, secret)).and_then(Weak::upgrade);
        match signal {
            Some(s) => {
                s.current.send_modify(|c| c.canceled = true);
                true
            }
            None => false,
        }
    }
}

#[async_trait]
impl CancelHandler for Cancels {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let found = self.cancel(request.pid, request.secret_key.to_bytes());
        tracing::info!(pid = request.pid, found, "cancel request");
    }
}

/// Resolves at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves with the 57014 error once the statement `only` (any statement when None) must stop:
/// a cancel request for it, or its deadline.
async fn stop(rx: &mut watch::Receiver<Current>, only: Option<u64>) -> SqlError {
    loop {
        let now = rx.borrow_and_update().clone();
        if only.is_some_and(|s| s != now.statement) {
            // A later statement has started: this one has ended.
            return std::future::pending().await;
        }
        if now.canceled {
            return SqlError::new(QUERY_CANCELED, USER_REQUEST);
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    // The session is gone; only the timeout can still stop the statement.
                    until(now.deadline).await;
                    return SqlError::new(QUERY_CANCELED, STATEMENT_TIMEOUT);
                }
            }
            () = until(now.deadline) => return SqlError::new(QUERY_CANCELED, STATEMENT_TIMEOUT),
        }
    }
}

/// The stop signal of one running statement: a `CancelRequest` for its session, or its
/// `statement_timeout` passing. Armed by [`StatementCancel::begin`] when the statement starts.
#[derive(Debug)]
pub struct StatementCancel {
    rx: watch::Receiver<Current>,
    statement: u64,
    /// The session's `statement_timeout` is not a valid duration: the statement fails with
    /// this error instead of running (the `SET` or `RESET` that repairs it runs).
    invalid: Option<SqlError>,
}

impl StatementCancel {
    /// Arms the signal for statement `sql`, about to run on `client`'s connection, with the
    /// session's `statement_timeout`. A cancel request that arrived before this call does not
    /// stop the new statement, as in PostgreSQL. When the session's `statement_timeout` is not
    /// a valid duration (see [`parse_timeout`]), [`StatementCancel::run`] fails with its 22023
    /// error, except for `SET`, `RESET` and `SHOW`, which run without a timeout.
    pub async fn begin<C: ClientInfo + ?Sized>(client: &C, session: &Session, sql: &str) -> StatementCancel {
        let signal = client.session_extensions().get_or_insert_with(Signal::default);
        let timeout = session.with_params(|p| p.show("statement_timeout")).and_then(|t| parse_timeout("statement_timeout", &t));
        let (deadline, invalid) = match timeout {
            Ok(t) => (t.map(|d| Instant::now() + d), None),
            Err(e) => {
                let first = sql.trim_start().split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("").to_uppercase();
                (None, (!matches!(first.as_str(), "SET" | "RESET" | "SHOW")).then_some(e))
            }
        };
        let mut statement = 0;
        signal.current.send_modify(|c| {
            c.statement += 1;
            c.canceled = false;
            c.deadline = deadline;
            statement = c.statement;
        });
        StatementCancel { rx: signal.current.subscribe(), statement, invalid }
    }

    /// Resolves with the 57014 error once the statement must stop; never resolves when
    /// neither a cancel request nor the timeout comes.
    pub async fn stopped(&mut self) -> SqlError {
        stop(&mut self.rx, Some(self.statement)).await
    }

    /// Runs `work` until it finishes or the statement must stop; `work` is dropped then, and
    /// the 57014 error returned.
    ///
    /// Errors: 57014, the 22023 of an invalid `statement_timeout` (see [`Self::begin`]), and
    /// `work`'s own.
    pub async fn run<T>(&mut self, work: impl Future<Output = SqlResult<T>>) -> SqlResult<T> {
        if let Some(e) = self.invalid.take() {
            return Err(e);
        }
        tokio::select! {
            biased;
            r = work => r,
            e = self.stopped() => Err(e),
        }
    }

    /// [`Self::run`] for work that writes to the client (pgwire's error type).
    ///
    /// Errors: as [`Self::run`].
    pub async fn run_pg<T>(&mut self, work: impl Future<Output = PgWireResult<T>>) -> PgWireResult<T> {
        if let Some(e) = self.invalid.take() {
            return Err(PgWireError::from(e));
        }
        tokio::select! {
            biased;
            r = work => r,
            e = self.stopped() => Err(PgWireError::from(e)),
        }
    }

    /// `out` with the rows it streams after the statement's response was built ([`Output::Stream`])
    /// stopped by the session's signal: at a cancel or timeout of the statement running when
    /// they are read, they end with its 57014 error. Other outputs are returned as they are.
    pub fn guard_output(&self, out: Output) -> Output {
        match out {
            Output::Stream(mut rows) => {
                rows.batches = self.guard_batches(rows.batches);
                Output::Stream(rows)
            }
            other => other,
        }
    }

    /// See [`Self::guard_output`]: the error is a `DataFusionError::External` holding the
    /// [`SqlError`], which keeps its SQLSTATE when converted back.
    pub fn guard_batches(&self, batches: SendableRecordBatchStream) -> SendableRecordBatchStream {
        let schema = batches.schema();
        let guarded = guard_stream(detach(batches), self.rx.clone(), |e| DataFusionError::External(Box::new(e)));
        Box::pin(RecordBatchStreamAdapter::new(schema, guarded))
    }
}

/// A DataFusion stream polled on a task of its own, its batches handed over through a channel
/// of two: a query whose operators compute for seconds between two yields does not hold up the
/// session, which answers a cancel or timeout at once. Dropping it aborts the task (which stops
/// at its next yield).
pub fn detach(mut batches: SendableRecordBatchStream) -> Detached {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let task = tokio::spawn(async move {
        while let Some(b) = batches.next().await {
            if tx.send(b).await.is_err() {
                break;
            }
        }
    });
    Detached { rx, task: task.abort_handle() }
}

/// See [`detach`].
pub struct Detached {
    rx: tokio::sync::mpsc::Receiver<datafusion::error::Result<arrow::array::RecordBatch>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Detached {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Detached {
    type Item = datafusion::error::Result<arrow::array::RecordBatch>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// `stream`, ended by its next item being the session's 57014 error once the statement that
/// reads it must stop; the inner stream is dropped then.
fn guard_stream<S, T, E>(stream: S, rx: watch::Receiver<Current>, into: fn(SqlError) -> E) -> impl Stream<Item = Result<T, E>> + Send
where
    S: Stream<Item = Result<T, E>> + Send + Unpin + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    futures::stream::unfold(Some((stream, rx)), move |state| async move {
        let (mut stream, mut rx) = state?;
        tokio::select! {
            biased;
            item = stream.next() => item.map(|i| (i, Some((stream, rx)))),
            e = stop(&mut rx, None) => Some((Err(into(e)), None)),
        }
    })
}

/// A PostgreSQL time-valued parameter (`statement_timeout`, `lock_timeout`) as a duration:
/// an integer or decimal number of milliseconds, or one followed by a unit `us`, `ms`, `s`,
/// `min`, `h` or `d` (case-sensitive, as PostgreSQL's units are), rounded to whole
/// milliseconds; `0` (or anything that rounds to it) means no timeout (None).
///
/// Errors: 22023 `invalid value for parameter` for anything else, or a value outside
/// PostgreSQL's range 0 .. 2147483647 ms.
pub fn parse_timeout(name: &str, value: &str) -> SqlResult<Option<Duration>> {
    let bad = |hint: &str| SqlError::new("22023", format!("invalid value for parameter \"{name}\": \"{value}\"{hint}"));
    let v = value.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad(""))?;
    let per_ms = match unit.trim() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1_000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(bad(". Valid units for this parameter are \"us\", \"ms\", \"s\", \"min\", \"h\", and \"d\"")),
    };
    let ms = (n * per_ms).round();
    if !(0.0..=i32::MAX as f64).contains(&ms) {
        return Err(SqlError::new("22023", format!("{ms} ms is outside the valid range for parameter \"{name}\" (0 .. 2147483647)")));
    }
    Ok((ms > 0.0).then(|| Duration::from_millis(ms as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_as_postgres_parses_them() {
        let ms = |v: &str| parse_timeout("statement_timeout", v).unwrap().map(|d| d.as_millis());
        assert_eq!(ms("0"), None);
        assert_eq!(ms("200"), Some(200));
        assert_eq!(ms("200ms"), Some(200));
        assert_eq!(ms(" 200 ms "), Some(200));
        assert_eq!(ms("1.5s"), Some(1500));
        assert_eq!(ms("2min"), Some(120_000));
        assert_eq!(ms("1h"), Some(3_600_000));
        assert_eq!(ms("1d"), Some(86_400_000));
        assert_eq!(ms("1500us"), Some(2));
        assert_eq!(ms("1e3"), Some(1000));
        for bad in ["abc", "10 sec", "5S", "", "-1", "3000000000"] {
            assert_eq!(parse_timeout("statement_timeout", bad).unwrap_err().code, "22023", "{bad}");
        }
    }

    /// A session's signal with one statement armed, without a connection.
    fn armed(deadline: Option<Instant>) -> (Arc<Signal>, StatementCancel) {
        let signal = Arc::new(Signal::default());
        signal.current.send_modify(|c| {
            c.statement = 1;
            c.deadline = deadline;
        });
        let s = StatementCancel { rx: signal.current.subscribe(), statement: 1, invalid: None };
        (signal, s)
    }

    #[tokio::test]
    async fn a_cancel_stops_its_statement_and_a_timeout_ends_it() {
        let cancels = Cancels::default();
        let (signal, mut s) = armed(None);
        let key = (7, Bytes::from_static(b"\0\0\0\x2a"));
        cancels.sessions.lock().unwrap().insert(key.clone(), Arc::downgrade(&signal));
        // A wrong key finds nothing.
        assert!(!cancels.cancel(7, Bytes::from_static(b"\0\0\0\x29")));
        assert!(cancels.cancel(key.0, key.1.clone()));
        let e = s.run(std::future::pending::<SqlResult<()>>()).await.unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (QUERY_CANCELED, USER_REQUEST));

        // The next statement is not stopped by the cancel of the one before.
        signal.current.send_modify(|c| {
            c.statement = 2;
            c.canceled = false;
        });
        let mut next = StatementCancel { rx: signal.current.subscribe(), statement: 2, invalid: None };
        assert_eq!(next.run(async { Ok(5) }).await.unwrap(), 5);

        let (_signal, mut t) = armed(Some(Instant::now() + Duration::from_millis(20)));
        let e = t.run(std::future::pending::<SqlResult<()>>()).await.unwrap_err();
        assert_eq!(e.message, STATEMENT_TIMEOUT);
    }

    #[tokio::test]
    async fn a_guarded_stream_ends_with_the_error() {
        let (signal, s) = armed(None);
        let rows = futures::stream::iter(vec![Ok::<i32, SqlError>(1)]).chain(futures::stream::pending());
        let mut guarded = Box::pin(guard_stream(Box::pin(rows), s.rx.clone(), |e| e));
        assert_eq!(guarded.next().await.unwrap().unwrap(), 1);
        signal.current.send_modify(|c| c.canceled = true);
        assert_eq!(guarded.next().await.unwrap().unwrap_err().code, QUERY_CANCELED);
        assert!(guarded.next().await.is_none());
    }
}
