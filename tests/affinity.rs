//! Affinity keys: what each extractor reads, that they never panic on hostile input,
//! and that keys reach the same backend through a `Pool` across independent instances.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use tower_lb::affinity::{
    AffinityKey, KeyFn, MAX_KEY_LEN, Or, PeerAddr, PeerAddrKey, PeerIpKey, hash_key,
};
use tower_lb::{Maglev, PickContext, Pool, Rendezvous, Ring, Weight};

/// The runner's seed: every run explores the same cases.
const SEED: u64 = 0xAFF1_0003;
/// Cases per property.
const CASES: u32 = 64;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        rng_seed: RngSeed::Fixed(SEED),
        ..ProptestConfig::default()
    }
}

const BACKENDS: [&str; 5] = [
    "10.0.0.1:80",
    "10.0.0.2:80",
    "10.0.0.3:80",
    "10.0.0.4:80",
    "10.0.0.5:80",
];

/// Layer 4 on real sockets: the accepted pair, the stream and the bare address agree.
#[test]
fn peer_keys_on_loopback_connections() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let accepted = listener.accept()?;
    let peer = accepted.1;
    assert_eq!(peer, client.local_addr()?);

    let by_ip = PeerIpKey::new();
    assert_eq!(by_ip.key(&accepted), Some(by_ip.hash_ip(peer.ip())));
    assert_eq!(by_ip.key(&accepted.0), by_ip.key(&peer));
    assert_eq!(by_ip.key(&&accepted.0), by_ip.key(&peer));
    assert_eq!(by_ip.key(&Box::new(peer)), by_ip.key(&peer));

    // A second connection from the same host: same IP key, different address key.
    let second = TcpStream::connect(listener.local_addr()?)?;
    let (_, peer2) = listener.accept()?;
    assert_eq!(peer2, second.local_addr()?);
    assert_eq!(by_ip.key(&peer2), by_ip.key(&peer));
    assert_ne!(
        PeerAddrKey::new().key(&peer2),
        PeerAddrKey::new().key(&peer)
    );
    Ok(())
}

/// A closure key, and `or` falling through to the next extractor only without a key.
#[test]
fn closures_and_fallthrough() {
    struct Conn {
        tenant: Option<&'static str>,
        peer: SocketAddr,
    }
    impl PeerAddr for Conn {
        fn peer_addr(&self) -> Option<SocketAddr> {
            Some(self.peer)
        }
    }
    let tenant = KeyFn::new(|c: &Conn| c.tenant.map(|t| hash_key(t.as_bytes())));
    let key = Or::new(tenant, PeerIpKey::new());
    let peer: SocketAddr = "192.0.2.1:999".parse().unwrap();
    let with = Conn {
        tenant: Some("acme"),
        peer,
    };
    let without = Conn { tenant: None, peer };
    assert_eq!(key.key(&with), Some(hash_key(b"acme")));
    assert_eq!(key.key(&without), PeerIpKey::new().key(&peer));
    assert_eq!(key.context(&with).hash(), Some(hash_key(b"acme")));
    let none = KeyFn::new(|_: &Conn| None);
    assert_eq!(none.context(&without).hash(), None);
}

/// Independent balancers (different insertion orders, built separately — a restart or a
/// second instance) send every key to the same backend through `Pool`.
#[test]
fn independent_pools_agree_on_every_key() {
    fn pool<P: tower_lb::Picker<String>>(picker: P, order: &[usize]) -> Pool<String, P> {
        let pool = Pool::new(picker);
        pool.extend(order.iter().map(|&i| (BACKENDS[i].to_owned(), Weight::ONE)))
            .unwrap();
        pool
    }
    let (a, b) = (
        pool(Maglev::new(), &[0, 1, 2, 3, 4]),
        pool(Maglev::new(), &[3, 1, 4, 0, 2]),
    );
    let (c, d) = (
        pool(Ring::new(), &[0, 1, 2, 3, 4]),
        pool(Ring::new(), &[4, 3, 2, 1, 0]),
    );
    let key = PeerIpKey::new();
    for i in 0..2000u32 {
        let client = SocketAddr::new(IpAddr::from(i.to_be_bytes()), 40_000);
        let ctx = key.context(&client);
        assert_eq!(a.pick(&ctx).unwrap().addr(), b.pick(&ctx).unwrap().addr());
        assert_eq!(c.pick(&ctx).unwrap().addr(), d.pick(&ctx).unwrap().addr());
    }
}

/// Through a `Pool`, removing one backend keeps every other backend's sessions (ring and
/// rendezvous move nothing else).
#[test]
fn pool_membership_changes_keep_other_sessions() {
    fn check<P: tower_lb::Picker<String>>(picker: P) {
        let pool = Pool::new(picker);
        let ids = pool
            .extend(BACKENDS.iter().map(|a| (a.to_string(), Weight::ONE)))
            .unwrap();
        let sessions: Vec<PickContext> = (0..1000u32)
            .map(|i| PickContext::new().with_hash(hash_key(format!("session-{i}").as_bytes())))
            .collect();
        let before: Vec<String> = sessions
            .iter()
            .map(|c| pool.pick(c).unwrap().addr().clone())
            .collect();
        let removed = pool.remove(ids[2]).unwrap();
        for (ctx, was) in sessions.iter().zip(&before) {
            let now = pool.pick(ctx).unwrap().addr().clone();
            if *was != removed {
                assert_eq!(now, *was);
            } else {
                assert_ne!(now, removed);
            }
        }
    }
    check(Ring::new());
    check(Rendezvous::new());
}

proptest! {
    #![proptest_config(config())]

    /// IP keys: the port never matters; a prefix key agrees on addresses that share
    /// the prefix; IPv4-mapped IPv6 keys as IPv4.
    #[test]
    fn ip_keys_follow_their_prefix(a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), bits in 0u8..=32, ports in any::<(u16, u16)>()) {
        let key = PeerIpKey::with_prefix(bits, 128).unwrap();
        let (ia, ib) = (u32::from_be_bytes(a), u32::from_be_bytes(b));
        let same_prefix = bits == 0 || (ia ^ ib) >> (32 - u32::from(bits)) == 0;
        let sa = SocketAddr::from((a, ports.0));
        let sb = SocketAddr::from((b, ports.1));
        prop_assert_eq!(key.key(&sa) == key.key(&sb), same_prefix);
        let mapped = SocketAddr::new(IpAddr::V6(std::net::Ipv4Addr::from(a).to_ipv6_mapped()), ports.1);
        prop_assert_eq!(key.key(&mapped), key.key(&sa));
    }

    /// A closure never sees a key it did not return; hashing any bytes never panics and
    /// caps at `MAX_KEY_LEN`.
    #[test]
    fn hashing_any_bytes_is_total(bytes in prop::collection::vec(any::<u8>(), 0..(MAX_KEY_LEN + 64))) {
        let h = hash_key(&bytes);
        prop_assert_eq!(h, hash_key(&bytes[..bytes.len().min(MAX_KEY_LEN)]));
        let key = KeyFn::new(|b: &Vec<u8>| Some(hash_key(b)));
        prop_assert_eq!(key.key(&bytes), Some(h));
    }
}

#[cfg(feature = "http")]
mod http_keys {
    use super::*;
    use http::Request;
    use tower_lb::affinity::{CookieKey, HeaderKey, PathKey, QueryKey};

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    #[test]
    fn each_extractor_reads_its_part() {
        let req = Request::get("/users/42/orders?page=2&user=ann%40example.org")
            .header("x-user-id", "u-42")
            .header("cookie", "theme=dark; SESSION=s3cr3t")
            .body(())
            .unwrap();
        assert_eq!(
            HeaderKey::from_static("x-user-id").key(&req),
            Some(hash_key(b"u-42"))
        );
        assert_eq!(
            HeaderKey::try_new("X-User-Id").unwrap().key(&req),
            Some(hash_key(b"u-42"))
        );
        assert!(HeaderKey::try_new("bad header").is_err());
        assert_eq!(
            CookieKey::new("SESSION").key(&req),
            Some(hash_key(b"s3cr3t"))
        );
        assert_eq!(CookieKey::new("session").key(&req), None);
        assert_eq!(
            PathKey::new().key(&req),
            Some(hash_key(b"/users/42/orders"))
        );
        assert_eq!(PathKey::segments(2).key(&req), Some(hash_key(b"/users/42")));
        assert_eq!(
            QueryKey::new("user").key(&req),
            Some(hash_key(b"ann@example.org"))
        );
        assert_eq!(QueryKey::new("page").key(&req), Some(hash_key(b"2")));
        assert_eq!(QueryKey::new("nope").key(&req), None);
        assert_eq!(QueryKey::new("user").key(&get("/no-query")), None);
    }

    /// L7 with an L4 fallback: the session cookie when present, else the client's IP
    /// (recorded in the request's extensions at accept time).
    #[test]
    fn cookie_else_client_ip() {
        let key = Or::new(CookieKey::new("sid"), PeerIpKey::new());
        let peer: SocketAddr = "198.51.100.4:5000".parse().unwrap();
        let mut anonymous = get("/");
        anonymous.extensions_mut().insert(peer);
        assert_eq!(key.key(&anonymous), PeerIpKey::new().key(&peer));
        let mut known = Request::get("/")
            .header("cookie", "sid=abc")
            .body(())
            .unwrap();
        known.extensions_mut().insert(peer);
        assert_eq!(key.key(&known), Some(hash_key(b"abc")));
        assert_eq!(PeerIpKey::new().key(&get("/")), None);
    }

    #[test]
    fn oversized_values_are_capped_not_rejected() {
        let long = "v".repeat(MAX_KEY_LEN * 3);
        let req = Request::get("/")
            .header("x-k", long.as_str())
            .body(())
            .unwrap();
        let expected = hash_key(&long.as_bytes()[..MAX_KEY_LEN]);
        assert_eq!(HeaderKey::from_static("x-k").key(&req), Some(expected));
        let cookie = Request::get("/")
            .header("cookie", format!("k={long}"))
            .body(())
            .unwrap();
        assert_eq!(CookieKey::new("k").key(&cookie), Some(expected));
    }

    proptest! {
        #![proptest_config(config())]

        /// A header's key is the hash of its value; empty is no key.
        #[test]
        fn header_key_is_the_value_hash(value in "[ -~]{0,64}") {
            let req = Request::get("/").header("x-k", value.as_str()).body(()).unwrap();
            let expected = http::HeaderValue::from_str(&value).unwrap();
            let expected = (!expected.as_bytes().is_empty()).then(|| hash_key(expected.as_bytes()));
            prop_assert_eq!(HeaderKey::from_static("x-k").key(&req), expected);
        }

        /// The named cookie is found among any others, in any position and header.
        #[test]
        fn cookie_is_found_among_others(
            others in prop::collection::vec(("[a-z]{1,8}", "[a-zA-Z0-9]{0,12}"), 0..6),
            value in "[a-zA-Z0-9._-]{1,24}",
            at in any::<prop::sample::Index>(),
            split in any::<bool>(),
        ) {
            let mut pairs: Vec<String> = others
                .iter()
                .filter(|(n, _)| n != "sid")
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            pairs.insert(at.index(pairs.len() + 1), format!("sid={value}"));
            let mut builder = Request::get("/");
            if split {
                for p in &pairs {
                    builder = builder.header("cookie", p.as_str());
                }
            } else {
                builder = builder.header("cookie", pairs.join("; "));
            }
            let req = builder.body(()).unwrap();
            prop_assert_eq!(CookieKey::new("sid").key(&req), Some(hash_key(value.as_bytes())));
        }

        /// No extractor panics on arbitrary header bytes, paths or queries.
        #[test]
        fn extractors_never_panic(
            raw in prop::collection::vec(any::<u8>(), 0..200),
            path in "/[!-~]{0,80}",
            segments in 0usize..6,
        ) {
            let mut req = Request::new(());
            if let Ok(value) = http::HeaderValue::from_bytes(&raw) {
                req.headers_mut().insert("cookie", value.clone());
                req.headers_mut().insert("x-k", value);
            }
            if let Ok(uri) = path.parse::<http::Uri>() {
                *req.uri_mut() = uri;
            }
            let _ = CookieKey::new("k").key(&req);
            let _ = HeaderKey::from_static("x-k").key(&req);
            let _ = QueryKey::new("k").key(&req);
            prop_assert!(PathKey::segments(segments).key(&req).is_some());
            prop_assert!(PathKey::new().key(&req).is_some());
        }
    }
}

/// A writer into a shared buffer, for capturing `tracing` output.
#[cfg(feature = "http")]
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(feature = "http")]
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The warnings `configure` logs.
#[cfg(feature = "http")]
fn warnings_of(configure: impl FnOnce()) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, configure);
    let text = captured.0.lock().unwrap().clone();
    String::from_utf8(text).unwrap()
}

/// `.affinity(key)` with a picker that ignores keys is loud (a warning naming the
/// picker); with a hashing picker, or through `affinity_if_hashing`, it is quiet.
/// (`hash_affinity` with a non-hashing picker does not compile: a `compile_fail`
/// doctest on `BalanceLayer::hash_affinity`.)
#[cfg(feature = "http")]
#[test]
fn an_affinity_key_on_a_picker_that_ignores_it_is_a_warning() {
    use tower_lb::affinity::HeaderKey;
    use tower_lb::balance::BalanceLayer;
    use tower_lb::{AnyPicker, PowerOfTwoChoices, RoundRobin};
    let key = || HeaderKey::from_static("x-user");

    let p2c = warnings_of(|| {
        let _ = BalanceLayer::new(Pool::<&str, _>::new(PowerOfTwoChoices::new())).affinity(key());
    });
    assert!(p2c.contains("WARN"), "{p2c:?}");
    assert!(p2c.contains("the picker ignores it"), "{p2c}");
    assert!(p2c.contains("PowerOfTwoChoices"), "names the picker: {p2c}");

    let any_rr = warnings_of(|| {
        let picker: AnyPicker = "round-robin".parse().unwrap();
        let _ = BalanceLayer::new(Pool::<&str, _>::new(picker)).affinity(key());
    });
    assert!(any_rr.contains("the picker ignores it"), "{any_rr}");

    let quiet = warnings_of(|| {
        let _ = BalanceLayer::new(Pool::<&str, _>::new(Maglev::new())).affinity(key());
        let maglev: AnyPicker = "maglev".parse().unwrap();
        let _ = BalanceLayer::new(Pool::<&str, _>::new(maglev)).affinity(key());
        let _ = BalanceLayer::new(Pool::<&str, _>::new(Maglev::new())).hash_affinity(key());
        let _ =
            BalanceLayer::new(Pool::<&str, _>::new(RoundRobin::new())).affinity_if_hashing(key());
        let _ = BalanceLayer::new(Pool::<&str, _>::new(RoundRobin::new()));
    });
    assert_eq!(quiet, "");
}
