//! `SUBSCRIBE` against a real daemon: the snapshot, then every change with its op and epoch;
//! `SNAPSHOT = false`, `PROGRESS`, `LIMIT`; upsert tables; the folded changes equal the same
//! query run as a batch `SELECT` (the oracle); a subscriber that does not read blocks neither
//! jobs nor other sessions and still receives every change.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{connect, count, exec, rows, start, temp_dir};
use futures::{pin_mut, StreamExt};
use tokio_postgres::{Client, RowStream};

/// How long a test waits for a row before it fails.
const ROW_TIMEOUT: Duration = Duration::from_secs(30);

/// One subscription row: op (None for a progress row), epoch, the data columns as text.
type Change = (Option<String>, i64, Vec<Option<String>>);

fn change(row: &tokio_postgres::Row, data_from: usize) -> Change {
    let data = (data_from..row.len())
        .map(|i| match row.columns()[i].type_() {
            &tokio_postgres::types::Type::INT8 => row.get::<_, Option<i64>>(i).map(|v| v.to_string()),
            _ => row.get::<_, Option<String>>(i),
        })
        .collect();
    (row.get(0), row.get(1), data)
}

async fn subscribe(c: &Client, sql: &str) -> RowStream {
    c.query_raw(sql, Vec::<i64>::new()).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

/// The next `n` rows of `stream`.
async fn next_rows(stream: &mut std::pin::Pin<&mut RowStream>, n: usize, data_from: usize) -> Vec<Change> {
    let mut out = Vec::new();
    while out.len() < n {
        let row = tokio::time::timeout(ROW_TIMEOUT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no subscription row within {ROW_TIMEOUT:?}; got {out:?}"))
            .expect("the subscription ended")
            .expect("a subscription row");
        out.push(change(&row, data_from));
    }
    out
}

fn ops(changes: &[Change]) -> Vec<(String, Vec<Option<String>>)> {
    let mut v: Vec<_> = changes.iter().map(|(op, _, d)| (op.clone().unwrap_or_default(), d.clone())).collect();
    v.sort();
    v
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_changes_of_an_aggregate() {
    let dir = temp_dir("subscribe-agg");
    let server = start(&dir);
    let (c1, c2) = (connect(server.port()).await, connect(server.port()).await);
    exec(&c2, "CREATE TABLE t (k BIGINT, v BIGINT)").await;
    exec(&c2, "INSERT INTO t VALUES (1, 10), (2, 20), (1, 1)").await;

    let stream = subscribe(&c1, "SUBSCRIBE (SELECT k, sum(v) AS s FROM t GROUP BY k)").await;
    pin_mut!(stream);
    let first = tokio::time::timeout(ROW_TIMEOUT, stream.next()).await.expect("a snapshot row").expect("open").expect("a row");
    assert_eq!(first.columns().iter().map(|c| c.name()).collect::<Vec<_>>(), ["op", "epoch", "k", "s"]);
    let mut snapshot = vec![change(&first, 2)];
    snapshot.extend(next_rows(&mut stream, 1, 2).await);
    assert_eq!(ops(&snapshot), [("+I".into(), vec![s("1"), s("11")]), ("+I".into(), vec![s("2"), s("20")])]);
    assert_eq!(snapshot[0].1, snapshot[1].1, "the snapshot is one epoch");

    exec(&c2, "INSERT INTO t VALUES (2, 5)").await;
    let update = next_rows(&mut stream, 2, 2).await;
    assert_eq!(ops(&update), [("+U".into(), vec![s("2"), s("25")]), ("-U".into(), vec![s("2"), s("20")])]);
    assert!(update[0].1 > snapshot[0].1, "a later epoch: {update:?} after {snapshot:?}");

    exec(&c2, "INSERT INTO t VALUES (3, 7)").await;
    assert_eq!(ops(&next_rows(&mut stream, 1, 2).await), [("+I".into(), vec![s("3"), s("7")])]);

    // Other sessions are served while the subscription runs.
    assert_eq!(count(&c2, "SELECT count(*) FROM t").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_limit_and_upsert_tables() {
    let dir = temp_dir("subscribe-options");
    let server = start(&dir);
    let (c1, c2) = (connect(server.port()).await, connect(server.port()).await);
    exec(&c2, "CREATE TABLE u (id BIGINT, name STRING, PRIMARY KEY (id) NOT ENFORCED)").await;
    exec(&c2, "INSERT INTO u VALUES (1, 'a'), (2, 'b')").await;

    // SNAPSHOT = false: only what changes after the subscription started. An upsert of an
    // existing key is a retraction of its old row and the new row.
    {
        // The progress row of the snapshot's epoch says the subscription has started: what is
        // written from then on is a change it sends.
        let stream = subscribe(&c1, "SUBSCRIBE TO u WITH (SNAPSHOT = false, PROGRESS = true)").await;
        pin_mut!(stream);
        let started = next_rows(&mut stream, 1, 3).await;
        assert_eq!(started[0].0, None, "a progress row first: {started:?}");
        exec(&c2, "INSERT INTO u VALUES (1, 'c')").await;
        let mut changes = Vec::new();
        while changes.len() < 2 {
            changes.extend(next_rows(&mut stream, 1, 3).await.into_iter().filter(|c| c.0.is_some()));
        }
        assert_eq!(ops(&changes), [("+U".into(), vec![s("1"), s("c")]), ("-U".into(), vec![s("1"), s("a")])]);
    }
    // The abandoned subscription's connection is gone with its client; a new one subscribes.
    drop(c1);
    let c1 = connect(server.port()).await;

    // LIMIT ends the result, so a client that waits for a complete result gets it; PROGRESS
    // adds the progressed column and a progress row after each epoch.
    let msgs = c1.simple_query("SUBSCRIBE u WITH (PROGRESS) LIMIT 2").await.unwrap();
    let mut got = Vec::new();
    for m in &msgs {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            got.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect::<Vec<_>>());
        }
    }
    let tag = msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    });
    assert_eq!(tag, Some(2));
    let mut data: Vec<_> = got.iter().map(|r| (r[0].clone(), r[2].clone(), r[3].clone(), r[4].clone())).collect();
    data.sort();
    assert_eq!(data, [(s("+I"), s("f"), s("1"), s("c")), (s("+I"), s("f"), s("2"), s("b"))]);
    // The session is usable after the subscription ended.
    assert_eq!(count(&c1, "SELECT count(*) FROM u").await, 2);

    // Bad input: a SQLSTATE, nothing started.
    for (sql, code) in [("SUBSCRIBE nope", "42P01"), ("SUBSCRIBE u WITH (colour = true)", "42601")] {
        let e = c1.simple_query(sql).await.unwrap_err();
        assert_eq!(e.as_db_error().map(|d| d.code().code()), Some(code), "{sql}: {e:?}");
    }
}

/// Folds changes into a multiset of rows, as a client applying the changelog does.
fn fold(into: &mut BTreeMap<Vec<Option<String>>, i64>, changes: &[Change]) {
    for (op, _, data) in changes {
        let w = match op.as_deref() {
            Some("+I" | "+U") => 1,
            Some("-U" | "-D") => -1,
            _ => continue,
        };
        *into.entry(data.clone()).or_insert(0) += w;
    }
    into.retain(|_, n| *n != 0);
}

async fn batch_result(c: &Client, sql: &str) -> BTreeMap<Vec<Option<String>>, i64> {
    let mut m = BTreeMap::new();
    for r in rows(c, sql).await {
        *m.entry(r).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folded_changes_equal_the_batch_query_and_a_slow_subscriber_blocks_nothing() {
    let dir = temp_dir("subscribe-oracle");
    let server = start(&dir);
    let (c1, c2) = (connect(server.port()).await, connect(server.port()).await);
    exec(&c2, "CREATE TABLE orders (id BIGINT, customer BIGINT, amount BIGINT)").await;
    exec(&c2, "CREATE TABLE customers (id BIGINT, region STRING, PRIMARY KEY (id) NOT ENFORCED)").await;
    exec(&c2, "CREATE TABLE copied (id BIGINT, customer BIGINT, amount BIGINT)").await;
    exec(&c2, "INSERT INTO customers VALUES (0, 'north'), (1, 'south'), (2, 'east')").await;
    let query = "SELECT c.region, count(*) AS n, sum(o.amount) AS total FROM orders o JOIN customers c ON o.customer = c.id GROUP BY c.region";

    // The subscriber starts, then reads nothing while 40 000 orders arrive in 40 statements,
    // customers move between regions, and a persistent query copies the orders.
    let stream = subscribe(&c1, &format!("SUBSCRIBE ({query})")).await;
    exec(&c2, "INSERT INTO copied SELECT * FROM orders").await;
    for b in 0..40i64 {
        let values: Vec<String> = (0..1000i64).map(|i| format!("({}, {}, {})", b * 1000 + i, (b + i) % 4, i % 97)).collect();
        exec(&c2, &format!("INSERT INTO orders VALUES {}", values.join(", "))).await;
        if b % 10 == 3 {
            exec(&c2, &format!("INSERT INTO customers VALUES ({}, 'west')", b % 3)).await;
        }
    }
    exec(&c2, "INSERT INTO customers VALUES (3, 'north')").await;
    // Neither the job nor other sessions wait for the subscriber.
    exec(&c2, "FLUSH").await;
    assert_eq!(count(&c2, "SELECT count(*) FROM copied").await, 40_000);
    let oracle = batch_result(&c2, query).await;
    // Customers 0, 1 and 2 moved to west, 3 joined north.
    assert_eq!(oracle.keys().map(|k| k[0].clone().unwrap()).collect::<Vec<_>>(), ["north", "west"], "{oracle:?}");

    // The subscriber reads now and, folded, its changes reach the batch result.
    pin_mut!(stream);
    let mut folded = BTreeMap::new();
    let mut received = 0;
    while folded != oracle {
        let batch = next_rows(&mut stream, 1, 2).await;
        received += batch.len();
        fold(&mut folded, &batch);
    }
    println!("the subscriber folded {received} change rows into the batch result");
}
