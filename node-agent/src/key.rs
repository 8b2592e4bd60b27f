//! The node's WireGuard private key: generated on first start, stored 0600 with an atomic
//! write, reused across restarts. Only the public key leaves this module in readable form.

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use wgmesh_api::PublicKey;
use zeroize::{Zeroize, Zeroizing};

use crate::atomic;

/// Default location of the private key on the host.
pub const DEFAULT_PRIVATE_KEY_PATH: &str = "/var/lib/wgmesh/private.key";

/// Why the key could not be loaded or stored. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read private key {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write private key {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("private key file {0} does not hold a base64 WireGuard key (as `wg genkey` writes); fix or remove it to generate a new key")]
    Malformed(PathBuf),
}

/// A 32-byte secret as lowercase hex, on the stack and wiped on drop (`hex::encode` collects
/// into a growing String and frees unwiped copies on the way).
pub struct SecretHex(Zeroizing<[u8; 64]>);

impl SecretHex {
    pub fn as_str(&self) -> &str {
        // encode_to_slice wrote only ASCII hex digits
        std::str::from_utf8(&self.0[..]).unwrap_or_default()
    }
}

pub fn secret_hex(bytes: &[u8; 32]) -> SecretHex {
    let mut out = Zeroizing::new([0u8; 64]);
    // 64 bytes of room for 32 bytes: the only error (a wrong length) cannot happen
    let _ = hex::encode_to_slice(bytes, &mut out[..]);
    SecretHex(out)
}

/// Bytes that may hold key material (UAPI requests and replies). Grows by moving into a larger
/// buffer and wiping the old one: a `Zeroizing<String>` wipes only its last buffer, and each
/// growth before that leaves an unwiped copy in freed memory.
#[derive(Default)]
pub struct SecretText(Zeroizing<Vec<u8>>);

impl SecretText {
    pub fn with_capacity(n: usize) -> Self {
        SecretText(Zeroizing::new(Vec::with_capacity(n)))
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.0.capacity() - self.0.len() < bytes.len() {
            let want = (self.0.len() + bytes.len()).max(2 * self.0.capacity()).max(256);
            let mut bigger = Zeroizing::new(Vec::with_capacity(want));
            bigger.extend_from_slice(&self.0);
            // the old buffer, now in `bigger`, is wiped when it drops here
            std::mem::swap(&mut self.0, &mut bigger);
        }
        self.0.extend_from_slice(bytes);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn truncate(&mut self, len: usize) {
        // truncate leaves the cut bytes in spare capacity, which the final wipe covers
        self.0.truncate(len);
    }

    /// The text, moved out without a copy; `None` (and wiped) if it is not UTF-8.
    pub fn into_string(mut self) -> Option<Zeroizing<String>> {
        match String::from_utf8(std::mem::take(&mut *self.0)) {
            Ok(s) => Some(Zeroizing::new(s)),
            Err(e) => {
                e.into_bytes().zeroize();
                None
            }
        }
    }
}

impl fmt::Write for SecretText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretText(<{} bytes redacted>)", self.0.len())
    }
}

/// A Curve25519 private key, clamped as `wg genkey` prints it; zeroed on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(Zeroizing<[u8; 32]>);

impl PrivateKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut bytes[..]);
        clamp(&mut bytes);
        PrivateKey(bytes)
    }

    /// Parses the base64 text of a key file.
    pub fn from_base64(text: &str) -> Option<Self> {
        let mut raw = Zeroizing::new(STANDARD.decode(text.trim()).ok()?);
        if raw.len() != 32 {
            return None;
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&raw[..]);
        raw.zeroize();
        if bytes.iter().all(|b| *b == 0) {
            return None;
        }
        clamp(&mut bytes);
        Some(PrivateKey(bytes))
    }

    /// Wraps raw bytes (clamped).
    pub fn from_bytes(mut raw: [u8; 32]) -> Self {
        let mut bytes = Zeroizing::new(raw);
        raw.zeroize();
        clamp(&mut bytes);
        PrivateKey(bytes)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        public_key_of(&self.0)
    }

    /// Lowercase hex for the UAPI `private_key=` line.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(secret_hex(&self.0).as_str().to_owned())
    }
}

/// The public key of raw private key bytes (as read from an engine's `get=1`).
pub fn public_key_of(private: &[u8; 32]) -> PublicKey {
    let secret = x25519_dalek::StaticSecret::from(*private);
    PublicKey::from_bytes(x25519_dalek::PublicKey::from(&secret).to_bytes())
}

// the engine clamps too; clamping here keeps the file identical to `wg genkey` output
fn clamp(k: &mut [u8; 32]) {
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// Loads the key at `path`; a missing file is an error (never a new identity).
pub fn load(path: &Path) -> Result<PrivateKey, KeyError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.into(),
        source,
    })?);
    tighten_mode(path);
    let text = std::str::from_utf8(&bytes).map_err(|_| KeyError::Malformed(path.into()))?;
    PrivateKey::from_base64(text).ok_or_else(|| KeyError::Malformed(path.into()))
}

/// Loads the key at `path`, or generates and stores one if the file does not exist.
/// Returns the key and whether it was generated now.
pub fn load_or_create(path: &Path) -> Result<(PrivateKey, bool), KeyError> {
    match load(path) {
        Ok(key) => Ok((key, false)),
        Err(KeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let key = PrivateKey::generate();
            store(path, &key)?;
            Ok((key, true))
        }
        Err(e) => Err(e),
    }
}

/// Deliberate rotation: a fresh key replaces the one at `path` atomically (0600). A running
/// agent notices the new file, moves the engine to it keeping live sessions, and publishes
/// the new public key; peers switch to it with one handshake and lose no packet.
pub fn rotate(path: &Path) -> Result<PrivateKey, KeyError> {
    if let Err(source) = std::fs::metadata(path) {
        return Err(KeyError::Read {
            path: path.into(),
            source,
        });
    }
    let key = PrivateKey::generate();
    store(path, &key)?;
    Ok(key)
}

/// Identity of the key file's current content (a rotation writes a new inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// Writes `key` to `path` (0600, atomic), creating the directory 0700 if needed.
pub fn store(path: &Path, key: &PrivateKey) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        atomic::create_dir_all(dir, 0o700).map_err(err)?;
    }
    // 44 characters and a newline, in a wiped buffer of that size (a String that grew would
    // free its first copy unwiped)
    let mut text = Zeroizing::new([b'\n'; 45]);
    let n = STANDARD.encode_slice(&key.0[..], &mut text[..44]).map_err(|e| err(std::io::Error::other(e)))?;
    atomic::write(path, &text[..=n], 0o600).map_err(err)
}

// a key file someone made group- or world-readable is repaired rather than refused
fn tighten_mode(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "private key file was readable by others; setting mode 0600");
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_with_mode_0600() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("sub/private.key");
        let (k1, created) = load_or_create(&p).expect("create");
        assert!(created);
        let (k2, created) = load_or_create(&p).expect("reuse");
        assert!(!created);
        assert_eq!(k1, k2);
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(p.parent().expect("dir"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
    }

    #[test]
    fn rotation_replaces_the_key_0600_and_changes_the_stamp() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("private.key");
        assert!(
            matches!(rotate(&p), Err(KeyError::Read { .. })),
            "nothing to rotate yet"
        );
        let (k1, _) = load_or_create(&p).expect("create");
        let before = FileStamp::of(&p);
        let k2 = rotate(&p).expect("rotate");
        assert_ne!(k1, k2);
        assert_ne!(FileStamp::of(&p), before);
        let (k3, created) = load_or_create(&p).expect("load");
        assert!(!created);
        assert_eq!(k3, k2, "the rotated key is what the file holds");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn matches_wg_pubkey_and_never_prints_the_secret() {
        // RFC 7748 §6.1 Alice's key pair (clamping does not change this private key's public key)
        let sk = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .expect("hex");
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&sk);
        let k = PrivateKey::from_bytes(raw);
        assert_eq!(
            hex::encode(k.public_key().as_bytes()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert_eq!(format!("{k:?}"), "PrivateKey(<redacted>)");
    }

    #[test]
    fn malformed_file_is_an_error_not_a_silent_new_identity() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("k");
        std::fs::write(&p, "not a key").expect("write");
        assert!(matches!(load_or_create(&p), Err(KeyError::Malformed(_))));
        std::fs::write(&p, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").expect("write");
        assert!(matches!(load_or_create(&p), Err(KeyError::Malformed(_))));
        // a world-readable key is repaired
        let good = PrivateKey::generate();
        store(&p, &good).expect("store");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let (k, _) = load_or_create(&p).expect("load");
        assert_eq!(k, good);
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
