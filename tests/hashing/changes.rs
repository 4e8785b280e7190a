//! Tables updated from the previous one (Jump's key order, Rendezvous' key hashes reused
//! for the members that stay, the ring's pages patched) are the tables built from
//! scratch: through inserts, removals, reweights and a batch large enough to take the
//! full path.

use super::*;

/// A seeded walk of membership changes on a pool of `picker`, checking `same` against a
/// table built from scratch after every step.
fn walk<P: Picker<String> + Clone + 'static>(
    picker: P,
    same: impl Fn(&P, &tower_lb::Prepared<String, P::Table>, &P::Table),
) {
    let pool = Pool::new(picker.clone());
    let mut ids = pool
        .extend((0..200).map(|i| (format!("10.0.{}.{}:80", i / 250, i % 250), Weight::ONE)))
        .unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for step in 0..150 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let which = (state >> 8) as usize % ids.len();
        match state % 5 {
            0 | 1 => ids.push(
                pool.insert(
                    format!("new-{step}:80"),
                    Weight::new(1 + state % 3).unwrap(),
                )
                .unwrap(),
            ),
            2 if ids.len() > 2 => drop(pool.remove(ids.swap_remove(which)).unwrap()),
            3 => pool
                .set_weight(ids[which], Weight::new(1 + (state >> 20) % 4).unwrap())
                .unwrap(),
            // A batch past the small-change bound: the full path.
            _ => ids.extend(
                pool.extend((0..12).map(|k| (format!("batch-{step}-{k}:80"), Weight::ONE)))
                    .unwrap(),
            ),
        }
        let current = pool.snapshot();
        let fresh = picker.prepare(current.snapshot(), None);
        same(&picker, &current, &fresh);
    }
}

#[test]
fn jump_updated_is_jump_from_scratch() {
    walk(Jump::new(), |_, current, fresh| {
        assert_eq!(current.table().table().buckets(), fresh.table().buckets());
    });
}

#[test]
fn rendezvous_updated_places_every_key_as_from_scratch() {
    let keys = keys(0x5EED_0C4A, 500);
    walk(Rendezvous::new(), |picker, current, fresh| {
        for &key in &keys {
            assert_eq!(
                picker.pick(current.table(), current.snapshot(), &ctx(key)),
                picker.pick(fresh, current.snapshot(), &ctx(key)),
                "key {key:#x}"
            );
        }
    });
}

#[test]
fn ring_updated_is_ring_from_scratch() {
    // With the cap binding too (every member's count scaled, so changes move other
    // members' counts): the same points either way.
    for max in [u32::MAX, 20_000] {
        let ring = Ring::new()
            .with_points_per_weight(NonZeroU32::new(40).unwrap())
            .with_max_points(NonZeroU32::new(max).unwrap());
        walk(ring, |_, current, fresh| {
            let updated: Vec<_> = current.table().table().points().collect();
            let scratch: Vec<_> = fresh.table().points().collect();
            assert_eq!(updated, scratch);
        });
    }
}
