//! gRPC through the balancer, against real tonic servers on loopback: the gRPC
//! classifier (`GrpcStatus`) reading `grpc-status` in a trailers-only response head and,
//! with body tracking, in the trailers; and `examples/grpc.rs` run end to end.

#[path = "../examples/grpc.rs"]
mod grpc_example;

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use http::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::balance::{
    BackendService, BalanceLayer, BoxError, Classify, GrpcStatus, PerBackend, TrackBodyLayer,
};
use tower_lb::{BackendStats, Pool, RoundRobin, Weight};

/// A health service whose answers are scripted by the requested service name:
/// `code:N` makes `Check` fail with code N (a trailers-only response) and `Watch` send
/// one message, then end with code N (in the trailers); any other name is served.
struct Scripted;

fn scripted_code(req: &HealthCheckRequest) -> Option<Code> {
    let n: i32 = req.service.strip_prefix("code:")?.parse().ok()?;
    Some(Code::from(n))
}

fn serving() -> HealthCheckResponse {
    HealthCheckResponse {
        status: ServingStatus::Serving as i32,
    }
}

#[tonic::async_trait]
impl Health for Scripted {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, Status> {
        match scripted_code(request.get_ref()) {
            Some(code) if code != Code::Ok => Err(Status::new(code, "scripted")),
            _ => Ok(tonic::Response::new(serving())),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, Status> {
        let mut items = vec![Ok(serving())];
        if let Some(code) = scripted_code(request.get_ref())
            && code != Code::Ok
        {
            items.push(Err(Status::new(code, "scripted")));
        }
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(items))))
    }
}

/// A scripted tonic server on `127.0.0.1:0`, stopped when dropped.
struct ScriptedServer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn scripted_server() -> Result<ScriptedServer, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(Server::builder().serve_with_incoming_shutdown(
        HealthServer::new(Scripted),
        tonic::transport::server::TcpIncoming::from(listener),
        async {
            let _ = stopped.await;
        },
    ));
    Ok(ScriptedServer { addr, _stop: stop })
}

type ScriptedPool = Pool<BackendService<String, Channel>, RoundRobin>;

type Transport = BoxCloneService<Request<tonic::body::Body>, Response<tonic::body::Body>, BoxError>;

/// A one-backend pool over `server` and a tonic client through the balancer, with
/// `classify` and, if `track`, body tracking.
fn balanced_client<C>(
    server: &ScriptedServer,
    classify: C,
    track: bool,
) -> Result<(ScriptedPool, HealthClient<Transport>), BoxError>
where
    C: Classify<Response<tonic::body::Body>, tonic::transport::Error>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let pool = Pool::new(RoundRobin::new());
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))?.connect_lazy();
    pool.insert(
        BackendService::new("scripted".to_owned(), channel),
        Weight::ONE,
    )?;
    let balance = BalanceLayer::new(pool.clone())
        .classify(classify)
        .build(PerBackend);
    let transport: Transport = if track {
        BoxCloneService::new(
            ServiceBuilder::new()
                .layer(TrackBodyLayer::new())
                .service(balance)
                .map_response(|r| r.map(tonic::body::Body::new)),
        )
    } else {
        BoxCloneService::new(balance)
    };
    Ok((pool, HealthClient::new(transport)))
}

fn totals<A, P: tower_lb::Picker<A>>(pool: &Pool<A, P>) -> (u64, u64)
where
    A: Clone,
{
    let stats: Vec<BackendStats<A>> = pool.stats();
    (stats[0].successes, stats[0].failures)
}

fn named(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

/// Runs a test body with a deadline: a hang fails the test instead of stalling the suite.
async fn bounded<F: std::future::Future<Output = Result<(), BoxError>>>(
    test: F,
) -> Result<(), BoxError> {
    tokio::time::timeout(Duration::from_secs(20), test)
        .await
        .map_err(|_| "the test took longer than 20 s")?
}

#[tokio::test]
async fn trailers_only_errors_are_classified_by_their_code() -> Result<(), BoxError> {
    bounded(async {
        let server = scripted_server().await?;
        let (pool, mut client) = balanced_client(&server, GrpcStatus::new(), false)?;
        client.check(named("up")).await?;
        assert_eq!(totals(&pool), (1, 0), "OK is a success");
        // UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, DATA_LOSS:
        // the server's fault.
        for code in [14, 13, 2, 4, 12, 15] {
            let err = client
                .check(named(&format!("code:{code}")))
                .await
                .unwrap_err();
            assert_eq!(err.code() as i32, code, "{err}");
        }
        assert_eq!(
            totals(&pool),
            (1, 6),
            "HTTP 200 with grpc-status ≠ 0 is a failure"
        );
        // NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, CANCELLED: the caller's.
        for code in [5, 3, 8, 1] {
            let err = client
                .check(named(&format!("code:{code}")))
                .await
                .unwrap_err();
            assert_eq!(err.code() as i32, code, "{err}");
        }
        assert_eq!(totals(&pool), (5, 6));

        // The same answers through the default classifier are all successes: a gRPC
        // error is an HTTP 200, which is why gRPC needs `GrpcStatus`.
        let (pool, mut client) =
            balanced_client(&server, tower_lb::balance::ErrorsAsFailures, false)?;
        client.check(named("code:14")).await.unwrap_err();
        assert_eq!(totals(&pool), (1, 0));

        // A configured code counts as configured.
        let strict = GrpcStatus::new().failure_code(5, true)?;
        let (pool, mut client) = balanced_client(&server, strict, false)?;
        client.check(named("code:5")).await.unwrap_err();
        assert_eq!(totals(&pool), (0, 1));
        Ok(())
    })
    .await
}

/// Reads a `Watch` stream to its end: the messages, then the status in the trailers.
async fn watch_to_end(
    client: &mut HealthClient<Transport>,
    service: &str,
) -> Result<(usize, Code), BoxError> {
    let mut stream = client.watch(named(service)).await?.into_inner();
    let mut messages = 0;
    loop {
        match stream.message().await {
            Ok(Some(_)) => messages += 1,
            Ok(None) => return Ok((messages, Code::Ok)),
            Err(status) => return Ok((messages, status.code())),
        }
    }
}

#[tokio::test]
async fn errors_in_the_trailers_are_failures_with_body_tracking() -> Result<(), BoxError> {
    bounded(async {
        let server = scripted_server().await?;
        let (pool, mut client) = balanced_client(&server, GrpcStatus::new(), true)?;
        assert_eq!(watch_to_end(&mut client, "code:0").await?, (1, Code::Ok));
        assert_eq!(totals(&pool), (1, 0));
        assert_eq!(
            watch_to_end(&mut client, "code:14").await?,
            (1, Code::Unavailable)
        );
        assert_eq!(
            totals(&pool),
            (1, 1),
            "UNAVAILABLE in the trailers is a failure"
        );
        assert_eq!(
            watch_to_end(&mut client, "code:5").await?,
            (1, Code::NotFound)
        );
        assert_eq!(totals(&pool), (2, 1), "NOT_FOUND in the trailers is not");
        // A trailers-only error is still read from the head with body tracking on.
        client.check(named("code:13")).await.unwrap_err();
        assert_eq!(totals(&pool), (2, 2));
        assert_eq!(pool.stats()[0].in_flight, 0);

        // Without body tracking the trailers are never seen: the head (HTTP 200, no
        // grpc-status) is all the balancer has, as the module docs say.
        let (pool, mut client) = balanced_client(&server, GrpcStatus::new(), false)?;
        assert_eq!(
            watch_to_end(&mut client, "code:14").await?,
            (1, Code::Unavailable)
        );
        assert_eq!(totals(&pool), (1, 0));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_example_balances_hashes_and_survives_a_killed_server() -> Result<(), BoxError> {
    bounded(async {
        let calls = 45;
        let summary = grpc_example::run(calls).await?;
        // 1. Per-call balancing: every server served some of the calls.
        assert_eq!(summary.spread.values().sum::<usize>(), calls);
        for (name, n) in &summary.spread {
            assert!(*n > 0, "{name} served nothing: {:?}", summary.spread);
        }
        // 2. Each user's calls stayed on one server, and the users spread.
        assert_eq!(summary.users.len(), 8, "{:?}", summary.users);
        for (user, servers) in &summary.users {
            assert_eq!(servers.len(), 1, "{user} moved: {servers:?}");
        }
        let used: std::collections::BTreeSet<_> = summary.users.values().flatten().collect();
        assert!(
            used.len() >= 2,
            "every user on one server: {:?}",
            summary.users
        );
        // 3. Every call succeeded despite the kill; the survivors served them all; the
        // killed server's failures were counted and it was ejected.
        assert_eq!(summary.killed, "grpc-2");
        assert_eq!(summary.after_kill_ok, calls, "{summary:?}");
        assert_eq!(summary.after_kill_failed, 0);
        assert!(summary.survivors_served >= calls - calls / 3, "{summary:?}");
        assert!(summary.killed_failures > 0, "{summary:?}");
        assert!(summary.killed_ejections >= 1, "{summary:?}");
        Ok(())
    })
    .await
}

/// The README's "Using with tonic" block is the example's code, line for line: the
/// README shows it without hidden lines, and the example compiles and runs it.
#[test]
fn the_readmes_tonic_block_is_the_examples_code() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/grpc.rs");
    let section = readme
        .split("## Using with tonic")
        .nth(1)
        .expect("README has a \"Using with tonic\" section");
    let block = section
        .split("```rs\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the section has a rust block");
    assert!(block.lines().count() > 10, "{block}");
    assert!(
        example.contains(block),
        "README's tonic block differs from examples/grpc.rs:\n{block}"
    );
}
