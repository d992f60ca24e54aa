//! A stalled Kafka broker must not stall sessions that do not need it. On the Kafka topic
//! backend an `INSERT` waits until Kafka acknowledges its rows (retrying with backoff, for a
//! bounded time), and `CREATE TABLE` waits for Kafka to create the table's topic; while they
//! wait, the daemon's few async worker threads must go on serving every other session.
//!
//! The broker is frozen with SIGSTOP (its sockets stay open and accept bytes, so clients wait
//! for answers instead of seeing refused connections), writers start, and meanwhile many
//! sessions connect and read tables whose rows the daemon already holds (a table read before
//! the stall, a bounded `datagen` table), each within a generous deadline: a liveness bound,
//! not a speed assertion. Then the broker continues, and every stalled statement has ended:
//! a success, or a connection-class SQLSTATE (08xxx) that says what became of its rows.
//!
//! Two lengths of freeze: 40 s, longer than one attempt's flush timeout (30 s) but shorter
//! than an append's retry budget (60 s), so the retry path runs and every INSERT succeeds;
//! and 75 s, longer than the budget, so the first INSERT gives up. Its rows are committed to
//! the write-ahead log by then, and its error says so: they are delivered by the next append.
//! An INSERT queued behind it makes one attempt to deliver them and, while Kafka still does
//! not answer, fails having written nothing, and says so. Either way `hot` ends up holding
//! exactly the rows the outcomes promise, each once: nothing lost, nothing added.

mod common;

use std::time::{Duration, Instant};

use common::services;
use common::{connect, exec, rows, temp_dir};
use sluice_sqllogictest::ServerProcess;
use tokio::task::JoinHandle;

/// Writers (INSERTs) started while the broker is frozen.
const WRITERS: usize = 6;
/// `CREATE TABLE`s started while the broker is frozen.
const CREATORS: usize = 2;
/// Reading sessions run while the broker is frozen, all at once.
const READERS: usize = 24;
/// Rows per INSERT.
const ROWS_PER_INSERT: usize = 20;
/// How long each reading session may take, connecting included.
const READ_DEADLINE: Duration = Duration::from_secs(20);

/// Sends `signal` to the broker's process group (the broker and anything it started).
fn signal_broker(k: &services::Service, signal: libc::c_int) {
    let pid = k.pid().expect("the broker runs") as libc::pid_t;
    // SAFETY: kill(2) on the process group of a child this test started (`process_group(0)`).
    let rc = unsafe { libc::kill(-pid, signal) };
    assert_eq!(rc, 0, "kill({}, {signal}): {}", -pid, std::io::Error::last_os_error());
}

/// The ids written by writer `w`.
fn writer_ids(w: usize) -> Vec<i64> {
    (0..ROWS_PER_INSERT).map(|i| (1000 * (w + 1) + i) as i64).collect()
}

/// Outcome of a stalled statement: `Ok` or `(SQLSTATE, message)`, and how long it took.
type Outcome = (Result<(), (String, String)>, Duration);

fn spawn_statement(port: u16, sql: String) -> JoinHandle<Outcome> {
    tokio::spawn(async move {
        let c = connect(port).await;
        let t = Instant::now();
        let r = c.batch_execute(&sql).await.map_err(|e| match e.as_db_error() {
            Some(db) => (db.code().code().to_string(), db.message().to_string()),
            None => ("(none)".to_string(), format!("{e:?}")),
        });
        (r, t.elapsed())
    })
}

/// Frozen for less than an append's retry budget: every INSERT succeeds once Kafka answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_stalled_for_40_s_stalls_no_reading_session_and_loses_no_insert() {
    let outcomes = stall("stall40", Duration::from_secs(40)).await;
    assert!(outcomes.iter().all(|o| *o == Fate::Written), "{outcomes:?}");
}

/// Frozen for longer than an append's retry budget: INSERTs fail, each saying what became of
/// its rows, and the table holds exactly what the answers promised.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_stalled_for_75_s_fails_inserts_with_what_became_of_their_rows() {
    let outcomes = stall("stall75", Duration::from_secs(75)).await;
    assert!(outcomes.contains(&Fate::Committed), "the first INSERT outlived the freeze: {outcomes:?}");
}

/// What an INSERT's answer says of its rows.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Fate {
    /// It succeeded.
    Written,
    /// It failed after its rows were committed to the write-ahead log: they are delivered
    /// later.
    Committed,
    /// It failed having written nothing.
    NotWritten,
}

/// Freezes the broker for `frozen` under the load described in the module docs and checks the
/// outcome; returns the fate of each stalled INSERT.
async fn stall(name: &str, frozen: Duration) -> Vec<Fate> {
    let k = services::kafka(name);
    let dir = temp_dir(name);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_sluice"));
    // One async worker thread (tokio reads TOKIO_WORKER_THREADS; the daemon otherwise has one
    // per core): whatever waits for Kafka on it, instead of handing it over, stalls every
    // session, on any machine.
    let server = ServerProcess::start_with_env(bin, &dir, &["--kafka-bootstrap", &k.addr()], &[("TOKIO_WORKER_THREADS", "1")])
        .expect("sluice starts");
    let port = server.port();
    let c = connect(port).await;
    exec(&c, "CREATE TABLE hot (id BIGINT, v STRING) WITH ('partitions' = '2')").await;
    exec(&c, "CREATE TABLE cold (id BIGINT, v STRING) WITH ('partitions' = '2')").await;
    let cold: Vec<String> = (0..1000).map(|i| format!("({i}, 'c{i}')")).collect();
    exec(&c, &format!("INSERT INTO cold VALUES {}", cold.join(", "))).await;
    exec(
        &c,
        "CREATE TABLE gen (id BIGINT, v STRING) WITH ('connector' = 'datagen', 'number-of-rows' = '5000', \
         'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '5000', 'fields.v.length' = '8')",
    )
    .await;
    exec(&c, "INSERT INTO hot VALUES (1, 'before'), (2, 'before')").await;
    // The daemon reads `cold` once while the broker runs; later reads need nothing from Kafka.
    assert_eq!(rows(&c, "SELECT count(*) FROM cold").await, vec![vec![Some("1000".into())]]);
    assert_eq!(rows(&c, "SELECT count(*) FROM hot").await, vec![vec![Some("2".into())]]);
    assert_eq!(rows(&c, "SELECT count(*) FROM gen").await, vec![vec![Some("5000".into())]]);

    signal_broker(&k, libc::SIGSTOP);
    let frozen_at = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let values: Vec<String> = writer_ids(w).iter().map(|id| format!("({id}, 'w{w}')")).collect();
        writers.push(spawn_statement(port, format!("INSERT INTO hot VALUES {}", values.join(", "))));
    }
    let mut creators = Vec::new();
    for i in 0..CREATORS {
        creators.push(spawn_statement(port, format!("CREATE TABLE made_{i} (a BIGINT)")));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The broker really stalls them (otherwise this test shows nothing).
    assert!(writers.iter().all(|w| !w.is_finished()), "INSERTs finished with the broker frozen");

    // Many sessions at once, each connecting and reading, within the deadline.
    let readers: Vec<JoinHandle<Result<Duration, String>>> = (0..READERS)
        .map(|r| {
            tokio::spawn(async move {
                let t = Instant::now();
                let read = async {
                    let c = connect(port).await;
                    let (table, n) = if r % 2 == 0 { ("cold", "1000") } else { ("gen", "5000") };
                    let got = rows(&c, &format!("SELECT count(*) FROM {table}")).await;
                    assert_eq!(got, vec![vec![Some(n.to_string())]], "reader {r}: count(*) of {table}");
                    let got = rows(&c, "SELECT count(*) FROM cold WHERE id < 10").await;
                    assert_eq!(got, vec![vec![Some("10".to_string())]], "reader {r}");
                };
                match tokio::time::timeout(READ_DEADLINE, read).await {
                    Ok(()) => Ok(t.elapsed()),
                    Err(_) => Err(format!("reader {r} did not finish within {} s", READ_DEADLINE.as_secs())),
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut stuck = Vec::new();
    for r in readers {
        match r.await.expect("reader task") {
            Ok(d) => slowest = slowest.max(d),
            Err(e) => stuck.push(e),
        }
    }
    let read_done = frozen_at.elapsed();
    assert!(
        stuck.is_empty(),
        "with the broker frozen and {WRITERS} INSERTs + {CREATORS} CREATE TABLEs waiting for it, sessions that only read \
         tables the daemon holds stalled: {stuck:?}"
    );
    eprintln!("{READERS} reading sessions done {:?} after the freeze, the slowest took {slowest:?}", read_done);
    assert!(writers.iter().any(|w| !w.is_finished()), "the INSERTs were no longer waiting while the readers ran");

    tokio::time::sleep(frozen.saturating_sub(frozen_at.elapsed())).await;
    signal_broker(&k, libc::SIGCONT);

    // Every stalled statement ends (the append's retries are bounded in time): a success, or
    // a connection-class error that says what became of the rows.
    let mut fates = Vec::new();
    let mut promised: Vec<i64> = vec![1, 2];
    for (w, h) in writers.into_iter().enumerate() {
        let (r, took) = tokio::time::timeout(Duration::from_secs(240), h)
            .await
            .unwrap_or_else(|_| panic!("INSERT {w} still waits 240 s after the broker continued"))
            .expect("writer task");
        eprintln!("INSERT {w}: {r:?} after {took:?}");
        let fate = match r {
            Ok(()) => Fate::Written,
            Err((code, msg)) => {
                assert!(code.starts_with("08"), "INSERT {w} failed with {code}, not a connection-class error: {msg}");
                if msg.contains("nothing of this append was written") {
                    Fate::NotWritten
                } else if msg.contains("committed to the write-ahead log") {
                    Fate::Committed
                } else {
                    panic!("INSERT {w} failed ({code}) without saying what became of its rows: {msg}")
                }
            }
        };
        if fate != Fate::NotWritten {
            promised.extend(writer_ids(w));
        }
        fates.push(fate);
    }
    let c = connect(port).await;
    for (i, h) in creators.into_iter().enumerate() {
        let (r, took) = tokio::time::timeout(Duration::from_secs(240), h)
            .await
            .unwrap_or_else(|_| panic!("CREATE TABLE {i} still waits 240 s after the broker continued"))
            .expect("creator task");
        eprintln!("CREATE TABLE {i}: {r:?} after {took:?}");
        if let Err((code, msg)) = r {
            assert!(code.starts_with("08"), "CREATE TABLE {i} failed with {code}: {msg}");
            // It left no table behind, and with Kafka back it can be created (the topic Kafka
            // created late, empty, is adopted).
            assert!(!rows(&c, "SHOW TABLES").await.contains(&vec![Some(format!("made_{i}"))]), "CREATE TABLE {i} failed but the table exists");
            exec(&c, &format!("CREATE TABLE made_{i} (a BIGINT)")).await;
        }
        exec(&c, &format!("INSERT INTO made_{i} VALUES (1)")).await;
        assert_eq!(rows(&c, &format!("SELECT count(*) FROM made_{i}")).await, vec![vec![Some("1".into())]]);
    }

    // Nothing lost, nothing added: after one more append (which delivers the rows of a failed
    // append first), `hot` holds the rows the answers promised, once each, read back from
    // Kafka.
    exec(&c, "INSERT INTO hot VALUES (3, 'after')").await;
    promised.push(3);
    promised.sort();
    let mut got: Vec<i64> = rows(&c, "SELECT id FROM hot").await.iter().map(|r| r[0].as_deref().unwrap().parse().unwrap()).collect();
    got.sort();
    assert_eq!(got, promised, "hot holds exactly the rows its INSERTs' answers promised ({fates:?})");
    assert_eq!(rows(&c, "SELECT count(*) FROM cold").await, vec![vec![Some("1000".into())]]);
    drop(c);
    drop(server);
    drop(k);
    let _ = std::fs::remove_dir_all(&dir);
    fates
}
