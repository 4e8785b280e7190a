//! Request overhead of a balancing tower service, at N ∈ {8, 64, 1024}: `ready` +
//! `call` + `await` of one request on a current-thread runtime, backends are
//! `service_fn`s that answer at once (the approach of the main crate's
//! `benches/balance.rs`). In the same group: the bare `service_fn` (the floor), tower
//! 0.5's `p2c::Balance` with `PendingRequests` and with `PeakEwma` (theirs), tower-lb's
//! `Balance` with `PowerOfTwoChoices` and with `PeakEwma` (ours).
//!
//! A second group, `request_breakdown` (N ∈ {8, 64}), splits our request cost into its
//! parts through public APIs, to show where the time goes: the clock, the pick, the
//! in-flight guard, the completion bookkeeping (outcome counters, latency sample).

use std::convert::Infallible;
use std::future::Ready;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma as TowerPeakEwma, PendingRequests};
use tower::{Service, ServiceExt, service_fn};
use tower_lb::balance::{Balance, BoxError, BackendService};
use tower_lb::{PeakEwma, PickContext, Picker, Pool, PowerOfTwoChoices, Weight};
use tower_lb_compare::SIZES;

type Backend = tower::util::ServiceFn<fn(u32) -> Ready<Result<u32, Infallible>>>;

fn backend() -> Backend {
    service_fn(|req: u32| std::future::ready(Ok(req)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

/// Times `iters` sequential requests through `svc` inside one `block_on`.
fn time_requests<S>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64) -> Duration
where
    S: Service<u32>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            let ready = svc.ready().await.expect("ready");
            black_box(ready.call(i as u32).await.expect("a response"));
        }
        start.elapsed()
    })
}

fn ours<P: Picker<BackendService<usize, Backend>>>(
    picker: P,
    n: usize,
) -> impl Service<u32, Error = BoxError> {
    let pool = Pool::new(picker);
    pool.extend((0..n).map(|i| (BackendService::new(i, backend()), Weight::ONE)))
        .expect("distinct keys");
    Balance::new(pool)
}

pub fn register(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let mut bare = backend();
        g.bench_function(BenchmarkId::new("floor: bare service_fn", n), |b| {
            b.iter_custom(|iters| time_requests(&rt, &mut bare, iters))
        });

        let mut tower_pending = tower::balance::p2c::Balance::new(ServiceList::new(
            (0..n).map(|_| PendingRequests::new(backend(), CompleteOnResponse::default())),
        ));
        g.bench_function(BenchmarkId::new("tower p2c PendingRequests", n), |b| {
            b.iter_custom(|iters| time_requests(&rt, &mut tower_pending, iters))
        });

        // tower's defaults as its docs suggest them: 1 ms default RTT, 10 s decay.
        let mut tower_ewma =
            tower::balance::p2c::Balance::new(ServiceList::new((0..n).map(|_| {
                TowerPeakEwma::new(
                    backend(),
                    Duration::from_millis(1),
                    Duration::from_secs(10).as_nanos() as f64,
                    CompleteOnResponse::default(),
                )
            })));
        g.bench_function(BenchmarkId::new("tower p2c PeakEwma", n), |b| {
            b.iter_custom(|iters| time_requests(&rt, &mut tower_ewma, iters))
        });

        let mut p2c = ours(PowerOfTwoChoices::new(), n);
        g.bench_function(BenchmarkId::new("tower-lb PowerOfTwoChoices", n), |b| {
            b.iter_custom(|iters| time_requests(&rt, &mut p2c, iters))
        });

        let mut ewma = ours(PeakEwma::new(), n);
        g.bench_function(BenchmarkId::new("tower-lb PeakEwma", n), |b| {
            b.iter_custom(|iters| time_requests(&rt, &mut ewma, iters))
        });
    }
    g.finish();
}

/// Where our request time goes, at the sizes where the ratio to tower is closest.
pub fn breakdown(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("request_breakdown");
    g.throughput(Throughput::Elements(1));
    let ctx = PickContext::new();
    for n in [8, 64] {
        g.bench_function(BenchmarkId::new("clock: std Instant::now", n), |b| {
            b.iter(Instant::now)
        });
        g.bench_function(BenchmarkId::new("clock: quanta::Instant::now", n), |b| {
            b.iter(quanta::Instant::now)
        });
        let pool = Pool::new(PowerOfTwoChoices::new());
        pool.extend((0..n).map(|i| (i, Weight::ONE)))
            .expect("distinct keys");
        g.bench_function(BenchmarkId::new("Pool::pick P2C", n), |b| {
            b.iter(|| pool.pick(black_box(&ctx)).map(|p| p.index()))
        });
        // The in-flight guard: one clock read at start, in flight +1 / -1, no outcome.
        g.bench_function(
            BenchmarkId::new("Pool::pick P2C + start() + drop", n),
            |b| b.iter(|| drop(pool.pick(black_box(&ctx)).map(|p| p.start()))),
        );
        // What `Balance` does around the inner call: the guard, then on completion a
        // second clock read, the outcome counter and health, the latency sample (EWMA).
        g.bench_function(
            BenchmarkId::new("Pool::pick P2C + start() + success()", n),
            |b| b.iter(|| pool.pick(black_box(&ctx)).map(|p| p.start().success())),
        );
        let mut p2c = ours(PowerOfTwoChoices::new(), n);
        g.bench_function(
            BenchmarkId::new("Balance P2C: ready + call + await", n),
            |b| b.iter_custom(|iters| time_requests(&rt, &mut p2c, iters)),
        );
    }
    g.finish();
}
