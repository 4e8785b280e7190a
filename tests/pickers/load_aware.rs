//! Round robin across membership changes, least loaded by in-flight ÷ weight with uniform
//! ties, P2C's distinct weighted candidates.

use super::*;

/// "The rotation continues across membership changes instead of restarting at the
/// first member": the counter lives in the picker, so after an insert or a removal the
/// next pick is the next turn over the new eligible list — turn t picks eligible[t mod n].
/// A round robin whose counter restarted with each snapshot would pick the first member
/// right after every change.
#[test]
fn round_robin_continues_across_membership_changes() {
    let pool = Pool::new(RoundRobin::new());
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
        .unwrap();
    let next =
        |pool: &Pool<&'static str, RoundRobin>| *pool.pick(&PickContext::new()).unwrap().addr();
    assert_eq!([next(&pool), next(&pool)], ["a", "b"]);
    // Turn 2 over [a, b, c, d]: c, then d, a, b.
    pool.insert("d", Weight::ONE).unwrap();
    assert_eq!(
        [next(&pool), next(&pool), next(&pool), next(&pool)],
        ["c", "d", "a", "b"]
    );
    // Turn 6 over [a, c, d]: 6 mod 3 = 0 → a; then c, d.
    pool.remove(ids[1]).unwrap();
    assert_eq!([next(&pool), next(&pool), next(&pool)], ["a", "c", "d"]);
    // Turn 9 over [a, c, d, e]: 9 mod 4 = 1 → c. A restarted rotation would say a.
    pool.insert("e", Weight::ONE).unwrap();
    assert_eq!([next(&pool), next(&pool)], ["c", "d"]);
}

// ---------------------------------------------------------------- least loaded

proptest! {
    #![proptest_config(config(96))]

    /// Least loaded returns a member with the least in-flight ÷ weight, compared here in
    /// exact integers (lᵢ·wⱼ against lⱼ·wᵢ). A picker ignoring weights, or comparing
    /// in-flight counts alone, picks a member with fewer requests but a higher ratio.
    #[test]
    fn least_loaded_picks_the_least_in_flight_per_weight(
        members in prop::collection::vec((0usize..12, 1u32..9), 2..10),
        seed: u64,
    ) {
        let (loads, weights): (Vec<usize>, Vec<u32>) = members.into_iter().unzip();
        let snapshot = snapshot(&weights);
        let _held = hold(&snapshot, &loads);
        let picker = LeastLoaded::with_seed(seed);
        let prepared = Prepared::new(&picker, snapshot);
        let ratio_le = |i: usize, j: usize| loads[i] as u64 * u64::from(weights[j]) <= loads[j] as u64 * u64::from(weights[i]);
        for i in picks(&picker, &prepared, 20) {
            prop_assert!(
                (0..loads.len()).all(|j| ratio_le(i, j)),
                "picked {} ({} in flight, weight {}) from loads {:?} weights {:?}",
                i, loads[i], weights[i], loads, weights
            );
        }
    }
}

/// Ties are broken uniformly at random: over 30 000 picks the tied members' counts pass
/// a chi-square test at p = 0.001 — also when the tied members are not the first ones and
/// weights differ (ratios 0/w tie whatever w). A picker taking the first minimum sends
/// every pick to one member and fails by thousands.
#[test]
fn least_loaded_breaks_ties_uniformly() {
    const PICKS: usize = 30_000;
    for (loads, weights) in [
        (vec![0usize, 0, 0, 0], vec![1u32, 1, 1, 1]),
        (vec![3, 0, 2, 0, 0, 1], vec![1, 1, 1, 1, 1, 1]),
        (vec![0, 4, 0, 0], vec![1, 2, 5, 9]),
        (vec![2, 1, 4, 2], vec![2, 1, 4, 2]),
    ] {
        let snapshot = snapshot(&weights);
        let _held = hold(&snapshot, &loads);
        // The tied members, by the documented rule: least load ÷ weight.
        let least = (0..loads.len())
            .min_by(|&i, &j| {
                (loads[i] as u64 * u64::from(weights[j]))
                    .cmp(&(loads[j] as u64 * u64::from(weights[i])))
            })
            .unwrap();
        let tied: Vec<usize> = (0..loads.len())
            .filter(|&j| {
                loads[j] as u64 * u64::from(weights[least])
                    == loads[least] as u64 * u64::from(weights[j])
            })
            .collect();
        assert!(tied.len() >= 2, "a tie is set up: {loads:?} {weights:?}");
        let picker = LeastLoaded::with_seed(17);
        let prepared = Prepared::new(&picker, snapshot);
        let counts = histogram(&picks(&picker, &prepared, PICKS), loads.len());
        let observed: Vec<u64> = tied.iter().map(|&j| counts[j]).collect();
        assert_eq!(
            observed.iter().sum::<u64>(),
            PICKS as u64,
            "only tied members: {counts:?}"
        );
        let shares = vec![1.0 / tied.len() as f64; tied.len()];
        let stat = chi_square(&observed, &shares);
        let critical = chi_square_critical_p001(tied.len() - 1);
        assert!(
            stat <= critical,
            "{loads:?} {weights:?}: ties {tied:?} got {observed:?} (χ² {stat:.1} > {critical:.1})"
        );
        // First-of-ties would put everything on one member.
        let first_only = {
            let mut v = vec![0u64; tied.len()];
            v[0] = PICKS as u64;
            v
        };
        assert!(chi_square(&first_only, &shares) > critical);
    }
}

// ---------------------------------------------------------------- power of two choices

proptest! {
    #![proptest_config(config(96))]

    /// The two candidates are distinct, with or without weights: the member with the
    /// strictly highest in-flight ÷ weight loses every comparison, so it is never picked.
    /// Drawing with replacement would sometimes "compare" it with itself and pick it.
    #[test]
    fn p2c_never_picks_the_busiest_member(
        members in prop::collection::vec((0usize..6, 1u32..5), 2..7),
        busiest in any::<prop::sample::Index>(),
        weighted in any::<bool>(),
        seed: u64,
    ) {
        let (mut loads, mut weights): (Vec<usize>, Vec<u32>) = members.into_iter().unzip();
        if !weighted {
            weights.iter_mut().for_each(|w| *w = 1);
        }
        let busiest = busiest.index(loads.len());
        // Above every other ratio: 7 per unit of weight against at most 5.
        loads[busiest] = 7 * weights[busiest] as usize;
        let snapshot = snapshot(&weights);
        let _held = hold(&snapshot, &loads);
        let picker = PowerOfTwoChoices::with_seed(seed);
        let prepared = Prepared::new(&picker, snapshot);
        let counts = histogram(&picks(&picker, &prepared, 300), loads.len());
        prop_assert_eq!(counts[busiest], 0, "loads {:?} weights {:?}: {:?}", loads, weights, counts);
    }
}

/// With unequal weights the candidates are drawn in proportion to weight, without
/// replacement. Set up so that every comparison is decided (ratios 0 < 5 < 12.5 for
/// weights 1, 1, 8), the best member is picked exactly when it is a candidate:
/// 1 − P(pair = {1, 2}) = 1 − (p₁p₂/(1−p₁) + p₂p₁/(1−p₂)) ≈ 0.511 by the weights; 2/3
/// for unweighted candidates, 1 − (1−p₀)² = 0.19 with replacement.
#[test]
fn p2c_candidates_are_drawn_in_proportion_to_weight() {
    const PICKS: usize = 40_000;
    let weights = [1u32, 1, 8];
    let loads = [0usize, 5, 100];
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let p: Vec<f64> = weights.iter().map(|&w| f64::from(w) / total).collect();
    let pair_without_best = p[1] * p[2] / (1.0 - p[1]) + p[2] * p[1] / (1.0 - p[2]);
    let want = 1.0 - pair_without_best;
    for (other, name) in [
        (2.0 / 3.0, "uniform candidates"),
        (1.0 - (1.0 - p[0]).powi(2), "with replacement"),
    ] {
        assert!(
            !within_binomial((other * PICKS as f64) as u64, PICKS, want),
            "{name} is told apart"
        );
    }
    for seed in [3u64, 4, 5] {
        let snapshot = snapshot(&weights);
        let _held = hold(&snapshot, &loads);
        let picker = PowerOfTwoChoices::with_seed(seed);
        let prepared = Prepared::new(&picker, snapshot);
        let counts = histogram(&picks(&picker, &prepared, PICKS), 3);
        assert_eq!(counts[2], 0, "the busiest is never picked: {counts:?}");
        assert!(
            within_binomial(counts[0], PICKS, want),
            "seed {seed}: best picked {} of {PICKS}, want {:.0} (p = {want:.4}): {counts:?}",
            counts[0],
            want * PICKS as f64
        );
    }
}
