//! mac1, mac2 and cookie replies (whitepaper §5.4.4, §5.4.7): cheap proofs checked before any
//! Diffie-Hellman, and under load a proof of source-address ownership.

use crate::crypto::{self, hash, mac};
use crate::keys::PublicKey;
use crate::messages::{self as msg, cookie_reply as cr};
use rand_core::{CryptoRng, RngCore};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";
/// The responder's cookie secret lives this long (kernel COOKIE_SECRET_MAX_AGE).
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// A received cookie is used 5 s less than that, so it never outlives the secret (kernel).
pub const COOKIE_USE_LIMIT: Duration = Duration::from_secs(115);

fn ct_eq16(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The receiving side of a device: verifies macs and makes cookies for its own public key.
pub struct CookieChecker {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    secret: Zeroizing<[u8; 32]>,
    secret_birth: Option<Duration>,
}

impl CookieChecker {
    pub fn new(own_public: &PublicKey) -> Self {
        Self {
            mac1_key: hash(&[LABEL_MAC1, &own_public.0]),
            cookie_key: hash(&[LABEL_COOKIE, &own_public.0]),
            secret: Zeroizing::new([0; 32]),
            secret_birth: None,
        }
    }

    /// mac1 = MAC(HASH(LABEL_MAC1 ‖ S_pub), msg[..mac1]); compared in constant time.
    pub fn check_mac1(&self, m: &[u8], mac1_off: usize) -> bool {
        ct_eq16(&mac(&self.mac1_key, &[&m[..mac1_off]]), &m[mac1_off..mac1_off + 16])
    }

    /// cookie = MAC(R_m, A_m) with A_m = source IP ‖ source port; R_m rotates every 120 s.
    fn cookie(&mut self, src: SocketAddr, now: Duration, rng: &mut (impl RngCore + CryptoRng)) -> [u8; 16] {
        if self.secret_birth.is_none_or(|b| now >= b + COOKIE_SECRET_MAX_AGE) {
            rng.fill_bytes(&mut *self.secret);
            self.secret_birth = Some(now);
        }
        let port = src.port().to_be_bytes();
        match src.ip() {
            IpAddr::V4(ip) => mac(&*self.secret, &[&ip.octets(), &port]),
            IpAddr::V6(ip) => mac(&*self.secret, &[&ip.octets(), &port]),
        }
    }

    /// mac2 = MAC(cookie, msg[..mac2]); call only after mac1 was valid.
    pub fn check_mac2(
        &mut self,
        m: &[u8],
        mac2_off: usize,
        src: SocketAddr,
        now: Duration,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> bool {
        let cookie = self.cookie(src, now, rng);
        ct_eq16(&mac(&cookie, &[&m[..mac2_off]]), &m[mac2_off..mac2_off + 16])
    }

    /// Cookie reply: XAEAD(HASH(LABEL_COOKIE ‖ S_pub), nonce, cookie, AD = the message's mac1).
    pub fn create_reply(
        &mut self,
        m: &[u8],
        mac1_off: usize,
        src: SocketAddr,
        now: Duration,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> [u8; msg::COOKIE_REPLY_LEN] {
        let mut out = [0u8; msg::COOKIE_REPLY_LEN];
        msg::put_u32(&mut out, 0, msg::COOKIE_REPLY);
        // The reply is addressed to the sender index of the message it answers.
        out[cr::RECEIVER..cr::RECEIVER + 4].copy_from_slice(&m[4..8]);
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        out[cr::NONCE..cr::COOKIE].copy_from_slice(&nonce);
        let cookie = self.cookie(src, now, rng);
        let sealed = &mut out[cr::COOKIE..];
        sealed[..16].copy_from_slice(&cookie);
        crypto::xseal(&self.cookie_key, &nonce, &m[mac1_off..mac1_off + 16], sealed);
        out
    }
}

/// The sending side, per peer: adds mac1/mac2 and remembers cookies the peer gave us.
pub struct CookieState {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    last_mac1: Option<[u8; 16]>,
    cookie: Option<([u8; 16], Duration)>,
}

impl CookieState {
    pub fn new(peer: &PublicKey) -> Self {
        Self {
            mac1_key: hash(&[LABEL_MAC1, &peer.0]),
            cookie_key: hash(&[LABEL_COOKIE, &peer.0]),
            last_mac1: None,
            cookie: None,
        }
    }

    /// Fills mac1, and mac2 when we hold a fresh cookie (else mac2 stays zero).
    pub fn add_macs(&mut self, m: &mut [u8], mac1_off: usize, now: Duration) {
        let mac2_off = mac1_off + 16;
        let m1 = mac(&self.mac1_key, &[&m[..mac1_off]]);
        m[mac1_off..mac2_off].copy_from_slice(&m1);
        self.last_mac1 = Some(m1);
        let m2 = match self.cookie {
            Some((c, birth)) if now < birth + COOKIE_USE_LIMIT => mac(&c, &[&m[..mac2_off]]),
            _ => [0; 16],
        };
        m[mac2_off..mac2_off + 16].copy_from_slice(&m2);
    }

    /// Decrypts a cookie reply aimed at our last message; false (and no change) otherwise.
    pub fn consume_reply(&mut self, m: &[u8], now: Duration) -> bool {
        let Some(last) = self.last_mac1 else { return false };
        let nonce: [u8; 24] = msg::array_at(m, cr::NONCE);
        let mut sealed: [u8; 32] = msg::array_at(m, cr::COOKIE);
        if !crypto::xopen(&self.cookie_key, &nonce, &last, &mut sealed) {
            return false;
        }
        self.cookie = Some((msg::array_at(&sealed, 0), now));
        // One cookie reply per sent message, as the kernel does.
        self.last_mac1 = None;
        true
    }
}
