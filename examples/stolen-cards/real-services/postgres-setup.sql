-- The lab's Oracle customers table, in PostgreSQL (run with psql against the source database).
-- Schema "ADMIN" and table "CUSTOMERS" keep the lab's names, so the captured topic is
-- ORCL.ADMIN.CUSTOMERS as in the lab, and its Flink SQL runs unchanged.
CREATE SCHEMA IF NOT EXISTS "ADMIN";
CREATE TABLE IF NOT EXISTS "ADMIN"."CUSTOMERS" (
  id BIGINT PRIMARY KEY,
  first_name TEXT,
  last_name TEXT,
  email TEXT,
  avg_credit_spend DOUBLE PRECISION
);
INSERT INTO "ADMIN"."CUSTOMERS"
SELECT i,
       (ARRAY['Rica','Pauline','Jules','Ana','Bo','Cy','Dee','Eli','Fay','Gus'])[1 + i % 10],
       (ARRAY['Blaisdell','Chaffin','Okafor','Silva','Berg','Ng','Ortiz','Kim','Ross','Hale'])[1 + (i * 7) % 10],
       'customer' || i || '@example.com',
       100 + (i % 5) * 50
FROM generate_series(1, 20) AS i
ON CONFLICT (id) DO NOTHING;
