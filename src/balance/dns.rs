//! Discovery that follows DNS: a host name re-resolved on an interval through the
//! system resolver (`tokio::net::lookup_host`), each address a backend.
//!
//! The stream yields `Change::Insert(addr, addr)` for every address that appears and
//! `Change::Remove(addr)` for every one that disappears, so a name with several A/AAAA
//! records becomes a backend set that follows DNS, and backends that stay keep their
//! state. A failed or empty resolution keeps the last known set (a `tracing` warning
//! says why) rather than emptying the balancer: DNS hiccups are common, and an empty
//! set would fail every request — gRPC's DNS resolver keeps its addresses the same way.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;

use super::discover::Change;

type Lookup = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;
type Resolve = Box<dyn Fn(&str, u16) -> Lookup + Send>;

enum State {
    Resolving(Lookup),
    Waiting(Pin<Box<tokio::time::Sleep>>),
}

/// A stream of membership changes that follows a host name's DNS records.
///
/// Use it with [`Balance::discover`](super::Balance::discover):
///
/// ```no_run
/// use std::time::Duration;
/// use tower_lb::balance::{BalanceLayer, DnsDiscover, HttpTarget};
/// use tower_lb::{Pool, PowerOfTwoChoices, Weight};
///
/// # fn client() -> tower::util::BoxCloneService<http::Request<String>, http::Response<String>, std::convert::Infallible> { unimplemented!() }
/// # async fn run() {
/// let pool: Pool<HttpTarget, _> = Pool::new(PowerOfTwoChoices::new());
/// let balance = BalanceLayer::new(pool).build(tower_lb::balance::Client(client()));
/// let dns = DnsDiscover::new("backend.internal", 8080).interval(Duration::from_secs(30));
/// balance.discover(dns, |addr, _| (HttpTarget::http(*addr), Weight::ONE));
/// # }
/// ```
pub struct DnsDiscover {
    host: String,
    port: u16,
    interval: Duration,
    known: BTreeSet<SocketAddr>,
    pending: VecDeque<Change<SocketAddr, SocketAddr>>,
    state: State,
    resolve: Resolve,
}

impl DnsDiscover {
    /// Resolves `host:port` at once, then every 30 seconds.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        DnsDiscover::resolving(host.into(), port, Box::new(lookup))
    }

    /// Resolves `host:port` through `resolve` instead of the system resolver: a DNS
    /// client of your choice, or fixed answers in a test. `resolve` is called at once,
    /// then every [`interval`](Self::interval); its answers are treated as the system
    /// resolver's would be (a failure or an empty list keeps the last set).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use tower_lb::balance::DnsDiscover;
    ///
    /// let dns = DnsDiscover::with_resolver("backend.internal", 8080, |_host, port| async move {
    ///     Ok(vec![SocketAddr::from(([10, 0, 0, 1], port))])
    /// });
    /// # drop(dns);
    /// ```
    pub fn with_resolver<F, Fut>(host: impl Into<String>, port: u16, resolve: F) -> Self
    where
        F: Fn(&str, u16) -> Fut + Send + 'static,
        Fut: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static,
    {
        let resolve: Resolve = Box::new(move |host, port| Box::pin(resolve(host, port)));
        DnsDiscover::resolving(host.into(), port, resolve)
    }

    fn resolving(host: String, port: u16, resolve: Resolve) -> Self {
        let state = State::Resolving(resolve(&host, port));
        DnsDiscover {
            host,
            port,
            interval: Duration::from_secs(30),
            known: BTreeSet::new(),
            pending: VecDeque::new(),
            state,
            resolve,
        }
    }

    /// How long to wait between resolutions (at least 10 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The addresses of the last successful resolution.
    pub fn addresses(&self) -> impl Iterator<Item = &SocketAddr> {
        self.known.iter()
    }

    fn apply(&mut self, resolved: std::io::Result<Vec<SocketAddr>>) {
        let fresh: BTreeSet<SocketAddr> = match resolved {
            Ok(addrs) if !addrs.is_empty() => addrs.into_iter().collect(),
            Ok(_) => {
                tracing::warn!(host = %self.host, "dns discovery: no records, keeping the last set");
                return;
            }
            Err(error) => {
                tracing::warn!(host = %self.host, %error, "dns discovery: lookup failed, keeping the last set");
                return;
            }
        };
        for gone in self.known.difference(&fresh) {
            self.pending.push_back(Change::Remove(*gone));
        }
        for new in fresh.difference(&self.known) {
            self.pending.push_back(Change::Insert(*new, *new));
        }
        self.known = fresh;
    }
}

fn lookup(host: &str, port: u16) -> Lookup {
    let target = format!("{host}:{port}");
    Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
}

impl Stream for DnsDiscover {
    type Item = Result<Change<SocketAddr, SocketAddr>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            let this = &mut *self;
            match &mut this.state {
                State::Resolving(lookup) => {
                    let resolved = ready!(lookup.as_mut().poll(cx));
                    this.apply(resolved);
                    this.state = State::Waiting(Box::pin(tokio::time::sleep(this.interval)));
                }
                State::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state = State::Resolving((this.resolve)(&this.host, this.port));
                }
            }
        }
    }
}

impl fmt::Debug for DnsDiscover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsDiscover")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("interval", &self.interval)
            .field("known", &self.known)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(d: &mut DnsDiscover) -> Poll<Option<Change<SocketAddr, SocketAddr>>> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        Pin::new(d)
            .poll_next(&mut cx)
            .map(|o| o.map(|r| r.unwrap()))
    }

    #[test]
    fn diffs_resolutions_and_keeps_the_set_on_failure() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let mut d = DnsDiscover::new("unused", 1);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        d.state = State::Waiting(Box::pin(tokio::time::sleep(Duration::from_secs(3600))));
        d.apply(Ok(vec![a, b]));
        assert!(matches!(next(&mut d), Poll::Ready(Some(Change::Insert(x, _))) if x == a));
        assert!(matches!(next(&mut d), Poll::Ready(Some(Change::Insert(x, _))) if x == b));
        assert!(next(&mut d).is_pending());
        d.apply(Err(std::io::Error::other("boom")));
        d.apply(Ok(vec![]));
        assert!(next(&mut d).is_pending(), "failures keep the set");
        d.apply(Ok(vec![b]));
        assert!(matches!(next(&mut d), Poll::Ready(Some(Change::Remove(x))) if x == a));
        assert_eq!(d.addresses().collect::<Vec<_>>(), [&b]);
    }
}
