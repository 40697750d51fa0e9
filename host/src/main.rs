//! The `tq-host` binary: parse arguments, set up logging, run the CLI.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: per-request and per-packet
/// allocations were about 11 % of a plugin server's CPU in perf (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tq_host::cli::Cli::parse();
    let filter = EnvFilter::try_from_env("TQ_LOG")
        .unwrap_or_else(|_| EnvFilter::new(cli.default_log_level()));
    match cli.log_format() {
        tq_host::cli::LogFormat::Human => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object per line: the event's fields, its target, and the
        // fields of every span it happened in (`spans`), so a shipper can
        // index lines by connection id, peer and plugin version.
        tq_host::cli::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    match tq_host::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<tq_host::cli::Failure>() {
                Some(f) => std::process::ExitCode::from(f.code),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
