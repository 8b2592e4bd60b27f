//! deploy/operator/operator.yaml parses into the Kubernetes types it claims to be and grants
//! what the operator calls (offline only: it was never applied to a cluster here).

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use serde::Deserialize;
use serde_json::Value;

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/operator/operator.yaml"
);

fn docs() -> Vec<Value> {
    let text = std::fs::read_to_string(PATH).unwrap_or_else(|e| panic!("{PATH}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{PATH}: {e}")))
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(kind: &str) -> T {
    let doc = docs().into_iter().find(|d| d["kind"] == kind);
    let doc = doc.unwrap_or_else(|| panic!("no {kind} in {PATH}"));
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// Every (group, resource, verb) a set of rules grants.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn set(items: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .flat_map(|(g, r, verbs)| verbs.iter().map(move |v| (g.to_string(), r.to_string(), v.to_string())))
        .collect()
}

fn role(name: &str) -> Role {
    let doc = docs().into_iter().find(|d| d["kind"] == "Role" && d["metadata"]["name"] == name);
    serde_json::from_value(doc.unwrap_or_else(|| panic!("no Role {name}"))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Exactly what the operator calls, no more: a verb added here must be one the code uses.
#[test]
fn rbac_grants_exactly_the_calls_the_operator_makes() {
    let cluster: ClusterRole = of_kind("ClusterRole");
    let want = set(&[
        // watchers list and watch; server-side apply creates peers and patches them; node peers are deleted
        ("", "nodes", &["list", "watch"]),
        ("wgmesh.io", "wireguardpeers", &["list", "watch", "create", "patch", "delete"]),
        ("wgmesh.io", "wireguardpeers/status", &["patch"]),
    ]);
    assert_eq!(grants(&cluster.rules.unwrap_or_default()), want);
    // leader election: get the Lease, create it once, apply it
    let leader = role("wgmesh-operator-leader");
    assert_eq!(leader.metadata.namespace.as_deref(), Some("wgmesh-system"));
    assert_eq!(grants(&leader.rules.unwrap_or_default()), set(&[("coordination.k8s.io", "leases", &["get", "create", "patch"])]));
    // Events about cluster-scoped objects go to "default" only
    let events = role("wgmesh-operator-events");
    assert_eq!(events.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(grants(&events.rules.unwrap_or_default()), set(&[("events.k8s.io", "events", &["create", "patch"])]));
    for (binding, kind) in [("wgmesh-operator-leader", "RoleBinding"), ("wgmesh-operator-events", "RoleBinding"), ("wgmesh-operator", "ClusterRoleBinding")] {
        let b = docs().into_iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == binding);
        let b = b.unwrap_or_else(|| panic!("no {kind} {binding}"));
        assert_eq!(b["roleRef"]["name"], binding, "{kind} {binding}");
        assert_eq!(b["subjects"][0]["name"], "wgmesh-operator", "{kind} {binding}");
        assert_eq!(b["subjects"][0]["namespace"], "wgmesh-system", "{kind} {binding}");
    }
}

#[test]
fn deployment_wires_identity_and_probes() {
    let d: Deployment = of_kind("Deployment");
    let spec = d.spec.and_then(|s| s.template.spec).unwrap_or_default();
    let c = spec.containers.first().cloned().unwrap_or_default();
    let env: Vec<String> = c
        .env
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    for name in ["POD_NAME", "POD_NAMESPACE", "WGMESH_CLUSTER_CIDRS"] {
        assert!(env.iter().any(|e| e == name), "{name}");
    }
    let path = |p: Option<k8s_openapi::api::core::v1::Probe>| {
        p.and_then(|p| p.http_get).and_then(|h| h.path)
    };
    assert_eq!(path(c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(c.readiness_probe).as_deref(), Some("/readyz"));
}
