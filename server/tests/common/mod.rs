//! Helpers shared by the integration tests: a real `sluice` daemon on a real socket.

#![allow(dead_code)]

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
