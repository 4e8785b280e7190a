//! Robustness: picks are total, keyless requests use the fallback, empty sets give none.

use super::*;

// ---------------------------------------------------------------- robustness

proptest! {
    #![proptest_config(config(CASES))]

    /// Whatever the snapshot and table (even a table prepared for another snapshot), a
    /// pick never panics and returns an eligible member or none.
    #[test]
    fn picks_are_total(
        a in ids(0..=20),
        b in ids(0..=20),
        mask in any::<u32>(),
        hashes in prop::collection::vec(any::<u64>(), 1..50),
    ) {
        let (sa, sb) = (snapshot(&a, true), snapshot(&b, true).with_eligibility(|i| mask >> (i % 32) & 1 == 1));
        fn check<P: Picker<String>>(p: &P, sa: &Snapshot<String>, sb: &Snapshot<String>, hashes: &[u64]) -> Result<(), TestCaseError> {
            let table = p.prepare(sa, None);
            for &h in hashes {
                for c in [ctx(h), PickContext::new()] {
                    if let Some(i) = p.pick(&table, sb, &c) {
                        prop_assert!(sb.is_eligible(i));
                    }
                }
            }
            let own = p.prepare(sb, None);
            for &h in hashes {
                let got = p.pick(&own, sb, &ctx(h));
                prop_assert_eq!(got.is_some(), !sb.eligible().is_empty());
            }
            Ok(())
        }
        check(&Maglev::new().with_table_size(509).unwrap(), &sa, &sb, &hashes)?;
        check(&Ring::new(), &sa, &sb, &hashes)?;
        check(&Rendezvous::new(), &sa, &sb, &hashes)?;
        check(&Jump::new(), &sa, &sb, &hashes)?;
        check(&BoundedLoad::new(Ring::new()), &sa, &sb, &hashes)?;
    }
}

/// A request without a key goes to the fallback: round robin by default, or the one given.
#[test]
fn requests_without_a_key_use_the_fallback() {
    let s = snapshot(&[1, 2, 3], false);
    let maglev = Maglev::new();
    let table = maglev.prepare(&s, None);
    let picks: Vec<usize> = (0..6)
        .map(|_| maglev.pick(&table, &s, &PickContext::new()).unwrap())
        .collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);

    struct Last;
    impl Picker<String> for Last {
        type Table = ();
        fn prepare(&self, _: &Snapshot<String>, _: Option<&()>) {}
        fn pick(&self, _: &(), s: &Snapshot<String>, _: &PickContext) -> Option<usize> {
            s.eligible().last().map(|&i| i as usize)
        }
    }
    let ring = Ring::new().with_fallback(Last);
    let table = ring.prepare(&s, None);
    assert_eq!(ring.pick(&table, &s, &PickContext::new()), Some(2));
    let _: &RoundRobin = Rendezvous::new().fallback();
}

/// Empty sets and sets with nothing eligible give no pick, never a panic.
#[test]
fn empty_and_all_down_sets_give_none() {
    let empty = snapshot(&[], false);
    let down = snapshot(&[1, 2], false).with_eligibility(|_| false);
    for s in [&empty, &down] {
        for c in [ctx(42), PickContext::new()] {
            let m = Maglev::new();
            assert_eq!(m.pick(&m.prepare(s, None), s, &c), None);
            let r = Ring::new();
            assert_eq!(r.pick(&r.prepare(s, None), s, &c), None);
            let h = Rendezvous::new();
            assert_eq!(h.pick(&h.prepare(s, None), s, &c), None);
            let j = Jump::new();
            assert_eq!(j.pick(&j.prepare(s, None), s, &c), None);
            let b = BoundedLoad::new(Maglev::new());
            assert_eq!(b.pick(&b.prepare(s, None), s, &c), None);
        }
    }
}

/// The tables describe themselves in debug output: their size and members (Maglev's M
/// slots, the ring's V = 160 points per unit of weight, a bucket per member for jump,
/// and whether rendezvous' weights are uniform), inside the fallback wrapper.
#[test]
fn tables_describe_themselves_in_debug_output() {
    let uniform = snapshot(&[1, 2, 3], false);
    let debug = |table: &dyn std::fmt::Debug| format!("{table:?}");
    assert_eq!(
        debug(&Maglev::new().prepare(&uniform, None)),
        format!(
            "WithFallback {{ table: MaglevTable {{ size: {DEFAULT_TABLE_SIZE}, members: 3 }}, .. }}"
        )
    );
    assert_eq!(
        debug(Ring::new().prepare(&uniform, None).table()),
        "RingTable { points: 480, members: 3 }"
    );
    assert_eq!(
        debug(Jump::new().prepare(&uniform, None).table()),
        "JumpTable { buckets: 3 }"
    );
    assert_eq!(
        debug(Rendezvous::new().prepare(&uniform, None).table()),
        "RendezvousTable { members: 3, uniform: true }"
    );
    let weighted = snapshot(&[1, 2, 3], true);
    assert_eq!(
        debug(Rendezvous::new().prepare(&weighted, None).table()),
        "RendezvousTable { members: 3, uniform: false }"
    );
}

/// The ring reports its settings and size (V points per unit of weight, none without
/// members), and both ring and rendezvous declare that they place by the request's key.
#[test]
fn ring_and_rendezvous_report_their_settings() {
    let ring = Ring::new();
    assert_eq!(ring.points_per_weight(), 160);
    let ring = ring
        .with_points_per_weight(NonZeroU32::new(7).unwrap())
        .with_fallback(RoundRobin::new());
    assert_eq!(ring.points_per_weight(), 7);
    let three = ring.prepare(&snapshot(&[1, 2, 3], false), None);
    assert_eq!((three.table().len(), three.table().is_empty()), (21, false));
    let none = ring.prepare(&snapshot(&[], false), None);
    assert_eq!((none.table().len(), none.table().is_empty()), (0, true));
    assert!(Picker::<String>::uses_affinity(&ring));
    assert!(Picker::<String>::uses_affinity(&Rendezvous::new()));
    assert!(!Picker::<String>::uses_affinity(&RoundRobin::new()));
}

/// Rendezvous' preference walk past its exact passes (the best 32 refused): the answer is
/// still the best-scored member `accept` takes, which is the pick when only the accepted
/// members are eligible.
#[test]
fn rendezvous_finds_the_best_accepted_member_beyond_the_first_32() {
    let ids: Vec<u32> = (0..100).collect();
    for weighted in [false, true] {
        let all = snapshot(&ids, weighted);
        let accepted = |i: usize| i % 50 == 7;
        let only = all.with_eligibility(accepted);
        let p = Rendezvous::new();
        let (t_all, t_only) = (p.prepare(&all, None), p.prepare(&only, None));
        for key in keys(0x5EED_0020, 400) {
            let expected = p.pick(&t_only, &only, &ctx(key));
            assert_eq!(
                p.find(Lookup::new(&t_all, &all, key), accepted),
                expected,
                "key {key:#x}"
            );
        }
    }
}
