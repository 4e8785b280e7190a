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

// ---------------------------------------------------------------------------------------
// Scenario A: N of M backends start failing at once
// ---------------------------------------------------------------------------------------

/// The numbers: 16 callers, backends answering in 1 ms, N of M refuse from
/// t = 0.3 s; counted from t = 0.8 s (0.5 s after the failure) to 2 s.
const CALLERS: u64 = 16;
const LATENCY: Duration = Duration::from_millis(1);
const BREAK_AT: Duration = Duration::from_millis(300);
const MEASURE_FROM: Duration = Duration::from_millis(800);
const END: Duration = Duration::from_secs(2);
/// At most this share of requests may fail from 0.5 s after the failure.
const MAX_FAILED_SHARE: f64 = 0.01;

struct ScenarioA {
    m: usize,
    n: usize,
}

impl Go for ScenarioA {
    fn go<P: Picker<Ep> + 'static>(self, picker: P) -> Run {
        let (pool, lb, broken) = setup(
            picker,
            self.m,
            LATENCY,
            Breaks::Refusing,
            Some(OutlierDetection::new()),
        );
        Box::pin(run(
            pool,
            lb,
            broken,
            self.n,
            CALLERS,
            BREAK_AT,
            MEASURE_FROM,
            END,
            None,
        ))
    }
}

/// N of M refuse at once, for M = 3, 5, 10 and every N < M, every strategy: every broken
/// backend leaves rotation, and from 0.5 s after the failure at most 1% of requests
/// fail — with no retries, under `OutlierDetection::new()` and the default panic
/// threshold (which no longer re-admits a backend whose failure is confirmed).
#[tokio::test(start_paused = true)]
async fn scenario_a_any_number_of_refusing_backends_leave_rotation() {
    let mut worst = Vec::new();
    for m in [3usize, 5, 10] {
        println!(
            "\nscenario A, M = {m}: failed share from 0.5 s after the failure (time to the last failure)"
        );
        for n in 1..m {
            let runs = every_strategy(|s| s.with(n as u64, ScenarioA { m, n }));
            let mut line = format!("  N = {n}:");
            for (name, fut) in runs {
                let seen = fut.await;
                line.push_str(&format!(
                    " {name} {:.3}% ({}),",
                    seen.share() * 100.0,
                    ms(seen.last_failure)
                ));
                assert!(seen.total > 10_000, "{name}, M {m} N {n}: {seen:?}");
                assert!(
                    seen.share() <= MAX_FAILED_SHARE,
                    "{name}, M = {m}, N = {n}: {:.2}% failed from 0.5 s after the failure: {seen:?}",
                    seen.share() * 100.0
                );
                worst.push((seen.share(), name, m, n));
            }
            println!("{line}");
        }
    }
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("worst: {:?}", &worst[..3]);
}

/// The README's table: the same scenario on the real clock (all strategies at once, on
/// two threads) for M = 3, N = 2 and M = 10, N = 9 — failed share and the time to the
/// last failure and to the ejection of every broken backend, with the bound above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_a_table_on_the_real_clock() {
    let mut rows: Vec<(Strategy, Vec<Seen>)> =
        STRATEGIES.iter().map(|&s| (s, Vec::new())).collect();
    for (m, n) in [(3, 2), (10, 9)] {
        let handles: Vec<_> = STRATEGIES
            .iter()
            .map(|&s| tokio::spawn(s.with(7, ScenarioA { m, n })))
            .collect();
        for (row, handle) in rows.iter_mut().zip(handles) {
            row.1.push(handle.await.unwrap());
        }
    }
    println!(
        "\n| strategy | M = 3, N = 2: failed from +0.5 s | last failure | all ejected | M = 10, N = 9: failed from +0.5 s | last failure | all ejected |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (s, seen) in &rows {
        let cells: Vec<String> = seen
            .iter()
            .map(|x| {
                format!(
                    "{:.3}% of {} | {} | {}",
                    x.share() * 100.0,
                    x.total,
                    ms(x.last_failure),
                    ms(x.all_ejected)
                )
            })
            .collect();
        println!("| {} | {} |", s.name(), cells.join(" | "));
    }
    for (s, seen) in rows {
        for (x, m) in seen.iter().zip([3, 10]) {
            assert!(x.total > 1_000, "{} M = {m}: {x:?}", s.name());
            assert!(x.share() <= MAX_FAILED_SHARE, "{} M = {m}: {x:?}", s.name());
            // Round robin, random and hashing have no other way off a dead backend than
            // ejection: every broken one is ejected, beyond the 10% cap.
            if !s.load_aware() {
                assert!(x.all_ejected.is_some(), "{} M = {m}: {x:?}", s.name());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scenario B: a backend hangs behind the caller's time-out
// ---------------------------------------------------------------------------------------

struct ScenarioB;

impl Go for ScenarioB {
    fn go<P: Picker<Ep> + 'static>(self, picker: P) -> Run {
        let (pool, lb, broken) = setup(
            picker,
            3,
            Duration::from_millis(2),
            Breaks::Hanging,
            Some(OutlierDetection::new()),
        );
        Box::pin(run(
            pool,
            lb,
            broken,
            1,
            CALLERS,
            BREAK_AT,
            Duration::from_millis(1500),
            Duration::from_millis(2500),
            Some(Duration::from_millis(300)),
        ))
    }
}

/// 3 backends, one accepts and never answers from t = 0.3 s, the caller wraps each call
/// in a 300 ms time-out (outside the balancer, where users put tower's `Timeout`): the
/// cancelled requests count as failures (the default cancellation threshold, 100 ms), the
/// hung backend is ejected, and no request started after t = 1.5 s times out — every
/// strategy. Real clock: a cancellation is judged by how long the request really ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_b_a_hung_backend_behind_a_callers_timeout_is_ejected() {
    let runs = every_strategy(|s| s.with(11, ScenarioB));
    let handles: Vec<_> = runs
        .into_iter()
        .map(|(name, fut)| (name, tokio::spawn(fut)))
        .collect();
    println!(
        "\n| strategy (one of 3 hangs at 0.3 s, caller time-out 300 ms) | requests from 1.5 s | timed out | last time-out after the hang | hung backend ejected after |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, handle) in handles {
        let seen = handle.await.unwrap();
        println!(
            "| {name} | {} | {} | {} | {} |",
            seen.total,
            seen.timed_out,
            ms(seen.last_failure),
            ms(seen.all_ejected)
        );
        assert!(seen.total > 100, "{name}: {seen:?}");
        assert_eq!(seen.failed, 0, "{name}: failures after t = 1.5 s: {seen:?}");
        assert!(seen.all_ejected.is_some(), "{name}: not ejected: {seen:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Failures are load
// ---------------------------------------------------------------------------------------

struct NoEjection;

impl Go for NoEjection {
    fn go<P: Picker<Ep> + 'static>(self, picker: P) -> Run {
        // No outlier detection at all: the pickers' cost is the only defence.
        let (pool, lb, broken) = setup(picker, 3, LATENCY, Breaks::Refusing, None);
        Box::pin(run(
            pool,
            lb,
            broken,
            1,
            CALLERS,
            BREAK_AT,
            MEASURE_FROM,
            END,
            None,
        ))
    }
}

/// One of 3 backends fails in microseconds and is never ejected (no outlier detection):
/// the load-aware strategies charge its failures as load and send it at most 1% of the
/// requests from 0.5 s on — where counting in-flight requests alone sent it nearly all
/// (it never has anything in flight). Round robin, for contrast, keeps sending it a
/// third. Real clock: the failure score fades in real time, and the dead backend is
/// retried as it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_failing_backend_loses_traffic_before_any_ejection() {
    let strategies = [
        Strategy::LeastLoaded,
        Strategy::PowerOfTwoChoices,
        Strategy::PeakEwma,
        Strategy::BoundedLoad,
        Strategy::RoundRobin,
    ];
    let handles: Vec<_> = strategies
        .iter()
        .map(|&s| (s, tokio::spawn(s.with(5, NoEjection))))
        .collect();
    println!("\nno ejection, 1 of 3 fails fast from 0.3 s:");
    let mut results = Vec::new();
    for (s, handle) in handles {
        let seen = handle.await.unwrap();
        println!(
            "  {}: {:.3}% of {} failed from 0.8 s",
            s.name(),
            seen.share() * 100.0,
            seen.total
        );
        results.push((s, seen));
    }
    for (s, seen) in results {
        assert!(seen.total > 1_000, "{}: {seen:?}", s.name());
        if s.load_aware() {
            assert!(seen.share() <= MAX_FAILED_SHARE, "{}: {seen:?}", s.name());
        } else {
            // The contrast that shows the test can fail: a third, within noise.
            assert!(seen.share() > 0.25, "{}: {seen:?}", s.name());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The per-attempt time-out
// ---------------------------------------------------------------------------------------

/// `BalanceLayer::timeout`: an attempt on a hung backend fails with `TimedOut` naming
/// the backend and at least the time-out as elapsed, and counts as that backend's
/// failure.
#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_names_the_backend_and_counts_as_a_failure() {
    let pool = Pool::new(RoundRobin::new());
    let hung = Arc::new(AtomicBool::new(true));
    let id = pool
        .insert(
            backend(0, LATENCY, Breaks::Hanging, hung.clone()),
            Weight::ONE,
        )
        .unwrap();
    let lb = BalanceLayer::new(pool.clone())
        .timeout(Duration::from_millis(250))
        .build(PerBackend);
    let started = Instant::now();
    let err = lb.clone().oneshot(1).await.unwrap_err();
    let timed_out = err.downcast_ref::<TimedOut>().expect("a TimedOut");
    assert_eq!(timed_out.backend, id);
    assert_eq!(timed_out.timeout, Duration::from_millis(250));
    assert!(
        timed_out.elapsed >= Duration::from_millis(250),
        "{timed_out:?}"
    );
    assert_eq!(Instant::now() - started, Duration::from_millis(250));
    let stats = &pool.stats()[0];
    assert_eq!((stats.failures, stats.in_flight), (1, 0), "{stats:?}");
    assert!(err.to_string().contains("backend#0"), "{err}");

    // An answer within the time-out is a success.
    hung.store(false, Ordering::SeqCst);
    assert_eq!(lb.clone().oneshot(2).await.unwrap(), 0);
    assert_eq!(pool.stats()[0].successes, 1);
}

/// The inner service's error names the backend it came from.
#[tokio::test(start_paused = true)]
async fn an_inner_error_names_its_backend() {
    let pool = Pool::new(RoundRobin::new());
    let id = pool
        .insert(
            backend(
                0,
                LATENCY,
                Breaks::Refusing,
                Arc::new(AtomicBool::new(true)),
            ),
            Weight::ONE,
        )
        .unwrap();
    let err = Balance::new(pool).oneshot(1).await.unwrap_err();
    let failed = err.downcast_ref::<BackendError>().expect("a BackendError");
    assert_eq!(failed.backend, id);
    let io = failed
        .downcast_ref::<std::io::Error>()
        .expect("the io error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    let found = tower_lb::balance::find_error::<std::io::Error>(&err).unwrap();
    assert_eq!(found.kind(), std::io::ErrorKind::ConnectionRefused);
}

// ---------------------------------------------------------------------------------------
// Retries on another backend
// ---------------------------------------------------------------------------------------

/// Counts the calls each backend received.
/// A backend taking HTTP requests (which carry the retry's exclusions in their
/// extensions), counting the calls it receives.
type HttpEp = BackendService<usize, BoxCloneSyncService<http::Request<u64>, usize, BoxError>>;

fn counting(i: usize, fail: bool, calls: Arc<AtomicU64>) -> HttpEp {
    let svc = tower::service_fn(move |_req: http::Request<u64>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if fail {
                Err::<usize, BoxError>(format!("backend {i} fails").into())
            } else {
                Ok(i)
            }
        }
    });
    BackendService::new(i, BoxCloneSyncService::new(svc))
}

/// A round-robin pool (no ejection) of `n` backends, backend `i` made by
/// `make(i, its call counter)`; the pool and the counters.
fn counted(
    n: usize,
    make: impl Fn(usize, Arc<AtomicU64>) -> HttpEp,
) -> (Pool<HttpEp, RoundRobin>, Vec<Arc<AtomicU64>>) {
    let calls: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::default()).collect();
    let pool = Pool::new(RoundRobin::new());
    for (i, c) in calls.iter().enumerate() {
        pool.insert(make(i, c.clone()), Weight::ONE).unwrap();
    }
    (pool, calls)
}

/// The calls all backends received.
fn total(calls: &[Arc<AtomicU64>]) -> u64 {
    calls.iter().map(|c| c.load(Ordering::SeqCst)).sum()
}

/// One of 3 backends fails every request: with one retry, every request succeeds, and a
/// retry never goes back to the backend that failed it.
#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_another_backend() {
    // Round robin without ejection: the failing backend keeps its turn, so only the
    // retry's exclusion keeps it from answering twice.
    let (pool, calls) = counted(3, |i, c| counting(i, i == 1, c));
    let svc = tower::ServiceBuilder::new()
        .layer(RetryLayer::new().policy(Always))
        .service(Balance::new(pool.clone()));
    for req in 0..300 {
        let answer = svc.clone().oneshot(http::Request::new(req)).await.unwrap();
        assert_ne!(answer, 1);
    }
    // Each request was answered once by 0 or 2; every call to backend 1 failed and was
    // retried once, elsewhere (a retry back to 1 would have failed the request).
    let failed = calls[1].load(Ordering::SeqCst);
    assert!((90..=300).contains(&failed), "{failed} calls to backend 1");
    assert_eq!(
        calls[0].load(Ordering::SeqCst) + calls[2].load(Ordering::SeqCst),
        300
    );
}

/// Every backend fails: retries stay within the budget (10% of requests here, no
/// floor), so an outage is not multiplied by retries; and a request is never sent twice
/// to one backend (3 attempts at most over 3 backends even with 5 retries allowed).
#[tokio::test(start_paused = true)]
async fn retries_stay_within_the_budget() {
    let (pool, calls) = counted(3, |i, c| counting(i, true, c));
    let svc = tower::ServiceBuilder::new()
        .layer(
            RetryLayer::new()
                .policy(Always)
                .max_retries(5)
                .budget(TpsBudget::new(Duration::from_secs(10), 0, 0.1)),
        )
        .service(Balance::new(pool.clone()));
    const REQUESTS: u64 = 1_000;
    for req in 0..REQUESTS {
        assert!(svc.clone().oneshot(http::Request::new(req)).await.is_err());
    }
    let attempts = total(&calls);
    let retries = attempts - REQUESTS;
    println!("all backends failing: {REQUESTS} requests, {retries} retries");
    assert!(retries > 0, "the budget allows some retries");
    // 10% of the requests, with TpsBudget's rounding slack.
    assert!(
        retries <= REQUESTS / 10 + 2,
        "{retries} retries for {REQUESTS} requests"
    );

    // With a generous budget: at most one attempt per backend.
    let generous = tower::ServiceBuilder::new()
        .layer(RetryLayer::new().policy(Always).max_retries(5))
        .service(Balance::new(pool.clone()));
    let before = total(&calls);
    assert!(
        generous
            .clone()
            .oneshot(http::Request::new(0))
            .await
            .is_err()
    );
    let after = total(&calls);
    assert_eq!(after - before, 3, "each backend once");
}

/// A backend failing every call with `error()`, counting the calls it receives.
fn failing_with(i: usize, error: fn() -> BoxError, calls: Arc<AtomicU64>) -> HttpEp {
    let svc = tower::service_fn(move |_req: http::Request<u64>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Err::<usize, BoxError>(error()) }
    });
    BackendService::new(i, BoxCloneSyncService::new(svc))
}

/// The default policy (`RetryLayer::new()`: `Idempotent`, one retry, the default budget):
/// an idempotent method (RFC 9110 §9.2.2) is sent again after a failed attempt, any
/// other only after a refused connect (nothing was sent); at most one retry, two
/// backends in all; an answer is never sent again.
#[tokio::test(start_paused = true)]
async fn the_default_policy_retries_once_what_is_safe_to_send_again() {
    use http::Method;
    let reset: fn() -> BoxError = || "connection reset before the response".into();
    let refused: fn() -> BoxError =
        || std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
    let idempotent = [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ];
    for method in idempotent.iter().chain(&[Method::POST, Method::PATCH]) {
        for (error, connect) in [(reset, false), (refused, true)] {
            // Every backend fails, so the calls made count the attempts.
            let (pool, calls) = counted(3, |i, c| failing_with(i, error, c));
            let svc = tower::ServiceBuilder::new()
                .layer(RetryLayer::new())
                .service(Balance::new(pool));
            let request = http::Request::builder()
                .method(method.clone())
                .body(0)
                .unwrap();
            assert!(svc.oneshot(request).await.is_err());
            let attempts = total(&calls);
            let retried = connect || idempotent.contains(method);
            assert_eq!(
                attempts,
                if retried { 2 } else { 1 },
                "{method} after {}",
                if connect {
                    "a refused connect"
                } else {
                    "a reset"
                }
            );
        }
    }
    // An answer is final, for any method.
    let (pool, calls) = counted(2, |i, c| counting(i, false, c));
    let svc = tower::ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(Balance::new(pool));
    for request in 0..10 {
        svc.clone()
            .oneshot(http::Request::new(request))
            .await
            .unwrap();
    }
    assert_eq!(total(&calls), 10);
}

/// The balancer's own refusals — no eligible backend, or every backend at its limit —
/// are not failed attempts: no policy of the crate retries them.
#[tokio::test(start_paused = true)]
async fn the_balancers_own_refusals_are_never_retried() {
    use tower_lb::balance::retry::{Idempotent, RetryPolicy};
    let request = http::Request::new(0u64);
    // No backend at all.
    let empty: Pool<HttpEp, _> = Pool::new(RoundRobin::new());
    let no_backend = Balance::new(empty)
        .oneshot(http::Request::new(0))
        .await
        .unwrap_err();
    assert!(no_backend.is::<tower_lb::PickError>(), "{no_backend}");
    // Every backend at its limit, shedding.
    let calls = Arc::<AtomicU64>::default();
    let pool = Pool::new(RoundRobin::new());
    pool.insert(counting(0, false, calls.clone()), Weight::ONE)
        .unwrap();
    let mut holder = BalanceLayer::new(pool)
        .max_in_flight(1)
        .on_overload(tower_lb::balance::OnOverload::Shed)
        .build(PerBackend);
    std::future::poll_fn(|cx| tower::Service::poll_ready(&mut holder, cx))
        .await
        .unwrap();
    let overloaded = holder
        .clone()
        .oneshot(http::Request::new(0))
        .await
        .unwrap_err();
    assert!(overloaded.is::<tower_lb::Overloaded>(), "{overloaded}");
    for error in [&no_backend, &overloaded] {
        assert!(!Idempotent.may_retry(&request, error), "{error}");
        assert!(!Always.may_retry(&request, error), "{error}");
    }
    // A failed attempt, by contrast, is retried by both.
    let failing = Pool::new(RoundRobin::new());
    failing
        .insert(counting(0, true, Arc::default()), Weight::ONE)
        .unwrap();
    let attempt = Balance::new(failing)
        .oneshot(http::Request::new(0))
        .await
        .unwrap_err();
    assert!(attempt.is::<BackendError>(), "{attempt}");
    assert!(Idempotent.may_retry(&request, &attempt));
    assert!(Always.may_retry(&request, &attempt));
}
