// node-postgres (`pg` from npm) against Sluice: simple queries, parameterized queries
// (extended protocol, text format), a named prepared statement reused, errors with SQLSTATE.
//
// Usage: NODE_PATH=<dir with pg> node node_pg.js PORT. Prints one line per check; exits
// non-zero on error.

const { Client } = require('pg');

async function main(port) {
  const c = new Client({ host: '127.0.0.1', port, user: 'sluice', database: 'sluice' });
  await c.connect();
  console.log('server_version', (await c.query('SHOW server_version_num')).rows[0].server_version_num);
  await c.query('DROP TABLE IF EXISTS node_orders');
  await c.query('CREATE TABLE node_orders (id BIGINT PRIMARY KEY, name TEXT, qty INT, ok BOOLEAN)');
  await c.query('INSERT INTO node_orders VALUES ($1, $2, $3, $4)', [1, 'a', 7, true]);
  await c.query('INSERT INTO node_orders VALUES ($1, $2, $3, $4)', [2, null, null, false]);
  const r = await c.query('SELECT id, name, qty, ok FROM node_orders WHERE id >= $1 ORDER BY id', [1]);
  console.log('columns', JSON.stringify(r.fields.map((f) => [f.name, f.dataTypeID])));
  for (const row of r.rows) console.log('row', JSON.stringify(row));
  for (let i = 0; i < 3; i++) {
    const q = await c.query({ name: 'count_above', text: 'SELECT count(*) FROM node_orders WHERE id > $1', values: [i] });
    console.log('count', i, q.rows[0].count);
  }
  // Sluice types an integer literal as bigint (PostgreSQL: int4), which node returns as a
  // string; the cast gives both servers' int4.
  const s = await c.query("SELECT 1::int4 AS one, 'x'::text AS x, 2.5::float8 AS f");
  console.log('simple', JSON.stringify(s.rows[0]));
  try {
    await c.query('SELECT * FROM no_such_table');
  } catch (e) {
    console.log('error', e.code);
  }
  await c.query('BEGIN');
  await c.query('SELECT 1');
  await c.query('COMMIT');
  await c.end();
  console.log('ok');
}

main(Number(process.argv[2])).catch((e) => {
  console.error(e);
  process.exit(1);
});
