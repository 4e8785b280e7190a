//! A table from another snapshot still gives an eligible member.

use super::*;

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
