//! Bad input on the wire: malformed and truncated frames, random bytes, wrong lengths and
//! out-of-order messages thrown at a real daemon over TCP. The daemon never panics (no
//! `panicked at` on its stderr) or stops, a session opened before keeps working, and no table
//! changes. The cases come from a seeded generator (`SLUICE_FUZZ_SEED`, `SLUICE_FUZZ_CASES`
//! override the defaults), so a failure can be replayed.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::{connect, exec, rows, start, temp_dir};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Cases run by default.
const CASES: usize = 1_000;
/// Connections in flight at once.
const PARALLEL: usize = 8;
/// How long the daemon may take to close a connection whose client has sent everything.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(20);

fn startup() -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(196_608);
    for s in ["user", "sluice", "database", "sluice"] {
        body.put_slice(s.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
    out.to_vec()
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random()).collect()
}

/// A well-formed Bind of `statement` with one text parameter.
fn bind(statement: &str, value: &[u8]) -> Vec<u8> {
    let mut b = cstr("");
    b.extend(cstr(statement));
    b.extend(0u16.to_be_bytes());
    b.extend(1u16.to_be_bytes());
    b.extend((value.len() as i32).to_be_bytes());
    b.extend(value);
    b.extend(0i16.to_be_bytes());
    b
}

/// One case: its kind and the bytes a client sends before closing its side.
fn case(rng: &mut StdRng) -> (&'static str, Vec<u8>) {
    let parse = frame(b'P', &[cstr("s"), cstr("SELECT $1::text"), 0u16.to_be_bytes().to_vec()].concat());
    let execute = frame(b'E', &[cstr(""), 0i32.to_be_bytes().to_vec()].concat());
    let sync = frame(b'S', &[]);
    match rng.random_range(0..7) {
        0 => ("random bytes before start-up", random_bytes(rng, 300)),
        1 => {
            let mut s = startup();
            let len: i32 = match rng.random_range(0..3) {
                0 => rng.random_range(-10..8),
                1 => rng.random_range(10_001..i32::MAX),
                _ => s.len() as i32 + rng.random_range(1..200),
            };
            s[0..4].copy_from_slice(&len.to_be_bytes());
            ("start-up packet with a wrong length", s)
        }
        2 => {
            let mut out = startup();
            for _ in 0..rng.random_range(1..6) {
                let kinds = b"QPBEDCSHdcfFpX";
                let kind = if rng.random_bool(0.9) { kinds[rng.random_range(0..kinds.len())] } else { rng.random() };
                let body = random_bytes(rng, 64);
                let len: i32 = match rng.random_range(0..4) {
                    0 => rng.random_range(i32::MIN..4),
                    1 => rng.random_range(1 << 20..i32::MAX),
                    2 => body.len() as i32 + 4 + rng.random_range(-3..3),
                    _ => body.len() as i32 + 4,
                };
                out.push(kind);
                out.extend(len.to_be_bytes());
                out.extend(body);
            }
            ("random typed frames", out)
        }
        3 => {
            // A Bind whose fields disagree with its length: counts larger than what follows,
            // negative or oversized parameter lengths, truncation at any byte.
            let mut b = bind("s", b"hello");
            match rng.random_range(0..4) {
                0 => {
                    let at = 2 + 2;
                    b[at..at + 2].copy_from_slice(&rng.random_range(2u16..u16::MAX).to_be_bytes());
                }
                1 => {
                    let at = 2 + 2 + 2;
                    b[at..at + 4].copy_from_slice(&rng.random_range(i32::MIN..-1).to_be_bytes());
                }
                2 => {
                    let at = 2 + 2 + 2;
                    b[at..at + 4].copy_from_slice(&rng.random_range(6..i32::MAX).to_be_bytes());
                }
                _ => b.truncate(rng.random_range(0..b.len())),
            }
            let n = b.len();
            if rng.random_bool(0.5) {
                b.extend(random_bytes(rng, 8));
            }
            let mut out = startup();
            out.extend(&parse);
            let mut f = frame(b'B', &b);
            if rng.random_bool(0.3) {
                f[1..5].copy_from_slice(&((n as i32) + 4).to_be_bytes());
            }
            out.extend(f);
            out.extend(&execute);
            out.extend(&sync);
            ("Bind with inconsistent fields", out)
        }
        4 => {
            let pieces = [
                frame(b'E', &[cstr("nope"), 0i32.to_be_bytes().to_vec()].concat()),
                frame(b'B', &bind("missing", b"x")),
                frame(b'd', b"1\t2\n"),
                frame(b'c', &[]),
                frame(b'f', &cstr("client gave up")),
                frame(b'D', &[vec![b'S'], cstr("missing")].concat()),
                frame(b'D', &[vec![b'P'], cstr("missing")].concat()),
                frame(b'C', &[vec![b'S'], cstr("s")].concat()),
                frame(b'p', &cstr("a password nobody asked for")),
                sync.clone(),
                frame(b'H', &[]),
                parse.clone(),
                frame(b'Q', &cstr("SELECT k FROM t")),
            ];
            let mut out = startup();
            for _ in 0..rng.random_range(1..12) {
                out.extend(&pieces[rng.random_range(0..pieces.len())]);
            }
            ("messages out of order", out)
        }
        5 => {
            let mut out = startup();
            out.extend(&parse);
            out.extend(frame(b'B', &bind("s", b"x")));
            out.extend(&execute);
            out.extend(&sync);
            let cut = rng.random_range(0..out.len());
            out.truncate(cut);
            ("truncated stream", out)
        }
        _ => {
            let mut out = startup();
            let mut body = random_bytes(rng, 40);
            body.retain(|b| *b != 0);
            out.extend(frame(b'Q', &[body, vec![0]].concat()));
            out.extend(frame(b'Q', &cstr("SELECT count(*) FROM t")));
            ("random query text", out)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_never_panic_the_daemon_or_change_a_table() {
    let dir = temp_dir("wire-fuzz");
    let mut server = start(&dir);
    let port = server.port();
    let c = connect(port).await;
    exec(&c, "CREATE TABLE t (k BIGINT, v STRING)").await;
    exec(&c, "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, NULL)").await;
    let before = rows(&c, "SELECT * FROM t").await;

    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_202);
    let cases: usize = std::env::var("SLUICE_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(CASES);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut answered = 0usize;
    let mut refused = 0usize;
    let mut done = 0;
    while done < cases {
        let batch: Vec<_> = (done..cases.min(done + PARALLEL)).map(|i| (i, case(&mut rng))).collect();
        done += batch.len();
        let mut tasks = Vec::new();
        for (i, (kind, bytes)) in batch {
            *kinds.entry(kind).or_insert(0) += 1;
            tasks.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("the daemon accepts connections");
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
                let mut reply = Vec::new();
                let read = tokio::time::timeout(CLOSE_TIMEOUT, s.read_to_end(&mut reply)).await;
                assert!(read.is_ok(), "case {i} ({kind}): the daemon did not close the connection within {CLOSE_TIMEOUT:?}; sent {bytes:?}");
                reply
            }));
        }
        for t in tasks {
            let reply = t.await.expect("case task");
            if !reply.is_empty() {
                answered += 1;
            }
            if reply.windows(5).any(|w| w == b"08P01") {
                refused += 1;
            }
        }
    }

    // The session opened before, a new session and the table are as they were.
    assert_eq!(rows(&c, "SELECT * FROM t").await, before);
    let fresh = connect(port).await;
    assert_eq!(rows(&fresh, "SELECT count(*) FROM t").await, vec![vec![Some("3".to_string())]]);
    drop((c, fresh));
    server.stop_and_drain().expect("the daemon stops cleanly");
    assert_eq!(server.panics_logged(), 0, "the daemon logged panics (see its stderr above)");
    println!("wire fuzz: {cases} cases (seed {seed}), {answered} answered, {refused} refused as 08P01, 0 panics: {kinds:?}");
}
