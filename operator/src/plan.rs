//! The controller as a pure function: observed Nodes and peers (plus the time and what was
//! already reported) in, the exact list of writes out. Everything the API would be asked to do
//! is decided here and unit-testable without a cluster; `execute` only carries it out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use wgmesh_api::annotations::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use wgmesh_api::conditions::Reason;
use wgmesh_api::mesh::is_managed_node_peer;
use wgmesh_api::{Member, MemberKind, Mesh, MeshConfig, WireGuardPeer, WireGuardPeerStatus};

use crate::status::{desired_status, observed_validity, status_matches};

/// Severity of a planned Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Something got better.
    Normal,
    /// Needs a human.
    Warning,
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedEvent {
    /// Object the Event is about.
    pub regarding: ObjectReference,
    /// Normal or Warning.
    pub severity: Severity,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable note.
    pub note: String,
}

/// Everything one reconcile will write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Node peers to server-side apply (full object: metadata, spec).
    pub applies: Vec<WireGuardPeer>,
    /// Node peers holding something another field manager added (a key, an allowedIPs entry),
    /// which a forced apply leaves in place: JSON merge patches making them the projection.
    pub repairs: Vec<(String, serde_json::Value)>,
    /// Node peers to delete (their Node left the mesh or is gone).
    pub deletes: Vec<String>,
    /// Status to server-side apply, by peer name.
    pub statuses: Vec<(String, WireGuardPeerStatus)>,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
    /// Reconcile again after this long even if nothing is observed (handshake ageing).
    pub requeue_after: Option<Duration>,
    /// Node problems reported so far (node name -> message), to pass to the next plan.
    pub reported_node_problems: BTreeMap<String, String>,
    /// Valid / invalid member counts, for metrics.
    pub valid_members: usize,
    /// Members excluded from distribution.
    pub invalid_members: usize,
}

impl Plan {
    /// True if the plan writes nothing.
    pub fn is_noop(&self) -> bool {
        self.applies.is_empty()
            && self.repairs.is_empty()
            && self.deletes.is_empty()
            && self.statuses.is_empty()
            && self.events.is_empty()
    }
}

/// The `WireGuardPeer` the operator keeps for `node`.
pub fn node_peer(node: &Node, member: &Member) -> Option<WireGuardPeer> {
    let spec = member.node_peer_spec()?;
    let mut peer = WireGuardPeer::new(&member.name, spec);
    peer.metadata = ObjectMeta {
        name: Some(member.name.clone()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_owned(),
            MANAGED_BY_VALUE.to_owned(),
        )])),
        // deleting the Node deletes its peer even while the operator is down
        owner_references: Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.name_any(),
            uid: node.metadata.uid.clone()?,
            controller: Some(true),
            block_owner_deletion: None,
        }]),
        ..ObjectMeta::default()
    };
    Some(peer)
}

fn same_projection(observed: &WireGuardPeer, desired: &WireGuardPeer) -> bool {
    let labels_ok =
        observed.labels().get(MANAGED_BY_LABEL) == desired.labels().get(MANAGED_BY_LABEL);
    let owners = |p: &WireGuardPeer| p.metadata.owner_references.clone().unwrap_or_default();
    let owner_ok = owners(desired).iter().all(|d| {
        owners(observed)
            .iter()
            .any(|o| o.uid == d.uid && o.kind == d.kind)
    });
    observed.spec == desired.spec && labels_ok && owner_ok
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Whether `observed` holds a key or a list element that `desired` lacks. A forced server-side
/// apply takes over fields whose values differ, but leaves what another manager added, so the
/// object would never match and be applied again on every reconcile, its status frozen.
fn has_extra(observed: &serde_json::Value, desired: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (observed, desired) {
        (Value::Object(o), Value::Object(d)) => o.iter().any(|(k, v)| d.get(k).is_none_or(|dv| has_extra(v, dv))),
        (Value::Array(o), Value::Array(d)) => o.iter().any(|v| !d.contains(v)),
        _ => false,
    }
}

/// A JSON merge patch (RFC 7386) that turns `observed` into exactly `desired`: keys only
/// `observed` has become null, lists are replaced whole.
fn merge_patch(observed: &serde_json::Value, desired: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (observed, desired) {
        (Value::Object(o), Value::Object(d)) => {
            let gone = o.keys().filter(|k| !d.contains_key(*k)).map(|k| (k.clone(), Value::Null));
            let set = d.iter().map(|(k, v)| (k.clone(), o.get(k).map_or_else(|| v.clone(), |ov| merge_patch(ov, v))));
            Value::Object(gone.chain(set).collect())
        }
        _ => desired.clone(),
    }
}

/// The merge patch that makes a node peer the operator's projection again: our label, our
/// owner reference, and the spec with nothing else in it. Node peers belong to the operator;
/// an edit does not reach the mesh (built from Nodes), so it is taken back, not shown.
fn repair(observed: &WireGuardPeer, desired: &WireGuardPeer) -> serde_json::Value {
    // a merge patch replaces the list whole: keep the owners `same_projection` tolerates, but
    // not a Node of the same name that was deleted and registered again (another UID): two
    // controller references are refused, and the repair would fail on every turn
    let node_uids: Vec<&str> = desired.metadata.owner_references.iter().flatten().filter(|d| d.kind == "Node").map(|d| d.uid.as_str()).collect();
    let mut owners = observed.metadata.owner_references.clone().unwrap_or_default();
    owners.retain(|o| o.kind != "Node" || node_uids.contains(&o.uid.as_str()));
    for d in desired.metadata.owner_references.iter().flatten() {
        if !owners.iter().any(|o| o.uid == d.uid && o.kind == d.kind) {
            owners.push(d.clone());
        }
    }
    serde_json::json!({
        "metadata": {
            "labels": desired.metadata.labels,
            "ownerReferences": owners,
        },
        "spec": merge_patch(&to_json(&observed.spec), &to_json(&desired.spec)),
    })
}

fn transition_event(peer: &WireGuardPeer, member: &Member) -> Option<PlannedEvent> {
    let before = observed_validity(peer);
    let regarding = peer.object_ref(&());
    match (&member.verdict, before) {
        (Err(p), before)
            if before
                .as_ref()
                .is_none_or(|(ok, r)| *ok || r != p.reason.as_str()) =>
        {
            Some(PlannedEvent {
                regarding,
                severity: Severity::Warning,
                reason: p.reason.as_str().to_owned(),
                note: format!("excluded from the mesh: {}", p.message),
            })
        }
        (Ok(()), Some((false, _))) => Some(PlannedEvent {
            regarding,
            severity: Severity::Normal,
            reason: Reason::Accepted.as_str().to_owned(),
            note: "peer is valid again and distributed to all nodes".into(),
        }),
        _ => None,
    }
}

/// Computes every write needed to make the cluster match the mesh built from `nodes`/`peers`.
pub fn plan(
    nodes: &[&Node],
    peers: &[&WireGuardPeer],
    config: &MeshConfig,
    now: Timestamp,
    reported_node_problems: &BTreeMap<String, String>,
) -> Plan {
    let mesh = Mesh::build(nodes.iter().copied(), peers.iter().copied(), config);
    let mut out = Plan::default();

    // borrowed keys: this runs over every object on every reconcile
    let nodes_by_name: HashMap<&str, &Node> = nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, *n)))
        .collect();
    let observed_by_name: HashMap<&str, &WireGuardPeer> = peers
        .iter()
        .filter_map(|p| Some((p.metadata.name.as_deref()?, *p)))
        .collect();
    let mut node_members: HashMap<&str, &Member> = HashMap::new();
    let mut external_members: HashMap<&str, &Member> = HashMap::new();
    for m in mesh.members() {
        match &m.kind {
            MemberKind::Node { node_name } => node_members.insert(node_name, m),
            MemberKind::External => external_members.insert(&m.name, m),
        };
        if m.is_valid() {
            out.valid_members += 1;
        } else {
            out.invalid_members += 1;
        }
    }

    // node peers: create or update the projection of every node member
    let mut pending_apply: HashSet<&str> = HashSet::new();
    for (node_name, member) in &node_members {
        let Some(node) = nodes_by_name.get(node_name) else {
            continue;
        };
        let Some(desired) = node_peer(node, member) else {
            continue;
        };
        match observed_by_name.get(member.name.as_str()) {
            // never take over an object a user created under the reserved name
            Some(obs) if !is_managed_node_peer(obs) => continue,
            Some(obs) if same_projection(obs, &desired) => {}
            Some(obs) if has_extra(&to_json(&obs.spec), &to_json(&desired.spec)) => {
                pending_apply.insert(&member.name);
                out.repairs.push((member.name.clone(), repair(obs, &desired)));
            }
            _ => {
                pending_apply.insert(&member.name);
                out.applies.push(desired);
            }
        }
    }
    out.applies
        .sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out.repairs.sort_by(|a, b| a.0.cmp(&b.0));

    // statuses and transition Events for every observed peer
    let mut requeue: Option<Duration> = None;
    let mut sorted_peers: Vec<&WireGuardPeer> = peers.to_vec();
    sorted_peers.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for peer in sorted_peers {
        let name = peer.name_any();
        if peer.metadata.deletion_timestamp.is_some() || pending_apply.contains(&name.as_str()) {
            // the spec is about to change; status follows once the new generation is observed
            continue;
        }
        let member = if is_managed_node_peer(peer) {
            let node_name = peer.spec.node_name.as_deref().unwrap_or_default();
            match node_members.get(node_name) {
                Some(m) if m.name == name => *m,
                // node gone, keyless, or a stray name: the peer is deleted below
                _ => {
                    out.deletes.push(name);
                    continue;
                }
            }
        } else {
            match external_members.get(name.as_str()) {
                Some(m) => *m,
                None => continue,
            }
        };
        let desired = desired_status(peer, member, now);
        if let Some(t) = desired.expires_in {
            requeue = Some(requeue.map_or(t, |r| r.min(t)));
        }
        if !status_matches(peer.status.as_ref(), &desired.status) {
            out.events.extend(transition_event(peer, member));
            out.statuses.push((name, desired.status));
        }
    }
    out.deletes.sort();
    out.statuses.sort_by(|a, b| a.0.cmp(&b.0));
    out.requeue_after = requeue;

    // node problems: one Warning per new or changed problem, not one per reconcile
    for (node_name, problem) in mesh.node_problems() {
        let Some(node) = nodes_by_name.get(node_name.as_str()) else {
            continue;
        };
        if reported_node_problems.get(node_name) != Some(&problem.message) {
            out.events.push(PlannedEvent {
                regarding: node.object_ref(&()),
                severity: Severity::Warning,
                reason: problem.reason.as_str().to_owned(),
                note: format!("node excluded from the wgmesh mesh: {}", problem.message),
            });
        }
        out.reported_node_problems
            .insert(node_name.clone(), problem.message.clone());
    }
    out
}
