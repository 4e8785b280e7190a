//! The cost of the `metrics` feature on the request path: one `pick` + `start` +
//! `success` on a 16-backend round-robin pool, the pool's series registered (a) with no
//! recorder installed (the facade's no-op handles: what the feature costs a user who
//! exports nothing) and (b) with a Prometheus recorder (`metrics-exporter-prometheus`'s
//! atomic handles). (a) is the group's floor; the ratio (b)/(a) is the price of
//! exporting. Without the feature the code is compiled out (`cfg`), which no single
//! build can time: compare `pick/...` figures across builds for that.

use criterion::{Criterion, Throughput};
use tower_lb::{PickContext, Pool, RoundRobin, Weight};

fn pool() -> Pool<usize, RoundRobin> {
    let pool = Pool::new(RoundRobin::new());
    pool.extend((0..16).map(|i| (i, Weight::ONE)))
        .expect("distinct keys");
    pool
}

pub fn register(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics_request");
    group.throughput(Throughput::Elements(1));
    let ctx = PickContext::new();

    let noop = pool();
    group.bench_function("no_recorder", |b| {
        b.iter(|| noop.pick(&ctx).expect("a backend").start().success())
    });

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let exported = ::metrics::with_local_recorder(&recorder, pool);
    group.bench_function("prometheus", |b| {
        b.iter(|| exported.pick(&ctx).expect("a backend").start().success())
    });
    // The series were recorded: the rendered text counts the successes.
    let text = recorder.handle().render();
    assert!(text.contains("tower_lb_backend_requests_total"), "{text}");
    group.finish();
}
