//! Streaming the slot's changes: decoded events in, per-transaction appends out, and the
//! confirmation of appended LSNs to Postgres.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pg_walstream::{CancellationToken, ChangeEvent, EventType, LogicalReplicationStream, ReplicationError, RowData};
use tokio::sync::mpsc::Sender;
use sluice_catalog::Op;

use super::{CdcError, CdcSource, Position};
use crate::task::TaskStatus;

/// How long committed changes wait for more before they are appended: a few milliseconds of
/// latency buy one write (one fsync) for many small transactions.
const FLUSH_DELAY: Duration = Duration::from_millis(5);

/// The most changes of one open transaction held in memory: a larger transaction is appended
/// in pieces of this many changes (of all routes together), each stored with its route's
/// [`Position`] (the transaction's commit LSN and how many of its changes are appended).
pub const PIECE_ROWS: usize = 10_000;

/// How often the stream reader, busy or idle, reports the server's `wal_end` and sends Postgres
/// the standby status (the confirmed LSN).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// What the stream reader hands the capture loop, in the order it was received.
enum Received {
    /// A decoded change, BEGIN or COMMIT.
    Event(ChangeEvent),
    /// The server's `wal_end` (from keepalives and XLogData headers): everything the server
    /// will ever send for WAL before it, it has sent, and it has been handed over ahead of this.
    /// (A keepalive's `wal_end` is the walsender's `sentPtr`, set only after the output plugin
    /// wrote the records before it to the same socket.)
    WalEnd(u64),
}

/// Reads `stream` until `cancel` is cancelled or the stream fails, handing events over `tx`.
/// Every [`PROGRESS_INTERVAL`] the read is interrupted through a child token (pg_walstream's
/// cancellation returns only between whole frames, so none is lost) to hand over the
/// server's `wal_end` and to send the standby status, which pg_walstream itself only sends
/// when frames arrive.
async fn read_stream(mut stream: LogicalReplicationStream, cancel: CancellationToken, tx: Sender<std::result::Result<Received, String>>) {
    let tick = Arc::new(Mutex::new(cancel.child_token()));
    let ticker = {
        let (tick, cancel) = (tick.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(PROGRESS_INTERVAL) => tick.lock().unwrap().cancel(),
                }
            }
        })
    };
    let mut sent = (0, (0, 0));
    loop {
        let token = tick.lock().unwrap().clone();
        let received = match stream.next_event(&token).await {
            Ok(event) => Ok(Received::Event(event)),
            Err(ReplicationError::Cancelled(_)) if !cancel.is_cancelled() => {
                *tick.lock().unwrap() = cancel.child_token();
                let now = (stream.current_lsn(), stream.shared_lsn_feedback.get_feedback_lsn());
                if now != sent {
                    if let Err(e) = stream.send_feedback().await {
                        let _ = tx.send(Err(format!("sending standby status: {e}"))).await;
                        break;
                    }
                    sent = now;
                }
                Ok(Received::WalEnd(stream.current_lsn()))
            }
            Err(e) => Err(e.to_string()),
        };
        let stop = received.is_err();
        if tx.send(received).await.is_err() || stop {
            break;
        }
    }
    ticker.abort();
    let _ = stream.stop().await;
}

/// Cancels the stream reader when the capture loop ends, however it ends.
struct CancelOnDrop(CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl CdcSource {
    /// Streams the slot's changes from `stream` (started) until `status.stop` is set, appending
    /// each committed transaction to its routes and confirming its end LSN to Postgres.
    pub(super) async fn stream_changes(
        &self,
        stream: LogicalReplicationStream,
        mut positions: Vec<Option<Position>>,
        status: &TaskStatus,
    ) -> std::result::Result<(), CdcError> {
        let o = &self.options;
        // The stream is read by a task of its own that hands events over a channel: waiting on
        // the channel with a timeout is cancel-safe, waiting on the stream itself is not.
        let cancel = CancellationToken::new();
        let feedback = stream.shared_lsn_feedback.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::result::Result<Received, String>>(4096);
        let reader = tokio::spawn(read_stream(stream, cancel.clone(), tx));
        let _guard = CancelOnDrop(cancel.clone());
        let by_name: HashMap<(String, String), usize> =
            self.routes.iter().enumerate().map(|(i, r)| ((r.source.schema.clone(), r.source.name.clone()), i)).collect();
        // Changes of the open transaction, and of committed transactions not yet appended.
        let mut txn: Vec<(usize, Op, RowData)> = Vec::new();
        let mut ready: Vec<(usize, Op, RowData)> = Vec::new();
        let mut ready_lsn = 0u64;
        let mut ready_commit_ts: Option<chrono::DateTime<chrono::Utc>> = None;
        let mut first_ready: Option<Instant> = None;
        // Inside a transaction (its BEGIN received, its COMMIT not yet).
        let mut in_txn = false;
        // Of the open transaction: its commit LSN, and per route how many of its changes were
        // received and how many of those an earlier run already appended (to skip).
        let mut txn_lsn = 0u64;
        let mut received = vec![0u64; self.routes.len()];
        let mut skip = vec![0u64; self.routes.len()];
        // The latest server `wal_end` received outside a transaction, to confirm once every
        // change received before it is appended (see [`Received::WalEnd`]).
        let mut wal_end = 0u64;
        while !status.stopping() {
            let wait = match first_ready {
                Some(t) => FLUSH_DELAY.saturating_sub(t.elapsed()),
                None => Duration::from_millis(200),
            };
            let event = match tokio::time::timeout(wait, rx.recv()).await {
                Err(_) => None,
                Ok(None) => return Err(CdcError::Retry("postgres replication stream ended".into())),
                Ok(Some(Ok(Received::Event(e)))) => Some(e),
                Ok(Some(Ok(Received::WalEnd(lsn)))) => {
                    // A transaction still open is received but not appended: the WAL before
                    // its end stays held until its commit is appended.
                    if !in_txn && txn.is_empty() {
                        wal_end = wal_end.max(lsn);
                    }
                    None
                }
                Ok(Some(Err(m))) => {
                    if m.contains("does not exist") || m.contains("invalidated") {
                        return Err(CdcError::Fatal(format!("replication slot '{}': {m}", o.slot)));
                    }
                    return Err(CdcError::Retry(format!("postgres replication: {m}")));
                }
            };
            if let Some(event) = event {
                match event.event_type {
                    EventType::Begin { final_lsn, .. } => {
                        in_txn = true;
                        txn_lsn = final_lsn.value();
                        received.iter_mut().for_each(|n| *n = 0);
                        for (i, p) in positions.iter().enumerate() {
                            skip[i] = match p.and_then(|p| p.partial) {
                                Some((lsn, n)) if lsn == txn_lsn => n,
                                _ => 0,
                            };
                        }
                    }
                    EventType::Insert { schema, table, data, .. } => {
                        if let Some(&i) = by_name.get(&(schema.to_string(), table.to_string())) {
                            take(&mut txn, &mut received, &skip, i, Op::Insert, data);
                        }
                    }
                    EventType::Update { schema, table, old_data, new_data, .. } => {
                        if let Some(&i) = by_name.get(&(schema.to_string(), table.to_string())) {
                            // The old row and the new one count as one change: a piece never
                            // separates them (the new row's unchanged values may come from the old).
                            received[i] += 1;
                            if received[i] > skip[i] {
                                if let Some(old) = old_data {
                                    txn.push((i, Op::UpdateBefore, old));
                                }
                                txn.push((i, Op::UpdateAfter, new_data));
                            }
                        }
                    }
                    EventType::Delete { schema, table, old_data, .. } => {
                        if let Some(&i) = by_name.get(&(schema.to_string(), table.to_string())) {
                            take(&mut txn, &mut received, &skip, i, Op::Delete, old_data);
                        }
                    }
                    EventType::Commit { end_lsn, commit_timestamp, .. } => {
                        in_txn = false;
                        // A route whose stored position is at or past this transaction holds
                        // it already: the stream restarts at the lowest position of all routes,
                        // so the others see it again. Decided per transaction, not per batch
                        // (a batch may hold such a transaction and newer ones).
                        let end = end_lsn.value();
                        txn.retain(|(i, _, _)| !positions[*i].is_some_and(|p| p.lsn >= end));
                        ready.append(&mut txn);
                        ready_lsn = end_lsn.value();
                        ready_commit_ts = Some(commit_timestamp);
                        if first_ready.is_none() {
                            first_ready = Some(Instant::now());
                        }
                    }
                    _ => {}
                }
            }
            // A large open transaction: what is committed before it first, then its piece.
            if in_txn && txn.len() >= PIECE_ROWS {
                if !ready.is_empty() || first_ready.is_some() {
                    self.flush(&mut ready, ready_lsn, &mut positions, status)?;
                    feedback.update_flushed_lsn(ready_lsn);
                    feedback.update_applied_lsn(ready_lsn);
                    first_ready = None;
                }
                self.flush_piece(&mut txn, txn_lsn, &received, &mut positions, status)?;
                sluice_catalog::failpoint::check("cdc::after_piece").map_err(CdcError::Fatal)?;
            }
            let due = first_ready.is_some_and(|t| t.elapsed() >= FLUSH_DELAY) || ready.len() >= PIECE_ROWS;
            if due {
                self.flush(&mut ready, ready_lsn, &mut positions, status)?;
                sluice_catalog::failpoint::check("cdc::after_append").map_err(CdcError::Fatal)?;
                if let Some(ts) = ready_commit_ts {
                    let lag = (chrono::Utc::now() - ts).num_milliseconds().max(0) as u64;
                    status.lag_ms.store(lag, Ordering::Relaxed);
                }
                feedback.update_flushed_lsn(ready_lsn);
                feedback.update_applied_lsn(ready_lsn);
                *status.position.lock().unwrap() = pg_walstream::format_lsn(ready_lsn);
                first_ready = None;
            }
            // With every change received so far appended (none committed and waiting, none of an
            // open transaction), the server's `wal_end` is confirmed as Debezium's heartbeat
            // does: otherwise an idle captured database (changes only in other tables, which
            // pgoutput does not send) would hold back WAL forever.
            if wal_end > 0 && ready.is_empty() && txn.is_empty() && !in_txn && first_ready.is_none() {
                feedback.update_flushed_lsn(wal_end);
                feedback.update_applied_lsn(wal_end);
                wal_end = 0;
            }
        }
        cancel.cancel();
        let _ = reader.await;
        Ok(())
    }

    /// Appends the committed changes up to `lsn`, each route with its position, skipping what a
    /// route already holds (its stored LSN is at or past `lsn`).
    fn flush(&self, ready: &mut Vec<(usize, Op, RowData)>, lsn: u64, positions: &mut [Option<Position>], status: &TaskStatus) -> std::result::Result<(), CdcError> {
        let mut per_route: BTreeMap<usize, Vec<(Op, &RowData)>> = BTreeMap::new();
        for (i, op, row) in ready.iter() {
            per_route.entry(*i).or_default().push((*op, row));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if positions[i].is_some_and(|p| p.lsn >= lsn) {
                continue;
            }
            let rows = per_route.remove(&i).unwrap_or_default();
            let batches = if rows.is_empty() { Vec::new() } else { vec![r.rows(&rows).map_err(|e| CdcError::Fatal(e.to_string()))?] };
            let n: usize = batches.iter().map(|b| b.num_rows()).sum();
            let at = Position::at(lsn);
            r.target.append(batches, None, vec![(r.position_key.clone(), at.encode())])?;
            positions[i] = Some(at);
            status.rows.fetch_add(n as u64, Ordering::Relaxed);
            sluice_catalog::failpoint::check("cdc::between_routes").map_err(CdcError::Fatal)?;
        }
        ready.clear();
        Ok(())
    }

    /// Appends a piece of the open transaction (commit LSN `txn_lsn`): each route's changes in
    /// it, with the route's position saying how many of the transaction's changes (`received`)
    /// are appended; the position's LSN stays that of the last whole transaction.
    fn flush_piece(
        &self,
        txn: &mut Vec<(usize, Op, RowData)>,
        txn_lsn: u64,
        received: &[u64],
        positions: &mut [Option<Position>],
        status: &TaskStatus,
    ) -> std::result::Result<(), CdcError> {
        let mut per_route: BTreeMap<usize, Vec<(Op, &RowData)>> = BTreeMap::new();
        for (i, op, row) in txn.iter() {
            per_route.entry(*i).or_default().push((*op, row));
        }
        for (i, rows) in per_route {
            let r = &self.routes[i];
            let batch = r.rows(&rows).map_err(|e| CdcError::Fatal(e.to_string()))?;
            let n = batch.num_rows();
            let at = Position { lsn: positions[i].map_or(0, |p| p.lsn), partial: Some((txn_lsn, received[i])) };
            r.target.append(vec![batch], None, vec![(r.position_key.clone(), at.encode())])?;
            positions[i] = Some(at);
            status.rows.fetch_add(n as u64, Ordering::Relaxed);
        }
        txn.clear();
        Ok(())
    }
}

/// Counts a change of route `i` in the open transaction and keeps it unless an earlier run
/// appended it already (the first `skip[i]` changes of the route).
fn take(txn: &mut Vec<(usize, Op, RowData)>, received: &mut [u64], skip: &[u64], i: usize, op: Op, row: RowData) {
    received[i] += 1;
    if received[i] > skip[i] {
        txn.push((i, op, row));
    }
}
