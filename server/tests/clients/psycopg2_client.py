"""psycopg2 (libpq, simple protocol, client-side parameters) against Sluice.

Usage: python3 psycopg2_client.py PORT. Prints one line per check; exits non-zero on error.
"""
import datetime
import sys

import psycopg2

port = int(sys.argv[1])
conn = psycopg2.connect(host="127.0.0.1", port=port, user="sluice", dbname="sluice")
print("server_version", conn.server_version)
print("parameter", conn.get_parameter_status("server_version"), conn.get_parameter_status("integer_datetimes"))
cur = conn.cursor()
# psycopg2 opens a block (BEGIN) before the first statement; commit() ends it.
cur.execute("DROP TABLE IF EXISTS p2_orders")
cur.execute("CREATE TABLE p2_orders (id BIGINT PRIMARY KEY, name VARCHAR(20), amount DOUBLE PRECISION, ts TIMESTAMP(3))")
conn.commit()
print("status", conn.get_transaction_status())
cur.execute(
    "INSERT INTO p2_orders VALUES (%s, %s, %s, %s)",
    (1, "it's", 1.5, datetime.datetime(2024, 5, 1, 12, 30, 0, 250000)),
)
cur.executemany("INSERT INTO p2_orders VALUES (%s, %s, %s, %s)", [(2, "b", None, None), (3, None, -2.25, None)])
conn.commit()
cur.execute("SELECT id, name, amount, ts FROM p2_orders ORDER BY id")
print("columns", [d.name for d in cur.description])
for row in cur.fetchall():
    print("row", row)
cur.execute("SELECT count(*), sum(amount) FROM p2_orders WHERE id >= %(low)s", {"low": 2})
print("columns", [d.name for d in cur.description], "row", cur.fetchone())
cur.execute("SELECT 1, 'x'::text, now() IS NOT NULL")
print("row", cur.fetchone())
conn.commit()
try:
    cur.execute("SELECT * FROM no_such_table")
except psycopg2.Error as e:
    print("error", e.pgcode)
conn.rollback()
conn.autocommit = True
cur.execute("SHOW TimeZone")
print("timezone", cur.fetchone()[0])
conn.close()
print("ok")
