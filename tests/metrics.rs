//! The `metrics` feature: every series checked against a scripted scenario, read back
//! from the Prometheus text that `metrics-exporter-prometheus`'s recorder renders
//! (installed for this thread only, so tests do not share a recorder).

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tower::ServiceExt;
use tower_lb::balance::{BackendService, BalanceLayer, PerBackend};
use tower_lb::clock::ManualClock;
use tower_lb::health::OutlierDetection;
use tower_lb::{Pool, RoundRobin, Weight};

/// A Prometheus recorder (installed for this thread only by the caller) and its handle.
fn recorder() -> (PrometheusRecorder, PrometheusHandle) {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    (recorder, handle)
}

/// Every series of the rendered text, as `name{label=value,...}` → value (quotes
/// dropped; histograms are rendered as summaries: `_count`, `_sum`, quantiles).
fn read(handle: &PrometheusHandle) -> HashMap<String, f64> {
    handle
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.replace('"', ""), value.parse().ok()?))
        })
        .collect()
}

fn value(series: &HashMap<String, f64>, key: &str) -> f64 {
    match series.get(key) {
        Some(v) => *v,
        None => panic!("{key}: no such series in {:?}", series.keys()),
    }
}

fn counter(series: &HashMap<String, f64>, key: &str) -> u64 {
    value(series, key) as u64
}

fn gauge(series: &HashMap<String, f64>, key: &str) -> f64 {
    value(series, key)
}

/// How many samples the histogram of `backend` holds, and their sum.
fn durations(series: &HashMap<String, f64>, backend: &str) -> (u64, f64) {
    (
        value(
            series,
            &format!("tower_lb_request_duration_seconds_count{{backend={backend}}}"),
        ) as u64,
        value(
            series,
            &format!("tower_lb_request_duration_seconds_sum{{backend={backend}}}"),
        ),
    )
}

fn requests(backend: &str, outcome: &str) -> String {
    format!("tower_lb_backend_requests_total{{backend={backend},outcome={outcome}}}")
}

#[test]
fn every_series_follows_a_scripted_scenario() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);

    let clock = ManualClock::new();
    let pool = Pool::builder(RoundRobin::new())
        .clock(clock.reader())
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(2)
                .ejection_jitter(Duration::ZERO),
        )
        .health_seed(7)
        .cancelled_as_failure_after(None)
        .metrics_label(|addr: &&str| addr.to_string())
        .build()
        .unwrap();
    let a = pool.insert("a", Weight::new(2).unwrap()).unwrap();
    let b = pool.insert("b", Weight::ONE).unwrap();
    let state = |id| {
        let prepared = pool.snapshot();
        let snapshot = prepared.snapshot();
        let index = snapshot.index_of(id).unwrap();
        std::sync::Arc::clone(snapshot.backends()[index].state())
    };
    let s = read(&snapshotter);
    assert_eq!(gauge(&s, "tower_lb_backend_weight{backend=a}"), 2.0);
    assert_eq!(gauge(&s, "tower_lb_backend_weight{backend=b}"), 1.0);
    assert_eq!(gauge(&s, "tower_lb_backend_healthy{backend=a}"), 1.0);
    assert_eq!(
        counter(&s, "tower_lb_backend_ejections_total{backend=a}"),
        0
    );

    // On a: two in flight, then one success, one cancelled (dropped unfinished).
    let (sa, sb) = (state(a), state(b));
    let first = sa.start();
    let second = sa.start();
    assert_eq!(
        gauge(&read(&snapshotter), "tower_lb_backend_in_flight{backend=a}"),
        2.0
    );
    first.success();
    drop(second);
    // On b: a success, a failure.
    sb.start().success();
    sb.start().failure();
    let s = read(&snapshotter);
    assert_eq!(gauge(&s, "tower_lb_backend_in_flight{backend=a}"), 0.0);
    assert_eq!(gauge(&s, "tower_lb_backend_in_flight{backend=b}"), 0.0);
    assert_eq!(counter(&s, &requests("a", "success")), 1);
    assert_eq!(counter(&s, &requests("a", "cancelled")), 1);
    assert_eq!(counter(&s, &requests("a", "failure")), 0);
    assert_eq!(counter(&s, &requests("b", "success")), 1);
    assert_eq!(counter(&s, &requests("b", "failure")), 1);
    assert_eq!(counter(&s, &requests("b", "timeout")), 0);
    assert_eq!(durations(&s, "a").0, 2);
    assert_eq!(durations(&s, "b").0, 2);

    // Two failures in a row on a: ejected at the next tick.
    sa.start().failure();
    sa.start().failure();
    pool.tick();
    let s = read(&snapshotter);
    assert_eq!(counter(&s, &requests("a", "failure")), 2);
    assert_eq!(gauge(&s, "tower_lb_backend_healthy{backend=a}"), 0.0);
    assert_eq!(gauge(&s, "tower_lb_backend_healthy{backend=b}"), 1.0);
    assert_eq!(
        counter(&s, "tower_lb_backend_ejections_total{backend=a}"),
        1
    );
    // Back after the base ejection time (30 s).
    clock.advance(Duration::from_secs(31));
    pool.tick();
    let s = read(&snapshotter);
    assert_eq!(gauge(&s, "tower_lb_backend_healthy{backend=a}"), 1.0);
    assert_eq!(
        counter(&s, "tower_lb_backend_ejections_total{backend=a}"),
        1
    );

    // A reweight, then b removed: its gauges go to 0.
    pool.set_weight(a, Weight::new(5).unwrap()).unwrap();
    assert_eq!(
        gauge(&read(&snapshotter), "tower_lb_backend_weight{backend=a}"),
        5.0
    );
    pool.remove(b).unwrap();
    let s = read(&snapshotter);
    assert_eq!(gauge(&s, "tower_lb_backend_weight{backend=b}"), 0.0);
    assert_eq!(gauge(&s, "tower_lb_backend_healthy{backend=b}"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_counts_as_a_timeout_with_its_duration() {
    let (recorder, snapshotter) = recorder();
    // A current-thread runtime: the whole test runs on this thread.
    let _local = metrics::set_default_local_recorder(&recorder);

    let hang = tower::service_fn(|_: ()| std::future::pending::<Result<(), Infallible>>());
    let pool = Pool::builder(RoundRobin::new())
        .metrics_label(|b: &BackendService<&str, _>| b.key().to_string())
        .build()
        .unwrap();
    pool.insert(BackendService::new("slow", hang), Weight::ONE)
        .unwrap();
    let balance = BalanceLayer::new(pool)
        .timeout(Duration::from_millis(250))
        .build(PerBackend);
    let error = balance.oneshot(()).await.unwrap_err();
    assert!(error.is::<tower_lb::TimedOut>(), "{error}");
    let s = read(&snapshotter);
    assert_eq!(counter(&s, &requests("slow", "timeout")), 1);
    assert_eq!(counter(&s, &requests("slow", "failure")), 0);
    assert_eq!(counter(&s, &requests("slow", "cancelled")), 0);
    assert_eq!(gauge(&s, "tower_lb_backend_in_flight{backend=slow}"), 0.0);
    let (count, sum) = durations(&s, "slow");
    assert_eq!(count, 1);
    assert!(
        sum >= 0.25,
        "a timed-out attempt lasted at least the time-out: {sum}"
    );
}
