//! `--metrics`: Prometheus text at `/metrics`.

use super::*;

// --metrics: Prometheus text at /metrics

/// The proxy's `--metrics` endpoint, scraped after a scripted run: two live backends and
/// a refusing one, round robin, nine requests (each refused attempt retried elsewhere).
#[tokio::test]
async fn http_proxy_serves_prometheus_metrics() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(2).await?;
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            l.local_addr()?
        };
        let addrs = [backends[0].addr(), backends[1].addr(), dead];
        let proxy = HttpProxy::start_addrs(
            &["--strategy", "round-robin", "--metrics", "127.0.0.1:0"],
            &addrs,
        )
        .await?;
        assert_eq!(
            proxy.settings.metrics,
            Some("127.0.0.1:0".parse::<SocketAddr>()?)
        );
        let handle = proxy.proxy.metrics().ok_or("--metrics gave no recorder")?;
        // What main.rs does with --metrics, on a port of the test's.
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let metrics_addr = listener.local_addr()?;
        let server = tokio::spawn(http_proxy::serve_metrics(listener, handle.clone()));

        let client = http_client();
        for i in 0..9 {
            let answer = get(&client, proxy.addr, &format!("/{i}"), &[]).await?;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        }
        let scrape = get(&client, metrics_addr, "/metrics", &[]).await?;
        assert_eq!(scrape.status, StatusCode::OK);
        assert!(
            scrape.headers[http::header::CONTENT_TYPE]
                .to_str()?
                .starts_with("text/plain")
        );
        assert_eq!(
            get(&client, metrics_addr, "/other", &[]).await?.status,
            StatusCode::NOT_FOUND
        );
        server.abort();
        proxy.shutdown().await?;

        let series: BTreeMap<String, f64> = scrape
            .body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                Some((key.to_owned(), value.parse().ok()?))
            })
            .collect();
        let get = |key: String| -> Result<f64, Error> {
            series
                .get(&key)
                .copied()
                .ok_or_else(|| format!("no {key} in\n{}", scrape.body).into())
        };
        let label = |addr: SocketAddr| format!("backend=\"http://{addr}\"");
        let requests = |addr: SocketAddr, outcome: &str| {
            get(format!(
                "tower_lb_backend_requests_total{{{},outcome=\"{outcome}\"}}",
                label(addr)
            ))
        };
        let live_successes = requests(addrs[0], "success")? + requests(addrs[1], "success")?;
        assert_eq!(
            live_successes, 9.0,
            "every request answered by a live backend"
        );
        let refused = requests(dead, "failure")?;
        assert!(
            refused >= 2.0,
            "round robin sent the dead backend its share: {refused}"
        );
        assert_eq!(requests(dead, "success")?, 0.0);
        for addr in addrs {
            assert_eq!(
                get(format!("tower_lb_backend_in_flight{{{}}}", label(addr)))?,
                0.0
            );
            assert_eq!(
                get(format!("tower_lb_backend_weight{{{}}}", label(addr)))?,
                1.0
            );
            assert_eq!(
                get(format!(
                    "tower_lb_backend_ejections_total{{{}}}",
                    label(addr)
                ))?,
                0.0
            );
        }
        for addr in &addrs[..2] {
            assert_eq!(
                get(format!("tower_lb_backend_healthy{{{}}}", label(*addr)))?,
                1.0
            );
        }
        let timed = get(format!(
            "tower_lb_request_duration_seconds_count{{{}}}",
            label(addrs[0])
        ))? + get(format!(
            "tower_lb_request_duration_seconds_count{{{}}}",
            label(addrs[1])
        ))?;
        assert_eq!(timed, 9.0);
        Ok(())
    })
    .await
}
