//! What a node agent configures for one peer.

use crate::cidr::IpCidr;
use crate::endpoint::Endpoint;
use crate::key::PublicKey;
use crate::peer::SecretKeyRef;

/// One peer as a node must configure it on its WireGuard interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPeer {
    /// Name of the `WireGuardPeer` (for logs and status reporting).
    pub name: String,
    /// Peer's public key; when it changes under the same name the agent renames the peer in
    /// place (`rotate_public_key`), keeping its sessions.
    pub public_key: PublicKey,
    /// Where to send packets, if known.
    pub endpoint: Option<Endpoint>,
    /// Full set of prefixes routed to the peer, sorted.
    pub allowed_ips: Vec<IpCidr>,
    /// Keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
    /// Where the preshared key lives, if any.
    pub preshared_key_secret_ref: Option<SecretKeyRef>,
    /// Node name for node peers.
    pub node_name: Option<String>,
}
