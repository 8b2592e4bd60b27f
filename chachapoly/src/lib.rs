//! ChaCha20-Poly1305 (RFC 8439) for x86-64 CPUs with AVX-512 (F, VL, BW) and AVX-512 IFMA.
//!
//! ChaCha20 runs 16 (or 8) blocks side by side in vector registers; Poly1305 runs two chains
//! of 8 lanes (16 blocks per step) in radix 2^44 with the 52-bit multiply-add instructions. On CPUs without these
//! features [`ChaChaPoly::new`] returns `None` and the caller keeps its portable AEAD: this
//! crate is a faster implementation of the one cipher, not a second cipher.
//!
//! Why our own: on the machine of tunnel/PERF.md ring's AVX2 AEAD seals a 1420-byte packet
//! in ~1.16 µs while OpenSSL's AVX-512 code needs ~0.73 µs, but OpenSSL is reachable only
//! through EVP, and no maintained Rust crate has AVX-512 IFMA Poly1305. Every output is checked
//! against ring and RustCrypto's Poly1305 (tests/oracle.rs) and fuzzed (tunnel/fuzz `aead`).

#[cfg(target_arch = "x86_64")]
mod chacha;
#[cfg(target_arch = "x86_64")]
mod poly1305;

use zeroize::Zeroize;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// RFC 8439 §2.8: the 32-bit block counter starts at 1 for the text.
pub const MAX_TEXT_LEN: usize = ((1u64 << 38) - 64) as usize;

/// Whether this CPU has every feature the implementation uses.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512ifma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A ChaCha20-Poly1305 key, wiped on drop. Exists only where [`supported`] holds.
pub struct ChaChaPoly {
    key: [u32; 8],
}

impl Drop for ChaChaPoly {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl std::fmt::Debug for ChaChaPoly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChaChaPoly(<redacted>)")
    }
}

impl ChaChaPoly {
    /// `None` when the CPU lacks a feature (see [`supported`]).
    pub fn new(key: &[u8; KEY_LEN]) -> Option<Self> {
        if !supported() {
            return None;
        }
        let mut k = [0u32; 8];
        for (w, c) in k.iter_mut().zip(key.chunks_exact(4)) {
            *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Some(ChaChaPoly { key: k })
    }

    /// Encrypts `text` in place and returns the tag; `None` (text untouched) above
    /// [`MAX_TEXT_LEN`].
    pub fn seal_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], text: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        if text.len() > MAX_TEXT_LEN {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: a ChaChaPoly exists only when `supported()` found every feature.
            Some(unsafe { seal(&self.key, nonce, aad, text) })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (nonce, aad);
            unreachable!("ChaChaPoly::new returns None off x86-64")
        }
    }

    /// Checks the tag over `aad` and `text` (constant time) and only then decrypts in place.
    /// On `false` the text is left as it was.
    pub fn open_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], text: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        if text.len() > MAX_TEXT_LEN {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: as in seal_in_place.
            unsafe { open(&self.key, nonce, aad, text, tag) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (nonce, aad, tag);
            unreachable!("ChaChaPoly::new returns None off x86-64")
        }
    }
}

/// Poly1305 alone (RFC 8439 §2.5) with a one-time key; `None` where not [`supported`].
pub fn poly1305(key: &[u8; 32], msg: &[u8]) -> Option<[u8; 16]> {
    if !supported() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let mut p = poly1305::Poly1305::new(key);
        let full = msg.len() / 16 * 16;
        // SAFETY: supported() checked above.
        unsafe { p.blocks(&msg[..full]) };
        if full < msg.len() {
            p.partial(&msg[full..]);
        }
        Some(p.finish())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        unreachable!("supported() is false off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
fn nonce_words(nonce: &[u8; NONCE_LEN]) -> [u32; 3] {
    let w = |i: usize| u32::from_le_bytes([nonce[i], nonce[i + 1], nonce[i + 2], nonce[i + 3]]);
    [w(0), w(4), w(8)]
}

/// RFC 8439 §2.8: the MAC over aad, pad, ciphertext, pad, and both lengths.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512ifma")]
unsafe fn tag(poly_key: &[u8; 32], aad: &[u8], text: &[u8]) -> [u8; 16] {
    let mut p = poly1305::Poly1305::new(poly_key);
    for part in [aad, text] {
        let full = part.len() / 16 * 16;
        p.blocks(&part[..full]);
        if full < part.len() {
            let mut last = [0u8; 16];
            last[..part.len() - full].copy_from_slice(&part[full..]);
            p.blocks(&last);
        }
    }
    let mut lens = [0u8; 16];
    lens[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    lens[8..].copy_from_slice(&(text.len() as u64).to_le_bytes());
    p.blocks(&lens);
    p.finish()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512ifma")]
unsafe fn seal(key: &[u32; 8], nonce: &[u8; NONCE_LEN], aad: &[u8], text: &mut [u8]) -> [u8; TAG_LEN] {
    let st = chacha::State { key: *key, nonce: nonce_words(nonce) };
    let mut poly_key = [0u8; 32];
    chacha::apply(&st, text, |k, _| {
        poly_key = *k;
        true
    });
    let t = tag(&poly_key, aad, text);
    poly_key.zeroize();
    t
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512ifma")]
unsafe fn open(key: &[u32; 8], nonce: &[u8; NONCE_LEN], aad: &[u8], text: &mut [u8], expected: &[u8; TAG_LEN]) -> bool {
    use subtle::ConstantTimeEq;
    let st = chacha::State { key: *key, nonce: nonce_words(nonce) };
    // The tag is checked on the ciphertext before a byte of it is decrypted.
    // One 128-bit constant-time comparison: subtle's per-byte slice compare costs 16 calls.
    let expected = u128::from_le_bytes(*expected);
    chacha::apply(&st, text, |k, ct| bool::from(u128::from_le_bytes(tag(k, aad, ct)).ct_eq(&expected)))
}
