//! /healthz, /readyz and /metrics answers (called directly, no socket).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use prometheus_client::registry::Registry;
use wgmesh_operator::http::{respond, Probes};
use wgmesh_operator::metrics::Metrics;

async fn body(resp: hyper::Response<http_body_util::Full<hyper::body::Bytes>>) -> String {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    metrics.reconciled(true, 0.002);
    metrics.write("apply");
    metrics.members(3, 1);
    metrics.set_leader(true);
    let probes = Probes {
        registry: Arc::new(registry),
        ready: Arc::new(AtomicBool::new(false)),
    };

    assert_eq!(
        respond(&probes, &Method::GET, "/healthz").status(),
        StatusCode::OK
    );
    assert_eq!(
        respond(&probes, &Method::GET, "/readyz").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    probes.ready.store(true, Ordering::Release);
    assert_eq!(
        respond(&probes, &Method::GET, "/readyz").status(),
        StatusCode::OK
    );
    assert_eq!(
        respond(&probes, &Method::POST, "/healthz").status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        respond(&probes, &Method::GET, "/nope").status(),
        StatusCode::NOT_FOUND
    );

    let text = body(respond(&probes, &Method::GET, "/metrics")).await;
    for line in [
        "wgmesh_operator_reconciles_total{result=\"ok\"} 1",
        "wgmesh_operator_writes_total{op=\"apply\"} 1",
        "wgmesh_operator_peers{state=\"valid\"} 3",
        "wgmesh_operator_peers{state=\"invalid\"} 1",
        "wgmesh_operator_leader 1",
        "wgmesh_operator_reconcile_duration_seconds_count 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_is_cut_off() {
    use std::io::{Read, Write};
    // A free port for the server (bound and released: serve binds it itself).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    let probes = Probes {
        registry: Arc::new(Registry::default()),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(wgmesh_operator::http::serve(addr, probes, stop.clone()));
    let dribbled = tokio::task::spawn_blocking(move || {
        let mut s = (0..50)
            .find_map(|_| {
                std::net::TcpStream::connect(addr)
                    .map_err(|_| std::thread::sleep(std::time::Duration::from_millis(50)))
                    .ok()
            })
            .unwrap_or_else(|| panic!("the server never listened"));
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n");
        // One byte every 100 ms for at most 20 s: the server must hang up long before.
        for _ in 0..200 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if s.write_all(b"X").is_err() {
                return true;
            }
            let _ = s.set_nonblocking(true);
            let mut buf = [0u8; 512];
            // anything but "nothing yet" means the server gave up on the request
            let closed =
                !matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            let _ = s.set_nonblocking(false);
            if closed {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    stop.cancel();
    let _ = server.await;
    assert!(
        dribbled,
        "a client dribbling its request head was kept for 20 s"
    );
}
