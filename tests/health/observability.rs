//! Observability: a tracing event per transition, stats with health and time until return.

use super::*;

// ---------------------------------------------------------------------------------------
// Observability
// ---------------------------------------------------------------------------------------

mod capture {
    use std::collections::HashMap;
    use std::fmt;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// One captured event: its target and fields (the message under "message").
    pub type Captured = (String, HashMap<String, String>);

    /// A subscriber that keeps every event.
    #[derive(Clone, Default)]
    pub struct Capture(pub Arc<Mutex<Vec<Captured>>>);

    struct Fields<'a>(&'a mut HashMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0
                .insert(field.name().to_string(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = HashMap::new();
            event.record(&mut Fields(&mut fields));
            self.0
                .lock()
                .unwrap()
                .push((event.metadata().target().to_string(), fields));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// Runs `f` with a capturing subscriber; every event it emitted.
    pub fn events_of(f: impl FnOnce()) -> Vec<Captured> {
        let capture = Capture::default();
        // Two live dispatchers: with exactly one, tracing-core computes a callsite's
        // interest from whichever thread registers it first, and a parallel test thread
        // without a subscriber would switch our callsites off.
        let _second = tracing::Dispatch::new(Capture::default());
        let dispatch = tracing::Dispatch::new(capture.clone());
        tracing::dispatcher::with_default(&dispatch, f);
        let events = capture.0.lock().unwrap();
        events.clone()
    }

    /// The health transitions among `events`: backend, from, to, reason.
    pub fn transitions(events: &[Captured]) -> Vec<[String; 4]> {
        events
            .iter()
            .filter(|(target, f)| {
                target == "tower_lb::health" && f["message"] == "backend health changed"
            })
            .map(|(_, f)| ["backend", "from", "to", "reason"].map(|k| f[k].clone()))
            .collect()
    }
}

#[test]
fn every_transition_is_an_event_with_backend_states_and_reason() {
    let clock = ManualClock::new();
    let events = capture::events_of(|| {
        let (pool, ids) = holding(
            round_robin_on(&clock).outlier_detection(consecutive_only()),
            letters(3),
        );
        fail(&pool, ids[0], 5);
        clock.advance(Duration::from_secs(30));
        pool.tick();
        pool.drain(ids[1]).unwrap();
        pool.mark_down(ids[2]).unwrap(); // 1 of 2 in service: no panic
        pool.mark_down(ids[0]).unwrap(); // 0 of 2: panic
        pool.mark_up(ids[0]).unwrap();
    });
    let transitions = capture::transitions(&events);
    let expected = [
        [
            "backend#0",
            "healthy",
            "unhealthy (ejected: consecutive failures)",
            "ejected: consecutive failures",
        ],
        [
            "backend#0",
            "unhealthy (ejected: consecutive failures)",
            "healthy",
            "ejected: consecutive failures",
        ],
        [
            "backend#1",
            "healthy",
            "draining (set by admin)",
            "set by admin",
        ],
        [
            "backend#2",
            "healthy",
            "unhealthy (set by admin)",
            "set by admin",
        ],
        [
            "backend#0",
            "healthy",
            "unhealthy (set by admin)",
            "set by admin",
        ],
        [
            "backend#0",
            "unhealthy (set by admin)",
            "healthy",
            "set by admin",
        ],
    ];
    let expected: Vec<[String; 4]> = expected.iter().map(|t| t.map(String::from)).collect();
    assert_eq!(transitions, expected);
    let panics: Vec<&String> = events
        .iter()
        .filter(|(_, f)| f["message"].starts_with("panic threshold"))
        .map(|(_, f)| &f["message"])
        .collect();
    assert_eq!(
        panics,
        [
            "panic threshold crossed: too few healthy backends",
            "panic threshold cleared: routing to healthy backends only"
        ]
    );
}

/// A backend that joins healthy is no transition; one that joins already unhealthy (a
/// health source says so) is one, from "new".
#[test]
fn a_backend_joining_unhealthy_is_a_transition_from_new() {
    let events = capture::events_of(|| {
        let pool = Pool::new(RoundRobin::new());
        pool.add_health_source(|b: &tower_lb::Backend<&str>, _: Instant| {
            if *b.addr() == "joins-down" {
                Verdict::Unhealthy(Reason::other("registry: not ready"))
            } else {
                Verdict::Healthy
            }
        });
        pool.extend([("joins-up", Weight::ONE), ("joins-down", Weight::ONE)])
            .unwrap();
    });
    let transitions = capture::transitions(&events);
    assert_eq!(
        transitions,
        [[
            "backend#1",
            "new",
            "unhealthy (registry: not ready)",
            "registry: not ready"
        ]
        .map(String::from)]
    );
}

#[test]
fn stats_show_health_ejections_and_time_until_return() {
    let clock = ManualClock::new();
    let (pool, ids) = holding(
        round_robin_on(&clock).outlier_detection(consecutive_only()),
        letters(2),
    );
    fail(&pool, ids[0], 5);
    clock.advance(Duration::from_secs(12));
    let s = stat(&pool, ids[0]);
    assert!(!s.eligible);
    assert_eq!(s.ejections, 1);
    assert_eq!(s.returns_in, Some(Duration::from_secs(18)));
    assert_eq!(
        s.health.reason(),
        Some(&Reason::Ejected(Ejection::ConsecutiveFailures))
    );
    let b = stat(&pool, ids[1]);
    assert_eq!(
        (b.health, b.ejections, b.returns_in),
        (Verdict::Healthy, 0, None)
    );
}
