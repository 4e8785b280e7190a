//! The reverse proxy's core. This file builds the balancer ([`Proxy::start`]) and
//! proxies each request (`handle`: one retry, the error responses); the other jobs have
//! a file each, beside this one:
//!
//! - `cli.rs`: the command line, validated into [`Settings`];
//! - `tls.rs`: the rustls configuration, the self-signed certificate, the handshake;
//! - `upstream.rs`: the HTTP client under the balancer, its time-outs, and the request
//!   body its attempts share;
//! - `h1.rs`: HTTP/1.1 on a backend connection, from the request's own task;
//! - `front.rs`: HTTP/1.1 on a client connection for requests without a body (the
//!   others go to hyper's server);
//! - `alarm.rs`: the lazy alarm behind both sides' time-outs;
//! - `forward.rs`: the headers a proxy strips and adds;
//! - `serve.rs`: the accept loop, the client connections' time-outs, graceful shutdown;
//! - `metrics.rs`: the Prometheus recorder and the `/metrics` endpoint (`--metrics`).
//!
//! `main.rs` parses the command line and runs [`serve`]; `tests/examples/` runs the
//! same code against backends on loopback. Both load this file with `#[path]`, which
//! makes the modules it declares the files beside it.
//!
//! Failure handling (the user's view is in `main.rs`):
//! - [`Upstream`], the client under the balancer, bounds each attempt with `--timeout`,
//!   so a time-out is an error the balancer's classifier sees: one failure for passive
//!   health, recorded by the balancer's own bookkeeping, like a refused connect.
//! - `handle` sends a request once; on a connect failure, or a time-out of an idempotent
//!   method, `retry` sends it once more to another eligible backend. The client's body
//!   waits in a slot until an attempt polls it; a new attempt may start only while it is
//!   still there (or empty), and an earlier attempt that polls it later gets an error,
//!   so no backend ever receives a truncated body as a whole one (`upstream.rs`).
//! - A client connection ends when no request head arrives in time (`--header-timeout`)
//!   or no request starts for `--idle-timeout` (`serve.rs`).

mod alarm;
mod cli;
mod forward;
mod front;
mod h1;
mod metrics;
mod serve;
mod tls;
mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use tower::ServiceExt;
use tower_lb::affinity::{AffinityKey, CookieKey, HeaderKey, PeerIpKey};
use tower_lb::balance::{
    BalanceLayer, BoxError, Client, HttpBalance, HttpStatus, HttpTarget, OnOverload, Sticky,
    StickyCookie, find_error,
};
use tower_lb::health::{OutlierDetection, Probe, ProbeConfig, probe_fn};
use tower_lb::orca::LoadReport;
use tower_lb::{AnyPicker, BackendId, Overloaded, PickError, Pool};

pub use cli::Settings;
pub use metrics::serve_metrics;
pub use serve::serve;

use serve::ClientTimeouts;
use upstream::{Failure, Resend, Upstream, UpstreamBody, UpstreamError};

/// The target of the core's logs, whichever of its files logs: `http_proxy::proxy`, as
/// the README shows them.
const LOG_TARGET: &str = module_path!();

/// The affinity key of the hashing strategies: a header, a cookie, or the client IP (the
/// default, and the fallback when the header or cookie is absent).
#[derive(Debug, Clone)]
pub enum HashKey {
    /// A request header.
    Header(HeaderKey),
    /// A cookie.
    Cookie(CookieKey),
    /// The client's IP address only.
    ClientIp,
}

impl<B> AffinityKey<Request<B>> for HashKey {
    fn key(&self, req: &Request<B>) -> Option<u64> {
        let found = match self {
            HashKey::Header(key) => key.key(req),
            HashKey::Cookie(key) => key.key(req),
            HashKey::ClientIp => None,
        };
        // The client's address travels in the request's extensions (see `Resend`).
        found.or_else(|| PeerIpKey::new().key(req))
    }
}

type Balancer = HttpBalance<Upstream, AnyPicker, HashKey>;

/// The body of the proxy's responses.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

struct Inner {
    balance: Balancer,
    sticky: Option<Sticky<Balancer>>,
    /// The sticky cookie, and whether it is `Secure` (with TLS).
    cookie: Option<(StickyCookie, bool)>,
    client: ClientTimeouts,
    /// The Prometheus recorder's handle, with `--metrics`.
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// A running proxy: the backend pool, its health task, the balancer.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

impl Proxy {
    /// Builds the pool over `settings.backends` and starts its health task (in a tokio
    /// runtime).
    pub fn start(settings: &Settings) -> Result<Proxy, BoxError> {
        let pool = Pool::<HttpTarget, _>::builder(settings.strategy.build())
            .outlier_detection(OutlierDetection::new())
            .metrics_label(|target: &HttpTarget| target.to_string())
            .build()?;
        // The backends' series register with the recorder current when they are first
        // published: this proxy's own, with `--metrics`.
        let recorder = settings.metrics.map(|_| metrics::recorder());
        let insert = || {
            settings
                .backends
                .iter()
                .try_for_each(|(target, weight)| pool.insert(target.clone(), *weight).map(drop))
        };
        match &recorder {
            Some(recorder) => ::metrics::with_local_recorder(recorder, insert)?,
            None => insert()?,
        }
        match &settings.health {
            Some((probe, interval)) => {
                let probe = probe.clone();
                // The probe connects to the target's authority (`host:port`).
                let probe = probe_fn(move |target: &HttpTarget| {
                    Probe::<String>::probe(&probe, &target.authority().to_string())
                });
                let config = ProbeConfig::new()
                    .interval(*interval)
                    .jitter(*interval / 10)
                    .timeout((*interval).min(Duration::from_secs(2)));
                drop(pool.spawn_health_probes(probe, config)?);
            }
            None => drop(pool.spawn_health()?),
        }

        let client = Upstream::new(settings.timeout);
        let mut layer = BalanceLayer::new(pool.clone())
            .affinity_if_hashing(settings.key.clone())
            .classify(HttpStatus::new());
        if let Some(max) = settings.max_in_flight {
            layer = layer
                .max_in_flight(max as usize)
                .on_overload(OnOverload::Shed);
        }
        let balance = layer.build(Client(client));
        let sticky = settings
            .sticky
            .clone()
            .map(|cookie| Sticky::new(balance.clone(), cookie));
        Ok(Proxy {
            inner: Arc::new(Inner {
                balance,
                sticky,
                cookie: settings.sticky.clone().map(|c| (c, settings.tls.is_some())),
                client: settings.client,
                metrics: recorder.map(|r| r.handle()),
            }),
        })
    }

    /// The metrics in Prometheus text, with `--metrics`.
    pub fn metrics(&self) -> Option<&metrics_exporter_prometheus::PrometheusHandle> {
        self.inner.metrics.as_ref()
    }

    /// The backend pool: stats, health, membership.
    pub fn pool(&self) -> &Pool<HttpTarget, AnyPicker> {
        self.inner.balance.pool()
    }
}

/// Proxies one request.
async fn handle(
    inner: &Inner,
    req: Request<Option<Incoming>>,
    peer: SocketAddr,
    hop: &forward::Hop,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    // The client's address is a hashing strategy's key (or its fallback); the other
    // strategies never read it, so their requests go without it.
    let hashing = inner.balance.pool().picker().is_hashing();
    let mut resend = Resend::new(
        parts,
        body,
        hashing.then_some(peer),
        |headers, method, has_body| forward::request_fields(headers, hop, method, has_body),
    );
    let first = match &inner.sticky {
        // Boxed: its future is larger than the plain path's, which it would enlarge.
        Some(sticky) => Box::pin(sticky.clone().oneshot(resend.first())).await,
        None => inner.balance.clone().oneshot(resend.first()).await,
    };
    let result = match first {
        // Boxed: a retry is rare, and its future would double the size of every request's.
        Err(e) if may_retry(&e, &resend.method) => Box::pin(retry(inner, &resend, e)).await,
        other => other,
    };
    match result {
        Ok(response) => {
            record_load(inner, &response);
            // Field values are only computed when the line is logged (`RUST_LOG`).
            tracing::info!(
                %peer,
                method = %resend.method,
                path = %resend.uri.path(),
                backend = response.body().backend().as_str(),
                status = response.status().as_u16(),
                ms = started.elapsed().as_millis() as u64,
                "proxied"
            );
            forward::response(response)
        }
        Err(e) => {
            let response = error_response(inner, &e);
            tracing::warn!(
                %peer,
                method = %resend.method,
                path = %resend.uri.path(),
                status = response.status().as_u16(),
                ms = started.elapsed().as_millis() as u64,
                error = %e,
                "not proxied"
            );
            response
        }
    }
}

/// Whether a failed attempt may be repeated on another backend: after a connect
/// failure (nothing was sent), or after a time-out when the method is idempotent
/// (sending it twice does what sending it once does: GET, HEAD, OPTIONS, TRACE, PUT,
/// DELETE). Whether the body can still be sent is for [`Resend::again`] to say.
fn may_retry(e: &BoxError, method: &Method) -> bool {
    match find_error::<UpstreamError>(e).map(UpstreamError::failure) {
        Some(Failure::Connect(_)) => true,
        Some(Failure::TimedOut(_)) => method.is_idempotent(),
        Some(Failure::Other(_)) | None => false,
    }
}

/// Sends the request once more, to another eligible backend than the one that failed.
async fn retry(
    inner: &Inner,
    resend: &Resend,
    first: BoxError,
) -> Result<Response<UpstreamBody>, BoxError> {
    let failed = find_error::<UpstreamError>(&first).and_then(|u| u.target().cloned());
    let Some((other, target)) = another_backend(&inner.balance, failed.as_ref()) else {
        return Err(first);
    };
    let Some(req) = resend.again() else {
        tracing::debug!(error = %first, "the body is (partly) sent: no retry");
        return Err(first);
    };
    tracing::info!(
        failed = failed.as_ref().map_or("?", |f| f.as_str()),
        retry = %target,
        error = %first,
        "retrying on another backend"
    );
    let mut balance = inner.balance.clone();
    balance.ready().await?;
    let mut response = balance.call_pinned(req, Some(other)).await?;
    // With sticky sessions, the client now belongs to the backend that answered.
    if let Some((cookie, secure)) = &inner.cookie
        && let Ok(value) = HeaderValue::from_str(&format!(
            "{}={}; Path=/; HttpOnly{}; SameSite=Lax",
            cookie.name(),
            cookie.value_for(&target),
            if *secure { "; Secure" } else { "" }
        ))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// The eligible backend, other than `failed`, with the fewest requests in flight.
fn another_backend(
    balance: &Balancer,
    failed: Option<&Authority>,
) -> Option<(BackendId, HttpTarget)> {
    let prepared = balance.pool().snapshot();
    let snapshot = prepared.snapshot();
    snapshot
        .eligible()
        .iter()
        .filter_map(|&i| snapshot.get(i as usize))
        .filter(|b| Some(b.addr().authority()) != failed)
        .min_by_key(|b| b.state().in_flight())
        .map(|b| (b.id(), b.addr().clone()))
}

/// 503 with `Retry-After` when no backend may take the request, 502 when one failed.
/// With `--strategy server-load`: feeds the backend's ORCA report (the
/// `endpoint-load-metrics` header), if it sent one, to the strategy.
fn record_load(inner: &Inner, response: &Response<UpstreamBody>) {
    let pool = inner.balance.pool();
    let Some(load) = pool.picker().server_load() else {
        return;
    };
    let served = response.body().backend();
    let Some(report) = LoadReport::from_headers(response.headers()) else {
        return;
    };
    let snapshot = pool.snapshot();
    if let Some(b) = snapshot
        .backends()
        .iter()
        .find(|b| b.addr().authority() == served)
    {
        load.record(b.id(), &report);
    }
}

fn error_response(inner: &Inner, e: &BoxError) -> Response<ProxyBody> {
    let (status, retry_after, text) = if let Some(overloaded) = find_error::<Overloaded>(e) {
        let secs = overloaded
            .retry_after
            .map_or(1, |d| d.as_secs_f64().ceil() as u64)
            .max(1);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(secs),
            "every backend is at its limit of requests in flight\n",
        )
    } else if find_error::<PickError>(e).is_some() {
        // When the first ejected backend comes back, at the latest.
        let secs = inner
            .balance
            .pool()
            .stats()
            .iter()
            .filter_map(|s| s.returns_in)
            .min()
            .map_or(5, |d| d.as_secs_f64().ceil() as u64)
            .max(1);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(secs),
            "no backend is available\n",
        )
    } else if let Some(Failure::TimedOut(_)) =
        find_error::<UpstreamError>(e).map(UpstreamError::failure)
    {
        (
            StatusCode::GATEWAY_TIMEOUT,
            None,
            "the backend did not answer in time\n",
        )
    } else {
        (StatusCode::BAD_GATEWAY, None, "the backend failed\n")
    };
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
