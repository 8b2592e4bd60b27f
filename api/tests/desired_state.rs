//! The pure desired-state function: what each node must configure, for the situations the
//! issue lists (join, leave, pod CIDR change, key change, dual-stack, external peers, invalid
//! peers, deterministic order).

use wgmesh_api::annotations;
use wgmesh_api::conditions::Reason;
use wgmesh_api::fixtures::{annotate, cluster, external, key, managed, node};
use wgmesh_api::{desired_peers_for_node, DesiredPeer, Mesh, MeshConfig};

fn names(peers: &[DesiredPeer]) -> Vec<&str> {
    peers.iter().map(|p| p.name.as_str()).collect()
}

fn cidrs(p: &DesiredPeer) -> Vec<String> {
    p.allowed_ips.iter().map(ToString::to_string).collect()
}

fn two_nodes() -> Vec<k8s_openapi::api::core::v1::Node> {
    vec![
        node("a", Some(&key(1)), "192.168.0.1", &["10.244.0.0/24"]),
        node("b", Some(&key(2)), "192.168.0.2", &["10.244.1.0/24"]),
    ]
}

#[test]
fn node_join_adds_it_to_every_other_node_and_not_to_itself() {
    let mut nodes = two_nodes();
    let cfg = MeshConfig::default();
    assert_eq!(
        names(&desired_peers_for_node(&nodes, [], &cfg, "a")),
        ["node-b"]
    );

    nodes.push(node("c", Some(&key(3)), "192.168.0.3", &["10.244.2.0/24"]));
    let for_a = desired_peers_for_node(&nodes, [], &cfg, "a");
    assert_eq!(names(&for_a), ["node-b", "node-c"]);
    let c = &for_a[1];
    assert_eq!(c.public_key.to_string(), key(3));
    assert_eq!(
        c.endpoint.as_ref().map(ToString::to_string).as_deref(),
        Some("192.168.0.3:51820")
    );
    assert_eq!(cidrs(c), ["10.244.2.0/24"]);
    assert_eq!(c.node_name.as_deref(), Some("c"));
    assert_eq!(
        names(&desired_peers_for_node(&nodes, [], &cfg, "c")),
        ["node-a", "node-b"]
    );
}

#[test]
fn node_without_key_has_not_joined_yet() {
    let mut nodes = two_nodes();
    nodes.push(node("c", None, "192.168.0.3", &["10.244.2.0/24"]));
    let mesh = Mesh::build(&nodes, [], &MeshConfig::default());
    assert_eq!(names(&mesh.peers_for_node("a")), ["node-b"]);
    assert!(mesh.member("node-c").is_none());
    // problems of a node that has not joined are not reported (a fresh node has no address yet)
    let fresh = annotate(
        node("d", None, "192.168.0.4", &[]),
        annotations::ENDPOINT,
        "nope",
    );
    assert!(Mesh::build([&fresh], [], &MeshConfig::default())
        .node_problems()
        .is_empty());
    // a keyless node still gets the full mesh so it can join as soon as it publishes its key
    assert_eq!(names(&mesh.peers_for_node("c")), ["node-a", "node-b"]);
}

#[test]
fn node_leave_removes_it_everywhere() {
    let mut nodes = two_nodes();
    nodes.push(node("c", Some(&key(3)), "192.168.0.3", &["10.244.2.0/24"]));
    nodes.retain(|n| n.metadata.name.as_deref() != Some("b"));
    let cfg = MeshConfig::default();
    assert_eq!(
        names(&desired_peers_for_node(&nodes, [], &cfg, "a")),
        ["node-c"]
    );
    assert_eq!(
        names(&desired_peers_for_node(&nodes, [], &cfg, "c")),
        ["node-a"]
    );
    // removing the key annotation (agent shut down cleanly) is a leave too
    let mut nodes2 = two_nodes();
    if let Some(a) = nodes2[1].metadata.annotations.as_mut() {
        a.remove(annotations::PUBLIC_KEY);
    }
    assert!(desired_peers_for_node(&nodes2, [], &cfg, "a").is_empty());
}

#[test]
fn pod_cidr_change_is_reflected() {
    let mut nodes = two_nodes();
    if let Some(spec) = nodes[1].spec.as_mut() {
        spec.pod_cidrs = Some(vec!["10.244.9.0/24".into()]);
    }
    let for_a = desired_peers_for_node(&nodes, [], &MeshConfig::default(), "a");
    assert_eq!(cidrs(&for_a[0]), ["10.244.9.0/24"]);
}

#[test]
fn key_change_replaces_the_peer_with_the_full_allowed_ips() {
    let before = vec![
        node("a", Some(&key(1)), "192.168.0.1", &["10.244.0.0/24"]),
        node(
            "b",
            Some(&key(2)),
            "192.168.0.2",
            &["10.244.1.0/24", "fd00:1::/64"],
        ),
    ];
    let mut after = before.clone();
    after[1] = annotate(after[1].clone(), annotations::PUBLIC_KEY, &key(22));
    let cfg = MeshConfig::default();
    let old = desired_peers_for_node(&before, [], &cfg, "a");
    let new = desired_peers_for_node(&after, [], &cfg, "a");
    assert_eq!(old.len(), 1);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].public_key.to_string(), key(22));
    assert!(new.iter().all(|p| p.public_key.to_string() != key(2)));
    // the new key carries every prefix, not only what changed (Cilium #35644)
    assert_eq!(cidrs(&new[0]), cidrs(&old[0]));
    assert_eq!(cidrs(&new[0]), ["10.244.1.0/24", "fd00:1::/64"]);
}

#[test]
fn dual_stack_nodes_carry_both_families_and_tunnel_addresses() {
    let nodes = vec![
        node(
            "a",
            Some(&key(1)),
            "fd00:ffff::1",
            &["10.244.0.0/24", "fd00:1::/64"],
        ),
        // an explicit tunnel address outside the pod CIDRs is routed as a host prefix
        annotate(
            node(
                "b",
                Some(&key(2)),
                "192.168.0.2",
                &["fd00:2::/64", "10.244.1.0/24"],
            ),
            annotations::TUNNEL_ADDRESS,
            "100.96.0.2",
        ),
    ];
    let mesh = Mesh::build(&nodes, [], &MeshConfig::default());
    let for_b = mesh.peers_for_node("b");
    assert_eq!(cidrs(&for_b[0]), ["10.244.0.0/24", "fd00:1::/64"]);
    assert_eq!(
        for_b[0]
            .endpoint
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("[fd00:ffff::1]:51820")
    );
    let for_a = mesh.peers_for_node("a");
    assert_eq!(
        cidrs(&for_a[0]),
        ["10.244.1.0/24", "100.96.0.2/32", "fd00:2::/64"]
    );
}

#[test]
fn endpoint_and_port_annotations_override_the_internal_ip() {
    let nodes = vec![
        node("a", Some(&key(1)), "192.168.0.1", &["10.244.0.0/24"]),
        annotate(
            node("b", Some(&key(2)), "192.168.0.2", &["10.244.1.0/24"]),
            annotations::LISTEN_PORT,
            "51999",
        ),
        annotate(
            node("c", Some(&key(3)), "192.168.0.3", &["10.244.2.0/24"]),
            annotations::ENDPOINT,
            "c.example.com:443",
        ),
    ];
    let for_a = desired_peers_for_node(&nodes, [], &MeshConfig::default(), "a");
    let eps: Vec<String> = for_a
        .iter()
        .filter_map(|p| p.endpoint.as_ref().map(ToString::to_string))
        .collect();
    assert_eq!(eps, ["192.168.0.2:51999", "c.example.com:443"]);
}

#[test]
fn external_peers_reach_every_node() {
    let nodes = two_nodes();
    let mut peer = external(
        "office",
        &key(100),
        Some("vpn.example.com:51820"),
        &["172.20.0.0/16", "fd00:20::/48"],
        1,
    );
    peer.spec.persistent_keepalive = Some(25);
    let peers = vec![peer];
    let cfg = MeshConfig::default();
    for n in ["a", "b"] {
        let got = desired_peers_for_node(&nodes, &peers, &cfg, n);
        let office = got.iter().find(|p| p.name == "office");
        let office = office
            .cloned()
            .unwrap_or_else(|| panic!("office missing on {n}"));
        assert_eq!(cidrs(&office), ["172.20.0.0/16", "fd00:20::/48"]);
        assert_eq!(office.persistent_keepalive, Some(25));
        assert_eq!(office.node_name, None);
    }
}

#[test]
fn local_keepalive_annotation_applies_to_all_peers_of_that_node() {
    let mut nodes = two_nodes();
    nodes[0] = annotate(nodes[0].clone(), annotations::PERSISTENT_KEEPALIVE, "15");
    let mut office = external("office", &key(100), None, &["172.20.0.0/16"], 1);
    office.spec.persistent_keepalive = Some(25);
    let mesh = Mesh::build(&nodes, [&office], &MeshConfig::default());
    let ka: Vec<Option<u16>> = mesh
        .peers_for_node("a")
        .iter()
        .map(|p| p.persistent_keepalive)
        .collect();
    assert_eq!(ka, [Some(15), Some(15)]);
    let kb: Vec<Option<u16>> = mesh
        .peers_for_node("b")
        .iter()
        .map(|p| p.persistent_keepalive)
        .collect();
    assert_eq!(kb, [None, Some(25)]);
}

fn verdict(mesh: &Mesh, name: &str) -> Option<Reason> {
    mesh.member(name)
        .and_then(|m| m.verdict.as_ref().err().map(|p| p.reason))
}

#[test]
fn invalid_peers_are_excluded_with_a_reason() {
    let nodes = two_nodes();
    let peers = vec![
        external(
            "good",
            &key(100),
            Some("203.0.113.1:51820"),
            &["172.20.0.0/16"],
            1,
        ),
        external("bad-key", "not-a-key", None, &["172.21.0.0/16"], 2),
        external("dup-key", &key(100), None, &["172.22.0.0/16"], 3),
        external(
            "bad-endpoint",
            &key(101),
            Some("203.0.113.1"),
            &["172.23.0.0/16"],
            4,
        ),
        external("bad-cidr", &key(102), None, &["172.24.0.1/16"], 5),
        external("overlap", &key(103), None, &["172.20.5.0/24"], 6),
        external("steals-pods", &key(104), None, &["10.244.1.128/25"], 7),
        external(
            "self-overlap",
            &key(105),
            None,
            &["172.25.0.0/16", "172.25.1.0/24"],
            8,
        ),
        external("node-x", &key(106), None, &["172.26.0.0/16"], 9),
        external("dup-node-key", &key(1), None, &["172.27.0.0/16"], 10),
    ];
    let mut fake_node = external("fake", &key(107), None, &["172.28.0.0/16"], 11);
    fake_node.spec.node_name = Some("a".into());
    let mut peers = peers;
    peers.push(fake_node);

    let mesh = Mesh::build(&nodes, &peers, &MeshConfig::default());
    assert_eq!(verdict(&mesh, "good"), None);
    assert_eq!(verdict(&mesh, "bad-key"), Some(Reason::InvalidPublicKey));
    assert_eq!(verdict(&mesh, "dup-key"), Some(Reason::DuplicatePublicKey));
    assert_eq!(
        verdict(&mesh, "bad-endpoint"),
        Some(Reason::InvalidEndpoint)
    );
    assert_eq!(verdict(&mesh, "bad-cidr"), Some(Reason::InvalidAllowedIPs));
    assert_eq!(verdict(&mesh, "overlap"), Some(Reason::AllowedIPsOverlap));
    assert_eq!(verdict(&mesh, "steals-pods"), Some(Reason::PodCIDROverlap));
    assert_eq!(
        verdict(&mesh, "self-overlap"),
        Some(Reason::AllowedIPsOverlap)
    );
    assert_eq!(verdict(&mesh, "node-x"), Some(Reason::NameReserved));
    assert_eq!(
        verdict(&mesh, "dup-node-key"),
        Some(Reason::DuplicatePublicKey)
    );
    assert_eq!(verdict(&mesh, "fake"), Some(Reason::NotManaged));
    let msg = mesh
        .member("overlap")
        .and_then(|m| m.verdict.clone().err())
        .map(|p| p.message)
        .unwrap_or_default();
    assert_eq!(
        msg,
        "allowed IP 172.20.5.0/24 overlaps 172.20.0.0/16 of peer good"
    );

    assert_eq!(names(&mesh.peers_for_node("a")), ["good", "node-b"]);
    assert_eq!(names(&mesh.peers_for_node("b")), ["good", "node-a"]);
}

#[test]
fn a_fixed_peer_is_distributed_again() {
    let nodes = two_nodes();
    let mut p = external("office", &key(100), None, &["10.244.0.0/16"], 1);
    let cfg = MeshConfig::default();
    assert!(desired_peers_for_node(&nodes, [&p], &cfg, "a")
        .iter()
        .all(|d| d.name != "office"));
    p.spec.allowed_ips = vec!["172.20.0.0/16".into()];
    assert!(desired_peers_for_node(&nodes, [&p], &cfg, "a")
        .iter()
        .any(|d| d.name == "office"));
}

#[test]
fn the_older_claimant_wins_regardless_of_list_order() {
    let nodes = two_nodes();
    let old = external("old", &key(100), None, &["172.20.0.0/16"], 1);
    let new = external("new", &key(101), None, &["172.20.0.0/24"], 2);
    let m1 = Mesh::build(&nodes, [&old, &new], &MeshConfig::default());
    let m2 = Mesh::build(&nodes, [&new, &old], &MeshConfig::default());
    assert_eq!(m1, m2);
    assert_eq!(verdict(&m1, "old"), None);
    assert_eq!(verdict(&m1, "new"), Some(Reason::AllowedIPsOverlap));
}

#[test]
fn cluster_cidr_is_reserved_for_nodes() {
    let nodes = two_nodes();
    let p = external("x", &key(100), None, &["10.244.200.0/24"], 1);
    let open = Mesh::build(&nodes, [&p], &MeshConfig::default());
    assert_eq!(verdict(&open, "x"), None);
    let cfg = MeshConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"))],
    };
    let closed = Mesh::build(&nodes, [&p], &cfg);
    assert_eq!(verdict(&closed, "x"), Some(Reason::PodCIDROverlap));
    // nodes themselves live inside the cluster CIDR and stay valid
    assert_eq!(verdict(&closed, "node-a"), None);
}

#[test]
fn an_external_peer_routing_a_node_address_is_refused_so_node_traffic_never_enters_the_tunnel() {
    // a home LAN 192.168.0.0/16 while the nodes sit in 192.168.0.0/24: kubelet and API server
    // traffic would follow the peer's routes (table 51820 comes before main)
    let nodes = two_nodes();
    let lan = external("home-lan", &key(100), None, &["192.168.0.0/16"], 1);
    let host = external("one-host", &key(101), None, &["192.168.0.2/32"], 2);
    let beside = external("beside", &key(102), None, &["192.168.7.0/24"], 3);
    let mesh = Mesh::build(&nodes, [&lan, &host, &beside], &MeshConfig::default());
    assert_eq!(verdict(&mesh, "home-lan"), Some(Reason::NodeAddressOverlap));
    assert_eq!(verdict(&mesh, "one-host"), Some(Reason::NodeAddressOverlap));
    assert_eq!(verdict(&mesh, "beside"), None);
    let msg = mesh.member("one-host").and_then(|m| m.verdict.clone().err()).map(|p| p.message).unwrap_or_default();
    assert!(msg.contains("192.168.0.2") && msg.contains("node b"), "{msg}");
    // the refused peers reach no node; the nodes still reach each other
    assert_eq!(names(&mesh.peers_for_node("a")), vec!["beside", "node-b"]);
    // an endpoint annotation's address counts too, and a node joining later wins over the peer
    let c = annotate(
        node("c", Some(&key(3)), "192.168.0.3", &["10.244.2.0/24"]),
        annotations::ENDPOINT,
        "172.31.5.9:51820",
    );
    let far = external("far", &key(103), None, &["172.31.0.0/16"], 4);
    let with_c: Vec<_> = two_nodes().into_iter().chain([c]).collect();
    let m2 = Mesh::build(&with_c, [&far], &MeshConfig::default());
    assert_eq!(verdict(&m2, "far"), Some(Reason::NodeAddressOverlap));
    assert_eq!(verdict(&Mesh::build(&nodes, [&far], &MeshConfig::default()), "far"), None);
}

#[test]
fn a_node_whose_pod_cidr_holds_a_node_address_is_refused() {
    // pods and nodes numbered from one range: node c's pod CIDR holds node a's and its own address
    let c = node("c", Some(&key(3)), "192.168.0.3", &["192.168.0.0/24"]);
    let d = node("d", Some(&key(4)), "192.168.1.4", &["10.244.4.0/24"]);
    let nodes: Vec<_> = two_nodes().into_iter().chain([c, d]).collect();
    let mesh = Mesh::build(&nodes, [], &MeshConfig::default());
    assert_eq!(verdict(&mesh, "node-c"), Some(Reason::NodeAddressOverlap));
    let msg = mesh.member("node-c").and_then(|m| m.verdict.clone().err()).map(|p| p.message).unwrap_or_default();
    assert!(msg.contains("192.168.0.0/24 contains 192.168.0.") && msg.contains("an address of node"), "{msg}");
    // the others stay, and none routes c's range
    for n in ["node-a", "node-b", "node-d"] {
        assert_eq!(verdict(&mesh, n), None, "{n}");
    }
    assert_eq!(names(&mesh.peers_for_node("a")), vec!["node-b", "node-d"]);
}

#[test]
fn node_problems_exclude_the_node_and_are_reported() {
    let nodes = vec![
        node("a", Some(&key(1)), "192.168.0.1", &["10.244.0.0/24"]),
        node("b", Some("garbage"), "192.168.0.2", &["10.244.1.0/24"]),
        annotate(
            node("c", Some(&key(3)), "192.168.0.3", &["10.244.2.0/24"]),
            annotations::ENDPOINT,
            "nope",
        ),
        node("d", Some(&key(1)), "192.168.0.4", &["10.244.3.0/24"]),
    ];
    let mesh = Mesh::build(&nodes, [], &MeshConfig::default());
    assert_eq!(verdict(&mesh, "node-b"), Some(Reason::InvalidPublicKey));
    assert_eq!(verdict(&mesh, "node-c"), Some(Reason::InvalidEndpoint));
    assert_eq!(verdict(&mesh, "node-d"), Some(Reason::DuplicatePublicKey));
    assert!(mesh.peers_for_node("b").iter().any(|p| p.name == "node-a"));
    assert!(mesh.peers_for_node("a").is_empty());
    let problems: Vec<&str> = mesh.node_problems().keys().map(String::as_str).collect();
    assert_eq!(problems, ["b", "c"]);
    // parse problems keep the last good spec; a duplicate key still projects a spec
    let spec_of = |n: &str| mesh.member(n).and_then(|m| m.node_peer_spec());
    assert!(spec_of("node-b").is_none());
    assert!(spec_of("node-c").is_none());
    assert!(spec_of("node-d").is_some());
}

#[test]
fn managed_node_peer_objects_are_not_inputs() {
    let nodes = two_nodes();
    let mut stale = managed(external("node-gone", &key(9), None, &["10.99.0.0/24"], 1));
    stale.spec.node_name = Some("gone".into());
    let got = desired_peers_for_node(&nodes, [&stale], &MeshConfig::default(), "a");
    assert_eq!(names(&got), ["node-b"]);
}

#[test]
fn output_is_deterministic_and_sorted() {
    let (mut nodes, mut peers) = cluster(50, 20);
    let cfg = MeshConfig::default();
    let first = desired_peers_for_node(&nodes, &peers, &cfg, "node-00007.example.internal");
    nodes.reverse();
    peers.reverse();
    let second = desired_peers_for_node(&nodes, &peers, &cfg, "node-00007.example.internal");
    assert_eq!(first, second);
    assert_eq!(first.len(), 49 + 20);
    let ns = names(&first);
    let mut sorted = ns.clone();
    sorted.sort();
    assert_eq!(ns, sorted);
    for p in &first {
        let mut c = p.allowed_ips.clone();
        c.sort();
        assert_eq!(c, p.allowed_ips);
    }
}

#[test]
fn a_pod_cidr_two_nodes_claim_is_reported_the_same_whatever_the_list_order() {
    // Found by the api/fuzz mesh_build target: the conflict named whichever Node came first
    // in the list, so a relist could flip the peer's status message back and forth.
    let a = node("a", Some(&key(1)), "192.168.0.1", &["10.244.0.0/24"]);
    let b = node("b", Some(&key(2)), "192.168.0.2", &["10.244.0.0/24"]);
    let office = external("office", &key(3), None, &["10.244.0.0/16"], 1);
    let cfg = MeshConfig::default();
    let message = |nodes: &[&k8s_openapi::api::core::v1::Node]| {
        let mesh = Mesh::build(nodes.iter().copied(), [&office], &cfg);
        let m = mesh.member("office").expect("office is a member");
        m.verdict.clone().expect_err("office overlaps the pod network").message
    };
    let (ab, ba) = (message(&[&a, &b]), message(&[&b, &a]));
    assert_eq!(ab, ba);
    assert!(ab.contains("of node a"), "{ab}");
}

#[test]
fn a_tunnel_address_inside_another_nodes_pod_cidr_excludes_the_node_that_set_it() {
    // Node a ranks first (by name) and points its tunnel address at b's pods: before, a's /32
    // was claimed first and b, whose pod CIDR is its own, was excluded from the mesh.
    let a = annotate(
        node("a", Some(&key(1)), "192.168.0.1", &["10.244.0.0/24"]),
        annotations::TUNNEL_ADDRESS,
        "10.244.1.5",
    );
    let b = node("b", Some(&key(2)), "192.168.0.2", &["10.244.1.0/24"]);
    for nodes in [[&a, &b], [&b, &a]] {
        let mesh = Mesh::build(nodes, [], &MeshConfig::default());
        let bad = mesh.member("node-a").expect("a is a member").verdict.clone().expect_err("a is excluded");
        assert_eq!(bad.reason, Reason::PodCIDROverlap);
        assert_eq!(bad.message, "tunnel address 10.244.1.5 lies in pod CIDR 10.244.1.0/24 of node b");
        assert!(mesh.member("node-b").is_some_and(|m| m.is_valid()), "b keeps its place");
    }
    // A tunnel address outside every pod CIDR stays fine.
    let a = annotate(a.clone(), annotations::TUNNEL_ADDRESS, "100.96.0.1");
    let mesh = Mesh::build([&a, &b], [], &MeshConfig::default());
    assert!(mesh.members().iter().all(|m| m.is_valid()));
}
