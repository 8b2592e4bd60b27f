//! Pure: observed engine state + desired state → the smallest `set=1` that gets there, like
//! `wg syncconf`. Peers that did not change are not mentioned, so their sessions live on;
//! `replace_peers` is never used.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;

use wgmesh_api::{IpCidr, PublicKey};
use zeroize::Zeroizing;

use crate::key::{secret_hex, PrivateKey, SecretText};
use crate::resolve::EnginePeer;
use crate::uapi_client::{DeviceState, Secret32};

/// What the engine must hold.
#[derive(Clone, Debug)]
pub struct DesiredDevice {
    pub public_key: PublicKey,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<EnginePeer>,
}

/// Changes to one peer; `None` fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerUpdate {
    pub public_key: Option<PublicKey>,
    /// The key the engine knows this peer by, when it rotated to `public_key`: renamed in
    /// place (`rotate_public_key`), so its sessions carry traffic until the new handshake.
    pub rename_from: Option<PublicKey>,
    pub create: bool,
    pub endpoint: Option<SocketAddr>,
    /// `Some` replaces the whole list.
    pub allowed_ips: Option<Vec<IpCidr>>,
    pub persistent_keepalive: Option<u16>,
    /// `Some(None)` clears the preshared key.
    pub preshared_key: Option<Option<Secret32>>,
}

/// One `set=1` request, in pieces so tests can look at it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UapiPlan {
    pub set_private_key: bool,
    /// The engine had another key: rotate (`rotate_private_key`), keeping live sessions.
    pub keep_sessions: bool,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    pub remove: Vec<PublicKey>,
    pub update: Vec<PeerUpdate>,
    /// Peers without a session nudged into a handshake (a one-shot keepalive).
    pub kick: Vec<PublicKey>,
}

impl UapiPlan {
    pub fn is_empty(&self) -> bool {
        *self == UapiPlan::default()
    }

    /// Whether the request uses wgmesh's rotation extensions, which other engines refuse.
    pub fn uses_extensions(&self) -> bool {
        self.keep_sessions || self.update.iter().any(|u| u.rename_from.is_some())
    }

    /// The request body (without `set=1`). Holds the private key when it must be set.
    pub fn render(&self, private_key: &PrivateKey) -> Zeroizing<String> {
        let mut s = SecretText::default();
        if self.set_private_key {
            let verb = if self.keep_sessions { "rotate_private_key" } else { "private_key" };
            let _ = writeln!(s, "{verb}={}", private_key.to_hex().as_str());
        }
        if let Some(p) = self.listen_port {
            let _ = writeln!(s, "listen_port={p}");
        }
        if let Some(m) = self.fwmark {
            let _ = writeln!(s, "fwmark={m}");
        }
        // removals first, so a prefix moving from a removed peer to a new one lands once
        for k in &self.remove {
            let _ = writeln!(s, "public_key={}\nremove=true", hex::encode(k.as_bytes()));
        }
        for u in &self.update {
            let Some(k) = u.public_key else { continue };
            if let Some(old) = u.rename_from {
                let _ = writeln!(
                    s,
                    "public_key={}\nrotate_public_key={}",
                    hex::encode(old.as_bytes()),
                    hex::encode(k.as_bytes())
                );
            } else {
                let _ = writeln!(s, "public_key={}", hex::encode(k.as_bytes()));
                if !u.create {
                    let _ = writeln!(s, "update_only=true");
                }
            }
            match &u.preshared_key {
                Some(Some(psk)) => {
                    let _ = writeln!(s, "preshared_key={}", secret_hex(&psk.0).as_str());
                }
                Some(None) => {
                    let _ = writeln!(s, "preshared_key={}", "0".repeat(64));
                }
                None => {}
            }
            if let Some(ep) = u.endpoint {
                let _ = writeln!(s, "endpoint={ep}");
            }
            if let Some(ips) = &u.allowed_ips {
                let _ = writeln!(s, "replace_allowed_ips=true");
                for ip in ips {
                    let _ = writeln!(s, "allowed_ip={ip}");
                }
            }
            if let Some(k) = u.persistent_keepalive {
                let _ = writeln!(s, "persistent_keepalive_interval={k}");
            }
        }
        // switching keepalive on sends one at once (starting a handshake); then back off
        for k in &self.kick {
            let hexk = hex::encode(k.as_bytes());
            let _ = writeln!(
                s,
                "public_key={hexk}\nupdate_only=true\npersistent_keepalive_interval=1"
            );
            let _ = writeln!(
                s,
                "public_key={hexk}\nupdate_only=true\npersistent_keepalive_interval=0"
            );
        }
        // ASCII only: every piece above is hex, a number, an address or a fixed word
        s.into_string().unwrap_or_default()
    }
}

/// Computes the plan. `applied_endpoints` is what this agent last set per peer: an endpoint
/// the engine learned by roaming is left alone unless the desired one changed since.
/// `kick` lists peers the caller allows to be nudged; only those without a handshake and
/// without keepalive of their own are. `previous` maps peer names to the keys last applied:
/// a peer whose key changed under the same name is renamed, not removed and re-added.
pub fn plan(
    observed: &DeviceState,
    desired: &DesiredDevice,
    applied_endpoints: &BTreeMap<PublicKey, SocketAddr>,
    kick: &BTreeSet<PublicKey>,
    previous: &BTreeMap<String, PublicKey>,
) -> UapiPlan {
    let mut p = UapiPlan {
        set_private_key: observed.public_key != Some(desired.public_key),
        keep_sessions: observed.public_key.is_some_and(|k| k != desired.public_key),
        listen_port: (observed.listen_port != desired.listen_port).then_some(desired.listen_port),
        fwmark: (observed.fwmark != desired.fwmark).then_some(desired.fwmark),
        ..UapiPlan::default()
    };
    let wanted: BTreeSet<PublicKey> = desired.peers.iter().map(|d| d.public_key).collect();
    p.remove = observed
        .peers
        .keys()
        .filter(|k| !wanted.contains(k))
        .copied()
        .collect();
    for d in &desired.peers {
        // the engine silently ignores its own key as a peer; so do we
        if d.public_key == desired.public_key {
            continue;
        }
        let renamed = previous
            .get(&d.name)
            .filter(|old| **old != d.public_key && !wanted.contains(*old))
            .and_then(|old| Some((*old, observed.peers.get(old)?)));
        let (o, rename_from) = match (observed.peers.get(&d.public_key), renamed) {
            (Some(o), _) => (o, None),
            (None, Some((old, o))) => {
                p.remove.retain(|k| *k != old);
                (o, Some(old))
            }
            (None, None) => {
                p.update.push(PeerUpdate {
                    public_key: Some(d.public_key),
                    create: true,
                    endpoint: d.endpoint,
                    allowed_ips: Some(d.allowed_ips.clone()),
                    persistent_keepalive: (d.persistent_keepalive != 0)
                        .then_some(d.persistent_keepalive),
                    preshared_key: d.preshared_key.clone().map(Some),
                    ..PeerUpdate::default()
                });
                continue;
            }
        };
        let mut u = PeerUpdate {
            rename_from,
            ..PeerUpdate::default()
        };
        // a roamed endpoint is kept, but not across a key change: the old key's holder may be
        // the one who moved it (a rotation after a compromise), so the desired one is forced
        let roamed = rename_from.is_none()
            && o.endpoint.is_some()
            && applied_endpoints.get(&d.public_key) == d.endpoint.as_ref();
        if d.endpoint.is_some() && o.endpoint != d.endpoint && !roamed {
            u.endpoint = d.endpoint;
        }
        let mut want_ips = d.allowed_ips.clone();
        want_ips.sort();
        if o.allowed_ips != want_ips {
            u.allowed_ips = Some(want_ips);
        }
        if o.persistent_keepalive != d.persistent_keepalive {
            u.persistent_keepalive = Some(d.persistent_keepalive);
        }
        if o.preshared_key != d.preshared_key {
            u.preshared_key = Some(d.preshared_key.clone());
        }
        if u != PeerUpdate::default() {
            u.public_key = Some(d.public_key);
            p.update.push(u);
        } else if kick.contains(&d.public_key)
            && o.last_handshake.is_none()
            && d.persistent_keepalive == 0
        {
            p.kick.push(d.public_key);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi_client::PeerState;

    fn pk(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    fn cidr(s: &str) -> IpCidr {
        s.parse().expect("cidr")
    }

    fn ep(s: &str) -> SocketAddr {
        s.parse().expect("endpoint")
    }

    fn want(n: u8, ips: &[&str]) -> EnginePeer {
        EnginePeer {
            name: format!("p{n}"),
            public_key: pk(n),
            endpoint: Some(ep(&format!("192.0.2.{n}:51820"))),
            allowed_ips: ips.iter().map(|s| cidr(s)).collect(),
            persistent_keepalive: 0,
            preshared_key: None,
            keep_engine_psk: false,
        }
    }

    fn have(w: &EnginePeer) -> PeerState {
        PeerState {
            public_key: w.public_key,
            preshared_key: None,
            endpoint: w.endpoint,
            last_handshake: Some(std::time::UNIX_EPOCH),
            tx_bytes: 0,
            rx_bytes: 0,
            persistent_keepalive: w.persistent_keepalive,
            allowed_ips: w.allowed_ips.clone(),
        }
    }

    fn device(me: u8, peers: Vec<EnginePeer>) -> DesiredDevice {
        DesiredDevice {
            public_key: pk(me),
            listen_port: 51820,
            fwmark: 51820,
            peers,
        }
    }

    /// A plan with no roaming memory, no kicks and no name memory.
    fn plan_of(observed: &DeviceState, d: &DesiredDevice) -> UapiPlan {
        plan(
            observed,
            d,
            &BTreeMap::new(),
            &BTreeSet::new(),
            &BTreeMap::new(),
        )
    }

    fn in_sync(d: &DesiredDevice) -> DeviceState {
        DeviceState {
            public_key: Some(d.public_key),
            listen_port: d.listen_port,
            fwmark: d.fwmark,
            peers: d.peers.iter().map(|w| (w.public_key, have(w))).collect(),
        }
    }

    #[test]
    fn fresh_engine_gets_key_port_mark_and_all_peers() {
        let d = device(
            1,
            vec![want(2, &["10.244.2.0/24"]), want(3, &["10.244.3.0/24"])],
        );
        let p = plan_of(&DeviceState::default(), &d);
        assert!(p.set_private_key);
        assert_eq!((p.listen_port, p.fwmark), (Some(51820), Some(51820)));
        assert_eq!(p.update.len(), 2);
        assert!(p.update.iter().all(|u| u.create && u.allowed_ips.is_some()));
        let key = PrivateKey::generate();
        let text = p.render(&key);
        assert!(text.starts_with("private_key="));
        assert!(!text.contains("replace_peers"));
        assert!(text.contains(
            "endpoint=192.0.2.2:51820\nreplace_allowed_ips=true\nallowed_ip=10.244.2.0/24\n"
        ));
    }

    #[test]
    fn a_rotated_node_key_renames_the_peer_and_our_own_rotation_keeps_sessions() {
        let before = device(
            1,
            vec![want(2, &["10.244.2.0/24"]), want(3, &["10.244.3.0/24"])],
        );
        let observed = in_sync(&before);
        // peer p2 rotated to key 22 under the same name; we rotated from 1 to 11
        let mut rotated = want(2, &["10.244.2.0/24"]);
        rotated.public_key = pk(22);
        let after = device(11, vec![rotated, want(3, &["10.244.3.0/24"])]);
        let names: BTreeMap<String, PublicKey> = before
            .peers
            .iter()
            .map(|w| (w.name.clone(), w.public_key))
            .collect();
        let p = plan(
            &observed,
            &after,
            &BTreeMap::new(),
            &BTreeSet::new(),
            &names,
        );
        assert!(p.set_private_key && p.keep_sessions);
        assert!(p.remove.is_empty(), "renamed, not removed: {p:?}");
        assert_eq!(p.update.len(), 1);
        assert_eq!(
            (p.update[0].public_key, p.update[0].rename_from),
            (Some(pk(22)), Some(pk(2)))
        );
        assert!(!p.update[0].create && p.update[0].allowed_ips.is_none());
        let text = p.render(&PrivateKey::generate());
        assert!(text.starts_with("rotate_private_key="), "{}", text.as_str());
        let (old, new) = (
            hex::encode(pk(2).as_bytes()),
            hex::encode(pk(22).as_bytes()),
        );
        assert!(
            text.contains(&format!("public_key={old}\nrotate_public_key={new}\n")),
            "{}",
            text.as_str()
        );
        assert!(p.uses_extensions());
        // a rename forces the desired endpoint even where the engine roamed
        let mut roamed = observed.clone();
        if let Some(ps) = roamed.peers.get_mut(&pk(2)) {
            ps.endpoint = Some(ep("198.51.100.7:4000"));
        }
        let applied: BTreeMap<PublicKey, SocketAddr> =
            [(pk(2), ep("192.0.2.2:51820"))].into_iter().collect();
        let p = plan(&roamed, &after, &applied, &BTreeSet::new(), &names);
        assert_eq!(p.update[0].endpoint, Some(ep("192.0.2.2:51820")));
        // without memory of the name (a restarted agent) it is a plain replace
        let p = plan_of(&observed, &after);
        assert_eq!(p.remove, [pk(2)]);
        assert!(p.update[0].create && p.update[0].rename_from.is_none());
        // a fresh engine (no key yet) gets a plain private_key
        let p = plan(
            &DeviceState::default(),
            &after,
            &BTreeMap::new(),
            &BTreeSet::new(),
            &names,
        );
        assert!(p.set_private_key && !p.keep_sessions);
        assert!(p
            .render(&PrivateKey::generate())
            .starts_with("private_key="));
    }

    #[test]
    fn in_sync_means_nothing_to_send() {
        let d = device(
            1,
            vec![
                want(2, &["10.244.2.0/24"]),
                want(3, &["10.244.3.0/24", "fd00::/64"]),
            ],
        );
        let p = plan_of(&in_sync(&d), &d);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn only_changed_and_stale_peers_are_touched() {
        let before = device(
            1,
            vec![
                want(2, &["10.244.2.0/24"]),
                want(3, &["10.244.3.0/24"]),
                want(4, &["10.244.4.0/24"]),
            ],
        );
        let observed = in_sync(&before);
        // 3 loses its prefix to a new peer 5, 4 is gone, 2 is untouched
        let after = device(
            1,
            vec![
                want(2, &["10.244.2.0/24"]),
                want(3, &["10.244.30.0/24"]),
                want(5, &["10.244.3.0/24"]),
            ],
        );
        let p = plan_of(&observed, &after);
        assert!(!p.set_private_key && p.listen_port.is_none());
        assert_eq!(p.remove, [pk(4)]);
        let touched: Vec<_> = p.update.iter().filter_map(|u| u.public_key).collect();
        assert_eq!(touched, [pk(3), pk(5)]);
        let three = &p.update[0];
        assert!(!three.create && three.endpoint.is_none() && three.persistent_keepalive.is_none());
        assert_eq!(three.allowed_ips, Some(vec![cidr("10.244.30.0/24")]));
        let text = p.render(&PrivateKey::generate());
        assert!(!text.contains("private_key"));
        let rm = text.find("remove=true").expect("remove");
        let add = text.find("allowed_ip=10.244.3.0/24").expect("add");
        assert!(rm < add);
    }

    #[test]
    fn a_roamed_endpoint_is_kept_unless_the_desired_one_changed() {
        let d = device(1, vec![want(2, &["10.244.2.0/24"])]);
        let mut observed = in_sync(&d);
        if let Some(p) = observed.peers.get_mut(&pk(2)) {
            p.endpoint = Some(ep("203.0.113.9:4000"));
        }
        let applied: BTreeMap<_, _> = [(pk(2), ep("192.0.2.2:51820"))].into();
        assert!(plan(&observed, &d, &applied, &BTreeSet::new(), &BTreeMap::new()).is_empty());
        // a fresh agent does not know what it applied: it sets the desired endpoint once
        let p = plan_of(&observed, &d);
        assert_eq!(p.update[0].endpoint, Some(ep("192.0.2.2:51820")));
    }

    #[test]
    fn key_keepalive_and_psk_changes() {
        let mut d = device(1, vec![want(2, &["10.244.2.0/24"])]);
        let mut observed = in_sync(&d);
        observed.public_key = Some(pk(9));
        d.peers[0].persistent_keepalive = 25;
        d.peers[0].preshared_key = Some(Secret32(Zeroizing::new([5; 32])));
        let p = plan_of(&observed, &d);
        assert!(p.set_private_key);
        assert_eq!(p.update[0].persistent_keepalive, Some(25));
        let text = p.render(&PrivateKey::generate());
        assert!(text.contains(&format!("preshared_key={}", "05".repeat(32))));
        assert!(
            !format!("{p:?}").contains("0505"),
            "Debug never shows the PSK"
        );
        observed.public_key = Some(pk(1));
        if let Some(peer) = observed.peers.get_mut(&pk(2)) {
            peer.preshared_key = Some(Secret32(Zeroizing::new([5; 32])));
            peer.persistent_keepalive = 25;
        }
        d.peers[0].preshared_key = None;
        let p = plan_of(&observed, &d);
        assert_eq!(p.update[0].preshared_key, Some(None));
    }

    #[test]
    fn kicks_only_idle_peers_without_session_or_keepalive() {
        let d = device(
            1,
            vec![want(2, &["10.244.2.0/24"]), want(3, &["10.244.3.0/24"])],
        );
        let mut observed = in_sync(&d);
        for p in observed.peers.values_mut() {
            p.last_handshake = None;
        }
        if let Some(p) = observed.peers.get_mut(&pk(3)) {
            p.last_handshake = Some(std::time::UNIX_EPOCH);
        }
        let allowed: BTreeSet<_> = [pk(2), pk(3)].into();
        let p = plan(&observed, &d, &BTreeMap::new(), &allowed, &BTreeMap::new());
        assert_eq!(p.kick, [pk(2)]);
        let text = p.render(&PrivateKey::generate());
        assert!(
            text.contains("persistent_keepalive_interval=1\n")
                && text.ends_with("persistent_keepalive_interval=0\n")
        );
        assert!(plan_of(&observed, &d).kick.is_empty());
    }

    #[test]
    fn own_key_is_never_a_peer() {
        let d = device(1, vec![want(1, &["10.244.1.0/24"])]);
        let p = plan_of(&DeviceState::default(), &d);
        assert!(p.update.is_empty());
    }
}
