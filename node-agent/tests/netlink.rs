//! The agent's netlink reads against a real kernel, in a network namespace made here (root).

mod common;

use common::{in_netns_thread, ip};
use wgmesh_node_agent::netlink::Netlink;

/// A namespace that is deleted (with its links) when the test ends, also on panic.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let ns = Ns(format!("wgm-nl-{tag}-{}", std::process::id()));
        ip(&["netns", "add", &ns.0]);
        ns
    }
    fn ip(&self, args: &str) {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend(args.split_whitespace());
        ip(&a);
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn underlay_mtu(ns: &Ns, exclude: Option<&str>) -> Option<u32> {
    let exclude = exclude.map(str::to_owned);
    in_netns_thread(&ns.0, move || {
        let mut nl = Netlink::new().expect("netlink socket");
        let own = exclude.map(|n| nl.link(&n).expect("read link").expect("link exists").index);
        nl.underlay_mtu(own).expect("read underlay MTU")
    })
    .join()
    .expect("thread")
    .expect("enter namespace")
}

#[test]
fn a_multipath_default_route_gives_the_smallest_mtu_of_its_links_and_blackholes_count_for_nothing() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test creates a network namespace and must run as root");
    let ns = Ns::new("ecmp");
    for (dev, mtu) in [("a1", 1450), ("a2", 1400), ("a3", 1300)] {
        ns.ip(&format!("link add {dev} mtu {mtu} type veth peer name p{dev}"));
        ns.ip(&format!("link set {dev} up"));
    }
    // Only a blackhole default: no underlay to read.
    ns.ip("route add blackhole default metric 9999");
    assert_eq!(underlay_mtu(&ns, None), None);
    // An ECMP default (no RTA_OIF, only nexthops) on top of it.
    ns.ip("route add default nexthop dev a1 nexthop dev a2");
    assert_eq!(underlay_mtu(&ns, None), Some(1400));
    // A plain default through our own interface is skipped, anyone else's counts.
    ns.ip("route add default dev a3 metric 50");
    assert_eq!(underlay_mtu(&ns, Some("a3")), Some(1400));
    assert_eq!(underlay_mtu(&ns, None), Some(1300));
}
