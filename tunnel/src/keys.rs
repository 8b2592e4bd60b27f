//! Curve25519 keys: clamping, the `wg` base64 form and the UAPI hex form, redacted Debug.

use crate::crypto::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::{CryptoRng, RngCore};
use std::fmt;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key is not valid base64 of 32 bytes (expected 44 characters ending in '=')")]
    Base64,
    #[error("key is not 64 hexadecimal characters")]
    Hex,
}

fn decode_base64(s: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let s = s.trim();
    let mut out = Zeroizing::new([0u8; 32]);
    // STANDARD rejects non-canonical trailing bits, as `wg` does.
    match STANDARD.decode_slice(s, &mut *out) {
        Ok(32) if s.len() == 44 => Ok(out),
        _ => Err(KeyError::Base64),
    }
}

/// A secret's hex, encoded on the stack into one exact allocation: no growth frees a copy.
fn secret_hex(b: &[u8; 32]) -> Zeroizing<String> {
    let mut buf = Zeroizing::new([0u8; 64]);
    let _ = hex::encode_to_slice(b, &mut *buf);
    let mut s = Zeroizing::new(String::with_capacity(64));
    s.push_str(std::str::from_utf8(&*buf).unwrap_or_default());
    s
}

fn decode_hex(s: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let mut out = Zeroizing::new([0u8; 32]);
    if s.len() != 64 || hex::decode_to_slice(s, &mut *out).is_err() {
        return Err(KeyError::Hex);
    }
    Ok(out)
}

/// A peer's static public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_base64(s).map(|b| Self(*b))
    }
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        decode_hex(s).map(|b| Self(*b))
    }
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// A static private key, clamped on creation so it prints the way `wg` shows it.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

fn clamp(mut b: [u8; 32]) -> [u8; 32] {
    b[0] &= 248;
    b[31] = (b[31] & 127) | 64;
    b
}

impl PrivateKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let b = Zeroizing::new(clamp(bytes));
        Self(StaticSecret::from(*b))
    }
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut b = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *b);
        Self::from_bytes(*b)
    }
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_base64(s).map(|b| Self::from_bytes(*b))
    }
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        decode_hex(s).map(|b| Self::from_bytes(*b))
    }
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_bytes()))
    }
    pub fn to_hex(&self) -> Zeroizing<String> {
        secret_hex(self.0.as_bytes())
    }
    pub fn public_key(&self) -> PublicKey {
        PublicKey(DalekPublic::from(&self.0).to_bytes())
    }
    /// DH(self, peer); `None` when the result is all zero, i.e. the peer key is of low order.
    pub fn dh(&self, peer: &[u8; 32]) -> Option<Secret> {
        let shared = self.0.diffie_hellman(&DalekPublic::from(*peer));
        shared.was_contributory().then(|| Zeroizing::new(shared.to_bytes()))
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}
impl Eq for PrivateKey {}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// The optional symmetric key mixed in at step psk2; all zero means "none".
#[derive(Clone, Default)]
pub struct PresharedKey(pub Zeroizing<[u8; 32]>);

impl PresharedKey {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(Zeroizing::new(b))
    }
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_base64(s).map(Self)
    }
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        decode_hex(s).map(Self)
    }
    pub fn to_hex(&self) -> Zeroizing<String> {
        secret_hex(&self.0)
    }
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}
