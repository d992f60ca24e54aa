//! The Sluice daemon.
//!
//! - [`config`]: layered configuration (defaults, `sluice.toml`, `SLUICE_*`, flags).
//! - [`auth`]: who may connect and what they may do: passwords (SCRAM-SHA-256, md5), roles,
//!   `GRANT`/`REVOKE`, the privilege check of every statement, TLS, `max_connections`.
//! - [`connect`]: connector tasks (Kafka, Postgres CDC, MongoDB) and the connector statements.
//! - [`engine`]: statement dispatch over the catalog, topics, jobs and DataFusion; its `impl`
//!   continues in `dml` (client writes), `jobs` (persistent queries) and `values` (literal rows).
//! - [`provider`]: tables as DataFusion table providers, for batch queries.
//! - [`handler`]: the pgwire front end (simple and extended protocols, COPY).
//! - [`session`]: per-connection state: the `BEGIN` block and what it changed, a COPY in progress,
//!   `SET 'key' = 'value'` options.
//! - [`sink_nulls`]: the enforcers of jobs' sinks (`table.exec.sink.not-null-enforcer`,
//!   `table.exec.sink.type-length-enforcer`), `RESUME JOB ... WITH (...)`, dead-letter tables.
//! - [`params`]: bound parameters of the extended protocol, checked and decoded.
//! - [`pg_params`]: PostgreSQL's session parameters: start-up `ParameterStatus`, `SET`/`SHOW`/
//!   `RESET`, the one server version; [`pg_names`]: result column names as PostgreSQL gives
//!   them; [`pg_functions`]: `version()` and a `timestamptz` `now()`.
//! - [`subscribe`]: `SUBSCRIBE`, live results: a query's snapshot, then every change as it
//!   commits.
//! - [`streaming`]: batch results sent as they are produced, and the extended protocol's
//!   `Execute` with a row limit (`PortalSuspended`); [`cursors`]: `DECLARE`, `FETCH`, `MOVE`,
//!   `CLOSE`.
//! - [`copy`]: parsing of `COPY FROM STDIN` data, as it arrives; [`copy_out`]: `COPY ... TO
//!   STDOUT` in text, CSV and binary, streamed.
//! - [`cancel`]: cancel requests and `statement_timeout` stopping a running statement (57014).
//! - [`errors`]: the error type and its SQLSTATE codes.
//! - [`wire_guard`]: every frontend message checked against its layout before pgwire decodes it.

pub mod cancel;
pub mod auth;
pub mod config;
pub mod connect;
pub mod copy;
pub mod copy_out;
pub mod cursors;
pub mod engine;
mod dml;
mod jobs;
pub mod errors;
pub mod handler;
pub mod params;
pub mod pg_catalog;
pub mod pg_functions;
pub mod pg_names;
pub mod pg_params;
pub mod pgtext;
pub mod provider;
pub mod session;
pub mod sink_nulls;
pub mod streaming;
pub mod subscribe;
mod values;
pub mod wire_guard;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::engine::Engine;
use crate::handler::{Handler, Handlers};

/// Opens the data directory, resumes persistent queries and serves PostgreSQL clients until
/// SIGINT or SIGTERM; then stops every job with a final checkpoint.
///
/// Errors: the data directory cannot be opened, or the address cannot be bound.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Crash injection for tests (SLUICE_FAILPOINTS, see sluice_catalog::failpoint).
    let armed = sluice_catalog::failpoint::arm_from_env()?;
    if armed > 0 {
        tracing::warn!(armed, "failpoints armed from SLUICE_FAILPOINTS");
    }
    let engine = Engine::open_with(&config.data_dir, config.kafka_bootstrap.clone(), &config.kafka_topic_prefix).await?;
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let auth = crate::auth::Authenticator::open(&engine, &config)?;
    let handlers = Arc::new(Handlers(Handler::new(engine.clone(), auth.clone())));
    let topics = match &config.kafka_bootstrap {
        Some(k) => format!("topics on Kafka {k} as {}<table>", config.kafka_topic_prefix),
        None => "topics in the embedded log".to_string(),
    };
    println!("sluice listening on {addr} (data directory {}, {topics})", config.data_dir.display());
    tracing::info!(%addr, data_dir = %config.data_dir.display(), auth = ?config.auth, tls = auth.tls().is_some(), "accepting connections");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = accepted?;
                let _ = socket.set_nodelay(true);
                let h = handlers.clone();
                let (tls, max_message) = (auth.tls(), auth.max_message_size());
                tokio::spawn(async move {
                    if let Err(e) = crate::wire_guard::serve(socket, tls, h, max_message).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!("shutting down: stopping jobs with a final checkpoint");
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.shutdown()).await?;
    Ok(())
}
