use super::*;
use crate::backend::Weight;

#[test]
fn primes() {
    let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
    assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    assert!(is_prime(DEFAULT_TABLE_SIZE));
    assert!(is_prime(655_373));
    assert!(is_prime(MAX_TABLE_SIZE));
    assert!(TABLE_SIZES.iter().all(|&m| is_prime(m)));
    assert!(TABLE_SIZES.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(TABLE_SIZES[0], DEFAULT_TABLE_SIZE);
    assert_eq!(TABLE_SIZES[7], MAX_TABLE_SIZE);
    assert!(!is_prime(65_535));
}

#[test]
fn table_size_must_be_a_prime_in_range() {
    assert!(Maglev::new().with_table_size(7).is_ok());
    for bad in [0, 1, 4, 65_536, u64::from(MAX_TABLE_SIZE) + 2, u64::MAX] {
        let err = Maglev::new().with_table_size(bad).unwrap_err();
        assert!(err.to_string().contains(&bad.to_string()), "{err}");
    }
}

#[test]
fn weights_share_the_table_in_proportion() {
    let snapshot = Snapshot::build([
        ("a", Weight::ONE),
        ("b", Weight::new(3).unwrap()),
        ("c", Weight::new(4).unwrap()),
    ])
    .unwrap();
    let maglev = Maglev::new().with_table_size(8191).unwrap();
    let table = maglev.prepare(&snapshot, None);
    let mut counts = [0usize; 3];
    for e in table.table().entries() {
        counts[e as usize] += 1;
    }
    assert_eq!(counts.iter().sum::<usize>(), 8191);
    // Within one round of the exact proportions 1:3:4.
    for (i, w) in [1.0, 3.0, 4.0].into_iter().enumerate() {
        let expected = 8191.0 * w / 8.0;
        assert!((counts[i] as f64 - expected).abs() <= 4.0, "{counts:?}");
    }
}

#[test]
fn extreme_weights_build_quickly_and_fill_the_table() {
    let snapshot = Snapshot::build([
        ("a", Weight::ONE),
        ("b", Weight::new(u64::from(Weight::MAX)).unwrap()),
    ])
    .unwrap();
    let table = Maglev::new().prepare(&snapshot, None);
    let a = table.table().entries().iter().filter(|&&e| e == 0).count();
    assert_eq!(
        a, 1,
        "weight 1 against u32::MAX still claims its first turn"
    );
}

#[test]
fn tiny_tables_work() {
    let snapshot = Snapshot::build([("a", Weight::ONE), ("b", Weight::ONE)]).unwrap();
    let maglev = Maglev::new().with_table_size(2).unwrap();
    let table = maglev.prepare(&snapshot, None);
    let mut entries = table.table().entries();
    entries.sort_unstable();
    assert_eq!(entries, [0, 1]);
}

/// A member list for the patch tests: `(id, weight)` in snapshot order.
fn set(ids: &[(u32, u32)]) -> Set {
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    let mut pairs = Vec::new();
    for &(id, weight) in ids {
        let key = format!("10.1.{id}:80").into_bytes();
        pairs.push((seeded(&key, SEED_IDENTITY), weight));
        bytes.extend_from_slice(&key);
        ends.push(bytes.len());
    }
    Set {
        bytes,
        ends,
        fingerprint: Fingerprint(pairs.into_boxed_slice()),
        ids: ids
            .iter()
            .map(|&(id, _)| BackendId::new(u64::from(id)))
            .collect(),
    }
}

fn core(built: Built, members: &Set) -> Core {
    let members = Set {
        bytes: members.bytes.clone(),
        ends: members.ends.clone(),
        fingerprint: members.fingerprint.clone(),
        ids: members.ids.clone(),
    };
    Core::new(
        built,
        Arc::new(members),
        Status::Canonical,
        Arc::default(),
        0,
    )
}

fn snapshot_entries(core: &Core) -> Vec<u32> {
    core.indices()
}

/// Lists each member's slots again in `core` (a patch takes them from the table it
/// patches), so a test can patch the same table twice.
fn relist(core: &Core) {
    let mut state = core.lock();
    state.owned = owned_lists(&core.slots, &core.numbering);
}

/// A canonical table, patchable.
fn built(members: &Set, m: u32) -> Built {
    Built::canonical(build(members, m, &|| false).unwrap(), true)
}

/// SplitMix64: the tests' seeded randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(crate::stable_hash::GAMMA);
        crate::stable_hash::mix(self.0)
    }

    fn below(&mut self, n: usize) -> usize {
        reduce(self.next(), n)
    }
}

/// Every member owns within one slot of M · w / W (or `within[i]`, when given), the
/// counts kept match the entries, and no slot is free.
fn check_balanced(built: &Built, members: &Set, m: usize, within: Option<&[f64]>) {
    let total: u64 = members.iter().map(|b| u64::from(b.weight)).sum();
    let mut counts = vec![0u32; members.len()];
    let mut lists = vec![Vec::new(); members.len()];
    for (slot, e) in built.indices().into_iter().enumerate() {
        counts[e as usize] += 1;
        lists[e as usize].push(slot as u32);
    }
    assert_eq!(counts, built.counts, "kept counts match the entries");
    let mut owned: Vec<Vec<u32>> = (0..members.len())
        .map(|j| built.owned[built.numbering.number_of[j] as usize].clone())
        .collect();
    owned.iter_mut().for_each(|l| l.sort_unstable());
    // Numbers no member holds own no slot.
    for (number, list) in built.owned.iter().enumerate() {
        if built.numbering.index(number as u32).is_none() {
            assert!(list.is_empty(), "free number {number} owns {list:?}");
        }
    }
    assert_eq!(lists, owned, "kept slot lists match the entries");
    for (i, (b, &c)) in members.iter().zip(&counts).enumerate() {
        let b = &b;
        let target = m as f64 * f64::from(b.weight) / total as f64;
        let within = within.map_or(1.0, |w| w[i]);
        assert!(
            (f64::from(c) - target).abs() < within,
            "member {} of weight {} owns {c} slots, target {target:.3}, within {within:.3}",
            b.index,
            b.weight
        );
    }
}

/// Random insert/remove/reweight sequences, at most one member in eight changed per
/// step, equal and mixed weights, M = 1009 and 65 537: every patch keeps each member
/// within one slot of its share, and a slot changes owner only if its owner was
/// removed or reweighted, or owned more than its new share (a donor).
#[test]
fn patches_stay_balanced_and_move_only_what_they_must() {
    for (seed, m, mixed) in [
        (1u64, 1009u32, false),
        (2, 1009, true),
        (3, 65_537, false),
        (4, 65_537, true),
    ] {
        let mut rng = Rng(seed);
        let weight = |rng: &mut Rng| if mixed { 1 + rng.below(4) as u32 } else { 1 };
        let n0 = if m < 2000 { 40 } else { 300 };
        let mut ids: Vec<(u32, u32)> = (0..n0).map(|i| (i, weight(&mut rng))).collect();
        let mut next_id = n0;
        let mut members = set(&ids);
        let mut prev = core(built(&members, m), &members);
        for step in 0..30 {
            let old_ids = ids.clone();
            let changes = 1 + rng.below(ids.len() / 8);
            for _ in 0..changes {
                // Equal weights: inserts and removals only.
                match rng.below(if mixed { 3 } else { 2 }) {
                    0 | 1 if ids.len() <= 8 => {
                        ids.push((next_id, weight(&mut rng)));
                        next_id += 1;
                    }
                    0 => {
                        ids.push((next_id, weight(&mut rng)));
                        next_id += 1;
                    }
                    1 if ids.len() > 8 => {
                        ids.remove(rng.below(ids.len()));
                    }
                    // Reweight, weight 0 included (a drained or ramping backend).
                    _ => {
                        let k = rng.below(ids.len());
                        ids[k].1 = rng.below(5) as u32;
                    }
                }
            }
            if ids.iter().all(|&(_, w)| w == 0) {
                ids[0].1 = 1;
            }
            let next = set(&ids);
            let old_total: u64 = old_ids.iter().map(|&(_, w)| u64::from(w)).sum();
            let patched = patch(&prev, &next, m);
            let changed = ids.iter().filter(|b| !old_ids.contains(b)).count()
                + old_ids
                    .iter()
                    .filter(|b| !ids.iter().any(|c| c.0 == b.0))
                    .count();
            if changed * PATCH_MAX_CHANGED_PER > ids.len() {
                assert!(patched.is_none(), "seed {seed} step {step}: too large");
                prev = core(built(&next, m), &next);
                members = next;
                continue;
            }
            let built = patched.unwrap_or_else(|| panic!("seed {seed} step {step}"));
            // Within one slot of the share, unless a member kept its weight and was
            // further from its share before (a canonical weighted table has a few):
            // then it moves only towards its share.
            let old_counts = prev.lock().counts.clone();
            let total: u64 = ids.iter().map(|&(_, w)| u64::from(w)).sum();
            let within: Vec<f64> = ids
                .iter()
                .map(|b| {
                    let Some(i) = old_ids.iter().position(|o| o == b) else {
                        return 1.0;
                    };
                    let c = f64::from(old_counts[i]);
                    let w = f64::from(b.1);
                    let old_dev = c - f64::from(m) * w / old_total as f64;
                    if old_dev.abs() < 1.0 {
                        1.0
                    } else {
                        assert!(mixed, "equal weights stay within one slot");
                        (c - f64::from(m) * w / total as f64).abs().max(1.0) + 1e-9
                    }
                })
                .collect();
            check_balanced(&built, &next, m as usize, Some(&within));
            // Same inputs, same patch.
            relist(&prev);
            let again = patch(&prev, &next, m).unwrap();
            assert_eq!(again.indices(), built.indices());
            let now: std::collections::HashMap<u32, u32> = ids.iter().copied().collect();
            // Whether a slot of old member `i` may move: it was removed, reweighted,
            // or owned more than its new share, M · w / W (a donor).
            let may_move: Vec<bool> = old_ids
                .iter()
                .zip(&old_counts)
                .map(|(&(id, w), &c)| match now.get(&id) {
                    None => true,
                    Some(&v) if v != w => true,
                    Some(&v) => u64::from(c) * total > u64::from(m) * u64::from(v),
                })
                .collect();
            let mut moved = 0usize;
            let before = prev.indices();
            for (slot, e) in built.indices().into_iter().enumerate() {
                let i = before[slot] as usize;
                if old_ids[i].0 == ids[e as usize].0 {
                    continue;
                }
                moved += 1;
                assert!(
                    may_move[i],
                    "seed {seed} step {step}: slot {slot} moved from a member at its share"
                );
            }
            // Far fewer than a rebuild's moves: at most what the changed members
            // owned or now own, plus one per member whose share moved.
            let bound: u64 = old_ids
                .iter()
                .chain(&ids)
                .filter(|b| !(old_ids.contains(b) && ids.contains(b)))
                .map(|&(_, w)| u64::from(m) * u64::from(w) / old_total.min(total).max(1) + 2)
                .sum::<u64>()
                + ids.len() as u64;
            assert!(
                moved as u64 <= bound,
                "seed {seed} step {step}: {moved} moved, bound {bound}"
            );
            prev = core(built, &next);
            members = next;
        }
        assert!(members.len() > 0);
    }
}

/// A slow-start ramp down and back up moves only the ramping member's slots: going
/// down it keeps a subset of its slots (the first in its own permutation order),
/// going up it only gains, and each step moves about its change of share.
#[test]
fn a_ramp_moves_only_the_ramping_members_slots() {
    let m = 65_537;
    let mut ids: Vec<(u32, u32)> = (0..200).map(|i| (i, 4)).collect();
    let full = set(&ids);
    let mut prev = core(built(&full, m), &full);
    let owned = |core: &Core| -> Vec<usize> {
        let indices = core.indices();
        (0..m as usize).filter(|&s| indices[s] == 7).collect()
    };
    let mut weight = 4;
    for w in [3, 2, 1, 0, 1, 2, 3, 4] {
        ids[7].1 = w;
        let next = set(&ids);
        let built = patch(&prev, &next, m).unwrap();
        check_balanced(&built, &next, m as usize, None);
        let next = core(built, &next);
        let (before, after) = (owned(&prev), owned(&next));
        if w < weight {
            assert!(after.iter().all(|s| before.contains(s)), "down to {w}");
        } else {
            assert!(before.iter().all(|s| after.contains(s)), "up to {w}");
        }
        let (a, b) = (prev.indices(), next.indices());
        let moved = (0..m as usize).filter(|&s| a[s] != b[s]).count();
        let change = before.len().abs_diff(after.len());
        // The ramping member's own change, plus the others' one-slot adjustments
        // to their shares.
        assert!(moved <= change + 200, "to {w}: {moved} moved for {change}");
        (prev, weight) = (next, w);
    }
}

/// A change of more than one member in eight, a different M or no weight at all is
/// built, not patched.
#[test]
fn large_changes_are_built() {
    let m = 1009;
    let ids: Vec<(u32, u32)> = (0..40).map(|i| (i, 1)).collect();
    let first = set(&ids);
    let prev = core(built(&first, m), &first);
    assert!(
        patch(&prev, &set(&ids[..34]), m).is_none(),
        "6 of 34 removed"
    );
    assert!(
        patch(&prev, &set(&ids[..36]), m).is_some(),
        "4 of 36 removed"
    );
    assert!(patch(&prev, &set(&ids), 1013).is_none(), "another M");
    let zero: Vec<(u32, u32)> = ids.iter().map(|&(id, _)| (id, 0)).collect();
    assert!(patch(&prev, &set(&zero), m).is_none(), "no weight");
}

/// Through `prepare`: past 65 537 slots a small change is patched at once, and the
/// background build then makes it identical to a from-scratch build; with
/// `with_incremental(false)` it is canonical at once.
#[test]
fn a_patched_table_becomes_canonical() {
    let names = |range: std::ops::Range<u32>| {
        Snapshot::build(range.map(|i| (format!("10.2.{i}:80"), Weight::ONE))).unwrap()
    };
    let (before, after) = (names(0..800), names(0..801));
    let maglev = Maglev::new().with_table_size(131_071).unwrap();
    let t1 = maglev.prepare(&before, None);
    assert!(t1.table().is_canonical());
    let t2 = maglev.prepare(&after, Some(&t1));
    assert!(!t2.table().ptr_eq(t1.table()));
    assert!(
        t2.table().wait_canonical(Duration::from_secs(120)),
        "the background build finishes"
    );
    let fresh = maglev.prepare(&after, None);
    assert_eq!(t2.table().entries(), fresh.table().entries());
    assert_eq!(snapshot_entries(&t2.table().core), fresh.table().entries());
    // Two patches in a row: the first one's build is stopped, the second finishes.
    let t3 = maglev.prepare(&before, Some(&t2));
    let t4 = maglev.prepare(&after, Some(&t3));
    assert!(t4.table().wait_canonical(Duration::from_secs(120)));
    assert_eq!(t4.table().entries(), fresh.table().entries());
    let t3_done = t3.table().wait_canonical(Duration::from_secs(120));
    let t3_status = t3.table().core.lock().status;
    assert!(t3_done == (t3_status == Status::Canonical));
    assert_ne!(t3_status, Status::Pending);

    let rebuilt = Maglev::new()
        .with_table_size(131_071)
        .unwrap()
        .with_incremental(false);
    let t5 = rebuilt.prepare(&after, Some(&t1));
    assert!(t5.table().is_canonical());
    assert_eq!(t5.table().entries(), fresh.table().entries());
    // The default size stays synchronous and canonical.
    let small = Maglev::new();
    let s1 = small.prepare(&names(0..100), None);
    let s2 = small.prepare(&names(0..101), Some(&s1));
    assert!(s2.table().is_canonical());
    assert_eq!(s2.table().len(), DEFAULT_TABLE_SIZE as usize);
}

#[test]
fn modular_inverse() {
    for m in [1009u64, 65_537, 5_000_011] {
        for skip in [1u64, 2, 3, 1000, m - 1] {
            assert_eq!(skip * pow_mod(skip, m - 2, m) % m, 1);
        }
    }
}
