//! Unit tests of the ring built from the previous one: the ring built from scratch.

use std::num::NonZeroU32;

use crate::backend::Weight;
use crate::pick::Picker;
use crate::{Pool, Ring};

/// A ring updated from the previous one is the ring built from scratch, point for
/// point, through inserts, removals and reweights — with the point cap binding
/// (every member's count moves) and not.
#[test]
fn a_ring_built_from_the_previous_one_is_the_ring_built_from_scratch() {
    for max in [u32::MAX, 2_000] {
        let ring = Ring::new()
            .with_points_per_weight(NonZeroU32::new(40).unwrap())
            .with_max_points(NonZeroU32::new(max).unwrap());
        let pool = Pool::new(ring.clone());
        let mut ids = pool
            .extend((0..60).map(|i| (format!("b{i}"), Weight::ONE)))
            .unwrap();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for step in 0..120 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let which = (state >> 8) as usize % ids.len();
            match state % 3 {
                0 => ids.push(
                    pool.insert(format!("n{step}"), Weight::new(1 + state % 3).unwrap())
                        .unwrap(),
                ),
                1 if ids.len() > 1 => drop(pool.remove(ids.swap_remove(which)).unwrap()),
                _ => pool
                    .set_weight(ids[which], Weight::new(1 + (state >> 20) % 4).unwrap())
                    .unwrap(),
            }
            let current = pool.snapshot();
            let fresh = ring.prepare(current.snapshot(), None);
            let updated: Vec<_> = current.table().table().points().collect();
            let scratch: Vec<_> = fresh.table().points().collect();
            assert_eq!(updated, scratch, "max {max}, step {step}");
        }
    }
}

/// Through a set shrinking from 300 members to 3 and growing back (the layout redone
/// both ways, the slots numbered again once most are free), with weights moving and
/// the cap binding on the way: the ring updated at each step is the ring built from
/// scratch.
#[test]
fn shrinking_and_growing_back_keeps_the_ring_exact() {
    let ring = Ring::new()
        .with_points_per_weight(NonZeroU32::new(20).unwrap())
        .with_max_points(NonZeroU32::new(9_000).unwrap());
    let pool = Pool::new(ring.clone());
    let weight = |i: usize| Weight::new(1 + (i as u64 * 7) % 5).unwrap();
    let mut ids = pool
        .extend((0..300).map(|i| (format!("10.0.{}.{}:80", i / 200, i % 200), weight(i))))
        .unwrap();
    let check = |step: &str| {
        let current = pool.snapshot();
        let fresh = ring.prepare(current.snapshot(), None);
        let updated: Vec<_> = current.table().table().points().collect();
        let scratch: Vec<_> = fresh.table().points().collect();
        assert_eq!(updated, scratch, "{step}");
    };
    let mut k = 0;
    while ids.len() > 3 {
        // Every third from the front, one at a time; now and then a batch.
        let at = (k * 3) % ids.len();
        if k % 10 == 9 && ids.len() > 20 {
            let batch: Vec<_> = ids.drain(..10).collect();
            for id in batch {
                drop(pool.remove(id).unwrap());
            }
        } else {
            drop(pool.remove(ids.remove(at)).unwrap());
        }
        k += 1;
        check(&format!("shrinking, {} left", ids.len()));
    }
    for i in 0..300 {
        ids.push(pool.insert(format!("back-{i}"), weight(i + 1)).unwrap());
        if i % 7 == 0 {
            let which = ids[(i * 13) % ids.len()];
            pool.set_weight(which, weight(i + 3)).unwrap();
        }
        check(&format!("growing, {} members", ids.len()));
    }
}

/// Tables are values: two changes from the same table give each its own ring and
/// leave the table as it was.
#[test]
fn changes_from_one_table_do_not_disturb_it() {
    use crate::Snapshot;
    let ring = Ring::new().with_points_per_weight(NonZeroU32::new(30).unwrap());
    let set = |names: &[&str]| {
        Snapshot::build(names.iter().map(|n| (n.to_string(), Weight::ONE))).unwrap()
    };
    let base = set(&["a", "b", "c", "d"]);
    let table = ring.prepare(&base, None);
    let before: Vec<_> = table.table().points().collect();
    // Same ids in both (0..n): the last member dropped, and one added.
    let fewer = set(&["a", "b", "c"]);
    let more = set(&["a", "b", "c", "d", "e"]);
    let from_fewer = ring.prepare(&fewer, Some(&table));
    let from_more = ring.prepare(&more, Some(&table));
    for (s, t) in [(&fewer, &from_fewer), (&more, &from_more)] {
        let scratch: Vec<_> = ring.prepare(s, None).table().points().collect();
        assert_eq!(t.table().points().collect::<Vec<_>>(), scratch);
    }
    assert_eq!(table.table().points().collect::<Vec<_>>(), before);
}
