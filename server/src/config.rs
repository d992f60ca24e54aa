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
    /// How clients authenticate: trust, scram-sha-256 or md5 [default: trust; env SLUICE_AUTH]
    #[arg(long, value_name = "METHOD")]
    pub auth: Option<AuthMethod>,
    /// Name of the first superuser, created (or given the password) at start-up when a
    /// password is set [default: sluice; env SLUICE_SUPERUSER]
    #[arg(long, value_name = "NAME")]
    pub superuser: Option<String>,
    /// File whose first line is the first superuser's password (instead of SLUICE_PASSWORD)
    /// [env SLUICE_PASSWORD_FILE]
    #[arg(long, value_name = "PATH")]
    pub password_file: Option<PathBuf>,
    /// Allow auth = trust on a non-loopback address: anyone who reaches it is a superuser
    #[arg(long)]
    pub allow_trust_remote: bool,
    /// TLS certificate chain, PEM; with --tls-key, clients may connect with sslmode=require or
    /// verify-full [env SLUICE_TLS_CERT]
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM (PKCS#8, PKCS#1 or SEC1) [env SLUICE_TLS_KEY]
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Most client sessions at once; the next get SQLSTATE 53300 [default: 100; env
    /// SLUICE_MAX_CONNECTIONS]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Largest protocol message a client may send, in bytes; a message that claims more is
    /// refused and its connection closed [default: 1073741823, PostgreSQL's limit; env
    /// SLUICE_MAX_MESSAGE_SIZE]
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<usize>,
}

/// How clients prove who they are (PostgreSQL's `pg_hba.conf` methods of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum AuthMethod {
    /// No password: the user name a client gives is believed.
    #[serde(rename = "trust")]
    #[value(name = "trust")]
    Trust,
    /// SCRAM-SHA-256 (RFC 5802, RFC 7677), what PostgreSQL 14 and later use by default.
    #[serde(rename = "scram-sha-256")]
    #[value(name = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge-response, for clients too old for SCRAM.
    #[serde(rename = "md5")]
    #[value(name = "md5")]
    Md5,
}

/// A secret (the first superuser's password): kept out of `Debug` output and never serialized.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
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
    /// Client authentication.
    #[serde(default = "default_auth")]
    pub auth: AuthMethod,
    /// Name of the first superuser (see [`Cli::superuser`]).
    #[serde(default = "default_superuser")]
    pub superuser: String,
    /// The first superuser's password, from `SLUICE_PASSWORD` (or `password` in the file) or
    /// read from [`Config::password_file`] by [`Config::load`].
    #[serde(default, skip_serializing)]
    pub password: Option<Secret>,
    /// File holding the first superuser's password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Accept `auth = trust` on a non-loopback listen address.
    #[serde(default)]
    pub allow_trust_remote: bool,
    /// TLS certificate chain (PEM).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Most client sessions at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest protocol message a client may send, in bytes.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
}

fn default_auth() -> AuthMethod {
    AuthMethod::Trust
}

fn default_superuser() -> String {
    "sluice".to_string()
}

/// PostgreSQL's default `max_connections`.
fn default_max_connections() -> usize {
    100
}

/// PostgreSQL's own limit ([`crate::wire_guard::MAX_FRAME_BYTES`], 1 GiB - 1).
fn default_max_message_size() -> usize {
    crate::wire_guard::MAX_FRAME_BYTES
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
            auth: default_auth(),
            superuser: default_superuser(),
            password: None,
            password_file: None,
            allow_trust_remote: false,
            tls_cert: None,
            tls_key: None,
            max_connections: default_max_connections(),
            max_message_size: default_max_message_size(),
        }
    }
}

impl Config {
    /// Resolves the configuration from all layers, reads the password file and checks the
    /// combination (see [`Config::check`]).
    ///
    /// Errors: a malformed file or environment value (figment names the key), an unreadable
    /// password file, or a combination [`Config::check`] refuses.
    pub fn load(cli: &Cli) -> Result<Config, figment::Error> {
        let mut c = Config::layered(cli)?;
        if let Ok(p) = std::env::var("SLUICE_PASSWORD") {
            c.password = Some(Secret(p));
        }
        if let Some(path) = &c.password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| figment::Error::from(format!("cannot read the password file {}: {e}", path.display())))?;
            let first = text.lines().next().unwrap_or("").to_string();
            if first.is_empty() {
                return Err(figment::Error::from(format!("the password file {} is empty", path.display())));
            }
            c.password = Some(Secret(first));
        }
        c.check().map_err(figment::Error::from)?;
        Ok(c)
    }

    /// Refuses combinations that would leave the daemon open or half-configured: `auth =
    /// trust` on an address other clients can reach (loopback only, unless
    /// `allow_trust_remote`), a TLS certificate without its key or the reverse, no room for a
    /// single connection, an empty password.
    ///
    /// Errors: one line that says what to change.
    pub fn check(&self) -> Result<(), String> {
        if self.auth == AuthMethod::Trust && !self.listen.ip().is_loopback() && !self.allow_trust_remote {
            return Err(format!(
                "refusing to listen on {} with auth = trust: anyone who can reach it would be a superuser; use --auth scram-sha-256 with SLUICE_PASSWORD or --password-file, or pass --allow-trust-remote",
                self.listen
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
            _ => {}
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if !(1024..=crate::wire_guard::MAX_FRAME_BYTES).contains(&self.max_message_size) {
            return Err(format!("max_message_size must be between 1024 and {} bytes", crate::wire_guard::MAX_FRAME_BYTES));
        }
        if self.password.as_ref().is_some_and(|p| p.0.is_empty()) {
            return Err("the superuser password is empty".into());
        }
        Ok(())
    }

    fn layered(cli: &Cli) -> Result<Config, figment::Error> {
        let file = cli.config.clone().unwrap_or_else(|| PathBuf::from("sluice.toml"));
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if cli.config.is_some() || file.exists() {
            fig = fig.merge(Toml::file(&file));
        }
        // SLUICE_PASSWORD is read as is by `load` (figment would parse `12345` as a number).
        fig = fig.merge(Env::prefixed("SLUICE_").ignore(&["password"]));
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
        if let Some(a) = cli.auth {
            fig = fig.merge(Serialized::default("auth", a));
        }
        if let Some(u) = &cli.superuser {
            fig = fig.merge(Serialized::default("superuser", u));
        }
        if let Some(p) = &cli.password_file {
            fig = fig.merge(Serialized::default("password_file", p));
        }
        if cli.allow_trust_remote {
            fig = fig.merge(Serialized::default("allow_trust_remote", true));
        }
        if let Some(p) = &cli.tls_cert {
            fig = fig.merge(Serialized::default("tls_cert", p));
        }
        if let Some(p) = &cli.tls_key {
            fig = fig.merge(Serialized::default("tls_key", p));
        }
        if let Some(n) = cli.max_connections {
            fig = fig.merge(Serialized::default("max_connections", n));
        }
        if let Some(n) = cli.max_message_size {
            fig = fig.merge(Serialized::default("max_message_size", n));
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
            let cli = Cli::parse_from(["sluice"]);
            let c = Config::load(&cli).expect("loads");
            assert_eq!(c.listen.port(), 5000);
            assert_eq!(c.data_dir, PathBuf::from("from-env"));
            assert_eq!(c.log, "debug");
            let cli = Cli::parse_from(["sluice", "--listen", "127.0.0.1:6000", "--kafka-bootstrap", "k:9092"]);
            let c = Config::load(&cli).expect("loads");
            assert_eq!(c.listen.port(), 6000);
            assert_eq!(c.kafka_bootstrap.as_deref(), Some("k:9092"));
            assert_eq!(c.kafka_topic_prefix, "sluice.");
            assert_eq!(c.auth, AuthMethod::Trust);
            Ok(())
        });
    }

    #[test]
    fn auth_layers_and_checks() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("sluice.toml", "auth = \"scram-sha-256\"\nmax_connections = 7")?;
            jail.set_env("SLUICE_PASSWORD", "from-env");
            let c = Config::load(&Cli::parse_from(["sluice"])).expect("loads");
            assert_eq!(c.auth, AuthMethod::ScramSha256);
            assert_eq!(c.max_connections, 7);
            assert_eq!(c.password, Some(Secret("from-env".into())));
            assert!(!format!("{c:?}").contains("from-env"), "Debug hides the password");
            jail.create_file("pw", "from-file\n")?;
            let c = Config::load(&Cli::parse_from(["sluice", "--password-file", "pw", "--auth", "md5"])).expect("loads");
            assert_eq!(c.password, Some(Secret("from-file".into())));
            assert_eq!(c.auth, AuthMethod::Md5);
            // Trust on a reachable address needs to be asked for.
            let e = Config::load(&Cli::parse_from(["sluice", "--auth", "trust", "--listen", "0.0.0.0:4488"])).unwrap_err();
            assert!(e.to_string().contains("refusing to listen on 0.0.0.0:4488 with auth = trust"), "{e}");
            Config::load(&Cli::parse_from(["sluice", "--auth", "trust", "--listen", "0.0.0.0:4488", "--allow-trust-remote"])).expect("allowed");
            Config::load(&Cli::parse_from(["sluice", "--listen", "0.0.0.0:4488"])).expect("scram from the file");
            let e = Config::load(&Cli::parse_from(["sluice", "--tls-cert", "c.pem"])).unwrap_err();
            assert!(e.to_string().contains("--tls-key"), "{e}");
            Ok(())
        });
    }
}
