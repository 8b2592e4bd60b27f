//! Desired peers (api types) → engine peers: DNS endpoints resolved, keepalive and preshared
//! key made concrete. The lookups are passed in, so the mapping itself stays testable.

use std::net::{SocketAddr, ToSocketAddrs};

use wgmesh_api::endpoint::Host;
use wgmesh_api::{DesiredPeer, IpCidr, PublicKey, SecretKeyRef};

use crate::psk::PskError;
use crate::uapi_client::Secret32;

/// One peer exactly as the engine must hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnginePeer {
    pub name: String,
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpCidr>,
    pub persistent_keepalive: u16,
    pub preshared_key: Option<Secret32>,
    /// Its Secret could not be read just now (API error, or not read yet after a restart):
    /// the key the engine already holds stays, and without one the peer is left out.
    pub keep_engine_psk: bool,
}

/// The peers to configure, given what the engine holds now: a peer whose preshared key is
/// unknown for the moment keeps the engine's key, and is left out (fail closed) if the
/// engine has none for it, so a passing API error never removes a working peer.
pub fn with_engine_psks(peers: &[EnginePeer], observed: &crate::uapi_client::DeviceState) -> Vec<EnginePeer> {
    peers
        .iter()
        .filter_map(|p| {
            if !p.keep_engine_psk {
                return Some(p.clone());
            }
            let psk = observed.peers.get(&p.public_key)?.preshared_key.clone()?;
            Some(EnginePeer { preshared_key: Some(psk), keep_engine_psk: false, ..p.clone() })
        })
        .collect()
}

/// Maps every desired peer; returns warnings for what could not be made concrete (an
/// unresolvable name leaves the peer without endpoint; it can still dial in).
pub fn engine_peers(
    desired: &[DesiredPeer],
    lookup: impl Fn(&str, u16) -> Option<SocketAddr>,
    psk: impl Fn(&SecretKeyRef) -> Result<Secret32, PskError>,
) -> (Vec<EnginePeer>, Vec<String>) {
    let mut warnings = Vec::new();
    let peers = desired
        .iter()
        .filter_map(|d| {
            let endpoint = d.endpoint.as_ref().and_then(|e| match &e.host {
                Host::Ip(ip) => Some(SocketAddr::new(*ip, e.port)),
                Host::Dns(name) => {
                    let r = lookup(name, e.port);
                    if r.is_none() {
                        warnings.push(format!("peer {}: cannot resolve endpoint {e}", d.name));
                    }
                    r
                }
            });
            // fail closed: a peer meant to have a PSK is never configured without it
            let (mut preshared_key, mut keep_engine_psk) = (None, false);
            match d.preshared_key_secret_ref.as_ref().map(&psk) {
                None => {}
                Some(Ok(k)) => preshared_key = Some(k),
                Some(Err(e @ (PskError::Api(_) | PskError::NotRead))) => {
                    let r = d.preshared_key_secret_ref.as_ref()?;
                    warnings.push(format!(
                        "peer {}: preshared key in Secret {}/{} key {}: {e}; keeping the key the engine holds, if any",
                        d.name, r.namespace, r.name, r.key
                    ));
                    keep_engine_psk = true;
                }
                Some(Err(e)) => {
                    let r = d.preshared_key_secret_ref.as_ref()?;
                    warnings.push(format!(
                        "peer {}: preshared key in Secret {}/{} key {}: {e}; peer not configured until it can be read",
                        d.name, r.namespace, r.name, r.key
                    ));
                    return None;
                }
            };
            Some(EnginePeer {
                name: d.name.clone(),
                public_key: d.public_key,
                endpoint,
                allowed_ips: d.allowed_ips.clone(),
                persistent_keepalive: d.persistent_keepalive.unwrap_or(0),
                preshared_key,
                keep_engine_psk,
            })
        })
        .collect();
    (peers, warnings)
}

/// The system resolver; the first address returned wins.
pub fn system_lookup(name: &str, port: u16) -> Option<SocketAddr> {
    (name, port).to_socket_addrs().ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_dns_endpoints_and_missing_psk() {
        let d = DesiredPeer {
            name: "x".into(),
            public_key: PublicKey::from_bytes([7; 32]),
            endpoint: Some("vpn.example.com:443".parse().expect("ep")),
            allowed_ips: vec!["10.8.0.0/24".parse().expect("cidr")],
            persistent_keepalive: Some(25),
            preshared_key_secret_ref: Some(SecretKeyRef {
                namespace: "ns".into(),
                name: "s".into(),
                key: "k".into(),
            }),
            node_name: None,
        };
        let (p, w) = engine_peers(
            std::slice::from_ref(&d),
            |_, port| Some(SocketAddr::from(([192, 0, 2, 9], port))),
            |_| Err(PskError::SecretNotFound),
        );
        assert!(p.is_empty(), "never configured without its PSK: {p:?}");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("peer x")
                && w[0].contains("ns/s key k")
                && w[0].contains("does not exist"),
            "{w:?}"
        );
        // Not read yet, or a passing API error: held, to keep the key the engine has.
        for e in [PskError::NotRead, PskError::Api("timeout".into())] {
            let (p, w) = engine_peers(std::slice::from_ref(&d), |_, _| None, |_| Err(e.clone()));
            assert!(p.len() == 1 && p[0].keep_engine_psk && p[0].preshared_key.is_none(), "{p:?}");
            assert_eq!(w.len(), 2);
            assert!(w[1].contains("keeping the key the engine holds"), "{w:?}");
        }
        let mut no_psk = d.clone();
        no_psk.preshared_key_secret_ref = None;
        let (p, _) = engine_peers(
            &[no_psk],
            |_, port| Some(SocketAddr::from(([192, 0, 2, 9], port))),
            |_| Err(PskError::NotRead),
        );
        assert_eq!(p[0].endpoint, Some("192.0.2.9:443".parse().expect("sa")));
        assert_eq!(
            (p[0].persistent_keepalive, p[0].preshared_key.is_none()),
            (25, true)
        );
        let (p, w) = engine_peers(
            &[d],
            |_, _| None,
            |r| {
                assert_eq!(
                    (r.namespace.as_str(), r.name.as_str(), r.key.as_str()),
                    ("ns", "s", "k")
                );
                Ok(Secret32(zeroize::Zeroizing::new([6; 32])))
            },
        );
        assert_eq!(p[0].preshared_key.as_ref().map(|k| *k.0), Some([6u8; 32]));
        assert_eq!(w.len(), 1, "only the endpoint: {w:?}");
    }

    #[test]
    fn a_held_peer_keeps_the_engines_key_or_is_left_out() {
        use crate::uapi_client::{DeviceState, PeerState};
        let peer = |n: u8, keep: bool| EnginePeer {
            name: format!("p{n}"),
            public_key: PublicKey::from_bytes([n; 32]),
            endpoint: None,
            allowed_ips: vec!["10.8.0.0/24".parse().expect("cidr")],
            persistent_keepalive: 0,
            preshared_key: None,
            keep_engine_psk: keep,
        };
        let state = |n: u8, psk: Option<u8>| PeerState {
            public_key: PublicKey::from_bytes([n; 32]),
            preshared_key: psk.map(|b| Secret32(zeroize::Zeroizing::new([b; 32]))),
            endpoint: None,
            last_handshake: None,
            tx_bytes: 0,
            rx_bytes: 0,
            persistent_keepalive: 0,
            allowed_ips: vec![],
        };
        let mut observed = DeviceState::default();
        for s in [state(1, Some(9)), state(2, None)] {
            observed.peers.insert(s.public_key, s);
        }
        // 1: held, the engine has its key; 2: held, the engine has it without one; 3: held,
        // not in the engine; 4: not held.
        let out = with_engine_psks(&[peer(1, true), peer(2, true), peer(3, true), peer(4, false)], &observed);
        let names: Vec<&str> = out.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["p1", "p4"], "never configured without the key it is meant to have");
        assert_eq!(out[0].preshared_key.as_ref().map(|k| *k.0), Some([9u8; 32]));
        assert!(!out[0].keep_engine_psk && out[1].preshared_key.is_none());
    }
}
