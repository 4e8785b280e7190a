//! Slow start: the ramp follows Envoy's formula, the share grows with it, and it re-enters
//! after every recovery.

use super::*;

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
