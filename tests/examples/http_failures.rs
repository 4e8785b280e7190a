//! `http_proxy` under failures: a killed backend, no eligible backend (503), full backends (503), a failing backend (502), shutdown, hosts powered off, time-outs and what is safe to retry.

use super::*;

#[tokio::test]
async fn http_proxy_fails_over_when_a_backend_is_killed() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(3).await?;
        let mut doors = doors(&backends).await?;
        let addrs: Vec<SocketAddr> = doors.iter().map(|d| d.addr).collect();
        let proxy = HttpProxy::start_addrs(&["--strategy", "round-robin"], &addrs).await?;
        let client = http_client();
        for _ in 0..6 {
            assert_eq!(
                get(&client, proxy.addr, "/", &[]).await?.status,
                StatusCode::OK
            );
        }
        // b dies; when `shut` returns, the proxy's pooled keep-alive connections to b
        // have seen their end.
        doors.remove(1).shut().await?;
        for _ in 0..30 {
            let answer = get(&client, proxy.addr, "/", &[]).await?;
            // Connects to b fail and are retried on another backend: no client sees them.
            assert_eq!(answer.status, StatusCode::OK);
            assert_ne!(answer.backend(), "b");
        }
        let stats = proxy.proxy.pool().stats();
        let b = &stats[1];
        assert_eq!(b.addr.authority().as_str(), addrs[1].to_string());
        // Five failed connects in a row ejected it (outlier detection's default).
        assert_eq!(b.failures, 5, "{b:?}");
        assert_eq!(b.ejections, 1);
        assert!(!b.eligible);
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_answers_503_with_retry_after_when_no_backend_is_eligible() -> Result<(), Error>
{
    bounded(async {
        let backends = http_backends(2).await?;
        let proxy = HttpProxy::start(&[], &backends.iter().collect::<Vec<_>>()).await?;
        for s in proxy.proxy.pool().stats() {
            proxy.proxy.pool().drain(s.id)?;
        }
        let answer = get(&http_client(), proxy.addr, "/", &[]).await?;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.headers.contains_key("retry-after"));
        assert_eq!(backends[0].requests() + backends[1].requests(), 0);
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_sheds_with_503_when_every_backend_is_at_capacity() -> Result<(), Error> {
    bounded(async {
        let slow = HttpBackend::start_with_delay("slow", Duration::from_millis(400)).await?;
        let proxy = HttpProxy::start(&["--max-in-flight", "1"], &[&slow]).await?;
        let client = http_client();
        let addr = proxy.addr;
        let first = tokio::spawn({
            let client = client.clone();
            async move { get(&client, addr, "/", &[]).await.map(|a| a.status) }
        });
        // Wait until the first request holds the backend's only slot.
        until("the request in flight", || {
            proxy.proxy.pool().stats()[0].in_flight > 0
        })
        .await?;
        let shed = get(&client, addr, "/", &[]).await?;
        assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
        let retry_after: u64 = shed.headers["retry-after"].to_str()?.parse()?;
        assert!(retry_after >= 1);
        assert_eq!(first.await??, StatusCode::OK);
        // Capacity is back.
        assert_eq!(get(&client, addr, "/", &[]).await?.status, StatusCode::OK);
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_answers_502_when_the_backend_fails() -> Result<(), Error> {
    bounded(async {
        let mut backends = http_backends(1).await?;
        let proxy = HttpProxy::start(&[], &[&backends[0]]).await?;
        backends[0].stop().await;
        let answer = get(&http_client(), proxy.addr, "/", &[]).await?;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_shutdown_lets_requests_in_flight_finish_and_closes_idle_connections()
-> Result<(), Error> {
    bounded(async {
        let slow = HttpBackend::start_with_delay("slow", Duration::from_millis(300)).await?;
        let proxy = HttpProxy::start(&[], &[&slow]).await?;
        let addr = proxy.addr;
        // Three kept-alive connections, each idle after one request (the idle time-out
        // is 60 s), one silent connection, and one request in flight.
        let mut idle = Vec::new();
        for _ in 0..3 {
            let mut stream = TcpStream::connect(addr).await?;
            stream
                .write_all(b"GET / HTTP/1.1\r\nhost: idle\r\n\r\n")
                .await?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await?;
            assert_eq!(&head, b"HTTP/1.1 200");
            idle.push(stream);
        }
        // And one that has sent nothing yet (the header time-out is 10 s).
        let mut silent = TcpStream::connect(addr).await?;
        let in_flight =
            tokio::spawn(
                async move { get(&http_client(), addr, "/", &[]).await.map(|a| a.status) },
            );
        until("the request in flight", || {
            proxy.proxy.pool().stats()[0].in_flight > 0
        })
        .await?;
        let started = std::time::Instant::now();
        // Shutdown returns only once the request in flight has been answered.
        proxy.shutdown().await?;
        // Not the 30 s cap: the idle connections were told at once.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
        assert_eq!(in_flight.await??, StatusCode::OK);
        for mut stream in idle {
            // The rest of the answer, then the end of the stream.
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await??;
            assert!(
                rest.ends_with(b"slow\n"),
                "{:?}",
                String::from_utf8_lossy(&rest)
            );
        }
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), silent.read_to_end(&mut rest)).await??;
        assert!(rest.is_empty());
        // And nothing listens any more.
        assert!(TcpStream::connect(addr).await.is_err());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn http_proxy_serves_every_request_with_two_of_three_hosts_powered_off() -> Result<(), Error>
{
    bounded(async {
        let up = HttpBackend::start("up").await?;
        let off = [PoweredOff::start().await?, PoweredOff::start().await?];
        let addrs = [off[0].addr, up.addr(), off[1].addr];
        let mut proxies = Vec::new();
        for strategy in ["p2c", "round-robin", "peak-ewma", "server-load"] {
            let options = [
                "--strategy",
                strategy,
                "--health-path",
                "/health",
                "--health-interval",
                "1",
            ];
            proxies.push((strategy, HttpProxy::start_addrs(&options, &addrs).await?));
        }
        // Three failed probes (1 s apart, each timing out after 1 s) mark a host down.
        for (strategy, proxy) in &proxies {
            until(
                &format!("{strategy}'s probes to mark both hosts down"),
                || {
                    let stats = proxy.proxy.pool().stats();
                    !stats[0].eligible && !stats[2].eligible
                },
            )
            .await?;
        }
        let client = http_client();
        for (strategy, proxy) in &proxies {
            for i in 0..20 {
                let started = Instant::now();
                let answer = get(&client, proxy.addr, "/", &[]).await?;
                let took = started.elapsed();
                assert_eq!(answer.status, StatusCode::OK, "{strategy}, request {i}");
                assert!(
                    took < Duration::from_secs(1),
                    "{strategy}, request {i}: {took:?}; stats {:?}",
                    proxy.proxy.pool().stats()
                );
            }
        }
        for (_, proxy) in proxies {
            proxy.shutdown().await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn http_proxy_retries_a_timed_out_get_on_another_backend() -> Result<(), Error> {
    bounded(async {
        let good = http_backends(2).await?;
        let silent = Unresponsive::start().await?;
        let addrs = [good[0].addr(), silent.addr, good[1].addr()];
        // Round robin sends every third request to the silent backend.
        let proxy =
            HttpProxy::start_addrs(&["--strategy", "round-robin", "--timeout", "2"], &addrs)
                .await?;
        let client = http_client();
        let wave = |n: usize| {
            let mut requests = JoinSet::new();
            for _ in 0..n {
                let client = client.clone();
                let addr = proxy.addr;
                requests.spawn(async move {
                    let started = Instant::now();
                    let answer = get(&client, addr, "/", &[]).await?;
                    Ok::<_, Error>((answer.status, started.elapsed()))
                });
            }
            requests
        };
        let mut first = wave(30);
        let mut slowest = Duration::ZERO;
        while let Some(done) = first.join_next().await {
            let (status, took) = done??;
            assert_eq!(status, StatusCode::OK);
            // The time-out (2 s), then the retry on another backend.
            assert!(took < Duration::from_secs(4), "{took:?}");
            slowest = slowest.max(took);
        }
        assert!(
            slowest >= Duration::from_secs(2),
            "no request waited: {slowest:?}"
        );
        assert!(silent.connections() >= 5, "{}", silent.connections());
        // Each time-out was a failure for passive health: five in a row ejected it.
        let stats = proxy.proxy.pool().stats();
        assert!(stats[1].failures >= 5, "{:?}", stats[1]);
        assert_eq!(stats[1].ejections, 1);
        // From then on no request waits.
        let mut second = wave(30);
        while let Some(done) = second.join_next().await {
            let (status, took) = done??;
            assert_eq!(status, StatusCode::OK);
            assert!(took < Duration::from_secs(1), "{took:?}");
        }
        proxy.shutdown().await
    })
    .await
}

/// `method path` with `body` through the proxy at `addr`: the status and the body.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &'static str,
) -> Result<(StatusCode, String), Error> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(http_body_util::Full::new(Bytes::from_static(
            body.as_bytes(),
        )))?;
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

#[tokio::test]
async fn http_proxy_answers_504_and_retries_only_what_is_safe_to_repeat() -> Result<(), Error> {
    bounded(async {
        let good = HttpBackend::start("good").await?;
        let silent = Unresponsive::start().await?;
        let proxy = HttpProxy::start_addrs(
            &["--strategy", "round-robin", "--timeout", "1"],
            &[silent.addr, good.addr()],
        )
        .await?;
        // Round robin alternates: of each pair, one request goes to the silent backend.
        let pair = async |method: &str, body: &'static str| -> Result<Vec<u16>, Error> {
            let mut statuses = vec![
                send(proxy.addr, method, "/", body).await?.0.as_u16(),
                send(proxy.addr, method, "/", body).await?.0.as_u16(),
            ];
            statuses.sort_unstable();
            Ok(statuses)
        };
        // A POST may have been acted upon: 504, not sent again.
        assert_eq!(pair("POST", "").await?, [200, 504]);
        assert_eq!(good.requests(), 1);
        // A PUT is idempotent, but its body went to the silent backend: 504 too.
        assert_eq!(pair("PUT", "the body").await?, [200, 504]);
        assert_eq!(good.requests(), 2);
        // A GET (no body) is sent again, to the other backend.
        assert_eq!(pair("GET", "").await?, [200, 200]);
        assert_eq!(good.requests(), 4);
        assert_eq!(silent.connections(), 3);
        let stats = proxy.proxy.pool().stats();
        assert_eq!(stats[0].failures, 3, "{:?}", stats[0]);
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_retries_a_post_whose_connect_hangs() -> Result<(), Error> {
    bounded(async {
        let good = HttpBackend::start("good").await?;
        let off = PoweredOff::start().await?;
        let proxy = HttpProxy::start_addrs(
            &["--strategy", "round-robin", "--timeout", "1"],
            &[off.addr, good.addr()],
        )
        .await?;
        for _ in 0..2 {
            let started = Instant::now();
            // Nothing reached the powered-off host: the POST, body and all, goes to the
            // other backend (which echoes the body).
            let (status, body) = send(proxy.addr, "POST", "/echo", "the body").await?;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "the body");
            // The connect's time-out (3/4 of --timeout), then the other backend. (Had the
            // attempt's time-out come first, the POST would have had a 504.)
            let took = started.elapsed();
            assert!(took < Duration::from_millis(1500), "{took:?}");
        }
        assert_eq!(good.requests(), 2);
        assert_eq!(proxy.proxy.pool().stats()[0].failures, 1);
        proxy.shutdown().await
    })
    .await
}
