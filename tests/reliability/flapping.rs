//! A flapping backend: ejections grow as specified, retries keep clients at 99.9%.

use super::*;

// ---------------------------------------------------------------------------------------
// Flapping backend
// ---------------------------------------------------------------------------------------

type Local = BoxCloneSyncService<u64, String, BoxError>;

/// An in-process backend answering after `latency` (tokio's clock); while `down` is set,
/// requests that finish fail.
fn local(
    name: &'static str,
    latency: Duration,
    down: Option<Arc<AtomicBool>>,
) -> BackendService<&'static str, Local> {
    let svc = tower::service_fn(move |_req: u64| {
        let down = down.clone();
        async move {
            tokio::time::sleep(latency).await;
            if down.is_some_and(|d| d.load(Ordering::SeqCst)) {
                Err::<String, BoxError>(format!("{name} is down").into())
            } else {
                Ok(name.to_owned())
            }
        }
    });
    BackendService::new(name, BoxCloneSyncService::new(svc))
}

/// Up and down every 500 ms for 30 s of tokio's paused clock: each ejection lasts
/// min(base × k, cap) for the k-th, to the millisecond, and clients with retries see
/// at least 99.9% successes.
#[tokio::test(start_paused = true)]
async fn flapping_backend_ejections_grow_as_specified_and_retries_hold_99_9() {
    const BASE: Duration = Duration::from_millis(250);
    const CAP: Duration = Duration::from_secs(2);
    const PERIOD: Duration = Duration::from_millis(500);
    const RUN: Duration = Duration::from_secs(30);
    const LATENCY: Duration = Duration::from_millis(2);
    const FLAP_CLIENTS: usize = 8;
    let detection = OutlierDetection::new()
        .consecutive_failures(THRESHOLD)
        .base_ejection_time(BASE)
        .max_ejection_time(CAP)
        .ejection_jitter(Duration::ZERO)
        .interval(Duration::from_secs(3600));
    // Round robin: ejection is its only way off a failing backend, which is what this
    // test times. (P2C and the other load-aware strategies charge the flapping backend's
    // failures as load and send it too few requests to reach the threshold every period.)
    let pool = Pool::builder(RoundRobin::new())
        .outlier_detection(detection)
        .health_seed(3)
        .build()
        .unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let flappy = pool
        .insert(local("flappy", LATENCY, Some(down.clone())), Weight::ONE)
        .unwrap();
    for name in ["b", "c"] {
        pool.insert(local(name, LATENCY, None), Weight::ONE)
            .unwrap();
    }
    let health = pool.spawn_health().unwrap();
    let policy = RetryIdempotent::new(2);
    // Boxed: type erasure spares the spawned clients a higher-ranked `Send` proof.
    let svc: BoxCloneService<u64, String, BoxError> =
        BoxCloneService::new(Retry::new(policy.clone(), Balance::new(pool.clone())));
    let t0 = tokio::time::Instant::now();
    let end = t0 + RUN;

    let flipper = tokio::spawn(async move {
        let mut at = t0 + PERIOD;
        while at < end {
            tokio::time::sleep_until(at).await;
            down.fetch_xor(true, Ordering::SeqCst);
            at += PERIOD;
        }
    });
    // (ejected at, ejections then, scheduled time left then, returned at)
    type Ejected = (Duration, u64, Duration, Option<Duration>);
    let monitor = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut log: Vec<Ejected> = Vec::new();
            let mut out = false;
            while tokio::time::Instant::now() < end {
                let eligible = pool.snapshot().snapshot().is_eligible(0);
                let now = tokio::time::Instant::now() - t0;
                if out == eligible {
                    out = !eligible;
                    let s = pool.stats().into_iter().find(|s| s.id == flappy).unwrap();
                    match log.last_mut() {
                        Some(last) if eligible => last.3 = Some(now),
                        _ => log.push((now, s.ejections, s.returns_in.unwrap_or_default(), None)),
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            log
        }
    });
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..FLAP_CLIENTS as u64 {
        let svc = svc.clone();
        clients.spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut i = c << 32;
            while tokio::time::Instant::now() < end {
                let call = svc.clone().oneshot(i);
                match tokio::time::timeout(Duration::from_secs(5), call).await {
                    Ok(Ok(_)) => ok += 1,
                    _ => failed += 1,
                }
                i += 1;
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(joined) = clients.join_next().await {
        let (o, f) = joined.unwrap();
        ok += o;
        failed += f;
    }
    flipper.await.unwrap();
    let log = monitor.await.unwrap();
    health.abort();

    let ms = |d: Duration| d.as_millis() as u64;
    let mut lengths = Vec::new();
    for (n, &(at, ejections, left, back)) in log.iter().enumerate() {
        let k = n as u32 + 1;
        // The documented length, computed here: min(base × k, cap).
        let want = (BASE * k).min(CAP);
        assert_eq!(ejections, u64::from(k), "ejection {k} at {at:?}: {log:?}");
        // Seen at most 1 ms after it began: the time left is the scheduled length, or 1 ms less.
        assert!(
            left <= want && want - left <= Duration::from_millis(1),
            "ejection {k}: {left:?} left, {want:?} scheduled: {log:?}"
        );
        if let Some(back) = back {
            let out = back - at;
            assert!(
                out.abs_diff(want) <= Duration::from_millis(2),
                "ejection {k} lasted {out:?}, not {want:?}: {log:?}"
            );
            lengths.push(ms(out));
        }
    }
    assert!(
        log.len() >= 10,
        "the cap is reached after 8 ejections: {log:?}"
    );
    let total = ok + failed;
    let rate = ok as f64 / total as f64;
    assert!(
        rate >= 0.999,
        "success rate {rate:.5} ({failed} of {total} failed)"
    );
    let retried = *policy.stats.lock().unwrap();
    println!(
        "flapping backend (paused clock, {} s up/down every {} ms): {} ejections lasting {lengths:?} ms \
         (base {} ms × k, cap {} ms); {total} requests, {failed} failed, success {:.3}% with {} retries",
        RUN.as_secs(),
        PERIOD.as_millis(),
        log.len(),
        BASE.as_millis(),
        CAP.as_millis(),
        rate * 100.0,
        retried.retries,
    );
}

/// The same against a real server that drops its connections in every other phase of
/// 1 000 requests (16 clients, retries): counted in requests, not seconds, and health on
/// a manual clock, so nothing depends on the machine's speed. In each down phase the
/// server is ejected exactly once more — its k-th ejection lasting exactly
/// min(base × k, cap), computed here, read while the health clock stands still — and
/// returns when the clock is moved by exactly that; clients with retries see at least
/// 99.9% successes over the 8 000 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_real_server_with_retries_holds_99_9() {
    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_millis(250);
    const PHASES: u32 = 8;
    const PER_PHASE: usize = 1_000;
    let servers = servers(&["flappy", "b", "c"]).await;
    let clock = tower_lb::clock::ManualClock::new();
    // Round robin, as in the paused-clock test: every third attempt reaches the flapping
    // server until it is ejected, so each down phase reaches the threshold.
    let pool = Pool::builder(RoundRobin::new())
        .clock(clock.reader())
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(THRESHOLD)
                .base_ejection_time(BASE)
                .max_ejection_time(CAP)
                .ejection_jitter(Duration::ZERO)
                .interval(Duration::from_secs(3600)),
        )
        .build()
        .unwrap();
    let ids = add(&pool, &servers);
    let flappy = ids[0];
    let policy = RetryIdempotent::new(3);
    let svc: HttpService = BoxCloneService::new(Retry::new(policy.clone(), balance(&pool)));
    let (mut ok, mut failed, mut timed_out) = (0u64, 0u64, 0u64);
    let mut lengths = Vec::new();
    for phase in 0..PHASES {
        let down = phase % 2 == 0;
        servers[0].set_down(down);
        let hits_before = servers[0].hits();
        let tally = load(
            svc.clone(),
            16,
            Bound::Requests(PER_PHASE),
            Arc::default(),
            |_| get(&[]),
        )
        .await;
        (ok, failed, timed_out) = (
            ok + tally.ok,
            failed + tally.failed,
            timed_out + tally.timed_out,
        );
        let s = stats_of(&pool, flappy);
        if down {
            let k = phase / 2 + 1;
            let want = (BASE * k).min(CAP);
            assert_eq!(s.ejections, u64::from(k), "phase {phase}: {s:?}");
            assert_eq!(s.returns_in, Some(want), "ejection {k}: {s:?}");
            assert!(!s.eligible);
            lengths.push(want.as_millis());
            // Up again, and the health clock moved by exactly the ejection: back.
            servers[0].set_down(false);
            clock.advance(want - Duration::from_millis(1));
            pool.tick();
            assert!(!stats_of(&pool, flappy).eligible, "back 1 ms early");
            clock.advance(Duration::from_millis(1));
            pool.tick();
            assert!(stats_of(&pool, flappy).eligible, "not back after {want:?}");
        } else {
            assert_eq!(
                s.ejections,
                u64::from(phase / 2 + 1),
                "no ejection while up"
            );
            assert!(
                servers[0].hits() - hits_before >= PER_PHASE / 4,
                "back in rotation: {} of {PER_PHASE}",
                servers[0].hits() - hits_before
            );
        }
    }
    let total = ok + failed;
    assert_eq!(total, u64::from(PHASES) * PER_PHASE as u64);
    assert!(
        failed * 1000 <= total,
        "{failed} of {total} failed ({timed_out} timed out)"
    );
    let retried = *policy.stats.lock().unwrap();
    println!(
        "flapping real server ({PHASES} phases of {PER_PHASE} requests, down every other): \
         {total} requests, {failed} failed ({timed_out} timed out), success {:.3}% with {} \
         retries; ejections lasting {lengths:?} ms (base {} ms × k, cap {} ms)",
        ok as f64 * 100.0 / total as f64,
        retried.retries,
        BASE.as_millis(),
        CAP.as_millis(),
    );
}
