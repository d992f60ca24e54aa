//! Cursors and large results against a real daemon, with exact rows: the extended protocol's
//! `Execute` with a row limit (`PortalSuspended`, as pgJDBC's `setFetchSize` pages), SQL
//! cursors (`DECLARE`, `FETCH`, `MOVE`, `CLOSE`, PostgreSQL's SQLSTATEs and transaction rules),
//! real `psql` with `FETCH_COUNT`, psycopg 3's named cursors, and results streamed as produced:
//! a query over a `datagen` table of 10^12 rows answers its first rows, which it could not if
//! the result were gathered first.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{connect, exec, rows, start, temp_dir};
use futures::StreamExt;
use tokio_postgres::{Client, SimpleQueryMessage};

/// A table of 10^12 rows, generated as they are read: `seq` is 1, 2, 3, ...
const BIG: &str = "CREATE TABLE big (seq BIGINT) WITH ('connector' = 'datagen', \
    'fields.seq.kind' = 'sequence', 'fields.seq.start' = '1', 'fields.seq.end' = '1000000000000')";

/// Fails a test that waits for a result that never comes (a result gathered before it is
/// sent), instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

async fn patient<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("{what}: no answer in {PATIENCE:?}"))
}

fn ids(rows: &[tokio_postgres::Row]) -> Vec<i64> {
    rows.iter().map(|r| r.get::<_, i64>(0)).collect()
}

/// Rows (as text, in order) and the command tags' counts of a simple query.
async fn simple(c: &Client, sql: &str) -> (Vec<Vec<Option<String>>>, Vec<u64>) {
    let msgs = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut rows = Vec::new();
    let mut counts = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::Row(r) => rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            SimpleQueryMessage::CommandComplete(n) => counts.push(n),
            _ => {}
        }
    }
    (rows, counts)
}

fn texts(rows: &[Vec<Option<String>>]) -> Vec<String> {
    rows.iter().map(|r| r.iter().map(|v| v.clone().unwrap_or_else(|| "NULL".into())).collect::<Vec<_>>().join("|")).collect()
}

async fn code(c: &Client, sql: &str) -> String {
    let e = c.simple_query(sql).await.expect_err(sql);
    e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e:?}")).code().code().to_string()
}

async fn fill(c: &Client) {
    exec(c, "CREATE TABLE t (id BIGINT, s STRING)").await;
    let values: Vec<String> = (1..=10).map(|i| format!("({i}, 's{i}')")).collect();
    exec(c, &format!("INSERT INTO t VALUES {}", values.join(", "))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_with_a_row_limit_pages_a_portal() {
    let dir = temp_dir("cursors-portal");
    let server = start(&dir);
    let mut c = connect(server.port()).await;
    fill(&c).await;
    exec(&c, BIG).await;

    let tx = c.transaction().await.unwrap();
    let st = tx.prepare("SELECT id, s FROM t ORDER BY id").await.unwrap();
    let portal = tx.bind(&st, &[]).await.unwrap();
    let mut pages = Vec::new();
    for _ in 0..4 {
        pages.push(ids(&tx.query_portal(&portal, 4).await.unwrap()));
    }
    assert_eq!(pages, [vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10], vec![]]);

    // With a bound parameter, two portals of one statement paged in turn.
    let st = tx.prepare("SELECT id FROM t WHERE id > $1 ORDER BY id").await.unwrap();
    let a = tx.bind(&st, &[&6i64]).await.unwrap();
    let b = tx.bind(&st, &[&2i64]).await.unwrap();
    assert_eq!(ids(&tx.query_portal(&a, 2).await.unwrap()), [7, 8]);
    assert_eq!(ids(&tx.query_portal(&b, 3).await.unwrap()), [3, 4, 5]);
    assert_eq!(ids(&tx.query_portal(&a, 0).await.unwrap()), [9, 10]);
    assert_eq!(ids(&tx.query_portal(&b, 1).await.unwrap()), [6]);

    // 10^12 rows: the first pages come, so the rows are produced as they are asked for. Without
    // ORDER BY the batches may come in any order; the rows of a page are consecutive.
    let st = tx.prepare("SELECT seq, seq * 2 AS twice FROM big").await.unwrap();
    assert_eq!(st.columns().iter().map(|c| c.name()).collect::<Vec<_>>(), ["seq", "twice"]);
    let p = tx.bind(&st, &[]).await.unwrap();
    let first = patient("first page of big", tx.query_portal(&p, 3)).await.unwrap();
    let k = ids(&first)[0];
    assert_eq!(ids(&first), [k, k + 1, k + 2]);
    assert_eq!(first.iter().map(|r| r.get::<_, i64>(1)).collect::<Vec<_>>(), [2 * k, 2 * k + 2, 2 * k + 4]);
    let next = patient("second page of big", tx.query_portal(&p, 2)).await.unwrap();
    assert_eq!(ids(&next), [k + 3, k + 4]);
    drop(p);
    tx.commit().await.unwrap();
    assert_eq!(rows(&c, "SELECT count(*) FROM t").await, [[Some("10".to_string())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_select_streams() {
    let dir = temp_dir("cursors-stream");
    let server = start(&dir);
    let c = connect(server.port()).await;
    exec(&c, BIG).await;

    // A LIMIT ends the read of big early.
    let r = patient("LIMIT of big", c.query("SELECT seq FROM big WHERE seq % 1000 = 0 LIMIT 3", &[])).await.unwrap();
    // (Without ORDER BY, batches may come in any order: the rows are three consecutive ones.)
    let k = ids(&r)[0];
    assert!(k > 0 && k % 1000 == 0, "{k}");
    assert_eq!(ids(&r), [k, k + 1000, k + 2000]);

    // Statements of one simple query see each other's effects in order: a result is read
    // before the next statement runs.
    exec(&c, "CREATE TABLE t (id BIGINT, s STRING)").await;
    let (r, _) = simple(&c, "SELECT count(*) FROM t; INSERT INTO t VALUES (1, 'a'); SELECT count(*) FROM t").await;
    assert_eq!(texts(&r), ["0", "1"]);
    // An error while the rows are produced reaches the client with its SQLSTATE.
    assert_eq!(code(&c, "SELECT 1 / (seq - 3) FROM big").await, "22012");
    assert_eq!(texts(&simple(&c, "SELECT s FROM t").await.0), ["a"]);

    // The simple protocol: the first rows of 10^12 arrive (the result can never be complete).
    let reader = connect(server.port()).await;
    let stream = patient("simple query of big", reader.simple_query_raw("SELECT seq FROM big")).await.unwrap();
    let first: Vec<String> = patient(
        "first rows of big",
        stream
            .filter_map(|m| async move {
                match m.unwrap() {
                    SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
                    _ => None,
                }
            })
            .take(3)
            .collect(),
    )
    .await;
    let k: i64 = first[0].parse().unwrap();
    assert_eq!(first, [k.to_string(), (k + 1).to_string(), (k + 2).to_string()]);
    // (The rest of big is never read: the test ends and drops the connection.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cursors_as_postgres_has_them() {
    let dir = temp_dir("cursors-sql");
    let server = start(&dir);
    let c = connect(server.port()).await;
    fill(&c).await;
    exec(&c, BIG).await;

    // Outside a block only WITH HOLD cursors exist.
    assert_eq!(code(&c, "DECLARE c CURSOR FOR SELECT id FROM t").await, "25P01");
    assert_eq!(code(&c, "FETCH NEXT FROM c").await, "34000");
    assert_eq!(code(&c, "CLOSE c").await, "34000");

    exec(&c, "BEGIN").await;
    exec(&c, "DECLARE c NO SCROLL CURSOR FOR SELECT id, s FROM t ORDER BY id").await;
    let (r, n) = simple(&c, "FETCH 2 FROM c").await;
    assert_eq!((texts(&r), n), (vec!["1|s1".to_string(), "2|s2".into()], vec![2]));
    assert_eq!(texts(&simple(&c, "FETCH c").await.0), ["3|s3"]);
    assert_eq!(texts(&simple(&c, "FETCH NEXT IN c").await.0), ["4|s4"]);
    assert_eq!(texts(&simple(&c, "FETCH 0 FROM c").await.0), ["4|s4"]);
    assert_eq!(simple(&c, "MOVE FORWARD 3 IN c").await.1, [3]);
    assert_eq!(texts(&simple(&c, "FETCH RELATIVE 2 FROM c").await.0), ["9|s9"]);
    assert_eq!(texts(&simple(&c, "FETCH FORWARD ALL FROM c").await.0), ["10|s10"]);
    let (r, n) = simple(&c, "FETCH 5 FROM c").await;
    assert_eq!((r.len(), n), (0, vec![0]));
    assert_eq!(simple(&c, "MOVE ALL IN c").await.1, [0]);
    assert_eq!(code(&c, "DECLARE c CURSOR FOR SELECT 1").await, "42P03");
    exec(&c, "ROLLBACK").await;

    // A backward motion fails and aborts the block, as on a NO SCROLL cursor; SCROLL is refused.
    exec(&c, "BEGIN").await;
    exec(&c, "DECLARE c CURSOR FOR SELECT id FROM t ORDER BY id").await;
    assert_eq!(texts(&simple(&c, "FETCH ABSOLUTE 3 FROM c").await.0), ["3"]);
    assert_eq!(code(&c, "FETCH PRIOR FROM c").await, "55000");
    assert_eq!(code(&c, "FETCH 1 FROM c").await, "25P02");
    exec(&c, "ROLLBACK").await;
    exec(&c, "BEGIN").await;
    assert_eq!(code(&c, "DECLARE s SCROLL CURSOR FOR SELECT 1").await, "0A000");
    exec(&c, "ROLLBACK").await;
    exec(&c, "BEGIN").await;
    assert_eq!(code(&c, "DECLARE w CURSOR FOR INSERT INTO t VALUES (0, 'no')").await, "42601");
    exec(&c, "ROLLBACK").await;
    assert_eq!(rows(&c, "SELECT count(*) FROM t").await, [[Some("10".to_string())]]);

    // COMMIT closes cursors without hold and keeps held ones; ROLLBACK closes the held
    // cursors its block declared; a held cursor declared outside a block lives on.
    exec(&c, "DECLARE outside CURSOR WITH HOLD FOR SELECT id FROM t ORDER BY id").await;
    exec(&c, "BEGIN; DECLARE plain CURSOR WITHOUT HOLD FOR SELECT 1; DECLARE held CURSOR WITH HOLD FOR SELECT id FROM t ORDER BY id DESC; COMMIT").await;
    assert_eq!(code(&c, "FETCH plain").await, "34000");
    assert_eq!(texts(&simple(&c, "FETCH 2 FROM held").await.0), ["10", "9"]);
    exec(&c, "BEGIN; DECLARE undone CURSOR WITH HOLD FOR SELECT 1; FETCH outside; ROLLBACK").await;
    assert_eq!(code(&c, "FETCH undone").await, "34000");
    assert_eq!(texts(&simple(&c, "FETCH 2 FROM outside").await.0), ["2", "3"]);
    assert_eq!(simple(&c, "CLOSE held").await.1, [0]);
    assert_eq!(code(&c, "FETCH held").await, "34000");
    exec(&c, "CLOSE ALL").await;
    assert_eq!(code(&c, "FETCH outside").await, "34000");

    // A cursor reads its query as it is fetched: 10^12 rows, and one in the middle.
    exec(&c, "BEGIN").await;
    patient("DECLARE over big", c.simple_query("DECLARE g CURSOR FOR SELECT seq FROM big")).await.unwrap();
    assert_eq!(texts(&patient("FETCH from big", simple(&c, "FETCH 2 FROM g")).await.0), ["1", "2"]);
    assert_eq!(patient("MOVE in big", simple(&c, "MOVE 100000 IN g")).await.1, [100000]);
    assert_eq!(texts(&patient("FETCH from big", simple(&c, "FETCH NEXT FROM g")).await.0), ["100003"]);
    exec(&c, "COMMIT").await;

    // A BINARY cursor answers the simple protocol in binary: int4 1 is 00 00 00 01.
    exec(&c, "DECLARE b BINARY CURSOR WITH HOLD FOR SELECT CAST(1 AS INT) AS one").await;
    assert_eq!(texts(&simple(&c, "FETCH b").await.0), ["\u{0}\u{0}\u{0}\u{1}"]);
    exec(&c, "CLOSE b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_over_the_extended_protocol() {
    let dir = temp_dir("cursors-extended");
    let server = start(&dir);
    let mut c = connect(server.port()).await;
    fill(&c).await;

    // DECLARE with a bound parameter, FETCH described with the cursor's columns.
    let tx = c.transaction().await.unwrap();
    let n = tx.execute("DECLARE c CURSOR FOR SELECT id, s FROM t WHERE id > $1 ORDER BY id", &[&6i64]).await.unwrap();
    assert_eq!(n, 0);
    let st = tx.prepare("FETCH 2 FROM c").await.unwrap();
    assert_eq!(st.columns().iter().map(|c| c.name()).collect::<Vec<_>>(), ["id", "s"]);
    let r = tx.query(&st, &[]).await.unwrap();
    assert_eq!(ids(&r), [7, 8]);
    assert_eq!(r[1].get::<_, String>(1), "s8");
    assert_eq!(ids(&tx.query("FETCH ALL FROM c", &[]).await.unwrap()), [9, 10]);
    assert_eq!(tx.execute("MOVE 1 IN c", &[]).await.unwrap(), 0);
    tx.execute("CLOSE c", &[]).await.unwrap();
    let e = tx.query("FETCH 1 FROM c", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "34000");
    tx.rollback().await.unwrap();
    let e = c.execute("DECLARE d CURSOR FOR SELECT 1", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "25P01");
}

/// Runs `script` through real psql (`-X -A`, unaligned): its stdout and stderr.
fn psql(port: u16, script: &str) -> (String, String) {
    let mut child = Command::new("psql")
        .args(["-X", "-A", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "sluice", "-d", "sluice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql is installed (Debian's postgresql-client)");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_fetch_count_and_cursors() {
    let dir = temp_dir("cursors-psql");
    let server = start(&dir);
    let c = connect(server.port()).await;
    fill(&c).await;
    let port = server.port();

    // FETCH_COUNT: psql wraps the query in BEGIN, DECLARE _psql_cursor, FETCH FORWARD 3 until
    // a short page, CLOSE and COMMIT; it prints the pages as one result.
    let (out, err) = psql(port, "\\set FETCH_COUNT 3\nSELECT id, s FROM t WHERE id <= 7 ORDER BY id;\nSELECT id FROM t WHERE id > 8 ORDER BY id;\n");
    assert_eq!(err, "");
    assert_eq!(out, "id|s\n1|s1\n2|s2\n3|s3\n4|s4\n5|s5\n6|s6\n7|s7\n(7 rows)\nid\n9\n10\n(2 rows)\n");
    // A query that fails in FETCH_COUNT mode reports its error, and the session goes on.
    let (out, err) = psql(port, "\\set FETCH_COUNT 2\nSELECT nope FROM t;\nSELECT count(*) FROM t;\n");
    assert!(err.starts_with("ERROR:") && err.contains("nope"), "{err}");
    assert_eq!(out, "count\n10\n(1 row)\n");

    // The cursor statements as psql shows their command tags.
    let (out, err) = psql(
        port,
        "BEGIN;\nDECLARE c CURSOR FOR SELECT id FROM t ORDER BY id;\nFETCH 2 FROM c;\nMOVE 5 IN c;\nFETCH ALL FROM c;\nCLOSE c;\nCOMMIT;\nFETCH c;\n",
    );
    assert_eq!(
        out,
        "BEGIN\nDECLARE CURSOR\nid\n1\n2\n(2 rows)\nMOVE 5\nid\n8\n9\n10\n(3 rows)\nCLOSE CURSOR\nCOMMIT\n"
    );
    assert_eq!(err, "ERROR:  cursor \"c\" does not exist\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_named_cursors() {
    let dir = temp_dir("cursors-psycopg");
    let server = start(&dir);
    let c = connect(server.port()).await;
    fill(&c).await;
    // psycopg 3: DECLARE over the extended protocol, Describe of the cursor's portal, then
    // FETCH FORWARD n; psycopg2: the same over the simple protocol.
    let script = format!(
        r#"
import psycopg, psycopg2
dsn = "host=127.0.0.1 port={port} user=sluice dbname=sluice"
with psycopg.connect(dsn) as conn:
    with conn.cursor(name="named") as cur:
        cur.itersize = 3
        cur.execute("SELECT id, s FROM t WHERE id > %s ORDER BY id", (2,))
        print([d.name for d in cur.description])
        print(cur.fetchmany(2))
        print(cur.fetchone())
        print([r[0] for r in cur])
    with conn.cursor(name="held", withhold=True) as cur:
        cur.execute("SELECT id FROM t ORDER BY id DESC")
        conn.commit()
        print(cur.fetchmany(3))
conn = psycopg2.connect(dsn)
cur = conn.cursor("old")
cur.itersize = 4
cur.execute("SELECT id FROM t WHERE id > 5 ORDER BY id")
print([r[0] for r in cur])
conn.close()
"#,
        port = server.port()
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout,
        "['id', 's']\n[(3, 's3'), (4, 's4')]\n(5, 's5')\n[6, 7, 8, 9, 10]\n[(10,), (9,), (8,)]\n[6, 7, 8, 9, 10]\n"
    );
}
