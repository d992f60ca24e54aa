//! The typed options of a Postgres source: Flink CDC's `postgres-cdc` table options and
//! Debezium's Postgres connector options, and the connections made from them.

use std::time::Duration;

use crate::error::{ConnectorError, Result};
use crate::options::OptionReader;
use crate::smt::{parse_transforms, Transform};

/// Connection and capture options of a Postgres source, from either the Flink CDC table options
/// or the Debezium connector options.
#[derive(Clone, PartialEq)]
pub struct PostgresCdcOptions {
    /// `hostname` / `database.hostname`.
    pub host: String,
    /// `port` / `database.port` (default 5432).
    pub port: u16,
    /// `username` / `database.user`.
    pub user: String,
    /// `password` / `database.password`; never printed.
    pub password: String,
    /// `database-name` / `database.dbname`.
    pub database: String,
    /// Flink CDC: the one captured table as (`schema-name`, `table-name`).
    pub table: Option<(String, String)>,
    /// Debezium: `table.include.list`, regular expressions matched against `schema.table`.
    pub include: Vec<String>,
    /// `slot.name` (Debezium's default `debezium`).
    pub slot: String,
    /// `publication.name` / `debezium.publication.name` (default `dbz_publication`, as Debezium).
    pub publication: String,
    /// `scan.startup.mode` = `initial` / `snapshot.mode` = `initial`: take a snapshot first
    /// (default); `latest-offset` / `never` / `no_data`: only changes from now on.
    pub snapshot: bool,
    /// Debezium: `topic.prefix` (or `database.server.name`), the first part of topic names.
    pub topic_prefix: Option<String>,
    /// Debezium: the single message transforms.
    pub transforms_present: bool,
}

impl std::fmt::Debug for PostgresCdcOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCdcOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"***")
            .field("database", &self.database)
            .field("table", &self.table)
            .field("include", &self.include)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .finish()
    }
}

impl PostgresCdcOptions {
    /// Parses Flink CDC's `postgres-cdc` table options.
    ///
    /// Errors: a missing required option, a plugin other than `pgoutput`, a bad number.
    pub fn parse_flink(r: &mut OptionReader<'_>) -> Result<PostgresCdcOptions> {
        let host = r.required("hostname")?.to_string();
        let port = r.parse_or("port", 5432u16)?;
        let user = r.required("username")?.to_string();
        let password = r.get("password").unwrap_or("").to_string();
        let database = r.required("database-name")?.to_string();
        let schema = r.get("schema-name").unwrap_or("public").to_string();
        let table = r.required("table-name")?.to_string();
        let slot = r.required("slot.name")?.to_string();
        r.choice("decoding.plugin.name", &["pgoutput"], "pgoutput")?;
        let publication = r.get("debezium.publication.name").map(str::to_string).unwrap_or_else(|| format!("sluice_{slot}"));
        let snapshot = r.choice("scan.startup.mode", &["initial", "latest-offset"], "initial")? == "initial";
        let _ = r.get("changelog-mode");
        let _ = r.get("scan.incremental.snapshot.enabled");
        Ok(PostgresCdcOptions {
            host,
            port,
            user,
            password,
            database,
            table: Some((schema, table)),
            include: Vec::new(),
            slot,
            publication,
            snapshot,
            topic_prefix: None,
            transforms_present: false,
        })
    }

    /// Parses Debezium's `io.debezium.connector.postgresql.PostgresConnector` options (a `CREATE
    /// SOURCE CONNECTOR`), with the transforms.
    ///
    /// Errors: a missing required option, a plugin other than `pgoutput`, a bad transform.
    pub fn parse_debezium(r: &mut OptionReader<'_>) -> Result<(PostgresCdcOptions, Vec<Transform>)> {
        let host = r.required("database.hostname")?.to_string();
        let port = r.parse_or("database.port", 5432u16)?;
        let user = r.required("database.user")?.to_string();
        let password = r.get("database.password").unwrap_or("").to_string();
        let database = r.required("database.dbname")?.to_string();
        let topic_prefix = r.get_any(&["topic.prefix", "database.server.name"]).map(str::to_string).ok_or_else(|| {
            ConnectorError::InvalidOption("option 'topic.prefix' (or 'database.server.name') is required".into())
        })?;
        let include: Vec<String> = r
            .get_any(&["table.include.list", "table.whitelist"])
            .map(|s| s.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect())
            .unwrap_or_default();
        let slot = r.get("slot.name").unwrap_or("debezium").to_string();
        r.choice("plugin.name", &["pgoutput"], "pgoutput")?;
        let publication = r.get("publication.name").unwrap_or("dbz_publication").to_string();
        let snapshot = r.choice("snapshot.mode", &["initial", "never", "no_data"], "initial")? == "initial";
        // Accepted as Debezium documents them; they do not change what Sluice does.
        for k in [
            "tasks.max",
            "key.converter",
            "value.converter",
            "key.converter.schemas.enable",
            "value.converter.schemas.enable",
            "decimal.handling.mode",
            "time.precision.mode",
            "publication.autocreate.mode",
            "output.data.format",
            "output.key.format",
        ] {
            let _ = r.get(k);
        }
        let transforms = parse_transforms(r)?;
        Ok((
            PostgresCdcOptions {
                host,
                port,
                user,
                password,
                database,
                table: None,
                include,
                slot,
                publication,
                snapshot,
                topic_prefix: Some(topic_prefix),
                transforms_present: !transforms.is_empty(),
            },
            transforms,
        ))
    }

    /// A tokio-postgres configuration for ordinary queries.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host).port(self.port).user(&self.user).dbname(&self.database);
        c.connect_timeout(Duration::from_secs(10));
        if !self.password.is_empty() {
            c.password(&self.password);
        }
        c
    }

    /// A libpq connection string for the replication connection.
    pub(super) fn replication_dsn(&self) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut dsn = format!(
            "host={} port={} user={} dbname={} replication=database",
            q(&self.host),
            self.port,
            q(&self.user),
            q(&self.database)
        );
        if !self.password.is_empty() {
            dsn.push_str(&format!(" password={}", q(&self.password)));
        }
        dsn
    }

    /// `text` with the password replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        if self.password.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.password, "***")
        }
    }

    /// Connects for ordinary queries. Errors: Postgres unreachable (scrubbed message).
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = self
            .pg_config()
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| ConnectorError::External(self.scrub(&format!("postgres {}:{}: {e}", self.host, self.port))))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn password_is_scrubbed_and_required_options_named() {
        let map: BTreeMap<String, String> = [
            ("connector", "postgres-cdc"),
            ("hostname", "127.0.0.1"),
            ("username", "u"),
            ("password", "s3cret"),
            ("database-name", "db"),
            ("table-name", "t"),
            ("slot.name", "s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut r = OptionReader::new(&map, "connector 'postgres-cdc'");
        let o = PostgresCdcOptions::parse_flink(&mut r).unwrap();
        r.finish().unwrap();
        assert_eq!(o.scrub("password s3cret failed"), "password *** failed");
        assert!(!format!("{}", o.scrub(&o.replication_dsn())).contains("s3cret"));
        let mut m2 = map.clone();
        m2.remove("slot.name");
        assert!(PostgresCdcOptions::parse_flink(&mut OptionReader::new(&m2, "x")).unwrap_err().to_string().contains("slot.name"));
    }
}
