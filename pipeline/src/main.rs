//! The `lensnet` binary: parses the command line, loads the configuration and hands over to the
//! libraries. The only place where `anyhow` is used.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

/// glibc's malloc keeps up to 8 arenas per core, each holding on to what its thread freed: a
/// field run's peak resident memory grew with the number of buckets it had worked through (207 MB
/// at 10⁵ stars with the default, 143 MB with two arenas; `lensnet bench field`). Two arenas
/// bound it; an explicit `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// The async runtime's blocking threads at most (see `main`); `LENSNET_BLOCKING_THREADS`
/// overrides it.
const BLOCKING_THREADS: usize = 32;

fn blocking_threads() -> usize {
    std::env::var("LENSNET_BLOCKING_THREADS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(BLOCKING_THREADS)
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let args = cli::Cli::parse();
    // Demo and replay print their own progress and summary; per-step stage logs only with -v.
    let chatty = !matches!(args.command, cli::Command::Demo(_) | cli::Command::Replay(_) | cli::Command::ReplayReport(_) | cli::Command::Evaluate(_));
    init_tracing(args.verbose, chatty);
    // Blocking threads (object_store's local file I/O runs on them, one task per read) at most
    // 32: tokio's default of 512 let a 10⁶-star field's nightly run start over 300 of them, each
    // with its stack and allocator caches, for I/O that two cores cannot overlap that far.
    let runtime = match tokio::runtime::Builder::new_multi_thread().max_blocking_threads(blocking_threads()).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8, chatty: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        // ONNX Runtime's own INFO lines (about 200 a run) only with -vv.
        0 if !chatty => "warn,sqlx=warn,ort=warn",
        0 => "info,sqlx=warn,ort=warn",
        1 => "debug,sqlx=warn,ort=warn",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("LENSNET_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
