//! NULL in a NOT NULL column of a persistent query's sink, on a real daemon: Flink's
//! `table.exec.sink.not-null-enforcer`. `ERROR` (the default) fails the job with 23502 and
//! commits nothing of the epoch; `RESUME JOB '<id>' WITH (... = 'DROP')` processes that epoch
//! again with the rows dropped; `LOG` writes them to `<sink>_dlq`, exactly once across a crash
//! between the epoch's commit and the dead-letter write. Each sink is compared with the batch
//! query over the same input.

mod common;

use std::time::{Duration, Instant};

use common::{connect, count, exec, rows, temp_dir};
use tokio_postgres::Client;

/// The upsert sink's oracle: the last value per non-NULL key. `v` grows with every row
/// written, so the last value of a key is its largest.
const UPSERT_ORACLE: &str = "SELECT k, max(v) FROM src WHERE k IS NOT NULL GROUP BY k";

/// `n` rows of `src` from row number `from` on, `v` = the row number; every `null_every`-th row
/// has a NULL key. Keys repeat (mod 7), so the upsert sink replaces rows.
fn src_values(from: i64, n: i64, null_every: i64) -> String {
    (from..from + n)
        .map(|i| if i % null_every == 0 { format!("(NULL, {i})") } else { format!("({}, {i})", i % 7) })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQLSTATE and message of a statement that must fail.
async fn error_of(client: &Client, sql: &str) -> (String, String) {
    let e = client.batch_execute(sql).await.expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: not a server error: {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// `(status, error, null_rows)` of the job writing `sink`.
async fn job_of(c: &Client, sink: &str) -> (String, Option<String>, String) {
    let r = rows(c, &format!("SELECT status, error, null_rows FROM sluice_jobs WHERE sink = '{sink}'")).await;
    assert_eq!(r.len(), 1, "one job into {sink}: {r:?}");
    (r[0][0].clone().unwrap(), r[0][1].clone(), r[0][2].clone().unwrap())
}

async fn job_id(c: &Client, sink: &str) -> String {
    rows(c, &format!("SELECT job_id FROM sluice_jobs WHERE sink = '{sink}'")).await[0][0].clone().unwrap()
}

/// Creates `src`, the upsert sink `dst`, the append-only sink `all_rows` (NOT NULL `k`, so a
/// duplicate or lost row shows in its count) and a job into each.
async fn create_pipeline(c: &Client) {
    exec(c, "CREATE TABLE src (k BIGINT, v BIGINT)").await;
    exec(c, "CREATE TABLE dst (k BIGINT, v BIGINT, PRIMARY KEY (k) NOT ENFORCED) WITH ('partitions' = '2')").await;
    exec(c, "CREATE TABLE all_rows (k BIGINT NOT NULL, v BIGINT)").await;
    exec(c, "INSERT INTO dst SELECT k, v FROM src").await;
    exec(c, "INSERT INTO all_rows SELECT k, v FROM src").await;
}

/// Both sinks equal the batch queries over `src` without the NULL-key rows.
async fn check_sinks(c: &Client, what: &str) {
    assert_eq!(rows(c, "SELECT k, v FROM dst").await, rows(c, UPSERT_ORACLE).await, "dst {what}");
    assert_eq!(rows(c, "SELECT k, v FROM all_rows").await, rows(c, "SELECT k, v FROM src WHERE k IS NOT NULL").await, "all_rows {what}");
}

/// `ERROR` fails both jobs with 23502 naming the column and the sink, keeps exactly the rows
/// of the epochs before in the sinks, and fails again at every start (a daemon restart);
/// `RESUME JOB ... WITH ('table.exec.sink.not-null-enforcer' = 'DROP')` then processes the
/// failed epoch again, and the jobs keep dropping NULL-key rows after a restart: each sink
/// equals its oracle, with no row lost or duplicated, and `null_rows` counts the dropped rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_fails_the_job_and_resume_with_drop_recovers() {
    let dir = temp_dir("sink-nulls-error");
    let mut server = common::start(&dir);
    let c = connect(server.port()).await;
    create_pipeline(&c).await;
    exec(&c, &format!("INSERT INTO src VALUES {}", src_values(1, 200, 1_000_000))).await;
    exec(&c, "FLUSH").await;
    check_sinks(&c, "before any NULL").await;
    let before = (rows(&c, "SELECT * FROM dst").await, count(&c, "SELECT count(*) FROM all_rows").await);

    // One append of 300 rows, 10 of them with a NULL key: the epoch that reads it fails.
    exec(&c, &format!("INSERT INTO src VALUES {}", src_values(201, 300, 30))).await;
    let (code, msg) = error_of(&c, "FLUSH").await;
    assert_eq!(code, "55000", "{msg}");
    for sink in ["dst", "all_rows"] {
        let (status, error, _) = job_of(&c, sink).await;
        let error = error.unwrap_or_default();
        assert_eq!(status, "FAILED", "{sink}: {error}");
        assert!(error.contains(&format!("null value in column \"k\" of table \"{sink}\" violates not-null constraint")), "{error}");
        assert!(error.contains("SQLSTATE 23502") && error.contains("'table.exec.sink.not-null-enforcer' = 'DROP'"), "{error}");
    }
    assert_eq!((rows(&c, "SELECT * FROM dst").await, count(&c, "SELECT count(*) FROM all_rows").await), before);

    // A restart does not cure it: the jobs read the same epoch and fail again.
    drop(c);
    server.restart(false).expect("restart");
    let c = connect(server.port()).await;
    assert_eq!(error_of(&c, "FLUSH").await.0, "55000");
    assert_eq!(job_of(&c, "dst").await.0, "FAILED");
    assert_eq!(rows(&c, "SELECT * FROM dst").await, before.0);

    let (code, msg) = error_of(&c, &format!("RESUME JOB '{}' WITH ('table.exec.sink.not-null-enforcer' = 'SKIP')", job_id(&c, "dst").await)).await;
    assert_eq!(code, "22023", "{msg}");
    let (code, msg) = error_of(&c, &format!("RESUME JOB '{}' WITH ('sink.parallelism' = '2')", job_id(&c, "dst").await)).await;
    assert_eq!(code, "22023", "{msg}");
    for sink in ["dst", "all_rows"] {
        exec(&c, &format!("RESUME JOB '{}' WITH ('table.exec.sink.not-null-enforcer' = 'DROP')", job_id(&c, sink).await)).await;
    }
    exec(&c, "FLUSH").await;
    check_sinks(&c, "after RESUME JOB ... DROP").await;
    assert_eq!(job_of(&c, "dst").await, ("RUNNING".to_string(), None, "10".to_string()));
    assert_eq!(job_of(&c, "all_rows").await.2, "10");

    // The enforcer is stored with the job: it still drops after a restart.
    exec(&c, &format!("INSERT INTO src VALUES {}", src_values(501, 100, 20))).await;
    drop(c);
    server.restart(false).expect("restart");
    let c = connect(server.port()).await;
    exec(&c, &format!("INSERT INTO src VALUES {}", src_values(601, 100, 20))).await;
    exec(&c, "FLUSH").await;
    check_sinks(&c, "after a restart").await;
    assert_eq!(count(&c, "SELECT count(*) FROM src WHERE k IS NULL").await, 20);
    assert_eq!(job_of(&c, "dst").await.0, "RUNNING");
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `LOG`, set for the session (Flink SQL client's `SET`): the NULL-key rows go to `dst_dlq`,
/// one dead letter each with the row as JSON, the rest to the sinks. The daemon aborts right
/// after an epoch with dead letters committed and before they are written (a failpoint); after
/// the restart they are written once: `dst_dlq` holds exactly the NULL-key rows of `src`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_writes_the_null_rows_to_the_dead_letter_table_exactly_once() {
    let dir = temp_dir("sink-nulls-log");
    let mut server = common::start(&dir);
    let c = connect(server.port()).await;
    let (code, msg) = error_of(&c, "SET 'table.exec.sink.not-null-enforcer' = 'maybe'").await;
    assert_eq!(code, "22023", "{msg}");
    exec(&c, "SET 'table.exec.sink.not-null-enforcer' = 'LOG'").await;
    create_pipeline(&c).await;
    for from in [1, 101, 201] {
        exec(&c, &format!("INSERT INTO src VALUES {}", src_values(from, 100, 9))).await;
        exec(&c, "FLUSH").await;
    }
    check_sinks(&c, "under LOG").await;
    let nulls = count(&c, "SELECT count(*) FROM src WHERE k IS NULL").await;
    assert_eq!(nulls, 33);
    // Both jobs log into their own dead-letter table.
    for dlq in ["dst_dlq", "all_rows_dlq"] {
        assert_eq!(count(&c, &format!("SELECT count(*) FROM {dlq}")).await, nulls, "{dlq}");
    }
    let expected: Vec<Vec<Option<String>>> = rows(&c, "SELECT v FROM src WHERE k IS NULL")
        .await
        .into_iter()
        .map(|r| {
            vec![
                Some("dst".to_string()),
                None,
                None,
                Some(format!("{{\"k\":null,\"v\":{}}}", r[0].as_deref().unwrap())),
            ]
        })
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(rows(&c, "SELECT topic, CAST(\"partition\" AS STRING), CAST(\"offset\" AS STRING), raw FROM dst_dlq").await, expected);
    let errors = rows(&c, "SELECT DISTINCT error FROM dst_dlq").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0][0].as_deref().unwrap().starts_with("null value in column \"k\" of table \"dst\" violates not-null constraint (job "), "{errors:?}");
    assert_eq!(job_of(&c, "dst").await.2, nulls.to_string());

    // Abort between an epoch's commit and its dead-letter write.
    drop(c);
    server.stop().expect("stop");
    server.set_env("SLUICE_FAILPOINTS", Some("checkpoint::before_dead_letters=return(abort)"));
    server.start_again().expect("start with the failpoint");
    let c = connect(server.port()).await;
    exec(&c, &format!("INSERT INTO src VALUES {}", src_values(301, 100, 9))).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.exited() {
        assert!(Instant::now() < deadline, "the daemon did not abort at checkpoint::before_dead_letters");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    server.set_env("SLUICE_FAILPOINTS", None);
    server.start_again().expect("start again");
    let c = connect(server.port()).await;
    exec(&c, "FLUSH").await;
    check_sinks(&c, "after the abort").await;
    let nulls = count(&c, "SELECT count(*) FROM src WHERE k IS NULL").await;
    assert_eq!(nulls, 44);
    for dlq in ["dst_dlq", "all_rows_dlq"] {
        assert_eq!(count(&c, &format!("SELECT count(*) FROM {dlq}")).await, nulls, "{dlq} after the abort");
        assert_eq!(
            rows(&c, &format!("SELECT raw FROM {dlq}")).await,
            rows(&c, "SELECT '{\"k\":null,\"v\":' || CAST(v AS STRING) || '}' FROM src WHERE k IS NULL").await,
            "{dlq} holds each NULL-key row once"
        );
    }
    // A running job that logs into a dead-letter table holds it.
    assert_eq!(error_of(&c, "DROP TABLE dst_dlq").await.0, "2BP01");
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
