//! The panic threshold: fail open over the backends in service, fail closed with the typed
//! error, draining backends never counted nor picked, a disabled threshold.

use super::*;

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
    let (pool, ids) = holding(
        Pool::builder(RoundRobin::new())
            .panic_threshold(PanicThreshold::default().mode(PanicMode::FailClosed)),
        letters(3),
    );
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
    let (pool, ids) = holding(
        Pool::builder(RoundRobin::new()).panic_threshold(PanicThreshold::disabled()),
        letters(2),
    );
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
