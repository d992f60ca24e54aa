//! What a role may do, checked before a statement runs (PostgreSQL docs "5.7. Privileges",
//! with Sluice's objects):
//!
//! - reads (`SELECT`, `SUBSCRIBE`, cursors, `COPY ... TO`, `EXPLAIN`) need `SELECT` on every
//!   table they read; the catalogs (`pg_catalog`, `information_schema`, `SHOW`, `DESCRIBE`)
//!   are open to every role, as in PostgreSQL;
//! - `INSERT ... VALUES` and `COPY ... FROM STDIN` need `INSERT` on the table, `UPDATE` and
//!   `DELETE` their privilege (and `SELECT` on the other tables they read);
//! - everything that changes the catalog or runs in the background (`CREATE`/`DROP TABLE`,
//!   `INSERT INTO ... SELECT` and `SUBSCRIBE`-less persistent queries, `STOP`/`RESUME JOB`,
//!   connectors, roles and grants) needs a superuser. Only superusers create objects in Sluice,
//!   so every object's owner is a superuser and "superuser or owner" is "superuser".
//!
//! A statement kind this module does not know needs a superuser: new statements fail closed
//! until they are given a rule here. Every refusal is SQLSTATE 42501.

use std::ops::ControlFlow;

use sluice_catalog::{Privilege, RoleDef};
use sluice_planner::SluiceStatement;
use sqlparser::ast::{visit_relations, CopySource, FromTable, ObjectName, ObjectNamePart, Statement, TableFactor, TableObject, Visit};

use super::roles::require_superuser;
use crate::engine::{reads_tables, table_name, Engine};
use crate::errors::{SqlError, SqlResult};

/// Checks that `role` may run `stmt`; `role` None is a superuser. Before a `CREATE TABLE` of a
/// name no table has, grants left from a dropped table of that name are forgotten.
///
/// Errors: 42501 `permission denied for table t` / `permission denied: only a superuser may ...`.
pub fn authorize(engine: &Engine, role: Option<&RoleDef>, stmt: &SluiceStatement) -> SqlResult<()> {
    let me = role.cloned().map(Some).unwrap_or_else(|| Some(superuser()));
    match stmt {
        SluiceStatement::ShowTables
        | SluiceStatement::ShowJobs
        | SluiceStatement::ShowCreateTable(_)
        | SluiceStatement::Describe(_)
        | SluiceStatement::ShowConnectors
        | SluiceStatement::DescribeConnector(_)
        | SluiceStatement::SetOption { .. }
        | SluiceStatement::ResetOption(_)
        | SluiceStatement::Flush => Ok(()),
        SluiceStatement::CreateTable(_) => require_superuser(&me, "create tables"),
        SluiceStatement::DropTable { .. } => require_superuser(&me, "drop tables"),
        SluiceStatement::CreateConnector { .. } | SluiceStatement::DropConnector { .. } => require_superuser(&me, "create or drop connectors"),
        SluiceStatement::StopJob(_) | SluiceStatement::ResumeJob { .. } => require_superuser(&me, "stop or resume jobs"),
        SluiceStatement::Explain(inner) => authorize(engine, role, &sluice_planner::parse_statement(inner)?),
        SluiceStatement::Subscribe(s) => match sluice_planner::parse_statement(&s.query_sql())? {
            SluiceStatement::Sql(q) if matches!(*q, Statement::Query(_)) => reads(engine, &me, &*q, None),
            _ => require_superuser(&me, "subscribe to this"),
        },
        SluiceStatement::Sql(s) => statement(engine, &me, s),
        #[allow(unreachable_patterns)]
        _ => require_superuser(&me, "run this statement"),
    }
}

fn superuser() -> RoleDef {
    let mut r = RoleDef::new("");
    r.superuser = true;
    r
}

fn statement(engine: &Engine, me: &Option<RoleDef>, s: &Statement) -> SqlResult<()> {
    match s {
        Statement::Query(_) => reads(engine, me, s, None),
        Statement::Insert(ins) => {
            if ins.source.as_ref().is_some_and(|q| reads_tables(q)) {
                return require_superuser(me, "start persistent queries (INSERT INTO ... SELECT)");
            }
            let TableObject::TableName(t) = &ins.table else {
                return require_superuser(me, "insert into a table function");
            };
            let target = table_name(t);
            need(engine, me, Privilege::Insert, &target)?;
            reads(engine, me, s, Some(&target))
        }
        Statement::Update(u) => match &u.table.relation {
            TableFactor::Table { name, .. } => {
                let target = table_name(name);
                need(engine, me, Privilege::Update, &target)?;
                reads(engine, me, s, Some(&target))
            }
            _ => require_superuser(me, "update this"),
        },
        Statement::Delete(d) => {
            let tables = match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            match tables.first().map(|t| &t.relation) {
                Some(TableFactor::Table { name, .. }) => {
                    let target = table_name(name);
                    need(engine, me, Privilege::Delete, &target)?;
                    reads(engine, me, s, Some(&target))
                }
                _ => require_superuser(me, "delete from this"),
            }
        }
        Statement::Copy { source, to, .. } => match (source, to) {
            (CopySource::Table { table_name: t, .. }, false) => need(engine, me, Privilege::Insert, &table_name(t)),
            (CopySource::Table { table_name: t, .. }, true) => need(engine, me, Privilege::Select, &table_name(t)),
            (CopySource::Query(q), true) => reads(engine, me, &**q, None),
            _ => require_superuser(me, "run this COPY"),
        },
        Statement::Declare { .. } => reads(engine, me, s, None),
        Statement::Set(_)
        | Statement::Reset(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. } => Ok(()),
        _ => require_superuser(me, "run this statement"),
    }
}

/// 42501 unless `me` has `privilege` on `table`. A name no table has is left to the statement
/// (which reports 42P01, or reads a catalog table of that name).
fn need(engine: &Engine, me: &Option<RoleDef>, privilege: Privilege, table: &str) -> SqlResult<()> {
    let Some(r) = me else {
        return Err(denied(table));
    };
    if r.superuser || !engine.tables.read().unwrap().contains_key(table) || r.may(privilege, table) {
        Ok(())
    } else {
        Err(denied(table))
    }
}

fn denied(table: &str) -> SqlError {
    SqlError::new("42501", format!("permission denied for table {table}"))
}

/// `SELECT` on every Sluice table `node` reads, but `except` (a statement's target, checked
/// for its own privilege). Names in `pg_catalog` or `information_schema` are catalogs.
fn reads<V: Visit>(engine: &Engine, me: &Option<RoleDef>, node: &V, except: Option<&str>) -> SqlResult<()> {
    let mut result = Ok(());
    let _ = visit_relations(node, |name: &ObjectName| {
        if in_catalog_schema(name) {
            return ControlFlow::Continue(());
        }
        let t = table_name(name);
        if Some(t.as_str()) == except {
            return ControlFlow::Continue(());
        }
        match need(engine, me, Privilege::Select, &t) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                result = Err(e);
                ControlFlow::Break(())
            }
        }
    });
    result
}

fn in_catalog_schema(name: &ObjectName) -> bool {
    let parts = &name.0;
    if parts.len() < 2 {
        return false;
    }
    match &parts[parts.len() - 2] {
        ObjectNamePart::Identifier(id) => !id.value.eq_ignore_ascii_case("public"),
        _ => true,
    }
}
