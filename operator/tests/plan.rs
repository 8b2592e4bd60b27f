//! The controller's pure function: which writes a reconcile plans for each situation.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use wgmesh_api::annotations::{self, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use wgmesh_api::conditions::{READY, VALID};
use wgmesh_api::fixtures::{annotate, external, key, node, ts};
use wgmesh_api::{Mesh, MeshConfig, WireGuardPeer, WireGuardPeerStatus};
use wgmesh_operator::plan::{node_peer, plan, Plan, Severity};
use wgmesh_operator::status::desired_status;

const NOW: i64 = 1_800_000_000;

fn now() -> Timestamp {
    ts(NOW).0
}

fn run(nodes: &[Node], peers: &[WireGuardPeer]) -> Plan {
    run_reported(nodes, peers, &BTreeMap::new())
}

fn run_reported(
    nodes: &[Node],
    peers: &[WireGuardPeer],
    reported: &BTreeMap<String, String>,
) -> Plan {
    let n: Vec<&Node> = nodes.iter().collect();
    let p: Vec<&WireGuardPeer> = peers.iter().collect();
    plan(&n, &p, &MeshConfig::default(), now(), reported)
}

/// What the API server would hold after the operator applied `peer` and its status.
fn synced(nodes: &[Node], peers: &[WireGuardPeer]) -> Vec<WireGuardPeer> {
    let mesh = Mesh::build(nodes, peers, &MeshConfig::default());
    let mut out: Vec<WireGuardPeer> = Vec::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let Some(m) = mesh
            .members()
            .iter()
            .find(|m| m.node_name() == Some(name.as_str()))
        else {
            continue;
        };
        if let Some(mut p) = node_peer(n, m) {
            p.metadata.generation = Some(1);
            p.metadata.creation_timestamp = Some(ts(1));
            p.status = Some(desired_status(&p, m, now()).status);
            out.push(p);
        }
    }
    for p in peers {
        let mut p = p.clone();
        if let Some(m) = mesh
            .members()
            .iter()
            .find(|m| m.name == p.metadata.name.clone().unwrap_or_default())
        {
            p.status = Some(desired_status(&p, m, now()).status);
        }
        out.push(p);
    }
    out
}

fn cond<'a>(s: &'a WireGuardPeerStatus, t: &str) -> (&'a str, &'a str) {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
        .unwrap_or(("", ""))
}

fn nodes2() -> Vec<Node> {
    vec![
        node(
            "a",
            Some(&key(1)),
            "192.168.0.1",
            &["10.244.0.0/24", "fd00:0::/64"],
        ),
        node(
            "b",
            Some(&key(2)),
            "192.168.0.2",
            &["10.244.1.0/24", "fd00:1::/64"],
        ),
    ]
}

#[test]
fn new_node_gets_a_node_peer_with_owner_reference_and_label() {
    let p = run(&nodes2(), &[]);
    assert_eq!(p.applies.len(), 2);
    let a = &p.applies[0];
    assert_eq!(a.metadata.name.as_deref(), Some("node-a"));
    assert_eq!(a.spec.public_key, key(1));
    assert_eq!(a.spec.endpoint.as_deref(), Some("192.168.0.1:51820"));
    assert_eq!(a.spec.allowed_ips, ["10.244.0.0/24", "fd00::/64"]);
    assert_eq!(a.spec.node_name.as_deref(), Some("a"));
    let owner = a.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owner.len(), 1);
    assert_eq!(
        (owner[0].kind.as_str(), owner[0].uid.as_str()),
        ("Node", "uid-a")
    );
    assert_eq!(
        a.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .map(String::as_str),
        Some(MANAGED_BY_VALUE)
    );
    // status waits for the new generation to be observed
    assert!(p.statuses.is_empty() && p.events.is_empty() && p.deletes.is_empty());
}

#[test]
fn nothing_is_written_when_everything_is_in_sync() {
    let nodes = nodes2();
    let peers = vec![external(
        "office",
        &key(100),
        Some("vpn.example.com:51820"),
        &["172.20.0.0/16"],
        1,
    )];
    let observed = synced(&nodes, &peers);
    let p = run(&nodes, &observed);
    assert!(p.is_noop(), "{p:?}");
}

#[test]
fn applied_peer_without_status_gets_valid_and_ready_conditions() {
    let nodes = nodes2();
    let mut observed = synced(&nodes, &[]);
    for p in &mut observed {
        p.status = None;
    }
    let p = run(&nodes, &observed);
    assert_eq!(p.statuses.len(), 2);
    let (name, st) = &p.statuses[0];
    assert_eq!(name, "node-a");
    assert_eq!(cond(st, VALID), ("True", "Accepted"));
    assert_eq!(cond(st, READY), ("False", "NoHandshake"));
    assert_eq!(st.observed_generation, Some(1));
    assert!(st
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(1)));
    assert_eq!(st.distributed_allowed_ips, ["10.244.0.0/24", "fd00::/64"]);
    assert!(p.events.is_empty(), "a new valid peer is not news");
}

#[test]
fn changed_node_key_reapplies_the_spec() {
    let nodes = nodes2();
    let observed = synced(&nodes, &[]);
    let mut changed = nodes.clone();
    changed[1] = annotate(changed[1].clone(), annotations::PUBLIC_KEY, &key(22));
    let p = run(&changed, &observed);
    assert_eq!(p.applies.len(), 1);
    assert_eq!(p.applies[0].spec.public_key, key(22));
    assert_eq!(
        p.applies[0].spec.allowed_ips,
        ["10.244.1.0/24", "fd00:1::/64"]
    );
    assert!(
        p.statuses.is_empty(),
        "status follows after the new generation is observed"
    );
}

#[test]
fn deleted_node_or_removed_key_deletes_its_peer() {
    let nodes = nodes2();
    let observed = synced(&nodes, &[]);
    let p = run(&nodes[..1], &observed);
    assert_eq!(p.deletes, ["node-b"]);
    assert!(p.applies.is_empty() && p.statuses.is_empty());

    let mut keyless = nodes.clone();
    if let Some(a) = keyless[1].metadata.annotations.as_mut() {
        a.remove(annotations::PUBLIC_KEY);
    }
    assert_eq!(run(&keyless, &observed).deletes, ["node-b"]);
}

#[test]
fn invalid_peer_gets_status_and_one_warning_event_then_nothing() {
    let nodes = nodes2();
    let bad = external("steals", &key(100), None, &["10.244.1.0/25"], 1);
    let observed = synced(&nodes, &[]);
    let mut all = observed.clone();
    all.push(bad.clone());
    let p = run(&nodes, &all);
    assert_eq!(p.statuses.len(), 1);
    let (name, st) = &p.statuses[0];
    assert_eq!(name, "steals");
    assert_eq!(cond(st, VALID), ("False", "PodCIDROverlap"));
    assert_eq!(cond(st, READY), ("False", "NotValid"));
    assert!(st.distributed_allowed_ips.is_empty());
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.events[0].severity, Severity::Warning);
    assert_eq!(p.events[0].reason, "PodCIDROverlap");
    assert_eq!(p.events[0].regarding.name.as_deref(), Some("steals"));
    assert!(
        p.events[0].note.contains("10.244.1.0/24"),
        "{}",
        p.events[0].note
    );
    assert_eq!(p.invalid_members, 1);

    let again = run(&nodes, &synced(&nodes, &[bad]));
    assert!(again.is_noop(), "{again:?}");
}

#[test]
fn fixed_peer_becomes_valid_with_a_normal_event() {
    let nodes = nodes2();
    let bad = external("office", &key(100), None, &["10.244.1.0/25"], 1);
    let mut observed = synced(&nodes, &[bad]);
    let office = observed
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("office"));
    let Some(office) = office else {
        panic!("office missing")
    };
    office.spec.allowed_ips = vec!["172.20.0.0/16".into()];
    office.metadata.generation = Some(2);
    let p = run(&nodes, &observed);
    assert_eq!(p.statuses.len(), 1);
    assert_eq!(cond(&p.statuses[0].1, VALID), ("True", "Accepted"));
    assert_eq!(p.statuses[0].1.observed_generation, Some(2));
    assert_eq!(p.events.len(), 1);
    assert_eq!(
        (p.events[0].severity, p.events[0].reason.as_str()),
        (Severity::Normal, "Accepted")
    );
}

#[test]
fn transition_time_is_kept_while_a_condition_holds() {
    let nodes = nodes2();
    let mut observed = synced(&nodes, &[]);
    for p in &mut observed {
        if let Some(st) = p.status.as_mut() {
            for c in &mut st.conditions {
                c.last_transition_time = ts(5);
            }
            // force a rewrite through another field
            st.distributed_allowed_ips.clear();
        }
    }
    let p = run(&nodes, &observed);
    assert_eq!(p.statuses.len(), 2);
    assert!(p.statuses[0]
        .1
        .conditions
        .iter()
        .all(|c| c.last_transition_time == ts(5)));
}

#[test]
fn ready_follows_the_agents_handshake_and_requeues_before_it_goes_stale() {
    let nodes = nodes2();
    let mut observed = synced(&nodes, &[]);
    if let Some(st) = observed[0].status.as_mut() {
        st.latest_handshake = Some(ts(NOW - 60));
    }
    let p = run(&nodes, &observed);
    assert_eq!(p.statuses.len(), 1);
    assert_eq!(cond(&p.statuses[0].1, READY), ("True", "HandshakeRecent"));
    assert_eq!(
        p.statuses[0].1.latest_handshake, None,
        "the agents own latestHandshake"
    );
    assert_eq!(p.requeue_after, Some(Duration::from_secs(120)));

    if let Some(st) = observed[0].status.as_mut() {
        st.latest_handshake = Some(ts(NOW - 600));
    }
    let p = run(&nodes, &observed);
    assert_eq!(p.statuses.len(), 1);
    assert_eq!(cond(&p.statuses[0].1, READY), ("False", "HandshakeStale"));
    assert_eq!(
        p.requeue_after, None,
        "nothing will change by itself any more"
    );
}

#[test]
fn a_user_object_under_a_node_peer_name_is_never_taken_over() {
    let nodes = nodes2();
    let squatter = external("node-a", &key(100), None, &["172.20.0.0/16"], 1);
    let observed = vec![squatter];
    let p = run(&nodes, &observed);
    assert_eq!(p.applies.len(), 1);
    assert_eq!(p.applies[0].metadata.name.as_deref(), Some("node-b"));
    assert_eq!(p.statuses.len(), 1);
    assert_eq!(cond(&p.statuses[0].1, VALID), ("False", "NameReserved"));
    assert!(p.deletes.is_empty());
}

#[test]
fn node_problems_are_reported_once_per_change() {
    let mut nodes = nodes2();
    nodes[1] = annotate(nodes[1].clone(), annotations::PUBLIC_KEY, "garbage");
    let p = run(&nodes, &[]);
    let node_events: Vec<_> = p
        .events
        .iter()
        .filter(|e| e.regarding.kind.as_deref() == Some("Node"))
        .collect();
    assert_eq!(node_events.len(), 1);
    assert_eq!(node_events[0].reason, "InvalidPublicKey");
    assert_eq!(p.applies.len(), 1, "only node a gets a peer");
    let again = run_reported(&nodes, &[], &p.reported_node_problems);
    assert!(again.events.is_empty());
}

/// RFC 7386, as the API server applies a merge patch.
fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[test]
fn fields_another_manager_added_to_a_node_peer_are_taken_back_then_status_follows() {
    let nodes = nodes2();
    let projection = synced(&nodes, &[]);
    let mut observed = projection.clone();
    // A value another manager changed: a forced apply takes it back, as before.
    observed[1].spec.endpoint = Some("203.0.113.9:51820".into());
    let p = run(&nodes, &observed);
    assert_eq!((p.applies.len(), p.repairs.len()), (1, 0), "{p:?}");

    // Additions (a set entry, a key we do not set): a forced apply would leave both, and the
    // peer would be re-applied on every reconcile with its status never written.
    observed[1] = projection[1].clone();
    observed[1].spec.allowed_ips.push("192.0.2.0/24".into());
    observed[1].spec.persistent_keepalive = Some(25);
    observed[1].status = None;
    let mut other_owner = observed[1].metadata.owner_references.clone().unwrap_or_default()[0].clone();
    (other_owner.kind, other_owner.uid, other_owner.controller) = ("ConfigMap".into(), "cm-uid".into(), None);
    observed[1].metadata.owner_references.get_or_insert_default().push(other_owner);
    let p = run(&nodes, &observed);
    assert!(p.applies.is_empty() && p.statuses.is_empty(), "{p:?}");
    assert_eq!(p.repairs.len(), 1);
    let (name, patch) = &p.repairs[0];
    assert_eq!(name, "node-b");
    assert_eq!(patch["spec"]["allowedIPs"], serde_json::json!(["10.244.1.0/24", "fd00:1::/64"]));
    assert!(patch["spec"].get("persistentKeepalive").is_some_and(|v| v.is_null()), "{patch}");
    assert_eq!(patch["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY_VALUE);
    let kinds: Vec<&str> = patch["metadata"]["ownerReferences"].as_array().into_iter().flatten().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, ["Node", "ConfigMap"], "a merge patch replaces the list: the other owner must be in it");

    let mut stored = serde_json::to_value(&observed[1]).unwrap_or_default();
    merge(&mut stored, patch);
    let repaired: WireGuardPeer = serde_json::from_value(stored).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(repaired.spec, projection[1].spec, "the patch makes the spec the projection");
    observed[1] = repaired;
    let p = run(&nodes, &observed);
    assert!(p.applies.is_empty() && p.repairs.is_empty(), "{p:?}");
    assert_eq!(p.statuses.len(), 1, "the status is written once the spec is ours again");
}

#[test]
fn a_node_registered_again_under_its_name_owns_its_peer_alone() {
    // Node b deleted and registered again (new UID) with another pod CIDR before the garbage
    // collector removed its peer: the repair names only the new Node as controller (the API
    // refuses two controller references, and the repair would fail on every turn).
    let old = nodes2();
    let observed = synced(&old, &[]);
    let mut new = nodes2();
    new[1] = node("b", Some(&key(2)), "192.168.0.2", &["10.244.9.0/24"]);
    new[1].metadata.uid = Some("uid-b-again".into());
    let p = run(&new, &observed);
    let owners = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter(|o| o["kind"] == "Node").filter_map(|o| o["uid"].as_str().map(str::to_owned)).collect()
    };
    let written: Vec<Vec<String>> = p
        .repairs
        .iter()
        .map(|(_, patch)| owners(&patch["metadata"]["ownerReferences"]))
        .chain(p.applies.iter().map(|a| owners(&serde_json::to_value(&a.metadata.owner_references).unwrap_or_default())))
        .collect();
    assert_eq!(written, vec![vec!["uid-b-again".to_owned()]], "{p:?}");
}
