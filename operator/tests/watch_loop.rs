//! The whole watch loop against a mocked API server: it lists then watches Nodes and
//! WireGuardPeers (never re-lists on a timer), reconciles once the caches are synced, reports
//! ready, and stops on cancellation. Mocked only: no real API server is involved.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use wgmesh_api::fixtures::{key, node};
use wgmesh_api::MeshConfig;
use wgmesh_operator::controller;
use wgmesh_operator::leader::Leadership;
use wgmesh_operator::metrics::Metrics;
use wgmesh_operator::reconcile::Context;

fn reply(v: &Value) -> Response<Body> {
    Response::new(Body::from(serde_json::to_vec(v).unwrap_or_default()))
}

#[tokio::test]
async fn lists_watches_reconciles_and_stops() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let mut registry = Registry::default();
    let ctx = Context::new(
        client.clone(),
        MeshConfig::default(),
        Metrics::new(&mut registry),
        None,
    );
    let ready = Arc::new(AtomicBool::new(false));
    let token = CancellationToken::new();
    let run = tokio::spawn(controller::run(
        client,
        ctx,
        Leadership::always(),
        ready.clone(),
        token.clone(),
    ));

    let nodes = vec![
        node("a", Some(&key(1)), "192.168.0.1", &["10.244.0.0/24"]),
        node("b", Some(&key(2)), "192.168.0.2", &["10.244.1.0/24"]),
    ];
    let mut seen: Vec<(Method, String)> = Vec::new();
    let mut held = Vec::new(); // open watches: never answered, like a quiet cluster
    let mut applies = 0;
    while applies < 2 {
        let next = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
        let Ok(Some((req, send))) = next else {
            panic!("stalled after {seen:?}")
        };
        let (method, uri) = (req.method().clone(), req.uri().to_string());
        seen.push((method.clone(), uri.clone()));
        let path = req.uri().path().to_owned();
        match (method, path.as_str()) {
            (Method::GET, _) if uri.contains("watch=true") => held.push(send),
            (Method::GET, "/api/v1/nodes") => send.send_response(reply(&json!({
                "apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "10"}, "items": nodes
            }))),
            (Method::GET, "/apis/wgmesh.io/v1alpha1/wireguardpeers") => send.send_response(reply(&json!({
                "apiVersion": "wgmesh.io/v1alpha1", "kind": "WireGuardPeerList", "metadata": {"resourceVersion": "20"}, "items": []
            }))),
            (Method::PATCH, p) if p.starts_with("/apis/wgmesh.io/v1alpha1/wireguardpeers/node-") => {
                let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                send.send_response(reply(&body));
                applies += 1;
            }
            other => panic!("unexpected request {other:?}"),
        }
    }
    assert!(
        ready.load(Ordering::Acquire),
        "ready once both caches synced"
    );

    // nothing else happens on a quiet cluster: no polling, no re-list (a watch may still be
    // on its way if it lost the race with the applies)
    while let Ok(Some((req, send))) =
        tokio::time::timeout(Duration::from_millis(500), handle.next_request()).await
    {
        let uri = req.uri().to_string();
        assert!(
            uri.contains("watch=true"),
            "unexpected request {} {uri}",
            req.method()
        );
        seen.push((req.method().clone(), uri));
        held.push(send);
    }

    let lists = seen
        .iter()
        .filter(|(m, u)| *m == Method::GET && !u.contains("watch=true"))
        .count();
    let watches = seen
        .iter()
        .filter(|(_, u)| u.contains("watch=true"))
        .count();
    assert_eq!((lists, watches), (2, 2), "{seen:?}");

    token.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), run).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    assert!(!ready.load(Ordering::Acquire), "not ready after shutdown");
    drop(held);
}
