//! psql 15's catalog commands (`\dt`, `\d`, `\d t`, `\d+ t`, `\dn`, `\l`, `\dv`, `\dm`, `\df`,
//! `\x`) against a real daemon,
//! run with the real `/usr/bin/psql`; the expected text is what PostgreSQL 15 prints for the
//! same tables.

mod common;

use common::{connect, exec, start, temp_dir};

fn psql(port: u16, command: &str) -> String {
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "sluice", "-X", "-c", command])
        .output()
        .expect("psql runs (Debian's postgresql-client)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{command}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_catalog_commands() {
    let dir = temp_dir("psql");
    let server = start(&dir);
    let c = connect(server.port()).await;
    exec(&c, "CREATE TABLE t (id BIGINT PRIMARY KEY, name VARCHAR(20), ts TIMESTAMP(3), amount DECIMAL(10,2))").await;
    exec(&c, "CREATE TABLE events (k INT, v TEXT, b BOOLEAN, d DOUBLE PRECISION)").await;
    let port = server.port();
    let list = "        List of relations
 Schema |  Name  | Type  | Owner  
--------+--------+-------+--------
 public | events | table | sluice
 public | t      | table | sluice
(2 rows)

";
    assert_eq!(psql(port, "\\dt"), list);
    assert_eq!(psql(port, "\\d"), list);
    assert_eq!(
        psql(port, "\\d t"),
        "                             Table \"public.t\"
 Column |              Type              | Collation | Nullable | Default 
--------+--------------------------------+-----------+----------+---------
 id     | bigint                         |           | not null | 
 name   | character varying(20)          |           |          | 
 ts     | timestamp(3) without time zone |           |          | 
 amount | numeric(10,2)                  |           |          | 
Indexes:
    \"t_pkey\" PRIMARY KEY, btree (id)

"
    );
    assert_eq!(
        psql(port, "\\d events"),
        "                   Table \"public.events\"
 Column |       Type       | Collation | Nullable | Default 
--------+------------------+-----------+----------+---------
 k      | integer          |           |          | 
 v      | text             |           |          | 
 b      | boolean          |           |          | 
 d      | double precision |           |          | 

"
    );
    assert_eq!(
        psql(port, "\\dn"),
        "      List of schemas
  Name  |       Owner       
--------+-------------------
 public | pg_database_owner
(1 row)

"
    );
    assert_eq!(
        psql(port, "\\l"),
        "                                         List of databases
  Name  | Owner  | Encoding | Collate |  Ctype  | ICU Locale | Locale Provider | Access privileges 
--------+--------+----------+---------+---------+------------+-----------------+-------------------
 sluice | sluice | UTF8     | C.UTF-8 | C.UTF-8 |            | libc            | 
(1 row)

"
    );
    assert_eq!(
        psql(port, "\\d+ t"),
        "                                                        Table \"public.t\"
 Column |              Type              | Collation | Nullable | Default | Storage  | Compression | Stats target | Description 
--------+--------------------------------+-----------+----------+---------+----------+-------------+--------------+-------------
 id     | bigint                         |           | not null |         | plain    |             |              | 
 name   | character varying(20)          |           |          |         | extended |             |              | 
 ts     | timestamp(3) without time zone |           |          |         | plain    |             |              | 
 amount | numeric(10,2)                  |           |          |         | main     |             |              | 
Indexes:
    \"t_pkey\" PRIMARY KEY, btree (id)
Access method: heap

"
    );
    // Sluice has no views, materialized views or user-defined functions.
    for command in ["\\dv", "\\dm"] {
        let out = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "sluice", "-X", "-c", command])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "Did not find any relations.\n", "{command}");
    }
    assert_eq!(
        psql(port, "\\df"),
        "                       List of functions
 Schema | Name | Result data type | Argument data types | Type 
--------+------+------------------+---------------------+------
(0 rows)

"
    );
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "sluice", "-X", "-c", "\\x", "-c", "SELECT id, name FROM t"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Expanded display is on.\n(0 rows)\n\n");
    exec(&c, "INSERT INTO t VALUES (1, 'a', NULL, 2.50)").await;
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "sluice", "-X", "-c", "\\x", "-c", "SELECT id, name, amount FROM t"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Expanded display is on.\n-[ RECORD 1 ]\nid     | 1\nname   | a\namount | 2.50\n\n");
}
