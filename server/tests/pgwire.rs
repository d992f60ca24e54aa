//! The PostgreSQL wire protocol as clients use it: extended protocol with parameters and binary
//! results, NULLs, COPY FROM STDIN in text and CSV, SSLRequest refusal, SQLSTATE codes.

mod common;

use std::io::{Read, Write};

use common::{connect, exec, rows, start, temp_dir};
use futures::SinkExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_copy_and_errors() {
    let dir = temp_dir("pgwire");
    let server = start(&dir);
    let c = connect(server.port()).await;
    exec(&c, "CREATE TABLE t (id BIGINT, name STRING, amount DOUBLE, ts TIMESTAMP(3), ok BOOLEAN)").await;

    // Parse with parameter types inferred by the server, Bind, Execute.
    let ins = c.prepare("INSERT INTO t VALUES ($1, $2, $3, CAST($4 AS TIMESTAMP), $5)").await.unwrap();
    c.execute(&ins, &[&1i64, &"ana", &1.5f64, &"2024-01-01 10:00:00", &true]).await.unwrap();
    c.execute(&ins, &[&2i64, &None::<String>, &2.5f64, &"2024-01-01 11:00:00", &false]).await.unwrap();

    // Parse with explicit parameter types.
    let typed = c
        .prepare_typed("INSERT INTO t (id, name) VALUES ($1, $2)", &[tokio_postgres::types::Type::INT8, tokio_postgres::types::Type::TEXT])
        .await
        .unwrap();
    c.execute(&typed, &[&10i64, &"typed"]).await.unwrap();
    c.batch_execute("DELETE FROM t WHERE id = 10").await.unwrap_err();

    // Typed results come back in binary format.
    let r = c.query("SELECT id, name, amount, ok FROM t WHERE id = $1", &[&2i64]).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, i64>(0), 2);
    assert_eq!(r[0].get::<_, Option<String>>(1), None);
    assert_eq!(r[0].get::<_, f64>(2), 2.5);
    assert!(!r[0].get::<_, bool>(3));
    let r = c.query("SELECT count(*) FROM t WHERE id <> 10", &[]).await.unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 2);
    let r = c.query("SELECT name FROM t WHERE id = 10", &[]).await.unwrap();
    assert_eq!(r[0].get::<_, String>(0), "typed");

    // Statements Sluice answers itself describe their rows too.
    let r = c.query("SHOW TABLES", &[]).await.unwrap();
    assert_eq!(r[0].get::<_, String>(0), "t");

    // COPY FROM STDIN, text format.
    let sink = c.copy_in("COPY t (id, name, amount) FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"3\tcy\t3.5\n4\t\\N\t4.5\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);

    // CSV with a header.
    let sink = c.copy_in("COPY t (id, name, amount) FROM STDIN WITH (FORMAT csv, HEADER true)").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"id,name,amount\n5,\"d, e\",5.5\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    assert_eq!(
        rows(&c, "SELECT id, name FROM t WHERE id >= 3 AND id < 10 ORDER BY id").await,
        vec![
            vec![Some("3".into()), Some("cy".into())],
            vec![Some("4".into()), None],
            vec![Some("5".into()), Some("d, e".into())],
        ]
    );

    // A malformed line is reported with its line number and nothing is written.
    let sink = c.copy_in("COPY t (id, name, amount) FROM STDIN WITH (FORMAT csv)").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"6,f,6.5\nseven,g,7.5\n")).await.unwrap();
    let err = sink.finish().await.unwrap_err();
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "22P02");
    assert!(db.message().contains("line 2"), "{}", db.message());
    assert_eq!(rows(&c, "SELECT count(*) FROM t").await, vec![vec![Some("6".into())]]);

    // SQLSTATE codes.
    for (sql, code) in [
        ("SELECT * FROM nope", "42P01"),
        ("SELECT nope FROM t", "42703"),
        ("SELEC 1", "42601"),
        ("INSERT INTO t (id) VALUES ('x')", "22P02"),
        ("CREATE TABLE t (a INT)", "42P07"),
    ] {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(e.as_db_error().map(|d| d.code().code()), Some(code), "{sql}: {e:?}");
    }
    // The connection is still usable after errors.
    assert_eq!(rows(&c, "SELECT 1").await, vec![vec![Some("1".into())]]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ssl_request_is_refused_cleanly() {
    let dir = temp_dir("ssl");
    let server = start(&dir);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    // SSLRequest: length 8, code 80877103.
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b[0], b'N');
    let _ = std::fs::remove_dir_all(&dir);
}
