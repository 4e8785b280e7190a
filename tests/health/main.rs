//! Health: outlier ejection, the ejection cap, the panic threshold, active probes, slow
//! start, drain and admin, observability — the test list of issue #4.
//!
//! Time is a manual clock handed to the pool, or tokio's paused clock; nothing sleeps for
//! real. Randomness is seeded. Network tests use real listeners on 127.0.0.1:0.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tower_lb::clock::ManualClock;
use tower_lb::health::{
    Ejection, FailurePercentage, Outcome, OutlierDetection, PanicMode, PanicThreshold, Reason,
    SlowStart, SuccessRate, Verdict,
};
use tower_lb::{
    BackendId, BackendStats, LeastLoaded, PeakEwma, PickContext, PickError, Picker, Pool,
    PowerOfTwoChoices, Random, RoundRobin, Weight, WeightedRandom, WeightedRoundRobin,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn stat<A: Clone, P: Picker<A>>(pool: &Pool<A, P>, id: BackendId) -> BackendStats<A> {
    pool.stats()
        .into_iter()
        .find(|s| s.id == id)
        .expect("backend is in the pool")
}

fn is_healthy<A: Clone, P: Picker<A>>(pool: &Pool<A, P>, id: BackendId) -> bool {
    stat(pool, id).health.is_healthy()
}

fn ejected_count<A: Clone, P: Picker<A>>(pool: &Pool<A, P>) -> usize {
    pool.stats()
        .iter()
        .filter(|s| s.returns_in.is_some())
        .count()
}

/// Outlier detection with consecutive failures only and no jitter: exact times.
/// A round-robin pool of `n` backends `h0`, `h1`, … on `clock`, with `detection`.
fn detected(
    clock: &ManualClock,
    detection: OutlierDetection,
    n: usize,
) -> (Pool<String, RoundRobin>, Vec<BackendId>) {
    let pool = Pool::<String, _>::builder(RoundRobin::new())
        .clock(clock.reader())
        .outlier_detection(detection)
        .build()
        .unwrap();
    let ids = pool
        .extend((0..n).map(|i| (format!("h{i}"), Weight::ONE)))
        .unwrap();
    (pool, ids)
}

fn consecutive_only() -> OutlierDetection {
    OutlierDetection::new()
        .ejection_jitter(Duration::ZERO)
        .success_rate(None)
}

fn fail<A, P: Picker<A>>(pool: &Pool<A, P>, id: BackendId, times: usize)
where
    A: Clone + PartialEq,
{
    for _ in 0..times {
        pool.report(id, Outcome::failure()).unwrap();
    }
}

const MS: Duration = Duration::from_millis(1);

/// The property tests' settings: `cases`, a fixed seed (every run explores the same
/// cases), failures persisted beside the test's file.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x4EA1_7400),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

mod admin;
mod cap;
mod eligibility;
mod observability;
mod outlier;
mod panic;
mod slow_start;
#[cfg(feature = "tokio")]
mod task;
