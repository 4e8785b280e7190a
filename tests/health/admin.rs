//! The admin switch and custom health sources: drain, mark down/up, combination.

use super::*;

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
