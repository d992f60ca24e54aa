//! The seed-000 pipeline on real services (Postgres CDC with a mask, Kafka, join + TUMBLE, a
//! MongoDB sink connector, every table's topic on Kafka), killed again and again at random
//! points: with `kill -9` at a random moment after a Postgres update (before or after the new
//! transactions), and by the daemon aborting itself right after a MongoDB bulk write, before its
//! position is stored (the `mongo::after_bulk_write` failpoint). After every restart the oracle must hold:
//! MongoDB holds exactly the rows of the table, and the sink task is `RUNNING`.

mod common;

use std::time::Duration;

use common::services::{self, eventually, pg_client, Service};
use common::{connect, exec, rows, temp_dir};
use rand::Rng;
use sluice_sqllogictest::ServerProcess;

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    rows(client, sql).await[0][0].as_deref().unwrap().parse().unwrap()
}

/// Every document of the sink's collection as (user_id, card, email, total), sorted.
async fn mongo_rows(m: &Service) -> Vec<Vec<Option<String>>> {
    use futures::TryStreamExt;
    let mongo = mongodb::Client::with_uri_str(format!("mongodb://{}", m.addr())).await.unwrap();
    let coll = mongo.database("demo-db-mod").collection::<mongodb::bson::Document>("fd_possible_stolen_card");
    let docs: Vec<mongodb::bson::Document> = coll.find(mongodb::bson::doc! {}).await.unwrap().try_collect().await.unwrap();
    let mut got: Vec<Vec<Option<String>>> = docs
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
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_pipeline_survives_kills_around_sink_writes() {
    let pgs = services::postgres("seedkill");
    let k = services::kafka("seedkill");
    let m = services::mongo("seedkill");
    let pg = pg_client(&pgs).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/stolen-cards/real-services");
    pg.batch_execute(&std::fs::read_to_string(root.join("postgres-setup.sql")).unwrap()).await.unwrap();

    let dir = temp_dir("seed-kill");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_sluice"));
    let mut server = ServerProcess::start_with_args(bin, &dir, &["--kafka-bootstrap", &k.addr()]).expect("sluice starts");
    let client = connect(server.port()).await;
    let pipeline = std::fs::read_to_string(root.join("pipeline.sql"))
        .unwrap()
        .replace("'5433'", &format!("'{}'", pgs.port))
        .replace("127.0.0.1:9092", &k.addr())
        .replace("127.0.0.1:27017", &m.addr());
    for stmt in pipeline.split(";\n").map(str::trim).filter(|s| !s.is_empty() && !s.lines().all(|l| l.trim_start().starts_with("--"))) {
        exec(&client, stmt).await;
    }
    drop(client);
    let producer = |count: u32, start: &str| {
        let out = std::process::Command::new("python3")
            .arg(root.join("producer.py"))
            .args(["--bootstrap", &k.addr(), "--count", &count.to_string(), "--start", start, "--stolen", "3,7"])
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "producer.py: {}", String::from_utf8_lossy(&out.stderr));
    };

    let mut rng = rand::rng();
    let mut produced = 0i64;
    for round in 0..9u32 {
        // A change in Postgres (which cards look stolen), then a day of transactions, with the
        // daemon killed somewhere around them; three ways in turn.
        let user = 1 + (round * 7) % 20;
        let spend = if round % 2 == 0 { 0.0 } else { 1e9 };
        let day = format!("2024-05-{:02} 00:00:00", round + 1);
        pg.batch_execute(&format!(r#"UPDATE "ADMIN"."CUSTOMERS" SET avg_credit_spend = {spend} WHERE id = {user}"#)).await.unwrap();
        match round % 3 {
            0 => {
                // kill -9 while the update flows through the join, the window and the sink;
                // the day's transactions arrive after the restart.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
                server.restart(true).expect("restart after kill -9");
                producer(300, &day);
            }
            1 => {
                // kill -9 at a random moment while the day's transactions are processed.
                producer(300, &day);
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
                server.restart(true).expect("restart after kill -9");
            }
            _ => {
                // The daemon aborts itself right after a MongoDB bulk write, before the sink's
                // position is stored; then it starts again.
                server.set_env("SLUICE_FAILPOINTS", Some("mongo::after_bulk_write=return(abort)"));
                server.restart(true).expect("restart with the failpoint");
                producer(300, &day);
                let mut aborted = false;
                for _ in 0..600 {
                    if server.exited() {
                        aborted = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(aborted, "round {round}: the sink wrote nothing, so the failpoint never fired");
                server.set_env("SLUICE_FAILPOINTS", None);
                server.start_again().expect("start after the abort");
            }
        }
        produced += 300;

        // The oracle, after every restart: the table is complete, and MongoDB holds its rows.
        let client = connect(server.port()).await;
        eventually(90, "transactions consumed", || async {
            count(&client, "SELECT count(*) FROM credit_card_transactions").await == produced
        })
        .await;
        exec(&client, "FLUSH").await;
        let mut expected = rows(&client, "SELECT user_id, credit_card_number, email, total_credit_spend FROM fd_possible_stolen_card").await;
        expected.sort();
        assert!(!expected.is_empty(), "round {round}: nothing flagged");
        let mut got = Vec::new();
        for _ in 0..300 {
            got = mongo_rows(&m).await;
            if got == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let only_mongo: Vec<_> = got.iter().filter(|r| !expected.contains(r)).collect();
        let only_sluice: Vec<_> = expected.iter().filter(|r| !got.contains(r)).collect();
        let connectors = rows(&client, "SHOW CONNECTORS").await;
        assert_eq!(
            got,
            expected,
            "round {round}: MongoDB {} docs, Sluice {} rows; only in MongoDB {only_mongo:?}; only in Sluice {only_sluice:?}; connectors {connectors:?}",
            got.len(),
            expected.len()
        );
        assert!(
            connectors.iter().any(|r| r[0].as_deref() == Some("stolen_cards_mongo") && r[3].as_deref() == Some("RUNNING")),
            "round {round}: {connectors:?}"
        );
    }
    drop(server);
}

/// A Kafka source whose broker is unreachable is `RETRYING` with the error, refuses writes
/// from clients, and starts consuming once a broker listens on that address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_with_its_broker_down_reports_retrying_then_catches_up() {
    let port = services::free_port();
    let dir = temp_dir("kafka-down");
    let server = common::start(&dir);
    let client = connect(server.port()).await;
    exec(
        &client,
        &format!(
            "CREATE TABLE k (a BIGINT, b STRING) WITH ('connector' = 'kafka', 'topic' = 't', \
             'properties.bootstrap.servers' = '127.0.0.1:{port}', 'scan.startup.mode' = 'earliest-offset', 'format' = 'json')"
        ),
    )
    .await;
    eventually(60, "the source to report RETRYING", || async {
        rows(&client, "DESCRIBE CONNECTOR k").await.iter().any(|r| r[0].as_deref() == Some("state") && r[1].as_deref() == Some("RETRYING"))
    })
    .await;
    let err = client.batch_execute("INSERT INTO k VALUES (1, 'x')").await.unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("0A000"), "{err:?}");
    assert_eq!(count(&client, "SELECT count(*) FROM k").await, 0);
    // The broker comes up on that port: the source catches up.
    let k = services::kafka_on("kafka-down", port);
    let p: rdkafka::producer::FutureProducer =
        rdkafka::config::ClientConfig::new().set("bootstrap.servers", k.addr()).create().expect("producer");
    for i in 0..10 {
        p.send(rdkafka::producer::FutureRecord::<(), _>::to("t").payload(&format!("{{\"a\":{i},\"b\":\"v{i}\"}}")), Duration::from_secs(10))
            .await
            .expect("delivered");
    }
    eventually(90, "the source to consume the topic", || async { count(&client, "SELECT count(*) FROM k").await == 10 }).await;
    assert!(rows(&client, "DESCRIBE CONNECTOR k").await.iter().any(|r| r[0].as_deref() == Some("state") && r[1].as_deref() == Some("RUNNING")));
}

/// With `'error-handling.mode' = 'log'`, a message that leaves a NOT NULL column NULL goes to
/// the dead-letter table like one that does not decode; the task keeps running and the other
/// messages of the same poll arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_in_a_not_null_column_goes_to_the_dead_letter_table() {
    let k = services::kafka("notnull");
    let dir = temp_dir("kafka-notnull");
    let server = common::start(&dir);
    let client = connect(server.port()).await;
    let p: rdkafka::producer::FutureProducer =
        rdkafka::config::ClientConfig::new().set("bootstrap.servers", k.addr()).create().expect("producer");
    let messages = [r#"{"id":1,"v":"a"}"#, r#"{"v":"no id"}"#, r#"{"id":3,"v":"c"}"#, "not json", r#"{"id":null,"v":"null id"}"#, r#"{"id":6}"#];
    for m in messages {
        p.send(rdkafka::producer::FutureRecord::<(), _>::to("nn").payload(m), Duration::from_secs(10)).await.expect("delivered");
    }
    exec(
        &client,
        &format!(
            "CREATE TABLE nn (id BIGINT NOT NULL, v STRING) WITH ('connector' = 'kafka', 'topic' = 'nn', \
             'properties.bootstrap.servers' = '{}', 'scan.startup.mode' = 'earliest-offset', 'format' = 'json', 'error-handling.mode' = 'log')",
            k.addr()
        ),
    )
    .await;
    eventually(60, "good messages and dead letters", || async {
        count(&client, "SELECT count(*) FROM nn").await == 3 && count(&client, "SELECT count(*) FROM nn_dlq").await == 3
    })
    .await;
    assert_eq!(
        rows(&client, "SELECT id, v FROM nn").await,
        vec![vec![Some("1".into()), Some("a".into())], vec![Some("3".into()), Some("c".into())], vec![Some("6".into()), None]]
    );
    let dead = rows(&client, "SELECT \"offset\", error FROM nn_dlq").await;
    assert_eq!(dead.iter().map(|r| r[0].clone().unwrap()).collect::<Vec<_>>(), vec!["1", "3", "4"], "{dead:?}");
    assert!(dead[0][1].as_deref().unwrap().contains("not-null"), "{dead:?}");
    assert!(rows(&client, "DESCRIBE CONNECTOR nn").await.iter().any(|r| r[0].as_deref() == Some("state") && r[1].as_deref() == Some("RUNNING")));
}

/// The Kafka topic backend aborted at its commit boundaries: after an append's write-ahead
/// entry is durable but before Kafka has it, between produce and acknowledgement, and after
/// the acknowledgement before the entry is deleted. After each abort the daemon starts again,
/// finishes the append, and the persistent query's table equals the batch query over the same
/// input, with every row of the input in its Kafka topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_backend_aborts_at_its_commit_boundaries() {
    let k = services::kafka("walabort");
    let dir = temp_dir("kafka-wal-abort");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_sluice"));
    let mut server = ServerProcess::start_with_args(bin, &dir, &["--kafka-bootstrap", &k.addr()]).expect("sluice starts");
    let client = connect(server.port()).await;
    exec(&client, "CREATE TABLE tx (user_id BIGINT, amount BIGINT) WITH ('partitions' = '2')").await;
    exec(&client, "CREATE TABLE spend (user_id BIGINT, total BIGINT, n BIGINT, PRIMARY KEY (user_id) NOT ENFORCED)").await;
    let query = "SELECT user_id, SUM(amount), COUNT(*) FROM tx GROUP BY user_id";
    exec(&client, &format!("INSERT INTO spend {query}")).await;
    drop(client);
    let mut acknowledged = 0usize;
    let mut rng = rand::rng();
    for (round, point) in ["kafka_log::after_wal", "kafka_log::before_ack", "kafka_log::after_ack"].into_iter().enumerate() {
        let skip = rng.random_range(0..4);
        server.set_env("SLUICE_FAILPOINTS", Some(&format!("{point}={skip}*off->1*return(abort)")));
        server.restart(false).expect("restart with the failpoint");
        let c = connect(server.port()).await;
        for i in 0..40 {
            let values: Vec<String> = (0..50).map(|j| format!("({}, {})", (i * 7 + j + round) % 13, j % 9)).collect();
            if c.batch_execute(&format!("INSERT INTO tx VALUES {}", values.join(", "))).await.is_err() {
                break;
            }
            acknowledged += 1;
        }
        drop(c);
        for _ in 0..200 {
            if server.exited() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(server.exited(), "{point}: the failpoint never fired");
        server.set_env("SLUICE_FAILPOINTS", None);
        server.start_again().expect("start after the abort");
        let c = connect(server.port()).await;
        let n = count(&c, "SELECT count(*) FROM tx").await as usize;
        // Every INSERT that returned is there; the one cut off is there whole or not at all.
        assert!(n >= acknowledged * 50 && n % 50 == 0, "{point}: {n} rows after {acknowledged} acknowledged INSERTs");
        acknowledged = n / 50;
        exec(&c, "FLUSH").await;
        assert_eq!(rows(&c, "SELECT * FROM spend").await, rows(&c, query).await, "{point}: the job's table differs from the batch query");
    }
    // Each row of tx is in its Kafka topic once.
    let c = connect(server.port()).await;
    let n = count(&c, "SELECT count(*) FROM tx").await as usize;
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", k.addr())
        .set("group.id", "walabort-check")
        .create()
        .unwrap();
    let mut in_kafka = 0i64;
    for p in 0..2 {
        use rdkafka::consumer::Consumer;
        let (low, high) = consumer.fetch_watermarks("sluice.tx", p, Duration::from_secs(10)).unwrap();
        in_kafka += high - low;
    }
    assert_eq!(in_kafka as usize, n, "sluice.tx holds every row once");
}
