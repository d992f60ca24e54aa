//! The oracle of persistent queries shared by the pipeline and crash-injection tests: one query
//! per streaming operator over the tables `tx_<s>` (append-only, watermarked) and `cust_<s>`
//! (an upsert table); once input is drained (`FLUSH`), each streaming result equals the same SQL
//! run as a batch query by DataFusion over the same final input.
//!
//! With out-of-order input (`create_pipeline_late`), `tx_<s>` declares a watermark delay, and
//! every row is also written to `arr_<s>` with the watermark it met on arrival (`wm_ms`, known
//! to the feeder because it drains the input after every insert): the windowed oracles read
//! `arr_<s>` and leave out each (row, window) whose window had closed when the row arrived,
//! as a window operator drops late rows (window end at or before the watermark).

use super::{exec, rows};

/// One query per streaming operator: (sink DDL columns, query, batch oracle query).
pub fn queries(s: &str) -> Vec<(String, String, String)> {
    queries_late(s, None)
}

/// [`queries`], with the windowed oracles over `arr_<s>` when `delay_ms` is given (see the
/// module docs).
fn queries_late(s: &str, delay_ms: Option<i64>) -> Vec<(String, String, String)> {
    let wm = format!("(SELECT CAST(max(ts) AS BIGINT) - {} FROM tx_{s})", delay_ms.unwrap_or(0));
    // The windowed oracles' input, and for each window end `we` the condition that the row
    // was not late for it.
    let win_in = if delay_ms.is_some() { format!("arr_{s}") } else { format!("tx_{s}") };
    let on_time = |we: &str| if delay_ms.is_some() { format!(" AND {we} > wm_ms") } else { String::new() };
    vec![
        (
            format!("CREATE TABLE q_filter_{s} (user_id BIGINT, a2 BIGINT)"),
            format!("SELECT user_id, amount * 2 FROM tx_{s} WHERE amount > 0"),
            String::new(),
        ),
        (
            format!("CREATE TABLE q_join_{s} (user_id BIGINT, amount BIGINT, spend BIGINT)"),
            format!("SELECT t.user_id, t.amount, c.spend FROM tx_{s} t JOIN cust_{s} c ON t.user_id = c.id"),
            String::new(),
        ),
        (
            format!("CREATE TABLE q_left_{s} (user_id BIGINT, amount BIGINT, spend BIGINT)"),
            format!("SELECT t.user_id, t.amount, c.spend FROM tx_{s} t LEFT JOIN cust_{s} c ON t.user_id = c.id"),
            String::new(),
        ),
        (
            // Both inputs updating, several rows per key: retractions must find their row.
            format!("CREATE TABLE q_self_{s} (a BIGINT, spend BIGINT, b BIGINT)"),
            format!("SELECT x.id, x.spend, y.id FROM cust_{s} x JOIN cust_{s} y ON x.spend = y.spend"),
            String::new(),
        ),
        (
            format!("CREATE TABLE q_group_{s} (user_id BIGINT, n BIGINT, total BIGINT, lo BIGINT, hi BIGINT, PRIMARY KEY (user_id) NOT ENFORCED)"),
            format!("SELECT user_id, COUNT(*), SUM(amount), MIN(amount), MAX(amount) FROM tx_{s} GROUP BY user_id"),
            String::new(),
        ),
        (
            format!("CREATE TABLE q_joinagg_{s} (spend BIGINT, total BIGINT)"),
            format!("SELECT c.spend, SUM(t.amount) FROM tx_{s} t JOIN cust_{s} c ON t.user_id = c.id GROUP BY c.spend"),
            String::new(),
        ),
        (
            format!("CREATE TABLE q_tumble_{s} (ws TIMESTAMP(3), we TIMESTAMP(3), user_id BIGINT, total BIGINT, n BIGINT)"),
            format!("SELECT window_start, window_end, user_id, SUM(amount), COUNT(*) FROM TABLE(TUMBLE(TABLE tx_{s}, DESCRIPTOR(ts), INTERVAL '1' HOUR)) GROUP BY window_start, window_end, user_id"),
            // The oracle's windows by plain arithmetic on the timestamps, not the window TVF.
            format!(
                "SELECT {ws} AS ws, {ws} + 3600000 AS we, user_id, SUM(amount), COUNT(*) FROM {win_in} WHERE {ws} + 3600000 <= {wm}{late} GROUP BY 1, 2, user_id",
                ws = "(CAST(ts AS BIGINT) / 3600000) * 3600000",
                late = on_time("(CAST(ts AS BIGINT) / 3600000) * 3600000 + 3600000")
            ),
        ),
        (
            format!("CREATE TABLE q_hop_{s} (ws TIMESTAMP(3), we TIMESTAMP(3), total BIGINT)"),
            format!("SELECT window_start, window_end, SUM(amount) FROM TABLE(HOP(TABLE tx_{s}, DESCRIPTOR(ts), INTERVAL '20' MINUTE, INTERVAL '1' HOUR)) GROUP BY window_start, window_end HAVING SUM(amount) > 0"),
            // Each row is in the three 1-hour windows that start at the three 20-minute marks
            // at or before it, by plain arithmetic.
            format!(
                "SELECT {ws} AS ws, {ws} + 3600000 AS we, SUM(amount) FROM {win_in} CROSS JOIN (VALUES (0), (1), (2)) AS h(k) WHERE {ws} + 3600000 <= {wm}{late} GROUP BY 1, 2 HAVING SUM(amount) > 0",
                ws = "(CAST(ts AS BIGINT) / 1200000 - k) * 1200000",
                late = on_time("(CAST(ts AS BIGINT) / 1200000 - k) * 1200000 + 3600000")
            ),
        ),
    ]
}

pub async fn create_pipeline(c: &tokio_postgres::Client, s: &str) {
    create(c, s, None).await
}

/// The pipeline over out-of-order input: `tx_<s>`'s watermark trails its largest `ts` by
/// `delay_min` minutes, and `arr_<s>` takes each row with its arrival watermark (module docs).
pub async fn create_pipeline_late(c: &tokio_postgres::Client, s: &str, delay_min: i64) {
    create(c, s, Some(delay_min)).await
}

async fn create(c: &tokio_postgres::Client, s: &str, delay_min: Option<i64>) {
    let wm = match delay_min {
        Some(d) => {
            exec(c, &format!("CREATE TABLE arr_{s} (user_id BIGINT, amount BIGINT, ts TIMESTAMP(3), wm_ms BIGINT)")).await;
            format!("ts - INTERVAL '{d}' MINUTE")
        }
        None => "ts".to_string(),
    };
    exec(c, &format!("CREATE TABLE tx_{s} (user_id BIGINT, amount BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS {wm})")).await;
    exec(c, &format!("CREATE TABLE cust_{s} (id BIGINT, spend BIGINT, PRIMARY KEY (id) NOT ENFORCED)")).await;
    for (ddl, q, _) in queries(s) {
        exec(c, &ddl).await;
        let sink = ddl.split_whitespace().nth(2).unwrap().to_string();
        exec(c, &format!("INSERT INTO {sink} {q}")).await;
    }
}

pub async fn check_oracle(c: &tokio_postgres::Client, s: &str) {
    check(c, s, None).await
}

/// [`check_oracle`] for a pipeline made by [`create_pipeline_late`] with `delay_min`.
pub async fn check_oracle_late(c: &tokio_postgres::Client, s: &str, delay_min: i64) {
    check(c, s, Some(delay_min * 60_000)).await
}

async fn check(c: &tokio_postgres::Client, s: &str, delay_ms: Option<i64>) {
    exec(c, "FLUSH").await;
    for (ddl, q, oracle) in queries_late(s, delay_ms) {
        let sink = ddl.split_whitespace().nth(2).unwrap().to_string();
        // Windowed sinks are read with their window bounds as ms since the epoch, as the
        // oracle computes them.
        let select = if sink.starts_with("q_tumble_") {
            format!("SELECT CAST(ws AS BIGINT), CAST(we AS BIGINT), user_id, total, n FROM {sink}")
        } else if sink.starts_with("q_hop_") {
            format!("SELECT CAST(ws AS BIGINT), CAST(we AS BIGINT), total FROM {sink}")
        } else {
            format!("SELECT * FROM {sink}")
        };
        let streaming = rows(c, &select).await;
        let batch = rows(c, if oracle.is_empty() { &q } else { &oracle }).await;
        assert_eq!(streaming, batch, "streaming result of {sink} differs from the batch oracle\nquery: {q}");
    }
    let failed = rows(c, "SELECT job_id, error FROM sluice_jobs WHERE error IS NOT NULL").await;
    assert!(failed.is_empty(), "failed jobs: {failed:?}");
}

/// `VALUES` rows of `tx_<s>`: (user_id, amount, minutes after 2024-01-01 00:00).
pub fn values(rows: &[(i64, i64, i64)]) -> String {
    rows.iter().map(|(u, a, m)| format!("({u}, {a}, {})", minute(*m))).collect::<Vec<_>>().join(", ")
}

/// `VALUES` rows of `arr_<s>`: [`values`] with each row's arrival watermark (ms since the epoch).
pub fn arrival_values(rows: &[(i64, i64, i64)], wm_ms: i64) -> String {
    rows.iter().map(|(u, a, m)| format!("({u}, {a}, {}, {wm_ms})", minute(*m))).collect::<Vec<_>>().join(", ")
}

/// 2024-01-01 00:00 in ms since the epoch, the origin of [`values`]'s minutes.
pub const ORIGIN_MS: i64 = 1_704_067_200_000;

fn minute(m: i64) -> String {
    format!("TIMESTAMP '2024-01-01 00:00:00' + INTERVAL '{m}' MINUTE")
}

