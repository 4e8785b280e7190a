//! A Layer 7 reverse proxy with TLS termination, balancing with `tower-lb`.
//!
//! ```sh
//! cargo run --release --example http_proxy -- [OPTIONS]
//! cargo run --release --example http_proxy -- --help
//! ```
//!
//! Without `--backend` it starts three demo backends on loopback (each answers with its
//! name), so `cargo run --example http_proxy` then `curl -i localhost:8080/` works as is.
//! The proxy adds `x-forwarded-for`, `x-forwarded-proto` and `forwarded`, strips
//! hop-by-hop headers, streams bodies both ways, and answers 503 (with `Retry-After`)
//! when no backend is eligible or all are at `--max-in-flight`. Ctrl-C stops accepting
//! and lets requests in flight finish. Logs: `RUST_LOG` (default `info`).
//!
//! # Failures
//!
//! - **Backends.** One attempt gets `--timeout` seconds (default 30) to produce the
//!   response head, a connect at most 3 s of them (and at most ¾ of `--timeout`). A
//!   refused or hanging connect is retried once on another backend, whatever the
//!   method: nothing was sent. A time-out is retried once on another backend for an
//!   idempotent method (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) whose body, if any, was
//!   not yet sent; otherwise the client gets 504. Other backend errors are 502. Every
//!   failed attempt — refused, timed out, 5xx — counts as a failure for the backend's
//!   passive health (five in a row eject it); `--health-path` adds active probes.
//! - **Clients.** A client has `--header-timeout` seconds (default 10) to send a
//!   request head, counted from the connection's start (after the TLS handshake, itself
//!   bounded by 10 s) for the first request and from the head's first byte for the next
//!   ones, so slowloris connections are closed. A connection with no request in progress
//!   is closed after `--idle-timeout` seconds (default 60). Neither cuts a request whose
//!   head has arrived: a slow backend or a long download is bounded by `--timeout` (up
//!   to the response head) and by the client alone (for the body).
//! - **Options.** A bad value (a `--backend` without a port, say) is a usage error:
//!   the message names it, the exit code is 2.
//!
//! The core lives in `proxy.rs`, which `tests/examples.rs` runs on loopback.

mod proxy;
#[path = "../support/mod.rs"]
mod support;

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use proxy::{Proxy, Settings};
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
                    settings.backends.push((
                        tower_lb::balance::HttpTarget::http(backend.addr()),
                        tower_lb::Weight::ONE,
                    ));
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
    let proxy = match Proxy::start(&settings) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some((_, pem)) = &settings.self_signed {
        let path = std::env::temp_dir().join("tower-lb-http-proxy-localhost.pem");
        match std::fs::write(&path, pem) {
            Ok(()) => tracing::info!(
                "self-signed certificate for localhost: curl --cacert {} https://localhost:{}/",
                path.display(),
                settings.listen.port()
            ),
            Err(e) => tracing::warn!(error = %e, "cannot write the self-signed certificate"),
        }
    }
    if settings.random_secret {
        tracing::info!(
            "no --cookie-secret: a random one; other instances will not honour these cookies"
        );
    }
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        "listening on {scheme}://{}, strategy {}, {} backends",
        settings.listen,
        settings.strategy.name(),
        settings.backends.len()
    );
    let pool = proxy.pool().clone();
    proxy::serve(listener, proxy, settings.tls.clone(), async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C");
    })
    .await;
    for s in pool.stats() {
        tracing::info!(
            backend = %s.addr,
            picks = s.picks,
            successes = s.successes,
            failures = s.failures,
            ejections = s.ejections,
            health = %s.health,
            "final stats"
        );
    }
    drop(demo);
    ExitCode::SUCCESS
}
