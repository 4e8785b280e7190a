//! Discovery: batches, waiting for the first backend, weights, and changes applied while
//! no request comes.

use std::convert::Infallible;
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::sync::mpsc;
use tower::{Service, ServiceExt, service_fn};
use tower_lb::balance::{Balance, BoxError, Change, Discovery, Weighted};
use tower_lb::{PickError, Pool, RoundRobin, Weight, WeightedRoundRobin};

type Svc = tower::util::ServiceFn<fn(u32) -> std::future::Ready<Result<u32, Infallible>>>;

fn svc() -> Svc {
    service_fn(|req: u32| std::future::ready(Ok(req)))
}

type Item<V> = Result<Change<String, V>, Infallible>;

/// A channel-fed discovery stream.
fn channel<V: Send + 'static>() -> (
    mpsc::UnboundedSender<Item<V>>,
    impl futures::Stream<Item = Item<V>> + Send + 'static,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    (tx, stream)
}

/// Every change ready at once is one publication: 1 000 inserts and 300 removals move
/// the snapshot's version by exactly one — though tokio's channel yields after 128 items
/// per poll (its cooperative budget), so the batch spans several polls.
#[tokio::test(start_paused = true)]
async fn changes_ready_in_one_poll_are_one_publication() {
    let (tx, stream) = channel::<Svc>();
    let mut balance = Balance::from_discover(RoundRobin::new(), Box::pin(stream));
    for i in 0..1_000 {
        tx.send(Ok(Change::Insert(format!("b{i}"), svc()))).unwrap();
    }
    for i in 0..300 {
        tx.send(Ok(Change::Remove(format!("b{}", 3 * i)))).unwrap();
    }
    let before = balance.pool().snapshot().version();
    std::future::poll_fn(|cx| Service::<u32>::poll_ready(&mut balance, cx))
        .await
        .unwrap();
    let after = balance.pool().snapshot();
    assert_eq!(after.version(), before + 1, "one publication");
    assert_eq!(after.len(), 700);
    assert!(after.backends().iter().all(|b| {
        let i: usize = b.addr().key()[1..].parse().unwrap();
        !i.is_multiple_of(3) || i >= 900
    }));
}

/// A change the set refuses stops the batch there: what came before is applied, the
/// error is reported, and what came after is applied at the next poll.
#[tokio::test(start_paused = true)]
async fn a_refused_change_reports_and_keeps_the_rest() {
    let pool = Pool::new(RoundRobin::new());
    pool.insert("taken".to_string(), Weight::ONE).unwrap();
    let (tx, stream) = channel::<Weight>();
    for key in ["a", "b", "taken", "c"] {
        tx.send(Ok(Change::Insert(key.to_string(), Weight::ONE)))
            .unwrap();
    }
    let mut discovery = Box::pin(Discovery::new(&pool, stream, |k: &String, w| {
        (k.clone(), w)
    }));
    assert!(
        discovery.as_mut().await.is_err(),
        "the duplicate is reported"
    );
    let addrs = |pool: &Pool<String, RoundRobin>| -> Vec<String> {
        pool.stats().into_iter().map(|s| s.addr).collect()
    };
    assert_eq!(addrs(&pool), ["taken", "a", "b"]);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(discovery.as_mut().poll(&mut cx).is_pending());
    assert_eq!(
        addrs(&pool),
        ["taken", "a", "b", "c"],
        "the rest at the next poll"
    );
    drop(tx);
}

/// With `from_discover`, a request before the first backend waits for it (as tower's
/// p2c does) and is served once the backend arrives; a plain balancer fails at once.
#[tokio::test(start_paused = true)]
async fn the_first_request_waits_for_the_first_backend() {
    let (tx, stream) = channel::<Svc>();
    let balance = Balance::from_discover(RoundRobin::new(), Box::pin(stream));
    let request = tokio::spawn(balance.clone().oneshot(7));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!request.is_finished(), "waits while the set is empty");
    tx.send(Ok(Change::Insert("a".to_string(), svc()))).unwrap();
    let served = tokio::time::timeout(Duration::from_secs(1), request)
        .await
        .expect("woken by the first backend")
        .unwrap()
        .unwrap();
    assert_eq!(served, 7);

    // A directly inserted backend wakes a waiting request too.
    let pool = Pool::new(RoundRobin::new());
    let waiting = tower_lb::balance::BalanceLayer::new(pool.clone())
        .wait_for_backends()
        .build(tower_lb::balance::PerBackend);
    let request = tokio::spawn(waiting.oneshot(8));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!request.is_finished());
    pool.insert(
        tower_lb::balance::BackendService::new("b", svc()),
        Weight::ONE,
    )
    .unwrap();
    assert_eq!(request.await.unwrap().unwrap(), 8);

    // Without the option, an empty set fails at once with a typed error.
    let plain = Balance::new(
        Pool::<tower_lb::balance::BackendService<&str, Svc>, _>::new(RoundRobin::new()),
    );
    let err: BoxError = plain.oneshot(9).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<PickError>(),
        Some(&PickError::NoBackends)
    );
}

/// A discovery stream that ends before bringing any backend: the waiting request fails
/// with `NoBackends` when the stream ends (nothing will bring a member any more; tower's
/// p2c would wait forever), and so do later ones, at once.
#[tokio::test(start_paused = true)]
async fn a_stream_that_ends_empty_fails_instead_of_waiting_forever() {
    let (tx, stream) = channel::<Svc>();
    let balance = Balance::from_discover(RoundRobin::new(), Box::pin(stream));
    let request = tokio::spawn(balance.clone().oneshot(7));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !request.is_finished(),
        "waits while the stream may still bring one"
    );
    drop(tx);
    let err: BoxError = tokio::time::timeout(Duration::from_secs(1), request)
        .await
        .expect("the stream's end wakes the waiting request")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<PickError>(),
        Some(&PickError::NoBackends)
    );
    let err: BoxError = tokio::time::timeout(Duration::from_secs(1), balance.oneshot(8))
        .await
        .expect("fails at once")
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<PickError>(),
        Some(&PickError::NoBackends)
    );
}

/// Weights travel through discovery: weights 3 and 1 under smooth WRR.
#[tokio::test(start_paused = true)]
async fn weights_travel_through_discovery() {
    let (tx, stream) =
        channel::<Weighted<tower::util::BoxCloneSyncService<u32, &'static str, Infallible>>>();
    for (name, w) in [("a", 3), ("b", 1)] {
        let svc = tower::util::BoxCloneSyncService::new(service_fn(move |_: u32| async move {
            Ok::<_, Infallible>(name)
        }));
        tx.send(Ok(Change::Insert(
            name.to_string(),
            Weighted::new(svc, Weight::new(w).unwrap()),
        )))
        .unwrap();
    }
    let balance = Balance::from_weighted_discover(WeightedRoundRobin::new(), Box::pin(stream));
    let mut served = String::new();
    for i in 0..8 {
        served.push_str(balance.clone().oneshot(i).await.unwrap());
    }
    assert_eq!(served, "aabaaaba");
    let weights: Vec<u64> = balance
        .pool()
        .stats()
        .iter()
        .map(|s| u64::from(s.weight.get()))
        .collect();
    assert_eq!(weights, [3, 1]);
}

/// A spawned `Discovery` applies changes while no request comes: an idle balancer's
/// stats follow the registry, and the task ends when the stream does.
#[tokio::test(start_paused = true)]
async fn a_discovery_task_applies_changes_while_idle() {
    let pool = Pool::new(RoundRobin::new());
    let (tx, stream) = channel::<Weight>();
    let task = tokio::spawn(Discovery::new(&pool, stream, |k: &String, w| {
        (k.clone(), w)
    }));
    let members = |pool: &Pool<String, RoundRobin>| -> Vec<String> {
        pool.stats().into_iter().map(|s| s.addr).collect()
    };
    for key in ["a", "b", "c"] {
        tx.send(Ok(Change::Insert(key.to_string(), Weight::ONE)))
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(members(&pool), ["a", "b", "c"]);
    tx.send(Ok(Change::Remove("b".to_string()))).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(members(&pool), ["a", "c"], "removed with no request");
    drop(tx);
    task.await.unwrap().unwrap();

    // Dropping the pool ends the task at the stream's next item.
    let pool = Pool::new(RoundRobin::new());
    let (tx, stream) = channel::<Weight>();
    let task = tokio::spawn(Discovery::new(&pool, stream, |k: &String, w| {
        (k.clone(), w)
    }));
    drop(pool);
    tx.send(Ok(Change::Insert("x".to_string(), Weight::ONE)))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("ends without its pool")
        .unwrap()
        .unwrap();
}
