"""psycopg 3 against Sluice: server-side parameters (extended protocol) in text and binary,
prepared statements, COPY FROM STDIN, the connection's info.

Usage: python3 psycopg3_client.py PORT. Prints one line per check; exits non-zero on error.
"""
import datetime
import decimal
import sys

import psycopg

port = int(sys.argv[1])
with psycopg.connect(host="127.0.0.1", port=port, user="sluice", dbname="sluice", autocommit=True) as conn:
    print("server_version", conn.info.server_version, conn.info.parameter_status("client_encoding"))
    conn.execute("DROP TABLE IF EXISTS p3_orders")
    conn.execute(
        "CREATE TABLE p3_orders (id BIGINT PRIMARY KEY, name TEXT, qty INT, amount DECIMAL(10,2), ok BOOLEAN, ts TIMESTAMP(6))"
    )
    ts = datetime.datetime(2024, 5, 1, 12, 30, 0, 250000)
    conn.execute(
        "INSERT INTO p3_orders VALUES (%s, %s, %s, %s, %s, %s)", (1, "a", 7, decimal.Decimal("1.50"), True, ts)
    )
    with conn.cursor(binary=True) as cur:
        cur.execute(
            "INSERT INTO p3_orders VALUES (%s, %s, %s, %s, %s, %s)", (2, "b", None, decimal.Decimal("-2.25"), False, None)
        )
    with conn.cursor() as cur:
        with cur.copy("COPY p3_orders (id, name, qty) FROM STDIN") as copy:
            copy.write_row((3, "c", 9))
            copy.write_row((4, None, None))
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute("SELECT id, name, qty, amount, ok, ts FROM p3_orders WHERE id <= %s ORDER BY id", (4,))
            print("binary" if binary else "text", [d.name for d in cur.description])
            for row in cur.fetchall():
                print("row", row)
    # Prepared on the server after the first execution (prepare=True), then reused.
    for i in range(3):
        r = conn.execute("SELECT count(*) FROM p3_orders WHERE id > %s", (i,), prepare=True).fetchone()
        print("count", i, r[0])
    print("cast", conn.execute("SELECT %s::int8 + 1, %s::text", (41, "x")).fetchone())
    print("null", conn.execute("SELECT count(*) FROM p3_orders WHERE name = %s OR qty = %s", ("a", None)).fetchone())
    try:
        conn.execute("SELECT nope FROM p3_orders")
    except psycopg.Error as e:
        print("error", e.sqlstate)
    with conn.transaction():
        print("in block", conn.info.transaction_status.name)
        conn.execute("SELECT 1")
    print("after block", conn.info.transaction_status.name)
print("ok")
