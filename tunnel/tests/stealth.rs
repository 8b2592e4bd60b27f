//! Stealth and robustness: whatever arrives on the port, unauthenticated input never panics,
//! never produces a packet, never changes state and never allocates.

mod common;
use common::*;
use proptest::prelude::*;
use std::net::SocketAddr;
use wgmesh_leakcheck::allocations;

#[global_allocator]
static GLOBAL: wgmesh_leakcheck::Counting = wgmesh_leakcheck::Counting;

/// Two devices with a live session, plus device 0 with an initiation in flight, and real
/// captured messages of every kind to mutate.
fn setup() -> (Net, Vec<Vec<u8>>) {
    let mut net = Net::new(2);
    net.ping(0, 1);
    net.flush();
    net.ping(1, 0);
    net.flush();
    // Only delivered messages are samples: an undelivered genuine message is not a replay.
    let samples = net.log.iter().map(|f| f.bytes.clone()).collect();
    // A second initiation in flight from 0, never delivered, so a response path is live.
    net.link = Box::new(|_| false);
    net.run_for(secs(1));
    net.run_for(secs(130));
    // Sent under a 131 s old keypair: the data goes out and a rekey initiation is in flight.
    net.ping(0, 1);
    assert_eq!(
        net.devs[0].peer(net.peer(0, 1)).unwrap().handshake.state,
        wgmesh_tunnel::noise::State::CreatedInitiation
    );
    (net, samples)
}

fn arb_input(samples: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = samples.len();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        // A type word that passes the length gate, with random contents.
        (1u8..=4, prop::collection::vec(any::<u8>(), 28..200)).prop_map(|(t, mut b)| {
            let len = match t {
                1 => 148,
                2 => 92,
                3 => 64,
                _ => b.len() + 4,
            };
            b.resize(len - 4, 0);
            let mut v = vec![t, 0, 0, 0];
            v.extend(b);
            v
        }),
        // A real message with one to four bytes flipped.
        (0..n, prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4)).prop_map(move |(i, flips)| {
            let mut m = samples[i].clone();
            for (at, x) in flips {
                let j = at.index(m.len());
                m[j] ^= x;
            }
            m
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
    #[test]
    fn unauthenticated_input_is_silent_and_changes_nothing(
        inputs in prop::collection::vec(arb_input(setup().1), 1..8),
        port in 1u16..,
    ) {
        let (mut net, _) = setup();
        let from = SocketAddr::new("10.66.0.1".parse().unwrap(), port);
        for input in inputs {
            for d in 0..2 {
                let before = fingerprint(&net.devs[d]);
                let (mut buf, mut out, clock) = (input.clone(), Collect::default(), net.clock);
                let (outcome, allocated) = allocations(|| net.devs[d].handle_udp(from, &mut buf, clock, &mut out));
                prop_assert_eq!(allocated, 0, "device {} allocated on {:?} ({:?})", d, input, outcome);
                prop_assert!(out.sent.is_empty(), "device {} answered {:?}", d, input);
                prop_assert!(out.delivered.is_empty());
                prop_assert_eq!(fingerprint(&net.devs[d]), before);
            }
        }
    }
}

#[test]
fn wrong_mac1_initiation_gets_no_reply() {
    let (mut net, samples) = setup();
    let mut init = samples.iter().find(|m| m[0] == 1).unwrap().clone();
    // Make it a fresh-looking initiation whose mac1 is wrong.
    init[wgmesh_tunnel::messages::initiation::MAC1] ^= 1;
    let before = fingerprint(&net.devs[1]);
    let (o, out) = net.inject(1, net.addrs[0], &init);
    assert_eq!(o, wgmesh_tunnel::Outcome::Dropped(wgmesh_tunnel::Drop::InvalidMac));
    assert!(out.sent.is_empty());
    assert_eq!(fingerprint(&net.devs[1]), before);
}
