//! Criterion benches, one entry with a module per area. Each group carries its baseline
//! (the floor or the peer) in the same run, so ratios are what a reader compares.

use criterion::{criterion_group, criterion_main};

mod balance;
mod hashing;
mod pickers;
mod scale;

criterion_group!(
    benches,
    pickers::register,
    hashing::register,
    balance::register,
    scale::register
);
criterion_main!(benches);
