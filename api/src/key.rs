//! WireGuard public keys: 32 bytes, carried as standard base64 (44 characters, as `wg pubkey` prints).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::error::KeyError;

/// Length of a Curve25519 public key in bytes.
pub const KEY_LEN: usize = 32;

/// Length of the canonical base64 text of a key.
pub const KEY_TEXT_LEN: usize = 44;

/// Regular expression accepted by the CRD for `spec.publicKey`; the last character before `=`
/// is restricted so that only canonical encodings of exactly 32 bytes match.
pub const KEY_PATTERN: &str = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$";

/// A WireGuard public key. Public keys are not secret, so Display prints them in full.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The all-zero key is what an unconfigured device reports; it is never a real peer.
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; KEY_LEN]
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.len() != KEY_TEXT_LEN {
            return Err(KeyError::Length(text.len()));
        }
        // STANDARD rejects non-canonical trailing bits, so one key has exactly one spelling
        let bytes = STANDARD.decode(text).map_err(|_| KeyError::Base64)?;
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Base64)?;
        let key = PublicKey(arr);
        if key.is_zero() {
            return Err(KeyError::Zero);
        }
        Ok(key)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn parses_and_roundtrips_a_wg_key() {
        let key: PublicKey = GOOD.parse().unwrap();
        assert_eq!(key.to_string(), GOOD);
    }

    #[test]
    fn rejects_wrong_length_bad_alphabet_non_canonical_and_zero() {
        assert_eq!("abc".parse::<PublicKey>(), Err(KeyError::Length(3)));
        let bad_alphabet = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8D*=";
        assert_eq!(bad_alphabet.parse::<PublicKey>(), Err(KeyError::Base64));
        // last significant char 'h' leaves non-zero padding bits: a different spelling of some key
        let non_canonical = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dh=";
        assert_eq!(non_canonical.parse::<PublicKey>(), Err(KeyError::Base64));
        let zero = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert_eq!(zero.parse::<PublicKey>(), Err(KeyError::Zero));
    }

    #[test]
    fn pattern_matches_exactly_the_canonical_encodings() {
        // the pattern's final-character class must be the set of chars whose low 2 bits are zero
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let allowed: String = ALPHABET.iter().step_by(4).map(|&c| c as char).collect();
        assert_eq!(allowed, "AEIMQUYcgkosw048");
        assert!(KEY_PATTERN.contains(&format!("[{allowed}]")));
    }
}
