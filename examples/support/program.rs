//! What both proxies do around their core: [`main`] (the command line, logging, the
//! exit code), demo backends when no `--backend` is given, the listener, Ctrl-C, the
//! final stats.
//!
//! A bad option is clap's usage error: the message names it, the exit code is 2. A
//! failure to start is a message, printed as `error: …`, and the exit code is 1. Log
//! lines carry the program's name as their target (`http_proxy: listening on …`), as
//! they did when each `main` logged them itself.

use std::env::ArgsOs;
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tower_lb::{BackendStats, Weight};
use tracing_subscriber::EnvFilter;

use super::backend::HttpBackend;

/// The target of these log lines: the crate's root module, `http_proxy` or `tcp_proxy`.
const TARGET: &str = env!("CARGO_CRATE_NAME");

/// The proxies' tokio runtime: the current-thread scheduler when the process may run on
/// one core only (under `taskset -c 0`, say, or a one-CPU container), the work-stealing
/// one with a worker per core otherwise. On one core a work-stealing worker has no one
/// to steal from, and it pays for the machinery anyway: atomic run queues, a wake-up
/// that goes through the shared injector when it comes from the I/O driver.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

/// A proxy's `fn main`: [`main`] on the [`runtime`] for this process.
pub fn run_main<S, F>(
    parse: impl FnOnce(ArgsOs) -> Result<S, clap::Error>,
    run: impl FnOnce(S) -> F,
) -> ExitCode
where
    F: Future<Output = Result<(), String>>,
{
    match runtime() {
        Ok(runtime) => runtime.block_on(main(parse, run)),
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A proxy's `main`: parses the command line with `parse`, starts logging, then runs
/// the proxy with `run`, whose error says why it could not start.
pub async fn main<S, F>(
    parse: impl FnOnce(ArgsOs) -> Result<S, clap::Error>,
    run: impl FnOnce(S) -> F,
) -> ExitCode
where
    F: Future<Output = Result<(), String>>,
{
    // A bad option: clap prints the message naming it, and exits with code 2.
    let settings = parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    init_logging();
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stdout, filtered by `RUST_LOG` (default `info`), in colour on a terminal.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

/// With no backend given, starts three demo HTTP backends on loopback and adds them
/// (weight 1) to `backends`, each address made a backend by `backend`. The servers run
/// until the returned value is dropped: keep it until the proxy stops.
pub async fn demo_backends<T>(
    backends: &mut Vec<(T, Weight)>,
    backend: impl Fn(SocketAddr) -> T,
) -> Result<Vec<HttpBackend>, String> {
    let mut demo = Vec::new();
    if !backends.is_empty() {
        return Ok(demo);
    }
    for name in ["backend-1", "backend-2", "backend-3"] {
        let server = HttpBackend::start(name)
            .await
            .map_err(|e| format!("cannot start a demo backend: {e}"))?;
        tracing::info!(target: TARGET, name, addr = %server.addr(), "demo backend started");
        backends.push((backend(server.addr()), Weight::ONE));
        demo.push(server);
    }
    Ok(demo)
}

/// Listens on `addr`, the `--listen` option.
pub async fn listen(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (--listen): {e}"))
}

/// Logs that the proxy is up: where, with which strategy, over how many backends.
pub fn log_listening(url: impl Display, strategy: &str, backends: usize) {
    tracing::info!(target: TARGET, "listening on {url}, strategy {strategy}, {backends} backends");
}

/// Completes on Ctrl-C, and logs it: the proxies' signal to shut down.
pub async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!(target: TARGET, "Ctrl-C");
}

/// Logs each backend's counters once the proxy has stopped; with `successes`, the
/// count of successful requests too (the HTTP proxy's log has it, the TCP proxy's not).
pub fn log_final_stats<A: Display>(stats: &[BackendStats<A>], successes: bool) {
    for s in stats {
        tracing::info!(
            target: TARGET,
            backend = %s.addr,
            picks = s.picks,
            // `None` leaves the field out of the line.
            successes = successes.then_some(s.successes),
            failures = s.failures,
            ejections = s.ejections,
            health = %s.health,
            "final stats"
        );
    }
}
