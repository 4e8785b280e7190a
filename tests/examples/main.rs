//! The runnable programs' cores, run against real servers on loopback.
//!
//! `examples/http_proxy/proxy.rs` and `examples/tcp_proxy/proxy.rs` are compiled here as
//! they are in the examples (the command line goes through the same `Settings::parse`),
//! with the demo backends of `examples/support`. Every listener binds port 0; every test
//! is bounded by [`bounded`] (real sockets need real time, so no paused clock here).

mod http_clients;
mod http_connections_and_options;
mod http_failures;
mod http_forwarding;
mod http_routing;
mod http_tls;
mod http_upstream;
mod metrics;
mod registry;
mod tcp;

#[path = "../../examples/discovery/registry.rs"]
mod discovery;
#[path = "../../examples/http_proxy/proxy.rs"]
mod http_proxy;
#[path = "../../examples/support/mod.rs"]
mod support;
#[path = "../../examples/tcp_proxy/proxy.rs"]
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

/// Writes `bytes` to the proxy at `addr` and reads until it closes the connection.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Result<String, Error> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(bytes).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .map_err(|_| "the proxy kept the connection open")??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// One answer: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    /// Reads `response` whole.
    async fn read<B>(response: hyper::Response<B>) -> Result<Answer, Error>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8(body.to_vec())?,
        })
    }

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
    Answer::read(client.request(req.body(Empty::new())?).await?).await
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

/// A loopback server that counts the connections it accepts and runs `serve` on each;
/// dropping it closes every connection.
struct Counting {
    addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl Counting {
    async fn start<F, Fut>(serve: F) -> Result<Self, Error>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
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
                        open.spawn(serve(stream));
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

/// A backend that accepts connections and reads what they send, and never answers.
struct Unresponsive;

impl Unresponsive {
    async fn start() -> Result<Counting, Error> {
        Counting::start(|mut stream: TcpStream| async move {
            let mut buf = [0u8; 4096];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await
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
