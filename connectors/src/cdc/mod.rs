//! Change data capture from PostgreSQL logical replication (pgoutput), with no JVM and no
//! Debezium process.
//!
//! A capture task follows the steps Debezium's Postgres connector and Flink CDC take:
//! 1. make sure a publication covers the captured tables (`CREATE PUBLICATION ... FOR TABLE`);
//! 2. on first start, create the replication slot with an exported snapshot, read every captured
//!    table inside a `REPEATABLE READ` transaction at that snapshot (tokio-postgres, `COPY ... TO
//!    STDOUT`), and append the rows as inserts; the snapshot's consistent point is the first
//!    position;
//! 3. stream the slot's changes from the stored position (`pg_walstream` decodes pgoutput):
//!    inserts, updates (an update-before when the old row is sent, then an update-after) and
//!    deletes become changelog rows, appended per committed transaction together with the
//!    transaction's end LSN; then the LSN is confirmed to Postgres so it can recycle WAL.
//!    A transaction larger than `PIECE_ROWS` changes is appended in pieces, each
//!    with how far into the transaction it reached, so memory stays bounded and a restart in
//!    the middle skips what is appended (Postgres sends the whole transaction again).
//!    With no captured change to append, the server's `wal_end` is confirmed instead, as
//!    Debezium's heartbeat does, so an idle captured table does not hold back WAL.
//!
//! A restart resumes from the stored LSN without a new snapshot. A slot that was dropped or
//! invalidated (`wal_status = 'lost'`) is a connector error, never a silent gap. Passwords never
//! appear in errors: they are scrubbed from every message.

mod fill;
mod options;
mod route;
mod snapshot;
mod stream;
mod table;
mod text;

use std::sync::Arc;
use std::time::Duration;

use pg_walstream::{LogicalReplicationStream, ReplicationStreamConfig, RetryConfig, StreamingMode};

pub use options::PostgresCdcOptions;
pub use route::Route;
pub use table::{arrow_type_of, discover, sql_type_of, PgColumn, PgTable};
pub use text::texts_to_array;

use crate::error::ConnectorError;
use crate::task::{Backoff, TaskState, TaskStatus};
use table::quote_ident;

/// A route's stored position: the end LSN of the last transaction appended whole, and while a
/// large transaction is appended in pieces (see `stream.rs`), that transaction's commit LSN
/// (pgoutput's `final_lsn`, unique per transaction) and how many of its changes for this route
/// are appended. Stored as 8 bytes (big-endian LSN), or 24 with the piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    lsn: u64,
    partial: Option<(u64, u64)>,
}

impl Position {
    fn at(lsn: u64) -> Position {
        Position { lsn, partial: None }
    }

    /// `None` for no position, or bytes that are not one.
    fn decode(v: Option<Vec<u8>>) -> Option<Position> {
        let v = v?;
        let word = |i: usize| v.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        match v.len() {
            8 => Some(Position::at(word(0)?)),
            24 => Some(Position { lsn: word(0)?, partial: Some((word(1)?, word(2)?)) }),
            _ => None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = self.lsn.to_be_bytes().to_vec();
        if let Some((txn, n)) = self.partial {
            out.extend_from_slice(&txn.to_be_bytes());
            out.extend_from_slice(&n.to_be_bytes());
        }
        out
    }
}

/// Key of the flag saying the connector created its slot (so DROP may drop it).
pub fn slot_created_key(name: &str) -> Vec<u8> {
    format!("cdc/{name}/slot-created").into_bytes()
}

/// A capture task: one slot, one publication, one or more routes.
pub struct CdcSource {
    /// Connector (or table) name, for positions and logs.
    pub name: String,
    /// Options.
    pub options: PostgresCdcOptions,
    /// Routes by `schema.table`.
    pub routes: Vec<Route>,
}


/// Why a capture step failed.
enum CdcError {
    Retry(String),
    Fatal(String),
}

impl From<ConnectorError> for CdcError {
    fn from(e: ConnectorError) -> Self {
        match e {
            ConnectorError::External(m) => CdcError::Retry(m),
            other => CdcError::Fatal(other.to_string()),
        }
    }
}

impl CdcSource {
    /// Runs on the current thread until `status.stop` is set (it builds its own single-threaded
    /// tokio runtime), retrying with backoff while Postgres is unreachable.
    pub fn run(self, status: Arc<TaskStatus>) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                status.set(TaskState::Failed, Some(e.to_string()));
                return;
            }
        };
        let mut backoff = Backoff::default();
        while !status.stopping() {
            match rt.block_on(self.capture(&status, &mut backoff)) {
                Ok(()) => return,
                Err(CdcError::Fatal(e)) => {
                    let e = self.options.scrub(&e);
                    tracing::error!(connector = %self.name, error = %e, "postgres capture failed");
                    status.set(TaskState::Failed, Some(e));
                    return;
                }
                Err(CdcError::Retry(e)) => {
                    let e = self.options.scrub(&e);
                    tracing::warn!(connector = %self.name, error = %e, "postgres capture retrying");
                    status.set(TaskState::Retrying, Some(e));
                    if status.sleep(backoff.next_delay()) {
                        return;
                    }
                }
            }
        }
    }

    async fn capture(&self, status: &TaskStatus, backoff: &mut Backoff) -> std::result::Result<(), CdcError> {
        let o = &self.options;
        let client = o.connect().await?;
        let pg = |e: tokio_postgres::Error| CdcError::Retry(format!("postgres: {e}"));
        let wal_level: String = client.query_one("SHOW wal_level", &[]).await.map_err(pg)?.get(0);
        if wal_level != "logical" {
            return Err(CdcError::Fatal(format!(
                "postgres at {}:{} has wal_level = {wal_level}; change data capture needs wal_level = logical",
                o.host, o.port
            )));
        }
        self.ensure_publication(&client).await?;
        let target0 = self.routes.first().map(|r| r.target.clone()).ok_or_else(|| CdcError::Fatal("no tables to capture".into()))?;
        let mut positions: Vec<Option<Position>> = Vec::new();
        for r in &self.routes {
            positions.push(Position::decode(r.target.position(&r.position_key)?));
        }
        let slot_row = client
            .query_opt("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&o.slot])
            .await
            .map_err(pg)?;
        let resumed = positions.iter().all(Option::is_some);
        if resumed {
            match &slot_row {
                None => {
                    return Err(CdcError::Fatal(format!(
                        "replication slot '{}' no longer exists; changes since the last checkpoint are lost to it. Drop and re-create the connector to take a new snapshot",
                        o.slot
                    )))
                }
                Some(r) if r.get::<_, Option<String>>(0).as_deref() == Some("lost") => {
                    return Err(CdcError::Fatal(format!(
                        "replication slot '{}' was invalidated (wal_status = lost); drop and re-create the connector to take a new snapshot",
                        o.slot
                    )))
                }
                _ => {}
            }
        }
        // A slot that exists before the first start and was not made by this connector (a DBA
        // created it) is used as it is: the snapshot is then read at a fresh REPEATABLE READ
        // snapshot, not at the slot's point, and changes from the slot's position on are
        // applied after it; on a keyed table replaying them converges to the same rows.
        let mut preexisting = false;
        if !resumed && slot_row.is_some() {
            if target0.position(&slot_created_key(&self.name))?.is_some() {
                // Sluice made it, but its snapshot did not finish: start over.
                client.execute("SELECT pg_drop_replication_slot($1)", &[&o.slot]).await.map_err(pg)?;
            } else {
                preexisting = true;
            }
        }
        let config = ReplicationStreamConfig::new(
            o.slot.clone(),
            o.publication.clone(),
            1,
            StreamingMode::Off,
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::from_secs(60),
            RetryConfig::default(),
        )
        .with_slot_options(pg_walstream::ReplicationSlotOptions { snapshot: Some("export".into()), ..Default::default() });
        let mut stream = LogicalReplicationStream::new(&o.replication_dsn(), config)
            .await
            .map_err(|e| CdcError::Retry(format!("postgres replication connection: {e}")))?;
        let start_lsn = if resumed {
            positions.iter().flatten().map(|p| p.lsn).min()
        } else {
            let exported = if preexisting {
                None
            } else {
                stream.ensure_replication_slot().await.map_err(|e| CdcError::Retry(format!("postgres: {e}")))?;
                target0.put_position(&slot_created_key(&self.name), b"1")?;
                Some(
                    stream
                        .exported_snapshot_name()
                        .ok_or_else(|| CdcError::Fatal("postgres did not export a snapshot for the new slot".into()))?
                        .to_string(),
                )
            };
            let lsn_text: String = client
                .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&o.slot])
                .await
                .map_err(pg)?
                .get(0);
            let lsn = pg_walstream::parse_lsn(&lsn_text).map_err(|e| CdcError::Fatal(e.to_string()))?;
            if o.snapshot {
                self.snapshot(exported.as_deref(), lsn, status).await?;
            } else {
                for r in &self.routes {
                    r.target.append(Vec::new(), None, vec![(r.position_key.clone(), Position::at(lsn).encode())])?;
                }
            }
            positions = vec![Some(Position::at(lsn)); self.routes.len()];
            Some(lsn)
        };
        stream.start(start_lsn).await.map_err(|e| CdcError::Retry(format!("postgres start replication: {e}")))?;
        status.set(TaskState::Running, None);
        backoff.reset();
        self.stream_changes(stream, positions, status).await
    }

    async fn ensure_publication(&self, client: &tokio_postgres::Client) -> std::result::Result<(), CdcError> {
        let o = &self.options;
        let pg = |e: tokio_postgres::Error| CdcError::Retry(format!("postgres: {e}"));
        let exists = client
            .query_opt("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&o.publication])
            .await
            .map_err(pg)?;
        let tables: Vec<String> = self.routes.iter().map(|r| r.source.quoted()).collect();
        match exists {
            None => {
                client
                    .batch_execute(&format!("CREATE PUBLICATION {} FOR TABLE {}", quote_ident(&o.publication), tables.join(", ")))
                    .await
                    .map_err(|e| CdcError::Fatal(format!("postgres: cannot create publication '{}': {e}", o.publication)))?;
            }
            Some(row) if row.get::<_, bool>(0) => {}
            Some(_) => {
                for r in &self.routes {
                    let has = client
                        .query_opt(
                            "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                            &[&o.publication, &r.source.schema, &r.source.name],
                        )
                        .await
                        .map_err(pg)?;
                    if has.is_none() {
                        client
                            .batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(&o.publication), r.source.quoted()))
                            .await
                            .map_err(|e| CdcError::Fatal(format!("postgres: cannot add a table to publication '{}': {e}", o.publication)))?;
                    }
                }
            }
        }
        Ok(())
    }
}
