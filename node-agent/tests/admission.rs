//! The ValidatingAdmissionPolicy in deploy/node-agent/ that keeps the agent's token to its own
//! Node, evaluated offline: its CEL expressions run in the `cel` crate (the interpreter
//! kube-cel builds on) against the agent's real patches applied to Nodes. No API server is
//! involved: this shows what the expressions say, not that a kube-apiserver type-checks them.

use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use kube_cel::cel::{self, Context, Program};
use serde::Deserialize;
use serde_json::{json, Value};
use wgmesh_api::annotations::PUBLIC_KEY;
use wgmesh_api::constants::NOT_READY_TAINT;
use wgmesh_api::fixtures::key;
use wgmesh_api::PublicKey;
use wgmesh_node_agent::source_kube::{key_patch, untaint_patch};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/node-agent/node-agent.yaml");
const AGENT: &str = "system:serviceaccount:wgmesh-system:wgmesh-node";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";

const OWN_NODE: &str = "wgmesh-node-own-node";
const HANDSHAKE_ONLY: &str = "wgmesh-node-handshake-only";

fn doc(kind: &str, name: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(FILE)).unwrap_or_else(|e| panic!("{FILE}: {e}"));
    let found = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{FILE}: {e}")))
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name);
    found.unwrap_or_else(|| panic!("no {kind} {name} in {FILE}"))
}

fn policy(name: &str) -> ValidatingAdmissionPolicy {
    serde_json::from_value(doc("ValidatingAdmissionPolicy", name)).unwrap_or_else(|e| panic!("policy: {e}"))
}

/// What the API server would answer for a Node update: see `admit_by`.
fn admit(user: &str, node_of_token: Option<&str>, old: &Value, new: &Value) -> Result<(), String> {
    admit_by(OWN_NODE, user, node_of_token, old, new)
}

/// What the API server would answer: Ok when policy `name` does not apply or every validation
/// holds, else the message of the first that fails.
fn admit_by(name: &str, user: &str, node_of_token: Option<&str>, old: &Value, new: &Value) -> Result<(), String> {
    let spec = policy(name).spec.unwrap_or_default();
    let extra = match node_of_token {
        Some(n) => json!({ NODE_NAME: [n] }),
        None => json!({}),
    };
    let request = json!({"operation": "UPDATE", "userInfo": {"username": user, "extra": extra}});
    let mut ctx = Context::default();
    for (name, v) in [("request", &request), ("object", new), ("oldObject", old)] {
        ctx.add_variable(name, cel::to_value(v).unwrap_or_else(|e| panic!("{name}: {e}"))).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let holds = |expr: &str| match Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}")).execute(&ctx) {
        Ok(cel::Value::Bool(b)) => b,
        other => panic!("{expr}: {other:?}"),
    };
    if !spec.match_conditions.unwrap_or_default().iter().all(|c| holds(&c.expression)) {
        return Ok(());
    }
    for v in spec.validations.unwrap_or_default() {
        if !holds(&v.expression) {
            return Err(v.message.unwrap_or_default());
        }
    }
    Ok(())
}

/// RFC 7386: what a merge patch makes of `target`.
fn merge(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else { return patch.clone() };
    let mut out = target.as_object().cloned().unwrap_or_default();
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

fn node(name: &str, taints: &[&str]) -> Value {
    let taints: Vec<Value> = taints.iter().map(|k| json!({"key": k, "effect": "NoSchedule"})).collect();
    let mut n = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": "42",
            "labels": {"kubernetes.io/hostname": name},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "wgmesh.io/endpoint": "192.0.2.7:51820"}},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
    });
    if !taints.is_empty() {
        n["spec"]["taints"] = Value::Array(taints);
    }
    n
}

fn typed(v: &Value) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("node: {e}"))
}

fn publish(n: &Value) -> Value {
    let k: PublicKey = key(7).parse().unwrap_or_else(|e| panic!("key: {e:?}"));
    merge(n, &key_patch(&typed(n), &k).unwrap_or_else(|| panic!("no key patch")))
}

fn untaint(n: &Value) -> Value {
    merge(n, &untaint_patch(&typed(n)).unwrap_or_else(|| panic!("no untaint patch")))
}

#[test]
fn the_policies_cover_the_agents_updates_and_are_bound_to_deny() {
    for (name, resource) in [(OWN_NODE, "nodes"), (HANDSHAKE_ONLY, "wireguardpeers/status")] {
        let p = policy(name);
        let spec = p.spec.clone().unwrap_or_default();
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"), "{name}: an error in an expression must refuse, not admit");
        let rules = spec.match_constraints.and_then(|m| m.resource_rules).unwrap_or_default();
        assert!(rules.iter().any(|r| {
            r.operations.as_deref() == Some(&["UPDATE".to_string()][..])
                && r.resources.as_deref() == Some(&[resource.to_string()][..])
        }), "{name}: {rules:?}");
        let b: ValidatingAdmissionPolicyBinding = serde_json::from_value(doc("ValidatingAdmissionPolicyBinding", name))
            .unwrap_or_else(|e| panic!("binding: {e}"));
        let bs = b.spec.unwrap_or_default();
        assert_eq!(bs.policy_name, p.metadata.name);
        assert_eq!(bs.validation_actions.unwrap_or_default(), ["Deny"]);
        // the agent's service account is the one the DaemonSet runs as
        assert!(spec.match_conditions.unwrap_or_default().iter().any(|c| c.expression.contains(AGENT)), "{name}");
    }
}

fn peer_with_status(status: Option<Value>) -> Value {
    let mut p = json!({
        "apiVersion": "wgmesh.io/v1alpha1", "kind": "WireGuardPeer",
        "metadata": {"name": "office", "generation": 3},
        "spec": {"publicKey": key(9), "allowedIPs": ["172.20.0.0/16"]},
    });
    if let Some(s) = status {
        p["status"] = s;
    }
    p
}

#[test]
fn on_a_peers_status_the_agent_may_write_latest_handshake_and_nothing_else() {
    let status = json!({
        "observedGeneration": 3,
        "distributedAllowedIPs": ["172.20.0.0/16"],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Handshaking", "message": "",
            "lastTransitionTime": "2026-12-07T10:00:00Z", "observedGeneration": 3}],
    });
    // What the agent's apply does: set (or move) latestHandshake, on a peer with a status or without.
    let handshake = json!({"status": {"latestHandshake": "2026-12-07T12:00:00Z"}});
    for old in [peer_with_status(Some(status.clone())), peer_with_status(None)] {
        let new = merge(&old, &handshake);
        assert_eq!(admit_by(HANDSHAKE_ONLY, AGENT, Some("n1"), &old, &new), Ok(()), "{old}");
        let later = merge(&new, &json!({"status": {"latestHandshake": "2026-12-07T12:02:00Z"}}));
        assert_eq!(admit_by(HANDSHAKE_ONLY, AGENT, Some("n1"), &new, &later), Ok(()));
    }
    let old = peer_with_status(Some(status));
    for change in [
        json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Forged", "message": "",
            "lastTransitionTime": "2026-12-07T10:00:00Z", "observedGeneration": 3}]}}),
        json!({"status": {"distributedAllowedIPs": ["0.0.0.0/0"]}}),
        json!({"status": {"observedGeneration": null}}),
        json!({"status": null}),
    ] {
        let e = admit_by(HANDSHAKE_ONLY, AGENT, Some("n1"), &old, &merge(&old, &change)).unwrap_err();
        assert!(e.contains("latestHandshake"), "{change}: {e}");
        // the operator owns those fields: its own writes are not this policy's business
        let operator = "system:serviceaccount:wgmesh-system:wgmesh-operator";
        assert_eq!(admit_by(HANDSHAKE_ONLY, operator, None, &old, &merge(&old, &change)), Ok(()));
    }
    // The CRD defaults both lists to []: the API server fills them in on the agent's first write.
    let defaulted = merge(&peer_with_status(None), &json!({"status": {"latestHandshake": "2026-12-07T12:00:00Z",
        "conditions": [], "distributedAllowedIPs": []}}));
    assert_eq!(admit_by(HANDSHAKE_ONLY, AGENT, Some("n1"), &peer_with_status(None), &defaulted), Ok(()));
    // a status the agent's write would create from nothing may hold nothing else
    let forged = merge(&peer_with_status(None), &json!({"status": {"distributedAllowedIPs": ["0.0.0.0/0"]}}));
    assert!(admit_by(HANDSHAKE_ONLY, AGENT, Some("n1"), &peer_with_status(None), &forged).is_err());
}

#[test]
fn the_agents_own_patches_on_its_own_node_are_admitted() {
    let fresh = node("n1", &["node.kubernetes.io/not-ready", NOT_READY_TAINT]);
    let keyed = publish(&fresh);
    assert_eq!(keyed["metadata"]["annotations"][PUBLIC_KEY], json!(key(7)));
    assert_eq!(admit(AGENT, Some("n1"), &fresh, &keyed), Ok(()));
    let ready = untaint(&keyed);
    assert_eq!(ready["spec"]["taints"], json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]));
    assert_eq!(admit(AGENT, Some("n1"), &keyed, &ready), Ok(()));
    // our taint as the last one: the patch removes the field
    let only_ours = node("n1", &[NOT_READY_TAINT]);
    let untainted = untaint(&only_ours);
    assert!(untainted["spec"].get("taints").is_none());
    assert_eq!(admit(AGENT, Some("n1"), &only_ours, &untainted), Ok(()));
    // a node without annotations gets its first one
    let mut bare = node("n1", &[]);
    bare["metadata"].as_object_mut().map(|m| m.remove("annotations"));
    assert_eq!(admit(AGENT, Some("n1"), &bare, &publish(&bare)), Ok(()));
}

#[test]
fn another_nodes_key_or_a_token_without_a_node_is_refused() {
    let other = node("n2", &[NOT_READY_TAINT]);
    let e = admit(AGENT, Some("n1"), &other, &publish(&other)).unwrap_err();
    assert!(e.contains("only the Node its pod runs on"), "{e}");
    assert!(admit(AGENT, Some("n1"), &other, &untaint(&other)).is_err());
    assert!(admit(AGENT, None, &other, &publish(&other)).is_err(), "a token not bound to a pod on a node");
}

#[test]
fn on_its_own_node_the_agent_may_change_nothing_else() {
    let n = node("n1", &["dedicated", NOT_READY_TAINT]);
    let patched = |p: Value| merge(&n, &p);
    let cases = [
        (json!({"metadata": {"annotations": {"wgmesh.io/endpoint": "203.0.113.66:51820"}}}), "annotation"),
        (json!({"metadata": {"annotations": {"node.alpha.kubernetes.io/ttl": null}}}), "annotation"),
        (json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}), "labels"),
        (json!({"spec": {"taints": [{"key": NOT_READY_TAINT, "effect": "NoSchedule"}]}}), "taint"),
        (json!({"spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}, {"key": NOT_READY_TAINT, "effect": "NoSchedule"}, {"key": "x", "effect": "NoExecute"}]}}), "taint"),
        (json!({"spec": {"taints": null}}), "taint"),
        (json!({"spec": {"unschedulable": true}}), "cordon"),
        (json!({"spec": {"podCIDRs": ["10.244.1.0/24", "10.244.9.0/24"]}}), "pod CIDRs"),
        (json!({"spec": {"podCIDR": null, "podCIDRs": null}}), "pod CIDRs"),
        (json!({"spec": {"providerID": "aws:///us-east-1a/i-0"}}), "provider ID"),
        (json!({"metadata": {"finalizers": ["example.com/hold"]}}), "finalizers"),
        (json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "x", "uid": "1"}]}}), "owners"),
    ];
    for (p, says) in cases {
        let e = admit(AGENT, Some("n1"), &n, &patched(p.clone())).unwrap_err();
        assert!(e.contains(says), "{p}: {e}");
    }
    // the same changes by anyone else are not this policy's business
    for user in ["system:node:n1", "kubernetes-admin", "system:serviceaccount:kube-system:node-controller"] {
        assert_eq!(admit(user, Some("n1"), &n, &patched(json!({"spec": {"unschedulable": true}}))), Ok(()), "{user}");
    }
}
