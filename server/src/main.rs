//! `sluice`: the daemon. See `sluice --help`.

use clap::Parser;
use sluice_server::config::{Cli, Config};
use tracing_subscriber::EnvFilter;

/// mimalloc: operators allocate many small row buffers and Arrow many large ones; glibc's
/// allocator spent a tenth of the pipeline benchmark zeroing pages it had just returned.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: configuration error: {e}");
            std::process::exit(2);
        }
    };
    let filter = std::env::var("RUST_LOG").ok().map(EnvFilter::new).unwrap_or_else(|| EnvFilter::new(&config.log));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(sluice_server::run(config)) {
        eprintln!("sluice: {e}");
        std::process::exit(1);
    }
}
