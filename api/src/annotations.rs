//! Annotation and label names on Nodes and `WireGuardPeer`s.

/// Node annotation where the node agent publishes its WireGuard public key (base64).
/// Written by the agent only; the operator turns it into the node's `WireGuardPeer`.
pub const PUBLIC_KEY: &str = "wgmesh.io/public-key";

/// Optional Node annotation overriding the endpoint other nodes dial (`host:port`), for nodes
/// behind NAT or with a public address that is not their InternalIP.
pub const ENDPOINT: &str = "wgmesh.io/endpoint";

/// Optional Node annotation with the agent's UDP listen port when it is not 51820.
pub const LISTEN_PORT: &str = "wgmesh.io/listen-port";

/// Optional Node annotation with the node's tunnel addresses (comma-separated IPs, at most one
/// per family); without it the first address of each pod CIDR is the tunnel address.
pub const TUNNEL_ADDRESS: &str = "wgmesh.io/tunnel-address";

/// Optional Node annotation: persistent keepalive in seconds for peers of this node (NAT).
pub const PERSISTENT_KEEPALIVE: &str = "wgmesh.io/persistent-keepalive";

/// Standard label marking objects the operator owns; it only ever deletes peers carrying it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Value of [`MANAGED_BY_LABEL`] on operator-owned peers.
pub const MANAGED_BY_VALUE: &str = "wgmesh-operator";
