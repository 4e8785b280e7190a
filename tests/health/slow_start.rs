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
        let ramp = SlowStart::new(window).aggression(aggression);
        let pool = Pool::<&str, _>::builder(WeightedRandom::with_seed(7))
            .clock(clock.reader())
            .slow_start(ramp)
            .build()
            .unwrap();
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
    let (pool, ids) = holding(
        round_robin_on(&clock)
            .slow_start(SlowStart::new(window))
            .outlier_detection(consecutive_only()),
        letters(3),
    );
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

/// The ramp's factor right after a recovery: the minimum, 10%.
fn assert_ramp_starts<P: Picker<&'static str>>(
    pool: &Pool<&'static str, P>,
    id: BackendId,
    how: &str,
) {
    let ramp = stat(pool, id)
        .ramp
        .unwrap_or_else(|| panic!("no ramp after {how}"));
    assert!((ramp - 0.1).abs() <= RAMP_TOLERANCE, "{how}: {ramp}");
    let prepared = pool.snapshot();
    let s = prepared.snapshot();
    let i = s.index_of(id).unwrap();
    let full = f64::from(s.weight_scale());
    assert!(
        (f64::from(s.effective_weight(i)) / full - 0.1).abs() <= RAMP_TOLERANCE,
        "{how}: effective weight {} of {full}",
        s.effective_weight(i)
    );
}

/// Slow start re-enters after *every* recovery, not only a join or an ejection: admin
/// down then up, drained then up, a health source's unhealthy then healthy (probes: see
/// `task::slow_start_reenters_after_failed_probes`). Each time the ramp starts over at
/// its minimum, and a second recovery in the middle of a ramp starts it over again.
#[test]
fn slow_start_reenters_after_every_recovery() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let clock = ManualClock::new();
    let window = Duration::from_secs(100);
    let sick = Arc::new(AtomicBool::new(false));
    let (pool, ids) = holding(
        round_robin_on(&clock).slow_start(SlowStart::new(window)),
        letters(3),
    );
    let flag = Arc::clone(&sick);
    let c = ids[2];
    pool.add_health_source(move |b: &tower_lb::Backend<&str>, _: Instant| {
        if b.id() == c && flag.load(Ordering::SeqCst) {
            Verdict::Unhealthy(Reason::other("registry: failing"))
        } else {
            Verdict::Healthy
        }
    });
    clock.advance(window);
    pool.tick();
    assert!(ids.iter().all(|&id| stat(&pool, id).ramp.is_none()));

    pool.mark_down(ids[0]).unwrap();
    clock.advance(Duration::from_secs(5));
    pool.mark_up(ids[0]).unwrap();
    assert_ramp_starts(&pool, ids[0], "admin down, then up");

    pool.drain(ids[1]).unwrap();
    clock.advance(Duration::from_secs(5));
    pool.mark_up(ids[1]).unwrap();
    assert_ramp_starts(&pool, ids[1], "drained, then up");

    sick.store(true, Ordering::SeqCst);
    pool.tick();
    assert!(!is_healthy(&pool, c));
    clock.advance(Duration::from_secs(5));
    sick.store(false, Ordering::SeqCst);
    pool.tick();
    assert_ramp_starts(&pool, c, "a source's unhealthy, then healthy");

    // Half-way through a's ramp, another recovery starts it over.
    clock.advance(window / 2);
    pool.tick();
    let half = stat(&pool, ids[0]).ramp.unwrap();
    assert!(half > 0.5, "{half}");
    pool.mark_down(ids[0]).unwrap();
    pool.mark_up(ids[0]).unwrap();
    assert_ramp_starts(&pool, ids[0], "a second recovery mid-ramp");
}

/// While a backend ramps, the pool republishes when a weight changed and an update
/// interval (1 s here) has passed since the last step — "at most once per update
/// interval, and only when a weight changed" — and not at all once every ramp is over.
/// The window is 10 s with a 1% minimum, so the weight changes at every tick.
#[test]
fn slow_start_republishes_at_most_once_per_update_interval() {
    let clock = ManualClock::new();
    let window = Duration::from_secs(10);
    let (pool, ids) = holding(
        round_robin_on(&clock)
            .slow_start(ramp_from_one_percent(window).update_interval(Duration::from_secs(1))),
        letters(2),
    );
    restart_ramp(&pool, &clock, window, ids[1]);
    let version = || pool.snapshot().snapshot().version();
    let start = version();
    let mut published = Vec::new();
    // Ticks every 250 ms for 12 s: republished at 1 s, 2 s, … 10 s (the ramp's end), no more.
    for quarter in 1..=48u32 {
        clock.advance(Duration::from_millis(250));
        let before = version();
        pool.tick();
        if version() != before {
            published.push(quarter);
        }
    }
    assert_eq!(version() - start, published.len() as u64);
    let want: Vec<u32> = (1..=10).map(|s| 4 * s).collect();
    assert_eq!(published, want, "republished at these quarter seconds");
}

/// The part of the republishing rule that holds for any caller: while a ramp runs, a
/// tick republishes when a weight changed, and once every ramp is over, ticks publish
/// nothing. (How often the background task ticks: `task::the_task_steps_a_ramp_once_per_update_interval`.)
#[test]
fn slow_start_republishes_only_while_a_weight_changes() {
    let clock = ManualClock::new();
    let window = Duration::from_secs(10);
    let (pool, ids) = holding(
        round_robin_on(&clock).slow_start(ramp_from_one_percent(window)),
        letters(2),
    );
    restart_ramp(&pool, &clock, window, ids[1]);
    let version = || pool.snapshot().snapshot().version();
    let mut last_weight = pool.snapshot().snapshot().effective_weight(1);
    for second in 1..=15u64 {
        clock.advance(Duration::from_secs(1));
        let before = version();
        pool.tick();
        let weight = pool.snapshot().snapshot().effective_weight(1);
        let scale = pool.snapshot().snapshot().weight_scale();
        if second <= 10 {
            assert_eq!(version(), before + 1, "{second} s: a step of the ramp");
            assert!(
                weight > last_weight || scale == 1,
                "{second} s: {last_weight} -> {weight}"
            );
        } else {
            assert_eq!(
                version(),
                before,
                "{second} s: the ramp is over, nothing to publish"
            );
        }
        last_weight = weight;
    }
}
