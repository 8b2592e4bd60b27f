//! Builders for Nodes and `WireGuardPeer`s in tests and benchmarks (feature `test-util`).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::annotations::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, PUBLIC_KEY};
use crate::peer::{WireGuardPeer, WireGuardPeerSpec};

/// A valid, distinct public key for every `n`.
pub fn key(n: u32) -> String {
    let mut bytes = [0x5au8; 32];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    STANDARD.encode(bytes)
}

/// A timestamp `secs` after the Unix epoch (creation order in tests).
pub fn ts(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A Node with an InternalIP, pod CIDRs and optionally the agent's key annotation.
pub fn node(name: &str, key: Option<&str>, internal_ip: &str, pod_cidrs: &[&str]) -> Node {
    let mut annotations = BTreeMap::new();
    if let Some(k) = key {
        annotations.insert(PUBLIC_KEY.to_owned(), k.to_owned());
    }
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            uid: Some(format!("uid-{name}")),
            annotations: Some(annotations),
            creation_timestamp: Some(ts(1_700_000_000)),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: pod_cidrs.first().map(|s| (*s).to_owned()),
            pod_cidrs: Some(pod_cidrs.iter().map(|s| (*s).to_owned()).collect()),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: internal_ip.to_owned(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.to_owned(),
                },
            ]),
            ..NodeStatus::default()
        }),
    }
}

/// Sets an annotation on a Node.
pub fn annotate(mut node: Node, key: &str, value: &str) -> Node {
    node.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
    node
}

/// An external peer created at `created` seconds.
pub fn external(
    name: &str,
    key: &str,
    endpoint: Option<&str>,
    allowed: &[&str],
    created: i64,
) -> WireGuardPeer {
    let mut p = WireGuardPeer::new(
        name,
        WireGuardPeerSpec {
            public_key: key.to_owned(),
            endpoint: endpoint.map(str::to_owned),
            allowed_ips: allowed.iter().map(|s| (*s).to_owned()).collect(),
            persistent_keepalive: None,
            preshared_key_secret_ref: None,
            node_name: None,
        },
    );
    p.metadata.creation_timestamp = Some(ts(created));
    p.metadata.generation = Some(1);
    p.metadata.uid = Some(format!("uid-{name}"));
    p
}

/// Marks a peer as one the operator keeps for a Node.
pub fn managed(mut p: WireGuardPeer) -> WireGuardPeer {
    p.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    p
}

/// A dual-stack cluster of `nodes` keyed nodes and `externals` external peers, all valid.
pub fn cluster(nodes: u32, externals: u32) -> (Vec<Node>, Vec<WireGuardPeer>) {
    let ns = (0..nodes)
        .map(|i| {
            let (hi, lo) = (i / 256, i % 256);
            node(
                &format!("node-{i:05}.example.internal"),
                Some(&key(i)),
                &format!("192.168.{hi}.{lo}"),
                &[
                    &format!("10.{hi}.{lo}.0/24"),
                    &format!("fd00:10:{hi:x}:{lo:x}::/64"),
                ],
            )
        })
        .collect();
    let ps = (0..externals)
        .map(|i| {
            let (hi, lo) = (i / 64, (i % 64) * 4);
            external(
                &format!("site-{i:05}"),
                &key(1_000_000 + i),
                Some(&format!("vpn{i}.example.com:51820")),
                &[
                    &format!("100.64.{hi}.{lo}/30"),
                    &format!("fd00:64:{hi:x}:{lo:x}::/64"),
                ],
                1_700_000_000 + i64::from(i),
            )
        })
        .collect();
    (ns, ps)
}
