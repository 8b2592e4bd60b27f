//! Our AVX-512 ChaCha20-Poly1305 (chachapoly/) against independent implementations on
//! arbitrary keys, nonces, aad and texts: sealing equals ring's byte for byte, opening accepts
//! exactly what ring accepts and leaves refused texts untouched, and Poly1305 alone equals
//! RustCrypto's. On a CPU without the features there is nothing to compare.
#![no_main]
use libfuzzer_sys::fuzz_target;
use poly1305::universal_hash::KeyInit;
use ring::aead;
use wgmesh_chachapoly::{poly1305 as our_poly1305, ChaChaPoly};

fuzz_target!(|data: &[u8]| {
    if data.len() < 45 {
        return;
    }
    let key: [u8; 32] = data[..32].try_into().unwrap();
    let nonce: [u8; 12] = data[32..44].try_into().unwrap();
    let rest = &data[45..];
    let (aad, text) = rest.split_at((data[44] as usize).min(rest.len()));
    let Some(ours) = ChaChaPoly::new(&key) else { return };
    let theirs = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &key).unwrap());
    let n = || aead::Nonce::assume_unique_for_key(nonce);

    // Seal: identical ciphertext and tag.
    let mut a = text.to_vec();
    let tag = ours.seal_in_place(&nonce, aad, &mut a).unwrap();
    let mut b = text.to_vec();
    let t = theirs.seal_in_place_separate_tag(n(), aead::Aad::from(aad), &mut b).unwrap();
    assert_eq!(a, b);
    assert_eq!(&tag[..], t.as_ref());
    assert!(ours.open_in_place(&nonce, aad, &mut a, &tag));
    assert_eq!(a, text);

    // Open the input itself as ciphertext‖tag: same verdict as ring, refused texts untouched.
    if text.len() >= 16 {
        let (ct, tg) = text.split_at(text.len() - 16);
        let mut a = ct.to_vec();
        let ok = ours.open_in_place(&nonce, aad, &mut a, tg.try_into().unwrap());
        let mut b = text.to_vec();
        let theirs_ok = theirs.open_in_place(n(), aead::Aad::from(aad), &mut b).is_ok();
        assert_eq!(ok, theirs_ok);
        if !ok {
            assert_eq!(a, ct);
        }
    }

    // Poly1305 alone, with the first 32 bytes as its one-time key.
    let want: [u8; 16] = poly1305::Poly1305::new((&key).into()).compute_unpadded(rest).into();
    assert_eq!(our_poly1305(&key, rest).unwrap(), want);
});
