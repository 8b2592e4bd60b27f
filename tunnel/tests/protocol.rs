//! The protocol on a virtual clock: two and three in-memory peers, every timer rule, the
//! counters `wg show transfer` reports, cookies under load and replay protection.

mod common;
use common::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use wgmesh_tunnel::messages::{self as msg, initiation as ini};
use wgmesh_tunnel::noise::State;
use wgmesh_tunnel::timers::Timer;
use wgmesh_tunnel::{Drop, Outcome, PrivateKey};

fn kinds(frames: &[Frame]) -> Vec<(usize, u8, usize)> {
    frames.iter().map(|f| (f.from, f.kind(), f.bytes.len())).collect()
}

#[test]
fn handshake_then_data_both_ways() {
    let mut net = Net::new(2);
    let p = ipv4(inner_v4(0), inner_v4(1), 84);
    assert_eq!(net.tun(0, &p), Outcome::Staged, "no session yet: staged, initiation sent");
    net.flush();
    // initiation, response, then the staged ping (which also confirms the key).
    assert_eq!(kinds(&net.log), vec![(0, 1, 148), (1, 2, 92), (0, 4, 128)]);
    assert_eq!(net.delivered[1], vec![p.clone()]);
    let back = ipv6(inner_v6(1), inner_v6(0), 100);
    assert_eq!(net.tun(1, &back), Outcome::Sent);
    net.flush();
    assert_eq!(net.delivered[0], vec![back]);
    for n in [0usize, 1] {
        let peer = net.devs[n].peer(net.peer(n, 1 - n)).unwrap();
        assert!(peer.keypairs.current.is_some());
        assert_eq!(peer.last_handshake, Some(net.clock.wall));
    }
}

#[test]
fn three_peers_full_mesh() {
    let mut net = Net::new(3);
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                net.ping(i, j);
                net.flush();
            }
        }
    }
    for j in 0..3 {
        let mut got: Vec<_> = net.delivered[j].iter().map(|p| p[15]).collect();
        got.sort();
        let mut want: Vec<u8> = (0..3).filter(|i| *i != j).map(|i| i as u8 + 1).collect();
        want.sort();
        assert_eq!(got, want, "device {j} receives one ping from each other device");
    }
    // Each pair did exactly one handshake: three initiations in all.
    assert_eq!(net.log.iter().filter(|f| f.kind() == 1).count(), 3);
}

#[test]
fn ping_of_84_bytes_is_128_on_the_wire() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    let data: Vec<_> = net.log.iter().filter(|f| f.kind() == 4).collect();
    assert_eq!(data.len(), 1);
    // 16 header + 96 (84 padded to 16) + 16 tag.
    assert_eq!(data[0].bytes.len(), 128);
}

#[test]
fn padding_never_exceeds_the_mtu() {
    use wgmesh_tunnel::device::padded_len;
    assert_eq!(padded_len(0, 1420), 0);
    assert_eq!(padded_len(1, 1420), 16);
    assert_eq!(padded_len(84, 1420), 96);
    assert_eq!(padded_len(1419, 1420), 1420);
    assert_eq!(padded_len(1420, 1420), 1420);
    assert_eq!(padded_len(1413, 1413), 1413);
    assert_eq!(padded_len(1412, 1413), 1413, "would be 1424 unclamped");
    assert_eq!(padded_len(1421, 1420), 1421 + 15, "over-MTU packets pad their last unit");
    assert_eq!(padded_len(17, 0), 32, "no MTU known: pad to 16");
}

/// netns.sh: after one handshake and 10 pings, exact `wg show transfer` numbers.
#[test]
fn netns_transfer_counters() {
    let mut net = Net::new(2);
    // Device 1 pings device 0 ten times; device 0 answers each.
    for _ in 0..10 {
        net.ping(1, 0);
        net.flush();
        net.ping(0, 1);
        net.flush();
        net.run_for(ms(10));
    }
    assert_eq!(net.transfer(1, 0), (1372, 1428), "pinger: rx = 92 + 10×128, tx = 148 + 10×128");
    assert_eq!(net.transfer(0, 1), (1428, 1372), "mirrored on the other side");
    // Ten seconds later the pinger's keepalive timer fires once: tx 1460.
    net.run_for(secs(11));
    assert_eq!(net.transfer(1, 0), (1372, 1460));
    assert_eq!(net.transfer(0, 1), (1460, 1372));
}

#[test]
fn keepalive_after_ten_seconds_of_one_way_traffic() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    let n = net.log.len();
    net.run_for(ms(9_900));
    assert!(net.frames_since(n).is_empty(), "nothing before 10 s");
    net.run_for(ms(200));
    assert_eq!(kinds(net.frames_since(n)), vec![(1, 4, 32)], "receiver sends one empty data message");
    // The keepalive is authenticated, so it is not answered by another keepalive.
    let n = net.log.len();
    net.run_for(secs(12));
    assert!(net.frames_since(n).is_empty());
}

#[test]
fn data_without_reply_triggers_new_handshake_after_15s() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    // Device 1 goes silent: drop everything it sends.
    net.link = Box::new(|f| f.from != 1);
    net.ping(0, 1);
    net.flush();
    let n = net.log.len();
    net.run_for(ms(14_900));
    assert!(net.frames_since(n).iter().all(|f| f.from == 1), "no initiation before 15 s");
    net.run_for(ms(500));
    assert!(net.frames_since(n).iter().any(|f| f.from == 0 && f.kind() == 1), "KEEPALIVE + REKEY_TIMEOUT");
}

#[test]
fn initiator_rekeys_after_120s_responder_does_not() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    let initiations = |net: &Net| net.log.iter().filter(|f| f.kind() == 1).map(|f| f.from).collect::<Vec<_>>();
    assert_eq!(initiations(&net), vec![0]);
    // Traffic both ways every second for 119 s: no rekey yet.
    for _ in 0..119 {
        net.run_for(secs(1));
        net.ping(0, 1);
        net.ping(1, 0);
        net.flush();
    }
    assert_eq!(initiations(&net), vec![0]);
    net.run_for(secs(1));
    net.ping(1, 0);
    net.flush();
    assert_eq!(initiations(&net), vec![0], "the responder never rekeys on time");
    net.ping(0, 1);
    net.flush();
    assert_eq!(initiations(&net), vec![0, 0], "the initiator rekeys once its keypair is 120 s old");
    assert_eq!(net.delivered[1].len(), 121, "no packet lost across the rekey");
}

#[test]
fn keys_rejected_at_180s() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    let kp = net.devs[0].peer(net.peer(0, 1)).unwrap().keypairs.current.as_ref().unwrap().local_index;
    // Block all handshakes from now on, so no new keypair can replace the first one.
    net.link = Box::new(|f| f.kind() == 4);
    net.run_for(secs(179));
    // Capture a data message sealed at 179 s under the old keypair.
    net.wire.clear();
    net.ping(1, 0);
    let old = net.wire.pop_back().expect("device 1 can still send at 179 s");
    assert_eq!(old.kind(), 4);
    net.run_for(secs(1));
    let (o, _) = net.inject(0, net.addrs[1], &old.bytes);
    assert_eq!(o, Outcome::Dropped(Drop::KeypairExpired), "receive rejected at 180 s");
    assert_eq!(net.ping(0, 1), Outcome::Staged, "send refused at 180 s: staged for a new handshake");
    let _ = kp;
}

#[test]
fn retry_every_5s_new_ephemeral_new_index_give_up_after_90s() {
    let mut net = Net::new(2);
    net.link = Box::new(|_| false);
    net.ping(0, 1);
    net.run_for(secs(200));
    let inits: Vec<_> = net.log.iter().filter(|f| f.from == 0 && f.kind() == 1).cloned().collect();
    assert_eq!(inits.len(), 20, "the first try plus 18 + 1 retries, as the kernel");
    for w in inits.windows(2) {
        let gap = w[1].t - w[0].t;
        assert!(gap >= secs(5) && gap < ms(5_334), "retry gap {gap:?}");
    }
    let mut idx: Vec<_> = inits.iter().map(|f| msg::u32_at(&f.bytes, ini::SENDER)).collect();
    let mut eph: Vec<_> = inits.iter().map(|f| f.bytes[ini::EPHEMERAL..ini::STATIC].to_vec()).collect();
    idx.sort();
    idx.dedup();
    eph.sort();
    eph.dedup();
    assert_eq!((idx.len(), eph.len()), (20, 20), "each retry has a new index and a new ephemeral");
    let last = inits.last().unwrap().t;
    assert!(last - inits[0].t < secs(102));
    let peer = net.devs[0].peer(net.peer(0, 1)).unwrap();
    assert!(peer.staged.is_empty(), "staged packets are dropped on giving up");
    // Only the last initiation's index is still registered; it is erased after 540 s.
    assert_eq!(net.devs[0].live_indices(), 1);
    net.run_for(secs(540));
    assert_eq!(net.devs[0].live_indices(), 0);
    // A new packet starts a fresh round.
    let n = net.log.len();
    net.ping(0, 1);
    assert_eq!(kinds(net.frames_since(n)), vec![(0, 1, 148)]);
}

#[test]
fn zero_key_material_after_540s() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    assert_eq!(net.devs[0].live_indices(), 1);
    assert_eq!(net.devs[1].live_indices(), 1);
    net.run_for(secs(539));
    assert_eq!(net.devs[0].live_indices(), 1, "kept until 540 s");
    net.run_for(secs(2));
    for d in 0..2 {
        let p = net.devs[d].peer(net.peer(d, 1 - d)).unwrap();
        assert!(p.keypairs.current.is_none() && p.keypairs.previous.is_none() && p.keypairs.next.is_none());
        assert_eq!(p.handshake.state, State::Zeroed);
        assert_eq!(net.devs[d].live_indices(), 0);
    }
    // And traffic still works afterwards, through a new handshake.
    net.ping(0, 1);
    net.flush();
    assert_eq!(net.delivered[1].len(), 2);
}

#[test]
fn persistent_keepalive() {
    let mut net = Net::new(2);
    let (id, now) = (net.peer(0, 1), net.clock);
    let mut c = Collect::default();
    net.devs[0].set_persistent_keepalive(id, 25, now, &mut c);
    // Turning it on sends at once: no session yet, so that is a handshake, then a keepalive.
    assert_eq!(c.sent.len(), 1);
    assert_eq!(c.sent[0].1[0], 1);
    for (to, bytes) in c.sent {
        let f = Frame { t: now.mono, from: 0, to, bytes };
        net.log.push(f.clone());
        net.wire.push_back(f);
    }
    net.flush();
    assert_eq!(kinds(&net.log), vec![(0, 1, 148), (1, 2, 92), (0, 4, 32)]);
    let n = net.log.len();
    net.run_for(secs(100));
    let ka: Vec<_> = net.frames_since(n).iter().filter(|f| f.from == 0).map(|f| (f.kind(), f.t - now.mono)).collect();
    assert_eq!(ka, vec![(4, secs(25)), (4, secs(50)), (4, secs(75)), (4, secs(100))]);
    // Traffic in either direction resets the interval: a ping at +110 s is answered by the
    // peer's keepalive at +120 s, so the next persistent keepalive is due at +145 s.
    net.run_for(secs(10));
    net.ping(0, 1);
    let n = net.log.len();
    net.run_for(secs(40));
    let ka: Vec<_> = net.frames_since(n).iter().map(|f| (f.from, f.t - now.mono)).collect();
    assert_eq!(ka[..2], [(1, secs(120)), (0, secs(145))]);
    // That keepalive is sent under a 145 s old keypair, so the initiator also rekeys.
    let rest: Vec<_> = net.frames_since(n)[2..].iter().map(|f| (f.from, f.kind())).collect();
    assert_eq!(rest, vec![(0, 1), (1, 2), (0, 4)]);
}

#[test]
fn responder_cannot_send_on_next_until_confirmed() {
    let mut net = Net::new(2);
    // Hold the initiator's confirmation: only handshakes pass at first.
    net.link = Box::new(|f| f.kind() != 4);
    net.ping(0, 1);
    net.flush();
    let id = net.peer(1, 0);
    let p = net.devs[1].peer(id).unwrap();
    assert!(p.keypairs.next.is_some() && p.keypairs.current.is_none(), "responder holds the new keypair as next");
    let n = net.log.len();
    assert_eq!(net.ping(1, 0), Outcome::Staged, "responder may not send under an unconfirmed keypair");
    assert!(net.frames_since(n).iter().all(|f| f.kind() != 4), "no data sent");
    assert!(net.frames_since(n).is_empty(), "and no initiation: one handshake per 5 s");
    // Now let data through; the initiator's next packet confirms and releases the staged ping.
    net.link = Box::new(|_| true);
    net.ping(0, 1);
    net.flush();
    let p = net.devs[1].peer(id).unwrap();
    assert!(p.keypairs.next.is_none() && p.keypairs.current.is_some());
    assert_eq!(net.delivered[0].len(), 1, "staged ping delivered after confirmation");
}

#[test]
fn cookie_flow_under_load() {
    let mut net = Net::new(2);
    net.devs[1].under_load_threshold = 0;
    net.ping(0, 1);
    net.flush();
    // The initiation had no mac2: answered with a cookie reply, not a response.
    assert_eq!(kinds(&net.log), vec![(0, 1, 148), (1, 3, 64)]);
    assert_eq!(net.outcomes[0], vec![Outcome::CookieConsumed]);
    assert_eq!(net.devs[1].peer(net.peer(1, 0)).unwrap().rx_bytes, 0, "nothing consumed");
    // The retry 5 s later carries mac2 and succeeds.
    net.run_for(ms(5_400));
    let inits: Vec<_> = net.log.iter().filter(|f| f.kind() == 1).collect();
    assert_eq!(inits.len(), 2);
    assert_eq!(&inits[0].bytes[ini::MAC2..], &[0u8; 16], "first: no cookie, mac2 zero");
    assert_ne!(&inits[1].bytes[ini::MAC2..], &[0u8; 16], "retry: mac2 from the cookie");
    assert_eq!(net.delivered[1].len(), 1, "staged ping arrives");
}

#[test]
fn cookies_start_only_when_handshakes_arrive_faster_than_they_are_handled() {
    // The kernel answers with cookies once 512 handshakes wait in its queue. Anyone who knows
    // a node's public key can make valid mac1s: 1,000 a second (150 KB/s) must not get there,
    // a burst beyond the queue mark must.
    let mut net = Net::new(2);
    net.link = Box::new(|_| false);
    net.ping(0, 1);
    net.flush();
    let init = net.log.iter().find(|f| f.kind() == 1).unwrap().bytes.clone();
    let from = net.addrs[0];
    for _ in 0..3_000 {
        net.clock.advance(ms(1));
        let (o, _) = net.inject(1, from, &init);
        assert_ne!(o, Outcome::CookieReplySent, "a trickle switched cookies on");
    }
    let burst: Vec<Outcome> = (0..600).map(|_| net.inject(1, from, &init).0).collect();
    assert!(burst[..500].iter().all(|o| *o != Outcome::CookieReplySent));
    assert_eq!(burst[599], Outcome::CookieReplySent, "a burst past the queue mark");
    // the queue drains at the handshake rate: a second later the trickle is served again
    net.clock.advance(secs(2));
    assert_ne!(net.inject(1, from, &init).0, Outcome::CookieReplySent);
}

#[test]
fn cookie_mac2_bound_to_source_address() {
    let mut net = Net::new(2);
    net.devs[1].under_load_threshold = 0;
    net.ping(0, 1);
    net.flush();
    net.link = Box::new(|_| false);
    net.run_for(ms(5_400));
    let retry = net.log.iter().rfind(|f| f.kind() == 1).unwrap().bytes.clone();
    // The same message with mac2, but from another address: the cookie does not match.
    let other: SocketAddr = "10.9.9.9:51820".parse().unwrap();
    let (o, c) = net.inject(1, other, &retry);
    assert_eq!(o, Outcome::CookieReplySent);
    assert_eq!(c.sent[0].1[0], 3);
    assert_eq!(c.replies, vec![0], "a cookie reply leaves from the address the initiation came to");
    let (o, _) = net.inject(1, net.addrs[0], &retry);
    assert_eq!(o, Outcome::InitiationConsumed);
}

#[test]
fn replayed_transport_packet_dropped_without_state_change() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    net.ping(0, 1);
    let data = net.wire.back().unwrap().bytes.clone();
    net.flush();
    let before = fingerprint(&net.devs[1]);
    let (o, c) = net.inject(1, net.addrs[0], &data);
    assert_eq!(o, Outcome::Dropped(Drop::Replay));
    assert!(c.sent.is_empty() && c.delivered.is_empty());
    assert_eq!(fingerprint(&net.devs[1]), before);
    // Replayed from another address: no roaming either.
    let (o, _) = net.inject(1, "10.7.7.7:1".parse().unwrap(), &data);
    assert_eq!(o, Outcome::Dropped(Drop::Replay));
    assert_eq!(fingerprint(&net.devs[1]), before);
}

#[test]
fn replayed_initiation_dropped_without_state_change() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    let init = net.wire.front().unwrap().bytes.clone();
    net.flush();
    net.run_for(secs(1));
    let before = fingerprint(&net.devs[1]);
    let (o, c) = net.inject(1, "10.7.7.7:1".parse().unwrap(), &init);
    assert_eq!(o, Outcome::Dropped(Drop::InvalidHandshake), "timestamp not newer");
    assert!(c.sent.is_empty());
    assert_eq!(fingerprint(&net.devs[1]), before);
}

#[test]
fn initiation_flood_rule_20ms() {
    let mut net = Net::new(2);
    net.link = Box::new(|_| false);
    let (id, now) = (net.peer(0, 1), net.clock);
    let mut c = Collect::default();
    net.devs[0].set_persistent_keepalive(id, 1, now, &mut c);
    let a = c.sent[0].1.clone();
    // A private-key change lifts the 5 s send limit: flip the key away and back for a second,
    // distinct initiation 17 ms later.
    let key = net.devs[0].private_key().unwrap().clone();
    net.clock.advance(ms(17));
    let mut c = Collect::default();
    net.devs[0].set_private_key(Some(PrivateKey::from_bytes([9; 32])), net.clock, &mut c);
    net.devs[0].set_private_key(Some(key), net.clock, &mut c);
    net.devs[0].set_persistent_keepalive(id, 0, net.clock, &mut c);
    net.devs[0].set_persistent_keepalive(id, 1, net.clock, &mut c);
    let b = c.sent.iter().rfind(|(_, m)| m[0] == 1).unwrap().1.clone();
    assert_ne!(a, b);
    let (o, _) = net.inject(1, net.addrs[0], &a);
    assert_eq!(o, Outcome::InitiationConsumed);
    net.clock.advance(ms(10));
    let before = fingerprint(&net.devs[1]);
    let (o, _) = net.inject(1, net.addrs[0], &b);
    assert_eq!(o, Outcome::Dropped(Drop::InvalidHandshake), "second initiation within 20 ms");
    assert_eq!(fingerprint(&net.devs[1]), before);
    net.clock.advance(ms(10));
    let (o, _) = net.inject(1, net.addrs[0], &b);
    assert_eq!(o, Outcome::InitiationConsumed, "accepted once 20 ms have passed");
}

#[test]
fn source_check_drops_but_roams() {
    let mut net = Net::new(3);
    net.ping(0, 1);
    net.flush();
    // Device 0 sends a packet whose inner source is device 2's address.
    let spoofed = ipv4(inner_v4(2), inner_v4(1), 84);
    net.tun(0, &spoofed);
    // Deliver it from a new outer address: roaming happens before the source check.
    let f = net.wire.pop_back().unwrap();
    let new_addr: SocketAddr = "10.0.5.5:4444".parse().unwrap();
    let (o, c) = net.inject(1, new_addr, &f.bytes);
    assert_eq!(o, Outcome::Dropped(Drop::SourceNotAllowed));
    assert!(c.delivered.is_empty());
    assert_eq!(net.devs[1].peer(net.peer(1, 0)).unwrap().endpoint, Some(new_addr));
}

#[test]
fn roaming_follows_the_peer() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    let moved: SocketAddr = "10.0.0.99:9999".parse().unwrap();
    net.addrs[0] = moved;
    net.ping(0, 1);
    net.flush();
    assert_eq!(net.devs[1].peer(net.peer(1, 0)).unwrap().endpoint, Some(moved));
    net.ping(1, 0);
    net.flush();
    assert_eq!(net.delivered[0].len(), 1, "reply reaches the new address");
}

#[test]
fn endpoint_learned_from_handshake() {
    let mut net = Net::new(2);
    // Device 1 has no endpoint for device 0 and cannot send first.
    let mut net2 = Net::new(2);
    std::mem::swap(&mut net, &mut net2);
    let id = net.peer(1, 0);
    net.devs[1].remove_peer(id);
    let id = net.devs[1].add_peer(net.keys[0]).unwrap();
    net.devs[1].allowed_ips.insert(IpAddr::V4(inner_v4(0)), 32, id);
    assert_eq!(net.ping(1, 0), Outcome::Dropped(Drop::NoEndpoint));
    net.ping(0, 1);
    net.flush();
    assert_eq!(net.devs[1].peer(id).unwrap().endpoint, Some(net.addrs[0]));
    assert_eq!(net.ping(1, 0), Outcome::Sent);
}

#[test]
fn private_key_change_allows_immediate_handshake() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    // Device 0 changes its key; device 1 replaces the old peer with the new key.
    let new = PrivateKey::from_bytes([42; 32]);
    let (now, mut c) = (net.clock, Collect::default());
    net.devs[0].set_private_key(Some(new.clone()), now, &mut c);
    let old = net.peer(1, 0);
    net.devs[1].remove_peer(old);
    let id = net.devs[1].add_peer(new.public_key()).unwrap();
    net.devs[1].set_endpoint(id, net.addrs[0]);
    net.devs[1].allowed_ips.insert(IpAddr::V4(inner_v4(0)), 32, id);
    net.keys[0] = new.public_key();
    let n = net.log.len();
    net.ping(0, 1);
    net.flush();
    assert_eq!(kinds(net.frames_since(n)), vec![(0, 1, 148), (1, 2, 92), (0, 4, 128)], "no 5 s wait");
    assert_eq!(net.delivered[1].len(), 2);
}

#[test]
fn key_rotation_keeps_sessions_until_the_peer_renames_then_rekeys_at_once() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    net.ping(1, 0);
    net.flush();
    let new = PrivateKey::from_bytes([42; 32]);
    let (now, mut c) = (net.clock, Collect::default());
    net.devs[0].rotate_private_key(new.clone(), now, &mut c);
    assert!(c.sent.is_empty(), "rotation alone sends nothing");
    // Device 1 does not know the new key yet: data keeps flowing on the old session.
    let n = net.log.len();
    assert_eq!(net.ping(0, 1), Outcome::Sent);
    assert_eq!(net.ping(1, 0), Outcome::Sent);
    net.flush();
    assert_eq!(kinds(net.frames_since(n)), vec![(0, 4, 128), (1, 4, 128)]);
    assert_eq!((net.delivered[0].len(), net.delivered[1].len()), (2, 2));
    // One old-session packet each way is held back, to be replayed after the switch.
    net.ping(0, 1);
    net.ping(1, 0);
    let late_to_0 = net.wire.pop_back().unwrap().bytes;
    let late_to_1 = net.wire.pop_back().unwrap().bytes;
    // Device 1 learns the key: same peer (allowed IPs, endpoint), one handshake under the new key.
    let id = net.peer(1, 0);
    let n = net.log.len();
    let mut c = Collect::default();
    assert!(net.devs[1].rename_peer(id, new.public_key(), now, &mut c));
    net.absorb_from(1, c);
    net.keys[0] = new.public_key();
    assert_eq!(net.peer(1, 0), id);
    net.flush();
    assert_eq!(kinds(net.frames_since(n)), vec![(1, 1, 148), (0, 2, 92), (1, 4, 32)], "rekey at once");
    let n = net.log.len();
    net.ping(0, 1);
    net.ping(1, 0);
    net.flush();
    assert_eq!(kinds(net.frames_since(n)), vec![(0, 4, 128), (1, 4, 128)]);
    assert_eq!((net.delivered[0].len(), net.delivered[1].len()), (3, 3));
    // Once both sides carried data under the new key, old-key sessions are gone on both.
    let (o, _) = net.inject(1, net.addrs[0], &late_to_1);
    assert_eq!(o, Outcome::Dropped(Drop::UnknownIndex), "renamed side still takes the old session");
    let (o, _) = net.inject(0, net.addrs[1], &late_to_0);
    assert_eq!(o, Outcome::Dropped(Drop::UnknownIndex), "rotated side still takes the old session");
    // Past the old session's lifetime everything still works: only new-key sessions remain.
    net.run_for(secs(200));
    net.ping(0, 1);
    net.run_for(secs(1));
    assert_eq!(net.delivered[1].len(), 4);
}

#[test]
fn rename_refuses_our_own_key_and_another_peers() {
    let mut net = Net::new(3);
    let (now, mut c) = (net.clock, Collect::default());
    let (p1, own, other) = (net.peer(0, 1), net.keys[0], net.keys[2]);
    assert!(!net.devs[0].rename_peer(p1, own, now, &mut c));
    assert!(!net.devs[0].rename_peer(p1, other, now, &mut c));
    assert_eq!(net.devs[0].peer(p1).unwrap().public_key, net.keys[1], "unchanged");
    assert!(c.sent.is_empty());
}

#[test]
fn setting_own_key_equal_to_a_peer_removes_that_peer() {
    let mut net = Net::new(3);
    let (now, mut c) = (net.clock, Collect::default());
    let k1 = PrivateKey::from_bytes([5; 32]);
    let pid = net.devs[0].add_peer(k1.public_key()).unwrap();
    net.devs[0].allowed_ips.insert("10.1.0.0".parse().unwrap(), 16, pid);
    net.devs[0].set_private_key(Some(k1.clone()), now, &mut c);
    assert_eq!(net.devs[0].peer_id(&k1.public_key()), None);
    assert_eq!(net.devs[0].allowed_ips.lookup("10.1.2.3".parse().unwrap()), None);
    assert_eq!(net.devs[0].add_peer(k1.public_key()), None, "own key as a peer is ignored");
}

#[test]
fn low_order_peer_never_sends() {
    // Points of small order on Curve25519 (and non-canonical forms): DH with them is zero.
    let low: [&str; 7] = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    let mut net = Net::new(1);
    let (now, mut c) = (net.clock, Collect::default());
    for (i, h) in low.iter().enumerate() {
        let id = net.devs[0].add_peer(wgmesh_tunnel::PublicKey::from_hex(h).unwrap()).unwrap();
        net.devs[0].set_endpoint(id, "10.0.0.50:1".parse().unwrap());
        net.devs[0].allowed_ips.insert(IpAddr::V4(std::net::Ipv4Addr::new(10, 50, 0, i as u8)), 32, id);
        net.devs[0].set_persistent_keepalive(id, 1, now, &mut c);
    }
    net.devs[0].set_up(false, now, &mut c);
    net.devs[0].set_up(true, now, &mut c);
    let n = net.log.len();
    for i in 0..7 {
        net.tun(0, &ipv4(inner_v4(0), std::net::Ipv4Addr::new(10, 50, 0, i), 60));
    }
    net.run_for(secs(30));
    assert!(c.sent.is_empty(), "no packet on keepalive set or link up");
    assert!(net.frames_since(n).is_empty(), "no packet at all");
}

#[test]
fn device_down_forgets_sessions_and_up_sends_keepalive() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    let (id, now) = (net.peer(0, 1), net.clock);
    let mut c = Collect::default();
    net.devs[0].set_persistent_keepalive(id, 30, now, &mut c);
    net.devs[0].set_up(false, now, &mut c);
    assert_eq!(net.devs[0].live_indices(), 0);
    assert_eq!(net.ping(0, 1), Outcome::Dropped(Drop::DeviceDown));
    let mut c = Collect::default();
    net.devs[0].set_up(true, now, &mut c);
    assert_eq!(c.sent.len(), 1, "link up with persistent keepalive: a handshake goes out");
    assert_eq!(c.sent[0].1[0], 1);
}

#[test]
fn retransmit_timer_is_only_armed_by_initiations() {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    for d in 0..2 {
        let p = net.devs[d].peer(net.peer(d, 1 - d)).unwrap();
        assert!(!p.timers.pending(Timer::RetransmitHandshake), "disarmed once the handshake completed");
    }
}

#[test]
fn handshake_retries_forget_the_learned_source_first() {
    // timers.c clears the endpoint's source before every retry and before the handshake
    // that follows unanswered data, in case that source address is why nothing came back.
    let mut net = Net::new(2);
    net.link = Box::new(|_| false);
    net.ping(0, 1);
    assert!(net.forgot.is_empty(), "a first initiation keeps the source");
    net.run_for(ms(5_400));
    let retry = net.log.iter().rposition(|f| f.kind() == 1 && f.from == 0).unwrap();
    assert!(retry > 0, "one retry by now");
    assert_eq!(net.forgot, vec![(0, net.addrs[1], retry)], "forgotten just before the retry");

    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    net.run_for(secs(30));
    assert!(net.forgot.is_empty(), "a working session keeps its source");
    // Device 1 goes silent: 0's data is never answered.
    net.link = Box::new(|f| f.from == 0);
    let (start, t0) = (net.log.len(), net.clock.mono);
    net.ping(0, 1);
    net.run_for(ms(15_400));
    let init = start + net.log[start..].iter().position(|f| f.kind() == 1 && f.from == 0).unwrap();
    assert!(net.log[init].t - t0 >= secs(15), "the new handshake comes 15 s after the data");
    assert_eq!(net.forgot, vec![(0, net.addrs[1], init)]);
}

#[test]
fn a_timer_disarmed_by_an_earlier_handler_in_the_same_poll_does_not_fire() {
    // Polled late, a handshake retry and a keepalive are due together. The retry's initiation
    // is an authenticated packet sent, which cancels the keepalive (the kernel's del_timer).
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    net.run_for(secs(121));
    net.link = Box::new(|f| f.from == 1 && f.kind() == 4);
    net.ping(0, 1);
    assert!(net.devs[0].peer(net.peer(0, 1)).unwrap().timers.pending(Timer::RetransmitHandshake), "rekey started");
    net.run_for(secs(1));
    net.ping(1, 0);
    net.flush();
    assert!(net.devs[0].peer(net.peer(0, 1)).unwrap().timers.pending(Timer::SendKeepalive));
    net.clock.advance(secs(15));
    let mut c = Collect::default();
    net.devs[0].poll(net.clock, &mut c);
    let kinds: Vec<u8> = c.sent.iter().map(|(_, d)| d[0]).collect();
    assert_eq!(kinds, vec![1], "the retry only, no keepalive after it");
}

/// The kernel answers a packet no peer takes with an ICMP error (wg_xmit's `err_icmp`), so a
/// sender fails at once instead of timing out; bounded per sender, as the kernel's ICMP is.
#[test]
fn a_packet_no_peer_takes_is_answered_at_once_with_an_icmp_error_at_most_20_a_second() {
    let mut net = Net::new(2);
    let nowhere = Ipv4Addr::new(192, 168, 241, 99);
    let sent = net.log.len();
    assert_eq!(net.tun(0, &ipv4(inner_v4(0), nowhere, 84)), Outcome::Dropped(Drop::NoRoute));
    assert_eq!(net.log.len(), sent, "nothing on the wire");
    let e = net.delivered[0].pop().expect("an ICMP error to the sender");
    assert_eq!((&e[12..16], &e[16..20], e[9], e[20], e[21]), (&nowhere.octets()[..], &inner_v4(0).octets()[..], 1, 3, 1));
    assert_eq!(&e[28..], &ipv4(inner_v4(0), nowhere, 84)[..], "the packet quoted");
    // A peer without an endpoint cannot take it either.
    let id = net.peer(1, 0);
    net.devs[1].remove_peer(id);
    let id = net.devs[1].add_peer(net.keys[0]).unwrap();
    net.devs[1].allowed_ips.insert(IpAddr::V6(inner_v6(0)), 128, id);
    let mut p = ipv6(inner_v6(1), inner_v6(0), 24);
    p[40] = 128; // an echo request
    assert_eq!(net.tun(1, &p), Outcome::Dropped(Drop::NoEndpoint));
    let e = net.delivered[1].pop().expect("an ICMPv6 error");
    assert_eq!((&e[8..24], &e[24..40], e[6], e[40], e[41]), (&inner_v6(0).octets()[..], &inner_v6(1).octets()[..], 58, 1, 3));
    // A burst of 5 per sender, then one every 50 ms; another sender has its own.
    for _ in 0..10 {
        net.tun(0, &ipv4(inner_v4(0), nowhere, 84));
    }
    assert_eq!(net.delivered[0].len(), 4, "the first error and 4 more of the burst");
    net.clock.advance(ms(50));
    net.tun(0, &ipv4(inner_v4(0), nowhere, 84));
    net.tun(0, &ipv4(inner_v4(0), nowhere, 84));
    assert_eq!(net.delivered[0].len(), 5);
    net.tun(0, &ipv4(Ipv4Addr::new(192, 168, 241, 7), nowhere, 84));
    assert_eq!(net.delivered[0].len(), 6);
    // Routed packets still go to their peer, and get no error.
    assert_eq!(net.ping(0, 1), Outcome::Staged);
    assert_eq!(net.delivered[0].len(), 6);
}
