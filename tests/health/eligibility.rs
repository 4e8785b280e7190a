//! No pick ever returns an ineligible backend, for every strategy, under any sequence of
//! health and membership changes; extreme settings never panic.

use super::*;

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
    #![proptest_config(config(40))]

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
                    .slow_start(SlowStart::new(Duration::from_secs(60)))
                    .outlier_detection(consecutive_only())
                    .health_seed(seed)
                    .build().unwrap();
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
        .slow_start(SlowStart::new(Duration::MAX).update_interval(Duration::MAX))
        .build()
        .unwrap();
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
