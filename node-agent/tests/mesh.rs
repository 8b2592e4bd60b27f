//! The node agent end to end: three (then four) nodes in network namespaces on one underlay
//! bridge, each running wgmesh-tunnel and wgmesh-node-agent with the file source, each with
//! pods wired by the reference bridge plugin chained with wgmesh-cni. Needs root, iproute2,
//! iputils-ping, tcpdump, containernetworking-plugins, and the wgmesh-tunnel and wgmesh-cni
//! binaries built next to this crate's binary (see node-agent/README.md).

mod common;

use std::io::Read;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

fn link_mtu(ns: &str, dev: &str) -> u32 {
    let out = ip(&["-n", ns, "-o", "link", "show", "dev", dev]);
    out.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu in {out}"))
}

fn has_route(ns: &str, v6: bool, dst: &str) -> bool {
    let fam = if v6 { "-6" } else { "-4" };
    ip(&["-n", ns, fam, "route", "show", "table", TABLE])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(dst) && l.contains(" dev wgm"))
}

/// `ping -M do -s SIZE` once; (replied, output).
fn ping_size(ns: &str, to: IpAddr, size: u32) -> (bool, String) {
    let o = in_ns(
        ns,
        &[
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            &to.to_string(),
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// A background `ping -D` (wall-clock stamped replies).
fn start_ping(ns: &str, to: IpAddr, interval: &str, count: u32) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-D",
            "-i",
            interval,
            "-c",
            &count.to_string(),
            "-W",
            "1",
            &to.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("ping: {e}"))
}

struct PingReport {
    transmitted: u32,
    received: u32,
    /// Wall-clock seconds of each reply.
    replies: Vec<f64>,
}

fn finish_ping(mut c: Child) -> PingReport {
    let mut out = String::new();
    if let Some(mut s) = c.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    let _ = c.wait();
    let mut r = PingReport {
        transmitted: 0,
        received: 0,
        replies: Vec::new(),
    };
    for line in out.lines() {
        if line.contains("bytes from") {
            if let Some(ts) = line
                .strip_prefix('[')
                .and_then(|l| l.split(']').next())
                .and_then(|t| t.parse().ok())
            {
                r.replies.push(ts);
            }
        }
        if let Some((tx, rest)) = line.split_once(" packets transmitted, ") {
            r.transmitted = tx.trim().parse().unwrap_or(0);
            r.received = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    r
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn three_nodes_encrypt_every_pod_packet_and_drop_what_no_peer_covers() {
    let _serial = serial();
    let mut m = Mesh::new(3, 2);
    let cap = m.capture();

    // The interface and every pod got the mesh MTU (underlay 1500 − 80), no more.
    for node in &m.nodes {
        assert_eq!(
            link_mtu(&node.ns, &node.ifname),
            MESH_MTU,
            "wg MTU on {}",
            node.name
        );
        for pod in &node.pods {
            assert_eq!(link_mtu(&pod.ns, "eth0"), MESH_MTU, "pod MTU on {}", pod.ns);
        }
    }

    // Ping between every pair of pods on different nodes, both directions, IPv4 and IPv6.
    let pods = m.pods();
    for (na, a) in &pods {
        for (nb, b) in &pods {
            if na == nb {
                continue;
            }
            assert!(
                ping(&a.ns, b.v4, 2, "2"),
                "ping {} -> {} ({})",
                a.ns,
                b.ns,
                b.v4
            );
            assert!(
                ping(&a.ns, b.v6, 2, "2"),
                "ping {} -> {} ({})",
                a.ns,
                b.ns,
                b.v6
            );
        }
    }
    // Host (node) to remote pods: leaves with the tunnel address as source, so it is accepted.
    for node in &m.nodes {
        for (nb, b) in &pods {
            if *nb != node.n {
                assert!(
                    ping(&node.ns, b.v4, 2, "2"),
                    "host {} -> pod {}",
                    node.name,
                    b.v4
                );
                assert!(
                    ping(&node.ns, b.v6, 2, "2"),
                    "host {} -> pod {}",
                    node.name,
                    b.v6
                );
            }
        }
    }

    // A checked TCP transfer for every ordered node pair, IPv4 and IPv6.
    for a in &m.nodes {
        for b in &m.nodes {
            if a.n == b.n {
                continue;
            }
            let (pa, pb) = (&a.pods[0], &b.pods[0]);
            for to in [pb.v4, pb.v6] {
                tcp_transfer(&pa.ns, &pb.ns, to, 1 << 20)
                    .unwrap_or_else(|e| panic!("TCP {} -> {} ({to}): {e}", a.name, b.name));
            }
        }
    }

    // Health, readiness and per-peer metrics with Calico's names.
    let n1 = m.node(1).ns.clone();
    assert_eq!(http_get(&n1, "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(http_get(&n1, "/readyz").0, "HTTP/1.1 200 OK");
    let metrics = http_get(&n1, "/metrics").1;
    for name in [
        "wireguard_latest_handshake_seconds",
        "wireguard_bytes_sent",
        "wireguard_bytes_rcvd",
    ] {
        let series: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .collect();
        assert_eq!(series.len(), 2, "{name}: one series per peer: {metrics}");
        assert!(
            series
                .iter()
                .all(|l| !l.ends_with(" 0") && !l.ends_with(" 0.0")),
            "{name} is zero: {series:?}"
        );
    }

    // Full-size packets at the pod MTU pass; one byte more is refused locally (EMSGSIZE),
    // not black-holed somewhere on the way.
    let (p1, p2) = (m.node(1).pods[0].clone(), m.node(2).pods[0].clone());
    for (to, header) in [(p2.v4, 28), (p2.v6, 48)] {
        let max = MESH_MTU - header;
        let (ok, out) = ping_size(&p1.ns, to, max);
        assert!(ok, "a {max}-byte payload to {to} must pass: {out}");
        let (ok, out) = ping_size(&p1.ns, to, max + 1);
        assert!(
            !ok && out.to_lowercase().contains("too long"),
            "one byte more must be refused locally: {out}"
        );
    }

    // A node whose peer is removed becomes unreachable, and nothing to it leaks (the capture
    // below checks that every underlay packet is WireGuard).
    let p3 = m.node(3).pods[0].clone();
    m.unpublish(3);
    let gone = wait_for(Duration::from_secs(2), || {
        [1, 2].iter().all(|n| {
            !has_route(&m.node(*n).ns, false, "10.244.3.0/24")
                && !has_route(&m.node(*n).ns, true, "fd00:244:0:3::/64")
        })
    });
    assert!(
        gone.is_some(),
        "node 3's routes were not removed within 2 s"
    );
    assert!(
        !ping(&p1.ns, p3.v4, 2, "1"),
        "removed node still reachable over IPv4"
    );
    assert!(
        !ping(&p1.ns, p3.v6, 2, "1"),
        "removed node still reachable over IPv6"
    );
    assert!(
        !ping(&p3.ns, p1.v4, 2, "1"),
        "the removed node still reaches others"
    );
    assert!(
        !ping(&m.node(2).ns, p3.v4, 1, "1"),
        "host to removed node's pod"
    );
    // what no peer covers is dropped by our table, not sent through main
    let route =
        run(Command::new("ip").args(["-n", &m.node(1).ns, "route", "get", &p3.v4.to_string()]));
    assert!(
        !route.status.success(),
        "route to the removed pod exists: {}",
        String::from_utf8_lossy(&route.stdout)
    );

    // A node joining later is reachable from every other node within 2 s of its peer file.
    m.add_node(4, false, 1);
    let p4 = m.node(4).pods[0].clone();
    let t0 = Instant::now();
    m.publish(4);
    let waits: Vec<_> = [1u32, 2]
        .iter()
        .map(|n| {
            let from = m.node(*n).pods[0].ns.clone();
            std::thread::spawn(move || {
                wait_for(Duration::from_secs(5), || ping(&from, p4.v4, 1, "0.3"))
                    .map(|_| t0.elapsed())
            })
        })
        .collect();
    for (i, w) in waits.into_iter().enumerate() {
        let t = w.join().ok().flatten();
        assert!(
            t.is_some_and(|t| t < Duration::from_secs(2)),
            "node 4 reachable from node {} after {t:?}",
            i + 1
        );
    }
    assert!(
        ping(&p4.ns, p1.v6, 2, "2"),
        "the new node reaches the others"
    );
    // node 3 comes back the same way
    let t0 = Instant::now();
    m.publish(3);
    let back = wait_for(Duration::from_secs(5), || ping(&p1.ns, p3.v4, 1, "0.3"));
    assert!(
        back.is_some() && t0.elapsed() < Duration::from_secs(2),
        "node 3 back after {:?}",
        t0.elapsed()
    );
    assert!(
        ping(&p4.ns, p3.v4, 2, "2"),
        "node 4 reaches the returned node 3"
    );

    // Everything above crossed the underlay only as WireGuard.
    let s = m.stop_capture(cap);
    assert!(
        s.other_ip.is_empty(),
        "non-WireGuard IP packets on the underlay ({}): {:?}",
        s.other_ip.len(),
        &s.other_ip[..s.other_ip.len().min(10)]
    );
    // GSO: one captured frame may carry many datagrams, so this counts frames, not packets
    assert!(
        s.wireguard[4] > 300,
        "too few data messages captured: {s:?}"
    );
    // the first handshakes ran before the capture (agents start them); node 4's are in it
    assert!(
        s.wireguard[1] >= 2 && s.wireguard[2] >= 2,
        "handshakes missing from the capture: {s:?}"
    );
    eprintln!("underlay capture: {s:?}");
}

/// Stops the underlay capture and asserts it saw no IP packet but WireGuard's.
fn only_wireguard(m: &mut Mesh, cap: Capture) -> CaptureSummary {
    let s = m.stop_capture(cap);
    assert!(
        s.other_ip.is_empty(),
        "non-WireGuard IP packets on the underlay: {:?}",
        &s.other_ip[..s.other_ip.len().min(10)]
    );
    s
}

/// Two nodes with one pod each, pinging both ways, under an underlay capture.
fn two_nodes_up() -> (Mesh, Capture, Pod, Pod) {
    let mut m = Mesh::new(2, 1);
    let cap = m.capture();
    let (p1, p2) = (m.node(1).pods[0].clone(), m.node(2).pods[0].clone());
    assert!(
        ping(&p1.ns, p2.v4, 2, "2") && ping(&p2.ns, p1.v4, 2, "2"),
        "mesh up"
    );
    (m, cap, p1, p2)
}

#[test]
fn restarting_the_agent_loses_nothing_and_a_killed_engine_is_back_within_two_seconds() {
    let _serial = serial();
    let (mut m, cap, p1, p2) = two_nodes_up();
    let engine = m
        .engine_pid(1)
        .unwrap_or_else(|| panic!("no engine for node 1"));

    // The agent is killed (SIGKILL) and restarted during continuous pings both ways.
    let a = start_ping(&p1.ns, p2.v4, "0.02", 200);
    let b = start_ping(&p2.ns, p1.v6, "0.02", 200);
    std::thread::sleep(Duration::from_millis(500));
    for n in [1, 2] {
        m.kill_agent(n);
        std::thread::sleep(Duration::from_millis(300));
        m.start_agent(n);
        m.wait_ready(n);
    }
    let (a, b) = (finish_ping(a), finish_ping(b));
    assert_eq!(
        m.engine_pid(1),
        Some(engine),
        "the engine must survive agent restarts"
    );
    assert!(
        a.transmitted == 200 && a.received == 200,
        "pod 1 -> pod 2 lost packets: {}/{}",
        a.received,
        a.transmitted
    );
    assert!(
        b.transmitted == 200 && b.received == 200,
        "pod 2 -> pod 1 lost packets: {}/{}",
        b.received,
        b.transmitted
    );

    // The engine is killed: the agent notices, starts a new one and configures it; traffic in
    // both directions is back within 2 s (and is dropped, not leaked, meanwhile).
    let a = start_ping(&p1.ns, p2.v4, "0.02", 250);
    let b = start_ping(&p2.ns, p1.v4, "0.02", 250);
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = now_secs();
    // SAFETY: the pid of the engine serving this test's uniquely named interface.
    unsafe { libc::kill(engine, libc::SIGKILL) };
    let (a, b) = (finish_ping(a), finish_ping(b));
    let new_engine = m.engine_pid(1);
    assert!(
        new_engine.is_some() && new_engine != Some(engine),
        "no new engine started"
    );
    for (dir, r) in [("pod 1 -> pod 2", &a), ("pod 2 -> pod 1", &b)] {
        let first_after = r.replies.iter().copied().find(|t| *t > killed_at + 0.05);
        let outage = first_after.map(|t| t - killed_at);
        assert!(
            outage.is_some_and(|o| o < 2.0),
            "{dir}: traffic back after {outage:?} s"
        );
        eprintln!(
            "{dir}: outage {:.3} s after the engine was killed",
            outage.unwrap_or(f64::NAN)
        );
    }

    // Restarted with another --table: the rule moves to it; the old one, which would keep
    // sending everything into the old table's drops first, does not linger.
    m.kill_agent(1);
    m.start_agent_with(1, &["--table", "51821"]);
    m.wait_ready(1);
    let ns1 = m.node(1).ns.clone();
    let ours = |v: &str| {
        let out = in_ns(&ns1, &["ip", v, "rule", "show"]);
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("proto 87")).map(String::from).collect::<Vec<_>>()
    };
    let moved = |v: &str| matches!(&ours(v)[..], [one] if one.contains("lookup 51821"));
    let settled = wait_for(Duration::from_secs(5), || moved("-4") && moved("-6"));
    assert!(settled.is_some(), "{:?} {:?}: {}", ours("-4"), ours("-6"), m.log_tail(1));
    assert!(ping(&p1.ns, p2.v4, 2, "2") && ping(&p2.ns, p1.v6, 2, "2"), "{}", m.log_tail(1));

    let s = only_wireguard(&mut m, cap);
    assert!(s.wireguard[4] > 200, "{s:?}");
}

#[test]
fn a_deleted_rule_comes_back_while_another_route_keeps_failing() {
    let _serial = serial();
    let (mut m, cap, p1, p2) = two_nodes_up();
    let (node_ns, ifname) = (m.node(1).ns.clone(), m.node(1).ifname.clone());
    // IPv6 off on the tunnel link: every IPv6 route through it fails from now on.
    sysctl(&node_ns, &format!("net.ipv6.conf.{ifname}.disable_ipv6=1"));
    std::thread::sleep(Duration::from_millis(600));
    let ours = |rules: &str| rules.lines().any(|l| l.contains(&format!("lookup {TABLE}")));
    assert!(ours(&ip(&["-n", &node_ns, "-4", "rule"])));
    ip(&["-n", &node_ns, "-4", "rule", "del", "priority", "100", "table", TABLE]);
    let back = wait_for(Duration::from_secs(3), || ours(&ip(&["-n", &node_ns, "-4", "rule"])));
    assert!(back.is_some(), "the IPv4 rule was not repaired: {}", ip(&["-n", &node_ns, "-4", "rule"]));
    assert!(ping(&p1.ns, p2.v4, 2, "2"), "IPv4 pod traffic after the repair");
    only_wireguard(&mut m, cap);
}

#[test]
fn before_its_pod_cidr_is_known_the_agent_drops_remote_pods_but_the_host_reaches_its_own() {
    let _serial = serial();
    let (mut m, cap, p1, p2) = two_nodes_up();
    let (node_ns, v4_cidr, v6_cidr) = (m.node(1).ns.clone(), m.node(1).v4_cidr(), m.node(1).v6_cidr());
    let ifname = m.node(1).ifname.clone();
    // The agent's rule and routes are gone (flushed, or a restart after the table was lost)
    // and its source does not name the node (an API server slow to answer, a node without
    // `spec.podCIDRs`) while its pods run.
    m.kill_agent(1);
    for v in ["-4", "-6"] {
        ip(&["-n", &node_ns, v, "rule", "del", "priority", "100", "table", TABLE]);
        ip(&["-n", &node_ns, v, "route", "flush", "table", TABLE]);
    }
    m.unpublish(1);
    m.node_mut(1).pod_cidr_flags = false;
    m.start_agent(1);
    let table = || ip(&["-n", &node_ns, "-4", "route", "show", "table", TABLE]);
    let drops = wait_for(Duration::from_secs(5), || table().contains("unreachable 10.") && ip(&["-n", &node_ns, "-4", "rule"]).contains(TABLE));
    assert!(drops.is_some(), "no drops: {}", table());
    // The pod bridge's prefix is the host's own: it stays reachable (kubelet's probes), while
    // every other pod address is dropped.
    let table6 = || ip(&["-n", &node_ns, "-6", "route", "show", "table", TABLE]);
    assert!(table().contains(&format!("throw {v4_cidr}")), "{}", table());
    assert!(table6().contains(&format!("throw {v6_cidr}")), "{}", table6());
    assert!(ping(&node_ns, p1.v4, 2, "2"), "the host lost its own pod: {}", table());
    assert!(ping(&node_ns, p1.v6, 2, "2"), "the host lost its own pod over IPv6: {}", table6());
    // and the tunnel addresses a known pod CIDR gave stay until another is known
    assert!(ip(&["-n", &node_ns, "-6", "addr", "show", "dev", &ifname]).contains("fd00:244:0:1::1/128"));
    assert!(!ping(&p1.ns, p2.v4, 2, "1") && !ping(&p1.ns, p2.v6, 2, "1"), "a remote pod answered before the mesh knew this node");
    only_wireguard(&mut m, cap);
}

/// Node `n` as the two DaemonSets run it: its engine a process of its own, the agent attached
/// to it. Returns the engine's child index.
fn run_apart(m: &mut Mesh, n: u32) -> usize {
    let ifname = m.node(n).ifname.clone();
    m.kill_agent(n);
    for pid in engine_pids(&ifname) {
        // SAFETY: kill(2) on the engine this test's agent started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(wait_for(Duration::from_secs(5), || engine_pids(&ifname).is_empty()).is_some(), "engine still running");
    let engine = m.start_engine(n);
    m.start_agent_with(n, &["--engine", "attach"]);
    m.wait_ready(n);
    engine
}

#[test]
fn an_external_peers_network_stays_off_the_underlay_while_the_engine_is_gone() {
    // Node 1 as the two DaemonSets run it (engine and agent apart). An office network reached
    // through an external peer is also routed by node 1's `main`, across the underlay: while
    // the engine's pod is replaced, pod traffic to that network must be dropped, not sent there.
    let _serial = serial();
    let mut m = Mesh::new(2, 1);
    let cap = m.capture();
    let (node_ns, p1) = (m.node(1).ns.clone(), m.node(1).pods[0].clone());
    m.underlay_host(50);
    ip(&["-n", &node_ns, "route", "add", "10.99.0.0/24", "via", "192.168.77.50"]);
    let doc = "apiVersion: wgmesh.io/v1alpha1\nkind: WireGuardPeer\nmetadata:\n  name: office\nspec:\n  publicKey: \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n  endpoint: \"192.168.77.50:51820\"\n  allowedIPs: [\"10.99.0.0/24\"]\n";
    std::fs::write(m.peer_dir().join("office.yaml"), doc).unwrap_or_else(|e| panic!("{e}"));
    let engine = run_apart(&mut m, 1);
    let routed = || ip(&["-n", &node_ns, "-4", "route", "show", "table", TABLE]).lines().any(|l| l.starts_with("10.99.0.0/24 dev wgm"));
    assert!(wait_for(Duration::from_secs(5), routed).is_some(), "office not routed into the tunnel: {}", m.log_tail(1));
    let guarded = || guard_table(&node_ns).is_some_and(|t| t.contains("10.99.0.0/24"));
    assert!(wait_for(Duration::from_secs(5), guarded).is_some(), "office network not in the guard: {:?}", guard_table(&node_ns));
    let drops = || guard_table(&node_ns).map_or(0, |t| wgmesh_node_agent::guard::dropped(&t).leaving);
    let before = drops();

    m.stop_child(engine);
    assert!(wait_for(Duration::from_secs(5), || !routed()).is_some(), "the tunnel route outlived the engine");
    // the pod's packets now meet main's route across the underlay: the guard drops them
    assert!(!ping(&p1.ns, "10.99.0.5".parse().unwrap_or_else(|e| panic!("{e}")), 2, "1"));
    assert!(drops() >= before + 2, "the guard did not drop the pod's packets: {:?}", guard_table(&node_ns));
    // the node's own traffic there keeps main's route (no black hole for kubelet or DNS)
    let own = ip(&["-n", &node_ns, "route", "get", "10.99.0.5"]);
    assert!(own.contains("via 192.168.77.50"), "{own}");
    only_wireguard(&mut m, cap);
}

/// The agent's nftables table in node namespace `ns`, as `nft list` prints it.
fn guard_table(ns: &str) -> Option<String> {
    let o = in_ns(ns, &["nft", "list", "table", "inet", "wgmesh"]);
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn with_the_rule_flushed_and_no_agent_the_guard_keeps_pod_packets_off_the_underlay() {
    let _serial = serial();
    let (mut m, cap, p1, p2) = two_nodes_up();
    let node_ns = m.node(1).ns.clone();
    let drops = || guard_table(&node_ns).map_or(0, |t| wgmesh_node_agent::guard::dropped(&t).leaving);
    assert!(guard_table(&node_ns).is_some_and(|t| t.contains("oifname")), "no underlay guard");
    assert_eq!(drops(), 0, "the guard dropped traffic of a working mesh");
    // Removed by someone else while the agent runs: back within about a second.
    assert!(in_ns(&node_ns, &["nft", "delete", "table", "inet", "wgmesh"]).status.success());
    assert!(
        wait_for(Duration::from_secs(3), || guard_table(&node_ns).is_some()).is_some(),
        "the guard was not put back: {}",
        m.log_tail(1)
    );

    // No agent, and another program flushes our policy rules (systemd-networkd does by
    // default): routing now sends node 1's pod packets out of `main`, onto the underlay.
    m.kill_agent(1);
    for fam in ["-4", "-6"] {
        ip(&["-n", &node_ns, fam, "rule", "del", "priority", "100"]);
    }
    assert!(!ping(&p1.ns, p2.v4, 3, "1"), "pod traffic with no rule and no agent");
    assert!(drops() >= 3, "the guard did not drop them: {:?}", guard_table(&node_ns));

    // The agent comes back: the rule returns, traffic flows, and it reports what was dropped.
    m.start_agent(1);
    m.wait_ready(1);
    assert!(
        wait_for(Duration::from_secs(5), || ping(&p1.ns, p2.v4, 1, "1")).is_some(),
        "pod traffic after the agent's return: {}",
        m.log_tail(1)
    );
    // reported on the guard's first check, which may come just after the rule's repair
    let reported = || std::fs::read_to_string(&m.node(1).log).unwrap_or_default().contains("underlay guard dropped packets to remote pods");
    assert!(wait_for(Duration::from_secs(5), reported).is_some(), "the drops were not reported: {}", m.log_tail(1));
    // the capture fails on an ARP request for a pod address: what a leak looks like here
    only_wireguard(&mut m, cap);

    // Without the guard's outbound chain the same steps route the ping onto the underlay,
    // and a capture of that sees it: this is what the chain is for.
    m.kill_agent(1);
    for fam in ["-4", "-6"] {
        ip(&["-n", &node_ns, fam, "rule", "del", "priority", "100"]);
    }
    let bare = m.capture();
    assert!(in_ns(&node_ns, &["nft", "delete", "chain", "inet", "wgmesh", "postrouting"]).status.success());
    assert!(!ping(&p1.ns, p2.v4, 2, "1"));
    let leak = m.stop_capture(bare);
    assert!(
        leak.other_ip.iter().any(|p| p.starts_with(&format!("ARP for {}", p2.v4))),
        "no leak seen without the guard: {leak:?}"
    );
    // the kernel would go on asking for that address for a few seconds
    ip(&["-n", &node_ns, "neigh", "flush", "dev", "eth0"]);
    std::thread::sleep(Duration::from_millis(300));
    let cap = m.capture();

    // Turned off on a host without nft: the agent is ready all the same (the table it cannot
    // see stays); with nft it removes the table it finds.
    m.kill_agent(1);
    // the killed agent's readiness file would pass wait_ready before the new one starts
    let _ = std::fs::remove_file(&m.node(1).readiness);
    m.start_agent_env(1, &["--no-nft-guard"], &[("PATH", "/nonexistent")]);
    m.wait_ready(1);
    assert!(guard_table(&node_ns).is_some());
    m.kill_agent(1);
    m.start_agent_with(1, &["--no-nft-guard"]);
    m.wait_ready(1);
    assert!(wait_for(Duration::from_secs(3), || guard_table(&node_ns).is_none()).is_some(), "guard left with --no-nft-guard");
    only_wireguard(&mut m, cap);
}

/// ICMP echo requests the namespace's stack received (`/proc/net/snmp` InEchos).
fn icmp_in_echos(ns: &str) -> u64 {
    let snmp = String::from_utf8_lossy(&in_ns(ns, &["cat", "/proc/net/snmp"]).stdout).into_owned();
    let icmp: Vec<Vec<&str>> = snmp.lines().filter(|l| l.starts_with("Icmp:")).map(|l| l.split_whitespace().collect()).collect();
    let at = icmp[0].iter().position(|f| *f == "InEchos").unwrap_or_else(|| panic!("no InEchos: {snmp}"));
    icmp[1][at].parse().unwrap_or_else(|e| panic!("InEchos: {e}"))
}

/// A host on the underlay that sends as a pod of node 2, straight to node 1's pod (no tunnel),
/// with node 1's rp_filter off, as on many Kubernetes nodes (routing does not stop a spoofed
/// source then). Returns: send three echoes, tell how many reached the pod.
fn spoofer(m: &mut Mesh) -> impl Fn() -> u64 {
    let (node_ns, p1) = (m.node(1).ns.clone(), m.node(1).pods[0].clone());
    for dev in ["all", "default", "eth0"] {
        sysctl(&node_ns, &format!("net.ipv4.conf.{dev}.rp_filter=0"));
    }
    let host = m.underlay_host(99);
    ip(&["-n", &host, "addr", "add", "10.244.2.99/32", "dev", "eth0"]);
    ip(&["-n", &host, "route", "add", "10.244.1.0/24", "via", "192.168.77.1"]);
    move || {
        let before = icmp_in_echos(&p1.ns);
        let _ = in_ns(&host, &["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.244.2.99", &p1.v4.to_string()]);
        icmp_in_echos(&p1.ns) - before
    }
}

#[test]
fn a_remote_pod_address_arriving_outside_the_tunnel_never_reaches_a_pod() {
    let _serial = serial();
    let mut m = Mesh::new(2, 1);
    let (p1, p2) = (m.node(1).pods[0].clone(), m.node(2).pods[0].clone());
    let node_ns = m.node(1).ns.clone();
    let spoof = spoofer(&mut m);
    let drops = || guard_table(&node_ns).map_or(0, |t| wgmesh_node_agent::guard::dropped(&t).arriving);

    // Without the guard's inbound chain (agent stopped, chain deleted) the spoof gets through:
    // (a NodePort would lead it to a pod the same way; the chain sits after kube-proxy's DNAT)
    // this is what the chain is for.
    m.kill_agent(1);
    assert!(in_ns(&node_ns, &["nft", "delete", "chain", "inet", "wgmesh", "forward"]).status.success());
    assert_eq!(spoof(), 3, "the spoofed echoes should reach the pod when nothing stops them");

    // The agent puts the chain back; now nothing spoofed reaches the pod, and it is counted.
    let _ = std::fs::remove_file(&m.node(1).readiness);
    m.start_agent(1);
    m.wait_ready(1);
    assert!(
        wait_for(Duration::from_secs(3), || guard_table(&node_ns).is_some_and(|t| t.contains("chain forward"))).is_some(),
        "inbound chain not restored: {}",
        m.log_tail(1)
    );
    let before = drops();
    assert_eq!(spoof(), 0, "a spoofed remote-pod packet reached the pod past the guard");
    assert!(drops() >= before + 3, "not counted: {:?}", guard_table(&node_ns));
    // pods still reach each other through the tunnel, both ways
    assert!(ping(&p1.ns, p2.v4, 2, "2") && ping(&p2.ns, p1.v4, 2, "2"), "mesh traffic past the guard");
}

#[test]
fn pods_outside_the_cluster_cidr_stay_off_the_underlay_both_ways() {
    // Node 1's agent is given a cluster CIDR that covers neither node's pods (a wrong flag, or
    // IPv6 on a dual-stack cluster given only its IPv4 range): no routing drop covers them, so
    // the guard must keep pod packets to and from node 2's pods off the underlay by address.
    let _serial = serial();
    let mut m = Mesh::new(2, 1);
    let (p1, p2) = (m.node(1).pods[0].clone(), m.node(2).pods[0].clone());
    let node_ns = m.node(1).ns.clone();
    let spoof = spoofer(&mut m);
    m.kill_agent(1);
    m.node_mut(1).cluster_cidrs = vec!["10.96.0.0/16".into()];
    let _ = std::fs::remove_file(&m.node(1).readiness);
    m.start_agent(1);
    m.wait_ready(1);
    // Both families in nft, IPv6 without any cluster CIDR (this underlay carries no IPv6 to leak).
    let guarded = |t: String| {
        ["ip saddr 10.244.2.0/24 ip daddr 10.244.1.0/24", "ip6 saddr fd00:244:0:1::/64 ip6 daddr fd00:244:0:2::/64"]
            .iter()
            .all(|r| t.contains(r))
    };
    let loaded = wait_for(Duration::from_secs(3), || guard_table(&node_ns).is_some_and(guarded));
    assert!(loaded.is_some(), "guard rules missing: {:?}", guard_table(&node_ns));
    let log = std::fs::read_to_string(&m.node(1).log).unwrap_or_default();
    assert!(log.contains("10.244.2.0/24 of node n2 lies outside --cluster-cidr"), "no warning: {}", m.log_tail(1));
    // the mesh itself passes the guard, both ways, both families
    let both = || ping(&p1.ns, p2.v4, 1, "1") && ping(&p2.ns, p1.v4, 1, "1") && ping(&p1.ns, p2.v6, 1, "1");
    assert!(wait_for(Duration::from_secs(5), both).is_some(), "mesh traffic: {}", m.log_tail(1));
    let drops = || guard_table(&node_ns).map_or_else(Default::default, |t| wgmesh_node_agent::guard::dropped(&t));

    // In: a host on the underlay sends as node 2's pod straight to node 1's pod.
    let before = drops().arriving;
    assert_eq!(spoof(), 0, "a spoofed packet from node 2's pods reached the pod");
    assert!(drops().arriving >= before + 3, "not counted: {:?}", guard_table(&node_ns));

    // Out: no agent, and the policy rules flushed: routing sends the pod's packets to `main`.
    let cap = m.capture();
    m.kill_agent(1);
    for fam in ["-4", "-6"] {
        ip(&["-n", &node_ns, fam, "rule", "del", "priority", "100"]);
    }
    let before = drops().leaving;
    assert!(!ping(&p1.ns, p2.v4, 3, "1"), "pod traffic with no rule and no agent");
    assert!(drops().leaving >= before + 3, "the guard did not drop them: {:?}", guard_table(&node_ns));
    only_wireguard(&mut m, cap);
}

/// `wg show IFACE WHAT` in node namespace `ns`, as lines of tab-separated fields.
fn wg_show(ns: &str, ifname: &str, what: &str) -> Vec<Vec<String>> {
    let o = in_ns(ns, &["wg", "show", ifname, what]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// Runs `wgmesh-node-agent rotate-key` on node `n`'s key file, then waits `within` for its
/// engine to show the new public key (failing with `never`); returns that key.
fn rotate_key(m: &Mesh, n: u32, within: Duration, never: &str) -> String {
    let node = m.node(n);
    let o = run(Command::new(AGENT)
        .args(["rotate-key", "--private-key"])
        .arg(&node.key_path));
    assert!(
        o.status.success(),
        "rotate-key: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let new_key = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let moved = wait_for(within, || {
        wg_show(&node.ns, &node.ifname, "public-key")
            .first()
            .map(|f| f[0].as_str())
            == Some(new_key.as_str())
    });
    assert!(moved.is_some(), "{never}");
    new_key
}

#[test]
fn rotating_a_node_key_keeps_every_ping_and_moves_all_sessions_to_the_new_key() {
    let _serial = serial();
    let (mut m, cap, p1, p2) = two_nodes_up();
    let n2 = (m.node(2).ns.clone(), m.node(2).ifname.clone());
    let old_key = m.node(1).public_key.clone();
    let rx_before: u64 = wg_show(&n2.0, &n2.1, "transfer")
        .iter()
        .find(|f| f[0] == old_key)
        .and_then(|f| f.get(1)?.parse().ok())
        .unwrap_or_else(|| panic!("node 2 has no peer {old_key}"));

    // Continuous pings both ways while node 1 rotates its key and node 2 learns it.
    let a = start_ping(&p1.ns, p2.v4, "0.02", 200);
    let b = start_ping(&p2.ns, p1.v6, "0.02", 200);
    std::thread::sleep(Duration::from_millis(500));
    let new_key = rotate_key(
        &m,
        1,
        Duration::from_secs(2),
        "node 1's engine never took the new key",
    );
    assert_ne!(new_key, old_key);
    // node 1's traffic still flows on its old sessions; now the operator's part: publish
    std::thread::sleep(Duration::from_millis(300));
    m.node_mut(1).public_key = new_key.clone();
    m.publish(1);
    let rekeyed = wait_for(Duration::from_secs(2), || {
        wg_show(&n2.0, &n2.1, "latest-handshakes")
            .iter()
            .any(|f| f[0] == new_key && f.get(1).is_some_and(|t| t != "0"))
    });
    assert!(
        rekeyed.is_some(),
        "node 2 never completed a handshake with the new key"
    );
    let (a, b) = (finish_ping(a), finish_ping(b));
    for (dir, r) in [("pod 1 -> pod 2", &a), ("pod 2 -> pod 1", &b)] {
        assert!(
            r.transmitted == 200 && r.received == 200,
            "{dir} lost packets across the rotation: {}/{}",
            r.received,
            r.transmitted
        );
    }

    // Node 2 renamed the peer (its counters carry on) and forgot the old key.
    let transfer = wg_show(&n2.0, &n2.1, "transfer");
    assert!(
        transfer.iter().all(|f| f[0] != old_key),
        "old key still configured: {transfer:?}"
    );
    let rx_after: u64 = transfer
        .iter()
        .find(|f| f[0] == new_key)
        .and_then(|f| f.get(1)?.parse().ok())
        .unwrap_or(0);
    assert!(
        rx_after > rx_before,
        "peer re-created, not renamed: rx {rx_before} -> {rx_after}"
    );
    let mode = std::fs::metadata(&m.node(1).key_path)
        .map(|md| std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600, "rotated key file mode");
    // And afterwards, on the new sessions.
    assert!(ping(&p1.ns, p2.v4, 2, "2") && ping(&p2.ns, p1.v6, 2, "2"));

    // A key file someone garbled: the engine keeps the key, and the agent says so once per
    // version of the file, not on every tick.
    let warning = "cannot load the rotated private key";
    let warned = || std::fs::read_to_string(&m.node(1).log).unwrap_or_default().matches(warning).count();
    // replaced in one step (rename), as an editor or a tool would, so a tick sees one version
    let garbled = m.node(1).key_path.with_extension("garbled");
    std::fs::write(&garbled, "not a key\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&garbled, &m.node(1).key_path).unwrap_or_else(|e| panic!("{e}"));
    assert!(wait_for(Duration::from_secs(2), || warned() == 1).is_some(), "no warning: {}", m.log_tail(1));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(warned(), 1, "warned on every tick: {}", m.log_tail(1));
    assert_eq!(wg_show(&m.node(1).ns, &m.node(1).ifname, "public-key").first().map(|f| f[0].clone()), Some(new_key.clone()));
    assert!(ping(&p1.ns, p2.v4, 2, "2"));

    only_wireguard(&mut m, cap);
}

#[test]
fn rotation_falls_back_to_a_plain_key_change_on_an_engine_without_the_extensions() {
    let _serial = serial();
    let (mut m, cap, p1, p2) = two_nodes_up();
    // Node 1's agent now drives wireguard-go, which refuses wgmesh's UAPI extensions.
    m.kill_agent(1);
    if let Some(pid) = m.engine_pid(1) {
        // SAFETY: the pid of the engine serving this test's uniquely named interface.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    m.node_mut(1).engine = std::path::PathBuf::from("wireguard-go");
    m.start_agent(1);
    m.wait_ready(1);
    let wggo = wait_for(Duration::from_secs(10), || {
        m.engine_pid(1)
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok())
            .is_some_and(|c| c.contains("wireguard-go"))
    });
    assert!(wggo.is_some(), "node 1 never ran wireguard-go");
    assert!(
        wait_for(Duration::from_secs(10), || ping(&p1.ns, p2.v4, 1, "1")).is_some(),
        "mesh up with wireguard-go on node 1"
    );
    let new_key = rotate_key(
        &m,
        1,
        Duration::from_secs(3),
        "the agent never moved wireguard-go to the new key",
    );
    m.node_mut(1).public_key = new_key;
    m.publish(1);
    assert!(
        wait_for(Duration::from_secs(10), || ping(&p1.ns, p2.v4, 1, "1")
            && ping(&p2.ns, p1.v6, 1, "1"))
        .is_some(),
        "no traffic under the new key"
    );
    assert!(
        m.log_tail(1)
            .contains("refused the key-rotation extensions"),
        "{}",
        m.log_tail(1)
    );
    only_wireguard(&mut m, cap);
}

#[test]
fn cleanup_removes_everything_the_agent_installed() {
    let _serial = serial();
    let mut m = Mesh::new(1, 0);
    let node_ns = m.node(1).ns.clone();
    let ifname = m.node(1).ifname.clone();
    let readiness = m.node(1).readiness.clone();
    let key = m.node(1).key_path.clone();
    assert!(
        !ip(&["-n", &node_ns, "rule"])
            .lines()
            .all(|l| !l.contains("lookup 51820")),
        "rule installed"
    );
    // Another program's rule at our priority (Cilium moves `lookup local` there) is not ours:
    // neither the running agent nor cleanup may remove it.
    // Nor is what another program put into our table: wg-quick's `Table = auto` uses table
    // 51820 too, with its own rule and default route.
    for fam in ["-4", "-6"] {
        ip(&["-n", &node_ns, fam, "rule", "add", "priority", "100", "lookup", "1234"]);
        ip(&["-n", &node_ns, fam, "rule", "add", "not", "fwmark", "51820", "priority", "32000", "table", TABLE]);
    }
    // An earlier agent's rule (no protocol, wg-quick's mark) at our priority is ours and stale:
    // left in place it would send the engine's own UDP into the tunnel.
    ip(&["-n", &node_ns, "rule", "add", "not", "fwmark", "0xca6c", "priority", "100", "table", TABLE]);
    ip(&["-n", &node_ns, "route", "add", "192.0.2.0/24", "dev", "lo", "table", TABLE]);
    ip(&["-n", &node_ns, "-6", "route", "add", "2001:db8:77::/64", "dev", "lo", "table", TABLE]);
    // another program's nftables table is not ours either
    assert!(in_ns(&node_ns, &["nft", "add", "table", "inet", "someone_else"]).status.success());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(guard_table(&node_ns).is_some(), "no underlay guard");
    let foreign_kept = |when: &str| {
        for fam in ["-4", "-6"] {
            let rules = ip(&["-n", &node_ns, fam, "rule"]);
            assert!(rules.contains("100:\tfrom all lookup 1234"), "{when} removed a foreign rule: {rules}");
            assert!(rules.contains("32000:\tnot from all fwmark 0xca6c lookup 51820"), "{when} removed a foreign rule: {rules}");
        }
        let routes = ip(&["-n", &node_ns, "route", "show", "table", TABLE]) + &ip(&["-n", &node_ns, "-6", "route", "show", "table", TABLE]);
        assert!(routes.contains("192.0.2.0/24 dev lo") && routes.contains("2001:db8:77::/64 dev lo"), "{when} removed a foreign route: {routes}");
    };
    foreign_kept("the agent");
    let rules = ip(&["-n", &node_ns, "rule"]);
    assert!(!rules.contains("100:\tnot from all fwmark 0xca6c lookup 51820"), "the stale rule stayed: {rules}");
    assert!(rules.contains("100:\tnot from all fwmark 0x20000000/0x20000000 lookup 51820 proto 87"), "{rules}");
    m.kill_agent(1);
    let o = in_ns(
        &node_ns,
        &[
            AGENT,
            "cleanup",
            "--interface",
            &ifname,
            "--readiness-path",
            &readiness.to_string_lossy(),
        ],
    );
    assert!(
        o.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    foreign_kept("cleanup");
    for fam in ["-4", "-6"] {
        let rules = ip(&["-n", &node_ns, fam, "rule"]);
        assert_eq!(rules.matches("lookup 51820").count(), 1, "rule left: {rules}");
        let routes = ip(&["-n", &node_ns, fam, "route", "show", "table", TABLE]);
        assert_eq!(routes.trim().lines().count(), 1, "routes left: {routes}");
    }
    assert!(
        !ip(&["-n", &node_ns, "link"]).contains(&ifname),
        "interface left"
    );
    assert!(
        wait_for(Duration::from_secs(3), || engine_pids(&ifname).is_empty()).is_some(),
        "engine still running"
    );
    assert!(!readiness.exists(), "readiness file left");
    assert!(guard_table(&node_ns).is_none(), "underlay guard left");
    assert!(in_ns(&node_ns, &["nft", "list", "table", "inet", "someone_else"]).status.success(), "cleanup removed a foreign nftables table");
    assert!(key.exists(), "the private key is kept unless --remove-key");
    // twice is fine
    let o = in_ns(
        &node_ns,
        &[
            AGENT,
            "cleanup",
            "--interface",
            &ifname,
            "--readiness-path",
            &readiness.to_string_lossy(),
        ],
    );
    assert!(
        o.status.success(),
        "second cleanup: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn an_attached_agent_configures_each_new_engine_and_nothing_leaks_in_between() {
    // Node 1 as the two DaemonSets run it: the engine a process of its own (wgmesh-tunnel's
    // pod), the agent attached to it. Deleting the engine's pod must drop node 1's pod traffic,
    // never send it in plaintext, and the next engine must be configured without the agent
    // restarting.
    let _serial = serial();
    let mut m = Mesh::new(2, 1);
    let cap = m.capture();
    let (p1, p2) = (m.node(1).pods[0].clone(), m.node(2).pods[0].clone());
    let engine = run_apart(&mut m, 1);
    let pings = || wait_for(Duration::from_secs(10), || ping(&p1.ns, p2.v4, 1, "1")).is_some();
    assert!(pings(), "attached: {}", m.log_tail(1));

    // The engine's pod is deleted: no engine, so not ready, and pod traffic is dropped.
    m.stop_child(engine);
    let readiness = m.node(1).readiness.clone();
    assert!(wait_for(Duration::from_secs(5), || !readiness.exists()).is_some(), "still ready without an engine: {}", m.log_tail(1));
    assert!(!ping(&p1.ns, p2.v4, 2, "1"), "pod traffic without an engine");
    assert!(m.agent_running(1), "the agent keeps running");

    // The new pod's engine: configured by the same agent, traffic flows again.
    m.start_engine(1);
    m.wait_ready(1);
    assert!(pings(), "after the engine came back: {}", m.log_tail(1));
    only_wireguard(&mut m, cap);
}
