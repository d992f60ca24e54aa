//! Who may connect, and what they may do, against a real daemon: SCRAM-SHA-256 and md5
//! passwords (tokio-postgres, psql, psycopg), roles and privileges (42501), TLS with
//! `sslmode=require` and `verify-full`, the refusal of trust on a reachable address,
//! `max_connections` (53300) and `max_message_size`.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_sqllogictest::ServerProcess;
use tokio_postgres::{Client, NoTls};

const ADMIN_PASSWORD: &str = "Admin-Quartz-4471";
const BI_PASSWORD: &str = "Bi-Zebra-9182";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
    ServerProcess::start_with_env(bin(), dir, args, env).expect("sluice starts")
}

async fn connect_as(port: u16, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user={user} password={password} dbname=sluice"), NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn connect_user(port: u16, user: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user={user} dbname=sluice"), NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The SQLSTATE of a failed connection or statement.
fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

async fn sqlstate(client: &Client, sql: &str) -> String {
    match client.simple_query(sql).await {
        Ok(_) => "ok".to_string(),
        Err(e) => code(&e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_passwords_roles_and_privileges() {
    let dir = common::temp_dir("auth-scram");
    let server = start(&dir, &["--auth", "scram-sha-256"], &[("SLUICE_PASSWORD", ADMIN_PASSWORD)]);
    let port = server.port();

    // A wrong password, an unknown user and no password all fail with 28P01.
    let e = connect_as(port, "sluice", "wrong").await.err().expect("a wrong password is refused");
    assert_eq!(code(&e), "28P01", "{e}");
    let e = connect_as(port, "nobody", "x").await.err().expect("an unknown user is refused");
    assert_eq!(code(&e), "28P01", "{e}");

    let admin = connect_as(port, "sluice", ADMIN_PASSWORD).await.expect("the superuser logs in with SCRAM");
    admin.batch_execute("CREATE TABLE t (id BIGINT, v TEXT); INSERT INTO t VALUES (1, 'a'); CREATE TABLE u (id BIGINT)").await.unwrap();
    admin.batch_execute(&format!("CREATE USER bi WITH PASSWORD '{BI_PASSWORD}'")).await.unwrap();
    assert_eq!(sqlstate(&admin, "CREATE USER bi").await, "42710");
    admin.batch_execute("GRANT SELECT ON TABLE t TO bi").await.unwrap();

    let bi = connect_as(port, "bi", BI_PASSWORD).await.expect("bi logs in");
    let rows = bi.query("SELECT v FROM t", &[]).await.expect("bi may read t");
    assert_eq!(rows.len(), 1);
    assert_eq!(sqlstate(&bi, "SELECT * FROM u").await, "42501", "no grant on u");
    assert_eq!(sqlstate(&bi, "SELECT * FROM t JOIN u ON t.id = u.id").await, "42501");
    assert_eq!(sqlstate(&bi, "INSERT INTO t VALUES (2, 'b')").await, "42501");
    assert_eq!(sqlstate(&bi, "DELETE FROM t").await, "42501");
    assert_eq!(sqlstate(&bi, "CREATE TABLE mine (a INT)").await, "42501");
    assert_eq!(sqlstate(&bi, "DROP TABLE t").await, "42501");
    assert_eq!(sqlstate(&bi, "INSERT INTO u SELECT id FROM t").await, "42501", "jobs need a superuser");
    assert_eq!(sqlstate(&bi, "CREATE ROLE other").await, "42501");
    assert_eq!(sqlstate(&bi, "GRANT SELECT ON u TO bi").await, "42501");
    // Catalogs stay readable, and the extended protocol is checked as well.
    assert_eq!(sqlstate(&bi, "SHOW TABLES").await, "ok");
    let e = bi.query("SELECT * FROM u", &[]).await.err().expect("extended protocol refused too");
    assert_eq!(code(&e), "42501");

    // INSERT granted: bi may append to t, still not read u.
    admin.batch_execute("GRANT INSERT ON t TO bi").await.unwrap();
    assert_eq!(sqlstate(&bi, "INSERT INTO t VALUES (2, 'b')").await, "ok");
    // REVOKE applies to the open session at its next statement.
    admin.batch_execute("REVOKE ALL ON t FROM bi").await.unwrap();
    assert_eq!(sqlstate(&bi, "SELECT * FROM t").await, "42501");
    admin.batch_execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO bi").await.unwrap();
    assert_eq!(sqlstate(&bi, "SELECT * FROM u").await, "ok");
    assert_eq!(sqlstate(&bi, "INSERT INTO u VALUES (1)").await, "42501");

    // A role changes its own password, nothing else.
    assert_eq!(sqlstate(&bi, "ALTER ROLE bi WITH SUPERUSER").await, "42501");
    assert_eq!(sqlstate(&bi, "ALTER ROLE bi PASSWORD 'Bi-New-5'").await, "ok");
    assert_eq!(code(&connect_as(port, "bi", BI_PASSWORD).await.err().expect("old password gone")), "28P01");
    connect_as(port, "bi", "Bi-New-5").await.expect("new password works");

    // A role without LOGIN cannot log in.
    admin.batch_execute("CREATE ROLE reader PASSWORD 'Reader-77'").await.unwrap();
    assert_eq!(code(&connect_as(port, "reader", "Reader-77").await.err().expect("NOLOGIN")), "28000");

    // The password never comes back: not in errors of a failed CREATE ROLE, not in the store.
    let e = admin.simple_query("CREATE ROLE x WITH PASSWORD 'Leak-Check-303' GARBAGE").await.err().expect("syntax error");
    assert_eq!(code(&e), "42601");
    assert!(!e.to_string().contains("Leak-Check-303") && !format!("{e:?}").contains("Leak-Check-303"), "{e:?}");
    let e = admin.query("CREATE ROLE y WITH PASSWORD 'Leak-Check-303' GARBAGE", &[]).await.err().expect("syntax error");
    assert!(!format!("{e:?}").contains("Leak-Check-303"), "{e:?}");

    // DROP ROLE: the role can no longer log in, and its open session may do nothing more.
    admin.batch_execute("DROP ROLE bi").await.unwrap();
    assert_eq!(sqlstate(&admin, "DROP ROLE bi").await, "42704");
    assert_eq!(sqlstate(&admin, "DROP ROLE IF EXISTS bi").await, "ok");
    assert_eq!(sqlstate(&bi, "SELECT * FROM t").await, "42501");
    assert_eq!(code(&connect_as(port, "bi", "Bi-New-5").await.err().expect("dropped")), "28P01");
    assert_eq!(sqlstate(&admin, "DROP ROLE sluice").await, "55006", "the current user cannot be dropped");
    drop(server);

    for password in [ADMIN_PASSWORD, BI_PASSWORD, "Bi-New-5", "Reader-77", "Leak-Check-303"] {
        assert!(!dir_contains(&dir, password.as_bytes()), "the data directory holds the password {password}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_survive_a_restart() {
    let dir = common::temp_dir("auth-restart");
    let mut server = start(&dir, &["--auth", "scram-sha-256"], &[("SLUICE_PASSWORD", ADMIN_PASSWORD)]);
    let admin = connect_as(server.port(), "sluice", ADMIN_PASSWORD).await.unwrap();
    admin.batch_execute("CREATE TABLE t (id BIGINT); CREATE USER bi PASSWORD 'Bi-1'; GRANT SELECT ON t TO bi").await.unwrap();
    drop(admin);
    server.restart(false).expect("restarts");
    let bi = connect_as(server.port(), "bi", "Bi-1").await.expect("the role is in the catalog");
    assert_eq!(sqlstate(&bi, "SELECT * FROM t").await, "ok");
    assert_eq!(sqlstate(&bi, "INSERT INTO t VALUES (1)").await, "42501");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_passwords() {
    let dir = common::temp_dir("auth-md5");
    let server = start(&dir, &["--auth", "md5"], &[("SLUICE_PASSWORD", ADMIN_PASSWORD)]);
    let port = server.port();
    assert_eq!(code(&connect_as(port, "sluice", "wrong").await.err().expect("wrong password")), "28P01");
    let admin = connect_as(port, "sluice", ADMIN_PASSWORD).await.expect("md5 login");
    admin.batch_execute("CREATE USER old_client WITH PASSWORD 'Md5-Only-1'").await.unwrap();
    let c = connect_as(port, "old_client", "Md5-Only-1").await.expect("a created user logs in with md5");
    assert_eq!(sqlstate(&c, "SELECT 1").await, "ok");
    assert_eq!(code(&connect_as(port, "old_client", "Md5-Only-2").await.err().expect("wrong")), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_keeps_working_and_applies_grants_to_roles() {
    let dir = common::temp_dir("auth-trust");
    let server = start(&dir, &[], &[]);
    let admin = common::connect(server.port()).await;
    admin.batch_execute("CREATE TABLE t (id BIGINT); CREATE USER bi").await.unwrap();
    let bi = connect_user(server.port(), "bi").await.expect("trust needs no password");
    assert_eq!(sqlstate(&bi, "SELECT * FROM t").await, "42501", "a role's privileges apply under trust too");
    admin.batch_execute("GRANT SELECT ON t TO bi").await.unwrap();
    assert_eq!(sqlstate(&bi, "SELECT * FROM t").await, "ok");
}

#[test]
fn the_daemon_refuses_trust_on_a_reachable_address() {
    let dir = common::temp_dir("auth-remote");
    let out = Command::new(bin())
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&dir)
        .env_remove("SLUICE_AUTH")
        .env_remove("SLUICE_PASSWORD")
        .output()
        .expect("runs");
    assert!(!out.status.success(), "started: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 with auth = trust") && stderr.contains("--allow-trust-remote"), "{stderr}");

    // A password method without any password is refused as well.
    let out = Command::new(bin())
        .args(["--listen", "127.0.0.1:0", "--auth", "scram-sha-256", "--data-dir"])
        .arg(&dir)
        .env_remove("SLUICE_PASSWORD")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLUICE_PASSWORD"), "{out:?}");

    // Asked for explicitly, it starts.
    let mut child = Command::new(bin())
        .args(["--listen", "0.0.0.0:0", "--allow-trust-remote", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("runs");
    let mut line = [0u8; 64];
    let n = child.stdout.as_mut().unwrap().read(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(String::from_utf8_lossy(&line[..n]).starts_with("sluice listening on 0.0.0.0:"), "{:?}", String::from_utf8_lossy(&line[..n]));
}

/// A self-signed certificate for localhost and 127.0.0.1, made by the openssl command line.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// Runs psql with `conninfo` and the admin password; stdout, or stderr on failure.
fn psql(conninfo: &str, command: &str) -> Result<String, String> {
    let out = Command::new("/usr/bin/psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", conninfo, "-c", command])
        .env("PGPASSWORD", ADMIN_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .output()
        .expect("psql runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn tls_with_psql_and_psycopg() {
    let dir = common::temp_dir("auth-tls");
    let (cert, key) = self_signed(&dir, "server");
    let (other, _) = self_signed(&dir, "other");
    let server = start(
        &dir.join("data"),
        &["--auth", "scram-sha-256", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
        &[("SLUICE_PASSWORD", ADMIN_PASSWORD)],
    );
    let base = format!("host=127.0.0.1 port={} user=sluice dbname=sluice", server.port());

    let info = psql(&format!("{base} sslmode=require"), "\\conninfo").expect("sslmode=require");
    assert!(info.contains("SSL connection"), "{info}");
    let root = cert.display();
    let one = psql(&format!("{base} sslmode=verify-full sslrootcert={root}"), "SELECT 1").expect("verify-full");
    assert_eq!(one.trim(), "1");
    let e = psql(&format!("{base} sslmode=verify-full sslrootcert={}", other.display()), "SELECT 1").expect_err("a wrong root fails");
    assert!(e.contains("certificate verify failed"), "{e}");

    // psycopg 3 (libpq underneath), with verify-full.
    let script = format!(
        "import psycopg\nc = psycopg.connect('{base} sslmode=verify-full sslrootcert={root} password={ADMIN_PASSWORD}')\nprint(c.pgconn.ssl_in_use, c.execute('select 41 + 1').fetchone()[0])"
    );
    let out = Command::new("python3").args(["-c", &script]).output().expect("python3 runs");
    assert!(out.status.success(), "psycopg: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "True 42");
    drop(server);

    // Without a certificate the SSLRequest is refused, as before.
    let plain = start(&dir.join("plain"), &["--auth", "scram-sha-256"], &[("SLUICE_PASSWORD", ADMIN_PASSWORD)]);
    let base = format!("host=127.0.0.1 port={} user=sluice dbname=sluice", plain.port());
    let e = psql(&format!("{base} sslmode=require"), "SELECT 1").expect_err("no TLS");
    assert!(e.contains("server does not support SSL"), "{e}");
    assert_eq!(psql(&format!("{base} sslmode=disable"), "SELECT 1").expect("plain still works").trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused() {
    let dir = common::temp_dir("auth-limit");
    let server = start(&dir, &["--max-connections", "2"], &[]);
    let port = server.port();
    let a = common::connect(port).await;
    let b = common::connect(port).await;
    let e = connect_user(port, "sluice").await.err().expect("the third is refused");
    assert_eq!(code(&e), "53300", "{e}");
    assert_eq!(e.as_db_error().map(|d| d.message()), Some("sorry, too many clients already"), "{e:?}");
    assert_eq!(sqlstate(&a, "SELECT 1").await, "ok");
    drop(b);
    // The slot comes back once the server has seen the connection close.
    let mut ok = false;
    for _ in 0..50 {
        if connect_user(port, "sluice").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a closed connection gives its slot back");
}

#[test]
fn a_message_above_the_limit_is_refused_from_its_header() {
    let dir = common::temp_dir("auth-msgsize");
    let server = start(&dir, &["--max-message-size", "4096"], &[]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes());
    for kv in ["user", "sluice", "database", "sluice"] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    s.write_all(&startup).unwrap();
    read_until(&mut s, b'Z');
    // A Query that claims 100 MB: refused at once, with no body sent.
    s.write_all(&[b'Q', 0x05, 0xf5, 0xe1, 0x00]).unwrap();
    let (kind, body) = read_message(&mut s).expect("an answer before any body is sent");
    assert_eq!(kind, b'E');
    assert!(String::from_utf8_lossy(&body).contains("08P01"), "{:?}", String::from_utf8_lossy(&body));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    // A message within the limit still works, on a new connection.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = common::connect(server.port()).await;
        let q = format!("SELECT '{}'", "x".repeat(3000));
        assert_eq!(sqlstate(&c, &q).await, "ok");
        let q = format!("SELECT '{}'", "x".repeat(5000));
        assert_ne!(sqlstate(&c, &q).await, "ok");
    });
}

fn read_message(s: &mut std::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    s.read_exact(&mut body).ok()?;
    Some((head[0], body))
}

fn read_until(s: &mut std::net::TcpStream, kind: u8) {
    loop {
        let (k, body) = read_message(s).expect("start-up answers");
        assert_ne!(k, b'E', "{:?}", String::from_utf8_lossy(&body));
        if k == kind {
            return;
        }
    }
}

/// True when any file under `dir` holds `needle`.
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if dir_contains(&p, needle) {
                return true;
            }
        } else if let Ok(bytes) = std::fs::read(&p) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
    }
    false
}
