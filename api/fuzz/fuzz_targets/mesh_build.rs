//! Node and `WireGuardPeer` fields as anyone with write access could set them, through the
//! field parsers and the desired-state function: never a panic, every accepted field prints
//! back to itself, and the mesh keeps its promises (same result in any order, one owner per
//! key and per prefix, no external peer inside the pod network, no node peered with itself).
#![no_main]
use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wgmesh_api::annotations::{ENDPOINT, LISTEN_PORT, PERSISTENT_KEEPALIVE, TUNNEL_ADDRESS};
use wgmesh_api::fixtures::{annotate, external, key, managed, node, ts};
use wgmesh_api::{Endpoint, IpCidr, MemberKind, Mesh, MeshConfig, PublicKey, WireGuardPeer};

/// A field value: mostly near-valid text from small pools (so keys and prefixes collide),
/// sometimes anything at all.
fn text(u: &mut Unstructured) -> Result<String> {
    let t = match u.int_in_range(0..=6u8)? {
        0 => key(u.int_in_range(0..=3u32)?),
        1 => format!(
            "10.{}.{}.0/{}",
            u.int_in_range(0..=3u8)?,
            u.int_in_range(0..=3u8)?,
            u.int_in_range(0..=33u8)?
        ),
        2 => format!(
            "fd00:{:x}::/{}",
            u.int_in_range(0..=3u16)?,
            u.int_in_range(0..=129u8)?
        ),
        3 => format!(
            "10.{}.0.{}",
            u.int_in_range(0..=3u8)?,
            u.int_in_range(0..=3u8)?
        ),
        4 => format!(
            "{}:{}",
            ["192.0.2.1", "[2001:db8::1]", "vpn.example.com", "", "[::1"][u.choose_index(5)?],
            u.int_in_range(0..=3u32)? * 30000
        ),
        5 => [
            "",
            " ",
            "0",
            "25",
            "51820",
            "10.0.0.0/8",
            "::/0",
            "0.0.0.0/0",
            "10.0.0.1,fd00::1",
        ][u.choose_index(9)?]
        .to_owned(),
        _ => u.arbitrary::<String>()?,
    };
    round_trips(&t);
    Ok(t)
}

fn texts(u: &mut Unstructured) -> Result<Vec<String>> {
    let n = u.int_in_range(0..=3usize)?;
    (0..n).map(|_| text(u)).collect()
}

fn opt_text(u: &mut Unstructured) -> Result<Option<String>> {
    Ok(if u.arbitrary()? { Some(text(u)?) } else { None })
}

fn inputs(u: &mut Unstructured) -> Result<(Vec<Node>, Vec<WireGuardPeer>, Vec<String>)> {
    let mut nodes = Vec::new();
    let mut names = BTreeSet::new();
    for _ in 0..u.int_in_range(0..=5u8)? {
        let name = format!("n{}", u.int_in_range(0..=5u8)?);
        let pods = texts(u)?;
        let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
        let mut n = node(&name, opt_text(u)?.as_deref(), &text(u)?, &pods);
        for a in [ENDPOINT, LISTEN_PORT, TUNNEL_ADDRESS, PERSISTENT_KEEPALIVE] {
            if let Some(v) = opt_text(u)? {
                n = annotate(n, a, &v);
            }
        }
        n.metadata.creation_timestamp = Some(ts(i64::from(u.int_in_range(0..=3u8)?)));
        // The API server keeps names unique.
        if names.insert(name) {
            nodes.push(n);
        }
    }
    let mut peers = Vec::new();
    let mut names = BTreeSet::new();
    for _ in 0..u.int_in_range(0..=5u8)? {
        let name = if u.arbitrary()? {
            format!("p{}", u.int_in_range(0..=5u8)?)
        } else {
            format!("node-n{}", u.int_in_range(0..=5u8)?)
        };
        let allowed = texts(u)?;
        let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
        let mut p = external(
            &name,
            &text(u)?,
            opt_text(u)?.as_deref(),
            &allowed,
            i64::from(u.int_in_range(0..=3u8)?),
        );
        p.spec.persistent_keepalive = u.arbitrary()?;
        if u.arbitrary()? {
            p.spec.node_name = Some(format!("n{}", u.int_in_range(0..=5u8)?));
        }
        if u.arbitrary()? {
            p = managed(p);
        }
        if u.ratio(1, 8)? {
            p.metadata.deletion_timestamp = Some(ts(9));
        }
        if names.insert(name) {
            peers.push(p);
        }
    }
    Ok((nodes, peers, texts(u)?))
}

/// Whatever a field parser accepts prints as text it accepts again, as the same value.
fn round_trips(s: &str) {
    if let Ok(c) = s.parse::<IpCidr>() {
        assert_eq!(c.to_string().parse::<IpCidr>().ok(), Some(c), "{s:?}");
    }
    if let Ok(e) = s.parse::<Endpoint>() {
        assert_eq!(
            e.to_string().parse::<Endpoint>().ok(),
            Some(e.clone()),
            "{s:?}"
        );
    }
    if let Ok(k) = s.parse::<PublicKey>() {
        assert_eq!(k.to_string().parse::<PublicKey>().ok(), Some(k), "{s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((nodes, peers, cluster)) = inputs(&mut u) else {
        return;
    };
    let config = MeshConfig {
        cluster_cidrs: cluster.iter().filter_map(|t| t.parse().ok()).collect(),
    };
    let mesh = Mesh::build(&nodes, &peers, &config);
    let reversed = Mesh::build(nodes.iter().rev(), peers.iter().rev(), &config);
    assert_eq!(mesh, reversed, "the result depends on the order of the objects");

    // Every node's pod CIDRs are reserved, joined or not.
    let pod_cidrs: Vec<IpCidr> = nodes
        .iter()
        .filter_map(|n| n.spec.as_ref())
        .flat_map(|s| match s.pod_cidrs.as_deref() {
            Some(v) if !v.is_empty() => v.to_vec(),
            _ => s.pod_cidr.iter().cloned().collect(),
        })
        .filter_map(|t| t.parse().ok())
        .collect();
    let valid: Vec<_> = mesh.members().iter().filter(|m| m.is_valid()).collect();
    for (i, a) in valid.iter().enumerate() {
        assert!(a.public_key.is_some(), "{} is valid without a key", a.name);
        for b in &valid[i + 1..] {
            assert_ne!(
                a.public_key, b.public_key,
                "{} and {} share a key",
                a.name, b.name
            );
            for x in &a.allowed_ips {
                assert!(
                    !b.allowed_ips.iter().any(|y| x.overlaps(y)),
                    "{} and {} overlap at {x}",
                    a.name,
                    b.name
                );
            }
        }
        if a.kind == MemberKind::External {
            for x in &a.allowed_ips {
                assert!(
                    !config.cluster_cidrs.iter().any(|c| c.overlaps(x)),
                    "external {} inside the cluster network at {x}",
                    a.name
                );
                assert!(
                    !pod_cidrs.iter().any(|c| c.overlaps(x)),
                    "external {} inside a node's pod CIDR at {x}",
                    a.name
                );
            }
        }
    }
    for n in &nodes {
        let name = n.metadata.name.as_deref().unwrap_or_default();
        let desired = mesh.peers_for_node(name);
        assert!(
            desired.iter().all(|d| d.node_name.as_deref() != Some(name)),
            "{name} peers with itself"
        );
        let keys: BTreeSet<_> = desired.iter().map(|d| d.public_key).collect();
        assert_eq!(keys.len(), desired.len(), "{name} gets one key twice");
    }
});
