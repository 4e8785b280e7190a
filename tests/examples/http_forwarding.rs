//! `http_proxy` adds forwarding headers, strips hop-by-hop ones, streams bodies both ways, and
//! reuses its backend connections.

use super::*;

#[tokio::test]
async fn http_proxy_adds_forwarding_headers_and_strips_hop_by_hop_ones() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(1).await?;
        let proxy = HttpProxy::start(&[], &[&backends[0]]).await?;
        let client = http_client();
        let answer = get(
            &client,
            proxy.addr,
            "/headers",
            &[
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "for this connection only"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic c2VjcmV0"),
                ("te", "trailers"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-end-to-end", "kept"),
            ],
        )
        .await?;
        assert_eq!(answer.status, StatusCode::OK);
        let seen = backends[0]
            .last_headers()
            .ok_or("the backend saw no request")?;
        for hop in [
            "x-hop",
            "keep-alive",
            "proxy-authorization",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(seen.get(hop).is_none(), "{hop} reached the backend");
        }
        assert_eq!(seen["x-end-to-end"], "kept");
        assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(seen["x-forwarded-proto"], "http");
        let forwarded = seen["forwarded"].to_str()?;
        assert!(
            forwarded.starts_with("for=127.0.0.1;proto=http;host="),
            "{forwarded}"
        );
        // The client's Host is kept.
        assert_eq!(seen["host"], proxy.addr.to_string());
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_streams_bodies_both_ways() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(1).await?;
        let proxy = HttpProxy::start(&[], &[&backends[0]]).await?;
        let tcp = TcpStream::connect(proxy.addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(1);
        let request = Request::post("/echo").header("host", "test").body(body)?;
        let responding = tokio::spawn(async move { sender.send_request(request).await });
        // Each chunk comes back before the next is sent: neither side is buffered whole.
        tx.send_data(Bytes::from_static(b"first chunk")).await?;
        let response = responding.await??;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let frame = body.frame().await.ok_or("no first chunk")??;
        assert_eq!(frame.into_data().map_err(|_| "not data")?, "first chunk");
        tx.send_data(Bytes::from_static(b"second chunk")).await?;
        let frame = body.frame().await.ok_or("no second chunk")??;
        assert_eq!(frame.into_data().map_err(|_| "not data")?, "second chunk");
        drop(tx);
        let rest = body.collect().await?.to_bytes();
        assert!(rest.is_empty());
        proxy.shutdown().await
    })
    .await
}

/// A keep-alive HTTP/1.1 backend that counts the connections it accepts: each request
/// is a head without a body, and each gets `ok`.
async fn keep_alive_backend() -> Result<Counting, Error> {
    Counting::start(|stream: TcpStream| async move {
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => {
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                    if stream.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
            }
        }
    })
    .await
}

#[tokio::test]
async fn http_proxy_reuses_its_backend_connections() -> Result<(), Error> {
    bounded(async {
        let backend = keep_alive_backend().await?;
        let proxy = HttpProxy::start_addrs(&[], &[backend.addr]).await?;
        let client = http_client();
        for _ in 0..20 {
            let answer = get(&client, proxy.addr, "/", &[]).await?;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.body, "ok\n");
        }
        // One request at a time: each finds the connection the previous one returned.
        assert_eq!(backend.connections(), 1);
        // Two at a time: a second connection, and no more.
        for _ in 0..10 {
            let (a, b) = tokio::join!(
                get(&client, proxy.addr, "/", &[]),
                get(&client, proxy.addr, "/", &[])
            );
            assert_eq!((a?.status, b?.status), (StatusCode::OK, StatusCode::OK));
        }
        assert!(
            backend.connections() <= 2,
            "{} connections",
            backend.connections()
        );
        proxy.shutdown().await
    })
    .await
}
