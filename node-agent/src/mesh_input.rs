//! Pure: documents from a source → the inputs of the api crate's desired-state function, and
//! the local node's own facts (pod CIDRs, tunnel addresses).
//!
//! Without Kubernetes there are no Node objects, so a `WireGuardPeer` carrying
//! `spec.nodeName` (what the operator writes for every node) stands for that node: it becomes
//! a synthetic Node (key and endpoint annotations, `allowedIPs` as pod CIDRs). The mesh is then
//! built exactly as in a cluster, with the same validation and conflict rules.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use wgmesh_api::annotations;
use wgmesh_api::node::{node_facts, NodeFacts};
use wgmesh_api::{desired_peers_for_node, DesiredPeer, MeshConfig, WireGuardPeer};

use crate::psk::PresharedKeys;
use crate::source_file::Document;

fn name_of(m: &ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

/// Observed objects in the shape the api crate takes.
#[derive(Clone, Debug, Default)]
pub struct MeshInput {
    pub nodes: Vec<Node>,
    pub peers: Vec<WireGuardPeer>,
    /// Preshared keys the peers reference (empty for the file source).
    pub preshared_keys: PresharedKeys,
}

/// The Node a node `WireGuardPeer` stands for.
pub fn node_from_peer(peer: &WireGuardPeer) -> Option<Node> {
    let node_name = peer.spec.node_name.clone()?;
    let mut ann = BTreeMap::new();
    ann.insert(
        annotations::PUBLIC_KEY.to_owned(),
        peer.spec.public_key.clone(),
    );
    if let Some(ep) = peer.spec.endpoint.clone().filter(|e| !e.trim().is_empty()) {
        ann.insert(annotations::ENDPOINT.to_owned(), ep);
    }
    Some(Node {
        metadata: ObjectMeta {
            name: Some(node_name),
            annotations: Some(ann),
            creation_timestamp: peer.metadata.creation_timestamp.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidrs: Some(peer.spec.allowed_ips.clone()),
            ..NodeSpec::default()
        }),
        status: None,
    })
}

/// Splits documents into Nodes and external peers. A real Node document wins over a node
/// peer of the same name; duplicate names keep the first in file order.
pub fn mesh_input(docs: &[Document]) -> MeshInput {
    let mut input = MeshInput::default();
    let mut node_names = BTreeSet::new();
    for d in docs {
        if let Document::Node(n) = d {
            if node_names.insert(name_of(&n.metadata)) {
                input.nodes.push((**n).clone());
            }
        }
    }
    for d in docs {
        if let Document::Peer(p) = d {
            match node_from_peer(p) {
                Some(n) => {
                    if node_names.insert(name_of(&n.metadata)) {
                        input.nodes.push(n);
                    }
                }
                None => input.peers.push((**p).clone()),
            }
        }
    }
    input
}

/// The peers `node_name` must configure.
pub fn desired_peers(input: &MeshInput, config: &MeshConfig, node_name: &str) -> Vec<DesiredPeer> {
    desired_peers_for_node(&input.nodes, &input.peers, config, node_name)
}

/// The local node's facts, if its Node (or node peer) is among the inputs.
pub fn local_facts(input: &MeshInput, node_name: &str) -> Option<NodeFacts> {
    input
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node_name))
        .map(node_facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source_file::parse_documents;

    fn peer_doc(name: &str, node: Option<&str>, key: &str, ep: &str, ips: &[&str]) -> String {
        let node_line = node
            .map(|n| format!("  nodeName: {n}\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: wgmesh.io/v1alpha1\nkind: WireGuardPeer\nmetadata:\n  name: {name}\nspec:\n  publicKey: \"{key}\"\n  endpoint: \"{ep}\"\n  allowedIPs: [{}]\n{node_line}---\n",
            ips.join(", ")
        )
    }

    fn key(n: u8) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }

    fn three_nodes() -> String {
        let mut s = String::new();
        for i in 1..=3u8 {
            s += &peer_doc(
                &format!("node-n{i}"),
                Some(&format!("n{i}")),
                &key(i),
                &format!("192.168.0.{i}:51820"),
                &[&format!("10.244.{i}.0/24"), &format!("fd00:244:0:{i}::/64")],
            );
        }
        s
    }

    #[test]
    fn node_peers_become_nodes_and_each_node_gets_the_others() {
        let (docs, skipped) = parse_documents(&three_nodes()).expect("parse");
        assert!(skipped.is_empty());
        let input = mesh_input(&docs);
        assert_eq!(input.nodes.len(), 3);
        assert!(input.peers.is_empty());
        let cfg = MeshConfig::default();
        let d = desired_peers(&input, &cfg, "n1");
        let names: Vec<&str> = d.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["node-n2", "node-n3"]);
        assert_eq!(d[0].public_key.to_string(), key(2));
        assert_eq!(
            d[0].endpoint.as_ref().map(ToString::to_string).as_deref(),
            Some("192.168.0.2:51820")
        );
        let ips: Vec<String> = d[1].allowed_ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["10.244.3.0/24", "fd00:244:0:3::/64"]);
        let me = local_facts(&input, "n1").expect("own facts");
        let tunnel: Vec<String> = me
            .tunnel_addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(tunnel, ["10.244.1.1", "fd00:244:0:1::1"]);
    }

    #[test]
    fn external_peers_are_validated_against_the_pod_network() {
        let mut text = three_nodes();
        text += &peer_doc(
            "laptop",
            None,
            &key(9),
            "198.51.100.7:51820",
            &["10.8.0.0/24"],
        );
        text += &peer_doc(
            "squatter",
            None,
            &key(10),
            "198.51.100.8:51820",
            &["10.244.2.0/25"],
        );
        let (docs, _) = parse_documents(&text).expect("parse");
        let input = mesh_input(&docs);
        let d = desired_peers(&input, &MeshConfig::default(), "n1");
        let names: Vec<&str> = d.iter().map(|p| p.name.as_str()).collect();
        // the squatter claims part of n2's pod CIDR and is excluded; the laptop is kept
        assert_eq!(names, ["laptop", "node-n2", "node-n3"]);
    }

    #[test]
    fn removing_a_node_peer_removes_it_everywhere_and_bad_keys_are_excluded() {
        let mut text = String::new();
        text += &peer_doc(
            "node-n1",
            Some("n1"),
            &key(1),
            "192.168.0.1:51820",
            &["10.244.1.0/24"],
        );
        text += &peer_doc(
            "node-n2",
            Some("n2"),
            "not-a-key",
            "192.168.0.2:51820",
            &["10.244.2.0/24"],
        );
        let (docs, _) = parse_documents(&text).expect("parse");
        let d = desired_peers(&mesh_input(&docs), &MeshConfig::default(), "n1");
        assert!(d.is_empty(), "{d:?}");
    }
}
