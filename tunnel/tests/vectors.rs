//! Known-answer tests through our own wrappers: RFC 7539 (ChaCha20-Poly1305), the XChaCha20
//! draft, RFC 7693 (BLAKE2s), RFC 7748 (X25519), and the WireGuard construction hashes.

use wgmesh_tunnel::crypto;
use wgmesh_tunnel::keys::{PresharedKey, PrivateKey, PublicKey};
use wgmesh_tunnel::noise::initial_chain;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).unwrap()
}

fn a32(s: &str) -> [u8; 32] {
    h(s).try_into().unwrap()
}

const SUNSCREEN: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";

#[test]
fn chacha20poly1305_rfc7539_2_8_2() {
    let key = a32("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    let nonce: [u8; 12] = h("070000004041424344454647").try_into().unwrap();
    let aad = h("50515253c0c1c2c3c4c5c6c7");
    let want = h("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
        3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
        92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
        3ff4def08e4b7a9de576d26586cec64b6116 1ae10b594f09e26a7e902ecbd0600691");
    // The engine's choice for this CPU, and ring's (the fallback elsewhere).
    for c in [crypto::cipher(&key), crypto::ring_cipher(&key)] {
        let mut buf = SUNSCREEN.to_vec();
        buf.extend([0u8; 16]);
        crypto::seal_nonce(&c, &nonce, &aad, &mut buf);
        assert_eq!(buf, want);
        assert!(crypto::open_nonce(&c, &nonce, &aad, &mut buf));
        assert_eq!(&buf[..SUNSCREEN.len()], SUNSCREEN);
    }
}

#[test]
fn engine_aead_and_ring_interoperate_at_every_datagram_size() {
    // What one peer seals with its CPU's AEAD the other opens with ring's, and back.
    let key = [0x3c; 32];
    let (ours, ring) = (crypto::cipher(&key), crypto::ring_cipher(&key));
    for len in (0..=1500).chain([9000, 65535 - 32]) {
        let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        for (seal, open) in [(&ours, &ring), (&ring, &ours)] {
            let mut buf = plain.clone();
            buf.extend([0u8; 16]);
            crypto::seal_with(seal, len as u64, b"", &mut buf);
            assert!(crypto::open_with(open, len as u64, b"", &mut buf), "{len} bytes");
            assert_eq!(buf[..len], plain[..]);
        }
    }
}

#[test]
fn transport_nonce_is_four_zero_bytes_and_le_counter() {
    // The counter form must equal the explicit nonce 00000000 ‖ LE64(counter).
    let key = [7u8; 32];
    let c = crypto::cipher(&key);
    let mut a = vec![1u8; 40];
    let mut b = a.clone();
    crypto::seal_with(&c, 0x0807060504030201, b"ad", &mut a);
    crypto::seal_nonce(&c, &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], b"ad", &mut b);
    assert_eq!(a, b);
    assert!(!crypto::open_with(&c, 0x0807060504030202, b"ad", &mut a.clone()), "wrong counter fails");
    let mut t = a.clone();
    t[3] ^= 1;
    assert!(!crypto::open_with(&c, 0x0807060504030201, b"ad", &mut t), "tampered ciphertext fails");
    assert!(crypto::open_with(&c, 0x0807060504030201, b"ad", &mut a));
}

#[test]
fn xchacha20poly1305_draft_a_3_1() {
    let key = a32("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    let nonce: [u8; 24] = h("404142434445464748494a4b4c4d4e4f5051525354555657").try_into().unwrap();
    let aad = h("50515253c0c1c2c3c4c5c6c7");
    let mut buf = SUNSCREEN.to_vec();
    buf.extend([0u8; 16]);
    crypto::xseal(&key, &nonce, &aad, &mut buf);
    let want = h("bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
        731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
        2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
        21f9664c97637da9768812f615c68b13b52e c0875924c1c7987947deafd8780acf49");
    assert_eq!(buf, want);
    assert!(crypto::xopen(&key, &nonce, &aad, &mut buf));
}

#[test]
fn blake2s_rfc7693() {
    assert_eq!(
        hex::encode(crypto::hash(&[b"abc"])),
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    );
    // Split input hashes the same as joined input.
    assert_eq!(crypto::hash(&[b"a", b"bc"]), crypto::hash(&[b"abc"]));
}

#[test]
fn x25519_rfc7748() {
    // §5.2: one scalar multiplication.
    let k = PrivateKey::from_bytes(a32("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"));
    let u = a32("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
    assert_eq!(hex::encode(*k.dh(&u).unwrap()), "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
    // §6.1: Diffie-Hellman.
    let alice = PrivateKey::from_bytes(a32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
    let bob = PrivateKey::from_bytes(a32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
    assert_eq!(alice.public_key().to_hex(), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    assert_eq!(bob.public_key().to_hex(), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    let shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
    assert_eq!(hex::encode(*alice.dh(&bob.public_key().0).unwrap()), shared);
    assert_eq!(hex::encode(*bob.dh(&alice.public_key().0).unwrap()), shared);
    // A low-order point gives an all-zero result, which we refuse.
    assert!(alice.dh(&[0u8; 32]).is_none());
}

#[test]
fn construction_and_identifier_hashes() {
    let (c0, h0) = initial_chain();
    assert_eq!(hex::encode(c0), "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36");
    assert_eq!(hex::encode(h0), "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3");
}

#[test]
fn key_encodings_and_clamping() {
    // A private key is clamped on storage: `wg` shows a key starting with '/' back with '+'.
    let k = PrivateKey::from_base64("/DOE4TKtAqVsePRVR+5AA43HkAK5DSntkOCO7nYq51U=").unwrap();
    assert_eq!(k.to_base64().as_str(), "+DOE4TKtAqVsePRVR+5AA43HkAK5DSntkOCO7nYq51U=");
    let hexed = k.to_hex();
    assert_eq!(PrivateKey::from_hex(&hexed).unwrap(), k);
    let p = k.public_key();
    assert_eq!(PublicKey::from_base64(&p.to_base64()).unwrap(), p);
    assert_eq!(PublicKey::from_hex(&p.to_hex()).unwrap(), p);
    assert_eq!(p.to_hex(), p.to_hex().to_lowercase());
    // Bad input: wrong length, bad characters, non-canonical trailing bits.
    assert!(PublicKey::from_base64("abc").is_err());
    assert!(PublicKey::from_base64("!TOE4TKtAqVsePRVR+5AA43HkAK5DSntkOCO7nYq5xU=").is_err());
    assert!(PublicKey::from_base64("/TOE4TKtAqVsePRVR+5AA43HkAK5DSntkOCO7nYq5xV=").is_err());
    assert!(PublicKey::from_hex(&"g".repeat(64)).is_err());
    assert!(PublicKey::from_hex(&"a".repeat(63)).is_err());
    assert!(PresharedKey::from_hex(&"0".repeat(64)).unwrap().is_zero());
}

#[test]
fn secrets_are_redacted_in_debug() {
    let k = PrivateKey::from_bytes([3; 32]);
    let b64 = k.to_base64();
    let dbg = format!("{k:?}");
    assert!(!dbg.contains(b64.as_str()) && dbg.contains("redacted"));
    let psk = PresharedKey::from_bytes([4; 32]);
    assert!(!format!("{psk:?}").contains(&psk.to_hex()[..8]));
    let id = wgmesh_tunnel::noise::Identity::new(k.clone());
    assert!(!format!("{id:?}").contains(b64.as_str()));
}
