//! The five per-peer timers (whitepaper §6.2–6.5, kernel timers.c) as deadlines on a virtual
//! clock: event hooks arm and disarm them, `expired` reports which ones fired.

use std::time::Duration;

pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// 90 s of REKEY_TIMEOUT retries: 18, after which the initiation is abandoned.
pub const MAX_TIMER_HANDSHAKES: u32 = 18;
/// REJECT_AFTER_TIME × 3: with no new handshake, all key material is erased.
pub const ZERO_KEY_MATERIAL_AFTER: Duration = Duration::from_secs(540);
/// Retransmits are spread by up to a third of a second so peers do not synchronise.
pub const JITTER_MAX_MS: u32 = 334;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    RetransmitHandshake,
    SendKeepalive,
    NewHandshake,
    ZeroKeyMaterial,
    PersistentKeepalive,
}

pub const ALL: [Timer; 5] = [
    Timer::RetransmitHandshake,
    Timer::SendKeepalive,
    Timer::NewHandshake,
    Timer::ZeroKeyMaterial,
    Timer::PersistentKeepalive,
];

#[derive(Default, Debug)]
pub struct Timers {
    deadline: [Option<Duration>; 5],
    pub handshake_attempts: u32,
    pub need_another_keepalive: bool,
    pub sent_lastminute_handshake: bool,
    pub persistent_keepalive: u16,
}

impl Timers {
    pub fn pending(&self, t: Timer) -> bool {
        self.deadline[t as usize].is_some()
    }
    pub fn deadline(&self, t: Timer) -> Option<Duration> {
        self.deadline[t as usize]
    }
    pub fn arm(&mut self, t: Timer, at: Duration) {
        self.deadline[t as usize] = Some(at);
    }
    pub fn disarm(&mut self, t: Timer) {
        self.deadline[t as usize] = None;
    }
    pub fn disarm_all(&mut self) {
        self.deadline = [None; 5];
    }
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadline.iter().flatten().min().copied()
    }
    /// Disarms `t` and says so if it is due at `now`. Asked timer by timer, in the kernel's
    /// handler order, after the previous handler ran: one it disarmed does not fire (del_timer).
    pub fn take_due(&mut self, t: Timer, now: Duration) -> bool {
        self.deadline[t as usize].take_if(|d| *d <= now).is_some()
    }

    /// An authenticated data packet (not a keepalive) was sent.
    pub fn data_sent(&mut self, now: Duration, jitter: Duration) {
        if !self.pending(Timer::NewHandshake) {
            self.arm(Timer::NewHandshake, now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter);
        }
    }
    /// An authenticated data packet (not a keepalive) was received.
    pub fn data_received(&mut self, now: Duration) {
        if !self.pending(Timer::SendKeepalive) {
            self.arm(Timer::SendKeepalive, now + KEEPALIVE_TIMEOUT);
        } else {
            self.need_another_keepalive = true;
        }
    }
    /// Any authenticated packet (data, keepalive or handshake) was sent.
    pub fn any_authenticated_packet_sent(&mut self) {
        self.disarm(Timer::SendKeepalive);
    }
    /// Any authenticated packet was received.
    pub fn any_authenticated_packet_received(&mut self) {
        self.disarm(Timer::NewHandshake);
    }
    /// Any authenticated packet was sent or received.
    pub fn any_authenticated_packet_traversal(&mut self, now: Duration) {
        if self.persistent_keepalive > 0 {
            let every = Duration::from_secs(self.persistent_keepalive.into());
            self.arm(Timer::PersistentKeepalive, now + every);
        }
    }
    /// An initiation was sent.
    pub fn handshake_initiated(&mut self, now: Duration, jitter: Duration) {
        self.arm(Timer::RetransmitHandshake, now + REKEY_TIMEOUT + jitter);
    }
    /// A response was consumed, or the first data arrived under a responder's new keypair.
    pub fn handshake_complete(&mut self) {
        self.disarm(Timer::RetransmitHandshake);
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
    }
    /// New transport keys exist.
    pub fn session_derived(&mut self, now: Duration) {
        self.arm(Timer::ZeroKeyMaterial, now + ZERO_KEY_MATERIAL_AFTER);
    }
}
