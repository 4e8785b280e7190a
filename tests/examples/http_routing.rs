//! `http_proxy`'s routing: round robin, weights, sticky cookies (and their move when the backend dies), hashing by a header.

use super::*;

#[tokio::test]
async fn http_proxy_round_robin_spreads_requests_evenly() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(3).await?;
        let proxy = HttpProxy::start(
            &["--strategy", "round-robin"],
            &backends.iter().collect::<Vec<_>>(),
        )
        .await?;
        let client = http_client();
        let mut counts = BTreeMap::<String, usize>::new();
        for _ in 0..30 {
            let answer = get(&client, proxy.addr, "/", &[]).await?;
            assert_eq!(answer.status, StatusCode::OK);
            // The body is the backend's name, as in its header.
            assert_eq!(answer.body.trim(), answer.backend());
            *counts.entry(answer.backend().to_owned()).or_default() += 1;
        }
        assert_eq!(
            counts,
            BTreeMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
        );
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_weighted_follows_backend_weights() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(2).await?;
        let args = vec![
            "http_proxy".to_owned(),
            "--strategy".to_owned(),
            "weighted".to_owned(),
            "--backend".to_owned(),
            format!("{}=3", backends[0].addr()),
            "--backend".to_owned(),
            backends[1].addr().to_string(),
        ];
        let settings = http_proxy::Settings::parse(args)?;
        let weights: Vec<u32> = settings.backends.iter().map(|(_, w)| w.get()).collect();
        assert_eq!(weights, [3, 1]);
        let proxy = http_proxy::Proxy::start(&settings)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(http_proxy::serve(
            listener,
            proxy,
            None,
            std::future::pending(),
        ));
        let client = http_client();
        let mut counts = BTreeMap::<String, usize>::new();
        for _ in 0..40 {
            let answer = get(&client, addr, "/", &[]).await?;
            *counts.entry(answer.backend().to_owned()).or_default() += 1;
        }
        // Smooth weighted round robin: exactly 3:1 over whole cycles.
        assert_eq!(counts, BTreeMap::from([("a".into(), 30), ("b".into(), 10)]));
        server.abort();
        Ok(())
    })
    .await
}

#[tokio::test]
async fn http_proxy_sticky_cookie_keeps_a_client_on_its_backend() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(3).await?;
        // Round robin would rotate every request: only the cookie can keep them together.
        let proxy = HttpProxy::start(
            &[
                "--strategy",
                "round-robin",
                "--sticky",
                "--cookie-name",
                "srv",
                "--cookie-secret",
                "0123456789abcdef-secret",
            ],
            &backends.iter().collect::<Vec<_>>(),
        )
        .await?;
        let client = http_client();
        let first = get(&client, proxy.addr, "/", &[]).await?;
        let set_cookie = first.headers["set-cookie"].to_str()?.to_owned();
        assert!(set_cookie.starts_with("srv="), "{set_cookie}");
        assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
        let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
        for _ in 0..30 {
            let answer = get(&client, proxy.addr, "/", &[("cookie", &cookie)]).await?;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.backend(), first.backend(), "a cookie-holder moved");
            // Its cookie is still right: no new one.
            assert!(answer.headers.get("set-cookie").is_none());
        }
        // Without the cookie, round robin rotates.
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            seen.insert(
                get(&client, proxy.addr, "/", &[])
                    .await?
                    .backend()
                    .to_owned(),
            );
        }
        assert_eq!(seen.len(), 3);
        // A forged cookie is ignored: the request is served and gets a genuine cookie.
        let forged = get(
            &client,
            proxy.addr,
            "/",
            &[("cookie", "srv=AAAAAAAAAAAAAAAAAAAAAA")],
        )
        .await?;
        assert_eq!(forged.status, StatusCode::OK);
        assert!(forged.headers["set-cookie"].to_str()?.starts_with("srv="));
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_sticky_session_moves_when_its_backend_dies() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(3).await?;
        let mut doors = doors(&backends).await?;
        let addrs: Vec<SocketAddr> = doors.iter().map(|d| d.addr).collect();
        let proxy = HttpProxy::start_addrs(
            &["--sticky", "--cookie-secret", "0123456789abcdef-secret"],
            &addrs,
        )
        .await?;
        let client = http_client();
        let first = get(&client, proxy.addr, "/", &[]).await?;
        let cookie = first.headers["set-cookie"]
            .to_str()?
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        let home = backends
            .iter()
            .position(|b| b.name() == first.backend())
            .ok_or("unknown backend")?;
        // The home dies; the proxy has closed its pooled connections to it when `shut`
        // returns.
        doors.remove(home).shut().await?;
        // The cookie names a dead backend: the connect fails, the request is retried
        // elsewhere, and the answer carries a cookie for the new home.
        let moved = get(&client, proxy.addr, "/", &[("cookie", &cookie)]).await?;
        assert_eq!(moved.status, StatusCode::OK);
        assert_ne!(moved.backend(), first.backend());
        let new_cookie = moved.headers["set-cookie"]
            .to_str()?
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        assert_ne!(new_cookie, cookie);
        for _ in 0..10 {
            let answer = get(&client, proxy.addr, "/", &[("cookie", &new_cookie)]).await?;
            assert_eq!(answer.backend(), moved.backend());
        }
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_hashes_by_header() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(3).await?;
        let proxy = HttpProxy::start(
            &["--strategy", "maglev", "--hash-header", "x-user"],
            &backends.iter().collect::<Vec<_>>(),
        )
        .await?;
        let client = http_client();
        let mut homes = BTreeMap::<String, BTreeSet<String>>::new();
        for round in 0..4 {
            for user in 0..24 {
                let user = format!("user-{user}");
                let answer = get(
                    &client,
                    proxy.addr,
                    &format!("/r{round}"),
                    &[("x-user", &user)],
                )
                .await?;
                homes
                    .entry(user)
                    .or_default()
                    .insert(answer.backend().to_owned());
            }
        }
        for (user, backends) in &homes {
            assert_eq!(backends.len(), 1, "{user} reached {backends:?}");
        }
        let used: BTreeSet<_> = homes.values().flatten().collect();
        assert_eq!(
            used.len(),
            3,
            "24 users should use all three backends: {used:?}"
        );
        proxy.shutdown().await
    })
    .await
}
