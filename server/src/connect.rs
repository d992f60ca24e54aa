//! Connector tasks and their SQL: tables with an outside connector (`kafka`, `upsert-kafka`,
//! `postgres-cdc`, `mongodb`) and ksqlDB-style connectors (`CREATE SOURCE CONNECTOR`,
//! `CREATE SINK CONNECTOR`, `SHOW CONNECTORS`, `DESCRIBE CONNECTOR`, `DROP CONNECTOR`).
//!
//! Every task runs on its own thread (librdkafka and RocksDB calls block), so a slow or down
//! outside system never holds up another task, a job, or a client session.
//!
//! A table's role follows Flink: a Kafka table is a source (its topic is consumed into the
//! table) until a persistent query writes into it; from then on it is a sink (what the query
//! writes is produced to Kafka). A `postgres-cdc` table is a source, a `mongodb` table a sink.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use rocksdb::WriteBatch;
use sluice_catalog::store::CF_META;
use sluice_catalog::{ChangeBatch, ConnectorDef, JobState, TableDef};
use sluice_connectors::cdc::{discover, slot_created_key, sql_type_of, CdcSource, PostgresCdcOptions, Route};
use sluice_connectors::kafka::{ErrorMode, KafkaOptions, KafkaSink, KafkaSource};
use sluice_connectors::mongo::{MongoOptions, MongoSink};
use sluice_connectors::options::{External, OptionReader, TableConnector};
use sluice_connectors::task::{Backoff, IngestTarget, TaskState, TaskStatus};
use sluice_connectors::ConnectorError;

use crate::engine::{Engine, Output};
use crate::errors::{SqlError, SqlResult};

/// Debezium's Postgres connector class.
pub const POSTGRES_CONNECTOR: &str = "io.debezium.connector.postgresql.PostgresConnector";
/// The MongoDB Kafka sink connector class.
pub const MONGO_SINK_CONNECTOR: &str = "com.mongodb.kafka.connect.MongoSinkConnector";

/// One running task.
struct Task {
    owner: String,
    kind: &'static str,
    class: String,
    table: String,
    status: Arc<TaskStatus>,
    handle: Option<JoinHandle<()>>,
}

/// The running connector tasks, by key (`table:<name>` for table connectors,
/// `<connector>/<table>` for connectors).
#[derive(Default)]
pub struct ConnectorRuntime {
    tasks: Mutex<BTreeMap<String, Task>>,
}

impl ConnectorRuntime {
    fn spawn(&self, key: String, owner: &str, kind: &'static str, class: &str, table: &str, f: impl FnOnce(Arc<TaskStatus>) + Send + 'static) {
        self.stop(&key);
        let status = TaskStatus::new();
        let s = status.clone();
        let handle = std::thread::Builder::new()
            .name(format!("conn-{}", key.chars().take(10).collect::<String>()))
            .spawn(move || f(s))
            .expect("spawn connector thread");
        self.tasks.lock().unwrap().insert(
            key,
            Task { owner: owner.to_string(), kind, class: class.to_string(), table: table.to_string(), status, handle: Some(handle) },
        );
    }

    /// Stops one task and waits for it.
    pub fn stop(&self, key: &str) {
        let task = self.tasks.lock().unwrap().remove(key);
        if let Some(mut t) = task {
            t.status.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(h) = t.handle.take() {
                let _ = h.join();
            }
        }
    }

    /// Stops every task of `owner` (a connector or table name).
    pub fn stop_owner(&self, owner: &str) {
        let keys: Vec<String> =
            self.tasks.lock().unwrap().iter().filter(|(_, t)| t.owner == owner).map(|(k, _)| k.clone()).collect();
        for k in keys {
            self.stop(&k);
        }
    }

    /// Stops every task.
    pub fn stop_all(&self) {
        let keys: Vec<String> = self.tasks.lock().unwrap().keys().cloned().collect();
        for k in keys {
            self.stop(&k);
        }
    }

    fn kind_of(&self, key: &str) -> Option<&'static str> {
        self.tasks.lock().unwrap().get(key).map(|t| t.kind)
    }

    fn list(&self) -> Vec<(String, String, &'static str, String, String, Arc<TaskStatus>)> {
        self.tasks
            .lock()
            .unwrap()
            .iter()
            .map(|(k, t)| (k.clone(), t.owner.clone(), t.kind, t.class.clone(), t.table.clone(), t.status.clone()))
            .collect()
    }
}

/// A table as a source task's [`IngestTarget`].
pub struct TableIngest {
    engine: Weak<Engine>,
    table: String,
    dead_letters: Option<String>,
}

fn write_err(e: SqlError) -> ConnectorError {
    ConnectorError::Write(e.message)
}

impl IngestTarget for TableIngest {
    fn append(&self, rows: Vec<ChangeBatch>, dead_letters: Option<RecordBatch>, positions: Vec<(Vec<u8>, Vec<u8>)>) -> sluice_connectors::Result<()> {
        let engine = self.engine.upgrade().ok_or_else(|| ConnectorError::Write("server shutting down".into()))?;
        if let (Some(d), Some(t)) = (dead_letters, &self.dead_letters) {
            let entry = engine.table(t).map_err(write_err)?;
            engine.append_with(&entry, vec![ChangeBatch::inserts(d)], &[]).map_err(write_err)?;
        }
        let entry = engine.table(&self.table).map_err(write_err)?;
        engine.append_with(&entry, rows, &positions).map_err(write_err)?;
        Ok(())
    }

    fn position(&self, key: &[u8]) -> sluice_connectors::Result<Option<Vec<u8>>> {
        let engine = self.engine.upgrade().ok_or_else(|| ConnectorError::Write("server shutting down".into()))?;
        Ok(engine.store.get_meta(key)?)
    }

    fn put_position(&self, key: &[u8], value: &[u8]) -> sluice_connectors::Result<()> {
        let engine = self.engine.upgrade().ok_or_else(|| ConnectorError::Write("server shutting down".into()))?;
        Ok(engine.store.put_meta(key, value)?)
    }

    /// From the table's materialized state, brought up to everything appended so far (appends
    /// are visible to readers once they return).
    fn lookup(&self, rows: &RecordBatch) -> sluice_connectors::Result<(RecordBatch, Vec<bool>)> {
        let engine = self.engine.upgrade().ok_or_else(|| ConnectorError::Write("server shutting down".into()))?;
        let entry = engine.table(&self.table).map_err(write_err)?;
        let mut m = entry.materialized.lock().unwrap();
        let m = m.as_mut().ok_or_else(|| ConnectorError::Write(format!("table \"{}\" keeps no rows", self.table)))?;
        let exec = |e: sluice_executor::ExecError| ConnectorError::Write(format!("table \"{}\": {e}", self.table));
        m.catch_up(engine.log.as_ref()).map_err(exec)?;
        m.lookup(rows)
            .map_err(exec)?
            .ok_or_else(|| ConnectorError::Write(format!("table \"{}\" has no primary key to look its rows up by", self.table)))
    }

    /// The table's materialized rows, brought up to everything appended so far.
    fn current_rows(&self) -> sluice_connectors::Result<RecordBatch> {
        let engine = self.engine.upgrade().ok_or_else(|| ConnectorError::Write("server shutting down".into()))?;
        let entry = engine.table(&self.table).map_err(write_err)?;
        let mut m = entry.materialized.lock().unwrap();
        let m = m.as_mut().ok_or_else(|| ConnectorError::Write(format!("table \"{}\" keeps no rows", self.table)))?;
        let exec = |e: sluice_executor::ExecError| ConnectorError::Write(format!("table \"{}\": {e}", self.table));
        m.catch_up(engine.log.as_ref()).map_err(exec)?;
        m.snapshot().map_err(exec)
    }
}

/// The name of a table's dead-letter table.
pub fn dead_letter_table(table: &str) -> String {
    format!("{table}_dlq")
}

/// Meta key marking a Kafka table as a sink for good.
fn sink_role_key(table: &str) -> Vec<u8> {
    format!("kafka-role/{table}").into_bytes()
}

fn table_key(name: &str) -> String {
    format!("table:{name}")
}

impl Engine {
    fn ingest(self: &Arc<Self>, table: &str, dead_letters: Option<String>) -> Arc<dyn IngestTarget> {
        Arc::new(TableIngest { engine: Arc::downgrade(self), table: table.to_string(), dead_letters })
    }

    /// True when a running persistent query writes into `table`.
    pub(crate) fn has_writer(&self, table: &str) -> bool {
        self.jobs.read().unwrap().values().any(|j| j.sink == table && j.state == JobState::Running)
    }

    /// True when `table` is fed by a source connector, so clients may not write into it.
    pub(crate) fn is_fed(&self, table: &str) -> bool {
        self.connectors.kind_of(&table_key(table)) == Some("source")
            || self.connector_defs.read().unwrap().values().any(|c| c.source && c.tables.iter().any(|t| t == table))
    }

    /// Starts the task of a table with an outside connector (nothing for other tables).
    ///
    /// Errors: a Kafka table with no bootstrap servers.
    pub(crate) fn start_table_connector(self: &Arc<Self>, def: &TableDef, connector: &TableConnector) -> SqlResult<()> {
        let TableConnector::Topic { external: Some(external), .. } = connector else { return Ok(()) };
        let name = def.name.clone();
        let schema = def.physical_schema()?;
        let pk = def.primary_key.clone();
        match external {
            External::Kafka(k) => {
                let bootstrap = k.bootstrap(self.kafka_bootstrap.as_deref()).map_err(SqlError::from)?;
                if self.has_writer(&name) || self.store.get_meta(&sink_role_key(&name))?.is_some() {
                    let sink = KafkaSink { table: name.clone(), options: k.clone(), bootstrap, primary_key: pk };
                    let (log, target) = (self.log.clone(), self.ingest(&name, None));
                    self.connectors.spawn(table_key(&name), &name, "sink", "kafka", &name, move |s| sink.run(log, target, s));
                } else {
                    let dlq = (k.error_mode == ErrorMode::Log).then(|| dead_letter_table(&name));
                    let source = KafkaSource { table: name.clone(), options: k.clone(), bootstrap, schema, primary_key: pk };
                    let target = self.ingest(&name, dlq);
                    self.connectors.spawn(table_key(&name), &name, "source", "kafka", &name, move |s| source.run(target, s));
                }
            }
            External::PostgresCdc(o) => {
                let o = o.clone();
                let target = self.ingest(&name, None);
                let table = name.clone();
                self.connectors.spawn(table_key(&name), &name, "source", "postgres-cdc", &name, move |s| {
                    capture(table, o, Vec::new(), CaptureTarget::Table { target, schema, key: pk }, s)
                });
            }
            External::MongoDb(m) => {
                let sink = MongoSink { name: name.clone(), table: name.clone(), options: m.clone(), primary_key: pk };
                let (log, target) = (self.log.clone(), self.ingest(&name, None));
                self.connectors.spawn(table_key(&name), &name, "sink", "mongodb", &name, move |s| sink.run(log, target, s));
            }
        }
        Ok(())
    }

    /// Called before a persistent query into `table` starts: a Kafka table that was a source
    /// becomes a sink. Errors (0A000): its topic already holds consumed rows.
    pub(crate) fn prepare_sink(&self, table: &str) -> SqlResult<()> {
        let entry = self.table(table)?;
        let is_kafka = matches!(&entry.connector, TableConnector::Topic { external: Some(External::Kafka(_)), .. });
        if self.connectors.kind_of(&table_key(table)) == Some("source") {
            if !is_kafka {
                return Err(SqlError::unsupported(format!(
                    "table \"{table}\" is fed by its source connector; a persistent query cannot write into it"
                )));
            }
            for p in 0..self.log.partitions(table)? {
                if self.log.end_offset(table, p)? > 0 {
                    return Err(SqlError::unsupported(format!(
                        "Kafka table \"{table}\" has already consumed rows from its topic, so it is a source; create another table over the topic to write into it"
                    )));
                }
            }
            self.connectors.stop(&table_key(table));
        }
        if is_kafka {
            // Once a sink, always a sink: a stopped job must not turn the table back into a
            // source that would consume its own output.
            self.store.put_meta(&sink_role_key(table), b"sink")?;
        }
        Ok(())
    }

    /// Forgets the stored positions and flags of a dropped table or connector `name`, so that
    /// one created again with the same name starts afresh.
    pub(crate) fn forget_positions(&self, name: &str) -> SqlResult<()> {
        let mut b = WriteBatch::default();
        for prefix in ["kafka-source", "kafka-sink", "mongo-sink", "cdc"] {
            self.store.delete_prefix(&mut b, CF_META, format!("{prefix}/{name}/").as_bytes())?;
        }
        b.delete_cf(self.store.cf(CF_META), sink_role_key(name));
        self.store.write(b)?;
        Ok(())
    }

    /// Starts the tasks of a stored connector.
    pub(crate) fn start_connector(self: &Arc<Self>, def: &ConnectorDef) -> SqlResult<()> {
        let mut r = OptionReader::new(&def.options, &format!("connector class '{}'", def.class()));
        match def.class() {
            POSTGRES_CONNECTOR => {
                let (o, transforms) = PostgresCdcOptions::parse_debezium(&mut r).map_err(SqlError::from)?;
                let mut targets = BTreeMap::new();
                for t in &def.tables {
                    let entry = self.table(t)?;
                    targets.insert(t.clone(), (self.ingest(t, None), entry.def.physical_schema()?, entry.def.primary_key.clone()));
                }
                let name = def.name.clone();
                self.connectors.spawn(def.name.clone(), &def.name, "source", POSTGRES_CONNECTOR, &def.tables.join(", "), move |s| {
                    capture(name, o, transforms, CaptureTarget::Tables(targets), s)
                });
                // With a Kafka cluster configured, the change events also go to Kafka topics
                // named as Debezium names them, in Debezium's envelope.
                if let Some(bootstrap) = &self.kafka_bootstrap {
                    for t in &def.tables {
                        let entry = self.table(t)?;
                        let sink = KafkaSink {
                            table: t.clone(),
                            options: KafkaOptions::debezium_mirror(t, &entry.def.primary_key),
                            bootstrap: bootstrap.clone(),
                            primary_key: entry.def.primary_key.clone(),
                        };
                        let (log, target) = (self.log.clone(), self.ingest(t, None));
                        self.connectors.spawn(format!("{}/{t}/kafka", def.name), &def.name, "source", POSTGRES_CONNECTOR, t, move |s| {
                            sink.run(log, target, s)
                        });
                    }
                }
            }
            MONGO_SINK_CONNECTOR => {
                let (m, topics) = MongoOptions::parse_kafka_connect(&mut r).map_err(SqlError::from)?;
                for t in topics {
                    let entry = self.table(&t)?;
                    let sink = MongoSink {
                        name: format!("{}/{t}", def.name),
                        table: t.clone(),
                        options: m.clone(),
                        primary_key: entry.def.primary_key.clone(),
                    };
                    let (log, target) = (self.log.clone(), self.ingest(&t, None));
                    self.connectors.spawn(format!("{}/{t}", def.name), &def.name, "sink", MONGO_SINK_CONNECTOR, &t, move |s| {
                        sink.run(log, target, s)
                    });
                }
            }
            other => return Err(unsupported_class(other)),
        }
        Ok(())
    }

    /// `CREATE SOURCE|SINK CONNECTOR`.
    pub(crate) async fn create_connector(
        self: &Arc<Self>,
        source: bool,
        name: String,
        if_not_exists: bool,
        options: BTreeMap<String, String>,
    ) -> SqlResult<Output> {
        let _g = self.ddl.lock().await;
        let tag = if source { "CREATE SOURCE CONNECTOR" } else { "CREATE SINK CONNECTOR" };
        if self.connector_defs.read().unwrap().contains_key(&name) {
            if if_not_exists {
                return Ok(Output::Command { tag: tag.into(), notice: None });
            }
            return Err(SqlError::new("42710", format!("connector \"{name}\" already exists")));
        }
        let class = options.get("connector.class").cloned().unwrap_or_default();
        let mut def = ConnectorDef { name: name.clone(), source, options: options.clone(), tables: Vec::new(), seq: self.store.next_counter("connector")? };
        let mut notice = None;
        match (class.as_str(), source) {
            (POSTGRES_CONNECTOR, true) => {
                let mut r = OptionReader::new(&options, &format!("connector class '{class}'"));
                let (o, transforms) = PostgresCdcOptions::parse_debezium(&mut r).map_err(SqlError::from)?;
                r.finish().map_err(SqlError::from)?;
                let tables = discover(&o).await.map_err(SqlError::from)?;
                let prefix = o.topic_prefix.clone().unwrap_or_default();
                let mut created = Vec::new();
                for (shape, _) in Route::shapes(&tables, &prefix, &transforms).map_err(SqlError::from)? {
                    if !self.tables.read().unwrap().contains_key(&shape.name) {
                        let sql = create_table_sql(&shape.name, &shape.schema, &shape.key);
                        let ct = match sluice_planner::parse_statement(&sql)? {
                            sluice_planner::SluiceStatement::CreateTable(ct) => ct,
                            _ => return Err(SqlError::new("XX000", "internal: generated CREATE TABLE")),
                        };
                        self.create_table_locked(ct.def).await?;
                        created.push(shape.name.clone());
                    }
                    def.tables.push(shape.name);
                }
                notice = Some(format!(
                    "capturing {} table(s) into {}{}",
                    def.tables.len(),
                    def.tables.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", "),
                    if created.is_empty() { String::new() } else { format!(" (created {})", created.len()) }
                ));
            }
            (MONGO_SINK_CONNECTOR, false) => {
                let mut r = OptionReader::new(&options, &format!("connector class '{class}'"));
                let (_, topics) = MongoOptions::parse_kafka_connect(&mut r).map_err(SqlError::from)?;
                r.finish().map_err(SqlError::from)?;
                for t in &topics {
                    self.table(t)?;
                }
                def.tables = topics;
            }
            (POSTGRES_CONNECTOR, false) | (MONGO_SINK_CONNECTOR, true) => {
                return Err(SqlError::new(
                    "22023",
                    format!("connector class '{class}' is a {} connector", if source { "sink" } else { "source" }),
                ))
            }
            (other, _) => return Err(unsupported_class(other)),
        }
        self.store.put_connector(&def)?;
        self.connector_defs.write().unwrap().insert(name.clone(), def.clone());
        self.start_connector(&def)?;
        tracing::info!(connector = %name, class = %class, "connector created");
        Ok(Output::Command { tag: tag.into(), notice })
    }

    /// `DROP CONNECTOR [IF EXISTS] name`: stops its tasks; a Postgres source drops its
    /// replication slot only if it created it, and says which it did. Tables stay, as Kafka
    /// Connect leaves topics.
    pub(crate) async fn drop_connector(self: &Arc<Self>, name: &str, if_exists: bool) -> SqlResult<Output> {
        let _g = self.ddl.lock().await;
        let Some(def) = self.connector_defs.read().unwrap().get(name).cloned() else {
            if if_exists {
                return Ok(Output::Command { tag: "DROP CONNECTOR".into(), notice: None });
            }
            return Err(SqlError::new("42704", format!("connector \"{name}\" does not exist")));
        };
        let rt = self.connectors_handle();
        let n = name.to_string();
        tokio::task::spawn_blocking(move || rt.stop_owner(&n)).await.map_err(|e| SqlError::new("XX000", e.to_string()))?;
        let mut notice = None;
        if def.class() == POSTGRES_CONNECTOR {
            let mut r = OptionReader::new(&def.options, "connector");
            let (o, _) = PostgresCdcOptions::parse_debezium(&mut r).map_err(SqlError::from)?;
            notice = Some(self.drop_slot(name, &o).await);
        }
        self.store.delete_connector(name)?;
        self.forget_positions(name)?;
        self.connector_defs.write().unwrap().remove(name);
        Ok(Output::Command { tag: "DROP CONNECTOR".into(), notice })
    }

    /// Drops a connector's replication slot if it created it; returns what was done.
    pub(crate) async fn drop_slot(&self, owner: &str, o: &PostgresCdcOptions) -> String {
        if self.store.get_meta(&slot_created_key(owner)).ok().flatten().is_none() {
            return format!("replication slot '{}' was not created by Sluice and was kept", o.slot);
        }
        let mut result = Err(ConnectorError::External(String::new()));
        // The walsender of the stopped task may take a moment to release the slot.
        for _ in 0..25 {
            result = async {
                let client = o.connect().await?;
                client
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                        &[&o.slot],
                    )
                    .await
                    .map_err(|e| ConnectorError::External(o.scrub(&format!("postgres: {e}"))))
            }
            .await;
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        match result {
            Ok(_) => {
                let mut b = WriteBatch::default();
                b.delete_cf(self.store.cf(CF_META), slot_created_key(owner));
                let _ = self.store.write(b);
                format!("dropped replication slot '{}', which Sluice created", o.slot)
            }
            Err(e) => format!("could not drop replication slot '{}': {e}", o.slot),
        }
    }

    fn connectors_handle(&self) -> Arc<ConnectorRuntime> {
        self.connectors.clone()
    }

    /// `SHOW CONNECTORS`: one row per connector and per table with an outside connector, with
    /// ksqlDB's columns (name, type, class, state) and what it reads or writes.
    pub(crate) fn show_connectors(&self) -> SqlResult<Output> {
        let mut rows: BTreeMap<String, [String; 6]> = BTreeMap::new();
        let defs = self.connector_defs.read().unwrap().clone();
        for d in defs.values() {
            rows.insert(
                d.name.clone(),
                [d.name.clone(), if d.source { "SOURCE" } else { "SINK" }.into(), d.class().into(), "STOPPED".into(), d.tables.join(", "), "0".into()],
            );
        }
        for (_, owner, kind, class, table, status) in self.connectors.list() {
            let (state, _) = status.get();
            let n = status.rows.load(std::sync::atomic::Ordering::Relaxed);
            let row = rows.entry(owner.clone()).or_insert_with(|| {
                [owner.clone(), kind.to_uppercase(), class.clone(), String::new(), table.clone(), "0".into()]
            });
            // A connector with several tasks shows its worst state and the sum of rows.
            if row[3].is_empty() || row[3] == "STOPPED" || state != TaskState::Running {
                row[3] = state.as_str().into();
            }
            row[5] = (row[5].parse::<u64>().unwrap_or(0) + n).to_string();
        }
        let cols = ["connector_name", "type", "class", "state", "tables", "rows"];
        let arrays: Vec<ArrayRef> = (0..cols.len())
            .map(|i| Arc::new(StringArray::from(rows.values().map(|r| r[i].clone()).collect::<Vec<_>>())) as ArrayRef)
            .collect();
        crate::engine::rows_output(crate::engine::text_schema(&cols), arrays)
    }

    /// `DESCRIBE CONNECTOR name`: (property, value) rows: class, type, state, error, tables,
    /// rows, snapshot progress, last position (LSN or offsets), lag, dead letters, and the
    /// configuration with secrets hidden.
    pub(crate) fn describe_connector(&self, name: &str) -> SqlResult<Output> {
        let def = self.connector_defs.read().unwrap().get(name).cloned();
        let tasks: Vec<_> = self.connectors.list().into_iter().filter(|t| t.1 == name).collect();
        let mut props: Vec<(String, String)> = Vec::new();
        match (&def, tasks.first()) {
            (Some(d), _) => {
                props.push(("name".into(), d.name.clone()));
                props.push(("class".into(), d.class().into()));
                props.push(("type".into(), if d.source { "SOURCE" } else { "SINK" }.into()));
                props.push(("tables".into(), d.tables.join(", ")));
            }
            (None, Some(t)) => {
                props.push(("name".into(), t.1.clone()));
                props.push(("class".into(), t.3.clone()));
                props.push(("type".into(), t.2.to_uppercase()));
                props.push(("tables".into(), t.4.clone()));
            }
            (None, None) => return Err(SqlError::new("42704", format!("connector \"{name}\" does not exist"))),
        }
        for (key, _, _, _, table, s) in &tasks {
            let (state, error) = s.get();
            let p = |k: &str| if tasks.len() > 1 { format!("{table}.{k}") } else { k.to_string() };
            let _ = key;
            props.push((p("state"), state.as_str().into()));
            props.push((p("error"), error.unwrap_or_default()));
            props.push((p("rows"), s.rows.load(std::sync::atomic::Ordering::Relaxed).to_string()));
            props.push((p("snapshot_rows"), s.snapshot_rows.load(std::sync::atomic::Ordering::Relaxed).to_string()));
            props.push((p("position"), s.position.lock().unwrap().clone()));
            props.push((p("lag_ms"), s.lag_ms.load(std::sync::atomic::Ordering::Relaxed).to_string()));
            props.push((p("dead_letters"), s.dead_letters.load(std::sync::atomic::Ordering::Relaxed).to_string()));
        }
        if tasks.is_empty() {
            props.push(("state".into(), "STOPPED".into()));
        }
        let options = match &def {
            Some(d) => d.redacted_options(),
            None => self.table(name).map(|e| sluice_catalog::redact_options(&e.def.options)).unwrap_or_default(),
        };
        for (k, v) in options {
            props.push((format!("config.{k}"), v));
        }
        let schema = crate::engine::text_schema(&["property", "value"]);
        let k: StringArray = props.iter().map(|(k, _)| Some(k.as_str())).collect();
        let v: StringArray = props.iter().map(|(_, v)| Some(v.as_str())).collect();
        crate::engine::rows_output(schema, vec![Arc::new(k), Arc::new(v)])
    }
}

fn unsupported_class(class: &str) -> SqlError {
    SqlError::unsupported(format!(
        "connector class '{class}' (supported: {POSTGRES_CONNECTOR} as a source, {MONGO_SINK_CONNECTOR} as a sink)"
    ))
}

/// `CREATE TABLE` text for a captured table's shape.
fn create_table_sql(name: &str, schema: &arrow::datatypes::Schema, key: &[String]) -> String {
    let q = |s: &str| format!("`{}`", s.replace('`', "``"));
    let mut cols: Vec<String> = schema.fields().iter().map(|f| format!("{} {}", q(f.name()), sql_type_of(f.data_type()))).collect();
    if !key.is_empty() {
        cols.push(format!("PRIMARY KEY ({}) NOT ENFORCED", key.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ")));
    }
    format!("CREATE TABLE {} ({})", q(name), cols.join(", "))
}

/// Where a capture task writes.
enum CaptureTarget {
    /// A Flink CDC table: the one captured table goes into it (its physical schema and key).
    Table { target: Arc<dyn IngestTarget>, schema: arrow::datatypes::SchemaRef, key: Vec<String> },
    /// A Debezium-style connector: each captured table into the table named by its shape.
    Tables(BTreeMap<String, (Arc<dyn IngestTarget>, arrow::datatypes::SchemaRef, Vec<String>)>),
}

/// A capture task: discovers the captured tables (retrying while Postgres is down), builds the
/// routes, and runs the capture until stopped.
fn capture(name: String, o: PostgresCdcOptions, transforms: Vec<sluice_connectors::smt::Transform>, target: CaptureTarget, status: Arc<TaskStatus>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            status.set(TaskState::Failed, Some(e.to_string()));
            return;
        }
    };
    let mut backoff = Backoff::default();
    let tables = loop {
        match rt.block_on(discover(&o)) {
            Ok(t) => break t,
            Err(ConnectorError::External(e)) => {
                status.set(TaskState::Retrying, Some(o.scrub(&e)));
                if status.sleep(backoff.next_delay()) {
                    return;
                }
            }
            Err(e) => {
                status.set(TaskState::Failed, Some(o.scrub(&e.to_string())));
                return;
            }
        }
    };
    drop(rt);
    let prefix = o.topic_prefix.clone().unwrap_or_default();
    let shapes = match Route::shapes(&tables, &prefix, &transforms) {
        Ok(s) => s,
        Err(e) => {
            status.set(TaskState::Failed, Some(e.to_string()));
            return;
        }
    };
    let mut routes = Vec::new();
    for (t, (shape, steps)) in tables.into_iter().zip(shapes) {
        let (ingest, schema, key) = match &target {
            CaptureTarget::Table { target, schema, key } => (target.clone(), schema.clone(), key.clone()),
            CaptureTarget::Tables(m) => match m.get(&shape.name) {
                Some((t, s, k)) => (t.clone(), s.clone(), k.clone()),
                // A table created in Postgres after the connector: not captured until it is re-created.
                None => continue,
            },
        };
        routes.push(Route {
            position_key: format!("cdc/{name}/lsn/{}", shape.name).into_bytes(),
            source: t,
            transforms: steps,
            target_schema: schema,
            target_key: key,
            target: ingest,
        });
    }
    CdcSource { name, options: o, routes }.run(status)
}
