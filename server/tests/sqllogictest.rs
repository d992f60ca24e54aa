//! Runs every `sqllogictest/slt/*.slt` file against a freshly started `sluice` daemon.
//!
//! `cargo test --release -p sluice-server --test sqllogictest -- [FILTER] [--complete]`

fn main() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_sluice"));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sqllogictest/slt");
    std::process::exit(sluice_sqllogictest::run_all(&bin, &dir));
}
