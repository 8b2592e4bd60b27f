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
