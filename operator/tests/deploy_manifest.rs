//! deploy/operator/operator.yaml parses into the Kubernetes types it claims to be and grants
//! what the operator calls (offline only: it was never applied to a cluster here).

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

fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups
            .as_ref()
            .is_some_and(|g| g.iter().any(|x| x == group))
            && r.resources
                .as_ref()
                .is_some_and(|g| g.iter().any(|x| x == resource))
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn rbac_covers_every_call_the_operator_makes() {
    let cluster: ClusterRole = of_kind("ClusterRole");
    let rules = cluster.rules.unwrap_or_default();
    for verb in ["list", "watch"] {
        assert!(allows(&rules, "", "nodes", verb), "nodes {verb}");
    }
    for verb in ["list", "watch", "patch", "delete"] {
        assert!(
            allows(&rules, "wgmesh.io", "wireguardpeers", verb),
            "wireguardpeers {verb}"
        );
    }
    assert!(allows(
        &rules,
        "wgmesh.io",
        "wireguardpeers/status",
        "patch"
    ));
    assert!(allows(&rules, "events.k8s.io", "events", "create"));
    assert!(allows(&rules, "events.k8s.io", "events", "patch"));
    let leader: Role = of_kind("Role");
    let rules = leader.rules.unwrap_or_default();
    for verb in ["get", "create", "patch"] {
        assert!(
            allows(&rules, "coordination.k8s.io", "leases", verb),
            "leases {verb}"
        );
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
