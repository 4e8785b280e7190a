//! Real HTTP/1.1 backends on loopback for integration tests (hyper servers on
//! `127.0.0.1:0`), which can be stopped and restarted on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// One demo backend: answers every request with its name (body and `x-backend`),
/// `GET /health` with 200, and, while `status` is set, with that status instead.
pub struct TestServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    status: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    tasks: Option<JoinSet<()>>,
}

impl TestServer {
    /// Starts a backend on a fresh loopback port.
    pub async fn start(name: &'static str) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let mut server = TestServer {
            name,
            addr,
            hits: Arc::default(),
            status: Arc::default(),
            delay_ms: Arc::default(),
            tasks: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: TcpListener) {
        let (name, hits, status, delay) = (
            self.name,
            self.hits.clone(),
            self.status.clone(),
            self.delay_ms.clone(),
        );
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let (hits, status, delay) = (hits.clone(), status.clone(), delay.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (hits, status, delay) = (hits.clone(), status.clone(), delay.clone());
                        async move {
                            let wait = delay.load(Ordering::SeqCst);
                            if wait > 0 {
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                            }
                            if req.uri().path() == "/health" {
                                return Ok::<_, Infallible>(Response::new(Full::new(
                                    Bytes::from_static(b"ok"),
                                )));
                            }
                            hits.fetch_add(1, Ordering::SeqCst);
                            let code = match status.load(Ordering::SeqCst) {
                                0 => 200,
                                c => c as u16,
                            };
                            Ok(Response::builder()
                                .status(code)
                                .header("x-backend", name)
                                .body(Full::new(Bytes::from(name)))
                                .unwrap())
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            // Dropping `conns` aborts every connection: clients see them closed.
        });
        self.tasks = Some(tasks);
    }

    /// Requests served (not counting health checks).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Answers with `code` from now on (0 = normal).
    pub fn set_status(&self, code: u16) {
        self.status.store(code as usize, Ordering::SeqCst);
    }

    /// Delays every answer by `ms` milliseconds.
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Stops listening and closes every connection: the port refuses connections.
    pub async fn stop(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the same port");
        self.serve(listener);
    }
}
