//! Bad input: the proptest twin of the fuzz targets in `fuzz/` (same checks, bounded
//! cases, fixed seed), and the answers to invalid weights, duplicate backends, empty
//! sets, oversized keys and out-of-range settings — a clear error naming the value,
//! never a panic.
#![cfg(all(feature = "tower", feature = "http"))]

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::future::ready;
use std::time::Duration;

use checks::{CookieCase, RequestCase};
use futures::FutureExt;
use http::header::{COOKIE, SET_COOKIE};
use http::{Request, Response};
use proptest::prelude::*;
use tower::{Service, ServiceExt};
use tower_lb::affinity::{
    AffinityKey, CookieKey, HeaderKey, MAX_KEY_LEN, PathKey, PeerIpKey, hash_key,
};
use tower_lb::balance::{BackendService, Balance, BoxError, HttpTarget, Sticky, StickyCookie};
use tower_lb::health::{
    FailurePercentage, OutlierDetection, PanicThreshold, ProbeConfig, SlowStart, SpawnError,
    SuccessRate, probe_fn,
};
use tower_lb::pick::hash::maglev::MAX_TABLE_SIZE;
use tower_lb::{
    BackendId, BoundedLoad, Jump, LeastLoaded, Maglev, MembershipError, PeakEwma, PickContext,
    PickError, Picker, Pool, PowerOfTwoChoices, Random, Rendezvous, Ring, RoundRobin, Weight,
    WeightedRandom, WeightedRoundRobin,
};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(7),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

/// Cookie header values: raw bytes, cookie-shaped text (often our name), or oversized.
fn cookie_header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..48),
        4 => "((lb|sid|x)=[A-Za-z0-9_=-]{0,30}(; )?){0,4}".prop_map(String::into_bytes),
        1 => (any::<u8>(), 8_000usize..9_000).prop_map(|(b, n)| {
            let mut v = b"lb=".to_vec();
            v.resize(n, b'a' + b % 26);
            v
        }),
    ]
}

fn regex(pattern: &str) -> proptest::string::RegexGeneratorStrategy<String> {
    proptest::string::string_regex(pattern).expect("a valid pattern")
}

/// The names `key_name` favours, so that cookies and query parameters are often found.
const NAMES: &str = "(sid|lb|a)";

fn header_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    prop_oneof![
        ("[a-z-]{1,12}", "[ -~]{0,40}").prop_map(|(n, v)| (n.into_bytes(), v.into_bytes())),
        (
            Just("cookie".to_owned()),
            "([a-z]{1,4}=[ -~]{0,12}; ?){0,4}"
        )
            .prop_map(|(n, v)| (n.into_bytes(), v.into_bytes())),
        // Cookie pairs under the favoured names: spaces, tabs, quotes, `=` in values,
        // empty values and pairs, duplicates.
        (
            Just("cookie".to_owned()),
            regex(&format!(
                "(( ?\t?({NAMES}|{NAMES}|[a-z]{{1,2}}) ?= ?(\"[ -!#-:<-~]{{0,6}}\"|[ -:<-~]{{0,8}})|[a-z]{{1,3}}|) ?;){{0,5}}"
            ))
        )
            .prop_map(|(n, v)| (n.into_bytes(), v.into_bytes())),
        (
            prop::collection::vec(any::<u8>(), 0..16),
            prop::collection::vec(any::<u8>(), 0..32)
        ),
    ]
}

fn uri() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "(/[a-z0-9%+.*]{0,8}){0,5}(\\?([a-z]{1,4}(=[a-z0-9%+]{0,6})?&?){0,4})?"
            .prop_map(String::into_bytes),
        // Queries under the favoured names, escaped (%73id is sid), with `+`, bad escapes,
        // empty parts and duplicates.
        3 => regex(&format!(
            "/p\\?((%73id|{NAMES}|[a-z]{{1,2}})(=([a-z0-9+]|%[0-9A-Fa-f]{{2}}|%[g-z]?){{0,5}})?&{{0,2}}){{0,5}}"
        ))
        .prop_map(String::into_bytes),
        1 => "https?://[a-z.]{1,10}(:[0-9]{1,5})?(/[a-z]{0,5}){0,3}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn key_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => NAMES,
        3 => "[a-z]{1,4}",
        1 => "[A-Za-z0-9 :;=\\-]{0,8}",
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// The `sticky_cookie` fuzz target's check, on seeded cases.
    #[test]
    fn sticky_cookie_codec_twin(
        headers in prop::collection::vec(cookie_header(), 0..4),
        backends in any::<u8>(),
        valid_for in prop::option::of(any::<u8>()),
        drained in prop::option::of(any::<u8>()),
    ) {
        checks::sticky_cookie(&CookieCase { headers, backends, valid_for, drained });
    }

    /// The `affinity_keys` fuzz target's check, on seeded cases.
    #[test]
    fn affinity_extractors_twin(
        uri in uri(),
        headers in prop::collection::vec(header_pair(), 0..6),
        key_name in key_name(),
        segments in 0usize..6,
    ) {
        checks::affinity_extractors(&RequestCase { uri, headers, key_name, segments });
    }

    /// A weight is 1..=u32::MAX; anything else is refused with its value in the message.
    #[test]
    fn weights_out_of_range_are_refused_with_their_value(value in prop_oneof![
        Just(0u64), Just(u64::from(u32::MAX)), Just(u64::from(u32::MAX) + 1), any::<u64>()
    ]) {
        match Weight::new(value) {
            Ok(w) => prop_assert!(value >= 1 && value <= u64::from(u32::MAX) && u64::from(w.get()) == value),
            Err(e) => {
                prop_assert!(value == 0 || value > u64::from(u32::MAX));
                prop_assert!(e.to_string().contains(&value.to_string()), "{}", e);
                let via = MembershipError::from(e);
                prop_assert!(via.to_string().starts_with("backend set: weight: "), "{}", via);
            }
        }
    }

    /// Random inserts (duplicate addresses, weights in and out of range), removes and
    /// reweights (of known, removed and never-seen ids), batches and picks, checked
    /// against a model after every step: the pool answers exactly as the model says,
    /// a refused change changes nothing, and an empty set is an error, not a panic.
    #[test]
    fn membership_with_bad_input_matches_a_model(ops in prop::collection::vec(op(), 1..60)) {
        membership_model(&ops)?;
    }

    /// Every setting with a range refuses the values outside it, naming them.
    #[test]
    fn settings_out_of_range_are_refused_with_their_value(
        percent in prop_oneof![any::<u8>(), Just(0u8), Just(1), Just(100), Just(101), Just(255)],
        count in 0u32..4,
        factor in prop_oneof![any::<f64>(), -2.0f64..70_000.0],
        millis in 0u64..3,
        size in prop_oneof![0u64..200, 65_530u64..65_540, any::<u64>()],
        v4 in prop_oneof![any::<u8>(), 31u8..=33],
        v6 in prop_oneof![any::<u8>(), 127u8..=129],
    ) {
        let named = |e: &dyn std::fmt::Display, v: &dyn std::fmt::Display| {
            let text = e.to_string();
            text.contains(&v.to_string()) && text.contains(':')
        };
        // Health settings are taken as given and checked together by `build()`.
        let build = |b: tower_lb::PoolBuilder<&str, RoundRobin>| b.build().map(drop);
        let pool = || Pool::<&str, _>::builder(RoundRobin::new());
        let outlier = |d: OutlierDetection| build(pool().outlier_detection(d));
        let ramp = SlowStart::new(Duration::from_secs(1));
        let slow = |s: SlowStart| build(pool().slow_start(s));
        let ok_percent = percent <= 100;
        for (result, setting) in [
            (
                outlier(OutlierDetection::new().max_ejection_percent(percent)),
                "OutlierDetection::max_ejection_percent",
            ),
            (PanicThreshold::new(percent).map(drop), "PanicThreshold::new"),
            (
                outlier(
                    OutlierDetection::new()
                        .failure_percentage(Some(FailurePercentage::new().threshold(percent))),
                ),
                "FailurePercentage::threshold",
            ),
        ] {
            match result {
                Ok(()) => prop_assert!(ok_percent),
                Err(e) => prop_assert!(
                    !ok_percent && named(&e, &percent) && e.setting() == setting,
                    "{}",
                    e
                ),
            }
        }
        match slow(ramp.min_weight_percent(percent)) {
            Ok(()) => prop_assert!((1..=100).contains(&percent)),
            Err(e) => prop_assert!(!(1..=100).contains(&percent) && named(&e, &percent), "{}", e),
        }
        match slow(SlowStart::new(Duration::from_millis(millis))) {
            Ok(()) => prop_assert!(millis > 0),
            Err(e) => prop_assert!(millis == 0 && e.setting() == "SlowStart::new", "{}", e),
        }
        match slow(ramp.aggression(factor)) {
            Ok(()) => prop_assert!(factor.is_finite() && factor > 0.0),
            Err(e) => prop_assert!(!(factor.is_finite() && factor > 0.0) && named(&e, &factor), "{}", e),
        }
        match outlier(OutlierDetection::new().success_rate(Some(SuccessRate::new().stdev_factor(factor)))) {
            Ok(()) => prop_assert!(factor.is_finite() && factor >= 0.0),
            Err(e) => prop_assert!(!(factor.is_finite() && factor >= 0.0) && named(&e, &factor), "{}", e),
        }
        match BoundedLoad::new(Maglev::new()).with_balance_factor(factor) {
            Ok(b) => prop_assert!(factor >= 1.0 && (b.balance_factor() - factor).abs() < 1e-3),
            Err(e) => prop_assert!(
                !(1.0..=65_536.0).contains(&factor) && named(&e, &factor),
                "{}",
                e
            ),
        }
        // Probe settings are checked when the probes are spawned.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let spawn = |config: ProbeConfig| {
            let _in = rt.enter();
            let pool: Pool<&str, _> = Pool::new(RoundRobin::new());
            pool.spawn_health_probes(probe_fn(|_: &&str| async { Ok(()) }), config)
                .map(|task| task.abort())
        };
        for (result, setting) in [
            (spawn(ProbeConfig::new().rise(count)), "ProbeConfig::rise"),
            (spawn(ProbeConfig::new().fall(count)), "ProbeConfig::fall"),
        ] {
            match result {
                Ok(()) => prop_assert!(count >= 1),
                Err(SpawnError::Config(e)) => prop_assert!(count == 0 && e.setting() == setting, "{}", e),
                Err(e) => prop_assert!(false, "not a settings error: {}", e),
            }
        }
        let ms = Duration::from_millis(u64::from(count));
        match spawn(ProbeConfig::new().interval(ms).jitter(Duration::from_millis(1))) {
            Ok(()) => prop_assert!(count >= 1),
            Err(SpawnError::Config(e)) => prop_assert!(
                count == 0 && e.setting() == "ProbeConfig::interval",
                "{}",
                e
            ),
            Err(e) => prop_assert!(false, "not a settings error: {}", e),
        }
        let good_size = size <= u64::from(MAX_TABLE_SIZE) && is_prime(size);
        match Maglev::new().with_table_size(size) {
            Ok(m) => prop_assert!(good_size && u64::from(m.table_size()) == size),
            Err(e) => prop_assert!(!good_size && named(&e, &size), "{}", e),
        }
        match PeerIpKey::with_prefix(v4, v6) {
            Ok(_) => prop_assert!(v4 <= 32 && v6 <= 128),
            Err(e) => {
                prop_assert!(v4 > 32 || v6 > 128, "refused /{} and /{}: {}", v4, v6, e);
                let bad = if v4 > 32 { v4 } else { v6 };
                prop_assert!(named(&e, &bad), "{}", e);
            }
        }
    }

    /// Cookie names, secrets, paths and backend targets from anywhere: accepted or
    /// refused with the offending value, never a panic.
    #[test]
    fn sticky_settings_and_targets_are_checked(
        name in prop_oneof!["[a-z]{1,8}", any::<String>()],
        secret in prop::collection::vec(any::<u8>(), 0..40),
        path in prop_oneof!["/[a-z/]{0,8}", any::<String>()],
        target in prop_oneof![
            "(http://)?[a-z0-9.]{1,12}(:[0-9]{1,5})?/?",
            "(http://)?[a-z][a-z0-9]{0,8}(\\.[a-z]{1,5})?(:[1-9][0-9]{0,3})?/?",
            any::<String>(),
        ],
    ) {
        let token = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        match StickyCookie::new(&name, &secret) {
            Ok(cookie) => {
                prop_assert!(token && secret.len() >= 16);
                let good_path = path.starts_with('/')
                    && path.bytes().all(|b| b != b';' && (0x20..0x7f).contains(&b));
                match cookie.path(&path) {
                    Ok(_) => prop_assert!(good_path),
                    Err(e) => {
                        let quoted = format!("{path:?}");
                        prop_assert!(!good_path && e.to_string().contains(&quoted), "{}", e);
                    }
                }
            }
            Err(e) => {
                prop_assert!(!token || secret.len() < 16);
                let text = e.to_string();
                let quoted = format!("{name:?}");
                prop_assert!(text.contains(&quoted) || text.contains(&secret.len().to_string()), "{}", text);
            }
        }
        // A plain host (and port below 10 000), with or without `http://` and a final
        // `/`, is a valid target: it must parse, to exactly that host and port.
        let bare = target.strip_prefix("http://").unwrap_or(&target);
        let bare = bare.strip_suffix('/').unwrap_or(bare);
        let (host, port) = bare.split_once(':').unwrap_or((bare, ""));
        let plain_host = host.split('.').count() <= 2
            && host.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
            && host.starts_with(|c: char| c.is_ascii_lowercase());
        let plain_port = port.is_empty() || (port.len() <= 4 && !port.starts_with('0') && port.bytes().all(|b| b.is_ascii_digit()));
        match target.parse::<HttpTarget>() {
            Ok(t) => {
                if plain_host && plain_port {
                    prop_assert_eq!(t.to_string(), format!("http://{}", bare));
                }
            }
            Err(e) => {
                prop_assert!(!(plain_host && plain_port), "refused the plain target {:?}: {}", target, e);
                let quoted = format!("{target:?}");
                prop_assert!(e.to_string().contains(&quoted), "{}", e);
            }
        }
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u64),
    Remove(u8),
    SetWeight(u8, u64),
    Extend(Vec<(u8, u64)>),
    Pick,
}

fn weight() -> impl Strategy<Value = u64> {
    prop_oneof![6 => 1u64..5, 1 => Just(0u64), 1 => (u64::from(u32::MAX) + 1)..=u64::MAX]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, weight()).prop_map(|(a, w)| Op::Insert(a, w)),
        3 => any::<u8>().prop_map(Op::Remove),
        1 => (any::<u8>(), weight()).prop_map(|(i, w)| Op::SetWeight(i, w)),
        1 => prop::collection::vec((0u8..6, weight()), 0..4).prop_map(Op::Extend),
        2 => Just(Op::Pick),
    ]
}

fn membership_model(ops: &[Op]) -> Result<(), TestCaseError> {
    let pool = Pool::new(RoundRobin::new());
    // The model: (address, id, weight) in insertion order; every id ever handed out.
    let mut model: Vec<(String, BackendId, u32)> = Vec::new();
    let mut seen: Vec<BackendId> = Vec::new();
    let addr = |a: u8| format!("10.0.0.{a}:80");
    for op in ops {
        match op {
            Op::Insert(a, w) => {
                let Ok(weight) = Weight::new(*w) else {
                    continue; // refused before it reaches the pool (checked above)
                };
                let got = pool.insert(addr(*a), weight);
                match model.iter().find(|m| m.0 == addr(*a)) {
                    Some(m) => {
                        prop_assert_eq!(got, Err(MembershipError::Duplicate { existing: m.1 }))
                    }
                    None => {
                        let id = got.expect("a fresh address is accepted");
                        prop_assert!(!seen.contains(&id), "an id was reused");
                        seen.push(id);
                        model.push((addr(*a), id, weight.get()));
                    }
                }
            }
            Op::Remove(i) => {
                let Some(&id) = seen.get(usize::from(*i) % seen.len().max(1)) else {
                    continue;
                };
                let got = pool.remove(id);
                match model.iter().position(|m| m.1 == id) {
                    Some(at) => prop_assert_eq!(got, Ok(model.remove(at).0)),
                    None => {
                        let e = got.expect_err("a removed id is unknown");
                        prop_assert_eq!(&e, &MembershipError::Unknown(id));
                        prop_assert!(e.to_string().contains(&id.to_string()));
                    }
                }
            }
            Op::SetWeight(i, w) => {
                let (Some(&id), Ok(weight)) = (
                    seen.get(usize::from(*i) % seen.len().max(1)),
                    Weight::new(*w),
                ) else {
                    continue;
                };
                let got = pool.set_weight(id, weight);
                match model.iter_mut().find(|m| m.1 == id) {
                    Some(m) => {
                        prop_assert_eq!(got, Ok(()));
                        m.2 = weight.get();
                    }
                    None => prop_assert_eq!(got, Err(MembershipError::Unknown(id))),
                }
            }
            Op::Extend(batch) => {
                let Ok(batch) = batch
                    .iter()
                    .map(|&(a, w)| Weight::new(w).map(|w| (addr(a), w)))
                    .collect::<Result<Vec<_>, _>>()
                else {
                    continue;
                };
                let version = pool.snapshot().snapshot().version();
                let got = pool.extend(batch.clone());
                let mut names: Vec<&String> = model.iter().map(|m| &m.0).collect();
                let mut duplicate = false;
                for (a, _) in &batch {
                    duplicate |= names.contains(&a);
                    names.push(a);
                }
                if duplicate {
                    prop_assert!(
                        matches!(got, Err(MembershipError::Duplicate { .. })),
                        "{:?}",
                        got
                    );
                    prop_assert_eq!(
                        pool.snapshot().snapshot().version(),
                        version,
                        "nothing published"
                    );
                } else {
                    let ids = got.expect("a batch of fresh addresses is accepted");
                    for ((a, w), id) in batch.into_iter().zip(ids) {
                        seen.push(id);
                        model.push((a, id, w.get()));
                    }
                }
            }
            Op::Pick => match pool.pick(&PickContext::new()) {
                Ok(p) => prop_assert!(model.iter().any(|m| m.1 == p.id())),
                Err(e) => {
                    prop_assert!(model.is_empty());
                    prop_assert_eq!(e, PickError::NoBackends);
                }
            },
        }
        let now: Vec<(String, BackendId, u32)> = pool
            .stats()
            .into_iter()
            .map(|s| (s.addr, s.id, s.weight.get()))
            .collect();
        prop_assert_eq!(&now, &model);
    }
    Ok(())
}

/// An empty set and an all-ineligible set: every strategy answers with the typed error.
#[test]
fn every_strategy_answers_an_empty_or_ineligible_set_with_a_typed_error() {
    fn check<P: Picker<String>>(picker: P) {
        let name = std::any::type_name::<P>();
        let pool = Pool::builder(picker)
            .panic_threshold(PanicThreshold::disabled())
            .build()
            .unwrap();
        let ctx = PickContext::new().with_hash(42);
        assert_eq!(
            pool.pick(&ctx).unwrap_err(),
            PickError::NoBackends,
            "{name}"
        );
        let ids: Vec<BackendId> = ["a", "b"]
            .iter()
            .map(|a| pool.insert((*a).to_owned(), Weight::ONE).unwrap())
            .collect();
        for id in &ids {
            pool.mark_down(*id).unwrap();
        }
        let err = pool.pick(&ctx).unwrap_err();
        assert_eq!(err, PickError::NoEligible { total: 2 }, "{name}");
        assert!(err.to_string().contains("none of the 2 backends"), "{err}");
        assert_eq!(pool.pick(&PickContext::new()).unwrap_err(), err, "{name}");
    }
    check(RoundRobin::new());
    check(WeightedRoundRobin::new());
    check(Random::with_seed(1));
    check(WeightedRandom::with_seed(1));
    check(LeastLoaded::with_seed(1));
    check(PowerOfTwoChoices::with_seed(1));
    check(PeakEwma::with_seed(1));
    check(Maglev::new());
    check(Ring::new());
    check(Rendezvous::new());
    check(Jump::new());
    check(BoundedLoad::new(Maglev::new()));
}

type Local = tower::util::BoxCloneSyncService<Request<()>, Response<String>, BoxError>;

/// A balancer over an empty set fails at the first poll with `PickError::NoBackends`.
#[test]
fn a_balancer_over_an_empty_set_fails_at_once() {
    let pool: Pool<BackendService<String, Local>, _> = Pool::new(RoundRobin::new());
    let mut lb = Balance::new(pool.clone());
    let err = lb
        .ready()
        .now_or_never()
        .expect("ready at once")
        .unwrap()
        .call(Request::new(()))
        .now_or_never()
        .expect("fails at once")
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<PickError>(),
        Some(&PickError::NoBackends)
    );
}

/// Oversized keys: header names past http's limit are refused by `HeaderKey::try_new`;
/// oversized values, cookies and paths are capped at `MAX_KEY_LEN` bytes, not refused;
/// a `Cookie` header past 8 KiB is ignored by sticky sessions (balanced normally, a
/// fresh cookie issued).
#[test]
fn oversized_keys_are_refused_or_capped_never_a_panic() {
    let err = HeaderKey::try_new(&"x".repeat(70_000)).unwrap_err();
    assert!(!err.to_string().is_empty());
    assert!(HeaderKey::try_new("").is_err());
    assert!(HeaderKey::try_new("bad name").is_err());
    let long_name = "x".repeat(1_000);
    let key = HeaderKey::try_new(&long_name).unwrap();

    let value = "v".repeat(1 << 20);
    let req = Request::get(format!("/{}", "p".repeat(60_000)))
        .header(long_name.as_str(), &value)
        .header(COOKIE, format!("sid={value}"))
        .body(())
        .unwrap();
    let capped = Some(hash_key(&value.as_bytes()[..MAX_KEY_LEN]));
    assert_eq!(key.key(&req), capped);
    assert_eq!(CookieKey::new("sid").key(&req), capped);
    assert_eq!(
        PathKey::new().key(&req),
        Some(hash_key(&req.uri().path().as_bytes()[..MAX_KEY_LEN]))
    );

    let pool: Pool<BackendService<String, Local>, _> = Pool::new(RoundRobin::new());
    for name in ["a", "b"] {
        let svc: Local =
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |_: Request<()>| {
                ready(Ok::<_, BoxError>(Response::new(name.to_owned())))
            }));
        pool.insert(BackendService::new(name.to_owned(), svc), Weight::ONE)
            .unwrap();
    }
    let cookie = StickyCookie::new("lb", checks::SECRET).unwrap();
    let valid = format!("lb={}", cookie.value_for(&"b".to_owned()));
    let mut lb = Sticky::new(Balance::new(pool), cookie);
    // The valid cookie pins b while the header is small...
    for _ in 0..4 {
        let resp = lb
            .call(Request::get("/").header(COOKIE, &valid).body(()).unwrap())
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(resp.body(), "b");
    }
    // ...and is not read at all inside a header past 8 KiB.
    let padded = format!("{valid}; pad={}", "z".repeat(9_000));
    let mut served = Vec::new();
    for _ in 0..4 {
        let resp = lb
            .call(Request::get("/").header(COOKIE, &padded).body(()).unwrap())
            .now_or_never()
            .unwrap()
            .unwrap();
        assert!(resp.headers().get(SET_COOKIE).is_some() || resp.body() == "b");
        served.push(resp.body().clone());
    }
    assert!(served.iter().any(|b| b == "a"), "{served:?}");
}
