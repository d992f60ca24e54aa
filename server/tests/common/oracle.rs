//! The oracle of persistent queries shared by the pipeline and crash-injection tests: one query
//! per streaming operator over the tables `tx_<s>` (append-only, watermarked) and `cust_<s>`
//! (an upsert table); once input is drained (`FLUSH`), each streaming result equals the same SQL
//! run as a batch query by DataFusion over the same final input.

use super::{exec, rows};

/// One query per streaming operator: (sink DDL columns, query, batch oracle query).
pub fn queries(s: &str) -> Vec<(String, String, String)> {
    let wm = format!("(SELECT CAST(max(ts) AS BIGINT) FROM tx_{s})");
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
            format!("SELECT {ws} AS ws, {ws} + 3600000 AS we, user_id, SUM(amount), COUNT(*) FROM tx_{s} WHERE {ws} + 3600000 <= {wm} GROUP BY 1, 2, user_id", ws = "(CAST(ts AS BIGINT) / 3600000) * 3600000"),
        ),
        (
            format!("CREATE TABLE q_hop_{s} (ws TIMESTAMP(3), we TIMESTAMP(3), total BIGINT)"),
            format!("SELECT window_start, window_end, SUM(amount) FROM TABLE(HOP(TABLE tx_{s}, DESCRIPTOR(ts), INTERVAL '20' MINUTE, INTERVAL '1' HOUR)) GROUP BY window_start, window_end HAVING SUM(amount) > 0"),
            // Each row is in the three 1-hour windows that start at the three 20-minute marks
            // at or before it, by plain arithmetic.
            format!("SELECT {ws} AS ws, {ws} + 3600000 AS we, SUM(amount) FROM tx_{s} CROSS JOIN (VALUES (0), (1), (2)) AS h(k) WHERE {ws} + 3600000 <= {wm} GROUP BY 1, 2 HAVING SUM(amount) > 0", ws = "(CAST(ts AS BIGINT) / 1200000 - k) * 1200000"),
        ),
    ]
}

pub async fn create_pipeline(c: &tokio_postgres::Client, s: &str) {
    exec(c, &format!("CREATE TABLE tx_{s} (user_id BIGINT, amount BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)")).await;
    exec(c, &format!("CREATE TABLE cust_{s} (id BIGINT, spend BIGINT, PRIMARY KEY (id) NOT ENFORCED)")).await;
    for (ddl, q, _) in queries(s) {
        exec(c, &ddl).await;
        let sink = ddl.split_whitespace().nth(2).unwrap().to_string();
        exec(c, &format!("INSERT INTO {sink} {q}")).await;
    }
}

pub async fn check_oracle(c: &tokio_postgres::Client, s: &str) {
    exec(c, "FLUSH").await;
    for (ddl, q, oracle) in queries(s) {
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

pub fn values(rows: &[(i64, i64, i64)]) -> String {
    rows.iter()
        .map(|(u, a, m)| format!("({u}, {a}, TIMESTAMP '2024-01-01 00:00:00' + INTERVAL '{m}' MINUTE)"))
        .collect::<Vec<_>>()
        .join(", ")
}

