//! Kafka helpers for the connector tests, through rdkafka: create a topic, produce keyed
//! messages, and read a topic back from the beginning up to a known end.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::services::Service;

/// How long [`consume_records`] reads before it gives up.
const READ_DEADLINE: Duration = Duration::from_secs(60);

/// Creates `topic` with `partitions` partitions (replication factor 1); panics on any error.
pub async fn create_topic(k: &Service, topic: &str, partitions: i32) {
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

/// Produces `(key, value)` messages to `topic` with an idempotent producer, waiting for each
/// acknowledgement in turn (so they land in order).
pub async fn produce(k: &Service, topic: &str, messages: &[(String, String)]) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", k.addr())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (key, value) in messages {
        p.send(FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(10)).await.expect("delivered");
    }
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its partition.
    pub partition: i32,
    /// Its key, if it has one.
    pub key: Option<Vec<u8>>,
    /// Its value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Every committed message of `topic`, read from the beginning with a `read_committed`
/// consumer, in each partition's order (partitions interleaved).
///
/// The end is a position, not a silence: each partition's high watermark when the read
/// begins, which for a `read_committed` consumer librdkafka reports as the last stable offset
/// (the end of the committed transactions). A partition is read when the consumer's position
/// reaches it; the position moves past transaction markers too, so it does reach it.
///
/// `expected`: the number of messages (tombstones included) the caller knows the topic must
/// hold, when it knows it; then reading also goes on until that many arrived. It is needed for
/// a sink still delivering when the read begins, and on tansu, which reports a high watermark
/// of 1 whatever the partition holds. Reading stops at the later of the two ends, so a message
/// written twice before the watermark is still seen.
///
/// Panics after 60 s, with the watermarks, the positions and what was read.
pub fn consume_records(k: &Service, topic: &str, expected: Option<usize>) -> Vec<Record> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", k.addr())
        .set("group.id", format!("check-{}", std::process::id()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).expect("metadata");
    let parts = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    assert!(parts > 0, "topic {topic} has no partitions: {:?}", md.topics().first().and_then(|t| t.error()));
    let ends: Vec<i64> = (0..parts)
        .map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}")).1)
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    // The next offset the consumer reads in each partition (0 until it has fetched from it).
    let positions = || -> Vec<i64> {
        let tpl = c.position().expect("consumer position");
        (0..parts)
            .map(|p| match tpl.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            })
            .collect()
    };
    let mut out = Vec::new();
    let mut last_error = None;
    let deadline = Instant::now() + READ_DEADLINE;
    loop {
        let at = positions();
        let at_end = at.iter().zip(&ends).all(|(at, end)| at >= end);
        if at_end && expected.is_none_or(|n| out.len() >= n) {
            return out;
        }
        if Instant::now() > deadline {
            let values: Vec<String> = out
                .iter()
                .map(|r: &Record| r.value.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_else(|| "<tombstone>".into()))
                .collect();
            panic!(
                "reading topic {topic}: after {READ_DEADLINE:?} the positions are {at:?}, the watermarks {ends:?}; \
                 {} messages read, {expected:?} expected (last error {last_error:?}): {values:?}",
                out.len()
            );
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(Record {
                partition: m.partition(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
            }),
            Some(Err(e)) => last_error = Some(e),
            None => {}
        }
    }
}

/// The values of [`consume_records`] as text, tombstones left out.
pub fn consume_all(k: &Service, topic: &str, expected: Option<usize>) -> Vec<String> {
    consume_records(k, topic, expected)
        .into_iter()
        .filter_map(|r| r.value.map(|v| String::from_utf8_lossy(&v).into_owned()))
        .collect()
}
