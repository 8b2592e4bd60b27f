//! The `kubernetes` source: watches Nodes and WireGuardPeers with kube-rs and hands the agent
//! the latest lists (the same inputs the api crate's desired-state function takes), publishes
//! this node's public key as the `wgmesh.io/public-key` annotation on its Node, and reports
//! handshakes into `WireGuardPeer.status.latestHandshake` at a bounded rate, and reads the
//! Secrets holding the peers' preshared keys. It runs a tokio runtime on its own thread; the
//! synchronous agent loop only reads snapshots.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use wgmesh_api::annotations::PUBLIC_KEY;
use wgmesh_api::constants::{AGENT_FIELD_MANAGER, GROUP, NOT_READY_TAINT, VERSION};
use wgmesh_api::{PublicKey, WireGuardPeer};

use crate::mesh_input::MeshInput;
use crate::psk::{self, PresharedKeys, PskError, SecretKeyId};

/// A status write for one peer is skipped unless the status is older than this.
pub const REPORT_STALENESS: Duration = Duration::from_secs(60);
/// This agent writes one peer's status at most this often.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// At most this many status writes per reporting round (one round per tick at most).
pub const REPORTS_PER_ROUND: usize = 5;
/// Referenced Secrets are read again this often (a key rotated in place leaves no peer event).
pub const SECRET_REFRESH: Duration = Duration::from_secs(60);
/// One Secret read may take this long before it counts as failed.
const SECRET_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot start the Kubernetes runtime: {0}")]
    Runtime(std::io::Error),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// The patch that makes `node` carry `key`, or `None` if it already does.
pub fn key_patch(node: &Node, key: &PublicKey) -> Option<Value> {
    let current = node.annotations().get(PUBLIC_KEY).map(|s| s.trim());
    let want = key.to_string();
    (current != Some(want.as_str()))
        .then(|| json!({"metadata": {"annotations": {PUBLIC_KEY: want}}}))
}

/// Publishes the key on Node `node_name` (a merge patch, only when it differs).
pub async fn publish_key(
    client: Client,
    node_name: &str,
    key: &PublicKey,
) -> Result<bool, KubeError> {
    let api: Api<Node> = Api::all(client);
    let node = api.get(node_name).await?;
    let Some(patch) = key_patch(&node, key) else {
        return Ok(false);
    };
    api.patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(true)
}

/// Writes `status.latestHandshake` of peer `name` with our own field manager, touching no other
/// status field (the operator owns those).
pub async fn write_handshake(client: Client, name: &str, at: SystemTime) -> Result<(), KubeError> {
    let api: Api<WireGuardPeer> = Api::all(client);
    let body = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "WireGuardPeer",
        "status": {"latestHandshake": Time(k8s_openapi::jiff::Timestamp::try_from(at).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH))},
    });
    api.patch_status(
        name,
        &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Merge patch removing the not-ready taint from `node`, or `None` if it has none. It carries
/// the Node's resourceVersion, so a concurrent change to the taints fails it (409) instead of
/// being overwritten with the list as we saw it.
pub fn untaint_patch(node: &Node) -> Option<serde_json::Value> {
    let taints = node.spec.as_ref()?.taints.as_ref()?;
    // without a version there is no precondition to send (null would remove it)
    let version = node.metadata.resource_version.as_ref()?;
    if !taints.iter().any(|t| t.key == NOT_READY_TAINT) {
        return None;
    }
    let rest: Vec<_> = taints.iter().filter(|t| t.key != NOT_READY_TAINT).collect();
    Some(json!({
        "metadata": {"resourceVersion": version},
        "spec": {"taints": if rest.is_empty() { serde_json::Value::Null } else { json!(rest) }},
    }))
}

/// Decides which handshakes are worth a status write: newer than what the status holds by
/// more than [`REPORT_STALENESS`], not written by us for [`REPORT_INTERVAL`], at most
/// [`REPORTS_PER_ROUND`] at once. With N nodes each peer then sees about one write per
/// minute cluster-wide, not N per handshake.
#[derive(Debug, Default)]
pub struct ReportLimiter {
    last: HashMap<String, Instant>,
}

impl ReportLimiter {
    pub fn due(
        &mut self,
        now: Instant,
        observed: &[(String, SystemTime)],
        current: impl Fn(&str) -> Option<SystemTime>,
    ) -> Vec<(String, SystemTime)> {
        let mut out = Vec::new();
        for (name, at) in observed {
            if out.len() >= REPORTS_PER_ROUND {
                break;
            }
            let stale = current(name)
                .is_none_or(|c| at.duration_since(c).is_ok_and(|d| d > REPORT_STALENESS));
            let ours_recent = self
                .last
                .get(name)
                .is_some_and(|t| now.duration_since(*t) < REPORT_INTERVAL);
            if stale && !ours_recent {
                self.last.insert(name.clone(), now);
                out.push((name.clone(), *at));
            }
        }
        out
    }
}

/// The watched objects.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub nodes: BTreeMap<String, Node>,
    pub peers: BTreeMap<String, WireGuardPeer>,
    pub nodes_synced: bool,
    pub peers_synced: bool,
    pub preshared_keys: PresharedKeys,
    /// Secrets of new or changed peers are being read: the inputs wait for them.
    pub psk_pending: bool,
}

/// Applies one watch event to a map; returns whether the initial list has completed.
pub fn apply_event<K: ResourceExt + Clone>(
    map: &mut BTreeMap<String, K>,
    pending: &mut BTreeMap<String, K>,
    ev: Event<K>,
) -> bool {
    match ev {
        Event::Apply(o) => {
            map.insert(o.name_any(), o);
        }
        Event::Delete(o) => {
            map.remove(&o.name_any());
        }
        // a relist: collect, then swap in at once so objects deleted meanwhile disappear
        Event::Init => pending.clear(),
        Event::InitApply(o) => {
            pending.insert(o.name_any(), o);
        }
        Event::InitDone => {
            *map = std::mem::take(pending);
            return true;
        }
    }
    false
}

/// The Secret (namespace, name) to read again after `ev`: that of a peer that is new or whose
/// spec changed (status writes leave the spec alone, so they cause no reads).
pub fn secret_touched(
    peers: &BTreeMap<String, WireGuardPeer>,
    ev: &Event<WireGuardPeer>,
) -> Option<(String, String)> {
    let Event::Apply(p) = ev else { return None };
    let r = p.spec.preshared_key_secret_ref.as_ref()?;
    let unchanged = peers.get(&p.name_any()).is_some_and(|o| o.spec == p.spec);
    (!unchanged).then(|| SecretKeyId::from(r).secret())
}

/// Reads one Secret by name.
async fn get_secret(client: Client, namespace: &str, name: &str) -> Result<Secret, PskError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    match tokio::time::timeout(SECRET_TIMEOUT, api.get(name)).await {
        Err(_) => Err(PskError::Api("timed out".into())),
        Ok(Ok(s)) => Ok(s),
        Ok(Err(kube::Error::Api(st))) if st.is_not_found() => Err(PskError::SecretNotFound),
        Ok(Err(kube::Error::Api(st))) if st.is_forbidden() => Err(PskError::Forbidden),
        Ok(Err(e)) => Err(PskError::Api(e.to_string())),
    }
}

/// Reads the Secrets in `fetch` that the peers still reference, drops keys no peer references
/// any more and publishes the result; the inputs are released even if reads failed.
async fn refresh_secrets(
    client: &Client,
    shared: &Mutex<Snapshot>,
    fetch: BTreeSet<(String, String)>,
) {
    let wanted = {
        let s = shared.lock().unwrap_or_else(|e| e.into_inner());
        psk::referenced(s.peers.values())
    };
    let due: BTreeSet<(String, String)> = wanted
        .iter()
        .map(SecretKeyId::secret)
        .filter(|s| fetch.contains(s))
        .collect();
    // all at once: the watch loop waits for this, so at most one SECRET_TIMEOUT in total
    let results = futures::future::join_all(
        due.iter()
            .map(|(ns, name)| get_secret(client.clone(), ns, name)),
    )
    .await;
    let read: BTreeMap<(String, String), Result<Secret, PskError>> =
        due.into_iter().zip(results).collect();
    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
    let mut next = PresharedKeys::default();
    for id in wanted {
        let old = s.preshared_keys.0.get(&id);
        let value = match read.get(&id.secret()) {
            None => old.cloned().unwrap_or(Err(PskError::NotRead)),
            Some(Ok(secret)) => psk::psk_from_secret(secret, &id.key),
            // a passing API failure must not take away a key that works
            Some(Err(e @ PskError::Api(_))) => match old {
                Some(Ok(k)) => {
                    tracing::warn!(secret = %format!("{}/{}", id.namespace, id.name), error = %e, "cannot read the preshared-key Secret; keeping the key read before");
                    Ok(k.clone())
                }
                _ => Err(e.clone()),
            },
            Some(Err(e)) => Err(e.clone()),
        };
        next.0.insert(id, value);
    }
    for mut secret in read.into_values().flatten() {
        psk::wipe(&mut secret);
    }
    s.psk_pending = false;
    if next != s.preshared_keys {
        s.preshared_keys = next;
        s.generation += 1;
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, KubeError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(KubeError::Runtime)
}

/// Handle held by the agent.
pub struct KubeSource {
    shared: Arc<Mutex<Snapshot>>,
    key: tokio::sync::watch::Sender<PublicKey>,
    reports: tokio::sync::mpsc::Sender<Vec<(String, SystemTime)>>,
    seen: u64,
    signals: Arc<Signals>,
}

/// What the agent's thread tells the watch loop.
#[derive(Default)]
struct Signals {
    stop: AtomicBool,
    /// The agent is ready: the not-ready taint may go.
    ready: AtomicBool,
}

impl KubeSource {
    /// Connects with the in-cluster (or kubeconfig) credentials and starts watching.
    pub fn start(node_name: &str, key: PublicKey) -> Result<Self, KubeError> {
        let rt = runtime()?;
        let client = rt.block_on(Client::try_default())?;
        Self::spawn(rt, client, node_name, key, SECRET_REFRESH)
    }

    /// Starts watching through `client` (tests pass one built on a mock service; its request
    /// buffer runs on the runtime it was created in).
    pub fn start_with_client(
        client: Client,
        node_name: &str,
        key: PublicKey,
        secret_refresh: Duration,
    ) -> Result<Self, KubeError> {
        Self::spawn(runtime()?, client, node_name, key, secret_refresh)
    }

    fn spawn(
        rt: tokio::runtime::Runtime,
        client: Client,
        node_name: &str,
        key: PublicKey,
        secret_refresh: Duration,
    ) -> Result<Self, KubeError> {
        let shared = Arc::new(Mutex::new(Snapshot::default()));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (key_tx, key_rx) = tokio::sync::watch::channel(key);
        let signals = Arc::new(Signals::default());
        let (s, n, sig) = (shared.clone(), node_name.to_owned(), signals.clone());
        std::thread::Builder::new()
            .name("kube".into())
            .spawn(move || rt.block_on(run(client, n, key_rx, s, rx, sig, secret_refresh)))
            .map_err(KubeError::Runtime)?;
        Ok(KubeSource {
            shared,
            key: key_tx,
            reports: tx,
            seen: 0,
            signals,
        })
    }

    /// The inputs, if they changed since the last call, both initial lists are complete and
    /// the Secrets of new or changed peers have been read.
    pub fn poll(&mut self) -> Option<MeshInput> {
        let snap = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if snap.generation == self.seen
            || !(snap.nodes_synced && snap.peers_synced)
            || snap.psk_pending
        {
            return None;
        }
        self.seen = snap.generation;
        Some(MeshInput {
            nodes: snap.nodes.values().cloned().collect(),
            peers: snap.peers.values().cloned().collect(),
            preshared_keys: snap.preshared_keys.clone(),
        })
    }

    /// A rotated key: published on the Node in place of the old one.
    pub fn set_public_key(&self, key: PublicKey) {
        self.key.send_replace(key);
    }

    /// The agent's readiness: once true, the not-ready taint is removed from our Node.
    pub fn set_ready(&self, ready: bool) {
        self.signals.ready.store(ready, Ordering::Relaxed);
    }

    /// Hands the latest handshakes (peer name, time) to the reporter; never blocks.
    pub fn report(&self, handshakes: Vec<(String, SystemTime)>) {
        let _ = self.reports.try_send(handshakes);
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.signals.stop.store(true, Ordering::Relaxed);
    }
}

fn bump(shared: &Mutex<Snapshot>, f: impl FnOnce(&mut Snapshot)) {
    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut s);
    s.generation += 1;
}

async fn run(
    client: Client,
    node_name: String,
    mut key_rx: tokio::sync::watch::Receiver<PublicKey>,
    shared: Arc<Mutex<Snapshot>>,
    mut reports: tokio::sync::mpsc::Receiver<Vec<(String, SystemTime)>>,
    signals: Arc<Signals>,
    secret_refresh: Duration,
) {
    let nodes = watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff();
    let peers = watcher::watcher(
        Api::<WireGuardPeer>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let mut nodes = std::pin::pin!(nodes);
    let mut peers = std::pin::pin!(peers);
    let (mut pending_nodes, mut pending_peers) = (BTreeMap::new(), BTreeMap::new());
    let mut limiter = ReportLimiter::default();
    let mut key_published = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut key = *key_rx.borrow_and_update();
    let mut secrets_read_at = Instant::now();
    // the Node version our taint patch went to: not sent again until the watch shows another
    let mut untaint_sent: Option<Option<String>> = None;
    while !signals.stop.load(Ordering::Relaxed) {
        tokio::select! {
            Ok(()) = key_rx.changed() => {
                key = *key_rx.borrow_and_update();
                key_published = false;
            },
            Some(ev) = nodes.next() => match ev {
                Ok(ev) => {
                    // our own Node lost or never had the key annotation: (re)publish it
                    let own_changed = matches!(&ev, Event::Apply(n) | Event::InitApply(n) if n.name_any() == node_name && key_patch(n, &key).is_some());
                    bump(&shared, |s| {
                        let done = apply_event(&mut s.nodes, &mut pending_nodes, ev);
                        s.nodes_synced |= done;
                    });
                    if own_changed {
                        key_published = false;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Node watch failed; retrying"),
            },
            Some(ev) = peers.next() => match ev {
                Ok(ev) => {
                    let mut fetch = BTreeSet::new();
                    bump(&shared, |s| {
                        fetch.extend(secret_touched(&s.peers, &ev));
                        let done = apply_event(&mut s.peers, &mut pending_peers, ev);
                        s.peers_synced |= done;
                        if done {
                            fetch.extend(psk::referenced(s.peers.values()).iter().map(SecretKeyId::secret));
                        }
                        s.psk_pending |= s.peers_synced && !fetch.is_empty();
                    });
                    if shared.lock().unwrap_or_else(|e| e.into_inner()).peers_synced {
                        refresh_secrets(&client, &shared, fetch).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "WireGuardPeer watch failed; retrying"),
            },
            Some(observed) = reports.recv() => {
                let current = |name: &str| {
                    let s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    s.peers.get(name).and_then(|p| p.status.as_ref()?.latest_handshake.as_ref().map(|t| SystemTime::from(t.0)))
                };
                for (name, at) in limiter.due(Instant::now(), &observed, current) {
                    if let Err(e) = write_handshake(client.clone(), &name, at).await {
                        tracing::warn!(peer = %name, error = %e, "cannot report the handshake");
                    }
                }
            },
            _ = tick.tick() => {
                let synced = shared.lock().unwrap_or_else(|e| e.into_inner()).peers_synced;
                if synced && secrets_read_at.elapsed() >= secret_refresh {
                    let all = {
                        let s = shared.lock().unwrap_or_else(|e| e.into_inner());
                        psk::referenced(s.peers.values()).iter().map(SecretKeyId::secret).collect()
                    };
                    refresh_secrets(&client, &shared, all).await;
                    secrets_read_at = Instant::now();
                }
                let own = signals.ready.load(Ordering::Relaxed).then(|| shared.lock().unwrap_or_else(|e| e.into_inner()).nodes.get(&node_name).cloned()).flatten();
                if let Some(patch) = own.as_ref().filter(|n| untaint_sent.as_ref() != Some(&n.metadata.resource_version)).and_then(untaint_patch) {
                    match Api::<Node>::all(client.clone()).patch(&node_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                        Ok(_) => {
                            untaint_sent = own.map(|n| n.metadata.resource_version);
                            tracing::info!(node = %node_name, taint = NOT_READY_TAINT, "ready: removed the not-ready taint");
                        }
                        // a conflict means the watch brings a newer Node; anything else retries next tick
                        Err(e) => tracing::warn!(node = %node_name, error = %e, "cannot remove the not-ready taint; retrying"),
                    }
                }
                if !key_published {
                    match publish_key(client.clone(), &node_name, &key).await {
                        Ok(changed) => {
                            key_published = true;
                            if changed {
                                tracing::info!(node = %node_name, public_key = %key, "published the public key on the Node");
                            }
                        }
                        Err(e) => tracing::warn!(node = %node_name, error = %e, "cannot publish the public key; retrying"),
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, key: Option<&str>) -> Node {
        let mut n = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        if let Some(k) = key {
            n.metadata.annotations = Some([(PUBLIC_KEY.to_owned(), k.to_owned())].into());
        }
        n
    }

    #[test]
    fn the_untaint_patch_removes_only_our_taint_and_is_bound_to_the_version_seen() {
        use k8s_openapi::api::core::v1::{NodeSpec, Taint};
        let taint = |key: &str| Taint { key: key.into(), effect: "NoSchedule".into(), ..Taint::default() };
        let mut n = node("n1", None);
        n.metadata.resource_version = Some("41".into());
        assert!(untaint_patch(&n).is_none(), "no taints at all");
        n.spec = Some(NodeSpec { taints: Some(vec![taint("dedicated")]), ..NodeSpec::default() });
        assert!(untaint_patch(&n).is_none(), "not ours");
        n.spec = Some(NodeSpec { taints: Some(vec![taint(NOT_READY_TAINT), taint("dedicated")]), ..NodeSpec::default() });
        let p = untaint_patch(&n).expect("patch");
        assert_eq!(p["metadata"]["resourceVersion"], json!("41"));
        assert_eq!(p["spec"]["taints"], json!([{"key": "dedicated", "effect": "NoSchedule"}]));
        n.spec = Some(NodeSpec { taints: Some(vec![taint(NOT_READY_TAINT)]), ..NodeSpec::default() });
        // the last taint: the field goes (null in a merge patch)
        assert!(untaint_patch(&n).expect("patch")["spec"]["taints"].is_null());
    }

    #[test]
    fn key_patch_only_when_the_annotation_differs() {
        let k = PublicKey::from_bytes([3; 32]);
        assert!(key_patch(&node("n1", Some(&k.to_string())), &k).is_none());
        let p = key_patch(&node("n1", None), &k).expect("patch");
        assert_eq!(
            p["metadata"]["annotations"][PUBLIC_KEY],
            json!(k.to_string())
        );
        assert!(key_patch(&node("n1", Some("old")), &k).is_some());
    }

    #[test]
    fn reports_are_bounded_per_peer_and_per_round() {
        let mut l = ReportLimiter::default();
        let t0 = Instant::now();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let obs: Vec<(String, SystemTime)> = (0..8).map(|i| (format!("p{i}"), at)).collect();
        let first = l.due(t0, &obs, |_| None);
        assert_eq!(first.len(), REPORTS_PER_ROUND);
        let second = l.due(t0, &obs, |_| None);
        assert_eq!(second.len(), 3, "the rest next round");
        assert!(
            l.due(t0 + Duration::from_secs(10), &obs, |_| None)
                .is_empty(),
            "not again within the interval"
        );
        // someone (another node) already reported a recent handshake: nothing to write
        let mut fresh = ReportLimiter::default();
        assert!(fresh
            .due(t0, &obs, |_| Some(at - Duration::from_secs(30)))
            .is_empty());
        assert_eq!(
            fresh
                .due(t0, &obs, |_| Some(at - Duration::from_secs(120)))
                .len(),
            REPORTS_PER_ROUND
        );
    }

    fn peer(name: &str, secret: Option<&str>, allowed: &str) -> WireGuardPeer {
        WireGuardPeer::new(
            name,
            wgmesh_api::WireGuardPeerSpec {
                public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into(),
                endpoint: None,
                allowed_ips: vec![allowed.into()],
                persistent_keepalive: None,
                preshared_key_secret_ref: secret.map(|s| wgmesh_api::SecretKeyRef {
                    namespace: "ns".into(),
                    name: s.into(),
                    key: "psk".into(),
                }),
                node_name: None,
            },
        )
    }

    #[test]
    fn secrets_are_read_again_only_for_new_or_changed_peers() {
        let want = Some(("ns".to_owned(), "s1".to_owned()));
        let mut peers = BTreeMap::new();
        let p = peer("a", Some("s1"), "10.8.0.0/24");
        assert_eq!(secret_touched(&peers, &Event::Apply(p.clone())), want);
        peers.insert("a".to_owned(), p.clone());
        // a status write (same spec) reads nothing
        let mut status_only = p.clone();
        status_only.status = Some(wgmesh_api::WireGuardPeerStatus::default());
        assert_eq!(secret_touched(&peers, &Event::Apply(status_only)), None);
        assert_eq!(
            secret_touched(&peers, &Event::Apply(peer("a", Some("s1"), "10.9.0.0/24"))),
            want
        );
        assert_eq!(
            secret_touched(&peers, &Event::Apply(peer("b", None, "10.9.0.0/24"))),
            None
        );
        assert_eq!(secret_touched(&peers, &Event::Delete(p.clone())), None);
        assert_eq!(secret_touched(&peers, &Event::InitApply(p)), None);
    }

    #[test]
    fn relists_replace_the_map() {
        let mut map = BTreeMap::new();
        let mut pending = BTreeMap::new();
        assert!(!apply_event(
            &mut map,
            &mut pending,
            Event::Apply(node("a", None))
        ));
        assert!(!apply_event(&mut map, &mut pending, Event::Init));
        assert!(!apply_event(
            &mut map,
            &mut pending,
            Event::InitApply(node("b", None))
        ));
        assert!(apply_event(&mut map, &mut pending, Event::InitDone));
        assert_eq!(map.keys().collect::<Vec<_>>(), ["b"]);
        apply_event(&mut map, &mut pending, Event::Delete(node("b", None)));
        assert!(map.is_empty());
    }
}
