//! The MongoDB sink: Flink's `'connector' = 'mongodb'` table and the MongoDB Kafka sink
//! connector (`com.mongodb.kafka.connect.MongoSinkConnector`), through the official `mongodb`
//! driver.
//!
//! A sink task tails a table's topic and writes its changelog to a collection with bulk writes:
//! - with a primary key, a row is upserted by `_id` (the key's value; a document of the key
//!   fields for a compound key) and a delete removes that `_id`; update-befores are skipped, as
//!   Flink's upsert sinks do, since the update-after replaces the document;
//! - without one, each row is inserted with the `_id` `"<partition>-<offset>"` of its place in
//!   the table's topic, as a replace-upsert; a retraction fails the task with a clear error.
//!
//! Both make the writes idempotent: a crash between a bulk write and storing the read position
//! replays the same writes, which change nothing, so no document is duplicated. While MongoDB is
//! unreachable the task waits and retries with backoff (state `RETRYING` with the error), and
//! nothing is skipped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{DeleteOneModel, ReplaceOneModel, WriteModel};
use mongodb::Namespace;
use serde_json::Value;
use sluice_catalog::{ChangeBatch, Op};

use crate::error::{ConnectorError, Result};
use crate::format::rows_to_json;
use crate::log::TopicLog;
use crate::options::OptionReader;
use crate::task::{Backoff, IngestTarget, TaskState, TaskStatus};

/// Options of a MongoDB sink.
#[derive(Clone, PartialEq)]
pub struct MongoOptions {
    /// `uri` / `connection.uri`, e.g. `mongodb://127.0.0.1:27017`; may hold a password, so it is
    /// never printed.
    pub uri: String,
    /// `database`.
    pub database: String,
    /// `collection`.
    pub collection: String,
    /// `sink.buffer-flush.max-rows` / `max.batch.size`: rows per bulk write (default 1000).
    pub max_batch: usize,
}

impl std::fmt::Debug for MongoOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoOptions")
            .field("uri", &"***")
            .field("database", &self.database)
            .field("collection", &self.collection)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

impl MongoOptions {
    /// Parses Flink's `mongodb` table options. Errors: a missing `uri`, `database` or `collection`.
    pub fn parse_flink(r: &mut OptionReader<'_>) -> Result<MongoOptions> {
        let uri = r.required("uri")?.to_string();
        let database = r.required("database")?.to_string();
        let collection = r.required("collection")?.to_string();
        let max_batch = r.parse_or("sink.buffer-flush.max-rows", 1000usize)?.max(1);
        for k in ["sink.buffer-flush.interval", "sink.max-retries", "sink.retry.interval", "sink.delivery-guarantee", "sink.parallelism"] {
            let _ = r.get(k);
        }
        Ok(MongoOptions { uri, database, collection, max_batch })
    }

    /// Parses the MongoDB Kafka sink connector's options; returns them with the `topics` (the
    /// tables it reads). Errors: a missing option.
    pub fn parse_kafka_connect(r: &mut OptionReader<'_>) -> Result<(MongoOptions, Vec<String>)> {
        let uri = r.required("connection.uri")?.to_string();
        let database = r.required("database")?.to_string();
        let topics: Vec<String> =
            r.required("topics")?.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
        let collection = r.get("collection").map(str::to_string).unwrap_or_else(|| topics.first().cloned().unwrap_or_default());
        let max_batch = r.parse_or("max.batch.size", 1000usize)?.max(1);
        for k in [
            "tasks.max",
            "key.converter",
            "value.converter",
            "key.converter.schemas.enable",
            "value.converter.schemas.enable",
            "document.id.strategy",
            "writemodel.strategy",
            "delete.on.null.values",
            "input.data.format",
            "input.key.format",
            "max.num.retries",
            "retries.defer.timeout",
        ] {
            let _ = r.get(k);
        }
        Ok((MongoOptions { uri, database, collection, max_batch }, topics))
    }
}

fn position_key(name: &str, partition: u32) -> Vec<u8> {
    format!("mongo-sink/{name}/{partition}").into_bytes()
}

/// A MongoDB sink task of one table.
pub struct MongoSink {
    /// Name the positions are kept under (the table, or the connector and table).
    pub name: String,
    /// The table whose topic is delivered.
    pub table: String,
    /// Options.
    pub options: MongoOptions,
    /// The table's primary key.
    pub primary_key: Vec<String>,
}

enum Step {
    Retry(String),
    Fatal(String),
}

impl MongoSink {
    /// Runs on the current thread (with its own tokio runtime) until `status.stop` is set.
    pub fn run(self, log: Arc<dyn TopicLog>, target: Arc<dyn IngestTarget>, status: Arc<TaskStatus>) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                status.set(TaskState::Failed, Some(e.to_string()));
                return;
            }
        };
        let mut backoff = Backoff::default();
        while !status.stopping() {
            match rt.block_on(self.deliver(&*log, &*target, &status, &mut backoff)) {
                Ok(()) => return,
                Err(Step::Fatal(e)) => {
                    tracing::error!(sink = %self.name, error = %e, "mongodb sink failed");
                    status.set(TaskState::Failed, Some(e));
                    return;
                }
                Err(Step::Retry(e)) => {
                    tracing::warn!(sink = %self.name, error = %e, "mongodb sink retrying");
                    status.set(TaskState::Retrying, Some(e));
                    if status.sleep(backoff.next_delay()) {
                        return;
                    }
                }
            }
        }
    }

    async fn deliver(&self, log: &dyn TopicLog, target: &dyn IngestTarget, status: &TaskStatus, backoff: &mut Backoff) -> std::result::Result<(), Step> {
        let fatal = |e: ConnectorError| Step::Fatal(e.to_string());
        let mut opts = mongodb::options::ClientOptions::parse(&self.options.uri)
            .await
            .map_err(|e| Step::Fatal(format!("mongodb uri: {}", e.kind)))?;
        opts.server_selection_timeout = Some(Duration::from_secs(5));
        opts.connect_timeout = Some(Duration::from_secs(5));
        let client = mongodb::Client::with_options(opts).map_err(|e| Step::Retry(format!("mongodb: {}", e.kind)))?;
        client
            .database(&self.options.database)
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| Step::Retry(format!("mongodb unreachable: {}", e.kind)))?;
        let ns = Namespace { db: self.options.database.clone(), coll: self.options.collection.clone() };
        let partitions = log.partitions(&self.table).map_err(fatal)?;
        let mut positions = Vec::new();
        for p in 0..partitions {
            let v = target.position(&position_key(&self.name, p)).map_err(fatal)?;
            positions.push(v.and_then(|v| v.try_into().ok().map(u64::from_be_bytes)).unwrap_or(0));
        }
        status.set(TaskState::Running, None);
        backoff.reset();
        let mut seen = log.version();
        while !status.stopping() {
            let mut any = false;
            for p in 0..partitions {
                let records = log.read(&self.table, p, positions[p as usize], self.options.max_batch).map_err(fatal)?;
                if records.is_empty() {
                    continue;
                }
                any = true;
                let mut models: Vec<WriteModel> = Vec::new();
                let mut next = positions[p as usize];
                for r in &records {
                    let change = ChangeBatch::from_topic_batch(&r.batch).map_err(|e| Step::Fatal(e.to_string()))?;
                    self.models(&change, &ns, p, r.offset, &mut models)?;
                    next = r.offset + change.num_rows() as u64;
                }
                let n = models.len();
                if !models.is_empty() {
                    client.bulk_write(models).await.map_err(|e| Step::Retry(format!("mongodb bulk write: {}", e.kind)))?;
                }
                sluice_catalog::failpoint::check("mongo::after_bulk_write").map_err(Step::Fatal)?;
                target.put_position(&position_key(&self.name, p), &next.to_be_bytes()).map_err(fatal)?;
                positions[p as usize] = next;
                status.rows.fetch_add(n as u64, Ordering::Relaxed);
                *status.position.lock().unwrap() = format!("{}/{p}@{next}", self.table);
            }
            if !any {
                // This runtime runs only this task, so blocking it while waiting is fine.
                log.wait(seen, Duration::from_millis(100));
                seen = log.version();
            }
        }
        Ok(())
    }

    fn models(&self, change: &ChangeBatch, ns: &Namespace, partition: u32, offset: u64, out: &mut Vec<WriteModel>) -> std::result::Result<(), Step> {
        let rows = rows_to_json(&change.data).map_err(|e| Step::Fatal(e.to_string()))?;
        for (i, (row, op)) in rows.into_iter().zip(&change.ops).enumerate() {
            let id: Bson = if self.primary_key.is_empty() {
                if !op.is_insertion() {
                    return Err(Step::Fatal(format!(
                        "table '{}' has no primary key but receives {} changes; give it a PRIMARY KEY to upsert into MongoDB",
                        self.table,
                        if *op == Op::Delete { "delete" } else { "update" }
                    )));
                }
                Bson::String(format!("{partition}-{}", offset + i as u64))
            } else if self.primary_key.len() == 1 {
                to_bson(row.get(&self.primary_key[0]).cloned().unwrap_or(Value::Null))?
            } else {
                let mut d = Document::new();
                for k in &self.primary_key {
                    d.insert(k.clone(), to_bson(row.get(k).cloned().unwrap_or(Value::Null))?);
                }
                Bson::Document(d)
            };
            match op {
                Op::UpdateBefore => {}
                Op::Delete => out.push(DeleteOneModel::builder().namespace(ns.clone()).filter(doc! {"_id": id}).build().into()),
                Op::Insert | Op::UpdateAfter => {
                    let mut d = match to_bson(Value::Object(row))? {
                        Bson::Document(d) => d,
                        _ => Document::new(),
                    };
                    d.insert("_id", id.clone());
                    out.push(
                        ReplaceOneModel::builder()
                            .namespace(ns.clone())
                            .filter(doc! {"_id": id})
                            .replacement(d)
                            .upsert(true)
                            .build()
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }
}

fn to_bson(v: Value) -> std::result::Result<Bson, Step> {
    mongodb::bson::to_bson(&v).map_err(|e| Step::Fatal(format!("mongodb document: {e}")))
}
