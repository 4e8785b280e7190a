//! Demo backends: real servers on loopback that can be stopped and restarted.
//!
//! - [`HttpBackend`]: an HTTP/1.1 server (hyper) that answers every request with its own
//!   name as the body and in an `x-backend` header, `GET /health` with 200, and streams
//!   the body of any request to `/echo` back as it arrives.
//! - [`TcpBackend`]: a TCP server that writes its name and a newline on each connection,
//!   then echoes what it receives.
//!
//! [`stop`](Server::stop) closes the listener and every open connection at once (a
//! crash, as the balancer sees it: connections refused from then on);
//! [`restart`](Server::restart) listens on the same address again.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

type ConnFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type Handler = Arc<dyn Fn(TcpStream) -> ConnFuture + Send + Sync>;

/// A listener on loopback running `handler` for every connection.
pub struct Server {
    addr: SocketAddr,
    handler: Handler,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(addr: SocketAddr, handler: Handler) -> io::Result<Self> {
        let mut server = Server {
            addr,
            handler,
            task: None,
        };
        server.listen().await?;
        Ok(server)
    }

    async fn listen(&mut self) -> io::Result<()> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // So a restart can take the same port while old connections sit in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        let listener = socket.listen(1024)?;
        self.addr = listener.local_addr()?;
        let handler = Arc::clone(&self.handler);
        self.task = Some(tokio::spawn(accept_loop(listener, handler)));
        Ok(())
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it is listening.
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Closes the listener and every open connection; returns once they are closed.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Cancelled: the listener and the connections (a `JoinSet`) are dropped.
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        self.listen().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, handler: Handler) {
    // Dropping the set (when this task is aborted) aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(handler(stream));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// What an [`HttpBackend`] has seen.
#[derive(Default)]
pub struct Seen {
    requests: AtomicU64,
    last_headers: Mutex<Option<HeaderMap>>,
}

/// The body type of the demo backends' responses.
pub type DemoBody = BoxBody<Bytes, hyper::Error>;

/// An HTTP demo backend. See the [module docs](self).
pub struct HttpBackend {
    name: String,
    server: Server,
    seen: Arc<Seen>,
}

impl HttpBackend {
    /// Starts backend `name` on `127.0.0.1:0`.
    pub async fn start(name: &str) -> io::Result<Self> {
        HttpBackend::start_with_delay(name, Duration::ZERO).await
    }

    /// Starts backend `name` on `127.0.0.1:0`; it waits `delay` before each answer
    /// (not for `/health`).
    pub async fn start_with_delay(name: &str, delay: Duration) -> io::Result<Self> {
        let seen = Arc::new(Seen::default());
        let body = Bytes::from(format!("{name}\n"));
        let name_header = http::HeaderValue::from_str(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let handler: Handler = {
            let seen = Arc::clone(&seen);
            Arc::new(move |stream| {
                let seen = Arc::clone(&seen);
                let body = body.clone();
                let name_header = name_header.clone();
                Box::pin(async move {
                    let service = hyper::service::service_fn(move |req| {
                        answer(
                            req,
                            delay,
                            Arc::clone(&seen),
                            body.clone(),
                            name_header.clone(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                })
            })
        };
        let server = Server::start(([127, 0, 0, 1], 0).into(), handler).await?;
        Ok(HttpBackend {
            name: name.to_owned(),
            server,
            seen,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Requests answered (health checks excluded).
    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::Relaxed)
    }

    /// The headers of the last request answered (health checks excluded).
    pub fn last_headers(&self) -> Option<HeaderMap> {
        self.seen.last_headers.lock().ok()?.clone()
    }

    /// Stops it: the listener and every connection close (see the module docs).
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }

    /// Starts it again on the same address.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.server.restart().await
    }

    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        self.server.is_running()
    }
}

async fn answer(
    req: Request<Incoming>,
    delay: Duration,
    seen: Arc<Seen>,
    body: Bytes,
    name: http::HeaderValue,
) -> Result<Response<DemoBody>, Infallible> {
    if req.uri().path() == "/health" {
        let mut response = Response::new(full("ok\n"));
        response.headers_mut().insert("x-backend", name);
        return Ok(response);
    }
    seen.requests.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut last) = seen.last_headers.lock() {
        *last = Some(req.headers().clone());
    }
    let mut response = if req.uri().path() == "/echo" {
        // Streams the request body back as it arrives.
        Response::new(req.into_body().boxed())
    } else {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Response::new(Full::new(body).map_err(|never| match never {}).boxed())
    };
    response.headers_mut().insert("x-backend", name);
    Ok(response)
}

/// A complete body from a static string.
pub fn full(text: &'static str) -> DemoBody {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

/// Starts `names.len()` HTTP demo backends.
pub async fn start_http(names: &[&str]) -> io::Result<Vec<HttpBackend>> {
    let mut backends = Vec::with_capacity(names.len());
    for name in names {
        backends.push(HttpBackend::start(name).await?);
    }
    Ok(backends)
}

/// A TCP demo backend. See the [module docs](self).
pub struct TcpBackend {
    name: String,
    server: Server,
    connections: Arc<AtomicU64>,
}

impl TcpBackend {
    /// Starts backend `name` on `127.0.0.1:0`.
    pub async fn start(name: &str) -> io::Result<Self> {
        let connections = Arc::new(AtomicU64::new(0));
        let greeting = Bytes::from(format!("{name}\n"));
        let handler: Handler = {
            let connections = Arc::clone(&connections);
            Arc::new(move |mut stream: TcpStream| {
                connections.fetch_add(1, Ordering::Relaxed);
                let greeting = greeting.clone();
                Box::pin(async move {
                    if stream.write_all(&greeting).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = stream.shutdown().await;
                })
            })
        };
        let server = Server::start(([127, 0, 0, 1], 0).into(), handler).await?;
        Ok(TcpBackend {
            name: name.to_owned(),
            server,
            connections,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Stops it (see the module docs).
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }

    /// Starts it again on the same address.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.server.restart().await
    }
}
