//! The sans-IO device: peers, index table, allowed IPs and the rules that tie them together.
//! Inputs are bytes plus a `Clock`; outputs go to an `Output` (datagrams to send, packets for
//! the TUN). The I/O shell owns sockets, the TUN and real time; tests own a virtual clock.

use crate::allowed_ips::AllowedIps;
use crate::cookie::{CookieChecker, CookieState};
use crate::crypto::Aead;
use crate::index::{Entry, IndexTable, PeerId};
use crate::ip;
use crate::keypair::{open_data, seal_data, Keypair, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::messages::{self as msg, Kind};
use crate::noise::{Handshake, Identity, Session};
use crate::peer::Peer;
use crate::ratelimiter::RateLimiter;
use crate::timers::{
    Timer, JITTER_MAX_MS, KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REKEY_TIMEOUT, ZERO_KEY_MATERIAL_AFTER,
};
use rand_core::{CryptoRng, OsRng, RngCore};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The two clocks the protocol needs: monotonic (boottime) for every timer, and the wall
/// clock only for TAI64N timestamps and the reported time of the last handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    pub mono: Duration,
    pub wall: Duration,
}

impl Clock {
    pub fn advance(&mut self, d: Duration) {
        self.mono += d;
        self.wall += d;
    }
}

/// A data message the core has routed, numbered and padded; only the sealing is left.
pub struct SealJob<'a> {
    pub key: &'a Arc<Aead>,
    pub receiver: u32,
    pub counter: u64,
    pub plaintext: &'a [u8],
    /// Plaintext length after zero padding.
    pub padded: usize,
}

/// Where the device puts what it produces.
pub trait Output {
    /// Send one WireGuard datagram to `to`.
    fn send(&mut self, to: SocketAddr, datagram: &[u8]);
    /// Hand one decrypted inner IP packet to the TUN.
    fn deliver(&mut self, packet: &[u8]);
    /// Send `datagram` to `to` as a reply to the datagram being handled, from the local
    /// address that one arrived at (the kernel's reply-to-skb), as for cookie replies.
    fn reply(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.send(to, datagram)
    }
    /// Sends to `to` should leave from the address routing picks again, not a learned one:
    /// the kernel clears an endpoint's source before a handshake retry, in case it is the trouble.
    fn forget_source(&mut self, _to: SocketAddr) {}
    /// Send a data message. This seals at once; a shell may override it to seal later, outside
    /// its lock or on another core: counter, key and padding are already fixed.
    fn send_data(&mut self, to: SocketAddr, job: SealJob<'_>) {
        let mut buf = vec![0u8; msg::DATA_OVERHEAD + job.padded];
        buf[msg::DATA_HEADER_LEN..msg::DATA_HEADER_LEN + job.plaintext.len()].copy_from_slice(job.plaintext);
        let n = seal_data(job.key, job.receiver, job.counter, &mut buf, job.padded);
        self.send(to, &buf[..n]);
    }
}

/// A data message whose keypair checks passed; open it (anywhere), then `finish_data`.
pub struct OpenJob {
    pub key: Arc<Aead>,
    pub counter: u64,
    peer: PeerId,
    local: u32,
}

/// What became of one input; drops say why, for counters and debug logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Staged,
    Delivered,
    Keepalive,
    InitiationConsumed,
    ResponseConsumed,
    CookieReplySent,
    CookieConsumed,
    Dropped(Drop),
}

impl Outcome {
    /// The datagram proved it came from a peer, whose endpoint is now the datagram's source.
    pub fn authenticated(self) -> bool {
        matches!(
            self,
            Outcome::Delivered
                | Outcome::Keepalive
                | Outcome::InitiationConsumed
                | Outcome::ResponseConsumed
                | Outcome::Dropped(Drop::SourceNotAllowed)
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    NotWireGuard,
    NoPrivateKey,
    InvalidMac,
    RateLimited,
    InvalidHandshake,
    UnknownIndex,
    KeypairExpired,
    InvalidAuthentication,
    Replay,
    InvalidInnerPacket,
    SourceNotAllowed,
    NoRoute,
    NoEndpoint,
    TooLarge,
    DeviceDown,
}

/// Largest inner packet: the TUN's 64 KiB limit.
pub const MAX_PACKET: usize = 65535;
/// Default MTU: 1500 minus the worst-case outer overhead (IPv6 40 + UDP 8 + WireGuard 32).
pub const DEFAULT_MTU: usize = 1420;
/// Waiting handshake messages that switch on cookie replies (the kernel's 4096/8 queue mark).
pub const DEFAULT_UNDER_LOAD_THRESHOLD: u32 = 512;
/// Handshake messages a second the modelled queue drains: about one core's worth (tunnel/README).
pub const DEFAULT_HANDSHAKE_RATE: u32 = 4000;
const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);
/// The initiator re-handshakes on receive this long after the session began (165 s).
const LAST_MINUTE: Duration = REJECT_AFTER_TIME.saturating_sub(KEEPALIVE_TIMEOUT).saturating_sub(REKEY_TIMEOUT);

#[derive(Default)]
struct Load {
    /// What a queue drained at `handshake_rate` would hold, as of `at`.
    backlog: f64,
    at: Duration,
    last_under_load: Option<Duration>,
}

pub struct Device<R: RngCore + CryptoRng = OsRng> {
    identity: Option<Identity>,
    checker: Option<CookieChecker>,
    peers: Vec<Option<Box<Peer>>>,
    free_ids: Vec<PeerId>,
    next_serial: u64,
    by_key: HashMap<PublicKey, PeerId>,
    index: IndexTable,
    pub allowed_ips: AllowedIps<PeerId>,
    limiter: RateLimiter,
    icmp_limiter: RateLimiter,
    load: Load,
    pub under_load_threshold: u32,
    pub handshake_rate: u32,
    rng: R,
    /// Timer jitter needs no secrecy: a xorshift seeded once spares a getrandom per packet.
    jitter_state: u64,
    mtu: usize,
    up: bool,
}

impl Default for Device<OsRng> {
    fn default() -> Self {
        Self::new(OsRng)
    }
}

/// Zero-padding to a multiple of 16, never beyond the MTU (kernel calculate_skb_padding).
pub fn padded_len(len: usize, mtu: usize) -> usize {
    let align = |n: usize| n.div_ceil(16) * 16;
    if mtu == 0 {
        return align(len);
    }
    let last_unit = if len > mtu { len % mtu } else { len };
    len + (mtu.min(align(last_unit)) - last_unit)
}

fn jitter(state: &mut u64) -> Duration {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    Duration::from_millis((*state >> 32) % JITTER_MAX_MS as u64)
}

impl<R: RngCore + CryptoRng> Device<R> {
    pub fn new(mut rng: R) -> Self {
        Self {
            jitter_state: rng.next_u64() | 1,
            identity: None,
            checker: None,
            peers: Vec::new(),
            free_ids: Vec::new(),
            next_serial: 0,
            by_key: HashMap::new(),
            index: IndexTable::default(),
            allowed_ips: AllowedIps::default(),
            limiter: RateLimiter::default(),
            icmp_limiter: RateLimiter::default(),
            load: Load::default(),
            under_load_threshold: DEFAULT_UNDER_LOAD_THRESHOLD,
            handshake_rate: DEFAULT_HANDSHAKE_RATE,
            rng,
            mtu: DEFAULT_MTU,
            up: false,
        }
    }

    // ----- configuration (what UAPI `set` drives) -----

    pub fn public_key(&self) -> Option<PublicKey> {
        self.identity.as_ref().map(|i| i.public)
    }

    pub fn private_key(&self) -> Option<&PrivateKey> {
        self.identity.as_ref().map(|i| &i.private)
    }

    /// Sets or clears (`None`) the static private key, with the kernel's side effects.
    pub fn set_private_key(&mut self, key: Option<PrivateKey>, now: Clock, out: &mut impl Output) {
        self.replace_identity(key, false, now, out)
    }

    /// Deliberate key rotation (a wgmesh extension): like `set_private_key`, but sessions
    /// made under the old key keep carrying data until the peer uses a new one (at most
    /// REJECT_AFTER_TIME), so peers that learn the new public key a little later lose nothing.
    pub fn rotate_private_key(&mut self, key: PrivateKey, now: Clock, out: &mut impl Output) {
        let keep_sessions = self.identity.is_some();
        self.replace_identity(Some(key), keep_sessions, now, out)
    }

    fn replace_identity(&mut self, key: Option<PrivateKey>, keep_sessions: bool, now: Clock, out: &mut impl Output) {
        if key.as_ref() == self.private_key() {
            return;
        }
        let had_identity = self.identity.is_some();
        self.identity = key.map(Identity::new);
        if let Some(id) = &self.identity {
            // Our own key cannot also be a peer's.
            if let Some(p) = self.by_key.get(&id.public).copied() {
                self.remove_peer(p);
            }
        }
        self.checker = self.identity.as_ref().map(|i| CookieChecker::new(&i.public));
        let send_staged = !had_identity && self.identity.is_some() && self.up;
        for id in self.peer_ids() {
            self.with_peer(id, |dev, peer| {
                peer.handshake.precompute(dev.identity.as_ref());
                // Allow an immediate new handshake; old sessions are void unless rotating.
                dev.clear_handshake(peer);
                if keep_sessions {
                    peer.keypairs.mark_old_key();
                } else {
                    peer.keypairs.expire_sending();
                }
                peer.last_sent_handshake = None;
                if send_staged {
                    dev.send_staged(peer, id, None, now, out);
                }
            });
        }
    }

    /// A peer rotated its key (a wgmesh extension): it keeps its sessions, endpoint and
    /// allowed IPs under the new key and a handshake with the new key starts at once.
    /// False when `key` is ours or another peer's.
    pub fn rename_peer(&mut self, id: PeerId, key: PublicKey, now: Clock, out: &mut impl Output) -> bool {
        if Some(key) == self.public_key() || self.by_key.get(&key).is_some_and(|other| *other != id) {
            return false;
        }
        self.with_peer(id, |dev, peer| {
            if peer.public_key == key {
                return true;
            }
            dev.by_key.remove(&peer.public_key);
            dev.by_key.insert(key, id);
            dev.clear_handshake(peer);
            let psk = std::mem::take(&mut peer.handshake.preshared_key);
            peer.handshake = Handshake::new(key, dev.identity.as_ref());
            peer.handshake.preshared_key = psk;
            peer.cookie = CookieState::new(&key);
            peer.public_key = key;
            peer.last_sent_handshake = None;
            peer.keypairs.mark_old_key();
            if dev.up {
                dev.initiate(peer, id, false, now, out);
            }
            true
        })
        .unwrap_or(false)
    }

    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu.min(MAX_PACKET);
    }

    pub fn mtu(&self) -> usize {
        self.mtu
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Link up sends a keepalive to every peer with persistent keepalive; link down forgets
    /// all sessions and staged packets (kernel device open/stop).
    pub fn set_up(&mut self, up: bool, now: Clock, out: &mut impl Output) {
        if up == self.up {
            return;
        }
        self.up = up;
        for id in self.peer_ids() {
            self.with_peer(id, |dev, peer| {
                if up {
                    dev.send_staged(peer, id, None, now, out);
                    if peer.timers.persistent_keepalive > 0 {
                        dev.send_keepalive(peer, id, now, out);
                    }
                } else {
                    peer.staged.clear();
                    peer.timers.disarm_all();
                    dev.clear_handshake(peer);
                    dev.clear_keypairs(peer);
                    peer.last_sent_handshake = None;
                }
            });
        }
    }

    /// Adds a peer, or returns the existing one; `None` for our own public key (ignored).
    pub fn add_peer(&mut self, key: PublicKey) -> Option<PeerId> {
        if Some(key) == self.public_key() {
            return None;
        }
        if let Some(id) = self.by_key.get(&key) {
            return Some(*id);
        }
        let mut peer = Box::new(Peer::new(key, self.identity.as_ref()));
        peer.serial = self.next_serial;
        self.next_serial += 1;
        let id = self.free_ids.pop().unwrap_or_else(|| {
            self.peers.push(None);
            self.peers.len() - 1
        });
        self.peers[id] = Some(peer);
        self.by_key.insert(key, id);
        Some(id)
    }

    pub fn remove_peer(&mut self, id: PeerId) {
        let Some(mut peer) = self.peers.get_mut(id).and_then(Option::take) else { return };
        self.clear_handshake(&mut peer);
        self.clear_keypairs(&mut peer);
        self.allowed_ips.remove_all(id);
        self.by_key.remove(&peer.public_key);
        self.free_ids.push(id);
    }

    pub fn remove_all_peers(&mut self) {
        for id in self.peer_ids() {
            self.remove_peer(id);
        }
    }

    pub fn peer_id(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id).and_then(|p| p.as_deref())
    }

    /// Peers in the order they were added (ids themselves are reused after removal).
    pub fn peer_ids(&self) -> Vec<PeerId> {
        let mut ids: Vec<(u64, PeerId)> =
            self.peers.iter().enumerate().filter_map(|(i, p)| p.as_ref().map(|p| (p.serial, i))).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, i)| i).collect()
    }

    pub fn set_preshared_key(&mut self, id: PeerId, psk: PresharedKey) {
        self.with_peer(id, |_, p| p.handshake.preshared_key = psk);
    }

    pub fn set_endpoint(&mut self, id: PeerId, endpoint: SocketAddr) {
        self.with_peer(id, |_, p| p.endpoint = Some(endpoint));
    }

    /// Turning persistent keepalive on for an up device sends one at once (kernel netlink).
    pub fn set_persistent_keepalive(&mut self, id: PeerId, secs: u16, now: Clock, out: &mut impl Output) {
        self.with_peer(id, |dev, p| {
            let was = p.timers.persistent_keepalive;
            p.timers.persistent_keepalive = secs;
            if secs == 0 {
                p.timers.disarm(Timer::PersistentKeepalive);
            } else if was == 0 && dev.up {
                dev.send_keepalive(p, id, now, out);
            }
        });
    }

    /// Sends what is staged for a peer (after a config change brought it an endpoint).
    pub fn flush_staged(&mut self, id: PeerId, now: Clock, out: &mut impl Output) {
        self.with_peer(id, |dev, p| dev.send_staged(p, id, None, now, out));
    }

    /// How many receiver indices are live (handshakes plus keypairs); for tests and metrics.
    pub fn live_indices(&self) -> usize {
        self.index.len()
    }

    // ----- the data path -----

    /// An inner packet read from the TUN.
    pub fn handle_tun(&mut self, packet: &[u8], now: Clock, out: &mut impl Output) -> Outcome {
        if !self.up {
            return Outcome::Dropped(Drop::DeviceDown);
        }
        if packet.len() > MAX_PACKET {
            return Outcome::Dropped(Drop::TooLarge);
        }
        let Some(dst) = ip::destination(packet) else { return Outcome::Dropped(Drop::InvalidInnerPacket) };
        let Some(id) = self.allowed_ips.lookup(dst) else { return self.unreachable(packet, Drop::NoRoute, now, out) };
        self.with_peer(id, |dev, peer| {
            if peer.endpoint.is_none() {
                return dev.unreachable(packet, Drop::NoEndpoint, now, out);
            }
            dev.send_staged(peer, id, Some(packet), now, out)
        })
        .unwrap_or(Outcome::Dropped(Drop::NoRoute))
    }

    /// Answers a packet no peer can take with an ICMP error, as the kernel does, at most 20 a
    /// second per sender (the kernel's ICMP rate limit is per destination too).
    fn unreachable(&mut self, packet: &[u8], why: Drop, now: Clock, out: &mut impl Output) -> Outcome {
        let mut buf = [0u8; 1280];
        match ip::unreachable(packet, &mut buf) {
            Some((n, to)) if self.icmp_limiter.allow(to, now.mono) => out.deliver(&buf[..n]),
            _ => {}
        }
        Outcome::Dropped(why)
    }

    /// A send the shell could not make: as the kernel counts only datagrams that left, the
    /// bytes come off the transfer count of the peer whose endpoint `to` is.
    pub fn unsent(&mut self, to: SocketAddr, bytes: usize) {
        if let Some(p) = self.peers.iter_mut().flatten().find(|p| p.endpoint == Some(to)) {
            p.tx_bytes = p.tx_bytes.saturating_sub(bytes as u64);
        }
    }

    /// A datagram received on the WireGuard port from `from`. Decrypts in place.
    pub fn handle_udp(&mut self, from: SocketAddr, datagram: &mut [u8], now: Clock, out: &mut impl Output) -> Outcome {
        if !self.up {
            return Outcome::Dropped(Drop::DeviceDown);
        }
        match msg::classify(datagram) {
            None => Outcome::Dropped(Drop::NotWireGuard),
            Some(Kind::Data) => self.receive_data(from, datagram, now, out),
            Some(Kind::CookieReply) => self.receive_cookie_reply(datagram, now),
            Some(kind) => self.receive_handshake(kind, from, datagram, now, out),
        }
    }

    /// The earliest timer deadline of any peer; call `poll` then.
    pub fn next_deadline(&self) -> Option<Duration> {
        if !self.up {
            return None;
        }
        self.peers.iter().flatten().filter_map(|p| p.timers.next_deadline()).min()
    }

    /// Runs every timer that is due.
    pub fn poll(&mut self, now: Clock, out: &mut impl Output) {
        if !self.up {
            return;
        }
        for id in 0..self.peers.len() {
            self.with_peer(id, |dev, peer| {
                for t in crate::timers::ALL {
                    if peer.timers.take_due(t, now.mono) {
                        dev.on_timer(peer, id, t, now, out);
                    }
                }
            });
        }
    }

    // ----- internals -----

    /// Lends a peer out of the slab so it and the device can be borrowed mutably together.
    fn with_peer<X>(&mut self, id: PeerId, f: impl FnOnce(&mut Self, &mut Peer) -> X) -> Option<X> {
        let mut peer = self.peers.get_mut(id)?.take()?;
        let x = f(self, &mut peer);
        self.peers[id] = Some(peer);
        Some(x)
    }

    fn emit(&self, peer: &mut Peer, datagram: &[u8], out: &mut impl Output) {
        if let Some(to) = peer.endpoint {
            out.send(to, datagram);
            peer.tx_bytes += datagram.len() as u64;
        }
    }

    fn clear_handshake(&mut self, peer: &mut Peer) {
        if let Some(i) = peer.handshake.local_index {
            self.index.remove(i);
        }
        peer.handshake.clear();
    }

    fn drop_keypairs(&mut self, kps: impl IntoIterator<Item = Option<Box<Keypair>>>) {
        for kp in kps.into_iter().flatten() {
            self.index.remove(kp.local_index);
        }
    }

    fn clear_keypairs(&mut self, peer: &mut Peer) {
        self.drop_keypairs(peer.keypairs.clear());
    }

    /// A fresh handshake index for `id`, replacing the handshake's previous one.
    fn new_handshake_index(&mut self, peer: &mut Peer, id: PeerId) -> u32 {
        if let Some(old) = peer.handshake.local_index.take() {
            self.index.remove(old);
        }
        self.index.insert(Entry::Handshake(id), &mut self.rng)
    }

    /// Turns a finished handshake into a keypair; its index now names the keypair.
    fn begin_session(&mut self, peer: &mut Peer, id: PeerId, s: Session, now: Clock) {
        let Some(local) = peer.handshake.local_index.take() else { return };
        self.index.set(local, Entry::Keypair(id));
        self.drop_keypairs(peer.keypairs.insert(Box::new(Keypair::new(&s, local, now.mono))));
        peer.timers.session_derived(now.mono);
    }

    /// Sends an initiation unless one went out less than REKEY_TIMEOUT ago.
    fn initiate(&mut self, peer: &mut Peer, id: PeerId, is_retry: bool, now: Clock, out: &mut impl Output) {
        if !is_retry {
            peer.timers.handshake_attempts = 0;
        }
        if peer.last_sent_handshake.is_some_and(|t| now.mono < t + REKEY_TIMEOUT) {
            return;
        }
        peer.last_sent_handshake = Some(now.mono);
        if self.identity.is_none() || !peer.handshake.can_handshake() {
            return;
        }
        let index = self.new_handshake_index(peer, id);
        let mut m = [0u8; msg::INITIATION_LEN];
        let Some(identity) = self.identity.as_ref() else { return };
        if !peer.handshake.create_initiation(identity, index, now.wall, &mut self.rng, &mut m) {
            self.index.remove(index);
            peer.handshake.local_index = None;
            return;
        }
        peer.cookie.add_macs(&mut m, msg::initiation::MAC1, now.mono);
        peer.timers.any_authenticated_packet_traversal(now.mono);
        peer.timers.any_authenticated_packet_sent();
        self.emit(peer, &m, out);
        peer.timers.handshake_initiated(now.mono, jitter(&mut self.jitter_state));
    }

    fn respond(&mut self, peer: &mut Peer, id: PeerId, now: Clock, out: &mut impl Output) {
        peer.last_sent_handshake = Some(now.mono);
        let index = self.new_handshake_index(peer, id);
        let mut m = [0u8; msg::RESPONSE_LEN];
        let Some(session) = peer.handshake.create_response(index, &mut self.rng, &mut m) else {
            self.index.remove(index);
            peer.handshake.local_index = None;
            return;
        };
        peer.cookie.add_macs(&mut m, msg::response::MAC1, now.mono);
        self.begin_session(peer, id, session, now);
        peer.timers.any_authenticated_packet_traversal(now.mono);
        peer.timers.any_authenticated_packet_sent();
        self.emit(peer, &m, out);
    }

    /// Numbers one inner packet (possibly empty: a keepalive) under the current keypair and
    /// hands it out for sealing.
    fn seal_and_send(&mut self, peer: &mut Peer, packet: &[u8], out: &mut impl Output) -> bool {
        let Some(kp) = peer.keypairs.current.as_deref_mut() else { return false };
        let Some(counter) = kp.next_counter() else { return false };
        let padded = padded_len(packet.len(), self.mtu);
        if let Some(to) = peer.endpoint {
            out.send_data(to, SealJob { key: &kp.send, receiver: kp.remote_index, counter, plaintext: packet, padded });
            peer.tx_bytes += (msg::DATA_OVERHEAD + padded) as u64;
        }
        true
    }

    /// Sends staged packets then `extra` if a usable keypair exists; otherwise stages and
    /// starts a handshake (kernel wg_packet_send_staged_packets).
    fn send_staged(
        &mut self,
        peer: &mut Peer,
        id: PeerId,
        extra: Option<&[u8]>,
        now: Clock,
        out: &mut impl Output,
    ) -> Outcome {
        if peer.staged.is_empty() && extra.is_none() {
            return Outcome::Sent;
        }
        let usable = self.up && peer.keypairs.current.as_ref().is_some_and(|k| k.can_send(now.mono));
        if !usable {
            if let Some(p) = extra {
                peer.stage(p);
            }
            if self.up {
                self.initiate(peer, id, false, now, out);
            }
            return Outcome::Staged;
        }
        let (mut sent_any, mut sent_data, mut failed) = (false, false, false);
        while let Some(p) = peer.staged.pop_front() {
            if !self.seal_and_send(peer, &p, out) {
                peer.staged.push_front(p);
                failed = true;
                break;
            }
            sent_any = true;
            sent_data |= !p.is_empty();
        }
        let mut outcome = Outcome::Sent;
        if let Some(p) = extra {
            if !failed && self.seal_and_send(peer, p, out) {
                sent_any = true;
                sent_data |= !p.is_empty();
            } else {
                peer.stage(p);
                failed = true;
                outcome = Outcome::Staged;
            }
        }
        if sent_any {
            peer.timers.any_authenticated_packet_traversal(now.mono);
            peer.timers.any_authenticated_packet_sent();
            // Only draw jitter when the timer is actually armed.
            if sent_data && !peer.timers.pending(Timer::NewHandshake) {
                peer.timers.data_sent(now.mono, jitter(&mut self.jitter_state));
            }
        }
        if failed {
            self.initiate(peer, id, false, now, out);
        } else {
            self.keep_key_fresh_on_send(peer, id, now, out);
        }
        outcome
    }

    /// Rekey when the keypair has sent too much, or (initiator only) is over 120 s old.
    fn keep_key_fresh_on_send(&mut self, peer: &mut Peer, id: PeerId, now: Clock, out: &mut impl Output) {
        let stale = peer.keypairs.current.as_ref().is_some_and(|k| {
            k.send_valid
                && (k.send_counter > REKEY_AFTER_MESSAGES || (k.is_initiator && now.mono >= k.birth + REKEY_AFTER_TIME))
        });
        if stale {
            self.initiate(peer, id, false, now, out);
        }
    }

    /// The initiator's last chance before REJECT_AFTER_TIME, once, when it receives at 165 s.
    fn keep_key_fresh_on_receive(&mut self, peer: &mut Peer, id: PeerId, now: Clock, out: &mut impl Output) {
        if peer.timers.sent_lastminute_handshake {
            return;
        }
        let stale = peer
            .keypairs
            .current
            .as_ref()
            .is_some_and(|k| k.send_valid && k.is_initiator && now.mono >= k.birth + LAST_MINUTE);
        if stale {
            peer.timers.sent_lastminute_handshake = true;
            self.initiate(peer, id, false, now, out);
        }
    }

    fn send_keepalive(&mut self, peer: &mut Peer, id: PeerId, now: Clock, out: &mut impl Output) {
        if peer.staged.is_empty() {
            peer.staged.push_back(Vec::new());
        }
        self.send_staged(peer, id, None, now, out);
    }

    fn on_timer(&mut self, peer: &mut Peer, id: PeerId, t: Timer, now: Clock, out: &mut impl Output) {
        match t {
            Timer::RetransmitHandshake => {
                if peer.timers.handshake_attempts > MAX_TIMER_HANDSHAKES {
                    // Give up: drop what waited for this handshake, erase residue later.
                    peer.timers.disarm(Timer::SendKeepalive);
                    peer.staged.clear();
                    if !peer.timers.pending(Timer::ZeroKeyMaterial) {
                        peer.timers.arm(Timer::ZeroKeyMaterial, now.mono + ZERO_KEY_MATERIAL_AFTER);
                    }
                } else {
                    peer.timers.handshake_attempts += 1;
                    if let Some(ep) = peer.endpoint {
                        out.forget_source(ep);
                    }
                    self.initiate(peer, id, true, now, out);
                }
            }
            Timer::SendKeepalive => {
                self.send_keepalive(peer, id, now, out);
                if peer.timers.need_another_keepalive {
                    peer.timers.need_another_keepalive = false;
                    peer.timers.arm(Timer::SendKeepalive, now.mono + KEEPALIVE_TIMEOUT);
                }
            }
            Timer::NewHandshake => {
                if let Some(ep) = peer.endpoint {
                    out.forget_source(ep);
                }
                self.initiate(peer, id, false, now, out)
            }
            Timer::ZeroKeyMaterial => {
                self.clear_handshake(peer);
                self.clear_keypairs(peer);
            }
            Timer::PersistentKeepalive => {
                if peer.timers.persistent_keepalive > 0 {
                    self.send_keepalive(peer, id, now, out);
                }
            }
        }
    }

    /// mac1 first (no DH before it), then the load rule: cookies for the unproven, a token
    /// bucket for the proven. Returns whether the message may be processed.
    fn admit_handshake(
        &mut self,
        kind: Kind,
        from: SocketAddr,
        m: &[u8],
        now: Clock,
        out: &mut impl Output,
    ) -> Result<(), Outcome> {
        let (mac1, mac2) = kind.mac_offsets().ok_or(Outcome::Dropped(Drop::NotWireGuard))?;
        let checker = self.checker.as_mut().ok_or(Outcome::Dropped(Drop::NoPrivateKey))?;
        if !checker.check_mac1(m, mac1) {
            return Err(Outcome::Dropped(Drop::InvalidMac));
        }
        // Only mac1-valid messages count, so junk cannot switch cookies on; and they fill a
        // modelled queue, as the kernel's real one, so a steady trickle never does.
        let l = &mut self.load;
        let drained = now.mono.saturating_sub(l.at).as_secs_f64() * f64::from(self.handshake_rate);
        (l.backlog, l.at) = ((l.backlog - drained).max(0.0) + 1.0, now.mono);
        if l.backlog > f64::from(self.under_load_threshold) {
            l.last_under_load = Some(now.mono);
        }
        let under_load = l.last_under_load.is_some_and(|t| now.mono < t + UNDER_LOAD_HOLD);
        if !under_load {
            return Ok(());
        }
        if !checker.check_mac2(m, mac2, from, now.mono, &mut self.rng) {
            let reply = checker.create_reply(m, mac1, from, now.mono, &mut self.rng);
            out.reply(from, &reply);
            return Err(Outcome::CookieReplySent);
        }
        if !self.limiter.allow(from.ip(), now.mono) {
            return Err(Outcome::Dropped(Drop::RateLimited));
        }
        Ok(())
    }

    fn receive_handshake(
        &mut self,
        kind: Kind,
        from: SocketAddr,
        m: &[u8],
        now: Clock,
        out: &mut impl Output,
    ) -> Outcome {
        if let Err(o) = self.admit_handshake(kind, from, m, now, out) {
            return o;
        }
        let Some(identity) = self.identity.as_ref() else { return Outcome::Dropped(Drop::NoPrivateKey) };
        let invalid = Outcome::Dropped(Drop::InvalidHandshake);
        if kind == Kind::Initiation {
            let Some(partial) = Handshake::decrypt_initiation_static(identity, m) else { return invalid };
            let Some(id) = self.peer_id(&partial.remote_static) else { return invalid };
            self.with_peer(id, |dev, peer| {
                if !peer.handshake.consume_initiation(partial, m, now.mono) {
                    return invalid;
                }
                peer.endpoint = Some(from);
                peer.rx_bytes += m.len() as u64;
                peer.timers.any_authenticated_packet_received();
                peer.timers.any_authenticated_packet_traversal(now.mono);
                dev.respond(peer, id, now, out);
                Outcome::InitiationConsumed
            })
            .unwrap_or(invalid)
        } else {
            let receiver = msg::u32_at(m, msg::response::RECEIVER);
            let Some(Entry::Handshake(id)) = self.index.get(receiver) else { return invalid };
            self.with_peer(id, |dev, peer| {
                let Some(identity) = dev.identity.as_ref() else { return invalid };
                let Some(session) = peer.handshake.consume_response(identity, m) else { return invalid };
                peer.endpoint = Some(from);
                peer.rx_bytes += m.len() as u64;
                peer.timers.any_authenticated_packet_received();
                peer.timers.any_authenticated_packet_traversal(now.mono);
                dev.begin_session(peer, id, session, now);
                peer.timers.handshake_complete();
                peer.last_handshake = Some(now.wall);
                // Staged data confirms the session; with nothing staged, a keepalive does.
                dev.send_keepalive(peer, id, now, out);
                Outcome::ResponseConsumed
            })
            .unwrap_or(invalid)
        }
    }

    fn receive_cookie_reply(&mut self, m: &[u8], now: Clock) -> Outcome {
        // A cookie reply proves nothing about the sender's address: no roaming, no rx bytes.
        let entry = self.index.get(msg::u32_at(m, msg::cookie_reply::RECEIVER));
        match entry.and_then(|e| self.with_peer(e.peer(), |_, peer| peer.cookie.consume_reply(m, now.mono))) {
            Some(true) => Outcome::CookieConsumed,
            Some(false) => Outcome::Dropped(Drop::InvalidAuthentication),
            None => Outcome::Dropped(Drop::UnknownIndex),
        }
    }

    /// Transport data, in the kernel's order: keypair, decrypt, replay, key confirmation,
    /// roaming, timers, keepalive check, inner length, source check, deliver.
    fn receive_data(&mut self, from: SocketAddr, d: &mut [u8], now: Clock, out: &mut impl Output) -> Outcome {
        match self.begin_data(d, now) {
            Ok(job) if open_data(&job.key, job.counter, d) => self.finish_data(from, &job, d, now, out),
            Ok(_) => Outcome::Dropped(Drop::InvalidAuthentication),
            Err(o) => o,
        }
    }

    /// The checks before decryption: a live keypair for the index, not expired, counter not
    /// already seen. Read-only, so unauthenticated input changes nothing.
    pub fn begin_data(&self, d: &[u8], now: Clock) -> Result<OpenJob, Outcome> {
        if !self.up {
            return Err(Outcome::Dropped(Drop::DeviceDown));
        }
        let local = msg::u32_at(d, msg::data::RECEIVER);
        let Some(Entry::Keypair(id)) = self.index.get(local) else { return Err(Outcome::Dropped(Drop::UnknownIndex)) };
        let peer = self.peer(id).ok_or(Outcome::Dropped(Drop::UnknownIndex))?;
        let kp = peer.keypairs.get(local).ok_or(Outcome::Dropped(Drop::UnknownIndex))?;
        if !kp.can_receive(now.mono) {
            return Err(Outcome::Dropped(Drop::KeypairExpired));
        }
        let counter = msg::u64_at(d, msg::data::COUNTER);
        // A read-only pre-check, so replayed packets cost no decryption.
        if !kp.replay.would_accept(counter) {
            return Err(Outcome::Dropped(Drop::Replay));
        }
        Ok(OpenJob { key: kp.recv.clone(), counter, peer: id, local })
    }

    /// Everything after a successful decryption of `d` in place (see `begin_data`).
    pub fn finish_data(
        &mut self,
        from: SocketAddr,
        job: &OpenJob,
        d: &[u8],
        now: Clock,
        out: &mut impl Output,
    ) -> Outcome {
        let id = job.peer;
        self.with_peer(id, |dev, peer| {
            // The keypair may have been replaced while the packet was being opened.
            let Some((slot, kp)) = peer.keypairs.find(job.local) else { return Outcome::Dropped(Drop::UnknownIndex) };
            if !kp.replay.accept(job.counter) {
                return Outcome::Dropped(Drop::Replay);
            }
            // Authenticated from here on.
            peer.endpoint = Some(from);
            peer.timers.any_authenticated_packet_received();
            peer.timers.any_authenticated_packet_traversal(now.mono);
            let plain = &d[msg::DATA_HEADER_LEN..d.len() - crate::crypto::TAG_LEN];
            let is_keepalive = plain.is_empty();
            if !is_keepalive {
                peer.timers.data_received(now.mono);
            }
            if slot == crate::keypair::Slot::Next {
                dev.drop_keypairs([peer.keypairs.promote_next()]);
                peer.timers.handshake_complete();
                peer.last_handshake = Some(now.wall);
                dev.send_staged(peer, id, None, now, out);
            }
            // After a rotation, old-key sessions end as soon as the peer uses a newer one.
            dev.drop_keypairs([peer.keypairs.end_old_key(job.local)]);
            dev.keep_key_fresh_on_receive(peer, id, now, out);
            if is_keepalive {
                peer.rx_bytes += d.len() as u64;
                return Outcome::Keepalive;
            }
            let Some((src, len)) = ip::source_and_len(plain) else { return Outcome::Dropped(Drop::InvalidInnerPacket) };
            // Cryptokey routing on receive: the inner source must belong to this peer.
            if dev.allowed_ips.lookup(src) != Some(id) {
                return Outcome::Dropped(Drop::SourceNotAllowed);
            }
            out.deliver(&plain[..len]);
            peer.rx_bytes += d.len() as u64;
            Outcome::Delivered
        })
        .unwrap_or(Outcome::Dropped(Drop::UnknownIndex))
    }
}
