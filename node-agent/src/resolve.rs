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
            let preshared_key = match d.preshared_key_secret_ref.as_ref().map(&psk) {
                None => None,
                Some(Ok(k)) => Some(k),
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
        let (p, w) = engine_peers(
            std::slice::from_ref(&d),
            |_, _| None,
            |_| Err(PskError::NotRead),
        );
        assert!(p.is_empty());
        assert_eq!(w.len(), 2);
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
}
