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
//! The core lives in `proxy.rs`, which `tests/examples/` runs on loopback.

mod proxy;
#[path = "../support/mod.rs"]
mod support;

use std::process::ExitCode;

use proxy::{Settings, TcpProxy};
use support::program;

fn main() -> ExitCode {
    program::run_main(Settings::parse, run)
}

/// Runs the proxy until Ctrl-C; an error says why it could not start.
async fn run(mut settings: Settings) -> Result<(), String> {
    // No --backend: three demo backends on loopback, kept until the proxy stops.
    let _demo = program::demo_backends(&mut settings.backends, |addr| addr).await?;
    let listener = program::listen(settings.listen).await?;
    let proxy = TcpProxy::start(&settings).map_err(|e| e.to_string())?;
    program::log_listening(
        settings.listen,
        &settings.strategy.name(),
        settings.backends.len(),
    );
    let pool = proxy.pool().clone();
    proxy::serve(listener, proxy, program::ctrl_c()).await;
    program::log_final_stats(&pool.stats(), false);
    Ok(())
}
