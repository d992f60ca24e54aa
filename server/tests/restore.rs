//! Restoring a persistent query from its checkpoint, on a real daemon: an unchanged job
//! continues where it stopped (across a graceful restart, a `kill -9` and `STOP`/`RESUME JOB`),
//! and a job whose input changed under it (the table it reads dropped and created again, with
//! other columns or the same ones) is refused with SQLSTATE 55000 instead of reading its state
//! into another plan or its offsets into another topic. Its sink keeps the rows it had.

mod common;

use common::{connect, exec, rows, temp_dir};
use tokio_postgres::Client;

/// The persistent query of these tests: a keyed aggregate (state per key) into an upsert table.
const QUERY: &str = "SELECT user_id, SUM(amount), COUNT(*) FROM tx GROUP BY user_id";

/// `n` rows of `tx` from row `from` on: 13 users, amounts 0..9.
fn tx_values(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("({}, {})", i % 13, i % 9)).collect::<Vec<_>>().join(", ")
}

/// The SQLSTATE and message of a statement that must fail.
async fn error_of(client: &Client, sql: &str) -> (String, String) {
    let e = client.batch_execute(sql).await.expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: not a server error: {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// Creates `tx`, the upsert table `spend` and the job; returns the job id.
async fn create_pipeline(c: &Client) -> String {
    exec(c, "CREATE TABLE tx (user_id BIGINT, amount BIGINT) WITH ('partitions' = '2')").await;
    exec(c, "CREATE TABLE spend (user_id BIGINT, total BIGINT, n BIGINT, PRIMARY KEY (user_id) NOT ENFORCED)").await;
    exec(c, &format!("INSERT INTO spend {QUERY}")).await;
    rows(c, "SELECT job_id FROM sluice_jobs").await[0][0].clone().unwrap()
}

/// `(status, error)` of the job in `sluice_jobs`.
async fn job_row(c: &Client, id: &str) -> (String, Option<String>) {
    let r = rows(c, &format!("SELECT status, error FROM sluice_jobs WHERE job_id = '{id}'")).await;
    assert_eq!(r.len(), 1, "job {id} in sluice_jobs: {r:?}");
    (r[0][0].clone().unwrap(), r[0][1].clone())
}

/// An unchanged job restores its aggregate state and continues: after a graceful restart, a
/// `kill -9` and `STOP JOB` / `RESUME JOB`, each with more rows in between, `spend` equals the
/// batch query over all of `tx`, and the job counted checkpoints across the restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_job_restores_its_state_and_continues() {
    let dir = temp_dir("restore-unchanged");
    let mut server = common::start(&dir);
    let c = connect(server.port()).await;
    let id = create_pipeline(&c).await;
    exec(&c, &format!("INSERT INTO tx VALUES {}", tx_values(0, 500))).await;
    exec(&c, "FLUSH").await;
    assert_eq!(rows(&c, "SELECT * FROM spend").await, rows(&c, QUERY).await);
    drop(c);
    let mut written = 500;
    for step in ["graceful restart", "kill -9", "STOP JOB / RESUME JOB"] {
        let c = match step {
            "graceful restart" => {
                server.restart(false).expect("graceful restart");
                connect(server.port()).await
            }
            "kill -9" => {
                server.restart(true).expect("restart after kill -9");
                connect(server.port()).await
            }
            _ => {
                let c = connect(server.port()).await;
                exec(&c, &format!("STOP JOB '{id}'")).await;
                c
            }
        };
        exec(&c, &format!("INSERT INTO tx VALUES {}", tx_values(written, 300))).await;
        written += 300;
        if step.starts_with("STOP") {
            exec(&c, &format!("RESUME JOB '{id}'")).await;
        }
        exec(&c, "FLUSH").await;
        assert_eq!(job_row(&c, &id).await, ("RUNNING".to_string(), None), "{step}");
        assert_eq!(rows(&c, "SELECT count(*) FROM tx").await, vec![vec![Some(written.to_string())]], "{step}");
        // The oracle: the batch query over the same input. A job that had lost its state (or
        // re-read its input on top of it) would differ.
        let expected = rows(&c, QUERY).await;
        assert_eq!(expected.len(), 13);
        assert_eq!(rows(&c, "SELECT * FROM spend").await, expected, "{step}: the job's table differs from the batch query");
        let checkpoints: u64 =
            rows(&c, &format!("SELECT checkpoints FROM sluice_jobs WHERE job_id = '{id}'")).await[0][0].as_deref().unwrap().parse().unwrap();
        assert!(checkpoints >= 2, "{step}: {checkpoints} checkpoints: the count restarted instead of continuing");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The source of a stopped job is dropped and created again (`new_tx`), rows are written to
/// it, and the job is resumed: the resume fails with 55000, the job is `FAILED` with the
/// reason in `sluice_jobs`, `FLUSH` fails with 55000 naming it, and `spend` keeps exactly the
/// rows it had, also after a restart of the daemon (which does not start the job either).
/// `why` is the part of the error that names the check that refused it.
async fn recreated_source_is_refused(name: &str, new_tx: &str, new_rows: &str, why: &str) {
    let dir = temp_dir(&format!("restore-{name}"));
    let mut server = common::start(&dir);
    let c = connect(server.port()).await;
    let id = create_pipeline(&c).await;
    exec(&c, &format!("INSERT INTO tx VALUES {}", tx_values(0, 400))).await;
    exec(&c, "FLUSH").await;
    let before = rows(&c, "SELECT * FROM spend").await;
    assert_eq!(before, rows(&c, QUERY).await);

    // A running job holds its tables.
    let (code, msg) = error_of(&c, "DROP TABLE tx").await;
    assert_eq!(code, "2BP01", "{msg}");
    exec(&c, &format!("STOP JOB '{id}'")).await;
    exec(&c, "DROP TABLE tx").await;
    exec(&c, new_tx).await;
    exec(&c, &format!("INSERT INTO tx VALUES {new_rows}")).await;

    let (code, msg) = error_of(&c, &format!("RESUME JOB '{id}'")).await;
    assert_eq!(code, "55000", "{name}: RESUME JOB of a job whose source changed: {msg}");
    assert!(msg.contains(&id) && msg.contains("a table it reads changed") && msg.contains(why), "{name}: {msg}");
    let (status, error) = job_row(&c, &id).await;
    assert_eq!(status, "FAILED", "{name}: {error:?}");
    assert!(error.as_deref().is_some_and(|e| e.contains("a table it reads changed")), "{name}: {error:?}");
    let (code, msg) = error_of(&c, "FLUSH").await;
    assert_eq!(code, "55000", "{name}: FLUSH with a failed job: {msg}");
    assert!(msg.contains(&id), "{name}: FLUSH names the job: {msg}");
    assert_eq!(rows(&c, "SELECT * FROM spend").await, before, "{name}: the refused job changed its sink");
    drop(c);

    // A restart does not start it either, and the sink is still as it was.
    server.restart(false).expect("graceful restart");
    let c = connect(server.port()).await;
    let (status, error) = job_row(&c, &id).await;
    assert_eq!(status, "FAILED", "{name}, after a restart: {error:?}");
    assert!(error.as_deref().is_some_and(|e| e.contains("a table it reads changed")), "{name}: {error:?}");
    let (code, _) = error_of(&c, &format!("RESUME JOB '{id}'")).await;
    assert_eq!(code, "55000", "{name}: RESUME JOB after a restart");
    let (code, msg) = error_of(&c, "FLUSH").await;
    assert_eq!(code, "55000", "{name}: FLUSH after a restart: {msg}");
    assert_eq!(rows(&c, "SELECT * FROM spend").await, before, "{name}: after a restart");
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The source re-created with another column type: the plan's schemas differ, and so does its
/// fingerprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_recreated_with_another_column_type_is_refused() {
    recreated_source_is_refused(
        "other-type",
        "CREATE TABLE tx (user_id BIGINT, amount DOUBLE) WITH ('partitions' = '2')",
        "(1, 1.5), (2, 2.5), (100, 7.0)",
        "written by a different plan",
    )
    .await;
}

/// The source re-created with an extra column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_recreated_with_an_extra_column_is_refused() {
    recreated_source_is_refused(
        "extra-column",
        "CREATE TABLE tx (user_id BIGINT, amount BIGINT, note STRING) WITH ('partitions' = '2')",
        "(1, 1, 'a'), (2, 2, 'b'), (100, 7, 'c')",
        "written by a different plan",
    )
    .await;
}

/// The source re-created with the same columns: the plan is the same, but the table is
/// another one (its topic starts again at offset 0), so the job's offsets and aggregate state
/// describe rows that no longer exist. Resuming would skip the new table's first rows and add
/// the rest to sums of the old ones. `DROP TABLE` invalidated the job's checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_recreated_with_the_same_columns_is_refused() {
    recreated_source_is_refused(
        "same-columns",
        "CREATE TABLE tx (user_id BIGINT, amount BIGINT) WITH ('partitions' = '2')",
        &tx_values(0, 50),
        "table \"tx\" it reads was dropped",
    )
    .await;
}

/// `(state_ttl, state_rows)` of the job `id`.
async fn ttl_row(c: &Client, id: &str) -> (String, String) {
    let r = rows(c, &format!("SELECT state_ttl, CAST(state_rows AS STRING) FROM sluice_jobs WHERE job_id = '{id}'")).await;
    (r[0][0].clone().unwrap(), r[0][1].clone().unwrap())
}

/// A job's state TTL (`SET 'table.exec.state.ttl'`) is stored with it and survives a restart;
/// `RESUME JOB ... WITH ('table.exec.state.ttl' = ...)` changes it, refusing a bad value; the
/// groups restored from the checkpoint then expire under the new TTL (their write times were
/// checkpointed), and an expired group starts again from its next row, while the batch query
/// over all of `tx` still counts every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_ttl_is_stored_with_the_job_and_changed_by_resume() {
    let dir = temp_dir("restore-ttl");
    let mut server = common::start(&dir);
    let c = connect(server.port()).await;
    exec(&c, "SET 'table.exec.state.ttl' = '1 h'").await;
    let id = create_pipeline(&c).await;
    exec(&c, &format!("INSERT INTO tx VALUES {}", tx_values(0, 130))).await;
    exec(&c, "FLUSH").await;
    assert_eq!(ttl_row(&c, &id).await, ("1 h".to_string(), "13".to_string()));
    drop(c);
    server.restart(false).expect("graceful restart");
    let c = connect(server.port()).await;
    assert_eq!(ttl_row(&c, &id).await.0, "1 h");
    exec(&c, &format!("STOP JOB '{id}'")).await;
    let (code, msg) = error_of(&c, &format!("RESUME JOB '{id}' WITH ('table.exec.state.ttl' = 'never')")).await;
    assert_eq!(code, "22023", "{msg}");
    assert!(msg.contains("table.exec.state.ttl"), "{msg}");
    exec(&c, &format!("RESUME JOB '{id}' WITH ('table.exec.state.ttl' = '2 s')")).await;
    assert_eq!(ttl_row(&c, &id).await.0, "2 s");
    // The 13 groups expire: the job checkpoints while idle and drops them.
    let mut state = ttl_row(&c, &id).await;
    for _ in 0..300 {
        if state.1 == "0" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        state = ttl_row(&c, &id).await;
    }
    assert_eq!(state, ("2 s".to_string(), "0".to_string()));
    // User 0 starts again from its new row; the other users keep their last results.
    exec(&c, "INSERT INTO tx VALUES (0, 5)").await;
    exec(&c, "FLUSH").await;
    assert_eq!(rows(&c, "SELECT total, n FROM spend WHERE user_id = 0").await, vec![vec![Some("5".to_string()), Some("1".to_string())]]);
    assert_eq!(rows(&c, "SELECT COUNT(*) FROM tx WHERE user_id = 0").await, vec![vec![Some("11".to_string())]]);
    assert_eq!(
        rows(&c, "SELECT * FROM spend WHERE user_id <> 0").await,
        rows(&c, "SELECT user_id, SUM(amount), COUNT(*) FROM tx WHERE user_id <> 0 GROUP BY user_id").await
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
