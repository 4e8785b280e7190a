//! The non-hashing pickers' documented claims that `tests/proptests.rs` does not cover,
//! each checked against an oracle written here from the module docs, not from the code:
//! round robin across membership changes, least loaded by in-flight ÷ weight with
//! uniform ties, P2C's distinct weighted candidates, Peak EWMA's rule for unmeasured
//! backends and its reaction to a slowing one, the uniformity of `Random`, and the
//! bound on smooth-WRR shares once weights are scaled down to fit the schedule.
//!
//! Every random source is seeded; statistical checks state their tolerance in σ or as a
//! chi-square critical value at p = 0.001, and each shows that the plausible wrong
//! implementation (first-of-ties, with-replacement or unweighted candidates, a biased
//! draw) falls outside it.

mod load_aware;
mod peak_ewma;
mod random_wrr_seeds;
mod stale_tables;

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use support::*;
use tower_lb::pick::weighted_round_robin::MAX_SCHEDULE;
use tower_lb::{
    InFlight, LeastLoaded, PeakEwma, PickContext, Picker, Pool, PowerOfTwoChoices, Prepared,
    Random, RoundRobin, Snapshot, Weight, WeightedRoundRobin,
};

/// Binomial tolerance of the share checks, in standard deviations.
const SIGMAS: f64 = 5.0;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x7069_636b),
        ..ProptestConfig::default()
    }
}

/// Holds `loads[i]` requests in flight on backend i of `snapshot`.
fn hold<A>(snapshot: &Snapshot<A>, loads: &[usize]) -> Vec<InFlight> {
    let mut held = Vec::new();
    for (b, &l) in snapshot.backends().iter().zip(loads) {
        held.extend((0..l).map(|_| b.state().start()));
    }
    held
}

/// `|observed − n·p| ≤ SIGMAS · √(n·p·(1−p))`.
fn within_binomial(observed: u64, n: usize, p: f64) -> bool {
    let n = n as f64;
    (observed as f64 - n * p).abs() <= SIGMAS * (n * p * (1.0 - p)).sqrt()
}
