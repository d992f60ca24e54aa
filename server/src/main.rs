//! `sluice`: the daemon. See `sluice --help`.

use clap::Parser;
use sluice_server::config::{Cli, Config};
use tracing_subscriber::EnvFilter;

/// mimalloc: operators allocate many small row buffers and Arrow many large ones; glibc's
/// allocator spent a tenth of the pipeline benchmark zeroing pages it had just returned.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (index 15 in its `mi_option_e`): -1 keeps freed memory
/// mapped instead of returning it to the OS after 10 ms, which made the kernel zero the same
/// pages again and again (a fifth of the pipeline benchmark's time).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// `mi_option_arena_eager_commit` (index 4): commit arena memory up front.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Stack size of the runtime's threads (workers and blocking threads alike). Statements are
/// parsed, planned and evaluated on them, and sqlparser and DataFusion walk a statement's
/// trees recursively; the planner refuses statements deeper than this stack holds
/// (`sluice_planner::statement::MAX_EXPRESSION_DEPTH`, SQLSTATE 54001). Only the pages a
/// thread touches are backed by memory.
const THREAD_STACK_BYTES: usize = 64 << 20;

fn main() {
    // SAFETY: sets a process-wide allocator option before any thread is started.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 1);
    }
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: configuration error: {e}");
            std::process::exit(2);
        }
    };
    // The password is in `config` now: processes the daemon starts need not inherit it. No
    // other thread runs yet.
    std::env::remove_var("SLUICE_PASSWORD");
    let filter = std::env::var("RUST_LOG").ok().map(EnvFilter::new).unwrap_or_else(|| EnvFilter::new(&config.log));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(sluice_server::run(config)) {
        eprintln!("sluice: {e}");
        std::process::exit(1);
    }
}
