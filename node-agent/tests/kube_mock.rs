//! The kubernetes source against a mocked API server (kube's tower-test pattern): the public
//! key annotation is published on the own Node only when missing or different, and handshake
//! reports are server-side applies of `status.latestHandshake` alone, bounded in number.
//! No real API server is involved.

use std::time::{Duration, Instant, SystemTime};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use wgmesh_api::annotations::PUBLIC_KEY;
use wgmesh_api::PublicKey;
use wgmesh_node_agent::source_kube::{
    publish_key, write_handshake, ReportLimiter, REPORTS_PER_ROUND,
};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

struct Seen {
    method: Method,
    uri: String,
    content_type: String,
    body: Value,
}

/// Serves requests with `reply(uri)` and records them, until nothing arrives for 300 ms.
async fn api_server(mut handle: Handle, reply: impl Fn(&Method, &str) -> Value) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        let Ok(Some((req, send))) =
            tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await
        else {
            return seen;
        };
        let method = req.method().clone();
        let uri = req.uri().to_string();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut resp = Response::new(Body::from(
            serde_json::to_vec(&reply(&method, &uri)).unwrap_or_default(),
        ));
        *resp.status_mut() = StatusCode::OK;
        send.send_response(resp);
        seen.push(Seen {
            method,
            uri,
            content_type,
            body,
        });
    }
}

fn node(annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "annotations": annotations}})
}

#[tokio::test]
async fn publishes_the_key_annotation_only_when_it_differs() {
    let key = PublicKey::from_bytes([7; 32]);
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let server = tokio::spawn(api_server(handle, |_, _| node(json!({"other": "x"}))));
    let changed = publish_key(client, "n1", &key).await;
    assert!(matches!(changed, Ok(true)), "{changed:?}");
    let seen = server.await.unwrap_or_default();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (&seen[0].method, seen[0].uri.as_str()),
        (&Method::GET, "/api/v1/nodes/n1")
    );
    assert_eq!(seen[1].method, Method::PATCH);
    assert!(
        seen[1].uri.starts_with("/api/v1/nodes/n1?"),
        "{}",
        seen[1].uri
    );
    assert_eq!(seen[1].content_type, "application/merge-patch+json");
    // a merge patch of our annotation only: other annotations are left alone
    assert_eq!(
        seen[1].body,
        json!({"metadata": {"annotations": {PUBLIC_KEY: key.to_string()}}})
    );

    // already there: one GET, no write
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let k = key.to_string();
    let server = tokio::spawn(api_server(handle, move |_, _| {
        node(json!({PUBLIC_KEY: k.clone()}))
    }));
    assert!(matches!(publish_key(client, "n1", &key).await, Ok(false)));
    let seen = server.await.unwrap_or_default();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::GET);
}

#[tokio::test]
async fn handshake_reports_apply_only_latest_handshake_and_are_bounded() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let server = tokio::spawn(api_server(handle, |_, uri| {
        let name = uri.split('/').nth(5).unwrap_or("x").to_owned();
        json!({"apiVersion": "wgmesh.io/v1alpha1", "kind": "WireGuardPeer", "metadata": {"name": name},
               "spec": {"publicKey": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "allowedIPs": ["10.8.0.0/24"]}})
    }));
    // 8 peers handshake every tick for 20 ticks; the limiter lets each through once
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let observed: Vec<(String, SystemTime)> = (0..8).map(|i| (format!("node-n{i}"), at)).collect();
    let mut limiter = ReportLimiter::default();
    let t0 = Instant::now();
    let mut writes = 0;
    for tick in 0..20u64 {
        let due = limiter.due(t0 + Duration::from_millis(250 * tick), &observed, |_| None);
        assert!(due.len() <= REPORTS_PER_ROUND);
        for (name, at) in due {
            write_handshake(client.clone(), &name, at)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            writes += 1;
        }
    }
    drop(client);
    let seen = server.await.unwrap_or_default();
    assert_eq!(
        (writes, seen.len()),
        (8, 8),
        "one write per peer, not one per tick"
    );
    let s = &seen[0];
    assert_eq!(s.method, Method::PATCH);
    assert_eq!(s.uri, "/apis/wgmesh.io/v1alpha1/wireguardpeers/node-n0/status?&force=true&fieldManager=wgmesh-node-agent");
    assert_eq!(s.content_type, "application/apply-patch+yaml");
    // nothing but latestHandshake: the operator's conditions are not claimed
    assert_eq!(
        s.body["status"],
        json!({"latestHandshake": "2027-01-15T08:00:00Z"})
    );
    assert_eq!(s.body["kind"], json!("WireGuardPeer"));
}
