//! The command line: clap's [`Args`], validated into [`Settings`].
//!
//! clap's attributes check what one option can say alone (a port in `--backend`, a
//! number of seconds, options that need or exclude each other); [`Settings::from_args`]
//! checks the rest, and reads the TLS files. Every error is a usage error naming the
//! option at fault: clap prints it and exits with code 2.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueEnum};
use http::header::HeaderName;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use tower_lb::affinity::{CookieKey, HeaderKey};
use tower_lb::balance::{HttpTarget, StickyCookie, StickyError};
use tower_lb::health::HttpProbe;
use tower_lb::{
    AnyPicker, LeastLoaded, Maglev, PeakEwma, PowerOfTwoChoices, Random, Rendezvous, Ring,
    RoundRobin, ServerLoad, Weight, WeightedRoundRobin,
};

use super::HashKey;
use super::serve::ClientTimeouts;
use super::tls::{self, PemFile};
use crate::support::options::{self, parse_secs};

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

    /// Serve the balancer's metrics as Prometheus text at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
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
    /// The cheapest of two random backends and the last winner (peak-EWMA latency × load).
    PeakEwma,
    /// Weights from the backends' ORCA load reports (`endpoint-load-metrics`, gRFC A58).
    ServerLoad,
    /// Consistent hashing on a ring.
    Ring,
    /// Maglev consistent hashing.
    Maglev,
    /// Rendezvous (highest random weight) hashing.
    Rendezvous,
}

impl StrategyName {
    /// The library's strategy of this name, as a picker chosen at run time.
    pub fn build(self) -> AnyPicker {
        match self {
            StrategyName::RoundRobin => RoundRobin::new().into(),
            StrategyName::Weighted => WeightedRoundRobin::new().into(),
            StrategyName::Random => Random::new().into(),
            StrategyName::LeastLoaded => LeastLoaded::new().into(),
            StrategyName::P2c => PowerOfTwoChoices::new().into(),
            StrategyName::PeakEwma => PeakEwma::new().into(),
            StrategyName::ServerLoad => ServerLoad::new().into(),
            StrategyName::Ring => Ring::new().into(),
            StrategyName::Maglev => Maglev::new().into(),
            StrategyName::Rendezvous => Rendezvous::new().into(),
        }
    }

    /// The name as given on the command line.
    pub fn name(self) -> String {
        options::value_name(self)
    }
}

fn parse_backend(s: &str) -> Result<(HttpTarget, Weight), String> {
    let (addr, weight) = options::split_weight(s)?;
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
    /// Where to serve `/metrics`, with `--metrics`.
    pub metrics: Option<SocketAddr>,
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
        if let Some(target) = options::repeated(&args.backends) {
            return Err(usage(
                ErrorKind::ValueValidation,
                format!("--backend {target} is given twice"),
            ));
        }
        let random_secret = args.sticky && args.cookie_secret.is_none();
        let sticky = if args.sticky {
            let secret = match args.cookie_secret {
                Some(secret) => secret.into_bytes(),
                None => random_secret_bytes(),
            };
            let cookie = StickyCookie::new(&args.cookie_name, secret).map_err(|e| {
                let option = match e {
                    StickyError::Name(_) => "--cookie-name",
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
            (Some(cert), Some(key), _) => {
                let config = tls::from_pem_files(&cert, &key).map_err(|(file, e)| {
                    let (option, path) = match file {
                        PemFile::Cert => ("--tls-cert", &cert),
                        PemFile::Key => ("--tls-key", &key),
                    };
                    usage(
                        ErrorKind::ValueValidation,
                        format!("{option} {}: {e}", path.display()),
                    )
                })?;
                (Some(config), None)
            }
            (_, _, true) => {
                let (config, der, pem) = tls::self_signed()
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
            metrics: args.metrics,
        })
    }
}

fn random_secret_bytes() -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut secret = vec![0u8; 32];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut secret);
    secret
}
