//! Everything the device knows about one peer.

use crate::cookie::CookieState;
use crate::keypair::Keypairs;
use crate::keys::PublicKey;
use crate::noise::{Handshake, Identity};
use crate::timers::Timers;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

/// Packets waiting for a session; the oldest is dropped beyond this (kernel and wireguard-go).
pub const MAX_STAGED: usize = 128;

pub struct Peer {
    pub public_key: PublicKey,
    pub handshake: Handshake,
    pub cookie: CookieState,
    pub keypairs: Keypairs,
    pub timers: Timers,
    pub endpoint: Option<SocketAddr>,
    /// Inner packets waiting for a usable keypair; an empty one is a keepalive.
    pub staged: VecDeque<Vec<u8>>,
    /// WireGuard UDP payload bytes, handshakes included (what `wg show transfer` reports).
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Wall-clock time of the last completed handshake, for `latest-handshakes`.
    pub last_handshake: Option<Duration>,
    /// Monotonic time of our last initiation or response: at most one per REKEY_TIMEOUT.
    pub last_sent_handshake: Option<Duration>,
    /// Creation order, so listings keep the order peers were configured in.
    pub serial: u64,
}

impl Peer {
    pub fn new(public_key: PublicKey, identity: Option<&Identity>) -> Self {
        Self {
            public_key,
            handshake: Handshake::new(public_key, identity),
            cookie: CookieState::new(&public_key),
            keypairs: Keypairs::default(),
            timers: Timers::default(),
            endpoint: None,
            staged: VecDeque::new(),
            rx_bytes: 0,
            tx_bytes: 0,
            last_handshake: None,
            last_sent_handshake: None,
            serial: 0,
        }
    }

    pub fn stage(&mut self, packet: &[u8]) {
        self.staged.push_back(packet.to_vec());
        if self.staged.len() > MAX_STAGED {
            self.staged.pop_front();
        }
    }
}
