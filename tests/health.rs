//! Health: outlier ejection, the ejection cap, the panic threshold, active probes, slow
//! start, drain and admin, observability — the test list of issue #4.
//!
//! Time is a manual clock handed to the pool, or tokio's paused clock; nothing sleeps for
//! real. Randomness is seeded. Network tests use real listeners on 127.0.0.1:0.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tower_lb::clock::ManualClock;
use tower_lb::health::{
    Ejection, FailurePercentage, Outcome, OutlierDetection, PanicMode, PanicThreshold, Reason,
    SlowStart, SuccessRate, Verdict,
};
use tower_lb::{
    BackendId, BackendStats, LeastLoaded, PeakEwma, PickContext, PickError, Picker, Pool,
    PowerOfTwoChoices, Random, RoundRobin, Weight, WeightedRandom, WeightedRoundRobin,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn stat<A: Clone, P: Picker<A>>(pool: &Pool<A, P>, id: BackendId) -> BackendStats<A> {
    pool.stats()
        .into_iter()
        .find(|s| s.id == id)
        .expect("backend is in the pool")
}

fn is_healthy<A: Clone, P: Picker<A>>(pool: &Pool<A, P>, id: BackendId) -> bool {
    stat(pool, id).health.is_healthy()
}

fn ejected_count<A: Clone, P: Picker<A>>(pool: &Pool<A, P>) -> usize {
    pool.stats()
        .iter()
        .filter(|s| s.returns_in.is_some())
        .count()
}

/// Outlier detection with consecutive failures only and no jitter: exact times.
fn consecutive_only() -> OutlierDetection {
    OutlierDetection::new()
        .ejection_jitter(Duration::ZERO)
        .success_rate(None)
}

fn fail<A, P: Picker<A>>(pool: &Pool<A, P>, id: BackendId, times: usize)
where
    A: Clone + PartialEq,
{
    for _ in 0..times {
        pool.report(id, Outcome::failure()).unwrap();
    }
}

const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------
// Consecutive failures: ejection, return after base × k, growth to the cap, k coming down
// ---------------------------------------------------------------------------------------

#[test]
fn five_consecutive_failures_eject_for_base_times_k_up_to_the_cap() {
    let clock = ManualClock::new();
    let pool = Pool::<&str, _>::builder(RoundRobin::new())
        .clock(clock.reader())
        .outlier_detection(consecutive_only())
        .build();
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
        .unwrap();
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
    let pool = Pool::<&str, _>::builder(RoundRobin::new())
        .clock(clock.reader())
        .outlier_detection(consecutive_only())
        .build();
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
        .unwrap();
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
    let pool = Pool::<&str, _>::builder(RoundRobin::new())
        .outlier_detection(consecutive_only())
        .build();
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE)])
        .unwrap();
    for _ in 0..10 {
        fail(&pool, ids[0], 4);
        pool.report(ids[0], Outcome::success()).unwrap();
    }
    assert!(is_healthy(&pool, ids[0]));
    assert_eq!(stat(&pool, ids[0]).failures, 40);
}

#[test]
fn guard_failures_eject_at_the_next_tick() {
    let pool = Pool::<&str, _>::builder(RoundRobin::new())
        .outlier_detection(consecutive_only())
        .build();
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE)])
        .unwrap();
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

#[test]
fn jitter_spreads_returns_of_backends_ejected_together() {
    let clock = ManualClock::new();
    let base = Duration::from_secs(30);
    let jitter = Duration::from_secs(3);
    let pool = Pool::<String, _>::builder(RoundRobin::new())
        .clock(clock.reader())
        .health_seed(11)
        .outlier_detection(
            OutlierDetection::new()
                .ejection_jitter(jitter)
                .max_ejection_percent(100)
                .unwrap(),
        )
        .build();
    let ids = pool
        .extend((0..8).map(|i| (format!("10.0.0.{i}:80"), Weight::ONE)))
        .unwrap();
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
        let pool = Pool::<String, _>::builder(RoundRobin::new())
            .clock(clock.reader())
            .outlier_detection(
                OutlierDetection::new()
                    .consecutive_failures(0)
                    .ejection_jitter(Duration::ZERO)
                    // The cap must not be what keeps the others in.
                    .max_ejection_percent(50)
                    .unwrap(),
            )
            .build();
        let ids = pool
            .extend((0..10).map(|i| (format!("10.0.0.{i}:80"), Weight::ONE)))
            .unwrap();
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

#[test]
fn success_rate_waits_for_enough_backends_and_volume() {
    let clock = ManualClock::new();
    let pool = Pool::<String, _>::builder(RoundRobin::new())
        .clock(clock.reader())
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(0)
                .max_ejection_percent(50)
                .unwrap(),
        )
        .build();
    // Four backends: below the default minimum of five judged hosts.
    let ids = pool
        .extend((0..4).map(|i| (format!("h{i}"), Weight::ONE)))
        .unwrap();
    for &id in &ids {
        let bad = id == ids[0];
        for i in 0..200 {
            let ok = if bad { i % 2 == 0 } else { true };
            let outcome = if ok {
                Outcome::success()
            } else {
                Outcome::failure()
            };
            pool.report(id, outcome).unwrap();
        }
    }
    clock.advance(Duration::from_secs(10));
    pool.tick();
    assert_eq!(ejected_count(&pool), 0);
}

#[test]
fn failure_percentage_ejects_above_the_threshold_when_enabled() {
    let clock = ManualClock::new();
    let pool = Pool::<String, _>::builder(RoundRobin::new())
        .clock(clock.reader())
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(0)
                .success_rate(None)
                .failure_percentage(Some(FailurePercentage::new()))
                .max_ejection_percent(50)
                .unwrap(),
        )
        .build();
    let ids = pool
        .extend((0..6).map(|i| (format!("h{i}"), Weight::ONE)))
        .unwrap();
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
// The ejection cap
// ---------------------------------------------------------------------------------------

#[test]
fn a_set_of_one_never_ejects() {
    let pool = Pool::<&str, _>::builder(RoundRobin::new())
        .outlier_detection(consecutive_only())
        .build();
    let id = pool.insert("only", Weight::ONE).unwrap();
    fail(&pool, id, 50);
    pool.tick();
    assert!(is_healthy(&pool, id));
    assert_eq!(pool.pick(&PickContext::new()).unwrap().id(), id);
}

#[test]
fn sets_of_two_to_nine_can_eject_one_and_only_one() {
    for n in 2..=9 {
        let pool = Pool::<String, _>::builder(RoundRobin::new())
            .outlier_detection(consecutive_only())
            .build();
        let ids = pool
            .extend((0..n).map(|i| (format!("h{i}"), Weight::ONE)))
            .unwrap();
        for &id in &ids {
            fail(&pool, id, 5);
        }
        assert_eq!(ejected_count(&pool), 1, "n = {n}");
        assert!(
            !is_healthy(&pool, ids[0]),
            "n = {n}: the first to fail is ejected"
        );
    }
}

#[derive(Debug, Clone)]
enum CapOp {
    Fail(usize, u8),
    Succeed(usize, u8),
    Advance(u16),
    Insert,
    Remove(usize),
}

fn cap_op() -> impl Strategy<Value = CapOp> {
    prop_oneof![
        4 => (0..16usize, 1..12u8).prop_map(|(i, k)| CapOp::Fail(i, k)),
        2 => (0..16usize, 1..12u8).prop_map(|(i, k)| CapOp::Succeed(i, k)),
        2 => (1..400u16).prop_map(CapOp::Advance),
        1 => Just(CapOp::Insert),
        1 => (0..16usize).prop_map(CapOp::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Under any pattern of outcomes, time and membership, the statistical ejections stay
    /// within max(1, ⌊n × p⌋) for n ≥ 2, the set is never ejected whole, and nothing is
    /// ejected for n ≤ 1 — with all three rules on and tuned to fire easily. (Ejections
    /// for consecutive failures may pass the cap while another backend answers: see
    /// `confirmed_failures_are_ejected_beyond_the_cap_while_another_answers`.)
    #[test]
    fn ejections_never_exceed_the_cap(
        n in 1usize..12,
        percent in prop_oneof![Just(0u8), Just(10), Just(34), Just(100)],
        ops in proptest::collection::vec(cap_op(), 1..60),
    ) {
        let clock = ManualClock::new();
        let detection = OutlierDetection::new()
            .consecutive_failures(3)
            .max_ejection_percent(percent).unwrap()
            .success_rate(Some(SuccessRate::new().minimum_hosts(2).request_volume(4)))
            .failure_percentage(Some(FailurePercentage::new().threshold(50).unwrap()
                .minimum_hosts(1).request_volume(2)));
        let pool = Pool::<String, _>::builder(RoundRobin::new())
            .clock(clock.reader())
            .health_seed(5)
            .outlier_detection(detection.clone())
            .build();
        let mut next = n;
        pool.extend((0..n).map(|i| (format!("h{i}"), Weight::ONE))).unwrap();
        for op in ops {
            let members: Vec<BackendId> = pool.stats().iter().map(|s| s.id).collect();
            let nth = |i: usize| members.get(i % members.len().max(1)).copied();
            match op {
                CapOp::Fail(i, k) => if let Some(id) = nth(i) {
                    for _ in 0..k { pool.report(id, Outcome::failure()).unwrap(); }
                },
                CapOp::Succeed(i, k) => if let Some(id) = nth(i) {
                    for _ in 0..k { pool.report(id, Outcome::success()).unwrap(); }
                },
                CapOp::Advance(secs) => {
                    clock.advance(Duration::from_secs(u64::from(secs)));
                    pool.tick();
                }
                CapOp::Insert => {
                    pool.insert(format!("h{next}"), Weight::ONE).unwrap();
                    next += 1;
                }
                CapOp::Remove(i) => if let Some(id) = nth(i) {
                    pool.remove(id).unwrap();
                },
            }
            let size = pool.stats().len();
            let cap = detection.ejection_cap(size);
            let in_cells = ejected_count(&pool);
            let prepared = pool.snapshot();
            let snapshot = prepared.snapshot();
            let ejected_for = |kind: Option<Ejection>| (0..snapshot.len())
                .filter(|&i| match snapshot.verdict(i) {
                    Some(Verdict::Unhealthy(Reason::Ejected(k))) => kind.is_none_or(|kind| *k == kind),
                    _ => false,
                })
                .count();
            let in_snapshot = ejected_for(None);
            let confirmed = ejected_for(Some(Ejection::ConsecutiveFailures));
            // The statistical rules stay within the cap; only consecutive-failure
            // ejections made while another backend answered may pass it.
            prop_assert!(in_snapshot - confirmed <= cap, "{in_snapshot} ejected of {size} ({confirmed} for consecutive failures), cap {cap}");
            prop_assert_eq!(in_cells, in_snapshot);
            // Never the whole set.
            prop_assert!(percent == 100 || size == 0 || in_cells < size, "{in_cells} ejected of {size}");
            if size <= 1 {
                prop_assert_eq!(in_cells, 0);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The panic threshold
// ---------------------------------------------------------------------------------------

#[test]
fn with_one_of_three_healthy_picks_spread_over_all_three_when_failing_open() {
    let pool = Pool::new(RoundRobin::new());
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
        .unwrap();
    pool.mark_down(ids[0]).unwrap();
    // 2 of 3 healthy: no panic, only the healthy are picked.
    assert!(!pool.snapshot().snapshot().is_panicking());
    let mut counts: BTreeMap<BackendId, usize> = BTreeMap::new();
    for _ in 0..300 {
        *counts
            .entry(pool.pick(&PickContext::new()).unwrap().id())
            .or_default() += 1;
    }
    assert_eq!(counts.get(&ids[0]), None);

    pool.mark_down(ids[1]).unwrap();
    assert!(pool.snapshot().snapshot().is_panicking());
    let mut counts: BTreeMap<BackendId, usize> = BTreeMap::new();
    for _ in 0..300 {
        *counts
            .entry(pool.pick(&PickContext::new()).unwrap().id())
            .or_default() += 1;
    }
    // Round robin over all three: exactly a third each.
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![100, 100, 100]
    );

    pool.mark_up(ids[1]).unwrap();
    assert!(!pool.snapshot().snapshot().is_panicking());
}

#[test]
fn with_one_of_three_healthy_the_typed_error_comes_back_when_failing_closed() {
    let pool = Pool::<&str, _>::builder(RoundRobin::new())
        .panic_threshold(PanicThreshold::default().mode(PanicMode::FailClosed))
        .build();
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
        .unwrap();
    pool.mark_down(ids[0]).unwrap();
    pool.mark_down(ids[2]).unwrap();
    let err = pool.pick(&PickContext::new()).unwrap_err();
    assert_eq!(
        err,
        PickError::PanicThreshold {
            healthy: 1,
            total: 3
        }
    );
    assert!(err.to_string().contains("1 of 3"), "{err}");
}

#[test]
fn draining_backends_are_not_counted_and_never_picked_in_panic() {
    let pool = Pool::new(RoundRobin::new());
    let ids = pool
        .extend([
            ("a", Weight::ONE),
            ("b", Weight::ONE),
            ("c", Weight::ONE),
            ("d", Weight::ONE),
        ])
        .unwrap();
    // Two drained for maintenance: 2 of 2 in service are healthy, no panic.
    pool.drain(ids[0]).unwrap();
    pool.drain(ids[1]).unwrap();
    assert!(!pool.snapshot().snapshot().is_panicking());
    // One more down: 1 of 2 in service is not below 50%. Both down: panic, fail open,
    // yet the drained never get a pick.
    pool.mark_down(ids[2]).unwrap();
    pool.mark_down(ids[3]).unwrap();
    assert!(pool.snapshot().snapshot().is_panicking());
    for _ in 0..100 {
        let id = pool.pick(&PickContext::new()).unwrap().id();
        assert!(id == ids[2] || id == ids[3]);
    }
}

#[test]
fn a_disabled_threshold_routes_only_to_healthy_down_to_none() {
    let pool = Pool::<&str, _>::builder(RoundRobin::new())
        .panic_threshold(PanicThreshold::disabled())
        .build();
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE)])
        .unwrap();
    pool.mark_down(ids[0]).unwrap();
    for _ in 0..10 {
        assert_eq!(pool.pick(&PickContext::new()).unwrap().id(), ids[1]);
    }
    pool.mark_down(ids[1]).unwrap();
    assert_eq!(
        pool.pick(&PickContext::new()).unwrap_err(),
        PickError::NoEligible { total: 2 }
    );
}

// ---------------------------------------------------------------------------------------
// Slow start
// ---------------------------------------------------------------------------------------

/// A ramp moves in steps of 1 / scale of the weight; allow rounding to half a step.
const RAMP_TOLERANCE: f64 = 0.5 / 100.0;
/// Pick shares over 40 000 seeded picks: σ ≤ 0.0025, so 5σ.
const SHARE_TOLERANCE: f64 = 0.0125;

fn envoy_factor(t: Duration, window: Duration, aggression: f64, min: f64) -> f64 {
    if t >= window {
        return 1.0;
    }
    (t.as_secs_f64() / window.as_secs_f64())
        .powf(1.0 / aggression)
        .max(min)
}

#[test]
fn slow_start_weight_follows_the_formula_and_the_share_grows() {
    for aggression in [1.0, 2.0, 0.5] {
        let clock = ManualClock::new();
        let window = Duration::from_secs(60);
        let ramp = SlowStart::new(window)
            .unwrap()
            .aggression(aggression)
            .unwrap();
        let pool = Pool::<&str, _>::builder(WeightedRandom::with_seed(7))
            .clock(clock.reader())
            .slow_start(ramp)
            .build();
        let w = 3u32;
        let ids = pool
            .extend([
                ("steady", Weight::new(u64::from(w)).unwrap()),
                ("recovering", Weight::new(u64::from(w)).unwrap()),
            ])
            .unwrap();
        // Both joined together and ramp together; let that ramp end.
        clock.advance(window);
        pool.tick();
        assert_eq!(pool.snapshot().snapshot().weight_scale(), 1);

        // Recovery at t0: the ramp starts over.
        pool.mark_down(ids[1]).unwrap();
        pool.mark_up(ids[1]).unwrap();
        let t0 = clock.now();
        let mut last_share = 0.0;
        for secs in [0u64, 3, 6, 12, 24, 36, 48, 59] {
            let t = Duration::from_secs(secs);
            clock.advance(t0 + t - clock.now());
            pool.tick();
            let prepared = pool.snapshot();
            let snapshot = prepared.snapshot();
            let scale = f64::from(snapshot.weight_scale());
            let full = f64::from(w) * scale;
            let want = envoy_factor(t, window, aggression, 0.1);
            let got = f64::from(snapshot.effective_weight(1)) / full;
            assert!(
                (got - want).abs() <= RAMP_TOLERANCE,
                "aggression {aggression}, t = {secs}s: factor {got}, formula {want}"
            );
            assert_eq!(f64::from(snapshot.effective_weight(0)), full);
            assert!(
                stat(&pool, ids[1])
                    .ramp
                    .is_some_and(|r| (r - got).abs() < 1e-9)
            );

            let picks = 40_000;
            let hits = (0..picks)
                .filter(|_| prepared.pick(pool.picker(), &PickContext::new()) == Ok(1))
                .count();
            let share = hits as f64 / f64::from(picks);
            let expected = got / (1.0 + got);
            assert!(
                (share - expected).abs() <= SHARE_TOLERANCE,
                "aggression {aggression}, t = {secs}s: share {share}, expected {expected}"
            );
            assert!(
                share + SHARE_TOLERANCE >= last_share,
                "the share fell at t = {secs}s"
            );
            last_share = share;
        }
        clock.advance(t0 + window - clock.now());
        pool.tick();
        let prepared = pool.snapshot();
        assert_eq!(prepared.snapshot().weight_scale(), 1);
        assert_eq!(prepared.snapshot().effective_weight(1), w);
        assert_eq!(stat(&pool, ids[1]).ramp, None);
    }
}

#[test]
fn slow_start_reenters_after_an_ejection_and_on_join() {
    let clock = ManualClock::new();
    let window = Duration::from_secs(100);
    let pool = Pool::<&str, _>::builder(RoundRobin::new())
        .clock(clock.reader())
        .slow_start(SlowStart::new(window).unwrap())
        .outlier_detection(consecutive_only())
        .build();
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
        .unwrap();
    clock.advance(window);
    pool.tick();
    fail(&pool, ids[0], 5);
    clock.advance(Duration::from_secs(30));
    pool.tick();
    assert!(is_healthy(&pool, ids[0]));
    let ramp = stat(&pool, ids[0])
        .ramp
        .expect("ramping after the ejection");
    assert!((ramp - 0.1).abs() <= RAMP_TOLERANCE, "{ramp}");

    clock.advance(Duration::from_secs(50));
    pool.tick();
    let ramp = stat(&pool, ids[0]).ramp.expect("still ramping");
    assert!((ramp - 0.5).abs() <= RAMP_TOLERANCE, "{ramp}");

    // A backend that joins later ramps too; the others do not.
    let late = pool.insert("d", Weight::ONE).unwrap();
    assert!(stat(&pool, late).ramp.is_some());
    assert_eq!(stat(&pool, ids[1]).ramp, None);
}

// ---------------------------------------------------------------------------------------
// No pick ever returns an ineligible backend, for every strategy
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Down(usize),
    Drain(usize),
    Up(usize),
    Eject(usize),
    Advance(u16),
    Insert(u32),
    Remove(usize),
    Picks(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..12usize).prop_map(Op::Down),
        1 => (0..12usize).prop_map(Op::Drain),
        2 => (0..12usize).prop_map(Op::Up),
        2 => (0..12usize).prop_map(Op::Eject),
        1 => (1..90u16).prop_map(Op::Advance),
        1 => (1..5u32).prop_map(Op::Insert),
        1 => (0..12usize).prop_map(Op::Remove),
        4 => (1..40u8).prop_map(Op::Picks),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Admin {
    Up,
    Down,
    Drain,
}

fn run_ops<P: Picker<String>>(
    pool: Pool<String, P>,
    clock: &ManualClock,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut admin: HashMap<BackendId, Admin> = HashMap::new();
    let mut next = 0u32;
    for w in [1u32, 2, 3] {
        let id = pool
            .insert(format!("h{next}"), Weight::new(u64::from(w)).unwrap())
            .unwrap();
        admin.insert(id, Admin::Up);
        next += 1;
    }
    let ctx = PickContext::new();
    for op in ops {
        let members: Vec<BackendId> = pool.stats().iter().map(|s| s.id).collect();
        let nth = |i: usize| members.get(i % members.len().max(1)).copied();
        match *op {
            Op::Down(i) => {
                if let Some(id) = nth(i) {
                    pool.mark_down(id).unwrap();
                    admin.insert(id, Admin::Down);
                }
            }
            Op::Drain(i) => {
                if let Some(id) = nth(i) {
                    pool.drain(id).unwrap();
                    admin.insert(id, Admin::Drain);
                }
            }
            Op::Up(i) => {
                if let Some(id) = nth(i) {
                    pool.mark_up(id).unwrap();
                    admin.insert(id, Admin::Up);
                }
            }
            Op::Eject(i) => {
                if let Some(id) = nth(i) {
                    fail(&pool, id, 5);
                }
            }
            Op::Advance(secs) => {
                clock.advance(Duration::from_secs(u64::from(secs)));
                pool.tick();
            }
            Op::Insert(w) => {
                let id = pool
                    .insert(format!("h{next}"), Weight::new(u64::from(w)).unwrap())
                    .unwrap();
                admin.insert(id, Admin::Up);
                next += 1;
            }
            Op::Remove(i) => {
                if let Some(id) = nth(i) {
                    pool.remove(id).unwrap();
                    admin.remove(&id);
                }
            }
            Op::Picks(k) => {
                let prepared = pool.snapshot();
                let snapshot = prepared.snapshot();
                if !snapshot.is_panicking() {
                    let healthy: Vec<u32> = (0..snapshot.len())
                        .filter(|&i| snapshot.is_healthy(i))
                        .map(|i| i as u32)
                        .collect();
                    prop_assert_eq!(snapshot.eligible(), &healthy[..]);
                }
                for _ in 0..k {
                    match pool.pick(&ctx) {
                        Ok(picked) => {
                            prop_assert_eq!(
                                pool.snapshot().snapshot().version(),
                                snapshot.version()
                            );
                            let index = picked.index();
                            let model = admin[&picked.id()];
                            prop_assert!(model != Admin::Drain, "a draining backend was picked");
                            if !snapshot.is_panicking() {
                                prop_assert!(
                                    snapshot.is_healthy(index),
                                    "picked {:?}",
                                    snapshot.verdict(index)
                                );
                                prop_assert_eq!(model, Admin::Up);
                            }
                        }
                        Err(e) => {
                            // Only when nothing may be picked.
                            prop_assert!(snapshot.eligible().is_empty(), "{e}");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// While the panic threshold is not crossed, no strategy returns a backend that is not
    /// healthy, and no strategy ever returns a draining one.
    #[test]
    fn no_pick_returns_an_ineligible_backend(
        ops in proptest::collection::vec(op(), 1..50),
        threshold in prop_oneof![Just(0u8), Just(50), Just(80)],
        seed in any::<u64>(),
    ) {
        macro_rules! each {
            ($($picker:expr),* $(,)?) => {$({
                let clock = ManualClock::new();
                let pool = Pool::<String, _>::builder($picker)
                    .clock(clock.reader())
                    .panic_threshold(PanicThreshold::new(threshold).unwrap())
                    .slow_start(SlowStart::new(Duration::from_secs(60)).unwrap())
                    .outlier_detection(consecutive_only())
                    .health_seed(seed)
                    .build();
                run_ops(pool, &clock, &ops)?;
            })*};
        }
        each!(
            RoundRobin::new(),
            WeightedRoundRobin::new(),
            Random::with_seed(seed),
            WeightedRandom::with_seed(seed),
            LeastLoaded::with_seed(seed),
            PowerOfTwoChoices::with_seed(seed),
            PeakEwma::with_seed(seed),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Drain and admin
// ---------------------------------------------------------------------------------------

#[test]
fn drain_stops_new_picks_while_in_flight_requests_finish() {
    let pool = Pool::new(RoundRobin::new());
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE)])
        .unwrap();
    let ctx = PickContext::new();
    let guards: Vec<_> = (0..4).map(|_| pool.pick(&ctx).unwrap().start()).collect();
    assert_eq!(stat(&pool, ids[0]).in_flight, 2);

    pool.drain(ids[0]).unwrap();
    assert_eq!(stat(&pool, ids[0]).health, Verdict::Draining(Reason::Admin));
    for _ in 0..20 {
        assert_eq!(pool.pick(&ctx).unwrap().id(), ids[1]);
    }
    // The drained backend's requests still finish and count.
    for g in guards {
        g.success();
    }
    let a = stat(&pool, ids[0]);
    assert_eq!((a.in_flight, a.successes), (0, 2));

    pool.mark_up(ids[0]).unwrap();
    let picked: Vec<BackendId> = (0..4).map(|_| pool.pick(&ctx).unwrap().id()).collect();
    assert!(picked.contains(&ids[0]));
    assert_eq!(
        pool.drain(BackendId::clone(&ids[0]))
            .and(pool.remove(ids[0]).map(drop)),
        Ok(())
    );
    assert_eq!(
        pool.drain(ids[0]),
        Err(tower_lb::MembershipError::Unknown(ids[0]))
    );
}

#[test]
fn health_survives_membership_changes() {
    let pool = Pool::new(WeightedRoundRobin::new());
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE)])
        .unwrap();
    pool.mark_down(ids[0]).unwrap();
    pool.insert("c", Weight::ONE).unwrap();
    pool.set_weight(ids[1], Weight::new(3).unwrap()).unwrap();
    assert!(!is_healthy(&pool, ids[0]));
    for _ in 0..20 {
        assert_ne!(pool.pick(&PickContext::new()).unwrap().id(), ids[0]);
    }
}

#[test]
fn a_custom_source_combines_with_the_others() {
    use std::sync::atomic::{AtomicU8, Ordering};
    let pool = Pool::new(RoundRobin::new());
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
        .unwrap();
    // 0: healthy, 1: unhealthy, 2: draining — for "a" only.
    let opinion = Arc::new(AtomicU8::new(0));
    let o = Arc::clone(&opinion);
    let a = ids[0];
    pool.add_health_source(move |b: &tower_lb::Backend<&str>, _: Instant| {
        match (b.id() == a, o.load(Ordering::Relaxed)) {
            (true, 1) => Verdict::Unhealthy(Reason::other("registry: failing")),
            (true, 2) => Verdict::Draining(Reason::other("registry: leaving")),
            _ => Verdict::Healthy,
        }
    });
    assert!(is_healthy(&pool, a));
    opinion.store(1, Ordering::Relaxed);
    pool.tick();
    assert_eq!(
        stat(&pool, a).health,
        Verdict::Unhealthy(Reason::other("registry: failing"))
    );
    // The admin switch drains: draining is stricter than the source's unhealthy.
    pool.drain(a).unwrap();
    assert_eq!(stat(&pool, a).health, Verdict::Draining(Reason::Admin));
    // Lifting the admin hold leaves the source's verdict in force.
    pool.mark_up(a).unwrap();
    assert!(!is_healthy(&pool, a));
    opinion.store(0, Ordering::Relaxed);
    pool.tick();
    assert!(is_healthy(&pool, a));
}

// ---------------------------------------------------------------------------------------
// Observability
// ---------------------------------------------------------------------------------------

mod capture {
    use std::collections::HashMap;
    use std::fmt;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// One captured event: its target and fields (the message under "message").
    pub type Captured = (String, HashMap<String, String>);

    /// A subscriber that keeps every event.
    #[derive(Clone, Default)]
    pub struct Capture(pub Arc<Mutex<Vec<Captured>>>);

    struct Fields<'a>(&'a mut HashMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0
                .insert(field.name().to_string(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = HashMap::new();
            event.record(&mut Fields(&mut fields));
            self.0
                .lock()
                .unwrap()
                .push((event.metadata().target().to_string(), fields));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

#[test]
fn every_transition_is_an_event_with_backend_states_and_reason() {
    let capture = capture::Capture::default();
    let clock = ManualClock::new();
    // Two live dispatchers: with exactly one, tracing-core computes a callsite's interest
    // from whichever thread registers it first, and a parallel test thread without a
    // subscriber would switch our callsites off.
    let _second = tracing::Dispatch::new(capture::Capture::default());
    let dispatch = tracing::Dispatch::new(capture.clone());
    tracing::dispatcher::with_default(&dispatch, || {
        let pool = Pool::<&str, _>::builder(RoundRobin::new())
            .clock(clock.reader())
            .outlier_detection(consecutive_only())
            .build();
        let ids = pool
            .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
            .unwrap();
        fail(&pool, ids[0], 5);
        clock.advance(Duration::from_secs(30));
        pool.tick();
        pool.drain(ids[1]).unwrap();
        pool.mark_down(ids[2]).unwrap(); // 1 of 2 in service: no panic
        pool.mark_down(ids[0]).unwrap(); // 0 of 2: panic
        pool.mark_up(ids[0]).unwrap();
    });
    let events = capture.0.lock().unwrap();
    let transitions: Vec<(String, String, String, String)> = events
        .iter()
        .filter(|(target, f)| {
            target == "tower_lb::health" && f["message"] == "backend health changed"
        })
        .map(|(_, f)| {
            (
                f["backend"].clone(),
                f["from"].clone(),
                f["to"].clone(),
                f["reason"].clone(),
            )
        })
        .collect();
    let expected = [
        (
            "backend#0",
            "healthy",
            "unhealthy (ejected: consecutive failures)",
            "ejected: consecutive failures",
        ),
        (
            "backend#0",
            "unhealthy (ejected: consecutive failures)",
            "healthy",
            "ejected: consecutive failures",
        ),
        (
            "backend#1",
            "healthy",
            "draining (set by admin)",
            "set by admin",
        ),
        (
            "backend#2",
            "healthy",
            "unhealthy (set by admin)",
            "set by admin",
        ),
        (
            "backend#0",
            "healthy",
            "unhealthy (set by admin)",
            "set by admin",
        ),
        (
            "backend#0",
            "unhealthy (set by admin)",
            "healthy",
            "set by admin",
        ),
    ];
    let expected: Vec<(String, String, String, String)> = expected
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(transitions, expected);
    let panics: Vec<&String> = events
        .iter()
        .filter(|(_, f)| f["message"].starts_with("panic threshold"))
        .map(|(_, f)| &f["message"])
        .collect();
    assert_eq!(
        panics,
        [
            "panic threshold crossed: too few healthy backends",
            "panic threshold cleared: routing to healthy backends only"
        ]
    );
}

#[test]
fn stats_show_health_ejections_and_time_until_return() {
    let clock = ManualClock::new();
    let pool = Pool::<&str, _>::builder(RoundRobin::new())
        .clock(clock.reader())
        .outlier_detection(consecutive_only())
        .build();
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE)])
        .unwrap();
    fail(&pool, ids[0], 5);
    clock.advance(Duration::from_secs(12));
    let s = stat(&pool, ids[0]);
    assert!(!s.eligible);
    assert_eq!(s.ejections, 1);
    assert_eq!(s.returns_in, Some(Duration::from_secs(18)));
    assert_eq!(
        s.health.reason(),
        Some(&Reason::Ejected(Ejection::ConsecutiveFailures))
    );
    let b = stat(&pool, ids[1]);
    assert_eq!(
        (b.health, b.ejections, b.returns_in),
        (Verdict::Healthy, 0, None)
    );
}

// ---------------------------------------------------------------------------------------
// The background task and active probes (tokio's paused clock, real listeners)
// ---------------------------------------------------------------------------------------

#[cfg(feature = "tokio")]
mod task {
    use std::net::SocketAddr;

    use tokio::net::TcpListener;
    use tokio::time::Instant as TokioInstant;
    use tower_lb::SpawnError;
    use tower_lb::health::{ProbeConfig, ProbeError, TcpProbe, probe_fn};

    use super::*;

    /// Lets the runtime run (the task, probes, IO) until `at` on the paused clock.
    async fn until(at: TokioInstant) {
        tokio::time::sleep_until(at).await;
    }

    #[tokio::test(start_paused = true)]
    async fn probes_flip_verdicts_only_after_rise_and_fall() {
        let steady = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let flaky = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = (steady.local_addr().unwrap(), flaky.local_addr().unwrap());
        let pool: Pool<SocketAddr, _> = Pool::new(RoundRobin::new());
        let ids = pool.extend([(a, Weight::ONE), (b, Weight::ONE)]).unwrap();
        let config = ProbeConfig::new().jitter(Duration::ZERO); // 5 s, 1 s, rise 2, fall 3
        let start = TokioInstant::now();
        let _task = pool.spawn_health_probes(TcpProbe::new(), config).unwrap();
        let settle = Duration::from_millis(100);

        // New backends are probed at once.
        until(start + settle).await;
        assert_eq!(
            (stat(&pool, ids[0]).probes, stat(&pool, ids[1]).probes),
            (1, 1)
        );
        assert!(is_healthy(&pool, ids[1]));

        drop(flaky);
        // Two failures: still healthy (fall is 3).
        for (n, secs) in [(2, 5), (3, 10)] {
            until(start + Duration::from_secs(secs) + settle).await;
            let s = stat(&pool, ids[1]);
            assert_eq!(s.probes, n);
            assert!(s.health.is_healthy(), "unhealthy after {} failures", n - 1);
        }
        until(start + Duration::from_secs(15) + settle).await;
        let s = stat(&pool, ids[1]);
        assert_eq!(s.probes, 4);
        assert!(
            matches!(s.health, Verdict::Unhealthy(Reason::ProbeFailed { .. })),
            "{:?}",
            s.health
        );
        for _ in 0..10 {
            assert_eq!(pool.pick(&PickContext::new()).unwrap().id(), ids[0]);
        }

        // Open again: one success is not enough (rise is 2), two are.
        let _again = TcpListener::bind(b).await.unwrap();
        until(start + Duration::from_secs(20) + settle).await;
        assert_eq!(stat(&pool, ids[1]).probes, 5);
        assert!(!is_healthy(&pool, ids[1]));
        until(start + Duration::from_secs(25) + settle).await;
        assert_eq!(stat(&pool, ids[1]).probes, 6);
        assert!(is_healthy(&pool, ids[1]));

        // The steady backend was probed on the same schedule and never flipped.
        let s = stat(&pool, ids[0]);
        assert_eq!((s.probes, s.health), (6, Verdict::Healthy));
    }

    #[tokio::test(start_paused = true)]
    async fn probe_intervals_stay_within_the_jitter_bounds() {
        let log: Arc<Mutex<HashMap<String, Vec<TokioInstant>>>> = Arc::default();
        let record = Arc::clone(&log);
        let probe = probe_fn(move |addr: &String| {
            record
                .lock()
                .unwrap()
                .entry(addr.clone())
                .or_default()
                .push(TokioInstant::now());
            async { Ok::<(), ProbeError>(()) }
        });
        let config = ProbeConfig::new()
            .interval(Duration::from_secs(5))
            .jitter(Duration::from_secs(1))
            .seed(42);
        let (low, high) = config.interval_bounds();
        let pool = Pool::new(RoundRobin::new());
        pool.extend((0..3).map(|i| (format!("h{i}"), Weight::ONE)))
            .unwrap();
        let start = TokioInstant::now();
        let _task = pool.spawn_health_probes(probe, config).unwrap();

        until(start + Duration::from_millis(100_300)).await;
        pool.insert("late".to_string(), Weight::ONE).unwrap();
        until(start + Duration::from_millis(100_301)).await;
        until(start + Duration::from_secs(400)).await;

        let log = log.lock().unwrap();
        assert_eq!(
            log["late"][0],
            start + Duration::from_millis(100_300),
            "a new backend is probed at once"
        );
        let mut gaps = Vec::new();
        for (addr, times) in log.iter() {
            if addr != "late" {
                assert_eq!(times[0], start, "{addr} is probed at once");
            }
            assert!(times.len() >= 50, "{addr}: {} probes", times.len());
            for pair in times.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(
                    (low..=high).contains(&gap),
                    "{addr}: gap {gap:?} outside [{low:?}, {high:?}]"
                );
                gaps.push(gap);
            }
        }
        gaps.sort();
        gaps.dedup();
        assert!(gaps.len() > 20, "intervals are not jittered: {gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_timeout_counts_as_a_failure() {
        let probe = probe_fn(|_: &&str| async {
            std::future::pending::<()>().await;
            Ok(())
        });
        let pool = Pool::new(RoundRobin::new());
        let ids = pool
            .extend([("a", Weight::ONE), ("b", Weight::ONE)])
            .unwrap();
        let config = ProbeConfig::new().jitter(Duration::ZERO).fall(1).unwrap();
        let start = TokioInstant::now();
        let _task = pool.spawn_health_probes(probe, config).unwrap();
        until(start + Duration::from_millis(999)).await;
        assert!(is_healthy(&pool, ids[0]));
        until(start + Duration::from_millis(1001)).await;
        let s = stat(&pool, ids[0]);
        assert_eq!(s.probes, 1);
        assert!(
            s.health
                .reason()
                .is_some_and(|r| r.to_string().contains("timed out")),
            "{:?}",
            s.health
        );
    }

    /// Two of three backends fail their probes: the panic threshold (50%, fail open) no
    /// longer puts them back — their failure is confirmed and one backend is healthy, so
    /// every pick goes to it. When the third fails too, nothing is healthy and fail-open
    /// spreads over all three again (the broken-health-check case the valve is for).
    #[tokio::test(start_paused = true)]
    async fn confirmed_probe_failures_stay_out_of_panic_while_one_backend_is_healthy() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let c_down = Arc::new(AtomicBool::new(false));
        let flag = c_down.clone();
        let probe = probe_fn(move |addr: &&str| {
            let down = *addr != "c" || flag.load(Ordering::SeqCst);
            async move {
                if down {
                    Err(ProbeError::new("connection refused"))
                } else {
                    Ok(())
                }
            }
        });
        let pool = Pool::new(RoundRobin::new());
        let ids = pool
            .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
            .unwrap();
        let config = ProbeConfig::new().jitter(Duration::ZERO).fall(1).unwrap();
        let start = TokioInstant::now();
        let _task = pool.spawn_health_probes(probe, config).unwrap();
        until(start + Duration::from_millis(10)).await;
        assert!(!is_healthy(&pool, ids[0]) && !is_healthy(&pool, ids[1]));
        let prepared = pool.snapshot();
        assert!(!prepared.snapshot().is_panicking());
        assert_eq!(prepared.snapshot().eligible(), [2]);
        for _ in 0..300 {
            assert_eq!(pool.pick(&PickContext::new()).unwrap().id(), ids[2]);
        }

        c_down.store(true, Ordering::SeqCst);
        until(start + Duration::from_millis(5_010)).await;
        let prepared = pool.snapshot();
        assert!(prepared.snapshot().is_panicking(), "none healthy: panic");
        assert_eq!(
            prepared.snapshot().eligible(),
            [0, 1, 2],
            "fail open over all"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_probe_ends_an_ejection_early() {
        let pool = Pool::<&str, _>::builder(RoundRobin::new())
            .outlier_detection(consecutive_only())
            .build();
        let ids = pool
            .extend([("a", Weight::ONE), ("b", Weight::ONE)])
            .unwrap();
        let probe = probe_fn(|_: &&str| async { Ok(()) });
        let start = TokioInstant::now();
        let _task = pool
            .spawn_health_probes(probe, ProbeConfig::new().jitter(Duration::ZERO))
            .unwrap();
        until(start + Duration::from_secs(1)).await;
        fail(&pool, ids[0], 5);
        assert!(!is_healthy(&pool, ids[0]));
        // The next probe (at 5 s) began after the ejection and succeeds.
        until(start + Duration::from_millis(5_100)).await;
        assert!(is_healthy(&pool, ids[0]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_ejects_on_guard_signals_and_returns_on_time() {
        let pool = Pool::<&str, _>::builder(RoundRobin::new())
            .outlier_detection(consecutive_only())
            .build();
        let ids = pool
            .extend([("a", Weight::ONE), ("b", Weight::ONE)])
            .unwrap();
        let _task = pool.spawn_health().unwrap();
        let state = pool.snapshot().snapshot().backends()[0].state().clone();
        let start = TokioInstant::now();
        for _ in 0..5 {
            state.start().failure();
        }
        until(start + MS).await;
        assert!(!is_healthy(&pool, ids[0]), "the task did not eject");
        until(start + Duration::from_secs(30) - MS).await;
        assert!(!is_healthy(&pool, ids[0]));
        until(start + Duration::from_secs(30) + MS).await;
        assert!(
            is_healthy(&pool, ids[0]),
            "the task did not return it on time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_stops_when_the_pool_is_dropped_and_is_one_per_pool() {
        let pool: Pool<&str, _> = Pool::new(RoundRobin::new());
        pool.insert("a", Weight::ONE).unwrap();
        let task = pool
            .spawn_health_probes(probe_fn(|_: &&str| async { Ok(()) }), ProbeConfig::new())
            .unwrap();
        assert_eq!(pool.spawn_health().unwrap_err(), SpawnError::AlreadyRunning);
        until(TokioInstant::now() + Duration::from_secs(12)).await;
        assert!(!task.is_finished());
        drop(pool);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the task outlived its pool");
    }

    #[test]
    fn spawning_outside_a_runtime_is_an_error() {
        let pool: Pool<&str, _> = Pool::new(RoundRobin::new());
        assert_eq!(pool.spawn_health().unwrap_err(), SpawnError::NoRuntime);
    }

    #[cfg(feature = "tower")]
    #[tokio::test(start_paused = true)]
    async fn a_tower_service_is_a_probe() {
        use std::task::{Context, Poll};
        use tower_lb::health::ServiceProbe;

        #[derive(Clone)]
        struct Check;
        impl tower_service::Service<&'static str> for Check {
            type Response = ();
            type Error = String;
            type Future = std::future::Ready<Result<(), String>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, addr: &'static str) -> Self::Future {
                std::future::ready(if addr == "bad" {
                    Err("bad backend".into())
                } else {
                    Ok(())
                })
            }
        }
        let pool = Pool::new(RoundRobin::new());
        let ids = pool
            .extend([("good", Weight::ONE), ("bad", Weight::ONE)])
            .unwrap();
        let config = ProbeConfig::new().fall(1).unwrap();
        let _task = pool
            .spawn_health_probes(ServiceProbe::new(Check), config)
            .unwrap();
        until(TokioInstant::now() + Duration::from_millis(10)).await;
        assert!(is_healthy(&pool, ids[0]));
        assert_eq!(
            stat(&pool, ids[1]).health,
            Verdict::Unhealthy(Reason::ProbeFailed {
                error: "bad backend".into()
            })
        );
    }

    #[cfg(feature = "http")]
    #[tokio::test(start_paused = true)]
    async fn the_http_probe_treats_2xx_3xx_as_healthy() {
        use std::sync::atomic::{AtomicU16, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tower_lb::health::HttpProbe;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(204));
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, r) = (Arc::clone(&status), Arc::clone(&requests));
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 1024];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                r.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let code = s.load(Ordering::Relaxed);
                let _ = conn
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let pool: Pool<SocketAddr, _> = Pool::new(RoundRobin::new());
        let id = pool.insert(addr, Weight::ONE).unwrap();
        let config = ProbeConfig::new()
            .jitter(Duration::ZERO)
            .rise(1)
            .unwrap()
            .fall(1)
            .unwrap();
        let probe = HttpProbe::new("/healthz")
            .unwrap()
            .host("api.test")
            .unwrap();
        let start = TokioInstant::now();
        let _task = pool.spawn_health_probes(probe, config).unwrap();
        let settle = Duration::from_millis(100);

        until(start + settle).await;
        assert_eq!(stat(&pool, id).probes, 1);
        assert!(is_healthy(&pool, id));
        status.store(503, Ordering::Relaxed);
        until(start + Duration::from_secs(5) + settle).await;
        let health = stat(&pool, id).health;
        assert!(
            health
                .reason()
                .is_some_and(|r| r.to_string().contains("503")),
            "{health:?}"
        );
        status.store(302, Ordering::Relaxed);
        until(start + Duration::from_secs(10) + settle).await;
        assert!(is_healthy(&pool, id));

        let first = requests.lock().unwrap()[0].clone();
        assert!(first.starts_with("GET /healthz HTTP/1.1\r\n"), "{first:?}");
        assert!(first.contains("\r\nHost: api.test\r\n"), "{first:?}");
    }
}

#[test]
fn extreme_settings_do_not_panic() {
    let pool = Pool::<&str, _>::builder(RoundRobin::new())
        .outlier_detection(
            OutlierDetection::new()
                .interval(Duration::MAX)
                .base_ejection_time(Duration::MAX)
                .max_ejection_time(Duration::MAX)
                .ejection_jitter(Duration::MAX)
                .consecutive_failures(1),
        )
        .slow_start(
            SlowStart::new(Duration::MAX)
                .unwrap()
                .update_interval(Duration::MAX),
        )
        .build();
    let ids = pool
        .extend([
            ("a", Weight::new(u64::from(u32::MAX)).unwrap()),
            ("b", Weight::ONE),
        ])
        .unwrap();
    fail(&pool, ids[0], 3);
    assert!(pool.tick().is_some());
    assert!(stat(&pool, ids[0]).returns_in.is_some());
    assert_eq!(pool.pick(&PickContext::new()).unwrap().id(), ids[1]);
    assert!(pool.snapshot().snapshot().effective_weight(1) >= 1);
}
