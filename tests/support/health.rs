//! Pools set up as the health tests need them: backends of weight 1 in a known order, a
//! picker, the crate's manual clock, the health settings under test; and the reports and
//! readings those tests repeat.

use std::hash::Hash;
use std::time::Duration;

use tower_lb::clock::ManualClock;
use tower_lb::health::{FailurePercentage, Outcome, OutlierDetection, SlowStart, SuccessRate};
use tower_lb::{BackendId, BackendStats, Picker, Pool, PoolBuilder, RoundRobin, Weight};

/// A round-robin pool builder reading `clock`.
pub fn round_robin_on<A>(clock: &ManualClock) -> PoolBuilder<A, RoundRobin> {
    Pool::builder(RoundRobin::new()).clock(clock.reader())
}

/// Builds `builder` and adds `addrs`, weight 1 each, in order: the pool and their ids.
pub fn holding<A, P>(
    builder: PoolBuilder<A, P>,
    addrs: impl IntoIterator<Item = A>,
) -> (Pool<A, P>, Vec<BackendId>)
where
    A: Clone + Eq + Hash,
    P: Picker<A>,
{
    let pool = builder.build().unwrap();
    let ids = pool
        .extend(addrs.into_iter().map(|a| (a, Weight::ONE)))
        .expect("test addresses are distinct");
    (pool, ids)
}

/// The first `n` of the backends `a`, `b`, `c`, … (at most 8).
pub fn letters(n: usize) -> Vec<&'static str> {
    ["a", "b", "c", "d", "e", "f", "g", "h"][..n].to_vec()
}

/// `n` hosts named `h0`, `h1`, ….
pub fn hosts(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("h{i}"))
}

/// Outlier detection with consecutive failures only and no jitter: exact times.
pub fn consecutive_only() -> OutlierDetection {
    OutlierDetection::new()
        .ejection_jitter(Duration::ZERO)
        .success_rate(None)
}

/// A round-robin pool of `n` hosts `h0`, `h1`, … on `clock`, with `detection`.
pub fn detected(
    clock: &ManualClock,
    detection: OutlierDetection,
    n: usize,
) -> (Pool<String, RoundRobin>, Vec<BackendId>) {
    holding(round_robin_on(clock).outlier_detection(detection), hosts(n))
}

/// The stats of backend `id`.
pub fn stat<A: Clone, P: Picker<A>>(pool: &Pool<A, P>, id: BackendId) -> BackendStats<A> {
    pool.stats()
        .into_iter()
        .find(|s| s.id == id)
        .expect("backend is in the pool")
}

/// Whether backend `id` is healthy.
pub fn is_healthy<A: Clone, P: Picker<A>>(pool: &Pool<A, P>, id: BackendId) -> bool {
    stat(pool, id).health.is_healthy()
}

/// How many backends are ejected (have a time of return).
pub fn ejected_count<A: Clone, P: Picker<A>>(pool: &Pool<A, P>) -> usize {
    pool.stats()
        .iter()
        .filter(|s| s.returns_in.is_some())
        .count()
}

/// Reports `times` failures for `id`.
pub fn fail<A: Clone, P: Picker<A>>(pool: &Pool<A, P>, id: BackendId, times: usize) {
    outcomes(pool, id, 0, times);
}

/// Reports `successes` successes, then `failures` failures, for `id`.
pub fn outcomes<A: Clone, P: Picker<A>>(
    pool: &Pool<A, P>,
    id: BackendId,
    successes: usize,
    failures: usize,
) {
    for _ in 0..successes {
        pool.report(id, Outcome::success()).unwrap();
    }
    for _ in 0..failures {
        pool.report(id, Outcome::failure()).unwrap();
    }
}

/// Statistical detection only (no consecutive-failure rule; success rate at its
/// defaults) under a 50 % cap, so the cap is not what keeps a second outlier in.
pub fn statistical_only() -> OutlierDetection {
    OutlierDetection::new()
        .consecutive_failures(0)
        .max_ejection_percent(50)
}

/// Failure percentage alone, with `rule`, under a 50 % cap.
pub fn failure_percentage_only(rule: FailurePercentage) -> OutlierDetection {
    statistical_only()
        .success_rate(None)
        .failure_percentage(Some(rule))
}

/// Success rate alone, with `rule`, under a 50 % cap.
pub fn success_rate_only(rule: SuccessRate) -> OutlierDetection {
    statistical_only().success_rate(Some(rule))
}

/// A slow-start ramp over `window` from a 1 % weight, so the weight changes at every
/// tick of the ramp.
pub fn ramp_from_one_percent(window: Duration) -> SlowStart {
    SlowStart::new(window).min_weight_percent(1)
}

/// Lets the ramps of joining end (`window` on `clock`), then takes `id` down and back
/// up: its ramp starts again now, the others at full weight.
pub fn restart_ramp<A: Clone, P: Picker<A>>(
    pool: &Pool<A, P>,
    clock: &ManualClock,
    window: Duration,
    id: BackendId,
) {
    clock.advance(window);
    pool.tick();
    pool.mark_down(id).unwrap();
    pool.mark_up(id).unwrap();
}
