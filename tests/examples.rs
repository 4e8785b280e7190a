//! The runnable programs' cores, run against real servers on loopback.
//!
//! `examples/http_proxy/proxy.rs` and `examples/tcp_proxy/proxy.rs` are compiled here as
//! they are in the examples (the command line goes through the same `Settings::parse`),
//! with the demo backends of `examples/support`. Every listener binds port 0; every test
//! is bounded by [`bounded`] (real sockets need real time, so no paused clock here).

#[path = "../examples/discovery/registry.rs"]
mod discovery;
#[path = "../examples/http_proxy/proxy.rs"]
mod http_proxy;
#[path = "../examples/support/mod.rs"]
mod support;
#[path = "../examples/tcp_proxy/proxy.rs"]
mod tcp_proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use support::backend::{HttpBackend, TcpBackend};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs a test body with a deadline: a hang fails the test instead of stalling the suite.
async fn bounded<F: Future<Output = Result<(), Error>>>(test: F) -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(20), test)
        .await
        .map_err(|_| "the test took longer than 20 s")?
}

/// Waits until `condition` holds, looking every 5 ms: a readiness signal for work the
/// proxy does on its own tasks (an ejection published, a request taken), not a bound on
/// its speed. The wait is bounded, so a condition that never comes fails the test by name.
async fn until(what: &str, mut condition: impl FnMut() -> bool) -> Result<(), Error> {
    let waited = tokio::time::timeout(Duration::from_secs(15), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    waited
        .await
        .map_err(|_| format!("waited 15 s for {what}").into())
}

/// A server task that finishes when told: [`stop`](Running::stop) tells it and waits
/// until it has; dropped, it is aborted.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Spawns the server `serve` makes of the signal that resolves on [`stop`](Self::stop).
    fn spawn<F>(serve: impl FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(Box::pin(async {
            let _ = stopped.await;
        })));
        Running {
            stop: Some(stop),
            task,
        }
    }

    /// Tells the server to stop and waits until it has finished.
    async fn stop(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?;
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A program's command line: its name, `options`, and one `--backend` per address.
fn command_line(program: &str, options: &[&str], backends: &[SocketAddr]) -> Vec<String> {
    let mut args = vec![program.to_owned()];
    args.extend(options.iter().map(|s| (*s).to_owned()));
    for addr in backends {
        args.push("--backend".to_owned());
        args.push(addr.to_string());
    }
    args
}

/// A door in front of a backend: it relays every connection to the backend, and
/// [`shut`](Door::shut) kills the backend as the proxy sees it (connects refused, open
/// connections closed), returning only once the proxy has closed its end of each open
/// connection too. That is the readiness signal a test needs before counting what
/// happens next: the proxy's keep-alive pool then holds no connection to the dead backend
/// (a request on one would fail after it was sent, which no proxy may retry).
struct Door {
    addr: SocketAddr,
    relay: Running,
}

impl Door {
    async fn open(backend: SocketAddr) -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let relay = Running::spawn(|mut shutting| async move {
            let (close, _) = tokio::sync::watch::channel(false);
            let mut relays = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut shutting => break,
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let mut closing = close.subscribe();
                        relays.spawn(async move {
                            let Ok(mut upstream) = TcpStream::connect(backend).await else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => return,
                                _ = closing.changed() => {}
                            }
                            drop(upstream);
                            // Close this end, then wait for the proxy to close its own.
                            let _ = client.shutdown().await;
                            let mut buf = [0u8; 1024];
                            while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
                        });
                    }
                    Some(_) = relays.join_next(), if !relays.is_empty() => {}
                }
            }
            // Connects are refused from here on.
            drop(listener);
            let _ = close.send(true);
            while relays.join_next().await.is_some() {}
        });
        Ok(Door { addr, relay })
    }

    /// Refuses new connections, closes the open ones, and returns once the proxy has
    /// closed every one of them.
    async fn shut(self) -> Result<(), Error> {
        self.relay.stop().await
    }
}

/// A door in front of each backend.
async fn doors(backends: &[HttpBackend]) -> Result<Vec<Door>, Error> {
    let mut doors = Vec::with_capacity(backends.len());
    for backend in backends {
        doors.push(Door::open(backend.addr()).await?);
    }
    Ok(doors)
}

// ---------------------------------------------------------------------------------------
// HTTP proxy

/// A proxy serving on `127.0.0.1:0`.
struct HttpProxy {
    addr: SocketAddr,
    proxy: http_proxy::Proxy,
    settings: http_proxy::Settings,
    server: Running,
}

impl HttpProxy {
    /// Starts the proxy with `options` and one `--backend` per backend.
    async fn start(options: &[&str], backends: &[&HttpBackend]) -> Result<Self, Error> {
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
        HttpProxy::start_addrs(options, &addrs).await
    }

    /// Starts the proxy with `options` and one `--backend` per address.
    async fn start_addrs(options: &[&str], backends: &[SocketAddr]) -> Result<Self, Error> {
        let settings = http_proxy::Settings::parse(command_line("http_proxy", options, backends))?;
        let proxy = http_proxy::Proxy::start(&settings)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = Running::spawn(|stopped| {
            http_proxy::serve(listener, proxy.clone(), settings.tls.clone(), stopped)
        });
        Ok(HttpProxy {
            addr,
            proxy,
            settings,
            server,
        })
    }

    /// Stops accepting and waits for the server to finish.
    async fn shutdown(self) -> Result<(), Error> {
        self.server.stop().await
    }
}

/// One answer: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    /// The backend that answered (`x-backend`).
    fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

fn http_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `GET path` through the proxy at `addr` with extra headers.
async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, Error> {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = client.request(req.body(Empty::new())?).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec())?,
    })
}

async fn http_backends(n: usize) -> Result<Vec<HttpBackend>, Error> {
    let names = ["a", "b", "c", "d"];
    Ok(support::backend::start_http(&names[..n]).await?)
}

// ---------------------------------------------------------------------------------------
// Failing hosts

/// A host that is powered off, as its clients see it: a connect neither succeeds nor is
/// refused, it hangs. A listener with a backlog of 0 that never accepts, its queue
/// filled: Linux then drops further SYNs, and the connecting side retransmits and waits.
struct PoweredOff {
    addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl PoweredOff {
    async fn start() -> Result<Self, Error> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = socket.listen(0)?;
        let addr = listener.local_addr()?;
        let mut queued = Vec::new();
        // Connect until a connect hangs: then the queue is full, and so it stays.
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(stream) => queued.push(stream?),
                Err(_) => {
                    return Ok(PoweredOff {
                        addr,
                        _listener: listener,
                        _queued: queued,
                    });
                }
            }
        }
        Err(format!("connects to {addr} do not hang: its listen queue never filled").into())
    }
}

/// A backend that accepts connections and reads what they send, and never answers.
struct Unresponsive {
    addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl Unresponsive {
    async fn start() -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) closes every connection.
            let mut open = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut stream, _)) = accepted else { continue };
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        open.spawn(async move {
                            let mut buf = [0u8; 4096];
                            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                        });
                    }
                    Some(_) = open.join_next(), if !open.is_empty() => {}
                }
            }
        });
        Ok(Unresponsive {
            addr,
            connections,
            task,
        })
    }

    /// Connections accepted.
    fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Unresponsive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn failing_host_fixtures_behave_as_described() -> Result<(), Error> {
    bounded(async {
        let off = PoweredOff::start().await?;
        let started = Instant::now();
        let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(off.addr));
        assert!(
            connect.await.is_err(),
            "a connect to a powered-off host did not hang"
        );
        assert!(started.elapsed() >= Duration::from_secs(1));

        let silent = Unresponsive::start().await?;
        let mut stream = TcpStream::connect(silent.addr).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf));
        assert!(read.await.is_err(), "the unresponsive backend answered");
        assert_eq!(silent.connections(), 1);
        Ok(())
    })
    .await
}

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

#[tokio::test]
async fn http_proxy_terminates_tls_with_a_self_signed_certificate() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(2).await?;
        let proxy =
            HttpProxy::start(&["--tls-self-signed"], &backends.iter().collect::<Vec<_>>()).await?;
        let (der, pem) = proxy
            .settings
            .self_signed
            .clone()
            .ok_or("no certificate generated")?;
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der)?;
        let trusting = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(trusting));
        let tcp = TcpStream::connect(proxy.addr).await?;
        let server_name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = connector.connect(server_name.clone(), tcp).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let response = sender
            .send_request(
                Request::get("/over-tls")
                    .header("host", "localhost")
                    .body(Empty::<Bytes>::new())?,
            )
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        let name = response.headers()["x-backend"].to_str()?.to_owned();
        let body = response.into_body().collect().await?.to_bytes();
        assert_eq!(String::from_utf8(body.to_vec())?.trim(), name);
        // Plain HTTP to the backend, which was told the client's protocol.
        let backend = backends
            .iter()
            .find(|b| b.name() == name)
            .ok_or("unknown backend")?;
        let seen = backend.last_headers().ok_or("the backend saw no request")?;
        assert_eq!(seen["x-forwarded-proto"], "https");

        // A client that does not trust the certificate gets no connection.
        let stranger = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let tcp = TcpStream::connect(proxy.addr).await?;
        let refused = tokio_rustls::TlsConnector::from(Arc::new(stranger))
            .connect(server_name, tcp)
            .await;
        assert!(refused.is_err());
        proxy.shutdown().await
    })
    .await
}

/// `GET /` over TLS to the proxy at `addr`, trusting `cert` for `localhost`.
async fn tls_get(
    addr: SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
) -> Result<Answer, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let server_name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::get("/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec())?,
    })
}

#[tokio::test]
async fn http_proxy_terminates_tls_with_a_certificate_from_files() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(1).await?;
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let dir = std::env::temp_dir().join(format!("tower-lb-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key_pair.serialize_pem())?;
        let options = [
            "--tls-cert",
            cert_path.to_str().ok_or("path")?,
            "--tls-key",
            key_path.to_str().ok_or("path")?,
        ];
        let proxy = HttpProxy::start(&options, &[&backends[0]]).await;
        std::fs::remove_dir_all(&dir)?;
        let proxy = proxy?;
        let answer = tls_get(proxy.addr, cert.der().clone()).await?;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body.trim(), "a");
        proxy.shutdown().await
    })
    .await
}

/// A keep-alive HTTP/1.1 backend that counts the connections it accepts.
struct Counting {
    addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl Counting {
    async fn start() -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) closes every connection.
            let mut open = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        open.spawn(async move {
                            let mut stream = BufReader::new(stream);
                            let mut line = String::new();
                            // Each request is a head without a body; each gets `ok`.
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
                        });
                    }
                    Some(_) = open.join_next(), if !open.is_empty() => {}
                }
            }
        });
        Ok(Counting {
            addr,
            connections,
            task,
        })
    }

    /// Connections accepted.
    fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn http_proxy_reuses_its_backend_connections() -> Result<(), Error> {
    bounded(async {
        let backend = Counting::start().await?;
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
async fn http_proxy_shutdown_lets_requests_in_flight_finish() -> Result<(), Error> {
    bounded(async {
        let slow = HttpBackend::start_with_delay("slow", Duration::from_millis(300)).await?;
        let proxy = HttpProxy::start(&[], &[&slow]).await?;
        let addr = proxy.addr;
        let in_flight =
            tokio::spawn(
                async move { get(&http_client(), addr, "/", &[]).await.map(|a| a.status) },
            );
        until("the request in flight", || {
            proxy.proxy.pool().stats()[0].in_flight > 0
        })
        .await?;
        // Shutdown returns only once the request in flight has been answered.
        proxy.shutdown().await?;
        assert_eq!(in_flight.await??, StatusCode::OK);
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

// ---------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------
// Discovery from a channel

/// `examples/discovery`: the first request waits for the first backend, weights arrive
/// through discovery, and membership follows the registry while no request comes.
#[tokio::test]
async fn discovery_example_follows_its_registry() -> Result<(), Error> {
    bounded(async {
        let summary = discovery::run().await?;
        assert_eq!(summary.first, "a", "served once a backend arrived");
        assert_eq!(summary.before, BTreeMap::from([("a", 30), ("b", 10)]));
        assert_eq!(summary.members_while_idle, ["b", "c"]);
        assert_eq!(summary.after, BTreeMap::from([("b", 10), ("c", 20)]));
        Ok(())
    })
    .await
}
