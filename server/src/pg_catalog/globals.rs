//! The server-wide catalogs: `pg_database` (one database, `sluice`), `pg_roles` and `pg_user`
//! (one superuser, `sluice`), `pg_am` (heap and btree), `pg_collation` (`default`),
//! `pg_tablespace` (`pg_default`, `pg_global`), `pg_proc` (the system functions Sluice
//! provides, in `pg_catalog`: Sluice has no user-defined functions, so psql's `\df` lists
//! none), and the ones Sluice has no rows in: `pg_range` and `pg_enum` (no range or enum
//! types), `pg_extension`, `pg_opclass`.

use datafusion::scalar::ScalarValue;

use super::relations::{BTREE_AM, HEAP_AM};
use super::types::DEFAULT_COLLATION;
use super::{b, i4, i8, null, t, Build, Snapshot, DATABASE, PG_CATALOG_OID, SLUICE_ROLE_OID};

/// PostgreSQL's encoding number of UTF8.
pub const UTF8_ENCODING: i32 = 6;

/// The server-wide catalogs: name, column spec, rows.
pub(super) fn tables() -> Vec<(&'static str, &'static str, Build)> {
    vec![
        (
            "pg_database",
            "oid:i8 datname:t datdba:i8 encoding:i4 datlocprovider:t datistemplate:b datallowconn:b datconnlimit:i4 \
             dattablespace:i8 datcollate:t datctype:t daticulocale:t datcollversion:t datacl:ta",
            pg_database as Build,
        ),
        (
            "pg_roles",
            "oid:i8 rolname:t rolsuper:b rolinherit:b rolcreaterole:b rolcreatedb:b rolcanlogin:b rolreplication:b \
             rolconnlimit:i4 rolpassword:t rolvaliduntil:t rolbypassrls:b rolconfig:ta",
            pg_roles,
        ),
        (
            "pg_user",
            "usename:t usesysid:i8 usecreatedb:b usesuper:b userepl:b usebypassrls:b passwd:t valuntil:t useconfig:ta",
            pg_user,
        ),
        ("pg_am", "oid:i8 amname:t amhandler:t amtype:t", pg_am),
        ("pg_tablespace", "oid:i8 spcname:t spcowner:i8 spcacl:ta spcoptions:ta", pg_tablespace),
        (
            "pg_proc",
            "oid:i8 proname:t pronamespace:i8 proowner:i8 prolang:i8 procost:f4 prorows:f4 provariadic:i8 \
             prosupport:t prokind:t prosecdef:b proleakproof:b proisstrict:b proretset:b provolatile:t proparallel:t \
             pronargs:i4 pronargdefaults:i4 prorettype:i8 proargtypes:t proallargtypes:ta proargmodes:ta \
             proargnames:ta proargdefaults:t protrftypes:ta prosrc:t probin:t prosqlbody:t proconfig:ta proacl:ta",
            pg_proc,
        ),
        ("pg_range", "rngtypid:i8 rngsubtype:i8 rngmultitypid:i8 rngcollation:i8 rngsubopc:i8 rngcanonical:t rngsubdiff:t", none),
        ("pg_enum", "oid:i8 enumtypid:i8 enumsortorder:f4 enumlabel:t", none),
        (
            "pg_extension",
            "oid:i8 extname:t extowner:i8 extnamespace:i8 extrelocatable:b extversion:t extconfig:ta extcondition:ta",
            none,
        ),
        (
            "pg_opclass",
            "oid:i8 opcmethod:i8 opcname:t opcnamespace:i8 opcowner:i8 opcfamily:i8 opcintype:i8 opcdefault:b opckeytype:i8",
            none,
        ),
        (
            "pg_collation",
            "oid:i8 collname:t collnamespace:i8 collowner:i8 collprovider:t collisdeterministic:b collencoding:i4 \
             collcollate:t collctype:t",
            pg_collation,
        ),
    ]
}

fn pg_database(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    vec![vec![
        i8(DATABASE.1), t(DATABASE.0), i8(SLUICE_ROLE_OID), i4(UTF8_ENCODING), t("c"), b(false), b(true), i4(-1), i8(1663),
        t("C.UTF-8"), t("C.UTF-8"), null(), null(), null(),
    ]]
}

fn pg_roles(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    vec![vec![
        i8(SLUICE_ROLE_OID), t("sluice"), b(true), b(true), b(true), b(true), b(true), b(true), i4(-1), t("********"), null(),
        b(true), null(),
    ]]
}

fn pg_user(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    vec![vec![t("sluice"), i8(SLUICE_ROLE_OID), b(true), b(true), b(true), b(true), t("********"), null(), null()]]
}

fn pg_am(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    vec![
        vec![i8(HEAP_AM), t("heap"), t("heap_tableam_handler"), t("t")],
        vec![i8(BTREE_AM), t("btree"), t("bthandler"), t("i")],
    ]
}

fn pg_collation(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    vec![vec![i8(DEFAULT_COLLATION), t("default"), i8(PG_CATALOG_OID), i8(SLUICE_ROLE_OID), t("d"), b(true), i4(-1), null(), null()]]
}

fn none(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    vec![]
}

fn pg_tablespace(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    vec![
        vec![i8(1663), t("pg_default"), i8(SLUICE_ROLE_OID), null(), null()],
        vec![i8(1664), t("pg_global"), i8(SLUICE_ROLE_OID), null(), null()],
    ]
}

/// The system functions clients call, with PostgreSQL's OIDs: OID, name, result type OID,
/// argument type OIDs.
const PROCS: &[(i64, &str, i64, &[i64])] = &[
    (89, "version", 25, &[]),
    (861, "current_database", 19, &[]),
    (1402, "current_schema", 19, &[]),
    (1403, "current_schemas", 1003, &[16]),
    (1081, "format_type", 25, &[26, 23]),
    (1642, "pg_get_userbyid", 19, &[26]),
    (1299, "now", 1184, &[]),
    (2026, "pg_backend_pid", 23, &[]),
    (2077, "current_setting", 25, &[25]),
    (2078, "set_config", 25, &[25, 25, 16]),
    (2079, "pg_table_is_visible", 16, &[26]),
    (1215, "obj_description", 25, &[26, 19]),
    (1216, "col_description", 25, &[26, 23]),
    (1716, "pg_get_expr", 25, &[194, 26]),
    (1643, "pg_get_indexdef", 25, &[26]),
    (1387, "pg_get_constraintdef", 25, &[26]),
    (1597, "pg_encoding_to_char", 19, &[23]),
    (1282, "quote_ident", 25, &[25]),
];

fn pg_proc(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    PROCS
        .iter()
        .map(|&(oid, name, ret, args)| {
            let argtypes = args.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ");
            vec![
                i8(oid), t(name), i8(PG_CATALOG_OID), i8(SLUICE_ROLE_OID), i8(12), ScalarValue::Float32(Some(1.0)),
                ScalarValue::Float32(Some(0.0)), i8(0), t("-"), t("f"), b(false), b(false), b(true), b(false), t("s"), t("s"),
                i4(args.len() as i32), i4(0), i8(ret), t(argtypes), null(), null(), null(), null(), null(), t(name), null(), null(),
                null(), null(),
            ]
        })
        .collect()
}
