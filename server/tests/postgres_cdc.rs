//! Change data capture from a real PostgreSQL with logical decoding (pgoutput), started fresh
//! by each test: `CREATE TABLE ... WITH ('connector' = 'postgres-cdc')` and Debezium's
//! `CREATE SOURCE CONNECTOR` with its transforms. Results are checked against an oracle: what
//! Sluice's table holds equals what Postgres itself holds. (The crash-injection tests of the
//! capture are in cdc_faults.rs; Kafka and MongoDB connectors in kafka_connectors.rs.)

mod common;

use std::time::Duration;

use common::services::{self, eventually, pg_client, pg_rows};
use common::{connect, count, described, exec, rows, start, temp_dir};

const ACCOUNTS_CHECK: &str =
    "SELECT id, name, CAST(balance AS DOUBLE), CAST(date_part('epoch', opened) AS BIGINT), active FROM accounts";

/// Waits until Sluice's `accounts` equals Postgres's; on timeout, fails showing both.
async fn converges(sluice: &tokio_postgres::Client, pg: &tokio_postgres::Client, what: &str) {
    for _ in 0..600 {
        if same_as_postgres(sluice, pg).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (want, got) = accounts_both(sluice, pg).await;
    let first_diff = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
    panic!(
        "{what}: Sluice has {} rows, Postgres {}; first difference at {first_diff}: sluice {:?} postgres {:?}",
        got.len(),
        want.len(),
        got.get(first_diff),
        want.get(first_diff)
    );
}

async fn same_as_postgres(sluice: &tokio_postgres::Client, pg: &tokio_postgres::Client) -> bool {
    let (want, got) = accounts_both(sluice, pg).await;
    want == got
}

async fn accounts_both(sluice: &tokio_postgres::Client, pg: &tokio_postgres::Client) -> (Vec<Vec<Option<String>>>, Vec<Vec<Option<String>>>) {
    let want: Vec<Vec<Option<String>>> = pg_rows(
        pg,
        "SELECT id::text, name, balance::float8::text, date_part('epoch', opened)::bigint::text, \
         CASE WHEN active THEN 't' WHEN NOT active THEN 'f' END FROM accounts",
    )
    .await;
    // Both print a DOUBLE as PostgreSQL does ("125", not "125.0").
    let mut got: Vec<Vec<Option<String>>> = rows(sluice, ACCOUNTS_CHECK).await;
    got.sort();
    (want, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cdc_table_snapshot_changes_and_restart() {
    let pgs = services::postgres("cdc");
    let pg = pg_client(&pgs).await;
    pg.batch_execute(
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, name TEXT, balance NUMERIC(12,2), opened TIMESTAMP, active BOOLEAN);
         INSERT INTO accounts SELECT i, 'n' || i, i * 1.25, TIMESTAMP '2024-01-01' + i * INTERVAL '1 minute', i % 2 = 0
         FROM generate_series(1, 3000) i;",
    )
    .await
    .unwrap();
    let dir = temp_dir("pg-cdc");
    let mut server = start(&dir);
    let client = connect(server.port()).await;
    exec(
        &client,
        &format!(
            "CREATE TABLE accounts (id BIGINT, name STRING, balance DECIMAL(12, 2), opened TIMESTAMP(3), active BOOLEAN, \
             PRIMARY KEY (id) NOT ENFORCED) WITH ('connector' = 'postgres-cdc', 'hostname' = '127.0.0.1', 'port' = '{}', \
             'username' = 'postgres', 'password' = 'pw-Secret-42', 'database-name' = 'postgres', 'schema-name' = 'public', \
             'table-name' = 'accounts', 'slot.name' = 'sluice_accounts', 'decoding.plugin.name' = 'pgoutput')",
            pgs.port
        ),
    )
    .await;
    converges(&client, &pg, "snapshot").await;

    // Changes while the connector runs: single rows, a NULL, an update, deletes, a big transaction.
    pg.batch_execute(
        "INSERT INTO accounts VALUES (5001, NULL, 10.5, NULL, NULL);
         UPDATE accounts SET name = 'renamed', balance = balance + 1 WHERE id IN (1, 2, 3);
         UPDATE accounts SET active = NULL WHERE id = 4;
         DELETE FROM accounts WHERE id IN (10, 11);
         BEGIN; INSERT INTO accounts SELECT i, 'bulk', 1, now()::timestamp(0), true FROM generate_series(6000, 7999) i; COMMIT;",
    )
    .await
    .unwrap();
    converges(&client, &pg, "changes").await;

    // Passwords never shown.
    for sql in ["SHOW CREATE TABLE accounts", "DESCRIBE CONNECTOR accounts", "SHOW CONNECTORS"] {
        let text = format!("{:?}", rows(&client, sql).await);
        assert!(!text.contains("pw-Secret-42"), "{sql} shows the password: {text}");
    }
    let described = rows(&client, "DESCRIBE CONNECTOR accounts").await;
    assert!(described.iter().any(|r| r[0].as_deref() == Some("position") && r[1].as_deref().is_some_and(|p| p.contains('/'))), "{described:?}");

    // Killed daemon, changes meanwhile: resumes from the slot without a new snapshot.
    server.kill();
    pg.batch_execute("UPDATE accounts SET balance = 0 WHERE id < 100; DELETE FROM accounts WHERE id BETWEEN 7000 AND 7100;")
        .await
        .unwrap();
    server.restart(false).expect("restart");
    let client = connect(server.port()).await;
    converges(&client, &pg, "changes after restart").await;
    let snap = rows(&client, "DESCRIBE CONNECTOR accounts").await;
    assert!(snap.iter().any(|r| r[0].as_deref() == Some("snapshot_rows") && r[1].as_deref() == Some("0")), "{snap:?}");

    // Dropping the table drops the slot Sluice created.
    let msgs = client.simple_query("DROP TABLE accounts").await.unwrap();
    drop(msgs);
    let slots = pg_rows(&pg, "SELECT slot_name FROM pg_replication_slots").await;
    assert!(slots.is_empty(), "{slots:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_connector_transforms_and_a_slot_it_did_not_create() {
    let pgs = services::postgres("smt");
    let pg = pg_client(&pgs).await;
    pg.batch_execute(
        "CREATE TABLE people (id BIGINT PRIMARY KEY, name TEXT, secret TEXT, email TEXT);
         INSERT INTO people SELECT i, 'p' || i, 's' || i, 'p' || i || '@x.io' FROM generate_series(1, 50) i;
         CREATE PUBLICATION sluice_pub FOR TABLE people;",
    )
    .await
    .unwrap();
    // A slot made by a DBA (in a transaction of its own: Postgres requires it).
    pg.batch_execute("SELECT pg_create_logical_replication_slot('dba_slot', 'pgoutput')").await.unwrap();
    let dir = temp_dir("pg-smt");
    let _server = start(&dir);
    let client = connect(_server.port()).await;
    exec(
        &client,
        &format!(
            "CREATE SOURCE CONNECTOR pgc WITH (
               'connector.class' = 'io.debezium.connector.postgresql.PostgresConnector',
               'database.hostname' = '127.0.0.1', 'database.port' = '{}', 'database.user' = 'postgres',
               'database.password' = 'x-Secret-9', 'database.dbname' = 'postgres', 'topic.prefix' = 'pg',
               'table.include.list' = 'public.people', 'slot.name' = 'dba_slot', 'publication.name' = 'sluice_pub',
               'transforms' = 'route,drop,unwrap',
               'transforms.route.type' = 'org.apache.kafka.connect.transforms.RegexRouter',
               'transforms.route.regex' = 'pg[.]public[.](.*)', 'transforms.route.replacement' = 'crm_$1',
               'transforms.drop.type' = 'org.apache.kafka.connect.transforms.ReplaceField$Value',
               'transforms.drop.exclude' = 'secret', 'transforms.drop.renames' = 'name:full_name',
               'transforms.unwrap.type' = 'io.debezium.transforms.ExtractNewRecordState',
               'transforms.unwrap.delete.handling.mode' = 'rewrite')",
            pgs.port
        ),
    )
    .await;
    // The table is named by the router, shaped by ReplaceField, keyed by the Postgres key.
    let described = rows(&client, "DESCRIBE crm_people").await;
    let names: Vec<&str> = described.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(names, vec!["__deleted", "email", "full_name", "id"], "{described:?}");
    eventually(60, "snapshot", || async { count(&client, "SELECT count(*) FROM crm_people").await == 50 }).await;
    pg.batch_execute("DELETE FROM people WHERE id = 7; UPDATE people SET name = 'renamed', secret = 'new' WHERE id = 8;").await.unwrap();
    // A delete carries only the key (Postgres's default replica identity), so the rewritten
    // row has the key and `__deleted` = true, as Debezium's unwrap gives it.
    let want = vec![
        vec![Some("7".to_string()), None, Some("true".to_string())],
        vec![Some("8".to_string()), Some("renamed".to_string()), Some("false".to_string())],
    ];
    let mut got = Vec::new();
    for _ in 0..300 {
        got = rows(&client, "SELECT id, full_name, __deleted FROM crm_people WHERE id IN (7, 8)").await;
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, want);
    let text = format!("{:?}{:?}", rows(&client, "DESCRIBE CONNECTOR pgc").await, rows(&client, "SHOW CONNECTORS").await);
    assert!(!text.contains("x-Secret-9") && text.contains("***"), "{text}");
    // The slot was made by someone else: DROP CONNECTOR keeps it.
    exec(&client, "DROP CONNECTOR pgc").await;
    let slots = pg_rows(&pg, "SELECT slot_name FROM pg_replication_slots").await;
    assert_eq!(slots, vec![vec![Some("dba_slot".to_string())]]);
    assert_eq!(count(&client, "SELECT count(*) FROM crm_people").await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cdc_update_keeps_unchanged_toast_value() {
    let pgs = services::postgres("toast");
    let pg = pg_client(&pgs).await;
    // `body` is >8 KB of random hex, stored out of line uncompressed (STORAGE EXTERNAL), so an
    // UPDATE that does not touch it sends it as "unchanged TOAST" ('u'), without the value.
    pg.batch_execute(
        "CREATE TABLE docs (id BIGINT PRIMARY KEY, title TEXT, body TEXT);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs SELECT 1, 'snapshot', string_agg(md5(random()::text), '') FROM generate_series(1, 400);",
    )
    .await
    .unwrap();
    let dir = temp_dir("pg-toast");
    let server = start(&dir);
    let client = connect(server.port()).await;
    exec(
        &client,
        &format!(
            "CREATE TABLE docs (id BIGINT, title STRING, body STRING, PRIMARY KEY (id) NOT ENFORCED) \
             WITH ('connector' = 'postgres-cdc', 'hostname' = '127.0.0.1', 'port' = '{}', 'username' = 'postgres', \
             'password' = 'pw', 'database-name' = 'postgres', 'schema-name' = 'public', 'table-name' = 'docs', \
             'slot.name' = 'sluice_docs', 'decoding.plugin.name' = 'pgoutput')",
            pgs.port
        ),
    )
    .await;
    eventually(60, "snapshot", || async { count(&client, "SELECT count(*) FROM docs").await == 1 }).await;
    // A row captured from the stream rather than the snapshot.
    pg.batch_execute("INSERT INTO docs SELECT 2, 'streamed', string_agg(md5(random()::text), '') FROM generate_series(1, 400)")
        .await
        .unwrap();
    eventually(60, "streamed insert", || async { count(&client, "SELECT count(*) FROM docs").await == 2 }).await;
    // Updates of another column: of rows Sluice already holds, and of a row inserted in the same
    // transaction (so not yet in Sluice's table when the update is captured).
    pg.batch_execute(
        "UPDATE docs SET title = 'updated';
         BEGIN;
         INSERT INTO docs SELECT 3, 'new', string_agg(md5(random()::text), '') FROM generate_series(1, 400);
         UPDATE docs SET title = 'new, updated' WHERE id = 3;
         COMMIT;",
    )
    .await
    .unwrap();
    let want = pg_rows(&pg, "SELECT id::text, title, body FROM docs").await;
    assert_eq!(want.len(), 3);
    assert!(want.iter().all(|r| r[2].as_ref().is_some_and(|b| b.len() == 12_800)), "large values in Postgres");
    let mut got = Vec::new();
    for _ in 0..300 {
        got = rows(&client, "SELECT id, title, body FROM docs").await;
        if got.iter().filter(|r| r[1].as_deref().is_some_and(|t| t.contains("updated"))).count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = |rows: &[Vec<Option<String>>]| {
        rows.iter().map(|r| format!("{:?} {:?} {:?}", r[0], r[1], r[2].as_ref().map(|b| b.len()))).collect::<Vec<_>>()
    };
    assert!(got == want, "Sluice {:?}, Postgres {:?}; connector: {}", text(&got), text(&want), described(&client, "docs").await);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_field_over_tables_masks_only_those_with_the_field() {
    let pgs = services::postgres("mask2");
    let pg = pg_client(&pgs).await;
    pg.batch_execute(
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT, email TEXT);
         CREATE TABLE order_items (id BIGINT PRIMARY KEY, sku TEXT, qty INT);
         INSERT INTO customers SELECT i, 'c' || i, 'c' || i || '@x.io' FROM generate_series(1, 5) i;
         INSERT INTO order_items SELECT i, 'sku-' || i, i * 2 FROM generate_series(1, 7) i;",
    )
    .await
    .unwrap();
    let dir = temp_dir("pg-mask2");
    let server = start(&dir);
    let client = connect(server.port()).await;
    let connector = |name: &str, fields: &str| {
        format!(
            "CREATE SOURCE CONNECTOR {name} WITH (
               'connector.class' = 'io.debezium.connector.postgresql.PostgresConnector',
               'database.hostname' = '127.0.0.1', 'database.port' = '{}', 'database.user' = 'postgres',
               'database.password' = 'pw', 'database.dbname' = 'postgres', 'topic.prefix' = 'pg',
               'table.include.list' = 'public.customers,public.order_items', 'slot.name' = 'slot_{name}',
               'publication.name' = 'pub_{name}',
               'transforms' = 'mask',
               'transforms.mask.type' = 'org.apache.kafka.connect.transforms.MaskField$Value',
               'transforms.mask.fields' = '{fields}')",
            pgs.port
        )
    };
    // A field that no captured table has is a mistake.
    let err = client.batch_execute(&connector("typo", "emial")).await.unwrap_err();
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("22023"), "{err:?}");
    assert!(err.as_db_error().unwrap().message().contains("emial"), "{err:?}");
    // A field only one of them has: masked there, the other table's rows pass through.
    exec(&client, &connector("pgm", "email")).await;
    pg.batch_execute(
        "INSERT INTO customers VALUES (6, 'c6', 'c6@x.io');
         UPDATE customers SET email = 'new@x.io' WHERE id = 1;
         INSERT INTO order_items VALUES (8, 'sku-8', 16);
         UPDATE order_items SET qty = 100 WHERE id = 1;",
    )
    .await
    .unwrap();
    let want_customers = pg_rows(&pg, "SELECT id::text, name, '' FROM customers").await;
    let want_items = pg_rows(&pg, "SELECT id::text, sku, qty::text FROM order_items").await;
    let (mut customers, mut items) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        customers = rows(&client, "SELECT id, name, email FROM `pg.public.customers`").await;
        items = rows(&client, "SELECT id, sku, qty FROM `pg.public.order_items`").await;
        if customers == want_customers && items == want_items {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = described(&client, "pgm").await;
    assert_eq!(customers, want_customers, "{state}");
    assert_eq!(items, want_items, "{state}");
    exec(&client, "DROP CONNECTOR pgm").await;
    drop(server);
}

/// An idle captured table must not hold back WAL: changes only in a table the connector does not
/// capture (which pgoutput does not send) still move the slot's confirmed LSN, as Debezium's
/// heartbeat does, once everything received before the server's `wal_end` is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cdc_idle_captured_table_does_not_hold_back_wal() {
    let pgs = services::postgres("idle");
    let pg = pg_client(&pgs).await;
    pg.batch_execute(
        "CREATE TABLE captured (id BIGINT PRIMARY KEY, v TEXT);
         CREATE TABLE other (id BIGINT PRIMARY KEY, v TEXT);
         INSERT INTO captured VALUES (1, 'one'), (2, 'two');",
    )
    .await
    .unwrap();
    let dir = temp_dir("pg-idle");
    let server = start(&dir);
    let client = connect(server.port()).await;
    exec(
        &client,
        &format!(
            "CREATE TABLE captured (id BIGINT, v STRING, PRIMARY KEY (id) NOT ENFORCED) \
             WITH ('connector' = 'postgres-cdc', 'hostname' = '127.0.0.1', 'port' = '{}', 'username' = 'postgres', \
             'password' = 'pw', 'database-name' = 'postgres', 'schema-name' = 'public', 'table-name' = 'captured', \
             'slot.name' = 'sluice_idle', 'decoding.plugin.name' = 'pgoutput')",
            pgs.port
        ),
    )
    .await;
    eventually(60, "snapshot", || async { count(&client, "SELECT count(*) FROM captured").await == 2 }).await;
    pg.batch_execute("INSERT INTO other SELECT i, md5(i::text) FROM generate_series(1, 20000) i").await.unwrap();
    let after: String = pg.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let confirmed_past = |after: String| {
        let pg = &pg;
        async move {
            let row = pg
                .query_one(
                    "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'sluice_idle'",
                    &[&after],
                )
                .await
                .unwrap();
            row.get::<_, Option<bool>>(0) == Some(true)
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !confirmed_past(after.clone()).await {
        let slot = pg_rows(&pg, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'sluice_idle'").await;
        assert!(
            std::time::Instant::now() < deadline,
            "the slot's confirmed LSN {slot:?} never reached {after}; connector: {}",
            described(&client, "captured").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The captured table still streams.
    pg.batch_execute("INSERT INTO captured VALUES (3, 'three')").await.unwrap();
    eventually(60, "streamed insert", || async { count(&client, "SELECT count(*) FROM captured").await == 3 }).await;
    drop(server);
}
