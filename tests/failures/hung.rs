//! Scenario B: a backend hangs behind the caller's time-out.

use super::*;

struct ScenarioB;

impl Go for ScenarioB {
    fn go<P: Picker<Ep> + 'static>(self, picker: P) -> Run {
        let (pool, lb, broken) = setup(
            picker,
            3,
            Duration::from_millis(2),
            Breaks::Hanging,
            Some(OutlierDetection::new()),
        );
        Box::pin(run(
            pool,
            lb,
            broken,
            1,
            CALLERS,
            BREAK_AT,
            Duration::from_millis(1500),
            Duration::from_millis(2500),
            Some(Duration::from_millis(300)),
        ))
    }
}

/// 3 backends, one accepts and never answers from t = 0.3 s, the caller wraps each call
/// in a 300 ms time-out (outside the balancer, where users put tower's `Timeout`): the
/// cancelled requests count as failures (the default cancellation threshold, 100 ms), the
/// hung backend is ejected, and no request started after t = 1.5 s times out — every
/// strategy. Real clock: a cancellation is judged by how long the request really ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_b_a_hung_backend_behind_a_callers_timeout_is_ejected() {
    let runs = every_strategy(|s| s.with(11, ScenarioB));
    let handles: Vec<_> = runs
        .into_iter()
        .map(|(name, fut)| (name, tokio::spawn(fut)))
        .collect();
    println!(
        "\n| strategy (one of 3 hangs at 0.3 s, caller time-out 300 ms) | requests from 1.5 s | timed out | last time-out after the hang | hung backend ejected after |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, handle) in handles {
        let seen = handle.await.unwrap();
        println!(
            "| {name} | {} | {} | {} | {} |",
            seen.total,
            seen.timed_out,
            ms(seen.last_failure),
            ms(seen.all_ejected)
        );
        assert!(seen.total > 100, "{name}: {seen:?}");
        assert_eq!(seen.failed, 0, "{name}: failures after t = 1.5 s: {seen:?}");
        assert!(seen.all_ejected.is_some(), "{name}: not ejected: {seen:?}");
    }
}
