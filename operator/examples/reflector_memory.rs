//! Memory of the operator's reflector caches holding 5,000 Nodes and 6,000 WireGuardPeers
//! (5,000 node peers + 1,000 external), filled the way the watch fills them: each object
//! arrives as JSON, is deserialized, trimmed (unless `raw`) and applied to a reflector Store.
//! Reports the process's VmRSS before and after. Run each mode in its own process:
//!   cargo run --release -p wgmesh-operator --example reflector_memory -- trimmed
//!   cargo run --release -p wgmesh-operator --example reflector_memory -- raw

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::json;
use wgmesh_api::fixtures::key;
use wgmesh_api::WireGuardPeer;
use wgmesh_operator::trim;

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A Node shaped like what a kubelet reports: 50 images, 5 conditions, node info, labels,
/// the usual annotations and two managed-field entries.
fn node_json(i: u32) -> String {
    let name = format!("node-{i:05}.example.internal");
    let (hi, lo) = (i / 256, i % 256);
    let images: Vec<_> = (0..50)
        .map(|j| {
            json!({
                "names": [
                    format!("registry.example.com/team-{j}/service-{j}@sha256:{:064x}", u64::from(i) * 1000 + j),
                    format!("registry.example.com/team-{j}/service-{j}:v1.{j}.{i}")
                ],
                "sizeBytes": 123_456_789 + j
            })
        })
        .collect();
    let conditions: Vec<_> = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready", "NetworkUnavailable"]
        .iter()
        .map(|t| json!({"type": t, "status": "False", "reason": format!("Kubelet{t}"), "message": format!("kubelet has sufficient {t}"),
            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}))
        .collect();
    let fields = json!({"f:metadata": {"f:annotations": {"f:wgmesh.io/public-key": {}}}, "f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {"f:lastHeartbeatTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}}}, "f:images": {}, "f:nodeInfo": {"f:bootID": {}, "f:kernelVersion": {}}}});
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": format!("6f1c2a4e-0000-4000-8000-{i:012}"), "resourceVersion": format!("{}", 100_000 + i),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m6i.2xlarge", "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": "eu-west-1a", "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
                "wgmesh.io/public-key": key(i)},
            "managedFields": [
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields.clone(), "subresource": "status"},
                {"manager": "wgmesh-node-agent", "operation": "Apply", "apiVersion": "v1", "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields}
            ]
        },
        "spec": {"podCIDR": format!("10.{hi}.{lo}.0/24"), "podCIDRs": [format!("10.{hi}.{lo}.0/24"), format!("fd00:10:{hi:x}:{lo:x}::/64")],
                 "providerID": format!("aws:///eu-west-1a/i-{i:017x}")},
        "status": {
            "addresses": [{"type": "InternalIP", "address": format!("192.168.{hi}.{lo}")}, {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "8", "memory": "32386524Ki", "pods": "110", "ephemeral-storage": "101430960Ki"},
            "allocatable": {"cpu": "7910m", "memory": "31369692Ki", "pods": "110", "ephemeral-storage": "93478772582"},
            "conditions": conditions, "images": images,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": format!("{i:032x}"), "systemUUID": format!("ec2{i:029x}"), "bootID": format!("{i:032x}"),
                "kernelVersion": "6.8.0-1019-aws", "osImage": "Ubuntu 24.04.1 LTS", "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.33.1", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}
        }
    })
    .to_string()
}

fn peer_json(i: u32, node: bool) -> String {
    let now = "2026-01-01T00:00:00Z";
    let name = if node {
        format!("node-node-{i:05}.example.internal")
    } else {
        format!("site-{i:05}")
    };
    json!({
        "apiVersion": "wgmesh.io/v1alpha1", "kind": "WireGuardPeer",
        "metadata": {"name": name, "uid": format!("7f1c2a4e-0000-4000-8000-{i:012}"), "generation": 1, "resourceVersion": "1",
            "creationTimestamp": now,
            "managedFields": [{"manager": "wgmesh-operator", "operation": "Apply", "apiVersion": "wgmesh.io/v1alpha1", "time": now,
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:publicKey": {}, "f:endpoint": {}, "f:allowedIPs": {}}}}]},
        "spec": {"publicKey": key(2_000_000 + i), "endpoint": format!("192.168.{}.{}:51820", i / 256, i % 256),
            "allowedIPs": [format!("10.{}.{}.0/24", i / 256, i % 256), format!("fd00:10:{:x}:{:x}::/64", i / 256, i % 256)]},
        "status": {"observedGeneration": 1, "distributedAllowedIPs": [format!("10.{}.{}.0/24", i / 256, i % 256)],
            "latestHandshake": now,
            "conditions": [
                {"type": "Valid", "status": "True", "reason": "Accepted", "message": "spec is valid and distributed to all nodes", "observedGeneration": 1, "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "reason": "HandshakeRecent", "message": "a node completed a handshake with this peer within the last 180s", "observedGeneration": 1, "lastTransitionTime": now}
            ]}
    })
    .to_string()
}

fn main() {
    let raw = std::env::args().nth(1).as_deref() == Some("raw");
    let before = vm_rss_kib();
    let (nodes, mut node_writer) = reflector::store::<Node>();
    let (peers, mut peer_writer) = reflector::store::<WireGuardPeer>();
    let mut json_bytes = 0usize;
    for i in 0..5_000 {
        let text = node_json(i);
        json_bytes += text.len();
        let Ok(mut n) = serde_json::from_str::<Node>(&text) else {
            panic!("node {i} did not parse")
        };
        if !raw {
            trim::node(&mut n);
        }
        node_writer.apply_watcher_event(&Event::Apply(n));
    }
    for i in 0..6_000 {
        let Ok(mut p) = serde_json::from_str::<WireGuardPeer>(&peer_json(i, i < 5_000)) else {
            panic!("peer {i} did not parse")
        };
        if !raw {
            trim::peer(&mut p);
        }
        peer_writer.apply_watcher_event(&Event::Apply(p));
    }
    let after = vm_rss_kib();
    println!(
        "mode={} nodes={} peers={} node_json_avg_bytes={} rss_before_kib={} rss_after_kib={} delta_mib={:.1}",
        if raw { "raw" } else { "trimmed" },
        nodes.len(),
        peers.len(),
        json_bytes / 5_000,
        before,
        after,
        (after.saturating_sub(before)) as f64 / 1024.0
    );
}
