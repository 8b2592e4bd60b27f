//! Preshared keys from Secrets: `presharedKeySecretRef` names a key in a Secret's `data` whose
//! value is the base64 text `wg genpsk` prints (so in the API object it is base64 twice: once
//! by us, once by Kubernetes for `data`). Values are never logged and are zeroized.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use wgmesh_api::{SecretKeyRef, WireGuardPeer};
use zeroize::{Zeroize, Zeroizing};

use crate::uapi_client::Secret32;

/// Why a peer's preshared key is not available. Never carries the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PskError {
    #[error("not read (only `--source kubernetes` reads Secrets)")]
    NotRead,
    #[error("the Secret does not exist")]
    SecretNotFound,
    #[error("reading the Secret is forbidden: the agent needs `get` on secrets in that namespace")]
    Forbidden,
    #[error("cannot read the Secret: {0}")]
    Api(String),
    #[error("the Secret has no such key in its data")]
    KeyMissing,
    #[error("the value is not base64 (expected the output of `wg genpsk`)")]
    NotBase64,
    #[error("the value decodes to {0} bytes, not 32")]
    WrongLength(usize),
    #[error("the value is all zeros, which WireGuard reads as no preshared key")]
    Zero,
}

/// A `SecretKeyRef` as a map key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretKeyId {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl From<&SecretKeyRef> for SecretKeyId {
    fn from(r: &SecretKeyRef) -> Self {
        SecretKeyId {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            key: r.key.clone(),
        }
    }
}

impl SecretKeyId {
    /// The Secret (namespace, name) this key lives in.
    pub fn secret(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

/// Preshared keys by reference, as last read (or why they could not be).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresharedKeys(pub BTreeMap<SecretKeyId, Result<Secret32, PskError>>);

impl PresharedKeys {
    pub fn lookup(&self, r: &SecretKeyRef) -> Result<Secret32, PskError> {
        self.0
            .get(&SecretKeyId::from(r))
            .cloned()
            .unwrap_or(Err(PskError::NotRead))
    }
}

/// Parses one Secret value (already decoded from the API's `data` base64): base64 of 32 bytes,
/// surrounding whitespace allowed (`wg genpsk > file` leaves a newline).
pub fn parse_psk(value: &[u8]) -> Result<Secret32, PskError> {
    let raw = Zeroizing::new(
        STANDARD
            .decode(value.trim_ascii())
            .map_err(|_| PskError::NotBase64)?,
    );
    if raw.len() != 32 {
        return Err(PskError::WrongLength(raw.len()));
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&raw);
    if out.iter().all(|b| *b == 0) {
        return Err(PskError::Zero);
    }
    Ok(Secret32(out))
}

/// The key `key` of a fetched Secret.
pub fn psk_from_secret(secret: &Secret, key: &str) -> Result<Secret32, PskError> {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or(PskError::KeyMissing)?;
    parse_psk(&value.0)
}

/// Wipes the values of a fetched Secret before it is dropped.
pub fn wipe(secret: &mut Secret) {
    for v in secret.data.iter_mut().flat_map(|d| d.values_mut()) {
        v.0.zeroize();
    }
    for v in secret.string_data.iter_mut().flat_map(|d| d.values_mut()) {
        v.zeroize();
    }
    // `kubectl apply` repeats the data in last-applied-configuration
    for v in secret
        .metadata
        .annotations
        .iter_mut()
        .flat_map(|a| a.values_mut())
    {
        v.zeroize();
    }
}

/// Every key the peers reference.
pub fn referenced<'a>(
    peers: impl IntoIterator<Item = &'a WireGuardPeer>,
) -> std::collections::BTreeSet<SecretKeyId> {
    peers
        .into_iter()
        .filter_map(|p| p.spec.preshared_key_secret_ref.as_ref())
        .map(SecretKeyId::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(key: &str, value: &[u8]) -> Secret {
        Secret {
            data: Some([(key.to_owned(), ByteString(value.to_vec()))].into()),
            ..Secret::default()
        }
    }

    #[test]
    fn good_key_with_and_without_newline() {
        let text = STANDARD.encode([9u8; 32]);
        let k = parse_psk(text.as_bytes()).expect("psk");
        assert_eq!(*k.0, [9u8; 32]);
        let k = parse_psk(format!("{text}\n").as_bytes()).expect("psk");
        assert_eq!(*k.0, [9u8; 32]);
        assert_eq!(format!("{k:?}"), "<redacted>");
    }

    #[test]
    fn wrong_length_not_base64_and_zero_are_rejected() {
        assert_eq!(
            parse_psk(STANDARD.encode([9u8; 16]).as_bytes()),
            Err(PskError::WrongLength(16))
        );
        assert_eq!(
            parse_psk(STANDARD.encode([9u8; 33]).as_bytes()),
            Err(PskError::WrongLength(33))
        );
        assert_eq!(parse_psk(b""), Err(PskError::WrongLength(0)));
        assert_eq!(parse_psk(b"not base64!"), Err(PskError::NotBase64));
        // the raw 32 bytes instead of their base64 text
        assert_eq!(parse_psk(&[0xaau8; 32]), Err(PskError::NotBase64));
        assert_eq!(
            parse_psk(STANDARD.encode([0u8; 32]).as_bytes()),
            Err(PskError::Zero)
        );
    }

    proptest::proptest! {
        // Secret values are written by users: any bytes are refused or accepted without a
        // panic, and only the canonical base64 text of a key (plus surrounding whitespace) is
        // accepted, as that key.
        #[test]
        fn any_value_is_refused_or_is_the_text_of_the_key(value in proptest::prop_oneof![
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            // near-keys: base64 characters, padding and whitespace around the 44 of a key
            proptest::strategy::Strategy::prop_map("[ \t\n\x0b\x0cA-Za-z0-9+/=]{40,50}", String::into_bytes),
        ]) {
            if let Ok(k) = parse_psk(&value) {
                let canonical = STANDARD.encode(*k.0);
                proptest::prop_assert_eq!(canonical.as_bytes(), value.trim_ascii());
            }
        }

        #[test]
        fn a_changed_character_is_refused_or_is_another_key(key in proptest::prelude::any::<[u8; 32]>(), at in 0usize..44, c in "[A-Za-z0-9+/=]") {
            // Base64 has several texts for some byte strings (the unused low bits of the last
            // character); only the canonical one may be accepted.
            let mut text = STANDARD.encode(key).into_bytes();
            text[at] = c.as_bytes()[0];
            if let Ok(k) = parse_psk(&text) {
                proptest::prop_assert_eq!(STANDARD.encode(*k.0).into_bytes(), text);
            }
        }

        #[test]
        fn every_nonzero_key_is_read_back(key in proptest::prelude::any::<[u8; 32]>(), pad in "[ \t\r\n]{0,3}") {
            proptest::prop_assume!(key.iter().any(|b| *b != 0));
            let text = format!("{pad}{}{pad}", STANDARD.encode(key));
            proptest::prop_assert_eq!(parse_psk(text.as_bytes()).map(|k| *k.0), Ok(key));
        }
    }

    #[test]
    fn errors_never_carry_the_value() {
        let bad = b"c2VjcmV0c2VjcmV0";
        let e = parse_psk(bad).expect_err("16 bytes");
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    }

    #[test]
    fn reads_the_named_key_of_the_data() {
        let text = STANDARD.encode([4u8; 32]);
        let s = secret("presharedKey", text.as_bytes());
        assert_eq!(
            psk_from_secret(&s, "presharedKey").map(|k| *k.0),
            Ok([4u8; 32])
        );
        assert_eq!(psk_from_secret(&s, "other"), Err(PskError::KeyMissing));
        assert_eq!(
            psk_from_secret(&Secret::default(), "presharedKey"),
            Err(PskError::KeyMissing)
        );
        let mut s = s;
        wipe(&mut s);
        let wiped = s.data.as_ref().and_then(|d| d.get("presharedKey"));
        assert!(wiped.is_none_or(|v| v.0.iter().all(|b| *b == 0)));
    }

    #[test]
    fn lookup_of_an_unread_reference() {
        let r = SecretKeyRef {
            namespace: "ns".into(),
            name: "s".into(),
            key: "k".into(),
        };
        assert_eq!(PresharedKeys::default().lookup(&r), Err(PskError::NotRead));
        let mut m = PresharedKeys::default();
        m.0.insert(SecretKeyId::from(&r), Ok(Secret32(Zeroizing::new([1; 32]))));
        assert_eq!(m.lookup(&r).map(|k| *k.0), Ok([1u8; 32]));
    }
}
