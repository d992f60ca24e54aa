//! Oracles for persistent queries: once input is drained (`FLUSH`), each streaming result
//! equals the same SQL run as a batch query by DataFusion over the same final input. Windowed
//! queries are compared over the windows the watermark has passed.
//!
//! `random_inputs_match_batch_oracle` feeds proptest-generated inputs, out of order and with
//! late rows; `sigkill_during_pipeline`
//! kills the daemon with SIGKILL at random moments while data flows and checks that nothing is
//! lost or duplicated.

mod common;

use common::oracle::{arrival_values, check_oracle, check_oracle_late, create_pipeline, create_pipeline_late, values, ORIGIN_MS};
use common::{connect, exec, rows, start, temp_dir};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand::Rng;

#[derive(Debug, Clone)]
enum Step {
    /// Transactions (user, amount, minutes from the clock, which may be behind it), then how
    /// far the clock moves on.
    Tx(Vec<(i64, i64, i64)>, i64),
    Cust(Vec<(i64, i64)>),
    DeleteCust(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (prop::collection::vec((0i64..6, -20i64..50, -90i64..40), 1..12), 0i64..50).prop_map(|(r, d)| Step::Tx(r, d)),
        1 => prop::collection::vec((0i64..6, 0i64..4), 1..4).prop_map(Step::Cust),
        1 => (0i64..6).prop_map(Step::DeleteCust),
    ]
}

/// How far `tx_<s>`'s watermark trails its largest event time, in minutes.
const DELAY_MIN: i64 = 30;

#[test]
fn random_inputs_match_batch_oracle() {
    let dir = temp_dir("oracle");
    let server = start(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let c = rt.block_on(connect(server.port()));
    let case = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(Config { cases: 8, ..Config::default() });
    runner
        .run(&prop::collection::vec(step(), 1..10), |steps| {
            case.set(case.get() + 1);
            let s = format!("c{}", case.get());
            rt.block_on(async {
                create_pipeline_late(&c, &s, DELAY_MIN).await;
                // Event time out of order: rows up to 90 minutes behind the clock, the
                // watermark 30 behind the largest time seen, so some rows are late. The input is
                // drained after every insert, so the watermark each row meets is known: the
                // one before its insert (a batch's rows are processed before its watermark).
                let mut clock = 1_000i64;
                let mut max_ts: Option<i64> = None;
                for st in &steps {
                    match st {
                        Step::Tx(rows, advance) => {
                            let rows: Vec<_> = rows.iter().map(|(u, a, m)| (*u, *a, clock + m)).collect();
                            let wm = max_ts.map_or(i64::MIN / 2, |m| ORIGIN_MS + (m - DELAY_MIN) * 60_000);
                            exec(&c, &format!("INSERT INTO arr_{s} VALUES {}", arrival_values(&rows, wm))).await;
                            exec(&c, &format!("INSERT INTO tx_{s} VALUES {}; FLUSH", values(&rows))).await;
                            max_ts = rows.iter().map(|r| r.2).chain(max_ts).max();
                            clock += advance;
                        }
                        Step::Cust(cs) => {
                            let v = cs.iter().map(|(i, sp)| format!("({i}, {sp})")).collect::<Vec<_>>().join(", ");
                            exec(&c, &format!("INSERT INTO cust_{s} VALUES {v}")).await;
                        }
                        Step::DeleteCust(i) => exec(&c, &format!("DELETE FROM cust_{s} WHERE id = {i}")).await,
                    }
                }
                check_oracle_late(&c, &s, DELAY_MIN).await;
            });
            Ok(())
        })
        .unwrap();
    // The cases did exercise late rows (dropped by the window operators, and counted).
    let late = rt.block_on(rows(&c, "SELECT CAST(sum(late_rows) AS BIGINT) FROM sluice_jobs"));
    assert!(late[0][0].as_deref().and_then(|n| n.parse::<i64>().ok()).is_some_and(|n| n > 0), "no late rows: {late:?}");
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigkill_during_pipeline() {
    let dir = temp_dir("sigkill");
    let mut server = start(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let s = "k";
    let mut c = rt.block_on(connect(server.port()));
    rt.block_on(async {
        create_pipeline(&c, s).await;
        exec(&c, &format!("INSERT INTO cust_{s} VALUES (0, 1), (1, 2), (2, 3), (3, 1)")).await;
    });
    let mut rng = rand::rng();
    let mut clock = 0i64;
    for round in 0..6 {
        // Feed in the background; kill the daemon at a random moment while it works.
        let batches: Vec<String> = (0..20)
            .map(|_| {
                let rows: Vec<(i64, i64, i64)> = (0..50)
                    .map(|_| {
                        clock += rng.random_range(0..2);
                        (rng.random_range(0..5), rng.random_range(-10..40), clock)
                    })
                    .collect();
                format!("INSERT INTO tx_{s} VALUES {}", values(&rows))
            })
            .collect();
        let feeder = {
            let port = server.port();
            rt.spawn(async move {
                let c = connect(port).await;
                for b in batches {
                    // Inserts cut off by the kill fail; the oracle reads the input that landed.
                    if c.batch_execute(&b).await.is_err() {
                        break;
                    }
                }
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(20..400)));
        server.restart(true).unwrap_or_else(|e| panic!("round {round}: restart after SIGKILL: {e}"));
        let _ = rt.block_on(feeder);
        c = rt.block_on(connect(server.port()));
    }
    rt.block_on(check_oracle(&c, s));
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The example of the README: the seed's SQL loaded from `examples/stolen-cards/pipeline.sql`,
/// fed by the Python producer over psycopg, checked against the batch oracle.
#[test]
fn stolen_cards_example_with_psycopg() {
    let dir = temp_dir("stolen");
    let server = start(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sql = std::fs::read_to_string(root.join("examples/stolen-cards/pipeline.sql")).unwrap();
    let c = rt.block_on(connect(server.port()));
    rt.block_on(exec(&c, &sql));
    let out = std::process::Command::new("python3")
        .arg(root.join("examples/stolen-cards/feeder.py"))
        .args(["--rate", "0", "--count", "3000", "--customers", "50", "--batch", "500"])
        .args(["--dsn", &format!("host=127.0.0.1 port={} user=sluice dbname=sluice", server.port())])
        .output()
        .expect("python3 runs (CI installs it with psycopg)");
    assert!(out.status.success(), "feeder failed: {}", String::from_utf8_lossy(&out.stderr));
    rt.block_on(async {
        exec(&c, "FLUSH").await;
        let enriched = rows(&c, "SELECT * FROM fd_transactions_enriched").await;
        assert_eq!(enriched.len(), 3000);
        let stolen = rows(&c, "SELECT * FROM fd_possible_stolen_card").await;
        let oracle = rows(
            &c,
            "SELECT window_start, window_end, user_id, credit_card_number, first_name, last_name, email, transaction_timestamp, SUM(amount), MAX(avg_credit_spend)
             FROM TABLE(TUMBLE(TABLE fd_transactions_enriched, DESCRIPTOR(transaction_timestamp), INTERVAL '2' HOUR))
             WHERE window_end <= (SELECT max(transaction_timestamp) FROM fd_transactions_enriched)
             GROUP BY window_start, window_end, user_id, credit_card_number, first_name, last_name, email, transaction_timestamp
             HAVING SUM(amount) > MAX(avg_credit_spend)",
        )
        .await;
        assert!(!stolen.is_empty(), "some cards are flagged");
        assert_eq!(stolen, oracle);
    });
    // Run again, the feeder continues event time after the latest transaction: no row repeats
    // a timestamp, so none is late for the windows already closed.
    let out = std::process::Command::new("python3")
        .arg(root.join("examples/stolen-cards/feeder.py"))
        .args(["--rate", "0", "--count", "1000", "--customers", "50", "--batch", "500"])
        .args(["--dsn", &format!("host=127.0.0.1 port={} user=sluice dbname=sluice", server.port())])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "second feeder run failed: {}", String::from_utf8_lossy(&out.stderr));
    rt.block_on(async {
        exec(&c, "FLUSH").await;
        assert_eq!(rows(&c, "SELECT count(DISTINCT transaction_timestamp) FROM credit_card_transactions").await, vec![vec![Some("4000".into())]]);
        let late = rows(&c, "SELECT CAST(sum(late_rows) AS BIGINT) FROM sluice_jobs").await;
        assert_eq!(late, vec![vec![Some("0".into())]]);
    });
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `STOP JOB` stops a persistent query for good: its sink no longer changes, and it stays
/// stopped across a restart; `SHOW JOBS` and `sluice_jobs` report it.
#[test]
fn stop_job_is_durable() {
    let dir = temp_dir("stopjob");
    let mut server = start(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut c = rt.block_on(connect(server.port()));
    rt.block_on(async {
        exec(&c, "CREATE TABLE src (a BIGINT); CREATE TABLE dst (a BIGINT); INSERT INTO dst SELECT a FROM src").await;
        exec(&c, "INSERT INTO src VALUES (1), (2); FLUSH").await;
        assert_eq!(rows(&c, "SELECT count(*) FROM dst").await, vec![vec![Some("2".into())]]);
        let id = rows(&c, "SELECT job_id FROM sluice_jobs").await[0][0].clone().unwrap();
        let shown = rows(&c, "SHOW JOBS").await;
        assert_eq!(shown[0][0].as_deref(), Some(id.as_str()));
        assert_eq!(shown[0][1].as_deref(), Some("RUNNING"));
        exec(&c, &format!("STOP JOB '{id}'")).await;
        exec(&c, "INSERT INTO src VALUES (3); FLUSH").await;
        assert_eq!(rows(&c, "SELECT count(*) FROM dst").await, vec![vec![Some("2".into())]]);
        assert_eq!(rows(&c, "SELECT status FROM sluice_jobs").await, vec![vec![Some("STOPPED".into())]]);
        // A stopped job no longer holds its tables.
        exec(&c, "DROP TABLE dst").await;
        let e = c.simple_query("STOP JOB 'nope'").await.unwrap_err();
        assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("42704"));
    });
    server.restart(true).unwrap();
    c = rt.block_on(connect(server.port()));
    rt.block_on(async {
        assert_eq!(rows(&c, "SELECT status FROM sluice_jobs").await, vec![vec![Some("STOPPED".into())]]);
    });
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Watermarks are tracked per source partition and combined by minimum: one late-moving
/// partition holds a window open that a single-partition table would have closed.
#[test]
fn watermark_is_the_minimum_over_partitions() {
    let dir = temp_dir("partitions");
    let server = start(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let c = rt.block_on(connect(server.port()));
    rt.block_on(async {
        for (name, parts, idle) in [("one", 1, ""), ("two", 2, ""), ("idle", 2, ", 'scan.watermark.idle-timeout' = '300 ms'")] {
            exec(&c, &format!("CREATE TABLE ev_{name} (id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH ('partitions' = '{parts}'{idle})")).await;
            exec(&c, &format!("CREATE TABLE win_{name} (ws TIMESTAMP(3), n BIGINT)")).await;
            exec(&c, &format!("INSERT INTO win_{name} SELECT window_start, COUNT(*) FROM TABLE(TUMBLE(TABLE ev_{name}, DESCRIPTOR(ts), INTERVAL '1' HOUR)) GROUP BY window_start, window_end")).await;
            // 50 distinct rows in 10:00-10:59 spread over the partitions (rows hash by value).
            let rows: Vec<String> = (0..50).map(|i| format!("({i}, TIMESTAMP '2024-01-01 10:00:00' + INTERVAL '{i}' MINUTE)")).collect();
            exec(&c, &format!("INSERT INTO ev_{name} VALUES {}", rows.join(", "))).await;
            // One row at 12:30 lands in one partition only.
            exec(&c, &format!("INSERT INTO ev_{name} VALUES (1000, TIMESTAMP '2024-01-01 12:30:00')")).await;
        }
        exec(&c, "FLUSH").await;
        assert_eq!(rows(&c, "SELECT n FROM win_one").await, vec![vec![Some("50".into())]]);
        assert!(rows(&c, "SELECT n FROM win_two").await.is_empty(), "the other partition holds the watermark back");
        // With an idle timeout, the partition without new data stops holding it back.
        common::services::eventually(20, "the idle partition releases the watermark", || async {
            rows(&c, "SELECT n FROM win_idle").await == vec![vec![Some("50".to_string())]]
        })
        .await;
        // Rows in every partition past 11:00 close the window there too.
        let later: Vec<String> = (0..50).map(|i| format!("({}, TIMESTAMP '2024-01-01 12:00:00' + INTERVAL '{i}' SECOND)", 2000 + i)).collect();
        exec(&c, &format!("INSERT INTO ev_two VALUES {}", later.join(", "))).await;
        exec(&c, "FLUSH").await;
        assert_eq!(rows(&c, "SELECT n FROM win_two").await, vec![vec![Some("50".into())]]);
    });
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
