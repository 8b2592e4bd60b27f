//! Command line: `run`, `cleanup`, `pubkey`, `rotate-key`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wgmesh_api::constants::{
    DEFAULT_LISTEN_PORT, FWMARK, INTERFACE_NAME, READINESS_PATH, ROUTING_RULE_PRIORITY, ROUTING_TABLE,
};
use wgmesh_api::IpCidr;

use crate::config::{AgentConfig, Source};
use crate::engine::{default_binary, EngineMode};
use crate::key::DEFAULT_PRIVATE_KEY_PATH;

#[derive(Parser, Debug)]
#[command(
    name = "wgmesh-node-agent",
    version,
    about = "wgmesh node agent: configures wgmesh-tunnel, routes and fail-closed drops for this node"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent until SIGTERM/SIGINT (the engine and routes stay in place on exit).
    Run(Box<RunArgs>),
    /// Remove everything the agent installed: rules, routes, the interface (which stops the
    /// engine), the readiness and public key files; the private key only with --remove-key.
    Cleanup(CleanupArgs),
    /// Print the node's public key, generating the private key first if there is none.
    Pubkey(KeyArgs),
    /// Replace the node's private key with a fresh one and print the new public key; the
    /// running agent picks it up and keeps every session alive through the change.
    RotateKey(KeyArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// A directory of WireGuardPeer YAML documents (--peer-dir).
    File,
    /// Watch WireGuardPeers and Nodes in the cluster (in-cluster config or kubeconfig).
    Kubernetes,
}

#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Private key file (created 0600 on first start, reused afterwards).
    #[arg(long, default_value = DEFAULT_PRIVATE_KEY_PATH)]
    pub private_key: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// WireGuard interface name (unique per host: the UAPI socket directory is shared).
    #[arg(long, default_value = INTERFACE_NAME)]
    pub interface: String,
    /// Routing table for the mesh routes.
    #[arg(long, default_value_t = ROUTING_TABLE)]
    pub table: u32,
    /// Priority of the policy rule selecting the table (before `main` at 32766).
    #[arg(long, default_value_t = ROUTING_RULE_PRIORITY)]
    pub rule_priority: u32,
    /// Readiness file wgmesh-cni checks.
    #[arg(long, default_value = READINESS_PATH)]
    pub readiness_path: PathBuf,
    /// Where the public key is written (file source), if anywhere.
    #[arg(long)]
    pub public_key_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// This node's name (as in its Node / node WireGuardPeer `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Source of the desired state [default: kubernetes, or file when --peer-dir is given].
    #[arg(long, value_enum)]
    pub source: Option<SourceKind>,
    /// Directory of WireGuardPeer YAML documents (file source).
    #[arg(long)]
    pub peer_dir: Option<PathBuf>,
    /// UDP listen port of the engine.
    #[arg(long, default_value_t = DEFAULT_LISTEN_PORT)]
    pub listen_port: u16,
    /// Mark on the engine's UDP packets; the policy rule skips packets carrying its bits.
    #[arg(long, default_value_t = FWMARK, value_parser = parse_mark)]
    pub fwmark: u32,
    /// Fixed MTU of the wg interface (default: underlay MTU − 80).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Interface whose MTU is the underlay MTU (default: the default-route interfaces).
    #[arg(long)]
    pub underlay_interface: Option<String>,
    /// The cluster's pod network (repeatable); fail-closed drops cover it.
    #[arg(long = "cluster-cidr")]
    pub cluster_cidrs: Vec<IpCidr>,
    /// This node's pod CIDRs (repeatable); default: from its node peer in the source.
    #[arg(long = "pod-cidr")]
    pub pod_cidrs: Vec<IpCidr>,
    /// This node's tunnel addresses (repeatable); default: first address of each pod CIDR.
    #[arg(long = "tunnel-address")]
    pub tunnel_addresses: Vec<IpAddr>,
    /// Fail open: do not drop pod traffic no peer covers (it may then leave in plaintext).
    #[arg(long)]
    pub no_fail_closed: bool,
    /// Rely on routing alone: no nftables table dropping remote-pod packets that would leave
    /// or arrive outside the tunnel (needs the `nft` tool otherwise).
    #[arg(long)]
    pub no_nft_guard: bool,
    /// Engine binary (default: wgmesh-tunnel next to this binary, else from PATH).
    #[arg(long)]
    pub engine_binary: Option<PathBuf>,
    /// Start the engine when absent (auto) or only attach to it (attach).
    #[arg(long, value_enum, default_value_t = EngineMode::Auto)]
    pub engine: EngineMode,
    /// Reconcile interval in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub interval_ms: u64,
    /// Address for /healthz, /readyz and /metrics; `off` disables them.
    #[arg(long, default_value = "0.0.0.0:9581")]
    pub http_addr: String,
}

#[derive(Args, Debug, Clone)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Also delete the private key (the node gets a new identity next time).
    #[arg(long)]
    pub remove_key: bool,
}

/// A mark in decimal or `0x` hex, as `wg set fwmark` takes it.
fn parse_mark(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a 32-bit mark (decimal or 0x hex)"))
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl RunArgs {
    /// The validated agent configuration.
    pub fn into_config(self) -> Result<AgentConfig, String> {
        let kind = self.source.unwrap_or(if self.peer_dir.is_some() {
            SourceKind::File
        } else {
            SourceKind::Kubernetes
        });
        let source = match kind {
            SourceKind::File => Source::File {
                dir: self.peer_dir.ok_or("--source file needs --peer-dir")?,
            },
            SourceKind::Kubernetes if self.peer_dir.is_some() => {
                return Err("--peer-dir is for --source file".into())
            }
            SourceKind::Kubernetes => Source::Kubernetes,
        };
        let http_addr = match self.http_addr.as_str() {
            "off" | "" => None,
            a => Some(
                a.parse()
                    .map_err(|_| format!("--http-addr {a:?} is not ADDRESS:PORT or off"))?,
            ),
        };
        let cfg = AgentConfig {
            node_name: self.node_name.or_else(hostname).unwrap_or_default(),
            source,
            interface: self.common.interface,
            private_key_path: self.key.private_key,
            public_key_file: self.common.public_key_file,
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            table: self.common.table,
            rule_priority: self.common.rule_priority,
            mtu: self.mtu,
            underlay_interface: self.underlay_interface,
            cluster_cidrs: self.cluster_cidrs,
            pod_cidrs: self.pod_cidrs,
            tunnel_addresses: self.tunnel_addresses,
            fail_closed: !self.no_fail_closed,
            nft_guard: !self.no_nft_guard,
            readiness_path: self.common.readiness_path,
            engine_binary: self.engine_binary.unwrap_or_else(default_binary),
            engine_mode: self.engine,
            interval: Duration::from_millis(self.interval_ms),
            http_addr,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `args`, with a cluster CIDR added unless they speak of one (fail-closed needs it).
    fn parse(args: &[&str]) -> Result<AgentConfig, String> {
        let mut args = args.to_vec();
        if args.get(1) == Some(&"run") && !args.iter().any(|a| a.contains("cluster-cidr") || *a == "--no-fail-closed") {
            args.push("--cluster-cidr=10.244.0.0/16");
        }
        parse_exactly(&args)
    }

    fn parse_exactly(args: &[&str]) -> Result<AgentConfig, String> {
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Run(r) => (*r).into_config(),
            _ => Err("not run".into()),
        }
    }

    #[test]
    fn defaults_come_from_the_api_crate() {
        let c = parse(&["a", "run", "--node-name", "n1", "--peer-dir", "/tmp/x"]).expect("parse");
        assert_eq!(c.interface, INTERFACE_NAME);
        assert_eq!(c.table, ROUTING_TABLE);
        assert_eq!(c.rule_priority, ROUTING_RULE_PRIORITY);
        assert_eq!(c.readiness_path, PathBuf::from(READINESS_PATH));
        assert_eq!(c.private_key_path, PathBuf::from(DEFAULT_PRIVATE_KEY_PATH));
        assert!(c.fail_closed);
        assert!(c.nft_guard, "the underlay guard is on by default");
        assert_eq!(c.engine_mode, EngineMode::Auto);
        assert!(
            matches!(c.source, Source::File { .. }),
            "--peer-dir alone means file"
        );
        let c = parse(&["a", "run", "--node-name", "n1"]).expect("parse");
        assert!(matches!(c.source, Source::Kubernetes), "the default source");
    }

    #[test]
    fn fail_closed_needs_a_cluster_cidr_and_kernel_rule_priorities_are_refused() {
        let e = parse_exactly(&["a", "run", "--node-name", "n1", "--peer-dir", "d"]).unwrap_err();
        assert!(e.contains("--cluster-cidr"), "{e}");
        let c = parse_exactly(&["a", "run", "--node-name", "n1", "--peer-dir", "d", "--no-fail-closed"]).expect("parse");
        assert!(!c.fail_closed && c.cluster_cidrs.is_empty());
        let c = parse(&["a", "run", "--node-name", "n1", "--peer-dir", "d", "--no-nft-guard"]).expect("parse");
        assert!(c.fail_closed && !c.nft_guard);
        // the guard quotes the interface for nft; a name that would end the quote is refused
        let e = parse(&["a", "run", "--node-name", "n1", "--peer-dir", "d", "--interface", "wg\"0"]).unwrap_err();
        assert!(e.contains("cannot be quoted"), "{e}");
        assert!(parse(&["a", "run", "--node-name", "n1", "--peer-dir", "d", "--interface", "wg\"0", "--no-nft-guard"]).is_ok());
        for p in ["0", "32766", "32767"] {
            let e = parse(&["a", "run", "--node-name", "n1", "--peer-dir", "d", "--rule-priority", p]).unwrap_err();
            assert!(e.contains("--rule-priority"), "{p}: {e}");
        }
        assert!(parse(&["a", "run", "--node-name", "n1", "--peer-dir", "d", "--rule-priority", "32765"]).is_ok());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            parse(&["a", "run", "--node-name", "n1", "--source", "file"]).is_err(),
            "file source needs a dir"
        );
        assert!(parse(&[
            "a",
            "run",
            "--node-name",
            "n1",
            "--source",
            "kubernetes",
            "--peer-dir",
            "d"
        ])
        .is_err());
        assert!(parse(&[
            "a",
            "run",
            "--node-name",
            "n1",
            "--peer-dir",
            "d",
            "--interface",
            "way-too-long-name0"
        ])
        .is_err());
        assert!(parse(&[
            "a",
            "run",
            "--node-name",
            "n1",
            "--peer-dir",
            "d",
            "--cluster-cidr",
            "10.244.0.1/16"
        ])
        .is_err());
        assert!(parse(&[
            "a",
            "run",
            "--node-name",
            "n1",
            "--peer-dir",
            "d",
            "--fwmark",
            "0"
        ])
        .is_err());
        assert!(parse(&[
            "a",
            "run",
            "--node-name",
            "n1",
            "--peer-dir",
            "d",
            "--table",
            "254"
        ])
        .is_err());
        let k = parse(&["a", "run", "--node-name", "n1", "--source", "kubernetes"]).expect("parse");
        assert_eq!(k.source, Source::Kubernetes);
        assert_eq!(k.fwmark, 0x2000_0000, "the default mark keeps clear of other CNIs' mark bits");
        for (m, want) in [("0x40000000", Some(0x4000_0000)), ("51820", Some(51820)), ("0xfg", None), ("4294967296", None)] {
            let got = parse(&["a", "run", "--node-name", "n1", "--peer-dir", "d", "--fwmark", m]).map(|c| c.fwmark);
            assert_eq!(got.ok(), want, "--fwmark {m}");
        }
        assert!(parse(&[
            "a",
            "run",
            "--node-name",
            "n1",
            "--peer-dir",
            "d",
            "--http-addr",
            "nope"
        ])
        .is_err());
        let off = parse(&[
            "a",
            "run",
            "--node-name",
            "n1",
            "--peer-dir",
            "d",
            "--http-addr",
            "off",
        ])
        .expect("parse");
        assert_eq!(off.http_addr, None);
        let c = parse(&[
            "a",
            "run",
            "--node-name",
            "n1",
            "--peer-dir",
            "d",
            "--no-fail-closed",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--cluster-cidr",
            "fd00:244::/48",
        ])
        .expect("parse");
        assert!(!c.fail_closed);
        assert_eq!(c.cluster_cidrs.len(), 2);
    }
}
