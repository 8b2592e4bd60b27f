//! Values every wgmesh component must agree on. One place, so the parts cannot drift apart.

/// API group of the wgmesh custom resources.
pub const GROUP: &str = "wgmesh.io";

/// API version of `WireGuardPeer`.
pub const VERSION: &str = "v1alpha1";

/// Default WireGuard UDP listen port on every node.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;

/// Name of the WireGuard interface the node agent creates.
pub const INTERFACE_NAME: &str = "wgmesh0";

/// Bytes WireGuard adds to every packet in the worst case (IPv6 outer header 40 + UDP 8 +
/// WireGuard 32), the same figure Flannel and Antrea subtract.
pub const MTU_OVERHEAD: u32 = 80;

/// Routing table where the node agent puts routes to remote pod CIDRs.
pub const ROUTING_TABLE: u32 = 51820;

/// Priority of the policy rule that sends traffic to [`ROUTING_TABLE`]; below `main` (32766).
pub const ROUTING_RULE_PRIORITY: u32 = 100;

/// Mark on the engine's own UDP packets, matched as `FWMARK/FWMARK` so the policy rule skips
/// them. Bit 29: wg-quick's 51820 (0xca6c) carries Cilium's ingress-proxy nibble (0xa00/0xf00,
/// rule at priority 10), kube-proxy's masquerade bit 0x4000 and KubeSpan's 0x60 bits; no
/// rule of Cilium, kube-proxy, flannel, Istio, Tailscale, KubeSpan, kube-router or Antrea
/// matches bit 29. Calico claims 0xffff0000 for its marks: set its mark mask to 0xdfff0000.
pub const FWMARK: u32 = 0x2000_0000;

/// File the node agent creates once its interface and peers are configured; the CNI plugin
/// refuses to wire pods until it exists, so pods never start with plaintext paths.
pub const READINESS_PATH: &str = "/run/wgmesh/ready";

/// Server-side-apply field manager of the operator.
pub const OPERATOR_FIELD_MANAGER: &str = "wgmesh-operator";

/// Server-side-apply field manager the node agents use for `status.latestHandshake`.
pub const AGENT_FIELD_MANAGER: &str = "wgmesh-node-agent";

/// A handshake older than this means the session is gone (WireGuard's REJECT_AFTER_TIME).
pub const HANDSHAKE_FRESH_SECS: i64 = 180;

/// Name of the Lease the operator replicas elect a leader on.
pub const LEADER_LEASE_NAME: &str = "wgmesh-operator";

/// Prefix of the `WireGuardPeer` the operator keeps for each Node.
pub const NODE_PEER_PREFIX: &str = "node-";

/// Taint a node carries from registration until its agent is ready (`kubelet
/// --register-with-taints=wgmesh.io/agent-not-ready=:NoSchedule`), so no pod starts there
/// before the CNI chain can hold it; the agent removes it.
pub const NOT_READY_TAINT: &str = "wgmesh.io/agent-not-ready";
