//! The kubernetes source against a mocked API server (kube's tower-test pattern): the public
//! key annotation is published on the own Node only when missing or different, handshake
//! reports are server-side applies of `status.latestHandshake` alone, bounded in number, and
//! the whole watch loop (lists, watches, key patches, preshared-key Secrets) runs against a
//! small stateful fake. No real API server is involved.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use wgmesh_api::annotations::PUBLIC_KEY;
use wgmesh_api::{MeshConfig, PublicKey};
use wgmesh_node_agent::mesh_input::{desired_peers, MeshInput};
use wgmesh_node_agent::resolve::{engine_peers, EnginePeer};
use wgmesh_node_agent::source_kube::{
    publish_key, write_handshake, KubeSource, ReportLimiter, REPORTS_PER_ROUND,
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

/// The resources the fake API server holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Node,
    Peer,
}

type Reply = tower_test::mock::SendResponse<Response<Body>>;

const SECRET_LATENCY: Duration = Duration::from_millis(300);

/// A small stateful API server: lists, watches (events replayed after the requested
/// resourceVersion; a watch with nothing to say is held open until there is), gets and merge
/// patches of Nodes, gets of Secrets in `wgmesh-system`. Every request is logged.
#[derive(Default)]
struct World {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    peers: BTreeMap<String, Value>,
    secrets: BTreeMap<String, Value>,
    events: Vec<(Kind, u64, Vec<u8>)>,
    watches: Vec<(Kind, u64, Reply)>,
    hold_peer_list: bool,
    held_peer_list: Option<Reply>,
    log: Vec<(Method, String, Value)>,
}

fn reply(send: Reply, status: StatusCode, body: &Value) {
    let mut resp = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *resp.status_mut() = status;
    send.send_response(resp);
}

fn not_found(send: Reply, what: &str) {
    reply(
        send,
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    );
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

impl World {
    fn map(&mut self, kind: Kind) -> &mut BTreeMap<String, Value> {
        match kind {
            Kind::Node => &mut self.nodes,
            Kind::Peer => &mut self.peers,
        }
    }

    /// Stores an object (new resourceVersion) and tells the watchers.
    fn put(&mut self, kind: Kind, mut obj: Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let verb = if self.map(kind).contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let mut line =
            serde_json::to_vec(&json!({"type": verb, "object": obj})).unwrap_or_default();
        line.push(b'\n');
        self.map(kind).insert(name, obj);
        self.events.push((kind, self.rv, line));
        self.flush();
    }

    /// Answers every held watch that has events after its resourceVersion.
    fn flush(&mut self) {
        let mut keep = Vec::new();
        for (kind, rv, send) in std::mem::take(&mut self.watches) {
            let body: Vec<u8> = self
                .events
                .iter()
                .filter(|(k, r, _)| *k == kind && *r > rv)
                .flat_map(|(_, _, line)| line.iter().copied())
                .collect();
            if body.is_empty() {
                keep.push((kind, rv, send));
            } else {
                send.send_response(Response::new(Body::from(body)));
            }
        }
        self.watches = keep;
    }

    fn list(&mut self, kind: Kind) -> Value {
        let (api_version, list_kind) = match kind {
            Kind::Node => ("v1", "NodeList"),
            Kind::Peer => ("wgmesh.io/v1alpha1", "WireGuardPeerList"),
        };
        let items: Vec<Value> = self.map(kind).values().cloned().collect();
        json!({"apiVersion": api_version, "kind": list_kind,
               "metadata": {"resourceVersion": self.rv.to_string()}, "items": items})
    }

    fn release_peer_list(&mut self) {
        self.hold_peer_list = false;
        if let Some(send) = self.held_peer_list.take() {
            let list = self.list(Kind::Peer);
            reply(send, StatusCode::OK, &list);
        }
    }

    fn serve(&mut self, method: &Method, uri: &str, body: &Value, send: Reply) {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
        };
        let kind = match path {
            "/api/v1/nodes" => Some(Kind::Node),
            "/apis/wgmesh.io/v1alpha1/wireguardpeers" => Some(Kind::Peer),
            _ => None,
        };
        if let (Some(kind), &Method::GET) = (kind, method) {
            if param("watch").as_deref() == Some("true") {
                let rv = param("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                self.watches.push((kind, rv, send));
                self.flush();
            } else if kind == Kind::Peer && self.hold_peer_list {
                self.held_peer_list = Some(send);
            } else {
                let list = self.list(kind);
                reply(send, StatusCode::OK, &list);
            }
            return;
        }
        if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
            let Some(mut node) = self.nodes.get(name).cloned() else {
                return not_found(send, name);
            };
            if method == Method::PATCH {
                // a resourceVersion in the patch is a precondition, as the API server treats it
                let expected = body["metadata"]["resourceVersion"].as_str();
                if expected.is_some_and(|v| Some(v) != node["metadata"]["resourceVersion"].as_str()) {
                    return reply(send, StatusCode::CONFLICT, &json!({"kind": "Status", "apiVersion": "v1",
                        "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}));
                }
                merge(&mut node, body);
                self.put(Kind::Node, node.clone());
            }
            return reply(send, StatusCode::OK, &node);
        }
        if let Some(name) = path.strip_prefix("/api/v1/namespaces/wgmesh-system/secrets/") {
            // answered late, so an input handed out before the read would be caught
            let found = self
                .secrets
                .get(name)
                .filter(|_| method == Method::GET)
                .cloned();
            let name = name.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(SECRET_LATENCY).await;
                match found {
                    Some(s) => reply(send, StatusCode::OK, &s),
                    None => not_found(send, &name),
                }
            });
            return;
        }
        not_found(send, path)
    }

    fn patches_of_n1(&self) -> Vec<Value> {
        self.log
            .iter()
            .filter(|(m, uri, _)| m == Method::PATCH && uri.starts_with("/api/v1/nodes/n1?"))
            .map(|(_, _, b)| b.clone())
            .collect()
    }
}

type Shared = Arc<Mutex<World>>;

fn lock(w: &Shared) -> std::sync::MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

async fn fake_api_server(mut handle: Handle, world: Shared) {
    while let Some((req, send)) = handle.next_request().await {
        let method = req.method().clone();
        let uri = req.uri().to_string();
        let is_merge = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/merge-patch+json");
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut w = lock(&world);
        w.log.push((method.clone(), uri.clone(), body.clone()));
        if method == Method::PATCH && !is_merge {
            reply(send, StatusCode::UNSUPPORTED_MEDIA_TYPE, &json!({}));
            continue;
        }
        w.serve(&method, &uri, &body, send);
    }
}

/// Calls `f` every 20 ms until it yields, at most `limit`.
async fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn key(b: u8) -> PublicKey {
    PublicKey::from_bytes([b; 32])
}

/// A Secret as the API returns it: `data` values are base64, here of the base64 `wg genpsk` text.
fn psk_secret(name: &str, psk: [u8; 32]) -> Value {
    let text = STANDARD.encode(psk);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": name, "namespace": "wgmesh-system"},
           "data": {"presharedKey": STANDARD.encode(text)}})
}

fn peer_obj(name: &str, pk: PublicKey, allowed: &str, secret: &str) -> Value {
    json!({"apiVersion": "wgmesh.io/v1alpha1", "kind": "WireGuardPeer", "metadata": {"name": name},
           "spec": {"publicKey": pk.to_string(), "allowedIPs": [allowed],
                    "presharedKeySecretRef": {"namespace": "wgmesh-system", "name": secret, "key": "presharedKey"}}})
}

fn names<T>(items: &[T], name: impl Fn(&T) -> Option<String>) -> Vec<String> {
    items.iter().filter_map(name).collect()
}

fn engine_view(input: &MeshInput) -> (Vec<EnginePeer>, Vec<String>) {
    let cfg = MeshConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
    };
    let desired = desired_peers(input, &cfg, "n1");
    engine_peers(&desired, |_, _| None, |r| input.preshared_keys.lookup(r))
}

fn psk_of(peers: &[EnginePeer], name: &str) -> Option<[u8; 32]> {
    peers
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| p.preshared_key.as_ref())
        .map(|k| *k.0)
}

#[tokio::test]
async fn the_watch_loop_against_a_fake_api_server() {
    let wait = Duration::from_secs(10);
    let world: Shared = Arc::default();
    {
        let mut w = lock(&world);
        w.hold_peer_list = true;
        w.put(
            Kind::Node,
            json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "annotations": {"keep": "me"}},
            "spec": {"podCIDRs": ["10.244.1.0/24"]}}),
        );
        w.put(Kind::Node, json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n2", "annotations": {PUBLIC_KEY: key(2).to_string(), "wgmesh.io/endpoint": "192.0.2.2:51820"}},
            "spec": {"podCIDRs": ["10.244.2.0/24"]}}));
        w.put(
            Kind::Peer,
            peer_obj("office-gateway", key(10), "192.168.100.0/24", "office-psk"),
        );
        w.put(
            Kind::Peer,
            peer_obj("phone", key(11), "192.168.101.0/24", "missing-psk"),
        );
        w.secrets
            .insert("office-psk".into(), psk_secret("office-psk", [0xaa; 32]));
        w.secrets
            .insert("laptop-psk".into(), psk_secret("laptop-psk", [0xbb; 32]));
    }
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(fake_api_server(handle, world.clone()));
    let client = Client::new(svc, "default");
    let mut source = KubeSource::start_with_client(client, "n1", key(1), Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{e}"));

    // (a) the Node list is served, the WireGuardPeer list held: no input yet
    until("the Node list and a held WireGuardPeer list", wait, || {
        let w = lock(&world);
        let nodes_listed = w.log.iter().any(|(m, u, _)| {
            m == Method::GET && u.starts_with("/api/v1/nodes?") && !u.contains("watch=true")
        });
        (nodes_listed && w.held_peer_list.is_some()).then_some(())
    })
    .await;
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(1) {
        assert!(
            source.poll().is_none(),
            "input before the WireGuardPeer list completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock(&world).release_peer_list();
    let input = until("the first input", wait, || source.poll()).await;
    assert_eq!(
        names(&input.nodes, |n| n.metadata.name.clone()),
        ["n1", "n2"]
    );
    assert_eq!(
        names(&input.peers, |p| p.metadata.name.clone()),
        ["office-gateway", "phone"]
    );
    // the Secrets were read before the first input was handed out
    let (peers, warnings) = engine_view(&input);
    assert_eq!(psk_of(&peers, "office-gateway"), Some([0xaa; 32]));
    assert!(
        peers.iter().all(|p| p.name != "phone"),
        "a peer whose PSK cannot be read is not configured at all"
    );
    assert!(
        peers.iter().any(|p| p.public_key == key(2)),
        "node n2 is a peer: {:?}",
        names(&peers, |p| Some(p.name.clone()))
    );
    assert!(
        warnings.iter().any(|w| w.contains("peer phone")
            && w.contains("wgmesh-system/missing-psk key presharedKey")
            && w.contains("does not exist")),
        "{warnings:?}"
    );

    // (b) the own Node gets the key, merged next to its other annotations, once
    until("the key patch", wait, || {
        (!lock(&world).patches_of_n1().is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        lock(&world).patches_of_n1(),
        [json!({"metadata": {"annotations": {PUBLIC_KEY: key(1).to_string()}}})]
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    {
        let w = lock(&world);
        assert_eq!(
            w.patches_of_n1().len(),
            1,
            "patched again though the key was there"
        );
        assert_eq!(
            w.nodes["n1"]["metadata"]["annotations"]["keep"],
            json!("me")
        );
    }

    // (c) a rotated key is published in place of the old one
    source.set_public_key(key(3));
    let want = json!({"metadata": {"annotations": {PUBLIC_KEY: key(3).to_string()}}});
    until("the rotated key patch", wait, || {
        lock(&world).patches_of_n1().contains(&want).then_some(())
    })
    .await;
    assert_eq!(
        lock(&world).nodes["n1"]["metadata"]["annotations"][PUBLIC_KEY],
        json!(key(3).to_string())
    );

    // someone strips the annotation: it comes back
    {
        let mut w = lock(&world);
        let mut n1 = w.nodes["n1"].clone();
        n1["metadata"]["annotations"] = json!({"keep": "me"});
        w.put(Kind::Node, n1);
    }
    until("the key restored", wait, || {
        let w = lock(&world);
        (w.nodes["n1"]["metadata"]["annotations"][PUBLIC_KEY] == json!(key(3).to_string()))
            .then_some(())
    })
    .await;

    // (d) a WireGuardPeer added by a watch event appears, with its PSK read before it does
    lock(&world).put(
        Kind::Peer,
        peer_obj("laptop", key(12), "192.168.102.0/24", "laptop-psk"),
    );
    let input = until("the added peer", wait, || {
        source.poll().filter(|i| {
            i.peers
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some("laptop"))
        })
    })
    .await;
    assert_eq!(psk_of(&engine_view(&input).0, "laptop"), Some([0xbb; 32]));
    // and a modified one
    lock(&world).put(
        Kind::Peer,
        peer_obj("office-gateway", key(10), "192.168.110.0/24", "office-psk"),
    );
    let input = until("the modified peer", wait, || {
        source.poll().filter(|i| {
            i.peers
                .iter()
                .any(|p| p.spec.allowed_ips == ["192.168.110.0/24"])
        })
    })
    .await;
    let (peers, _) = engine_view(&input);
    let office = peers
        .iter()
        .find(|p| p.name == "office-gateway")
        .expect("office-gateway");
    assert_eq!(
        office.allowed_ips,
        ["192.168.110.0/24".parse().expect("cidr")]
    );

    // a key rotated inside the Secret, no peer event: picked up by the periodic read
    lock(&world)
        .secrets
        .insert("office-psk".into(), psk_secret("office-psk", [0xcc; 32]));
    until("the rotated preshared key", wait, || {
        source
            .poll()
            .filter(|i| psk_of(&engine_view(i).0, "office-gateway") == Some([0xcc; 32]))
    })
    .await;

    // Secrets are only ever read one by one, by name, never listed or watched
    {
        let w = lock(&world);
        let reads: Vec<&str> = w
            .log
            .iter()
            .filter(|(_, u, _)| u.contains("secrets"))
            .map(|(_, u, _)| u.as_str())
            .collect();
        for (m, u, _) in w.log.iter().filter(|(_, u, _)| u.contains("secrets")) {
            assert_eq!(m, Method::GET, "{u}");
            assert!(!u.contains('?') && !u.ends_with("/secrets"), "{u}");
        }
        for name in ["office-psk", "missing-psk", "laptop-psk"] {
            assert!(
                reads
                    .iter()
                    .any(|u| u.ends_with(&format!("/secrets/{name}"))),
                "{name}: {reads:?}"
            );
        }
    }
    drop(source);
    server.abort();
}

#[tokio::test]
async fn a_ready_agent_removes_its_not_ready_taint_and_no_other() {
    // Nodes registered with the taint take no pods until their agent is ready, so none starts
    // before the CNI chain can hold it; only the agent's own Node is touched, and a concurrent
    // change to the taints (409) is retried against the newer Node, not overwritten.
    let wait = Duration::from_secs(10);
    let world: Shared = Arc::default();
    let not_ready = json!({"key": "wgmesh.io/agent-not-ready", "effect": "NoSchedule"});
    let dedicated = json!({"key": "dedicated", "value": "infra", "effect": "NoSchedule"});
    {
        let mut w = lock(&world);
        for name in ["n1", "n2"] {
            w.put(Kind::Node, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "spec": {"podCIDRs": ["10.244.1.0/24"], "taints": [not_ready.clone(), dedicated.clone()]}}));
        }
    }
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(fake_api_server(handle, world.clone()));
    let client = Client::new(svc, "default");
    let mut source = KubeSource::start_with_client(client, "n1", key(1), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    until("the first input", wait, || source.poll()).await;
    let taints = |name: &str| lock(&world).nodes[name]["spec"]["taints"].clone();
    // not ready: the taint stays (two ticks of the loop)
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(taints("n1"), json!([not_ready.clone(), dedicated.clone()]));

    // Someone adds a taint the agent has not seen yet (held back from the watch): its patch,
    // made against the older version, must conflict rather than overwrite the list.
    let team = json!({"key": "team", "value": "x", "effect": "NoSchedule"});
    {
        let mut w = lock(&world);
        w.rv += 1;
        let rv = w.rv.to_string();
        let n1 = w.nodes.get_mut("n1").unwrap_or_else(|| panic!("n1"));
        n1["metadata"]["resourceVersion"] = json!(rv);
        n1["spec"]["taints"] = json!([not_ready.clone(), dedicated.clone(), team.clone()]);
    }
    source.set_ready(true);
    let conflicts = || lock(&world).log.iter().filter(|(m, u, b)| m == Method::PATCH && u.starts_with("/api/v1/nodes/n1?") && !b["spec"].is_null()).count();
    until("a refused patch", wait, || (conflicts() > 0).then_some(())).await;
    assert_eq!(taints("n1"), json!([not_ready.clone(), dedicated.clone(), team.clone()]), "overwritten");
    // the change reaches the watch: the next patch is made from it and keeps the new taint
    {
        let mut w = lock(&world);
        let n1 = w.nodes["n1"].clone();
        w.put(Kind::Node, n1);
    }
    until("the taint removed", wait, || (taints("n1") == json!([dedicated.clone(), team.clone()])).then_some(())).await;
    assert_eq!(taints("n2"), json!([not_ready, dedicated]), "another node's taint");
    let w = lock(&world);
    let sent: Vec<&Value> = w.log.iter()
        .filter(|(m, u, b)| m == Method::PATCH && u.starts_with("/api/v1/nodes/n1?") && !b["spec"].is_null())
        .map(|(_, _, b)| b)
        .collect();
    assert!(sent.len() >= 2 && sent.iter().all(|b| b["metadata"]["resourceVersion"].is_string()), "{sent:?}");
    drop(w);
    drop(source);
    server.abort();
}
