"""asyncpg against Sluice: every value in binary, each statement prepared and described
before it is bound, typed parameters read from ParameterDescription.

Usage: python3 asyncpg_client.py PORT. Prints one line per check; exits non-zero on error.
"""
import asyncio
import datetime
import sys

import asyncpg


async def main(port):
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="sluice", database="sluice")
    v = conn.get_server_version()
    print("server_version", v.major, v.minor)
    await conn.execute("DROP TABLE IF EXISTS apg_orders")
    await conn.execute(
        "CREATE TABLE apg_orders (id BIGINT PRIMARY KEY, name TEXT, qty INT, amount DOUBLE PRECISION, ts TIMESTAMP(6))"
    )
    ts = datetime.datetime(2024, 5, 1, 12, 30, 0, 250000)
    await conn.execute("INSERT INTO apg_orders VALUES ($1, $2, $3, $4, $5)", 1, "a", 7, 1.5, ts)
    await conn.executemany(
        "INSERT INTO apg_orders VALUES ($1, $2, $3, $4, $5)", [(2, "b", None, None, None), (3, None, 9, -2.25, None)]
    )
    rows = await conn.fetch("SELECT id, name, qty, amount, ts FROM apg_orders WHERE id >= $1 ORDER BY id", 1)
    for r in rows:
        print("row", tuple(r))
    print("columns", list(rows[0].keys()))
    print("fetchval", await conn.fetchval("SELECT $1::int8 + 1", 41))
    print("count", await conn.fetchval("SELECT count(*) FROM apg_orders WHERE name = $1", "a"))
    st = await conn.prepare("SELECT id, name FROM apg_orders WHERE id = $1")
    print("prepared", [t.name for t in st.get_parameters()], [a.name for a in st.get_attributes()])
    print("prepared row", tuple(await st.fetchrow(2)))
    print("now", type(await conn.fetchval("SELECT now()")).__name__)
    try:
        await conn.fetch("SELECT * FROM no_such_table")
    except asyncpg.PostgresError as e:
        print("error", e.sqlstate)
    async with conn.transaction():
        print("in block", await conn.fetchval("SELECT 1"))
    await conn.close()
    print("ok")


asyncio.run(main(int(sys.argv[1])))
