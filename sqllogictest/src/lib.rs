//! sqllogictest runner for Sluice.
//!
//! Every `*.slt` file gets its own `sluice` daemon on a fresh, empty data directory and a free
//! port on 127.0.0.1. Statements go over the PostgreSQL wire protocol with the *simple* query
//! protocol (tokio-postgres), so every value comes back as text.
//!
//! Dialect notes for `.slt` authors:
//!
//! * Results: `NULL` for SQL NULL, `(empty)` for the empty string. Column type letters in
//!   `query <types>` are not checked (every column is reported as `?`).
//! * Errors render as `db error: ERROR: <message> (SQLSTATE <code>)`, so
//!   `statement error SQLSTATE 42P01` (a regex matched against that text) works, and so does
//!   sqllogictest's own `statement error (42P01)` form when checking (but `--complete` rewrites
//!   the latter, so prefer the regex form).
//! * `statement ok` + `RESTART` stops the daemon with SIGTERM (waits up to 20 s, then SIGKILL),
//!   starts it again on the same data directory and reconnects. `RESTART KILL` does the same
//!   with SIGKILL. Other named `connection`s reconnect on their next statement.
//! * The engine name is `sluice` (for `onlyif sluice` / `skipif sluice`).
//!
//! Knobs: `--complete` (rewrite expected output in place), a substring filter on file names,
//! `SLT_JOBS` (files run in parallel, default 2), `SLT_STATEMENT_TIMEOUT_SECS` (default 300).
//! The daemon runs with `RUST_LOG=warn` unless `RUST_LOG` is set; its stderr is forwarded,
//! prefixed with the file name.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqllogictest::{
    default_column_validator, default_normalizer, default_validator, AsyncDB, DBOutput,
    DefaultColumnType, Runner,
};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// How long the daemon may take to print `listening on`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop (SIGTERM) may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to keep retrying a refused connection right after startup.
const CONNECT_RETRY: Duration = Duration::from_secs(10);
/// The line the daemon prints once it accepts connections.
const READY_MARKER: &str = "listening on";

// ---------------------------------------------------------------------------------------------
// Daemon process
// ---------------------------------------------------------------------------------------------

/// A running `sluice` daemon (`<bin> --listen 127.0.0.1:<port> --data-dir <dir>`).
///
/// Dropping it kills the process (SIGKILL).
pub struct ServerProcess {
    bin: PathBuf,
    data_dir: PathBuf,
    label: String,
    port: u16,
    generation: u64,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Environment variables set (`Some`) or removed (`None`) for the daemon's next starts.
    env: Vec<(String, Option<String>)>,
    /// Lines of the daemon's stderr that report a panic (`panicked at`), over all its starts.
    panics: Arc<AtomicUsize>,
    /// The threads reading the daemon's stdout and stderr.
    drainers: Vec<std::thread::JoinHandle<()>>,
}

/// The daemon shared by every connection of one test file (and by `RESTART`).
pub type SharedServer = Arc<Mutex<ServerProcess>>;

impl ServerProcess {
    /// Starts the daemon and waits until it is listening. Its stderr lines are prefixed with the
    /// data directory's name.
    pub fn start(bin: &Path, data_dir: &Path) -> Result<Self, String> {
        let label = data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sluice".to_string());
        Self::start_labeled(bin, data_dir, &label)
    }

    /// Like [`ServerProcess::start`], with an explicit prefix for forwarded stderr lines.
    pub fn start_labeled(bin: &Path, data_dir: &Path, label: &str) -> Result<Self, String> {
        let mut server = ServerProcess {
            panics: Arc::new(AtomicUsize::new(0)),
            drainers: Vec::new(),
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            label: label.to_string(),
            port: 0,
            generation: 0,
            child: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Like [`ServerProcess::start`], with more command-line flags for the daemon (kept across
    /// restarts), e.g. `--kafka-bootstrap 127.0.0.1:9092`.
    pub fn start_with_args(bin: &Path, data_dir: &Path, args: &[&str]) -> Result<Self, String> {
        let label = data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sluice".to_string());
        let mut server = ServerProcess {
            panics: Arc::new(AtomicUsize::new(0)),
            drainers: Vec::new(),
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            label,
            port: 0,
            generation: 0,
            child: None,
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Like [`ServerProcess::start_with_args`], with environment variables for the daemon (kept
    /// across restarts), e.g. `SLUICE_FAILPOINTS`.
    pub fn start_with_env(bin: &Path, data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        let label = data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sluice".to_string());
        let mut server = ServerProcess {
            panics: Arc::new(AtomicUsize::new(0)),
            drainers: Vec::new(),
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            label,
            port: 0,
            generation: 0,
            child: None,
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), Some(v.to_string()))).collect(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Stops the daemon ([`ServerProcess::stop`]) and waits until everything it wrote to
    /// stdout and stderr was read, so that [`ServerProcess::panics_logged`] is final.
    pub fn stop_and_drain(&mut self) -> Result<(), String> {
        let stopped = self.stop();
        for h in self.drainers.drain(..) {
            let _ = h.join();
        }
        stopped
    }

    /// How many lines of the daemon's stderr reported a panic (`panicked at`), over all its
    /// starts so far.
    pub fn panics_logged(&self) -> usize {
        self.panics.load(Ordering::Relaxed)
    }

    /// The port the daemon currently listens on (a new one after every restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The daemon's process id (0 when it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Incremented by every [`ServerProcess::restart`]; connections use it to notice restarts.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Kills the daemon with SIGKILL and waits for it. No-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon with SIGTERM, waits up to 20 s, then SIGKILLs it.
    ///
    /// Errors if the daemon had already exited (crashed) or had to be killed.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("sluice had already exited ({status})")),
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("cannot query sluice's status: {e}"));
            }
        }
        // SAFETY: plain kill(2) on the pid of a child we have not reaped yet.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("cannot send SIGTERM to sluice: {err}"));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("[{}] sluice exited with {status} after SIGTERM", self.label);
                    }
                    return Ok(());
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "sluice did not exit within {} s of SIGTERM; sent SIGKILL",
                        STOP_TIMEOUT.as_secs()
                    ));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("cannot wait for sluice: {e}"));
                }
            }
        }
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of the daemon from its next
    /// start on, e.g. `SLUICE_FAILPOINTS` to arm crash injection.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.map(str::to_string)));
    }

    /// True when the daemon process has exited (an armed failpoint aborted it, or it crashed).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    /// Starts the daemon again after it exited on its own, on the same data directory.
    pub fn start_again(&mut self) -> Result<(), String> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn()?;
        self.generation += 1;
        Ok(())
    }

    /// Stops the daemon (gracefully, or with SIGKILL if `kill`) and starts it again on the same
    /// data directory (on a new port). If the graceful stop failed the daemon is still restarted,
    /// and the stop error is returned afterwards.
    pub fn restart(&mut self, kill: bool) -> Result<(), String> {
        let stopped = if kill {
            self.kill();
            Ok(())
        } else {
            self.stop()
        };
        self.spawn()?;
        self.generation += 1;
        stopped.map_err(|e| format!("graceful stop failed (server restarted anyway): {e}"))
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = free_port()?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;

        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        if let Some(stdout) = child.stdout.take() {
            self.drainers.extend(spawn_drainer(stdout, self.label.clone(), false, ready_tx.clone(), self.panics.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            self.drainers.extend(spawn_drainer(stderr, self.label.clone(), true, ready_tx, self.panics.clone()));
        } else {
            drop(ready_tx);
        }

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => break,
                Err(RecvTimeoutError::Timeout) => {}
                // Both pipes closed: the process is exiting; try_wait below will notice.
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!(
                        "{} exited ({status}) before printing '{READY_MARKER}'",
                        self.bin.display()
                    ));
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("cannot wait for sluice: {e}"));
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "sluice did not print '{READY_MARKER}' within {} s",
                    STARTUP_TIMEOUT.as_secs()
                ));
            }
        }
        self.port = port;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `pipe` line by line until EOF so the daemon never blocks on a full pipe. Signals `ready`
/// on the first line containing [`READY_MARKER`]; forwards lines to our stderr if `forward`.
fn spawn_drainer<R: Read + Send + 'static>(pipe: R, label: String, forward: bool, ready: Sender<()>, panics: Arc<AtomicUsize>) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name(format!("drain-{label}"))
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut ready = Some(ready);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(|c: char| c == '\n' || c == '\r');
                if ready.is_some() && line.contains(READY_MARKER) {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                if line.contains("panicked at") {
                    panics.fetch_add(1, Ordering::Relaxed);
                }
                if forward {
                    eprintln!("[{label}] {line}");
                }
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("[sqllogictest] cannot spawn pipe drainer thread: {e}");
            None
        }
    }
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| format!("cannot read local address: {e}"))
}

fn lock(server: &Mutex<ServerProcess>) -> MutexGuard<'_, ServerProcess> {
    server.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Database driver
// ---------------------------------------------------------------------------------------------

/// Error returned to sqllogictest. Its `Display` is what `statement error <regex>` matches.
#[derive(Debug, Clone)]
pub struct SluiceError {
    message: String,
    sqlstate: Option<String>,
}

impl SluiceError {
    /// From a driver error: `db error: ERROR: <message> (SQLSTATE <code>)` for server errors,
    /// the driver's own text otherwise.
    pub fn from_pg(err: &tokio_postgres::Error) -> Self {
        match err.as_db_error() {
            Some(db) => {
                let code = db.code().code().to_string();
                SluiceError {
                    message: format!("db error: ERROR: {} (SQLSTATE {code})", db.message()),
                    sqlstate: Some(code),
                }
            }
            None => SluiceError {
                message: err.to_string(),
                sqlstate: None,
            },
        }
    }

    /// A harness-side error (no SQLSTATE).
    pub fn other(message: impl Into<String>) -> Self {
        SluiceError {
            message: message.into(),
            sqlstate: None,
        }
    }

    /// The SQLSTATE code, for server errors.
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }
}

impl std::fmt::Display for SluiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SluiceError {}

/// One client connection to the test file's daemon.
pub struct SluiceDb {
    server: SharedServer,
    client: Client,
    conn_task: tokio::task::JoinHandle<()>,
    /// The server generation this client is connected to.
    generation: u64,
}

impl SluiceDb {
    /// Connects to the daemon (`user=sluice dbname=sluice`, no TLS). Must run inside a tokio
    /// runtime (the connection is driven by a spawned task).
    pub async fn connect(server: SharedServer) -> Result<Self, SluiceError> {
        let (port, generation) = {
            let guard = lock(&server);
            (guard.port(), guard.generation())
        };
        let (client, conn_task) = connect_client(port).await?;
        Ok(SluiceDb {
            server,
            client,
            conn_task,
            generation,
        })
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The daemon this connection talks to.
    pub fn server(&self) -> &SharedServer {
        &self.server
    }

    async fn reconnect(&mut self) -> Result<(), SluiceError> {
        let (port, generation) = {
            let guard = lock(&self.server);
            (guard.port(), guard.generation())
        };
        let (client, conn_task) = connect_client(port).await?;
        self.client = client;
        let old = std::mem::replace(&mut self.conn_task, conn_task);
        old.abort();
        self.generation = generation;
        Ok(())
    }

    /// Reconnects if the daemon was restarted (by another connection) since we connected.
    async fn ensure_current(&mut self) -> Result<(), SluiceError> {
        let current = lock(&self.server).generation();
        if current != self.generation {
            self.reconnect().await?;
        }
        Ok(())
    }

    async fn restart(&mut self, kill: bool) -> Result<(), SluiceError> {
        let server = Arc::clone(&self.server);
        let restarted = tokio::task::spawn_blocking(move || {
            let mut guard = lock(&server);
            let result = guard.restart(kill);
            drop(guard);
            result
        })
        .await
        .map_err(|e| SluiceError::other(format!("restart task failed: {e}")))?;
        let reconnected = self.reconnect().await;
        restarted.map_err(SluiceError::other)?;
        reconnected
    }
}

impl Drop for SluiceDb {
    fn drop(&mut self) {
        self.conn_task.abort();
    }
}

#[async_trait]
impl AsyncDB for SluiceDb {
    type Error = SluiceError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SluiceError> {
        if let Some(kill) = restart_command(sql) {
            self.restart(kill).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        self.ensure_current().await?;
        let timeout = statement_timeout();
        let messages = match tokio::time::timeout(timeout, self.client.simple_query(sql)).await {
            Ok(Ok(messages)) => messages,
            Ok(Err(e)) => return Err(SluiceError::from_pg(&e)),
            Err(_) => {
                // The connection still has the query in flight: use a fresh one next time.
                self.generation = u64::MAX;
                return Err(SluiceError::other(format!(
                    "statement timed out after {} s",
                    timeout.as_secs()
                )));
            }
        };
        messages_to_output(messages)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "sluice"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }

    async fn run_command(command: Command) -> std::io::Result<std::process::Output> {
        tokio::process::Command::from(command).output().await
    }

    fn error_sql_state(err: &SluiceError) -> Option<String> {
        err.sqlstate.clone()
    }
}

async fn connect_client(
    port: u16,
) -> Result<(Client, tokio::task::JoinHandle<()>), SluiceError> {
    let config = format!("host=127.0.0.1 port={port} user=sluice dbname=sluice");
    let deadline = Instant::now() + CONNECT_RETRY;
    loop {
        match tokio_postgres::connect(&config, NoTls).await {
            Ok((client, connection)) => {
                let task = tokio::spawn(async move {
                    let _ = connection.await;
                });
                return Ok((client, task));
            }
            // Not a server-side error (e.g. connection refused): retry for a little while.
            Err(e) if e.as_db_error().is_none() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(SluiceError::from_pg(&e)),
        }
    }
}

/// `Some(false)` for `RESTART`, `Some(true)` for `RESTART KILL` (case-insensitive, optional `;`).
fn restart_command(sql: &str) -> Option<bool> {
    let trimmed = sql.trim().trim_end_matches(';').trim();
    if trimmed.len() > 64 {
        return None;
    }
    let upper = trimmed.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().collect();
    match words.as_slice() {
        ["RESTART"] => Some(false),
        ["RESTART", "KILL"] => Some(true),
        _ => None,
    }
}

fn statement_timeout() -> Duration {
    let secs = std::env::var("SLT_STATEMENT_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(300);
    Duration::from_secs(secs)
}

fn messages_to_output(
    messages: Vec<SimpleQueryMessage>,
) -> Result<DBOutput<DefaultColumnType>, SluiceError> {
    let mut columns: Option<usize> = None;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut count = 0u64;
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(cols) => {
                if columns.is_none() {
                    columns = Some(cols.len());
                }
            }
            SimpleQueryMessage::Row(row) => {
                if columns.is_none() {
                    columns = Some(row.len());
                }
                let mut values = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    let value = row.try_get(i).map_err(|e| SluiceError::from_pg(&e))?;
                    values.push(render_value(value));
                }
                rows.push(values);
            }
            SimpleQueryMessage::CommandComplete(n) => count = n,
            _ => {}
        }
    }
    Ok(match columns {
        Some(n) => DBOutput::Rows {
            types: vec![DefaultColumnType::Any; n],
            rows,
        },
        None => DBOutput::StatementComplete(count),
    })
}

fn render_value(value: Option<&str>) -> String {
    match value {
        None => "NULL".to_string(),
        Some("") => "(empty)".to_string(),
        Some(s) => s.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Running files
// ---------------------------------------------------------------------------------------------

/// Runs one `.slt` file against a fresh daemon on a fresh data directory. With `complete`, the
/// expected output in the file is rewritten in place instead of checked.
///
/// The data directory is removed on success and kept (and named in the error) on failure.
pub async fn run_file(bin: &Path, slt: &Path, complete: bool) -> Result<(), String> {
    let name = slt
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| slt.display().to_string());
    let data_dir = make_data_dir(&name)?;

    let server = {
        let bin = bin.to_path_buf();
        let dir = data_dir.clone();
        let label = name.clone();
        tokio::task::spawn_blocking(move || ServerProcess::start_labeled(&bin, &dir, &label))
            .await
            .map_err(|e| format!("server start task failed: {e}"))?
            .map_err(|e| format!("{e}\n(data dir kept at {})", data_dir.display()))?
    };
    let server: SharedServer = Arc::new(Mutex::new(server));

    let factory_server = Arc::clone(&server);
    let mut runner = Runner::new(move || {
        let server = Arc::clone(&factory_server);
        async move { SluiceDb::connect(server).await }
    });
    runner.with_column_validator(default_column_validator);

    let result: Result<(), String> = if complete {
        runner
            .update_test_file(
                slt,
                " ",
                default_validator,
                default_normalizer,
                default_column_validator,
            )
            .await
            .map_err(|e| e.to_string())
    } else {
        runner.run_file_async(slt).await.map_err(|e| e.to_string())
    };
    runner.shutdown_async().await;
    drop(runner);

    let stopped = {
        let server = Arc::clone(&server);
        tokio::task::spawn_blocking(move || {
            let mut guard = lock(&server);
            let result = guard.stop();
            drop(guard);
            result
        })
        .await
        .unwrap_or_else(|e| Err(format!("stop task failed: {e}")))
    };
    drop(server);

    let result = match (result, stopped) {
        (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(stop)) => Err(format!("server did not shut down cleanly: {stop}")),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(stop)) => Err(format!("{e}\nalso, server did not shut down cleanly: {stop}")),
    };
    match result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&data_dir);
            Ok(())
        }
        Err(e) => Err(format!("{e}\n(data dir kept at {})", data_dir.display())),
    }
}

/// A new, empty directory under the system temp dir.
fn make_data_dir(name: &str) -> Result<PathBuf, String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let stem: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "sluice-slt-{stem}-{}-{nanos}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Command-line options of [`run_all`].
#[derive(Debug, Default)]
struct Options {
    complete: bool,
    list: bool,
    exact: bool,
    filter: Option<String>,
    skip: Vec<String>,
}

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut opts = Options::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--complete" => opts.complete = true,
                "--list" => opts.list = true,
                "--exact" => opts.exact = true,
                "--skip" => opts.skip.extend(args.next()),
                // libtest flags that take a separate value: skip the value too.
                "--test-threads" | "--color" | "--format" | "--logfile" | "--shuffle-seed"
                | "-Z" => {
                    let _ = args.next();
                }
                a if a.starts_with('-') => {}
                other => {
                    if opts.filter.is_none() {
                        opts.filter = Some(other.to_string());
                    }
                }
            }
        }
        opts
    }

    fn selects(&self, name: &str) -> bool {
        let filtered = match &self.filter {
            None => true,
            Some(f) if self.exact => name == f.as_str(),
            Some(f) => name.contains(f.as_str()),
        };
        filtered && !self.skip.iter().any(|s| name.contains(s.as_str()))
    }
}

fn list_slt_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .path();
        if path.is_file() && path.extension().and_then(|e| e.to_str()) == Some("slt") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Runs one file on its own current-thread runtime, turning panics into failures.
fn run_one(bin: &Path, slt: &Path, complete: bool) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build tokio runtime: {e}"))?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(run_file(bin, slt, complete))
    }));
    match outcome {
        Ok(result) => result,
        Err(panic) => Err(format!("panicked: {}", panic_message(&*panic))),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs every `*.slt` file in `dir` (sorted by name, at most `SLT_JOBS` = 2 at a time) against
/// `bin`, printing `test <file> ... ok|FAILED` per file and finally one line
/// `<N> passed, <M> failed`. Returns the process exit code (0 iff nothing failed).
///
/// Arguments (from `std::env::args`): `--complete` rewrites expected output in place; the first
/// argument not starting with `-` filters file names by substring (`--exact` for equality);
/// `--skip <s>` excludes; `--list` only lists; other libtest flags are ignored.
pub fn run_all(bin: &Path, dir: &Path) -> i32 {
    let opts = Options::parse(std::env::args().skip(1));
    let files = match list_slt_files(dir) {
        Ok(files) => files,
        Err(e) => {
            println!("error: {e}");
            println!();
            println!("0 passed, 1 failed");
            return 1;
        }
    };
    let files: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| opts.selects(&file_name(f)))
        .collect();

    if opts.list {
        for f in &files {
            println!("{}: test", file_name(f));
        }
        return 0;
    }

    let jobs = std::env::var("SLT_JOBS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(2)
        .clamp(1, files.len().max(1));
    println!();
    println!(
        "running {} sqllogictest file{}{}",
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        if opts.complete { " (completing expected output in place)" } else { "" }
    );

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(file) = files.get(i) else { break };
                let name = file_name(file);
                let result = run_one(bin, file, opts.complete);
                // One println per file so parallel runs do not interleave within a report.
                match &result {
                    Ok(()) => println!("test {name} ... ok"),
                    Err(e) => println!("test {name} ... FAILED\n{}\n", e.trim_end()),
                }
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((name, result.is_ok()));
            });
        }
    });

    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut failed: Vec<&str> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name.as_str())
        .collect();
    failed.sort_unstable();
    let passed = results.len() - failed.len();
    if !failed.is_empty() {
        println!();
        println!("failures:");
        for name in &failed {
            println!("    {name}");
        }
    }
    println!();
    println!("{passed} passed, {} failed", failed.len());
    if failed.is_empty() {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_commands() {
        assert_eq!(restart_command("RESTART"), Some(false));
        assert_eq!(restart_command("  restart ; "), Some(false));
        assert_eq!(restart_command("Restart Kill;"), Some(true));
        assert_eq!(restart_command("RESTARTKILL"), None);
        assert_eq!(restart_command("SELECT 1"), None);
    }

    #[test]
    fn options() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = Options::parse(args(&["--test-threads", "2", "--nocapture", "smoke", "x"]));
        assert_eq!(o.filter.as_deref(), Some("smoke"));
        assert!(!o.complete);
        let o = Options::parse(args(&["--complete", "--quiet"]));
        assert!(o.complete);
        assert!(o.filter.is_none());
        assert!(o.selects("000_smoke.slt"));
    }

    #[test]
    fn values() {
        assert_eq!(render_value(None), "NULL");
        assert_eq!(render_value(Some("")), "(empty)");
        assert_eq!(render_value(Some("x")), "x");
    }
}
