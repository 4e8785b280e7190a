//! gRPC with tonic, balanced per request: three in-process tonic servers on loopback
//! (the proto-free `grpc.health.v1.Health` service of `tonic-health`, so no protoc),
//! one tonic `Channel` per server, each a `BackendService` in a pool.
//!
//! 1. power of two choices over the three channels: every call is balanced on its own
//!    (a `Channel` multiplexes calls on one HTTP/2 connection, so balancing
//!    connections would pin them all to one server);
//! 2. Maglev keyed on the gRPC metadata `x-user-id` (`HeaderKey`: metadata are HTTP/2
//!    headers): each user's calls stay on one server;
//! 3. round robin, and one server shut down mid-run: calls that fail on it are retried
//!    on another server (`RetryLayer`), it is ejected by passive health (`GrpcStatus` counts transport
//!    errors and server-fault codes), and every call succeeds.
//!
//! The stack, outside in: a small adapter that buffers each unary request body (a
//! retried request must be sent again, so it must be `Clone`), `TrackBodyLayer` (a call
//! stays in flight until its trailers, where `GrpcStatus` reads `grpc-status`),
//! `RetryLayer`, the balancer, and per backend the tonic `Channel`.
//!
//! Run with `cargo run --example grpc --features http,tokio`; `tests/grpc.rs` runs it too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::AffinityKey;
use tower_lb::affinity::HeaderKey;
use tower_lb::balance::retry::Always;
use tower_lb::balance::{
    BackendService, BalanceLayer, BoxError, NoAffinity, PerBackend, RetryLayer, TrackBodyLayer,
    TrackedBody,
};
use tower_lb::health::OutlierDetection;
use tower_lb::{Maglev, Picker, Pool, PowerOfTwoChoices, RoundRobin, Weight};

/// The metadata key the hashing phase keys on.
pub const USER_KEY: &str = "x-user-id";

/// A request as the balancer sees it: buffered, so a retry can send it again.
pub type GrpcRequest = Request<Full<Bytes>>;
/// How a backend is reached: its tonic `Channel`, fed buffered requests.
pub type GrpcChannel =
    tower::util::MapRequest<Channel, fn(GrpcRequest) -> Request<tonic::body::Body>>;
/// A backend of the pool: its name and its channel.
pub type GrpcBackend = BackendService<String, GrpcChannel>;
/// What tonic's generated clients are given: a balanced, retrying gRPC transport.
pub type Balanced =
    BoxCloneService<Request<tonic::body::Body>, Response<TrackedBody<tonic::body::Body>>, BoxError>;

/// One tonic server on `127.0.0.1:0`, recording the `x-user-id` of every call it serves.
pub struct GrpcServer {
    /// Its name (`grpc-1`...).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The `x-user-id` of each call served (`-` when absent), in order.
    pub seen: Arc<Mutex<Vec<String>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcServer {
    /// Starts the server.
    pub async fn start(name: &str) -> Result<Self, BoxError> {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let service = tower::service_fn(move |req: Request<tonic::body::Body>| {
            let user = req
                .headers()
                .get(USER_KEY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            record.lock().push(user);
            health.clone().oneshot(req)
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(Server::builder().serve_with_incoming_shutdown(
            service,
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        ));
        Ok(GrpcServer {
            name: name.to_owned(),
            addr,
            seen,
            stop: Some(stop),
            task,
        })
    }

    /// Calls served so far.
    pub fn served(&self) -> usize {
        self.seen.lock().len()
    }

    /// Shuts the server down: its listener closes (new connections are refused) and
    /// its connections are told to go away (HTTP/2 GOAWAY).
    pub async fn kill(&mut self) -> Result<(), BoxError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task).await???;
        Ok(())
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn to_tonic(req: GrpcRequest) -> Request<tonic::body::Body> {
    req.map(tonic::body::Body::new)
}

/// A pool of one `BackendService` per server, each with a lazily connecting `Channel`.
pub fn pool<P: Picker<GrpcBackend>>(
    picker: P,
    servers: &[GrpcServer],
) -> Result<Pool<GrpcBackend, P>, BoxError> {
    let pool = Pool::builder(picker)
        .outlier_detection(OutlierDetection::new().consecutive_failures(3))
        .build()?;
    for server in servers {
        let channel = Endpoint::from_shared(format!("http://{}", server.addr))?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let to_tonic: fn(GrpcRequest) -> Request<tonic::body::Body> = to_tonic;
        let backend = BackendService::new(server.name.clone(), channel.map_request(to_tonic));
        pool.insert(backend, Weight::ONE)?;
    }
    Ok(pool)
}

/// The balanced transport: buffer → track body → retry elsewhere → balance → channel.
pub fn balanced<P, K>(pool: Pool<GrpcBackend, P>, affinity: K) -> Balanced
where
    P: Picker<GrpcBackend> + Send + Sync + 'static,
    P::Table: Send + Sync,
    K: AffinityKey<GrpcRequest> + Clone + Send + Sync + 'static,
{
    // `affinity_if_hashing`: the p2c and round-robin phases pass `NoAffinity`.
    let balance = BalanceLayer::grpc(pool)
        .affinity_if_hashing(affinity)
        .build(PerBackend);
    let stack = ServiceBuilder::new()
        .layer(TrackBodyLayer::new())
        .layer(RetryLayer::new().policy(Always).max_retries(2))
        .service(balance);
    BoxCloneService::new(tower::service_fn(move |req: Request<tonic::body::Body>| {
        let stack = stack.clone();
        async move {
            // A unary request is one small message: buffer it so it can be resent.
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await?.to_bytes();
            stack
                .oneshot(Request::from_parts(parts, Full::new(bytes)))
                .await
        }
    }))
}

/// One health check through `client`, with `user` as `x-user-id` metadata if given.
async fn check(client: &mut HealthClient<Balanced>, user: Option<&str>) -> Result<(), BoxError> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(user) = user {
        request.metadata_mut().insert(USER_KEY, user.parse()?);
    }
    let response = client.check(request).await?.into_inner();
    if response.status() != ServingStatus::Serving {
        return Err(format!("health: {:?}", response.status()).into());
    }
    Ok(())
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Summary {
    /// Phase 1: calls served by each server.
    pub spread: BTreeMap<String, usize>,
    /// Phase 2: for each user, the servers that served its calls.
    pub users: BTreeMap<String, BTreeSet<String>>,
    /// Phase 3: calls that succeeded and failed.
    pub after_kill_ok: usize,
    /// Phase 3: calls that failed (after retries).
    pub after_kill_failed: usize,
    /// Phase 3: the killed server's name.
    pub killed: String,
    /// Phase 3: the killed server's failures and ejections, as the pool counted them.
    pub killed_failures: u64,
    /// Phase 3: the killed server's ejections.
    pub killed_ejections: u64,
    /// Phase 3: calls the other servers served.
    pub survivors_served: usize,
}

/// Runs the three phases with `calls` calls each.
pub async fn run(calls: usize) -> Result<Summary, BoxError> {
    let mut servers = Vec::new();
    for name in ["grpc-1", "grpc-2", "grpc-3"] {
        servers.push(GrpcServer::start(name).await?);
    }
    let mut summary = Summary::default();

    // 1. Per-call balancing.
    let p2c = pool(PowerOfTwoChoices::with_seed(7), &servers)?;
    let mut client = HealthClient::new(balanced(p2c, NoAffinity));
    for _ in 0..calls {
        check(&mut client, None).await?;
    }
    for s in &servers {
        summary.spread.insert(s.name.clone(), s.served());
    }

    // 2. Hashing on a metadata key.
    let before: Vec<usize> = servers.iter().map(GrpcServer::served).collect();
    let maglev = pool(Maglev::new(), &servers)?;
    let mut client = HealthClient::new(balanced(maglev, HeaderKey::from_static(USER_KEY)));
    let users = ["ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal"];
    for i in 0..calls {
        check(&mut client, Some(users[i % users.len()])).await?;
    }
    for (s, skip) in servers.iter().zip(before) {
        for user in s.seen.lock().iter().skip(skip) {
            summary
                .users
                .entry(user.clone())
                .or_default()
                .insert(s.name.clone());
        }
    }

    // 3. A server shut down mid-run; calls retried elsewhere.
    // Round robin keeps sending the dead server its share until it is ejected.
    let rr = pool(RoundRobin::new(), &servers)?;
    let mut client = HealthClient::new(balanced(rr.clone(), NoAffinity));
    let before: Vec<usize> = servers.iter().map(GrpcServer::served).collect();
    for i in 0..calls {
        if i == calls / 3 {
            servers[1].kill().await?;
            summary.killed = servers[1].name.clone();
        }
        match check(&mut client, None).await {
            Ok(()) => summary.after_kill_ok += 1,
            Err(_) => summary.after_kill_failed += 1,
        }
    }
    summary.survivors_served = [0, 2]
        .iter()
        .map(|&i| servers[i].served() - before[i])
        .sum();
    if let Some(s) = rr.stats().into_iter().find(|s| s.addr.key() == "grpc-2") {
        summary.killed_failures = s.failures;
        summary.killed_ejections = s.ejections;
    }
    Ok(summary)
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let summary = run(60).await?;
    println!("1. p2c over three tonic channels, per call:");
    for (name, n) in &summary.spread {
        println!("   {name}: {n} calls");
    }
    println!("2. Maglev on metadata `{USER_KEY}`:");
    for (user, servers) in &summary.users {
        let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
        println!("   {user:<4} → {}", servers.join(", "));
    }
    println!("3. {} shut down a third of the way in:", summary.killed);
    println!(
        "   {} calls ok, {} failed; the survivors served {}; {} counted {} failures, {} ejection(s)",
        summary.after_kill_ok,
        summary.after_kill_failed,
        summary.survivors_served,
        summary.killed,
        summary.killed_failures,
        summary.killed_ejections
    );
    if summary.after_kill_failed > 0 {
        return Err("some calls failed despite the retries".into());
    }
    Ok(())
}
