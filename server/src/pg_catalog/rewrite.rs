//! Rewrites a parsed statement into one DataFusion plans. Catalog queries (statements that
//! reference `pg_catalog` or `information_schema` objects, see [`rewrite`]) get all of these:
//!
//! - bare catalog names (`pg_class`) are qualified with `pg_catalog`, as PostgreSQL searches
//!   `pg_catalog` first; `information_schema.x` is Sluice's (see
//!   [`super::information_schema`]), not DataFusion's;
//! - `pg_catalog.f(...)` calls lose the qualifier (the functions are registered unqualified);
//! - `OPERATOR(pg_catalog.~)` is `~` (and `!~`, `=`, `<>` likewise); `COLLATE pg_catalog.default`
//!   is dropped (the default collation is the only one);
//! - `'name'::regclass` is `sluice_regclass_oid('name')`, `x::regclass` is
//!   `sluice_regclass_name(x)`, `x::regtype` is `format_type(x, NULL)` (`'name'::regtype` looks
//!   the name up first), `::oid` is `::BIGINT` (and of a `::regtype`/`::regclass`, the OID
//!   itself), `::pg_catalog.text`/`name`/`"char"` are `::TEXT`, `::json`/`::jsonb` are `::TEXT`;
//! - a scalar subquery returning one plain value returns `max(value)` (see [`at_most_one`]);
//! - a `SELECT` that reads (not through an outer join) a catalog Sluice never has rows in
//!   (row-security policies, extended statistics, publications, inheritance, triggers, rules)
//!   becomes `SELECT NULL::TEXT AS ... WHERE false` with the same column names, without
//!   planning its select list; when every branch of the query is such a `SELECT`, its
//!   `ORDER BY` is dropped too (it has no rows to order).
//!
//! Any statement gets the rewrites of PostgreSQL's session functions and set-returning
//! functions: `current_user`, `session_user`, `current_setting('x')`, `set_config(...)` become
//! calls of the UDFs that read the session (see [`session_literal`]), `generate_series(...)` in a select list is
//! unnested into rows, `FROM generate_series(...) s` names its column `s`; and of the casts to
//! the OID alias and JSON types above.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, CastKind, DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident,
    JoinOperator, ObjectName, ObjectNamePart, Query, Select, SelectItem, SetExpr, Statement, TableFactor, Value, VisitMut,
    VisitorMut,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use super::TABLES;

/// The catalogs Sluice never has rows in and does not register.
const EMPTY: &[&str] = &[
    "pg_policy", "pg_statistic_ext", "pg_publication", "pg_publication_rel", "pg_publication_namespace", "pg_inherits",
    "pg_trigger", "pg_rewrite", "pg_partitioned_table", "pg_foreign_table", "pg_sequence",
];

/// PostgreSQL's `quote_ident`: a name made of lower-case letters, digits and `_` (not starting
/// with a digit) as is, any other double-quoted.
pub fn quote_ident(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { s.to_string() } else { format!("\"{}\"", s.replace('"', "\"\"")) }
}

fn part(p: &ObjectNamePart) -> String {
    match p {
        ObjectNamePart::Identifier(id) => id.value.to_lowercase(),
        other => other.to_string().to_lowercase(),
    }
}

/// The catalog a relation name refers to: `pg_catalog.x` or a bare known catalog name.
fn catalog_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [s, t] if part(s) == "pg_catalog" => Some(part(t)),
        [t] if TABLES.contains(&part(t).as_str()) || EMPTY.contains(&part(t).as_str()) => Some(part(t)),
        _ => None,
    }
}

/// The information-schema table a relation name refers to: `information_schema.x` for one of
/// [`super::information_schema::TABLES`].
fn info_schema_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [s, t] if part(s) == "information_schema" && super::information_schema::TABLES.contains(&part(t).as_str()) => Some(part(t)),
        _ => None,
    }
}

/// Functions given their PostgreSQL meaning in any statement (see [`session_literal`] and
/// [`Rewriter::pre_visit_query`]).
const SESSION_FUNCTIONS: &[&str] =
    &["current_user", "session_user", "user", "current_role", "current_catalog", "current_setting", "set_config", "generate_series"];

/// Types whose casts are rewritten in any statement: PostgreSQL's OID aliases and JSON types.
const PG_TYPES: &[&str] = &["regclass", "regtype", "regnamespace", "regproc", "regrole", "oid", "json", "jsonb", "name", "char"];

fn type_name(ty: &DataType) -> String {
    let name = ty.to_string().to_lowercase();
    name.strip_prefix("pg_catalog.").unwrap_or(&name).trim_matches('"').to_string()
}

fn function_name(f: &sqlparser::ast::Function) -> String {
    f.name.0.last().map(part).unwrap_or_default()
}

/// True when the statement uses PostgreSQL functions or types that need rewriting even outside
/// a catalog query: `current_user`, `current_setting(...)`, `generate_series(...)`, `::regclass`,
/// `::jsonb`.
fn uses_pg_features(stmt: &Statement) -> bool {
    let found = sqlparser::ast::visit_expressions(stmt, |e| match e {
        Expr::Function(f) if SESSION_FUNCTIONS.contains(&function_name(f).as_str()) => ControlFlow::Break(()),
        Expr::Cast { data_type, .. } if PG_TYPES.contains(&type_name(data_type).as_str()) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    let table_fn = sqlparser::ast::visit_relations(stmt, |n| match n.0.as_slice() {
        [s, _] if part(s) == "pg_catalog" => ControlFlow::Break(()),
        [t] if part(t) == "generate_series" => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    found.is_break() || table_fn.is_break()
}

/// True when the statement reads a `pg_catalog` or `information_schema` table or calls a
/// `pg_catalog.` function.
pub fn references_catalog(stmt: &Statement) -> bool {
    let rel = sqlparser::ast::visit_relations(stmt, |n| {
        if catalog_name(n).is_some() || info_schema_name(n).is_some() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    let func = sqlparser::ast::visit_expressions(stmt, |e| match e {
        Expr::Function(f) if f.name.0.len() == 2 && part(&f.name.0[0]) == "pg_catalog" => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    rel.is_break() || func.is_break()
}

/// Rewrites `stmt` as the module docs say when it references `pg_catalog` or
/// `information_schema`; a statement that only uses PostgreSQL's session functions, set-returning
/// `generate_series` or OID/JSON casts gets those rewrites alone; any other statement is returned
/// unchanged.
pub fn rewrite(mut stmt: Statement) -> Statement {
    let catalog = references_catalog(&stmt);
    if catalog || uses_pg_features(&stmt) {
        let _ = stmt.visit(&mut Rewriter { catalog });
    }
    stmt
}

/// The rewriting visitor; `catalog` turns on the rewrites only catalog queries get (scalar
/// subqueries as `max`, always-empty catalogs, dropped `COLLATE`).
struct Rewriter {
    catalog: bool,
}

/// The session functions PostgreSQL calls without parentheses, as calls of the UDFs that read
/// the statement's session: `current_user`, `user`, `current_role` (`sluice_current_user()`,
/// the start-up packet's user), `session_user` (`sluice_session_user()`), `current_catalog`
/// (`current_database()`). `current_setting` and `set_config` are UDFs of their own, which
/// DataFusion evaluates once while planning when their arguments are literals.
fn session_literal(f: &sqlparser::ast::Function) -> Option<Expr> {
    let name = function_name(f);
    let bare = matches!(f.args, FunctionArguments::None);
    match name.as_str() {
        // Calls of UDFs that read the session: distinct names, as DataFusion wants for the
        // columns of `SELECT current_user, session_user`.
        "current_user" | "user" | "current_role" if bare => Some(call("sluice_current_user", vec![])),
        "session_user" if bare => Some(call("sluice_session_user", vec![])),
        "current_catalog" if bare => Some(call("current_database", vec![])),
        _ => None,
    }
}

/// `ARRAY(SELECT x FROM ...)` in a catalog query, which DataFusion does not plan: over a
/// set-returning function in `FROM` (psql's `ARRAY(SELECT 'toast.' || x FROM
/// unnest(tc.reloptions) x)`, whose array is always NULL: Sluice has no TOAST tables or storage
/// options) it is `sluice_null_text_array()`; otherwise `(SELECT array_agg(x) FROM ...)`, which
/// differs from PostgreSQL only for no rows (NULL, not `{}`).
fn array_subquery(f: &sqlparser::ast::Function) -> Option<Expr> {
    if function_name(f) != "array" {
        return None;
    }
    let FunctionArguments::Subquery(q) = &f.args else { return None };
    let mut q = q.clone();
    let SetExpr::Select(sel) = q.body.as_mut() else { return None };
    let from_function = sel.from.iter().any(|t| matches!(t.relation, TableFactor::Table { args: Some(_), .. }));
    if from_function {
        return Some(call("sluice_null_text_array", vec![]));
    }
    if let [SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }] = sel.projection.as_mut_slice() {
        *e = call("array_agg", vec![e.clone()]);
        return Some(Expr::Subquery(q));
    }
    None
}

/// `generate_series(...)` in a select list returns a set of rows in PostgreSQL; DataFusion's
/// returns one array: the item becomes `unnest(generate_series(...))`.
fn unnest_series(sel: &mut Select) {
    for item in sel.projection.iter_mut() {
        if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
            if matches!(e, Expr::Function(f) if function_name(f) == "generate_series") {
                *e = call("unnest", vec![e.clone()]);
            }
        }
    }
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    let mut e = Parser::new(&GenericDialect {}).try_with_sql(&format!("{name}()")).and_then(|mut p| p.parse_expr()).expect("a call");
    if let Expr::Function(f) = &mut e {
        f.args = FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args.into_iter().map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a))).collect(),
            clauses: vec![],
        });
    }
    e
}

fn cast(expr: Expr, data_type: DataType) -> Expr {
    Expr::Cast { kind: CastKind::Cast, expr: Box::new(expr), data_type, array: false, format: None }
}

/// The rewrite of `expr::ty` for the PostgreSQL types DataFusion does not know, or None.
fn pg_cast(expr: &Expr, ty: &DataType) -> Option<Expr> {
    let name = ty.to_string().to_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name).trim_matches('"');
    let inner = expr.clone();
    Some(match name {
        "regclass" => match &inner {
            Expr::Value(v) if matches!(v.value, Value::SingleQuotedString(_)) => call("sluice_regclass_oid", vec![inner]),
            _ => call("sluice_regclass_name", vec![inner]),
        },
        "regtype" => match &inner {
            Expr::Value(v) if matches!(v.value, Value::SingleQuotedString(_)) => {
                call("format_type", vec![call("sluice_regtype_oid", vec![inner]), Expr::value(Value::Null)])
            }
            _ => call("format_type", vec![inner, Expr::value(Value::Null)]),
        },
        // `x::regtype::oid` and `x::regclass::oid` are `x` again.
        "oid" | "int4" | "int8" if oid_of_alias(&inner).is_some() => oid_of_alias(&inner)?,
        "json" | "jsonb" => cast(inner, DataType::Text),
        // A catalog function's text stays `Utf8`: DataFusion's `CAST(.. AS TEXT)` is `Utf8View`,
        // which a `CASE` mixing it with `Utf8` literals fails to execute.
        "regnamespace" | "regproc" | "regrole" | "text" | "name" | "char" if matches!(inner, Expr::Function(_)) => inner,
        "regnamespace" | "regproc" | "regrole" | "text" | "name" | "char" => cast(inner, DataType::Text),
        "oid" | "xid" => cast(inner, DataType::BigInt(None)),
        "int2" => cast(inner, DataType::SmallInt(None)),
        "int4" => cast(inner, DataType::Int(None)),
        "int8" => cast(inner, DataType::BigInt(None)),
        "bool" => cast(inner, DataType::Boolean),
        _ => return None,
    })
}

/// The OID inside a rewritten `::regtype` or `::regclass` cast: `format_type(x, NULL)` and
/// `sluice_regclass_name(x)` are `x`, `format_type(sluice_regtype_oid('t'), NULL)` is
/// `sluice_regtype_oid('t')`.
fn oid_of_alias(e: &Expr) -> Option<Expr> {
    let Expr::Function(f) = e else { return None };
    let FunctionArguments::List(list) = &f.args else { return None };
    let first = match list.args.first()? {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => x.clone(),
        _ => return None,
    };
    match function_name(f).as_str() {
        "format_type" if matches!(list.args.get(1), Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) if v.value == Value::Null) => {
            Some(first)
        }
        "sluice_regclass_name" => Some(first),
        _ => None,
    }
}

/// Scalar functions that clients call in `FROM` (Grafana's `FROM string_to_array(...) s`).
const SCALARS_IN_FROM: &[&str] = &["string_to_array", "current_schemas", "parse_ident"];

/// PostgreSQL lets a scalar function stand in `FROM` as a one-row table whose one column has
/// the alias's name: `f(args) AS s` becomes `(SELECT f(args) AS s) AS s`.
fn scalar_in_from(factor: &TableFactor) -> Option<TableFactor> {
    let TableFactor::Table { name, args: Some(args), alias: Some(alias), .. } = factor else { return None };
    let fname = name.0.last().map(part)?;
    if !SCALARS_IN_FROM.contains(&fname.as_str()) || !alias.columns.is_empty() {
        return None;
    }
    let list = args.args.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
    let col = &alias.name;
    let sql = format!("SELECT 1 FROM (SELECT {fname}({list}) AS {col}) AS {col}");
    let Ok(Statement::Query(q)) = Parser::new(&GenericDialect {}).try_with_sql(&sql).and_then(|mut p| p.parse_statement()) else {
        return None;
    };
    let SetExpr::Select(sel) = *q.body else { return None };
    sel.from.into_iter().next().map(|t| t.relation)
}

/// `FROM generate_series(a, b) AS s` (or `AS s(i)`) names its one column `s` (or `i`) in
/// PostgreSQL; DataFusion's table function names it `value` and takes BIGINT bounds:
/// `(SELECT value AS s FROM generate_series(CAST(a AS BIGINT), CAST(b AS BIGINT))) AS s`.
fn series_in_from(factor: &TableFactor) -> Option<TableFactor> {
    let TableFactor::Table { name, args: Some(args), alias: Some(alias), .. } = factor else { return None };
    if name.0.last().map(part).as_deref() != Some("generate_series") || args.args.len() != 2 {
        return None;
    }
    let list = args.args.iter().map(|a| format!("CAST({a} AS BIGINT)")).collect::<Vec<_>>().join(", ");
    let table = &alias.name;
    let col = alias.columns.first().map_or_else(|| table.to_string(), |c| c.name.to_string());
    let sql = format!("SELECT 1 FROM (SELECT value AS {col} FROM generate_series({list})) AS {table}");
    let Ok(Statement::Query(q)) = Parser::new(&GenericDialect {}).try_with_sql(&sql).and_then(|mut p| p.parse_statement()) else {
        return None;
    };
    let SetExpr::Select(sel) = *q.body else { return None };
    sel.from.into_iter().next().map(|t| t.relation)
}

/// The output name of a select item, as PostgreSQL names a column.
fn item_name(item: &SelectItem) -> String {
    match item {
        SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
        SelectItem::UnnamedExpr(Expr::Identifier(id)) => id.value.clone(),
        SelectItem::UnnamedExpr(Expr::CompoundIdentifier(ids)) => ids.last().map_or("?column?".into(), |i| i.value.clone()),
        SelectItem::UnnamedExpr(Expr::Function(f)) => f.name.0.last().map_or("?column?".into(), part),
        _ => "?column?".into(),
    }
}

/// True when the select reads an always-empty catalog in a position no outer join pads.
fn reads_empty(sel: &Select) -> bool {
    let empty = |f: &TableFactor| matches!(f, TableFactor::Table { name, .. } if catalog_name(name).is_some_and(|n| EMPTY.contains(&n.as_str())));
    sel.from.iter().any(|twj| {
        empty(&twj.relation)
            || twj.joins.iter().any(|j| {
                matches!(j.join_operator, JoinOperator::Join(_) | JoinOperator::Inner(_) | JoinOperator::CrossJoin(_)) && empty(&j.relation)
            })
    })
}

/// Replaces the always-empty selects of `body`; returns whether every select was replaced.
fn empty_selects(body: &mut SetExpr) -> bool {
    match body {
        SetExpr::Select(sel) if reads_empty(sel) => {
            // DataFusion wants distinct output names where PostgreSQL allows repeats: a repeat
            // gets a `_<n>` suffix (the query has no rows for a client to read by name).
            let mut seen: Vec<String> = Vec::new();
            let mut cols = Vec::new();
            for item in &sel.projection {
                let base = item_name(item);
                let mut name = base.clone();
                let mut n = 1;
                while seen.contains(&name) {
                    n += 1;
                    name = format!("{base}_{n}");
                }
                cols.push(format!("CAST(NULL AS TEXT) AS \"{}\"", name.replace('"', "\"\"")));
                seen.push(name);
            }
            let sql = format!("SELECT {} WHERE false", cols.join(", "));
            if let Ok(Statement::Query(q)) = Parser::new(&GenericDialect {}).try_with_sql(&sql).and_then(|mut p| p.parse_statement()) {
                *body = *q.body;
            }
            true
        }
        SetExpr::SetOperation { left, right, .. } => {
            let l = empty_selects(left);
            let r = empty_selects(right);
            l && r
        }
        _ => false,
    }
}

/// True for a scalar subquery over `pg_attrdef` (Sluice has no column defaults) or
/// `pg_collation` (every column has its type's default collation, so psql's `\d`, which asks
/// for a collation other than the type's, finds none): it is NULL. DataFusion cannot
/// decorrelate psql's forms of these subqueries.
fn reads_nothing(q: &Query) -> bool {
    let SetExpr::Select(sel) = q.body.as_ref() else { return false };
    sel.from.iter().any(|twj| {
        std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)).any(|f| {
            matches!(f, TableFactor::Table { name, .. } if catalog_name(name).is_some_and(|n| n == "pg_attrdef" || n == "pg_collation"))
        })
    })
}

/// A scalar subquery's single value as `max(value)`: DataFusion plans a correlated scalar
/// subquery only when it is aggregated; PostgreSQL's returns at most one row (or fails), for
/// which `max` is the same value.
fn at_most_one(q: &mut Query) {
    if let SetExpr::Select(sel) = q.body.as_mut() {
        let grouped = !matches!(&sel.group_by, sqlparser::ast::GroupByExpr::Expressions(e, _) if e.is_empty());
        if let [SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }] = sel.projection.as_mut_slice() {
            let aggregate = matches!(e, Expr::Function(f) if f.name.0.last().is_some_and(|n| {
                matches!(part(n).as_str(), "count" | "sum" | "min" | "max" | "avg" | "string_agg" | "array_agg" | "bool_and" | "bool_or")
            }));
            if !grouped && !aggregate {
                *e = call("max", vec![e.clone()]);
            }
        }
    }
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if self.catalog && empty_selects(&mut query.body) {
            query.order_by = None;
        }
        if let SetExpr::Select(sel) = query.body.as_mut() {
            unnest_series(sel);
            if self.catalog {
                super::srf::expand_arrays(sel);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &mut ObjectName) -> ControlFlow<()> {
        if name.0.len() == 1 && TABLES.contains(&part(&name.0[0]).as_str()) {
            name.0.insert(0, ObjectNamePart::Identifier(Ident::new("pg_catalog")));
        }
        if info_schema_name(name).is_some() {
            name.0[0] = ObjectNamePart::Identifier(Ident::new(super::information_schema::SCHEMA));
        }
        ControlFlow::Continue(())
    }

    /// `pg_catalog.unnest(...)` and `pg_catalog.generate_series(...)` in `FROM` are DataFusion's
    /// table functions; a table function aliased `s` without column names names its column `s`,
    /// as in PostgreSQL.
    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let Some(derived) = scalar_in_from(factor).or_else(|| series_in_from(factor)) {
            *factor = derived;
            return ControlFlow::Continue(());
        }
        if let TableFactor::Table { name, args: Some(_), alias, .. } = factor {
            if name.0.len() == 2 && part(&name.0[0]) == "pg_catalog" {
                name.0.remove(0);
            }
            if let Some(a) = alias {
                if a.columns.is_empty() {
                    a.columns.push(sqlparser::ast::TableAliasColumnDef::from_name(a.name.value.clone()));
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let replacement = match expr {
            Expr::Function(f) => {
                if f.name.0.len() == 2 && part(&f.name.0[0]) == "pg_catalog" {
                    f.name.0.remove(0);
                }
                if self.catalog {
                    array_subquery(f).or_else(|| session_literal(f))
                } else {
                    session_literal(f)
                }
            }
            Expr::Collate { expr: inner, .. } if self.catalog => Some((**inner).clone()),
            Expr::CompoundFieldAccess { .. } if self.catalog => super::srf::keys_field(expr),
            Expr::Subquery(q) if self.catalog && reads_nothing(q) => Some(cast(Expr::value(Value::Null), DataType::Text)),
            Expr::Subquery(q) if self.catalog => {
                at_most_one(q);
                None
            }
            Expr::Cast { expr: inner, data_type, .. } if self.catalog || PG_TYPES.contains(&type_name(data_type).as_str()) => {
                pg_cast(inner, data_type)
            }
            Expr::BinaryOp { op: BinaryOperator::PGCustomBinaryOperator(parts), .. } => {
                let op = match parts.last().map(String::as_str) {
                    Some("~") => Some(BinaryOperator::PGRegexMatch),
                    Some("!~") => Some(BinaryOperator::PGRegexNotMatch),
                    Some("~*") => Some(BinaryOperator::PGRegexIMatch),
                    Some("=") => Some(BinaryOperator::Eq),
                    Some("<>") => Some(BinaryOperator::NotEq),
                    _ => None,
                };
                if let (Some(op), Expr::BinaryOp { op: slot, .. }) = (op, &mut *expr) {
                    *slot = op;
                }
                None
            }
            _ => None,
        };
        if let Some(r) = replacement {
            *expr = r;
        }
        ControlFlow::Continue(())
    }
}
