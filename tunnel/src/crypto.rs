//! The fixed primitives (whitepaper §5.4): BLAKE2s, HMAC-BLAKE2s, HKDF, ChaCha20-Poly1305 and
//! XChaCha20-Poly1305. No cipher agility: there is exactly one choice for each.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit as DigestKeyInit, Mac, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hmac::SimpleHmac;
use zeroize::Zeroizing;

pub const TAG_LEN: usize = 16;

/// A 32-byte secret that is wiped when dropped.
pub type Secret = Zeroizing<[u8; 32]>;

/// HASH(parts...) = BLAKE2s-256 over the concatenation.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// MAC(key, parts...) = keyed BLAKE2s with a 16-byte output (mac1, mac2 and cookies).
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // Keys here are always 16 or 32 bytes, which keyed BLAKE2s accepts.
    let Ok(mut m) = <Blake2sMac<U16> as DigestKeyInit>::new_from_slice(key) else { return [0; 16] };
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// HMAC-BLAKE2s (RFC 2104 with a 64-byte block), the building block of KDF.
fn hmac(key: &[u8], parts: &[&[u8]]) -> Secret {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <SimpleHmac<Blake2s256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        Mac::update(&mut m, p);
    }
    Zeroizing::new(m.finalize().into_bytes().into())
}

/// KDF_n(key, input) from the whitepaper: HKDF with HMAC-BLAKE2s, returning n 32-byte outputs.
pub fn kdf<const N: usize>(key: &[u8; 32], input: &[u8]) -> [Secret; N] {
    let t0 = hmac(key, &[input]);
    let mut out: [Secret; N] = core::array::from_fn(|_| Zeroizing::new([0u8; 32]));
    for i in 0..N {
        let counter = [i as u8 + 1];
        let ti = if i == 0 { hmac(&*t0, &[&counter]) } else { hmac(&*t0, &[&*out[i - 1], &counter]) };
        out[i] = ti;
    }
    out
}

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// A ChaCha20-Poly1305 key (RFC 7539), built once per session key. Where the CPU has AVX-512
/// IFMA, texts of [`VECTOR_MIN_LEN`] bytes and more go through ours (chachapoly/: ~1.6× ring's
/// at 1420 bytes, tunnel/PERF.md); shorter ones, and all texts elsewhere, through ring's
/// assembly (~3× the pure-Rust crate). One cipher either way, checked equal in tests.
pub struct Aead {
    vector: Option<wgmesh_chachapoly::ChaChaPoly>,
    ring: RingKey,
}

/// Below this ring is faster: our 8-block ChaCha20 step costs the same for 1 block as for 8
/// (`cargo bench -p wgmesh-chachapoly`: 64 B 293 vs 193 ns, 256 B 356 vs 321, 384 B 383 vs 410).
pub const VECTOR_MIN_LEN: usize = 320;

/// ring's key, wiped on drop; the moves while it is built may leave copies on the stack.
struct RingKey(std::mem::ManuallyDrop<ring::aead::LessSafeKey>);

impl Drop for RingKey {
    fn drop(&mut self) {
        // ring's keys do not zeroize: wipe the bytes (inline arrays, no heap) and never use them again.
        let p = (&mut *self.0 as *mut ring::aead::LessSafeKey).cast::<u8>();
        for i in 0..std::mem::size_of::<ring::aead::LessSafeKey>() {
            // SAFETY: within the key we own; it is not read or dropped afterwards.
            unsafe { std::ptr::write_volatile(p.add(i), 0) };
        }
    }
}

pub fn cipher(key: &[u8; 32]) -> Aead {
    Aead { vector: wgmesh_chachapoly::ChaChaPoly::new(key), ..ring_cipher(key) }
}

/// ring's AEAD for every length, whatever the CPU (the reference in tests).
pub fn ring_cipher(key: &[u8; 32]) -> Aead {
    let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key)
        .unwrap_or_else(|_| unreachable!("32-byte ChaCha20 key"));
    Aead { vector: None, ring: RingKey(std::mem::ManuallyDrop::new(ring::aead::LessSafeKey::new(unbound))) }
}

impl Aead {
    fn vector_for(&self, len: usize) -> Option<&wgmesh_chachapoly::ChaChaPoly> {
        self.vector.as_ref().filter(|_| len >= VECTOR_MIN_LEN)
    }
}

pub fn seal_with(cipher: &Aead, counter: u64, ad: &[u8], buf: &mut [u8]) {
    seal_nonce(cipher, &nonce(counter), ad, buf)
}

/// Opens ciphertext‖tag in place; on success the plaintext is `buf[..len - TAG_LEN]`.
pub fn open_with(cipher: &Aead, counter: u64, ad: &[u8], buf: &mut [u8]) -> bool {
    open_nonce(cipher, &nonce(counter), ad, buf)
}

/// RFC 7539 AEAD with an explicit 96-bit nonce (for known-answer tests).
pub fn seal_nonce(cipher: &Aead, nonce: &[u8; 12], ad: &[u8], buf: &mut [u8]) {
    let (text, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
    // Sealing only fails for inputs over 256 GiB, which a datagram cannot be; were it to,
    // zeros go out (failing the peer's check), never the plaintext.
    let t = match cipher.vector_for(text.len()) {
        Some(k) => k.seal_in_place(nonce, ad, text),
        None => {
            let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
            cipher.ring.0.seal_in_place_separate_tag(nonce, ring::aead::Aad::from(ad), text).ok().and_then(|t| t.as_ref().try_into().ok())
        }
    };
    match t {
        Some(t) => tag.copy_from_slice(&t),
        None => buf.fill(0),
    }
}

/// Both check the tag in constant time before touching the text.
pub fn open_nonce(cipher: &Aead, nonce: &[u8; 12], ad: &[u8], buf: &mut [u8]) -> bool {
    if buf.len() < TAG_LEN {
        return false;
    }
    if let Some(k) = cipher.vector_for(buf.len() - TAG_LEN) {
        let (text, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        k.open_in_place(nonce, ad, text, &t)
    } else {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        cipher.ring.0.open_in_place(nonce, ring::aead::Aad::from(ad), buf).is_ok()
    }
}

pub fn seal(key: &[u8; 32], counter: u64, ad: &[u8], buf: &mut [u8]) {
    seal_with(&cipher(key), counter, ad, buf)
}

pub fn open(key: &[u8; 32], counter: u64, ad: &[u8], buf: &mut [u8]) -> bool {
    open_with(&cipher(key), counter, ad, buf)
}

/// XChaCha20-Poly1305, used only for the cookie reply.
pub fn xseal(key: &[u8; 32], nonce: &[u8; 24], ad: &[u8], buf: &mut [u8]) {
    let (text, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
    let c = XChaCha20Poly1305::new(key.into());
    if let Ok(t) = c.encrypt_in_place_detached(XNonce::from_slice(nonce), ad, text) {
        tag.copy_from_slice(&t);
    }
}

pub fn xopen(key: &[u8; 32], nonce: &[u8; 24], ad: &[u8], buf: &mut [u8]) -> bool {
    if buf.len() < TAG_LEN {
        return false;
    }
    let (text, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
    let tag = Tag::clone_from_slice(tag);
    let c = XChaCha20Poly1305::new(key.into());
    c.decrypt_in_place_detached(XNonce::from_slice(nonce), ad, text, &tag).is_ok()
}
