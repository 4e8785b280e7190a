//! tower's contract and the in-flight limits: spreading, typed errors when empty, shedding,
//! waiting and waking, reservations.

use super::*;

#[tokio::test(start_paused = true)]
async fn spreads_and_tracks_in_flight() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a", "b", "c"]);
    let balance = Balance::new(pool.clone());
    let calls: Vec<_> = (0..6).map(|_| balance.clone().oneshot(100)).collect();
    // Each future has been called (oneshot drives ready + call on first poll).
    let mut calls: Vec<_> = calls.into_iter().map(Box::pin).collect();
    for c in &mut calls {
        assert!(futures::poll!(c.as_mut()).is_pending());
    }
    assert_eq!(in_flight(&pool), [2, 2, 2]);
    let answers = futures::future::join_all(calls).await;
    let mut names: Vec<_> = answers.into_iter().map(|r| r.unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b", "c", "c"]);
    assert_eq!(in_flight(&pool), [0, 0, 0]);
    // Round robin reads no latency, so the pool keeps none (`PoolBuilder::track_latency`).
    assert!(
        pool.stats()
            .iter()
            .all(|s| s.successes == 2 && s.ewma.is_none())
    );
}

#[tokio::test(start_paused = true)]
async fn empty_or_all_down_fails_at_once_with_a_typed_error() {
    let (pool, _) = pool_of(PowerOfTwoChoices::with_seed(1), &[]);
    let balance = BalanceLayer::new(pool.clone())
        .max_in_flight(4)
        .build(tower_lb::balance::PerBackend);
    let err = balance.clone().oneshot(0).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<PickError>(),
        Some(&PickError::NoBackends)
    );
    let (a, _) = named("a");
    let id = pool.insert(a, Weight::ONE).unwrap();
    pool.drain(id).unwrap();
    let err = balance.clone().oneshot(0).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<PickError>(),
            Some(PickError::NoEligible { total: 1 })
        ),
        "{err}"
    );
    assert_eq!(balance.committed(), Some(0));
}

/// `max_in_flight(0)` is no limit (as NGINX's `max_conns=0`), not a limit of one.
#[tokio::test(start_paused = true)]
async fn a_zero_in_flight_limit_means_none() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a", "b"]);
    let balance = BalanceLayer::new(pool.clone())
        .max_in_flight(0)
        .on_overload(OnOverload::Shed)
        .build(tower_lb::balance::PerBackend);
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut f = Box::pin(balance.clone().oneshot(1_000));
        assert!(futures::poll!(f.as_mut()).is_pending());
        held.push(f);
    }
    assert_eq!(in_flight(&pool), [10, 10]);
    assert_eq!(balance.clone().oneshot(0).await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn sheds_with_the_numbers_when_every_backend_is_full() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a", "b"]);
    let balance = BalanceLayer::new(pool.clone())
        .max_in_flight(2)
        .on_overload(OnOverload::Shed)
        .build(tower_lb::balance::PerBackend);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut f = Box::pin(balance.clone().oneshot(1_000));
        assert!(futures::poll!(f.as_mut()).is_pending());
        held.push(f);
    }
    assert_eq!(in_flight(&pool), [2, 2]);
    let err = balance.clone().oneshot(0).await.unwrap_err();
    let overloaded = err
        .downcast_ref::<Overloaded>()
        .expect("an Overloaded error");
    assert_eq!(
        (
            overloaded.in_flight,
            overloaded.max_in_flight,
            overloaded.backends
        ),
        (4, 2, 2)
    );
    // One finishes: the next request gets through.
    held.pop();
    assert_eq!(balance.clone().oneshot(0).await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn waits_and_is_woken_when_capacity_frees() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a"]);
    let balance = BalanceLayer::new(pool.clone())
        .max_in_flight(1)
        .on_overload(OnOverload::Wait)
        .build(tower_lb::balance::PerBackend);
    let first = tokio::spawn(balance.clone().oneshot(50));
    tokio::task::yield_now().await;
    assert_eq!(in_flight(&pool), [1]);
    // The second caller waits in poll_ready: no busy loop, woken by the first's end.
    let mut second = balance.clone();
    let ready = tokio::spawn(async move {
        std::future::poll_fn(|cx| second.poll_ready(cx))
            .await
            .unwrap();
        second.call(0).await
    });
    tokio::task::yield_now().await;
    assert!(!ready.is_finished());
    assert_eq!(first.await.unwrap().unwrap(), "a");
    assert_eq!(ready.await.unwrap().unwrap(), "a");
    assert_eq!(balance.committed(), Some(0));
}

#[tokio::test]
async fn a_reservation_is_released_if_call_never_comes_and_never_cloned() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a"]);
    let mut balance = BalanceLayer::new(pool)
        .max_in_flight(1)
        .build(tower_lb::balance::PerBackend);
    std::future::poll_fn(|cx| balance.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(balance.committed(), Some(1));
    let mut clone = balance.clone();
    // The clone has no reservation of its own and the set is full: it must wait.
    let pending = std::future::poll_fn(|cx| Poll::Ready(clone.poll_ready(cx))).await;
    assert!(pending.is_pending());
    drop(balance);
    assert_eq!(clone.committed(), Some(0));
    std::future::poll_fn(|cx| clone.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(clone.call(0).await.unwrap(), "a");
}

/// A waker that records whether it was woken.
struct Flag(AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Flag {
    fn new() -> (Arc<Flag>, std::task::Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        (flag.clone(), std::task::Waker::from(flag))
    }

    fn woken(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A release wakes one waiter; if that waiter goes away without taking the unit, its
/// wake-up passes to the next, which would otherwise wait for ever with capacity free.
#[tokio::test]
async fn a_dropped_waiter_passes_its_wake_up_on() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a"]);
    let mut holder = BalanceLayer::new(pool)
        .max_in_flight(1)
        .on_overload(OnOverload::Wait)
        .build(tower_lb::balance::PerBackend);
    std::future::poll_fn(|cx| holder.poll_ready(cx))
        .await
        .unwrap();
    let (mut first, mut second) = (holder.clone(), holder.clone());
    let (first_flag, first_waker) = Flag::new();
    let (second_flag, second_waker) = Flag::new();
    let mut second_cx = Context::from_waker(&second_waker);
    assert!(
        first
            .poll_ready(&mut Context::from_waker(&first_waker))
            .is_pending()
    );
    assert!(second.poll_ready(&mut second_cx).is_pending());
    // The holder's reservation goes back: one waiter, the first in line, is woken.
    drop(holder);
    assert!(first_flag.woken());
    assert!(!second_flag.woken(), "a release woke more than one waiter");
    // The first goes away without polling again.
    drop(first);
    assert!(second_flag.woken(), "the dropped waiter kept its wake-up");
    assert!(second.poll_ready(&mut second_cx).is_ready());
    assert_eq!(second.call(0).await.unwrap(), "a");
    assert_eq!(second.committed(), Some(0));
}

/// A woken waiter that takes a unit and finds more capacity left wakes the next one: a
/// wake-up spent on a stale registration (the same waiter, registered twice under two
/// wakers) does not strand a waiter behind it.
#[tokio::test]
async fn a_woken_waiter_passes_spare_capacity_on() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a"]);
    let balance = BalanceLayer::new(pool)
        .max_in_flight(2)
        .on_overload(OnOverload::Wait)
        .build(tower_lb::balance::PerBackend);
    let (mut holder_1, mut holder_2) = (balance.clone(), balance.clone());
    for holder in [&mut holder_1, &mut holder_2] {
        std::future::poll_fn(|cx| holder.poll_ready(cx))
            .await
            .unwrap();
    }
    let (mut first, mut second) = (balance.clone(), balance.clone());
    // The first waiter registers twice (its task moved: a new waker), then the second.
    let (old_flag, old_waker) = Flag::new();
    let (first_flag, first_waker) = Flag::new();
    let (second_flag, second_waker) = Flag::new();
    let mut first_cx = Context::from_waker(&first_waker);
    assert!(
        first
            .poll_ready(&mut Context::from_waker(&old_waker))
            .is_pending()
    );
    assert!(first.poll_ready(&mut first_cx).is_pending());
    assert!(
        second
            .poll_ready(&mut Context::from_waker(&second_waker))
            .is_pending()
    );
    // Two units come back; their two wake-ups both go to the first waiter's wakers.
    drop(holder_1);
    drop(holder_2);
    assert!(old_flag.woken() && first_flag.woken());
    assert!(!second_flag.woken());
    // The first takes one unit and, one being left, wakes the second.
    assert!(first.poll_ready(&mut first_cx).is_ready());
    assert!(
        second_flag.woken(),
        "spare capacity stranded the second waiter"
    );
    assert!(
        second
            .poll_ready(&mut Context::from_waker(&second_waker))
            .is_ready()
    );
    assert_eq!(balance.committed(), Some(2));
}
