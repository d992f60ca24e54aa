//! Large results: a `SELECT *` over a `datagen` table of `SLUICE_STREAM_ROWS` rows (default
//! 20 000 000, generated as they are read, so the table itself holds nothing), read by a client
//! three ways: the simple protocol, the extended protocol without a row limit, and a portal
//! paged 10 000 rows per `Execute` (pgJDBC's `setFetchSize`). Printed per way: the time to the
//! first row, the time to the last, rows per second, and the daemon's RSS before and its peak
//! (`VmHWM`) after, which stays flat when results are streamed instead of gathered. Figures,
//! not assertions.
//!
//! `cargo bench -p sluice-server --bench streaming`.

use std::time::Instant;

use futures::StreamExt;
use sluice_sqllogictest::ServerProcess;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A line of `/proc/<pid>/status` in MiB (`VmRSS`, `VmHWM`).
fn status_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

async fn connect(port: u16) -> Client {
    let (c, conn) = tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=sluice dbname=sluice"), NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

const QUERY: &str = "SELECT * FROM wide";

fn report(way: &str, rows: u64, start: Instant, first: f64, before: f64, pid: u32) {
    let total = start.elapsed().as_secs_f64();
    println!(
        "streaming: {way:<28} {rows:>10} rows, first row {:>8.1} ms, last {:>7.2} s, {:>10.0} rows/s, RSS {before:.0} MiB before, peak {:.0} MiB",
        first * 1000.0,
        total,
        rows as f64 / total,
        status_mib(pid, "VmHWM:")
    );
}

fn main() {
    let rows: u64 = std::env::var("SLUICE_STREAM_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000_000);
    let dir = std::env::temp_dir().join(format!("sluice-streaming-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = ServerProcess::start(std::path::Path::new(env!("CARGO_BIN_EXE_sluice")), &dir).unwrap();
    let pid = server.pid();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let c = connect(server.port()).await;
        c.batch_execute(&format!(
            "CREATE TABLE wide (seq BIGINT, amount DOUBLE, name STRING) WITH ('connector' = 'datagen', \
             'fields.seq.kind' = 'sequence', 'fields.seq.start' = '1', 'fields.seq.end' = '{rows}', \
             'fields.amount.min' = '1', 'fields.amount.max' = '100', 'fields.name.length' = '16')"
        ))
        .await
        .unwrap();
        println!("streaming: {QUERY} over {rows} generated rows (seq BIGINT, amount DOUBLE, name 16 chars)");

        let before = status_mib(pid, "VmRSS:");
        let start = Instant::now();
        let mut first = None;
        let mut n = 0u64;
        let stream = c.simple_query_raw(QUERY).await.unwrap();
        futures::pin_mut!(stream);
        while let Some(m) = stream.next().await {
            if let SimpleQueryMessage::Row(_) = m.unwrap() {
                first.get_or_insert_with(|| start.elapsed().as_secs_f64());
                n += 1;
            }
        }
        report("simple protocol", n, start, first.unwrap_or(f64::NAN), before, pid);

        let before = status_mib(pid, "VmRSS:");
        let start = Instant::now();
        let mut first = None;
        let mut n = 0u64;
        let stream = c.query_raw(QUERY, Vec::<&(dyn tokio_postgres::types::ToSql + Sync)>::new()).await.unwrap();
        futures::pin_mut!(stream);
        while let Some(r) = stream.next().await {
            r.unwrap();
            first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            n += 1;
        }
        report("extended, no row limit", n, start, first.unwrap_or(f64::NAN), before, pid);

        let mut c = c;
        let before = status_mib(pid, "VmRSS:");
        let start = Instant::now();
        let mut first = None;
        let mut n = 0u64;
        let tx = c.transaction().await.unwrap();
        let st = tx.prepare(QUERY).await.unwrap();
        let portal = tx.bind(&st, &[]).await.unwrap();
        loop {
            let page = tx.query_portal(&portal, 10_000).await.unwrap();
            if page.is_empty() {
                break;
            }
            first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            n += page.len() as u64;
        }
        tx.commit().await.unwrap();
        report("portal, 10 000 rows/Execute", n, start, first.unwrap_or(f64::NAN), before, pid);
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
