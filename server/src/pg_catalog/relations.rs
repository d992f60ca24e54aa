//! The catalogs of relations: `pg_namespace`, `pg_class`, `pg_attribute`, `pg_index`,
//! `pg_constraint`, `pg_tables`, `pg_stat_user_tables`, Sluice's `sluice_index_keys` (see
//! [`super::srf`]), and the ones Sluice has no rows in (`pg_attrdef`,
//! `pg_description`, `pg_inherits`, `pg_views`, `pg_matviews`: no defaults, comments,
//! inheritance or views).

use datafusion::scalar::ScalarValue;
use sluice_catalog::TableDef;

use super::types::{collatable, column_type, storage, DEFAULT_COLLATION};
use super::{
    b, constraint_oid, i4, i8, index_oid, null, rel_oid, t, Build, Snapshot, DATABASE_OWNER_OID, INFORMATION_SCHEMA_OID,
    PG_CATALOG_OID, PUBLIC_OID, SLUICE_ROLE_OID,
};

/// Access method OIDs, as in PostgreSQL's `pg_am`.
pub const HEAP_AM: i64 = 2;
/// The btree access method.
pub const BTREE_AM: i64 = 403;

const PG_CLASS: &str = "oid:i8 relname:t relnamespace:i8 reltype:i8 reloftype:i8 relowner:i8 relam:i8 relfilenode:i8 \
    reltablespace:i8 relpages:i4 reltuples:f4 relallvisible:i4 reltoastrelid:i8 relhasindex:b relisshared:b \
    relpersistence:t relkind:t relnatts:i4 relchecks:i4 relhasrules:b relhastriggers:b relhassubclass:b \
    relrowsecurity:b relforcerowsecurity:b relispopulated:b relreplident:t relispartition:b relrewrite:i8 \
    relacl:ta reloptions:ta relpartbound:t";

const PG_ATTRIBUTE: &str = "attrelid:i8 attname:t atttypid:i8 attstattarget:i4 attlen:i4 attnum:i4 attndims:i4 \
    attcacheoff:i4 atttypmod:i4 attbyval:b attalign:t attstorage:t attcompression:t attnotnull:b atthasdef:b \
    atthasmissing:b attidentity:t attgenerated:t attisdropped:b attislocal:b attinhcount:i4 attcollation:i8 \
    attacl:ta attoptions:ta";

const PG_INDEX: &str = "indexrelid:i8 indrelid:i8 indnatts:i4 indnkeyatts:i4 indisunique:b indnullsnotdistinct:b \
    indisprimary:b indisexclusion:b indimmediate:b indisclustered:b indisvalid:b indcheckxmin:b indisready:b \
    indislive:b indisreplident:b indkey:t indcollation:t indclass:t indoption:t indexprs:t indpred:t";

const PG_CONSTRAINT: &str = "oid:i8 conname:t connamespace:i8 contype:t condeferrable:b condeferred:b convalidated:b \
    conrelid:i8 contypid:i8 conindid:i8 conparentid:i8 confrelid:i8 confupdtype:t confdeltype:t confmatchtype:t \
    conislocal:b coninhcount:i4 connoinherit:b conkey:t confkey:t conbin:t";

/// The relation catalogs: name, column spec, rows.
pub(super) fn tables() -> Vec<(&'static str, &'static str, Build)> {
    vec![
        ("pg_namespace", "oid:i8 nspname:t nspowner:i8 nspacl:ta", pg_namespace as Build),
        ("pg_class", PG_CLASS, pg_class),
        ("pg_attribute", PG_ATTRIBUTE, pg_attribute),
        ("pg_index", PG_INDEX, pg_index),
        ("pg_constraint", PG_CONSTRAINT, pg_constraint),
        (
            "pg_tables",
            "schemaname:t tablename:t tableowner:t tablespace:t hasindexes:b hasrules:b hastriggers:b rowsecurity:b",
            pg_tables,
        ),
        ("sluice_index_keys", "indexrelid:i8 indrelid:i8 x:i4 n:i4 cls:i8", sluice_index_keys),
        (
            "pg_stat_user_tables",
            "relid:i8 schemaname:t relname:t seq_scan:i8 seq_tup_read:i8 idx_scan:i8 idx_tup_fetch:i8 n_tup_ins:i8 \
             n_tup_upd:i8 n_tup_del:i8 n_live_tup:i8 n_dead_tup:i8 last_vacuum:t last_autovacuum:t last_analyze:t \
             last_autoanalyze:t",
            pg_stat_user_tables,
        ),
        ("pg_attrdef", "oid:i8 adrelid:i8 adnum:i4 adbin:t", empty),
        ("pg_description", "objoid:i8 classoid:i8 objsubid:i4 description:t", empty),
        ("pg_inherits", "inhrelid:i8 inhparent:i8 inhseqno:i4 inhdetachpending:b", empty),
        ("pg_views", "schemaname:t viewname:t viewowner:t definition:t", empty),
        (
            "pg_matviews",
            "schemaname:t matviewname:t matviewowner:t tablespace:t hasindexes:b ispopulated:b definition:t",
            empty,
        ),
    ]
}

fn empty(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    vec![]
}

fn pg_namespace(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    vec![
        vec![i8(PG_CATALOG_OID), t("pg_catalog"), i8(SLUICE_ROLE_OID), null()],
        vec![i8(PUBLIC_OID), t("public"), i8(DATABASE_OWNER_OID), null()],
        vec![i8(INFORMATION_SCHEMA_OID), t("information_schema"), i8(SLUICE_ROLE_OID), null()],
    ]
}

/// The name of a table's primary-key index, as PostgreSQL names it.
pub fn pkey_name(table: &str) -> String {
    format!("{table}_pkey")
}

/// The 1-based column numbers of a table's primary key.
pub fn key_attnums(def: &TableDef) -> Vec<i32> {
    def.primary_key.iter().filter_map(|k| def.columns.iter().position(|c| &c.name == k).map(|i| i as i32 + 1)).collect()
}

fn class_row(oid: i64, name: &str, kind: &str, am: i64, natts: usize, has_index: bool) -> Vec<ScalarValue> {
    vec![
        i8(oid), t(name), i8(PUBLIC_OID), i8(0), i8(0), i8(SLUICE_ROLE_OID), i8(am), i8(oid), i8(0), i4(0),
        ScalarValue::Float32(Some(-1.0)), i4(0), i8(0), b(has_index), b(false), t("p"), t(kind), i4(natts as i32), i4(0),
        b(false), b(false), b(false), b(false), b(false), b(true), t(if kind == "r" { "d" } else { "n" }), b(false), i8(0),
        null(), null(), null(),
    ]
}

/// One row per table (relkind `r`, access method heap) and one per primary-key index
/// (relkind `i`, btree).
fn pg_class(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    let mut rows = Vec::new();
    for d in &s.tables {
        let has_key = !d.primary_key.is_empty();
        rows.push(class_row(rel_oid(&d.name), &d.name, "r", HEAP_AM, d.columns.len(), has_key));
        if has_key {
            rows.push(class_row(index_oid(&d.name), &pkey_name(&d.name), "i", BTREE_AM, d.primary_key.len(), false));
        }
    }
    rows
}

/// One row per column, numbered from 1; primary-key columns are NOT NULL.
fn pg_attribute(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    let mut rows = Vec::new();
    for d in &s.tables {
        for (i, c) in d.columns.iter().enumerate() {
            let (ty, typmod) = column_type(c);
            let not_null = !c.nullable || d.primary_key.contains(&c.name);
            rows.push(vec![
                i8(rel_oid(&d.name)), t(&c.name), i8(ty), i4(-1), i4(-1), i4(i as i32 + 1), i4(0), i4(-1), i4(typmod),
                b(false), t("i"), t(storage(ty)), t(""), b(not_null), b(false), b(false), t(""), t(""), b(false), b(true), i4(0),
                i8(if collatable(ty) { DEFAULT_COLLATION } else { 0 }), null(), null(),
            ]);
        }
    }
    rows
}

/// The primary key of each table that has one, as a unique btree index.
fn pg_index(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    s.tables
        .iter()
        .filter(|d| !d.primary_key.is_empty())
        .map(|d| {
            let keys = key_attnums(d);
            let indkey = keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" ");
            // indcollation, indclass, indoption: one 0 per key (no collation, default operator
            // class, ascending with nulls last).
            let zeros = vec!["0"; keys.len()].join(" ");
            vec![
                i8(index_oid(&d.name)), i8(rel_oid(&d.name)), i4(keys.len() as i32), i4(keys.len() as i32), b(true),
                b(false), b(true), b(false), b(true), b(false), b(true), b(false), b(true), b(true), b(false), t(indkey),
                t(zeros.clone()), t(zeros.clone()), t(zeros), null(), null(),
            ]
        })
        .collect()
}

/// The primary key of each table that has one (contype `p`).
fn pg_constraint(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    s.tables
        .iter()
        .filter(|d| !d.primary_key.is_empty())
        .map(|d| {
            let keys = key_attnums(d).iter().map(|k| k.to_string()).collect::<Vec<_>>().join(",");
            vec![
                i8(constraint_oid(&d.name)), t(pkey_name(&d.name)), i8(PUBLIC_OID), t("p"), b(false), b(false), b(true),
                i8(rel_oid(&d.name)), i8(0), i8(index_oid(&d.name)), i8(0), i8(0), t(" "), t(" "), t(" "), b(true), i4(0),
                b(true), t(format!("{{{keys}}}")), null(), null(),
            ]
        })
        .collect()
}

fn pg_tables(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    s.tables
        .iter()
        .map(|d| {
            vec![t("public"), t(&d.name), t("sluice"), null(), b(!d.primary_key.is_empty()), b(false), b(false), b(false)]
        })
        .collect()
}

/// One row per key column of each primary-key index: the column number `x` at position `n`
/// (from 1), what `information_schema._pg_expandarray(indkey)` returns (see [`super::srf`]).
fn sluice_index_keys(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    let mut rows = Vec::new();
    for d in s.tables.iter().filter(|d| !d.primary_key.is_empty()) {
        for (n, x) in key_attnums(d).into_iter().enumerate() {
            rows.push(vec![i8(index_oid(&d.name)), i8(rel_oid(&d.name)), i4(x), i4(n as i32 + 1), i8(0)]);
        }
    }
    rows
}

/// One row per table; Sluice keeps no access statistics, so the counters are NULL.
fn pg_stat_user_tables(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    s.tables.iter().map(|d| vec![i8(rel_oid(&d.name)), t("public"), t(&d.name)]).collect()
}
