//! Catalog entries for roles (users): who may log in, how their password is checked, and what
//! they may do with each table, as PostgreSQL's `pg_authid` and table ACLs hold them.
//!
//! A role's password is never stored: only what the authentication methods need to check a
//! client's proof, in PostgreSQL's own text forms (`pg_authid.rolpassword`):
//! - the SCRAM-SHA-256 verifier of RFC 5802 / RFC 7677, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
//!   (base64 fields): a client proves it knows the password without sending it, and the verifier
//!   does not let anyone who reads it log in;
//! - for old clients, the md5 digest `md5<hex(md5(password || role name))>`: this one is
//!   password-equivalent for md5 authentication (as in PostgreSQL), so it is kept only because
//!   `auth = "md5"` needs it.
//!
//! Entries are `role/<name>` keys of the `catalog` column family, JSON-encoded [`RoleDef`]s.

use std::collections::{BTreeMap, BTreeSet};

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::{Store, CF_CATALOG};

/// A privilege on a table, as PostgreSQL names them (docs "5.7. Privileges"). Sluice checks
/// `SELECT` for reads (queries, `COPY TO`, cursors, subscriptions), `INSERT` for
/// `INSERT ... VALUES` and `COPY FROM`, `UPDATE` and `DELETE` for those statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    /// Read the table's rows.
    Select,
    /// Append rows.
    Insert,
    /// Change rows (`UPDATE`).
    Update,
    /// Remove rows (`DELETE`).
    Delete,
}

impl Privilege {
    /// Every table privilege: what `GRANT ALL` gives.
    pub const ALL: [Privilege; 4] = [Privilege::Select, Privilege::Insert, Privilege::Update, Privilege::Delete];

    /// The SQL keyword (`SELECT`, ...).
    pub fn keyword(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
        }
    }
}

/// A role, as `CREATE ROLE` / `CREATE USER` made it and `ALTER ROLE` / `GRANT` / `REVOKE`
/// changed it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDef {
    /// The role name, as PostgreSQL folds it (lower-cased unless quoted).
    pub name: String,
    /// `SUPERUSER`: every privilege, and the statements that change the catalog (DDL, jobs,
    /// connectors, roles).
    pub superuser: bool,
    /// `LOGIN`: the role may open a session (`CREATE USER` implies it).
    pub login: bool,
    /// The SCRAM-SHA-256 verifier (see the module docs); None when the role has no password.
    #[serde(default)]
    pub scram: Option<String>,
    /// The md5 digest (see the module docs); None when the role has no password or it was
    /// given as a SCRAM verifier.
    #[serde(default)]
    pub md5: Option<String>,
    /// Table privileges granted to the role, by table name. `GRANT ... ON ALL TABLES IN SCHEMA
    /// public` adds the tables that exist when it runs, as PostgreSQL does.
    #[serde(default)]
    pub grants: BTreeMap<String, BTreeSet<Privilege>>,
}

impl std::fmt::Debug for RoleDef {
    /// Never prints the verifiers: they stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleDef")
            .field("name", &self.name)
            .field("superuser", &self.superuser)
            .field("login", &self.login)
            .field("password", &self.scram.as_ref().map(|_| "***"))
            .field("grants", &self.grants)
            .finish()
    }
}

impl RoleDef {
    /// A role without password, privileges or attributes.
    pub fn new(name: impl Into<String>) -> RoleDef {
        RoleDef { name: name.into(), superuser: false, login: false, scram: None, md5: None, grants: BTreeMap::new() }
    }

    /// True when the role may do `privilege` on `table`: a superuser may do anything.
    pub fn may(&self, privilege: Privilege, table: &str) -> bool {
        self.superuser || self.grants.get(table).is_some_and(|p| p.contains(&privilege))
    }
}

impl Store {
    /// Stores a role (create or replace).
    pub fn put_role(&self, r: &RoleDef) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_CATALOG), format!("role/{}", r.name), serde_json::to_vec(r)?);
        self.write(b)
    }

    /// Stores several roles in one atomic write (a `GRANT` to many roles).
    pub fn put_roles(&self, roles: &[RoleDef]) -> Result<()> {
        let mut b = WriteBatch::default();
        for r in roles {
            b.put_cf(self.cf(CF_CATALOG), format!("role/{}", r.name), serde_json::to_vec(r)?);
        }
        self.write(b)
    }

    /// Removes a role.
    pub fn delete_role(&self, name: &str) -> Result<()> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_CATALOG), format!("role/{name}"));
        self.write(b)
    }

    /// All stored roles, by name.
    pub fn roles(&self) -> Result<Vec<RoleDef>> {
        self.scan_prefix(CF_CATALOG, b"role/")?.into_iter().map(|(_, v)| Ok(serde_json::from_slice(&v)?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_debug_hides_the_verifier() {
        let dir = std::env::temp_dir().join(format!("sluice-role-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let mut r = RoleDef::new("bi");
        r.login = true;
        r.scram = Some("SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5".into());
        r.grants.entry("t".into()).or_default().insert(Privilege::Select);
        store.put_role(&r).unwrap();
        assert_eq!(store.roles().unwrap(), vec![r.clone()]);
        assert!(r.may(Privilege::Select, "t"));
        assert!(!r.may(Privilege::Insert, "t"));
        assert!(!format!("{r:?}").contains("SCRAM"));
        store.delete_role("bi").unwrap();
        assert!(store.roles().unwrap().is_empty());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
