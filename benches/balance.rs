//! Request overhead of the tower service: `ready` + `call` + `await` on a current-thread
//! runtime, backends are `service_fn`s that answer at once. In the same group: the bare
//! `service_fn` call (the floor) and tower 0.5's own `p2c::Balance` with
//! `PendingRequests` and with `PeakEwma` (the peer), at N ∈ {8, 64, 1024}.

use std::convert::Infallible;
use std::future::Ready;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma as TowerPeakEwma, PendingRequests};
use tower::{Service, ServiceExt, service_fn};
use tower_lb::balance::{BackendService, Balance};
use tower_lb::{PeakEwma, Picker, Pool, PowerOfTwoChoices, Weight};

const SIZES: [usize; 3] = [8, 64, 1024];

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
            std::hint::black_box(ready.call(i as u32).await.expect("a response"));
        }
        start.elapsed()
    })
}

fn ours<P: Picker<BackendService<usize, Backend>>>(
    picker: P,
    n: usize,
) -> impl Service<u32, Error = tower_lb::balance::BoxError> {
    let pool = Pool::new(picker);
    pool.extend((0..n).map(|i| (BackendService::new(i, backend()), Weight::ONE)))
        .expect("distinct keys");
    Balance::new(pool)
}

pub fn register(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("balance_request");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let mut bare = backend();
        group.bench_with_input(BenchmarkId::new("floor: bare service_fn", n), &n, |b, _| {
            b.iter_custom(|iters| time_requests(&rt, &mut bare, iters))
        });

        let mut tower_pending = tower::balance::p2c::Balance::new(ServiceList::new(
            (0..n).map(|_| PendingRequests::new(backend(), CompleteOnResponse::default())),
        ));
        group.bench_with_input(
            BenchmarkId::new("tower p2c PendingRequests", n),
            &n,
            |b, _| b.iter_custom(|iters| time_requests(&rt, &mut tower_pending, iters)),
        );

        let mut tower_ewma =
            tower::balance::p2c::Balance::new(ServiceList::new((0..n).map(|_| {
                TowerPeakEwma::new(
                    backend(),
                    Duration::from_millis(1),
                    Duration::from_secs(10).as_nanos() as f64,
                    CompleteOnResponse::default(),
                )
            })));
        group.bench_with_input(BenchmarkId::new("tower p2c PeakEwma", n), &n, |b, _| {
            b.iter_custom(|iters| time_requests(&rt, &mut tower_ewma, iters))
        });

        let mut p2c = ours(PowerOfTwoChoices::new(), n);
        group.bench_with_input(
            BenchmarkId::new("tower-lb PowerOfTwoChoices", n),
            &n,
            |b, _| b.iter_custom(|iters| time_requests(&rt, &mut p2c, iters)),
        );

        let mut ewma = ours(PeakEwma::new(), n);
        group.bench_with_input(BenchmarkId::new("tower-lb PeakEwma", n), &n, |b, _| {
            b.iter_custom(|iters| time_requests(&rt, &mut ewma, iters))
        });
    }
    group.finish();
}
