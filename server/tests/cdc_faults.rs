//! Crash injection in Postgres change data capture, on a real PostgreSQL: the daemon aborts
//! inside the initial snapshot, in the middle of a transaction too large to hold in memory
//! (appended in pieces), and between a transaction's append and its LSN confirmation. After a
//! new start the captured table must equal Postgres's: no row Postgres no longer has, none
//! missing, and no piece or transaction appended twice.

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

/// Runs `statements` as one Postgres transaction and returns how many rows they changed: the
/// changes the connector appends for it, one each (with the default replica identity, an
/// update that keeps the key sends no old row, so it is one update-after).
async fn pg_transaction(pg: &tokio_postgres::Client, statements: &[&str]) -> u64 {
    pg.batch_execute("BEGIN").await.unwrap();
    let mut changes = 0;
    for s in statements {
        changes += pg.execute(*s, &[]).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    pg.batch_execute("COMMIT").await.unwrap();
    changes
}

/// The slot's `confirmed_flush_lsn`, as text.
async fn confirmed_flush_lsn(pg: &tokio_postgres::Client, slot: &str) -> String {
    let r = pg.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap();
    r.get::<_, Option<String>>(0).unwrap_or_else(|| panic!("slot {slot} has no confirmed_flush_lsn"))
}

/// The daemon aborts after a streamed transaction is appended (rows and end LSN in one write)
/// and before its LSN is confirmed to Postgres, so the slot still holds it: the restart must
/// resume after it, from the stored LSN, not from the slot's confirmed position. On a keyed
/// table an insert or delete appended twice leaves the same rows, so the connector's count of
/// appended rows is what shows a duplicate: after the restart it must be exactly the changes
/// Postgres made after the transaction the daemon aborted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_append_and_lsn_confirmation_appends_nothing_twice() {
    let pgs = services::postgres("cdc-confirm");
    let pg = pg_client(&pgs).await;
    pg.batch_execute(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, v TEXT);
         INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 100) i;",
    )
    .await
    .unwrap();
    // Armed from the start: the snapshot does not pass the point, each streamed transaction
    // below does once; the daemon aborts after appending the third, before confirming it.
    let dir = temp_dir("cdc-confirm");
    let mut server = ServerProcess::start_with_env(std::path::Path::new(BIN), &dir, &[], &[("SLUICE_FAILPOINTS", "cdc::after_append=2*off->return(abort)")])
        .expect("sluice starts");
    let c = connect(server.port()).await;
    exec(&c, &create_items(pgs.port)).await;
    converges(&c, &pg, "snapshot").await;
    // Two transactions appended (and passing the point), each seen before the next commits.
    pg_transaction(&pg, &["INSERT INTO items SELECT i, 'v' || i FROM generate_series(101, 150) i", "UPDATE items SET v = 'a' WHERE id <= 10", "DELETE FROM items WHERE id BETWEEN 91 AND 95"]).await;
    converges(&c, &pg, "first transaction").await;
    pg_transaction(&pg, &["UPDATE items SET v = 'b' WHERE id BETWEEN 11 AND 30", "DELETE FROM items WHERE id BETWEEN 96 AND 100", "INSERT INTO items SELECT i, 'v' || i FROM generate_series(151, 160) i"]).await;
    converges(&c, &pg, "second transaction").await;
    // The third is appended, then the daemon aborts before confirming its LSN.
    pg_transaction(&pg, &["INSERT INTO items SELECT i, 'v' || i FROM generate_series(161, 200) i", "UPDATE items SET v = 'c' WHERE id % 10 = 0", "DELETE FROM items WHERE id BETWEEN 141 AND 150"]).await;
    wait_exit(&mut server, "cdc::after_append");
    let before = confirmed_flush_lsn(&pg, "sluice_items").await;
    // While it is down, two more transactions.
    let mut changes = pg_transaction(&pg, &["INSERT INTO items SELECT i, 'v' || i FROM generate_series(201, 230) i", "UPDATE items SET v = 'd' WHERE id BETWEEN 31 AND 40", "DELETE FROM items WHERE id <= 5"]).await;
    changes += pg_transaction(&pg, &["UPDATE items SET v = 'e' WHERE id % 7 = 0", "DELETE FROM items WHERE id BETWEEN 201 AND 205", "INSERT INTO items SELECT i, 'v' || i FROM generate_series(231, 240) i"]).await;
    server.set_env("SLUICE_FAILPOINTS", None);
    server.start_again().expect("start after abort");
    let c = connect(server.port()).await;
    // And one after the restart.
    changes += pg_transaction(&pg, &["INSERT INTO items SELECT i, 'v' || i FROM generate_series(241, 250) i", "DELETE FROM items WHERE id BETWEEN 206 AND 210", "UPDATE items SET v = 'f' WHERE id = 241"]).await;
    // Caught up: the connector confirms a position only once everything before it is appended.
    let target: String = pg.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let reached: bool = pg
            .query_one("SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'sluice_items'", &[&target])
            .await
            .unwrap()
            .get::<_, Option<bool>>(0)
            .unwrap_or(false);
        if reached {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot's confirmed LSN {} never reached {target}; connector: {}",
            confirmed_flush_lsn(&pg, "sluice_items").await,
            common::described(&c, "items").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = confirmed_flush_lsn(&pg, "sluice_items").await;
    let advanced: bool = pg.query_one("SELECT $1::text::pg_lsn > $2::text::pg_lsn", &[&after, &before]).await.unwrap().get(0);
    assert!(advanced, "the slot's confirmed LSN did not advance after the restart: {before} then {after}");
    converges(&c, &pg, "after the restart").await;
    // The third transaction (never confirmed) and the two before it were not appended again:
    // this run appended exactly the three transactions after them.
    assert_eq!(property(&c, "rows").await, Some(changes.to_string()), "{}", common::described(&c, "items").await);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One connector capturing two tables appends a batch of committed transactions table by
/// table; the daemon aborts between the two appends, so the first table is stored a
/// transaction ahead of the second. The stream restarts at the lower position and sends that
/// transaction again, together with one committed while the daemon was down: the table that
/// is ahead must skip the transaction it holds, and the other append it, so each table gets
/// every change exactly once (counted by the connector's `rows`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_the_tables_of_one_connector_appends_nothing_twice() {
    let pgs = services::postgres("cdc-routes");
    let pg = pg_client(&pgs).await;
    pg.batch_execute(
        "CREATE TABLE a (id BIGINT PRIMARY KEY, v TEXT); CREATE TABLE b (id BIGINT PRIMARY KEY, v TEXT);
         INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 20) i; INSERT INTO b SELECT i, 'b' || i FROM generate_series(1, 20) i;",
    )
    .await
    .unwrap();
    // Each streamed batch passes the point once per table: the first transaction passes it
    // twice, the second aborts right after the first table's append.
    let dir = temp_dir("cdc-routes");
    let mut server = ServerProcess::start_with_env(std::path::Path::new(BIN), &dir, &[], &[("SLUICE_FAILPOINTS", "cdc::between_routes=2*off->return(abort)")])
        .expect("sluice starts");
    let c = connect(server.port()).await;
    exec(
        &c,
        &format!(
            "CREATE SOURCE CONNECTOR ab WITH (
               'connector.class' = 'io.debezium.connector.postgresql.PostgresConnector',
               'database.hostname' = '127.0.0.1', 'database.port' = '{}', 'database.user' = 'postgres',
               'database.password' = 'pw', 'database.dbname' = 'postgres', 'topic.prefix' = 'pg',
               'table.include.list' = 'public.a,public.b', 'slot.name' = 'slot_ab', 'publication.name' = 'pub_ab')",
            pgs.port
        ),
    )
    .await;
    let same = |table: &'static str| {
        let (pg, c) = (&pg, &c);
        async move {
            let want = pg_rows(pg, &format!("SELECT id::text, v FROM {table}")).await;
            for _ in 0..600 {
                if rows(c, &format!("SELECT id, v FROM `pg.public.{table}`")).await == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("pg.public.{table} never equalled Postgres's {table}: {}", common::described(c, "ab").await);
        }
    };
    same("a").await;
    same("b").await;
    pg_transaction(&pg, &["UPDATE a SET v = 'x' WHERE id <= 5", "UPDATE b SET v = 'x' WHERE id <= 5"]).await;
    same("a").await;
    same("b").await;
    // Appended to `a`, then the abort: `b` is a transaction behind.
    let second = pg_transaction(&pg, &["INSERT INTO a SELECT i, 'a' || i FROM generate_series(21, 40) i", "DELETE FROM b WHERE id > 15"]).await;
    wait_exit(&mut server, "cdc::between_routes");
    // Committed while the daemon is down: sent again together with the second.
    let third = pg_transaction(&pg, &["UPDATE a SET v = 'y' WHERE id > 30", "INSERT INTO b SELECT i, 'b' || i FROM generate_series(100, 130) i"]).await;
    server.set_env("SLUICE_FAILPOINTS", None);
    server.start_again().expect("start after abort");
    let c2 = connect(server.port()).await;
    let want_a = pg_rows(&pg, "SELECT id::text, v FROM a").await;
    let want_b = pg_rows(&pg, "SELECT id::text, v FROM b").await;
    // `b` gets the second transaction's 5 deletes and the third's 31 inserts; `a` only the
    // third's 10 updates (it held the second's 20 inserts already).
    let expected = (second - 20) + third;
    let mut got = None;
    for _ in 0..600 {
        got = property_of(&c2, "ab", "rows").await;
        let done = rows(&c2, "SELECT id, v FROM `pg.public.a`").await == want_a && rows(&c2, "SELECT id, v FROM `pg.public.b`").await == want_b;
        if done && got == Some(expected.to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows(&c2, "SELECT id, v FROM `pg.public.a`").await, want_a);
    assert_eq!(rows(&c2, "SELECT id, v FROM `pg.public.b`").await, want_b);
    assert_eq!(got, Some(expected.to_string()), "{}", common::described(&c2, "ab").await);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The property `name` of `DESCRIBE CONNECTOR connector`.
async fn property_of(c: &tokio_postgres::Client, connector: &str, name: &str) -> Option<String> {
    rows(c, &format!("DESCRIBE CONNECTOR {connector}")).await.into_iter().find(|r| r[0].as_deref() == Some(name)).and_then(|r| r[1].clone())
}
