//! `http_proxy`'s backend side (`examples/http_proxy/h1.rs`) against backends that answer
//! byte for byte what each test writes: every framing HTTP/1.1 allows, interim answers,
//! malformed answers, and keep-alive connections closed under a request.

use super::*;

/// A request head as a scripted backend reads it.
struct Head {
    method: String,
    path: String,
}

/// Reads one request head (and its body, by `content-length`); `None` at the end.
async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok().filter(|&n| n > 0)?;
    let mut words = line.split_whitespace();
    let (method, path) = (words.next()?.to_owned(), words.next()?.to_owned());
    let mut length = 0;
    loop {
        line.clear();
        stream.read_line(&mut line).await.ok().filter(|&n| n > 0)?;
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Head { method, path })
}

/// A backend answering each request with the bytes `answer` gives for it; `None` closes
/// the connection without an answer.
async fn scripted(answer: fn(&Head, u32) -> Option<&'static [u8]>) -> Result<Counting, Error> {
    Counting::start(move |stream: TcpStream| async move {
        let mut stream = BufReader::new(stream);
        // How many requests this connection has carried before.
        let mut before = 0;
        while let Some(head) = read_request(&mut stream).await {
            let Some(bytes) = answer(&head, before) else {
                return;
            };
            if stream.get_mut().write_all(bytes).await.is_err() {
                return;
            }
            if bytes.starts_with(b"HTTP/1.0")
                || bytes.windows(17).any(|w| w == b"connection: close")
            {
                return;
            }
            before += 1;
        }
    })
    .await
}

/// `GET path` through the proxy at `addr`, which must answer `status` with `body`; the
/// answer, for more checks.
async fn expect(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
    status: StatusCode,
    body: &str,
) -> Result<Answer, Error> {
    let answer = get(client, addr, path, &[]).await?;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (status, body),
        "GET {path}"
    );
    Ok(answer)
}

fn framings(head: &Head, _: u32) -> Option<&'static [u8]> {
    Some(match (head.method.as_str(), head.path.as_str()) {
        // Chunks with an extension, then a trailer the proxy drops.
        (_, "/chunked") => {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
        }
        // Two interim answers before the response.
        (_, "/interim") => {
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        }
        // A HEAD's answer says the length of a body it does not carry.
        ("HEAD", _) => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
        (_, "/no-content") => b"HTTP/1.1 204 No Content\r\n\r\n",
        // A value with obs-text (a Latin-1 byte), and names in another case: passed
        // on as they are.
        (_, "/obs-text") => b"HTTP/1.1 200 OK\r\nX-Note: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
        // A field `Connection` names is about this connection only: not passed on.
        (_, "/named") => {
            b"HTTP/1.1 200 OK\r\nconnection: x-hop\r\nx-hop: 1\r\nx-kept: 2\r\ncontent-length: 2\r\n\r\nok"
        }
        // A coding and a length: the coding frames the body (the length is ignored),
        // and the connection is not used again.
        (_, "/both") => {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        }
        // HTTP/1.0, no length: the body ends with the connection.
        (_, "/until-close") => b"HTTP/1.0 200 OK\r\n\r\nuntil close",
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n",
    })
}

#[tokio::test]
async fn http_proxy_reads_every_framing_and_keeps_the_connection_when_it_may() -> Result<(), Error>
{
    bounded(async {
        let backend = scripted(framings).await?;
        let proxy = HttpProxy::start_addrs(&[], &[backend.addr]).await?;
        let client = http_client();
        let answer = expect(
            &client,
            proxy.addr,
            "/chunked",
            StatusCode::OK,
            "hello world",
        )
        .await?;
        assert!(!answer.headers.contains_key("x-trailer"));
        let answer = expect(&client, proxy.addr, "/interim", StatusCode::OK, "ok").await?;
        assert!(!answer.headers.contains_key("link"));
        let head = client
            .request(Request::head(format!("http://{}/", proxy.addr)).body(Empty::<Bytes>::new())?)
            .await?;
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()["content-length"], "100");
        assert!(head.into_body().collect().await?.to_bytes().is_empty());
        expect(
            &client,
            proxy.addr,
            "/no-content",
            StatusCode::NO_CONTENT,
            "",
        )
        .await?;
        for _ in 0..2 {
            let answer = expect(&client, proxy.addr, "/obs-text", StatusCode::OK, "ok").await?;
            assert_eq!(answer.headers["x-note"].as_bytes(), b"caf\xe9");
        }
        let answer = expect(&client, proxy.addr, "/named", StatusCode::OK, "ok").await?;
        assert!(!answer.headers.contains_key("x-hop"));
        assert_eq!(answer.headers["x-kept"], "2");
        // Eight answers, each framed so that the connection stays usable: one connection.
        assert_eq!(backend.connections(), 1);
        expect(&client, proxy.addr, "/both", StatusCode::OK, "ok").await?;
        expect(&client, proxy.addr, "/", StatusCode::OK, "ok\n").await?;
        assert_eq!(backend.connections(), 2);
        expect(
            &client,
            proxy.addr,
            "/until-close",
            StatusCode::OK,
            "until close",
        )
        .await?;
        expect(&client, proxy.addr, "/", StatusCode::OK, "ok\n").await?;
        // The body up to the close used the connection up: a third one.
        assert_eq!(backend.connections(), 3);
        proxy.shutdown().await
    })
    .await
}

fn malformed(head: &Head, _: u32) -> Option<&'static [u8]> {
    Some(match head.path.as_str() {
        "/status" => b"HTTP/1.1 2OO OK\r\ncontent-length: 0\r\n\r\n",
        "/lengths" => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        "/length" => b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "/switch" => b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
        "/not-http" => b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        "/chunk" => {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        }
        "/short" => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nabc",
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n",
    })
}

#[tokio::test]
async fn http_proxy_answers_502_to_malformed_backend_answers() -> Result<(), Error> {
    bounded(async {
        let backend = scripted(malformed).await?;
        // Outlier detection would eject the backend after five failures in a row: a good
        // answer between the bad ones keeps it in.
        let proxy = HttpProxy::start_addrs(&[], &[backend.addr]).await?;
        let client = http_client();
        for path in ["/status", "/lengths", "/length", "/switch", "/not-http"] {
            let answer = get(&client, proxy.addr, path, &[]).await?;
            assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{path}");
            let answer = get(&client, proxy.addr, "/", &[]).await?;
            assert_eq!(answer.status, StatusCode::OK, "after {path}");
        }
        // A body that breaks off after its head: the client's read fails, it never
        // gets a shorter body as a whole one.
        for path in ["/chunk", "/short"] {
            let read = get(&client, proxy.addr, path, &[]).await;
            assert!(read.is_err(), "{path}: {:?}", read.map(|a| a.body));
        }
        let answer = get(&client, proxy.addr, "/", &[]).await?;
        assert_eq!(answer.status, StatusCode::OK);
        proxy.shutdown().await
    })
    .await
}

/// Answers the first request of each connection, and closes the connection when a
/// second one comes, unanswered: a backend closing an idle connection just as the proxy
/// sends a request on it.
fn one_per_connection(_: &Head, before: u32) -> Option<&'static [u8]> {
    (before == 0).then_some(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n".as_slice())
}

#[tokio::test]
async fn http_proxy_sends_a_get_again_when_its_reused_connection_was_closed_but_not_a_post()
-> Result<(), Error> {
    bounded(async {
        let backend = scripted(one_per_connection).await?;
        let proxy = HttpProxy::start_addrs(&[], &[backend.addr]).await?;
        let client = http_client();
        // Each GET after the first finds the previous connection, loses it, and goes
        // again on a new one: no client sees the close.
        for i in 0..10 {
            let answer = get(&client, proxy.addr, "/", &[]).await?;
            assert_eq!(answer.status, StatusCode::OK, "GET {i}");
        }
        assert_eq!(backend.connections(), 10);
        // A POST on such a connection may have been taken: it is not sent twice.
        let posted = client
            .request(Request::post(format!("http://{}/", proxy.addr)).body(Empty::<Bytes>::new())?)
            .await?;
        assert_eq!(posted.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(backend.connections(), 10);
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_gives_each_request_on_a_reused_connection_its_own_deadline() -> Result<(), Error>
{
    bounded(async {
        // Each answer takes 250 ms and the time-out is 400 ms: the alarm set for the
        // first request on the connection rings during the second, which still has
        // 150 ms to go, and must not end it.
        let slow =
            support::backend::HttpBackend::start_with_delay("slow", Duration::from_millis(250))
                .await?;
        let proxy = HttpProxy::start(&["--timeout", "0.4"], &[&slow]).await?;
        let client = http_client();
        for i in 0..4 {
            let answer = get(&client, proxy.addr, "/", &[]).await?;
            assert_eq!(answer.status, StatusCode::OK, "request {i}");
        }
        proxy.shutdown().await?;

        // The first request is answered, the second never: after the connection sat
        // idle past the first one's alarm, the second still times out after 300 ms.
        let hanging = Counting::start(|stream: TcpStream| async move {
            let mut stream = BufReader::new(stream);
            if read_request(&mut stream).await.is_none() {
                return;
            }
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
            if stream.get_mut().write_all(answer).await.is_err() {
                return;
            }
            if read_request(&mut stream).await.is_some() {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
        .await?;
        let proxy = HttpProxy::start_addrs(&["--timeout", "0.3"], &[hanging.addr]).await?;
        assert_eq!(
            get(&client, proxy.addr, "/", &[]).await?.status,
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let answer = get(&client, proxy.addr, "/", &[]).await?;
        let took = started.elapsed();
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(hanging.connections(), 1);
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_sends_the_whole_body_to_a_backend_that_answers_before_reading_it()
-> Result<(), Error> {
    bounded(async {
        // Answers 202 as soon as the head is in, then reads the body (by its length)
        // and keeps count of the bytes.
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&received);
        let backend = Counting::start(move |stream: TcpStream| {
            let counted = Arc::clone(&counted);
            async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                let mut length = 0;
                loop {
                    line.clear();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let answer = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
                if stream.get_mut().write_all(answer).await.is_err() {
                    return;
                }
                let mut byte = [0u8; 1];
                for _ in 0..length {
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
        .await?;
        let proxy = HttpProxy::start_addrs(&[], &[backend.addr]).await?;
        // A client that goes on sending as the answer comes (raw bytes: hyper's client
        // stops sending a body once the response is complete).
        let mut client = BufReader::new(TcpStream::connect(proxy.addr).await?);
        client
            .get_mut()
            .write_all(b"POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: 11\r\n\r\nhello ")
            .await?;
        // The answer comes while the body is half sent...
        let mut status = String::new();
        client.read_line(&mut status).await?;
        assert!(status.starts_with("HTTP/1.1 202"), "{status:?}");
        // ...and the rest still reaches the backend.
        client.get_mut().write_all(b"world").await?;
        let count = || received.load(std::sync::atomic::Ordering::SeqCst);
        until("the backend got all 11 bytes", || count() == 11).await?;
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_sends_a_request_that_kills_connections_at_most_twice() -> Result<(), Error> {
    bounded(async {
        // `/crash` closes the connection unanswered (a worker dying on that request);
        // anything else is answered after 50 ms, so concurrent requests open
        // connections of their own.
        let crashes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&crashes);
        let backend = Counting::start(move |stream: TcpStream| {
            let counted = Arc::clone(&counted);
            async move {
                let mut stream = BufReader::new(stream);
                while let Some(head) = read_request(&mut stream).await {
                    if head.path == "/crash" {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                    if stream.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await?;
        let proxy = HttpProxy::start_addrs(&[], &[backend.addr]).await?;
        let client = http_client();
        let mut warm = JoinSet::new();
        for _ in 0..5 {
            let (client, addr) = (client.clone(), proxy.addr);
            warm.spawn(async move { get(&client, addr, "/", &[]).await.map(|a| a.status) });
        }
        while let Some(status) = warm.join_next().await {
            assert_eq!(status??, StatusCode::OK);
        }
        assert_eq!(backend.connections(), 5);
        // Five idle connections: the request goes on one, which dies, then on a new
        // one, which dies too; not on the four others.
        let answer = get(&client, proxy.addr, "/crash", &[]).await?;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert_eq!(crashes.load(std::sync::atomic::Ordering::SeqCst), 2);
        proxy.shutdown().await
    })
    .await
}

#[tokio::test]
async fn http_proxy_frames_a_body_of_unknown_length_for_each_client() -> Result<(), Error> {
    bounded(async {
        let backend = scripted(framings).await?;
        let proxy = HttpProxy::start_addrs(&[], &[backend.addr]).await?;
        // HTTP/1.1: chunks (the backend's were "hello" and " world").
        let text = raw(
            proxy.addr,
            b"GET /chunked HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await?;
        assert!(
            text.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{text}"
        );
        let (_, chunks) = text.split_once("\r\n\r\n").ok_or("no head")?;
        assert_eq!(chunks, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
        // HTTP/1.0 knows no chunks: the body ends with the connection.
        let text = raw(
            proxy.addr,
            b"GET /chunked HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
        )
        .await?;
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello world"), "{text}");
        Ok(())
    })
    .await
}
