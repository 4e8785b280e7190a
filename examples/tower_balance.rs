//! tower's `tower-balance` example workload, in real time: tower's P2C Peak EWMA beside
//! tower-lb's `PeakEwma`, `LeastLoaded` and `PowerOfTwoChoices`.
//!
//! Ten in-process endpoints answer after a latency drawn uniformly from [0, max) with
//! max = 1, 5, 10, 10, 10, 100, 100, 100, 500 and 1000 ms (a tokio sleep; capacity
//! unlimited, so latency does not grow with load); 500 requests are kept in flight until
//! 100 000 have been sent, as tower's example does. Each strategy's latency percentiles
//! are those of the *measured* time from pick to answer (tower's example reports the
//! drawn latency; both are printed).
//!
//! Run with `cargo run --release --example tower_balance [-- REQUESTS [IN_FLIGHT]]`
//! (about 10 seconds: most of it tower's P2C). The simulator's `latency` scenario runs
//! the same workload in virtual time.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{Service, ServiceExt};
use tower_lb::{LeastLoaded, PeakEwma, PickContext, Picker, Pool, PowerOfTwoChoices, Weight};

const MAX_MS: [u64; 10] = [1, 5, 10, 10, 10, 100, 100, 100, 500, 1000];
/// tower's example: default RTT 30 ms, decay 10 s.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
const DECAY: Duration = Duration::from_secs(10);

thread_local! {
    /// Seeded: the draws repeat from run to run (the timing, being real, does not).
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::seed_from_u64(13));
}

/// A latency drawn uniformly from [0, max) whole milliseconds, as tower's example draws it.
fn draw(max_ms: u64) -> Duration {
    RNG.with(|r| Duration::from_millis(r.borrow_mut().random_range(0..max_ms.max(1))))
}

/// (measured, drawn) latencies of every request.
type Samples = Vec<(Duration, Duration)>;

fn report(name: &str, mut samples: Samples, wall: Duration) {
    let mut measured: Vec<Duration> = samples.iter().map(|s| s.0).collect();
    samples.sort_by_key(|s| s.1);
    measured.sort();
    let q = |v: &[Duration], p: f64| {
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e3
    };
    let drawn: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    println!(
        "{name:<22} measured p50 {:>6.1} ms p90 {:>6.1} ms p99 {:>6.1} ms | drawn p99 {:>6.1} ms | {:.1} s",
        q(&measured, 0.5),
        q(&measured, 0.9),
        q(&measured, 0.99),
        q(&drawn, 0.99),
        wall.as_secs_f64()
    );
}

/// tower's balancer over `ServiceList` + `PeakEwmaDiscover`, as tower's example builds it.
async fn run_tower(requests: usize, in_flight: usize) -> Samples {
    type Fut = Pin<Box<dyn Future<Output = Result<Duration, tower::BoxError>> + Send>>;
    let endpoints: Vec<_> = MAX_MS
        .iter()
        .map(|&max| {
            tower::service_fn(move |()| -> Fut {
                Box::pin(async move {
                    let latency = draw(max);
                    tokio::time::sleep(latency).await;
                    Ok(latency)
                })
            })
        })
        .collect();
    let discover = PeakEwmaDiscover::new(
        ServiceList::new(endpoints),
        DEFAULT_RTT,
        DECAY,
        CompleteOnResponse::default(),
    );
    let mut balance = Balance::new(discover);
    let limit = Arc::new(Semaphore::new(in_flight));
    let mut running = futures::stream::FuturesUnordered::new();
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let permit = Arc::clone(&limit).acquire_owned().await.expect("open");
        let svc = balance.ready().await.expect("ready");
        let start = Instant::now();
        let call = svc.call(());
        running.push(tokio::spawn(async move {
            let drawn = call.await.expect("answers");
            drop(permit);
            (start.elapsed(), drawn)
        }));
        // Collect what has finished without waiting.
        while let Some(Some(s)) = futures::FutureExt::now_or_never(running.next()) {
            samples.push(s.expect("the request task"));
        }
    }
    while let Some(s) = running.next().await {
        samples.push(s.expect("the request task"));
    }
    samples
}

/// tower-lb's `Pool` with `picker`: pick, track, answer.
async fn run_pool<P: Picker<usize> + 'static>(
    picker: P,
    requests: usize,
    in_flight: usize,
) -> Samples {
    let pool = Pool::builder(picker)
        .ewma_decay(DECAY)
        .build()
        .expect("valid settings");
    pool.extend((0..MAX_MS.len()).map(|i| (i, Weight::ONE)))
        .expect("distinct");
    let limit = Arc::new(Semaphore::new(in_flight));
    let mut running = futures::stream::FuturesUnordered::new();
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let permit = Arc::clone(&limit).acquire_owned().await.expect("open");
        let start = Instant::now();
        let picked = pool.pick(&PickContext::new()).expect("backends");
        let max = MAX_MS[*picked.addr()];
        let guard = picked.start();
        drop(picked);
        running.push(tokio::spawn(async move {
            let drawn = draw(max);
            tokio::time::sleep(drawn).await;
            guard.success();
            drop(permit);
            (start.elapsed(), drawn)
        }));
        while let Some(Some(s)) = futures::FutureExt::now_or_never(running.next()) {
            samples.push(s.expect("the request task"));
        }
    }
    while let Some(s) = running.next().await {
        samples.push(s.expect("the request task"));
    }
    samples
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let requests: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let in_flight: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    println!("{requests} requests, {in_flight} in flight, endpoints up to {MAX_MS:?} ms");

    let t = Instant::now();
    let s = run_tower(requests, in_flight).await;
    report("tower p2c PeakEwma", s, t.elapsed());

    let t = Instant::now();
    let s = run_pool(PeakEwma::new(), requests, in_flight).await;
    report("tower-lb PeakEwma", s, t.elapsed());

    let t = Instant::now();
    let s = run_pool(LeastLoaded::new(), requests, in_flight).await;
    report("tower-lb LeastLoaded", s, t.elapsed());

    let t = Instant::now();
    let s = run_pool(PowerOfTwoChoices::new(), requests, in_flight).await;
    report("tower-lb p2c", s, t.elapsed());
}
