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
    BackendId, LeastLoaded, PeakEwma, PickContext, PickError, Picker, Pool, PowerOfTwoChoices,
    Random, RoundRobin, Weight, WeightedRandom, WeightedRoundRobin,
};

#[path = "../support/mod.rs"]
mod support;

use support::health::*;

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
