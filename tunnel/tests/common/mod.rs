//! An in-memory network for the sans-IO core: N devices, a wire, and a virtual clock.
#![allow(dead_code)]

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use wgmesh_tunnel::{Clock, Device, Outcome, Output, PrivateKey, PublicKey};

pub type Dev = Device<ChaCha8Rng>;

#[derive(Default)]
pub struct Collect {
    pub sent: Vec<(SocketAddr, Vec<u8>)>,
    pub delivered: Vec<Vec<u8>>,
    /// Indexes into `sent` of the datagrams sent as replies (from the request's local address).
    pub replies: Vec<usize>,
    /// Each remote whose learned source was to be forgotten, with `sent.len()` at that moment.
    pub forgot: Vec<(SocketAddr, usize)>,
}

impl Output for Collect {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.sent.push((to, datagram.to_vec()));
    }
    fn reply(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.replies.push(self.sent.len());
        self.send(to, datagram);
    }
    fn forget_source(&mut self, to: SocketAddr) {
        self.forgot.push((to, self.sent.len()));
    }
    fn deliver(&mut self, packet: &[u8]) {
        self.delivered.push(packet.to_vec());
    }
}

/// One datagram seen on the wire.
#[derive(Clone, Debug)]
pub struct Frame {
    pub t: Duration,
    pub from: usize,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.bytes[0]
    }
}

pub struct Net {
    pub devs: Vec<Dev>,
    pub keys: Vec<PublicKey>,
    pub addrs: Vec<SocketAddr>,
    pub clock: Clock,
    pub wire: VecDeque<Frame>,
    /// Every datagram ever sent, in order.
    pub log: Vec<Frame>,
    /// Inner packets delivered to each device's TUN.
    pub delivered: Vec<Vec<Vec<u8>>>,
    /// Outcomes of every datagram handled, per receiving device.
    pub outcomes: Vec<Vec<Outcome>>,
    /// (device, remote, index in `log` of the next frame that device sent) of every forgotten source.
    pub forgot: Vec<(usize, SocketAddr, usize)>,
    /// Datagrams for which this returns false are lost.
    pub link: Box<dyn FnMut(&Frame) -> bool>,
}

pub fn inner_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 241, i as u8 + 1)
}

pub fn inner_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16 + 1)
}

/// An IPv4 packet of `total` bytes (ICMP-like body), as a ping of `-s 56` is 84 bytes.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, total: usize) -> Vec<u8> {
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    p[6] = 58;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

impl Net {
    /// `n` devices, all up, each a peer of every other with its /32 and /128 and endpoint.
    pub fn new(n: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let privs: Vec<PrivateKey> = (0..n).map(|_| PrivateKey::generate(&mut rng)).collect();
        let keys: Vec<PublicKey> = privs.iter().map(|k| k.public_key()).collect();
        let addrs: Vec<SocketAddr> =
            (0..n).map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 51820)).collect();
        let clock = Clock { mono: secs(1000), wall: secs(1_700_000_000) };
        let mut devs = Vec::new();
        let mut sink = Collect::default();
        for (i, k) in privs.into_iter().enumerate() {
            let mut d = Dev::new(ChaCha8Rng::seed_from_u64(100 + i as u64));
            d.set_private_key(Some(k), clock, &mut sink);
            for j in (0..n).filter(|j| *j != i) {
                let id = d.add_peer(keys[j]).expect("distinct keys");
                d.set_endpoint(id, addrs[j]);
                d.allowed_ips.insert(IpAddr::V4(inner_v4(j)), 32, id);
                d.allowed_ips.insert(IpAddr::V6(inner_v6(j)), 128, id);
            }
            d.set_up(true, clock, &mut sink);
            devs.push(d);
        }
        assert!(sink.sent.is_empty());
        Net {
            devs,
            keys,
            addrs,
            clock,
            wire: VecDeque::new(),
            log: Vec::new(),
            delivered: vec![Vec::new(); n],
            outcomes: vec![Vec::new(); n],
            forgot: Vec::new(),
            link: Box::new(|_| true),
        }
    }

    pub fn peer(&self, on: usize, of: usize) -> usize {
        self.devs[on].peer_id(&self.keys[of]).expect("peer exists")
    }

    /// Puts what a direct call on device `from` emitted on the wire.
    pub fn absorb_from(&mut self, from: usize, c: Collect) {
        self.absorb(from, c)
    }

    fn absorb(&mut self, from: usize, c: Collect) {
        let base = self.log.len();
        self.forgot.extend(c.forgot.iter().map(|&(to, k)| (from, to, base + k)));
        for (to, bytes) in c.sent {
            let f = Frame { t: self.clock.mono, from, to, bytes };
            self.log.push(f.clone());
            self.wire.push_back(f);
        }
        self.delivered[from].extend(c.delivered);
    }

    /// Device `i` reads `packet` from its TUN.
    pub fn tun(&mut self, i: usize, packet: &[u8]) -> Outcome {
        let mut c = Collect::default();
        let o = self.devs[i].handle_tun(packet, self.clock, &mut c);
        self.absorb(i, c);
        o
    }

    /// A ping-sized packet from device `i` to device `j`.
    pub fn ping(&mut self, i: usize, j: usize) -> Outcome {
        self.tun(i, &ipv4(inner_v4(i), inner_v4(j), 84))
    }

    /// Hands `bytes` to device `to` as if it came from `from`.
    pub fn inject(&mut self, to: usize, from: SocketAddr, bytes: &[u8]) -> (Outcome, Collect) {
        let mut c = Collect::default();
        let mut buf = bytes.to_vec();
        let o = self.devs[to].handle_udp(from, &mut buf, self.clock, &mut c);
        (o, c)
    }

    /// Delivers everything on the wire (and whatever that causes) at the current time.
    pub fn flush(&mut self) {
        while let Some(f) = self.wire.pop_front() {
            if !(self.link)(&f) {
                continue;
            }
            let Some(to) = self.addrs.iter().position(|a| *a == f.to) else {
                continue;
            };
            let mut c = Collect::default();
            let mut buf = f.bytes.clone();
            let o = self.devs[to].handle_udp(self.addrs[f.from], &mut buf, self.clock, &mut c);
            self.outcomes[to].push(o);
            self.absorb(to, c);
        }
    }

    /// Advances virtual time by `d`, firing every timer at its deadline and flushing the wire.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.clock.mono + d;
        self.flush();
        loop {
            let next = self.devs.iter().filter_map(|d| d.next_deadline()).min();
            match next {
                Some(t) if t <= end => {
                    let step = t.saturating_sub(self.clock.mono);
                    self.clock.advance(step);
                    for i in 0..self.devs.len() {
                        let mut c = Collect::default();
                        self.devs[i].poll(self.clock, &mut c);
                        self.absorb(i, c);
                    }
                    self.flush();
                }
                _ => break,
            }
        }
        let rest = end.saturating_sub(self.clock.mono);
        self.clock.advance(rest);
    }

    pub fn frames_since(&self, n: usize) -> &[Frame] {
        &self.log[n..]
    }

    pub fn transfer(&self, on: usize, of: usize) -> (u64, u64) {
        let p = self.devs[on].peer(self.peer(on, of)).expect("peer");
        (p.rx_bytes, p.tx_bytes)
    }
}

/// Observable state of a device: what any packet could change.
pub fn fingerprint(d: &Dev) -> String {
    let mut s = format!("idx={} ", d.live_indices());
    for id in d.peer_ids() {
        let p = d.peer(id).unwrap();
        let kp = |k: &Option<Box<wgmesh_tunnel::keypair::Keypair>>| k.as_ref().map(|k| (k.local_index, k.send_counter));
        s += &format!(
            "[{:?} {:?} {:?} rx={} tx={} hs={:?} {:?} {:?} {:?} staged={} t={:?}]",
            p.public_key,
            p.endpoint,
            p.last_handshake,
            p.rx_bytes,
            p.tx_bytes,
            p.handshake.state,
            kp(&p.keypairs.previous),
            kp(&p.keypairs.current),
            kp(&p.keypairs.next),
            p.staged.len(),
            wgmesh_tunnel::timers::ALL.map(|t| p.timers.deadline(t)),
        );
    }
    s
}
