//! Client side of the cross-platform UAPI protocol (wireguard.com/xplatform) on
//! /var/run/wireguard/IFNAME.sock: `get=1` parsed into [`DeviceState`], `set=1` with errno check.
//! The device's private key is turned into its public key while parsing and never kept.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wgmesh_api::{IpCidr, PublicKey};
use zeroize::Zeroizing;

use crate::key::{public_key_of, SecretText};

/// Directory where wireguard-go compatible engines put their sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// A reply larger than this is not a WireGuard device talking (130k allowed IPs is ~3 MiB).
const MAX_REPLY: usize = 64 << 20;

/// I/O deadline of one UAPI exchange.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connect waits for an engine whose accept queue is full (a wedged engine).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects without blocking for good: a plain connect waits as long as the engine's
/// accept queue stays full, and a wedged engine would stop the agent's loop with it.
fn connect(path: &Path) -> io::Result<UnixStream> {
    let addr = socket2::SockAddr::unix(path)?;
    let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
        s.set_nonblocking(true)?;
        match s.connect(&addr) {
            Ok(()) => {
                s.set_nonblocking(false)?;
                return Ok(s.into());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("the engine accepted no connection within {CONNECT_TIMEOUT:?}")))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Socket path of interface `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// Why a UAPI exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("UAPI I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("engine answered errno={0}")]
    Errno(i32),
    #[error("malformed UAPI reply: {0}")]
    Malformed(String),
}

/// Wrapper for secret 32-byte values that never prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret32(pub Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One peer as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: PublicKey,
    /// `None` when the engine reports the all-zero key (no PSK).
    pub preshared_key: Option<Secret32>,
    pub endpoint: Option<SocketAddr>,
    /// `None` means never.
    pub last_handshake: Option<SystemTime>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpCidr>,
}

/// What `get=1` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// Public key of the device's private key, if one is set.
    pub public_key: Option<PublicKey>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: BTreeMap<PublicKey, PeerState>,
}

fn hex32(v: &str) -> Option<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(v, &mut out[..]).ok()?;
    Some(out)
}

/// Parses the body of a `get=1` reply (without requiring the errno line; see [`check_errno`]).
/// Unknown keys are skipped so a newer engine does not break an older agent.
pub fn parse_get(text: &str) -> Result<DeviceState, UapiError> {
    let mut dev = DeviceState::default();
    let mut current: Option<PeerState> = None;
    let mut hs_sec: u64 = 0;
    let mut hs_nsec: u32 = 0;
    let finish = |p: Option<PeerState>, sec: u64, nsec: u32, dev: &mut DeviceState| {
        if let Some(mut p) = p {
            if sec != 0 || nsec != 0 {
                // a time SystemTime cannot hold is a broken reply, not a reason to panic
                let at = (nsec < 1_000_000_000)
                    .then(|| UNIX_EPOCH.checked_add(Duration::new(sec, nsec)))
                    .flatten()
                    .ok_or_else(|| {
                        UapiError::Malformed("last_handshake_time out of range".into())
                    })?;
                p.last_handshake = Some(at);
            }
            dev.peers.insert(p.public_key, p);
        }
        Ok::<(), UapiError>(())
    };
    let bad = |k: &str, v: &str| {
        // values may be keys: show only the key name and the length
        UapiError::Malformed(format!("bad value for {k} ({} bytes)", v.len()))
    };
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(UapiError::Malformed("line without '='".into()));
        };
        match k {
            "errno" => break,
            "private_key" => {
                let raw = hex32(v).ok_or_else(|| bad(k, v))?;
                dev.public_key = (raw.iter().any(|b| *b != 0)).then(|| public_key_of(&raw));
            }
            "listen_port" => dev.listen_port = v.parse().map_err(|_| bad(k, v))?,
            "fwmark" => dev.fwmark = v.parse().map_err(|_| bad(k, v))?,
            "public_key" => {
                finish(current.take(), hs_sec, hs_nsec, &mut dev)?;
                hs_sec = 0;
                hs_nsec = 0;
                let raw = hex32(v).ok_or_else(|| bad(k, v))?;
                current = Some(PeerState {
                    public_key: PublicKey::from_bytes(*raw),
                    preshared_key: None,
                    endpoint: None,
                    last_handshake: None,
                    tx_bytes: 0,
                    rx_bytes: 0,
                    persistent_keepalive: 0,
                    allowed_ips: Vec::new(),
                });
            }
            _ => {
                let Some(p) = current.as_mut() else {
                    continue;
                };
                match k {
                    "preshared_key" => {
                        let raw = hex32(v).ok_or_else(|| bad(k, v))?;
                        p.preshared_key = raw.iter().any(|b| *b != 0).then(|| Secret32(raw));
                    }
                    // an endpoint we cannot parse (a zone name) is treated as unknown
                    "endpoint" => p.endpoint = v.parse().ok(),
                    "last_handshake_time_sec" => hs_sec = v.parse().map_err(|_| bad(k, v))?,
                    "last_handshake_time_nsec" => hs_nsec = v.parse().map_err(|_| bad(k, v))?,
                    "tx_bytes" => p.tx_bytes = v.parse().map_err(|_| bad(k, v))?,
                    "rx_bytes" => p.rx_bytes = v.parse().map_err(|_| bad(k, v))?,
                    "persistent_keepalive_interval" => {
                        p.persistent_keepalive = v.parse().map_err(|_| bad(k, v))?
                    }
                    "allowed_ip" => p.allowed_ips.push(
                        v.parse()
                            .map_err(|_| UapiError::Malformed(format!("allowed_ip {v:?}")))?,
                    ),
                    _ => {}
                }
            }
        }
    }
    finish(current, hs_sec, hs_nsec, &mut dev)?;
    for p in dev.peers.values_mut() {
        p.allowed_ips.sort();
    }
    Ok(dev)
}

/// Finds the `errno=` line of a reply; anything but 0 is an error.
pub fn check_errno(text: &str) -> Result<(), UapiError> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("errno="))
        .ok_or_else(|| UapiError::Malformed("reply has no errno line".into()))?;
    match line.trim().parse::<i32>() {
        Ok(0) => Ok(()),
        Ok(n) => Err(UapiError::Errno(n)),
        Err(_) => Err(UapiError::Malformed("errno is not a number".into())),
    }
}

/// A connection-per-operation client, as `wg` does it.
#[derive(Clone, Debug)]
pub struct UapiClient {
    path: PathBuf,
}

impl UapiClient {
    pub fn new(ifname: &str) -> Self {
        UapiClient {
            path: socket_path(ifname),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if something accepts connections on the socket.
    pub fn alive(&self) -> bool {
        self.reachable().is_ok()
    }

    /// Why nothing accepts, if so: `TimedOut` when an engine holds the socket but its accept
    /// queue stays full.
    pub fn reachable(&self) -> io::Result<()> {
        connect(&self.path).map(drop)
    }

    fn exchange(&self, request: &[u8]) -> Result<Zeroizing<String>, UapiError> {
        let io_err = |source| UapiError::Io {
            path: self.path.clone(),
            source,
        };
        let mut s = connect(&self.path).map_err(|source| UapiError::Connect {
            path: self.path.clone(),
            source,
        })?;
        s.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
        s.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
        s.write_all(request).map_err(io_err)?;
        // The reply ends with its errno= line. Read unbuffered into wiped buffers: a `get`
        // reply carries the private key.
        let mut out = SecretText::with_capacity(4096);
        let mut chunk = Zeroizing::new([0u8; 4096]);
        // the current line starts at line_start and has no newline before `scanned`
        let (mut line_start, mut scanned) = (0, 0);
        loop {
            let n = match s.read(&mut chunk[..]) {
                Ok(0) => {
                    return Err(UapiError::Malformed(
                        "connection closed before the reply ended".into(),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e)),
            };
            out.push(&chunk[..n]);
            if out.as_bytes().len() > MAX_REPLY {
                return Err(UapiError::Malformed("reply too large".into()));
            }
            while let Some(nl) = out.as_bytes()[scanned..].iter().position(|b| *b == b'\n') {
                let end = scanned + nl + 1;
                if out.as_bytes()[line_start..].starts_with(b"errno=") {
                    out.truncate(end);
                    return out
                        .into_string()
                        .ok_or_else(|| UapiError::Malformed("reply is not UTF-8".into()));
                }
                (line_start, scanned) = (end, end);
            }
            scanned = out.as_bytes().len();
        }
    }

    /// `get=1`.
    pub fn get(&self) -> Result<DeviceState, UapiError> {
        let reply = self.exchange(b"get=1\n\n")?;
        check_errno(&reply)?;
        parse_get(&reply)
    }

    /// `set=1` with the given `key=value` lines (each ending in `\n`).
    pub fn set(&self, body: &str) -> Result<(), UapiError> {
        let mut req = Zeroizing::new(String::with_capacity(body.len() + 8));
        req.push_str("set=1\n");
        req.push_str(body);
        req.push('\n');
        let reply = self.exchange(req.as_bytes())?;
        check_errno(&reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PK_A: &str = "e2f9c7d1b3a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f";

    #[test]
    fn an_engine_that_accepts_nothing_is_not_waited_for_forever() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("wg9.sock");
        // its accept queue full, as a wedged engine's fills tick by tick
        let _hung = crate::test_util::hung_listener(&path);
        let client = UapiClient { path };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send((client.alive(), client.get().err().map(|e| e.to_string()))));
        let (alive, err) = rx.recv_timeout(Duration::from_secs(60)).expect("the client gave up instead of waiting for good");
        assert!(!alive);
        let err = err.expect("get failed");
        assert!(err.contains("cannot connect") && err.contains("accepted no connection"), "{err}");
    }

    #[test]
    fn parses_a_get_reply_in_wireguard_go_order() {
        let sk = "a8".repeat(32);
        let text = format!(
            "private_key={sk}\nlisten_port=51820\nfwmark=51820\npublic_key={PK_A}\npreshared_key={zero}\nprotocol_version=1\nendpoint=192.0.2.1:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\nallowed_ip=10.244.2.0/24\nallowed_ip=10.0.0.0/8\nerrno=0\n\n",
            zero = "0".repeat(64)
        );
        check_errno(&text).expect("errno");
        let d = parse_get(&text).expect("parse");
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.fwmark, 51820);
        assert_eq!(d.public_key, Some(public_key_of(&[0xa8u8; 32])));
        let p = d.peers.values().next().expect("peer");
        assert_eq!(hex::encode(p.public_key.as_bytes()), PK_A);
        assert_eq!(p.preshared_key, None);
        assert_eq!(p.endpoint, Some("192.0.2.1:51820".parse().expect("ep")));
        assert_eq!(
            p.last_handshake,
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!(
            (p.tx_bytes, p.rx_bytes, p.persistent_keepalive),
            (10, 20, 25)
        );
        let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["10.0.0.0/8", "10.244.2.0/24"]);
    }

    #[test]
    fn never_handshaked_unset_key_and_errors() {
        let text = format!(
            "public_key={PK_A}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\nerrno=0\n\n"
        );
        let d = parse_get(&text).expect("parse");
        assert_eq!(d.public_key, None);
        assert_eq!(
            d.peers.values().next().map(|p| p.last_handshake),
            Some(None)
        );
        assert!(matches!(
            check_errno("errno=-22\n\n"),
            Err(UapiError::Errno(-22))
        ));
        assert!(check_errno("nothing\n").is_err());
        assert!(parse_get("garbage\n").is_err());
        // the error for a bad key never echoes it
        let e = parse_get("private_key=zz-secret-zz\n")
            .expect_err("bad key")
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn a_handshake_time_out_of_range_is_an_error_not_a_panic() {
        // SystemTime cannot hold u64::MAX seconds (that panicked); nanoseconds of 10^9 or
        // more, which no engine sends, are refused rather than carried into the seconds.
        for (sec, nsec) in [
            (u64::MAX, 0u64),
            (1, 1_000_000_000),
            (u64::MAX, u64::from(u32::MAX)),
        ] {
            let text = format!(
                "public_key={PK_A}\nlast_handshake_time_sec={sec}\nlast_handshake_time_nsec={nsec}\nerrno=0\n\n"
            );
            assert!(
                matches!(parse_get(&text), Err(UapiError::Malformed(_))),
                "{sec}.{nsec}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        // The engine on the socket may be another implementation, or a broken one: any reply
        // is parsed or refused, never a panic. Values are typical, extreme or anything.
        #[test]
        fn any_reply_is_parsed_or_refused(lines in proptest::collection::vec((0usize..13, 0usize..4, "\\PC{0,40}"), 0..12)) {
            const KEYS: [&str; 13] = ["private_key", "listen_port", "fwmark", "public_key",
                "preshared_key", "endpoint", "last_handshake_time_sec", "last_handshake_time_nsec",
                "tx_bytes", "rx_bytes", "persistent_keepalive_interval", "allowed_ip", "protocol_version"];
            let mut text = format!("public_key={PK_A}\n");
            for (k, choice, junk) in &lines {
                let key = KEYS[*k];
                let hex = key.ends_with("_key");
                let value = match (choice, hex, key) {
                    (0, true, _) => "ab".repeat(32),
                    (0, _, "endpoint") => "[::1]:1".into(),
                    (0, _, "allowed_ip") => "10.0.0.0/8".into(),
                    (0, ..) => "5".into(),
                    (1, true, _) => "0".repeat(64),
                    (1, _, "allowed_ip") => "::/0".into(),
                    (1, _, "last_handshake_time_nsec") => "4294967295".into(),
                    (1, ..) => "18446744073709551615".into(),
                    (2, ..) => "0".into(),
                    _ => junk.clone(),
                };
                text.push_str(&format!("{key}={value}\n"));
            }
            let _ = parse_get(&text);
        }
    }
}
