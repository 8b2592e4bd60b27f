//! The agent's validated settings (built from the command line in `cli.rs`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use wgmesh_api::IpCidr;

use crate::engine::EngineMode;

/// Where the desired state comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A directory of `WireGuardPeer` (and `Node`) YAML documents.
    File { dir: PathBuf },
    /// Nodes and `WireGuardPeer`s watched in the cluster.
    Kubernetes,
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub source: Source,
    pub interface: String,
    pub private_key_path: PathBuf,
    pub public_key_file: Option<PathBuf>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub table: u32,
    pub rule_priority: u32,
    /// Fixed wg MTU; otherwise underlay MTU − api `MTU_OVERHEAD`.
    pub mtu: Option<u32>,
    pub underlay_interface: Option<String>,
    pub cluster_cidrs: Vec<IpCidr>,
    /// Overrides the local node's pod CIDRs from the source.
    pub pod_cidrs: Vec<IpCidr>,
    /// Overrides the local node's tunnel addresses from the source.
    pub tunnel_addresses: Vec<IpAddr>,
    pub fail_closed: bool,
    /// With `fail_closed`: the nftables table that drops remote-pod packets leaving or arriving
    /// (forwarded) outside the tunnel.
    pub nft_guard: bool,
    pub readiness_path: PathBuf,
    pub engine_binary: PathBuf,
    pub engine_mode: EngineMode,
    pub interval: Duration,
    /// Where /healthz, /readyz and /metrics are served, if anywhere.
    pub http_addr: Option<std::net::SocketAddr>,
}

/// Interface names are at most 15 bytes and cannot contain '/', ':' or whitespace.
pub fn valid_interface_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n != "."
        && n != ".."
        && !n.contains(['/', ':'])
        && !n.chars().any(char::is_whitespace)
}

impl AgentConfig {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_interface_name(&self.interface) {
            return Err(format!(
                "invalid interface name {:?} (1-15 bytes, no '/', ':' or spaces)",
                self.interface
            ));
        }
        if self.node_name.is_empty() {
            return Err("the node name is empty: pass --node-name or set NODE_NAME".into());
        }
        // an inverted match on mark 0 would match nothing, and the engine's own packets would loop
        if self.fwmark == 0 {
            return Err("--fwmark must not be 0: it keeps the engine's own UDP packets out of the mesh table".into());
        }
        // 0, 32766 and 32767 hold the kernel's local, main and default rules.
        if matches!(self.rule_priority, 0 | 32766 | 32767) {
            return Err(format!(
                "--rule-priority {} is where the kernel's own rules sit; pick one below 32766",
                self.rule_priority
            ));
        }
        if self.fail_closed && self.cluster_cidrs.is_empty() {
            return Err("fail-closed needs the cluster's pod network: pass --cluster-cidr (or --no-fail-closed)".into());
        }
        if self.fail_closed && self.nft_guard {
            crate::guard::ruleset(&self.interface, &self.cluster_cidrs, &[], &[], &[]).map_err(|e| e.to_string())?;
        }
        if self.table == 0 || (253..=255).contains(&self.table) {
            return Err(format!(
                "--table {} is a reserved routing table",
                self.table
            ));
        }
        if let Some(m) = self.mtu {
            if !(576..=65535).contains(&m) {
                return Err(format!("--mtu {m} is outside 576-65535"));
            }
        }
        if self.interval.is_zero() {
            return Err("--interval-ms must be positive".into());
        }
        Ok(())
    }
}
