//! Real PostgreSQL drivers against a real daemon: each client's script under `tests/clients/`
//! (psycopg2, psycopg 3, asyncpg, SQLAlchemy 2 over psycopg2 and psycopg, pgJDBC,
//! node-postgres) runs with the daemon's port and prints what it read, one line per check;
//! the test asserts the exit status and the exact text. The expected values are what
//! PostgreSQL 15 gives the same script, except the server version (Sluice answers 15.8) and the
//! time zone (UTC). `scripts/test` installs the clients; a missing one fails the test.

mod common;

use std::process::Command;

use common::{start, temp_dir};

/// The path of a client script.
fn script(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`, asserts that it succeeded, and returns its standard output.
fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test installs the clients)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} exited with {}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Starts a daemon and runs `python3 <script> <port> <args...>` against it.
fn python(test: &str, name: &str, args: &[&str]) -> String {
    let dir = temp_dir(test);
    let server = start(&dir);
    let mut cmd = Command::new("python3");
    cmd.arg(script(name)).arg(server.port().to_string()).args(args);
    run(cmd)
}

#[test]
fn psycopg2() {
    assert_eq!(
        python("drivers-psycopg2", "psycopg2_client.py", &[]),
        "server_version 150008
parameter 15.8 on
status 0
columns ['id', 'name', 'amount', 'ts']
row (1, \"it's\", 1.5, datetime.datetime(2024, 5, 1, 12, 30, 0, 250000))
row (2, 'b', None, None)
row (3, None, -2.25, None)
columns ['count', 'sum'] row (2, -2.25)
row (1, 'x', True)
error 42P01
timezone UTC
ok
"
    );
}

#[test]
fn psycopg3() {
    let rows = "row (1, 'a', 7, Decimal('1.50'), True, datetime.datetime(2024, 5, 1, 12, 30, 0, 250000))
row (2, 'b', None, Decimal('-2.25'), False, None)
row (3, 'c', 9, None, None, None)
row (4, None, None, None, None, None)
";
    assert_eq!(
        python("drivers-psycopg3", "psycopg3_client.py", &[]),
        format!(
            "server_version 150008 UTF8
text ['id', 'name', 'qty', 'amount', 'ok', 'ts']
{rows}binary ['id', 'name', 'qty', 'amount', 'ok', 'ts']
{rows}count 0 4
count 1 3
count 2 2
cast (42, 'x')
null (1,)
error 42703
in block INTRANS
after block IDLE
ok
"
        )
    );
}

#[test]
fn asyncpg() {
    assert_eq!(
        python("drivers-asyncpg", "asyncpg_client.py", &[]),
        "server_version 15 0
row (1, 'a', 7, 1.5, datetime.datetime(2024, 5, 1, 12, 30, 0, 250000))
row (2, 'b', None, None, None)
row (3, None, 9, -2.25, None)
columns ['id', 'name', 'qty', 'amount', 'ts']
fetchval 42
count 1
prepared ['int8'] ['id', 'name']
prepared row (2, 'b')
now datetime
error 42P01
in block 1
ok
"
    );
}

/// SQLAlchemy's expected output for `driver`.
fn sqlalchemy_expected(driver: &str) -> String {
    format!(
        "server_version_info (15,)
default_schema public
has_table True False
tables ['sa_{driver}']
column id BIGINT False None
column name VARCHAR(20) True None
column amount DOUBLE PRECISION True None
pk {{'constrained_columns': ['id'], 'name': 'sa_{driver}_pkey', 'comment': None, 'dialect_options': {{'postgresql_include': []}}}}
views []
select [(1, 'a'), (2, 'b')]
count 2
ok
"
    )
}

#[test]
fn sqlalchemy_psycopg2() {
    assert_eq!(python("drivers-sa-psycopg2", "sqlalchemy_client.py", &["psycopg2"]), sqlalchemy_expected("psycopg2"));
}

#[test]
fn sqlalchemy_psycopg3() {
    assert_eq!(python("drivers-sa-psycopg", "sqlalchemy_client.py", &["psycopg"]), sqlalchemy_expected("psycopg"));
}

/// Debian's pgJDBC jar (`libpostgresql-jdbc-java`).
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

#[test]
fn pgjdbc() {
    let dir = temp_dir("drivers-jdbc");
    let server = start(&dir);
    let mut cmd = Command::new("java");
    cmd.args(["-cp", JDBC_JAR]).arg(script("Jdbc.java")).arg(server.port().to_string());
    let selects: String = (1..=7)
        .map(|i| {
            let qty = if i % 2 == 0 { "null".to_string() } else { (i * 10).to_string() };
            format!("select {i} n{i} {qty} {:?}\n", i as f64 * 1.5)
        })
        .collect();
    let inserts: String = (1..=7).map(|i| format!("insert {i} 1\n")).collect();
    assert_eq!(
        run(cmd),
        format!(
            "product PostgreSQL 15
table public.jdbc_orders TABLE
column id -5 int8 19 NO 1
column name 12 varchar 20 YES 2
column qty 4 int4 10 YES 3
column amount 8 float8 17 YES 4
pk id 1 jdbc_orders_pkey
{inserts}{selects}fetched 7
count 7 count
ok
"
        )
    );
}

/// Where `scripts/test` installs npm's `pg`: `$SLUICE_NODE_MODULES`, by default
/// `~/.cache/sluice-node/node_modules`.
fn node_modules() -> String {
    std::env::var("SLUICE_NODE_MODULES")
        .unwrap_or_else(|_| format!("{}/.cache/sluice-node/node_modules", std::env::var("HOME").unwrap_or_default()))
}

#[test]
fn node_postgres() {
    let dir = temp_dir("drivers-node");
    let server = start(&dir);
    let mut cmd = Command::new("node");
    cmd.arg(script("node_pg.js")).arg(server.port().to_string()).env("NODE_PATH", node_modules());
    assert_eq!(
        run(cmd),
        "server_version 150008
columns [[\"id\",20],[\"name\",25],[\"qty\",23],[\"ok\",16]]
row {\"id\":\"1\",\"name\":\"a\",\"qty\":7,\"ok\":true}
row {\"id\":\"2\",\"name\":null,\"qty\":null,\"ok\":false}
count 0 2
count 1 1
count 2 0
simple {\"one\":1,\"x\":\"x\",\"f\":2.5}
error 42P01
ok
"
    );
}
