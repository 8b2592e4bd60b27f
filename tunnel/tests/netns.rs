//! Black-box tests of the `wgmesh-tunnel` binary in network namespaces, driven by the stock
//! `wg`/`wg-quick` tools and checked against wireguard-go: the userspace-applicable scenarios
//! of the kernel's netns.sh. Needs root and the packages `.ci/run` installs.

mod lab;
use lab::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Sends `len` pseudo-random bytes over TCP from `from` to `to_addr` and checks every byte.
fn tcp_transfer(p: &Pair, from: usize, to_addr: &str, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[1]).collect();
    let expect = data.clone();
    let listen = format!("{}:5201", if to_addr.contains(':') { format!("[{to_addr}]") } else { to_addr.to_string() });
    let dst = listen.clone();
    let server_ns = p.ns[1 - from].clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        in_ns(&server_ns, move || {
            let l = TcpListener::bind(&listen).expect("listen");
            tx.send(()).unwrap();
            let (mut s, _) = l.accept().expect("accept");
            // a stalled tunnel fails the test instead of hanging it
            s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read");
            got
        })
    });
    rx.recv().unwrap();
    in_ns(&p.ns[from], move || {
        let mut s = TcpStream::connect_timeout(&dst.parse().unwrap(), Duration::from_secs(5)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(60))).expect("timeout");
        s.write_all(&data).expect("write");
    });
    let got = server.join().unwrap();
    assert!(got == expect, "TCP bytes differ: got {} of {} bytes", got.len(), expect.len());
}

fn full_check(a: Impl, b: Impl, outer6: bool, initiator: usize) {
    let p = pair(a, b, outer6);
    let peer_v4 = ["192.168.241.2", "192.168.241.1"];
    let peer_v6 = ["fd00::2", "fd00::1"];
    let responder = 1 - initiator;
    assert!(p.lab.ping(&p.ns[initiator], peer_v4[initiator], 3), "{a:?}->{b:?} ping v4 from side {initiator}");
    assert!(p.lab.ping(&p.ns[responder], peer_v4[responder], 2), "ping v4 back");
    assert!(p.lab.ping(&p.ns[initiator], peer_v6[initiator], 2), "ping v6");
    assert!(p.lab.ping(&p.ns[responder], peer_v6[responder], 2), "ping v6 back");
    tcp_transfer(&p, 0, "192.168.241.2", 4 << 20);
    tcp_transfer(&p, 1, "fd00::1", 4 << 20);
    // After bulk sending the TUN thread hands TUN reading back to a UDP thread: both ways on.
    assert!(p.lab.ping(&p.ns[0], peer_v4[0], 2), "ping after the transfers");
    assert!(p.lab.ping(&p.ns[1], peer_v4[1], 2), "ping back after the transfers");
    // Both sides report a handshake, as Unix time.
    for i in 0..2 {
        let out = p.lab.exec_ok(&p.ns[i], &["wg", "show", &p.iface[i], "latest-handshakes"]);
        let t: u64 = out.split('\t').nth(1).unwrap().trim().parse().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(t > now - 60 && t <= now + 1, "handshake time {t} vs now {now}");
    }
}

#[test]
fn ours_with_ours() {
    full_check(Impl::Ours, Impl::Ours, false, 0);
}

#[test]
fn ours_initiates_to_wireguard_go() {
    full_check(Impl::Ours, Impl::WireguardGo, false, 0);
}

#[test]
fn wireguard_go_initiates_to_ours() {
    full_check(Impl::Ours, Impl::WireguardGo, false, 1);
}

#[test]
fn ipv6_outer_endpoints_with_wireguard_go() {
    full_check(Impl::WireguardGo, Impl::Ours, true, 1);
}

/// netns.sh: after one handshake and 10 pings, `wg show transfer` is exact.
#[test]
fn transfer_counters_after_ten_pings() {
    let p = pair(Impl::Ours, Impl::Ours, false);
    assert!(p.lab.ping(&p.ns[1], "192.168.241.1", 10));
    let (rx, tx) = p.lab.transfer(&p.ns[1], &p.iface[1], &p.keys[0].public);
    assert!(rx == 1372 && (tx == 1428 || tx == 1460), "pinger rx={rx} tx={tx}");
    let (rx, tx) = p.lab.transfer(&p.ns[0], &p.iface[0], &p.keys[1].public);
    assert!(tx == 1372 && (rx == 1428 || rx == 1460), "responder rx={rx} tx={tx}");
}

#[test]
fn roaming_and_crypto_rp_filter() {
    let p = pair(Impl::Ours, Impl::Ours, false);
    let (n1, n2) = (&p.ns[0], &p.ns[1]);
    assert!(p.lab.ping(n1, "192.168.241.2", 1));
    // Side 0 moves to a new port: side 1 follows it on the next authenticated packet.
    p.lab.wg_set(n1, &p.iface[0], None, "listen-port 9999");
    assert!(p.lab.ping(n1, "192.168.241.2", 1));
    let ep = p.lab.exec_ok(n2, &["wg", "show", &p.iface[1], "endpoints"]);
    assert!(ep.contains("10.77.0.1:9999"), "endpoint did not roam: {ep}");
    // Now side 1 routes 192.168.241.1 to another peer: packets from side 0 fail the source
    // check and are dropped, yet the endpoint still roams (netns.sh crypto-RP filter).
    let other = genkey();
    p.lab.wg_set(n2, &p.iface[1], None, &format!("peer {} allowed-ips 192.168.241.1/32", other.public));
    p.lab.wg_set(n1, &p.iface[0], None, "listen-port 9997");
    assert!(!p.lab.ping(n1, "192.168.241.2", 1), "spoofed source must not get through");
    let ep = p.lab.exec_ok(n2, &["wg", "show", &p.iface[1], "endpoints"]);
    assert!(
        ep.contains(&format!("{}\t10.77.0.1:9997", p.keys[0].public)),
        "endpoint roams before the source check: {ep}"
    );
}

#[test]
fn replies_leave_from_the_address_the_peer_wrote_to() {
    // netns.sh's sticky-source rows: ours has two addresses on one link and wireguard-go
    // knows the secondary one. Replies from the primary would make wireguard-go roam to it.
    let p = pair(Impl::Ours, Impl::WireguardGo, false);
    let (ours, theirs) = (&p.ns[0], &p.ns[1]);
    p.lab.exec_ok(ours, &["ip", "addr", "add", "10.77.0.11/24", "dev", &p.veth.0]);
    p.lab.wg_set(theirs, &p.iface[1], None, &format!("peer {} endpoint 10.77.0.11:51001", p.keys[0].public));
    let endpoint = || p.lab.exec_ok(theirs, &["wg", "show", &p.iface[1], "endpoints"]);
    assert!(p.lab.ping(theirs, "192.168.241.1", 2));
    assert!(p.lab.ping(ours, "192.168.241.2", 2));
    assert!(endpoint().contains("10.77.0.11:51001"), "our replies came from another address: {}", endpoint());
    // The address goes away: sends fall back to what routing picks, and traffic goes on.
    p.lab.exec_ok(ours, &["ip", "addr", "del", "10.77.0.11/24", "dev", &p.veth.0]);
    assert!(p.lab.ping(ours, "192.168.241.2", 2));
    assert!(endpoint().contains("10.77.0.1:51001"), "peer should follow us to the primary: {}", endpoint());
    // Setting the peer's endpoint anew, or a new fwmark, forgets the learned source too (as
    // the kernel's netlink does): our next packet leaves from the primary, and the peer follows.
    p.lab.exec_ok(ours, &["ip", "addr", "add", "10.77.0.11/24", "dev", &p.veth.0]);
    let forgets = [format!("peer {} endpoint 10.77.0.2:51002", p.keys[1].public), "fwmark 0x51".to_string()];
    for set in &forgets {
        p.lab.wg_set(theirs, &p.iface[1], None, &format!("peer {} endpoint 10.77.0.11:51001", p.keys[0].public));
        assert!(p.lab.ping(theirs, "192.168.241.1", 1));
        assert!(endpoint().contains("10.77.0.11:51001"), "learned again: {}", endpoint());
        p.lab.wg_set(ours, &p.iface[0], None, set);
        assert!(p.lab.ping(ours, "192.168.241.2", 1));
        assert!(endpoint().contains("10.77.0.1:51001"), "`wg set {set}` kept the learned source: {}", endpoint());
    }
}

#[test]
fn cookie_replies_leave_from_the_address_the_initiation_came_to() {
    use rand_chacha::rand_core::SeedableRng;
    use wgmesh_tunnel::{Clock, Device, Output, PrivateKey, PublicKey};
    #[derive(Default)]
    struct Sent(Vec<Vec<u8>>);
    impl Output for Sent {
        fn send(&mut self, _: std::net::SocketAddr, d: &[u8]) {
            self.0.push(d.to_vec());
        }
        fn deliver(&mut self, _: &[u8]) {}
    }
    let p = pair(Impl::Ours, Impl::WireguardGo, false);
    p.lab.exec_ok(&p.ns[0], &["ip", "addr", "add", "10.77.0.11/24", "dev", &p.veth.0]);
    // A genuine initiation (valid mac1) from a key ours does not know, made by our own core.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let clock = Clock { mono: Duration::from_secs(1), wall: Duration::from_secs(1_700_000_000) };
    let mut d = Device::new(rand_chacha::ChaCha8Rng::seed_from_u64(10));
    let mut out = Sent::default();
    d.set_private_key(Some(PrivateKey::generate(&mut rng)), clock, &mut out);
    let id = d.add_peer(PublicKey::from_base64(&p.keys[0].public).unwrap()).unwrap();
    d.set_endpoint(id, "10.77.0.11:51001".parse().unwrap());
    d.allowed_ips.insert("192.168.241.1".parse().unwrap(), 32, id);
    d.set_up(true, clock, &mut out);
    let mut ping = vec![0u8; 84];
    ping[0] = 0x45;
    ping[2..4].copy_from_slice(&84u16.to_be_bytes());
    ping[16..20].copy_from_slice(&[192, 168, 241, 1]);
    d.handle_tun(&ping, clock, &mut out);
    let init = out.0.into_iter().find(|m| m[0] == 1 && m.len() == 148).expect("an initiation");
    // 1,000 of them at once put ours under load (over 512 a second): the rest get cookie replies.
    let from = in_ns(&p.ns[1], move || {
        let s = UdpSocket::bind("10.77.0.2:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        for _ in 0..1000 {
            s.send_to(&init, "10.77.0.11:51001").unwrap();
        }
        let (mut from, mut buf) = (Vec::new(), [0u8; 256]);
        while let Ok((n, a)) = s.recv_from(&mut buf) {
            if n == 64 && buf[0] == 3 {
                from.push(a.ip().to_string());
            }
        }
        from
    });
    assert!(!from.is_empty(), "no cookie reply under load");
    assert!(from.iter().all(|a| a == "10.77.0.11"), "cookie replies came from {from:?}");
}

#[test]
fn a_port_taken_at_link_up_is_bound_once_it_is_free() {
    let p = pair(Impl::Ours, Impl::WireguardGo, false);
    let ours = p.ns[0].clone();
    assert!(p.lab.ping(&ours, "192.168.241.2", 1));
    let shook = Instant::now();
    p.lab.exec_ok(&ours, &["ip", "link", "set", &p.iface[0], "down"]);
    // Wait until our sockets are closed, then take the port.
    let taken = (0..50).find_map(|_| {
        std::thread::sleep(Duration::from_millis(50));
        in_ns(&ours, || UdpSocket::bind("0.0.0.0:51001").ok())
    });
    let taken = taken.expect("the engine let go of its port on link down");
    let sent = p.lab.transfer(&ours, &p.iface[0], &p.keys[1].public).1;
    p.lab.exec_ok(&ours, &["ip", "link", "set", &p.iface[0], "up"]);
    assert!(!p.lab.ping(&ours, "192.168.241.2", 1), "no tunnel while another socket holds the port");
    // Once the last handshake is 5 s old (REKEY_TIMEOUT) a ping starts a new one, which cannot
    // leave: it is not counted, as the kernel counts only what left.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(shook.elapsed()));
    assert!(!p.lab.ping(&ours, "192.168.241.2", 1));
    assert_eq!(p.lab.transfer(&ours, &p.iface[0], &p.keys[1].public).1, sent, "tx_bytes grew without a socket");
    drop(taken);
    let t = Instant::now();
    while !p.lab.ping(&ours, "192.168.241.2", 1) {
        assert!(t.elapsed() < Duration::from_secs(10), "the engine never bound the freed port");
    }
}

#[test]
fn listen_port_zero_moves_to_a_new_random_port() {
    // `wg set IFACE listen-port 0` on an up interface rebinds, as the kernel and wireguard-go do.
    let p = pair(Impl::Ours, Impl::WireguardGo, false);
    let (ours, theirs) = (&p.ns[0], &p.ns[1]);
    assert!(p.lab.ping(ours, "192.168.241.2", 1));
    p.lab.wg_set(ours, &p.iface[0], None, "listen-port 0");
    let port = p.lab.exec_ok(ours, &["wg", "show", &p.iface[0], "listen-port"]).trim().to_string();
    assert!(port != "0" && port != "51001", "still on port {port}");
    // The old socket closes once the receive threads wake (their poll timeout).
    let deadline = Instant::now() + Duration::from_secs(3);
    let sockets = loop {
        let s = p.lab.exec_ok(ours, &["ss", "-Huln"]);
        if !s.contains(":51001 ") || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(sockets.contains(&format!(":{port} ")) && !sockets.contains(":51001 "), "{sockets}");
    // The peer follows to the new port on our next authenticated packet.
    assert!(p.lab.ping(ours, "192.168.241.2", 1));
    let ep = p.lab.exec_ok(theirs, &["wg", "show", &p.iface[1], "endpoints"]);
    assert!(ep.contains(&format!("10.77.0.1:{port}")), "{ep}");
}

#[test]
fn endpoint_learned_from_handshake() {
    let p = pair(Impl::Ours, Impl::Ours, false);
    // Side 1 forgets side 0's endpoint: re-create the peer without one.
    p.lab.wg_set(&p.ns[1], &p.iface[1], None, &format!("peer {} remove", p.keys[0].public));
    p.lab.wg_set(&p.ns[1], &p.iface[1], None, &format!("peer {} allowed-ips 192.168.241.1/32", p.keys[0].public));
    assert!(!p.lab.ping(&p.ns[1], "192.168.241.1", 1), "no endpoint: cannot send first");
    assert!(p.lab.ping(&p.ns[0], "192.168.241.2", 1));
    let ep = p.lab.exec_ok(&p.ns[1], &["wg", "show", &p.iface[1], "endpoints"]);
    assert!(ep.contains("10.77.0.1:51001"), "{ep}");
    assert!(p.lab.ping(&p.ns[1], "192.168.241.1", 1));
}

#[test]
fn private_key_change_handshakes_immediately() {
    let p = pair(Impl::Ours, Impl::Ours, false);
    assert!(p.lab.ping(&p.ns[0], "192.168.241.2", 1));
    let k3 = genkey();
    p.lab.wg_set(&p.ns[0], &p.iface[0], Some(&k3.private), "");
    // Replace the peer in one `wg set`: remove the old key, add the new one.
    p.lab.wg_set(
        &p.ns[1],
        &p.iface[1],
        None,
        &format!(
            "peer {} remove peer {} endpoint 10.77.0.1:51001 allowed-ips 192.168.241.1/32,fd00::1/128",
            p.keys[0].public, k3.public
        ),
    );
    let out = p.lab.exec(&p.ns[0], &["ping", "-c", "1", "-W", "1", "192.168.241.2"]);
    assert!(out.status.success(), "first ping after a key change must pass at once");
}

/// The packets (their first `tcpdump -v` line) of a capture taken in `ns` on `dev` while `f` runs.
fn captured(lab: &Lab, ns: &str, dev: &str, filter: &str, f: impl FnOnce()) -> Vec<String> {
    let cap = format!("/tmp/{}-{dev}.pcap", lab.id);
    let mut dump = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "tcpdump", "--immediate-mode", "-i", dev, "-n", "-U", "-w", &cap, filter])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(800));
    f();
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM: tcpdump writes out what it holds
    let _ = std::process::Command::new("kill").arg(dump.id().to_string()).status();
    let _ = dump.wait();
    let seen = run(&["tcpdump", "-r", &cap, "-n", "-v"]);
    let _ = std::fs::remove_file(&cap);
    String::from_utf8_lossy(&seen.stdout).lines().filter(|l| l.contains(" IP (") || l.contains(" IP6 (")).map(String::from).collect()
}

/// As the kernel, `wg show transfer` counts only datagrams that left: with no route to the
/// endpoint every initiation fails to send, and nothing is counted as sent.
#[test]
fn a_send_that_fails_is_not_counted_as_sent() {
    let p = pair(Impl::Ours, Impl::Ours, false);
    let peer = &p.keys[1].public;
    p.lab.wg_set(&p.ns[0], &p.iface[0], None, &format!("peer {peer} endpoint 203.0.113.1:51820"));
    assert!(!p.lab.ping(&p.ns[0], "192.168.241.2", 2), "no route to that endpoint");
    assert_eq!(p.lab.transfer(&p.ns[0], &p.iface[0], peer), (0, 0));
    // Back to the reachable endpoint: the next initiation (a retry, REKEY_TIMEOUT after the
    // last) leaves and is counted.
    p.lab.wg_set(&p.ns[0], &p.iface[0], None, &format!("peer {peer} endpoint 10.77.0.2:{}", p.ports[1]));
    assert!(p.lab.exec(&p.ns[0], &["ping", "-c", "1", "-W", "10", "192.168.241.2"]).status.success());
    assert!(p.lab.transfer(&p.ns[0], &p.iface[0], peer).1 > 0);
}

/// wg_xmit's ICMP errors: a destination no peer takes fails at once, for ping and for TCP,
/// instead of waiting out a timeout (wireguard-go and boringtun send no error).
#[test]
fn a_destination_no_peer_takes_fails_at_once_as_with_the_kernel() {
    let p = pair(Impl::Ours, Impl::Ours, false);
    assert!(p.lab.ping(&p.ns[0], "192.168.241.2", 1), "tunnel up");
    for (dst, says) in [("192.168.241.99", "Destination Host Unreachable"), ("fd00::99", "Address unreachable")] {
        let out = p.lab.exec(&p.ns[0], &["ping", "-c", "1", "-W", "5", dst]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("From {dst} icmp_seq=1")) && text.contains(says), "{dst}: {text}");
        let to: std::net::SocketAddr = format!("{}:80", if dst.contains(':') { format!("[{dst}]") } else { dst.into() }).parse().unwrap();
        let err = in_ns(&p.ns[0], move || TcpStream::connect_timeout(&to, Duration::from_secs(20)).expect_err("connected to nobody"));
        assert_eq!(err.kind(), std::io::ErrorKind::HostUnreachable, "TCP to {dst}: {err}");
    }
    assert!(p.lab.ping(&p.ns[0], "192.168.241.2", 1), "the peer still answers");
}

#[test]
fn ecn_is_copied_to_the_outer_header_and_congestion_marks_come_back_in_as_the_kernel_does() {
    let p = pair(Impl::Ours, Impl::Ours, false);
    assert!(p.lab.ping(&p.ns[0], "192.168.241.2", 1), "tunnel up");
    let ping = |tos: &str| {
        let out = p.lab.exec(&p.ns[0], &["ping", "-c", "3", "-i", "0.2", "-Q", tos, "192.168.241.2"]);
        assert!(out.status.success(), "ping -Q {tos}");
    };
    // Out (RFC 6040, the kernel's ip_tunnel_ecn_encap): the outer ECN field copies the inner,
    // CE leaving as ECT(0); the DSCP is not copied.
    for (tos, outer) in [("0xb8", "tos 0x0,"), ("0x02", "tos 0x2,"), ("0xb9", "tos 0x1,"), ("0x03", "tos 0x2,")] {
        let seen = captured(&p.lab, &p.ns[0], &p.veth.0, "udp and src port 51001 and greater 100", || ping(tos));
        assert!(seen.len() >= 3 && seen.iter().all(|l| l.contains(outer)), "inner {tos}: {seen:?}");
    }
    // In: the underlay marks congestion (CE) on every datagram b receives.
    let rule = "udp dport 51002 ip ecn set ce";
    p.lab.exec_ok(&p.ns[1], &["nft", "add", "table", "ip", "wgtest"]);
    p.lab.exec_ok(&p.ns[1], &["nft", "add", "chain", "ip", "wgtest", "pre", "{ type filter hook prerouting priority -300; }"]);
    p.lab.exec_ok(&p.ns[1], &["nft", "add", "rule", "ip", "wgtest", "pre", rule]);
    // An ECN-capable inner packet arrives marked CE; one that is not stays as it was.
    for (tos, inner) in [("0x02", "tos 0x3,"), ("0xb9", "tos 0xbb,"), ("0xb8", "tos 0xb8,")] {
        let seen = captured(&p.lab, &p.ns[1], &p.iface[1], "icmp[icmptype] == icmp-echo", || ping(tos));
        assert!(seen.len() >= 3 && seen.iter().all(|l| l.contains(inner)), "inner {tos}: {seen:?}");
    }
}

/// As the kernel (HANDSHAKE_DSCP): our initiations and responses leave as AF41 (0x88), data
/// and keepalives as 0, over IPv4 and IPv6; against wireguard-go, ours initiating and answering.
#[test]
fn handshakes_leave_with_the_kernels_dscp_and_data_without() {
    for outer6 in [false, true] {
        let p = pair(Impl::Ours, Impl::WireguardGo, outer6);
        // tcpdump prints an IPv6 traffic class only when it is not 0
        let field = if outer6 { "class 0x88" } else { "tos 0x88" };
        let zero = |l: &String| if outer6 { !l.contains("class") } else { l.contains("tos 0x0,") };
        // the UDP payload's first byte is the message type: 1 initiation, 2 response, 4 data
        let kind = |t: u8| if outer6 { format!("udp and src port 51001 and ip6[48] == {t}") } else { format!("udp and src port 51001 and udp[8] == {t}") };
        let ours_first = || assert!(p.lab.ping(&p.ns[0], "192.168.241.2", 1), "tunnel up");
        let seen = captured(&p.lab, &p.ns[0], &p.veth.0, &kind(1), ours_first);
        assert!(!seen.is_empty() && seen.iter().all(|l| l.contains(field)), "initiation, outer6 {outer6}: {seen:?}");
        let seen = captured(&p.lab, &p.ns[0], &p.veth.0, &kind(4), ours_first);
        assert!(!seen.is_empty() && seen.iter().all(zero), "data, outer6 {outer6}: {seen:?}");
        // wireguard-go starts over with a new key pair for us: ours answers its initiation
        let k = genkey();
        p.lab.wg_set(&p.ns[0], &p.iface[0], Some(&k.private), "");
        p.lab.wg_set(&p.ns[1], &p.iface[1], None, &format!("peer {} remove", p.keys[0].public));
        let ep = if outer6 { format!("[fd4d::1]:{}", p.ports[0]) } else { format!("10.77.0.1:{}", p.ports[0]) };
        p.lab.wg_set(&p.ns[1], &p.iface[1], None, &format!("peer {} allowed-ips 192.168.241.1/32 endpoint {ep}", k.public));
        let theirs_first = || assert!(p.lab.ping(&p.ns[1], "192.168.241.1", 1), "tunnel up again");
        let seen = captured(&p.lab, &p.ns[0], &p.veth.0, &kind(2), theirs_first);
        assert!(!seen.is_empty() && seen.iter().all(|l| l.contains(field)), "response, outer6 {outer6}: {seen:?}");
    }
}

#[test]
fn low_order_public_keys_never_send() {
    let mut lab = Lab::new();
    let n1 = lab.ns("a");
    let n2 = lab.ns("b");
    let (_, vb) = lab.link(&n1, &n2, 77);
    let i1 = lab.engine(&n1, Impl::Ours, "a");
    let k = genkey();
    lab.wg_set(&n1, &i1, Some(&k.private), "listen-port 51001");
    let low = [
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA=",
        "X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc=",
        "7P///////////////////////////////////////38=",
        "7f///////////////////////////////////////38=",
        "7v///////////////////////////////////////38=",
    ];
    let peers: Vec<String> =
        low.iter().map(|k| format!("peer {k} persistent-keepalive 1 endpoint 10.77.0.2:51002")).collect();
    lab.wg_set(&n1, &i1, None, &peers.join(" "));
    let seen = captured(&lab, &n2, &vb, "udp", || {
        lab.up(&n1, &i1, &["192.168.241.1/24"]);
        std::thread::sleep(Duration::from_secs(3));
    });
    assert_eq!(seen.len(), 0, "a low-order peer emitted packets: {seen:?}");
    for line in lab.exec_ok(&n1, &["wg", "show", &i1, "transfer"]).lines() {
        assert!(line.ends_with("\t0\t0"), "{line}");
    }
}

#[test]
fn persistent_keepalive_on_set_sends_at_once() {
    let p = pair(Impl::Ours, Impl::Ours, false);
    p.lab.wg_set(&p.ns[0], &p.iface[0], None, &format!("peer {} persistent-keepalive 25", p.keys[1].public));
    std::thread::sleep(Duration::from_millis(500));
    let (rx, tx) = p.lab.transfer(&p.ns[0], &p.iface[0], &p.keys[1].public);
    assert!(tx >= 148 && rx >= 92, "handshake on keepalive set: rx={rx} tx={tx}");
}

#[test]
fn a_keepalive_set_right_after_link_up_finds_the_socket_bound() {
    // The node agent sets the link up and then kicks a new peer (keepalive on, then off) in
    // the same breath; the kernel binds at link-up, so the kick must start a handshake at once
    // rather than be lost to an engine that had not noticed the link yet.
    let p = pair(Impl::Ours, Impl::Ours, false);
    let (ns, iface, peer) = (&p.ns[0], &p.iface[0], &p.keys[1].public);
    ok(&["ip", "-n", ns, "link", "set", iface, "down"]);
    std::thread::sleep(Duration::from_millis(400));
    let out = sh(&format!(
        "ip -n {ns} link set {iface} up && ip netns exec {ns} wg set {iface} peer {peer} persistent-keepalive 1 \
         && ip netns exec {ns} wg set {iface} peer {peer} persistent-keepalive 0"
    ));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(1000));
    let hs = p.lab.exec_ok(ns, &["wg", "show", iface, "latest-handshakes"]);
    let t: u64 = hs.split_whitespace().nth(1).and_then(|t| t.parse().ok()).unwrap_or(0);
    assert!(t > 0, "no handshake after the kick: {hs}");
}

#[test]
fn a_random_port_is_reported_right_after_link_up() {
    // The kernel binds at link-up, so `wg show` straight after `ip link set up` names the
    // random port it chose; an engine that waited for its next link check would say 0.
    let p = pair(Impl::Ours, Impl::Ours, false);
    let (ns, iface) = (&p.ns[0], &p.iface[0]);
    ok(&["ip", "-n", ns, "link", "set", iface, "down"]);
    p.lab.exec_ok(ns, &["wg", "set", iface, "listen-port", "0"]);
    std::thread::sleep(Duration::from_millis(400));
    let out = sh(&format!("ip -n {ns} link set {iface} up && ip netns exec {ns} wg show {iface} listen-port"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let port: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    assert_ne!(port, 0, "no port reported right after link-up");
    let bound = p.lab.exec_ok(ns, &["ss", "-Huln", &format!("sport = :{port}")]);
    assert!(!bound.trim().is_empty(), "port {port} reported but nothing listens on it");
}

#[test]
fn a_link_smaller_than_the_tunnel_needs_fragments_the_outer_packets_as_the_kernel_does() {
    // Underlay MTU 1400 (a cloud or overlay network below 1500) under the default tunnel MTU
    // of 1420: the kernel's WireGuard sends with df=0 and its outer packets are fragmented; an
    // engine that refused them (EMSGSIZE) would drop every full-size packet, silently.
    for outer6 in [false, true] {
        let p = pair(Impl::Ours, Impl::Ours, outer6);
        for (ns, dev) in [(&p.ns[0], &p.veth.0), (&p.ns[1], &p.veth.1)] {
            ok(&["ip", "-n", ns, "link", "set", dev, "mtu", "1400"]);
        }
        // a full-size inner packet, don't-fragment inside: only the outer one is cut
        let out = p.lab.exec(&p.ns[0], &["ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1392", "192.168.241.2"]);
        assert!(out.status.success(), "outer6={outer6}: {}", String::from_utf8_lossy(&out.stdout));
        // bulk TCP: GSO sends of segments the link cannot carry whole fall back to single sends
        tcp_transfer(&p, 0, "192.168.241.2", 4 << 20);
        tcp_transfer(&p, 1, "fd00::1", 4 << 20);
    }
}

#[test]
fn stealth_no_reply_to_junk_or_bad_mac1() {
    let p = pair(Impl::Ours, Impl::Ours, false);
    let seen = captured(&p.lab, &p.ns[0], &p.veth.0, "udp and src port 51002", || {
        in_ns(&p.ns[0], || {
            let s = UdpSocket::bind("10.77.0.1:40000").unwrap();
            let mut junk = [0u8; 148];
            for (i, b) in junk.iter_mut().enumerate() {
                *b = (i * 7 + 3) as u8;
            }
            for len in [1usize, 32, 64, 92, 100, 148] {
                s.send_to(&junk[..len], "10.77.0.2:51002").unwrap();
            }
            // A well-formed initiation header with a wrong mac1.
            let mut init = junk;
            init[..4].copy_from_slice(&[1, 0, 0, 0]);
            for _ in 0..5 {
                s.send_to(&init, "10.77.0.2:51002").unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(200));
    });
    assert_eq!(seen.len(), 0, "engine answered unauthenticated input: {seen:?}");
    let (rx, _) = p.lab.transfer(&p.ns[1], &p.iface[1], &p.keys[0].public);
    assert_eq!(rx, 0);
}

#[test]
fn wg_tool_show_set_setconf_syncconf() {
    let p = pair(Impl::Ours, Impl::Ours, false);
    let (ns, i) = (&p.ns[0], &p.iface[0]);
    let show = p.lab.exec_ok(ns, &["wg", "show", i]);
    assert!(
        show.contains(&format!("public key: {}", p.keys[0].public)) && show.contains("listening port: 51001"),
        "{show}"
    );
    // dump: interface line then one line per peer, tab-separated.
    let all = p.lab.exec_ok(ns, &["wg", "show", "all", "dump"]);
    let line = all.lines().find(|l| l.starts_with(i.as_str())).unwrap();
    let f: Vec<&str> = line.split('\t').collect();
    assert_eq!(&f[1..5], &[p.keys[0].private.as_str(), p.keys[0].public.as_str(), "51001", "off"]);
    // set: add a peer with PSK and keepalive, change and remove allowed IPs, remove it.
    let k = genkey();
    let psk = ok(&["wg", "genpsk"]).trim().to_string();
    let out = sh(&format!("ip netns exec {ns} wg set {i} peer {} preshared-key <(echo {psk}) persistent-keepalive 7 allowed-ips 10.5.0.0/16,fd05::/64 endpoint [fd4d::9]:1234", k.public));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = p.lab.dump(ns, i);
    let row = d.iter().find(|r| r[0] == k.public).expect("new peer");
    assert_eq!(row[1], psk);
    assert_eq!(row[2], "[fd4d::9]:1234");
    assert_eq!(row[3], "10.5.0.0/16,fd05::/64");
    assert_eq!(row[7], "7");
    p.lab.wg_set(ns, i, None, &format!("peer {} allowed-ips 10.6.0.0/24 persistent-keepalive off", k.public));
    let d = p.lab.dump(ns, i);
    let row = d.iter().find(|r| r[0] == k.public).unwrap();
    assert_eq!((row[3].as_str(), row[7].as_str()), ("10.6.0.0/24", "off"), "allowed-ips replaced");
    p.lab.wg_set(ns, i, None, &format!("peer {} remove", k.public));
    assert!(p.lab.dump(ns, i).iter().all(|r| r[0] != k.public));
    // A bad key: wg refuses it with its own message and nothing changes.
    let before = p.lab.exec_ok(ns, &["wg", "showconf", i]);
    let out = p.lab.exec(ns, &["wg", "set", i, "peer", "not-a-key", "allowed-ips", "10.9.0.0/16"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Key is not the correct length or format"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.lab.exec_ok(ns, &["wg", "showconf", i]), before);
    // setconf replaces everything; syncconf converges to a file; showconf round-trips.
    let dir = std::env::temp_dir().join(format!("wgconf{}", p.lab.id));
    std::fs::create_dir_all(&dir).unwrap();
    let k2 = genkey();
    let conf = format!("[Interface]\nPrivateKey = {}\nListenPort = 51001\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.7.0.0/24\nEndpoint = 10.77.0.2:51002\n", p.keys[0].private, k2.public);
    let file = dir.join("a.conf");
    std::fs::write(&file, &conf).unwrap();
    p.lab.exec_ok(ns, &["wg", "setconf", i, file.to_str().unwrap()]);
    let d = p.lab.dump(ns, i);
    assert_eq!(d.len(), 2, "setconf replaced the peers: {d:?}");
    assert_eq!(d[1][0], k2.public);
    let conf2 = format!(
        "{conf}\n[Peer]\nPublicKey = {}\nAllowedIPs = 192.168.241.2/32\nEndpoint = 10.77.0.2:51002\n",
        p.keys[1].public
    );
    std::fs::write(&file, &conf2).unwrap();
    p.lab.exec_ok(ns, &["wg", "syncconf", i, file.to_str().unwrap()]);
    assert_eq!(p.lab.dump(ns, i).len(), 3);
    let shown = p.lab.exec_ok(ns, &["wg", "showconf", i]);
    let file2 = dir.join("b.conf");
    std::fs::write(&file2, &shown).unwrap();
    p.lab.exec_ok(ns, &["wg", "setconf", i, file2.to_str().unwrap()]);
    assert_eq!(p.lab.exec_ok(ns, &["wg", "showconf", i]), shown, "showconf → setconf round-trips");
    assert!(p.lab.ping(ns, "192.168.241.2", 1), "the synced peer works");
    let _ = std::fs::remove_dir_all(&dir);
    // fwmark reaches the outer sockets (what keeps wg-quick's policy routing loop-free).
    p.lab.exec_ok(ns, &["wg", "set", i, "fwmark", "0x1234"]);
    assert_eq!(p.lab.exec_ok(ns, &["wg", "show", i, "fwmark"]).trim(), "0x1234");
    let socks = p.lab.exec_ok(ns, &["ss", "-uaen"]);
    let ours: Vec<&str> = socks.lines().filter(|l| l.contains(":51001")).collect();
    assert_eq!(ours.len(), 2, "one IPv4 and one IPv6 socket: {socks}");
    assert!(ours.iter().all(|l| l.contains("fwmark:0x1234")), "{socks}");
    // Private key semantics: all-zero clears it.
    let out = sh(&format!("ip netns exec {ns} wg set {i} private-key /dev/null"));
    assert!(out.status.success());
    assert_eq!(p.lab.exec_ok(ns, &["wg", "show", i, "private-key"]).trim(), "(none)");
}

#[test]
fn allowed_ips_are_listed_in_the_order_set_as_wireguard_go_lists_them() {
    let p = pair(Impl::Ours, Impl::WireguardGo, false);
    let k = genkey();
    let shown: Vec<String> = (0..2)
        .map(|n| {
            let (ns, i) = (&p.ns[n], &p.iface[n]);
            p.lab.wg_set(ns, i, None, &format!("peer {} allowed-ips 10.2.0.0/16,fd00::/64,10.1.0.0/16,192.168.5.0/24", k.public));
            // added without replacing (UAPI; this wg has no +prefix syntax): one already there, one new
            let hex: String = {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD.decode(&k.public).unwrap();
                raw.iter().map(|b| format!("{b:02x}")).collect()
            };
            let mut s = std::os::unix::net::UnixStream::connect(format!("/var/run/wireguard/{i}.sock")).unwrap();
            write!(s, "set=1\npublic_key={hex}\nallowed_ip=10.2.0.0/16\nallowed_ip=fd09::/48\n\n").unwrap();
            let mut resp = [0u8; 64];
            let n = s.read(&mut resp).unwrap();
            assert_eq!(&resp[..n], b"errno=0\n\n");
            let out = p.lab.exec_ok(ns, &["wg", "show", i, "allowed-ips"]);
            out.lines().find(|l| l.starts_with(&k.public)).unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(shown[0], shown[1], "ours, then wireguard-go");
    assert_eq!(shown[0], format!("{}\tfd00::/64 10.1.0.0/16 192.168.5.0/24 10.2.0.0/16 fd09::/48", k.public));
}

#[test]
fn wg_quick_up_and_down() {
    let mut lab = Lab::new();
    let ns = lab.ns("q");
    let name = format!("wq{}", lab.id);
    let dir = std::env::temp_dir().join(format!("wgq{}", lab.id));
    std::fs::create_dir_all(&dir).unwrap();
    let k = genkey();
    let peer = genkey();
    let conf = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.44.0.1/24, fd44::1/64\nListenPort = 51820\nMTU = 1380\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.44.1.0/24\nEndpoint = 127.0.0.1:51821\nPersistentKeepalive = 25\n",
        k.private, peer.public
    );
    let file = dir.join(format!("{name}.conf"));
    std::fs::write(&file, conf).unwrap();
    lab.ifaces.push((ns.clone(), name.clone()));
    let up = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "wg-quick", "up", file.to_str().unwrap()])
        .env("WG_QUICK_USERSPACE_IMPLEMENTATION", OURS)
        .output()
        .unwrap();
    assert!(up.status.success(), "wg-quick up: {}", String::from_utf8_lossy(&up.stderr));
    let show = lab.exec_ok(&ns, &["wg", "show", &name]);
    assert!(
        show.contains("listening port: 51820")
            && show.contains(&peer.public)
            && show.contains("persistent keepalive: every 25 seconds"),
        "{show}"
    );
    let link = lab.exec_ok(&ns, &["ip", "link", "show", &name]);
    assert!(link.contains("mtu 1380") && link.contains("UP"), "{link}");
    let route = lab.exec_ok(&ns, &["ip", "route", "show", "10.44.1.0/24"]);
    assert!(route.contains(&name), "{route}");
    let down = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "wg-quick", "down", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(down.status.success(), "wg-quick down: {}", String::from_utf8_lossy(&down.stderr));
    // The engine exits on its own once its interface is gone, removing its socket.
    let sock = format!("/var/run/wireguard/{name}.sock");
    let t = Instant::now();
    while std::path::Path::new(&sock).exists() && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!std::path::Path::new(&sock).exists(), "engine did not exit after wg-quick down");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn large_configuration_through_uapi() {
    let mut lab = Lab::new();
    let ns = lab.ns("l");
    let i = lab.engine(&ns, Impl::Ours, "l");
    let k = genkey();
    // netns.sh: one peer with 255×256×2 = 130,560 allowed IPs, plus 2,000 peers with 2 each.
    let mut conf =
        format!("[Interface]\nPrivateKey = {}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = ", k.private, genkey().public);
    let mut ips = Vec::with_capacity(130_560);
    for a in 0..255u32 {
        for b in 0..256u32 {
            ips.push(format!("10.{a}.{b}.0/24"));
            ips.push(format!("fd00:{a:x}:{b:x}::/48"));
        }
    }
    conf += &ips.join(",");
    conf += "\n";
    let mut rng = 1u64;
    for n in 0..2000u32 {
        let mut key = [0u8; 32];
        for b in key.iter_mut() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (rng >> 56) as u8;
        }
        use base64::Engine as _;
        let pk = base64::engine::general_purpose::STANDARD.encode(key);
        conf +=
            &format!("\n[Peer]\nPublicKey = {pk}\nAllowedIPs = 172.16.{}.{}/32, fd01::{n:x}/128\n", n / 256, n % 256);
    }
    let file = std::env::temp_dir().join(format!("large{}.conf", lab.id));
    std::fs::write(&file, conf).unwrap();
    let t = Instant::now();
    lab.exec_ok(&ns, &["wg", "setconf", &i, file.to_str().unwrap()]);
    let took = t.elapsed();
    let _ = std::fs::remove_file(&file);
    let shown = lab.exec_ok(&ns, &["wg", "show", &i, "allowed-ips"]);
    let peers = shown.lines().count();
    // Each line is "<public key>\t<prefix> <prefix> ...".
    let total: usize = shown.lines().map(|l| l.split(['\t', ' ']).skip(1).filter(|s| s.contains('/')).count()).sum();
    assert_eq!(peers, 2001);
    assert_eq!(total, 130_560 + 4_000);
    eprintln!("large configuration: 2001 peers, {total} allowed IPs set in {took:?}");
}

#[test]
fn allowed_ip_removal_of_one_prefix_over_raw_uapi() {
    let mut lab = Lab::new();
    let ns = lab.ns("r");
    let i = lab.engine(&ns, Impl::Ours, "r");
    let peer = genkey();
    let ips: Vec<String> = (1..=20).map(|n| format!("10.0.0.{n}/32")).collect();
    lab.wg_set(&ns, &i, None, &format!("peer {} allowed-ips {}", peer.public, ips.join(",")));
    // wg-tools of this Debian release has no `-prefix` syntax yet: speak UAPI directly.
    let hex = {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD.decode(&peer.public).unwrap();
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let mut s = std::os::unix::net::UnixStream::connect(format!("/var/run/wireguard/{i}.sock")).unwrap();
    // Replies end with a blank line; they may arrive in several reads.
    fn reply(s: &mut std::os::unix::net::UnixStream) -> String {
        let mut resp = String::new();
        let mut chunk = [0u8; 4096];
        while !resp.ends_with("\n\n") {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed mid-reply: {resp:?}");
            resp.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        }
        resp
    }
    write!(s, "set=1\npublic_key={hex}\nallowed_ip=-10.0.0.3/32\nallowed_ip=-10.0.0.7/32\nallowed_ip=-10.9.9.9/32\n\n")
        .unwrap();
    assert_eq!(reply(&mut s), "errno=0\n\n");
    // A second operation on the same connection works too.
    write!(s, "get=1\n\n").unwrap();
    let resp = reply(&mut s);
    assert!(resp.ends_with("errno=0\n\n"));
    let left: Vec<&str> = resp.lines().filter_map(|l| l.strip_prefix("allowed_ip=")).collect();
    assert_eq!(left.len(), 18);
    assert!(!left.contains(&"10.0.0.3/32") && !left.contains(&"10.0.0.7/32"));
    // An unknown key is refused with -EINVAL and nothing changes.
    write!(s, "set=1\npublic_key={hex}\nallowed_ip=-10.0.0.4/32\nbogus=1\n\n").unwrap();
    assert_eq!(reply(&mut s), "errno=-22\n\n");
    let ips_now = lab.exec_ok(&ns, &["wg", "show", &i, "allowed-ips"]);
    assert!(ips_now.contains("10.0.0.4/32"));
    // A probe that connects and sends nothing is harmless.
    drop(std::os::unix::net::UnixStream::connect(format!("/var/run/wireguard/{i}.sock")).unwrap());
    lab.exec_ok(&ns, &["wg", "show", &i]);
    // An endless line is cut off at 4 KiB with -EIO (as wireguard-go's line limit), not buffered.
    let mut s = std::os::unix::net::UnixStream::connect(format!("/var/run/wireguard/{i}.sock")).unwrap();
    write!(s, "set=1\npublic_key={}\n\n", "a".repeat(10_000)).unwrap();
    assert_eq!(reply(&mut s), "errno=-5\n\n");
    // Closed, with the rest unread (so a reset rather than an end of stream).
    assert!(!matches!(s.read(&mut [0u8; 16]), Ok(n) if n > 0), "the connection is closed");
    assert!(lab.exec_ok(&ns, &["wg", "show", &i, "allowed-ips"]).contains("10.0.0.4/32"));
}

#[test]
fn clear_errors_and_exit_codes() {
    let mut lab = Lab::new();
    let ns = lab.ns("e");
    let i = lab.engine(&ns, Impl::Ours, "e");
    // The same interface twice: refused, non-zero.
    let out = lab.exec(&ns, &[OURS, &i]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already"), "{}", String::from_utf8_lossy(&out.stderr));
    // A hung engine of the name (its accept queue full): refused too, not waited on for good.
    let hung_name = format!("wgh{}", lab.id);
    let path = format!("/var/run/wireguard/{hung_name}.sock");
    let _ = std::fs::remove_file(&path);
    let hung = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    hung.bind(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
    hung.listen(0).unwrap();
    let mut queued = Vec::new();
    loop {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        if s.connect(&socket2::SockAddr::unix(&path).unwrap()).is_err() {
            break;
        }
        queued.push(s);
    }
    // in the foreground: a daemon stuck on the socket would outlive a failed test
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, OURS, "-f", &hung_name])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        match child.try_wait().unwrap() {
            Some(s) => break Some(s),
            None if t.elapsed() > Duration::from_secs(30) => break None,
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = child.kill();
    let _ = std::fs::remove_file(&path);
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.is_some_and(|s| !s.success()) && err.contains("already"), "{status:?}: {err}");
    let out = run(&[OURS, "bad/name"]);
    assert_eq!(out.status.code(), Some(2));
    // Without CAP_NET_ADMIN: a clear message, non-zero.
    let out = run(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", OURS, "-f", "wgnoperm0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[OURS, "--help"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("--foreground"));
    // Port in use: `wg set` reports the error and the old port stays.
    lab.up(&ns, &i, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let k = genkey();
    lab.wg_set(&ns, &i, Some(&k.private), "listen-port 51010");
    let blocker = in_ns(&ns, || UdpSocket::bind("0.0.0.0:51011").unwrap());
    let out = lab.exec(&ns, &["wg", "set", &i, "listen-port", "51011"]);
    assert!(!out.status.success(), "binding a used port must fail");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Address already in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lab.exec_ok(&ns, &["wg", "show", &i, "listen-port"]).contains("51010"));
    drop(blocker);
}

/// A deterministic byte stream and its running digest (FNV-1a over 64-bit words).
fn stream_digest(len: usize, mut sink: impl FnMut(&[u8])) -> (usize, u64) {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut chunk = vec![0u8; 1 << 16];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        for w in chunk[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        sink(&chunk[..n]);
        for b in &chunk[..n] {
            h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
        }
        sent += n;
    }
    (sent, h)
}

fn big_transfer(p: &Pair, from: usize, to_addr: &'static str, len: usize) {
    let server_ns = p.ns[1 - from].clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        in_ns(&server_ns, move || {
            let l = TcpListener::bind((to_addr, 5202)).expect("listen");
            tx.send(()).unwrap();
            let (mut s, _) = l.accept().expect("accept");
            let mut h: u64 = 0xcbf29ce484222325;
            let mut total = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = s.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                for b in &buf[..n] {
                    h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
                }
                total += n;
            }
            (total, h)
        })
    });
    rx.recv().unwrap();
    let sent = in_ns(&p.ns[from], move || {
        let mut s = TcpStream::connect((to_addr, 5202)).expect("connect");
        stream_digest(len, |c| s.write_all(c).expect("write"))
    });
    assert_eq!(server.join().unwrap(), sent, "length and digest must match end to end");
}

#[test]
fn parallel_crypto_keeps_bytes_and_order() {
    // Sealing and opening spread over two threads: a checked transfer both ways.
    let p = pair_env(Impl::Ours, Impl::Ours, false, &[("WGMESH_CRYPTO_THREADS", "2")]);
    assert!(p.lab.ping(&p.ns[0], "192.168.241.2", 1));
    big_transfer(&p, 0, "192.168.241.2", 64 << 20);
    big_transfer(&p, 1, "192.168.241.1", 64 << 20);
}

#[test]
fn hundreds_of_megabytes_checked_across_ours_and_wireguard_go() {
    let p = pair(Impl::Ours, Impl::WireguardGo, false);
    assert!(p.lab.ping(&p.ns[0], "192.168.241.2", 1));
    big_transfer(&p, 0, "192.168.241.2", 256 << 20);
    big_transfer(&p, 1, "192.168.241.1", 256 << 20);
}
