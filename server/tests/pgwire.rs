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
    let ins = c.prepare("INSERT INTO t VALUES ($1, $2, $3, CAST(CAST($4 AS TEXT) AS TIMESTAMP), $5)").await.unwrap();
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

/// Runs `sql` with the simple protocol: Ok(rows as text) or Err(SQLSTATE). Panics when the
/// answer is not a server error (the daemon died or closed the connection).
async fn answer(c: &tokio_postgres::Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    match c.simple_query(sql).await {
        Ok(msgs) => Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
                _ => None,
            })
            .collect()),
        Err(e) => match e.as_db_error() {
            Some(db) => Err(db.code().code().to_string()),
            None => panic!("no answer to a {}-byte statement {:?}...: {e:?}", sql.len(), &sql[..sql.len().min(60)]),
        },
    }
}

async fn copy(c: &tokio_postgres::Client, stmt: &str, data: &'static [u8]) -> Result<u64, tokio_postgres::Error> {
    let sink = c.copy_in(stmt).await?;
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(data)).await?;
    sink.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_takes_one_row_per_line_and_refuses_open_quotes() {
    let dir = temp_dir("copy-lines");
    let server = start(&dir);
    let c = connect(server.port()).await;
    exec(&c, "CREATE TABLE one (s STRING)").await;
    exec(&c, "CREATE TABLE two (a BIGINT, s STRING)").await;

    // Text format: the newline that ends the last line does not start another row.
    assert_eq!(copy(&c, "COPY one FROM STDIN", b"a\nb\nc\n").await.unwrap(), 3);
    assert_eq!(copy(&c, "COPY one FROM STDIN", b"d\ne\n\\.\n").await.unwrap(), 2);
    assert_eq!(copy(&c, "COPY two FROM STDIN", b"1\ta\n2\tb\n3\tc\n").await.unwrap(), 3);
    assert_eq!(rows(&c, "SELECT count(*) FROM one").await, vec![vec![Some("5".into())]]);
    assert_eq!(rows(&c, "SELECT count(*), count(s) FROM two").await, vec![vec![Some("3".into()), Some("3".into())]]);
    // CSV likewise; a quoted empty field is the empty string, an unquoted one NULL.
    assert_eq!(copy(&c, "COPY one FROM STDIN WITH (FORMAT csv)", b"x\n\"\"\n\n").await.unwrap(), 3);
    assert_eq!(
        rows(&c, "SELECT s FROM one WHERE s IS NULL OR s = '' OR s = 'x'").await,
        vec![vec![None], vec![Some("".into())], vec![Some("x".into())]]
    );

    // A quote left open would swallow the next records into one field: refused, nothing written.
    for (stmt, data) in [
        ("COPY two FROM STDIN WITH (FORMAT csv)", &b"4,ok\n5,\"open\n6,next\n"[..]),
        ("COPY one FROM STDIN WITH (FORMAT csv)", &b"fine\n\"open\nnext\n"[..]),
    ] {
        let sink = c.copy_in(stmt).await.unwrap();
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::copy_from_slice(data)).await.unwrap();
        let err = sink.finish().await.unwrap_err();
        let db = err.as_db_error().expect("server error");
        assert_eq!(db.code().code(), "22P02", "{}", db.message());
        assert!(db.message().contains("line 2") && db.message().contains("unterminated"), "{}", db.message());
    }
    assert_eq!(rows(&c, "SELECT count(*) FROM one").await, vec![vec![Some("8".into())]]);
    assert_eq!(rows(&c, "SELECT count(*) FROM two").await, vec![vec![Some("3".into())]]);

    // Data sent in many small messages, split inside fields and quotes, parses the same.
    let sink = c.copy_in("COPY two FROM STDIN WITH (FORMAT csv)").await.unwrap();
    futures::pin_mut!(sink);
    let mut data = Vec::new();
    for i in 0..20_000 {
        data.extend_from_slice(format!("{i},\"line\nbreak, \"\"quoted\"\"\"\n").as_bytes());
    }
    for piece in data.chunks(1000) {
        sink.send(bytes::Bytes::copy_from_slice(piece)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 20_000);
    assert_eq!(
        rows(&c, "SELECT count(*), min(s) FROM two WHERE a >= 0 AND s LIKE 'line%'").await,
        vec![vec![Some("20000".into()), Some("line\nbreak, \"quoted\"".into())]]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// sqlparser builds operator chains without recursing and DataFusion then walks them
/// recursively: deep statements must get an answer (a result or 54001), never crash the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_statements_are_answered_or_refused() {
    let dir = temp_dir("deep");
    let server = start(&dir);
    let c = connect(server.port()).await;
    exec(&c, "CREATE TABLE deep (a BIGINT)").await;

    fn shape(kind: usize, n: usize) -> String {
        match kind {
            0 => format!("SELECT 1{}", " + 1".repeat(n - 1)),
            1 => format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n)),
            2 => format!("SELECT 1 IN ({})", (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")),
            3 => format!("SELECT length('{}')", "x".repeat(n)),
            4 => format!("SELECT 1 WHERE 1 = 1{}", " AND 1 = 1".repeat(n - 1)),
            5 => format!("SELECT 'a'{}", " || 'a'".repeat(n - 1)),
            6 => format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n)),
            7 => format!("SELECT {}1{}", "abs(".repeat(n), ")".repeat(n)),
            8 => format!("SELECT {}1", "- ".repeat(n)),
            9 => format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(n - 1)),
            10 => format!("SELECT 1{}", "::BIGINT".repeat(n)),
            11 => format!("SELECT {}true", "NOT ".repeat(n)),
            12 => format!("SELECT {}1{}", "CASE WHEN true THEN ".repeat(n), " END".repeat(n)),
            13 => format!("INSERT INTO deep VALUES {}", (0..n).map(|i| format!("({i})")).collect::<Vec<_>>().join(", ")),
            14 => format!("SELECT count(*) FROM {}", (0..n).map(|i| format!("(SELECT 1) t{i}")).collect::<Vec<_>>().join(", ")),
            _ => format!("SELECT a FROM deep WHERE a = 0{}", " OR a = 1".repeat(n - 1)),
        }
    }
    const KINDS: usize = 16;

    // The shapes named in the bug report.
    let sum = answer(&c, &shape(0, 2000)).await;
    assert!(sum == Ok(vec![vec![Some("2000".into())]]) || sum == Err("54001".into()), "{sum:?}");
    assert_eq!(answer(&c, &shape(1, 5000)).await, Err("54001".into()));
    assert_eq!(answer(&c, &shape(2, 10_000)).await, Ok(vec![vec![Some("t".into())]]));
    assert_eq!(answer(&c, &shape(3, 1 << 20)).await, Ok(vec![vec![Some((1 << 20).to_string())]]));
    assert_eq!(answer(&c, &shape(0, 200_000)).await, Err("54001".into()));
    assert_eq!(answer(&c, &shape(13, 10_000)).await, Ok(vec![]));

    // Every shape at sizes around the limits, then a deterministic pseudo-random mix.
    let mut cases: Vec<(usize, usize)> = Vec::new();
    for kind in 0..KINDS {
        // Just within and beyond the limits: 100 levels, 16 subqueries, 200 joins, 3 000 operators.
        for n in [1, 10, 16, 17, 60, 100, 101, 150, 201, 202, 1000, 3001, 3002] {
            cases.push((kind, n));
        }
    }
    let mut seed: u64 = 0x5eed;
    for _ in 0..40 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let kind = (seed >> 33) as usize % KINDS;
        let n = 1 + (seed >> 13) as usize % 3_000;
        cases.push((kind, n));
    }
    for (kind, n) in cases {
        let sql = shape(kind, n);
        if let Err(code) = answer(&c, &sql).await {
            assert_eq!(code, "54001", "shape {kind} size {n}");
        }
        assert_eq!(answer(&c, "SELECT 1").await, Ok(vec![vec![Some("1".into())]]), "after shape {kind} size {n}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A parameter of NUMERIC type in binary form (PostgreSQL's base-10000 digits).
#[derive(Debug)]
struct Numeric(&'static [i16], i16);

impl tokio_postgres::types::ToSql for Numeric {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_i16(self.0.len() as i16);
        out.put_i16(self.1);
        out.put_u16(0);
        out.put_u16(0);
        for d in self.0 {
            out.put_i16(*d);
        }
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(_ty: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// One byte, whatever type the parameter has.
#[derive(Debug)]
struct OneByte;

impl tokio_postgres::types::ToSql for OneByte {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(b"x");
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(_ty: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_parameters_that_do_not_fit_are_refused() {
    use tokio_postgres::types::Type;
    let dir = temp_dir("params");
    let server = start(&dir);
    let c = connect(server.port()).await;
    exec(&c, "CREATE TABLE p (i BIGINT, d DOUBLE)").await;
    let code = |r: Result<u64, tokio_postgres::Error>| r.unwrap_err().as_db_error().map(|d| d.code().code().to_string());

    // Text bound to a BIGINT: 2**70 is out of range, 'x' no number.
    let ins = "INSERT INTO p (i) VALUES ($1)";
    let r = c.query_typed(ins, &[(&"1180591620717411303424", Type::TEXT)]).await.map(|_| 0);
    assert_eq!(code(r).as_deref(), Some("22003"));
    let r = c.query_typed(ins, &[(&"x", Type::TEXT)]).await.map(|_| 0);
    assert_eq!(code(r).as_deref(), Some("22P02"));
    // A NUMERIC of 2**70 (digits 11 8059 1620 7174 1130 3424) does not fit a BIGINT either.
    let r = c.query_typed(ins, &[(&Numeric(&[11, 8059, 1620, 7174, 1130, 3424], 5), Type::NUMERIC)]).await.map(|_| 0);
    assert_eq!(code(r).as_deref(), Some("22003"));
    // Text and a 1-byte binary value bound to a DOUBLE.
    let ins = "INSERT INTO p (d) VALUES ($1)";
    let r = c.query_typed(ins, &[(&"x", Type::TEXT)]).await.map(|_| 0);
    assert_eq!(code(r).as_deref(), Some("22P02"));
    let stmt = c.prepare(ins).await.unwrap();
    assert_eq!(stmt.params(), &[Type::FLOAT8]);
    assert_eq!(code(c.execute(&stmt, &[&OneByte]).await).as_deref(), Some("08P01"));
    assert_eq!(rows(&c, "SELECT count(*) FROM p").await, vec![vec![Some("0".into())]]);

    // Values that fit are stored, text ones cast to the column's type.
    c.query_typed("INSERT INTO p VALUES ($1, $2)", &[(&"42", Type::TEXT), (&"2.5", Type::TEXT)]).await.unwrap();
    c.execute(&stmt, &[&1.5f64]).await.unwrap();
    c.query_typed("INSERT INTO p (i) VALUES ($1)", &[(&Numeric(&[12], 0), Type::NUMERIC)]).await.unwrap();
    assert_eq!(
        rows(&c, "SELECT i, d FROM p").await,
        vec![vec![None, Some("1.5".into())], vec![Some("12".into()), None], vec![Some("42".into()), Some("2.5".into())]]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A large `INSERT ... VALUES` (more than 1 MiB, parsed in pieces, its literals converted
/// without a plan) stores the same rows as the same values planned by DataFusion in small
/// statements, and is all or nothing: a bad value in its last piece writes none of its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_insert_is_parsed_in_pieces_and_all_or_nothing() {
    let dir = temp_dir("large-insert");
    let server = start(&dir);
    let c = connect(server.port()).await;
    let cols = "(id BIGINT, s STRING, d DOUBLE, b BOOLEAN, ts TIMESTAMP(3), code VARCHAR(3))";
    exec(&c, &format!("CREATE TABLE big {cols}; CREATE TABLE small {cols}")).await;
    let n = 120_000;
    let row = |i: i64, id: String| {
        let s = if i % 13 == 0 { "NULL".to_string() } else { format!("'it''s, (row) {i}'") };
        // Integers and decimals mixed in one column; a negative id now and then.
        let d = if i % 2 == 0 { format!("{}", i / 2) } else { format!("{}.25", i) };
        let b = if i % 5 == 0 { "NULL" } else if i % 2 == 0 { "TRUE" } else { "false" };
        format!("({id}, {s}, {d}, {b}, '2024-01-01 00:00:{:02}', 'c{}')", i % 60, i % 10)
    };
    let ids = |i: i64| if i % 7 == 0 { -i } else { i };
    let all: Vec<String> = (0..n).map(|i| row(i, ids(i).to_string())).collect();
    let sql = format!("INSERT INTO big VALUES {};", all.join(",\n"));
    assert!(sql.len() > 2 << 20, "{} bytes", sql.len());
    exec(&c, &sql).await;
    // The oracle: `id + 0` is an expression, so DataFusion plans these, 2 000 rows at a time.
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let v: Vec<String> = chunk.iter().map(|&i| row(i, format!("{} + 0", ids(i)))).collect();
        exec(&c, &format!("INSERT INTO small VALUES {}", v.join(", "))).await;
    }
    let count = |t: &str| format!("SELECT count(*) FROM {t}");
    assert_eq!(rows(&c, &count("big")).await, vec![vec![Some(n.to_string())]]);
    for (a, b) in [("big", "small"), ("small", "big")] {
        let diff = rows(&c, &format!("SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})")).await;
        assert_eq!(diff, vec![vec![Some("0".into())]], "{a} has rows {b} has not");
    }
    // A value too long for VARCHAR(3), or one that is not a number, in the last piece.
    for bad in ["'toolong'", "'abc'"] {
        let mut rows_bad = all.clone();
        let last = rows_bad.len() - 1;
        rows_bad[last] = if bad == "'abc'" { "('x', 's', 1, TRUE, '2024-01-01 00:00:00', 'ok')".into() } else { format!("(1, 's', 1, TRUE, '2024-01-01 00:00:00', {bad})") };
        let err = c.batch_execute(&format!("INSERT INTO big VALUES {}", rows_bad.join(", "))).await.unwrap_err();
        let code = err.as_db_error().map(|d| d.code().code().to_string());
        assert!(matches!(code.as_deref(), Some("22001" | "22P02")), "{err:?}");
        assert_eq!(rows(&c, &count("big")).await, vec![vec![Some(n.to_string())]], "nothing of the failed INSERT is written");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
