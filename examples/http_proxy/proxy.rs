//! The reverse proxy's core: options, the balancer, the request path, TLS, the server.
//!
//! `main.rs` parses the command line and runs [`serve`]; `tests/examples.rs` runs the
//! same code against backends on loopback.
//!
//! Failure handling (the user's view is in `main.rs`):
//! - [`Upstream`], the client under the balancer, bounds each attempt with `--timeout`,
//!   so a time-out is an error the balancer's classifier sees: one failure for passive
//!   health, recorded by the balancer's own bookkeeping, like a refused connect.
//! - `handle` sends a request once; on a connect failure, or a time-out of an idempotent
//!   method, `retry` sends it once more to another eligible backend. The client's body
//!   sits in a [`BodySlot`] until an attempt polls it; a new attempt may start only
//!   while it is still there (or empty), and an earlier attempt that polls it later gets
//!   an error, so no backend ever receives a truncated body as a whole one.
//! - [`Watched`] wraps each client connection's stream and ends it when no request head
//!   arrives in time (`--header-timeout`) or no request starts for `--idle-timeout`.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueEnum};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};
use tower_lb::affinity::{AffinityKey, CookieKey, HeaderKey, PeerIpKey};
use tower_lb::balance::{
    BalanceLayer, BoxError, Client, HttpBalance, HttpStatus, HttpTarget, OnOverload, Sticky,
    StickyCookie, find_error,
};
use tower_lb::health::{HttpProbe, OutlierDetection, Probe, ProbeConfig, probe_fn};
use tower_lb::{
    AnyPicker, BackendId, LeastLoaded, Maglev, Overloaded, PeakEwma, PickError, Pool,
    PowerOfTwoChoices, Random, Rendezvous, Ring, RoundRobin, Weight, WeightedRoundRobin,
};

/// The proxy's command line.
#[derive(Debug, Parser)]
#[command(
    name = "http_proxy",
    about = "A Layer 7 reverse proxy balancing over HTTP backends, with optional TLS termination.",
    after_help = "Without --backend, three demo backends start on loopback. Logs: RUST_LOG (default info)."
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// A backend, `host:port`, with an optional weight (`127.0.0.1:9001=3`); repeatable.
    #[arg(long = "backend", value_name = "ADDR[=WEIGHT]", value_parser = parse_backend)]
    pub backends: Vec<(HttpTarget, Weight)>,

    /// How to choose a backend for each request.
    #[arg(long, value_enum, default_value_t = StrategyName::P2c)]
    pub strategy: StrategyName,

    /// Hash on this request header (ring, maglev, rendezvous); without it, on the client IP.
    #[arg(long, value_name = "NAME", conflicts_with = "hash_cookie", value_parser = parse_header_name)]
    pub hash_header: Option<HeaderName>,

    /// Hash on this cookie (ring, maglev, rendezvous); without it, on the client IP.
    #[arg(long, value_name = "NAME")]
    pub hash_cookie: Option<String>,

    /// Issue and honour a sticky session cookie naming the backend (HMAC-tagged).
    #[arg(long)]
    pub sticky: bool,

    /// The sticky cookie's name.
    #[arg(long, value_name = "NAME", default_value = "lb", requires = "sticky")]
    pub cookie_name: String,

    /// The sticky cookie's secret (16 bytes or more), shared by instances that must
    /// honour each other's cookies; random when not given.
    #[arg(long, value_name = "S", requires = "sticky")]
    pub cookie_secret: Option<String>,

    /// Probe every backend with `GET PATH` (2xx/3xx is up); passive ejection is always on.
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,

    /// Seconds between two probes of a backend.
    #[arg(long, value_name = "SECS", default_value = "5", requires = "health_path", value_parser = parse_secs)]
    pub health_interval: Duration,

    /// At most N requests in flight per backend; beyond, 503 with Retry-After.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: Option<u32>,

    /// Seconds one attempt may wait for a backend's response head (connect included);
    /// then 504, or a retry on another backend for an idempotent request.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub timeout: Duration,

    /// Seconds a client has to send a request's head, from the connection's start or
    /// from the head's first byte (against slowloris).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub header_timeout: Duration,

    /// Seconds a client connection may stay open with no request in progress.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub idle_timeout: Duration,

    /// Terminate TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Terminate TLS with a certificate for localhost generated at start.
    #[arg(long)]
    pub tls_self_signed: bool,
}

/// `--strategy`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyName {
    /// Each backend in turn (weights ignored).
    RoundRobin,
    /// Smooth weighted round robin (NGINX).
    Weighted,
    /// Uniformly at random (weights ignored).
    Random,
    /// The fewest requests in flight per unit of weight.
    LeastLoaded,
    /// The less loaded of two random backends.
    P2c,
    /// The faster of two random backends (peak-EWMA latency × load).
    PeakEwma,
    /// Consistent hashing on a ring.
    Ring,
    /// Maglev consistent hashing.
    Maglev,
    /// Rendezvous (highest random weight) hashing.
    Rendezvous,
}

impl StrategyName {
    /// The library's strategy of this name, as a picker chosen at run time.
    fn build(self) -> AnyPicker {
        match self {
            StrategyName::RoundRobin => RoundRobin::new().into(),
            StrategyName::Weighted => WeightedRoundRobin::new().into(),
            StrategyName::Random => Random::new().into(),
            StrategyName::LeastLoaded => LeastLoaded::new().into(),
            StrategyName::P2c => PowerOfTwoChoices::new().into(),
            StrategyName::PeakEwma => PeakEwma::new().into(),
            StrategyName::Ring => Ring::new().into(),
            StrategyName::Maglev => Maglev::new().into(),
            StrategyName::Rendezvous => Rendezvous::new().into(),
        }
    }

    /// The name as given on the command line.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned())
    }
}

fn parse_backend(s: &str) -> Result<(HttpTarget, Weight), String> {
    let (addr, weight) = match s.rsplit_once('=') {
        Some((addr, weight)) => {
            let weight = weight
                .parse::<u64>()
                .ok()
                .and_then(|w| Weight::new(w).ok())
                .ok_or_else(|| {
                    format!("the weight {weight:?} is not a whole number from 1 to 4294967295")
                })?;
            (addr, weight)
        }
        None => (s, Weight::ONE),
    };
    let target = HttpTarget::from_str(addr).map_err(|e| e.to_string())?;
    // Without a port, `http://name` would mean port 80: most likely a typo, and today's
    // answer would be 502s much later. Say so now.
    if target.authority().port_u16().is_none() {
        return Err(format!(
            "{addr:?} has no port: a backend is `host:port` (`127.0.0.1:9001`)"
        ));
    }
    if target.scheme() != &http::uri::Scheme::HTTP {
        return Err(format!(
            "{addr:?}: backends are reached over plain HTTP (TLS ends at the proxy)"
        ));
    }
    Ok((target, weight))
}

fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_str(s).map_err(|_| format!("{s:?} is not a valid header name"))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.001 && *secs <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds from 0.001 to 86400"))
}

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
        // The client's address travels in the request's extensions (see `handle`).
        found.or_else(|| PeerIpKey::new().key(req))
    }
}

/// Validated options, ready to start a proxy.
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The backends and their weights (empty: the caller starts demo backends).
    pub backends: Vec<(HttpTarget, Weight)>,
    /// The strategy.
    pub strategy: StrategyName,
    /// The hashing key.
    pub key: HashKey,
    /// The sticky cookie, with `--sticky`.
    pub sticky: Option<StickyCookie>,
    /// Whether the cookie secret was generated.
    pub random_secret: bool,
    /// Active probes: the probe and its interval.
    pub health: Option<(HttpProbe, Duration)>,
    /// Per-backend limit.
    pub max_in_flight: Option<u32>,
    /// How long one attempt may wait for a backend's response head.
    pub timeout: Duration,
    /// The client connections' time-outs.
    pub client: ClientTimeouts,
    /// The TLS configuration, when terminating TLS.
    pub tls: Option<Arc<ServerConfig>>,
    /// The generated certificate, with `--tls-self-signed` (DER and PEM).
    pub self_signed: Option<(CertificateDer<'static>, String)>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("backends", &self.backends)
            .field("strategy", &self.strategy)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A usage error (exit code 2) naming the option at fault.
fn usage(kind: ErrorKind, message: impl fmt::Display) -> clap::Error {
    Args::command().error(kind, message)
}

impl Settings {
    /// Parses and validates a command line (`args[0]` is the program name).
    pub fn parse<I, T>(args: I) -> Result<Settings, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Settings::from_args(Args::try_parse_from(args)?)
    }

    /// Validates parsed options: what clap's attributes cannot check.
    pub fn from_args(args: Args) -> Result<Settings, clap::Error> {
        let strategy = args.strategy.build();
        let key = match (args.hash_header, args.hash_cookie) {
            (Some(header), _) => Some(("--hash-header", HashKey::Header(HeaderKey::new(header)))),
            (None, Some(cookie)) => {
                Some(("--hash-cookie", HashKey::Cookie(CookieKey::new(cookie))))
            }
            (None, None) => None,
        };
        if let Some((option, _)) = &key
            && !strategy.is_hashing()
        {
            return Err(usage(
                ErrorKind::ArgumentConflict,
                format!(
                    "{option} sets the key of the hashing strategies (ring, maglev, rendezvous), \
                     not of --strategy {}",
                    args.strategy.name()
                ),
            ));
        }
        for (i, (target, _)) in args.backends.iter().enumerate() {
            if args.backends[..i].iter().any(|(t, _)| t == target) {
                return Err(usage(
                    ErrorKind::ValueValidation,
                    format!("--backend {target} is given twice"),
                ));
            }
        }
        let random_secret = args.sticky && args.cookie_secret.is_none();
        let sticky = if args.sticky {
            let secret = match args.cookie_secret {
                Some(secret) => secret.into_bytes(),
                None => random_secret_bytes(),
            };
            let cookie = StickyCookie::new(&args.cookie_name, secret).map_err(|e| {
                let option = match e {
                    tower_lb::balance::StickyError::Name(_) => "--cookie-name",
                    _ => "--cookie-secret",
                };
                usage(ErrorKind::ValueValidation, format!("invalid {option}: {e}"))
            })?;
            let tls = args.tls_cert.is_some() || args.tls_self_signed;
            Some(cookie.secure(tls))
        } else {
            None
        };
        let health = match args.health_path {
            Some(path) => {
                let probe = HttpProbe::new(&path).map_err(|e| {
                    usage(
                        ErrorKind::ValueValidation,
                        format!("invalid --health-path: {e}"),
                    )
                })?;
                Some((probe, args.health_interval))
            }
            None => None,
        };
        let (tls, self_signed) = match (args.tls_cert, args.tls_key, args.tls_self_signed) {
            (Some(cert), Some(key), _) => (Some(load_tls(&cert, &key)?), None),
            (_, _, true) => {
                let (config, der, pem) = self_signed_tls()
                    .map_err(|e| usage(ErrorKind::Io, format!("--tls-self-signed: {e}")))?;
                (Some(config), Some((der, pem)))
            }
            _ => (None, None),
        };
        Ok(Settings {
            listen: args.listen,
            backends: args.backends,
            strategy: args.strategy,
            key: key.map_or(HashKey::ClientIp, |(_, k)| k),
            sticky,
            random_secret,
            health,
            max_in_flight: args.max_in_flight,
            timeout: args.timeout,
            client: ClientTimeouts {
                header: args.header_timeout,
                idle: args.idle_timeout,
            },
            tls,
            self_signed,
        })
    }
}

fn random_secret_bytes() -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut secret = vec![0u8; 32];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut secret);
    secret
}

/// A rustls server configuration (ring provider), HTTP/1.1 over ALPN.
fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_tls(cert: &PathBuf, key: &PathBuf) -> Result<Arc<ServerConfig>, clap::Error> {
    let bad = |option: &str, path: &PathBuf, e: &dyn fmt::Display| {
        usage(
            ErrorKind::ValueValidation,
            format!("{option} {}: {e}", path.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("--tls-cert", cert, &e))?;
    if certs.is_empty() {
        return Err(bad("--tls-cert", cert, &"no certificate in the file"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("--tls-key", key, &e))?;
    server_config(certs, private).map_err(|e| bad("--tls-key", key, &e))
}

/// A self-signed certificate for `localhost` and `127.0.0.1` (rcgen, ring backend):
/// the server configuration, the certificate's DER and PEM.
fn self_signed_tls() -> Result<(Arc<ServerConfig>, CertificateDer<'static>, String), BoxError> {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let der = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let config = server_config(vec![der.clone()], key)?;
    Ok((config, der, cert.pem()))
}

/// The client's request body, shared by the attempts to send it: the first attempt
/// whose body is polled takes it. A later attempt may start only while nobody took it
/// (or when it is empty), and from then on an earlier attempt that polls its body gets
/// an error, never a silently empty body.
struct BodySlot {
    body: Option<Incoming>,
    /// The attempt the body belongs to (1, 2, …).
    attempt: u32,
    /// Whether the body was empty from the start: then any attempt may send "it".
    empty: bool,
    hint: SizeHint,
}

/// The request body sent to a backend: the client's body, taken from its [`BodySlot`]
/// on the first poll. While no backend has polled it, it is still in the slot, so a
/// request whose connection failed or timed out can be sent again, body and all.
pub struct Deferred {
    slot: Arc<Mutex<BodySlot>>,
    attempt: u32,
    body: Option<Incoming>,
    taken: bool,
    end: bool,
    hint: SizeHint,
}

fn lock(slot: &Mutex<BodySlot>) -> std::sync::MutexGuard<'_, BodySlot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl Body for Deferred {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.taken {
            self.taken = true;
            let mut slot = lock(&self.slot);
            if slot.attempt != self.attempt {
                return Poll::Ready(Some(Err("the request body went to a later attempt".into())));
            }
            let (body, empty) = (slot.body.take(), slot.empty);
            drop(slot);
            if body.is_none() && !empty {
                return Poll::Ready(Some(Err("the request body was already sent".into())));
            }
            self.body = body;
        }
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => self.taken || self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => self.hint,
        }
    }
}

/// Why a backend request failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection: nothing was sent.
    Connect(hyper_util::client::legacy::Error),
    /// No response head within the attempt's time-out; the request may have been sent.
    TimedOut(Duration),
    /// Any other error once connected (reset, closed, a failed request body): the
    /// request may have been sent.
    Other(hyper_util::client::legacy::Error),
}

/// A backend request that failed: where it went, and how.
#[derive(Debug)]
pub struct UpstreamError {
    target: Option<Authority>,
    failure: Failure,
}

impl UpstreamError {
    /// How it failed.
    pub fn failure(&self) -> &Failure {
        &self.failure
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self.target.as_ref().map_or("?", |t| t.as_str());
        match &self.failure {
            Failure::Connect(e) => write!(f, "backend {target}: connect failed: {e:?}"),
            Failure::TimedOut(after) => {
                write!(f, "backend {target}: no response within {after:?}")
            }
            Failure::Other(e) => write!(f, "backend {target}: {e:?}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.failure {
            Failure::Connect(e) | Failure::Other(e) => Some(e),
            Failure::TimedOut(_) => None,
        }
    }
}

/// Which backend answered, in the response's extensions (for the access log).
#[derive(Debug, Clone)]
struct ServedBy(Authority);

/// The HTTP client under the balancer: hyper-util's pooled client, each attempt bounded
/// by `--timeout`, reporting which backend a failure came from. Being under the
/// balancer, a time-out is an error the balancer's classifier sees: a failure for the
/// backend's passive health, counted once, like a refused connection.
#[derive(Clone)]
pub struct Upstream {
    client: HyperClient<HttpConnector, Deferred>,
    timeout: Duration,
}

type UpstreamFuture =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, UpstreamError>> + Send>>;

impl Service<Request<Deferred>> for Upstream {
    type Response = Response<Incoming>;
    type Error = UpstreamError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        // hyper-util's client is always ready: it queues for a connection per request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Deferred>) -> UpstreamFuture {
        let target = req.uri().authority().cloned();
        let sent = self.client.request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            // On time-out the request is dropped: its connection, if any, is closed.
            let failure = match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(mut response)) => {
                    if let Some(target) = target {
                        response.extensions_mut().insert(ServedBy(target));
                    }
                    return Ok(response);
                }
                Ok(Err(e)) if e.is_connect() => Failure::Connect(e),
                Ok(Err(e)) => Failure::Other(e),
                Err(_) => Failure::TimedOut(timeout),
            };
            Err(UpstreamError { target, failure })
        })
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
            .build();
        for (target, weight) in &settings.backends {
            pool.insert(target.clone(), *weight)?;
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

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A refused or unanswered connect is a connect failure, retried for any method
        // (nothing was sent). So that a hanging connect is reported as one, never as
        // the attempt's time-out, it gets at most three quarters of --timeout.
        let connect_timeout = CONNECT_TIMEOUT.min(settings.timeout.mul_f64(0.75));
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Upstream {
            client: HyperClient::builder(TokioExecutor::new()).build(connector),
            timeout: settings.timeout,
        };
        let mut layer = BalanceLayer::new(pool.clone())
            .affinity(settings.key.clone())
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
            }),
        })
    }

    /// The backend pool: stats, health, membership.
    pub fn pool(&self) -> &Pool<HttpTarget, AnyPicker> {
        self.inner.balance.pool()
    }
}

/// Accepts connections on `listener` until `shutdown` completes, then lets in-flight
/// requests finish (for up to 30 seconds).
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    tls: Option<Arc<ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let inner = Arc::clone(&proxy.inner);
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let https = acceptor.is_some();
            let activity = Activity::new(inner.client);
            let service = hyper::service::service_fn({
                let activity = Arc::clone(&activity);
                move |req| {
                    let inner = Arc::clone(&inner);
                    // In progress from the parsed head to the response's last byte.
                    let busy = Busy::begin(&activity);
                    async move {
                        let response = handle(&inner, req, peer, https).await;
                        Ok::<_, Infallible>(response.map(|body| BusyBody { body, _busy: busy }))
                    }
                }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let served = match acceptor {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let io = Watched::new(tls, activity);
                            watcher
                                .watch(http.serve_connection(TokioIo::new(io), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => {
                    let io = Watched::new(stream, activity);
                    watcher
                        .watch(http.serve_connection(TokioIo::new(io), service))
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("requests still in flight after 30 s; closing");
        }
    }
}

/// How long one connect to a backend may take (and at most ¾ of `--timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The client connections' time-outs: `--header-timeout` and `--idle-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// To send a request's head: from the connection's start (after the TLS handshake)
    /// for its first request, from the head's first byte for the next ones.
    pub header: Duration,
    /// With no request in progress, between two requests.
    pub idle: Duration,
}

/// What a client connection is waiting for when it has no request in progress.
#[derive(Debug, Clone, Copy)]
enum Waiting {
    /// The rest of a request head (or the first one): closed with an error after the
    /// header time-out.
    Head,
    /// The next request: closed quietly (an end of stream) after the idle time-out.
    Idle,
}

/// One client connection's progress, shared by its reader ([`Watched`]) and its
/// requests ([`Busy`]). hyper's own `header_read_timeout` cannot serve here: its clock
/// runs from the moment it waits for a head, idle time included, so it would close
/// idle keep-alive connections after the header time-out.
struct Activity {
    timeouts: ClientTimeouts,
    /// Requests whose head was read and whose response is not yet sent in full.
    busy: usize,
    /// With no request in progress: until when, and for what.
    deadline: Option<(tokio::time::Instant, Waiting)>,
    /// The reader's task, woken when the deadline moves.
    reader: Option<std::task::Waker>,
}

impl Activity {
    /// A connection's activity; its first deadline is set when it is [`Watched`].
    fn new(timeouts: ClientTimeouts) -> Arc<Mutex<Activity>> {
        Arc::new(Mutex::new(Activity {
            timeouts,
            busy: 0,
            deadline: None,
            reader: None,
        }))
    }
}

fn activity(activity: &Mutex<Activity>) -> std::sync::MutexGuard<'_, Activity> {
    activity.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request in progress on its connection; when the last one ends, the idle time-out
/// starts.
struct Busy(Arc<Mutex<Activity>>);

impl Busy {
    fn begin(shared: &Arc<Mutex<Activity>>) -> Busy {
        let mut a = activity(shared);
        a.busy += 1;
        a.deadline = None;
        drop(a);
        Busy(Arc::clone(shared))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut a = activity(&self.0);
        a.busy -= 1;
        if a.busy == 0 {
            a.deadline = Some((tokio::time::Instant::now() + a.timeouts.idle, Waiting::Idle));
            // The reader may be asleep on no deadline at all: let it arm this one.
            if let Some(reader) = a.reader.take() {
                reader.wake();
            }
        }
    }
}

/// A response body that keeps its request in progress until it is dropped (hyper drops
/// it once sent, or when the connection ends).
pub struct BusyBody {
    body: ProxyBody,
    _busy: Busy,
}

impl Body for BusyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client connection's stream, ending it when the client is too slow to send a
/// request head or stays idle too long (see [`ClientTimeouts`]). It learns of
/// requests through the [`Activity`] their [`Busy`] guards update.
struct Watched<T> {
    io: T,
    activity: Arc<Mutex<Activity>>,
    timer: Pin<Box<tokio::time::Sleep>>,
    armed: Option<tokio::time::Instant>,
}

impl<T> Watched<T> {
    /// Watches `io` from now on: its first request head is due within the header
    /// time-out.
    fn new(io: T, shared: Arc<Mutex<Activity>>) -> Self {
        let mut a = activity(&shared);
        if a.busy == 0 {
            a.deadline = Some((
                tokio::time::Instant::now() + a.timeouts.header,
                Waiting::Head,
            ));
        }
        drop(a);
        Watched {
            io,
            activity: shared,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let mut a = activity(&self.activity);
        if let Poll::Ready(read) = polled {
            // The first byte of a request after an idle spell: the head's clock starts.
            if read.is_ok()
                && buf.filled().len() > before
                && let Some((_, Waiting::Idle)) = a.deadline
            {
                let at = tokio::time::Instant::now() + a.timeouts.header;
                a.deadline = Some((at, Waiting::Head));
            }
            return Poll::Ready(read);
        }
        if !a.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            a.reader = Some(cx.waker().clone());
        }
        let Some((at, waiting)) = a.deadline else {
            return Poll::Pending;
        };
        drop(a);
        if self.armed != Some(at) {
            self.timer.as_mut().reset(at);
            self.armed = Some(at);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        match waiting {
            // hyper closes a connection that ends between requests without a fuss.
            Waiting::Idle => Poll::Ready(Ok(())),
            Waiting::Head => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no complete request head within --header-timeout",
            ))),
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Headers that describe one connection, not the message (RFC 9110, section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Removes hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_str(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Adds `x-forwarded-for` (appended to any earlier hops), `x-forwarded-proto` and the
/// standard `forwarded` (RFC 7239).
fn add_forwarding(headers: &mut HeaderMap, peer: SocketAddr, https: bool) {
    let ip = peer.ip().to_canonical();
    let proto = if https { "https" } else { "http" };
    let earlier: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let xff = if earlier.is_empty() {
        ip.to_string()
    } else {
        format!("{}, {ip}", earlier.join(", "))
    };
    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok())
        && !host.contains('"')
    {
        element.push_str(&format!(";host=\"{host}\""));
    }
    let earlier: Vec<&str> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded = if earlier.is_empty() {
        element
    } else {
        format!("{}, {element}", earlier.join(", "))
    };
    for (name, value) in [
        (HeaderName::from_static("x-forwarded-for"), xff),
        (
            HeaderName::from_static("x-forwarded-proto"),
            proto.to_owned(),
        ),
        (header::FORWARDED, forwarded),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// What is needed to send a request again: its head, and its body's slot.
struct Resend {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    peer: SocketAddr,
    slot: Arc<Mutex<BodySlot>>,
}

impl Resend {
    fn new(parts: http::request::Parts, body: Incoming, peer: SocketAddr) -> Self {
        let (empty, hint) = (body.is_end_stream(), body.size_hint());
        Resend {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            peer,
            slot: Arc::new(Mutex::new(BodySlot {
                body: Some(body),
                attempt: 1,
                empty,
                hint,
            })),
        }
    }

    /// The request of the first attempt.
    fn first(&self) -> Request<Deferred> {
        let slot = lock(&self.slot);
        self.request(&slot)
    }

    /// The request of another attempt; `None` when an earlier attempt has (partly) sent
    /// the body, which cannot be sent again.
    fn again(&self) -> Option<Request<Deferred>> {
        let mut slot = lock(&self.slot);
        if slot.body.is_none() && !slot.empty {
            return None;
        }
        // From now on, an earlier attempt's body finds the slot taken.
        slot.attempt += 1;
        Some(self.request(&slot))
    }

    fn request(&self, slot: &BodySlot) -> Request<Deferred> {
        let body = Deferred {
            slot: Arc::clone(&self.slot),
            attempt: slot.attempt,
            body: None,
            taken: false,
            end: slot.empty,
            hint: slot.hint,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req.extensions_mut().insert(self.peer);
        req
    }
}

/// Proxies one request.
async fn handle(
    inner: &Inner,
    req: Request<Incoming>,
    peer: SocketAddr,
    https: bool,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_forwarding(&mut parts.headers, peer, https);
    let resend = Resend::new(parts, body, peer);
    let first = match &inner.sticky {
        Some(sticky) => sticky.clone().oneshot(resend.first()).await,
        None => inner.balance.clone().oneshot(resend.first()).await,
    };
    let result = match first {
        Err(e) if may_retry(&e, &resend.method) => retry(inner, &resend, e).await,
        other => other,
    };
    match result {
        Ok(response) => {
            let served = response
                .extensions()
                .get::<ServedBy>()
                .map(|s| s.0.to_string());
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            tracing::info!(
                %peer,
                method = %resend.method,
                path = %resend.uri.path(),
                backend = served.as_deref().unwrap_or("?"),
                status = parts.status.as_u16(),
                ms = started.elapsed().as_millis() as u64,
                "proxied"
            );
            Response::from_parts(parts, body.map_err(BoxError::from).boxed())
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
) -> Result<Response<Incoming>, BoxError> {
    let failed = find_error::<UpstreamError>(&first).and_then(|u| u.target.clone());
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
