//! The UAPI text protocol without sockets: parsing, errno values, the order and format of
//! `get=1`, and that a rejected request changes nothing.

mod common;
use common::*;
use wgmesh_tunnel::uapi::{self, UapiError};
use wgmesh_tunnel::PrivateKey;

fn set(net: &mut Net, d: usize, text: &str) -> Result<(), UapiError> {
    let req = uapi::parse_set(text.lines())?;
    let (now, mut c) = (net.clock, Collect::default());
    uapi::apply(&mut net.devs[d], req, now, &mut c)
}

#[test]
fn errno_values_match_wireguard_go() {
    let pk = "a".repeat(64);
    assert_eq!(uapi::parse_set(["no equals sign"]).unwrap_err().errno(), -71);
    assert_eq!(uapi::parse_set(["bogus=1"]).unwrap_err().errno(), -22);
    assert_eq!(uapi::parse_set(["listen_port=70000"]).unwrap_err().errno(), -22);
    assert_eq!(uapi::parse_set(["private_key=xyz"]).unwrap_err().errno(), -22);
    assert_eq!(uapi::parse_set(["replace_peers=false"]).unwrap_err().errno(), -22, "only `true` is meaningful");
    let peer = format!("public_key={pk}");
    for bad in [
        "endpoint=1.2.3.4",
        "endpoint=[::1]",
        "allowed_ip=10.0.0.0/33",
        "allowed_ip=fd00::/129",
        "allowed_ip=-x",
        "persistent_keepalive_interval=65536",
        "protocol_version=2",
        "preshared_key=00",
        "fwmark=1",
    ] {
        assert_eq!(uapi::parse_set([peer.as_str(), bad]).unwrap_err().errno(), -22, "{bad}");
    }
    // Errors are logged: a mistyped key, or a bare one pasted without `key=`, stays out of them.
    let near = "ab".repeat(31) + "x";
    for bad in [format!("private_key={near}"), format!("{peer}\npreshared_key={near}"), format!("rotate_private_key={near}"), near.clone()] {
        let e = uapi::parse_set(bad.lines()).unwrap_err().to_string();
        assert!(!e.contains(&near[..16]), "{e}");
    }
    assert_eq!(UapiError::AddrInUse(String::new()).errno(), -98);
    assert_eq!(UapiError::Io(String::new()).errno(), -5);
}

#[test]
fn get_lists_everything_in_wireguard_go_order() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    let id = net.peer(0, 1);
    let (now, mut c) = (net.clock, Collect::default());
    net.devs[0].set_persistent_keepalive(id, 25, now, &mut c);
    let text = uapi::get(&net.devs[0], 51820, 7).to_string();
    let keys: Vec<&str> = text.lines().map(|l| l.split('=').next().unwrap()).collect();
    assert_eq!(
        keys,
        vec![
            "private_key",
            "listen_port",
            "fwmark",
            "public_key",
            "preshared_key",
            "protocol_version",
            "endpoint",
            "last_handshake_time_sec",
            "last_handshake_time_nsec",
            "tx_bytes",
            "rx_bytes",
            "persistent_keepalive_interval",
            "allowed_ip",
            "allowed_ip",
            "errno",
            ""
        ]
    );
    assert!(text.ends_with("errno=0\n\n"));
    assert!(text.contains(&format!("public_key={}\n", net.keys[1].to_hex())));
    assert!(text.contains(&format!("last_handshake_time_sec={}\n", net.clock.wall.as_secs())), "Unix epoch seconds");
    assert!(text.contains("preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n"));
    assert!(
        text.contains("endpoint=10.0.0.2:51820\n")
            && text.contains("allowed_ip=192.168.241.2/32\nallowed_ip=fd00::2/128\n")
    );
    // Out: initiation 148 + ping 128 + the keepalive sent when persistent keepalive went on.
    assert!(text.contains("tx_bytes=308\nrx_bytes=92\n"), "{text}");
    assert!(!text.contains(|c: char| c.is_ascii_uppercase()), "hex is lowercase");
}

#[test]
fn set_semantics_remove_update_only_replace() {
    let mut net = Net::new(3);
    let k1 = net.keys[1].to_hex();
    let k2 = net.keys[2].to_hex();
    let new = PrivateKey::from_bytes([77; 32]).public_key().to_hex();
    // update_only on an unknown peer: ignored; on a known one: applied.
    set(&mut net, 0, &format!("public_key={new}\nupdate_only=true\nallowed_ip=10.1.0.0/16")).unwrap();
    assert_eq!(net.devs[0].peer_ids().len(), 2);
    set(&mut net, 0, &format!("public_key={k1}\nupdate_only=true\nreplace_allowed_ips=true\nallowed_ip=10.1.0.0/16\npersistent_keepalive_interval=0")).unwrap();
    assert_eq!(net.devs[0].allowed_ips.lookup("10.1.2.3".parse().unwrap()), Some(net.peer(0, 1)));
    assert_eq!(net.devs[0].allowed_ips.lookup("192.168.241.2".parse().unwrap()), None, "replaced");
    // Moving a prefix: the last writer owns it.
    set(&mut net, 0, &format!("public_key={k2}\nallowed_ip=10.1.0.0/16")).unwrap();
    assert_eq!(net.devs[0].allowed_ips.lookup("10.1.2.3".parse().unwrap()), Some(net.peer(0, 2)));
    // remove; replace_peers; our own key as a peer is ignored.
    set(&mut net, 0, &format!("public_key={k2}\nremove=true")).unwrap();
    assert_eq!(net.devs[0].peer_ids().len(), 1);
    let own = net.keys[0].to_hex();
    set(&mut net, 0, &format!("replace_peers=true\npublic_key={own}\nallowed_ip=10.9.0.0/16\npublic_key={new}"))
        .unwrap();
    assert_eq!(net.devs[0].peer_ids().len(), 1);
    assert_eq!(net.devs[0].peer(net.devs[0].peer_ids()[0]).unwrap().public_key.to_hex(), new);
    // An all-zero private key clears ours.
    set(&mut net, 0, &format!("private_key={}", "0".repeat(64))).unwrap();
    assert!(net.devs[0].private_key().is_none());
}

#[test]
fn replace_peers_goes_before_a_new_private_key_as_in_the_kernel() {
    // A packet waits for a key; the request that brings the key also drops every peer.
    let mut net = Net::new(2);
    set(&mut net, 0, &format!("private_key={}", "0".repeat(64))).unwrap();
    net.ping(0, 1);
    let before = net.log.len();
    let req = uapi::parse_set([format!("private_key={}", "11".repeat(32)), "replace_peers=true".into()].iter().map(String::as_str)).unwrap();
    let (now, mut c) = (net.clock, Collect::default());
    uapi::apply(&mut net.devs[0], req, now, &mut c).unwrap();
    // The kernel removes the peers first: no initiation leaves for a peer that is gone.
    assert!(c.sent.is_empty(), "{} datagrams sent", c.sent.len());
    assert_eq!(net.log.len(), before);
    assert!(net.devs[0].peer_ids().is_empty() && net.devs[0].private_key().is_some());
}

#[test]
fn a_rejected_request_changes_nothing() {
    let mut net = Net::new(2);
    let before = uapi::get(&net.devs[0], 0, 0);
    let k1 = net.keys[1].to_hex();
    let err =
        set(&mut net, 0, &format!("replace_peers=true\npublic_key={k1}\nallowed_ip=10.0.0.0/8\nendpoint=nonsense"))
            .unwrap_err();
    assert_eq!(err.errno(), -22);
    assert_eq!(uapi::get(&net.devs[0], 0, 0), before);
}

#[test]
fn rotation_extensions_keep_the_peer_and_refuse_conflicts() {
    let mut net = Net::new(3);
    net.ping(0, 1);
    net.flush();
    let (k1, k2) = (net.keys[1].to_hex(), net.keys[2].to_hex());
    let new = PrivateKey::from_bytes([77; 32]);
    // Device 1 rotates; a zero key is not a rotation.
    assert_eq!(uapi::parse_set([format!("rotate_private_key={}", "0".repeat(64)).as_str()]).unwrap_err().errno(), -22);
    set(&mut net, 1, &format!("rotate_private_key={}", new.to_hex().as_str())).unwrap();
    assert_eq!(net.devs[1].public_key(), Some(new.public_key()));
    // Device 0 renames its peer: same id, allowed IPs and endpoint, new key in `get`.
    let id = net.peer(0, 1);
    let newk = new.public_key().to_hex();
    set(&mut net, 0, &format!("public_key={k1}\nrotate_public_key={newk}\npersistent_keepalive_interval=7")).unwrap();
    net.keys[1] = new.public_key();
    assert_eq!(net.peer(0, 1), id);
    let got = uapi::get(&net.devs[0], 0, 0).to_string();
    assert!(got.contains(&format!("public_key={newk}")) && !got.contains(&format!("public_key={k1}")), "{got}");
    assert!(got.contains("persistent_keepalive_interval=7"), "settings after the rename apply to it: {got}");
    // Renaming onto another peer's key is refused with EEXIST and changes nothing more.
    let err = set(&mut net, 0, &format!("public_key={newk}\nrotate_public_key={k2}")).unwrap_err();
    assert_eq!(err.errno(), -17);
    assert_eq!(net.peer(0, 1), id);
    // Renaming a peer that does not exist creates nothing.
    let ghost = PrivateKey::from_bytes([78; 32]).public_key().to_hex();
    set(&mut net, 0, &format!("public_key={ghost}\nrotate_public_key={k1}")).unwrap();
    assert_eq!(net.devs[0].peer_ids().len(), 2);
}
