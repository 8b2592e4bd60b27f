//! /metrics, /healthz and /readyz on one small HTTP/1 listener.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Room for a GET's request line and headers (hyper's smallest buffer).
const HEAD_LIMIT: usize = 8192;
/// A probe or a scrape sends its request at once; a client still sending after this is cut off.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Longest life of a connection, keep-alive included.
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Shared state of the endpoints.
#[derive(Clone)]
pub struct Probes {
    /// Metrics to encode.
    pub registry: Arc<Registry>,
    /// True once the caches are synced (followers too: they are ready to take over).
    pub ready: Arc<AtomicBool>,
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Answers one request; public so tests can call it without a socket.
pub fn respond(probes: &Probes, method: &Method, path: &str) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if method != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match path {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" if probes.ready.load(Ordering::Acquire) => {
            text(StatusCode::OK, PLAIN, "ok\n".into())
        }
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "caches not synced\n".into(),
        ),
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &probes.registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    "encoding failed\n".into(),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

/// Serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    probes: Probes,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics /healthz /readyz");
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let probes = probes.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = respond(&probes, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            // Every pod can reach the port: a client gets HEAD_TIMEOUT and HEAD_LIMIT bytes to
            // send its request head, not as long and as much as it likes.
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(HEAD_LIMIT)
                .serve_connection(TokioIo::new(stream), svc);
            // however it stands (a client that never reads its answer), a connection ends
            match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "http connection ended with an error"),
            }
        });
    }
}
