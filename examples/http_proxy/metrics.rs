//! `--metrics ADDR`: the balancer's per-backend series (the crate's `metrics` feature)
//! recorded by `metrics-exporter-prometheus` and served as Prometheus text at
//! `http://ADDR/metrics`.

use std::convert::Infallible;

use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::net::TcpListener;

/// A recorder of the proxy's own (not installed globally: `Proxy::start` registers the
/// backends' series with it).
pub fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new().build_recorder()
}

/// Serves `GET /metrics` on `listener` until the task is dropped; anything else is 404.
pub async fn serve_metrics(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = if req.uri().path() == "/metrics" {
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(handle.render())))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                };
                async move { Ok::<_, Infallible>(response.unwrap_or_default()) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
