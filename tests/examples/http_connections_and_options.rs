//! `http_proxy`'s client connections (slowloris, idle ones) and its command line's refusals.

use super::*;

#[tokio::test]
async fn http_proxy_closes_slowloris_connections_and_keeps_serving() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(1).await?;
        let proxy = HttpProxy::start(&["--header-timeout", "2"], &[&backends[0]]).await?;
        let addr = proxy.addr;
        // 200 clients, each sending a request head one byte a second: it never ends.
        let mut slow = JoinSet::new();
        for _ in 0..200 {
            slow.spawn(async move {
                let started = Instant::now();
                let mut stream = TcpStream::connect(addr).await?;
                let head = b"GET / HTTP/1.1\r\nhost: slow\r\nx-slow: ";
                let mut buf = [0u8; 1024];
                for byte in head.iter().cycle() {
                    if stream.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::select! {
                        read = stream.read(&mut buf) => match read {
                            Ok(0) | Err(_) => break,
                            Ok(_) => return Err::<Duration, Error>("the proxy answered".into()),
                        },
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    if started.elapsed() > Duration::from_secs(15) {
                        return Err("a slow client is still connected after 15 s".into());
                    }
                }
                Ok(started.elapsed())
            });
        }
        // Meanwhile, normal requests are served.
        let client = http_client();
        let mut served = 0;
        let mut closed_after = Vec::new();
        while !slow.is_empty() {
            let started = Instant::now();
            let answer = get(&client, addr, "/", &[]).await?;
            assert_eq!(answer.status, StatusCode::OK);
            assert!(started.elapsed() < Duration::from_secs(1));
            served += 1;
            while let Some(done) = slow.try_join_next() {
                closed_after.push(done??);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(closed_after.len(), 200);
        let (first, last) = (
            closed_after.iter().min().copied().unwrap_or_default(),
            closed_after.iter().max().copied().unwrap_or_default(),
        );
        // Closed at the header time-out, not before, and not much after.
        assert!(first >= Duration::from_millis(1900), "{first:?}");
        assert!(last < Duration::from_secs(4), "{last:?}");
        assert!(served >= 10, "{served}");
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_closes_idle_connections_but_not_busy_ones() -> Result<(), Error> {
    bounded(async {
        let slow = HttpBackend::start_with_delay("slow", Duration::from_millis(1500)).await?;
        let proxy = HttpProxy::start(
            &["--header-timeout", "0.5", "--idle-timeout", "1"],
            &[&slow],
        )
        .await?;
        let tcp = TcpStream::connect(proxy.addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let mut connection = tokio::spawn(connection);
        let request = || {
            Request::get("/")
                .header("host", "test")
                .body(Empty::<Bytes>::new())
        };
        // A request in progress longer than both time-outs is not cut short.
        let response = sender.send_request(request()?).await?;
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await?;
        // Idle for longer than the header time-out: the connection is still open.
        tokio::time::sleep(Duration::from_millis(750)).await;
        let response = sender.send_request(request()?).await?;
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await?;
        let idle = Instant::now();
        // Idle for the idle time-out: closed.
        tokio::time::timeout(Duration::from_secs(3), &mut connection).await???;
        let after = idle.elapsed();
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(2),
            "{after:?}"
        );
        proxy.shutdown().await
    })
    .await
}

#[test]
fn http_proxy_rejects_bad_options_with_exit_code_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--strategy", "fastest"], "--strategy"),
        (&["--backend", "127.0.0.1:9000=0"], "--backend"),
        (&["--backend", "127.0.0.1:9000=x"], "--backend"),
        (&["--backend", "http://"], "--backend"),
        (&["--backend", "https://127.0.0.1:9000"], "--backend"),
        (&["--backend", "not-an-address"], "not-an-address"),
        (&["--backend", "not-an-address"], "--backend"),
        (&["--backend", "127.0.0.1"], "'127.0.0.1'"),
        (&["--backend", "127.0.0.1"], "no port"),
        (&["--backend", "not an address:80"], "not an address:80"),
        (&["--timeout", "0"], "--timeout"),
        (&["--timeout", "soon"], "--timeout"),
        (&["--header-timeout", "0.0001"], "--header-timeout"),
        (&["--idle-timeout", "inf"], "--idle-timeout"),
        (
            &["--backend", "127.0.0.1:9000", "--backend", "127.0.0.1:9000"],
            "--backend",
        ),
        (&["--listen", "localhost"], "--listen"),
        (&["--hash-header", "x-user"], "--hash-header"),
        (
            &["--strategy", "maglev", "--hash-header", "bad header"],
            "--hash-header",
        ),
        (
            &[
                "--strategy",
                "ring",
                "--hash-header",
                "a",
                "--hash-cookie",
                "b",
            ],
            "--hash-cookie",
        ),
        (&["--cookie-name", "lb"], "--sticky"),
        (&["--sticky", "--cookie-secret", "short"], "--cookie-secret"),
        (&["--sticky", "--cookie-name", "bad name"], "--cookie-name"),
        (&["--health-path", "health"], "--health-path"),
        (&["--health-interval", "2"], "--health-path"),
        (
            &["--health-path", "/health", "--health-interval", "0"],
            "--health-interval",
        ),
        (&["--max-in-flight", "0"], "--max-in-flight"),
        (&["--tls-cert", "cert.pem"], "--tls-key"),
        (
            &[
                "--tls-self-signed",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
            ],
            "--tls-",
        ),
        (
            &[
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            "--tls-cert",
        ),
        (&["--frobnicate"], "--frobnicate"),
    ];
    for (options, names) in cases {
        let args = std::iter::once("http_proxy").chain(options.iter().copied());
        let Err(e) = http_proxy::Settings::parse(args) else {
            panic!("{options:?} was accepted");
        };
        assert_eq!(e.exit_code(), 2, "{options:?}: {e}");
        let message = e.to_string();
        assert!(
            message.contains(names),
            "{options:?}: the message does not name {names}: {message}"
        );
    }
    // And good ones pass.
    let ok = http_proxy::Settings::parse([
        "http_proxy",
        "--strategy",
        "rendezvous",
        "--hash-cookie",
        "session",
        "--sticky",
        "--health-path",
        "/health",
        "--health-interval",
        "0.5",
        "--max-in-flight",
        "8",
    ]);
    let ok = ok.expect("valid options");
    assert_eq!(ok.strategy.name(), "rendezvous");
    assert!(ok.random_secret, "no --cookie-secret: a random one");
    assert_eq!(ok.max_in_flight, Some(8));
    assert_eq!(ok.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
    // The time-outs' defaults.
    assert_eq!(ok.timeout, Duration::from_secs(30));
    assert_eq!(ok.client.header, Duration::from_secs(10));
    assert_eq!(ok.client.idle, Duration::from_secs(60));
}
