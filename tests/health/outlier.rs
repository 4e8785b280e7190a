//! Passive outlier detection: consecutive failures (ejection, return after base × k,
//! growth to the cap, k coming down), success rate and failure percentage.

use super::*;

// ---------------------------------------------------------------------------------------
// Consecutive failures: ejection, return after base × k, growth to the cap, k coming down
// ---------------------------------------------------------------------------------------

#[test]
fn five_consecutive_failures_eject_for_base_times_k_up_to_the_cap() {
    let clock = ManualClock::new();
    let (pool, ids) = holding(
        round_robin_on(&clock).outlier_detection(consecutive_only()),
        letters(3),
    );
    let bad = ids[1];
    let ctx = PickContext::new();

    // k = 1..=12: 30 s, 60 s, ... 300 s, then held at the 300 s cap.
    let expected: Vec<u64> = (1..=12u64).map(|k| (30 * k).min(300)).collect();
    for (round, &secs) in expected.iter().enumerate() {
        fail(&pool, bad, 4);
        assert!(
            is_healthy(&pool, bad),
            "round {round}: 4 failures must not eject"
        );
        fail(&pool, bad, 1);
        let s = stat(&pool, bad);
        assert_eq!(
            s.health,
            Verdict::Unhealthy(Reason::Ejected(Ejection::ConsecutiveFailures))
        );
        assert_eq!(
            s.returns_in,
            Some(Duration::from_secs(secs)),
            "round {round}"
        );
        assert_eq!(s.ejections, round as u64 + 1);

        for _ in 0..60 {
            assert_ne!(
                pool.pick(&ctx).unwrap().id(),
                bad,
                "an ejected backend was picked"
            );
        }

        clock.advance(Duration::from_secs(secs) - MS);
        pool.tick();
        assert!(!is_healthy(&pool, bad), "round {round}: returned early");
        clock.advance(MS);
        pool.tick();
        assert!(
            is_healthy(&pool, bad),
            "round {round}: not back after {secs} s"
        );
    }
}

#[test]
fn the_multiplier_comes_down_after_clean_intervals() {
    let clock = ManualClock::new();
    let (pool, ids) = holding(
        round_robin_on(&clock).outlier_detection(consecutive_only()),
        letters(3),
    );
    let bad = ids[0];
    let interval = Duration::from_secs(10);

    // Three ejections back to back: k = 3, out for 90 s.
    for secs in [30, 60, 90] {
        fail(&pool, bad, 5);
        assert_eq!(stat(&pool, bad).returns_in, Some(Duration::from_secs(secs)));
        clock.advance(Duration::from_secs(secs));
        pool.tick();
        assert!(is_healthy(&pool, bad));
    }

    // Two clean intervals: k = 1. The next ejection is k = 2: 60 s, not 120 s.
    for _ in 0..2 {
        clock.advance(interval);
        pool.report(bad, Outcome::success()).unwrap();
        pool.tick();
    }
    fail(&pool, bad, 5);
    assert_eq!(stat(&pool, bad).returns_in, Some(Duration::from_secs(60)));

    // Many clean intervals bring k to 0: the next ejection is the base again.
    clock.advance(Duration::from_secs(60));
    pool.tick();
    for _ in 0..5 {
        clock.advance(interval);
        pool.tick();
    }
    fail(&pool, bad, 5);
    assert_eq!(stat(&pool, bad).returns_in, Some(Duration::from_secs(30)));
}

#[test]
fn a_success_breaks_the_streak() {
    let (pool, ids) = holding(
        Pool::builder(RoundRobin::new()).outlier_detection(consecutive_only()),
        letters(2),
    );
    for _ in 0..10 {
        fail(&pool, ids[0], 4);
        pool.report(ids[0], Outcome::success()).unwrap();
    }
    assert!(is_healthy(&pool, ids[0]));
    assert_eq!(stat(&pool, ids[0]).failures, 40);
}

#[test]
fn guard_failures_eject_at_the_next_tick() {
    let (pool, ids) = holding(
        Pool::builder(RoundRobin::new()).outlier_detection(consecutive_only()),
        letters(2),
    );
    let ctx = PickContext::new();
    let mut failed = 0;
    while failed < 5 {
        let picked = pool.pick(&ctx).unwrap();
        let guard = picked.start();
        if picked.id() == ids[0] {
            guard.failure();
            failed += 1;
        } else {
            guard.success();
        }
    }
    // The guard has no pool to publish through: it signals, and the tick ejects.
    assert!(is_healthy(&pool, ids[0]));
    pool.tick();
    assert!(!is_healthy(&pool, ids[0]));
    assert_eq!(stat(&pool, ids[0]).in_flight, 0);
}

/// A backend killed with requests in flight: five of them fail — the fifth crosses the
/// threshold and signals — then a response it wrote before it died is read, and
/// succeeds, before the evaluation runs. The crossing decides (Envoy's detector ejects
/// on it too): the late success resets the streak but does not undo the ejection.
/// Before, the evaluation read the reset streak and ejected nothing; the picks' failure
/// score then kept traffic (and so the next five failures) away, and the backend stayed
/// in until the score faded or the probes found it (`tests/reliability`'s kill test
/// failed 2 times in 30 on that).
#[test]
fn a_late_success_after_the_threshold_does_not_undo_the_ejection() {
    let (pool, ids) = holding(
        Pool::builder(RoundRobin::new()).outlier_detection(consecutive_only()),
        letters(2),
    );
    let mut on_bad = started_on(&pool, ids[0], 6);
    let late = on_bad.pop().unwrap();
    for guard in on_bad {
        guard.failure();
    }
    late.success();
    assert_eq!(stat(&pool, ids[0]).failures, 5);
    pool.tick();
    assert_eq!(
        stat(&pool, ids[0]).health,
        Verdict::Unhealthy(Reason::Ejected(Ejection::ConsecutiveFailures))
    );
    // A success before the threshold still breaks the streak: four, a success, four.
    let (pool, ids) = holding(
        Pool::builder(RoundRobin::new()).outlier_detection(consecutive_only()),
        letters(2),
    );
    for (i, guard) in started_on(&pool, ids[0], 9).into_iter().enumerate() {
        if i == 4 {
            guard.success();
        } else {
            guard.failure();
        }
    }
    pool.tick();
    assert!(is_healthy(&pool, ids[0]));
}

/// Requests in flight when a backend was ejected fail during the ejection, five in a
/// row, just as it ends: the evaluation that returns it must not eject it again on
/// their account (the return resets the run and the latched crossing alike).
#[test]
fn failures_from_before_an_ejection_do_not_eject_again_at_its_return() {
    let clock = ManualClock::new();
    let (pool, ids) = holding(
        round_robin_on(&clock).outlier_detection(consecutive_only()),
        letters(2),
    );
    let stragglers = started_on(&pool, ids[0], 5);
    fail(&pool, ids[0], 5);
    assert!(!is_healthy(&pool, ids[0]));
    clock.advance(Duration::from_secs(30));
    for guard in stragglers {
        guard.failure();
    }
    assert_eq!(stat(&pool, ids[0]).failures, 10);
    // One evaluation: the return, then the consecutive-failure rule.
    pool.tick();
    assert!(is_healthy(&pool, ids[0]), "{:?}", stat(&pool, ids[0]));
    assert_eq!(stat(&pool, ids[0]).ejections, 1);
}

/// `n` requests started on `id` and still in flight (the others picked meanwhile succeed).
fn started_on<P: Picker<&'static str>>(
    pool: &Pool<&'static str, P>,
    id: BackendId,
    n: usize,
) -> Vec<tower_lb::InFlight> {
    let ctx = PickContext::new();
    let mut on = Vec::new();
    while on.len() < n {
        let picked = pool.pick(&ctx).unwrap();
        let guard = picked.start();
        if picked.id() == id {
            on.push(guard);
        } else {
            guard.success();
        }
    }
    on
}

#[test]
fn jitter_spreads_returns_of_backends_ejected_together() {
    let clock = ManualClock::new();
    let base = Duration::from_secs(30);
    let jitter = Duration::from_secs(3);
    let (pool, ids) = holding(
        round_robin_on(&clock).health_seed(11).outlier_detection(
            OutlierDetection::new()
                .ejection_jitter(jitter)
                .max_ejection_percent(100),
        ),
        (0..8).map(|i| format!("10.0.0.{i}:80")),
    );
    for &id in &ids[..6] {
        fail(&pool, id, 5);
    }
    let returns: Vec<Duration> = ids[..6]
        .iter()
        .map(|&id| stat(&pool, id).returns_in.expect("ejected"))
        .collect();
    assert!(
        returns.iter().all(|r| (base..=base + jitter).contains(r)),
        "{returns:?}"
    );
    let mut distinct = returns.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 5, "returns bunch together: {returns:?}");
}

// ---------------------------------------------------------------------------------------
// Success rate
// ---------------------------------------------------------------------------------------

#[test]
fn success_rate_ejects_the_outlier_and_only_the_outlier() {
    use rand::{Rng, SeedableRng};
    let interval = Duration::from_secs(10);
    // One interval per seed: once the outlier is out, the remaining population is
    // homogeneous and its σ tiny, so by design of the rule (Envoy's, A50's) an ordinary
    // backend may then dip below mean − 1.9σ; what is checked is the interval that
    // contains the outlier.
    for seed in 0..24u64 {
        let clock = ManualClock::new();
        let (pool, ids) = holding(
            round_robin_on(&clock)
                .outlier_detection(statistical_only().ejection_jitter(Duration::ZERO)),
            (0..10).map(|i| format!("10.0.0.{i}:80")),
        );
        let outlier = ids[7];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        {
            for &id in &ids {
                let p_success = if id == outlier { 0.80 } else { 0.99 };
                for _ in 0..200 {
                    let outcome = if rng.random_bool(p_success) {
                        Outcome::success()
                    } else {
                        Outcome::failure()
                    };
                    pool.report(id, outcome).unwrap();
                }
            }
            clock.advance(interval);
            pool.tick();
            let ejected: Vec<BackendId> = pool
                .stats()
                .iter()
                .filter(|s| s.returns_in.is_some())
                .map(|s| s.id)
                .collect();
            assert_eq!(ejected, vec![outlier], "seed {seed}");
            assert_eq!(
                stat(&pool, outlier).health,
                Verdict::Unhealthy(Reason::Ejected(Ejection::SuccessRate))
            );
        }
    }
}

/// The success-rate rule judges only when enough backends have the volume. With one
/// outlier among n, its distance from the mean is √(n − 1) σ, so below five backends
/// the 1.9σ rule cannot eject it anyway: the minimum is checked with five backends (one
/// failing every request — ejected at the default minimum of 5) against a minimum of 6
/// (not judged), and the volume against a lowered `request_volume` (20 requests each:
/// judged at 20, not at the default 100).
#[test]
fn success_rate_waits_for_enough_backends_and_volume() {
    for (rule, want) in [
        (SuccessRate::new(), false),
        (SuccessRate::new().request_volume(20), true),
        (
            SuccessRate::new().request_volume(20).minimum_hosts(6),
            false,
        ),
        (SuccessRate::new().request_volume(20).minimum_hosts(5), true),
    ] {
        let clock = ManualClock::new();
        let (pool, ids) = detected(&clock, success_rate_only(rule.clone()), 5);
        outcomes(&pool, ids[0], 0, 20);
        for &id in &ids[1..] {
            outcomes(&pool, id, 20, 0);
        }
        clock.advance(Duration::from_secs(10));
        pool.tick();
        assert_eq!(!is_healthy(&pool, ids[0]), want, "{rule:?}");
        assert_eq!(ejected_count(&pool), usize::from(want), "{rule:?}");
    }
}

/// Success rates are rates: a backend failing half of 200 requests is the outlier among
/// five answering all of their 100 (a "rate" that grew with volume would make it the
/// best); and with `request_volume(0)` a backend that had no request is not judged (its
/// rate is undefined — judging it would poison the mean for everyone).
#[test]
fn success_rates_are_rates_and_an_idle_backend_is_not_judged() {
    for volume in [100u64, 0] {
        let clock = ManualClock::new();
        let rule = SuccessRate::new().request_volume(volume);
        let (pool, ids) = detected(&clock, success_rate_only(rule), 7);
        outcomes(&pool, ids[0], 100, 100);
        for &id in &ids[1..6] {
            outcomes(&pool, id, 100, 0);
        }
        // ids[6] gets nothing.
        clock.advance(Duration::from_secs(10));
        pool.tick();
        assert!(
            !is_healthy(&pool, ids[0]),
            "volume {volume}: the outlier stays in"
        );
        assert!(
            is_healthy(&pool, ids[6]),
            "volume {volume}: the idle backend was ejected"
        );
        assert_eq!(ejected_count(&pool), 1, "volume {volume}");
    }
}

#[test]
fn failure_percentage_ejects_above_the_threshold_when_enabled() {
    let clock = ManualClock::new();
    let (pool, ids) = detected(&clock, failure_percentage_only(FailurePercentage::new()), 6);
    for (n, &id) in ids.iter().enumerate() {
        // h0 fails 90%, h1 80%, the others 0%.
        let failures = [45, 40, 0, 0, 0, 0][n];
        for i in 0..50 {
            let outcome = if i < failures {
                Outcome::failure()
            } else {
                Outcome::success()
            };
            pool.report(id, outcome).unwrap();
        }
    }
    clock.advance(Duration::from_secs(10));
    pool.tick();
    assert_eq!(
        stat(&pool, ids[0]).health,
        Verdict::Unhealthy(Reason::Ejected(Ejection::FailurePercentage))
    );
    assert_eq!(ejected_count(&pool), 1);
}

// ---------------------------------------------------------------------------------------
// k after the cap, worst first, minimum hosts and volume
// ---------------------------------------------------------------------------------------

/// Ejects `id` `times` times back to back: five failures, then the time it is out.
fn eject_back_to_back<P: Picker<&'static str>>(
    pool: &Pool<&'static str, P>,
    clock: &ManualClock,
    id: BackendId,
    times: usize,
) {
    for _ in 0..times {
        fail(pool, id, 5);
        let out = stat(pool, id).returns_in.expect("ejected");
        clock.advance(out);
        pool.tick();
        assert!(is_healthy(pool, id));
    }
}

/// "k stops growing once the cap is reached, so coming back down does not take longer
/// than going up": 12 ejections at base 30 s, cap 300 s leave k at 10, not 12; each
/// clean interval (10 s) takes one off; the next ejection is k + 1. After j clean
/// intervals it lasts 30 s × (10 − j + 1) — computed here from the rule, not from
/// `ejection_time` — where a k that kept growing would still say 300 s for j < 3.
#[test]
fn the_ejection_time_comes_back_down_after_the_cap() {
    for clean in [1u64, 3, 6, 9, 12] {
        let clock = ManualClock::new();
        let (pool, ids) = holding(
            round_robin_on(&clock).outlier_detection(consecutive_only()),
            letters(3),
        );
        eject_back_to_back(&pool, &clock, ids[1], 12);
        for _ in 0..clean {
            clock.advance(Duration::from_secs(10));
            pool.tick();
        }
        fail(&pool, ids[1], 5);
        let k = (10 - clean.min(10)) + 1;
        assert_eq!(
            stat(&pool, ids[1]).returns_in,
            Some(Duration::from_secs(30 * k)),
            "{clean} clean intervals after 12 ejections"
        );
    }
}

/// Twenty backends at 100%, two outliers (rates 60% at index 3 and 50% at index 15, both
/// below mean − 1.9σ ≈ 70%), a cap of one: the worst is ejected, though it comes later
/// in the set. Then, with room for two, both.
#[test]
fn success_rate_ejects_the_worst_first_within_the_cap() {
    for (percent, want) in [(5u8, vec![15usize]), (10, vec![3, 15])] {
        let clock = ManualClock::new();
        let (pool, ids) = detected(
            &clock,
            OutlierDetection::new()
                .consecutive_failures(0)
                .ejection_jitter(Duration::ZERO)
                .max_ejection_percent(percent),
            20,
        );
        for (i, &id) in ids.iter().enumerate() {
            let failures = match i {
                3 => 40,
                15 => 50,
                _ => 0,
            };
            outcomes(&pool, id, 100 - failures, failures);
        }
        clock.advance(Duration::from_secs(10));
        pool.tick();
        let ejected: Vec<usize> = (0..20)
            .filter(|&i| stat(&pool, ids[i]).returns_in.is_some())
            .collect();
        assert_eq!(ejected, want, "cap {percent}%");
        for &i in &want {
            assert_eq!(
                stat(&pool, ids[i]).health,
                Verdict::Unhealthy(Reason::Ejected(Ejection::SuccessRate))
            );
        }
    }
}

/// The failure-percentage rule, worst first: failing 95% of 1 000 (index 4) goes before
/// failing 86% of 100 (index 1) when the cap leaves room for one — by percentage, not by
/// count nor by volume.
#[test]
fn failure_percentage_ejects_the_worst_first_within_the_cap() {
    let clock = ManualClock::new();
    let (pool, ids) = detected(
        &clock,
        OutlierDetection::new()
            .consecutive_failures(0)
            .success_rate(None)
            .failure_percentage(Some(FailurePercentage::new()))
            .ejection_jitter(Duration::ZERO),
        6,
    );
    for (i, &id) in ids.iter().enumerate() {
        let (failures, total) = [
            (0, 100),
            (86, 100),
            (0, 100),
            (0, 100),
            (950, 1000),
            (0, 100),
        ][i];
        outcomes(&pool, id, total - failures, failures);
    }
    clock.advance(Duration::from_secs(10));
    pool.tick();
    let ejected: Vec<usize> = (0..6)
        .filter(|&i| stat(&pool, ids[i]).returns_in.is_some())
        .collect();
    assert_eq!(ejected, [4]);
}

/// The failure-percentage rule judges only backends with at least 50 requests in the
/// interval, and only when at least 5 such exist: a backend failing every request is
/// ejected with exactly 5 judged (itself included) and exactly 50 requests, not with 4
/// judged, nor with 49 requests.
#[test]
fn failure_percentage_waits_for_enough_backends_and_volume() {
    // (requests of the bad backend, requests of each of the five others) → ejected?
    for (bad, others, want) in [
        (50usize, [50usize, 50, 50, 50, 49], true),
        (50, [50, 50, 50, 49, 49], false),
        (49, [50, 50, 50, 50, 50], false),
        (50, [90, 90, 90, 90, 90], true),
    ] {
        let clock = ManualClock::new();
        let (pool, ids) = detected(&clock, failure_percentage_only(FailurePercentage::new()), 6);
        outcomes(&pool, ids[0], 0, bad);
        for (&id, &n) in ids[1..].iter().zip(&others) {
            outcomes(&pool, id, n, 0);
        }
        clock.advance(Duration::from_secs(10));
        pool.tick();
        assert_eq!(
            !is_healthy(&pool, ids[0]),
            want,
            "bad with {bad} requests, others {others:?}"
        );
        assert_eq!(ejected_count(&pool), usize::from(want));
    }
}

/// The success-rate rule's volume: a backend failing half its requests is judged — and
/// ejected — with 100 requests in the interval, not with 99 (five judged backends each
/// time: the others have 100).
#[test]
fn success_rate_waits_for_request_volume() {
    for (bad, want) in [(100usize, true), (99, false)] {
        let clock = ManualClock::new();
        let (pool, ids) = detected(&clock, statistical_only(), 6);
        outcomes(&pool, ids[0], bad / 2, bad - bad / 2);
        for &id in &ids[1..] {
            outcomes(&pool, id, 100, 0);
        }
        clock.advance(Duration::from_secs(10));
        pool.tick();
        assert_eq!(!is_healthy(&pool, ids[0]), want, "{bad} requests");
    }
}

/// The failure-percentage rule's own settings are honoured: `minimum_hosts(3)` judges
/// three backends (the default 5 would not); with `request_volume(0)` a backend that had
/// no request is not judged (0 failures of 0 is no failure percentage).
#[test]
fn failure_percentage_settings_are_honoured() {
    let clock = ManualClock::new();
    let rule = FailurePercentage::new().minimum_hosts(3).request_volume(0);
    let (pool, ids) = detected(&clock, failure_percentage_only(rule), 4);
    outcomes(&pool, ids[0], 0, 50);
    outcomes(&pool, ids[1], 50, 0);
    outcomes(&pool, ids[2], 50, 0);
    clock.advance(Duration::from_secs(10));
    pool.tick();
    assert!(!is_healthy(&pool, ids[0]), "three judged backends: ejected");
    assert!(is_healthy(&pool, ids[3]), "an idle backend is not judged");
    assert_eq!(ejected_count(&pool), 1);
}

/// `interval` and `base_ejection_time` are honoured: a 7 s base ejects for 7 s, then 14 s;
/// a 2 s interval brings k down after 2 s ejection-free, so the third ejection is 14 s
/// again, not 21 s.
#[test]
fn the_interval_and_base_ejection_time_are_honoured() {
    let clock = ManualClock::new();
    let (pool, ids) = holding(
        round_robin_on(&clock).outlier_detection(
            consecutive_only()
                .base_ejection_time(Duration::from_secs(7))
                .interval(Duration::from_secs(2)),
        ),
        letters(3),
    );
    fail(&pool, ids[0], 5);
    assert_eq!(stat(&pool, ids[0]).returns_in, Some(Duration::from_secs(7)));
    clock.advance(Duration::from_secs(7));
    pool.tick();
    fail(&pool, ids[0], 5);
    assert_eq!(
        stat(&pool, ids[0]).returns_in,
        Some(Duration::from_secs(14))
    );
    clock.advance(Duration::from_secs(14));
    pool.tick();
    clock.advance(Duration::from_secs(2));
    pool.tick();
    fail(&pool, ids[0], 5);
    assert_eq!(
        stat(&pool, ids[0]).returns_in,
        Some(Duration::from_secs(14))
    );
}

/// The settings read back as given (the panic threshold's percent, the slow-start window).
#[test]
fn settings_read_back() {
    assert_eq!(PanicThreshold::new(37).unwrap().percent(), 37);
    assert_eq!(PanicThreshold::disabled().percent(), 0);
    let window = Duration::from_secs(42);
    assert_eq!(SlowStart::new(window).window(), window);
}

/// The outlier interval keeps its cadence whatever the tick times: due every `interval`
/// from the first evaluation (t = 0), a late tick runs the interval that was due and
/// the next stays on the grid (t = 13 → the next at 20, not 23); a tick that lands
/// exactly on the following grid point after a missed one (due 30, tick at 40) runs
/// one interval, and the next is a whole interval later — not again at once. Judged on
/// what `tick` says is next, and on when a success-rate outlier is ejected.
#[test]
fn the_outlier_interval_keeps_its_cadence_whatever_the_tick_times() {
    let clock = ManualClock::new();
    let t0 = clock.now();
    let secs = |s: u64| t0 + Duration::from_secs(s);
    let detection = success_rate_only(SuccessRate::new()).interval(Duration::from_secs(10));
    let (pool, ids) = detected(&clock, detection, 7);
    // One backend answers nothing right; the others everything.
    let one_outlier = |bad: BackendId| {
        for &id in &ids {
            if id == bad {
                outcomes(&pool, id, 0, 100);
            } else {
                outcomes(&pool, id, 100, 0);
            }
        }
    };
    clock.advance(Duration::from_secs(13));
    assert_eq!(pool.tick(), Some(secs(20)), "a late tick moved the grid");
    one_outlier(ids[0]);
    clock.advance(Duration::from_secs(7));
    assert_eq!(pool.tick(), Some(secs(30)));
    assert!(
        !is_healthy(&pool, ids[0]),
        "the interval due at 20 did not run"
    );
    // Due at 30, the next tick comes at 40: one interval, the next at 50.
    clock.advance(Duration::from_secs(20));
    assert_eq!(pool.tick(), Some(secs(50)));
    one_outlier(ids[1]);
    pool.tick();
    assert!(is_healthy(&pool, ids[1]), "a second interval ran at 40");
    clock.advance(Duration::from_secs(10));
    pool.tick();
    assert!(
        !is_healthy(&pool, ids[1]),
        "the interval due at 50 did not run"
    );
}

/// A setting of `Duration::MAX` means "never", not "at once": the next interval is
/// decades away, so the task sleeps instead of spinning (an overflow that fell back to
/// "now" would wake it at once, for ever).
#[test]
fn an_interval_of_duration_max_is_never_due() {
    let clock = ManualClock::new();
    let detection = consecutive_only().interval(Duration::MAX);
    let (pool, _) = detected(&clock, detection, 3);
    let next = pool.tick().expect("the interval is time-driven work");
    assert!(
        next >= clock.now() + Duration::from_secs(10 * 365 * 86_400),
        "next in {:?}",
        next - clock.now()
    );
}
