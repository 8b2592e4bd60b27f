//! What wgmesh reads from a Node: the key its agent published, where to reach it, its pod CIDRs
//! and its tunnel addresses.
//!
//! Tunnel address: the address the node agent puts on `wgmesh0` and uses as the source of
//! node-originated traffic to remote pods, so receivers accept it (WireGuard drops packets whose
//! source is outside the sender's allowed IPs). By default it is the first host address of each
//! pod CIDR (`10.244.1.0/24` -> `10.244.1.1`, `fd00:1::/64` -> `fd00:1::1`), which is already
//! covered by the pod CIDR; the `wgmesh.io/tunnel-address` annotation overrides it, and an
//! override outside the pod CIDRs is added to the node's allowed IPs as a /32 or /128.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use crate::annotations;
use crate::cidr::{parse_ip, IpCidr};
use crate::conditions::Reason;
use crate::constants::DEFAULT_LISTEN_PORT;
use crate::endpoint::Endpoint;
use crate::key::PublicKey;

/// A reason a node cannot take part in the mesh, with a message for Events and conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Machine-readable reason.
    pub reason: Reason,
    /// Human-readable explanation.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// Parsed, validated view of one Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// True if the agent published a key annotation (valid or not): the node takes part.
    pub joined: bool,
    /// Public key the agent published, if it parses.
    pub public_key: Option<PublicKey>,
    /// Where other nodes send its traffic.
    pub endpoint: Option<Endpoint>,
    /// `spec.podCIDRs` (or the legacy `spec.podCIDR`), sorted.
    pub pod_cidrs: Vec<IpCidr>,
    /// One tunnel address per family at most.
    pub tunnel_addresses: Vec<IpAddr>,
    /// Every address the node has (`status.addresses` and a literal endpoint), sorted: an
    /// external peer routing any of them would pull the node's own traffic into the tunnel.
    pub addresses: Vec<IpAddr>,
    /// Keepalive this node applies to all its peers (it sits behind NAT).
    pub local_keepalive: Option<u16>,
    /// First problem found in the node's annotations or addresses.
    pub problem: Option<Problem>,
}

impl NodeFacts {
    /// Allowed IPs other nodes route to this node: its pod CIDRs plus any tunnel address the
    /// pod CIDRs do not already cover, sorted.
    pub fn allowed_ips(&self) -> Vec<IpCidr> {
        let mut out = self.pod_cidrs.clone();
        for ip in &self.tunnel_addresses {
            if !self.pod_cidrs.iter().any(|c| c.contains(*ip)) {
                out.push(IpCidr::host(*ip));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|v| v.trim())
}

/// Reads a Node. Never fails: problems are recorded so they can be reported per node.
pub fn node_facts(node: &Node) -> NodeFacts {
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut problems: Vec<Problem> = Vec::new();

    let key_text = annotation(node, annotations::PUBLIC_KEY).filter(|t| !t.is_empty());
    let public_key = match key_text {
        None => None,
        Some(text) => match text.parse::<PublicKey>() {
            Ok(k) => Some(k),
            Err(e) => {
                problems.push(Problem::new(
                    Reason::InvalidPublicKey,
                    format!("annotation {}: {e}", annotations::PUBLIC_KEY),
                ));
                None
            }
        },
    };

    let pod_cidrs = pod_cidrs(node, &mut problems);
    let tunnel_addresses = tunnel_addresses(node, &pod_cidrs, &mut problems);
    let endpoint = endpoint(node, &mut problems);
    let mut addresses: Vec<IpAddr> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|a| parse_ip(&a.address).ok())
        .chain(endpoint.as_ref().and_then(Endpoint::literal_ip))
        .collect();
    addresses.sort();
    addresses.dedup();

    let local_keepalive = match annotation(node, annotations::PERSISTENT_KEEPALIVE) {
        None | Some("") => None,
        Some(text) => match text.parse::<u16>() {
            Ok(0) => None,
            Ok(v) => Some(v),
            Err(_) => {
                problems.push(Problem::new(
                    Reason::InvalidKeepalive,
                    format!(
                        "annotation {}: {text:?} is not a number of seconds (0-65535)",
                        annotations::PERSISTENT_KEEPALIVE
                    ),
                ));
                None
            }
        },
    };

    NodeFacts {
        name,
        joined: key_text.is_some(),
        public_key,
        endpoint,
        pod_cidrs,
        tunnel_addresses,
        addresses,
        local_keepalive,
        problem: problems.into_iter().next(),
    }
}

fn pod_cidrs(node: &Node, problems: &mut Vec<Problem>) -> Vec<IpCidr> {
    let spec = node.spec.as_ref();
    let mut texts: Vec<&str> = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    // older clusters only fill the singular field
    if texts.is_empty() {
        texts.extend(spec.and_then(|s| s.pod_cidr.as_deref()));
    }
    let mut out = Vec::new();
    for text in texts {
        match text.parse::<IpCidr>() {
            Ok(c) => out.push(c),
            Err(e) => problems.push(Problem::new(
                Reason::InvalidAllowedIPs,
                format!("spec.podCIDRs entry {text:?}: {e}"),
            )),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn tunnel_addresses(node: &Node, pod_cidrs: &[IpCidr], problems: &mut Vec<Problem>) -> Vec<IpAddr> {
    let Some(text) = annotation(node, annotations::TUNNEL_ADDRESS).filter(|t| !t.is_empty()) else {
        return pod_cidrs.iter().filter_map(|c| c.nth(1)).collect();
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for part in text.split(',').map(str::trim) {
        match parse_ip(part) {
            Ok(ip) if out.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) => {
                problems.push(Problem::new(
                    Reason::InvalidAllowedIPs,
                    format!(
                        "annotation {}: at most one address per family",
                        annotations::TUNNEL_ADDRESS
                    ),
                ));
                return Vec::new();
            }
            Ok(ip) => out.push(ip),
            Err(e) => {
                problems.push(Problem::new(
                    Reason::InvalidAllowedIPs,
                    format!("annotation {}: {e}", annotations::TUNNEL_ADDRESS),
                ));
                return Vec::new();
            }
        }
    }
    out.sort();
    out
}

fn endpoint(node: &Node, problems: &mut Vec<Problem>) -> Option<Endpoint> {
    if let Some(text) = annotation(node, annotations::ENDPOINT).filter(|t| !t.is_empty()) {
        return match text.parse::<Endpoint>() {
            Ok(e) => Some(e),
            Err(e) => {
                problems.push(Problem::new(
                    Reason::InvalidEndpoint,
                    format!("annotation {}: {e}", annotations::ENDPOINT),
                ));
                None
            }
        };
    }
    let port = match annotation(node, annotations::LISTEN_PORT).filter(|t| !t.is_empty()) {
        None => DEFAULT_LISTEN_PORT,
        Some(text) => match text.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                problems.push(Problem::new(
                    Reason::InvalidEndpoint,
                    format!(
                        "annotation {}: {text:?} is not a UDP port (1-65535)",
                        annotations::LISTEN_PORT
                    ),
                ));
                return None;
            }
        },
    };
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    // the kubelet lists the primary family first, so the first InternalIP is the one to dial
    let pick = |kind: &str| {
        addresses
            .iter()
            .filter(|a| a.type_ == kind)
            .find_map(|a| parse_ip(&a.address).ok())
    };
    match pick("InternalIP").or_else(|| pick("ExternalIP")) {
        Some(ip) => Some(Endpoint::ip(ip, port)),
        None => {
            problems.push(Problem::new(
                Reason::InvalidEndpoint,
                "node has no InternalIP or ExternalIP address and no wgmesh.io/endpoint annotation",
            ));
            None
        }
    }
}
