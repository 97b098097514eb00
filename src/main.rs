//! The `clip-cluster` command line: parses arguments, resolves configuration, and hands off to
//! the library. Errors reach the user here, with what to do about them.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's allocator: the traversal and the engine allocate small, short-lived
/// buffers per face, where glibc's malloc/free showed at ~9% of the insert profile
/// (BENCHMARKS.md 9). Allocation never reaches a decision, so results are unchanged.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    use std::io::IsTerminal;
    // hnsw_rs logs every dump and load at INFO: only its warnings unless RUST_LOG asks. Colour
    // only on a terminal, never in a file or a pipe.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hnsw_rs=warn")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = clip_cluster::cli::Cli::parse();
    match clip_cluster::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
