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
//!   not yet sent; otherwise the client gets 504. Other backend errors (a reset, a
//!   malformed answer) are 502. A kept-alive connection the backend closed just as the
//!   request went out is replaced by a new one when the request may go again (nothing
//!   of it was written, or it is a GET, HEAD, OPTIONS or TRACE with no body), once:
//!   not a failure. Every
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
//! The core lives in `proxy.rs` and the files it declares beside it (`cli.rs`, `tls.rs`,
//! `upstream.rs`, `h1.rs`, `front.rs`, `forward.rs`, `serve.rs`); `tests/examples/` runs it on
//! loopback.

// With `#[path]` (as in tests/examples/) a module file finds its own modules beside
// it: `proxy.rs`'s `mod cli;` is `cli.rs` in this folder, in both builds.
#[path = "proxy.rs"]
mod proxy;
#[path = "../support/mod.rs"]
mod support;

use std::process::ExitCode;

use tower_lb::balance::HttpTarget;

use proxy::{Proxy, Settings};
use support::program;

/// The allocator: mimalloc's per-thread free lists, where glibc's malloc spent 4–5 % of
/// the proxy's CPU under load (`perf` on `benches/compare/proxy.sh`'s rig).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stops the `/metrics` server with the proxy.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn main() -> ExitCode {
    program::run_main(Settings::parse, run)
}

/// Runs the proxy until Ctrl-C; an error says why it could not start.
async fn run(mut settings: Settings) -> Result<(), String> {
    // No --backend: three demo backends on loopback, kept until the proxy stops.
    let _demo = program::demo_backends(&mut settings.backends, HttpTarget::http).await?;
    let listener = program::listen(settings.listen).await?;
    let proxy = Proxy::start(&settings).map_err(|e| e.to_string())?;
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
    program::log_listening(
        format_args!("{scheme}://{}", settings.listen),
        &settings.strategy.name(),
        settings.backends.len(),
    );
    let pool = proxy.pool().clone();
    let _metrics = match (settings.metrics, proxy.metrics()) {
        (Some(addr), Some(handle)) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (--metrics): {e}"))?;
            tracing::info!("metrics: http://{addr}/metrics");
            let task = tokio::spawn(proxy::serve_metrics(listener, handle.clone()));
            Some(AbortOnDrop(task))
        }
        _ => None,
    };
    proxy::serve(listener, proxy, settings.tls.clone(), program::ctrl_c()).await;
    program::log_final_stats(&pool.stats(), true);
    Ok(())
}
