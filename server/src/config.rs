//! Daemon configuration, layered as Arroyo does: built-in defaults, then a TOML file
//! (`sluice.toml` in the working directory, or `--config PATH`), then `SLUICE_*` environment
//! variables, then command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Command-line flags of the `sluice` daemon.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Sluice: a streaming SQL server that speaks the PostgreSQL wire protocol")]
pub struct Cli {
    /// Address to listen on for PostgreSQL clients [default: 127.0.0.1:4488; env SLUICE_LISTEN]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Directory holding the catalog, topics and operator state [default: ./sluice-data; env SLUICE_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter, as tracing's EnvFilter [default: info; env SLUICE_LOG or RUST_LOG]
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Kafka cluster that becomes the topic backend: every table's topic is a Kafka topic named
    /// <prefix><table>; also the default 'properties.bootstrap.servers' of Kafka tables. Without
    /// it topics live in the embedded log under the data directory [env SLUICE_KAFKA_BOOTSTRAP]
    #[arg(long, value_name = "HOST:PORT[,...]")]
    pub kafka_bootstrap: Option<String>,
    /// Prefix of the Kafka topic names of tables, with --kafka-bootstrap [default: sluice.; env
    /// SLUICE_KAFKA_TOPIC_PREFIX]
    #[arg(long, value_name = "PREFIX")]
    pub kafka_topic_prefix: Option<String>,
    /// Configuration file [default: ./sluice.toml when present]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Listen address for the PostgreSQL wire protocol.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log filter.
    pub log: String,
    /// Kafka bootstrap servers used by Kafka tables that do not name their own.
    #[serde(default)]
    pub kafka_bootstrap: Option<String>,
    /// Prefix of the Kafka topic names of tables when Kafka is the topic backend.
    #[serde(default = "default_topic_prefix")]
    pub kafka_topic_prefix: String,
}

fn default_topic_prefix() -> String {
    sluice_connectors::kafka_log::DEFAULT_TOPIC_PREFIX.to_string()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:4488".parse().expect("valid address"),
            data_dir: PathBuf::from("sluice-data"),
            log: "info".into(),
            kafka_bootstrap: None,
            kafka_topic_prefix: default_topic_prefix(),
        }
    }
}

impl Config {
    /// Resolves the configuration from all layers.
    ///
    /// Errors: a malformed file or environment value (figment names the key).
    pub fn load(cli: &Cli) -> Result<Config, figment::Error> {
        let file = cli.config.clone().unwrap_or_else(|| PathBuf::from("sluice.toml"));
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if cli.config.is_some() || file.exists() {
            fig = fig.merge(Toml::file(&file));
        }
        fig = fig.merge(Env::prefixed("SLUICE_"));
        if let Some(l) = cli.listen {
            fig = fig.merge(Serialized::default("listen", l));
        }
        if let Some(d) = &cli.data_dir {
            fig = fig.merge(Serialized::default("data_dir", d));
        }
        if let Some(l) = &cli.log {
            fig = fig.merge(Serialized::default("log", l));
        }
        if let Some(k) = &cli.kafka_bootstrap {
            fig = fig.merge(Serialized::default("kafka_bootstrap", k));
        }
        if let Some(p) = &cli.kafka_topic_prefix {
            fig = fig.merge(Serialized::default("kafka_topic_prefix", p));
        }
        fig.extract()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("sluice.toml", "listen = \"127.0.0.1:5000\"\ndata_dir = \"from-file\"\nlog = \"debug\"")?;
            jail.set_env("SLUICE_DATA_DIR", "from-env");
            let cli = Cli { listen: None, data_dir: None, log: None, kafka_bootstrap: None, kafka_topic_prefix: None, config: None };
            let c = Config::load(&cli).expect("loads");
            assert_eq!(c.listen.port(), 5000);
            assert_eq!(c.data_dir, PathBuf::from("from-env"));
            assert_eq!(c.log, "debug");
            let cli = Cli { listen: Some("127.0.0.1:6000".parse().unwrap()), data_dir: None, log: None, kafka_bootstrap: Some("k:9092".into()), kafka_topic_prefix: None, config: None };
            let c = Config::load(&cli).expect("loads");
            assert_eq!(c.listen.port(), 6000);
            assert_eq!(c.kafka_bootstrap.as_deref(), Some("k:9092"));
            assert_eq!(c.kafka_topic_prefix, "sluice.");
            Ok(())
        });
    }
}
