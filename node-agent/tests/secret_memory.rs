//! Key material is not left behind in freed memory: this test binary's allocator looks at
//! every block as it is freed, for the hex text of a private key and a preshared key, while a
//! `set` request is rendered and while a `get` reply (which carries the private key) is read.
//! A buffer that grew (each growth frees the old copy) or one that is not wiped shows up here.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

use wgmesh_api::PublicKey;
use wgmesh_leakcheck::{contains, Watching};
use wgmesh_node_agent::key::PrivateKey;
use wgmesh_node_agent::plan::{PeerUpdate, UapiPlan};
use wgmesh_node_agent::uapi_client::{socket_path, Secret32, UapiClient};
use zeroize::Zeroizing;

/// 16 bytes of the private key below (0xef everywhere clamping leaves alone), as hex. Peer
/// public keys here are [i; 32] for i up to 200: neither their hex nor its one-digit shift
/// (0xef → "fefe…", 0xdf → "fdfd…") can match a mark.
const SK_MARK: &[u8] = b"efefefefefefefefefefefefefefefef";
/// 16 bytes of the preshared key below, as hex.
const PSK_MARK: &[u8] = b"dfdfdfdfdfdfdfdfdfdfdfdfdfdfdfdf";

const MARKS: &[&[u8]] = &[SK_MARK, PSK_MARK];

#[global_allocator]
static ALLOC: Watching = Watching;

/// Freed blocks holding either key while `f` ran.
fn leaks_during(f: impl FnOnce()) -> usize {
    wgmesh_leakcheck::leaks_during(MARKS, f)
}

/// Removes the fake engine's socket also when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn key(b: u8) -> PublicKey {
    PublicKey::from_bytes([b; 32])
}

#[test]
fn a_stored_key_file_leaves_no_key_text_in_freed_memory() {
    let _one = wgmesh_leakcheck::serial();
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = d.path().join("private.key");
    let sk = PrivateKey::from_bytes([0xef; 32]);
    // 12 bytes of 0xef in base64, as the key file holds them (clamping changes only the ends)
    let leaks = wgmesh_leakcheck::leaks_during(&[b"7+/v7+/v7+/v7+/v"], || {
        wgmesh_node_agent::key::store(&path, &sk).unwrap_or_else(|e| panic!("{e}"))
    });
    assert_eq!(leaks, 0, "freed blocks held the key's base64 text");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let back = text.strip_suffix('\n').and_then(PrivateKey::from_base64).map(|k| k.public_key());
    assert_eq!(back, Some(sk.public_key()), "the key file is the key's base64 and a newline: {text:?}");
}

#[test]
fn a_rendered_set_request_leaves_no_key_in_freed_memory() {
    let _one = wgmesh_leakcheck::serial();
    let sk = PrivateKey::from_bytes([0xef; 32]);
    // enough peers that the request grows many times after the private key line
    let update: Vec<PeerUpdate> = (1..=200u8)
        .map(|i| PeerUpdate {
            public_key: Some(key(i)),
            create: true,
            allowed_ips: Some(vec![format!("10.{i}.0.0/16").parse().unwrap_or_else(|e| panic!("{e}"))]),
            preshared_key: Some(Some(Secret32(Zeroizing::new([0xdf; 32])))),
            ..PeerUpdate::default()
        })
        .collect();
    let plan = UapiPlan { set_private_key: true, update, ..UapiPlan::default() };
    let mut len = 0;
    let found = leaks_during(|| {
        let text = plan.render(&sk);
        len = text.len();
        assert!(contains(text.as_bytes(), SK_MARK) && contains(text.as_bytes(), PSK_MARK));
    });
    assert!(len > 40_000, "the request did not grow: {len} bytes");
    assert_eq!(found, 0, "freed blocks held key material");
}

#[test]
fn reading_a_get_reply_leaves_no_key_in_freed_memory() {
    let _one = wgmesh_leakcheck::serial();
    let ifname = format!("wgmsm{}", std::process::id());
    let path = socket_path(&ifname);
    std::fs::create_dir_all(path.parent().unwrap_or_else(|| panic!("no socket dir"))).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap_or_else(|e| panic!("{e}"));
    let _socket = RemoveOnDrop(path.clone());
    // built before watching and never freed: the fake engine's own copy is not under test
    let mut reply = format!("private_key={}\nlisten_port=51820\n", "ef".repeat(32));
    for i in 1..=200u8 {
        reply.push_str(&format!(
            "public_key={}\npreshared_key={}\nallowed_ip=10.{i}.0.0/16\n",
            hex::encode([i; 32]),
            "df".repeat(32)
        ));
    }
    reply.push_str("errno=0\n\n");
    let reply: &'static [u8] = Box::leak(reply.into_bytes().into_boxed_slice());
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut req = [0u8; 16];
            let _ = s.read(&mut req);
            let _ = s.write_all(reply);
        }
    });
    let client = UapiClient::new(&ifname);
    let mut peers = 0;
    let found = leaks_during(|| {
        let state = client.get().unwrap_or_else(|e| panic!("{e}"));
        peers = state.peers.len();
    });
    let _ = server.join();
    assert_eq!(peers, 200);
    assert_eq!(found, 0, "freed blocks held key material");
}
