//! Health and membership events (`PoolEvent`): each kind triggered on purpose, under a
//! manual clock (ejection, return, panic, membership) or tokio's paused clock (active
//! probes), and checked in order with its backend and reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_lb::clock::ManualClock;
use tower_lb::health::{Ejection, OutlierDetection, ProbeConfig, ProbeError, probe_fn};
use tower_lb::{BackendId, BackendState, Pool, PoolEvent, RoundRobin, Weight};

/// Collects the pool's events; `take` returns those since the last call.
struct Log(Arc<Mutex<Vec<PoolEvent<&'static str>>>>);

impl Log {
    fn attach(pool: &Pool<&'static str, RoundRobin>) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        pool.on_event(move |e| sink.lock().unwrap().push(e.clone()));
        Log(events)
    }

    fn take(&self) -> Vec<PoolEvent<&'static str>> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn state(pool: &Pool<&'static str, RoundRobin>, id: BackendId) -> Arc<BackendState> {
    let prepared = pool.snapshot();
    let snapshot = prepared.snapshot();
    Arc::clone(snapshot.backends()[snapshot.index_of(id).unwrap()].state())
}

#[test]
fn membership_ejection_return_and_panic_events_name_the_backend_and_the_reason() {
    let clock = ManualClock::new();
    let pool = Pool::builder(RoundRobin::new())
        .clock(clock.reader())
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(2)
                .ejection_jitter(Duration::ZERO)
                .max_ejection_percent(100),
        )
        .health_seed(7)
        .build()
        .unwrap();
    let log = Log::attach(&pool);

    let a = pool.insert("a", Weight::ONE).unwrap();
    let [b, c] = pool
        .extend([("b", Weight::new(2).unwrap()), ("c", Weight::ONE)])
        .unwrap()[..]
    else {
        unreachable!()
    };
    assert_eq!(
        log.take(),
        [
            PoolEvent::Inserted {
                id: a,
                addr: "a",
                weight: Weight::ONE
            },
            PoolEvent::Inserted {
                id: b,
                addr: "b",
                weight: Weight::new(2).unwrap()
            },
            PoolEvent::Inserted {
                id: c,
                addr: "c",
                weight: Weight::ONE
            },
        ]
    );

    // Two failures in a row: ejected at the next tick, for consecutive failures.
    let sa = state(&pool, a);
    sa.start().failure();
    sa.start().failure();
    assert_eq!(log.take(), [], "nothing published before the tick");
    pool.tick();
    assert_eq!(
        log.take(),
        [PoolEvent::Ejected {
            id: a,
            addr: "a",
            reason: Ejection::ConsecutiveFailures
        }]
    );
    // Back after the base ejection time (30 s), not before.
    clock.advance(Duration::from_secs(29));
    pool.tick();
    assert_eq!(log.take(), []);
    clock.advance(Duration::from_secs(2));
    pool.tick();
    assert_eq!(
        log.take(),
        [PoolEvent::Returned {
            id: a,
            addr: "a",
            reason: Ejection::ConsecutiveFailures
        }]
    );

    // Panic: one of three healthy is below the 50% threshold; two of three is not.
    pool.mark_down(b).unwrap();
    assert_eq!(log.take(), [], "two of three healthy: no panic");
    pool.mark_down(c).unwrap();
    assert_eq!(
        log.take(),
        [PoolEvent::PanicEntered {
            healthy: 1,
            total: 3
        }]
    );
    pool.mark_up(b).unwrap();
    assert_eq!(
        log.take(),
        [PoolEvent::PanicLeft {
            healthy: 2,
            total: 3
        }]
    );

    pool.remove(c).unwrap();
    assert_eq!(log.take(), [PoolEvent::Removed { id: c, addr: "c" }]);
    // A change with no event (a reweight) emits nothing.
    pool.set_weight(a, Weight::new(3).unwrap()).unwrap();
    assert_eq!(log.take(), []);
}

#[tokio::test(start_paused = true)]
async fn probe_down_and_up_reach_a_subscription() {
    let down = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&down);
    let probe = probe_fn(move |_: &&str| {
        let fail = flag.load(Ordering::SeqCst);
        async move {
            if fail {
                Err(ProbeError::new("connection refused"))
            } else {
                Ok(())
            }
        }
    });
    let pool = Pool::new(RoundRobin::new());
    let mut events = pool.subscribe(16);
    let a = pool.insert("a", Weight::ONE).unwrap();
    let config = ProbeConfig::new()
        .interval(Duration::from_secs(1))
        .jitter(Duration::ZERO)
        .fall(1)
        .rise(1);
    let _task = pool.spawn_health_probes(probe, config).unwrap();
    assert!(matches!(
        events.try_recv(),
        Ok(PoolEvent::Inserted { addr: "a", .. })
    ));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(events.try_recv().is_err(), "probes pass: no event");

    down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    match events.try_recv() {
        Ok(PoolEvent::ProbeDown { id, addr, error }) => {
            assert_eq!((id, addr), (a, "a"));
            assert!(error.contains("connection refused"), "{error}");
        }
        other => panic!("expected ProbeDown, got {other:?}"),
    }
    // Its only backend down: the panic threshold is crossed too.
    assert_eq!(
        events.try_recv().ok(),
        Some(PoolEvent::PanicEntered {
            healthy: 0,
            total: 1
        })
    );
    assert!(events.try_recv().is_err(), "one event per change");

    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        events.try_recv().ok(),
        Some(PoolEvent::ProbeUp { id: a, addr: "a" })
    );
    assert_eq!(
        events.try_recv().ok(),
        Some(PoolEvent::PanicLeft {
            healthy: 1,
            total: 1
        })
    );
    pool.remove(a).unwrap();
    assert_eq!(
        events.try_recv().ok(),
        Some(PoolEvent::Removed { id: a, addr: "a" })
    );
}

/// A listener added late hears of changes from then on only: not of the members already
/// there (publications before it are not even compared: no listener, no cost), but of
/// their removal, and of the return of a backend ejected before it arrived.
#[test]
fn a_late_listener_hears_later_changes_to_earlier_members() {
    let clock = ManualClock::new();
    let pool = Pool::builder(RoundRobin::new())
        .clock(clock.reader())
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(1)
                .ejection_jitter(Duration::ZERO),
        )
        .build()
        .unwrap();
    let [a, b, c] = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
        .unwrap()[..]
    else {
        unreachable!()
    };
    state(&pool, a).start().failure();
    pool.tick();
    assert!(
        !pool.snapshot().is_eligible(0),
        "a ejected before the listener"
    );
    let log = Log::attach(&pool);
    let d = pool.insert("d", Weight::ONE).unwrap();
    pool.remove(b).unwrap();
    clock.advance(Duration::from_secs(31));
    pool.tick();
    pool.remove(c).unwrap();
    assert_eq!(
        log.take(),
        [
            PoolEvent::Inserted {
                id: d,
                addr: "d",
                weight: Weight::ONE
            },
            PoolEvent::Removed { id: b, addr: "b" },
            PoolEvent::Returned {
                id: a,
                addr: "a",
                reason: Ejection::ConsecutiveFailures
            },
            PoolEvent::Removed { id: c, addr: "c" },
        ]
    );
}
