//! The underlay lookup against a real kernel, in network namespaces made here (needs root and
//! `ip`). Each namespace is deleted with its links when its test ends, also on panic.

use std::os::fd::AsRawFd;
use std::process::Command;

use wgmesh_rtnl::Netlink;

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "these tests create network namespaces and must run as root");
        let ns = Ns(format!("wgm-rtnl-{tag}-{}", std::process::id()));
        ns.ip_global(&["netns", "add", &ns.0]);
        ns
    }
    fn ip_global(&self, args: &[&str]) {
        let o = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("ip: {e}"));
        assert!(o.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
    }
    fn ip(&self, args: &str) {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend(args.split_whitespace());
        self.ip_global(&a);
    }
    fn links(&self, list: &[(&str, u32)]) {
        for (dev, mtu) in list {
            self.ip(&format!("link add {dev} mtu {mtu} type veth peer name p{dev}"));
            self.ip(&format!("link set {dev} up"));
            self.ip(&format!("link set p{dev} up"));
        }
    }
    /// (names of the underlay links, their smallest MTU) as read from inside the namespace.
    fn underlay(&self, exclude: Option<&str>) -> (Vec<String>, Option<u32>) {
        let path = format!("/var/run/netns/{}", self.0);
        let exclude = exclude.map(str::to_owned);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a descriptor we own; it moves only this thread.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            let mut nl = Netlink::new().unwrap_or_else(|e| panic!("netlink: {e}"));
            let own = exclude.map(|n| nl.link(&n).ok().flatten().unwrap_or_else(|| panic!("no link {n}")).index);
            let mut names: Vec<String> = nl.underlay_links(own).unwrap_or_else(|e| panic!("{e}")).into_iter().map(|l| l.name).collect();
            names.sort();
            (names, nl.underlay_mtu(own).unwrap_or_else(|e| panic!("{e}")))
        })
        .join()
        .unwrap_or_else(|_| panic!("lookup thread"))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn ipv4_multipath_defaults_count_every_nexthop_and_a_blackhole_counts_for_nothing() {
    let ns = Ns::new("v4");
    ns.links(&[("a1", 1450), ("a2", 1400), ("a3", 1300)]);
    // Only a blackhole default: no underlay (the CNI plugin used to take it for one).
    ns.ip("route add blackhole default metric 9999");
    assert_eq!(ns.underlay(None), (vec![], None));
    // An ECMP default: no RTA_OIF, only nexthops.
    ns.ip("route add default nexthop dev a1 nexthop dev a2");
    assert_eq!(ns.underlay(None), (names(&["a1", "a2"]), Some(1400)));
    // A plain default through our own interface is skipped; anyone else's counts.
    ns.ip("route add default dev a3 metric 50");
    assert_eq!(ns.underlay(Some("a3")), (names(&["a1", "a2"]), Some(1400)));
    assert_eq!(ns.underlay(None), (names(&["a1", "a2", "a3"]), Some(1300)));
}

#[test]
fn ipv6_defaults_count_in_main_only() {
    let ns = Ns::new("v6");
    ns.links(&[("b1", 1500), ("b2", 1480), ("b3", 1280)]);
    for dev in ["b1", "b2", "b3"] {
        ns.ip(&format!("-6 addr add fd00:{}::1/64 dev {dev} nodad", &dev[1..]));
    }
    // wg-quick's full tunnel or an exit node: a default in a table of its own is not the underlay
    // (/proc/net/ipv6_route lists every table; the CNI plugin read it from there).
    ns.ip("-6 route add default dev b3 table 51820");
    ns.ip("-6 route add unreachable default metric 9999");
    assert_eq!(ns.underlay(None), (vec![], None));
    ns.ip("-6 route add default nexthop via fd00:1::2 dev b1 nexthop via fd00:2::2 dev b2");
    assert_eq!(ns.underlay(None), (names(&["b1", "b2"]), Some(1480)));
}
