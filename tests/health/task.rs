//! The background task and active probes: tokio's paused clock, real listeners on
//! 127.0.0.1:0.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::time::Instant as TokioInstant;
use tower_lb::SpawnError;
use tower_lb::health::{ProbeConfig, ProbeError, TcpProbe, probe_fn};

use super::*;

/// Probes without jitter whose every result sets the verdict (rise 1, fall 1).
fn every_result_counts() -> ProbeConfig {
    ProbeConfig::new().jitter(Duration::ZERO).rise(1).fall(1)
}

/// Lets the runtime run (the task, probes, IO) until `at` on the paused clock.
async fn until(at: TokioInstant) {
    tokio::time::sleep_until(at).await;
}

#[tokio::test(start_paused = true)]
async fn probes_flip_verdicts_only_after_rise_and_fall() {
    let steady = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let flaky = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = (steady.local_addr().unwrap(), flaky.local_addr().unwrap());
    let pool: Pool<SocketAddr, _> = Pool::new(RoundRobin::new());
    let ids = pool.extend([(a, Weight::ONE), (b, Weight::ONE)]).unwrap();
    let config = ProbeConfig::new().jitter(Duration::ZERO); // 5 s, 1 s, rise 2, fall 3
    let start = TokioInstant::now();
    let _task = pool.spawn_health_probes(TcpProbe::new(), config).unwrap();
    let settle = Duration::from_millis(100);

    // New backends are probed at once.
    until(start + settle).await;
    assert_eq!(
        (stat(&pool, ids[0]).probes, stat(&pool, ids[1]).probes),
        (1, 1)
    );
    assert!(is_healthy(&pool, ids[1]));

    drop(flaky);
    // Two failures: still healthy (fall is 3).
    for (n, secs) in [(2, 5), (3, 10)] {
        until(start + Duration::from_secs(secs) + settle).await;
        let s = stat(&pool, ids[1]);
        assert_eq!(s.probes, n);
        assert!(s.health.is_healthy(), "unhealthy after {} failures", n - 1);
    }
    until(start + Duration::from_secs(15) + settle).await;
    let s = stat(&pool, ids[1]);
    assert_eq!(s.probes, 4);
    assert!(
        matches!(s.health, Verdict::Unhealthy(Reason::ProbeFailed { .. })),
        "{:?}",
        s.health
    );
    for _ in 0..10 {
        assert_eq!(pool.pick(&PickContext::new()).unwrap().id(), ids[0]);
    }

    // Open again: one success is not enough (rise is 2), two are.
    let _again = TcpListener::bind(b).await.unwrap();
    until(start + Duration::from_secs(20) + settle).await;
    assert_eq!(stat(&pool, ids[1]).probes, 5);
    assert!(!is_healthy(&pool, ids[1]));
    until(start + Duration::from_secs(25) + settle).await;
    assert_eq!(stat(&pool, ids[1]).probes, 6);
    assert!(is_healthy(&pool, ids[1]));

    // The steady backend was probed on the same schedule and never flipped.
    let s = stat(&pool, ids[0]);
    assert_eq!((s.probes, s.health), (6, Verdict::Healthy));
}

#[tokio::test(start_paused = true)]
async fn probe_intervals_stay_within_the_jitter_bounds() {
    let log: Arc<Mutex<HashMap<String, Vec<TokioInstant>>>> = Arc::default();
    let record = Arc::clone(&log);
    let probe = probe_fn(move |addr: &String| {
        record
            .lock()
            .unwrap()
            .entry(addr.clone())
            .or_default()
            .push(TokioInstant::now());
        async { Ok::<(), ProbeError>(()) }
    });
    let config = ProbeConfig::new()
        .interval(Duration::from_secs(5))
        .jitter(Duration::from_secs(1))
        .seed(42);
    let (low, high) = config.interval_bounds();
    let pool = Pool::new(RoundRobin::new());
    pool.extend((0..3).map(|i| (format!("h{i}"), Weight::ONE)))
        .unwrap();
    let start = TokioInstant::now();
    let _task = pool.spawn_health_probes(probe, config).unwrap();

    until(start + Duration::from_millis(100_300)).await;
    pool.insert("late".to_string(), Weight::ONE).unwrap();
    until(start + Duration::from_millis(100_301)).await;
    until(start + Duration::from_secs(400)).await;

    let log = log.lock().unwrap();
    assert_eq!(
        log["late"][0],
        start + Duration::from_millis(100_300),
        "a new backend is probed at once"
    );
    let mut gaps = Vec::new();
    for (addr, times) in log.iter() {
        if addr != "late" {
            assert_eq!(times[0], start, "{addr} is probed at once");
        }
        assert!(times.len() >= 50, "{addr}: {} probes", times.len());
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                (low..=high).contains(&gap),
                "{addr}: gap {gap:?} outside [{low:?}, {high:?}]"
            );
            gaps.push(gap);
        }
    }
    gaps.sort();
    gaps.dedup();
    assert!(gaps.len() > 20, "intervals are not jittered: {gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn a_probe_timeout_counts_as_a_failure() {
    let probe = probe_fn(|_: &&str| async {
        std::future::pending::<()>().await;
        Ok(())
    });
    let pool = Pool::new(RoundRobin::new());
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE)])
        .unwrap();
    let config = ProbeConfig::new().jitter(Duration::ZERO).fall(1);
    let start = TokioInstant::now();
    let _task = pool.spawn_health_probes(probe, config).unwrap();
    until(start + Duration::from_millis(999)).await;
    assert!(is_healthy(&pool, ids[0]));
    until(start + Duration::from_millis(1001)).await;
    let s = stat(&pool, ids[0]);
    assert_eq!(s.probes, 1);
    assert!(
        s.health
            .reason()
            .is_some_and(|r| r.to_string().contains("timed out")),
        "{:?}",
        s.health
    );
}

/// Two of three backends fail their probes: the panic threshold (50%, fail open) no
/// longer puts them back — their failure is confirmed and one backend is healthy, so
/// every pick goes to it. When the third fails too, nothing is healthy and fail-open
/// spreads over all three again (the broken-health-check case the valve is for).
#[tokio::test(start_paused = true)]
async fn confirmed_probe_failures_stay_out_of_panic_while_one_backend_is_healthy() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let c_down = Arc::new(AtomicBool::new(false));
    let flag = c_down.clone();
    let probe = probe_fn(move |addr: &&str| {
        let down = *addr != "c" || flag.load(Ordering::SeqCst);
        async move {
            if down {
                Err(ProbeError::new("connection refused"))
            } else {
                Ok(())
            }
        }
    });
    let pool = Pool::new(RoundRobin::new());
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
        .unwrap();
    let config = ProbeConfig::new().jitter(Duration::ZERO).fall(1);
    let start = TokioInstant::now();
    let _task = pool.spawn_health_probes(probe, config).unwrap();
    until(start + Duration::from_millis(10)).await;
    assert!(!is_healthy(&pool, ids[0]) && !is_healthy(&pool, ids[1]));
    let prepared = pool.snapshot();
    assert!(!prepared.snapshot().is_panicking());
    assert_eq!(prepared.snapshot().eligible(), [2]);
    for _ in 0..300 {
        assert_eq!(pool.pick(&PickContext::new()).unwrap().id(), ids[2]);
    }

    c_down.store(true, Ordering::SeqCst);
    until(start + Duration::from_millis(5_010)).await;
    let prepared = pool.snapshot();
    assert!(prepared.snapshot().is_panicking(), "none healthy: panic");
    assert_eq!(
        prepared.snapshot().eligible(),
        [0, 1, 2],
        "fail open over all"
    );
}

/// Backends `a` and `b` under `detection`, probed every 5 s (no jitter) by a probe that
/// always passes; at 1 s `a` fails five times in a row and is ejected. Returns the pool,
/// the ids, the start and the probe task (the probes stop when it is dropped).
async fn a_ejected_at_one_second_under_passing_probes(
    detection: OutlierDetection,
) -> (
    Pool<&'static str, RoundRobin>,
    Vec<BackendId>,
    TokioInstant,
    tower_lb::pool::HealthTask,
) {
    let (pool, ids) = holding(
        Pool::builder(RoundRobin::new()).outlier_detection(detection),
        letters(2),
    );
    let probe = probe_fn(|_: &&str| async { Ok(()) });
    let start = TokioInstant::now();
    let task = pool
        .spawn_health_probes(probe, ProbeConfig::new().jitter(Duration::ZERO))
        .unwrap();
    until(start + Duration::from_secs(1)).await;
    fail(&pool, ids[0], 5);
    assert!(!is_healthy(&pool, ids[0]));
    (pool, ids, start, task)
}

#[tokio::test(start_paused = true)]
async fn a_successful_probe_ends_an_ejection_early() {
    let (pool, ids, start, _task) =
        a_ejected_at_one_second_under_passing_probes(consecutive_only()).await;
    // The next probe (at 5 s) began after the ejection and succeeds.
    until(start + Duration::from_millis(5_100)).await;
    assert!(is_healthy(&pool, ids[0]));
}

#[tokio::test(start_paused = true)]
async fn the_task_ejects_on_guard_signals_and_returns_on_time() {
    let (pool, ids) = holding(
        Pool::builder(RoundRobin::new()).outlier_detection(consecutive_only()),
        letters(2),
    );
    let _task = pool.spawn_health().unwrap();
    let state = pool.snapshot().snapshot().backends()[0].state().clone();
    let start = TokioInstant::now();
    for _ in 0..5 {
        state.start().failure();
    }
    until(start + MS).await;
    assert!(!is_healthy(&pool, ids[0]), "the task did not eject");
    until(start + Duration::from_secs(30) - MS).await;
    assert!(!is_healthy(&pool, ids[0]));
    until(start + Duration::from_secs(30) + MS).await;
    assert!(
        is_healthy(&pool, ids[0]),
        "the task did not return it on time"
    );
}

#[tokio::test(start_paused = true)]
async fn the_task_stops_when_the_pool_is_dropped_and_is_one_per_pool() {
    let pool: Pool<&str, _> = Pool::new(RoundRobin::new());
    pool.insert("a", Weight::ONE).unwrap();
    let task = pool
        .spawn_health_probes(probe_fn(|_: &&str| async { Ok(()) }), ProbeConfig::new())
        .unwrap();
    assert_eq!(pool.spawn_health().unwrap_err(), SpawnError::AlreadyRunning);
    until(TokioInstant::now() + Duration::from_secs(12)).await;
    assert!(!task.is_finished());
    drop(pool);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the task outlived its pool");
}

#[test]
fn spawning_outside_a_runtime_is_an_error() {
    let pool: Pool<&str, _> = Pool::new(RoundRobin::new());
    assert_eq!(pool.spawn_health().unwrap_err(), SpawnError::NoRuntime);
}

#[cfg(feature = "tower")]
#[tokio::test(start_paused = true)]
async fn a_tower_service_is_a_probe() {
    use std::task::{Context, Poll};
    use tower_lb::health::ServiceProbe;

    #[derive(Clone)]
    struct Check;
    impl tower_service::Service<&'static str> for Check {
        type Response = ();
        type Error = String;
        type Future = std::future::Ready<Result<(), String>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, addr: &'static str) -> Self::Future {
            std::future::ready(if addr == "bad" {
                Err("bad backend".into())
            } else {
                Ok(())
            })
        }
    }
    let pool = Pool::new(RoundRobin::new());
    let ids = pool
        .extend([("good", Weight::ONE), ("bad", Weight::ONE)])
        .unwrap();
    let config = ProbeConfig::new().fall(1);
    let _task = pool
        .spawn_health_probes(ServiceProbe::new(Check), config)
        .unwrap();
    until(TokioInstant::now() + Duration::from_millis(10)).await;
    assert!(is_healthy(&pool, ids[0]));
    assert_eq!(
        stat(&pool, ids[1]).health,
        Verdict::Unhealthy(Reason::ProbeFailed {
            error: "bad backend".into()
        })
    );
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn the_http_probe_treats_2xx_3xx_as_healthy() {
    use std::sync::atomic::{AtomicU16, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower_lb::health::HttpProbe;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(204));
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let (s, r) = (Arc::clone(&status), Arc::clone(&requests));
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            r.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let code = s.load(Ordering::Relaxed);
            let _ = conn
                .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
        }
    });
    let pool: Pool<SocketAddr, _> = Pool::new(RoundRobin::new());
    let id = pool.insert(addr, Weight::ONE).unwrap();
    let config = every_result_counts();
    let probe = HttpProbe::new("/healthz")
        .unwrap()
        .host("api.test")
        .unwrap();
    let start = TokioInstant::now();
    let _task = pool.spawn_health_probes(probe, config).unwrap();
    let settle = Duration::from_millis(100);

    until(start + settle).await;
    assert_eq!(stat(&pool, id).probes, 1);
    assert!(is_healthy(&pool, id));
    status.store(503, Ordering::Relaxed);
    until(start + Duration::from_secs(5) + settle).await;
    let health = stat(&pool, id).health;
    assert!(
        health
            .reason()
            .is_some_and(|r| r.to_string().contains("503")),
        "{health:?}"
    );
    status.store(302, Ordering::Relaxed);
    until(start + Duration::from_secs(10) + settle).await;
    assert!(is_healthy(&pool, id));

    let first = requests.lock().unwrap()[0].clone();
    assert!(first.starts_with("GET /healthz HTTP/1.1\r\n"), "{first:?}");
    assert!(first.contains("\r\nHost: api.test\r\n"), "{first:?}");
}

/// Probe start times, per backend, in time since `start`.
type Log = Arc<Mutex<HashMap<&'static str, Vec<Duration>>>>;

/// A probe that logs when each probe starts; probes of `slow` take `slow_for`.
fn logging_probe(
    log: Log,
    start: TokioInstant,
    slow: &'static str,
    slow_for: Duration,
) -> impl tower_lb::health::Probe<&'static str> {
    probe_fn(move |addr: &&'static str| {
        let addr = *addr;
        log.lock()
            .unwrap()
            .entry(addr)
            .or_default()
            .push(TokioInstant::now() - start);
        async move {
            if addr == slow {
                tokio::time::sleep(slow_for).await;
            }
            Ok::<(), ProbeError>(())
        }
    })
}

/// "The next probe of a backend is due one interval after the previous one began": a
/// backend whose probes take 3 s of a 5 s interval is probed at 0, 5, 10, 15 s — not at
/// 0, 8, 16 as it would be counting from the end — and "a slow backend delays no other":
/// the fast backends beside it are probed at exactly the same times.
#[tokio::test(start_paused = true)]
async fn probes_are_due_an_interval_after_the_previous_start_and_a_slow_one_delays_no_other() {
    let log: Log = Arc::default();
    let start = TokioInstant::now();
    let pool = Pool::new(RoundRobin::new());
    pool.extend([
        ("slow", Weight::ONE),
        ("fast", Weight::ONE),
        ("quick", Weight::ONE),
    ])
    .unwrap();
    let config = ProbeConfig::new()
        .interval(Duration::from_secs(5))
        .timeout(Duration::from_secs(4))
        .jitter(Duration::ZERO);
    let probe = logging_probe(log.clone(), start, "slow", Duration::from_secs(3));
    let _task = pool.spawn_health_probes(probe, config).unwrap();
    until(start + Duration::from_millis(17_500)).await;
    let want: Vec<Duration> = [0u64, 5, 10, 15].map(Duration::from_secs).to_vec();
    let log = log.lock().unwrap();
    for name in ["slow", "fast", "quick"] {
        assert_eq!(log[name], want, "{name}");
    }
    for id in pool.stats().iter().map(|s| s.id) {
        assert!(is_healthy(&pool, id), "3 s of a 4 s timeout is a success");
    }
}

/// Slow start re-enters after a recovery from failed probes too: a backend that failed
/// its probes (fall 1) and passes again (rise 1) ramps from the minimum.
#[tokio::test(start_paused = true)]
async fn slow_start_reenters_after_failed_probes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let down = Arc::new(AtomicBool::new(false));
    let flag = down.clone();
    let probe = probe_fn(move |addr: &&str| {
        let fails = *addr == "b" && flag.load(Ordering::SeqCst);
        async move {
            if fails {
                Err(ProbeError::new("connection refused"))
            } else {
                Ok(())
            }
        }
    });
    let window = Duration::from_secs(100);
    let (pool, ids) = holding(
        Pool::builder(RoundRobin::new()).slow_start(SlowStart::new(window)),
        letters(3),
    );
    let config = every_result_counts();
    let start = TokioInstant::now();
    let _task = pool.spawn_health_probes(probe, config).unwrap();
    // The joins' ramps end; then b fails its probe at 105 s and passes at 110 s.
    until(start + window + Duration::from_millis(100)).await;
    assert!(stat(&pool, ids[1]).ramp.is_none());
    down.store(true, Ordering::SeqCst);
    until(start + Duration::from_millis(105_100)).await;
    assert!(!is_healthy(&pool, ids[1]));
    down.store(false, Ordering::SeqCst);
    until(start + Duration::from_millis(110_100)).await;
    assert!(is_healthy(&pool, ids[1]));
    let ramp = stat(&pool, ids[1])
        .ramp
        .expect("ramping after the probes passed");
    assert!((ramp - 0.1).abs() <= 0.005, "{ramp}");
    assert!(stat(&pool, ids[0]).ramp.is_none());
}

/// Under the background task, a ramp moves one step per update interval: over a 10 s
/// window with a 1 s interval, the pool is republished once a second — ten steps — and
/// the effective weight follows the ramp without anyone calling `tick`.
#[tokio::test(start_paused = true)]
async fn the_task_steps_a_ramp_once_per_update_interval() {
    let window = Duration::from_secs(10);
    let (pool, ids) = holding(
        Pool::builder(RoundRobin::new())
            .slow_start(ramp_from_one_percent(window).update_interval(Duration::from_secs(1))),
        letters(2),
    );
    let _task = pool.spawn_health().unwrap();
    let start = TokioInstant::now();
    until(start + window + Duration::from_millis(500)).await;
    pool.mark_down(ids[1]).unwrap();
    pool.mark_up(ids[1]).unwrap();
    let t0 = TokioInstant::now();
    let mut versions = vec![pool.snapshot().snapshot().version()];
    for tenth in 1..=130u64 {
        until(t0 + Duration::from_millis(100 * tenth)).await;
        versions.push(pool.snapshot().snapshot().version());
    }
    let steps = versions.windows(2).filter(|w| w[1] != w[0]).count();
    assert_eq!(
        steps, 10,
        "one republication per second of the 10 s ramp: {versions:?}"
    );
    assert!(
        stat(&pool, ids[1]).ramp.is_none(),
        "the ramp ended on its own"
    );
}

/// `uneject_on_probe_success(false)`: a probe that succeeds after an ejection began no
/// longer ends it — the backend serves its ejection in full (30 s), as a TCP probe that
/// passes while requests fail must not bring it back.
#[tokio::test(start_paused = true)]
async fn a_successful_probe_leaves_an_ejection_alone_when_told_to() {
    let detection = consecutive_only().uneject_on_probe_success(false);
    let (pool, ids, start, _task) = a_ejected_at_one_second_under_passing_probes(detection).await;
    // Probes at 5, 10, … 30 s succeed; the ejection (from 1 s, for 30 s) stands.
    until(start + Duration::from_millis(30_900)).await;
    assert!(!is_healthy(&pool, ids[0]), "a probe ended the ejection");
    until(start + Duration::from_millis(31_100)).await;
    assert!(is_healthy(&pool, ids[0]), "back when its time was up");
}

/// The probe settings are honoured: an interval that is not the default (2 s ± 0.5 s
/// between one backend's probes), and the seed — the same seed gives the same jittered
/// schedule, another seed another one.
#[tokio::test(start_paused = true)]
async fn a_seeded_schedule_at_a_custom_interval_is_reproducible() {
    async fn schedule(seed: u64) -> Vec<Duration> {
        let log: Arc<Mutex<Vec<TokioInstant>>> = Arc::default();
        let record = Arc::clone(&log);
        let probe = probe_fn(move |_: &&str| {
            record.lock().unwrap().push(TokioInstant::now());
            async { Ok::<(), ProbeError>(()) }
        });
        let pool = Pool::new(RoundRobin::new());
        pool.insert("a", Weight::ONE).unwrap();
        let config = ProbeConfig::new()
            .interval(Duration::from_secs(2))
            .jitter(Duration::from_millis(500))
            .seed(seed);
        let start = TokioInstant::now();
        let task = pool.spawn_health_probes(probe, config).unwrap();
        until(start + Duration::from_secs(60)).await;
        drop(task);
        let times = log.lock().unwrap();
        times.iter().map(|&t| t - start).collect()
    }
    let first = schedule(7).await;
    assert_eq!(first, schedule(7).await, "the same seed, another schedule");
    assert_ne!(first, schedule(8).await, "another seed, the same schedule");
    assert!(first.len() >= 24, "{} probes in 60 s", first.len());
    for pair in first.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (Duration::from_millis(1500)..=Duration::from_millis(2500)).contains(&gap),
            "gap {gap:?}"
        );
    }
}

/// Probes name themselves in debug output (closures and services have none of their own).
#[cfg(feature = "tower")]
#[test]
fn probes_name_themselves_in_debug_output() {
    let closure = probe_fn(|_: &&str| async { Ok::<(), ProbeError>(()) });
    assert_eq!(format!("{closure:?}"), "ProbeFn { .. }");
    let service = tower::service_fn(|_: &str| async { Ok::<(), std::io::Error>(()) });
    let probe = tower_lb::health::ServiceProbe::new(service);
    assert_eq!(format!("{probe:?}"), "ServiceProbe { .. }");
}
