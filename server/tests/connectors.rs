//! Connectors against real services: a Kafka-compatible broker (noida-db), PostgreSQL with
//! logical decoding, and a MongoDB-wire server (secantusdb), each started fresh by the test.
//! Results are checked against an oracle: what the outside system holds equals what Sluice's
//! batch query of the same SQL returns over the same input (or what Postgres itself holds).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::services::{self, eventually, pg_client, Service};
use common::{connect, exec, rows, start, temp_dir};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

async fn create_topic(k: &Service, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", k.addr()).create().expect("admin client");
    let r = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("create topic");
    for x in r {
        x.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

async fn produce(k: &Service, topic: &str, messages: &[(String, String)]) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", k.addr())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (key, value) in messages {
        p.send(FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(10)).await.expect("delivered");
    }
}

/// Every committed message value of a topic, read from the beginning until nothing new arrives
/// for 1.5 s (not up to the high watermark, which tansu reports too low).
fn consume_all(k: &Service, topic: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", k.addr())
        .set("group.id", format!("check-{}", std::process::id()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).expect("metadata");
    let parts = md.topics()[0].partitions().len() as i32;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = std::time::Instant::now();
    while last.elapsed() < Duration::from_millis(1500) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            last = std::time::Instant::now();
            if let Some(v) = m.payload() {
                out.push(String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    out
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    rows(client, sql).await[0][0].as_deref().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_json_source_and_exactly_once_sink_survive_sigkill() {
    kafka_json_pipeline(services::kafka("json"), true, "kafka-json-noida").await;
}

/// The same against the second broker, tansu, with an at-least-once sink (it runs no
/// transactions) and a graceful restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_json_source_and_sink_on_tansu() {
    kafka_json_pipeline(services::tansu("json"), false, "kafka-json-tansu").await;
}

async fn kafka_json_pipeline(k: Service, exactly_once: bool, name: &str) {
    create_topic(&k, "tx", 2).await;
    create_topic(&k, "big", 2).await;
    let msg = |i: usize| {
        (format!("{}", i % 7), format!(r#"{{"user_id": {}, "card": "c{i}", "amount": {}.5, "extra": true}}"#, i % 7, i % 100))
    };
    let mut first: Vec<(String, String)> = (0..500).map(msg).collect();
    first.push(("x".into(), "not json".into()));
    first.push(("x".into(), r#"{"user_id": "seven"}"#.into()));
    produce(&k, "tx", &first).await;

    let dir = temp_dir(name);
    let mut server = start(&dir);
    let client = connect(server.port()).await;
    exec(
        &client,
        &format!(
            "CREATE TABLE tx (user_id BIGINT, card STRING, amount DOUBLE) WITH ('connector' = 'kafka', 'topic' = 'tx', \
             'properties.bootstrap.servers' = '{}', 'scan.startup.mode' = 'earliest-offset', 'format' = 'json', \
             'error-handling.mode' = 'log')",
            k.addr()
        ),
    )
    .await;
    exec(
        &client,
        &format!(
            "CREATE TABLE big (user_id BIGINT, card STRING, amount DOUBLE) WITH ('connector' = 'kafka', 'topic' = 'big', \
             'properties.bootstrap.servers' = '{}', 'format' = 'json', 'sink.delivery-guarantee' = '{}')",
            k.addr(),
            if exactly_once { "exactly-once" } else { "at-least-once" }
        ),
    )
    .await;
    exec(&client, "INSERT INTO big SELECT user_id, card, amount FROM tx WHERE amount > 50").await;
    eventually(60, "500 rows consumed", || async { count(&client, "SELECT count(*) FROM tx").await == 500 }).await;
    let dead = rows(&client, "SELECT topic, \"partition\" IS NOT NULL, \"offset\" IS NOT NULL, raw FROM tx_dlq").await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().any(|r| r[3].as_deref() == Some("not json")), "{dead:?}");

    // SIGKILL, more input while the daemon is down, restart: nothing lost, nothing twice (an
    // at-least-once sink gets a graceful restart instead).
    if exactly_once {
        server.kill();
        produce(&k, "tx", &(500..800).map(msg).collect::<Vec<_>>()).await;
        server.restart(false).expect("restart");
    } else {
        server.restart(false).expect("restart");
        produce(&k, "tx", &(500..800).map(msg).collect::<Vec<_>>()).await;
    }
    let client = connect(server.port()).await;
    eventually(60, "800 rows consumed", || async { count(&client, "SELECT count(*) FROM tx").await == 800 }).await;
    let errors = rows(&client, "DESCRIBE CONNECTOR tx").await;
    assert!(errors.iter().any(|r| r[0].as_deref() == Some("state") && r[1].as_deref() == Some("RUNNING")), "{errors:?}");

    // Oracle: the sink topic holds exactly the batch query's rows.
    exec(&client, "FLUSH").await;
    let expected = rows(&client, "SELECT user_id, card, amount FROM tx WHERE amount > 50").await;
    let mut got = Vec::new();
    for _ in 0..100 {
        got = consume_all(&k, "big")
            .iter()
            .map(|v| {
                let j: serde_json::Value = serde_json::from_str(v).unwrap();
                vec![
                    Some(j["user_id"].to_string()),
                    j["card"].as_str().map(str::to_string),
                    Some(format!("{}", j["amount"].as_f64().unwrap())),
                ]
            })
            .collect();
        got.sort();
        if got.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(got, expected);

    // A Kafka table that became a sink stays one after its job stops and the daemon restarts:
    // it must not turn into a source that consumes its own output.
    let job = rows(&client, "SELECT job_id FROM sluice_jobs").await[0][0].clone().unwrap();
    exec(&client, &format!("STOP JOB '{job}'")).await;
    let before = count(&client, "SELECT count(*) FROM big").await;
    server.restart(false).expect("restart");
    let client = connect(server.port()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listed = rows(&client, "SHOW CONNECTORS").await;
    assert!(listed.iter().any(|r| r[0].as_deref() == Some("big") && r[1].as_deref() == Some("SINK")), "{listed:?}");
    assert_eq!(count(&client, "SELECT count(*) FROM big").await, before);
}

async fn pg_rows(pg: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut out: Vec<Vec<Option<String>>> = pg
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

const ACCOUNTS_CHECK: &str =
    "SELECT id, name, CAST(balance AS DOUBLE), CAST(date_part('epoch', opened) AS BIGINT), active FROM accounts";

/// Waits until Sluice's `accounts` equals Postgres's; on timeout, fails showing both.
async fn converges(sluice: &tokio_postgres::Client, pg: &tokio_postgres::Client, what: &str) {
    for _ in 0..600 {
        if same_as_postgres(sluice, pg).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (want, got) = accounts_both(sluice, pg).await;
    let first_diff = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
    panic!(
        "{what}: Sluice has {} rows, Postgres {}; first difference at {first_diff}: sluice {:?} postgres {:?}",
        got.len(),
        want.len(),
        got.get(first_diff),
        want.get(first_diff)
    );
}

async fn same_as_postgres(sluice: &tokio_postgres::Client, pg: &tokio_postgres::Client) -> bool {
    let (want, got) = accounts_both(sluice, pg).await;
    want == got
}

async fn accounts_both(sluice: &tokio_postgres::Client, pg: &tokio_postgres::Client) -> (Vec<Vec<Option<String>>>, Vec<Vec<Option<String>>>) {
    let want: Vec<Vec<Option<String>>> = pg_rows(
        pg,
        "SELECT id::text, name, balance::float8::text, date_part('epoch', opened)::bigint::text, \
         CASE WHEN active THEN 't' WHEN NOT active THEN 'f' END FROM accounts",
    )
    .await;
    // Both print a DOUBLE as PostgreSQL does ("125", not "125.0").
    let mut got: Vec<Vec<Option<String>>> = rows(sluice, ACCOUNTS_CHECK).await;
    got.sort();
    (want, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cdc_table_snapshot_changes_and_restart() {
    let pgs = services::postgres("cdc");
    let pg = pg_client(&pgs).await;
    pg.batch_execute(
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, name TEXT, balance NUMERIC(12,2), opened TIMESTAMP, active BOOLEAN);
         INSERT INTO accounts SELECT i, 'n' || i, i * 1.25, TIMESTAMP '2024-01-01' + i * INTERVAL '1 minute', i % 2 = 0
         FROM generate_series(1, 3000) i;",
    )
    .await
    .unwrap();
    let dir = temp_dir("pg-cdc");
    let mut server = start(&dir);
    let client = connect(server.port()).await;
    exec(
        &client,
        &format!(
            "CREATE TABLE accounts (id BIGINT, name STRING, balance DECIMAL(12, 2), opened TIMESTAMP(3), active BOOLEAN, \
             PRIMARY KEY (id) NOT ENFORCED) WITH ('connector' = 'postgres-cdc', 'hostname' = '127.0.0.1', 'port' = '{}', \
             'username' = 'postgres', 'password' = 'pw-Secret-42', 'database-name' = 'postgres', 'schema-name' = 'public', \
             'table-name' = 'accounts', 'slot.name' = 'sluice_accounts', 'decoding.plugin.name' = 'pgoutput')",
            pgs.port
        ),
    )
    .await;
    converges(&client, &pg, "snapshot").await;

    // Changes while the connector runs: single rows, a NULL, an update, deletes, a big transaction.
    pg.batch_execute(
        "INSERT INTO accounts VALUES (5001, NULL, 10.5, NULL, NULL);
         UPDATE accounts SET name = 'renamed', balance = balance + 1 WHERE id IN (1, 2, 3);
         UPDATE accounts SET active = NULL WHERE id = 4;
         DELETE FROM accounts WHERE id IN (10, 11);
         BEGIN; INSERT INTO accounts SELECT i, 'bulk', 1, now()::timestamp(0), true FROM generate_series(6000, 7999) i; COMMIT;",
    )
    .await
    .unwrap();
    converges(&client, &pg, "changes").await;

    // Passwords never shown.
    for sql in ["SHOW CREATE TABLE accounts", "DESCRIBE CONNECTOR accounts", "SHOW CONNECTORS"] {
        let text = format!("{:?}", rows(&client, sql).await);
        assert!(!text.contains("pw-Secret-42"), "{sql} shows the password: {text}");
    }
    let described = rows(&client, "DESCRIBE CONNECTOR accounts").await;
    assert!(described.iter().any(|r| r[0].as_deref() == Some("position") && r[1].as_deref().is_some_and(|p| p.contains('/'))), "{described:?}");

    // Killed daemon, changes meanwhile: resumes from the slot without a new snapshot.
    server.kill();
    pg.batch_execute("UPDATE accounts SET balance = 0 WHERE id < 100; DELETE FROM accounts WHERE id BETWEEN 7000 AND 7100;")
        .await
        .unwrap();
    server.restart(false).expect("restart");
    let client = connect(server.port()).await;
    converges(&client, &pg, "changes after restart").await;
    let snap = rows(&client, "DESCRIBE CONNECTOR accounts").await;
    assert!(snap.iter().any(|r| r[0].as_deref() == Some("snapshot_rows") && r[1].as_deref() == Some("0")), "{snap:?}");

    // Dropping the table drops the slot Sluice created.
    let msgs = client.simple_query("DROP TABLE accounts").await.unwrap();
    drop(msgs);
    let slots = pg_rows(&pg, "SELECT slot_name FROM pg_replication_slots").await;
    assert!(slots.is_empty(), "{slots:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_pipeline_on_real_services() {
    let pgs = services::postgres("seed");
    let k = services::kafka("seed");
    let m = services::mongo("seed");
    let pg = pg_client(&pgs).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/stolen-cards/real-services");
    pg.batch_execute(&std::fs::read_to_string(root.join("postgres-setup.sql")).unwrap()).await.unwrap();
    // Customer 5 never looks suspicious at first: a huge average spend.
    pg.batch_execute(r#"UPDATE "ADMIN"."CUSTOMERS" SET avg_credit_spend = 1e9 WHERE id = 5"#).await.unwrap();

    let dir = temp_dir("seed-real");
    let server = sluice_sqllogictest::ServerProcess::start_with_args(
        std::path::Path::new(env!("CARGO_BIN_EXE_sluice")),
        &dir,
        &["--kafka-bootstrap", &k.addr()],
    )
    .expect("sluice starts");
    let client = connect(server.port()).await;
    let pipeline = std::fs::read_to_string(root.join("pipeline.sql"))
        .unwrap()
        .replace("'5433'", &format!("'{}'", pgs.port))
        .replace("127.0.0.1:9092", &k.addr())
        .replace("127.0.0.1:27017", &m.addr());
    for stmt in pipeline.split(";\n").map(str::trim).filter(|s| !s.is_empty() && !s.lines().all(|l| l.trim_start().starts_with("--"))) {
        exec(&client, stmt).await;
    }
    let producer = |count: u32, start: &str, stolen: &str| {
        let out = std::process::Command::new("python3")
            .arg(root.join("producer.py"))
            .args(["--bootstrap", &k.addr(), "--count", &count.to_string(), "--start", start, "--stolen", stolen])
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "producer.py: {}", String::from_utf8_lossy(&out.stderr));
    };
    eventually(60, "customers captured", || async { count(&client, "SELECT count(*) FROM `ORCL.ADMIN.CUSTOMERS`").await == 20 }).await;
    // The mask: no email reaches the table.
    assert_eq!(count(&client, "SELECT count(*) FROM `ORCL.ADMIN.CUSTOMERS` WHERE email <> ''").await, 0);

    producer(600, "2024-05-01 00:00:00", "3");
    eventually(60, "transactions consumed", || async { count(&client, "SELECT count(*) FROM credit_card_transactions").await == 600 }).await;
    exec(&client, "FLUSH").await;
    let flagged = count(&client, "SELECT count(*) FROM fd_possible_stolen_card").await;
    assert!(flagged > 0);
    assert_eq!(count(&client, "SELECT count(*) FROM fd_possible_stolen_card WHERE user_id = 5").await, 0);

    // The change in Postgres changes what is flagged from then on.
    pg.batch_execute(r#"UPDATE "ADMIN"."CUSTOMERS" SET avg_credit_spend = 0 WHERE id = 5"#).await.unwrap();
    eventually(60, "update captured", || async {
        count(&client, "SELECT count(*) FROM `ORCL.ADMIN.CUSTOMERS` WHERE id = 5 AND avg_credit_spend = 0").await == 1
    })
    .await;
    producer(600, "2024-05-02 00:00:00", "3");
    eventually(60, "more transactions", || async { count(&client, "SELECT count(*) FROM credit_card_transactions").await == 1200 }).await;
    exec(&client, "FLUSH").await;
    assert!(count(&client, "SELECT count(*) FROM fd_possible_stolen_card WHERE user_id = 5").await > 0);

    // Oracle: MongoDB holds exactly the table's rows, with masked emails.
    // Sluice prints a whole DOUBLE as Postgres and Rust do ("591").
    let mut expected: Vec<Vec<Option<String>>> =
        rows(&client, "SELECT user_id, credit_card_number, email, total_credit_spend FROM fd_possible_stolen_card").await;
    expected.sort();
    let mongo = mongodb::Client::with_uri_str(format!("mongodb://{}", m.addr())).await.unwrap();
    let coll = mongo.database("demo-db-mod").collection::<mongodb::bson::Document>("fd_possible_stolen_card");
    let mut got = Vec::new();
    for _ in 0..150 {
        use futures::TryStreamExt;
        let docs: Vec<mongodb::bson::Document> = coll.find(mongodb::bson::doc! {}).await.unwrap().try_collect().await.unwrap();
        got = docs
            .iter()
            .map(|d| {
                vec![
                    Some(match d.get("user_id") {
                        Some(mongodb::bson::Bson::Int64(v)) => v.to_string(),
                        Some(mongodb::bson::Bson::Int32(v)) => v.to_string(),
                        other => format!("{other:?}"),
                    }),
                    d.get_str("credit_card_number").ok().map(str::to_string),
                    d.get_str("email").ok().map(str::to_string),
                    Some(format!("{}", d.get_f64("total_credit_spend").unwrap_or(f64::NAN))),
                ]
            })
            .collect();
        got.sort();
        if got.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let only_mongo: Vec<_> = got.iter().filter(|r| !expected.contains(r)).collect();
    let only_sluice: Vec<_> = expected.iter().filter(|r| !got.contains(r)).collect();
    assert_eq!(got, expected, "MongoDB {} docs, Sluice {} rows; only in MongoDB {only_mongo:?}; only in Sluice {only_sluice:?}", got.len(), expected.len());
    // With --kafka-bootstrap, the captured changes are also in Kafka, as Debezium writes them:
    // topic <prefix>.<schema>.<table>, Debezium's envelope, the email masked.
    let mut events = Vec::new();
    for _ in 0..100 {
        events = consume_all(&k, "ORCL.ADMIN.CUSTOMERS");
        if events.iter().any(|e| e.contains("\"avg_credit_spend\":0")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let parsed: Vec<serde_json::Value> = events.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(parsed.len() >= 20, "{events:?}");
    assert!(parsed.iter().all(|e| ["c", "d"].contains(&e["op"].as_str().unwrap_or(""))), "{events:?}");
    assert!(parsed.iter().filter_map(|e| e["after"].get("email")).all(|m| m == ""), "{events:?}");
    assert!(parsed.iter().any(|e| e["after"]["id"] == 5 && e["after"]["avg_credit_spend"] == 0.0), "{events:?}");
    let listed = rows(&client, "SHOW CONNECTORS").await;
    assert!(listed.iter().any(|r| r[0].as_deref() == Some("stolen_cards_mongo") && r[3].as_deref() == Some("RUNNING")), "{listed:?}");
    drop(server);
}

async fn mongo_docs(m: &Service, db: &str, coll: &str) -> Vec<Vec<Option<String>>> {
    use futures::TryStreamExt;
    let mongo = mongodb::Client::with_uri_str(format!("mongodb://{}", m.addr())).await.unwrap();
    let docs: Vec<mongodb::bson::Document> =
        mongo.database(db).collection(coll).find(mongodb::bson::doc! {}).await.unwrap().try_collect().await.unwrap();
    let mut out: Vec<Vec<Option<String>>> = docs
        .iter()
        .map(|d| {
            let id = match d.get("_id") {
                Some(mongodb::bson::Bson::Int64(v)) => v.to_string(),
                Some(mongodb::bson::Bson::Int32(v)) => v.to_string(),
                other => format!("{other:?}"),
            };
            vec![Some(id), d.get_str("v").ok().map(str::to_string), d.get_i64("n").ok().map(|n| n.to_string())]
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_sink_waits_for_a_server_that_is_down_then_upserts_and_deletes() {
    let port = services::free_port();
    let dir = temp_dir("mongo-down");
    let server = start(&dir);
    let client = connect(server.port()).await;
    exec(&client, "CREATE TABLE s (id BIGINT, grp BIGINT, v STRING, PRIMARY KEY (id) NOT ENFORCED)").await;
    exec(
        &client,
        &format!(
            "CREATE TABLE m (id BIGINT, v STRING, n BIGINT, PRIMARY KEY (id) NOT ENFORCED) WITH ('connector' = 'mongodb', \
             'uri' = 'mongodb://127.0.0.1:{port}', 'database' = 'd', 'collection' = 'c', 'sink.buffer-flush.max-rows' = '7')"
        ),
    )
    .await;
    exec(&client, "INSERT INTO m SELECT grp, MAX(v), COUNT(*) FROM s GROUP BY grp").await;
    let values: Vec<String> = (0..60).map(|i| format!("({i}, {}, 'v{}')", i % 9, i % 13)).collect();
    exec(&client, &format!("INSERT INTO s VALUES {}", values.join(", "))).await;
    exec(&client, "FLUSH").await;
    eventually(30, "the sink to report that MongoDB is down", || async {
        rows(&client, "DESCRIBE CONNECTOR m").await.iter().any(|r| r[0].as_deref() == Some("state") && r[1].as_deref() == Some("RETRYING"))
    })
    .await;
    // Other work goes on meanwhile.
    assert_eq!(count(&client, "SELECT count(*) FROM m").await, 9);

    let m = services::mongo_on("down", port);
    let expected = || async { rows(&client, "SELECT id, v, n FROM m").await };
    let want = expected().await;
    eventually(60, "MongoDB to catch up", || async { mongo_docs(&m, "d", "c").await == want }).await;

    // Updates and deletes upstream become replacements and deletions by _id.
    exec(&client, "UPDATE s SET v = 'zz' WHERE id = 4; DELETE FROM s WHERE grp = 8; DELETE FROM s WHERE id = 0").await;
    exec(&client, "FLUSH").await;
    let want = expected().await;
    assert_eq!(want.len(), 8);
    eventually(60, "MongoDB to follow updates and deletes", || async { mongo_docs(&m, "d", "c").await == want }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_debezium_json_source_and_upsert_kafka_sink() {
    let k = services::kafka("dbz");
    create_topic(&k, "pg.public.items", 1).await;
    create_topic(&k, "totals", 1).await;
    let env = |op: &str, before: Option<(i64, &str, i64)>, after: Option<(i64, &str, i64)>| {
        let img = |r: Option<(i64, &str, i64)>| match r {
            Some((id, name, qty)) => format!(r#"{{"id": {id}, "name": "{name}", "qty": {qty}}}"#),
            None => "null".into(),
        };
        format!(r#"{{"schema": {{}}, "payload": {{"before": {}, "after": {}, "op": "{op}", "ts_ms": 1}}}}"#, img(before), img(after))
    };
    let mut msgs = Vec::new();
    for i in 1..=20 {
        msgs.push((i.to_string(), env("r", None, Some((i, "a", i)))));
    }
    msgs.push(("3".into(), env("u", Some((3, "a", 3)), Some((3, "b", 30)))));
    msgs.push(("4".into(), env("d", Some((4, "a", 4)), None)));
    msgs.push(("5".into(), env("u", None, Some((5, "c", 50)))));
    produce(&k, "pg.public.items", &msgs).await;

    let dir = temp_dir("kafka-dbz");
    let _server = start(&dir);
    let client = connect(_server.port()).await;
    exec(
        &client,
        &format!(
            "CREATE TABLE items (id BIGINT, name STRING, qty BIGINT, PRIMARY KEY (id) NOT ENFORCED) WITH ('connector' = 'kafka', \
             'topic' = 'pg.public.items', 'properties.bootstrap.servers' = '{0}', 'scan.startup.mode' = 'earliest-offset', \
             'format' = 'debezium-json');
             CREATE TABLE totals (name STRING, total BIGINT, PRIMARY KEY (name) NOT ENFORCED) WITH ('connector' = 'upsert-kafka', \
             'topic' = 'totals', 'properties.bootstrap.servers' = '{0}', 'key.format' = 'json', 'value.format' = 'json');
             INSERT INTO totals SELECT name, SUM(qty) FROM items GROUP BY name;",
            k.addr()
        ),
    )
    .await;
    eventually(60, "the changelog applied", || async { count(&client, "SELECT count(*) FROM items").await == 19 }).await;
    assert_eq!(
        rows(&client, "SELECT id, name, qty FROM items WHERE id IN (3, 4, 5)").await,
        vec![vec![Some("3".into()), Some("b".into()), Some("30".into())], vec![Some("5".into()), Some("c".into()), Some("50".into())]]
    );
    exec(&client, "FLUSH").await;
    // Folding the upsert topic by key (last value wins, a tombstone deletes) gives the table.
    let want = rows(&client, "SELECT name, total FROM totals").await;
    let mut got = Vec::new();
    for _ in 0..100 {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", k.addr())
            .set("group.id", format!("fold-{}", std::process::id()))
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("totals", 0, rdkafka::Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let mut state: BTreeMap<String, Option<String>> = BTreeMap::new();
        loop {
            match c.poll(Duration::from_secs(5)) {
                Some(Ok(m)) => {
                    let key: serde_json::Value = serde_json::from_slice(m.key().unwrap()).unwrap();
                    let name = key["name"].as_str().unwrap().to_string();
                    let total = m.payload().map(|v| serde_json::from_slice::<serde_json::Value>(v).unwrap()["total"].to_string());
                    state.insert(name, total);
                }
                _ => break,
            }
        }
        got = state.into_iter().filter_map(|(k, v)| v.map(|v| vec![Some(k), Some(v)])).collect();
        got.sort();
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_connector_transforms_and_a_slot_it_did_not_create() {
    let pgs = services::postgres("smt");
    let pg = pg_client(&pgs).await;
    pg.batch_execute(
        "CREATE TABLE people (id BIGINT PRIMARY KEY, name TEXT, secret TEXT, email TEXT);
         INSERT INTO people SELECT i, 'p' || i, 's' || i, 'p' || i || '@x.io' FROM generate_series(1, 50) i;
         CREATE PUBLICATION sluice_pub FOR TABLE people;",
    )
    .await
    .unwrap();
    // A slot made by a DBA (in a transaction of its own: Postgres requires it).
    pg.batch_execute("SELECT pg_create_logical_replication_slot('dba_slot', 'pgoutput')").await.unwrap();
    let dir = temp_dir("pg-smt");
    let _server = start(&dir);
    let client = connect(_server.port()).await;
    exec(
        &client,
        &format!(
            "CREATE SOURCE CONNECTOR pgc WITH (
               'connector.class' = 'io.debezium.connector.postgresql.PostgresConnector',
               'database.hostname' = '127.0.0.1', 'database.port' = '{}', 'database.user' = 'postgres',
               'database.password' = 'x-Secret-9', 'database.dbname' = 'postgres', 'topic.prefix' = 'pg',
               'table.include.list' = 'public.people', 'slot.name' = 'dba_slot', 'publication.name' = 'sluice_pub',
               'transforms' = 'route,drop,unwrap',
               'transforms.route.type' = 'org.apache.kafka.connect.transforms.RegexRouter',
               'transforms.route.regex' = 'pg[.]public[.](.*)', 'transforms.route.replacement' = 'crm_$1',
               'transforms.drop.type' = 'org.apache.kafka.connect.transforms.ReplaceField$Value',
               'transforms.drop.exclude' = 'secret', 'transforms.drop.renames' = 'name:full_name',
               'transforms.unwrap.type' = 'io.debezium.transforms.ExtractNewRecordState',
               'transforms.unwrap.delete.handling.mode' = 'rewrite')",
            pgs.port
        ),
    )
    .await;
    // The table is named by the router, shaped by ReplaceField, keyed by the Postgres key.
    let described = rows(&client, "DESCRIBE crm_people").await;
    let names: Vec<&str> = described.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(names, vec!["__deleted", "email", "full_name", "id"], "{described:?}");
    eventually(60, "snapshot", || async { count(&client, "SELECT count(*) FROM crm_people").await == 50 }).await;
    pg.batch_execute("DELETE FROM people WHERE id = 7; UPDATE people SET name = 'renamed', secret = 'new' WHERE id = 8;").await.unwrap();
    // A delete carries only the key (Postgres's default replica identity), so the rewritten
    // row has the key and `__deleted` = true, as Debezium's unwrap gives it.
    let want = vec![
        vec![Some("7".to_string()), None, Some("true".to_string())],
        vec![Some("8".to_string()), Some("renamed".to_string()), Some("false".to_string())],
    ];
    let mut got = Vec::new();
    for _ in 0..300 {
        got = rows(&client, "SELECT id, full_name, __deleted FROM crm_people WHERE id IN (7, 8)").await;
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, want);
    let text = format!("{:?}{:?}", rows(&client, "DESCRIBE CONNECTOR pgc").await, rows(&client, "SHOW CONNECTORS").await);
    assert!(!text.contains("x-Secret-9") && text.contains("***"), "{text}");
    // The slot was made by someone else: DROP CONNECTOR keeps it.
    exec(&client, "DROP CONNECTOR pgc").await;
    let slots = pg_rows(&pg, "SELECT slot_name FROM pg_replication_slots").await;
    assert_eq!(slots, vec![vec![Some("dba_slot".to_string())]]);
    assert_eq!(count(&client, "SELECT count(*) FROM crm_people").await, 50);
}

/// A row with every `591.0` written `591` (Sluice prints a whole DOUBLE with `.0`, JSON may not).
fn without_point_zero(row: Vec<Option<String>>) -> Vec<Option<String>> {
    row.into_iter().map(|v| v.map(|v| v.strip_suffix(".0").map(str::to_string).unwrap_or(v))).collect()
}

/// Folds `debezium-json` events (`c` adds the `after` row, `d` removes the `before` row) into
/// the multiset of rows they leave, each row as its `columns` in text.
fn fold_debezium(events: &[String], columns: &[&str]) -> Vec<Vec<Option<String>>> {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    };
    let mut counts: BTreeMap<Vec<Option<String>>, i64> = BTreeMap::new();
    for e in events {
        let j: serde_json::Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("{e}: {err}"));
        let (image, weight) = match j["op"].as_str() {
            Some("c") => (&j["after"], 1),
            Some("d") => (&j["before"], -1),
            other => panic!("op {other:?} in {e}"),
        };
        *counts.entry(columns.iter().map(|c| text(&image[*c])).collect()).or_default() += weight;
    }
    let mut out = Vec::new();
    for (row, n) in counts {
        let row = without_point_zero(row);
        assert!(n >= 0, "row {row:?} retracted more often than inserted");
        out.extend(std::iter::repeat_n(row, n as usize));
    }
    out.sort();
    out
}

/// With `--kafka-bootstrap` every table's topic is a Kafka topic: client writes, a persistent
/// join + aggregate and batch reads all go through Kafka, and a SIGKILL in the middle of a
/// stream of writes loses and repeats nothing, in Sluice's tables or in the Kafka topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_topic_backend_survives_sigkill() {
    let k = services::kafka("backend");
    let dir = temp_dir("kafka-backend");
    let mut server = sluice_sqllogictest::ServerProcess::start_with_args(
        std::path::Path::new(env!("CARGO_BIN_EXE_sluice")),
        &dir,
        &["--kafka-bootstrap", &k.addr()],
    )
    .expect("sluice starts");
    let client = connect(server.port()).await;
    exec(&client, "CREATE TABLE customers (id BIGINT, name STRING, PRIMARY KEY (id) NOT ENFORCED) WITH ('partitions' = '2')").await;
    exec(&client, "CREATE TABLE tx (user_id BIGINT, amount DOUBLE) WITH ('partitions' = '2')").await;
    exec(&client, "CREATE TABLE spend (user_id BIGINT, name STRING, total DOUBLE, n BIGINT, PRIMARY KEY (user_id) NOT ENFORCED)").await;
    let query = "SELECT t.user_id, c.name, SUM(t.amount), COUNT(*) FROM tx AS t JOIN customers AS c ON t.user_id = c.id GROUP BY t.user_id, c.name";
    exec(&client, &format!("INSERT INTO spend {query}")).await;
    let values = (0..20).map(|i| format!("({i}, 'name{i}')")).collect::<Vec<_>>().join(", ");
    exec(&client, &format!("INSERT INTO customers VALUES {values}")).await;
    let tx_batch = |round: usize| {
        (0..500).map(|i| format!("({}, {}.25)", (i * 7 + round) % 23, (i + round) % 90)).collect::<Vec<_>>().join(", ")
    };
    for round in 0..6 {
        exec(&client, &format!("INSERT INTO tx VALUES {}", tx_batch(round))).await;
    }
    exec(&client, "UPDATE customers SET name = 'renamed' WHERE id = 3").await;
    exec(&client, "DELETE FROM customers WHERE id = 4").await;

    // SIGKILL while writes and the job are in flight, several times at different moments (an
    // append cut between its write-ahead entry and Kafka's acknowledgement is finished at the
    // next start); then more writes after the last restart.
    let mut acknowledged_rounds = 6;
    for cycle in 0..4usize {
        let writer = {
            let port = server.port();
            tokio::spawn(async move {
                let c = connect(port).await;
                let mut done = 0;
                for round in 0..40 {
                    if c.batch_execute(&format!("INSERT INTO tx VALUES {}", tx_batch(100 + cycle * 40 + round))).await.is_err() {
                        break;
                    }
                    done += 1;
                }
                done
            })
        };
        tokio::time::sleep(Duration::from_millis(150 + 110 * cycle as u64)).await;
        server.kill();
        acknowledged_rounds += writer.await.unwrap();
        server.restart(false).expect("restart");
        let client = connect(server.port()).await;
        let n = count(&client, "SELECT count(*) FROM tx").await as usize;
        // Every INSERT that returned is there; the one cut off may or may not be, but never in part.
        assert!(n >= acknowledged_rounds * 500 && n % 500 == 0, "{n} rows after {acknowledged_rounds} acknowledged INSERTs");
        acknowledged_rounds = n / 500;
    }
    let client = connect(server.port()).await;
    exec(&client, &format!("INSERT INTO tx VALUES {}", tx_batch(99))).await;
    exec(&client, "UPDATE customers SET name = 'again' WHERE id = 3").await;
    exec(&client, "FLUSH").await;

    // Oracle: the persistent query's table equals the batch query over the same input.
    let expected = rows(&client, query).await;
    assert_eq!(expected.len(), 19, "customers 0..20 except the deleted 4 have rows: {expected:?}");
    assert_eq!(rows(&client, "SELECT * FROM spend").await, expected);

    // The topics are Kafka topics holding each change once, in Debezium's envelope.
    let tx_rows = count(&client, "SELECT count(*) FROM tx").await as usize;
    let events = consume_all(&k, "sluice.tx");
    assert_eq!(events.len(), tx_rows, "sluice.tx holds every row once");
    assert_eq!(fold_debezium(&events, &["user_id", "amount"]), {
        let mut r: Vec<_> = rows(&client, "SELECT user_id, CAST(amount AS STRING) FROM tx").await.into_iter().map(without_point_zero).collect();
        r.sort();
        r
    });
    let mut spend_kafka = fold_debezium(&consume_all(&k, "sluice.spend"), &["user_id", "name", "total", "n"]);
    spend_kafka.sort();
    let mut spend_sql: Vec<_> =
        rows(&client, "SELECT user_id, name, CAST(total AS STRING), n FROM spend").await.into_iter().map(without_point_zero).collect();
    spend_sql.sort();
    assert_eq!(spend_kafka, spend_sql);
    // A table with a primary key holds upserts: the last event of a key is its row.
    let mut customers: BTreeMap<String, Option<String>> = BTreeMap::new();
    for e in consume_all(&k, "sluice.customers") {
        let j: serde_json::Value = serde_json::from_str(&e).unwrap();
        match j["op"].as_str() {
            Some("c") => customers.insert(j["after"]["id"].to_string(), j["after"]["name"].as_str().map(str::to_string)),
            _ => customers.remove(&j["before"]["id"].to_string()),
        };
    }
    let customers: Vec<Vec<Option<String>>> = customers.into_iter().map(|(id, name)| vec![Some(id), name]).collect();
    assert_eq!(customers, rows(&client, "SELECT id, name FROM customers").await);
    assert!(customers.contains(&vec![Some("3".into()), Some("again".into())]), "{customers:?}");

    // DROP TABLE deletes its Kafka topic.
    exec(&client, "CREATE TABLE scratch (a BIGINT)").await;
    exec(&client, "INSERT INTO scratch VALUES (1), (2)").await;
    assert_eq!(count(&client, "SELECT count(*) FROM scratch").await, 2);
    exec(&client, "DROP TABLE scratch").await;
    let admin: BaseConsumer = ClientConfig::new().set("bootstrap.servers", k.addr()).create().unwrap();
    eventually(30, "topic of a dropped table deleted", || async {
        let md = admin.fetch_metadata(None, Duration::from_secs(5)).unwrap();
        !md.topics().iter().any(|t| t.name() == "sluice.scratch")
    })
    .await;
    drop(server);
}

/// `DESCRIBE CONNECTOR name` as `property=value` text, for failure messages.
async fn described(client: &tokio_postgres::Client, name: &str) -> String {
    let props = rows(client, &format!("DESCRIBE CONNECTOR {name}")).await;
    props.iter().map(|r| format!("{}={}", r[0].as_deref().unwrap_or(""), r[1].as_deref().unwrap_or(""))).collect::<Vec<_>>().join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cdc_update_keeps_unchanged_toast_value() {
    let pgs = services::postgres("toast");
    let pg = pg_client(&pgs).await;
    // `body` is >8 KB of random hex, stored out of line uncompressed (STORAGE EXTERNAL), so an
    // UPDATE that does not touch it sends it as "unchanged TOAST" ('u'), without the value.
    pg.batch_execute(
        "CREATE TABLE docs (id BIGINT PRIMARY KEY, title TEXT, body TEXT);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs SELECT 1, 'snapshot', string_agg(md5(random()::text), '') FROM generate_series(1, 400);",
    )
    .await
    .unwrap();
    let dir = temp_dir("pg-toast");
    let server = start(&dir);
    let client = connect(server.port()).await;
    exec(
        &client,
        &format!(
            "CREATE TABLE docs (id BIGINT, title STRING, body STRING, PRIMARY KEY (id) NOT ENFORCED) \
             WITH ('connector' = 'postgres-cdc', 'hostname' = '127.0.0.1', 'port' = '{}', 'username' = 'postgres', \
             'password' = 'pw', 'database-name' = 'postgres', 'schema-name' = 'public', 'table-name' = 'docs', \
             'slot.name' = 'sluice_docs', 'decoding.plugin.name' = 'pgoutput')",
            pgs.port
        ),
    )
    .await;
    eventually(60, "snapshot", || async { count(&client, "SELECT count(*) FROM docs").await == 1 }).await;
    // A row captured from the stream rather than the snapshot.
    pg.batch_execute("INSERT INTO docs SELECT 2, 'streamed', string_agg(md5(random()::text), '') FROM generate_series(1, 400)")
        .await
        .unwrap();
    eventually(60, "streamed insert", || async { count(&client, "SELECT count(*) FROM docs").await == 2 }).await;
    // Updates of another column: of rows Sluice already holds, and of a row inserted in the same
    // transaction (so not yet in Sluice's table when the update is captured).
    pg.batch_execute(
        "UPDATE docs SET title = 'updated';
         BEGIN;
         INSERT INTO docs SELECT 3, 'new', string_agg(md5(random()::text), '') FROM generate_series(1, 400);
         UPDATE docs SET title = 'new, updated' WHERE id = 3;
         COMMIT;",
    )
    .await
    .unwrap();
    let want = pg_rows(&pg, "SELECT id::text, title, body FROM docs").await;
    assert_eq!(want.len(), 3);
    assert!(want.iter().all(|r| r[2].as_ref().is_some_and(|b| b.len() == 12_800)), "large values in Postgres");
    let mut got = Vec::new();
    for _ in 0..300 {
        got = rows(&client, "SELECT id, title, body FROM docs").await;
        if got.iter().filter(|r| r[1].as_deref().is_some_and(|t| t.contains("updated"))).count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = |rows: &[Vec<Option<String>>]| {
        rows.iter().map(|r| format!("{:?} {:?} {:?}", r[0], r[1], r[2].as_ref().map(|b| b.len()))).collect::<Vec<_>>()
    };
    assert!(got == want, "Sluice {:?}, Postgres {:?}; connector: {}", text(&got), text(&want), described(&client, "docs").await);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_field_over_tables_masks_only_those_with_the_field() {
    let pgs = services::postgres("mask2");
    let pg = pg_client(&pgs).await;
    pg.batch_execute(
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT, email TEXT);
         CREATE TABLE order_items (id BIGINT PRIMARY KEY, sku TEXT, qty INT);
         INSERT INTO customers SELECT i, 'c' || i, 'c' || i || '@x.io' FROM generate_series(1, 5) i;
         INSERT INTO order_items SELECT i, 'sku-' || i, i * 2 FROM generate_series(1, 7) i;",
    )
    .await
    .unwrap();
    let dir = temp_dir("pg-mask2");
    let server = start(&dir);
    let client = connect(server.port()).await;
    let connector = |name: &str, fields: &str| {
        format!(
            "CREATE SOURCE CONNECTOR {name} WITH (
               'connector.class' = 'io.debezium.connector.postgresql.PostgresConnector',
               'database.hostname' = '127.0.0.1', 'database.port' = '{}', 'database.user' = 'postgres',
               'database.password' = 'pw', 'database.dbname' = 'postgres', 'topic.prefix' = 'pg',
               'table.include.list' = 'public.customers,public.order_items', 'slot.name' = 'slot_{name}',
               'publication.name' = 'pub_{name}',
               'transforms' = 'mask',
               'transforms.mask.type' = 'org.apache.kafka.connect.transforms.MaskField$Value',
               'transforms.mask.fields' = '{fields}')",
            pgs.port
        )
    };
    // A field that no captured table has is a mistake.
    let err = client.batch_execute(&connector("typo", "emial")).await.unwrap_err();
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("22023"), "{err:?}");
    assert!(err.as_db_error().unwrap().message().contains("emial"), "{err:?}");
    // A field only one of them has: masked there, the other table's rows pass through.
    exec(&client, &connector("pgm", "email")).await;
    pg.batch_execute(
        "INSERT INTO customers VALUES (6, 'c6', 'c6@x.io');
         UPDATE customers SET email = 'new@x.io' WHERE id = 1;
         INSERT INTO order_items VALUES (8, 'sku-8', 16);
         UPDATE order_items SET qty = 100 WHERE id = 1;",
    )
    .await
    .unwrap();
    let want_customers = pg_rows(&pg, "SELECT id::text, name, '' FROM customers").await;
    let want_items = pg_rows(&pg, "SELECT id::text, sku, qty::text FROM order_items").await;
    let (mut customers, mut items) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        customers = rows(&client, "SELECT id, name, email FROM `pg.public.customers`").await;
        items = rows(&client, "SELECT id, sku, qty FROM `pg.public.order_items`").await;
        if customers == want_customers && items == want_items {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = described(&client, "pgm").await;
    assert_eq!(customers, want_customers, "{state}");
    assert_eq!(items, want_items, "{state}");
    exec(&client, "DROP CONNECTOR pgm").await;
    drop(server);
}

/// An idle captured table must not hold back WAL: changes only in a table the connector does not
/// capture (which pgoutput does not send) still move the slot's confirmed LSN, as Debezium's
/// heartbeat does, once everything received before the server's `wal_end` is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cdc_idle_captured_table_does_not_hold_back_wal() {
    let pgs = services::postgres("idle");
    let pg = pg_client(&pgs).await;
    pg.batch_execute(
        "CREATE TABLE captured (id BIGINT PRIMARY KEY, v TEXT);
         CREATE TABLE other (id BIGINT PRIMARY KEY, v TEXT);
         INSERT INTO captured VALUES (1, 'one'), (2, 'two');",
    )
    .await
    .unwrap();
    let dir = temp_dir("pg-idle");
    let server = start(&dir);
    let client = connect(server.port()).await;
    exec(
        &client,
        &format!(
            "CREATE TABLE captured (id BIGINT, v STRING, PRIMARY KEY (id) NOT ENFORCED) \
             WITH ('connector' = 'postgres-cdc', 'hostname' = '127.0.0.1', 'port' = '{}', 'username' = 'postgres', \
             'password' = 'pw', 'database-name' = 'postgres', 'schema-name' = 'public', 'table-name' = 'captured', \
             'slot.name' = 'sluice_idle', 'decoding.plugin.name' = 'pgoutput')",
            pgs.port
        ),
    )
    .await;
    eventually(60, "snapshot", || async { count(&client, "SELECT count(*) FROM captured").await == 2 }).await;
    pg.batch_execute("INSERT INTO other SELECT i, md5(i::text) FROM generate_series(1, 20000) i").await.unwrap();
    let after: String = pg.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let confirmed_past = |after: String| {
        let pg = &pg;
        async move {
            let row = pg
                .query_one(
                    "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'sluice_idle'",
                    &[&after],
                )
                .await
                .unwrap();
            row.get::<_, Option<bool>>(0) == Some(true)
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !confirmed_past(after.clone()).await {
        let slot = pg_rows(&pg, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'sluice_idle'").await;
        assert!(
            std::time::Instant::now() < deadline,
            "the slot's confirmed LSN {slot:?} never reached {after}; connector: {}",
            described(&client, "captured").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The captured table still streams.
    pg.batch_execute("INSERT INTO captured VALUES (3, 'three')").await.unwrap();
    eventually(60, "streamed insert", || async { count(&client, "SELECT count(*) FROM captured").await == 3 }).await;
    drop(server);
}
