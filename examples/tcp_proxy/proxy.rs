//! The TCP proxy's core: options, the backend choice, the copy loop, the server.
//!
//! `main.rs` parses the command line and runs [`serve`]; `tests/examples/` runs the
//! same code against backends on loopback.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueEnum};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tower_lb::affinity::{AffinityKey, PeerAddrKey, PeerIpKey};
use tower_lb::health::OutlierDetection;
use tower_lb::{
    AnyPicker, BackendId, InFlight, LeastLoaded, Maglev, PickContext, PickError, Pool,
    PowerOfTwoChoices, Random, Ring, RoundRobin, Weight, WeightedRoundRobin,
};

use crate::support::options::{self, parse_secs};

/// The proxy's command line.
#[derive(Debug, Parser)]
#[command(
    name = "tcp_proxy",
    about = "A Layer 4 proxy: each TCP connection goes to a backend chosen from its addresses alone.",
    after_help = "Without --backend, three demo HTTP backends start on loopback. Logs: RUST_LOG (default info)."
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,

    /// A backend, `host:port`, with an optional weight (`127.0.0.1:5432=3`); repeatable.
    #[arg(long = "backend", value_name = "ADDR[=WEIGHT]", value_parser = parse_backend)]
    pub backends: Vec<(SocketAddr, Weight)>,

    /// How to choose a backend for each connection.
    #[arg(long, value_enum, default_value_t = StrategyName::RoundRobin)]
    pub strategy: StrategyName,

    /// Seconds a connect to a backend may take before the next backend is tried (a
    /// powered-off host drops connects rather than refusing them).
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_secs)]
    pub connect_timeout: Duration,
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
    /// The fewest open connections per unit of weight.
    LeastLoaded,
    /// The less loaded of two random backends (open connections).
    P2c,
    /// Every connection of a client IP address to the same backend (ring hash).
    SourceIpHash,
    /// Each connection by its client address and port with Maglev: every proxy instance
    /// with the same backends sends a given connection to the same backend.
    Maglev,
}

impl StrategyName {
    /// The name as given on the command line.
    pub fn name(self) -> String {
        options::value_name(self)
    }
}

fn parse_backend(s: &str) -> Result<(SocketAddr, Weight), String> {
    let (addr, weight) = options::split_weight(s)?;
    // A host name is resolved once, at start.
    let resolved = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr:?} is not a `host:port` address: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))?;
    Ok((resolved, weight))
}

/// What a connection is keyed by.
#[derive(Debug, Clone, Copy)]
enum Key {
    None,
    ClientIp(PeerIpKey),
    ClientAddr(PeerAddrKey),
}

/// Validated options, ready to start a proxy.
#[derive(Debug)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The backends and their weights (empty: the caller starts demo backends).
    pub backends: Vec<(SocketAddr, Weight)>,
    /// The strategy.
    pub strategy: StrategyName,
    /// How long a connect to a backend may take.
    pub connect_timeout: Duration,
}

impl Settings {
    /// Parses and validates a command line (`args[0]` is the program name).
    pub fn parse<I, T>(args: I) -> Result<Settings, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = Args::try_parse_from(args)?;
        if let Some(addr) = options::repeated(&args.backends) {
            return Err(Args::command().error(
                ErrorKind::ValueValidation,
                format!("--backend {addr} is given twice"),
            ));
        }
        Ok(Settings {
            listen: args.listen,
            backends: args.backends,
            strategy: args.strategy,
            connect_timeout: args.connect_timeout,
        })
    }
}

/// The proxy: the backend pool with its strategy and passive health.
#[derive(Clone)]
pub struct TcpProxy {
    pool: Pool<SocketAddr, AnyPicker>,
    key: Key,
    connect_timeout: Duration,
}

impl fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpProxy")
            .field("key", &self.key)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// A connection to a backend, tracked as one request in flight on it until dropped.
#[derive(Debug)]
pub struct Upstream {
    /// The connection.
    pub stream: TcpStream,
    /// The backend's address.
    pub addr: SocketAddr,
    /// In flight on the backend while the connection lasts.
    pub guard: InFlight,
}

impl TcpProxy {
    /// Builds the pool over `settings.backends` and starts its health task (in a tokio
    /// runtime): passive outlier detection, ejections ending on time.
    pub fn start(settings: &Settings) -> Result<TcpProxy, Box<dyn std::error::Error>> {
        let (strategy, key): (AnyPicker, _) = match settings.strategy {
            StrategyName::RoundRobin => (RoundRobin::new().into(), Key::None),
            StrategyName::Weighted => (WeightedRoundRobin::new().into(), Key::None),
            StrategyName::Random => (Random::new().into(), Key::None),
            StrategyName::LeastLoaded => (LeastLoaded::new().into(), Key::None),
            StrategyName::P2c => (PowerOfTwoChoices::new().into(), Key::None),
            StrategyName::SourceIpHash => (Ring::new().into(), Key::ClientIp(PeerIpKey::new())),
            StrategyName::Maglev => (Maglev::new().into(), Key::ClientAddr(PeerAddrKey::new())),
        };
        let pool = Pool::<SocketAddr, _>::builder(strategy)
            // A refused connection is a failure; three in a row eject the backend.
            .outlier_detection(OutlierDetection::new().consecutive_failures(3))
            .build()?;
        for (addr, weight) in &settings.backends {
            pool.insert(*addr, *weight)?;
        }
        drop(pool.spawn_health()?);
        Ok(TcpProxy {
            pool,
            key,
            connect_timeout: settings.connect_timeout,
        })
    }

    /// The backend pool: stats, health, membership.
    pub fn pool(&self) -> &Pool<SocketAddr, AnyPicker> {
        &self.pool
    }

    /// The pick context of a connection from `peer`: its address is the only input.
    fn context(&self, peer: &SocketAddr) -> PickContext {
        match &self.key {
            Key::None => PickContext::new(),
            Key::ClientIp(key) => key.context(peer),
            Key::ClientAddr(key) => key.context(peer),
        }
    }

    /// The backend the strategy chooses for a connection from `peer`, without
    /// connecting (and without counting a pick).
    #[cfg_attr(not(test), allow(dead_code))] // for tests/examples/
    pub fn choose(&self, peer: SocketAddr) -> Result<SocketAddr, PickError> {
        let prepared = self.pool.snapshot();
        let index = prepared.pick(self.pool.picker(), &self.context(&peer))?;
        Ok(*prepared.snapshot().backends()[index].addr())
    }

    /// Connects to a backend for a client at `peer`. A backend that refuses (or does not
    /// answer within `--connect-timeout`) is reported as failed and the next one is
    /// tried, until every eligible backend was tried once: the client sees an error only
    /// when all fail.
    pub async fn connect(&self, peer: SocketAddr) -> io::Result<Upstream> {
        let ctx = self.context(&peer);
        let mut tried: Vec<BackendId> = Vec::new();
        let mut last_error = None;
        loop {
            let Some((id, addr, guard)) = self.next_backend(&ctx, &tried) else {
                return Err(last_error.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotConnected, "no backend is available")
                }));
            };
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Upstream {
                        stream,
                        addr,
                        guard,
                    });
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, backend = %addr, error = %e, "backend connect failed; trying another");
                    guard.failure();
                    last_error = Some(e);
                }
                Err(_) => {
                    tracing::warn!(%peer, backend = %addr, "backend connect timed out; trying another");
                    guard.failure();
                    last_error = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
                }
            }
            tried.push(id);
        }
    }

    /// The strategy's choice, or — when it is a backend already tried for this
    /// connection — the untried eligible backend with the fewest open connections.
    fn next_backend(
        &self,
        ctx: &PickContext,
        tried: &[BackendId],
    ) -> Option<(BackendId, SocketAddr, InFlight)> {
        let picked = self.pool.pick(ctx).ok()?;
        if !tried.contains(&picked.id()) {
            return Some((picked.id(), *picked.addr(), picked.start()));
        }
        let snapshot = picked.snapshot();
        snapshot
            .eligible()
            .iter()
            .filter_map(|&i| snapshot.get(i as usize))
            .filter(|b| !tried.contains(&b.id()))
            .min_by_key(|b| b.state().in_flight())
            .map(|b| (b.id(), *b.addr(), b.state().start()))
    }

    /// Proxies one accepted connection: connects to a backend, then copies bytes both
    /// ways until both sides are done.
    pub async fn proxy(&self, mut client: TcpStream, peer: SocketAddr) {
        let Upstream {
            mut stream,
            addr,
            guard,
        } = match self.connect(peer).await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "no backend took the connection; closing it");
                return;
            }
        };
        tracing::info!(%peer, backend = %addr, "connected");
        match tokio::io::copy_bidirectional(&mut client, &mut stream).await {
            Ok((up, down)) => {
                tracing::info!(%peer, backend = %addr, bytes_up = up, bytes_down = down, "closed");
            }
            Err(e) => tracing::info!(%peer, backend = %addr, error = %e, "closed with an error"),
        }
        // The backend took the connection: a success for passive health.
        guard.success();
    }
}

/// Accepts connections on `listener` until `shutdown` completes, then waits (up to 30
/// seconds) for open connections to end.
pub async fn serve(listener: TcpListener, proxy: TcpProxy, shutdown: impl Future<Output = ()>) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let proxy = proxy.clone();
                    connections.spawn(async move { proxy.proxy(stream, peer).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        open = connections.len(),
        "shutting down: no new connections; waiting for open ones"
    );
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 30 s; closing");
    }
}
