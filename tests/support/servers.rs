//! Real HTTP/1.1 backends on loopback for integration tests (hyper servers on
//! `127.0.0.1:0`), which can be stopped and restarted on the same port, or made to fail
//! every connection while they keep their port (`set_down`, for flapping).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The request header whose number a server remembers the largest of ([`TestServer::max_stamp`]).
pub const STAMP: &str = "x-stamp";
/// A request carrying this header is held by the server, in flight, until
/// [`TestServer::release`]: a slow request whose length is the test's choice, not the clock's.
pub const HOLD: &str = "x-hold";

/// One demo backend: answers every request with its name (body and `x-backend`),
/// `GET /health` with 200, and, while `status` is set, with that status instead.
pub struct TestServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    status: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    max_stamp: Arc<AtomicU64>,
    gate: Arc<Gate>,
    tasks: Option<JoinSet<()>>,
}

/// Holds [`HOLD`] requests until opened.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    opened: tokio::sync::Notify,
}

impl Gate {
    async fn pass(&self) {
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            // Registered before the check: an `open` between the two is not missed.
            opened.as_mut().enable();
            if self.open.load(Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }
}

/// What a connection task needs to answer.
#[derive(Clone)]
struct Knobs {
    name: &'static str,
    hits: Arc<AtomicUsize>,
    status: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    max_stamp: Arc<AtomicU64>,
    gate: Arc<Gate>,
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
            down: Arc::default(),
            max_stamp: Arc::default(),
            gate: Arc::default(),
            tasks: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: TcpListener) {
        let knobs = Knobs {
            name: self.name,
            hits: self.hits.clone(),
            status: self.status.clone(),
            delay_ms: self.delay_ms.clone(),
            down: self.down.clone(),
            max_stamp: self.max_stamp.clone(),
            gate: self.gate.clone(),
        };
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    // A connection reset before it was accepted, or out of descriptors for
                    // a moment: not a reason to stop serving.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                };
                if knobs.down.load(Ordering::SeqCst) {
                    // Down: the connection is closed before a byte is read.
                    drop(stream);
                    continue;
                }
                let knobs = knobs.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let knobs = knobs.clone();
                        async move { knobs.answer(req).await }
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

    /// While `down`, every new connection is closed at once and every request on an open
    /// one closes its connection unanswered: to clients, the server has crashed, but it
    /// keeps its port, so bringing it back cannot race another listener for it.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Lets every held ([`HOLD`]) request through, and those that come later.
    pub fn release(&self) {
        self.gate.open.store(true, Ordering::SeqCst);
        self.gate.opened.notify_waiters();
    }

    /// The largest [`STAMP`] header value a served request carried (0: none did).
    pub fn max_stamp(&self) -> u64 {
        self.max_stamp.load(Ordering::SeqCst)
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

impl Knobs {
    async fn answer(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        if req.headers().contains_key(HOLD) {
            self.gate.pass().await;
        }
        let wait = self.delay_ms.load(Ordering::SeqCst);
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        if self.down.load(Ordering::SeqCst) {
            // An error from the service makes hyper close the connection unanswered.
            return Err(std::io::Error::other("backend down"));
        }
        if req.uri().path() == "/health" {
            return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
        }
        if let Some(stamp) = req
            .headers()
            .get(STAMP)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.max_stamp.fetch_max(stamp, Ordering::SeqCst);
        }
        self.hits.fetch_add(1, Ordering::SeqCst);
        let code = match self.status.load(Ordering::SeqCst) {
            0 => 200,
            c => c as u16,
        };
        Ok(Response::builder()
            .status(code)
            .header("x-backend", self.name)
            .body(Full::new(Bytes::from(self.name)))
            .expect("a valid response"))
    }
}
