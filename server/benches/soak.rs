//! Soak: the stolen-card pipeline fed at a steady rate for about ten minutes, with a bounded
//! key space and a state TTL, printing once a minute the daemon's RSS and the jobs' operator
//! state (rows and bytes in the store), which should stay flat after warm-up. Figures, not
//! assertions.
//!
//! The feed, every second: `SLUICE_SOAK_RATE` transactions (default 20 000) over 10 000
//! customers, one second of event time per transaction (so the 2-hour windows close as data
//! flows), and an update of a sixtieth of the customers (each customer changes once a minute,
//! as a CDC source would deliver). Three jobs: the seed's join and 2-hour TUMBLE, and a
//! `GROUP BY` of the transactions per event-time minute, whose key space never ends. With
//! `SET 'table.exec.state.ttl'` (`SLUICE_SOAK_TTL`, default `2 min`), join rows and groups not
//! written for that long expire; `SLUICE_SOAK_TTL=0` shows the growth without it.
//!
//! `cargo bench -p sluice-server --bench soak` (`SLUICE_SOAK_SECS`, default 600).

use std::time::{Duration, Instant};

use futures::SinkExt;
use sluice_sqllogictest::ServerProcess;
use tokio_postgres::{Client, NoTls};

const CUSTOMERS: u64 = 10_000;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
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

async fn copy_csv(c: &Client, table: &str, data: String) {
    let sink = c.copy_in(&format!("COPY {table} FROM STDIN WITH (FORMAT csv)")).await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    sink.finish().await.unwrap();
}

/// Transactions `from..from + n`: user, card, amount, event time (one second each).
fn tx_csv(from: u64, n: u64) -> String {
    let mut s = String::with_capacity(n as usize * 48);
    for i in from..from + n {
        let user = (i * 7919) % CUSTOMERS + 1;
        let amount = ((i * 31) % 20000) as f64 / 100.0;
        let ts = chrono_like(i);
        s.push_str(&format!("{user},4000-{user:04},{amount},{ts}\n"));
    }
    s
}

/// `2024-01-01 00:00:00` plus `secs` seconds, as `YYYY-MM-DD HH:MM:SS`, with 28-day months (every
/// date valid, the order kept).
fn chrono_like(secs: u64) -> String {
    let days = secs / 86_400;
    let (month, day) = (days / 28 % 12 + 1, days % 28 + 1);
    let year = 2024 + days / 336;
    format!("{year}-{month:02}-{day:02} {:02}:{:02}:{:02}", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// Customers `ids`, with a spend that changes with `version`.
fn customers_csv(ids: impl Iterator<Item = u64>, version: u64) -> String {
    ids.map(|id| format!("{id},First{id},Last{id},user{id}@example.com,{}\n", 50 + (id + version) % 400)).collect()
}

/// Per job: (sink, status, rows_in, state_rows, state_bytes, error).
async fn jobs(c: &Client) -> Vec<(String, String, u64, u64, u64, Option<String>)> {
    let rows = c
        .query(
            "SELECT sink, status, CAST(rows_in AS BIGINT), CAST(state_rows AS BIGINT), CAST(state_bytes AS BIGINT), error FROM sluice_jobs",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (r.get(0), r.get(1), r.get::<_, i64>(2) as u64, r.get::<_, i64>(3) as u64, r.get::<_, i64>(4) as u64, r.get(5))
        })
        .collect()
}

fn main() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let secs = env("SLUICE_SOAK_SECS", 600);
    let rate = env("SLUICE_SOAK_RATE", 20_000);
    let ttl = std::env::var("SLUICE_SOAK_TTL").unwrap_or_else(|_| "2 min".into());
    let dir = std::env::temp_dir().join(format!("sluice-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = ServerProcess::start(std::path::Path::new(env!("CARGO_BIN_EXE_sluice")), &dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let complete = rt.block_on(async {
        let c = connect(server.port()).await;
        c.batch_execute(&format!("SET 'table.exec.state.ttl' = '{ttl}'")).await.unwrap();
        let sql = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/stolen-cards/pipeline.sql")).unwrap();
        c.batch_execute(&sql).await.unwrap();
        c.batch_execute(
            "CREATE TABLE tx_per_minute (minute STRING, n BIGINT, total DOUBLE, PRIMARY KEY (minute) NOT ENFORCED);
             INSERT INTO tx_per_minute SELECT SUBSTRING(transaction_timestamp FROM 1 FOR 16), COUNT(*), SUM(amount)
               FROM credit_card_transactions GROUP BY SUBSTRING(transaction_timestamp FROM 1 FOR 16);",
        )
        .await
        .unwrap();
        copy_csv(&c, "`ORCL.ADMIN.CUSTOMERS`", customers_csv(1..=CUSTOMERS, 0)).await;
        println!("soak: {rate} transactions/s for {secs} s, state TTL '{ttl}', {CUSTOMERS} customers");
        println!("soak: minute, transactions fed, daemon RSS MiB, state rows (join rows + groups), state MiB in the store, per job rows/bytes");
        let start = Instant::now();
        let (mut fed, mut second) = (0u64, 0u64);
        let mut samples: Vec<(f64, u64, u64)> = Vec::new();
        while start.elapsed() < Duration::from_secs(secs) {
            let tick = Instant::now();
            copy_csv(&c, "credit_card_transactions", tx_csv(fed, rate)).await;
            fed += rate;
            let per_sec = CUSTOMERS / 60;
            let first = (second % 60) * per_sec + 1;
            copy_csv(&c, "`ORCL.ADMIN.CUSTOMERS`", customers_csv(first..first + per_sec, second / 60 + 1)).await;
            second += 1;
            if second % 60 == 0 {
                let js = jobs(&c).await;
                if let Some(j) = js.iter().find(|j| j.1 != "RUNNING") {
                    println!("soak: stopped: job into {} is {}: {}", j.0, j.1, j.5.clone().unwrap_or_default());
                    return false;
                }
                let (rows, bytes): (u64, u64) = (js.iter().map(|j| j.3).sum(), js.iter().map(|j| j.4).sum());
                let rss = rss_mib(server.pid());
                let per_job: Vec<String> = js.iter().map(|j| format!("{} {}/{:.1} MiB", j.0, j.3, j.4 as f64 / 1048576.0)).collect();
                println!(
                    "soak: {:>2} {fed:>10} {rss:>7.0} {rows:>10} {:>8.1}  [{}]",
                    second / 60,
                    bytes as f64 / 1048576.0,
                    per_job.join(", ")
                );
                samples.push((rss, rows, bytes));
            }
            if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        // The run counts only if every job is still running and caught up with the feed.
        c.batch_execute("FLUSH").await.unwrap();
        let js = jobs(&c).await;
        if let Some(j) = js.iter().find(|j| j.1 != "RUNNING") {
            println!("soak: incomplete: job into {} is {}", j.0, j.1);
            return false;
        }
        let after = samples.get(2..).unwrap_or(&[]);
        if after.len() < 2 {
            println!("soak: too short for a figure after warm-up (needs at least 4 minutes)");
            return false;
        }
        let range = |f: &dyn Fn(&(f64, u64, u64)) -> f64| {
            let v: Vec<f64> = after.iter().map(f).collect();
            (v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(0.0, f64::max))
        };
        let (rss_lo, rss_hi) = range(&|s| s.0);
        let (rows_lo, rows_hi) = range(&|s| s.1 as f64);
        let (b_lo, b_hi) = range(&|s| s.2 as f64 / 1048576.0);
        println!(
            "soak: after the first 2 minutes ({} samples, {fed} transactions fed): RSS {rss_lo:.0} - {rss_hi:.0} MiB, state rows {rows_lo:.0} - {rows_hi:.0}, state {b_lo:.1} - {b_hi:.1} MiB",
            after.len()
        );
        true
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    if !complete {
        std::process::exit(1);
    }
}
