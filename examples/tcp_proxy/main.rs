//! A Layer 4 TCP proxy balancing connections with `tower-lb`.
//!
//! ```sh
//! cargo run --release --example tcp_proxy -- --backend 127.0.0.1:5432 --backend 127.0.0.1:5433=2
//! cargo run --release --example tcp_proxy -- --help
//! ```
//!
//! Each accepted connection goes to a backend chosen from the connection's addresses
//! alone (no byte of it is read), then bytes are copied both ways until both sides have
//! closed. A backend that refuses the connection, or does not accept it within
//! `--connect-timeout` (default 3 s: a powered-off host drops connects rather than
//! refusing them), is reported as failed (three failures in a row eject it for a while)
//! and the next backend is tried before any byte flows, so the client never sees the
//! failure; only when every eligible backend failed is the client's connection closed.
//! Without `--backend` it starts three demo HTTP backends on loopback, so
//! `curl localhost:9090/` works as is. Ctrl-C stops accepting and waits for open
//! connections. Logs: `RUST_LOG` (default `info`).
//!
//! The core lives in `proxy.rs`, which `tests/examples.rs` runs on loopback.

mod proxy;
#[path = "../support/mod.rs"]
mod support;

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use proxy::{Settings, TcpProxy};
use support::backend::HttpBackend;

#[tokio::main]
async fn main() -> ExitCode {
    // A bad option: clap prints the message naming it, and exits with code 2.
    let mut settings = Settings::parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    // No --backend: three demo backends on loopback, kept until the proxy stops.
    let mut demo = Vec::new();
    if settings.backends.is_empty() {
        for name in ["backend-1", "backend-2", "backend-3"] {
            match HttpBackend::start(name).await {
                Ok(backend) => {
                    tracing::info!(name, addr = %backend.addr(), "demo backend started");
                    settings
                        .backends
                        .push((backend.addr(), tower_lb::Weight::ONE));
                    demo.push(backend);
                }
                Err(e) => {
                    eprintln!("error: cannot start a demo backend: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "error: cannot listen on {} (--listen): {e}",
                settings.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let proxy = match TcpProxy::start(&settings) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        "listening on {}, strategy {}, {} backends",
        settings.listen,
        settings.strategy.name(),
        settings.backends.len()
    );
    let pool = proxy.pool().clone();
    proxy::serve(listener, proxy, async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C");
    })
    .await;
    for s in pool.stats() {
        tracing::info!(
            backend = %s.addr,
            picks = s.picks,
            failures = s.failures,
            ejections = s.ejections,
            health = %s.health,
            "final stats"
        );
    }
    drop(demo);
    ExitCode::SUCCESS
}
