//! PostgreSQL's session parameters (run-time configuration, "GUCs") as clients read them: the
//! `ParameterStatus` messages sent at start-up and after a `SET` of a reported parameter
//! (PostgreSQL docs, "53.2.7. Asynchronous Operations" and the `ParameterStatus` message in
//! "55.7. Message Formats"), `SHOW name`, `SET name = value | TO value | TO DEFAULT` and
//! `RESET name` (docs "SET", "SHOW", "RESET", and "20. Server Configuration" for each value).
//!
//! Sluice answers one PostgreSQL version everywhere ([`SERVER_VERSION`]), as drivers parse it:
//! a plain `15.8` in `server_version` (SQLAlchemy, Npgsql and pgJDBC read a leading
//! `major.minor`), `150008` in `server_version_num`, and `version()` in PostgreSQL's
//! `PostgreSQL 15.8 on <platform>, compiled by ..., 64-bit` shape with Sluice's own version after.
//!
//! Values Sluice cannot honour are refused rather than shown back as if they were in force:
//! a `client_encoding` other than UTF8 (Sluice reads and writes UTF-8 only), a `DateStyle`
//! other than ISO (dates and timestamps are always written in ISO 8601), an `IntervalStyle`
//! other than `postgres`.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::{finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, StartupHandler};
use pgwire::api::{ClientInfo, PidSecretKeyGenerator, RandomPidSecretKeyGenerator};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::engine::Output;
use crate::errors::{SqlError, SqlResult};
use crate::session::Session;
use sqlparser::ast::{Expr, Reset, Set, Value};

/// The PostgreSQL release Sluice answers as, in `server_version` and `SHOW server_version`.
pub const SERVER_VERSION: &str = "15.8";

/// [`SERVER_VERSION`] as `server_version_num`: major * 10000 + minor (PostgreSQL 10 and later).
pub const SERVER_VERSION_NUM: &str = "150008";

/// What `SELECT version()` answers: PostgreSQL's `version()` shape, then Sluice's version.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} on {}-pc-linux-gnu, compiled by rustc, 64-bit (Sluice {})",
        std::env::consts::ARCH,
        env!("CARGO_PKG_VERSION")
    )
}

/// A session parameter Sluice knows: its canonical name (as `SHOW` and `ParameterStatus` spell
/// it), its default, and whether PostgreSQL reports it in a `ParameterStatus` message.
struct Param {
    name: &'static str,
    default: &'static str,
    reported: bool,
    /// False for the read-only ones (`server_version`, ...): `SET` fails with 55P02.
    settable: bool,
}

const fn p(name: &'static str, default: &'static str, reported: bool, settable: bool) -> Param {
    Param { name, default, reported, settable }
}

/// The parameters, with PostgreSQL 15's defaults (docs "20. Server Configuration") where they
/// describe what Sluice does.
const PARAMS: &[Param] = &[
    p("server_version", SERVER_VERSION, true, false),
    p("server_version_num", SERVER_VERSION_NUM, false, false),
    p("server_encoding", "UTF8", true, false),
    p("client_encoding", "UTF8", true, true),
    p("DateStyle", "ISO, MDY", true, true),
    p("IntervalStyle", "postgres", true, true),
    p("TimeZone", "UTC", true, true),
    p("integer_datetimes", "on", true, false),
    p("standard_conforming_strings", "on", true, true),
    p("is_superuser", "on", true, false),
    p("session_authorization", "sluice", true, false),
    p("application_name", "", true, true),
    p("search_path", "\"$user\", public", false, true),
    p("transaction_isolation", "read committed", false, true),
    p("default_transaction_isolation", "read committed", false, true),
    p("transaction_read_only", "off", false, true),
    p("default_transaction_read_only", "off", true, true),
    p("in_hot_standby", "off", true, false),
    p("extra_float_digits", "1", false, true),
    p("statement_timeout", "0", false, true),
    p("lock_timeout", "0", false, true),
    p("idle_in_transaction_session_timeout", "0", false, true),
    p("bytea_output", "hex", false, true),
    p("client_min_messages", "notice", false, true),
    p("default_table_access_method", "heap", false, true),
    p("default_tablespace", "", false, true),
    p("row_security", "on", false, true),
    p("work_mem", "4MB", false, true),
    p("jit", "off", false, true),
    p("lc_collate", "C.UTF-8", false, false),
    p("lc_ctype", "C.UTF-8", false, false),
    p("max_index_keys", "32", false, false),
    p("max_identifier_length", "63", false, false),
    p("block_size", "8192", false, false),
];

fn find(name: &str) -> Option<&'static Param> {
    let lower = name.to_lowercase();
    let lower = match lower.as_str() {
        "transaction isolation level" => "transaction_isolation".to_string(),
        "time zone" => "timezone".to_string(),
        "session authorization" => "session_authorization".to_string(),
        _ => lower,
    };
    PARAMS.iter().find(|p| p.name.to_lowercase() == lower)
}

/// The canonical spelling of parameter `name` (`datestyle` -> `DateStyle`), for `SHOW`'s
/// column; `name` itself when Sluice does not know it.
pub fn canonical_name(name: &str) -> String {
    find(name).map(|p| p.name.to_string()).unwrap_or_else(|| name.to_lowercase())
}

/// A session's parameter values set with `SET` (or in the start-up packet), over the defaults.
#[derive(Debug, Default)]
pub struct SessionParams {
    values: BTreeMap<&'static str, String>,
    /// Custom options with a dotted name (`myapp.user_id`), kept as PostgreSQL keeps them.
    custom: BTreeMap<String, String>,
    /// `ParameterStatus` messages owed to the client: reported parameters changed by `SET`.
    pending: Vec<(String, String)>,
    /// The process ID the client was given in `BackendKeyData` (`pg_backend_pid()`).
    backend_pid: i32,
    /// The user named in the start-up packet (`current_user`, `session_user`); None for the
    /// engine's own sessions, which act as `sluice`.
    user: Option<String>,
}

/// One row of `pg_settings`: a parameter's name, its value in the session, its default, and
/// whether `SET` may change it.
pub struct Setting {
    /// The canonical name (`DateStyle`).
    pub name: &'static str,
    /// The session's value.
    pub value: String,
    /// PostgreSQL's (and Sluice's) default.
    pub default: &'static str,
    /// False for the read-only parameters (`server_version`).
    pub settable: bool,
}

impl SessionParams {
    /// The value of `name` in this session, as `SHOW` answers it.
    ///
    /// Errors: 42704 `unrecognized configuration parameter` for a name Sluice does not know.
    pub fn show(&self, name: &str) -> SqlResult<String> {
        if let Some(v) = self.custom.get(&name.to_lowercase()) {
            return Ok(v.clone());
        }
        let p = find(name)
            .ok_or_else(|| SqlError::new("42704", format!("unrecognized configuration parameter \"{}\"", name.to_lowercase())))?;
        Ok(self.values.get(p.name).cloned().unwrap_or_else(|| p.default.to_string()))
    }

    /// `SET name = value`: checks and stores the value (normalized as PostgreSQL shows it), and
    /// queues a `ParameterStatus` when PostgreSQL reports the parameter. `value` None is
    /// `SET name TO DEFAULT`.
    ///
    /// Errors: 42704 for an unknown parameter, 55P02 for a read-only one, 22023 for a value
    /// Sluice cannot honour (see the module docs).
    pub fn set(&mut self, name: &str, value: Option<&str>) -> SqlResult<()> {
        if find(name).is_none() && name.contains('.') {
            match value {
                Some(v) => self.custom.insert(name.to_lowercase(), v.to_string()),
                None => self.custom.remove(&name.to_lowercase()),
            };
            return Ok(());
        }
        let p = find(name)
            .ok_or_else(|| SqlError::new("42704", format!("unrecognized configuration parameter \"{}\"", name.to_lowercase())))?;
        if !p.settable {
            return Err(SqlError::new("55P02", format!("parameter \"{}\" cannot be changed", p.name)));
        }
        match value {
            None => {
                self.values.remove(p.name);
            }
            Some(v) => {
                let v = normalize(p.name, v)?;
                self.values.insert(p.name, v);
            }
        }
        if p.reported {
            let shown = self.show(p.name)?;
            self.pending.push((p.name.to_string(), shown));
        }
        Ok(())
    }

    /// `RESET name`, or `RESET ALL` when `name` is None.
    pub fn reset(&mut self, name: Option<&str>) -> SqlResult<()> {
        match name {
            Some(n) => self.set(n, None),
            None => {
                self.custom.clear();
                let names: Vec<&'static str> = self.values.keys().copied().collect();
                for n in names {
                    self.set(n, None)?;
                }
                Ok(())
            }
        }
    }

    /// Records the connection's process ID and user, at start-up.
    pub fn set_connection(&mut self, backend_pid: i32, user: Option<String>) {
        self.backend_pid = backend_pid;
        self.user = user;
    }

    /// The process ID the client was given at start-up (0 for the engine's own sessions).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// The session's user: the start-up packet's `user`, or `sluice`.
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("sluice")
    }

    /// Every parameter Sluice knows, with the session's values, as `pg_settings` lists them.
    pub fn settings(&self) -> Vec<Setting> {
        PARAMS
            .iter()
            .map(|p| Setting {
                name: p.name,
                value: self.values.get(p.name).cloned().unwrap_or_else(|| p.default.to_string()),
                default: p.default,
                settable: p.settable,
            })
            .collect()
    }

    /// The `ParameterStatus` messages owed since the last call.
    pub fn take_pending(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.pending)
    }

    /// The parameters PostgreSQL reports at start-up, with this session's values.
    pub fn reported(&self) -> Vec<(String, String)> {
        PARAMS
            .iter()
            .filter(|p| p.reported)
            .map(|p| (p.name.to_string(), self.values.get(p.name).cloned().unwrap_or_else(|| p.default.to_string())))
            .collect()
    }
}

/// `SHOW name` for `session`: one text row in a column named as PostgreSQL names it.
///
/// Errors: 42704 for a parameter Sluice does not know.
pub fn show(session: &Session, name: &str) -> SqlResult<Output> {
    let value = session.with_params(|p| p.show(name))?;
    crate::engine::one_row(&[&canonical_name(name)], vec![value])
}

/// `SET` as PostgreSQL drivers send it (`SET name = value`, `SET name TO DEFAULT`,
/// `SET TIME ZONE value`, `SET search_path = a, b`); other forms (`SET SESSION
/// CHARACTERISTICS`, `SET TRANSACTION`) are accepted and change nothing, since every Sluice
/// statement is its own read-committed transaction.
///
/// Errors: as [`SessionParams::set`].
pub fn execute_set(session: &Session, set: &Set) -> SqlResult<Output> {
    match set {
        Set::SingleAssignment { variable, values, .. } => {
            let name = variable.to_string();
            let value = set_value(&name, values);
            session.with_params(|p| p.set(&name, value.as_deref()))?;
        }
        Set::SetTimeZone { value, .. } => {
            let value = set_value("TimeZone", std::slice::from_ref(value));
            session.with_params(|p| p.set("TimeZone", value.as_deref()))?;
        }
        _ => {}
    }
    Ok(Output::Command { tag: "SET".into(), notice: None })
}

/// A `SET` that is one of Sluice's own (Flink's) options written without quotes, as Flink's SQL
/// client accepts it (`SET table.exec.sink.not-null-enforcer = DROP`): a dotted name PostgreSQL
/// does not know, and its value. The engine treats it as `SET 'key' = 'value'`.
pub fn option_assignment(set: &Set) -> Option<(String, String)> {
    let Set::SingleAssignment { variable, values, .. } = set else { return None };
    let name = variable.to_string();
    if find(&name).is_some() || !name.contains('.') {
        return None;
    }
    let value = set_value(&name, values)?;
    Some((name.to_lowercase(), value))
}

/// `RESET name` / `RESET ALL`.
///
/// Errors: as [`SessionParams::set`].
pub fn execute_reset(session: &Session, reset: &Reset) -> SqlResult<Output> {
    match reset {
        Reset::ALL => session.with_params(|p| p.reset(None))?,
        Reset::ConfigurationParameter(name) => {
            let name = name.to_string();
            if find(&name).is_none() && name.contains('.') {
                // Sluice's own options set without quotes (see `option_assignment`).
                session.reset_option(Some(name.as_str()));
            }
            session.with_params(|p| p.reset(Some(&name)))?
        }
    }
    Ok(Output::Command { tag: "RESET".into(), notice: None })
}

/// The text of a `SET`'s value list; None for `DEFAULT`. A list (`search_path = "$user",
/// public`) is joined with `, `, quoted identifiers keeping their quotes, as `SHOW` prints it.
fn set_value(name: &str, values: &[Expr]) -> Option<String> {
    if let [Expr::Identifier(id)] = values {
        if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default") {
            return None;
        }
    }
    let list = values.len() > 1 || name.eq_ignore_ascii_case("search_path");
    let parts: Vec<String> = values
        .iter()
        .map(|e| match e {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                Value::Boolean(b) => if *b { "on" } else { "off" }.to_string(),
                other => other.to_string(),
            },
            Expr::Identifier(id) if list && id.quote_style.is_some() => format!("\"{}\"", id.value),
            Expr::Identifier(id) if list => id.value.to_lowercase(),
            Expr::Identifier(id) => id.value.clone(),
            other => other.to_string(),
        })
        .collect();
    Some(parts.join(", "))
}

/// Checks a value for parameter `name` and spells it as PostgreSQL shows it back.
fn normalize(name: &str, value: &str) -> SqlResult<String> {
    let bad = |why: &str| SqlError::new("22023", format!("invalid value for parameter \"{name}\": \"{value}\": {why}"));
    let v = value.trim();
    Ok(match name {
        "client_encoding" => match v.to_uppercase().replace(['-', '_'], "").as_str() {
            "UTF8" | "UNICODE" => "UTF8".to_string(),
            _ => return Err(bad("Sluice reads and writes UTF8 only")),
        },
        "DateStyle" => {
            let mut style = "ISO";
            let mut order = "MDY";
            for part in v.split(',').map(|s| s.trim().to_uppercase()) {
                match part.as_str() {
                    "ISO" => style = "ISO",
                    "MDY" | "US" | "NONEURO" | "NONEUROPEAN" => order = "MDY",
                    "DMY" | "EURO" | "EUROPEAN" => order = "DMY",
                    "YMD" => order = "YMD",
                    "" | "DEFAULT" => {}
                    _ => return Err(bad("Sluice writes dates in ISO 8601 only")),
                }
            }
            format!("{style}, {order}")
        }
        "IntervalStyle" if v.eq_ignore_ascii_case("postgres") => "postgres".to_string(),
        "IntervalStyle" => return Err(bad("Sluice writes intervals in the postgres style only")),
        "TimeZone" => match v.to_uppercase().as_str() {
            "UTC" | "ETC/UTC" | "Z" | "ZULU" | "GMT" | "UCT" | "+00" | "+00:00" | "0" => v.to_string(),
            // Checked by Arrow's parser, the one timestamp casts use.
            _ => {
                <arrow::array::timezone::Tz as std::str::FromStr>::from_str(v).map_err(|_| bad("not a time zone"))?;
                v.to_string()
            }
        },
        "standard_conforming_strings" | "transaction_read_only" | "default_transaction_read_only" => match v.to_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => "on".to_string(),
            "off" | "false" | "no" | "0" if name == "standard_conforming_strings" => {
                return Err(bad("Sluice always treats backslashes in string literals literally"))
            }
            "off" | "false" | "no" | "0" => "off".to_string(),
            _ => return Err(bad("a Boolean is on or off")),
        },
        "transaction_isolation" | "default_transaction_isolation" => v.to_lowercase(),
        _ => v.to_string(),
    })
}

/// The start-up of a connection: protocol negotiation, no authentication (trust), then
/// `AuthenticationOk`, the `ParameterStatus` messages PostgreSQL sends (docs "55.2.2. Start-up":
/// `server_version`, `server_encoding`, `client_encoding`, `application_name`,
/// `default_transaction_read_only`, `in_hot_standby`, `is_superuser`, `session_authorization`,
/// `DateStyle`, `IntervalStyle`, `TimeZone`, `integer_datetimes`,
/// `standard_conforming_strings`), `BackendKeyData` and `ReadyForQuery`. Parameters the client
/// sent in its start-up packet (`application_name`, `TimeZone`, `DateStyle`, ...) are applied as
/// `SET` would, as PostgreSQL applies them; `client_encoding` is always reported as UTF8, the
/// only encoding Sluice writes.
#[derive(Default)]
pub struct Startup {
    keys: RandomPidSecretKeyGenerator,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let PgWireFrontendMessage::Startup(ref startup) = message else {
            return Ok(());
        };
        protocol_negotiation(client, startup).await?;
        save_startup_parameters_to_metadata(client, startup);
        let (pid, key) = self.keys.generate(client);
        client.set_pid_and_secret_key(pid, key);
        let session = Session::of(client);
        let user = client.metadata().get(pgwire::api::METADATA_USER).cloned();
        session.with_params(|params| {
            params.set_connection(pid, user.clone());
            for (k, v) in &startup.parameters {
                if matches!(k.as_str(), "user" | "database" | "options" | "replication" | "client_encoding") {
                    continue;
                }
                // PostgreSQL refuses the connection for a bad start-up value; a client that
                // sends one Sluice cannot honour (a DateStyle of German) keeps the default,
                // which the ParameterStatus then tells it.
                if let Err(e) = params.set(k, Some(v)) {
                    tracing::debug!(parameter = %k, error = %e.message, "start-up parameter ignored");
                }
            }
            params.take_pending();
        });
        let mut reported = session.with_params(|p| p.reported());
        if let Some(u) = user {
            reported.retain(|(k, _)| k != "session_authorization");
            reported.push(("session_authorization".into(), u));
        }
        finish_authentication(client, &Reported(reported)).await
    }
}

/// The start-up `ParameterStatus` list, as pgwire's provider trait hands it out.
struct Reported(Vec<(String, String)>);

impl pgwire::api::auth::ServerParameterProvider for Reported {
    fn server_parameters<C: ClientInfo>(&self, _client: &C) -> Option<std::collections::HashMap<String, String>> {
        Some(self.0.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_set_reset() {
        let mut s = SessionParams::default();
        assert_eq!(s.show("server_version").unwrap(), "15.8");
        assert_eq!(s.show("SERVER_VERSION_NUM").unwrap(), "150008");
        assert_eq!(s.show("search_path").unwrap(), "\"$user\", public");
        assert_eq!(s.show("transaction isolation level").unwrap(), "read committed");
        assert_eq!(s.show("nope").unwrap_err().code, "42704");
        s.set("application_name", Some("psql")).unwrap();
        s.set("datestyle", Some("ISO")).unwrap();
        s.set("TimeZone", Some("Europe/Paris")).unwrap();
        assert_eq!(s.show("DATESTYLE").unwrap(), "ISO, MDY");
        assert_eq!(s.show("timezone").unwrap(), "Europe/Paris");
        assert_eq!(
            s.take_pending(),
            vec![
                ("application_name".into(), "psql".into()),
                ("DateStyle".into(), "ISO, MDY".into()),
                ("TimeZone".into(), "Europe/Paris".into())
            ]
        );
        assert_eq!(s.set("server_version", Some("16")).unwrap_err().code, "55P02");
        assert_eq!(s.set("client_encoding", Some("LATIN1")).unwrap_err().code, "22023");
        assert_eq!(s.set("DateStyle", Some("German")).unwrap_err().code, "22023");
        assert_eq!(s.set("TimeZone", Some("Mars/Olympus")).unwrap_err().code, "22023");
        s.reset(None).unwrap();
        assert_eq!(s.show("application_name").unwrap(), "");
        assert_eq!(s.show("TimeZone").unwrap(), "UTC");
    }
}
