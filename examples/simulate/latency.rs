//! `latency`: tower's `tower-balance` example workload, every strategy.
//!
//! Ten endpoints whose latency is uniform in [0, max] with max = 1, 5, 10, 10, 10, 100,
//! 100, 100, 500 and 1000 ms, capacity unlimited (latency does not grow with load);
//! one client keeps 500 requests in flight until 100 000 have been sent. The p99 is set
//! by how many requests reach the slow endpoints.

use tower_lb::{AnyPicker, Pool};

use crate::engine::{BackendModel, Latency, Load, MS, Record, Sim, quantile_ms};

pub const MAX_MS: [f64; 10] = [
    1.0, 5.0, 10.0, 10.0, 10.0, 100.0, 100.0, 100.0, 500.0, 1000.0,
];

/// The strategies compared, by the name the report prints.
pub fn strategies(seed: u64) -> Vec<(&'static str, AnyPicker)> {
    ["round-robin", "random", "p2c", "least-loaded", "peak-ewma"]
        .into_iter()
        .map(|name| {
            (
                name,
                AnyPicker::with_seed(name, seed).expect("a known name"),
            )
        })
        .collect()
}

/// One run of the workload with `picker` (seeded per run).
pub fn run(picker: AnyPicker, requests: u64, in_flight: usize, seed: u64) -> Record {
    let models = MAX_MS
        .iter()
        .map(|&max_ms| {
            BackendModel::new(Latency::Uniform {
                min_ms: 0.0,
                max_ms,
            })
        })
        .collect();
    let load = Load::Closed {
        in_flight,
        total: requests,
    };
    Sim::new(models, 1, load, seed, 100 * MS, |_, clock| {
        Pool::builder(picker.clone())
            .clock(clock.reader())
            .build()
            .expect("valid settings")
    })
    .run()
}

/// The report line of one strategy: percentiles in milliseconds.
pub fn summary(name: &str, record: &mut Record) -> String {
    record.latencies.sort_unstable();
    let l = &record.latencies;
    format!(
        "{name:<14} requests per backend {:?}, {:.2} s\n{name:<14} p50 {:>7.1} ms  p90 {:>7.1} ms  p99 {:>7.1} ms  p99.9 {:>7.1} ms  max {:>7.1} ms",
        record.per_backend,
        record.end as f64 / 1e9,
        quantile_ms(l, 0.5),
        quantile_ms(l, 0.9),
        quantile_ms(l, 0.99),
        quantile_ms(l, 0.999),
        quantile_ms(l, 1.0),
    )
}
