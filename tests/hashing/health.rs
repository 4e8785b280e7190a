//! Health: ineligible backends lose exactly their keys, to the next backend of each key's
//! preference order, and get them back; through a pool with slow start.

use super::*;
use support::{chi_square, chi_square_critical_p001};

// ---------------------------------------------------------------- health

/// Makes `down` ineligible and back: only its keys move, each to an eligible backend,
/// and the original mapping returns exactly. Returns whether the table was reused.
fn check_health<P>(
    picker: &P,
    ids: &[u32],
    down: &BTreeSet<usize>,
    keys: &[u64],
) -> Result<(), TestCaseError>
where
    P: Picker<String>,
{
    let all = snapshot(ids, true);
    let table = picker.prepare(&all, None);
    let before = placement(picker, &table, &all, keys);

    let some_down = all.with_eligibility(|i| !down.contains(&i));
    let table_down = picker.prepare(&some_down, Some(&table));
    let during = placement(picker, &table_down, &some_down, keys);
    let down_addrs: BTreeSet<String> = down
        .iter()
        .map(|&i| all.backends()[i].addr().clone())
        .collect();
    for (b, d) in before.iter().zip(&during) {
        let b = b.as_ref().unwrap();
        if down_addrs.contains(b) {
            let d = d.as_ref();
            prop_assert!(
                d.is_some_and(|d| !down_addrs.contains(d)),
                "a key of {} went to {:?}",
                b,
                d
            );
        } else {
            prop_assert_eq!(Some(b), d.as_ref(), "a key of a healthy backend moved");
        }
    }

    let back = some_down.with_eligibility(|_| true);
    let table_back = picker.prepare(&back, Some(&table_down));
    prop_assert_eq!(&before, &placement(picker, &table_back, &back, keys));
    Ok(())
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Making backends ineligible moves all of their keys and no other key; making them
    /// eligible again restores the original mapping exactly.
    #[test]
    fn health_changes_move_only_the_affected_keys(
        ids in ids(2..=40),
        down in prop::collection::vec(any::<prop::sample::Index>(), 1..=3),
        key_seed in any::<u64>(),
    ) {
        let down: BTreeSet<usize> = down.iter().map(|i| i.index(ids.len())).collect();
        prop_assume!(down.len() < ids.len());
        let keys = keys(key_seed, 3000);
        check_health(&Maglev::new().with_table_size(8191).unwrap(), &ids, &down, &keys)?;
        check_health(&Ring::new(), &ids, &down, &keys)?;
        check_health(&Rendezvous::new(), &ids, &down, &keys)?;
        check_health(&Jump::new(), &ids, &down, &keys)?;
        check_health(&BoundedLoad::new(Maglev::new()), &ids, &down, &keys)?;
    }
}

/// A health change reuses the Maglev table and the ring as they are; a membership
/// change rebuilds them.
#[test]
fn health_changes_do_not_rebuild_tables() {
    let ids: Vec<u32> = (0..10).collect();
    let all = snapshot(&ids, false);
    let down = all.with_eligibility(|i| i != 3);

    let maglev = Maglev::new();
    let t = maglev.prepare(&all, None);
    assert!(maglev.prepare(&down, Some(&t)).table().ptr_eq(t.table()));
    let fewer = snapshot(&ids[1..], false);
    assert!(!maglev.prepare(&fewer, Some(&t)).table().ptr_eq(t.table()));
    let reweighted = snapshot(&ids, true);
    assert!(
        !maglev
            .prepare(&reweighted, Some(&t))
            .table()
            .ptr_eq(t.table())
    );

    let ring = Ring::new();
    let t = ring.prepare(&all, None);
    assert!(ring.prepare(&down, Some(&t)).table().ptr_eq(t.table()));
    assert!(!ring.prepare(&fewer, Some(&t)).table().ptr_eq(t.table()));
}

// ---------------------------------------------------------------- health through a pool

/// Slow-start steps the test walks through after the backend comes back.
const RAMP_STEPS: u32 = 10;
/// Maglev rebuilds at each ramp step (the weight changed); the share of other backends'
/// keys it may move meanwhile, against the mapping before the failure.
const MAGLEV_RAMP_MAX_COLLATERAL: f64 = 0.03;

/// The whole story with the real health machinery: a backend is marked down (its keys
/// and only its keys move; the Maglev table or ring is reused, not rebuilt), comes back
/// and ramps up under slow start (ring and rendezvous move keys only onto it, Maglev
/// little), and once the ramp ends every key is exactly where it was.
fn down_and_back<P: Picker<String>>(
    picker: P,
    exact_ramp: bool,
    same_table: impl Fn(&P::Table, &P::Table) -> bool,
) {
    use tower_lb::health::SlowStart;
    let window = std::time::Duration::from_secs(100);
    let clock = tower_lb::clock::ManualClock::new();
    let pool = Pool::builder(picker)
        .clock(clock.reader())
        .slow_start(SlowStart::new(window))
        .build()
        .unwrap();
    let ids = pool
        .extend((0..8u32).map(|i| (name(i), Weight::ONE)))
        .unwrap();
    clock.advance(window);
    pool.tick(); // the joins' own ramps are over
    let keys = keys(7, 3000);
    let place = |pool: &Pool<String, P>| -> Vec<String> {
        keys.iter()
            .map(|&k| pool.pick(&ctx(k)).unwrap().addr().clone())
            .collect()
    };
    let before = place(&pool);
    let table_before = pool.snapshot();
    let victim = name(3);

    pool.mark_down(ids[3]).unwrap();
    let during = place(&pool);
    for (b, d) in before.iter().zip(&during) {
        if *b == victim {
            assert_ne!(*d, victim);
        } else {
            assert_eq!(b, d, "a healthy backend's key moved");
        }
    }
    assert!(
        same_table(table_before.table(), pool.snapshot().table()),
        "rebuilt on a health change"
    );

    pool.mark_up(ids[3]).unwrap();
    let mut ramped = false;
    for step in 0..=RAMP_STEPS {
        ramped |= pool.snapshot().snapshot().weight_scale() > 1;
        let now = place(&pool);
        let moved_others = before
            .iter()
            .zip(&now)
            .filter(|(b, n)| **b != victim && b != n)
            .count();
        if exact_ramp {
            // Keys move only onto the ramping backend, never between the others.
            for (b, n) in before.iter().zip(&now) {
                assert!(
                    b == n || *n == victim || *b == victim,
                    "step {step}: {b} -> {n}"
                );
            }
        } else {
            let share = moved_others as f64 / keys.len() as f64;
            assert!(
                share <= MAGLEV_RAMP_MAX_COLLATERAL,
                "step {step}: {share:.4}"
            );
        }
        clock.advance(window / RAMP_STEPS);
        pool.tick();
    }
    assert!(ramped, "slow start scaled the weights during the ramp");
    clock.advance(window);
    pool.tick();
    assert_eq!(
        pool.snapshot().snapshot().weight_scale(),
        1,
        "the ramp is over"
    );
    assert_eq!(place(&pool), before, "the mapping is restored exactly");
}

#[test]
fn health_through_a_pool_with_slow_start() {
    down_and_back(Ring::new(), true, |a, b| a.table().ptr_eq(b.table()));
    down_and_back(Rendezvous::new(), true, |_, _| true);
    down_and_back(Maglev::new(), false, |a, b| a.table().ptr_eq(b.table()));
    down_and_back(BoundedLoad::new(Ring::new()), true, |a, b| {
        a.table().ptr_eq(b.table())
    });
}

proptest! {
    #![proptest_config(config(CASES))]

    /// "A backend that becomes ineligible loses exactly its own keys, each to the next
    /// backend in that key's preference order": for ring (the next point clockwise) and
    /// rendezvous (the next highest score), that is where a picker built without the
    /// down backends sends the key — an oracle that never walks past an ineligible
    /// member. A picker that sent the orphans anywhere else (the fallback, a rehash, the
    /// first eligible member) fails.
    #[test]
    fn a_down_backends_keys_go_to_the_next_backend_of_their_order(
        ids in ids(2..=30),
        down in prop::collection::vec(any::<prop::sample::Index>(), 1..=3),
        weighted in any::<bool>(),
        key_seed in any::<u64>(),
    ) {
        let down: BTreeSet<usize> = down.iter().map(|i| i.index(ids.len())).collect();
        prop_assume!(down.len() < ids.len());
        let keys = keys(key_seed, 3000);
        let all = snapshot(&ids, weighted);
        let some_down = all.with_eligibility(|i| !down.contains(&i));
        let rest: Vec<u32> = ids.iter().enumerate().filter(|(i, _)| !down.contains(i)).map(|(_, &id)| id).collect();
        let without = snapshot(&rest, weighted);
        fn check<P: Picker<String>>(p: &P, all: &Snapshot<String>, some_down: &Snapshot<String>, without: &Snapshot<String>, keys: &[u64]) -> Result<(), TestCaseError> {
            let table = p.prepare(all, None);
            let during = placement(p, &p.prepare(some_down, Some(&table)), some_down, keys);
            prop_assert_eq!(during, placed(p, without, keys));
            Ok(())
        }
        check(&Ring::new().with_points_per_weight(NonZeroU32::new(40).unwrap()), &all, &some_down, &without, &keys)?;
        check(&Rendezvous::new(), &all, &some_down, &without, &keys)?;
        check(&BoundedLoad::new(Rendezvous::new()), &all, &some_down, &without, &keys)?;
    }
}

/// Maglev and jump rehash a key whose backend is down: its keys spread over the others in
/// proportion to their shares of the table (jump: equally). Over 60 000 keys with one of
/// six backends down, the orphans' placement passes a chi-square test at p = 0.001
/// against those shares; sending them all to one neighbour would fail it.
#[test]
fn maglev_and_jump_spread_a_down_backends_keys_by_share() {
    let ids: Vec<u32> = (0..6).map(|i| 1000 + i * 17).collect();
    let all = snapshot(&ids, true);
    let keys = keys(99, 60_000);
    let critical = chi_square_critical_p001(ids.len() - 2);
    for down in [0usize, 3] {
        let some_down = all.with_eligibility(|i| i != down);
        let check = |name: &str,
                     before: Vec<Option<String>>,
                     during: Vec<Option<String>>,
                     shares: Vec<f64>| {
            let mut observed = vec![0u64; ids.len()];
            for (b, d) in before.iter().zip(&during) {
                if *b == Some(name_of(&all, down)) {
                    let d = d.as_ref().unwrap();
                    observed[all.backends().iter().position(|x| x.addr() == d).unwrap()] += 1;
                }
            }
            assert_eq!(observed[down], 0, "{name}");
            let others: Vec<u64> = (0..ids.len())
                .filter(|&i| i != down)
                .map(|i| observed[i])
                .collect();
            let total: f64 = (0..ids.len())
                .filter(|&i| i != down)
                .map(|i| shares[i])
                .sum();
            let expected: Vec<f64> = (0..ids.len())
                .filter(|&i| i != down)
                .map(|i| shares[i] / total)
                .collect();
            let stat = chi_square(&others, &expected);
            assert!(
                stat <= critical,
                "{name}, backend {down} down: {others:?} against {expected:?} (χ² {stat:.1})"
            );
        };
        let maglev = Maglev::new();
        let table = maglev.prepare(&all, None);
        let mut owned = vec![0f64; ids.len()];
        for e in table.table().entries() {
            owned[e as usize] += 1.0;
        }
        check(
            "maglev",
            placement(&maglev, &table, &all, &keys),
            placement(
                &maglev,
                &maglev.prepare(&some_down, Some(&table)),
                &some_down,
                &keys,
            ),
            owned,
        );
        let jump = Jump::new();
        let table = jump.prepare(&all, None);
        check(
            "jump",
            placement(&jump, &table, &all, &keys),
            placement(
                &jump,
                &jump.prepare(&some_down, Some(&table)),
                &some_down,
                &keys,
            ),
            vec![1.0; ids.len()],
        );
    }
}

fn name_of(s: &Snapshot<String>, i: usize) -> String {
    s.backends()[i].addr().clone()
}
