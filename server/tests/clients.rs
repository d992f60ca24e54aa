//! What PostgreSQL clients read off the wire, checked against a real daemon with exact values:
//! the server version and start-up parameters, SET/SHOW, column names as PostgreSQL names them,
//! `now()`'s type, the extended protocol's Describe (parameter types, NoData) and NULL
//! parameters, and the transaction status in ReadyForQuery (with real `psql`, which prints it
//! in its prompt variables).

mod common;

use std::process::Command;

use common::{connect, exec, rows, start, temp_dir};
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;

/// Column names of a simple-protocol result.
async fn column_names(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    for m in c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")) {
        if let SimpleQueryMessage::RowDescription(cols) = m {
            return cols.iter().map(|c| c.name().to_string()).collect();
        }
    }
    panic!("{sql}: no RowDescription")
}

async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    rows(c, sql).await[0][0].clone().unwrap_or_else(|| panic!("{sql}: NULL"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_clients_read() {
    let dir = temp_dir("clients");
    let server = start(&dir);
    let port = server.port();
    let c = connect(port).await;
    exec(&c, "CREATE TABLE t (x BIGINT, s STRING)").await;
    exec(&c, "INSERT INTO t VALUES (1, 'A')").await;

    // One version everywhere.
    assert_eq!(one(&c, "SHOW server_version").await, "15.8");
    assert_eq!(one(&c, "SHOW server_version_num").await, "150008");
    let v = one(&c, "SELECT version()").await;
    assert!(v.starts_with("PostgreSQL 15.8 on ") && v.ends_with(&format!("64-bit (Sluice {})", env!("CARGO_PKG_VERSION"))), "{v}");

    // SHOW of the parameters drivers read, SET shown back.
    for (name, value) in [
        ("search_path", "\"$user\", public"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("client_encoding", "UTF8"),
        ("standard_conforming_strings", "on"),
        ("transaction_isolation", "read committed"),
        ("integer_datetimes", "on"),
    ] {
        assert_eq!(one(&c, &format!("SHOW {name}")).await, value, "SHOW {name}");
    }
    assert_eq!(column_names(&c, "SHOW datestyle").await, ["DateStyle"]);
    exec(&c, "SET application_name = 'tests'").await;
    exec(&c, "SET TimeZone TO 'Europe/Paris'").await;
    exec(&c, "SET search_path = public").await;
    assert_eq!(one(&c, "SHOW application_name").await, "tests");
    assert_eq!(one(&c, "SHOW timezone").await, "Europe/Paris");
    assert_eq!(one(&c, "SHOW search_path").await, "public");
    exec(&c, "RESET TimeZone").await;
    assert_eq!(one(&c, "SHOW TimeZone").await, "UTC");
    let e = c.simple_query("SHOW no_such_parameter").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42704");
    let e = c.simple_query("SET client_encoding = 'LATIN1'").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "22023");

    // Column names as PostgreSQL names them.
    assert_eq!(column_names(&c, "select 1").await, ["?column?"]);
    assert_eq!(
        column_names(&c, "select count(*), sum(x), x + 1, lower(s), cast(x as int), 2 AS two from t group by x, s").await,
        ["count", "sum", "?column?", "lower", "x", "two"]
    );
    assert_eq!(column_names(&c, "select * from t").await, ["x", "s"]);
    let st = c.prepare("select count(*) from t").await.unwrap();
    assert_eq!(st.columns()[0].name(), "count");

    // now() is a timestamptz.
    let st = c.prepare("select now(), current_timestamp").await.unwrap();
    assert_eq!(st.columns()[0].type_(), &Type::TIMESTAMPTZ);
    assert_eq!(st.columns()[1].type_(), &Type::TIMESTAMPTZ);
    assert!(one(&c, "select now()").await.ends_with("+00"));

    // Extended protocol: a cast parameter is described with the cast's type.
    let st = c.prepare("select $1::int8 + 1").await.unwrap();
    assert_eq!(st.params(), &[Type::INT8]);
    let r = c.query(&st, &[&41i64]).await.unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 42);
    // An INSERT is described as NoData: no columns, its parameters typed.
    let ins = c.prepare("INSERT INTO t VALUES ($1, $2)").await.unwrap();
    assert!(ins.columns().is_empty());
    assert_eq!(ins.params(), &[Type::INT8, Type::TEXT]);
    for i in 0..6i64 {
        c.execute(&ins, &[&(10 + i), &None::<String>]).await.unwrap();
    }
    assert_eq!(one(&c, "select count(*) from t where s is null").await, "6");

    // Transaction status: idle, in a block, aborted (25P02), and COMMIT of an aborted block.
    let tx = connect(port).await;
    exec(&tx, "BEGIN").await;
    let e = tx.simple_query("SELECT * FROM nope").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42P01");
    let e = tx.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "25P02");
    let e = tx.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "25P02");
    let done = tx.simple_query("COMMIT").await.unwrap();
    assert!(matches!(done.last(), Some(SimpleQueryMessage::CommandComplete(0))), "{done:?}");
    assert_eq!(one(&tx, "SELECT 1").await, "1");

    // psql: start-up parameters and the transaction status it tracks (%x in its prompt).
    let out = psql(
        port,
        "\\set PROMPT1 '[%x]'\n\\echo :SERVER_VERSION_NAME :SERVER_VERSION_NUM\nBEGIN;\n\\echo [:TRANSACTION]\nSELECT nope FROM t;\nSELECT 1;\n\\echo [:TRANSACTION]\nROLLBACK;\n\\echo [:TRANSACTION]\nSHOW application_name;\n",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "15.8 150008", "{out}");
    assert!(out.contains("current transaction is aborted"), "{out}");
    // psql has no TRANSACTION variable; its prompt's %x is what shows the status.
    assert!(out.contains("clients-psql"), "{out}");
    let prompt = psql_prompt(port);
    assert_eq!(prompt, "[*][!][]", "psql's %x after BEGIN, an error, ROLLBACK");
}

/// Runs `script` with psql (application_name `clients-psql`), stdout and stderr together.
fn psql(port: u16, script: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "sluice", "-d", "sluice", "-c", ""])
        .env("PGAPPNAME", "clients-psql")
        .output()
        .expect("psql is installed (scripts/test installs postgresql-client)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut child = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "sluice", "-d", "sluice"])
        .env("PGAPPNAME", "clients-psql")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// psql's `%x` prompt escape (`*` in a block, `!` in an aborted one, empty when idle), read
/// from ReadyForQuery, after BEGIN, after an error in the block, and after ROLLBACK.
fn psql_prompt(port: u16) -> String {
    let script = "BEGIN;\n\\set P1 '%x'\n\\echo -n [\n\\echo -n :P1\nSELECT 1 \\g /dev/null\n";
    let _ = script;
    // \echo does not expand prompt escapes; the prompt itself does, printed for each line read
    // in interactive mode. `-n` keeps readline out; psql prints PROMPT1 before each statement.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "printf 'BEGIN;\\nSELECT nope;\\nROLLBACK;\\n' | script -qc \"psql -X -q -n -h 127.0.0.1 -p {port} -U sluice -d sluice -v PROMPT1='[%x]' -v PROMPT2=''\" /dev/null"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // The prompts printed after each statement, in order: '[]' at start, then one per line.
    let prompts: Vec<&str> = text.match_indices('[').map(|(i, _)| &text[i..]).filter_map(|s| s.find(']').map(|j| &s[..=j])).collect();
    prompts.iter().skip(1).take(3).copied().collect::<Vec<_>>().concat()
}

/// Each row of a simple-protocol result as `a|b|c` (NULL as empty), in the server's order.
async fn lines(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")) {
        if let SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).unwrap_or("")).collect::<Vec<_>>().join("|"));
        }
    }
    out
}

/// The information schema and the system functions and casts clients call, with the values
/// PostgreSQL 15 gives for the same table (its `pg_toast` schema aside: Sluice has none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_functions() {
    let dir = temp_dir("clients-catalog");
    let server = start(&dir);
    let c = connect(server.port()).await;
    exec(
        &c,
        "CREATE TABLE ci (id BIGINT PRIMARY KEY, name VARCHAR(20), note TEXT, qty INT, amount DECIMAL(10,2), ts TIMESTAMP(3), ok BOOLEAN, d DOUBLE PRECISION)",
    )
    .await;
    let checks: &[(&str, &[&str])] = &[
        (
            "SELECT column_name, ordinal_position, is_nullable, data_type, character_maximum_length, numeric_precision, \
             numeric_scale, datetime_precision, udt_name FROM information_schema.columns WHERE table_name = 'ci' ORDER BY ordinal_position",
            &[
                "id|1|NO|bigint||64|0||int8",
                "name|2|YES|character varying|20||||varchar",
                "note|3|YES|text|||||text",
                "qty|4|YES|integer||32|0||int4",
                "amount|5|YES|numeric||10|2||numeric",
                "ts|6|YES|timestamp without time zone||||3|timestamp",
                "ok|7|YES|boolean|||||bool",
                "d|8|YES|double precision||53|||float8",
            ],
        ),
        (
            "SELECT table_schema, table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 'ci'",
            &["public|ci|BASE TABLE"],
        ),
        ("SELECT schema_name FROM information_schema.schemata ORDER BY 1", &["information_schema", "pg_catalog", "public"]),
        (
            "SELECT constraint_name, constraint_type FROM information_schema.table_constraints WHERE table_name = 'ci' AND constraint_type = 'PRIMARY KEY'",
            &["ci_pkey|PRIMARY KEY"],
        ),
        ("SELECT constraint_name, column_name, ordinal_position FROM information_schema.key_column_usage WHERE table_name = 'ci'", &["ci_pkey|id|1"]),
        ("SELECT count(*) FROM information_schema.views WHERE table_schema = 'public'", &["0"]),
        (
            "SELECT current_schema(), current_schemas(true), current_schemas(false), current_database(), current_user, session_user",
            &["public|{pg_catalog,public}|{public}|sluice|sluice|sluice"],
        ),
        (
            "SELECT current_setting('DateStyle'), set_config('application_name', 'cat', false), current_setting('application_name')",
            &["ISO, MDY|cat|cat"],
        ),
        (
            "SELECT pg_backend_pid() > 0, to_regtype('int4'), to_regtype('nope') IS NULL, to_regclass('ci'), to_regclass('nope') IS NULL",
            &["t|integer|t|ci|t"],
        ),
        ("SELECT quote_ident('a b'), quote_ident('ab'), parse_ident('Public.\"My T\"')", &["\"a b\"|ab|{public,\"My T\"}"]),
        ("SELECT array_lower(ARRAY['a','b'], 1), array_upper(ARRAY['a','b'], 1)", &["1|2"]),
        ("SELECT generate_series(1, 3)", &["1", "2", "3"]),
        ("SELECT s FROM generate_series(2, 4) s", &["2", "3", "4"]),
        (
            "SELECT format_type(1043, 24), 'ci'::regclass::oid = (SELECT oid FROM pg_class WHERE relname = 'ci'), 'int8'::regtype, 'int8'::regtype::oid, 23::regtype",
            &["character varying(20)|t|bigint|20|integer"],
        ),
        ("SELECT '{\"a\": 1}'::jsonb IS NOT NULL", &["t"]),
        ("SELECT pg_encoding_to_char(6), has_table_privilege('ci', 'SELECT'), has_schema_privilege('public', 'USAGE')", &["UTF8|t|t"]),
        (
            "SELECT name, setting FROM pg_settings WHERE name IN ('DateStyle', 'server_version_num') ORDER BY name",
            &["DateStyle|ISO, MDY", "server_version_num|150008"],
        ),
        (
            "SELECT obj_description('ci'::regclass, 'pg_class') IS NULL, col_description('ci'::regclass, 1) IS NULL, \
             pg_get_constraintdef((SELECT oid FROM pg_constraint WHERE conrelid = 'ci'::regclass)), \
             pg_get_indexdef((SELECT indexrelid FROM pg_index WHERE indrelid = 'ci'::regclass))",
            &["t|t|PRIMARY KEY (id)|CREATE UNIQUE INDEX ci_pkey ON public.ci USING btree (id)"],
        ),
        ("SELECT count(*) FROM pg_proc WHERE proname = 'version'", &["1"]),
        ("SELECT count(*) FROM pg_range", &["0"]),
        ("SELECT count(*) FROM pg_enum", &["0"]),
        ("SELECT count(*) FROM pg_attrdef WHERE adrelid = 'ci'::regclass", &["0"]),
        ("SELECT count(*) FROM pg_description WHERE objoid = 'ci'::regclass", &["0"]),
    ];
    let mut failed = Vec::new();
    for (sql, expected) in checks {
        match c.simple_query(sql).await {
            Ok(_) => {
                let got = lines(&c, sql).await;
                if got != *expected {
                    failed.push(format!("{sql}\n  expected {expected:?}\n  got      {got:?}"));
                }
            }
            Err(e) => failed.push(format!("{sql}\n  failed: {e:?}")),
        }
    }
    assert!(failed.is_empty(), "{} of {} checks differ from PostgreSQL:\n{}", failed.len(), checks.len(), failed.join("\n"));
}
