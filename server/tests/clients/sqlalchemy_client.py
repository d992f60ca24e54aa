"""SQLAlchemy 2 against Sluice with one driver (psycopg2 or psycopg): the dialect's connect-time
queries, inspect() of tables, columns and primary keys (SQLAlchemy's pg_catalog reflection
queries), and Core select()/insert() through a reflected Table.

Usage: python3 sqlalchemy_client.py PORT DRIVER. Prints one line per check; exits non-zero on
error.
"""
import sys

import sqlalchemy as sa

port, driver = int(sys.argv[1]), sys.argv[2]
engine = sa.create_engine(f"postgresql+{driver}://sluice@127.0.0.1:{port}/sluice")
table = f"sa_{driver}"
with engine.connect() as conn:
    print("server_version_info", conn.dialect.server_version_info[:1])
    print("default_schema", conn.dialect.default_schema_name)
    conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    conn.execute(sa.text(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, name VARCHAR(20), amount DOUBLE PRECISION)"))
    conn.commit()
insp = sa.inspect(engine)
print("has_table", insp.has_table(table), insp.has_table("no_such_table"))
print("tables", [t for t in insp.get_table_names() if t == table])
for c in insp.get_columns(table):
    print("column", c["name"], str(c["type"]), c["nullable"], c["default"])
print("pk", insp.get_pk_constraint(table))
print("views", insp.get_view_names())
t = sa.Table(table, sa.MetaData(), autoload_with=engine)
with engine.begin() as conn:
    conn.execute(t.insert(), [{"id": 1, "name": "a", "amount": 1.5}, {"id": 2, "name": "b", "amount": None}])
with engine.connect() as conn:
    rows = conn.execute(sa.select(t.c.id, t.c.name).where(t.c.id >= 1).order_by(t.c.id)).all()
    print("select", [tuple(r) for r in rows])
    print("count", conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
print("ok")
