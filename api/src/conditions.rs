//! Condition types and reasons on `WireGuardPeer.status.conditions`.

/// The spec was accepted and the peer is distributed to the nodes.
pub const VALID: &str = "Valid";

/// A node completed a handshake with the peer within the last 180 s.
pub const READY: &str = "Ready";

/// Why a peer is or is not valid. The string form is the condition's and Event's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Valid: distributed to the nodes.
    Accepted,
    /// The public key is not a WireGuard key.
    InvalidPublicKey,
    /// Another peer that ranks first already uses this public key.
    DuplicatePublicKey,
    /// The endpoint (or a node's endpoint/port annotation or address) is unusable.
    InvalidEndpoint,
    /// An allowedIPs entry (or a node's pod CIDR or tunnel address) does not parse.
    InvalidAllowedIPs,
    /// An allowed prefix overlaps one of another peer (or of this peer).
    AllowedIPsOverlap,
    /// An external peer claims addresses of the cluster's pod network.
    PodCIDROverlap,
    /// An external peer's allowedIPs, or a node's pod CIDR or tunnel address, contain an
    /// address of a node (its own traffic, kubelet's and the API server's, would enter the tunnel).
    NodeAddressOverlap,
    /// The keepalive annotation of a node is not a number of seconds.
    InvalidKeepalive,
    /// `spec.nodeName` is set on a peer wgmesh-operator does not manage.
    NotManaged,
    /// External peers may not use the `node-` name prefix reserved for node peers.
    NameReserved,
    /// Ready: a node saw a handshake within 180 s.
    HandshakeRecent,
    /// Not ready: the latest handshake is older than 180 s.
    HandshakeStale,
    /// Not ready: no node reported a handshake yet.
    NoHandshake,
    /// Not ready because the peer is not valid.
    NotValid,
}

impl Reason {
    /// CamelCase text used as the Kubernetes `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::InvalidPublicKey => "InvalidPublicKey",
            Reason::DuplicatePublicKey => "DuplicatePublicKey",
            Reason::InvalidEndpoint => "InvalidEndpoint",
            Reason::InvalidAllowedIPs => "InvalidAllowedIPs",
            Reason::AllowedIPsOverlap => "AllowedIPsOverlap",
            Reason::PodCIDROverlap => "PodCIDROverlap",
            Reason::NodeAddressOverlap => "NodeAddressOverlap",
            Reason::InvalidKeepalive => "InvalidKeepalive",
            Reason::NotManaged => "NotManaged",
            Reason::NameReserved => "NameReserved",
            Reason::HandshakeRecent => "HandshakeRecent",
            Reason::HandshakeStale => "HandshakeStale",
            Reason::NoHandshake => "NoHandshake",
            Reason::NotValid => "NotValid",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
