//! Scenario A: N of M backends start failing at once.

use super::*;

struct ScenarioA {
    m: usize,
    n: usize,
}

impl Go for ScenarioA {
    fn go<P: Picker<Ep> + 'static>(self, picker: P) -> Run {
        let (pool, lb, broken) = setup(
            picker,
            self.m,
            LATENCY,
            Breaks::Refusing,
            Some(OutlierDetection::new()),
        );
        Box::pin(run(
            pool,
            lb,
            broken,
            self.n,
            CALLERS,
            BREAK_AT,
            MEASURE_FROM,
            END,
            None,
        ))
    }
}

/// N of M refuse at once, for M = 3, 5, 10 and every N < M, every strategy: every broken
/// backend leaves rotation, and from 0.5 s after the failure at most 1% of requests
/// fail — with no retries, under `OutlierDetection::new()` and the default panic
/// threshold (which no longer re-admits a backend whose failure is confirmed).
#[tokio::test(start_paused = true)]
async fn scenario_a_any_number_of_refusing_backends_leave_rotation() {
    let mut worst = Vec::new();
    for m in [3usize, 5, 10] {
        println!(
            "\nscenario A, M = {m}: failed share from 0.5 s after the failure (time to the last failure)"
        );
        for n in 1..m {
            let runs = every_strategy(|s| s.with(n as u64, ScenarioA { m, n }));
            let mut line = format!("  N = {n}:");
            for (name, fut) in runs {
                let seen = fut.await;
                line.push_str(&format!(
                    " {name} {:.3}% ({}),",
                    seen.share() * 100.0,
                    ms(seen.last_failure)
                ));
                assert!(seen.total > 10_000, "{name}, M {m} N {n}: {seen:?}");
                assert!(
                    seen.share() <= MAX_FAILED_SHARE,
                    "{name}, M = {m}, N = {n}: {:.2}% failed from 0.5 s after the failure: {seen:?}",
                    seen.share() * 100.0
                );
                worst.push((seen.share(), name, m, n));
            }
            println!("{line}");
        }
    }
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("worst: {:?}", &worst[..3]);
}

/// The README's table: the same scenario on the real clock (all strategies at once, on
/// two threads) for M = 3, N = 2 and M = 10, N = 9 — failed share and the time to the
/// last failure and to the ejection of every broken backend, with the bound above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_a_table_on_the_real_clock() {
    let mut rows: Vec<(Strategy, Vec<Seen>)> =
        STRATEGIES.iter().map(|&s| (s, Vec::new())).collect();
    for (m, n) in [(3, 2), (10, 9)] {
        let handles: Vec<_> = STRATEGIES
            .iter()
            .map(|&s| tokio::spawn(s.with(7, ScenarioA { m, n })))
            .collect();
        for (row, handle) in rows.iter_mut().zip(handles) {
            row.1.push(handle.await.unwrap());
        }
    }
    println!(
        "\n| strategy | M = 3, N = 2: failed from +0.5 s | last failure | all ejected | M = 10, N = 9: failed from +0.5 s | last failure | all ejected |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (s, seen) in &rows {
        let cells: Vec<String> = seen
            .iter()
            .map(|x| {
                format!(
                    "{:.3}% of {} | {} | {}",
                    x.share() * 100.0,
                    x.total,
                    ms(x.last_failure),
                    ms(x.all_ejected)
                )
            })
            .collect();
        println!("| {} | {} |", s.name(), cells.join(" | "));
    }
    for (s, seen) in rows {
        for (x, m) in seen.iter().zip([3, 10]) {
            assert!(x.total > 1_000, "{} M = {m}: {x:?}", s.name());
            assert!(x.share() <= MAX_FAILED_SHARE, "{} M = {m}: {x:?}", s.name());
            // Round robin, random and hashing have no other way off a dead backend than
            // ejection: every broken one is ejected, beyond the 10% cap.
            if !s.load_aware() {
                assert!(x.all_ejected.is_some(), "{} M = {m}: {x:?}", s.name());
            }
        }
    }
}
