//! Pickers as values: a strategy chosen at run time by name (`AnyPicker`), and the
//! `Clone` and `Default` every picker has. The property test checks that an `AnyPicker`
//! picks exactly what the picker it wraps picks, for the same seed, snapshot and
//! sequence of loads, latencies and health changes.

mod support;

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngAlgorithm, RngSeed};
use support::snapshot;
use tower_lb::{
    AnyPicker, BoundedLoad, InFlight, Jump, LeastLoaded, Maglev, PeakEwma, PickContext, Picker,
    PowerOfTwoChoices, Random, Rendezvous, Ring, RoundRobin, Snapshot, UnknownStrategy,
    WeightedRandom, WeightedRoundRobin,
};

/// Every name, and whether it places requests by their hash.
const STRATEGIES: [(&str, bool); 15] = [
    ("round-robin", false),
    ("weighted", false),
    ("random", false),
    ("weighted-random", false),
    ("least-loaded", false),
    ("p2c", false),
    ("peak-ewma", false),
    ("ring", true),
    ("maglev", true),
    ("rendezvous", true),
    ("jump", true),
    ("ring-bounded", true),
    ("maglev-bounded", true),
    ("rendezvous-bounded", true),
    ("server-load", false),
];

#[test]
fn every_name_parses_and_names_itself() {
    let names: Vec<&str> = STRATEGIES.iter().map(|&(name, _)| name).collect();
    assert_eq!(AnyPicker::NAMES, names);
    for (name, hashing) in STRATEGIES {
        let picker: AnyPicker = name.parse().unwrap();
        assert_eq!(picker.name(), name);
        assert_eq!(picker.to_string(), name);
        assert_eq!(picker.is_hashing(), hashing, "{name}");
        assert_eq!(AnyPicker::with_seed(name, 7).unwrap().name(), name);
        assert_eq!(picker.clone().name(), name);
    }
    // ASCII case is ignored, nothing else is.
    assert_eq!("Maglev".parse::<AnyPicker>().unwrap().name(), "maglev");
    assert_eq!("P2C".parse::<AnyPicker>().unwrap().name(), "p2c");
    for bad in [
        "",
        " p2c",
        "round_robin",
        "roundrobin",
        "maglev-",
        "bounded",
    ] {
        assert!(bad.parse::<AnyPicker>().is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn an_unknown_name_is_refused_with_the_known_ones() {
    let err = "fastest".parse::<AnyPicker>().unwrap_err();
    assert_eq!(err.name, "fastest");
    assert_eq!(
        err.to_string(),
        "any picker: unknown strategy \"fastest\", expected one of: round-robin, weighted, \
         random, weighted-random, least-loaded, p2c, peak-ewma, ring, maglev, rendezvous, \
         jump, ring-bounded, maglev-bounded, rendezvous-bounded, server-load"
    );
    let seeded: UnknownStrategy = AnyPicker::with_seed("fastest", 1).unwrap_err();
    assert_eq!(seeded, err);
    // An error like any other: boxed, sent across threads.
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
    assert!(boxed.source().is_none());
}

#[test]
fn configured_pickers_are_wrapped_with_from() {
    let cases: [(AnyPicker, &str); 14] = [
        (RoundRobin::new().into(), "round-robin"),
        (WeightedRoundRobin::new().into(), "weighted"),
        (Random::with_seed(1).into(), "random"),
        (WeightedRandom::new().into(), "weighted-random"),
        (LeastLoaded::new().into(), "least-loaded"),
        (PowerOfTwoChoices::new().into(), "p2c"),
        (
            PeakEwma::new()
                .with_default_rtt(Duration::from_millis(5))
                .into(),
            "peak-ewma",
        ),
        (Ring::new().into(), "ring"),
        (Maglev::new().with_table_size(7).unwrap().into(), "maglev"),
        (Rendezvous::new().into(), "rendezvous"),
        (Jump::new().into(), "jump"),
        (BoundedLoad::new(Ring::new()).into(), "ring-bounded"),
        (
            BoundedLoad::new(Maglev::new())
                .with_balance_factor(2.0)
                .unwrap()
                .into(),
            "maglev-bounded",
        ),
        (
            BoundedLoad::new(Rendezvous::new()).into(),
            "rendezvous-bounded",
        ),
    ];
    for (picker, name) in cases {
        assert_eq!(picker.name(), name);
    }
}

#[test]
fn defaults() {
    assert_eq!(AnyPicker::default().name(), "p2c");
    assert_eq!(BoundedLoad::<Maglev>::default().balance_factor(), 1.25);
    assert_eq!(Maglev::default().table_size(), Maglev::new().table_size());
    // Each exists (and is the picker's `new()`).
    let _: (RoundRobin, WeightedRoundRobin, Random, WeightedRandom) = Default::default();
    let _: (LeastLoaded, PowerOfTwoChoices, PeakEwma) = Default::default();
    let _: (Ring, Rendezvous, Jump, BoundedLoad<Ring>) = Default::default();
}

#[test]
fn every_picker_is_clone_whatever_its_fallback() {
    fn clone<T: Clone>(t: &T) -> T {
        t.clone()
    }
    let _ = clone(&Maglev::new().with_fallback(LeastLoaded::with_seed(1)));
    let _ = clone(&Ring::new().with_fallback(PowerOfTwoChoices::new()));
    let _ = clone(&Rendezvous::new().with_fallback(Random::new()));
    let _ = clone(&Jump::new().with_fallback(WeightedRoundRobin::new()));
    let _ = clone(&BoundedLoad::new(
        Ring::new().with_fallback(PeakEwma::new()),
    ));
    let bounded = BoundedLoad::new(Maglev::new())
        .with_balance_factor(1.5)
        .unwrap();
    assert_eq!(clone(&bounded).balance_factor(), 1.5);
}

/// A clone continues from the original's state: seeded draws and round robin's position.
/// (Smooth weighted round robin keeps its position in its table, not in the picker.)
#[test]
fn a_clone_picks_what_the_original_picks_next() {
    let snapshot = snapshot(&[1, 2, 3, 1, 1, 4, 2, 1]);
    for (name, hashing) in STRATEGIES {
        if name == "weighted" {
            continue;
        }
        let original = AnyPicker::with_seed(name, 11).unwrap();
        let table = original.prepare(&snapshot, None);
        let ctx = |i: u64| {
            // Hashing strategies: with and without a key (the fallback's round robin).
            let ctx = PickContext::new();
            if hashing && !i.is_multiple_of(3) {
                ctx.with_hash(i)
            } else {
                ctx
            }
        };
        for i in 0..5 {
            original.pick(&table, &snapshot, &ctx(i));
        }
        let clone = original.clone();
        let clone_table = clone.prepare(&snapshot, None);
        let next = |p: &AnyPicker, t| -> Vec<_> {
            (5..40).map(|i| p.pick(t, &snapshot, &ctx(i))).collect()
        };
        assert_eq!(
            next(&original, &table),
            next(&clone, &clone_table),
            "{name}"
        );
    }
    // Round robin's clone has its own counter.
    let rr = RoundRobin::new();
    rr.pick(&(), &snapshot, &PickContext::new());
    let clone = rr.clone();
    let a = rr.pick(&(), &snapshot, &PickContext::new());
    let b = clone.pick(&(), &snapshot, &PickContext::new());
    assert_eq!(a, b, "both at the second member");
    assert_eq!(a, Some(1));
}

// ---------------------------------------------------------------------------------------
// AnyPicker picks what the wrapped picker picks

/// One step of the property test's sequences.
#[derive(Debug, Clone)]
enum Op {
    /// Both pickers pick (with this key hash, if any); the chosen backend gets a request
    /// in flight.
    Pick(Option<u64>),
    /// A request in flight (the n-th, modulo how many) ends.
    Finish { nth: usize, success: bool },
    /// A latency sample for a backend (modulo the set's size).
    Rtt { backend: usize, micros: u16 },
    /// Health changes: backend i is eligible when bit i % 16 is set; both tables are
    /// prepared again from their previous one.
    Eligible(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::option::weighted(0.7, 0u64..64).prop_map(Op::Pick),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(nth, success)| Op::Finish { nth, success }),
        1 => (any::<usize>(), 1u16..5000).prop_map(|(backend, micros)| Op::Rtt { backend, micros }),
        1 => any::<u16>().prop_map(Op::Eligible),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        // Each case runs all 14 strategies (four of them build 65 537-slot Maglev tables).
        cases: 48,
        // A fixed seed: every run explores the same cases, so CI is reproducible.
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(0x616e_7970_6963_6b72),
        // Failures are persisted beside this file, to be committed.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

/// Runs `ops` through `AnyPicker::with_seed(name, seed)` and `raw` (built with the same
/// seed) side by side; every pick must agree.
fn same_picks<P: Picker<usize>>(
    name: &str,
    raw: P,
    seed: u64,
    weights: &[u32],
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let any = AnyPicker::with_seed(name, seed).unwrap();
    let mut snapshot: Snapshot<usize> = snapshot(weights);
    let (mut any_table, mut raw_table) =
        (any.prepare(&snapshot, None), raw.prepare(&snapshot, None));
    let mut held: Vec<InFlight> = Vec::new();
    // Bounded load reads the clock itself for the failure scores: a failure would make
    // its decision depend on the nanoseconds between the two picks.
    let failures = !name.ends_with("-bounded");
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Pick(hash) => {
                // "now" given, so both picks read the same time.
                let mut ctx = PickContext::new().with_now(Instant::now());
                if let Some(hash) = hash {
                    ctx = ctx.with_hash(hash);
                }
                let a = any.pick(&any_table, &snapshot, &ctx);
                let r = raw.pick(&raw_table, &snapshot, &ctx);
                prop_assert_eq!(a, r, "{} at step {}", name, step);
                if let Some(i) = a {
                    held.push(snapshot.backends()[i].state().start());
                }
            }
            Op::Finish { nth, success } => {
                if !held.is_empty() {
                    let guard = held.swap_remove(nth % held.len());
                    if success || !failures {
                        guard.success();
                    } else {
                        guard.failure();
                    }
                }
            }
            Op::Rtt { backend, micros } => {
                let state = snapshot.backends()[backend % weights.len()].state();
                state.record_rtt(Duration::from_micros(u64::from(micros)), Instant::now());
            }
            Op::Eligible(mask) => {
                snapshot = snapshot.with_eligibility(|i| mask >> (i % 16) & 1 == 1);
                any_table = any.prepare(&snapshot, Some(&any_table));
                raw_table = raw.prepare(&snapshot, Some(&raw_table));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// For every name: the same picks as the picker it names, built with the same seed,
    /// through loads, failures, latencies and health changes.
    #[test]
    fn any_picker_picks_what_the_wrapped_picker_picks(
        weights in prop::collection::vec(1u32..=4, 1..=12),
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        for &name in AnyPicker::NAMES {
            let (w, o) = (&weights[..], &ops[..]);
            match name {
                "round-robin" => same_picks(name, RoundRobin::new(), seed, w, o)?,
                "weighted" => same_picks(name, WeightedRoundRobin::new(), seed, w, o)?,
                "random" => same_picks(name, Random::with_seed(seed), seed, w, o)?,
                "weighted-random" => same_picks(name, WeightedRandom::with_seed(seed), seed, w, o)?,
                "least-loaded" => same_picks(name, LeastLoaded::with_seed(seed), seed, w, o)?,
                "p2c" => same_picks(name, PowerOfTwoChoices::with_seed(seed), seed, w, o)?,
                "peak-ewma" => same_picks(name, PeakEwma::with_seed(seed), seed, w, o)?,
                "ring" => same_picks(name, Ring::new(), seed, w, o)?,
                "maglev" => same_picks(name, Maglev::new(), seed, w, o)?,
                "rendezvous" => same_picks(name, Rendezvous::new(), seed, w, o)?,
                "jump" => same_picks(name, Jump::new(), seed, w, o)?,
                "ring-bounded" => same_picks(name, BoundedLoad::new(Ring::new()), seed, w, o)?,
                "maglev-bounded" => same_picks(name, BoundedLoad::new(Maglev::new()), seed, w, o)?,
                "rendezvous-bounded" => {
                    same_picks(name, BoundedLoad::new(Rendezvous::new()), seed, w, o)?
                }
                "server-load" => same_picks(name, tower_lb::ServerLoad::with_seed(seed), seed, w, o)?,
                other => panic!("a name this test does not know: {other}"),
            }
        }
    }
}

/// A table another `AnyPicker` prepared (a programming error) still gives an eligible
/// member, never a panic.
#[test]
fn a_table_of_another_strategy_still_picks_an_eligible_member() {
    let snapshot = snapshot(&[1, 1, 1, 1]).with_eligibility(|i| i != 2);
    let weighted: AnyPicker = "weighted".parse().unwrap();
    let table = weighted.prepare(&snapshot, None);
    for (name, _) in STRATEGIES {
        let picker: AnyPicker = name.parse().unwrap();
        for key in 0..16 {
            let i = picker.pick(&table, &snapshot, &PickContext::new().with_hash(key));
            assert!(i.is_some_and(|i| snapshot.is_eligible(i)), "{name}: {i:?}");
        }
    }
}
