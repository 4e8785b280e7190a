//! tower-lb side by side with pingora-load-balancing 0.9 and tower 0.5, in the same
//! criterion groups: every group holds our rows and theirs (and a floor), so the ratio
//! `ours ÷ theirs` compares measurements taken minutes apart on the same machine, not
//! numbers from different days. `report.py` turns the results into the README table.

use criterion::{criterion_group, criterion_main};

mod picks;
mod requests;
mod threads;

criterion_group!(
    benches,
    picks::register,
    requests::register,
    requests::breakdown,
    threads::register
);
criterion_main!(benches);
