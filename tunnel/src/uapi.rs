//! The cross-platform configuration protocol (wireguard.com/xplatform): `get=1` / `set=1`
//! requests of `key=value` lines. Parsing validates a whole request before anything is
//! applied, so a bad line changes nothing.

use crate::allowed_ips::canonical;
use crate::device::{Clock, Device, Output};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use rand_core::{CryptoRng, RngCore};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use zeroize::Zeroizing;

/// UAPI errors travel as negative errno values, as wireguard-go and `wg` expect.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UapiError {
    #[error("a line without '=' ({0})")]
    Protocol(String),
    #[error("invalid value for {key}: {value:?}")]
    Invalid { key: String, value: String },
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("cannot bind the UDP port: {0}")]
    AddrInUse(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("public key {0} is already in use")]
    Exists(String),
}

impl UapiError {
    pub fn errno(&self) -> i32 {
        match self {
            UapiError::Io(_) => -5,
            UapiError::Protocol(_) => -71,
            UapiError::Invalid { .. } | UapiError::UnknownKey(_) => -22,
            UapiError::AddrInUse(_) => -98,
            UapiError::Exists(_) => -17,
        }
    }
}

fn invalid(key: &str, value: &str) -> UapiError {
    // Errors are logged: a mistyped key must not reach the log.
    let value = if key.ends_with("private_key") || key == "preshared_key" { "(redacted)" } else { value };
    UapiError::Invalid { key: key.into(), value: value.into() }
}

#[derive(Debug, Default)]
pub struct PeerConf {
    pub public_key: Option<PublicKey>,
    pub remove: bool,
    pub update_only: bool,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    pub replace_allowed_ips: bool,
    /// `rotate_public_key`: the peer's new key; it keeps its sessions (a wgmesh extension).
    pub new_public_key: Option<PublicKey>,
    /// (remove?, network, prefix length), in request order.
    pub allowed_ips: Vec<(bool, IpAddr, u8)>,
}

/// One validated `set=1` request.
#[derive(Debug, Default)]
pub struct SetRequest {
    /// `Some(None)` clears the key (an all-zero key, as `wg set … private-key /dev/null`).
    pub private_key: Option<Option<PrivateKey>>,
    /// Set by `rotate_private_key`: established sessions survive the key change.
    pub keep_sessions: bool,
    pub listen_port: Option<u16>,
    /// 0 disables the mark.
    pub fwmark: Option<u32>,
    pub replace_peers: bool,
    pub peers: Vec<PeerConf>,
}

fn parse_bool(key: &str, v: &str) -> Result<bool, UapiError> {
    // Only `true` means anything; wireguard-go rejects other values.
    if v == "true" { Ok(true) } else { Err(invalid(key, v)) }
}

fn parse_endpoint(v: &str) -> Option<SocketAddr> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Some(a);
    }
    // `[fe80::1%eth0]:51820`: a named zone becomes the interface index.
    let (host, port) = v.strip_prefix('[')?.rsplit_once("]:")?;
    let (addr, zone) = host.split_once('%')?;
    let scope = std::ffi::CString::new(zone).ok()?;
    // SAFETY: if_nametoindex only reads the NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(scope.as_ptr()) };
    (index != 0).then_some(())?;
    Some(SocketAddr::V6(std::net::SocketAddrV6::new(addr.parse().ok()?, port.parse().ok()?, 0, index)))
}

fn parse_prefix(v: &str) -> Option<(IpAddr, u8)> {
    let (a, l) = v.split_once('/').map_or((v, None), |(a, l)| (a, Some(l)));
    let a = a.parse::<IpAddr>().ok()?;
    let full = if a.is_ipv4() { 32 } else { 128 };
    canonical(a, l.map_or(Some(full), |l| l.parse().ok())?)
}

/// Parses the lines of a set request (after `set=1`, up to the blank line).
pub fn parse_set<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    for line in lines {
        // Not echoed: a line without '=' may be a bare key pasted in.
        let (key, value) = line.split_once('=').ok_or_else(|| UapiError::Protocol(format!("{} bytes", line.len())))?;
        let bad = || invalid(key, value);
        if key == "public_key" {
            let pk = PublicKey::from_hex(value).map_err(|_| bad())?;
            req.peers.push(PeerConf { public_key: Some(pk), ..Default::default() });
            continue;
        }
        let Some(peer) = req.peers.last_mut() else {
            match key {
                "private_key" | "rotate_private_key" => {
                    let k = PrivateKey::from_hex(value).map_err(|_| bad())?;
                    let zero = value.bytes().all(|b| b == b'0');
                    let rotate = key == "rotate_private_key";
                    // Clearing the key is no rotation.
                    if rotate && zero {
                        return Err(bad());
                    }
                    req.private_key = Some((!zero).then_some(k));
                    req.keep_sessions = rotate;
                }
                "listen_port" => req.listen_port = Some(value.parse().map_err(|_| bad())?),
                "fwmark" => req.fwmark = Some(value.parse().map_err(|_| bad())?),
                "replace_peers" => req.replace_peers = parse_bool(key, value)?,
                _ => return Err(UapiError::UnknownKey(key.into())),
            }
            continue;
        };
        match key {
            "remove" => peer.remove = parse_bool(key, value)?,
            "update_only" => peer.update_only = parse_bool(key, value)?,
            "preshared_key" => peer.preshared_key = Some(PresharedKey::from_hex(value).map_err(|_| bad())?),
            "endpoint" => peer.endpoint = Some(parse_endpoint(value).ok_or_else(bad)?),
            "persistent_keepalive_interval" => peer.persistent_keepalive = Some(value.parse().map_err(|_| bad())?),
            "replace_allowed_ips" => peer.replace_allowed_ips = parse_bool(key, value)?,
            "rotate_public_key" => peer.new_public_key = Some(PublicKey::from_hex(value).map_err(|_| bad())?),
            "allowed_ip" => {
                let (remove, prefix) = value.strip_prefix('-').map_or((false, value), |rest| (true, rest));
                let (ip, len) = parse_prefix(prefix).ok_or_else(bad)?;
                peer.allowed_ips.push((remove, ip, len));
            }
            "protocol_version" if value == "1" => {}
            "protocol_version" => return Err(invalid(key, value)),
            _ => return Err(UapiError::UnknownKey(key.into())),
        }
    }
    Ok(req)
}

/// Applies the peer part of a request in the kernel's order per peer: remove, preshared key,
/// endpoint, replace allowed IPs, allowed IPs, persistent keepalive, then staged packets.
/// The device part comes first, as in the kernel: (port and mark, in the shell), the peers'
/// replacement, then the private key, so a new key never starts handshakes to doomed peers.
/// Stops at a `rotate_public_key` naming ourselves or another peer (EEXIST), as the kernel
/// stops at its first error: what came before stays applied.
pub fn apply<R: RngCore + CryptoRng>(
    dev: &mut Device<R>,
    req: SetRequest,
    now: Clock,
    out: &mut impl Output,
) -> Result<(), UapiError> {
    if req.replace_peers {
        dev.remove_all_peers();
    }
    match req.private_key {
        Some(Some(k)) if req.keep_sessions => dev.rotate_private_key(k, now, out),
        Some(k) => dev.set_private_key(k, now, out),
        None => {}
    }
    for p in req.peers {
        let Some(pk) = p.public_key else { continue };
        if Some(pk) == dev.public_key() {
            continue;
        }
        let existing = dev.peer_id(&pk);
        if p.remove {
            if let Some(id) = existing {
                dev.remove_peer(id);
            }
            continue;
        }
        // renaming implies update_only: a missing peer is not created under its old key
        if (p.update_only || p.new_public_key.is_some()) && existing.is_none() {
            continue;
        }
        let Some(id) = existing.or_else(|| dev.add_peer(pk)) else { continue };
        if let Some(psk) = p.preshared_key {
            dev.set_preshared_key(id, psk);
        }
        if let Some(ep) = p.endpoint {
            dev.set_endpoint(id, ep);
        }
        if p.replace_allowed_ips {
            dev.allowed_ips.remove_all(id);
        }
        for (remove, ip, len) in p.allowed_ips {
            if remove {
                dev.allowed_ips.remove(ip, len, id);
            } else {
                dev.allowed_ips.insert(ip, len, id);
            }
        }
        if let Some(secs) = p.persistent_keepalive {
            dev.set_persistent_keepalive(id, secs, now, out);
        }
        // Last, so its handshake goes to the endpoint this block set.
        if let Some(new) = p.new_public_key {
            if !dev.rename_peer(id, new, now, out) {
                return Err(UapiError::Exists(new.to_hex()));
            }
        }
        dev.flush_staged(id, now, out);
    }
    Ok(())
}

/// The `get=1` answer, in wireguard-go's order, ending with `errno=0` and a blank line.
pub fn get<R: RngCore + CryptoRng>(dev: &Device<R>, listen_port: u16, fwmark: u32) -> Zeroizing<String> {
    // One walk of the tries, grouped by peer: no per-peer scan of 100k prefixes.
    let mut ips: std::collections::HashMap<usize, Vec<(IpAddr, u8)>> = Default::default();
    dev.allowed_ips.for_each(|ip, len, id| ips.entry(id).or_default().push((ip, len)));
    // Keys pass through this text: its room is taken once (a growth frees a copy), wiped on drop.
    let room = 256 + dev.peer_ids().len() * 512 + ips.values().map(Vec::len).sum::<usize>() * 64;
    let mut s = Zeroizing::new(String::with_capacity(room));
    if let Some(k) = dev.private_key() {
        let _ = writeln!(s, "private_key={}", k.to_hex().as_str());
    }
    if listen_port != 0 {
        let _ = writeln!(s, "listen_port={listen_port}");
    }
    if fwmark != 0 {
        let _ = writeln!(s, "fwmark={fwmark}");
    }
    for id in dev.peer_ids() {
        let Some(p) = dev.peer(id) else { continue };
        let _ = writeln!(s, "public_key={}", p.public_key.to_hex());
        let _ = writeln!(s, "preshared_key={}", p.handshake.preshared_key.to_hex().as_str());
        s.push_str("protocol_version=1\n");
        if let Some(ep) = p.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        let hs = p.last_handshake.unwrap_or_default();
        let _ = writeln!(s, "last_handshake_time_sec={}", hs.as_secs());
        let _ = writeln!(s, "last_handshake_time_nsec={}", hs.subsec_nanos());
        let _ = writeln!(s, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(s, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(s, "persistent_keepalive_interval={}", p.timers.persistent_keepalive);
        for (ip, len) in ips.remove(&id).unwrap_or_default() {
            let _ = writeln!(s, "allowed_ip={ip}/{len}");
        }
    }
    s.push_str("errno=0\n\n");
    s
}
