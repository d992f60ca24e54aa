//! Declared string lengths of a persistent query's sink, on a real daemon: Flink's
//! `table.exec.sink.type-length-enforcer` with Sluice's `ERROR` default. `ERROR` fails the job
//! with 22001 and commits nothing of the epoch, also at every start after a restart;
//! `RESUME JOB '<id>' WITH (... = 'TRIM_PAD')` processes that epoch again with the values cut to
//! the column's length (and `CHAR(n)` padded), and the enforcer stays with the job across a
//! restart. Each sink is compared with the batch query that computes what it should hold.

mod common;

use common::{connect, count, exec, rows, temp_dir};
use tokio_postgres::Client;

/// What the upsert sink `dst (k, v VARCHAR(3), c CHAR(4))` holds under `TRIM_PAD`: the last
/// value per key (`v` grows with the row number), cut to 3 and to 4 characters, `c` padded.
const TRIMMED_ORACLE: &str = "SELECT k, substr(s, 1, 3), rpad(substr(s, 1, 4), 4, ' ') FROM src s1 \
     WHERE n = (SELECT max(n) FROM src s2 WHERE s2.k = s1.k)";

/// `rows` rows of `src (k, n, s)` from row number `from` on: `k` = n mod 5, `s` a string of
/// n mod 9 characters (some multibyte); every `long_every`-th row gets a 12-character `s`.
fn src_values(from: i64, rows: i64, long_every: i64) -> String {
    (from..from + rows)
        .map(|n| {
            let s: String = if n % long_every == 0 { "ñandú-tapir!".to_string() } else { "äbcdefghi".chars().take((n % 9) as usize).collect() };
            format!("({}, {n}, '{s}')", n % 5)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQLSTATE and message of a statement that must fail.
async fn error_of(client: &Client, sql: &str) -> (String, String) {
    let e = client.batch_execute(sql).await.expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: not a server error: {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// `(status, error)` of the job writing `sink`, and its id.
async fn job_of(c: &Client, sink: &str) -> (String, Option<String>, String) {
    let r = rows(c, &format!("SELECT status, error, job_id FROM sluice_jobs WHERE sink = '{sink}'")).await;
    assert_eq!(r.len(), 1, "one job into {sink}: {r:?}");
    (r[0][0].clone().unwrap(), r[0][1].clone(), r[0][2].clone().unwrap())
}

/// `ERROR` fails the job with 22001 naming the column, the sink and the job, keeps exactly the
/// rows of the epochs before, and fails again after a restart; `RESUME JOB ... WITH
/// ('table.exec.sink.type-length-enforcer' = 'TRIM_PAD')` then processes the failed epoch again
/// and the job keeps cutting after a restart: the sink equals its oracle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_fails_the_job_and_resume_with_trim_pad_recovers() {
    let dir = temp_dir("sink-lengths-error");
    let mut server = common::start(&dir);
    let c = connect(server.port()).await;
    exec(&c, "CREATE TABLE src (k BIGINT, n BIGINT, s STRING)").await;
    exec(&c, "CREATE TABLE dst (k BIGINT, v VARCHAR(3), c CHAR(4), PRIMARY KEY (k) NOT ENFORCED) WITH ('partitions' = '2')").await;
    exec(&c, "INSERT INTO dst SELECT k, s AS v, s AS c FROM src WHERE char_length(s) <= 3").await;
    let (_, _, id) = job_of(&c, "dst").await;
    exec(&c, &format!("INSERT INTO src VALUES {}", src_values(1, 100, 1_000_000))).await;
    exec(&c, "FLUSH").await;
    let before = rows(&c, "SELECT k, v, c FROM dst").await;
    assert_eq!(before.len(), 5, "{before:?}");
    assert!(before.iter().all(|r| r[2].as_deref().is_none_or(|c| c.chars().count() == 4)), "CHAR(4) padded under ERROR: {before:?}");

    // The same query without the filter, into a second sink: its first epoch has values too
    // long.
    exec(&c, "CREATE TABLE all_rows (k BIGINT, v VARCHAR(3), c CHAR(4), PRIMARY KEY (k) NOT ENFORCED)").await;
    exec(&c, "INSERT INTO all_rows SELECT k, s AS v, s AS c FROM src").await;
    let (code, msg) = error_of(&c, "FLUSH").await;
    assert_eq!(code, "55000", "{msg}");
    let (status, error, all_id) = job_of(&c, "all_rows").await;
    let error = error.unwrap_or_default();
    assert_eq!(status, "FAILED", "{error}");
    assert!(error.starts_with("value too long for type character varying(3) (column \"v\" of table \"all_rows\"): job "), "{error}");
    assert!(error.contains(&all_id) && error.ends_with("(SQLSTATE 22001)"), "{error}");
    assert_eq!(count(&c, "SELECT count(*) FROM all_rows").await, 0, "nothing of the failed epoch");
    assert_eq!(job_of(&c, "dst").await.0, "RUNNING");

    // A restart does not cure it.
    drop(c);
    server.restart(false).expect("restart");
    let c = connect(server.port()).await;
    assert_eq!(error_of(&c, "FLUSH").await.0, "55000");
    assert_eq!(job_of(&c, "all_rows").await.0, "FAILED");
    assert_eq!(rows(&c, "SELECT k, v, c FROM dst").await, before);

    // Bad values and keys are refused and change nothing.
    let (code, msg) = error_of(&c, &format!("RESUME JOB '{all_id}' WITH ('table.exec.sink.type-length-enforcer' = 'CUT')")).await;
    assert_eq!(code, "22023", "{msg}");
    let (code, msg) =
        error_of(&c, &format!("RESUME JOB '{all_id}' WITH ('table.exec.sink.type-length-enforcer' = 'TRIM_PAD', 'table.exec.sink.not-null-enforcer' = 'NO')")).await;
    assert_eq!(code, "22023", "{msg}");
    assert_eq!(job_of(&c, "all_rows").await.0, "FAILED");
    // Both keys at once.
    exec(&c, &format!("RESUME JOB '{all_id}' WITH ('table.exec.sink.type-length-enforcer' = 'TRIM_PAD', 'table.exec.sink.not-null-enforcer' = 'DROP')")).await;
    exec(&c, "FLUSH").await;
    assert_eq!(job_of(&c, "all_rows").await, ("RUNNING".to_string(), None, all_id.clone()));
    assert_eq!(rows(&c, "SELECT k, v, c FROM all_rows").await, rows(&c, TRIMMED_ORACLE).await, "after RESUME ... TRIM_PAD");

    // The enforcer is stored with the job: it still cuts after a restart.
    exec(&c, &format!("INSERT INTO src VALUES {}", src_values(101, 100, 7))).await;
    drop(c);
    server.restart(false).expect("restart");
    let c = connect(server.port()).await;
    exec(&c, &format!("INSERT INTO src VALUES {}", src_values(201, 100, 7))).await;
    exec(&c, "FLUSH").await;
    assert_eq!(rows(&c, "SELECT k, v, c FROM all_rows").await, rows(&c, TRIMMED_ORACLE).await, "after a restart");
    assert_eq!(job_of(&c, "all_rows").await.0, "RUNNING");
    // The filtered job saw no value too long, so it is still running under ERROR.
    assert_eq!(job_of(&c, "dst").await, ("RUNNING".to_string(), None, id));
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
