//! `information_schema` as PostgreSQL 15 defines it (docs "37. The Information Schema"), over
//! Sluice's tables: `tables`, `columns`, `schemata`, `views`, `table_constraints`,
//! `key_column_usage`, `constraint_column_usage` and `referential_constraints`.
//!
//! DataFusion has an `information_schema` of its own (Arrow type names such as `Int64`), which
//! a session with the information schema enabled resolves before any registered schema; these
//! tables live in the schema [`SCHEMA`], and [`super::rewrite`] points `information_schema.x`
//! there. Only Sluice's own tables are listed (PostgreSQL also lists its catalogs): clients
//! read the information schema to find the user's tables.
//!
//! Types are named as PostgreSQL names them (`data_type` `bigint`, `character varying`,
//! `timestamp without time zone`; `udt_name` `int8`, `varchar`), with the precision, scale and
//! length columns filled as PostgreSQL's `_pg_numeric_precision` and friends compute them.

use datafusion::scalar::ScalarValue;
use sluice_catalog::TableDef;

use super::relations::{key_attnums, pkey_name};
use super::types::{column_type, type_info};
use super::{i4, null, rel_oid, t, Build, Snapshot, DATABASE, PUBLIC_OID};

/// The DataFusion schema that holds these tables.
pub const SCHEMA: &str = "pg_information_schema";

/// The tables of the information schema: name, column spec, rows.
pub(super) fn tables() -> Vec<(&'static str, &'static str, Build)> {
    vec![
        (
            "tables",
            "table_catalog:t table_schema:t table_name:t table_type:t self_referencing_column_name:t \
             reference_generation:t user_defined_type_catalog:t user_defined_type_schema:t user_defined_type_name:t \
             is_insertable_into:t is_typed:t commit_action:t",
            tables_rows as Build,
        ),
        (
            "columns",
            "table_catalog:t table_schema:t table_name:t column_name:t ordinal_position:i4 column_default:t \
             is_nullable:t data_type:t character_maximum_length:i4 character_octet_length:i4 numeric_precision:i4 \
             numeric_precision_radix:i4 numeric_scale:i4 datetime_precision:i4 interval_type:t interval_precision:i4 \
             character_set_catalog:t character_set_schema:t character_set_name:t collation_catalog:t \
             collation_schema:t collation_name:t domain_catalog:t domain_schema:t domain_name:t udt_catalog:t \
             udt_schema:t udt_name:t scope_catalog:t scope_schema:t scope_name:t maximum_cardinality:i4 \
             dtd_identifier:t is_self_referencing:t is_identity:t identity_generation:t identity_start:t \
             identity_increment:t identity_maximum:t identity_minimum:t identity_cycle:t is_generated:t \
             generation_expression:t is_updatable:t",
            columns_rows,
        ),
        (
            "schemata",
            "catalog_name:t schema_name:t schema_owner:t default_character_set_catalog:t \
             default_character_set_schema:t default_character_set_name:t sql_path:t",
            schemata_rows,
        ),
        (
            "views",
            "table_catalog:t table_schema:t table_name:t view_definition:t check_option:t is_updatable:t \
             is_insertable_into:t is_trigger_updatable:t is_trigger_deletable:t is_trigger_insertable_into:t",
            none,
        ),
        (
            "table_constraints",
            "constraint_catalog:t constraint_schema:t constraint_name:t table_catalog:t table_schema:t table_name:t \
             constraint_type:t is_deferrable:t initially_deferred:t enforced:t nulls_distinct:t",
            table_constraints_rows,
        ),
        (
            "key_column_usage",
            "constraint_catalog:t constraint_schema:t constraint_name:t table_catalog:t table_schema:t table_name:t \
             column_name:t ordinal_position:i4 position_in_unique_constraint:i4",
            key_column_usage_rows,
        ),
        (
            "constraint_column_usage",
            "table_catalog:t table_schema:t table_name:t column_name:t constraint_catalog:t constraint_schema:t \
             constraint_name:t",
            constraint_column_usage_rows,
        ),
        (
            "referential_constraints",
            "constraint_catalog:t constraint_schema:t constraint_name:t unique_constraint_catalog:t \
             unique_constraint_schema:t unique_constraint_name:t match_option:t update_rule:t delete_rule:t",
            none,
        ),
    ]
}

/// The information schema's tables, by name, for [`super::rewrite`].
pub const TABLES: &[&str] = &[
    "tables", "columns", "schemata", "views", "table_constraints", "key_column_usage", "constraint_column_usage",
    "referential_constraints",
];

fn none(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    vec![]
}

fn opt_i4(v: Option<i32>) -> ScalarValue {
    ScalarValue::Int32(v)
}

fn opt_t(v: Option<&str>) -> ScalarValue {
    ScalarValue::Utf8(v.map(str::to_string))
}

fn tables_rows(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    s.tables
        .iter()
        .map(|d| {
            vec![
                t(DATABASE.0), t("public"), t(&d.name), t("BASE TABLE"), null(), null(), null(), null(), null(), t("YES"),
                t("NO"), null(),
            ]
        })
        .collect()
}

fn columns_rows(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    let mut rows = Vec::new();
    for d in &s.tables {
        for (i, c) in d.columns.iter().enumerate() {
            let (oid, typmod) = column_type(c);
            let ty = type_info(oid, typmod);
            let nullable = c.nullable && !d.primary_key.contains(&c.name);
            rows.push(vec![
                t(DATABASE.0), t("public"), t(&d.name), t(&c.name), i4(i as i32 + 1), null(),
                t(if nullable { "YES" } else { "NO" }), t(ty.data_type), opt_i4(ty.char_max_len), opt_i4(ty.char_octet_len),
                opt_i4(ty.numeric_precision), opt_i4(ty.numeric_radix), opt_i4(ty.numeric_scale), opt_i4(ty.datetime_precision),
                // The collation columns are NULL for the default collation, the only one.
                null(), null(), null(), null(), null(), null(), null(), null(), null(), null(), null(),
                t(DATABASE.0), t("pg_catalog"), t(ty.udt_name), null(), null(), null(), null(), t((i + 1).to_string()), t("NO"),
                t("NO"), null(), null(), null(), null(), null(), t("NO"),
                t(if c.computed.is_some() { "ALWAYS" } else { "NEVER" }), opt_t(c.computed.as_deref()), t("YES"),
            ]);
        }
    }
    rows
}

fn schemata_rows(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    [("pg_catalog", "sluice"), ("public", "pg_database_owner"), ("information_schema", "sluice")]
        .into_iter()
        .map(|(name, owner)| vec![t(DATABASE.0), t(name), t(owner), null(), null(), null(), null()])
        .collect()
}

/// PostgreSQL's name of the NOT NULL check of column `attnum`: `<nsp oid>_<rel oid>_<n>_not_null`.
fn not_null_name(d: &TableDef, attnum: usize) -> String {
    format!("{PUBLIC_OID}_{}_{attnum}_not_null", rel_oid(&d.name))
}

/// The primary key of each table that has one, and a `CHECK` per NOT NULL column, as
/// PostgreSQL lists them.
fn table_constraints_rows(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    let mut rows = Vec::new();
    let row = |d: &TableDef, name: String, kind: &str| {
        vec![
            t(DATABASE.0), t("public"), t(name), t(DATABASE.0), t("public"), t(&d.name), t(kind), t("NO"), t("NO"), t("YES"),
            null(),
        ]
    };
    for d in &s.tables {
        if !d.primary_key.is_empty() {
            rows.push(row(d, pkey_name(&d.name), "PRIMARY KEY"));
        }
        for (i, c) in d.columns.iter().enumerate() {
            if !c.nullable || d.primary_key.contains(&c.name) {
                rows.push(row(d, not_null_name(d, i + 1), "CHECK"));
            }
        }
    }
    rows
}

fn key_column_usage_rows(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    let mut rows = Vec::new();
    for d in &s.tables {
        for (pos, attnum) in key_attnums(d).into_iter().enumerate() {
            rows.push(vec![
                t(DATABASE.0), t("public"), t(pkey_name(&d.name)), t(DATABASE.0), t("public"), t(&d.name),
                t(&d.columns[attnum as usize - 1].name), i4(pos as i32 + 1), null(),
            ]);
        }
    }
    rows
}

fn constraint_column_usage_rows(s: &Snapshot) -> Vec<Vec<ScalarValue>> {
    let mut rows = Vec::new();
    for d in &s.tables {
        for attnum in key_attnums(d) {
            rows.push(vec![
                t(DATABASE.0), t("public"), t(&d.name), t(&d.columns[attnum as usize - 1].name), t(DATABASE.0), t("public"),
                t(pkey_name(&d.name)),
            ]);
        }
    }
    rows
}
