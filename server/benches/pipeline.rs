//! End-to-end figures for Sluice on this machine, printed (not asserted):
//!
//! 1. ingest over pgwire: multi-row `INSERT` and `COPY FROM STDIN` (rows/s);
//! 2. the stolen-card pipeline (join + 2-hour TUMBLE + HAVING) over 10 000 customers and
//!    `SLUICE_BENCH_TX` (default 5 000 000) transactions already in the embedded topic:
//!    transactions/s end to end, time to `FLUSH`, peak RSS of the daemon;
//! 3. the same join + window fed by `datagen` into `blackhole`, so the identical SQL can be
//!    timed on Flink: events/s;
//! 4. a non-windowed `GROUP BY` (an updating result) fed by `datagen` into `blackhole`.
//!
//! `cargo bench -p sluice-server --bench pipeline`

use std::time::Instant;

use futures::SinkExt;
use sluice_sqllogictest::ServerProcess;
use tokio_postgres::{Client, NoTls};

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
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

const CUSTOMERS_DDL: &str = "CREATE TABLE `ORCL.ADMIN.CUSTOMERS` (ID BIGINT, FIRST_NAME STRING, LAST_NAME STRING, EMAIL STRING, AVG_CREDIT_SPEND DOUBLE, PRIMARY KEY (ID) NOT ENFORCED)";
const TX_DDL: &str = "CREATE TABLE credit_card_transactions (user_id BIGINT, credit_card_number STRING, amount DOUBLE, transaction_timestamp STRING)";

fn tx_csv(from: u64, n: u64, customers: u64) -> String {
    let mut s = String::with_capacity(n as usize * 48);
    for i in from..from + n {
        let user = (i * 7919) % customers + 1;
        let amount = ((i * 31) % 20000) as f64 / 100.0;
        // One second of event time per transaction: 2-hour windows close as data flows.
        let secs = i;
        let ts = format!("2024-05-{:02} {:02}:{:02}:{:02}", 1 + secs / 86400 % 28, secs / 3600 % 24, secs / 60 % 60, secs % 60);
        s.push_str(&format!("{user},4000-{user:04},{amount},{ts}\n"));
    }
    s
}

/// Checks that the job writing `sink` ran to the end: not failed, and read at least
/// `rows_in` rows; a figure is printed only then.
async fn ran_to_end(c: &Client, sink: &str, rows_in: u64) -> Result<(), String> {
    let r = c
        .query_one("SELECT status, CAST(rows_in AS BIGINT), error FROM sluice_jobs WHERE sink = $1", &[&sink])
        .await
        .map_err(|e| format!("no job into {sink}: {e}"))?;
    let (status, read, error): (String, i64, Option<String>) = (r.get(0), r.get(1), r.get(2));
    if status == "FAILED" || (read as u64) < rows_in {
        return Err(format!("job into {sink} is {status} after reading {read} of {rows_in} rows: {}", error.unwrap_or_default()));
    }
    Ok(())
}

/// Prints `figure` if the job into `sink` ran to the end, else why there is no figure.
async fn print_if_complete(c: &Client, sink: &str, rows_in: u64, figure: String) {
    match ran_to_end(c, sink, rows_in).await {
        Ok(()) => println!("{figure}"),
        Err(e) => println!("not measured: {e}"),
    }
}

async fn copy_csv(c: &Client, table: &str, data: String) -> u64 {
    let sink = c.copy_in(&format!("COPY {table} FROM STDIN WITH (FORMAT csv)")).await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    sink.finish().await.unwrap()
}

fn main() {
    let total: u64 = std::env::var("SLUICE_BENCH_TX").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000_000);
    let customers: u64 = 10_000;
    let dir = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = ServerProcess::start(std::path::Path::new(env!("CARGO_BIN_EXE_sluice")), &dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let c = connect(server.port()).await;
        c.batch_execute(CUSTOMERS_DDL).await.unwrap();
        c.batch_execute(TX_DDL).await.unwrap();
        c.batch_execute("CREATE TABLE ingest (user_id BIGINT, credit_card_number STRING, amount DOUBLE, transaction_timestamp STRING)").await.unwrap();

        // 1. Ingest over pgwire.
        let rows = 100_000u64;
        let t = Instant::now();
        for chunk in 0..rows / 1000 {
            let values: Vec<String> = tx_csv(chunk * 1000, 1000, customers)
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    format!("({}, '{}', {}, '{}')", f[0], f[1], f[2], f[3])
                })
                .collect();
            c.batch_execute(&format!("INSERT INTO ingest VALUES {}", values.join(", "))).await.unwrap();
        }
        let insert_rate = rows as f64 / t.elapsed().as_secs_f64();
        // One 1 000 000-row INSERT (about 60 MB of SQL): its time and the daemon's peak RSS.
        let big_rows = 1_000_000u64;
        let values: Vec<String> = tx_csv(0, big_rows, customers)
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                format!("({}, '{}', {}, '{}')", f[0], f[1], f[2], f[3])
            })
            .collect();
        let big = format!("INSERT INTO ingest VALUES {}", values.join(", "));
        drop(values);
        let rss_before = peak_rss_mib(server.pid());
        let t = Instant::now();
        c.batch_execute(&big).await.unwrap();
        println!(
            "ingest: one {big_rows}-row INSERT ({:.0} MB of SQL): {:.1} s, daemon peak RSS {rss_before:.0} MiB before, {:.0} MiB after",
            big.len() as f64 / 1e6,
            t.elapsed().as_secs_f64(),
            peak_rss_mib(server.pid())
        );
        drop(big);
        let copy_rows = 1_000_000u64;
        let data = tx_csv(0, copy_rows, customers);
        let t = Instant::now();
        copy_csv(&c, "ingest", data).await;
        let copy_rate = copy_rows as f64 / t.elapsed().as_secs_f64();
        println!("ingest: multi-row INSERT (1000 rows/statement): {insert_rate:.0} rows/s");
        println!("ingest: COPY FROM STDIN (csv): {copy_rate:.0} rows/s");

        // 1b. Batch SELECT of one key of a 1 000 000-row upsert table: read by key, and by a
        // filter that cannot be pushed (every row decoded and filtered).
        c.batch_execute("CREATE TABLE by_id (id BIGINT, name STRING, PRIMARY KEY (id) NOT ENFORCED)").await.unwrap();
        let keyed = 1_000_000u64;
        copy_csv(&c, "by_id", (0..keyed).map(|i| format!("{i},name{i}\n")).collect()).await;
        let lookups = 200u64;
        let t = Instant::now();
        for i in 0..lookups {
            let k = (i * 4_999) % keyed;
            let msgs = c.simple_query(&format!("SELECT * FROM by_id WHERE id = {k}")).await.unwrap();
            let n = msgs.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count();
            assert_eq!(n, 1, "key {k}");
        }
        let by_key = t.elapsed().as_secs_f64() / lookups as f64;
        let scans = 5u64;
        let t = Instant::now();
        for i in 0..scans {
            c.simple_query(&format!("SELECT * FROM by_id WHERE id + 0 = {i}")).await.unwrap();
        }
        let by_scan = t.elapsed().as_secs_f64() / scans as f64;
        println!(
            "batch SELECT of one key of a {keyed}-row upsert table: {:.2} ms by key, {:.0} ms by a scan",
            by_key * 1000.0,
            by_scan * 1000.0
        );

        // 2. The stolen-card pipeline over data already in the topics.
        let mut cust = String::new();
        for id in 1..=customers {
            cust.push_str(&format!("{id},First{id},Last{id},user{id}@example.com,{}\n", 50 + id % 400));
        }
        copy_csv(&c, "`ORCL.ADMIN.CUSTOMERS`", cust).await;
        let chunk = 500_000u64;
        let mut loaded = 0;
        while loaded < total {
            let n = chunk.min(total - loaded);
            copy_csv(&c, "credit_card_transactions", tx_csv(loaded, n, customers)).await;
            loaded += n;
        }
        let sql = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/stolen-cards/pipeline.sql")).unwrap();
        let t = Instant::now();
        c.batch_execute(&sql).await.unwrap();
        let tf = Instant::now();
        c.batch_execute("FLUSH").await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        let flush = tf.elapsed().as_secs_f64();
        let flagged = c.query_one("SELECT count(*) FROM fd_possible_stolen_card", &[]).await.unwrap().get::<_, i64>(0);
        let figure = format!(
            "stolen-card pipeline (embedded topics, {customers} customers, {total} transactions): {:.0} transactions/s end to end, FLUSH returned after {flush:.1} s, {flagged} cards flagged, daemon peak RSS {:.0} MiB",
            total as f64 / secs,
            peak_rss_mib(server.pid())
        );
        // The join read every customer and transaction, the window every joined row.
        match ran_to_end(&c, "fd_transactions_enriched", total + customers).await {
            Ok(()) => print_if_complete(&c, "fd_possible_stolen_card", total, figure).await,
            Err(e) => println!("not measured: {e}"),
        }

        // 3. datagen -> join + TUMBLE + SUM + HAVING -> blackhole.
        let gen_sql = format!(
            "CREATE TABLE gen_customers (id BIGINT, avg_credit_spend DOUBLE) WITH ('connector' = 'datagen', 'rows-per-second' = '1000000000',
               'fields.id.kind' = 'sequence', 'fields.id.start' = '0', 'fields.id.end' = '{}', 'fields.avg_credit_spend.min' = '50', 'fields.avg_credit_spend.max' = '500');
             CREATE TABLE gen_tx (seq BIGINT, amount DOUBLE, user_id AS seq % {customers}, ts AS TO_TIMESTAMP_LTZ(seq * 10, 3),
               WATERMARK FOR ts AS ts) WITH ('connector' = 'datagen', 'rows-per-second' = '1000000000',
               'fields.seq.kind' = 'sequence', 'fields.seq.start' = '0', 'fields.seq.end' = '{}', 'fields.amount.min' = '1', 'fields.amount.max' = '200');
             CREATE TABLE gen_out (window_start TIMESTAMP(3), window_end TIMESTAMP(3), user_id BIGINT, total DOUBLE) WITH ('connector' = 'blackhole');",
            customers - 1,
            total - 1
        );
        c.batch_execute(&gen_sql).await.unwrap();
        let t = Instant::now();
        c.batch_execute(
            "INSERT INTO gen_out SELECT window_start, window_end, user_id, SUM(amount) FROM TABLE(TUMBLE(TABLE gen_tx, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end, user_id HAVING SUM(amount) > 100",
        )
        .await
        .unwrap();
        c.batch_execute("FLUSH").await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        let figure = format!("datagen -> TUMBLE + SUM + HAVING -> blackhole: {:.0} events/s ({total} events)", total as f64 / secs);
        print_if_complete(&c, "gen_out", total, figure).await;
        c.batch_execute("CREATE TABLE gen_join_out (window_start TIMESTAMP(3), window_end TIMESTAMP(3), user_id BIGINT, total DOUBLE, avg_spend DOUBLE) WITH ('connector' = 'blackhole')")
            .await
            .unwrap();
        let t = Instant::now();
        c.batch_execute(
            "INSERT INTO gen_join_out SELECT window_start, window_end, user_id, SUM(amount), MAX(avg_credit_spend)
             FROM TABLE(TUMBLE(TABLE (SELECT t.user_id, t.amount, t.ts, c.avg_credit_spend FROM gen_tx t JOIN gen_customers c ON t.user_id = c.id), DESCRIPTOR(ts), INTERVAL '10' SECOND))
             GROUP BY window_start, window_end, user_id HAVING SUM(amount) > MAX(avg_credit_spend)",
        )
        .await
        .unwrap();
        c.batch_execute("FLUSH").await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        let figure = format!("datagen -> join + TUMBLE + SUM + HAVING -> blackhole: {:.0} events/s ({total} events)", total as f64 / secs);
        print_if_complete(&c, "gen_join_out", total + customers, figure).await;
        // 4. datagen -> non-windowed GROUP BY (an updating result) -> blackhole.
        c.batch_execute("CREATE TABLE gen_group_out (user_id BIGINT, total DOUBLE, n BIGINT, PRIMARY KEY (user_id) NOT ENFORCED) WITH ('connector' = 'blackhole')")
            .await
            .unwrap();
        let t = Instant::now();
        c.batch_execute("INSERT INTO gen_group_out SELECT user_id, SUM(amount), COUNT(*) FROM gen_tx GROUP BY user_id").await.unwrap();
        c.batch_execute("FLUSH").await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        let figure =
            format!("datagen -> GROUP BY user_id ({customers} groups, updating) -> blackhole: {:.0} events/s ({total} events)", total as f64 / secs);
        print_if_complete(&c, "gen_group_out", total, figure).await;
        println!("daemon peak RSS after all runs: {:.0} MiB", peak_rss_mib(server.pid()));
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
