//! `http_proxy`'s client side (`examples/http_proxy/front.rs`) byte for byte: pipelined
//! requests, a request with a body among them (hyper serves the connection from there
//! on), HTTP/1.0 clients, `HEAD`, malformed and oversized heads, the proxy's own
//! answers, and a client that hangs up.

use super::*;

/// The answers in `text`, each without its status line's `HTTP/1.1 `.
fn answers(text: &str) -> Vec<&str> {
    text.split("HTTP/1.1 ").filter(|s| !s.is_empty()).collect()
}

#[tokio::test]
async fn http_proxy_answers_pipelined_requests_in_order_with_a_body_among_them() -> Result<(), Error>
{
    bounded(async {
        let a = HttpBackend::start("a").await?;
        let proxy = HttpProxy::start(&[], &[&a]).await?;
        let text = raw(
            proxy.addr,
            b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n\
              POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
              GET /two HTTP/1.1\r\nhost: x\r\n\r\n\
              GET /three HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await?;
        let answers = answers(&text);
        assert_eq!(answers.len(), 4, "{text}");
        assert!(
            answers.iter().all(|a| a.starts_with("200 OK\r\n")),
            "{text}"
        );
        assert!(answers[0].ends_with("\r\n\r\na\n"), "{text}");
        assert!(answers[1].ends_with("\r\n\r\nhello"), "{text}");
        assert!(answers[2].ends_with("\r\n\r\na\n"), "{text}");
        assert!(answers[3].contains("\r\nconnection: close\r\n"), "{text}");
        assert_eq!(a.requests(), 4);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn http_proxy_serves_http_1_0_clients_and_head_requests() -> Result<(), Error> {
    bounded(async {
        let a = HttpBackend::start("a").await?;
        let proxy = HttpProxy::start(&[], &[&a]).await?;
        // HTTP/1.0 closes after each answer unless the client asks to keep it.
        let text = raw(proxy.addr, b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n").await?;
        assert_eq!(answers(&text).len(), 1, "{text}");
        assert!(text.contains("\r\nconnection: close\r\n") && text.ends_with("a\n"));
        let text = raw(
            proxy.addr,
            b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
        )
        .await?;
        let two = answers(&text);
        assert_eq!(two.len(), 2, "{text}");
        assert!(two[0].contains("\r\nconnection: keep-alive\r\n"), "{text}");
        assert!(two[1].contains("\r\nconnection: close\r\n"), "{text}");
        // HEAD: the length of the body a GET would get, and no body.
        let text = raw(
            proxy.addr,
            b"HEAD / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await?;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 2\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn http_proxy_answers_malformed_heads_and_serves_long_ones() -> Result<(), Error> {
    bounded(async {
        let a = HttpBackend::start("a").await?;
        let proxy = HttpProxy::start(&[], &[&a]).await?;
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        ] {
            let text = raw(proxy.addr, bad).await?;
            assert!(
                text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{:?}: {text}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(a.requests(), 0);
        // A head longer than the proxy's own path takes (16 KiB) goes to hyper.
        let mut long = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-long: ".to_vec();
        long.extend(std::iter::repeat_n(b'v', 20_000));
        long.extend_from_slice(b"\r\n\r\n");
        let text = raw(proxy.addr, &long).await?;
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("a\n"),
            "{text}"
        );
        assert_eq!(a.requests(), 1);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn http_proxy_dates_and_frames_its_own_answers() -> Result<(), Error> {
    bounded(async {
        // A port nothing listens on: the connect is refused, the answer is the proxy's.
        let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        let proxy = HttpProxy::start_addrs(&[], &[closed]).await?;
        let text = raw(
            proxy.addr,
            b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await?;
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        let body = "the backend failed\n";
        assert!(
            text.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{text}"
        );
        assert!(text.ends_with(body), "{text}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn http_proxy_cancels_the_request_of_a_client_that_hangs_up() -> Result<(), Error> {
    bounded(async {
        let slow = HttpBackend::start_with_delay("slow", Duration::from_secs(5)).await?;
        let proxy = HttpProxy::start(&[], &[&slow]).await?;
        let mut stream = TcpStream::connect(proxy.addr).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        let pool = proxy.proxy.pool().clone();
        until("the request in flight", || pool.stats()[0].in_flight > 0).await?;
        let hung_up = Instant::now();
        drop(stream);
        until("the request to end", || pool.stats()[0].in_flight == 0).await?;
        // Long before the backend would have answered.
        let took = hung_up.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn http_proxy_answers_what_a_client_sent_before_closing_its_side() -> Result<(), Error> {
    bounded(async {
        let a = HttpBackend::start_with_delay("a", Duration::from_millis(100)).await?;
        let proxy = HttpProxy::start(&[], &[&a]).await?;
        // A length of 0, said twice: the backend hears it once (as hyper does). A
        // backend that keeps the head as written (hyper's server would merge the two).
        let heads = Arc::new(std::sync::Mutex::new(String::new()));
        let kept = Arc::clone(&heads);
        let written = Counting::start(move |mut stream: TcpStream| {
            let heads = Arc::clone(&kept);
            async move {
                let mut head = vec![0u8; 4096];
                let n = stream.read(&mut head).await.unwrap_or(0);
                if let Ok(mut heads) = heads.lock() {
                    heads.push_str(&String::from_utf8_lossy(&head[..n]));
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = stream.write_all(answer).await;
            }
        })
        .await?;
        let once = HttpProxy::start_addrs(&[], &[written.addr]).await?;
        let text = raw(
            once.addr,
            b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ncontent-length: 0\r\n\
              connection: close\r\n\r\n",
        )
        .await?;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        let head = heads.lock().map_err(|_| "poisoned")?.to_ascii_lowercase();
        assert_eq!(head.matches("content-length:").count(), 1, "{head}");
        // Two requests, then the end of what the client sends (as `nc -N` does). The
        // first is answered: the second's bytes, waiting behind it, are not read past
        // (as hyper does). During the second, the end is read, and — as with hyper, or
        // NGINX without `proxy_ignore_client_abort` — taken for a client that left.
        let mut stream = TcpStream::connect(proxy.addr).await?;
        stream
            .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        stream.shutdown().await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await??;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\n\r\na\n"), "{text}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn http_proxy_ends_a_quiet_stream_when_its_client_leaves() -> Result<(), Error> {
    bounded(async {
        // A backend that sends a head and one chunk of an endless body, then waits; it
        // counts the connections that end under it.
        let ended = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&ended);
        let backend = Counting::start(move |mut stream: TcpStream| {
            let ended = Arc::clone(&counted);
            async move {
                let mut head = vec![0u8; 4096];
                if stream.read(&mut head).await.unwrap_or(0) == 0 {
                    return;
                }
                let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
                if stream.write_all(answer).await.is_ok() {
                    let mut rest = [0u8; 64];
                    // Nothing more is sent: a read ends when the proxy closes.
                    while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {}
                    ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
        .await?;
        let proxy = HttpProxy::start_addrs(&[], &[backend.addr]).await?;
        let mut stream = TcpStream::connect(proxy.addr).await?;
        stream
            .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("hello") {
            let mut more = [0u8; 1024];
            let n = stream.read(&mut more).await?;
            if n == 0 {
                return Err("the proxy closed before the first chunk".into());
            }
            seen.extend_from_slice(&more[..n]);
        }
        let left = Instant::now();
        drop(stream);
        until("the backend connection to end", || {
            ended.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await?;
        let took = left.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn http_proxy_passes_large_bodies_whole() -> Result<(), Error> {
    bounded(async {
        // 1 MiB, each byte different from its neighbours, sent by a backend in pieces
        // of 100 000 bytes: with a length (`/length`), or as chunks of that size.
        let body: Arc<Vec<u8>> = Arc::new((0..1 << 20).map(|i: u32| (i % 251) as u8).collect());
        let served = Arc::clone(&body);
        let backend = Counting::start(move |mut stream: TcpStream| {
            let body = Arc::clone(&served);
            async move {
                let mut head = vec![0u8; 4096];
                let n = stream.read(&mut head).await.unwrap_or(0);
                let chunked = !head[..n].starts_with(b"GET /length ");
                let start: &[u8] = if chunked {
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\nconnection: close\r\n\r\n"
                };
                if stream.write_all(start).await.is_err() {
                    return;
                }
                for piece in body.chunks(100_000) {
                    let sent = if chunked {
                        let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                        framed.extend_from_slice(piece);
                        framed.extend_from_slice(b"\r\n");
                        stream.write_all(&framed).await
                    } else {
                        stream.write_all(piece).await
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                if chunked {
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                }
            }
        })
        .await?;
        let proxy = HttpProxy::start_addrs(&[], &[backend.addr]).await?;
        let client = http_client();
        for path in ["/length", "/chunked"] {
            let uri = format!("http://{}{path}", proxy.addr);
            let response = client
                .request(Request::get(uri).body(Empty::<Bytes>::new())?)
                .await?;
            assert_eq!(response.status(), StatusCode::OK);
            let received = response.into_body().collect().await?.to_bytes();
            assert_eq!(received.len(), body.len(), "{path}");
            assert!(received[..] == body[..], "{path}: the bytes differ");
        }
        Ok(())
    })
    .await
}
