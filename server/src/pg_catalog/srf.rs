//! PostgreSQL's set-returning functions over an index's key columns (`pg_index.indkey`, an
//! `int2vector`) in a select list: `information_schema._pg_expandarray(indkey)`, as pgJDBC's
//! `DatabaseMetaData.getPrimaryKeys` (and DBeaver, Metabase through it) calls it, and
//! `unnest(indkey)` with `generate_subscripts(indkey, 1)`, as SQLAlchemy's
//! `get_pk_constraint` does. pgJDBC's query:
//!
//! ```sql
//! SELECT ... FROM (SELECT ..., (information_schema._pg_expandarray(i.indkey)).n AS KEY_SEQ, ...,
//!   information_schema._pg_expandarray(i.indkey) AS KEYS, a.attnum AS A_ATTNUM
//!   FROM pg_catalog.pg_class ct JOIN ... JOIN pg_catalog.pg_index i ON (a.attrelid = i.indrelid) ...) result
//! WHERE result.A_ATTNUM = (result.KEYS).x
//! ```
//!
//! Each row of the select is repeated once per element of the array, with `x` the element and
//! `n` its 1-based position. DataFusion has no set-returning functions in a select list; the
//! select joins `pg_catalog.sluice_index_keys` (one row per key column of each index) on the
//! index instead, `(_pg_expandarray(q.indkey)).f` becomes `sluice_keys.f`, the bare call
//! `sluice_keys.x`, and the outer `(alias.KEYS).x` the column itself.

use std::ops::ControlFlow;

use sqlparser::ast::{AccessExpr, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Select, SetExpr, Statement};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

/// The alias of the joined key table.
const KEYS: &str = "sluice_keys";

/// A set-returning call over an index's `indkey` in a select list: the qualifier of the
/// `indkey` column (`i` in `i.indkey`, `pg_catalog.pg_index` in `pg_catalog.pg_index.indkey`)
/// and the `sluice_index_keys` column the call's rows are: `_pg_expandarray(q.indkey)` and
/// `unnest(q.indkey)` are the elements `x`, `generate_subscripts(q.indkey, 1)` their positions `n`.
fn indkey_call(e: &Expr) -> Option<(Vec<Ident>, &'static str)> {
    let Expr::Function(f) = e else { return None };
    let name = f.name.0.last().and_then(|p| p.as_ident())?.value.to_lowercase();
    let column = match name.as_str() {
        "_pg_expandarray" | "unnest" => "x",
        "generate_subscripts" => "n",
        _ => return None,
    };
    let FunctionArguments::List(list) = &f.args else { return None };
    match list.args.first() {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(parts)))) if parts.len() >= 2 => {
            let array = parts.last()?.value.to_lowercase();
            let column = match (array.as_str(), column) {
                ("indkey", c) => c,
                // `unnest(indclass)`, the operator classes beside the keys (SQLAlchemy).
                ("indclass", "x") => "cls",
                _ => return None,
            };
            Some((parts[..parts.len() - 1].to_vec(), column))
        }
        _ => None,
    }
}

fn keys_column(name: &str) -> Expr {
    Expr::CompoundIdentifier(vec![Ident::new(KEYS), Ident::new(name)])
}

/// Rewrites a select that calls `_pg_expandarray`, `unnest` or `generate_subscripts` over an
/// `indkey` in its select list, as the module docs say; any other select is left as it is.
pub(super) fn expand_arrays(sel: &mut Select) {
    let mut index: Option<Vec<Ident>> = None;
    let _ = sqlparser::ast::visit_expressions(&sel.projection, |e| {
        if let Some((q, _)) = indkey_call(e) {
            index = Some(q);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    let (Some(index), Some(first)) = (index, sel.from.first_mut()) else { return };
    let index = index.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(".");
    let sql = format!("SELECT 1 FROM t JOIN pg_catalog.sluice_index_keys AS {KEYS} ON {KEYS}.indexrelid = {index}.indexrelid");
    let Ok(Statement::Query(q)) = Parser::new(&GenericDialect {}).try_with_sql(&sql).and_then(|mut p| p.parse_statement()) else {
        return;
    };
    let SetExpr::Select(parsed) = *q.body else { return };
    let Some(join) = parsed.from.into_iter().next().and_then(|t| t.joins.into_iter().next()) else { return };
    first.joins.push(join);
    let _ = sqlparser::ast::visit_expressions_mut(&mut sel.projection, |e| {
        if let Some((_, column)) = indkey_call(e) {
            *e = keys_column(column);
        } else if let Expr::CompoundFieldAccess { root, access_chain } = e {
            let on_keys = matches!(root.as_ref(), Expr::Nested(inner) if matches!(inner.as_ref(), Expr::CompoundIdentifier(p) if p[0].value == KEYS));
            if let (true, [AccessExpr::Dot(Expr::Identifier(field))]) = (on_keys, access_chain.as_slice()) {
                *e = keys_column(&field.value.to_lowercase());
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The outer half: `(alias.keys).x` over a select rewritten by [`expand_arrays`] is the column
/// `alias.keys`, which holds `x`.
pub(super) fn keys_field(e: &Expr) -> Option<Expr> {
    let Expr::CompoundFieldAccess { root, access_chain } = e else { return None };
    let Expr::Nested(inner) = root.as_ref() else { return None };
    let Expr::CompoundIdentifier(parts) = inner.as_ref() else { return None };
    match (parts.last(), access_chain.as_slice()) {
        (Some(last), [AccessExpr::Dot(Expr::Identifier(f))]) if last.value.eq_ignore_ascii_case("keys") && f.value.eq_ignore_ascii_case("x") => {
            Some(inner.as_ref().clone())
        }
        _ => None,
    }
}
