//! The catalog queries of BI tools that cannot run here, replayed against a real daemon with
//! the rows PostgreSQL 15 returns for the same table: Grafana's PostgreSQL data source (its
//! query editor's table and column lists), Metabase's sync (schemas, privileges, tables) and
//! DBeaver's connect (schema, types, database, settings). The query texts are the ones these
//! tools send, as the `datafusion-postgres` project recorded them from the tools
//! (`datafusion-postgres/tests/{grafana,metabase,dbeaver}.rs`); Metabase and DBeaver also send
//! pgJDBC's own queries, which `drivers.rs` runs with the real pgJDBC.

mod common;

use common::{connect, exec, start, temp_dir};
use tokio_postgres::SimpleQueryMessage;

/// Each row of a simple-protocol result as `a|b|c` (NULL as empty), in the server's order.
async fn lines(c: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).unwrap_or("")).collect::<Vec<_>>().join("|"));
        }
    }
    Ok(out)
}

/// (what the tool does, the query it sends, the rows PostgreSQL returns).
const QUERIES: &[(&str, &str, &[&str])] = &[
    ("Metabase: session set-up", "SET extra_float_digits = 2", &[]),
    ("Metabase: session set-up", "SET application_name = 'Metabase v0.55.1 [f8f63fdf-d8f8-4573-86ea-4fe4a9548041]'", &[]),
    ("Metabase: session set-up", "SHOW TRANSACTION ISOLATION LEVEL", &["read committed"]),
    ("Metabase: session set-up", "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED", &[]),
    ("Metabase: the time zone", "show timezone", &["UTC"]),
    ("DBeaver: session set-up", "SET extra_float_digits = 3", &[]),
    ("DBeaver: session set-up", "SET application_name = 'DBeaver 25.1.5 - Main <postgres>'", &[]),
    ("DBeaver: the search path", "SHOW search_path", &["\"$user\", public"]),
    ("DBeaver: the version", "SELECT version() LIKE 'PostgreSQL 15.8 on %'", &["t"]),
    // Not replayed: Grafana's table list of the query editor, whose ORDER BY holds an
    // `IN (subquery)` that DataFusion does not plan (listed in the README under "still differs").
    (
        "Grafana: the columns of a table",
        r#"SELECT quote_ident(column_name) AS "column", data_type AS "type"
        FROM information_schema.columns
        WHERE
          CASE WHEN array_length(parse_ident('public.games'),1) = 2
            THEN quote_ident(table_schema) = (parse_ident('public.games'))[1]
              AND quote_ident(table_name) = (parse_ident('public.games'))[2]
            ELSE quote_ident(table_name) = 'public.games'
              AND
              quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              )
          END"#,
        &["id|bigint", "title|character varying", "score|double precision"],
    ),
    (
        "Metabase: the schemas (pgJDBC's getSchemas)",
        r#"SELECT nspname AS "TABLE_SCHEM", current_database() AS "TABLE_CATALOG" FROM pg_catalog.pg_namespace  WHERE nspname <> 'pg_toast' AND (nspname !~ '^pg_temp_'  OR nspname = (pg_catalog.current_schemas(true))[1]) AND (nspname !~ '^pg_toast_temp_'  OR nspname = replace((pg_catalog.current_schemas(true))[1], 'pg_temp_', 'pg_toast_temp_'))  ORDER BY "TABLE_SCHEM""#,
        &["information_schema|sluice", "pg_catalog|sluice", "public|sluice"],
    ),
    (
        "Metabase: table privileges",
        r#"with table_privileges as (
         select
           NULL as role,
           t.schemaname as schema,
           t.objectname as table,
           pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'update') as update,
           pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'select') as select,
           pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'insert') as insert,
           pg_catalog.has_table_privilege(     current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'delete') as delete
         from (
           select schemaname, tablename as objectname from pg_catalog.pg_tables
           union
           select schemaname, viewname as objectname from pg_catalog.pg_views
           union
           select schemaname, matviewname as objectname from pg_catalog.pg_matviews
         ) t
         where t.schemaname !~ '^pg_'
           and t.schemaname <> 'information_schema'
           and pg_catalog.has_schema_privilege(current_user, t.schemaname, 'usage')
        )
        select t.*
        from table_privileges t"#,
        &["|public|games|t|t|t|t"],
    ),
    (
        "Metabase: the tables of a schema",
        r#"SELECT "n"."nspname" AS "schema", "c"."relname" AS "name", CASE "c"."relkind" WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE NULL END AS "type", "d"."description" AS "description", "stat"."n_live_tup" AS "estimated_row_count" FROM "pg_catalog"."pg_class" AS "c" INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "c"."relnamespace" = "n"."oid" LEFT JOIN "pg_catalog"."pg_description" AS "d" ON ("c"."oid" = "d"."objoid") AND ("d"."objsubid" = '0') AND ("d"."classoid" = 'pg_class'::regclass) LEFT JOIN "pg_stat_user_tables" AS "stat" ON ("n"."nspname" = "stat"."schemaname") AND ("c"."relname" = "stat"."relname") WHERE ("c"."relnamespace" = "n"."oid") AND ("n"."nspname" !~ '^pg_') AND ("n"."nspname" <> 'information_schema') AND c.relkind in ('r', 'p', 'v', 'f', 'm') AND ("n"."nspname" IN ('public')) ORDER BY "type" ASC, "schema" ASC, "name" ASC"#,
        &["public|games|TABLE||"],
    ),
    (
        "DBeaver: the session's schema and user",
        r#"SELECT current_schema(),session_user"#,
        &["public|sluice"],
    ),
    (
        "DBeaver: a type's schema",
        r#"SELECT n.nspname = ANY(current_schemas(true)), n.nspname, t.typname FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON t.typnamespace = n.oid WHERE t.oid = 1043"#,
        &["t|pg_catalog|varchar"],
    ),
    (
        "DBeaver: the database",
        r#"SELECT db.oid,db.datname FROM pg_catalog.pg_database db WHERE datname='sluice'"#,
        &["16384|sluice"],
    ),
    (
        "DBeaver: a setting",
        r#"SELECT setting FROM pg_catalog.pg_settings where name='standard_conforming_strings'"#,
        &["on"],
    ),
    (
        "DBeaver: pg_enum's columns",
        r#"SELECT * FROM pg_catalog.pg_enum WHERE 1<>1 LIMIT 1"#,
        &[],
    ),
    (
        "DBeaver: pg_class's columns",
        r#"SELECT reltype FROM pg_catalog.pg_class WHERE 1<>1 LIMIT 1"#,
        &[],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bi_tool_catalog_queries() {
    let dir = temp_dir("bi-tools");
    let server = start(&dir);
    let c = connect(server.port()).await;
    exec(&c, "CREATE TABLE games (id BIGINT PRIMARY KEY, title VARCHAR(40), score DOUBLE PRECISION)").await;
    let mut failed = Vec::new();
    for (what, sql, expected) in QUERIES {
        match lines(&c, sql).await {
            Ok(got) if got == *expected => {}
            Ok(got) => failed.push(format!("{what}: expected {expected:?}, got {got:?}")),
            Err(e) => failed.push(format!("{what}: {}", e.as_db_error().map_or(e.to_string(), |d| format!("{} {}", d.code().code(), d.message())))),
        }
    }
    assert!(failed.is_empty(), "{} of {} BI-tool queries differ from PostgreSQL:\n{}", failed.len(), QUERIES.len(), failed.join("\n"));
}
