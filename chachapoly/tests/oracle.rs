//! Every output checked against independent implementations: ring's AEAD (BoringSSL assembly)
//! and RustCrypto's Poly1305, plus the RFC 8439 vectors.

use proptest::prelude::*;
use ring::aead;
use wgmesh_chachapoly::{poly1305, supported, ChaChaPoly, TAG_LEN};

/// On a CPU without the features the crate must refuse to build a key; the oracle tests
/// then have nothing to compare (the engine keeps ring there).
fn available() -> bool {
    if !supported() {
        assert!(ChaChaPoly::new(&[7; 32]).is_none());
        eprintln!("this CPU lacks AVX-512 F/VL/BW/IFMA: only the refusal was checked");
    }
    supported()
}

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    // A small xorshift: reproducible inputs without another dependency.
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn ring_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], text: &mut Vec<u8>) {
    let k = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key).unwrap());
    k.seal_in_place_append_tag(aead::Nonce::assume_unique_for_key(*nonce), aead::Aad::from(aad), text).unwrap();
}

fn rust_crypto_poly(key: &[u8; 32], msg: &[u8]) -> [u8; 16] {
    use poly1305::universal_hash::KeyInit;
    poly1305::Poly1305::new(key.into()).compute_unpadded(msg).into()
}

/// Seals with ours, checks ciphertext‖tag equal ring's, opens it back, and refuses a flipped bit.
fn check_against_ring(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], plain: &[u8]) {
    let ours = ChaChaPoly::new(key).unwrap();
    let mut text = plain.to_vec();
    let tag = ours.seal_in_place(nonce, aad, &mut text).unwrap();
    let mut expected = plain.to_vec();
    ring_seal(key, nonce, aad, &mut expected);
    assert_eq!(text, expected[..plain.len()], "ciphertext, {} bytes, aad {}", plain.len(), aad.len());
    assert_eq!(tag, expected[plain.len()..], "tag, {} bytes, aad {}", plain.len(), aad.len());

    let sealed = text.clone();
    if !text.is_empty() {
        let i = plain.len() / 2;
        text[i] ^= 0x10;
        let changed = text.clone();
        assert!(!ours.open_in_place(nonce, aad, &mut text, &tag), "flipped ciphertext bit accepted");
        assert_eq!(text, changed, "a refused text must be left as it was");
        text[i] ^= 0x10;
    }
    // A wrong bit anywhere in the tag, first and last byte included, is refused.
    for (byte, bit) in [(0, 0), (7, 7), (8, 0), (TAG_LEN - 1, 7), (plain.len() % TAG_LEN, plain.len() % 8)] {
        let mut bad = tag;
        bad[byte] ^= 1 << bit;
        assert!(!ours.open_in_place(nonce, aad, &mut text, &bad), "tag with byte {byte} bit {bit} flipped accepted");
    }
    assert_eq!(text, sealed);
    assert!(ours.open_in_place(nonce, aad, &mut text, &tag), "own tag refused, {} bytes", plain.len());
    assert_eq!(text, plain);
}

#[test]
fn rfc8439_aead_vector() {
    if !available() {
        return;
    }
    // RFC 8439 §2.8.2.
    let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
    let nonce = [0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47];
    let aad = [0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7];
    let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let mut text = plain.to_vec();
    let tag = ChaChaPoly::new(&key).unwrap().seal_in_place(&nonce, &aad, &mut text).unwrap();
    assert_eq!(hex(&text[..16]), "d31a8d34648e60db7b86afbc53ef7ec2");
    assert_eq!(hex(&text[text.len() - 2..]), "6116");
    assert_eq!(hex(&tag), "1ae10b594f09e26a7e902ecbd0600691");
}

#[test]
fn rfc8439_poly1305_vector() {
    if !available() {
        return;
    }
    // RFC 8439 §2.5.2.
    let key: [u8; 32] = unhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b").try_into().unwrap();
    let tag = poly1305(&key, b"Cryptographic Forum Research Group").unwrap();
    assert_eq!(hex(&tag), "a8061dc1305136c6c22b8baf0c0127a9");
}

#[test]
fn aead_equals_ring_at_every_length() {
    if !available() {
        return;
    }
    // Every length through three 16-block batches and the 8-block tails, with and without aad.
    for len in 0..=3200 {
        let key: [u8; 32] = bytes(len as u64, 32).try_into().unwrap();
        let nonce: [u8; 12] = bytes(len as u64 + 1, 12).try_into().unwrap();
        let aad = bytes(len as u64 + 2, len % 37);
        check_against_ring(&key, &nonce, &aad, &bytes(len as u64 + 3, len));
    }
    for len in [65535, 65536 + 17] {
        check_against_ring(&[0xa5; 32], &[9; 12], b"", &bytes(5, len));
    }
}

#[test]
fn long_aad_goes_through_the_vector_path_too() {
    if !available() {
        return;
    }
    // aad of 256 bytes and more is absorbed 16 blocks per step, and the text then reuses the
    // powers of r computed for it.
    for aad_len in [256, 383, 384, 400, 1000, 4111] {
        for len in [0, 15, 256, 1420, 3000] {
            let aad = bytes(aad_len as u64, aad_len);
            check_against_ring(&[0x17; 32], &[3; 12], &aad, &bytes(len as u64 + 9, len));
        }
    }
}

#[test]
fn a_flipped_aad_bit_is_refused() {
    if !available() {
        return;
    }
    let k = ChaChaPoly::new(&[0x21; 32]).unwrap();
    for (aad_len, len) in [(1, 0), (12, 64), (300, 1420)] {
        let mut aad = bytes(aad_len as u64, aad_len);
        let mut text = bytes(len as u64, len);
        let tag = k.seal_in_place(&[5; 12], &aad, &mut text).unwrap();
        let sealed = text.clone();
        aad[aad_len - 1] ^= 0x80;
        assert!(!k.open_in_place(&[5; 12], &aad, &mut text, &tag), "aad {aad_len}, text {len}");
        assert_eq!(text, sealed);
    }
}

#[test]
fn poly1305_equals_rustcrypto_on_hard_keys() {
    if !available() {
        return;
    }
    // The clamped maximum r with all-ones messages drives every limb and carry to its bound;
    // s of all ones wraps the final addition; zero r and zero s are the other corners.
    let mut keys = vec![[0xff; 32], [0; 32]];
    // r = 2^k (allowed by the clamp) makes the high halves of the products non-zero in a
    // structured way, unlike r = 1.
    for k in [2usize, 36, 66, 98, 123] {
        let mut key = [0u8; 32];
        key[k / 8] = 1 << (k % 8);
        keys.push(key);
    }
    let mut k = [0xff; 32];
    k[16..].fill(0);
    keys.push(k);
    for seed in 0..6 {
        keys.push(bytes(1000 + seed, 32).try_into().unwrap());
    }
    for key in keys {
        for len in (0..=2100).chain([4096, 4096 + 15, 9000]) {
            for msg in [vec![0xff; len], vec![0; len], bytes(len as u64, len)] {
                assert_eq!(poly1305(&key, &msg).unwrap(), rust_crypto_poly(&key, &msg), "{len} bytes, key {}", hex(&key));
            }
        }
    }
}

#[test]
fn poly1305_accumulator_near_the_modulus() {
    if !available() {
        return;
    }
    // With r = 1 and s = 0 the tag is (Σ blocks) mod p mod 2^128, so chosen blocks land the
    // accumulator on p + d: the final conditional subtraction at its edges, through the scalar
    // path (3, 7 blocks) and the vector path (19, 35, 131 blocks).
    let mut key = [0u8; 32];
    key[0] = 1;
    // 19, 35 and 131 blocks give an even number of 8-block groups, 27, 43, 51 an odd one.
    for n in [3u128, 7, 19, 27, 35, 43, 51, 131] {
        let q = n / 4; // n = 4q + 3 blocks add n·2^128 ≡ 5q + 3·2^128 (mod p)
        for d in -1i128..=4 {
            // One block m = 2^128 − 5 + d − 5q, all others zero: Σ ≡ 2^130 − 5 + d = p + d.
            let m = (u128::MAX - 4 - 5 * q).wrapping_add(d as u128);
            for at in [0, n as usize - 1] {
                let mut msg = vec![0u8; n as usize * 16];
                msg[at * 16..at * 16 + 16].copy_from_slice(&m.to_le_bytes());
                // p + d ≡ d; for d = −1 that is p − 1 = 2^130 − 6 ≡ 2^128 − 6 (mod 2^128).
                let want = if d < 0 { u128::MAX - 5 } else { d as u128 };
                let got = poly1305(&key, &msg).unwrap();
                assert_eq!(u128::from_le_bytes(got), want, "{n} blocks, d = {d}, block {at}");
                assert_eq!(got, rust_crypto_poly(&key, &msg));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn aead_equals_ring(key in any::<[u8; 32]>(), nonce in any::<[u8; 12]>(),
                        aad in proptest::collection::vec(any::<u8>(), 0..100),
                        plain in proptest::collection::vec(any::<u8>(), 0..5000)) {
        if available() {
            check_against_ring(&key, &nonce, &aad, &plain);
        }
    }

    #[test]
    fn poly1305_equals_rustcrypto(key in any::<[u8; 32]>(), msg in proptest::collection::vec(any::<u8>(), 0..3000)) {
        if available() {
            prop_assert_eq!(poly1305(&key, &msg).unwrap(), rust_crypto_poly(&key, &msg));
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}
