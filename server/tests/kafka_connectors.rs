//! Kafka and MongoDB connectors against real services, each started fresh by the test: the
//! Kafka-compatible brokers noida-db and tansu, the MongoDB-wire server secantusdb, and (for
//! the seed pipeline) PostgreSQL with logical decoding. Results are checked against an oracle:
//! what the outside system holds equals what Sluice's batch query of the same SQL returns over
//! the same input. Every read of a Kafka topic goes up to a known end (its watermark, a count),
//! and every "nothing changed" waits first for the position that shows it had the chance to.
//! (Postgres CDC on its own is in postgres_cdc.rs; faults in seed_faults.rs.)

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::kafka::{consume_all, consume_records, create_topic, produce};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use common::services::{self, eventually, pg_client, Service};
use common::{connect, connector_property, count, described, exec, rows, start, temp_dir};

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

/// The next offset of each partition in a Kafka source's `position`
/// (`topic/partition@offset, ...`, every partition it has read from).
async fn source_offsets(client: &tokio_postgres::Client, name: &str) -> BTreeMap<i32, i64> {
    let position = connector_property(client, name, "position").await.unwrap_or_default();
    position
        .split(", ")
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (topic_partition, offset) = s.rsplit_once('@').unwrap_or_else(|| panic!("position {position}"));
            let partition = topic_partition.rsplit_once('/').unwrap_or_else(|| panic!("position {position}")).1;
            (partition.parse().unwrap(), offset.parse().unwrap())
        })
        .collect()
}

/// Waits until the Kafka source of table `name` has read `messages` messages in all (the sum
/// of its partitions' next offsets: an idempotent producer writes no transaction markers, so
/// the offsets of a fresh topic are dense), so that whatever they lead to is in the table.
async fn source_read(client: &tokio_postgres::Client, name: &str, messages: i64) {
    eventually(60, &format!("the source of {name} to read {messages} messages"), || async {
        source_offsets(client, name).await.values().sum::<i64>() >= messages
    })
    .await;
    let read: i64 = source_offsets(client, name).await.values().sum();
    assert_eq!(read, messages, "{}", described(client, name).await);
}

/// The rows of the `big` sink topic's JSON values as (user_id, card, amount) text, sorted.
fn sink_rows(values: &[String]) -> Vec<Vec<Option<String>>> {
    let mut rows: Vec<Vec<Option<String>>> = values
        .iter()
        .map(|v| {
            let j: serde_json::Value = serde_json::from_str(v).unwrap_or_else(|e| panic!("{v}: {e}"));
            vec![Some(j["user_id"].to_string()), j["card"].as_str().map(str::to_string), Some(format!("{}", j["amount"].as_f64().unwrap()))]
        })
        .collect();
    rows.sort();
    rows
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
    source_read(&client, "tx", 502).await;
    assert_eq!(count(&client, "SELECT count(*) FROM tx").await, 500);
    let dead = rows(&client, "SELECT topic, \"partition\" IS NOT NULL, \"offset\" IS NOT NULL, raw FROM tx_dlq").await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().any(|r| r[3].as_deref() == Some("not json")), "{dead:?}");

    // SIGKILL, more input while the daemon is down, restart: nothing lost, nothing twice (an
    // at-least-once sink gets a graceful restart instead). Once the source has read all 802
    // messages, the table holds each good one once and the dead-letter table the two bad ones.
    if exactly_once {
        server.kill();
        produce(&k, "tx", &(500..800).map(msg).collect::<Vec<_>>()).await;
        server.restart(false).expect("restart");
    } else {
        server.restart(false).expect("restart");
        produce(&k, "tx", &(500..800).map(msg).collect::<Vec<_>>()).await;
    }
    let client = connect(server.port()).await;
    source_read(&client, "tx", 802).await;
    assert_eq!(count(&client, "SELECT count(*) FROM tx").await, 800);
    assert_eq!(count(&client, "SELECT count(*) FROM tx_dlq").await, 2);
    assert_eq!(connector_property(&client, "tx", "state").await.as_deref(), Some("RUNNING"), "{}", described(&client, "tx").await);

    // Oracle: the sink topic holds exactly the batch query's rows.
    exec(&client, "FLUSH").await;
    let expected = rows(&client, "SELECT user_id, card, amount FROM tx WHERE amount > 50").await;
    assert_eq!(sink_rows(&consume_all(&k, "big", Some(expected.len()))), expected);

    // A Kafka table that became a sink stays one after its job stops and the daemon restarts:
    // it must not turn into a source that consumes its own output.
    let job = rows(&client, "SELECT job_id FROM sluice_jobs").await[0][0].clone().unwrap();
    exec(&client, &format!("STOP JOB '{job}'")).await;
    let before = count(&client, "SELECT count(*) FROM big").await;
    server.restart(false).expect("restart");
    let client = connect(server.port()).await;
    eventually(60, "the task of big to run again", || async {
        connector_property(&client, "big", "state").await.as_deref() == Some("RUNNING")
    })
    .await;
    let listed = rows(&client, "SHOW CONNECTORS").await;
    assert!(listed.iter().any(|r| r[0].as_deref() == Some("big") && r[1].as_deref() == Some("SINK")), "{listed:?}");
    assert_eq!(rows(&client, &format!("SELECT status FROM sluice_jobs WHERE job_id = '{job}'")).await, vec![vec![Some("STOPPED".to_string())]]);
    // A row a client writes into the table (a source would refuse it) goes out to Kafka. Once
    // Kafka holds it, the sink has read the table's topic to its end since the restart, and
    // the table holds its rows from before and that one: none of its own output came back.
    exec(&client, "INSERT INTO big VALUES (99, 'after-restart', 99.5)").await;
    let mut want = expected.clone();
    want.push(vec![Some("99".into()), Some("after-restart".into()), Some("99.5".into())]);
    want.sort();
    assert_eq!(sink_rows(&consume_all(&k, "big", Some(want.len()))), want);
    assert_eq!(count(&client, "SELECT count(*) FROM big").await, before + 1);
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
    // A table's rows are readable only once Kafka acknowledged them, so the topic holds the
    // update of customer 5 already.
    let events = consume_all(&k, "ORCL.ADMIN.CUSTOMERS", None);
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
    // Folding the upsert topic by key (last value wins, a tombstone deletes) gives the table
    // (polled: the sink may still be delivering after FLUSH).
    let want = rows(&client, "SELECT name, total FROM totals").await;
    let fold = || {
        let mut state: BTreeMap<String, Option<String>> = BTreeMap::new();
        for r in consume_records(&k, "totals", None) {
            let key: serde_json::Value = serde_json::from_slice(r.key.as_deref().expect("an upsert-kafka message has a key")).unwrap();
            let total = r.value.map(|v| serde_json::from_slice::<serde_json::Value>(&v).unwrap()["total"].to_string());
            state.insert(key["name"].as_str().unwrap().to_string(), total);
        }
        let mut got: Vec<Vec<Option<String>>> = state.into_iter().filter_map(|(k, v)| v.map(|v| vec![Some(k), Some(v)])).collect();
        got.sort();
        got
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = fold();
    while got != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        got = fold();
    }
    assert_eq!(got, want);
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
    let events = consume_all(&k, "sluice.tx", None);
    assert_eq!(events.len(), tx_rows, "sluice.tx holds every row once");
    assert_eq!(fold_debezium(&events, &["user_id", "amount"]), {
        let mut r: Vec<_> = rows(&client, "SELECT user_id, CAST(amount AS STRING) FROM tx").await.into_iter().map(without_point_zero).collect();
        r.sort();
        r
    });
    let mut spend_kafka = fold_debezium(&consume_all(&k, "sluice.spend", None), &["user_id", "name", "total", "n"]);
    spend_kafka.sort();
    let mut spend_sql: Vec<_> =
        rows(&client, "SELECT user_id, name, CAST(total AS STRING), n FROM spend").await.into_iter().map(without_point_zero).collect();
    spend_sql.sort();
    assert_eq!(spend_kafka, spend_sql);
    // A table with a primary key holds upserts: the last event of a key is its row.
    let mut customers: BTreeMap<String, Option<String>> = BTreeMap::new();
    for e in consume_all(&k, "sluice.customers", None) {
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
