//! The non-hashing pickers' documented claims that `tests/proptests.rs` does not cover,
//! each checked against an oracle written here from the module docs, not from the code:
//! round robin across membership changes, least loaded by in-flight ÷ weight with
//! uniform ties, P2C's distinct weighted candidates, Peak EWMA's rule for unmeasured
//! backends and its reaction to a slowing one, the uniformity of `Random`, and the
//! bound on smooth-WRR shares once weights are scaled down to fit the schedule.
//!
//! Every random source is seeded; statistical checks state their tolerance in σ or as a
//! chi-square critical value at p = 0.001, and each shows that the plausible wrong
//! implementation (first-of-ties, with-replacement or unweighted candidates, a biased
//! draw) falls outside it.

mod support;

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use support::*;
use tower_lb::pick::weighted_round_robin::MAX_SCHEDULE;
use tower_lb::{
    InFlight, LeastLoaded, PeakEwma, PickContext, Picker, Pool, PowerOfTwoChoices, Prepared,
    Random, RoundRobin, Snapshot, Weight, WeightedRoundRobin,
};

/// Binomial tolerance of the share checks, in standard deviations.
const SIGMAS: f64 = 5.0;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x7069_636b),
        ..ProptestConfig::default()
    }
}

/// Holds `loads[i]` requests in flight on backend i of `snapshot`.
fn hold<A>(snapshot: &Snapshot<A>, loads: &[usize]) -> Vec<InFlight> {
    let mut held = Vec::new();
    for (b, &l) in snapshot.backends().iter().zip(loads) {
        held.extend((0..l).map(|_| b.state().start()));
    }
    held
}

/// `|observed − n·p| ≤ SIGMAS · √(n·p·(1−p))`.
fn within_binomial(observed: u64, n: usize, p: f64) -> bool {
    let n = n as f64;
    (observed as f64 - n * p).abs() <= SIGMAS * (n * p * (1.0 - p)).sqrt()
}

// ---------------------------------------------------------------- round robin

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

// ---------------------------------------------------------------- Peak EWMA

/// Finagle's rule for a backend with no latency sample: cost 0 while nothing is in
/// flight on it (tried at once, whatever the measured ones cost), a penalty above every
/// measured cost once one request is in flight (not flooded before its first answer).
/// With a default RTT (tower's way) it is priced as if measured at that RTT instead.
#[test]
fn peak_ewma_follows_finagles_rule_for_unmeasured_backends() {
    let now = Instant::now();
    let ctx = PickContext::new().with_now(now);
    for seed in [1u64, 2, 3] {
        // Backend 0 measured at 1 ms with nothing in flight; backend 1 never measured.
        let snapshot = uniform(2);
        snapshot.backends()[0]
            .state()
            .record_rtt(Duration::from_millis(1), now);
        let picker = PeakEwma::with_seed(seed);
        let prepared = Prepared::new(&picker, snapshot);
        let backends = prepared.snapshot().backends();
        for _ in 0..100 {
            assert_eq!(
                prepared.pick(&picker, &ctx),
                Ok(1),
                "unmeasured and idle: tried at once"
            );
        }
        let first = backends[1].state().start();
        // Backend 0 now 1 ms × 51: still far below the penalty.
        let busy = hold(prepared.snapshot(), &[50, 0]);
        for _ in 0..100 {
            assert_eq!(
                prepared.pick(&picker, &ctx),
                Ok(0),
                "unmeasured with one in flight: not flooded"
            );
        }
        drop((first, busy));

        // With a default RTT of 5 ms, the unmeasured idle backend costs 5 ms × 1 > 1 ms × 1.
        let snapshot = uniform(2);
        snapshot.backends()[0]
            .state()
            .record_rtt(Duration::from_millis(1), now);
        let picker = PeakEwma::with_seed(seed).with_default_rtt(Duration::from_millis(5));
        let prepared = Prepared::new(&picker, snapshot);
        for _ in 0..100 {
            assert_eq!(
                prepared.pick(&picker, &ctx),
                Ok(0),
                "priced at the default RTT"
            );
        }
        // ... and against 1 ms × 6 in flight = 6 ms, it wins.
        let _busy = hold(prepared.snapshot(), &[5, 0]);
        for _ in 0..100 {
            assert_eq!(prepared.pick(&picker, &ctx), Ok(1));
        }
    }
}

/// The remembered leader: a backend that is strictly the cheapest wins every pick from
/// the first one it is drawn in (P2C alone gives it only the picks it is drawn in, about
/// 2/n); when it stops being the cheapest, a cheaper random candidate takes the lead
/// from the next pick it is drawn in, and the old leader gets nothing more.
#[test]
fn peak_ewma_keeps_the_cheapest_backend_as_its_leader() {
    const N: usize = 10;
    const PICKS: usize = 300;
    let now = Instant::now();
    let ctx = PickContext::new().with_now(now);
    for seed in [1u64, 2, 3] {
        let snapshot = uniform(N);
        for (i, b) in snapshot.backends().iter().enumerate() {
            let ms = if i == 7 { 1 } else { 10 };
            b.state().record_rtt(Duration::from_millis(ms), now);
        }
        let picker = PeakEwma::with_seed(seed);
        let prepared = Prepared::new(&picker, snapshot);
        let got: Vec<usize> = (0..PICKS)
            .map(|_| prepared.pick(&picker, &ctx).unwrap())
            .collect();
        let first = got
            .iter()
            .position(|&i| i == 7)
            .expect("drawn at least once");
        assert!(
            got[first..].iter().all(|&i| i == 7),
            "seed {seed}: the leader lost a pick: {got:?}"
        );
        // 0.8^40 ≈ 1e-4: it is drawn early.
        assert!(first < 40, "seed {seed}: first drawn at pick {first}");

        // Backend 7 now carries 20 requests (1 ms × 21 = 21 ms > 10 ms × 1): it is no
        // longer the cheapest, and every pick draws at least one cheaper backend: it gets
        // none.
        let _held = hold(prepared.snapshot(), &[0, 0, 0, 0, 0, 0, 0, 20, 0, 0]);
        let got: Vec<usize> = (0..PICKS)
            .map(|_| prepared.pick(&picker, &ctx).unwrap())
            .collect();
        let moved = got.iter().position(|&i| i != 7).expect("the lead moves");
        assert_eq!(moved, 0, "seed {seed}: the lead moved only at pick {moved}");
        assert!(
            got[moved..].iter().all(|&i| i != 7),
            "seed {seed}: the old leader was picked: {got:?}"
        );
    }
}

/// "Reacts to a slowing backend at once": one sample above the estimate replaces it, so
/// the next pick already avoids the backend that slowed down, with no averaging delay.
#[test]
fn peak_ewma_reacts_to_a_slowing_backend_at_once() {
    let t0 = Instant::now();
    let snapshot = uniform(2);
    for b in snapshot.backends() {
        // A long history at 10 ms.
        for k in 0..100 {
            b.state().record_rtt(
                Duration::from_millis(10),
                t0 + Duration::from_millis(10 * k),
            );
        }
    }
    let picker = PeakEwma::with_seed(9);
    let prepared = Prepared::new(&picker, snapshot);
    let t1 = t0 + Duration::from_secs(1);
    let ctx = PickContext::new().with_now(t1);
    // One slow answer from backend 1 (30 ms): its cost triples at once.
    prepared.snapshot().backends()[1]
        .state()
        .record_rtt(Duration::from_millis(30), t1);
    // Backend 0 may even carry one request more (10 ms × 2 = 20 < 30 ms × 1).
    let _busy = hold(prepared.snapshot(), &[1, 0]);
    for _ in 0..100 {
        assert_eq!(prepared.pick(&picker, &ctx), Ok(0));
    }
}

// ---------------------------------------------------------------- random

/// `Random` is uniform: over 100 000 seeded picks its counts pass a chi-square test at
/// p = 0.001, for any n from 2 to 40, as the weighted one does against its weights. A
/// draw biased by 1% towards one member already fails it at these sizes.
#[test]
fn random_passes_chi_square() {
    const PICKS: usize = 100_000;
    for (n, seed) in [(2usize, 1u64), (3, 2), (5, 3), (7, 4), (16, 5), (40, 6)] {
        let picker = Random::with_seed(seed);
        let prepared = Prepared::new(&picker, uniform(n));
        let counts = histogram(&picks(&picker, &prepared, PICKS), n);
        let shares = vec![1.0 / n as f64; n];
        let stat = chi_square(&counts, &shares);
        let critical = chi_square_critical_p001(n - 1);
        assert!(
            stat <= critical,
            "n = {n}: χ² {stat:.1} > {critical:.1}: {counts:?}"
        );
        // The same counts with 1% of all picks moved onto member 0.
        let mut biased = counts.clone();
        let moved = PICKS as u64 / 100;
        biased[0] += moved;
        let from = biased
            .iter()
            .enumerate()
            .skip(1)
            .max_by_key(|c| c.1)
            .unwrap()
            .0;
        biased[from] -= moved;
        assert!(
            chi_square(&biased, &shares) > critical,
            "n = {n}: a 1% bias would pass"
        );
    }
}

// ---------------------------------------------------------------- smooth WRR, scaled

/// The largest |countᵢ/len − wᵢ/Σw| of a schedule, in units of 1/`MAX_SCHEDULE`.
fn schedule_error(weights: &[u64]) -> (f64, bool) {
    let snapshot = Snapshot::build(
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (i, Weight::new(w).unwrap())),
    )
    .unwrap();
    let schedule = WeightedRoundRobin::new().prepare(&snapshot, None);
    // "At most MAX_SCHEDULE + n entries", and a cycle holds every member.
    let len = schedule.order().len();
    assert!(
        (weights.len()..=MAX_SCHEDULE as usize + weights.len()).contains(&len),
        "a schedule of {len} entries for {} members",
        weights.len()
    );
    let len = len as f64;
    let total: f64 = weights.iter().map(|&w| w as f64).sum();
    let mut counts = vec![0f64; weights.len()];
    for &i in schedule.order() {
        counts[i as usize] += 1.0;
    }
    let worst = counts
        .iter()
        .zip(weights)
        .map(|(c, &w)| (c / len - w as f64 / total).abs())
        .fold(0.0, f64::max);
    (worst * MAX_SCHEDULE as f64, schedule.is_exact())
}

/// Weights too large for an exact cycle are scaled down, and shares stay close to the
/// weights: within n/`MAX_SCHEDULE` of each member's share of the total for n members
/// (measured: at most n − 1 units). Weights that fit are exact (error 0).
///
/// The module docs promise 1/`MAX_SCHEDULE` per member; that does not hold for more than
/// two or three members (see `smooth_wrr_scaled_shares_within_one_part_in_max_schedule`).
#[test]
fn smooth_wrr_scaled_shares_stay_close_to_the_weights() {
    let big = u64::from(u32::MAX);
    let cases: Vec<Vec<u64>> = vec![
        vec![big, 1, big - 1],
        vec![1_000_003, 999_983, 70_001, 3],
        (0..200).map(|i| 1_000_000 + i * 7919).collect(),
        std::iter::once(4_000_000_000).chain(1_000..1_100).collect(),
        vec![big, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        // Scaled to 44 815 and 20 720, which still share a factor of 5.
        vec![1_095_583_148, 506_526_969],
    ];
    for weights in cases {
        let (error, exact) = schedule_error(&weights);
        assert!(!exact, "{} members: scaled", weights.len());
        assert!(
            error <= weights.len() as f64,
            "{} members: a share is {error:.2}/{MAX_SCHEDULE} off",
            weights.len()
        );
    }
    let (error, exact) = schedule_error(&[60_000, 5_000, 536]);
    assert!(exact && error == 0.0, "{error}");
}

/// The module docs' bound: once weights are scaled, every share is within
/// (1 + r)/`MAX_SCHEDULE` of exact, r the number of members whose exact quota is below
/// one entry (they are raised to one). Before the largest-remainder apportionment, each
/// weight was floored on its own and a large member absorbed every other's rounding
/// (1 000 003, 999 983, 70 001, 3: 2.x parts off with r = 1; 200 weights near 10⁶: up to
/// 199 parts with r = 0) — this test failed then.
#[test]
fn smooth_wrr_scaled_shares_within_one_part_in_max_schedule() {
    let big = u64::from(u32::MAX);
    for weights in [
        std::iter::once(4_000_000_000u64)
            .chain(1_000..1_100)
            .collect::<Vec<_>>(),
        vec![big, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        vec![1_000_003, 999_983, 70_001, 3],
        (0..200).map(|i| 1_000_000 + i * 7919).collect(),
        vec![big, 1, big - 1],
    ] {
        let total: f64 = weights.iter().map(|&w| w as f64).sum();
        let raised = weights
            .iter()
            .filter(|&&w| (w as f64 / total) * (MAX_SCHEDULE as f64) < 1.0)
            .count();
        let (error, _) = schedule_error(&weights);
        assert!(
            error <= 1.0 + raised as f64,
            "{} members ({raised} raised): {error:.2}/{MAX_SCHEDULE} off",
            weights.len()
        );
    }
}

// ---------------------------------------------------------------- seeds

/// `with_seed` makes a picker's draws reproducible: two pickers with the same seed pick
/// the same sequence over the same set, whatever the strategy, and another seed picks
/// another sequence. A `with_seed` that fell back to the per-thread generator fails.
#[test]
fn seeded_pickers_are_reproducible() {
    fn sequence<P: Picker<usize>>(make: impl Fn(u64) -> P, seed: u64) -> Vec<usize> {
        let picker = make(seed);
        let prepared = Prepared::new(&picker, snapshot(&[1, 2, 3, 4, 5, 6, 7, 8]));
        picks(&picker, &prepared, 200)
    }
    fn check<P: Picker<usize>>(name: &str, make: impl Fn(u64) -> P) {
        let (a, b, other) = (
            sequence(&make, 42),
            sequence(&make, 42),
            sequence(&make, 43),
        );
        assert_eq!(a, b, "{name}: the same seed, another sequence");
        assert_ne!(a, other, "{name}: another seed, the same sequence");
    }
    check("Random", Random::with_seed);
    check("WeightedRandom", tower_lb::WeightedRandom::with_seed);
    check("LeastLoaded", LeastLoaded::with_seed);
    check("PowerOfTwoChoices", PowerOfTwoChoices::with_seed);
    check("PeakEwma", PeakEwma::with_seed);
}

/// Weighted P2C with nothing in flight (a light, sequential load): every comparison is
/// a tie, and shares still follow the weights — the first candidate is drawn ∝ weight
/// and keeps a tie. Chi-square at p = 0.001 over 40 000 picks. Ties sent to the second
/// candidate instead (drawn ∝ weight among the *others*) would give weights 1, 2, 3, 4
/// shares of about 0.13, 0.24, 0.31, 0.32 and fail it.
#[test]
fn weighted_p2c_idle_shares_follow_the_weights() {
    const PICKS: usize = 40_000;
    for (weights, seed) in [
        (vec![1u32, 2, 3, 4], 1u64),
        (vec![5, 1, 1], 2),
        (vec![1, 9], 3),
    ] {
        let picker = PowerOfTwoChoices::with_seed(seed);
        let prepared = Prepared::new(&picker, snapshot(&weights));
        let counts = histogram(&picks(&picker, &prepared, PICKS), weights.len());
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let shares: Vec<f64> = weights.iter().map(|&w| f64::from(w) / total).collect();
        let stat = chi_square(&counts, &shares);
        let critical = chi_square_critical_p001(weights.len() - 1);
        assert!(
            stat <= critical,
            "{weights:?}: {counts:?} (χ² {stat:.1} > {critical:.1})"
        );
    }
}

// ---------------------------------------------------------------- Peak EWMA's cost, part by part

/// `PickContext` carries what it is given: the affinity hash, and the caller's "now"
/// (to the nanosecond), which Peak EWMA reads instead of the clock — estimates decay to
/// *that* time. Backend 0 answered in 100 ms at t₀, backend 1 in 1 ms at t₀ + 60 s:
/// seen from t₀ + 60 s, backend 0's estimate has decayed by e^(−6) to 0.25 ms and wins;
/// a picker that read its own clock (≈ t₀) would see 100 ms against 1 ms.
#[test]
fn peak_ewma_reads_the_callers_now() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(60);
    let ctx = PickContext::new().with_hash(7).with_now(later);
    assert_eq!(ctx.hash(), Some(7));
    let now = ctx.now().expect("a now");
    assert!(
        now.max(later) - now.min(later) < Duration::from_micros(1),
        "{now:?}"
    );
    assert_eq!(PickContext::new().hash(), None);
    assert_eq!(PickContext::new().now(), None);

    let snapshot = uniform(2);
    snapshot.backends()[0]
        .state()
        .record_rtt(Duration::from_millis(100), t0);
    snapshot.backends()[1]
        .state()
        .record_rtt(Duration::from_millis(1), later);
    let picker = PeakEwma::with_seed(4);
    let prepared = Prepared::new(&picker, snapshot);
    for _ in 0..50 {
        assert_eq!(prepared.pick(&picker, &ctx), Ok(0));
    }
}

/// Peak EWMA's cost is estimate × (in flight + 1) × 2^score ÷ weight, each part checked
/// where it decides a comparison (equal latencies unless said):
/// - ÷ weight: weights 1 and 4, two requests in flight on the heavy one: 3/4 < 1;
/// - × 2^score: three recent failures (×8) on an idle backend lose to 2 in flight (×3);
/// - a failing backend's estimate is at least its rival's: failing at 1 ms (×2 for one
///   failure) loses to a healthy 10 ms, measured or not;
/// - a measured 0 ns (an in-process backend) is a measurement, not "unmeasured": with one
///   in flight it costs 0, not the penalty;
/// - among unmeasured backends the penalty grows with each request in flight.
#[test]
fn peak_ewma_cost_weighs_latency_load_failures_and_weight() {
    let now = Instant::now();
    let ctx = PickContext::new().with_now(now);
    let rtt = |s: &Snapshot<usize>, i: usize, ms: u64| {
        s.backends()[i]
            .state()
            .record_rtt(Duration::from_millis(ms), now)
    };
    let fail = |s: &Snapshot<usize>, i: usize, times: usize| {
        for _ in 0..times {
            s.backends()[i].state().start().failure();
        }
    };
    let always = |s: Snapshot<usize>, want: usize, what: &str| {
        let picker = PeakEwma::with_seed(5);
        let prepared = Prepared::new(&picker, s);
        for _ in 0..100 {
            assert_eq!(prepared.pick(&picker, &ctx), Ok(want), "{what}");
        }
    };

    let s = snapshot(&[1, 4]);
    rtt(&s, 0, 10);
    rtt(&s, 1, 10);
    let _held = hold(&s, &[0, 2]);
    always(s, 1, "÷ weight");

    let s = uniform(2);
    rtt(&s, 0, 10);
    rtt(&s, 1, 10);
    let _held = hold(&s, &[0, 2]);
    fail(&s, 0, 3);
    always(s, 1, "× 2^score");

    let s = uniform(2);
    rtt(&s, 0, 1);
    rtt(&s, 1, 10);
    fail(&s, 0, 1);
    always(s, 1, "a failing backend's estimate is at least its rival's");
    // Unmeasured and failing (a failure reported with no latency): not tried "at once".
    let pool = Pool::new(PeakEwma::with_seed(6));
    let ids = pool
        .extend([(0usize, Weight::ONE), (1, Weight::ONE)])
        .unwrap();
    rtt(pool.snapshot().snapshot(), 1, 10);
    pool.report(ids[0], tower_lb::health::Outcome::failure())
        .unwrap();
    for _ in 0..100 {
        assert_eq!(
            pool.pick(&ctx).unwrap().id(),
            ids[1],
            "unmeasured and failing"
        );
    }

    let s = uniform(2);
    s.backends()[0].state().record_rtt(Duration::ZERO, now);
    rtt(&s, 1, 1);
    let _held = hold(&s, &[1, 0]);
    always(s, 0, "a measured 0 ns");

    let s = uniform(2);
    let _held = hold(&s, &[2, 1]);
    always(s, 1, "the penalty grows with the requests in flight");
}

/// Peak EWMA with unequal weights and nothing measured yet (every cost 0, every
/// comparison a tie): shares follow the weights, as weighted P2C's do.
#[test]
fn peak_ewma_idle_shares_follow_the_weights() {
    const PICKS: usize = 40_000;
    let weights = [1u32, 2, 3, 4];
    let picker = PeakEwma::with_seed(8);
    let prepared = Prepared::new(&picker, snapshot(&weights));
    let counts = histogram(&picks(&picker, &prepared, PICKS), weights.len());
    let shares: Vec<f64> = weights.iter().map(|&w| f64::from(w) / 10.0).collect();
    let stat = chi_square(&counts, &shares);
    let critical = chi_square_critical_p001(weights.len() - 1);
    assert!(
        stat <= critical,
        "{counts:?} (χ² {stat:.1} > {critical:.1})"
    );
}

// ---------------------------------------------------------------- stale tables

/// A picker handed a table prepared for another snapshot (a caller driving `Picker`
/// by hand) stays correct: it returns an eligible member of the snapshot it is given,
/// never `None` while one exists, never a panic — for tables longer and shorter than the
/// snapshot's eligible list.
#[test]
fn a_table_from_another_snapshot_still_gives_an_eligible_member() {
    fn check<P: Picker<usize>>(name: &str, picker: P) {
        let five = snapshot(&[1, 2, 3, 4, 5]);
        let two_of_five = snapshot(&[3, 1, 4, 1, 5]).with_eligibility(|i| i == 1 || i == 4);
        let three = snapshot(&[2, 7, 1]);
        for (from, to) in [(&five, &two_of_five), (&three, &five), (&five, &three)] {
            let stale = picker.prepare(from, None);
            for _ in 0..200 {
                let got = picker.pick(&stale, to, &PickContext::new());
                assert!(
                    got.is_some_and(|i| to.is_eligible(i)),
                    "{name}: {got:?} from a stale table"
                );
            }
        }
    }
    check("RoundRobin", RoundRobin::new());
    check("WeightedRoundRobin", WeightedRoundRobin::new());
    check("Random", Random::with_seed(1));
    check("WeightedRandom", tower_lb::WeightedRandom::with_seed(1));
    check("LeastLoaded", LeastLoaded::with_seed(1));
    check("PowerOfTwoChoices", PowerOfTwoChoices::with_seed(1));
    check("PeakEwma", PeakEwma::with_seed(1));
}
