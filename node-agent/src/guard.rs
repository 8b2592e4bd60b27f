//! The underlay guard: an nftables table that drops every packet to the cluster's pod network
//! that would leave through any interface but the tunnel, and every packet from a remote-pod
//! address that arrives through any interface but the tunnel to be forwarded (plaintext from a
//! node that bypassed WireGuard, or spoofed on the underlay: rp_filter is often loose or off
//! on Kubernetes nodes, and such a packet would reach a pod unauthenticated).
//!
//! Routing already sends outgoing pod packets into the tunnel or to `unreachable`
//! (`routes.rs`); the guard holds when that routing is gone, say a policy rule flushed by
//! another program (systemd-networkd's default `ManageForeignRoutingPolicyRules=yes` removes
//! rules it did not make) while no agent runs to put it back. Then the primary CNI's routes in
//! `main` would carry pod packets in plaintext.
//!
//! `ruleset` is pure; `Guard` applies it with the `nft` tool (nftables' own parser, one
//! transaction per script) and checks once a second that the kernel still holds it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wgmesh_api::cidr::Family;
use wgmesh_api::IpCidr;

/// The nftables table (family `inet`, both IP versions) the agent owns.
pub const TABLE: &str = "wgmesh";
/// How long one `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(5);
/// The table is compared with what the kernel holds this often.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot run {0}: {1} (install nftables, or pass --no-nft-guard to rely on routing alone)")]
    Spawn(String, std::io::Error),
    #[error("nft {0} failed: {1}")]
    Nft(&'static str, String),
    #[error("interface name {0:?} cannot be quoted for nft")]
    BadInterface(String),
}

/// The script that replaces table `inet wgmesh` in one transaction. Out: packets to a local
/// pod CIDR pass, to any other cluster CIDR only through `interface`, and so do pods' packets
/// to a peer's prefix outside the pod network (an external peer's network, or a remote node's
/// pod CIDR no cluster CIDR covers; the node's own packets there may take `main`). In: packets
/// from a remote pod (a cluster CIDR but no local pod CIDR) pass only from `interface`, where
/// WireGuard authenticated them; one on any other interface is plaintext or spoofed. Pods of
/// a node outside the cluster CIDRs (`node_prefixes`, say IPv6 on a dual-stack cluster given
/// only its IPv4 range; every other Node's, a peer or not) are matched as pods only by their
/// addresses on this node's side.
pub fn ruleset(
    interface: &str,
    cluster_cidrs: &[IpCidr],
    local_pod_cidrs: &[IpCidr],
    peer_prefixes: &[IpCidr],
    node_prefixes: &[IpCidr],
) -> Result<String, GuardError> {
    // nft strings end at the first quote, a backslash escapes and a trailing `*` is a wildcard
    if interface.contains(['"', '\\', '*']) || interface.chars().any(|c| c.is_control()) {
        return Err(GuardError::BadInterface(interface.into()));
    }
    // loopback never touches the underlay (a tunnel address given by flag may lie outside the
    // local pod CIDRs). In: on forward, i.e. after kube-proxy's DNAT, so a NodePort leads no
    // spoofed packet to a pod; what is addressed to the node itself (input) is host traffic,
    // which wgmesh does not carry
    let chain = |name: &str, hook: &str, priority: i32, dev: &str, addr: &str| {
        let mut rules = format!("\t\t{dev} \"{interface}\" accept\n\t\t{dev} \"lo\" accept\n");
        let outside = |ps: &[IpCidr], family| {
            let inside = |p: &IpCidr| cluster_cidrs.iter().any(|c| c.covers(p));
            outermost(&ps.iter().filter(|p| !inside(p)).copied().collect::<Vec<_>>(), family)
        };
        for (family, ip) in [(Family::V4, "ip"), (Family::V6, "ip6")] {
            let local = outermost(local_pod_cidrs, family);
            let cluster = outermost(cluster_cidrs, family);
            // this node's pods, inside a cluster CIDR or not
            let pods = outermost(&[cluster_cidrs, local_pod_cidrs].concat(), family);
            // Prefixes no cluster CIDR covers are matched with a pod address on this side, so a
            // wrong one cannot cut off the node's own traffic: out to peers' (before srcnat at
            // priority 100, so a pod's address is still the source here), in from other nodes' pods.
            let (src, dst) = match addr {
                "daddr" => (pods, outside(&[peer_prefixes, node_prefixes].concat(), family)),
                _ => (outside(node_prefixes, family), local.clone()),
            };
            let beyond = !src.is_empty() && !dst.is_empty();
            if cluster.is_empty() && !beyond {
                continue;
            }
            if !local.is_empty() {
                rules += &format!("\t\t{ip} {addr} {{ {} }} accept\n", local.join(", "));
            }
            if !cluster.is_empty() {
                rules += &format!("\t\t{ip} {addr} {{ {} }} counter drop\n", cluster.join(", "));
            }
            if beyond {
                rules += &format!("\t\t{ip} saddr {{ {} }} {ip} daddr {{ {} }} counter drop\n", src.join(", "), dst.join(", "));
            }
        }
        format!("\tchain {name} {{\n\t\ttype filter hook {hook} priority {priority}; policy accept;\n{rules}\t}}\n")
    };
    let out = chain("postrouting", "postrouting", 0, "oifname", "daddr");
    let inbound = chain("forward", "forward", 0, "iifname", "saddr");
    // `add` then `delete` then the table: the delete never fails and nothing is half-replaced
    Ok(format!("add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n{out}{inbound}}}\n"))
}

/// The prefixes of one family that no other in the list contains (nft refuses overlapping
/// elements), sorted and printed.
fn outermost(cidrs: &[IpCidr], family: Family) -> Vec<String> {
    let mine: Vec<&IpCidr> = cidrs.iter().filter(|c| c.family() == family).collect();
    let inside = |c: &IpCidr, o: &IpCidr| o.covers(c) && c.range() != o.range();
    let mut out: Vec<&IpCidr> = mine.iter().copied().filter(|c| !mine.iter().any(|o| inside(c, o))).collect();
    out.sort();
    out.dedup();
    out.iter().map(|c| c.to_string()).collect()
}

/// Packets the guard dropped, by direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// To a remote pod, about to leave outside the tunnel (is the policy rule gone?).
    pub leaving: u64,
    /// From a remote-pod address, arrived outside the tunnel (plaintext, spoofed, or a primary
    /// CNI datapath that bypasses the mesh).
    pub arriving: u64,
}

impl Drops {
    fn since(self, earlier: Drops) -> Drops {
        Drops { leaving: self.leaving.saturating_sub(earlier.leaving), arriving: self.arriving.saturating_sub(earlier.arriving) }
    }
}

/// The guard's counters in an `nft list` output, summed per chain.
pub fn dropped(listing: &str) -> Drops {
    let mut d = Drops::default();
    let mut inbound = false;
    for line in listing.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("chain ") {
            inbound = name.starts_with("forward");
        }
        if let Some(n) = t.split("counter packets ").nth(1).and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok()) {
            if inbound {
                d.arriving += n;
            } else {
                d.leaving += n;
            }
        }
    }
    d
}

/// The listing without counter values, which change with traffic.
fn shape(listing: &str) -> String {
    listing
        .lines()
        .map(|l| match l.find("counter packets ") {
            Some(at) => {
                let tail = l[at..].splitn(6, ' ').nth(5).unwrap_or("");
                format!("{}counter {tail}", &l[..at])
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Keeps the guard table in the kernel equal to the desired script.
pub struct Guard {
    nft: PathBuf,
    /// The script last applied and the table's shape right after.
    applied: Option<(String, String)>,
    checked: Option<Instant>,
    drops: Drops,
}

impl Guard {
    pub fn new(nft: PathBuf) -> Self {
        Guard { nft, applied: None, checked: None, drops: Drops::default() }
    }

    /// Puts `script` in place unless the kernel holds it already (checked at most every
    /// [`CHECK_EVERY`] while unchanged). Returns the packets dropped since the last call.
    pub fn sync(&mut self, script: &str) -> Result<Drops, GuardError> {
        let same = self.applied.as_ref().is_some_and(|(s, _)| s == script);
        if same && self.checked.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return Ok(Drops::default());
        }
        let have = self.list()?;
        let intact = same && have.as_ref().zip(self.applied.as_ref()).is_some_and(|(h, (_, then))| shape(h) == *then);
        // counted whatever table is there: ours, or one an earlier agent left (its drops
        // happened while no agent ran)
        let counted = have.as_deref().map(dropped).unwrap_or_default();
        let new = counted.since(self.drops);
        if new.leaving > 0 {
            tracing::warn!(
                dropped = new.leaving,
                "the underlay guard dropped packets to remote pods that were about to leave outside the tunnel (was the policy rule gone?)"
            );
        }
        if new.arriving > 0 {
            tracing::warn!(
                dropped = new.arriving,
                "the underlay guard dropped packets from remote-pod addresses that arrived outside the tunnel (plaintext, spoofed, or a primary CNI datapath that bypasses the mesh)"
            );
        }
        if intact {
            // the kernel's count, which `nft reset counters` may have lowered
            self.drops = counted;
        } else {
            if same {
                tracing::warn!(table = TABLE, "the guard table was removed or changed by someone else; putting it back");
            }
            self.nft(&["-f", "-"], Some(script), "-f")?;
            let now = self.list()?.ok_or_else(|| GuardError::Nft("list", format!("table inet {TABLE} missing right after it was added")))?;
            if !same {
                tracing::info!(table = TABLE, "underlay guard in place: remote-pod packets leave and arrive only through the tunnel");
            }
            // the new table's counters start at zero
            self.drops = Drops::default();
            self.applied = Some((script.to_string(), shape(&now)));
        }
        self.checked = Some(Instant::now());
        Ok(new)
    }

    /// Removes the table; true if there was one. Without `nft` on this host there is none:
    /// the agent could never have written one.
    pub fn remove(&mut self) -> Result<bool, GuardError> {
        self.applied = None;
        match self.list() {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(false),
            Err(GuardError::Spawn(_, e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        self.nft(&["delete", "table", "inet", TABLE], None, "delete")?;
        Ok(true)
    }

    /// `nft list table inet wgmesh`; `None` when there is no such table.
    fn list(&self) -> Result<Option<String>, GuardError> {
        match self.nft(&["list", "table", "inet", TABLE], None, "list") {
            Ok(out) => Ok(Some(out)),
            Err(GuardError::Nft(_, e)) if e.contains("No such file or directory") => Ok(None),
            // A kernel without nfnetlink can hold no table, so there is none to list or remove.
            Err(GuardError::Nft(_, e)) if e.contains("Protocol not supported") => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>, what: &'static str) -> Result<String, GuardError> {
        let spawn_err = |e| GuardError::Spawn(self.nft.display().to_string(), e);
        let mut child = Command::new(&self.nft)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        // Written and read by threads while we wait: a listing larger than the pipe (a big
        // cluster's table) would otherwise block nft until it is killed.
        let script = stdin.map(str::to_owned);
        let writer = child.stdin.take().map(|mut pipe| {
            std::thread::spawn(move || script.map_or(Ok(()), |t| pipe.write_all(t.as_bytes())))
        });
        fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                pipe.map(|mut p| p.read_to_end(&mut v));
                v
            })
        }
        let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
        // a hung nft must not hold up the agent's loop (routes, rule, readiness)
        let deadline = Instant::now() + NFT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(spawn_err)? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(GuardError::Nft(what, format!("no answer within {NFT_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let joined = |t: std::thread::JoinHandle<Vec<u8>>| t.join().unwrap_or_default();
        let (out, err) = (joined(stdout), joined(stderr));
        // nft's own words first: a script it refused half-read also breaks the pipe
        if !status.success() {
            return Err(GuardError::Nft(what, String::from_utf8_lossy(&err).trim().to_string()));
        }
        if let Some(Ok(Err(e))) = writer.map(|w| w.join()) {
            return Err(GuardError::Nft(what, format!("writing the script: {e}")));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<IpCidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_rest_of_the_pod_network_leaves_and_arrives_only_through_the_tunnel() {
        let s = ruleset(
            "wgmesh0",
            &cidrs(&["10.244.0.0/16", "fd00:244::/56"]),
            &cidrs(&["10.244.1.0/24", "fd00:244:0:1::/64"]),
            // a remote node's pod CIDR (covered already) and an external peer's network
            &cidrs(&["10.244.2.0/24", "192.168.100.0/24"]),
            &cidrs(&["10.244.2.0/24"]),
        )
        .unwrap();
        let rules: Vec<&str> = s.lines().map(str::trim).filter(|l| l.contains("accept") || l.contains("drop")).collect();
        assert_eq!(
            rules,
            [
                "type filter hook postrouting priority 0; policy accept;",
                "oifname \"wgmesh0\" accept",
                "oifname \"lo\" accept",
                "ip daddr { 10.244.1.0/24 } accept",
                "ip daddr { 10.244.0.0/16 } counter drop",
                "ip saddr { 10.244.0.0/16 } ip daddr { 192.168.100.0/24 } counter drop",
                "ip6 daddr { fd00:244:0:1::/64 } accept",
                "ip6 daddr { fd00:244::/56 } counter drop",
                // in: remote pods only through the tunnel, after DNAT
                "type filter hook forward priority 0; policy accept;",
                "iifname \"wgmesh0\" accept",
                "iifname \"lo\" accept",
                "ip saddr { 10.244.1.0/24 } accept",
                "ip saddr { 10.244.0.0/16 } counter drop",
                "ip6 saddr { fd00:244:0:1::/64 } accept",
                "ip6 saddr { fd00:244::/56 } counter drop",
            ]
        );
        // one transaction that replaces the table whether or not it exists
        assert!(s.starts_with("add table inet wgmesh\ndelete table inet wgmesh\ntable inet wgmesh {"));
    }

    #[test]
    fn a_family_with_nothing_to_drop_gets_no_rules_and_nested_prefixes_are_merged() {
        let s = ruleset(
            "wg0",
            &cidrs(&["10.0.0.0/8", "10.244.0.0/16", "10.0.0.0/8"]),
            &cidrs(&["10.244.1.0/24", "10.244.1.0/25", "fd00::/64"]),
            &cidrs(&["172.16.0.0/12", "172.16.5.0/24"]),
            &[],
        )
        .unwrap();
        assert!(s.contains("ip daddr { 10.0.0.0/8 } counter drop"), "{s}");
        assert!(s.contains("ip saddr { 10.0.0.0/8 } ip daddr { 172.16.0.0/12 } counter drop"), "{s}");
        assert!(s.contains("ip daddr { 10.244.1.0/24 } accept"), "{s}");
        assert!(!s.contains("ip6"), "no IPv6 cluster CIDR or peer prefix, no IPv6 rule: {s}");
    }

    #[test]
    fn pods_outside_the_cluster_cidrs_are_kept_off_the_underlay_by_their_addresses() {
        // dual-stack, given only the IPv4 cluster CIDR; one node from another range
        let s = ruleset(
            "wg0",
            &cidrs(&["10.244.0.0/16"]),
            &cidrs(&["10.244.1.0/24", "fd00:244:0:1::/64"]),
            &cidrs(&["10.244.2.0/24", "fd00:244:0:2::/64", "10.42.3.0/24", "192.168.100.0/24"]),
            // and a node that takes no part (not a peer): still guarded
            &cidrs(&["10.244.2.0/24", "fd00:244:0:2::/64", "10.42.3.0/24", "10.42.4.0/24"]),
        )
        .unwrap();
        let rules: Vec<&str> = s.lines().map(str::trim).filter(|l| l.contains("drop") || l.contains("daddr") || l.contains("saddr")).collect();
        assert_eq!(
            rules,
            [
                "ip daddr { 10.244.1.0/24 } accept",
                "ip daddr { 10.244.0.0/16 } counter drop",
                "ip saddr { 10.244.0.0/16 } ip daddr { 10.42.3.0/24, 10.42.4.0/24, 192.168.100.0/24 } counter drop",
                "ip6 daddr { fd00:244:0:1::/64 } accept",
                "ip6 saddr { fd00:244:0:1::/64 } ip6 daddr { fd00:244:0:2::/64 } counter drop",
                // in: only other nodes' pods, and only to local pods; an external peer's network is left alone
                "ip saddr { 10.244.1.0/24 } accept",
                "ip saddr { 10.244.0.0/16 } counter drop",
                "ip saddr { 10.42.3.0/24, 10.42.4.0/24 } ip daddr { 10.244.1.0/24 } counter drop",
                "ip6 saddr { fd00:244:0:1::/64 } accept",
                "ip6 saddr { fd00:244:0:2::/64 } ip6 daddr { fd00:244:0:1::/64 } counter drop",
            ]
        );
    }

    #[test]
    fn an_interface_name_that_would_break_out_of_the_quotes_is_refused() {
        for bad in ["wg\"0", "wg\\0", "wg\n0", "wg*"] {
            assert!(matches!(ruleset(bad, &cidrs(&["10.0.0.0/8"]), &[], &[], &[]), Err(GuardError::BadInterface(_))), "{bad:?}");
        }
    }

    #[test]
    fn without_nft_there_is_no_table_to_remove_but_nothing_to_sync_either() {
        let mut g = Guard::new("/nonexistent/nft".into());
        assert!(matches!(g.remove(), Ok(false)));
        assert!(matches!(g.sync("table inet wgmesh {}"), Err(GuardError::Spawn(..))));
    }

    #[test]
    fn a_kernel_without_nftables_has_no_table_to_remove_but_other_nft_failures_are_errors() {
        let d = tempfile::tempdir().expect("tempdir");
        let fake = |name: &str, stderr: &str| {
            let p = d.path().join(name);
            crate::test_util::script(&p, &format!("#!/bin/sh\necho '{stderr}' >&2\nexit 1\n"));
            p
        };
        let none = fake("no-nfnetlink", "Error: Unable to open Netlink socket: Protocol not supported");
        assert!(matches!(Guard::new(none).remove(), Ok(false)));
        let denied = fake("denied", "Error: Could not process rule: Operation not permitted");
        assert!(matches!(Guard::new(denied).remove(), Err(GuardError::Nft(..))));
    }

    #[test]
    fn a_listing_larger_than_a_pipe_is_read_whole() {
        let d = tempfile::tempdir().expect("tempdir");
        let nft = d.path().join("nft");
        // 160 KiB of listing, as a table with thousands of prefixes prints, then the table's end
        let body = "\\t\\tip daddr 10.244.0.0/16 counter packets 1 bytes 84 drop\\n";
        crate::test_util::script(&nft, &format!("#!/bin/sh\nprintf 'table inet wgmesh {{\\n\\tchain postrouting {{\\n'\ni=0\nwhile [ $i -lt 2800 ]; do printf '{body}'; i=$((i+1)); done\nprintf '\\t}}\\n}}\\n'\n"));
        let listing = Guard::new(nft).list().expect("listed").expect("a table");
        assert!(listing.len() > 150_000 && listing.ends_with("}\n"), "{} bytes", listing.len());
        assert_eq!(dropped(&listing).leaving, 2800);
    }

    #[test]
    fn counters_are_summed_and_left_out_of_the_shape() {
        let listing = "table inet wgmesh {\n\tchain postrouting {\n\t\tip daddr { 10.244.0.0/16 } counter packets 3 bytes 252 drop\n\t\tip6 daddr { fd00::/56 } counter packets 2 bytes 208 drop\n\t}\n\tchain forward {\n\t\tip saddr 10.244.0.0/16 counter packets 7 bytes 588 drop\n\t}\n}\n";
        assert_eq!(dropped(listing), Drops { leaving: 5, arriving: 7 });
        let quiet = listing.replace("packets 3 bytes 252", "packets 0 bytes 0").replace("packets 2 bytes 208", "packets 0 bytes 0").replace("packets 7 bytes 588", "packets 0 bytes 0");
        assert_eq!(shape(listing), shape(&quiet));
        assert!(shape(listing).contains("ip daddr { 10.244.0.0/16 } counter drop"), "{}", shape(listing));
        assert_ne!(shape(listing), shape(&listing.replace("10.244.0.0/16", "10.245.0.0/16")));
    }
}
