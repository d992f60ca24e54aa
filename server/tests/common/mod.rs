//! Helpers shared by the integration tests: a real `sluice` daemon on a real socket.

#![allow(dead_code)]

pub mod kafka;
pub mod oracle;
pub mod services;

use std::path::PathBuf;

use sluice_sqllogictest::ServerProcess;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A fresh data directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts the daemon built by this package on `dir`.
pub fn start(dir: &std::path::Path) -> ServerProcess {
    ServerProcess::start(std::path::Path::new(env!("CARGO_BIN_EXE_sluice")), dir).expect("sluice starts")
}

/// Connects a tokio-postgres client.
pub async fn connect(port: u16) -> Client {
    let (client, conn) = tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=sluice dbname=sluice"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Runs `sql` with the simple protocol and returns its rows as text, sorted.
pub async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut out: Vec<Vec<Option<String>>> = msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(|s| s.to_string())).collect()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// Runs statements, panicking with the statement on error.
pub async fn exec(client: &Client, sql: &str) {
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// The single number a query such as `SELECT count(*) ...` returns.
pub async fn count(client: &Client, sql: &str) -> i64 {
    let r = rows(client, sql).await;
    r[0][0].as_deref().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{sql}: not one number: {r:?}"))
}

/// The value of `property` in `DESCRIBE CONNECTOR name` (`state`, `position`, `rows`, ...).
pub async fn connector_property(client: &Client, name: &str, property: &str) -> Option<String> {
    rows(client, &format!("DESCRIBE CONNECTOR {name}")).await.into_iter().find(|r| r[0].as_deref() == Some(property)).and_then(|r| r[1].clone())
}

/// `DESCRIBE CONNECTOR name` as `property=value` text, for failure messages.
pub async fn described(client: &Client, name: &str) -> String {
    let props = rows(client, &format!("DESCRIBE CONNECTOR {name}")).await;
    props.iter().map(|r| format!("{}={}", r[0].as_deref().unwrap_or(""), r[1].as_deref().unwrap_or(""))).collect::<Vec<_>>().join(", ")
}
