//! The tour: real HTTP backends on loopback, real requests through a `Balance`.
//!
//! Three hyper servers start inside this process on 127.0.0.1 — `a` (weight 3), `b` and
//! `c` (weight 1 each; `c` answers five times slower) — and one pooled hyper client
//! reaches them through `tower_lb::balance::Balance`. The tour:
//!
//! 1. every strategy places 600 requests (12 at a time); a table shows where they went;
//! 2. sticky sessions: requests carrying a `session` cookie, hashed with Maglev, always
//!    reach the same backend;
//! 3. failover: `b` is stopped mid-run; passive outlier detection ejects it after three
//!    failed requests, an active health check keeps it out while it is down, and when it
//!    comes back it rejoins through slow start;
//! 4. a summary of the pool's statistics.
//!
//! Run with `cargo run --example demo` (default features; about 10 seconds).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use tower_lb::affinity::{KeyFn, hash_key};
use tower_lb::balance::{BalanceLayer, BoxError, Route};
use tower_lb::health::{OutlierDetection, Reason, SlowStart, Verdict};
use tower_lb::{AnyPicker, Backend, Maglev, Picker, Pool, Weight, WeightedRoundRobin};

use support::backend::HttpBackend;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// How a request reaches the backend the balancer picked: one pooled HTTP client for
/// all of them, the request's URI pointed at the backend's address. (With the `http`
/// feature, `BalanceLayer::layer(client)` over `HttpTarget` backends does this for you.)
#[derive(Clone)]
struct ToBackend(HttpClient);

impl Route<SocketAddr, Request<Empty<Bytes>>> for ToBackend {
    type Service = HttpClient;

    fn route(
        &self,
        backend: &SocketAddr,
        mut req: Request<Empty<Bytes>>,
    ) -> (HttpClient, Request<Empty<Bytes>>) {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(backend.to_string())
            .path_and_query(path)
            .build()
        {
            *req.uri_mut() = uri;
        }
        (self.0.clone(), req)
    }
}

/// The demo's three backends.
struct Backends {
    servers: Vec<HttpBackend>,
    names: HashMap<SocketAddr, String>,
}

impl Backends {
    async fn start() -> Result<Self, Error> {
        let servers = vec![
            HttpBackend::start_with_delay("a", Duration::from_millis(2)).await?,
            HttpBackend::start_with_delay("b", Duration::from_millis(2)).await?,
            HttpBackend::start_with_delay("c", Duration::from_millis(10)).await?,
        ];
        let names = servers
            .iter()
            .map(|s| (s.addr(), s.name().to_owned()))
            .collect();
        Ok(Backends { servers, names })
    }

    /// A pool over the backends, weights 3, 1, 1.
    fn pool<P: Picker<SocketAddr>>(
        &self,
        pool: Pool<SocketAddr, P>,
    ) -> Result<Pool<SocketAddr, P>, Error> {
        for (server, weight) in self.servers.iter().zip([3, 1, 1]) {
            pool.insert(server.addr(), Weight::new(weight)?)?;
        }
        Ok(pool)
    }
}

/// Sends one GET through `service`; returns the name of the backend that answered.
async fn get<S>(
    service: S,
    path: &str,
    cookie: Option<&str>,
    user: Option<&str>,
) -> Result<String, BoxError>
where
    S: tower::Service<
            Request<Empty<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
        >,
{
    let mut req = Request::get(path);
    if let Some(cookie) = cookie {
        req = req.header(http::header::COOKIE, cookie);
    }
    if let Some(user) = user {
        req = req.header("x-user", user);
    }
    let response = service.oneshot(req.body(Empty::new())?).await?;
    let name = response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    response.into_body().collect().await?;
    Ok(name)
}

/// The value of cookie `name` in a request's `Cookie` headers.
fn cookie<'a>(req: &'a Request<Empty<Bytes>>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

const REQUESTS: usize = 600;
const CONCURRENCY: usize = 12;

/// Part 1: one row of the strategy table.
async fn strategy_row(
    backends: &Backends,
    client: &HttpClient,
    name: &str,
    picker: AnyPicker,
) -> Result<(), Error> {
    let pool = backends.pool(Pool::new(picker))?;
    // Hashing strategies place each request by its `x-user` header; the others ignore it.
    let by_user = KeyFn::new(|req: &Request<Empty<Bytes>>| {
        req.headers().get("x-user").map(|v| hash_key(v.as_bytes()))
    });
    let balance = BalanceLayer::new(pool)
        .affinity_if_hashing(by_user)
        .build(ToBackend(client.clone()));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let balance = balance.clone();
        workers.spawn(async move {
            let mut counts = BTreeMap::<String, usize>::new();
            for i in (worker..REQUESTS).step_by(CONCURRENCY) {
                let user = format!("user-{}", i % 200);
                let name = get(balance.clone(), "/", None, Some(&user)).await?;
                *counts.entry(name).or_default() += 1;
            }
            Ok::<_, BoxError>(counts)
        });
    }
    let mut counts = BTreeMap::<String, usize>::new();
    while let Some(done) = workers.join_next().await {
        for (name, n) in done?? {
            *counts.entry(name).or_default() += n;
        }
    }
    let cell = |n: &str| counts.get(n).copied().unwrap_or(0);
    println!(
        "  {name:<22} {:>5} {:>5} {:>5}",
        cell("a"),
        cell("b"),
        cell("c")
    );
    Ok(())
}

/// Part 2: sticky sessions by cookie.
async fn sticky_sessions(backends: &Backends, client: &HttpClient) -> Result<(), Error> {
    let pool = backends.pool(Pool::new(Maglev::new()))?;
    let by_session = KeyFn::new(|req: &Request<Empty<Bytes>>| {
        cookie(req, "session").map(|s| hash_key(s.as_bytes()))
    });
    let balance = BalanceLayer::new(pool)
        .affinity(by_session)
        .build(ToBackend(client.clone()));
    let sessions = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let mut seen: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for _round in 0..20 {
        for session in sessions {
            let cookie = format!("session={session}");
            let name = get(balance.clone(), "/cart", Some(&cookie), None).await?;
            seen.entry(session).or_default().push(name);
        }
    }
    for (session, names) in &seen {
        let first = &names[0];
        let same = names.iter().filter(|n| *n == first).count();
        println!(
            "  session={session:<6} → {first}   ({same} of {} requests)",
            names.len()
        );
    }
    let mut without = String::new();
    for _ in 0..9 {
        without.push_str(&get(balance.clone(), "/", None, None).await?);
        without.push(' ');
    }
    println!("  no cookie      → {without}  (Maglev's fallback: round robin)");
    Ok(())
}

/// An active health check of the demo's own, as a `HealthSource`: `GET /health` on every
/// backend every 100 ms; down after 2 failures in a row, up after 2 successes. (With the
/// `tokio` feature, `Pool::spawn_health_probes` runs the crate's `HttpProbe` instead.)
struct HealthCheck {
    up: HashMap<SocketAddr, (AtomicBool, AtomicU32)>,
}

impl HealthCheck {
    fn verdict(&self, backend: &Backend<SocketAddr>) -> Verdict {
        match self.up.get(backend.addr()) {
            Some((up, _)) if !up.load(Ordering::Relaxed) => {
                Verdict::Unhealthy(Reason::other("health check: GET /health failed"))
            }
            _ => Verdict::Healthy,
        }
    }

    /// Records one result; `true` when the backend's state flipped.
    fn record(&self, addr: SocketAddr, ok: bool) -> bool {
        let Some((up, streak)) = self.up.get(&addr) else {
            return false;
        };
        if ok == up.load(Ordering::Relaxed) {
            streak.store(0, Ordering::Relaxed);
            return false;
        }
        if streak.fetch_add(1, Ordering::Relaxed) + 1 >= 2 {
            streak.store(0, Ordering::Relaxed);
            up.store(ok, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// Part 3: a backend goes down and comes back.
async fn failover(backends: &mut Backends, client: &HttpClient) -> Result<(), Error> {
    let pool = Pool::<SocketAddr, _>::builder(WeightedRoundRobin::new())
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(3)
                .base_ejection_time(Duration::from_secs(1))
                .ejection_jitter(Duration::ZERO),
        )
        .slow_start(
            SlowStart::new(Duration::from_secs(2)).update_interval(Duration::from_millis(100)),
        )
        .build()?;
    for server in &backends.servers {
        pool.insert(server.addr(), Weight::ONE)?;
    }
    let check = Arc::new(HealthCheck {
        up: backends
            .servers
            .iter()
            .map(|s| (s.addr(), (AtomicBool::new(true), AtomicU32::new(0))))
            .collect(),
    });
    let source = Arc::clone(&check);
    pool.add_health_source(move |b: &Backend<SocketAddr>, _now| source.verdict(b));

    // The checker also ticks the pool: ejections ending, slow-start steps.
    let checker = {
        let (pool, client, check) = (pool.clone(), client.clone(), Arc::clone(&check));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                for addr in check.up.keys().copied().collect::<Vec<_>>() {
                    let uri = format!("http://{addr}/health");
                    let probe = client.get(uri.parse().expect("a valid URI"));
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_millis(100), probe).await,
                        Ok(Ok(r)) if r.status().is_success()
                    );
                    if check.record(addr, ok) {
                        pool.tick();
                    }
                }
                pool.tick();
            }
        })
    };

    let balance = BalanceLayer::new(pool.clone()).build(ToBackend(client.clone()));
    println!(
        "  {:>5}  {:>4} {:>4} {:>4} {:>7}   b's health",
        "time", "a", "b", "c", "errors"
    );
    let start = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(10));
    let (mut window, mut errors) = (BTreeMap::<String, usize>::new(), 0usize);
    let mut total_errors = 0;
    for tick in 1..=600u32 {
        every.tick().await;
        match get(balance.clone(), "/", None, None).await {
            Ok(name) => *window.entry(name).or_default() += 1,
            Err(_) => errors += 1,
        }
        if tick % 50 == 0 {
            let stats = pool.stats();
            let b = &stats[1];
            let state = match (&b.health, b.ramp) {
                (Verdict::Healthy, Some(ramp)) => {
                    format!("healthy, slow start at {:.0}%", ramp * 100.0)
                }
                (health, _) => health.to_string(),
            };
            let cell = |n: &str| window.get(n).copied().unwrap_or(0);
            println!(
                "  {:>4.1}s  {:>4} {:>4} {:>4} {:>7}   {state}",
                start.elapsed().as_secs_f64(),
                cell("a"),
                cell("b"),
                cell("c"),
                errors
            );
            total_errors += errors;
            window.clear();
            errors = 0;
        }
        if tick == 100 {
            backends.servers[1].stop().await;
            println!("  ── b stopped (crash: connections refused) ──");
        }
        if tick == 300 {
            backends.servers[1].restart().await?;
            println!("  ── b restarted ──");
        }
    }
    checker.abort();

    println!("\n4. Summary of the failover pool (600 requests, {total_errors} failed)\n");
    println!(
        "  {:<8} {:>6} {:>9} {:>9} {:>10}   health",
        "backend", "picks", "successes", "failures", "ejections"
    );
    for s in pool.stats() {
        println!(
            "  {:<8} {:>6} {:>9} {:>9} {:>10}   {}",
            backends.names[&s.addr], s.picks, s.successes, s.failures, s.ejections, s.health
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut backends = Backends::start().await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    println!("tower-lb demo: three HTTP backends on loopback");
    for s in &backends.servers {
        println!("  {} at http://{}", s.name(), s.addr());
    }
    println!("  weights a=3 b=1 c=1; c answers 5x slower (10 ms against 2 ms)\n");

    println!("1. Strategies: {REQUESTS} requests each, {CONCURRENCY} at a time\n");
    println!("  {:<22} {:>5} {:>5} {:>5}", "strategy", "a", "b", "c");
    // Each strategy by its name, as a program reading it from its configuration would;
    // the random draws seeded, so a run's table is the same as the last one's.
    for (label, name) in [
        ("round robin", "round-robin"),
        ("smooth weighted RR", "weighted"),
        ("random", "random"),
        ("weighted random", "weighted-random"),
        ("least loaded", "least-loaded"),
        ("power of two choices", "p2c"),
        ("peak EWMA", "peak-ewma"),
        ("Maglev (200 users)", "maglev"),
    ] {
        let picker = AnyPicker::with_seed(name, 7)?;
        strategy_row(&backends, &client, label, picker).await?;
    }
    println!("\n  Weighted strategies follow 3:1:1; load-aware ones also keep off slow c;");
    println!("  Maglev places each user by its x-user header (weights apply to key shares).\n");

    println!("2. Sticky sessions: the `session` cookie hashed with Maglev, 20 requests each\n");
    sticky_sessions(&backends, &client).await?;

    println!("\n3. Failover: one request every 10 ms, smooth weighted RR, equal weights;");
    println!("   ejection after 3 failures in a row, a health check every 100 ms, 2 s slow start");
    println!("   (new backends ramp up too: all three join at once, so their shares stay equal)\n");
    failover(&mut backends, &client).await?;
    println!("\nDone.");
    Ok(())
}
