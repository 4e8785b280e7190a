//! A slow backend: the load-aware strategies move load away from it.

use super::*;

// ---------------------------------------------------------------------------------------
// Slow backend
// ---------------------------------------------------------------------------------------

const SLOW_MS: u64 = 200;

/// The share of `requests` that the backend answering `SLOW_MS` later than the other two
/// receives with `picker`, from 32 clients; and how long the run took.
async fn slow_share<P: Picker<HttpTarget> + 'static>(
    picker: P,
    requests: usize,
) -> (f64, Duration) {
    let servers = servers(&["a", "b", "slow"]).await;
    servers[2].set_delay_ms(SLOW_MS);
    let pool = Pool::new(picker);
    add(&pool, &servers);
    let started = Instant::now();
    let tally = load(
        BoxCloneService::new(balance(&pool)),
        CLIENTS,
        Bound::Requests(requests),
        Arc::default(),
        |_| get(&[]),
    )
    .await;
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert!(pool.stats().iter().all(|s| s.in_flight == 0));
    let hits: Vec<usize> = servers.iter().map(TestServer::hits).collect();
    assert_eq!(hits.iter().sum::<usize>(), requests);
    (hits[2] as f64 / requests as f64, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_load_moves_away_with_peak_ewma_and_p2c() {
    // The control: round robin cannot move load, so the slow backend keeps its third —
    // the measurement below would see it if a strategy did not adapt.
    let (rr, rr_time) = slow_share(RoundRobin::new(), 300).await;
    assert!((rr - 1.0 / 3.0).abs() < 0.01, "round robin share {rr:.3}");
    let (ewma, ewma_time) = slow_share(PeakEwma::with_seed(5), 4000).await;
    let (p2c, p2c_time) = slow_share(PowerOfTwoChoices::with_seed(5), 4000).await;
    // Peak EWMA learns the latency at the first answer and stops sending there.
    assert!(ewma < 0.10, "PeakEwma share {ewma:.4}");
    // P2C sees only requests in flight: the slow backend keeps getting picked while it
    // holds fewer than the others, about a third of the clients, so its share is the
    // fraction of throughput those few in-flight requests make — far below a third.
    assert!(p2c < 1.0 / 6.0, "PowerOfTwoChoices share {p2c:.4}");
    println!(
        "slow backend (+{SLOW_MS} ms, {CLIENTS} clients): share PeakEwma {:.2}% of 4000 ({:.1} s), \
         PowerOfTwoChoices {:.2}% of 4000 ({:.1} s), RoundRobin control {:.1}% of 300 ({:.1} s)",
        ewma * 100.0,
        ewma_time.as_secs_f64(),
        p2c * 100.0,
        p2c_time.as_secs_f64(),
        rr * 100.0,
        rr_time.as_secs_f64(),
    );
}
