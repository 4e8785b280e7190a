//! `tcp_proxy`: round robin, hashing by source address, Maglev, fail-over, copying both ways, hanging connects, bad options.

use super::*;

// TCP proxy

/// A TCP proxy serving on `127.0.0.1:0`.
struct RunningTcp {
    addr: SocketAddr,
    proxy: tcp_proxy::TcpProxy,
    server: Running,
}

impl RunningTcp {
    async fn start(strategy: &str, backends: &[&TcpBackend]) -> Result<Self, Error> {
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
        RunningTcp::start_addrs(&["--strategy", strategy], &addrs).await
    }

    /// Starts the proxy with `options` and one `--backend` per address.
    async fn start_addrs(options: &[&str], backends: &[SocketAddr]) -> Result<Self, Error> {
        let settings = tcp_proxy::Settings::parse(command_line("tcp_proxy", options, backends))?;
        let proxy = tcp_proxy::TcpProxy::start(&settings).map_err(|e| e.to_string())?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = Running::spawn(|stopped| tcp_proxy::serve(listener, proxy.clone(), stopped));
        Ok(RunningTcp {
            addr,
            proxy,
            server,
        })
    }

    /// Stops accepting and waits for the server to finish.
    async fn shutdown(self) -> Result<(), Error> {
        self.server.stop().await
    }
}

/// Connects to `proxy` from `source` (an address of the loopback network), reads the
/// backend's greeting, checks one echo; returns the backend's name.
async fn tcp_round_trip(proxy: SocketAddr, source: [u8; 4]) -> Result<String, Error> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let stream = socket.connect(proxy).await?;
    let mut stream = BufReader::new(stream);
    let mut name = String::new();
    stream.read_line(&mut name).await?;
    stream.get_mut().write_all(b"ping\n").await?;
    let mut echo = String::new();
    stream.read_line(&mut echo).await?;
    assert_eq!(echo, "ping\n");
    Ok(name.trim().to_owned())
}

async fn tcp_backends(n: usize) -> Result<Vec<TcpBackend>, Error> {
    let mut backends = Vec::new();
    for name in &["a", "b", "c"][..n] {
        backends.push(TcpBackend::start(name).await?);
    }
    Ok(backends)
}

#[tokio::test]
async fn tcp_proxy_round_robin_spreads_connections() -> Result<(), Error> {
    bounded(async {
        let backends = tcp_backends(3).await?;
        let proxy = RunningTcp::start("round-robin", &backends.iter().collect::<Vec<_>>()).await?;
        let mut counts = BTreeMap::<String, usize>::new();
        for _ in 0..30 {
            *counts
                .entry(tcp_round_trip(proxy.addr, [127, 0, 0, 1]).await?)
                .or_default() += 1;
        }
        assert_eq!(
            counts,
            BTreeMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
        );
        assert!(backends.iter().all(|b| b.connections() == 10));
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn tcp_proxy_hashes_by_source_address() -> Result<(), Error> {
    bounded(async {
        let backends = tcp_backends(3).await?;
        let proxy =
            RunningTcp::start("source-ip-hash", &backends.iter().collect::<Vec<_>>()).await?;
        // Sources across the loopback network 127.0.0.0/8: each keeps its backend.
        let mut homes = BTreeMap::<u8, BTreeSet<String>>::new();
        for _round in 0..3 {
            for host in 1..=16u8 {
                let name = tcp_round_trip(proxy.addr, [127, 0, 0, host]).await?;
                homes.entry(host).or_default().insert(name);
            }
        }
        for (host, names) in &homes {
            assert_eq!(names.len(), 1, "127.0.0.{host} reached {names:?}");
        }
        let used: BTreeSet<_> = homes.values().flatten().collect();
        assert!(used.len() >= 2, "16 sources all on {used:?}");
        // The choice reads the client's IP only: its port does not matter.
        for host in 1..=255u8 {
            let a = proxy
                .proxy
                .choose(SocketAddr::from(([10, 1, 2, host], 1000)))?;
            let b = proxy
                .proxy
                .choose(SocketAddr::from(([10, 1, 2, host], 61000)))?;
            assert_eq!(a, b);
        }
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn tcp_proxy_maglev_keys_each_connection_by_its_address() -> Result<(), Error> {
    bounded(async {
        let backends = tcp_backends(3).await?;
        let proxy = RunningTcp::start("maglev", &backends.iter().collect::<Vec<_>>()).await?;
        // One client IP, many ports: spread over every backend, each port always the same.
        let mut used = BTreeSet::new();
        for port in 1000..1100u16 {
            let peer = SocketAddr::from(([192, 0, 2, 7], port));
            let home = proxy.proxy.choose(peer)?;
            assert_eq!(proxy.proxy.choose(peer)?, home);
            used.insert(home);
        }
        assert_eq!(used.len(), 3);
        assert!(!tcp_round_trip(proxy.addr, [127, 0, 0, 1]).await?.is_empty());
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn tcp_proxy_fails_over_without_a_client_visible_error() -> Result<(), Error> {
    bounded(async {
        let mut backends = tcp_backends(3).await?;
        let proxy = RunningTcp::start("round-robin", &backends.iter().collect::<Vec<_>>()).await?;
        backends[1].stop().await;
        let mut counts = BTreeMap::<String, usize>::new();
        for _ in 0..30 {
            // Every connection gets a greeting and its echo: none sees b's refusals.
            *counts
                .entry(tcp_round_trip(proxy.addr, [127, 0, 0, 1]).await?)
                .or_default() += 1;
        }
        assert_eq!(counts.values().sum::<usize>(), 30);
        assert!(!counts.contains_key("b"));
        // Refusals are failures for passive health: three in a row eject b.
        let pool = proxy.proxy.pool().clone();
        let b = &pool.stats()[1];
        assert!(b.failures >= 3, "{b:?}");
        // The health task publishes the ejection.
        until("the ejection", || pool.stats()[1].ejections > 0).await?;
        assert!(!pool.stats()[1].eligible);
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn tcp_proxy_copies_both_ways_until_close() -> Result<(), Error> {
    bounded(async {
        let backends = tcp_backends(1).await?;
        let proxy = RunningTcp::start("p2c", &[&backends[0]]).await?;
        let mut stream = TcpStream::connect(proxy.addr).await?;
        let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let (mut read, mut write) = stream.split();
        let writing = async {
            write.write_all(&payload).await?;
            // Half-close: the backend sees the end, finishes echoing, closes its side.
            write.shutdown().await
        };
        let mut received = Vec::new();
        let reading = read.read_to_end(&mut received);
        let (written, read) = tokio::join!(writing, reading);
        written?;
        read?;
        assert_eq!(&received[..2], b"a\n");
        assert_eq!(received[2..], payload[..]);
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn tcp_proxy_fails_over_from_a_host_whose_connects_hang() -> Result<(), Error> {
    bounded(async {
        let backends = tcp_backends(2).await?;
        let off = PoweredOff::start().await?;
        let addrs = [backends[0].addr(), off.addr, backends[1].addr()];
        let proxy = RunningTcp::start_addrs(
            &["--strategy", "round-robin", "--connect-timeout", "0.5"],
            &addrs,
        )
        .await?;
        let mut counts = BTreeMap::<String, usize>::new();
        let mut slow = 0;
        for _ in 0..15 {
            let started = Instant::now();
            // Every connection gets a greeting and its echo: none sees the hanging host.
            let name = tcp_round_trip(proxy.addr, [127, 0, 0, 1]).await?;
            let took = started.elapsed();
            // At most one connect time-out, then the next backend.
            assert!(took < Duration::from_millis(1000), "{took:?}");
            if took >= Duration::from_millis(500) {
                slow += 1;
            }
            *counts.entry(name).or_default() += 1;
        }
        assert_eq!(counts.values().sum::<usize>(), 15);
        // Three time-outs in a row ejected the hanging host: no more waiting after them.
        assert_eq!(slow, 3, "{counts:?}");
        let pool = proxy.proxy.pool().clone();
        assert_eq!(pool.stats()[1].failures, 3, "{:?}", pool.stats()[1]);
        // The health task publishes the ejection.
        until("the ejection", || pool.stats()[1].ejections > 0).await?;
        assert!(!pool.stats()[1].eligible);
        proxy.shutdown().await
    })
    .await
}

#[test]
fn tcp_proxy_rejects_bad_options_with_exit_code_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--strategy", "ring"], "--strategy"),
        (&["--backend", "127.0.0.1"], "--backend"),
        (&["--backend", "127.0.0.1:5432=0"], "--backend"),
        (
            &["--backend", "127.0.0.1:5432", "--backend", "127.0.0.1:5432"],
            "--backend",
        ),
        (&["--listen", "nowhere"], "--listen"),
        (&["--connect-timeout", "0"], "--connect-timeout"),
    ];
    for (options, names) in cases {
        let args = std::iter::once("tcp_proxy").chain(options.iter().copied());
        let Err(e) = tcp_proxy::Settings::parse(args) else {
            panic!("{options:?} was accepted");
        };
        assert_eq!(e.exit_code(), 2, "{options:?}: {e}");
        assert!(e.to_string().contains(names), "{options:?}: {e}");
    }
    let ok = tcp_proxy::Settings::parse(["tcp_proxy", "--backend", "127.0.0.1:5432=2"])
        .expect("valid options");
    assert_eq!(ok.listen, SocketAddr::from(([127, 0, 0, 1], 9090)));
    assert_eq!(ok.strategy.name(), "round-robin");
    assert_eq!(ok.backends[0].1.get(), 2);
    assert_eq!(ok.connect_timeout, Duration::from_secs(3));
}
