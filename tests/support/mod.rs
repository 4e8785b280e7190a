//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod health;
#[cfg(all(feature = "tower", feature = "http"))]
pub mod load;
pub mod servers;

use tower_lb::{InFlight, PickContext, Picker, Prepared, Snapshot, Weight};

/// A snapshot of `n` backends addressed `0..n` with the given weights (all 1 if empty).
pub fn snapshot(weights: &[u32]) -> Snapshot<usize> {
    Snapshot::build(weights.iter().enumerate().map(|(i, &w)| {
        (
            i,
            Weight::new(u64::from(w)).expect("test weights are valid"),
        )
    }))
    .expect("addresses are distinct")
}

/// A snapshot of `n` backends of weight 1.
pub fn uniform(n: usize) -> Snapshot<usize> {
    snapshot(&vec![1; n])
}

/// `count` picks with `picker` over a prepared snapshot, as backend indices.
pub fn picks<P: Picker<usize>>(
    picker: &P,
    prepared: &Prepared<usize, P::Table>,
    count: usize,
) -> Vec<usize> {
    (0..count)
        .map(|_| {
            prepared
                .pick(picker, &PickContext::new())
                .expect("a backend")
        })
        .collect()
}

/// How many times each of `n` indices occurs in `picks`.
pub fn histogram(picks: &[usize], n: usize) -> Vec<u64> {
    let mut counts = vec![0u64; n];
    for &p in picks {
        counts[p] += 1;
    }
    counts
}

/// Balls into bins: `balls` picks, each held in flight for ever (a guard kept), so
/// load-aware pickers see every earlier ball. Returns the final in-flight counts.
pub fn balls_into_bins<P: Picker<usize>>(picker: &P, weights: &[u32], balls: usize) -> Vec<usize> {
    let prepared = Prepared::new(picker, snapshot(weights));
    let mut held: Vec<InFlight> = Vec::with_capacity(balls);
    for _ in 0..balls {
        let i = prepared
            .pick(picker, &PickContext::new())
            .expect("a backend");
        held.push(prepared.snapshot().backends()[i].state().start());
    }
    prepared
        .snapshot()
        .backends()
        .iter()
        .map(|b| b.state().in_flight())
        .collect()
}

/// The chi-square critical value for `df` degrees of freedom at p = 0.001, by the
/// Wilson–Hilferty approximation (within 1% of the table for df >= 1).
pub fn chi_square_critical_p001(df: usize) -> f64 {
    const Z_0_999: f64 = 3.090_232;
    let k = df as f64;
    let a = 2.0 / (9.0 * k);
    k * (1.0 - a + Z_0_999 * a.sqrt()).powi(3)
}

/// Pearson's chi-square statistic of observed counts against expected shares.
pub fn chi_square(observed: &[u64], shares: &[f64]) -> f64 {
    let total: u64 = observed.iter().sum();
    observed
        .iter()
        .zip(shares)
        .map(|(&o, &p)| {
            let e = p * total as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}
