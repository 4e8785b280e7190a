//! Load generation, retries and measurements for the reliability tests.

use std::future::{Ready, ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::BoxCloneService;
use tower_lb::balance::BoxError;

/// The client behind every balancer: one hyper client for all backends.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;
/// A GET with no body.
pub type Get = Request<Empty<Bytes>>;
/// Any service the load generator drives.
pub type HttpService = BoxCloneService<Get, Response<Incoming>, BoxError>;

/// No request of a load run may take longer than this: a hang fails the test, never stalls it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A `GET /work`, with `headers` added.
pub fn get(headers: &[(&'static str, String)]) -> Get {
    let mut req = Request::get("/work");
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    req.body(Empty::new()).expect("a valid request")
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// 200 responses, body read.
    pub ok: u64,
    /// Errors and non-200 responses.
    pub failed: u64,
    /// Requests that took longer than [`REQUEST_TIMEOUT`] (also counted in `failed`).
    pub timed_out: u64,
    /// The first few failures, for the failure message.
    pub examples: Vec<String>,
}

impl Tally {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        if self.examples.len() < 3 {
            self.examples.push(why);
        }
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.timed_out += other.timed_out;
        for e in other.examples {
            if self.examples.len() < 3 {
                self.examples.push(e);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }
}

/// How long a load run lasts.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// This many requests in all.
    Requests(usize),
    /// Requests until this much time has passed (tokio's clock).
    For(Duration),
}

/// Sends requests made by `make(i)` through `svc` from `clients` concurrent tasks
/// (closed loop: each task sends its next request when its last one finished) until
/// `bound`, counting finished requests in `done` as it goes.
pub async fn load(
    svc: HttpService,
    clients: usize,
    bound: Bound,
    done: Arc<AtomicUsize>,
    make: impl Fn(usize) -> Get + Clone + Send + 'static,
) -> Tally {
    let (total, deadline) = match bound {
        Bound::Requests(n) => (n, None),
        Bound::For(d) => (usize::MAX, Some(tokio::time::Instant::now() + d)),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (svc, next, done, make) = (svc.clone(), next.clone(), done.clone(), make.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            loop {
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let (req, svc) = (make(i), svc.clone());
                let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async move {
                    let resp = svc.oneshot(req).await?;
                    let status = resp.status();
                    resp.into_body().collect().await?;
                    Ok::<_, BoxError>(status)
                })
                .await;
                match outcome {
                    Ok(Ok(status)) if status == 200 => tally.ok += 1,
                    Ok(Ok(status)) => tally.fail(format!("status {status}")),
                    Ok(Err(e)) => tally.fail(format!("{e}: {:?}", e.source())),
                    Err(_) => {
                        tally.timed_out += 1;
                        tally.fail("timed out".into());
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            tally
        });
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        tally.add(joined.expect("a client task panicked"));
    }
    tally
}

/// Waits until `cond` holds, checking every `every`, for at most `limit`; `false` if it
/// never did.
pub async fn wait_until(limit: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// A request that may be sent again: an idempotent one.
pub trait Replay: Sized {
    /// A copy to send again, or `None` when resending is not safe.
    fn replay(&self) -> Option<Self>;
}

impl Replay for Get {
    /// GET and HEAD (idempotent and bodiless) are replayed with their URI and headers.
    fn replay(&self) -> Option<Self> {
        if self.method() != Method::GET && self.method() != Method::HEAD {
            return None;
        }
        let mut copy = Request::builder()
            .method(self.method().clone())
            .uri(self.uri().clone())
            .version(self.version())
            .body(Empty::new())
            .ok()?;
        *copy.headers_mut() = self.headers().clone();
        Some(copy)
    }
}

impl Replay for u64 {
    fn replay(&self) -> Option<Self> {
        Some(*self)
    }
}

/// Whether a response is a failure worth a retry.
pub trait Answer {
    fn failed(&self) -> bool;
}

impl<B> Answer for Response<B> {
    fn failed(&self) -> bool {
        self.status().is_server_error()
    }
}

impl Answer for String {
    fn failed(&self) -> bool {
        false
    }
}

/// tower's retry `Policy` for idempotent requests: retries errors and 5xx up to
/// `max_retries` times per request, each retry paid from a shared [`TpsBudget`] that
/// every original request pays into, so a failing system is not hammered.
#[derive(Clone)]
pub struct RetryIdempotent {
    budget: Arc<TpsBudget>,
    max_retries: u32,
    attempt: u32,
    /// Retries made and retries the budget refused, over all requests.
    pub stats: Arc<Mutex<RetryStats>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RetryStats {
    pub retries: u64,
    pub refused: u64,
}

impl RetryIdempotent {
    /// Up to `max_retries` retries per request; the budget allows 20% retries over a
    /// 10 s window on top of a reserve of 20 per second.
    pub fn new(max_retries: u32) -> Self {
        RetryIdempotent {
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 20, 0.2)),
            max_retries,
            attempt: 0,
            stats: Arc::default(),
        }
    }
}

impl<Req: Replay, Res: Answer, E> Policy<Req, Res, E> for RetryIdempotent {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        if self.attempt == 0 {
            self.budget.deposit();
        }
        let failed = match result {
            Ok(answer) => answer.failed(),
            Err(_) => true,
        };
        if !failed || self.attempt >= self.max_retries {
            return None;
        }
        if !self.budget.withdraw() {
            self.stats.lock().expect("retry stats").refused += 1;
            return None;
        }
        self.attempt += 1;
        self.stats.lock().expect("retry stats").retries += 1;
        Some(ready(()))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        req.replay()
    }
}
