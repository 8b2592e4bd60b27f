//! The reconcile loop against a mocked API server (kube's tower-test pattern): the exact
//! requests it sends for a new Node, a changed Node, a deleted Node, an invalid peer, and
//! none at all when nothing changed. No real API server is involved.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Node;
use kube::client::Body;
use kube::Client;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use wgmesh_api::annotations;
use wgmesh_api::fixtures::{annotate, external, key, node, ts};
use wgmesh_api::{Mesh, MeshConfig, WireGuardPeer};
use wgmesh_operator::metrics::Metrics;
use wgmesh_operator::plan::node_peer;
use wgmesh_operator::reconcile::{reconcile_once, Context};
use wgmesh_operator::status::desired_status;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const NOW: i64 = 1_800_000_000;
const PEERS: &str = "/apis/wgmesh.io/v1alpha1/wireguardpeers";
const APPLY_QUERY: &str = "?&force=true&fieldManager=wgmesh-operator";

/// One request as the API server saw it.
#[derive(Debug)]
struct Seen {
    method: Method,
    uri: String,
    body: Value,
    content_type: String,
}

fn context() -> (Context, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let mut registry = Registry::default();
    let ctx = Context::new(
        client,
        MeshConfig::default(),
        Metrics::new(&mut registry),
        Some("test".into()),
    );
    (ctx, handle)
}

fn any_peer() -> Value {
    json!({
        "apiVersion": "wgmesh.io/v1alpha1", "kind": "WireGuardPeer",
        "metadata": {"name": "x", "generation": 1},
        "spec": {"publicKey": key(1), "allowedIPs": ["10.0.0.0/24"]}
    })
}

/// Answers every request like the API server would and records it; stops when the client is
/// dropped or nothing arrives for a while.
async fn api_server(handle: Handle) -> Vec<Seen> {
    api_server_refusing_events(handle, false).await
}

/// As `api_server`; with `refuse_events`, every Event is refused as invalid (422).
async fn api_server_refusing_events(mut handle: Handle, refuse_events: bool) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
        let Ok(Some((req, send))) = next else {
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
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let reply = if method == Method::DELETE {
            json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}})
        } else if uri.contains("/events") || body.get("spec").is_some() {
            body.clone()
        } else {
            any_peer()
        };
        let refused = refuse_events && uri.contains("/events");
        let (reply, code) = if refused {
            let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "reason": "Invalid", "code": 422, "metadata": {},
                "message": "Event \"x\" is invalid: metadata.name: must be no more than 253 characters"});
            (status, StatusCode::UNPROCESSABLE_ENTITY)
        } else {
            (reply, StatusCode::OK)
        };
        let mut resp = Response::new(Body::from(serde_json::to_vec(&reply).unwrap_or_default()));
        *resp.status_mut() = code;
        send.send_response(resp);
        seen.push(Seen {
            method,
            uri,
            body,
            content_type,
        });
    }
}

async fn reconcile(nodes: Vec<Node>, peers: Vec<WireGuardPeer>) -> Vec<Seen> {
    let (mut ctx, handle) = context();
    let server = tokio::spawn(api_server(handle));
    let nodes: Vec<Arc<Node>> = nodes.into_iter().map(Arc::new).collect();
    let peers: Vec<Arc<WireGuardPeer>> = peers.into_iter().map(Arc::new).collect();
    let result = reconcile_once(&mut ctx, &nodes, &peers, ts(NOW).0, &|| true).await;
    assert!(result.is_ok(), "{result:?}");
    drop(ctx);
    server.await.unwrap_or_default()
}

fn requests(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .map(|s| (s.method.to_string(), s.uri.clone()))
        .collect()
}

fn req(method: &str, uri: &str) -> (String, String) {
    (method.to_owned(), uri.to_owned())
}

/// The cluster state after the operator's earlier writes landed.
fn synced(nodes: &[Node], externals: &[WireGuardPeer]) -> Vec<WireGuardPeer> {
    let mesh = Mesh::build(nodes, externals, &MeshConfig::default());
    let now = ts(NOW).0;
    let mut out = Vec::new();
    for m in mesh.members() {
        let Some(node_name) = m.node_name() else {
            continue;
        };
        let n = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node_name));
        if let Some(mut p) = n.and_then(|n| node_peer(n, m)) {
            p.metadata.generation = Some(1);
            p.status = Some(desired_status(&p, m, now).status);
            out.push(p);
        }
    }
    for p in externals {
        let mut p = p.clone();
        if let Some(m) = mesh
            .members()
            .iter()
            .find(|m| Some(m.name.as_str()) == p.metadata.name.as_deref())
        {
            p.status = Some(desired_status(&p, m, now).status);
        }
        out.push(p);
    }
    out
}

fn two_nodes() -> Vec<Node> {
    vec![
        node("a", Some(&key(1)), "192.168.0.1", &["10.244.0.0/24"]),
        node("b", Some(&key(2)), "192.168.0.2", &["10.244.1.0/24"]),
    ]
}

#[tokio::test]
async fn new_node_sends_exactly_one_server_side_apply() {
    let nodes = two_nodes();
    let mut observed = synced(&nodes[..1], &[]);
    observed.retain(|p| p.metadata.name.as_deref() == Some("node-a"));
    let seen = reconcile(nodes, observed).await;
    assert_eq!(
        requests(&seen),
        [req("PATCH", &format!("{PEERS}/node-b{APPLY_QUERY}"))]
    );
    let s = &seen[0];
    assert_eq!(s.content_type, "application/apply-patch+yaml");
    assert_eq!(
        s.body,
        json!({
            "apiVersion": "wgmesh.io/v1alpha1",
            "kind": "WireGuardPeer",
            "metadata": {
                "name": "node-b",
                "labels": {"app.kubernetes.io/managed-by": "wgmesh-operator"},
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": "b", "uid": "uid-b", "controller": true
                }]
            },
            "spec": {
                "publicKey": key(2),
                "endpoint": "192.168.0.2:51820",
                "allowedIPs": ["10.244.1.0/24"],
                "nodeName": "b"
            }
        })
    );
}

#[tokio::test]
async fn changed_node_sends_one_apply_with_the_new_key_and_full_allowed_ips() {
    let nodes = two_nodes();
    let observed = synced(&nodes, &[]);
    let mut changed = nodes.clone();
    changed[1] = annotate(changed[1].clone(), annotations::PUBLIC_KEY, &key(22));
    if let Some(spec) = changed[1].spec.as_mut() {
        spec.pod_cidrs = Some(vec!["10.244.1.0/24".into(), "fd00:1::/64".into()]);
    }
    let seen = reconcile(changed, observed).await;
    assert_eq!(
        requests(&seen),
        [req("PATCH", &format!("{PEERS}/node-b{APPLY_QUERY}"))]
    );
    assert_eq!(seen[0].body["spec"]["publicKey"], json!(key(22)));
    assert_eq!(
        seen[0].body["spec"]["allowedIPs"],
        json!(["10.244.1.0/24", "fd00:1::/64"])
    );
}

#[tokio::test]
async fn a_node_peer_with_another_managers_additions_gets_one_merge_patch() {
    let nodes = two_nodes();
    let mut observed = synced(&nodes, &[]);
    observed[1].spec.allowed_ips.push("192.0.2.0/24".into());
    observed[1].spec.persistent_keepalive = Some(25);
    let seen = reconcile(nodes, observed).await;
    assert_eq!(
        requests(&seen),
        [req("PATCH", &format!("{PEERS}/node-b?&fieldManager=wgmesh-operator"))]
    );
    assert_eq!(seen[0].content_type, "application/merge-patch+json");
    assert_eq!(seen[0].body["spec"]["allowedIPs"], json!(["10.244.1.0/24"]));
    assert_eq!(seen[0].body["spec"]["persistentKeepalive"], Value::Null);
    assert!(seen[0].body["spec"].as_object().is_some_and(|s| s.contains_key("persistentKeepalive")));
}

#[tokio::test]
async fn applied_node_peer_gets_its_status_next() {
    let nodes = two_nodes();
    let mut observed = synced(&nodes, &[]);
    observed[1].status = None;
    let seen = reconcile(nodes, observed).await;
    assert_eq!(
        requests(&seen),
        [req("PATCH", &format!("{PEERS}/node-b/status{APPLY_QUERY}"))]
    );
    let body = &seen[0].body;
    assert_eq!(body["apiVersion"], json!("wgmesh.io/v1alpha1"));
    assert_eq!(body["kind"], json!("WireGuardPeer"));
    assert_eq!(body["status"]["conditions"][0]["type"], json!("Valid"));
    assert_eq!(body["status"]["conditions"][0]["status"], json!("True"));
    assert_eq!(body["status"]["conditions"][1]["type"], json!("Ready"));
    assert_eq!(body["status"]["observedGeneration"], json!(1));
    assert_eq!(
        body["status"]["distributedAllowedIPs"],
        json!(["10.244.1.0/24"])
    );
    assert!(
        body["status"].get("latestHandshake").is_none(),
        "owned by the agents"
    );
    assert!(
        body.get("spec").is_none(),
        "status apply carries status only"
    );
}

#[tokio::test]
async fn deleted_node_sends_exactly_one_delete() {
    let nodes = two_nodes();
    let observed = synced(&nodes, &[]);
    let seen = reconcile(nodes[..1].to_vec(), observed).await;
    assert_eq!(
        requests(&seen),
        [req("DELETE", &format!("{PEERS}/node-b?"))]
    );
    assert_eq!(seen[0].body["propagationPolicy"], json!("Background"));
}

#[tokio::test]
async fn invalid_peer_sends_status_and_a_warning_event() {
    let nodes = two_nodes();
    let mut observed = synced(&nodes, &[]);
    observed.push(external(
        "dup",
        &key(1),
        Some("203.0.113.9:51820"),
        &["172.20.0.0/16"],
        5,
    ));
    let seen = reconcile(nodes, observed).await;
    assert_eq!(
        requests(&seen),
        [
            req("PATCH", &format!("{PEERS}/dup/status{APPLY_QUERY}")),
            req("POST", "/apis/events.k8s.io/v1/namespaces/default/events?"),
        ]
    );
    let status = &seen[0].body["status"];
    assert_eq!(status["conditions"][0]["status"], json!("False"));
    assert_eq!(
        status["conditions"][0]["reason"],
        json!("DuplicatePublicKey")
    );
    assert_eq!(
        status["conditions"][0]["message"],
        json!("public key is already used by peer node-a")
    );
    assert_eq!(status["distributedAllowedIPs"], json!([]));
    let ev = &seen[1].body;
    assert_eq!(ev["type"], json!("Warning"));
    assert_eq!(ev["reason"], json!("DuplicatePublicKey"));
    assert_eq!(ev["regarding"]["kind"], json!("WireGuardPeer"));
    assert_eq!(ev["regarding"]["name"], json!("dup"));
    assert_eq!(ev["reportingController"], json!("wgmesh-operator"));
    assert!(ev["note"]
        .as_str()
        .unwrap_or_default()
        .contains("already used by peer node-a"));
}

#[tokio::test]
async fn a_refused_event_does_not_fail_the_turn() {
    let nodes = two_nodes();
    let mut observed = synced(&nodes, &[]);
    observed.push(external("dup", &key(1), Some("203.0.113.9:51820"), &["172.20.0.0/16"], 5));
    let (mut ctx, handle) = context();
    let server = tokio::spawn(api_server_refusing_events(handle, true));
    let nodes: Vec<Arc<Node>> = nodes.into_iter().map(Arc::new).collect();
    let peers: Vec<Arc<WireGuardPeer>> = observed.into_iter().map(Arc::new).collect();
    let result = reconcile_once(&mut ctx, &nodes, &peers, ts(NOW).0, &|| true).await;
    drop(ctx);
    let seen = server.await.unwrap_or_default();
    // The status went out and the Event was tried; its refusal leaves the turn a success, so
    // the next change is not held back by the error backoff.
    assert_eq!(
        requests(&seen),
        [
            req("PATCH", &format!("{PEERS}/dup/status{APPLY_QUERY}")),
            req("POST", "/apis/events.k8s.io/v1/namespaces/default/events?"),
        ]
    );
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn nothing_changed_sends_no_request() {
    let nodes = two_nodes();
    let externals = vec![
        external(
            "office",
            &key(100),
            Some("vpn.example.com:51820"),
            &["172.20.0.0/16"],
            1,
        ),
        external("bad", &key(101), None, &["10.244.0.0/16"], 2),
    ];
    let observed = synced(&nodes, &externals);
    let seen = reconcile(nodes, observed).await;
    assert_eq!(requests(&seen), Vec::<(String, String)>::new());
}

#[tokio::test]
async fn an_api_server_that_never_answers_fails_the_pass_instead_of_holding_it() {
    // A half-open connection: the request arrives and no answer ever comes. The pass must end
    // with an error (retried with backoff), not wait while the leader keeps renewing its Lease.
    let (mut ctx, mut handle) = context();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            held.push((req, send));
        }
        held.len()
    });
    let nodes: Vec<Arc<Node>> = two_nodes().into_iter().take(1).map(Arc::new).collect();
    let limit = wgmesh_operator::execute::CALL_TIMEOUT * 3;
    let result = tokio::time::timeout(limit, reconcile_once(&mut ctx, &nodes, &[], ts(NOW).0, &|| true)).await;
    let Ok(result) = result else { panic!("the pass still waited after {limit:?}") };
    let err = result.expect_err("no write was answered");
    assert!(format!("{err}").contains("no answer from the API server"), "{err}");
    drop(ctx);
    assert!(server.await.unwrap_or_default() >= 1);
}
