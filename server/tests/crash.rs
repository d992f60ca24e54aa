//! Crash injection at the commit boundaries of the embedded backend: a real daemon runs the
//! oracle pipeline (one persistent query per streaming operator) with a failpoint armed
//! (`SLUICE_FAILPOINTS`), so that a checkpoint fails half way (an error, a panic, or the process
//! aborting on the spot). A job that failed is resumed with `RESUME JOB`; a daemon that aborted
//! is started again. Then the input is drained and every sink compared with DataFusion's batch
//! result over the same input: no row lost, none duplicated.

mod common;

use std::time::Duration;

use common::oracle::{check_oracle, create_pipeline, values};
use common::{connect, exec, temp_dir};
use rand::Rng;
use sluice_sqllogictest::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Feeds `rounds` inserts of random transactions (event time moving forward) plus customer
/// changes; statements cut off by a failure are tolerated (the oracle reads what landed).
async fn feed(port: u16, s: &str, rounds: usize, clock: &mut i64) {
    // The daemon may have aborted (an armed failpoint): then there is nothing to feed.
    let Ok((c, conn)) = tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=sluice dbname=sluice"), tokio_postgres::NoTls).await
    else {
        return;
    };
    tokio::spawn(conn);
    let mut rng = rand::rng();
    for i in 0..rounds {
        let rows: Vec<(i64, i64, i64)> = (0..30)
            .map(|_| {
                *clock += rng.random_range(0..3);
                (rng.random_range(0..6), rng.random_range(-10..40), *clock)
            })
            .collect();
        if c.batch_execute(&format!("INSERT INTO tx_{s} VALUES {}", values(&rows))).await.is_err() {
            return;
        }
        if i % 3 == 0 {
            let (id, spend) = (rng.random_range(0..6), rng.random_range(0..4));
            let _ = c.batch_execute(&format!("INSERT INTO cust_{s} VALUES ({id}, {spend})")).await;
        }
        if i % 7 == 6 && c.batch_execute(&format!("DELETE FROM cust_{s} WHERE id = {}", rng.random_range(0..6))).await.is_err() {
            return;
        }
    }
}

/// Runs the pipeline with `point` armed to fire `action` once after `skip` passes, recovers
/// (`RESUME JOB` of the failed jobs, or a new start of an aborted daemon) and checks the oracle.
fn crash_at(point: &str, action: &str, skip: u32) {
    let label = format!("crash-{}-{}", point.replace("::", "-"), action.split('(').next().unwrap_or(action));
    let dir = temp_dir(&label);
    let spec = format!("{point}={skip}*off->1*{action}");
    let mut server = ServerProcess::start(std::path::Path::new(BIN), &dir).expect("sluice starts");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let s = "x";
    let mut clock = 0i64;
    rt.block_on(async {
        let c = connect(server.port()).await;
        create_pipeline(&c, s).await;
        exec(&c, &format!("INSERT INTO cust_{s} VALUES (0, 1), (1, 2), (2, 3), (3, 1)")).await;
    });
    // The pipeline runs; now arm the failpoint (the jobs resume with it armed).
    server.set_env("SLUICE_FAILPOINTS", Some(&spec));
    server.restart(false).unwrap_or_else(|e| panic!("{spec}: restart with the failpoint: {e}"));
    // Feed until the failpoint fired: the process aborted, or a job failed.
    let mut fired = false;
    for _ in 0..40 {
        rt.block_on(feed(server.port(), s, 5, &mut clock));
        if server.exited() {
            fired = true;
            break;
        }
        let port = server.port();
        let failed = rt.block_on(async {
            let url = format!("host=127.0.0.1 port={port} user=sluice dbname=sluice");
            match tokio::time::timeout(Duration::from_secs(20), tokio_postgres::connect(&url, tokio_postgres::NoTls)).await {
                Ok(Ok((c, conn))) => {
                    tokio::spawn(conn);
                    match c.simple_query("SELECT job_id, error FROM sluice_jobs WHERE status = 'FAILED'").await {
                        Ok(msgs) => msgs
                            .into_iter()
                            .filter_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => {
                                    Some(vec![r.get(0).map(str::to_string), r.get(1).map(str::to_string)])
                                }
                                _ => None,
                            })
                            .collect::<Vec<_>>(),
                        Err(_) => vec![],
                    }
                }
                _ => vec![],
            }
        });
        if server.exited() {
            fired = true;
            break;
        }
        if !failed.is_empty() {
            assert!(
                failed.iter().all(|r| r[1].as_deref().is_some_and(|e| e.contains("failpoint") || e.contains("panicked"))),
                "{spec}: jobs failed for another reason: {failed:?}"
            );
            // FLUSH names the failed jobs instead of waiting for them or ignoring them.
            let err = rt.block_on(async { connect(server.port()).await.batch_execute("FLUSH").await.unwrap_err() });
            let db = err.as_db_error().expect("FLUSH fails with a SQL error");
            assert_eq!(db.code().code(), "55000", "{spec}: {db:?}");
            assert!(db.message().contains(failed[0][0].as_deref().unwrap()), "{spec}: {}", db.message());
            // The cause is gone (the point fired once): the failed jobs resume from their last
            // complete checkpoint.
            rt.block_on(async {
                let c = connect(server.port()).await;
                for r in &failed {
                    exec(&c, &format!("RESUME JOB '{}'", r[0].as_deref().unwrap())).await;
                }
            });
            fired = true;
            break;
        }
    }
    // An abort may still be under way (the kernel writing the core dump): wait for the exit.
    for _ in 0..600 {
        if fired || server.exited() {
            fired = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fired, "{spec}: the failpoint never fired");
    // An aborted daemon starts again without the failpoint: every job resumes from its last
    // complete checkpoint.
    server.set_env("SLUICE_FAILPOINTS", None);
    if server.exited() {
        server.start_again().unwrap_or_else(|e| panic!("{spec}: start after abort: {e}"));
    }
    rt.block_on(feed(server.port(), s, 5, &mut clock));
    rt.block_on(async {
        let c = connect(server.port()).await;
        check_oracle(&c, s).await;
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoint_state_write_fails_half_way() {
    // Part of the epoch's state is in the write batch when the error comes: nothing of the
    // epoch may commit (before the fix, its output and source positions did).
    crash_at("checkpoint::state_write", "return", 20);
}

#[test]
fn checkpoint_fails_before_and_after_its_state() {
    crash_at("checkpoint::before_state", "return", 15);
    crash_at("checkpoint::after_commit", "return", 25);
}

#[test]
fn job_panics_inside_a_checkpoint() {
    crash_at("checkpoint::state_write", "panic(injected panic)", 12);
}

#[test]
fn process_aborts_at_every_commit_boundary() {
    let mut rng = rand::rng();
    for point in ["checkpoint::before_state", "checkpoint::state_write", "checkpoint::after_commit", "log::before_write"] {
        crash_at(point, "return(abort)", rng.random_range(5..40));
    }
}
