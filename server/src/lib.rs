//! The Sluice daemon.
//!
//! - [`config`]: layered configuration (defaults, `sluice.toml`, `SLUICE_*`, flags).
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
//! - [`copy`]: parsing of `COPY FROM STDIN` data, as it arrives.
//! - [`errors`]: the error type and its SQLSTATE codes.

pub mod config;
pub mod connect;
pub mod copy;
pub mod engine;
mod dml;
mod jobs;
pub mod errors;
pub mod handler;
pub mod params;
pub mod pgtext;
pub mod provider;
pub mod session;
pub mod sink_nulls;
mod values;

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
    let handlers = Arc::new(Handlers(Handler::new(engine.clone())));
    let topics = match &config.kafka_bootstrap {
        Some(k) => format!("topics on Kafka {k} as {}<table>", config.kafka_topic_prefix),
        None => "topics in the embedded log".to_string(),
    };
    println!("sluice listening on {addr} (data directory {}, {topics})", config.data_dir.display());
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "accepting connections");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = accepted?;
                let _ = socket.set_nodelay(true);
                let h = handlers.clone();
                tokio::spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, None, h).await {
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
