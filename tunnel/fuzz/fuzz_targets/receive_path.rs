//! The whole receive path of a device that has a live session and a handshake in flight:
//! arbitrary datagrams must never panic, never be answered and never be delivered.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::Duration;
use wgmesh_tunnel::{Clock, Device, Output, PrivateKey};

#[derive(Default)]
struct Sink {
    sent: Vec<(SocketAddr, Vec<u8>)>,
    delivered: usize,
}

impl Output for Sink {
    fn send(&mut self, to: SocketAddr, d: &[u8]) {
        self.sent.push((to, d.to_vec()));
    }
    fn deliver(&mut self, _: &[u8]) {
        self.delivered += 1;
    }
}

/// Builds b, which has a live session with a; done once, since fuzz input must not change it.
fn setup() -> Device {
    let now = Clock { mono: Duration::from_secs(100), wall: Duration::from_secs(1_700_000_000) };
    let (a_key, b_key) = (PrivateKey::from_bytes([1; 32]), PrivateKey::from_bytes([2; 32]));
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
    let mut a = Device::default();
    let mut b = Device::default();
    let mut s = Sink::default();
    a.set_private_key(Some(a_key.clone()), now, &mut s);
    b.set_private_key(Some(b_key.clone()), now, &mut s);
    let pb = a.add_peer(b_key.public_key()).unwrap();
    a.set_endpoint(pb, b_addr);
    a.allowed_ips.insert("10.9.0.2".parse().unwrap(), 32, pb);
    let pa = b.add_peer(a_key.public_key()).unwrap();
    b.allowed_ips.insert("10.9.0.1".parse().unwrap(), 32, pa);
    a.set_up(true, now, &mut s);
    b.set_up(true, now, &mut s);
    // Handshake: a's keepalive triggers an initiation; shuttle until quiet.
    a.set_persistent_keepalive(pb, 25, now, &mut s);
    for _ in 0..4 {
        let batch = std::mem::take(&mut s.sent);
        for (to, mut d) in batch {
            let from = if to == b_addr { a_addr } else { b_addr };
            let dev = if to == b_addr { &mut b } else { &mut a };
            dev.handle_udp(from, &mut d, now, &mut s);
        }
    }
    assert!(b.peer(pa).is_some_and(|p| p.keypairs.current.is_some() || p.keypairs.next.is_some()));
    b
}

thread_local! {
    static DEV: std::cell::RefCell<Device> = std::cell::RefCell::new(setup());
}

fuzz_target!(|data: &[u8]| {
    let now = Clock { mono: Duration::from_secs(101), wall: Duration::from_secs(1_700_000_001) };
    // The fuzz input arrives at b, from anywhere.
    let mut buf = data.to_vec();
    let mut out = Sink::default();
    DEV.with_borrow_mut(|b| b.handle_udp("192.0.2.9:9".parse().unwrap(), &mut buf, now, &mut out));
    assert!(out.sent.is_empty(), "stealth: never answer unauthenticated input");
    assert_eq!(out.delivered, 0);
});
