//! Live-result latency, printed (not asserted): the time from sending a one-row `INSERT` to
//! receiving its change on a `SUBSCRIBE` of the table (the write's own commit included), on
//! the embedded default; p50, p99 and max over `SLUICE_BENCH_WRITES` writes (default 1 000),
//! for a plain table and for an aggregate over it. Target: p99 under 50 ms.
//!
//! `cargo bench -p sluice-server --bench subscribe`

use std::time::{Duration, Instant};

use futures::{pin_mut, StreamExt};
use sluice_sqllogictest::ServerProcess;
use tokio_postgres::{Client, NoTls};

async fn connect(port: u16) -> Client {
    let (c, conn) = tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=sluice dbname=sluice"), NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Writes `writes` rows one by one into `t` and times each until `subscription` shows a change
/// whose value column `value_at` equals the row's sequence number.
/// Sequence numbers start after `base`; the first write that reaches the subscriber (retried
/// every 200 ms, since writes before the subscription started are not changes of it) is not
/// timed.
async fn measure(writer: &Client, reader: &Client, subscription: &str, value_at: usize, base: i64, writes: i64) -> Option<Vec<Duration>> {
    let stream = reader.query_raw(subscription, Vec::<i64>::new()).await.unwrap();
    pin_mut!(stream);
    let mut warm = base;
    'warm: for _ in 0..50 {
        warm += 1;
        writer.batch_execute(&format!("INSERT INTO t VALUES ({warm}, {})", warm % 10)).await.unwrap();
        while let Ok(Some(Ok(row))) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
            let v: Option<i64> = row.get(value_at);
            if v == Some(warm) {
                break 'warm;
            }
        }
    }
    let mut latencies = Vec::new();
    for seq in warm + 1..=warm + writes {
        let sent = Instant::now();
        writer.batch_execute(&format!("INSERT INTO t VALUES ({seq}, {})", seq % 10)).await.unwrap();
        loop {
            let row = match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                Ok(Some(Ok(r))) => r,
                other => {
                    println!("not measured: the subscription gave {other:?} for write {seq}");
                    return None;
                }
            };
            let op: Option<String> = row.get(0);
            let v: Option<i64> = row.get(value_at);
            if op.as_deref().is_some_and(|o| o.starts_with('+')) && v == Some(seq) {
                break;
            }
        }
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    Some(latencies)
}

fn report(name: &str, l: &[Duration]) {
    println!(
        "{name}: {} writes, write sent -> change received: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        percentile(l, 0.5).as_secs_f64() * 1e3,
        percentile(l, 0.99).as_secs_f64() * 1e3,
        l.last().unwrap().as_secs_f64() * 1e3
    );
}

fn main() {
    let writes: i64 = std::env::var("SLUICE_BENCH_WRITES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let dir = std::env::temp_dir().join(format!("sluice-bench-subscribe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = ServerProcess::start(std::path::Path::new(env!("CARGO_BIN_EXE_sluice")), &dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (writer, reader) = (connect(server.port()).await, connect(server.port()).await);
        writer.batch_execute("CREATE TABLE t (seq BIGINT, k BIGINT)").await.unwrap();
        if let Some(l) = measure(&writer, &reader, "SUBSCRIBE t WITH (SNAPSHOT = false)", 2, 0, writes).await {
            report("SUBSCRIBE t", &l);
        }
        let reader = connect(server.port()).await;
        let agg = "SUBSCRIBE (SELECT k, max(seq) AS m FROM t GROUP BY k) WITH (SNAPSHOT = false)";
        if let Some(l) = measure(&writer, &reader, agg, 3, 1_000_000, writes).await {
            report("SUBSCRIBE (SELECT k, max(seq) ... GROUP BY k)", &l);
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
