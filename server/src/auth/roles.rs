//! Roles and their statements: `CREATE ROLE | USER`, `ALTER ROLE | USER`, `DROP ROLE | USER`,
//! `GRANT` and `REVOKE` on tables, as PostgreSQL 15 defines them (docs "CREATE ROLE", "GRANT"),
//! within what Sluice has: no role membership, no column privileges, one schema (`public`).
//!
//! These statements are parsed here with sqlparser's PostgreSQL dialect, before the planner
//! sees them, so that a statement holding a password never reaches a code path that could
//! echo it: a syntax error says where, never what.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use sluice_catalog::{Privilege, RoleDef, Store};
use sqlparser::ast::{
    Action, AlterRoleOperation, CreateRole, Expr, GrantObjects, Grantee, GranteeName, GranteesType, ObjectName, ObjectType,
    Password, Privileges, RoleOption, Statement, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::scram::{md5_digest, Verifier};
use super::SessionRole;
use crate::engine::{table_name, Engine, Output};
use crate::errors::{SqlError, SqlResult};

/// The roles of a data directory, cached over the catalog. Every change is written to the
/// store first, then to the cache.
pub struct Roles {
    store: Store,
    roles: RwLock<BTreeMap<String, RoleDef>>,
}

impl std::fmt::Debug for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roles").field("names", &self.roles.read().unwrap().keys().collect::<Vec<_>>()).finish()
    }
}

impl Roles {
    /// Loads the roles stored in `store`.
    ///
    /// Errors: the store cannot be read (58030) or holds a corrupt role record.
    pub fn load(store: Store) -> SqlResult<Arc<Roles>> {
        let roles = store.roles()?.into_iter().map(|r| (r.name.clone(), r)).collect();
        Ok(Arc::new(Roles { store, roles: RwLock::new(roles) }))
    }

    /// The role named `name`.
    pub fn get(&self, name: &str) -> Option<RoleDef> {
        self.roles.read().unwrap().get(name).cloned()
    }

    /// All roles, by name (for `pg_roles`; their verifiers must not be shown).
    pub fn list(&self) -> Vec<RoleDef> {
        self.roles.read().unwrap().values().cloned().collect()
    }

    /// True when some superuser can log in with a password.
    pub fn has_password_superuser(&self) -> bool {
        self.roles.read().unwrap().values().any(|r| r.superuser && r.login && (r.scram.is_some() || r.md5.is_some()))
    }

    /// Creates the first superuser `name` with `password`, or gives it that password (and
    /// `LOGIN SUPERUSER` back) when it exists: the password in the daemon's configuration is
    /// the way back in when every other one is lost.
    pub fn bootstrap(&self, name: &str, password: &str) -> SqlResult<()> {
        let mut r = self.get(name).unwrap_or_else(|| RoleDef::new(name));
        r.superuser = true;
        r.login = true;
        r.scram = Some(Verifier::new(password).encode());
        r.md5 = Some(md5_digest(name, password));
        self.put(vec![r])
    }

    /// Forgets every grant on table `table`: a table created under a name a dropped table had
    /// starts with no privileges, as in PostgreSQL.
    pub fn forget_table(&self, table: &str) -> SqlResult<()> {
        let changed: Vec<RoleDef> = self
            .roles
            .read()
            .unwrap()
            .values()
            .filter(|r| r.grants.contains_key(table))
            .map(|r| {
                let mut r = r.clone();
                r.grants.remove(table);
                r
            })
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        self.put(changed)
    }

    fn put(&self, roles: Vec<RoleDef>) -> SqlResult<()> {
        self.store.put_roles(&roles)?;
        let mut map = self.roles.write().unwrap();
        for r in roles {
            map.insert(r.name.clone(), r);
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> SqlResult<()> {
        self.store.delete_role(name)?;
        self.roles.write().unwrap().remove(name);
        Ok(())
    }
}

/// `sql` from its first word on: without leading whitespace and comments.
fn skip_comments(sql: &str) -> &str {
    let mut s = sql;
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            return s;
        }
    }
}

/// The first words of `sql`, upper-cased, after whitespace and comments.
fn leading_words(sql: &str, n: usize) -> Vec<String> {
    skip_comments(sql).split(|c: char| !c.is_ascii_alphanumeric() && c != '_').filter(|w| !w.is_empty()).take(n).map(|w| w.to_uppercase()).collect()
}

/// True when `sql` is a statement this module runs (and the planner must not see).
pub fn is_role_statement(sql: &str) -> bool {
    let w = leading_words(sql, 2);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    matches!(w.as_slice(), ["CREATE" | "ALTER" | "DROP", "ROLE" | "USER" | "GROUP"] | ["GRANT" | "REVOKE", ..])
}

/// Runs a role statement ([`is_role_statement`]) for `who`.
///
/// Errors: 42601 for a syntax error (without the statement's text), 42501 when `who` may not,
/// 42710 / 42704 for a role that exists / does not, 42P01 for an unknown table, 0A000 for the
/// parts of PostgreSQL's syntax Sluice does not have.
pub fn execute(engine: &Engine, who: Option<&SessionRole>, sql: &str) -> SqlResult<Output> {
    let Some(who) = who else {
        return Err(SqlError::unsupported("role statements need a client session"));
    };
    let words = leading_words(sql, 2);
    // CREATE USER is CREATE ROLE with LOGIN (sqlparser reads CREATE USER as Snowflake's).
    let (text, user) = if words.len() == 2 && words[1] == "USER" && words[0] != "DROP" {
        let start = sql.len() - skip_comments(sql).len();
        let at = start + sql[start..].to_ascii_uppercase().find("USER").expect("the second word is USER");
        (format!("{}ROLE{}", &sql[..at], &sql[at + 4..]), true)
    } else {
        (sql.to_string(), false)
    };
    let stmt = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&text)
        .and_then(|mut p| {
            let s = p.parse_statement()?;
            while p.consume_token(&sqlparser::tokenizer::Token::SemiColon) {}
            match p.peek_token().token {
                sqlparser::tokenizer::Token::EOF => Ok(s),
                _ => Err(sqlparser::parser::ParserError::ParserError("extra text".into())),
            }
        })
        .map_err(|_| {
            SqlError::new(
                "42601",
                format!("syntax error in {} (the statement is not repeated: it may hold a password)", words.join(" ")),
            )
        })?;
    let me = who.current();
    let roles = &who.roles;
    match stmt {
        Statement::CreateRole(c) => {
            require_superuser(&me, "create roles")?;
            create_role(roles, c, user)
        }
        Statement::AlterRole { name, operation } => {
            let name = ident(&name.value, name.quote_style.is_some());
            alter_role(roles, &me, &name, operation)
        }
        Statement::Drop { object_type: ObjectType::Role | ObjectType::User, if_exists, names, .. } => {
            require_superuser(&me, "drop roles")?;
            drop_roles(roles, &who.name, &names, if_exists)
        }
        Statement::Grant(g) => {
            require_superuser(&me, "grant privileges")?;
            if g.with_grant_option {
                return Err(SqlError::unsupported("WITH GRANT OPTION: only superusers grant privileges in Sluice"));
            }
            change_grants(engine, roles, &g.privileges, g.objects.as_ref(), &g.grantees, true)?;
            Ok(command("GRANT"))
        }
        Statement::Revoke(r) => {
            require_superuser(&me, "revoke privileges")?;
            change_grants(engine, roles, &r.privileges, r.objects.as_ref(), &r.grantees, false)?;
            Ok(command("REVOKE"))
        }
        _ => Err(SqlError::unsupported(format!("{} is not supported", words.join(" ")))),
    }
}

fn command(tag: &str) -> Output {
    Output::Command { tag: tag.into(), notice: None }
}

fn ident(value: &str, quoted: bool) -> String {
    if quoted {
        value.to_string()
    } else {
        value.to_lowercase()
    }
}

/// 42501 unless `me` is a superuser.
pub(crate) fn require_superuser(me: &Option<RoleDef>, what: &str) -> SqlResult<()> {
    if me.as_ref().is_some_and(|r| r.superuser) {
        Ok(())
    } else {
        Err(SqlError::new("42501", format!("permission denied: only a superuser may {what}")))
    }
}

/// The verifiers a `PASSWORD '...'` gives `role`: a SCRAM verifier or md5 digest given as
/// such is stored as it is (PostgreSQL accepts both); a password is stored as both.
fn set_password(role: &mut RoleDef, password: &Password) -> SqlResult<()> {
    match password {
        Password::NullPassword => {
            role.scram = None;
            role.md5 = None;
        }
        Password::Password(Expr::Value(v)) => match &v.value {
            Value::SingleQuotedString(p) | Value::EscapedStringLiteral(p) | Value::DollarQuotedString(sqlparser::ast::DollarQuotedString { value: p, .. }) => {
                if p.is_empty() {
                    return Err(SqlError::new("22023", "an empty password is not allowed; use PASSWORD NULL for none"));
                }
                if let Some(v) = Verifier::parse(p) {
                    role.scram = Some(v.encode());
                    role.md5 = None;
                } else if p.len() == 35 && p.starts_with("md5") && p[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
                    role.scram = None;
                    role.md5 = Some(p.to_lowercase());
                } else {
                    role.scram = Some(Verifier::new(p).encode());
                    role.md5 = Some(md5_digest(&role.name, p));
                }
            }
            _ => return Err(SqlError::new("22023", "PASSWORD takes a string literal or NULL")),
        },
        Password::Password(_) => return Err(SqlError::new("22023", "PASSWORD takes a string literal or NULL")),
    }
    Ok(())
}

fn create_role(roles: &Roles, c: CreateRole, user: bool) -> SqlResult<Output> {
    refuse_unsupported(&[
        ("CREATEDB", c.create_db == Some(true)),
        ("CREATEROLE", c.create_role == Some(true)),
        ("REPLICATION", c.replication == Some(true)),
        ("BYPASSRLS", c.bypassrls == Some(true)),
        ("CONNECTION LIMIT", c.connection_limit.is_some()),
        ("VALID UNTIL", c.valid_until.is_some()),
        ("IN ROLE", !c.in_role.is_empty() || !c.in_group.is_empty()),
        ("ROLE", !c.role.is_empty() || !c.user.is_empty() || !c.admin.is_empty()),
    ])?;
    let mut new = Vec::new();
    for n in &c.names {
        let name = table_name(n);
        if roles.get(&name).is_some() || new.iter().any(|r: &RoleDef| r.name == name) {
            if c.if_not_exists {
                continue;
            }
            return Err(SqlError::new("42710", format!("role \"{name}\" already exists")));
        }
        let mut r = RoleDef::new(name);
        r.login = c.login.unwrap_or(user);
        r.superuser = c.superuser.unwrap_or(false);
        if let Some(p) = &c.password {
            set_password(&mut r, p)?;
        }
        new.push(r);
    }
    roles.put(new)?;
    Ok(command("CREATE ROLE"))
}

fn refuse_unsupported(options: &[(&str, bool)]) -> SqlResult<()> {
    match options.iter().find(|(_, given)| *given) {
        Some((name, _)) => Err(SqlError::unsupported(format!("the role option {name} is not supported"))),
        None => Ok(()),
    }
}

fn alter_role(roles: &Roles, me: &Option<RoleDef>, name: &str, op: AlterRoleOperation) -> SqlResult<Output> {
    let AlterRoleOperation::WithOptions { options } = op else {
        return Err(SqlError::unsupported("ALTER ROLE supports [WITH] LOGIN | NOLOGIN | SUPERUSER | NOSUPERUSER | PASSWORD"));
    };
    // A role may change its own password, as in PostgreSQL; anything else needs a superuser.
    let own_password = me.as_ref().is_some_and(|m| m.name == name) && options.iter().all(|o| matches!(o, RoleOption::Password(_)));
    if !own_password {
        require_superuser(me, "alter roles")?;
    }
    let mut r = roles.get(name).ok_or_else(|| unknown_role(name))?;
    let was_login_superuser = r.superuser && r.login;
    for o in &options {
        match o {
            RoleOption::Login(b) => r.login = *b,
            RoleOption::SuperUser(b) => r.superuser = *b,
            RoleOption::Password(p) => set_password(&mut r, p)?,
            RoleOption::Inherit(_) => {}
            RoleOption::CreateDB(false) | RoleOption::CreateRole(false) | RoleOption::Replication(false) | RoleOption::BypassRLS(false) => {}
            other => {
                let text = other.to_string();
                let word = text.split_whitespace().next().unwrap_or("");
                return Err(SqlError::unsupported(format!("the role option {word} is not supported")));
            }
        }
    }
    if was_login_superuser && !(r.superuser && r.login) && !roles.list().iter().any(|o| o.name != r.name && o.superuser && o.login) {
        return Err(SqlError::new("55000", format!("role \"{name}\" is the last superuser that can log in")));
    }
    roles.put(vec![r])?;
    Ok(command("ALTER ROLE"))
}

fn unknown_role(name: &str) -> SqlError {
    SqlError::new("42704", format!("role \"{name}\" does not exist"))
}

fn drop_roles(roles: &Roles, me: &str, names: &[ObjectName], if_exists: bool) -> SqlResult<Output> {
    let names: Vec<String> = names.iter().map(table_name).collect();
    for n in &names {
        if n == me {
            return Err(SqlError::new("55006", "current user cannot be dropped"));
        }
        if roles.get(n).is_none() && !if_exists {
            return Err(unknown_role(n));
        }
    }
    let left = roles.list().into_iter().filter(|r| !names.contains(&r.name) && r.superuser && r.login).count();
    if left == 0 && roles.list().iter().any(|r| names.contains(&r.name) && r.superuser && r.login) {
        return Err(SqlError::new("55000", "cannot drop the last superuser that can log in"));
    }
    for n in &names {
        if roles.get(n).is_some() {
            roles.remove(n)?;
        }
    }
    Ok(command("DROP ROLE"))
}

/// The table privileges a `GRANT` / `REVOKE` names.
fn privileges(p: &Privileges) -> SqlResult<Vec<Privilege>> {
    match p {
        Privileges::All { .. } => Ok(Privilege::ALL.to_vec()),
        Privileges::Actions(actions) => actions
            .iter()
            .map(|a| match a {
                Action::Select { columns: None } => Ok(Privilege::Select),
                Action::Insert { columns: None } => Ok(Privilege::Insert),
                Action::Update { columns: None } => Ok(Privilege::Update),
                Action::Delete => Ok(Privilege::Delete),
                Action::Select { .. } | Action::Insert { .. } | Action::Update { .. } => {
                    Err(SqlError::unsupported("column privileges are not supported; grant on the whole table"))
                }
                other => Err(SqlError::unsupported(format!("the privilege {other} is not supported; Sluice has SELECT, INSERT, UPDATE, DELETE and ALL"))),
            })
            .collect(),
    }
}

fn change_grants(
    engine: &Engine,
    roles: &Roles,
    privs: &Privileges,
    objects: Option<&GrantObjects>,
    grantees: &[Grantee],
    grant: bool,
) -> SqlResult<()> {
    let privs = privileges(privs)?;
    let tables: Vec<String> = match objects {
        Some(GrantObjects::Tables(names)) => {
            let names: Vec<String> = names.iter().map(table_name).collect();
            for n in &names {
                engine.table(n)?;
            }
            names
        }
        Some(GrantObjects::AllTablesInSchema { schemas }) => {
            if let Some(s) = schemas.iter().map(table_name).find(|s| s != "public") {
                return Err(SqlError::new("3F000", format!("schema \"{s}\" does not exist")));
            }
            engine.tables.read().unwrap().keys().cloned().collect()
        }
        _ => return Err(SqlError::unsupported("GRANT and REVOKE take ON [TABLE] t, ... or ON ALL TABLES IN SCHEMA public")),
    };
    let mut changed = Vec::new();
    for g in grantees {
        let name = match (&g.grantee_type, &g.name) {
            (GranteesType::Public, _) => return Err(SqlError::unsupported("privileges for PUBLIC are not supported; name a role")),
            (_, Some(GranteeName::ObjectName(n))) => table_name(n),
            _ => return Err(SqlError::unsupported("grantees are role names")),
        };
        let mut r = changed.iter().position(|r: &RoleDef| r.name == name).map(|i| changed.remove(i)).or_else(|| roles.get(&name)).ok_or_else(|| unknown_role(&name))?;
        for t in &tables {
            let set = r.grants.entry(t.clone()).or_default();
            for p in &privs {
                if grant {
                    set.insert(*p);
                } else {
                    set.remove(p);
                }
            }
            if set.is_empty() {
                r.grants.remove(t);
            }
        }
        changed.push(r);
    }
    roles.put(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_statements_are_recognized_after_comments() {
        assert!(is_role_statement("CREATE ROLE bi"));
        assert!(is_role_statement("  -- c\n/* x */ create user bi with password 'x'"));
        assert!(is_role_statement("grant select on t to bi"));
        assert!(is_role_statement("DROP USER IF EXISTS bi"));
        assert!(!is_role_statement("CREATE TABLE role (a int)"));
        assert!(!is_role_statement("SELECT 'GRANT'"));
    }

    #[test]
    fn passwords_become_verifiers() {
        let mut r = RoleDef::new("bi");
        set_password(&mut r, &Password::Password(Expr::Value(Value::SingleQuotedString("pw".into()).into()))).unwrap();
        assert!(r.scram.as_deref().unwrap().starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(r.md5.as_deref(), Some(md5_digest("bi", "pw").as_str()));
        assert!(!format!("{:?}", r).contains("pw\""));
        let given = Verifier::new("other").encode();
        set_password(&mut r, &Password::Password(Expr::Value(Value::SingleQuotedString(given.clone()).into()))).unwrap();
        assert_eq!(r.scram.as_deref(), Some(given.as_str()));
        assert_eq!(r.md5, None);
        set_password(&mut r, &Password::NullPassword).unwrap();
        assert_eq!(r.scram, None);
    }
}
