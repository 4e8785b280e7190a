//! Peak EWMA: Finagle's rule for unmeasured backends, its leader, its reaction to a slowing
//! backend, and its cost part by part.

use super::*;

/// Finagle's rule for a backend with no latency sample: cost 0 while nothing is in
/// flight on it (tried at once, whatever the measured ones cost), a penalty above every
/// measured cost once one request is in flight (not flooded before its first answer).
/// With a default RTT (tower's way) it is priced as if measured at that RTT instead.
#[test]
fn peak_ewma_follows_finagles_rule_for_unmeasured_backends() {
    let now = Instant::now();
    let ctx = PickContext::new().with_now(now);
    for seed in [1u64, 2, 3] {
        // Backend 0 measured at 1 ms with nothing in flight; backend 1 never measured.
        let snapshot = uniform(2);
        snapshot.backends()[0]
            .state()
            .record_rtt(Duration::from_millis(1), now);
        let picker = PeakEwma::with_seed(seed);
        let prepared = Prepared::new(&picker, snapshot);
        let backends = prepared.snapshot().backends();
        for _ in 0..100 {
            assert_eq!(
                prepared.pick(&picker, &ctx),
                Ok(1),
                "unmeasured and idle: tried at once"
            );
        }
        let first = backends[1].state().start();
        // Backend 0 now 1 ms × 51: still far below the penalty.
        let busy = hold(prepared.snapshot(), &[50, 0]);
        for _ in 0..100 {
            assert_eq!(
                prepared.pick(&picker, &ctx),
                Ok(0),
                "unmeasured with one in flight: not flooded"
            );
        }
        drop((first, busy));

        // With a default RTT of 5 ms, the unmeasured idle backend costs 5 ms × 1 > 1 ms × 1.
        let snapshot = uniform(2);
        snapshot.backends()[0]
            .state()
            .record_rtt(Duration::from_millis(1), now);
        let picker = PeakEwma::with_seed(seed).with_default_rtt(Duration::from_millis(5));
        let prepared = Prepared::new(&picker, snapshot);
        for _ in 0..100 {
            assert_eq!(
                prepared.pick(&picker, &ctx),
                Ok(0),
                "priced at the default RTT"
            );
        }
        // ... and against 1 ms × 6 in flight = 6 ms, it wins.
        let _busy = hold(prepared.snapshot(), &[5, 0]);
        for _ in 0..100 {
            assert_eq!(prepared.pick(&picker, &ctx), Ok(1));
        }
    }
}

/// The remembered leader: a backend that is strictly the cheapest wins every pick from
/// the first one it is drawn in (P2C alone gives it only the picks it is drawn in, about
/// 2/n); when it stops being the cheapest, a cheaper random candidate takes the lead
/// from the next pick it is drawn in, and the old leader gets nothing more.
#[test]
fn peak_ewma_keeps_the_cheapest_backend_as_its_leader() {
    const N: usize = 10;
    const PICKS: usize = 300;
    let now = Instant::now();
    let ctx = PickContext::new().with_now(now);
    for seed in [1u64, 2, 3] {
        let snapshot = uniform(N);
        for (i, b) in snapshot.backends().iter().enumerate() {
            let ms = if i == 7 { 1 } else { 10 };
            b.state().record_rtt(Duration::from_millis(ms), now);
        }
        let picker = PeakEwma::with_seed(seed);
        let prepared = Prepared::new(&picker, snapshot);
        let got: Vec<usize> = (0..PICKS)
            .map(|_| prepared.pick(&picker, &ctx).unwrap())
            .collect();
        let first = got
            .iter()
            .position(|&i| i == 7)
            .expect("drawn at least once");
        assert!(
            got[first..].iter().all(|&i| i == 7),
            "seed {seed}: the leader lost a pick: {got:?}"
        );
        // 0.8^40 ≈ 1e-4: it is drawn early.
        assert!(first < 40, "seed {seed}: first drawn at pick {first}");

        // Backend 7 now carries 20 requests (1 ms × 21 = 21 ms > 10 ms × 1): it is no
        // longer the cheapest, and every pick draws at least one cheaper backend: it gets
        // none.
        let _held = hold(prepared.snapshot(), &[0, 0, 0, 0, 0, 0, 0, 20, 0, 0]);
        let got: Vec<usize> = (0..PICKS)
            .map(|_| prepared.pick(&picker, &ctx).unwrap())
            .collect();
        let moved = got.iter().position(|&i| i != 7).expect("the lead moves");
        assert_eq!(moved, 0, "seed {seed}: the lead moved only at pick {moved}");
        assert!(
            got[moved..].iter().all(|&i| i != 7),
            "seed {seed}: the old leader was picked: {got:?}"
        );
    }
}

/// "Reacts to a slowing backend at once": one sample above the estimate replaces it, so
/// the next pick already avoids the backend that slowed down, with no averaging delay.
#[test]
fn peak_ewma_reacts_to_a_slowing_backend_at_once() {
    let t0 = Instant::now();
    let snapshot = uniform(2);
    for b in snapshot.backends() {
        // A long history at 10 ms.
        for k in 0..100 {
            b.state().record_rtt(
                Duration::from_millis(10),
                t0 + Duration::from_millis(10 * k),
            );
        }
    }
    let picker = PeakEwma::with_seed(9);
    let prepared = Prepared::new(&picker, snapshot);
    let t1 = t0 + Duration::from_secs(1);
    let ctx = PickContext::new().with_now(t1);
    // One slow answer from backend 1 (30 ms): its cost triples at once.
    prepared.snapshot().backends()[1]
        .state()
        .record_rtt(Duration::from_millis(30), t1);
    // Backend 0 may even carry one request more (10 ms × 2 = 20 < 30 ms × 1).
    let _busy = hold(prepared.snapshot(), &[1, 0]);
    for _ in 0..100 {
        assert_eq!(prepared.pick(&picker, &ctx), Ok(0));
    }
}

// ---------------------------------------------------------------- Peak EWMA's cost, part by part

/// `PickContext` carries what it is given: the affinity hash, and the caller's "now"
/// (to the nanosecond), which Peak EWMA reads instead of the clock — estimates decay to
/// *that* time. Backend 0 answered in 100 ms at t₀, backend 1 in 1 ms at t₀ + 60 s:
/// seen from t₀ + 60 s, backend 0's estimate has decayed by e^(−6) to 0.25 ms and wins;
/// a picker that read its own clock (≈ t₀) would see 100 ms against 1 ms.
#[test]
fn peak_ewma_reads_the_callers_now() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(60);
    let ctx = PickContext::new().with_hash(7).with_now(later);
    assert_eq!(ctx.hash(), Some(7));
    let now = ctx.now().expect("a now");
    assert!(
        now.max(later) - now.min(later) < Duration::from_micros(1),
        "{now:?}"
    );
    assert_eq!(PickContext::new().hash(), None);
    assert_eq!(PickContext::new().now(), None);

    let snapshot = uniform(2);
    snapshot.backends()[0]
        .state()
        .record_rtt(Duration::from_millis(100), t0);
    snapshot.backends()[1]
        .state()
        .record_rtt(Duration::from_millis(1), later);
    let picker = PeakEwma::with_seed(4);
    let prepared = Prepared::new(&picker, snapshot);
    for _ in 0..50 {
        assert_eq!(prepared.pick(&picker, &ctx), Ok(0));
    }
}

/// Peak EWMA's cost is estimate × (in flight + 1) × 2^score ÷ weight, each part checked
/// where it decides a comparison (equal latencies unless said):
/// - ÷ weight: weights 1 and 4, two requests in flight on the heavy one: 3/4 < 1;
/// - × 2^score: three recent failures (×8) on an idle backend lose to 2 in flight (×3);
/// - a failing backend's estimate is at least its rival's: failing at 1 ms (×2 for one
///   failure) loses to a healthy 10 ms, measured or not;
/// - a measured 0 ns (an in-process backend) is a measurement, not "unmeasured": with one
///   in flight it costs 0, not the penalty;
/// - among unmeasured backends the penalty grows with each request in flight.
#[test]
fn peak_ewma_cost_weighs_latency_load_failures_and_weight() {
    let now = Instant::now();
    let ctx = PickContext::new().with_now(now);
    let rtt = |s: &Snapshot<usize>, i: usize, ms: u64| {
        s.backends()[i]
            .state()
            .record_rtt(Duration::from_millis(ms), now)
    };
    let fail = |s: &Snapshot<usize>, i: usize, times: usize| {
        for _ in 0..times {
            s.backends()[i].state().start().failure();
        }
    };
    let always = |s: Snapshot<usize>, want: usize, what: &str| {
        let picker = PeakEwma::with_seed(5);
        let prepared = Prepared::new(&picker, s);
        for _ in 0..100 {
            assert_eq!(prepared.pick(&picker, &ctx), Ok(want), "{what}");
        }
    };

    let s = snapshot(&[1, 4]);
    rtt(&s, 0, 10);
    rtt(&s, 1, 10);
    let _held = hold(&s, &[0, 2]);
    always(s, 1, "÷ weight");

    let s = uniform(2);
    rtt(&s, 0, 10);
    rtt(&s, 1, 10);
    let _held = hold(&s, &[0, 2]);
    fail(&s, 0, 3);
    always(s, 1, "× 2^score");

    let s = uniform(2);
    rtt(&s, 0, 1);
    rtt(&s, 1, 10);
    fail(&s, 0, 1);
    always(s, 1, "a failing backend's estimate is at least its rival's");
    // Unmeasured and failing (a failure reported with no latency): not tried "at once".
    let pool = Pool::new(PeakEwma::with_seed(6));
    let ids = pool
        .extend([(0usize, Weight::ONE), (1, Weight::ONE)])
        .unwrap();
    rtt(pool.snapshot().snapshot(), 1, 10);
    pool.report(ids[0], tower_lb::health::Outcome::failure())
        .unwrap();
    for _ in 0..100 {
        assert_eq!(
            pool.pick(&ctx).unwrap().id(),
            ids[1],
            "unmeasured and failing"
        );
    }

    let s = uniform(2);
    s.backends()[0].state().record_rtt(Duration::ZERO, now);
    rtt(&s, 1, 1);
    let _held = hold(&s, &[1, 0]);
    always(s, 0, "a measured 0 ns");

    let s = uniform(2);
    let _held = hold(&s, &[2, 1]);
    always(s, 1, "the penalty grows with the requests in flight");
}

/// Peak EWMA with unequal weights and nothing measured yet (every cost 0, every
/// comparison a tie): shares follow the weights, as weighted P2C's do.
#[test]
fn peak_ewma_idle_shares_follow_the_weights() {
    const PICKS: usize = 40_000;
    let weights = [1u32, 2, 3, 4];
    let picker = PeakEwma::with_seed(8);
    let prepared = Prepared::new(&picker, snapshot(&weights));
    let counts = histogram(&picks(&picker, &prepared, PICKS), weights.len());
    let shares: Vec<f64> = weights.iter().map(|&w| f64::from(w) / 10.0).collect();
    let stat = chi_square(&counts, &shares);
    let critical = chi_square_critical_p001(weights.len() - 1);
    assert!(
        stat <= critical,
        "{counts:?} (χ² {stat:.1} > {critical:.1})"
    );
}
