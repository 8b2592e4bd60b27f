//! Shared types of wgmesh: the `WireGuardPeer` custom resource, the annotation and label names,
//! the constants every component must agree on, validated key/CIDR/endpoint types, and the pure
//! function from observed Nodes and peers to the desired peers of one node.

pub mod annotations;
pub mod cidr;
pub mod conditions;
pub mod constants;
pub mod desired;
pub mod endpoint;
pub mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod fixtures;
pub mod key;
pub mod mesh;
pub mod naming;
pub mod node;
pub mod peer;
pub mod schema;

pub use cidr::IpCidr;
pub use desired::DesiredPeer;
pub use endpoint::Endpoint;
pub use key::PublicKey;
pub use mesh::{desired_peers_for_node, Member, MemberKind, Mesh, MeshConfig};
pub use peer::{SecretKeyRef, WireGuardPeer, WireGuardPeerSpec, WireGuardPeerStatus};
