//! Connector figures on this machine, printed (not asserted), against real services started
//! here (noida-db, Debian's PostgreSQL):
//!
//! 1. Kafka JSON source -> projection and filter -> Kafka JSON sink (the Nexmark q0/q2 shape):
//!    `SLUICE_BENCH_KAFKA_EVENTS` (default 1 000 000) bids already in the source topic; events/s
//!    from `CREATE TABLE` until the sink topic holds every output row; next to it the same query
//!    over an embedded topic (rows loaded by COPY), to `FLUSH`.
//! 2. Postgres CDC: initial snapshot of `SLUICE_BENCH_CDC_ROWS` (default 500 000) rows, rows/s;
//!    then the latency from a single-row `UPDATE`'s commit in Postgres until a `SELECT` over
//!    Sluice sees it, p50 and p99 over 200 updates (on a one-row table of its own, so the
//!    `SELECT` that looks for the change costs little).
//!
//! `cargo bench --workspace --bench connectors`

#[path = "../tests/common/services.rs"]
#[allow(dead_code)]
mod services;

use std::time::{Duration, Instant};

use futures::SinkExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_sqllogictest::ServerProcess;
use tokio_postgres::{Client, NoTls};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn connect(port: u16) -> Client {
    let (c, conn) = tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=sluice dbname=sluice"), NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

/// The first column of the first row, or "" when there is no row.
async fn scalar(c: &Client, sql: &str) -> String {
    for m in c.simple_query(sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("").to_string();
        }
    }
    String::new()
}

/// Prints `figure` only if the job into `sink` has read `rows_in` rows and not failed, else
/// why there is no figure.
async fn print_if_complete(c: &Client, sink: &str, rows_in: u64, figure: String) {
    let r = c.query_one("SELECT status, CAST(rows_in AS BIGINT), error FROM sluice_jobs WHERE sink = $1", &[&sink]).await;
    match r {
        Ok(r) if r.get::<_, String>(0) != "FAILED" && r.get::<_, i64>(1) as u64 >= rows_in => println!("{figure}"),
        Ok(r) => println!(
            "not measured: job into {sink} is {} after reading {} of {rows_in} rows: {}",
            r.get::<_, String>(0),
            r.get::<_, i64>(1),
            r.get::<_, Option<String>>(2).unwrap_or_default()
        ),
        Err(e) => println!("not measured: no job into {sink}: {e}"),
    }
}

fn bid(i: u64) -> String {
    format!(
        r#"{{"auction": {}, "bidder": {}, "price": {}, "channel": "channel-{}", "url": "https://www.nexmark.com/item.htm?query=1&channel_id={}", "date_time": "2024-05-01 00:{:02}:{:02}", "extra": ""}}"#,
        1000 + i % 10_000,
        2000 + (i * 7) % 100_000,
        (i * 31) % 100_000,
        i % 4,
        i % 10_000,
        i / 60 % 60,
        i % 60
    )
}

fn high_watermarks(addr: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", addr).set("group.id", "bench").create().unwrap();
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) else { return 0 };
    let parts = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
    (0..parts as i32).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).map(|(_, h)| h).unwrap_or(0)).sum()
}

const BID_COLUMNS: &str = "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, date_time STRING, extra STRING";
const QUERY: &str = "SELECT auction, bidder, price * 908 / 1000 AS price, date_time FROM bid WHERE auction % 2 = 0";

async fn kafka_bench(bin: &std::path::Path) {
    let n = env_u64("SLUICE_BENCH_KAFKA_EVENTS", 1_000_000);
    let k = services::kafka("bench");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", k.addr()).create().unwrap();
    admin
        .create_topics(
            &[NewTopic::new("bid", 2, TopicReplication::Fixed(1)), NewTopic::new("out", 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", k.addr())
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let t = Instant::now();
    for i in 0..n {
        let v = bid(i);
        let key = (i % 64).to_string();
        let mut rec = BaseRecord::to("bid").key(&key).payload(&v);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(5));
                    rec = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    println!("kafka: produced {n} JSON bids to noida-db in {:.1} s (setup)", t.elapsed().as_secs_f64());
    let expected = (0..n).filter(|i| (1000 + i % 10_000) % 2 == 0).count() as i64;

    // For scale: a bare rdkafka consumer reading the same topic from this broker, doing nothing.
    let bare: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", k.addr())
        .set("group.id", "bare")
        .set("receive.message.max.bytes", "1000000000")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset("bid", p, rdkafka::Offset::Beginning).unwrap();
    }
    bare.assign(&tpl).unwrap();
    let t = Instant::now();
    let mut seen = 0u64;
    while seen < n && t.elapsed() < Duration::from_secs(120) {
        if let Some(Ok(_)) = bare.poll(Duration::from_millis(100)) {
            seen += 1;
        }
    }
    println!("kafka: a bare rdkafka consumer reads the {seen} bids from noida-db at {:.0} messages/s (for scale)", seen as f64 / t.elapsed().as_secs_f64());
    drop(bare);

    let dir = std::env::temp_dir().join(format!("sluice-bench-kafka-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = ServerProcess::start(bin, &dir).unwrap();
    let c = connect(server.port()).await;
    let t = Instant::now();
    c.batch_execute(&format!(
        "CREATE TABLE bid ({BID_COLUMNS}) WITH ('connector' = 'kafka', 'topic' = 'bid', 'properties.bootstrap.servers' = '{0}', \
         'scan.startup.mode' = 'earliest-offset', 'format' = 'json', 'partitions' = '2');
         CREATE TABLE out (auction BIGINT, bidder BIGINT, price BIGINT, date_time STRING) WITH ('connector' = 'kafka', \
         'topic' = 'out', 'properties.bootstrap.servers' = '{0}', 'format' = 'json');
         INSERT INTO out {QUERY};",
        k.addr()
    ))
    .await
    .unwrap();
    let mut source_done = None;
    while high_watermarks(&k.addr(), "out") < expected {
        if source_done.is_none() {
            for m in c.simple_query("DESCRIBE CONNECTOR bid").await.unwrap() {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    if r.get(0) == Some("rows") && r.get(1).and_then(|v| v.parse::<u64>().ok()) == Some(n) {
                        source_done = Some(t.elapsed().as_secs_f64());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(s) = source_done {
        println!("kafka: of which the source alone (consume, decode, append to the table's topic): {n} events in {s:.2} s = {:.0} events/s", n as f64 / s);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "kafka: JSON source -> filter/projection -> JSON sink: {n} events in {secs:.2} s = {:.0} events/s ({expected} rows out)",
        n as f64 / secs
    );
    drop(server);

    // The same query over an embedded topic.
    let dir = std::env::temp_dir().join(format!("sluice-bench-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = ServerProcess::start(bin, &dir).unwrap();
    let c = connect(server.port()).await;
    c.batch_execute(&format!(
        "CREATE TABLE bid ({BID_COLUMNS}) WITH ('partitions' = '2'); CREATE TABLE out (auction BIGINT, bidder BIGINT, price BIGINT, date_time STRING);"
    ))
    .await
    .unwrap();
    let mut csv = String::new();
    for i in 0..n {
        csv.push_str(&format!(
            "{},{},{},channel-{},https://www.nexmark.com/item.htm?query=1&channel_id={},2024-05-01 00:{:02}:{:02},\n",
            1000 + i % 10_000,
            2000 + (i * 7) % 100_000,
            (i * 31) % 100_000,
            i % 4,
            i % 10_000,
            i / 60 % 60,
            i % 60
        ));
    }
    let sink = c.copy_in("COPY bid FROM STDIN WITH (FORMAT csv)").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(csv.clone())).await.unwrap();
    sink.finish().await.unwrap();
    let t = Instant::now();
    c.batch_execute(&format!("INSERT INTO out {QUERY}; FLUSH;")).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let figure = format!("embedded: the same query over an embedded topic: {n} events in {secs:.2} s = {:.0} events/s", n as f64 / secs);
    print_if_complete(&c, "out", n, figure).await;
    drop(server);

    // The same query with Kafka as the topic backend: both tables' topics are Kafka topics
    // (sluice.bid, sluice.out), so the job consumes debezium-json from Kafka and produces to it.
    let dir = std::env::temp_dir().join(format!("sluice-bench-backend-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = ServerProcess::start_with_args(bin, &dir, &["--kafka-bootstrap", &k.addr()]).unwrap();
    let c = connect(server.port()).await;
    c.batch_execute(&format!(
        "CREATE TABLE bid ({BID_COLUMNS}) WITH ('partitions' = '2'); CREATE TABLE out (auction BIGINT, bidder BIGINT, price BIGINT, date_time STRING);"
    ))
    .await
    .unwrap();
    let t = Instant::now();
    let sink = c.copy_in("COPY bid FROM STDIN WITH (FORMAT csv)").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(csv)).await.unwrap();
    sink.finish().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!("kafka backend: COPY of {n} rows into a table whose topic is on Kafka: {secs:.2} s = {:.0} rows/s", n as f64 / secs);
    let t = Instant::now();
    c.batch_execute(&format!("INSERT INTO out {QUERY}; FLUSH;")).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let figure = format!(
        "kafka backend: the same query, Kafka topic -> filter/projection -> Kafka topic: {n} events in {secs:.2} s = {:.0} events/s",
        n as f64 / secs
    );
    print_if_complete(&c, "out", n, figure).await;
    drop(server);
}

async fn cdc_bench(bin: &std::path::Path) {
    let n = env_u64("SLUICE_BENCH_CDC_ROWS", 500_000);
    let pgs = services::postgres("bench");
    let pg = services::pg_client(&pgs).await;
    pg.batch_execute(&format!(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT, price NUMERIC(10,2), updated TIMESTAMP, active BOOLEAN);
         INSERT INTO items SELECT i, 'item ' || i, i % 1000 + 0.99, TIMESTAMP '2024-01-01' + i * INTERVAL '1 second', i % 3 = 0
         FROM generate_series(1, {n}) i;"
    ))
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-bench-cdc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = ServerProcess::start(bin, &dir).unwrap();
    let c = connect(server.port()).await;
    let t = Instant::now();
    c.batch_execute(&format!(
        "CREATE TABLE items (id BIGINT, name STRING, price DECIMAL(10, 2), updated TIMESTAMP(3), active BOOLEAN, PRIMARY KEY (id) NOT ENFORCED) \
         WITH ('connector' = 'postgres-cdc', 'hostname' = '127.0.0.1', 'port' = '{}', 'username' = 'postgres', 'database-name' = 'postgres', \
         'table-name' = 'items', 'slot.name' = 'bench')",
        pgs.port
    ))
    .await
    .unwrap();
    loop {
        let described = c.simple_query("DESCRIBE CONNECTOR items").await.unwrap();
        let mut snap = 0u64;
        let mut state = String::new();
        for m in described {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                match r.get(0) {
                    Some("snapshot_rows") => snap = r.get(1).unwrap_or("0").parse().unwrap_or(0),
                    Some("state") => state = r.get(1).unwrap_or("").to_string(),
                    _ => {}
                }
            }
        }
        if snap >= n && state == "RUNNING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("cdc: initial snapshot of {n} rows in {secs:.2} s = {:.0} rows/s", n as f64 / secs);
    // Latency on a one-row table of its own, so the SELECT that looks for the change is cheap.
    pg.batch_execute("CREATE TABLE ticks (id BIGINT PRIMARY KEY, name TEXT); INSERT INTO ticks VALUES (1, 'start');").await.unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE ticks (id BIGINT, name STRING, PRIMARY KEY (id) NOT ENFORCED) WITH ('connector' = 'postgres-cdc', \
         'hostname' = '127.0.0.1', 'port' = '{}', 'username' = 'postgres', 'database-name' = 'postgres', 'table-name' = 'ticks', \
         'slot.name' = 'bench_ticks')",
        pgs.port
    ))
    .await
    .unwrap();
    while scalar(&c, "SELECT name FROM ticks WHERE id = 1").await != "start" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = Vec::new();
    for i in 0..200u64 {
        let name = format!("marker-{i}");
        let t = Instant::now();
        pg.execute("UPDATE ticks SET name = $1 WHERE id = 1", &[&name]).await.unwrap();
        while scalar(&c, "SELECT name FROM ticks WHERE id = 1").await != name {
            if t.elapsed() > Duration::from_secs(10) {
                panic!("update {i} not seen in 10 s");
            }
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "cdc: single-row UPDATE committed in Postgres -> visible to a SELECT over Sluice: p50 {:.1} ms, p99 {:.1} ms (200 updates)",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
    drop(server);
}

fn main() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_sluice"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        kafka_bench(&bin).await;
        cdc_bench(&bin).await;
    });
}
