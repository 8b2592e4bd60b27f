//! Desired state for 5,000 dual-stack nodes and 1,000 external peers (target: <= 50 ms).
//! Run: CARGO_TARGET_DIR=/work/target-op cargo bench -p wgmesh-operator --bench desired_state

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use k8s_openapi::api::core::v1::Node;
use wgmesh_api::fixtures::{cluster, ts};
use wgmesh_api::{Mesh, MeshConfig, WireGuardPeer};
use wgmesh_operator::plan::{node_peer, plan};
use wgmesh_operator::status::desired_status;

const NODES: u32 = 5_000;
const EXTERNALS: u32 = 1_000;

/// The operator's steady state: every node peer and status already written.
fn synced(nodes: &[Node], externals: &[WireGuardPeer]) -> Vec<WireGuardPeer> {
    let mesh = Mesh::build(nodes, externals, &MeshConfig::default());
    let now = ts(1_800_000_000).0;
    let by_node: BTreeMap<&str, &Node> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref().map(|s| (s, n)))
        .collect();
    let mut out = Vec::new();
    for m in mesh.members() {
        let node = m.node_name().and_then(|n| by_node.get(n));
        let mut p = match node {
            Some(n) => match node_peer(n, m) {
                Some(mut p) => {
                    p.metadata.generation = Some(1);
                    p
                }
                None => continue,
            },
            None => match externals
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(m.name.as_str()))
            {
                Some(p) => p.clone(),
                None => continue,
            },
        };
        p.status = Some(desired_status(&p, m, now).status);
        out.push(p);
    }
    out
}

fn bench(c: &mut Criterion) {
    let (nodes, externals) = cluster(NODES, EXTERNALS);
    let cfg = MeshConfig::default();
    let observed = synced(&nodes, &externals);
    let node_refs: Vec<&Node> = nodes.iter().collect();
    let peer_refs: Vec<&WireGuardPeer> = observed.iter().collect();
    let now = ts(1_800_000_000).0;
    let reported = BTreeMap::new();

    let mut g = c.benchmark_group("5000_nodes_1000_external_peers");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.bench_function("mesh_build", |b| {
        b.iter(|| Mesh::build(black_box(&nodes), black_box(&externals), &cfg))
    });
    g.bench_function("desired_peers_for_one_node", |b| {
        b.iter(|| {
            wgmesh_api::desired_peers_for_node(
                black_box(&nodes),
                black_box(&externals),
                &cfg,
                "node-02500.example.internal",
            )
        })
    });
    g.bench_function("operator_plan_steady_state", |b| {
        b.iter(|| {
            let p = plan(
                black_box(&node_refs),
                black_box(&peer_refs),
                &cfg,
                now,
                &reported,
            );
            assert!(p.is_noop());
            p
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
