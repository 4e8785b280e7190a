//! Criterion benches, one entry with a module per area. Each group carries its baseline
//! (the floor or the peer) in the same run, so ratios are what a reader compares.

use criterion::{criterion_group, criterion_main};

mod balance;
mod hashing;
#[cfg(feature = "metrics")]
mod metrics;
mod pickers;
mod scale;

/// The `metrics` feature's group, when the feature is on.
fn metrics_register(_c: &mut criterion::Criterion) {
    #[cfg(feature = "metrics")]
    metrics::register(_c);
}

criterion_group!(
    benches,
    pickers::register,
    hashing::register,
    balance::register,
    scale::register,
    metrics_register
);
criterion_main!(benches);
