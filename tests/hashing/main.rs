//! The consistent-hashing family: determinism, disruption, balance, health and bounded
//! loads, as properties (issue #3). Every tolerance is a named constant; case counts are
//! small and the runner seeded, so the suite is fast and reproducible.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use tower_lb::affinity::hash_key;
use tower_lb::pick::hash::maglev::DEFAULT_TABLE_SIZE;
use tower_lb::{
    BoundedLoad, InFlight, Jump, Maglev, PickContext, Picker, Pool, Rendezvous, Ring, RoundRobin,
    Snapshot, Weight,
};
use tower_lb::{HashPicker, Lookup};

/// The runner's seed: every run explores the same cases.
const SEED: u64 = 0x7EB1_0003;
/// Cases for the light properties.
const CASES: u32 = 32;
/// Cases for the heavy ones (a 65 537-slot Maglev table, up to 1000 backends, in a debug build).
const HEAVY_CASES: u32 = 3;
/// Cases for the Maglev table sized for 10 000 backends (a 1 048 573-slot table).
const MAGLEV_SIZED_CASES: u32 = 2;
/// Maglev sized for the set: the busiest backend's share over the ideal 1/N (issue #17).
const MAGLEV_MAX_BUSIEST: f64 = 1.02;
/// Keys sampled per case.
const KEYS: usize = 20_000;

/// Maglev: the share of the table that may change beyond the removed backend's entries,
/// at N = 100 (the paper's reference point; measured 0.58 %) and N = 1000 (0.59 %).
const MAGLEV_MAX_COLLATERAL: f64 = 0.01;
/// The same over any N ≤ 1000. Issue #3 asks for 1.0 %, but the paper's algorithm at
/// M = 65 537 peaks between N ≈ 330 and 500: over 1048 removals there, median 0.92 %,
/// p99 1.01 %, max 1.04 % (1.12 % seen once at N = 494). So 1.25 % here.
const MAGLEV_MAX_COLLATERAL_ANY_N: f64 = 0.0125;
/// Ring: the shares' standard deviation, as a multiple of 1/√V (V points per backend).
const RING_STD_PER_INV_SQRT_V: f64 = 1.3;
/// Ring: the largest share over the mean is at most 1 + this/√V.
const RING_MAX_EXCESS_PER_INV_SQRT_V: f64 = 4.0;
/// Statistical tolerance, in standard deviations, for sampled shares and moved fractions.
const SIGMAS: f64 = 4.0;
/// Bounded loads: the balance factor whose probe count is checked.
const BALANCE_FACTOR: f64 = 1.25;
/// Bounded loads: the most backends asked per request, on average, at `BALANCE_FACTOR`.
const MAX_MEAN_PROBES: f64 = 1.05;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(SEED),
        // Beside each file of this folder (proptest's default would look for them in
        // tests/proptest-regressions/, named after the file alone).
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- helpers

fn name(id: u32) -> String {
    format!("backend-{id:08x}.internal:8080")
}

/// A weight that depends on the backend alone, so any order of the set agrees.
fn weight_of(id: u32, weighted: bool) -> Weight {
    let w = if weighted { 1 + u64::from(id % 4) } else { 1 };
    Weight::new(w).unwrap()
}

fn snapshot(ids: &[u32], weighted: bool) -> Snapshot<String> {
    Snapshot::build(ids.iter().map(|&id| (name(id), weight_of(id, weighted)))).unwrap()
}

fn keys(seed: u64, n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| hash_key(&[seed.to_le_bytes(), i.to_le_bytes()].concat()))
        .collect()
}

fn ctx(key: u64) -> PickContext {
    PickContext::new().with_hash(key)
}

/// Where each key goes, by backend address (indices differ between snapshots).
fn placement<P: Picker<String>>(
    picker: &P,
    table: &P::Table,
    snapshot: &Snapshot<String>,
    keys: &[u64],
) -> Vec<Option<String>> {
    keys.iter()
        .map(|&k| {
            picker
                .pick(table, snapshot, &ctx(k))
                .map(|i| snapshot.backends()[i].addr().clone())
        })
        .collect()
}

fn placed<P: Picker<String>>(
    picker: &P,
    snapshot: &Snapshot<String>,
    keys: &[u64],
) -> Vec<Option<String>> {
    let table = picker.prepare(snapshot, None);
    placement(picker, &table, snapshot, keys)
}

/// A set of distinct backend ids, and the same ids in another order.
fn set_and_shuffle(
    sizes: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = (Vec<u32>, Vec<u32>)> {
    prop::collection::btree_set(any::<u32>(), sizes).prop_flat_map(|set| {
        let ids: Vec<u32> = set.into_iter().collect();
        (Just(ids.clone()), Just(ids).prop_shuffle())
    })
}

fn ids(sizes: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::btree_set(any::<u32>(), sizes).prop_map(|s| s.into_iter().collect())
}

#[path = "../support/mod.rs"]
mod support;

mod bounded_load;
mod changes;
mod health;
mod placement;
mod robustness;
