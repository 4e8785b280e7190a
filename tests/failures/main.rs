//! Failure scenarios with numbers, under the defaults a user gets from the README
//! (`OutlierDetection::new()`, the default panic threshold, no retries unless said):
//! several backends failing at once (scenario A), a backend that hangs behind a caller's
//! time-out (scenario B), fast failures with no ejection at all (failures are load), the
//! per-attempt time-out, and retries on another backend within a budget.
//!
//! Backends are in-process `tower` services. Scenario A runs on tokio's paused clock
//! (deterministic, 2 s of virtual time each); the scenarios that depend on how long a
//! request ran (cancellations, failure scores fading) run on the real clock, all
//! strategies at once, for at most 2.5 s.
//!
//! `cargo test --release --all-features --test failures -- --nocapture` prints the
//! tables the README's "Failure handling" section shows.

mod attempt_timeout;
mod failures_are_load;
mod hung;
mod retries;
mod several_at_once;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::ServiceExt;
use tower::retry::budget::TpsBudget;
use tower::util::{BoxCloneService, BoxCloneSyncService};
use tower_lb::affinity::KeyFn;
use tower_lb::balance::retry::Always;
use tower_lb::balance::{BackendService, Balance, BalanceLayer, BoxError, PerBackend, RetryLayer};
use tower_lb::health::OutlierDetection;
use tower_lb::{
    BackendError, BoundedLoad, Jump, LeastLoaded, Maglev, PeakEwma, Picker, Pool,
    PowerOfTwoChoices, Random, Rendezvous, Ring, RoundRobin, TimedOut, Weight, WeightedRandom,
    WeightedRoundRobin,
};

type Svc = BoxCloneSyncService<u64, usize, BoxError>;
type Ep = BackendService<usize, Svc>;
type Key = KeyFn<fn(&u64) -> Option<u64>>;
type Lb<P> = Balance<Ep, P, PerBackend, Key>;

/// How a broken backend behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaks {
    /// Fails at once (a refused connect, a 503 in microseconds).
    Refusing,
    /// Accepts and never answers.
    Hanging,
}

/// Backend `i`: answers its index after `latency` (tokio's clock) while `broken` is
/// unset; once set, breaks as `how`.
fn backend(i: usize, latency: Duration, how: Breaks, broken: Arc<AtomicBool>) -> Ep {
    let svc = tower::service_fn(move |_req: u64| {
        let broken = broken.load(Ordering::SeqCst);
        async move {
            match (broken, how) {
                (true, Breaks::Refusing) => Err::<usize, BoxError>(
                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
                ),
                (true, Breaks::Hanging) => {
                    std::future::pending::<()>().await;
                    Ok(i)
                }
                (false, _) => {
                    tokio::time::sleep(latency).await;
                    Ok(i)
                }
            }
        }
    });
    BackendService::new(i, BoxCloneSyncService::new(svc))
}

/// Every request is its own affinity key (hashing strategies spread them; the others
/// ignore it).
fn key(req: &u64) -> Option<u64> {
    // SplitMix64's finaliser: request numbers to well-spread keys.
    let mut z = req.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    Some(z ^ (z >> 31))
}

/// A pool of `m` backends with the README's health defaults, and the balancer over it.
fn setup<P: Picker<Ep> + 'static>(
    picker: P,
    m: usize,
    latency: Duration,
    how: Breaks,
    detection: Option<OutlierDetection>,
) -> (Pool<Ep, P>, Lb<P>, Vec<Arc<AtomicBool>>) {
    let mut builder = Pool::builder(picker);
    if let Some(detection) = detection {
        builder = builder.outlier_detection(detection);
    }
    let pool = builder.build().unwrap();
    let broken: Vec<Arc<AtomicBool>> = (0..m).map(|_| Arc::default()).collect();
    for (i, flag) in broken.iter().enumerate() {
        pool.insert(backend(i, latency, how, flag.clone()), Weight::ONE)
            .unwrap();
    }
    let lb = BalanceLayer::new(pool.clone())
        .affinity(KeyFn::new(key as fn(&u64) -> Option<u64>))
        .build(PerBackend);
    (pool, lb, broken)
}

/// What the callers saw of one run.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Requests started in the measured window, and how many of them failed.
    total: u64,
    failed: u64,
    /// Of those failures, time-outs.
    timed_out: u64,
    /// The last failure seen, in time since the backends broke (None: none after it).
    last_failure: Option<Duration>,
    /// When every broken backend had left the eligible set, since they broke.
    all_ejected: Option<Duration>,
}

impl Seen {
    fn share(&self) -> f64 {
        self.failed as f64 / self.total.max(1) as f64
    }
}

/// The run: `callers` loop from t = 0 to `end`; at `break_at` the first `n` backends
/// break; requests started at or after `measure_from` are counted. `timeout` wraps each
/// call as a caller's `tower::timeout::Timeout` would.
#[allow(clippy::too_many_arguments)]
async fn run<P: Picker<Ep> + 'static>(
    pool: Pool<Ep, P>,
    lb: Lb<P>,
    broken: Vec<Arc<AtomicBool>>,
    n: usize,
    callers: u64,
    break_at: Duration,
    measure_from: Duration,
    end: Duration,
    timeout: Option<Duration>,
) -> Seen {
    let t0 = Instant::now();
    let breaker = {
        let broken = broken.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(t0 + break_at).await;
            for flag in &broken[..n] {
                flag.store(true, Ordering::SeqCst);
            }
        })
    };
    let monitor = {
        let pool = pool.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(t0 + break_at).await;
            while Instant::now() < t0 + end {
                let prepared = pool.snapshot();
                if (0..n).all(|i| !prepared.snapshot().is_eligible(i)) {
                    return Some(Instant::now() - (t0 + break_at));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            None
        })
    };
    // Boxed: type erasure spares the spawned callers a higher-ranked `Send` proof.
    let lb: BoxCloneService<u64, usize, BoxError> = BoxCloneService::new(lb);
    let last_failure = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..callers {
        let lb = lb.clone();
        let last_failure = last_failure.clone();
        tasks.spawn(async move {
            let mut seen = Seen::default();
            let mut req = c << 40;
            while Instant::now() < t0 + end {
                let started = Instant::now();
                let call = lb.clone().oneshot(req);
                let result: Result<usize, BoxError> = match timeout {
                    Some(d) => tokio::time::timeout(d, call)
                        .await
                        .unwrap_or_else(|_| Err("caller's time-out".into())),
                    None => call.await,
                };
                req += 1;
                if let Err(e) = &result {
                    if started >= t0 + break_at {
                        // + 1: a failure at the very instant of the break is one too.
                        let since = (Instant::now() - (t0 + break_at)).as_nanos() as u64;
                        last_failure.fetch_max(since + 1, Ordering::Relaxed);
                    }
                    if started >= t0 + measure_from {
                        seen.failed += 1;
                        if e.to_string().contains("time-out") {
                            seen.timed_out += 1;
                        }
                    }
                    // A failure at once must not starve the paused clock.
                    tokio::task::yield_now().await;
                }
                if started >= t0 + measure_from {
                    seen.total += 1;
                }
            }
            seen
        });
    }
    let mut seen = Seen::default();
    while let Some(one) = tasks.join_next().await {
        let one = one.unwrap();
        seen.total += one.total;
        seen.failed += one.failed;
        seen.timed_out += one.timed_out;
    }
    breaker.await.unwrap();
    seen.all_ejected = monitor.await.unwrap();
    let last = last_failure.load(Ordering::Relaxed);
    seen.last_failure = (last > 0).then(|| Duration::from_nanos(last - 1));
    seen
}

type Run = Pin<Box<dyn Future<Output = Seen> + Send>>;

/// Every strategy, seeded where it draws, as one boxed run each of `scenario`.
fn every_strategy(scenario: impl Fn(Strategy) -> Run) -> Vec<(&'static str, Run)> {
    STRATEGIES
        .iter()
        .map(|&s| (s.name(), scenario(s)))
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Strategy {
    RoundRobin,
    WeightedRoundRobin,
    Random,
    WeightedRandom,
    LeastLoaded,
    PowerOfTwoChoices,
    PeakEwma,
    Maglev,
    Ring,
    Rendezvous,
    Jump,
    BoundedLoad,
}

const STRATEGIES: [Strategy; 12] = [
    Strategy::RoundRobin,
    Strategy::WeightedRoundRobin,
    Strategy::Random,
    Strategy::WeightedRandom,
    Strategy::LeastLoaded,
    Strategy::PowerOfTwoChoices,
    Strategy::PeakEwma,
    Strategy::Maglev,
    Strategy::Ring,
    Strategy::Rendezvous,
    Strategy::Jump,
    Strategy::BoundedLoad,
];

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round robin",
            Strategy::WeightedRoundRobin => "weighted round robin",
            Strategy::Random => "random",
            Strategy::WeightedRandom => "weighted random",
            Strategy::LeastLoaded => "least loaded",
            Strategy::PowerOfTwoChoices => "p2c",
            Strategy::PeakEwma => "peak ewma",
            Strategy::Maglev => "maglev",
            Strategy::Ring => "ring",
            Strategy::Rendezvous => "rendezvous",
            Strategy::Jump => "jump",
            Strategy::BoundedLoad => "bounded load (maglev)",
        }
    }

    /// Runs `go` with this strategy's picker (seeded with `seed` where it draws).
    fn with<G: Go>(self, seed: u64, go: G) -> Run {
        match self {
            Strategy::RoundRobin => go.go(RoundRobin::new()),
            Strategy::WeightedRoundRobin => go.go(WeightedRoundRobin::new()),
            Strategy::Random => go.go(Random::with_seed(seed)),
            Strategy::WeightedRandom => go.go(WeightedRandom::with_seed(seed)),
            Strategy::LeastLoaded => go.go(LeastLoaded::with_seed(seed)),
            Strategy::PowerOfTwoChoices => go.go(PowerOfTwoChoices::with_seed(seed)),
            Strategy::PeakEwma => go.go(PeakEwma::with_seed(seed)),
            Strategy::Maglev => go.go(Maglev::new()),
            Strategy::Ring => go.go(Ring::new()),
            Strategy::Rendezvous => go.go(Rendezvous::new()),
            Strategy::Jump => go.go(Jump::new()),
            Strategy::BoundedLoad => go.go(BoundedLoad::new(Maglev::new())),
        }
    }

    fn load_aware(self) -> bool {
        matches!(
            self,
            Strategy::LeastLoaded
                | Strategy::PowerOfTwoChoices
                | Strategy::PeakEwma
                | Strategy::BoundedLoad
        )
    }
}

/// A scenario generic over the picker type.
trait Go {
    fn go<P: Picker<Ep> + 'static>(self, picker: P) -> Run;
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "—".to_owned(),
        |d| format!("{:.0} ms", d.as_secs_f64() * 1e3),
    )
}

/// The scenarios' numbers (the issue's): 16 callers, backends answering in 1 ms, N of M refuse from
/// t = 0.3 s; counted from t = 0.8 s (0.5 s after the failure) to 2 s.
const CALLERS: u64 = 16;
const LATENCY: Duration = Duration::from_millis(1);
const BREAK_AT: Duration = Duration::from_millis(300);
const MEASURE_FROM: Duration = Duration::from_millis(800);
const END: Duration = Duration::from_secs(2);
/// At most this share of requests may fail from 0.5 s after the failure.
const MAX_FAILED_SHARE: f64 = 0.01;
