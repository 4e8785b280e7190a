//! Unit tests of [`BackendState`](super::BackendState) and its in-flight guard.

use super::*;

/// `picks` is every request started — in flight, succeeded, failed or dropped —
/// counted from the other counters, never twice and never lost.
#[test]
fn picks_count_every_started_request_once() {
    let state = Arc::new(BackendState::new(DEFAULT_EWMA_DECAY));
    assert_eq!(state.picks(), 0);
    let held = state.start();
    assert_eq!((state.picks(), state.in_flight()), (1, 1));
    state.start().success();
    state.start().failure();
    drop(state.start()); // cancelled: not a failure outside a pool
    assert_eq!(state.picks(), 4);
    assert_eq!((state.successes(), state.failures()), (1, 1));
    held.success();
    assert_eq!((state.picks(), state.in_flight()), (4, 0));
}

#[test]
fn in_flight_guard_releases_on_drop_and_finish() {
    let state = Arc::new(BackendState::new(DEFAULT_EWMA_DECAY));
    let a = state.start();
    let b = state.start();
    assert_eq!(state.in_flight(), 2);
    drop(a);
    assert_eq!(state.in_flight(), 1);
    b.failure();
    assert_eq!(state.in_flight(), 0);
    assert_eq!(state.failures(), 1);
    assert_eq!(state.successes(), 0);
    assert!(state.rtt_estimate(Instant::now()).is_some());
}

#[test]
fn ewma_decays_towards_zero_when_idle() {
    let state = BackendState::new(Duration::from_secs(10));
    let t0 = Instant::now();
    state.record_rtt(Duration::from_millis(100), t0);
    let at0 = state.rtt_estimate(t0).unwrap();
    let later = state.rtt_estimate(t0 + Duration::from_secs(10)).unwrap();
    assert_eq!(at0, Duration::from_millis(100));
    // e^-1 of the estimate after one decay window, within rounding.
    let expected = 100e6 * (-1.0f64).exp();
    assert!(
        (later.as_nanos() as f64 - expected).abs() < 1e3,
        "{later:?}"
    );
}

#[test]
fn decay_factor_is_close_to_exp_on_both_paths() {
    let tau = 10e9;
    let inv = 1.0 / tau;
    for elapsed in [
        0u64,
        1,
        1_000_000,
        4_882_000,
        4_883_000,
        10_000_000,
        10_000_000_000,
    ] {
        let exact = (-(elapsed as f64) / tau).exp();
        let got = decay_factor(elapsed, inv);
        assert!((got - exact).abs() < 2e-7, "{elapsed}: {got} vs {exact}");
    }
}

#[test]
fn a_cancellation_raises_the_estimate_and_past_the_threshold_is_a_failure() {
    let shared = Arc::new(HealthShared::new(5, Some(Duration::from_millis(100)), true));
    let state = BackendState::linked(DEFAULT_EWMA_DECAY, shared);
    state.record_rtt_at_nanos(Duration::from_millis(10), 1_000);
    // Cancelled after 5 ms: below the estimate, so nothing changes but the count.
    assert!(!state.record_cancel(Duration::from_millis(5), 2_000));
    assert_eq!((state.successes(), state.failures()), (0, 0));
    assert_eq!(f64::from_bits(state.rtt_bits.load(Ordering::Relaxed)), 10e6);
    // Cancelled after 50 ms: a latency floor above the estimate, not a failure.
    assert!(!state.record_cancel(Duration::from_millis(50), 3_000));
    assert_eq!(state.failures(), 0);
    assert_eq!(f64::from_bits(state.rtt_bits.load(Ordering::Relaxed)), 50e6);
    assert_eq!(state.failure_score_at(3_000), 0.0);
    // Cancelled after 300 ms (a caller's time-out): a failure, scored.
    assert!(!state.record_cancel(Duration::from_millis(300), 4_000));
    assert_eq!(state.failures(), 1);
    assert_eq!(
        f64::from_bits(state.rtt_bits.load(Ordering::Relaxed)),
        300e6
    );
    assert!((state.failure_score_at(4_000) - 1.0).abs() < 1e-9);
    // Outside a pool (no threshold), a cancellation is never a failure.
    let alone = BackendState::new(DEFAULT_EWMA_DECAY);
    assert!(!alone.record_cancel(Duration::from_secs(60), 1_000));
    assert_eq!(alone.failures(), 0);
}

#[test]
fn the_failure_score_adds_halves_fades_and_doubles_the_load() {
    let state = BackendState::new(DEFAULT_EWMA_DECAY);
    let t = 10_000_000_000u64;
    for _ in 0..3 {
        state.record_outcome(false, None, t);
    }
    assert!((state.failure_score_at(t) - 3.0).abs() < 1e-9);
    // (0 in flight + 1) × 2³ − 1
    assert!((state.load_with(|| t) - 7.0).abs() < 1e-9);
    state.record_outcome(true, None, t);
    assert!((state.failure_score_at(t) - 1.5).abs() < 1e-9);
    // Fades as e^(−Δt / 1 s): one second later, 1.5 / e.
    let later = t + 1_000_000_000;
    let expected = 1.5 * (-1.0f64).exp();
    assert!((state.failure_score_at(later) - expected).abs() < 1e-6);
    // Faded below 1/64: none, and the load is the in-flight count again.
    let much_later = t + 6_000_000_000;
    assert_eq!(state.failure_score_at(much_later), 0.0);
    assert_eq!(state.load_with(|| much_later), 0.0);
    // Successes halve it away: cleared below 1/64.
    for _ in 0..7 {
        state.record_outcome(true, None, t);
    }
    assert_eq!(state.fail_bits.load(Ordering::Relaxed), 0);
}

/// The pick's estimate is the exact decayed one within 0.05 %: the sample as is while it
/// is younger than τ/2048, the decayed estimate itself from then on.
#[test]
fn the_picks_estimate_is_within_a_twentieth_of_a_percent() {
    let tau = Duration::from_secs(10);
    let state = BackendState::new(tau);
    let t0 = 1_000_000_000u64;
    state.record_rtt_at_nanos(Duration::from_millis(100), t0);
    let fresh = tau.as_nanos() as u64 / 2048;
    for elapsed in [
        0,
        1,
        fresh / 2,
        fresh - 1,
        fresh,
        fresh + 1,
        2 * fresh,
        10 * fresh,
    ] {
        let at = t0 + elapsed;
        let exact = state.rtt_nanos_at(at).unwrap();
        let pick = state.rtt_nanos_for_pick(at).unwrap();
        if elapsed < fresh {
            assert_eq!(pick, 100e6, "fresh at {elapsed} ns: the sample as is");
        } else {
            assert_eq!(pick, exact, "{elapsed} ns: decayed");
        }
        assert!(
            (pick - exact).abs() <= exact * 5e-4,
            "{elapsed} ns: {pick} vs {exact}"
        );
    }
    assert_eq!(BackendState::new(tau).rtt_nanos_for_pick(t0), None);
}

/// What a load-aware pick reads of a candidate — in flight, the failure score's bits,
/// the latency estimate with its stamp, freshness bound and decay — lies in the first
/// 64-byte line of the 128-byte-aligned state: one line per candidate.
#[test]
fn what_a_pick_reads_shares_one_cache_line() {
    use std::mem::{align_of, offset_of, size_of};
    assert_eq!(align_of::<BackendState>(), 128);
    let read_by_picks = [
        (
            offset_of!(BackendState, in_flight),
            size_of::<AtomicUsize>(),
        ),
        (offset_of!(BackendState, fail_bits), size_of::<AtomicU64>()),
        (offset_of!(BackendState, rtt_bits), size_of::<AtomicU64>()),
        (offset_of!(BackendState, rtt_stamp), size_of::<AtomicU64>()),
        (offset_of!(BackendState, fresh_ns), size_of::<u64>()),
        (offset_of!(BackendState, inv_decay_ns), size_of::<f64>()),
    ];
    for (offset, size) in read_by_picks {
        assert!(offset + size <= 64, "{read_by_picks:?}");
    }
}

/// The failure run and its latched crossing share one word (so an ejection's end,
/// `store(0)`, clears both at once): a success ends the run but keeps the crossing for
/// the evaluation, and the count saturates below the latch bit.
#[test]
fn the_failure_run_latches_its_crossing_in_one_word() {
    use crate::backend::{STREAK, TRIPPED};
    let shared = Arc::new(HealthShared::new(3, None, false));
    let state = BackendState::linked(DEFAULT_EWMA_DECAY, shared);
    let word = || state.health.consecutive.load(Ordering::Relaxed);
    assert!(!state.record_outcome(false, None, 1));
    assert!(!state.record_outcome(false, None, 2));
    assert!(!state.record_outcome(true, None, 3));
    assert_eq!(word(), 0, "a success before the threshold breaks the run");
    assert!(!state.record_outcome(false, None, 4));
    assert!(!state.record_outcome(false, None, 5));
    assert!(state.record_outcome(false, None, 6), "the third signals");
    assert_eq!(word(), TRIPPED | 3);
    assert!(!state.record_outcome(true, None, 7));
    assert_eq!(word(), TRIPPED, "a late success keeps the crossing");
    assert!(!state.record_outcome(false, None, 8));
    assert_eq!(word(), TRIPPED | 1);
    state
        .health
        .consecutive
        .store(STREAK - 1, Ordering::Relaxed);
    assert!(!state.record_outcome(false, None, 9));
    assert!(!state.record_outcome(false, None, 10));
    assert_eq!(word(), STREAK, "saturates below the latch bit");
}
