//! Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s (whitepaper §5.4.2–5.4.4): the 1-RTT handshake.
//!
//! ```text
//! initiator                                   responder
//!   -> e, es, s, ss, {t}          (148 bytes: type 1)
//!   <- e, ee, se, psk, {}         ( 92 bytes: type 2)
//! ```
//! Every function works on local copies and commits to `self` only when the whole message
//! authenticated, so a bad message never changes state.

use crate::crypto::{self, hash, kdf, Secret};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::messages::{self as msg, initiation as ini, response as rsp};
use crate::tai64n::{self, Timestamp};
use rand_core::{CryptoRng, RngCore};
use std::sync::OnceLock;
use std::time::Duration;
use zeroize::{Zeroize, Zeroizing};

pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Responders consume at most one initiation per peer in this interval (50 per second).
pub const INITIATION_MIN_INTERVAL: Duration = Duration::from_millis(20);

/// C0 = HASH(CONSTRUCTION) and H0 = HASH(C0 ‖ IDENTIFIER), computed once like the kernel does.
pub fn initial_chain() -> &'static ([u8; 32], [u8; 32]) {
    static CHAIN: OnceLock<([u8; 32], [u8; 32])> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let c0 = hash(&[CONSTRUCTION]);
        (c0, hash(&[&c0, IDENTIFIER]))
    })
}

/// The device's static key pair.
#[derive(Debug)]
pub struct Identity {
    pub private: PrivateKey,
    pub public: PublicKey,
}

impl Identity {
    pub fn new(private: PrivateKey) -> Self {
        let public = private.public_key();
        Self { private, public }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Zeroed,
    CreatedInitiation,
    ConsumedInitiation,
    CreatedResponse,
    ConsumedResponse,
}

/// Transport keys derived at the end of a handshake (step 11).
pub struct Session {
    pub send: Secret,
    pub recv: Secret,
    pub is_initiator: bool,
    pub remote_index: u32,
}

/// Steps 1–3 of a received initiation, before the peer is known.
pub struct PartialInitiation {
    chaining_key: Secret,
    hash: [u8; 32],
    ephemeral: [u8; 32],
    pub remote_static: PublicKey,
}

/// The per-peer handshake state.
pub struct Handshake {
    pub state: State,
    chaining_key: Secret,
    hash: [u8; 32],
    ephemeral: Option<PrivateKey>,
    remote_ephemeral: [u8; 32],
    /// Our index for this handshake while it is registered in the index table.
    pub local_index: Option<u32>,
    remote_index: u32,
    pub remote_static: PublicKey,
    /// DH(S_local, S_remote), precomputed; `None` for a low-order peer key, which never talks.
    static_static: Option<Secret>,
    pub preshared_key: PresharedKey,
    latest_timestamp: Timestamp,
    last_initiation_consumption: Option<Duration>,
}

/// Steps shared by both sides: (C, k) = KDF2(C, dh) with a zero DH result rejected.
fn mix_dh(ck: &mut Secret, dh: Option<Secret>) -> Option<Secret> {
    let dh = dh?;
    let [c, k] = kdf::<2>(ck, &*dh);
    *ck = c;
    Some(k)
}

impl Handshake {
    pub fn new(remote_static: PublicKey, identity: Option<&Identity>) -> Self {
        let mut h = Self {
            state: State::Zeroed,
            chaining_key: Zeroizing::new([0; 32]),
            hash: [0; 32],
            ephemeral: None,
            remote_ephemeral: [0; 32],
            local_index: None,
            remote_index: 0,
            remote_static,
            static_static: None,
            preshared_key: PresharedKey::default(),
            latest_timestamp: [0; 12],
            last_initiation_consumption: None,
        };
        h.precompute(identity);
        h
    }

    /// Re-derives DH(S_i, S_r) after our private key changed.
    pub fn precompute(&mut self, identity: Option<&Identity>) {
        self.static_static = identity.and_then(|id| id.private.dh(&self.remote_static.0));
    }

    /// False for peers whose public key is of low order: such a peer never emits a packet.
    pub fn can_handshake(&self) -> bool {
        self.static_static.is_some()
    }

    /// Forgets the in-flight exchange (ephemerals, chain, hash) but keeps replay state.
    pub fn zero(&mut self) {
        self.state = State::Zeroed;
        self.chaining_key.zeroize();
        self.hash.zeroize();
        self.ephemeral = None;
        self.remote_ephemeral.zeroize();
        self.remote_index = 0;
    }

    /// Builds an initiation (steps 1–5) into `out`, without the MACs; false when impossible.
    pub fn create_initiation(
        &mut self,
        identity: &Identity,
        local_index: u32,
        wall: Duration,
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8; msg::INITIATION_LEN],
    ) -> bool {
        let Some(ss) = self.static_static.as_ref() else { return false };
        let (c0, h0) = initial_chain();
        // 1. C = C0; H = HASH(H0 ‖ S_r_pub)
        let mut ck = Zeroizing::new(*c0);
        let mut h = hash(&[h0, &self.remote_static.0]);
        // 2. E_i = DH-Generate(); msg.ephemeral = E_i_pub; C = KDF1(C, E_i_pub); H = HASH(H ‖ E_i_pub)
        let eph = PrivateKey::generate(rng);
        let eph_pub = eph.public_key();
        out.fill(0);
        msg::put_u32(out, 0, msg::INITIATION);
        msg::put_u32(out, ini::SENDER, local_index);
        out[ini::EPHEMERAL..ini::STATIC].copy_from_slice(&eph_pub.0);
        [ck] = kdf::<1>(&ck, &eph_pub.0);
        h = hash(&[&h, &eph_pub.0]);
        // 3. (C, k) = KDF2(C, DH(E_i, S_r_pub)); msg.static = AEAD(k, 0, S_i_pub, H); H = HASH(H ‖ msg.static)
        let Some(k) = mix_dh(&mut ck, eph.dh(&self.remote_static.0)) else { return false };
        let st = &mut out[ini::STATIC..ini::TIMESTAMP];
        st[..32].copy_from_slice(&identity.public.0);
        crypto::seal(&k, 0, &h, st);
        h = hash(&[&h, st]);
        // 4. (C, k) = KDF2(C, DH(S_i, S_r_pub)); msg.timestamp = AEAD(k, 0, TAI64N(), H); H = HASH(H ‖ msg.timestamp)
        let [c, k] = kdf::<2>(&ck, &**ss);
        ck = c;
        let ts = &mut out[ini::TIMESTAMP..ini::MAC1];
        ts[..12].copy_from_slice(&tai64n::from_unix(wall));
        crypto::seal(&k, 0, &h, ts);
        h = hash(&[&h, ts]);
        // 5. sender index; mac1/mac2 are added by the cookie module.
        self.chaining_key = ck;
        self.hash = h;
        self.ephemeral = Some(eph);
        self.local_index = Some(local_index);
        self.state = State::CreatedInitiation;
        true
    }

    /// Steps 1–3 on the responder: who is this? Needs only our identity.
    pub fn decrypt_initiation_static(identity: &Identity, m: &[u8]) -> Option<PartialInitiation> {
        let (c0, h0) = initial_chain();
        // 1. C = C0; H = HASH(H0 ‖ S_r_pub)
        let mut ck = Zeroizing::new(*c0);
        let mut h = hash(&[h0, &identity.public.0]);
        // 2. C = KDF1(C, E_i_pub); H = HASH(H ‖ E_i_pub)
        let e: [u8; 32] = msg::array_at(m, ini::EPHEMERAL);
        [ck] = kdf::<1>(&ck, &e);
        h = hash(&[&h, &e]);
        // 3. (C, k) = KDF2(C, DH(S_r, E_i_pub)); S_i_pub = AEAD-Open(k, 0, msg.static, H); H = HASH(H ‖ msg.static)
        let k = mix_dh(&mut ck, identity.private.dh(&e))?;
        let mut st: [u8; 48] = msg::array_at(m, ini::STATIC);
        if !crypto::open(&k, 0, &h, &mut st) {
            return None;
        }
        h = hash(&[&h, &m[ini::STATIC..ini::TIMESTAMP]]);
        let remote_static = PublicKey(msg::array_at(&st, 0));
        Some(PartialInitiation { chaining_key: ck, hash: h, ephemeral: e, remote_static })
    }

    /// Step 4 and the replay/flood rules; commits the initiation to this peer's state.
    pub fn consume_initiation(&mut self, p: PartialInitiation, m: &[u8], now: Duration) -> bool {
        let Some(ss) = self.static_static.as_ref() else { return false };
        // 4. (C, k) = KDF2(C, DH(S_r, S_i_pub)); t = AEAD-Open(k, 0, msg.timestamp, H); H = HASH(H ‖ msg.timestamp)
        let [ck, k] = kdf::<2>(&p.chaining_key, &**ss);
        let mut ts: [u8; 28] = msg::array_at(m, ini::TIMESTAMP);
        if !crypto::open(&k, 0, &p.hash, &mut ts) {
            return false;
        }
        let h = hash(&[&p.hash, &m[ini::TIMESTAMP..ini::MAC1]]);
        let t: Timestamp = msg::array_at(&ts, 0);
        // Replay: strictly newer than any timestamp seen from this peer. Flood: ≤ 50/s.
        let replay = !tai64n::is_after(&t, &self.latest_timestamp);
        let flood = self.last_initiation_consumption.is_some_and(|l| now < l + INITIATION_MIN_INTERVAL);
        if replay || flood {
            return false;
        }
        self.remote_ephemeral = p.ephemeral;
        self.latest_timestamp = t;
        self.hash = h;
        self.chaining_key = ck;
        self.remote_index = msg::u32_at(m, ini::SENDER);
        self.last_initiation_consumption = Some(now);
        self.ephemeral = None;
        self.state = State::ConsumedInitiation;
        true
    }

    /// Builds the response (steps 7–10) and derives the session (step 11).
    pub fn create_response(
        &mut self,
        local_index: u32,
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8; msg::RESPONSE_LEN],
    ) -> Option<Session> {
        if self.state != State::ConsumedInitiation {
            return None;
        }
        let mut ck = self.chaining_key.clone();
        let mut h = self.hash;
        // 7. E_r = DH-Generate(); msg.ephemeral = E_r_pub; C = KDF1(C, E_r_pub); H = HASH(H ‖ E_r_pub)
        let eph = PrivateKey::generate(rng);
        let eph_pub = eph.public_key();
        out.fill(0);
        msg::put_u32(out, 0, msg::RESPONSE);
        msg::put_u32(out, rsp::SENDER, local_index);
        msg::put_u32(out, rsp::RECEIVER, self.remote_index);
        out[rsp::EPHEMERAL..rsp::EMPTY].copy_from_slice(&eph_pub.0);
        [ck] = kdf::<1>(&ck, &eph_pub.0);
        h = hash(&[&h, &eph_pub.0]);
        // 8. C = KDF1(C, DH(E_r, E_i_pub)); C = KDF1(C, DH(E_r, S_i_pub))
        [ck] = kdf::<1>(&ck, &*eph.dh(&self.remote_ephemeral)?);
        [ck] = kdf::<1>(&ck, &*eph.dh(&self.remote_static.0)?);
        // 9. (C, τ, k) = KDF3(C, Q); H = HASH(H ‖ τ)
        let [c, tau, k] = kdf::<3>(&ck, &*self.preshared_key.0);
        ck = c;
        h = hash(&[&h, &*tau]);
        // 10. msg.empty = AEAD(k, 0, ε, H); H = HASH(H ‖ msg.empty)
        let empty = &mut out[rsp::EMPTY..rsp::MAC1];
        crypto::seal(&k, 0, &h, empty);
        self.hash = hash(&[&h, empty]);
        self.chaining_key = ck;
        self.local_index = Some(local_index);
        self.state = State::CreatedResponse;
        Some(self.begin_session())
    }

    /// Steps 7–10 on the initiator; derives the session on success.
    pub fn consume_response(&mut self, identity: &Identity, m: &[u8]) -> Option<Session> {
        if self.state != State::CreatedInitiation || self.local_index != Some(msg::u32_at(m, rsp::RECEIVER)) {
            return None;
        }
        let eph = self.ephemeral.as_ref()?;
        let mut ck = self.chaining_key.clone();
        let mut h = self.hash;
        // 7. C = KDF1(C, E_r_pub); H = HASH(H ‖ E_r_pub)
        let e: [u8; 32] = msg::array_at(m, rsp::EPHEMERAL);
        [ck] = kdf::<1>(&ck, &e);
        h = hash(&[&h, &e]);
        // 8. C = KDF1(C, DH(E_i, E_r_pub)); C = KDF1(C, DH(S_i, E_r_pub))
        [ck] = kdf::<1>(&ck, &*eph.dh(&e)?);
        [ck] = kdf::<1>(&ck, &*identity.private.dh(&e)?);
        // 9. (C, τ, k) = KDF3(C, Q); H = HASH(H ‖ τ)
        let [c, tau, k] = kdf::<3>(&ck, &*self.preshared_key.0);
        ck = c;
        h = hash(&[&h, &*tau]);
        // 10. AEAD-Open(k, 0, msg.empty, H); H = HASH(H ‖ msg.empty)
        let mut empty: [u8; 16] = msg::array_at(m, rsp::EMPTY);
        if !crypto::open(&k, 0, &h, &mut empty) {
            return None;
        }
        self.hash = hash(&[&h, &m[rsp::EMPTY..rsp::MAC1]]);
        self.chaining_key = ck;
        self.remote_index = msg::u32_at(m, rsp::SENDER);
        self.state = State::ConsumedResponse;
        Some(self.begin_session())
    }

    /// 11. (T_send_i = T_recv_r, T_recv_i = T_send_r) = KDF2(C, ε); then forget the exchange.
    fn begin_session(&mut self) -> Session {
        let [t1, t2] = kdf::<2>(&self.chaining_key, &[]);
        let is_initiator = self.state == State::ConsumedResponse;
        let (send, recv) = if is_initiator { (t1, t2) } else { (t2, t1) };
        let session = Session { send, recv, is_initiator, remote_index: self.remote_index };
        self.zero();
        session
    }

    /// Allows an immediate new initiation from the peer after our key changed (netns.sh).
    pub fn clear(&mut self) {
        self.zero();
        self.local_index = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_hashes_match_engine_md() {
        let (c0, h0) = initial_chain();
        assert_eq!(hex::encode(c0), "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36");
        assert_eq!(hex::encode(h0), "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3");
    }
}
