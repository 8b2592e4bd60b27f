//! What the reflectors keep of each object, and which changes are worth a reconcile.
//! Nodes carry large status (images, conditions) and managed fields the operator never reads;
//! dropping them before they enter the store keeps memory proportional to what is used.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::Node;
use wgmesh_api::WireGuardPeer;

/// Annotation prefix the mesh reads; all other annotations are dropped.
const WGMESH_PREFIX: &str = "wgmesh.io/";

/// Strips a Node down to name, uid, creation time, wgmesh annotations, pod CIDRs and addresses.
pub fn node(n: &mut Node) {
    let meta = &mut n.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(WGMESH_PREFIX));
    }
    if let Some(spec) = n.spec.as_mut() {
        spec.taints = None;
        spec.config_source = None;
    }
    if let Some(st) = n.status.as_mut() {
        st.images = None;
        st.conditions = None;
        st.node_info = None;
        st.volumes_attached = None;
        st.volumes_in_use = None;
        st.allocatable = None;
        st.capacity = None;
        st.daemon_endpoints = None;
        st.config = None;
        st.features = None;
        st.runtime_handlers = None;
    }
}

/// Drops managed fields of a peer (the operator compares spec and status, never field owners).
pub fn peer(p: &mut WireGuardPeer) {
    p.metadata.managed_fields = None;
}

/// Hash of everything the mesh reads from a (trimmed) Node; kubelet heartbeats that change
/// nothing else do not trigger a reconcile.
pub fn node_fingerprint(n: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    n.metadata.uid.hash(&mut h);
    n.metadata.annotations.hash(&mut h);
    n.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut h);
    if let Some(spec) = &n.spec {
        spec.pod_cidr.hash(&mut h);
        spec.pod_cidrs.hash(&mut h);
    }
    if let Some(addrs) = n.status.as_ref().and_then(|s| s.addresses.as_ref()) {
        for a in addrs {
            a.type_.hash(&mut h);
            a.address.hash(&mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerImage, NodeCondition};
    use wgmesh_api::fixtures::{annotate, key, node as mk_node};

    #[test]
    fn trimming_keeps_what_the_mesh_reads() {
        let mut n = annotate(
            mk_node("a", Some(&key(1)), "192.168.0.1", &["10.244.0.0/24"]),
            "unrelated/annotation",
            "big",
        );
        if let Some(st) = n.status.as_mut() {
            st.images = Some(vec![ContainerImage {
                names: Some(vec!["registry/x:1".into()]),
                size_bytes: Some(1),
            }]);
            st.conditions = Some(vec![NodeCondition::default()]);
        }
        let before = node_fingerprint(&n);
        let facts_before = wgmesh_api::node::node_facts(&n);
        node(&mut n);
        assert_eq!(wgmesh_api::node::node_facts(&n), facts_before);
        assert_eq!(node_fingerprint(&n), node_fingerprint(&n.clone()));
        assert!(n.status.as_ref().is_some_and(|s| s.images.is_none()));
        assert_eq!(n.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
        // the unrelated annotation changed the hash before trimming only
        assert_ne!(before, node_fingerprint(&n));
    }

    #[test]
    fn heartbeat_only_changes_do_not_change_the_fingerprint() {
        let mut a = mk_node("a", Some(&key(1)), "192.168.0.1", &["10.244.0.0/24"]);
        node(&mut a);
        let mut b = a.clone();
        if let Some(st) = b.status.as_mut() {
            st.conditions = Some(vec![NodeCondition::default()]);
        }
        assert_eq!(node_fingerprint(&a), node_fingerprint(&b));
        let c = annotate(a.clone(), wgmesh_api::annotations::PUBLIC_KEY, &key(2));
        assert_ne!(node_fingerprint(&a), node_fingerprint(&c));
    }
}
