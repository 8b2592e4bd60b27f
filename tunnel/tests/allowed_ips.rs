//! Cryptokey routing table: longest-prefix match, host-bit masking, moves and removals, and a
//! randomized comparison against a naive linear reference.

use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use wgmesh_tunnel::allowed_ips::{canonical, AllowedIps};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn dump(t: &AllowedIps<usize>) -> Vec<(String, usize)> {
    let mut v = Vec::new();
    t.for_each(|a, l, p| v.push((format!("{a}/{l}"), p)));
    v
}

#[test]
fn longest_prefix_match_v4_and_v6() {
    let mut t = AllowedIps::default();
    t.insert(ip("10.0.0.0"), 8, 1);
    t.insert(ip("10.1.0.0"), 16, 2);
    t.insert(ip("10.1.2.3"), 32, 3);
    t.insert(ip("0.0.0.0"), 0, 9);
    t.insert(ip("fd00::"), 8, 4);
    t.insert(ip("fd00:1::"), 32, 5);
    assert_eq!(t.lookup(ip("10.1.2.3")), Some(3));
    assert_eq!(t.lookup(ip("10.1.2.4")), Some(2));
    assert_eq!(t.lookup(ip("10.200.0.1")), Some(1));
    assert_eq!(t.lookup(ip("192.0.2.1")), Some(9), "default route");
    assert_eq!(t.lookup(ip("fd00:1::7")), Some(5));
    assert_eq!(t.lookup(ip("fd99::1")), Some(4));
    assert_eq!(t.lookup(ip("2001:db8::1")), None, "no ::/0");
}

#[test]
fn host_bits_are_masked() {
    let mut t = AllowedIps::default();
    t.insert(ip("192.168.1.77"), 24, 1);
    t.insert(ip("fd00::1:2:3"), 64, 2);
    assert_eq!(dump(&t), vec![("192.168.1.0/24".into(), 1), ("fd00::/64".into(), 2)]);
    assert_eq!(canonical(ip("10.9.8.7"), 12), Some((ip("10.0.0.0"), 12)));
    assert_eq!(canonical(ip("10.9.8.7"), 33), None);
    assert_eq!(canonical(ip("::1"), 129), None);
}

#[test]
fn inserting_moves_a_prefix_between_peers() {
    let mut t = AllowedIps::default();
    t.insert(ip("192.168.241.0"), 24, 1);
    assert_eq!(t.insert(ip("192.168.241.0"), 24, 2), Some(1));
    assert_eq!(t.lookup(ip("192.168.241.5")), Some(2));
    // netns.sh crypto-RP: a more specific /32 for another peer wins for that address only.
    t.insert(ip("192.168.241.2"), 32, 3);
    assert_eq!(t.lookup(ip("192.168.241.2")), Some(3));
    assert_eq!(t.lookup(ip("192.168.241.3")), Some(2));
}

#[test]
fn prefixes_are_listed_in_the_order_they_were_inserted_as_the_kernel_lists_them() {
    let mut t = AllowedIps::default();
    t.insert(ip("10.2.0.0"), 16, 1);
    t.insert(ip("fd00::"), 64, 1);
    t.insert(ip("10.1.0.0"), 16, 1);
    t.insert(ip("10.9.0.0"), 16, 2);
    let order = |t: &AllowedIps<usize>| dump(t).into_iter().map(|(p, o)| format!("{p}@{o}")).collect::<Vec<_>>();
    assert_eq!(order(&t), ["10.2.0.0/16@1", "fd00::/64@1", "10.1.0.0/16@1", "10.9.0.0/16@2"]);
    // inserted again, even by its owner, a prefix moves to the end (list_move_tail)
    t.insert(ip("10.2.0.0"), 16, 1);
    t.insert(ip("10.9.0.0"), 16, 1);
    assert_eq!(order(&t), ["fd00::/64@1", "10.1.0.0/16@1", "10.2.0.0/16@1", "10.9.0.0/16@1"]);
    t.remove(ip("10.1.0.0"), 16, 1);
    t.insert(ip("10.1.0.0"), 16, 1);
    assert_eq!(order(&t)[3], "10.1.0.0/16@1");
}

#[test]
fn remove_one_prefix_only_if_owned_and_remove_all_of_a_peer() {
    let mut t = AllowedIps::default();
    t.insert(ip("10.0.0.0"), 24, 1);
    t.insert(ip("10.0.1.0"), 24, 1);
    t.insert(ip("fd00::"), 64, 1);
    t.insert(ip("10.0.2.0"), 24, 2);
    assert!(!t.remove(ip("10.0.2.0"), 24, 1), "peer 1 does not own it");
    assert_eq!(t.lookup(ip("10.0.2.1")), Some(2));
    assert!(t.remove(ip("10.0.0.9"), 24, 1), "host bits ignored on removal");
    assert_eq!(t.lookup(ip("10.0.0.1")), None);
    assert!(!t.remove(ip("10.0.0.0"), 24, 1), "already gone");
    t.remove_all(1);
    assert_eq!(dump(&t), vec![("10.0.2.0/24".into(), 2)]);
}

#[test]
fn netns_churn_with_default_routes_and_odd_v6_lengths() {
    let mut t = AllowedIps::default();
    for round in 0..3 {
        t.insert(ip("0.0.0.0"), 0, 1);
        t.insert(ip("10.0.0.0"), 8, 1);
        t.insert(ip("10.0.0.0"), 16, 1);
        t.insert(ip("::"), 0, 1);
        t.insert(ip("2001:db8::"), 111, 1);
        t.insert(ip("2000::"), 4, 1);
        t.insert(ip("2001:db8::"), 37, 1);
        t.insert(ip("2001:db8::"), 75, 1);
        assert_eq!(dump(&t).len(), 8, "round {round}");
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(1));
        t.remove_all(1);
        assert!(dump(&t).is_empty());
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(IpAddr, u8, usize),
    Remove(IpAddr, u8, usize),
    RemoveAll(usize),
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        // A narrow space, so prefixes overlap often.
        (0u8..4, any::<u8>()).prop_map(|(a, b)| IpAddr::V4(Ipv4Addr::new(10, a, b, b.wrapping_mul(7)))),
        (0u16..4, any::<u16>()).prop_map(|(a, b)| IpAddr::V6(Ipv6Addr::new(0xfd00, a, b, 0, 0, 0, 0, b))),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (arb_ip(), 0u8..=128, 0usize..4).prop_map(|(a, l, p)| Op::Insert(a, l, p)),
        2 => (arb_ip(), 0u8..=128, 0usize..4).prop_map(|(a, l, p)| Op::Remove(a, l, p)),
        1 => (0usize..4).prop_map(Op::RemoveAll),
    ]
}

fn bits(a: IpAddr) -> (u128, u8) {
    match a {
        IpAddr::V4(v) => (u32::from(v) as u128, 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

fn matches(net: IpAddr, len: u8, addr: IpAddr) -> bool {
    let ((n, w), (a, w2)) = (bits(net), bits(addr));
    if w != w2 {
        return false;
    }
    len == 0 || (n ^ a) >> (w - len) == 0
}

proptest! {
    #[test]
    fn trie_agrees_with_a_linear_reference(ops in prop::collection::vec(arb_op(), 1..200), probes in prop::collection::vec(arb_ip(), 50)) {
        let mut t = AllowedIps::default();
        let mut reference: Vec<(IpAddr, u8, usize)> = Vec::new();
        for op in ops {
            match op {
                Op::Insert(a, l, p) => {
                    let (a, l) = canonical(a, l.min(bits(a).1)).unwrap();
                    t.insert(a, l, p);
                    reference.retain(|(x, y, _)| (*x, *y) != (a, l));
                    reference.push((a, l, p));
                }
                Op::Remove(a, l, p) => {
                    let (a, l) = canonical(a, l.min(bits(a).1)).unwrap();
                    let owned = reference.contains(&(a, l, p));
                    prop_assert_eq!(t.remove(a, l, p), owned);
                    reference.retain(|e| *e != (a, l, p));
                }
                Op::RemoveAll(p) => {
                    t.remove_all(p);
                    reference.retain(|e| e.2 != p);
                }
            }
        }
        for probe in probes {
            let want = reference.iter().filter(|(a, l, _)| matches(*a, *l, probe)).max_by_key(|e| e.1).map(|e| e.2);
            prop_assert_eq!(t.lookup(probe), want, "probe {}", probe);
        }
        prop_assert_eq!(dump(&t).len(), reference.len());
    }
}
