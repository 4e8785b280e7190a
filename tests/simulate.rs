//! The simulator's cores (`examples/simulate/`), compiled here as in the example: a small
//! subsetting scenario's last line, and the tower-balance latency workload in virtual
//! time, where `PeakEwma`'s p99 must stay within 1.1× of an exact least-loaded scan's.

#![allow(dead_code)] // the example's modules carry what only its command line uses

#[path = "../examples/simulate/engine.rs"]
mod engine;
#[path = "../examples/simulate/latency.rs"]
mod latency;
#[path = "../examples/simulate/subsetting.rs"]
mod subsetting;

use tower_lb::AnyPicker;

/// The target: PeakEwma's p99 at most this times least loaded's.
const P99_VS_LEAST_LOADED: f64 = 1.1;
/// And at most this times P2C's (in-flight only; tower's P2C Peak EWMA is about the same
/// p99 in the real-time harness, `examples/tower_balance.rs`).
const P99_VS_P2C: f64 = 0.35;

/// The format the program's last line must have, checked character class by class.
fn is_subsetting_line(line: &str, algorithm: &str) -> Option<(f64, f64)> {
    let rest = line.strip_prefix(&format!("subsetting {algorithm}: connections max/mean "))?;
    let (c, rest) = rest.split_once(", load max/mean ")?;
    let two_decimals = |s: &str| s.len() >= 4 && s.as_bytes()[s.len() - 3] == b'.';
    (two_decimals(c) && two_decimals(rest)).then_some(())?;
    Some((c.parse().ok()?, rest.parse().ok()?))
}

#[test]
fn subsetting_scenario_prints_its_summary_line() {
    for (algorithm, balanced) in [
        ("deterministic", true),
        ("aperture", true),
        ("random", false),
    ] {
        let outcome = subsetting::run(60, 60, 6, algorithm, 120, 1).unwrap();
        let line = outcome.line(algorithm);
        let (c, l) = is_subsetting_line(&line, algorithm).unwrap_or_else(|| panic!("{line:?}"));
        if balanced {
            assert!(c <= 1.05 && l <= 1.10, "{line}");
        } else {
            assert!(c > 1.2, "random subsets should be uneven: {line}");
        }
    }
    assert!(subsetting::run(10, 10, 0, "deterministic", 1, 1).is_err());
    assert!(subsetting::run(10, 10, 2, "fastest", 1, 1).is_err());
}

#[test]
fn peak_ewma_wins_at_the_tail_on_the_tower_balance_workload() {
    let p99 = |name: &str| {
        let picker = AnyPicker::with_seed(name, 1).unwrap();
        let mut record = latency::run(picker, 100_000, 500, 1);
        record.latencies.sort_unstable();
        engine::quantile_ms(&record.latencies, 0.99)
    };
    let (ewma, least, p2c) = (p99("peak-ewma"), p99("least-loaded"), p99("p2c"));
    assert!(
        ewma <= P99_VS_LEAST_LOADED * least,
        "peak-ewma {ewma} ms vs least-loaded {least} ms"
    );
    assert!(
        ewma <= P99_VS_P2C * p2c,
        "peak-ewma {ewma} ms vs p2c {p2c} ms"
    );
}
