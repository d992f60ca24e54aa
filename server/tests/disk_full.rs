//! Disk full: the daemon runs on a small tmpfs that a filler file fills while the oracle
//! pipeline (one persistent query per streaming operator, `common::oracle`) is being fed. Every
//! write that does not fit fails with SQLSTATE 53100 and says so; a job whose checkpoint does
//! not fit is `FAILED` with the no-space cause; reads go on. Then the filler is deleted: the
//! store resumes writing by itself, `RESUME JOB` brings the failed jobs back, and after more
//! input every sink equals DataFusion's batch result over exactly the rows whose INSERT
//! succeeded, again after a restart.
//!
//! Mounting the tmpfs needs root (or passwordless `sudo`); without it the test fails saying so.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::oracle::{check_oracle, create_pipeline, values, ORIGIN_MS};
use common::{connect, exec, rows, temp_dir};
use rand::Rng;
use tokio_postgres::Client;

/// Size of the tmpfs. The store resumes once as much space is free as one memtable holds
/// (RocksDB's write buffer, 64 MiB), so the filesystem is larger than that plus the pipeline.
const SIZE_MB: u64 = 96;
/// The pipeline's suffix (`tx_x`, `cust_x`, `q_*_x`).
const S: &str = "x";
/// What every no-space error says (RocksDB's ENOSPC message).
const NO_SPACE: &str = "No space left on device";
/// How long the store may take to resume after space is freed (it polls every 5 s).
const RECOVERY: Duration = Duration::from_secs(60);

/// A tmpfs mounted on a fresh directory, unmounted on drop (after the daemon on it was
/// dropped: declare it before the daemon).
struct Tmpfs {
    root: PathBuf,
    mnt: PathBuf,
}

impl Tmpfs {
    /// Mounts a `size_mb` MiB tmpfs, as root or through `sudo -n`; panics saying that the test
    /// needs root when neither can.
    fn mount(name: &str, size_mb: u64) -> Tmpfs {
        let root = temp_dir(name);
        let mnt = root.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let size = format!("size={size_mb}m");
        let args = ["-t", "tmpfs", "-o", &size, "tmpfs", mnt.to_str().unwrap()];
        let out = privileged("mount", &args);
        if let Err(why) = out {
            panic!(
                "disk_full needs root (or passwordless sudo) to mount a {size_mb} MiB tmpfs on {}: {why}",
                mnt.display()
            );
        }
        Tmpfs { root, mnt }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().unwrap();
        if let Err(why) = privileged("umount", &[mnt]) {
            eprintln!("umount {mnt}: {why}; detaching it lazily");
            let _ = privileged("umount", &["-l", mnt]);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs `cmd args` directly as root, else through `sudo -n`.
fn privileged(cmd: &str, args: &[&str]) -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let out = if root { Command::new(cmd).args(args).output() } else { Command::new("sudo").arg("-n").arg(cmd).args(args).output() };
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("{}{cmd} {args:?} exited with {}: {}", if root { "" } else { "sudo -n " }, o.status, String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("cannot run {cmd}: {e}")),
    }
}

/// Bytes free for unprivileged writers on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}: {}", dir.display(), std::io::Error::last_os_error());
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Writes `path` in 1 MiB chunks until a write fails with ENOSPC; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return written,
            Err(e) => panic!("writing the filler {}: {e}", path.display()),
        }
    }
}

/// The outcome of a statement: `Ok`, or its SQLSTATE and message.
type Outcome = Result<(), (String, String)>;

async fn try_exec(c: &Client, sql: &str) -> Outcome {
    c.batch_execute(sql).await.map_err(|e| match e.as_db_error() {
        Some(db) => (db.code().code().to_string(), db.message().to_string()),
        None => ("(no SQLSTATE)".to_string(), format!("{e:?}")),
    })
}

/// Asserts that a failed statement failed for want of space: SQLSTATE 53100 and a message
/// that says why.
fn assert_no_space(what: &str, (code, message): &(String, String)) {
    assert_eq!(code, "53100", "{what} failed with another SQLSTATE: {message}");
    assert!(message.contains(NO_SPACE), "{what}: 53100 without the cause: {message}");
}

/// What the tables must hold: the transactions of every INSERT that succeeded, and the
/// customers as the upserts and deletes that succeeded left them.
#[derive(Default)]
struct Input {
    tx: Vec<(i64, i64, i64)>,
    cust: BTreeMap<i64, i64>,
    /// Event time of the last transaction, in minutes after [`ORIGIN_MS`].
    clock: i64,
    round: usize,
}

impl Input {
    /// One round of the feed, as `crash.rs` feeds: 30 transactions (event time moving forward),
    /// every third round a customer upsert, every seventh a delete. Records what succeeded;
    /// returns each statement's outcome.
    async fn round(&mut self, c: &Client) -> Vec<Outcome> {
        let (txs, upsert, delete) = {
            let mut rng = rand::rng();
            let txs: Vec<(i64, i64, i64)> = (0..30)
                .map(|_| {
                    self.clock += rng.random_range(0..3);
                    (rng.random_range(0..6), rng.random_range(-10..40), self.clock)
                })
                .collect();
            (txs, (rng.random_range(0..6), rng.random_range(0..4)), rng.random_range(0..6))
        };
        let i = self.round;
        self.round += 1;
        let mut out = Vec::new();
        let r = try_exec(c, &format!("INSERT INTO tx_{S} VALUES {}", values(&txs))).await;
        if r.is_ok() {
            self.tx.extend(txs);
        }
        out.push(r);
        if i % 3 == 0 {
            let r = try_exec(c, &format!("INSERT INTO cust_{S} VALUES ({}, {})", upsert.0, upsert.1)).await;
            if r.is_ok() {
                self.cust.insert(upsert.0, upsert.1);
            }
            out.push(r);
        }
        if i % 7 == 6 {
            let r = try_exec(c, &format!("DELETE FROM cust_{S} WHERE id = {delete}")).await;
            if r.is_ok() {
                self.cust.remove(&delete);
            }
            out.push(r);
        }
        out
    }

    /// Asserts that the tables hold exactly what the successful statements wrote: no failed
    /// INSERT landed, no successful one was lost.
    async fn check_tables(&self, c: &Client) {
        let mut tx: Vec<Vec<Option<String>>> = self
            .tx
            .iter()
            .map(|(u, a, m)| vec![Some(u.to_string()), Some(a.to_string()), Some((ORIGIN_MS + m * 60_000).to_string())])
            .collect();
        tx.sort();
        assert!(rows(c, &format!("SELECT user_id, amount, CAST(ts AS BIGINT) FROM tx_{S}")).await == tx, "tx_{S} differs from the rows of the INSERTs that succeeded");
        let mut cust: Vec<Vec<Option<String>>> = self.cust.iter().map(|(id, s)| vec![Some(id.to_string()), Some(s.to_string())]).collect();
        cust.sort();
        assert_eq!(rows(c, &format!("SELECT id, spend FROM cust_{S}")).await, cust, "cust_{S} differs from the statements that succeeded");
    }
}

/// The id of the job that writes `sink`.
async fn job_of(c: &Client, sink: &str) -> String {
    rows(c, &format!("SELECT job_id FROM sluice_jobs WHERE sink = '{sink}'")).await[0][0].clone().unwrap()
}

/// `(job id, status, error)` of every job.
async fn jobs(c: &Client) -> Vec<(String, String, Option<String>)> {
    rows(c, "SELECT job_id, status, error FROM sluice_jobs")
        .await
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap(), r[2].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_with_53100_and_the_pipeline_comes_back() {
    let fs = Tmpfs::mount("disk-full", SIZE_MB);
    let mut server = common::start(&fs.mnt.join("data"));
    let c = connect(server.port()).await;
    create_pipeline(&c, S).await;
    // A job that always has input (an unbounded generator): its next checkpoint after the
    // disk fills fails for certain, whichever write hits the full disk first.
    exec(&c, &format!("CREATE TABLE gen_{S} (v BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '200')")).await;
    exec(&c, &format!("CREATE TABLE gen_out_{S} (v BIGINT)")).await;
    exec(&c, &format!("INSERT INTO gen_out_{S} SELECT v FROM gen_{S}")).await;
    let mut input = Input::default();
    for (id, spend) in [(0, 1), (1, 2), (2, 3), (3, 1)] {
        exec(&c, &format!("INSERT INTO cust_{S} VALUES ({id}, {spend})")).await;
        input.cust.insert(id, spend);
    }
    for _ in 0..10 {
        for r in input.round(&c).await {
            r.expect("a write before the disk is full");
        }
    }
    exec(&c, "FLUSH").await;
    // A stopped job with nothing left to read, to be resumed while the disk is full: that must
    // fail and leave it stopped (not running behind a STOPPED in `sluice_jobs`).
    exec(&c, &format!("CREATE TABLE side_{S} (v BIGINT)")).await;
    exec(&c, &format!("CREATE TABLE side_out_{S} (v BIGINT)")).await;
    exec(&c, &format!("INSERT INTO side_out_{S} SELECT v FROM side_{S}")).await;
    exec(&c, &format!("INSERT INTO side_{S} VALUES (1), (2), (3)")).await;
    exec(&c, "FLUSH").await;
    let stopped = job_of(&c, &format!("side_out_{S}")).await;
    exec(&c, &format!("STOP JOB '{stopped}'")).await;

    // Fill the disk mid-pipeline: a feeder keeps writing while the filler takes the space,
    // until ten statements in a row have failed.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (stop, port) = (stop.clone(), server.port());
        tokio::spawn(async move {
            let c = connect(port).await;
            let (mut outcomes, mut failing) = (Vec::new(), 0);
            while failing < 10 && !stop.load(Ordering::Relaxed) {
                for r in input.round(&c).await {
                    failing = if r.is_err() { failing + 1 } else { 0 };
                    outcomes.push(r);
                }
            }
            (input, outcomes)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let filler = fs.mnt.join("filler");
    let filled = fill(&filler);
    let free = free_bytes(&fs.mnt);
    eprintln!("filler: {} MiB, {free} bytes left", filled >> 20);
    assert!(free < 1 << 20, "the filler left {free} bytes free");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !feeder.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut input, outcomes) = feeder.await.unwrap();
    let failed: Vec<&(String, String)> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    eprintln!("feed while filling: {} statements, {} failed", outcomes.len(), failed.len());
    assert!(failed.len() >= 10, "writes went on succeeding on a full disk: {} of {} failed", failed.len(), outcomes.len());
    for e in &failed {
        assert_no_space("a write on a full disk", e);
    }

    // While the disk is full: the generator's job fails with the cause, as does every job that
    // failed; reads go on; DDL and RESUME JOB fail with 53100 and change nothing.
    let gen_job = job_of(&c, &format!("gen_out_{S}")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !jobs(&c).await.iter().any(|(id, st, _)| *id == gen_job && st == "FAILED") {
        assert!(Instant::now() < deadline, "the generator's job still runs on a full disk: {:?}", jobs(&c).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed_jobs: Vec<(String, String, Option<String>)> = jobs(&c).await.into_iter().filter(|(_, st, _)| st == "FAILED").collect();
    eprintln!("{} job(s) failed on the full disk", failed_jobs.len());
    for (id, _, error) in &failed_jobs {
        let error = error.as_deref().unwrap_or_default();
        assert!(error.contains(NO_SPACE), "job {id} failed without the no-space cause: {error}");
    }
    assert_eq!(rows(&c, &format!("SELECT COUNT(*) FROM tx_{S}")).await, vec![vec![Some(input.tx.len().to_string())]]);
    let flush = try_exec(&c, "FLUSH").await.expect_err("FLUSH with failed jobs");
    assert_eq!(flush.0, "55000", "FLUSH: {}", flush.1);
    assert!(flush.1.contains(NO_SPACE), "FLUSH does not say why the jobs failed: {}", flush.1);
    let ddl = try_exec(&c, &format!("CREATE TABLE probe_{S} (a BIGINT)")).await.expect_err("CREATE TABLE on a full disk");
    assert_no_space("CREATE TABLE", &ddl);
    for (id, _, _) in &failed_jobs {
        let r = try_exec(&c, &format!("RESUME JOB '{id}'")).await.expect_err("RESUME JOB on a full disk");
        assert_no_space("RESUME JOB", &r);
    }
    let r = try_exec(&c, &format!("RESUME JOB '{stopped}'")).await.expect_err("RESUME JOB of a stopped job on a full disk");
    assert_no_space("RESUME JOB", &r);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (id, st, error) in jobs(&c).await {
        if id == stopped {
            assert_eq!(st, "STOPPED", "job {id} after a RESUME JOB that failed ({error:?})");
        } else if failed_jobs.iter().any(|f| f.0 == id) {
            assert_eq!(st, "FAILED", "job {id} after a RESUME JOB that failed ({error:?})");
        }
    }

    // Free the space: the store resumes by itself; until then writes still fail with 53100.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    loop {
        let outcomes = input.round(&c).await;
        if outcomes[0].is_ok() {
            break;
        }
        for r in outcomes.iter().filter_map(|r| r.as_ref().err()) {
            assert_no_space("a write while the store resumes", r);
        }
        assert!(freed.elapsed() < RECOVERY, "writes still fail {} s after the space was freed", RECOVERY.as_secs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("writes succeed again {} ms after the space was freed", freed.elapsed().as_millis());
    for id in failed_jobs.iter().map(|j| &j.0).chain([&stopped]) {
        exec(&c, &format!("RESUME JOB '{id}'")).await;
    }
    exec(&c, &format!("CREATE TABLE probe_{S} (a BIGINT)")).await;
    for _ in 0..10 {
        for r in input.round(&c).await {
            r.expect("a write after the space was freed");
        }
    }
    exec(&c, &format!("INSERT INTO side_{S} VALUES (4)")).await;
    check_oracle(&c, S).await;
    input.check_tables(&c).await;
    assert_eq!(rows(&c, &format!("SELECT v FROM side_out_{S}")).await, rows(&c, &format!("SELECT v FROM side_{S}")).await);
    let gen = jobs(&c).await.into_iter().find(|j| j.0 == gen_job).unwrap();
    assert_eq!(gen.1, "RUNNING", "the generator's job after RESUME JOB: {gen:?}");

    // What was committed is on disk: a restart resumes every job and the oracle still holds.
    drop(c);
    server.restart(false).expect("graceful restart");
    let c = connect(server.port()).await;
    for _ in 0..5 {
        for r in input.round(&c).await {
            r.expect("a write after the restart");
        }
    }
    check_oracle(&c, S).await;
    input.check_tables(&c).await;
    drop(c);
    drop(server);
}
