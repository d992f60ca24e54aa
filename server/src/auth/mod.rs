//! Who may connect, and what they may do.
//!
//! - [`scram`]: password verifiers and the SCRAM-SHA-256 and md5 exchanges;
//! - [`roles`]: the roles in the catalog and `CREATE | ALTER | DROP ROLE`, `GRANT`, `REVOKE`;
//! - [`privileges`]: the check of each statement against the session's role (SQLSTATE 42501);
//! - [`tls`]: the rustls acceptor of `--tls-cert` / `--tls-key`, for
//!   [`crate::wire_guard::serve`], which also refuses messages above `max_message_size`.
//!
//! This module's [`Authenticator`] runs the start-up of a connection up to the password check
//! (as PostgreSQL's `pg_hba.conf` methods `trust`, `scram-sha-256` and `md5` do, docs "21.3.
//! Authentication Methods"), then hands it to [`crate::pg_params::Startup`], which sends
//! `AuthenticationOk`, the `ParameterStatus` messages and `BackendKeyData`. A connection beyond
//! `max_connections` is refused at its start-up packet with 53300 `sorry, too many clients
//! already`, as PostgreSQL refuses it.
//!
//! With `trust`, the user name a client gives is believed: a name that is a role in the catalog
//! gets that role's privileges, any other name is a superuser (trust has no other way to tell
//! who is connecting; it is for loopback, see [`crate::config::Config::check`]). With a
//! password method, only a role with `LOGIN` and a password connects.

pub mod privileges;
pub mod roles;
pub mod scram;
pub mod tls;

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::{Sink, SinkExt};
use pgwire::api::auth::{protocol_negotiation, save_startup_parameters_to_metadata, StartupHandler};
use pgwire::api::{ClientInfo, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, Startup};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use sluice_catalog::RoleDef;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{AuthMethod, Config};
use crate::engine::Engine;
use crate::errors::SqlError;

pub use roles::Roles;

/// The role a session runs as, looked up again at every check so that `REVOKE`, `ALTER ROLE`
/// and `DROP ROLE` apply to open sessions at their next statement.
#[derive(Debug)]
pub struct SessionRole {
    /// The user name the client logged in with.
    pub name: String,
    /// The daemon's roles.
    pub roles: Arc<Roles>,
    /// Logged in by `trust`: a name that is not a role is a superuser.
    trust: bool,
}

impl SessionRole {
    /// The role now: None when it has been dropped (it may then do nothing but read catalogs).
    pub fn current(&self) -> Option<RoleDef> {
        match self.roles.get(&self.name) {
            Some(r) => Some(r),
            None if self.trust => {
                let mut r = RoleDef::new(self.name.clone());
                r.superuser = true;
                r.login = true;
                Some(r)
            }
            None => None,
        }
    }
}

/// Runs the statements this module owns and checks every other one, for `engine`'s statement
/// dispatch: a role statement ([`roles::is_role_statement`]) runs here and its result is
/// returned; for any other, Ok(None) when the session's role may run it.
///
/// Errors: 42501 when it may not, and those of [`roles::execute`].
pub fn role_statement(engine: &Engine, session: &crate::session::Session, sql: &str) -> Result<Option<crate::engine::Output>, SqlError> {
    if !roles::is_role_statement(sql) {
        return Ok(None);
    }
    roles::execute(engine, session.role.get(), sql).map(Some)
}

/// Checks that the session's role may run `stmt` (see [`privileges`]); a session without a
/// role (statements the daemon runs itself) may run anything.
///
/// Errors: 42501.
pub fn authorize(engine: &Engine, session: &crate::session::Session, stmt: &sluice_planner::SluiceStatement) -> Result<(), SqlError> {
    let Some(who) = session.role.get() else {
        return Ok(());
    };
    if let sluice_planner::SluiceStatement::CreateTable(ct) = stmt {
        if who.current().is_some_and(|r| r.superuser) && !engine.tables.read().unwrap().contains_key(&ct.def.name) {
            who.roles.forget_table(&ct.def.name)?;
        }
    }
    match who.current() {
        Some(r) => privileges::authorize(engine, Some(&r), stmt),
        None => Err(SqlError::new("42501", format!("permission denied: role \"{}\" no longer exists", who.name))),
    }
}

/// `sql` as it may be logged: option secrets hidden as
/// [`sluice_connectors::options::redact_sql`] does, and a role statement's `PASSWORD '...'`.
pub fn redact_sql(sql: &str) -> String {
    let s = sluice_connectors::options::redact_sql(sql);
    if roles::is_role_statement(&s) && s.to_ascii_uppercase().contains("PASSWORD") {
        let upper = s.to_ascii_uppercase();
        let at = upper.find("PASSWORD").expect("found above");
        return format!("{}PASSWORD ***", &s[..at]);
    }
    s
}

/// The client-authentication settings of the daemon and its count of open sessions.
pub struct Authenticator {
    method: AuthMethod,
    roles: Arc<Roles>,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    sessions: Arc<Semaphore>,
    max_message_size: usize,
}

/// A session's place among `max_connections`, given back when the connection closes.
struct SessionSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// A password exchange in progress on one connection.
struct Pending(Mutex<Option<PendingState>>);

struct PendingState {
    startup: Startup,
    user: String,
    step: Step,
}

enum Step {
    /// `AuthenticationSASL` sent: waiting for `SASLInitialResponse`.
    ScramStart,
    /// `server-first-message` sent: waiting for `client-final-message`.
    ScramFinal(Box<scram::ServerFirst>),
    /// `AuthenticationMD5Password` sent with this salt.
    Md5([u8; 4]),
}

impl Authenticator {
    /// The authenticator of `config` over `engine`'s catalog: loads the roles, creates the
    /// first superuser (or gives it the configured password), loads the TLS certificate.
    ///
    /// Errors (one line each, for the daemon to print): a password method without any
    /// superuser that can log in with a password and no password configured; an unreadable or
    /// invalid certificate or key; the store.
    pub fn open(engine: &Engine, config: &Config) -> Result<Arc<Authenticator>, String> {
        let roles = Roles::load(engine.store.clone()).map_err(|e| e.message)?;
        if let Some(p) = &config.password {
            roles.bootstrap(&config.superuser, &p.0).map_err(|e| e.message)?;
        }
        if config.auth != AuthMethod::Trust && !roles.has_password_superuser() {
            return Err(format!(
                "auth = {} needs a superuser with a password: set SLUICE_PASSWORD or --password-file (for superuser \"{}\")",
                match config.auth {
                    AuthMethod::Md5 => "md5",
                    _ => "scram-sha-256",
                },
                config.superuser
            ));
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::tls_acceptor(cert, key)?),
            _ => None,
        };
        Ok(Arc::new(Authenticator {
            method: config.auth,
            roles,
            tls,
            sessions: Arc::new(Semaphore::new(config.max_connections)),
            max_message_size: config.max_message_size,
        }))
    }

    /// The TLS acceptor, when the daemon has a certificate.
    pub fn tls(&self) -> Option<pgwire::tokio::TlsAcceptor> {
        self.tls.clone()
    }

    /// The largest message a client may send, in bytes (`max_message_size`).
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The daemon's roles.
    pub fn roles(&self) -> &Arc<Roles> {
        &self.roles
    }

    /// The start-up of a connection (see the module docs); `finish` sends what follows a
    /// successful authentication.
    ///
    /// Errors (FATAL, the connection closes): 53300 beyond `max_connections`, 28000 without a
    /// user name or for a role without `LOGIN`, 28P01 for a wrong password or an unknown user,
    /// 08P01 for a malformed exchange.
    pub async fn on_startup<C, F>(&self, client: &mut C, message: PgWireFrontendMessage, finish: &F) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
        F: StartupHandler,
    {
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                let permit = self.sessions.clone().try_acquire_owned().map_err(|_| fatal("53300", "sorry, too many clients already"))?;
                client.session_extensions().insert(SessionSlot(permit));
                let user = startup
                    .parameters
                    .get("user")
                    .filter(|u| !u.is_empty())
                    .cloned()
                    .ok_or_else(|| fatal("28000", "no PostgreSQL user name specified in startup packet"))?;
                let step = match self.method {
                    AuthMethod::Trust => {
                        self.log_in(client, &user, true)?;
                        return finish.on_startup(client, PgWireFrontendMessage::Startup(startup)).await;
                    }
                    AuthMethod::ScramSha256 => Step::ScramStart,
                    // As PostgreSQL's md5 method: a role whose password is only a SCRAM
                    // verifier (given as one) is asked for SCRAM.
                    AuthMethod::Md5 if self.roles.get(&user).is_some_and(|r| r.md5.is_none() && r.scram.is_some()) => Step::ScramStart,
                    AuthMethod::Md5 => Step::Md5(rand::random()),
                };
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let request = match &step {
                    Step::Md5(salt) => Authentication::MD5Password(salt.to_vec()),
                    _ => Authentication::SASL(vec![pgwire::api::auth::sasl::SCRAM_SHA_256_METHOD.to_string()]),
                };
                client.send(PgWireBackendMessage::Authentication(request)).await?;
                client.session_extensions().insert(Pending(Mutex::new(Some(PendingState { startup, user, step }))));
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(msg) => {
                let state = client.session_extensions().get::<Pending>().and_then(|p| p.0.lock().unwrap().take());
                let Some(PendingState { startup, user, step }) = state else {
                    return Err(fatal("08P01", "unexpected password message"));
                };
                match step {
                    Step::ScramStart => {
                        let init = msg.into_sasl_initial_response()?;
                        if init.auth_method != pgwire::api::auth::sasl::SCRAM_SHA_256_METHOD {
                            return Err(fatal("28000", "the client selected an invalid SASL authentication mechanism"));
                        }
                        let data = init.data.ok_or_else(|| fatal("08P01", "malformed SCRAM message"))?;
                        let verifier = self
                            .roles
                            .get(&user)
                            .and_then(|r| r.scram.as_deref().and_then(scram::Verifier::parse))
                            .unwrap_or_else(|| scram::Verifier::mock(&user));
                        let first = scram::client_first(&data, verifier).map_err(to_fatal)?;
                        client.send(PgWireBackendMessage::Authentication(Authentication::SASLContinue(first.message.clone().into()))).await?;
                        let step = Step::ScramFinal(Box::new(first));
                        client.session_extensions().insert(Pending(Mutex::new(Some(PendingState { startup, user, step }))));
                        Ok(())
                    }
                    Step::ScramFinal(first) => {
                        let resp = msg.into_sasl_response()?;
                        let last = first.client_final(&resp.data, &user).map_err(to_fatal)?;
                        self.log_in(client, &user, false)?;
                        client.send(PgWireBackendMessage::Authentication(Authentication::SASLFinal(last.into()))).await?;
                        finish.on_startup(client, PgWireFrontendMessage::Startup(replay(client, startup))).await
                    }
                    Step::Md5(salt) => {
                        let pw = msg.into_password()?;
                        let ok = self.roles.get(&user).and_then(|r| r.md5).is_some_and(|d| scram::md5_matches(&d, &salt, &pw.password));
                        if !ok {
                            return Err(to_fatal(scram::wrong_password(&user)));
                        }
                        self.log_in(client, &user, false)?;
                        finish.on_startup(client, PgWireFrontendMessage::Startup(replay(client, startup))).await
                    }
                }
            }
            _ => Ok(()),
        }
    }

    /// Gives the session its role, once the client has proved who it is.
    fn log_in<C: ClientInfo>(&self, client: &C, user: &str, trust: bool) -> PgWireResult<()> {
        let role = self.roles.get(user);
        match &role {
            Some(r) if !r.login => return Err(fatal("28000", format!("role \"{user}\" is not permitted to log in"))),
            None if !trust => return Err(to_fatal(scram::wrong_password(user))),
            _ => {}
        }
        let session = crate::session::Session::of(client);
        let _ = session.role.set(SessionRole { name: user.to_string(), roles: self.roles.clone(), trust });
        tracing::debug!(user, method = ?self.method, "client authenticated");
        Ok(())
    }
}

/// The start-up packet handed on after the password exchange: the protocol version already
/// negotiated (so it is not negotiated twice), the client's parameters.
fn replay<C: ClientInfo>(client: &C, original: Startup) -> Startup {
    let mut s = Startup::new();
    let (major, minor) = client.protocol_version().version_number();
    s.protocol_number_major = major;
    s.protocol_number_minor = minor;
    s.parameters = original.parameters;
    s
}

fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".to_owned(), code.to_owned(), message.into())))
}

fn to_fatal(e: SqlError) -> PgWireError {
    fatal(e.code, e.message)
}

#[cfg(test)]
mod tests {
    #[test]
    fn role_statement_passwords_are_not_logged() {
        let r = super::redact_sql("CREATE USER bi WITH LOGIN PASSWORD 's3cret'");
        assert_eq!(r, "CREATE USER bi WITH LOGIN PASSWORD ***");
        assert_eq!(super::redact_sql("SELECT 'password'"), "SELECT 'password'");
    }
}
