//! Crash injection in Postgres change data capture, on a real PostgreSQL: the daemon aborts
//! inside the initial snapshot, and in the middle of a transaction too large to hold in
//! memory (appended in pieces). After a new start the captured table must equal Postgres's:
//! no row Postgres no longer has, none missing, and no piece appended twice.

mod common;

use std::time::Duration;

use common::services::{self, pg_client};
use common::{connect, exec, rows, temp_dir};
use sluice_sqllogictest::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Rows of a query on Postgres, as text, sorted.
async fn pg_rows(pg: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut out: Vec<Vec<Option<String>>> = pg
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// Waits until Sluice's `items` equals Postgres's; on timeout fails with the sizes and the
/// first difference.
async fn converges(sluice: &tokio_postgres::Client, pg: &tokio_postgres::Client, what: &str) {
    let (mut want, mut got) = (Vec::new(), Vec::new());
    for _ in 0..900 {
        want = pg_rows(pg, "SELECT id::text, v FROM items").await;
        got = rows(sluice, "SELECT id, v FROM items").await;
        if want == got {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
    panic!("{what}: Sluice has {} rows, Postgres {}; first difference: sluice {:?}, postgres {:?}", got.len(), want.len(), got.get(at), want.get(at));
}

/// The connector's `DESCRIBE CONNECTOR` property `name`.
async fn property(c: &tokio_postgres::Client, name: &str) -> Option<String> {
    rows(c, "DESCRIBE CONNECTOR items").await.into_iter().find(|r| r[0].as_deref() == Some(name)).and_then(|r| r[1].clone())
}

/// Waits for the daemon to exit (an armed `return(abort)` failpoint fired).
fn wait_exit(server: &mut ServerProcess, what: &str) {
    for _ in 0..1200 {
        if server.exited() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: the failpoint never fired");
}

fn create_items(port: u16) -> String {
    format!(
        "CREATE TABLE items (id BIGINT, v STRING, PRIMARY KEY (id) NOT ENFORCED) WITH ('connector' = 'postgres-cdc', \
         'hostname' = '127.0.0.1', 'port' = '{port}', 'username' = 'postgres', 'password' = 'pw', 'database-name' = 'postgres', \
         'schema-name' = 'public', 'table-name' = 'items', 'slot.name' = 'sluice_items', 'decoding.plugin.name' = 'pgoutput')"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_the_snapshot_leaves_no_ghost_rows() {
    let pgs = services::postgres("cdc-ghost");
    let pg = pg_client(&pgs).await;
    pg.batch_execute("CREATE TABLE items (id BIGINT PRIMARY KEY, v TEXT); INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 30000) i;")
        .await
        .unwrap();
    // The snapshot appends 8 192 rows at a time; the daemon aborts after the third piece.
    let dir = temp_dir("cdc-ghost");
    let mut server = ServerProcess::start_with_env(std::path::Path::new(BIN), &dir, &[], &[("SLUICE_FAILPOINTS", "cdc::snapshot_chunk=2*off->return(abort)")])
        .expect("sluice starts");
    let c = connect(server.port()).await;
    exec(&c, &create_items(pgs.port)).await;
    wait_exit(&mut server, "cdc::snapshot_chunk");
    // Meanwhile Postgres deletes rows the partial snapshot had read, and changes others.
    pg.batch_execute("DELETE FROM items WHERE id <= 5000 OR id % 7 = 0; UPDATE items SET v = 'changed' WHERE id % 11 = 0;").await.unwrap();
    server.set_env("SLUICE_FAILPOINTS", None);
    server.start_again().expect("start after abort");
    let c = connect(server.port()).await;
    converges(&c, &pg, "snapshot taken again").await;
    // The new snapshot read what Postgres holds now, once.
    let held = pg_rows(&pg, "SELECT count(*)::text FROM items").await[0][0].clone();
    assert_eq!(property(&c, "snapshot_rows").await, held);
    // And it goes on streaming from the new slot.
    pg.batch_execute("INSERT INTO items VALUES (1, 'back'); DELETE FROM items WHERE id = 6;").await.unwrap();
    converges(&c, &pg, "changes after the snapshot").await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_is_appended_in_pieces_and_resumed_after_a_crash() {
    let pgs = services::postgres("cdc-pieces");
    let pg = pg_client(&pgs).await;
    pg.batch_execute("CREATE TABLE items (id BIGINT PRIMARY KEY, v TEXT); INSERT INTO items VALUES (0, 'before');").await.unwrap();
    let dir = temp_dir("cdc-pieces");
    let mut server = ServerProcess::start(std::path::Path::new(BIN), &dir).expect("sluice starts");
    let c = connect(server.port()).await;
    exec(&c, &create_items(pgs.port)).await;
    converges(&c, &pg, "snapshot").await;
    // Armed: the daemon aborts after the third piece (30 000 changes) of one transaction.
    server.set_env("SLUICE_FAILPOINTS", Some("cdc::after_piece=2*off->return(abort)"));
    server.restart(false).expect("restart with the failpoint");
    let c = connect(server.port()).await;
    for _ in 0..600 {
        if property(&c, "state").await.as_deref() == Some("RUNNING") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(property(&c, "state").await.as_deref(), Some("RUNNING"));
    // 45 000 inserts, then 1 000 updates and 500 deletes of rows of the same transaction.
    pg.batch_execute(
        "BEGIN; INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 45000) i;
         UPDATE items SET v = 'u' || id WHERE id BETWEEN 40001 AND 41000;
         DELETE FROM items WHERE id BETWEEN 44001 AND 44500; COMMIT;",
    )
    .await
    .unwrap();
    wait_exit(&mut server, "cdc::after_piece");
    server.set_env("SLUICE_FAILPOINTS", None);
    server.start_again().expect("start after abort");
    let c = connect(server.port()).await;
    converges(&c, &pg, "transaction resumed after its third piece").await;
    // Postgres sent the whole transaction again; the 30 000 changes already appended were
    // skipped, not appended a second time.
    assert_eq!(property(&c, "rows").await.as_deref(), Some("16500"));
    assert_eq!(property(&c, "snapshot_rows").await.as_deref(), Some("0"));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
