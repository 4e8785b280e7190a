//! Every strategy spreads requests over real servers as its weights say.

use super::*;

#[tokio::test]
async fn every_strategy_distributes_over_real_servers() {
    assert_eq!(
        run(RoundRobin::new(), &[1, 1, 1], 300).await,
        [100, 100, 100]
    );
    assert_eq!(
        run(WeightedRoundRobin::new(), &[1, 2, 3], 300).await,
        [50, 100, 150]
    );
    // Seeded random families: shares within a generous band of the expected ones (their
    // distributions are checked by chi-square in tests/pickers/ and tests/proptests.rs).
    let hits = run(Random::with_seed(4), &[1, 1, 1], 300).await;
    assert!(hits.iter().all(|&h| (70..=130).contains(&h)), "{hits:?}");
    let hits = run(WeightedRandom::with_seed(4), &[1, 2, 3], 300).await;
    for (h, want) in hits.iter().zip([50, 100, 150]) {
        assert!(h.abs_diff(want) <= 35, "{hits:?}");
    }
    // Load-aware ones: one request held in flight on a server, then sequential requests.
    // Each load-aware strategy sends none of them to the busy server (it loses every
    // comparison: 1 in flight against 0; for Peak EWMA, unmeasured with one in flight).
    // For least loaded and P2C, each idle server gets at least the picks where it is
    // compared with the busy one (a third, less 5σ); Peak EWMA instead keeps the cheaper
    // idle server as its leader (see `pick::peak_ewma`), so only the busy server's zero
    // is claimed for it. Round robin, the control, sends the busy server its third.
    const SEQUENTIAL: usize = 150;
    let (busy, hits) = run_beside_a_held_request(RoundRobin::new(), SEQUENTIAL).await;
    assert_eq!(
        hits[busy],
        SEQUENTIAL / 3,
        "round robin ignores load: {hits:?}"
    );
    for (name, (busy, hits)) in [
        (
            "LeastLoaded",
            run_beside_a_held_request(LeastLoaded::with_seed(4), SEQUENTIAL).await,
        ),
        (
            "PowerOfTwoChoices",
            run_beside_a_held_request(PowerOfTwoChoices::with_seed(4), SEQUENTIAL).await,
        ),
        (
            "PeakEwma",
            run_beside_a_held_request(PeakEwma::with_seed(4), SEQUENTIAL).await,
        ),
    ] {
        assert_eq!(
            hits[busy], 0,
            "{name} sent requests to the busy server: {hits:?}"
        );
        assert_eq!(hits.iter().sum::<usize>(), SEQUENTIAL, "{name}: {hits:?}");
        if name != "PeakEwma" {
            for (i, &h) in hits.iter().enumerate() {
                assert!(i == busy || h >= 20, "{name}: {hits:?}");
            }
        }
    }
}
