//! The ejection cap: a set of one never ejects, sets of 2 to 9 eject one, and statistical
//! ejections never exceed max(1, ⌊n × p⌋), whatever happens.

use super::*;

// ---------------------------------------------------------------------------------------
// The ejection cap
// ---------------------------------------------------------------------------------------

#[test]
fn a_set_of_one_never_ejects() {
    let pool = Pool::<&str, _>::builder(RoundRobin::new())
        .outlier_detection(consecutive_only())
        .build()
        .unwrap();
    let id = pool.insert("only", Weight::ONE).unwrap();
    fail(&pool, id, 50);
    pool.tick();
    assert!(is_healthy(&pool, id));
    assert_eq!(pool.pick(&PickContext::new()).unwrap().id(), id);
}

#[test]
fn sets_of_two_to_nine_can_eject_one_and_only_one() {
    for n in 2..=9 {
        let (pool, ids) = holding(
            Pool::builder(RoundRobin::new()).outlier_detection(consecutive_only()),
            hosts(n),
        );
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

/// The cap guards against a signal that fails everyone; it does not keep a confirmed
/// failure in rotation. Consecutive failures eject past the cap while another backend
/// answers (in rotation, its last outcome a success), and only then: when nobody
/// answers, or the only "answering" backend is the failing one itself, is ejected, or
/// has failed since, the cap holds.
#[test]
fn consecutive_failures_pass_the_cap_only_while_another_backend_answers() {
    // `answering(pool, c)` prepares the third backend `c`; then `a` and `b` fail five
    // times in a row; returns how many are ejected (the cap of three is one).
    fn ejected_after(answering: impl Fn(&Pool<String, RoundRobin>, &[BackendId])) -> usize {
        let (pool, ids) = holding(
            Pool::builder(RoundRobin::new()).outlier_detection(consecutive_only()),
            hosts(3),
        );
        answering(&pool, &ids);
        fail(&pool, ids[0], 5);
        fail(&pool, ids[1], 5);
        ejected_count(&pool)
    }
    // c answered: both failing backends leave.
    assert_eq!(ejected_after(|pool, ids| outcomes(pool, ids[2], 1, 0)), 2);
    // c never had a request: nobody is known to answer, the cap holds.
    assert_eq!(ejected_after(|_, _| {}), 1);
    // c answered once, then failed: its last outcome is a failure.
    assert_eq!(ejected_after(|pool, ids| outcomes(pool, ids[2], 1, 1)), 1);
    // b's own successes before its streak do not count for b.
    assert_eq!(ejected_after(|pool, ids| outcomes(pool, ids[1], 10, 0)), 1);
    // a answered before its streak, but a is ejected by the time b's streak ends.
    assert_eq!(ejected_after(|pool, ids| outcomes(pool, ids[0], 10, 0)), 1);
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
    #![proptest_config(config(96))]

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
            .max_ejection_percent(percent)
            .success_rate(Some(SuccessRate::new().minimum_hosts(2).request_volume(4)))
            .failure_percentage(Some(FailurePercentage::new().threshold(50)
                .minimum_hosts(1).request_volume(2)));
        let pool = Pool::<String, _>::builder(RoundRobin::new())
            .clock(clock.reader())
            .health_seed(5)
            .outlier_detection(detection)
            .build().unwrap();
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
            // The documented cap, computed here: max(1, ⌊n × p / 100⌋) for n ≥ 2, else 0.
            let cap = if size < 2 { 0 } else { (size * usize::from(percent) / 100).max(1) };
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

/// "When the set shrinks under the ejected count, the backends closest to their return
/// come back first": two statistical ejections (success rate) 10 s apart under a 50%
/// cap of 6; removing members until the cap is 1 returns the one ejected first — due
/// back 10 s earlier — and keeps the other out.
#[test]
fn when_the_set_shrinks_the_ejection_closest_to_its_end_returns_first() {
    let clock = ManualClock::new();
    let (pool, ids) = detected(
        &clock,
        failure_percentage_only(FailurePercentage::new().minimum_hosts(1).request_volume(10))
            .ejection_jitter(Duration::ZERO),
        6,
    );
    let (first, second) = (ids[4], ids[1]);
    for victim in [first, second] {
        for &id in &ids {
            let outcome = if id == victim {
                Outcome::failure()
            } else {
                Outcome::success()
            };
            for _ in 0..10 {
                pool.report(id, outcome).unwrap();
            }
        }
        clock.advance(Duration::from_secs(10));
        pool.tick();
        assert!(!is_healthy(&pool, victim));
    }
    assert_eq!(ejected_count(&pool), 2);
    assert_eq!(stat(&pool, first).returns_in, Some(Duration::from_secs(20)));
    assert_eq!(
        stat(&pool, second).returns_in,
        Some(Duration::from_secs(30))
    );
    // 6 → 3 members: the cap falls to max(1, ⌊3 × 50%⌋) = 1.
    for &id in &[ids[0], ids[2], ids[3]] {
        pool.remove(id).unwrap();
    }
    assert_eq!(ejected_count(&pool), 1);
    assert!(is_healthy(&pool, first), "the one due back first returned");
    assert!(!is_healthy(&pool, second));
}
