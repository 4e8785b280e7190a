//! Failures are load: a fast-failing backend loses traffic before any ejection.

use super::*;

struct NoEjection;

impl Go for NoEjection {
    fn go<P: Picker<Ep> + 'static>(self, picker: P) -> Run {
        // No outlier detection at all: the pickers' cost is the only defence.
        let (pool, lb, broken) = setup(picker, 3, LATENCY, Breaks::Refusing, None);
        Box::pin(run(
            pool,
            lb,
            broken,
            1,
            CALLERS,
            BREAK_AT,
            MEASURE_FROM,
            END,
            None,
        ))
    }
}

/// One of 3 backends fails in microseconds and is never ejected (no outlier detection):
/// the load-aware strategies charge its failures as load and send it at most 1% of the
/// requests from 0.5 s on — where counting in-flight requests alone sent it nearly all
/// (it never has anything in flight). Round robin, for contrast, keeps sending it a
/// third. Real clock: the failure score fades in real time, and the dead backend is
/// retried as it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_failing_backend_loses_traffic_before_any_ejection() {
    let strategies = [
        Strategy::LeastLoaded,
        Strategy::PowerOfTwoChoices,
        Strategy::PeakEwma,
        Strategy::BoundedLoad,
        Strategy::RoundRobin,
    ];
    let handles: Vec<_> = strategies
        .iter()
        .map(|&s| (s, tokio::spawn(s.with(5, NoEjection))))
        .collect();
    println!("\nno ejection, 1 of 3 fails fast from 0.3 s:");
    let mut results = Vec::new();
    for (s, handle) in handles {
        let seen = handle.await.unwrap();
        println!(
            "  {}: {:.3}% of {} failed from 0.8 s",
            s.name(),
            seen.share() * 100.0,
            seen.total
        );
        results.push((s, seen));
    }
    for (s, seen) in results {
        assert!(seen.total > 1_000, "{}: {seen:?}", s.name());
        if s.load_aware() {
            assert!(seen.share() <= MAX_FAILED_SHARE, "{}: {seen:?}", s.name());
        } else {
            // The contrast that shows the test can fail: a third, within noise.
            assert!(seen.share() > 0.25, "{}: {seen:?}", s.name());
        }
    }
}
