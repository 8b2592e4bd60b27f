//! The `WireGuardPeer` custom resource (group `wgmesh.io`, version `v1alpha1`, cluster-scoped).
//!
//! Spec fields are plain strings on purpose: one malformed object must never make the whole
//! watch list fail to deserialize in the operator or the agents. Typed parsing happens in
//! [`crate::mesh`], which reports problems per peer instead.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema;

/// A WireGuard peer of the mesh: either a cluster node (kept by the operator, `nodeName` set)
/// or an external peer a user adds with `kubectl apply`.
// clippy mistakes the repeated keys of separate printcolumn(...) entries for duplicate attributes
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "wgmesh.io",
    version = "v1alpha1",
    kind = "WireGuardPeer",
    plural = "wireguardpeers",
    singular = "wireguardpeer",
    shortname = "wgpeer",
    category = "wgmesh",
    status = "WireGuardPeerStatus",
    derive = "PartialEq",
    doc = "A WireGuard peer of the wgmesh pod network: a cluster node (kept by wgmesh-operator, spec.nodeName set) or an external peer.",
    selectable = ".spec.nodeName",
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpoint"),
    printcolumn(name = "Allowed IPs", type_ = "string", json_path = ".spec.allowedIPs"),
    printcolumn(
        name = "Handshake",
        type_ = "date",
        json_path = ".status.latestHandshake",
        description = "time since the latest handshake any node saw with this peer"
    ),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".spec.nodeName",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].reason",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardPeerSpec {
    /// WireGuard public key of the peer: 44 base64 characters as printed by `wg pubkey`.
    #[schemars(schema_with = "schema::public_key")]
    pub public_key: String,

    /// UDP endpoint the nodes dial: `203.0.113.7:51820`, `[2001:db8::7]:51820` or
    /// `vpn.example.com:51820`. Omit for peers that only dial in (roaming clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::endpoint")]
    pub endpoint: Option<String>,

    /// IPv4 and IPv6 prefixes routed to this peer, host bits zero (`10.8.0.0/24`, `fd00:8::/64`).
    /// Must not overlap another peer's prefixes or the cluster's pod CIDRs.
    #[serde(rename = "allowedIPs")]
    #[schemars(schema_with = "schema::allowed_ips")]
    pub allowed_ips: Vec<String>,

    /// Seconds between keepalive packets the nodes send to this peer (0 or unset: off); set it
    /// for peers behind NAT, 25 is the usual value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::keepalive")]
    pub persistent_keepalive: Option<u16>,

    /// Secret holding a base64 preshared key for this peer; only node agents read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key_secret_ref: Option<SecretKeyRef>,

    /// Name of the Node this peer represents. Set only by wgmesh-operator on node peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::node_name")]
    pub node_name: Option<String>,
}

/// Reference to one key of a Secret (the peer is cluster-scoped, so the namespace is explicit).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Namespace of the Secret.
    #[schemars(schema_with = "schema::dns_label")]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(schema_with = "schema::dns_subdomain")]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(schema_with = "schema::secret_key")]
    pub key: String,
}

/// Observed state, written by the operator (conditions, distributed prefixes) and the node
/// agents (`latestHandshake`), each with its own server-side-apply field manager.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardPeerStatus {
    /// `Valid` (spec accepted and distributed) and `Ready` (a node saw a recent handshake).
    #[serde(default, deserialize_with = "readable_only")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,

    /// Generation of the spec the operator last evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Prefixes actually distributed to the nodes (empty while the peer is not valid).
    #[serde(rename = "distributedAllowedIPs", default)]
    pub distributed_allowed_ips: Vec<String>,

    /// Latest handshake any node completed with this peer (reported by the node agents).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "unknown_if_unreadable")]
    pub latest_handshake: Option<Time>,
}

// The API server's `date-time` check lets through times RFC 3339 parsers refuse (an offset of
// +30:00, say), and any node's agent may write `latestHandshake`: one such value must not fail
// every list and watch of peers. An unreadable time reads as unknown, an unreadable condition
// as absent (the operator, which owns the conditions, then writes it again).
fn unknown_if_unreadable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Time>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.and_then(|v| serde_json::from_value(v).ok()))
}

fn readable_only<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Condition>, D::Error> {
    let v = Option::<Vec<serde_json::Value>>::deserialize(d)?;
    Ok(v.into_iter().flatten().filter_map(|c| serde_json::from_value(c).ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn peer(status: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "wgmesh.io/v1alpha1", "kind": "WireGuardPeer",
            "metadata": {"name": "office"},
            "spec": {"publicKey": "k", "allowedIPs": ["10.9.0.0/24"]},
            "status": status,
        })
    }

    #[test]
    fn a_time_the_api_server_let_through_does_not_fail_the_list() {
        let good = json!({"latestHandshake": "2026-12-07T10:00:00Z", "conditions": [
            {"type": "Valid", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-12-07T09:00:00Z"}]});
        let bad = json!({"latestHandshake": "2026-12-07T10:00:00+30:00", "conditions": [
            {"type": "Valid", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-12-07T09:00:00x5Z"},
            {"type": "Ready", "status": "False", "reason": "NoHandshake", "message": "", "lastTransitionTime": "2026-12-07T09:00:00Z"}]});
        let list: Vec<WireGuardPeer> = serde_json::from_value(json!([peer(good), peer(bad)])).expect("the list reads");
        let (good, bad) = (list[0].status.as_ref().expect("status"), list[1].status.as_ref().expect("status"));
        assert_eq!(good.latest_handshake.as_ref().map(|t| t.0.to_string()).as_deref(), Some("2026-12-07T10:00:00Z"));
        assert_eq!(good.conditions.len(), 1);
        assert_eq!(bad.latest_handshake, None, "an unreadable time is unknown");
        assert_eq!(bad.conditions.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["Ready"], "only the readable condition is kept");
    }
}
