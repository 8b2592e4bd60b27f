//! Pure: what the agent's routing table and policy rules must hold, and the difference to
//! what the kernel has.
//!
//! One table (api `ROUTING_TABLE`), selected for every packet not carrying the engine's own
//! fwmark by a rule at api `ROUTING_RULE_PRIORITY`, i.e. before `main`, so these routes beat
//! whatever another CNI put there. In it:
//! - each remote peer's allowed IPs → the wg interface (source: our tunnel address);
//! - fail-closed: the cluster pod CIDRs → `unreachable`, so a pod address no peer covers is
//!   dropped instead of leaking in plaintext through `main`;
//! - the local pod CIDRs → `throw`, so local pods keep using `main` (the bridge).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use wgmesh_api::cidr::Family;
use wgmesh_api::IpCidr;

/// What a route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// Out of the interface with this index, preferring source address `src`.
    Unicast { oif: u32, src: Option<IpAddr> },
    /// Dropped with an ICMP unreachable to the sender.
    Unreachable,
    /// Lookup continues with the next rule (for us: `main`).
    Throw,
    /// Any other route type found in our table (never desired, so it is removed).
    Other(u8),
}

/// One route in our table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpCidr,
    pub table: u32,
    pub kind: RouteKind,
}

/// One policy rule: `[not] fwmark <fwmark> lookup <table> pref <priority>`; ours is inverted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub v6: bool,
    pub priority: u32,
    pub table: u32,
    /// 0: no fwmark match.
    pub fwmark: u32,
    /// Which bits of the mark are compared: ours compares the mark's own bits.
    pub fwmask: u32,
    pub invert: bool,
}

/// Everything the routes depend on.
#[derive(Clone, Debug, Default)]
pub struct RoutingInputs {
    pub table: u32,
    /// Index of the wg interface, `None` while it does not exist.
    pub link: Option<u32>,
    pub tunnel_addresses: Vec<IpAddr>,
    pub peer_prefixes: Vec<IpCidr>,
    pub cluster_cidrs: Vec<IpCidr>,
    pub local_pod_cidrs: Vec<IpCidr>,
    pub fail_closed: bool,
}

/// The routes our table must hold, by destination (a destination has one route in a table).
pub fn desired_routes(i: &RoutingInputs) -> BTreeMap<IpCidr, Route> {
    let mut out = BTreeMap::new();
    let mut put = |dst: IpCidr, kind| {
        out.insert(
            dst,
            Route {
                dst,
                table: i.table,
                kind,
            },
        );
    };
    if i.fail_closed {
        for c in &i.cluster_cidrs {
            put(*c, RouteKind::Unreachable);
        }
        for c in &i.local_pod_cidrs {
            put(*c, RouteKind::Throw);
        }
    }
    if let Some(oif) = i.link {
        for c in &i.peer_prefixes {
            let src = i
                .tunnel_addresses
                .iter()
                .find(|a| a.is_ipv4() == (c.family() == Family::V4))
                .copied();
            put(*c, RouteKind::Unicast { oif, src });
        }
    }
    out
}

/// The rules: one per family that has a route in the table (IPv6 may be disabled on a host).
pub fn desired_rules(
    routes: &BTreeMap<IpCidr, Route>,
    priority: u32,
    table: u32,
    fwmark: u32,
) -> Vec<Rule> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        if routes.keys().any(|c| (c.family() == Family::V6) == v6) {
            out.push(Rule {
                v6,
                priority,
                table,
                fwmark,
                // its own bits only: a bit another program sets on the same packet must not
                // make the engine's UDP fall into the mesh table and loop
                fwmask: fwmark,
                invert: true,
            });
        }
    }
    out
}

/// Route changes: `replace` creates or overwrites, `delete` removes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteDiff {
    pub replace: Vec<Route>,
    pub delete: Vec<Route>,
}

impl RouteDiff {
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty() && self.delete.is_empty()
    }
}

/// Compares our table's content with the desired routes. A route whose destination stays but
/// whose kind or interface changed is overwritten in place, never deleted first.
pub fn diff_routes(observed: &[Route], desired: &BTreeMap<IpCidr, Route>) -> RouteDiff {
    let exact: BTreeSet<IpCidr> = observed
        .iter()
        .filter(|o| desired.get(&o.dst) == Some(o))
        .map(|o| o.dst)
        .collect();
    let mut d = RouteDiff::default();
    let mut kept: BTreeSet<IpCidr> = BTreeSet::new();
    for o in observed {
        let wanted = desired.contains_key(&o.dst);
        let is_exact = desired.get(&o.dst) == Some(o);
        // one route per destination survives: the exact one, else the one `replace` overwrites
        let survives = wanted && (is_exact || !exact.contains(&o.dst)) && kept.insert(o.dst);
        // a second copy of the exact route is the same kernel route: deleting it deletes that
        if !survives && !is_exact {
            d.delete.push(*o);
        }
    }
    for (dst, w) in desired {
        if !exact.contains(dst) {
            d.replace.push(*w);
        }
    }
    d
}

/// Rule changes.
pub fn diff_rules(observed: &[Rule], desired: &[Rule]) -> (Vec<Rule>, Vec<Rule>) {
    let add = desired
        .iter()
        .filter(|r| !observed.contains(r))
        .copied()
        .collect();
    let del = observed
        .iter()
        .filter(|r| !desired.contains(r))
        .copied()
        .collect();
    (add, del)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> IpCidr {
        s.parse().expect("cidr")
    }

    fn inputs() -> RoutingInputs {
        RoutingInputs {
            table: 51820,
            link: Some(7),
            tunnel_addresses: vec![
                "10.244.1.1".parse().expect("ip"),
                "fd00:244:0:1::1".parse().expect("ip"),
            ],
            peer_prefixes: vec![c("10.244.2.0/24"), c("fd00:244:0:2::/64"), c("10.8.0.0/24")],
            cluster_cidrs: vec![c("10.244.0.0/16"), c("fd00:244::/48")],
            local_pod_cidrs: vec![c("10.244.1.0/24"), c("fd00:244:0:1::/64")],
            fail_closed: true,
        }
    }

    #[test]
    fn peers_route_into_the_tunnel_the_rest_of_the_pod_network_is_unreachable() {
        let r = desired_routes(&inputs());
        assert_eq!(r.len(), 7);
        assert_eq!(r[&c("10.244.0.0/16")].kind, RouteKind::Unreachable);
        assert_eq!(r[&c("fd00:244::/48")].kind, RouteKind::Unreachable);
        assert_eq!(r[&c("10.244.1.0/24")].kind, RouteKind::Throw);
        assert_eq!(
            r[&c("10.244.2.0/24")].kind,
            RouteKind::Unicast {
                oif: 7,
                src: Some("10.244.1.1".parse().expect("ip"))
            }
        );
        assert_eq!(
            r[&c("fd00:244:0:2::/64")].kind,
            RouteKind::Unicast {
                oif: 7,
                src: Some("fd00:244:0:1::1".parse().expect("ip"))
            }
        );
        let rules = desired_rules(&r, 100, 51820, 51820);
        assert_eq!(rules.len(), 2);
    }

    #[test]
    fn without_the_interface_only_the_drops_remain_and_fail_open_installs_no_drops() {
        let mut i = inputs();
        i.link = None;
        let r = desired_routes(&i);
        assert!(r
            .values()
            .all(|x| !matches!(x.kind, RouteKind::Unicast { .. })));
        assert_eq!(r.len(), 4);
        i.link = Some(7);
        i.fail_closed = false;
        let r = desired_routes(&i);
        assert_eq!(r.len(), 3);
        assert!(r
            .values()
            .all(|x| matches!(x.kind, RouteKind::Unicast { .. })));
        i.peer_prefixes.clear();
        assert!(desired_rules(&desired_routes(&i), 100, 51820, 51820).is_empty());
    }

    #[test]
    fn a_route_listed_twice_is_not_deleted() {
        // a kernel without IPv6 answers the IPv6 dump with the IPv4 routes again
        let want = desired_routes(&inputs());
        let mut have: Vec<Route> = want.values().copied().collect();
        have.extend(want.values().filter(|r| r.dst.addr().is_ipv4()).copied());
        assert!(diff_routes(&have, &want).is_empty());
    }

    #[test]
    fn diff_touches_only_what_differs() {
        let want = desired_routes(&inputs());
        let mut have: Vec<Route> = want.values().copied().collect();
        assert!(diff_routes(&have, &want).is_empty());
        // the interface was re-created with a new index; a stale peer route lingers
        for r in &mut have {
            if let RouteKind::Unicast { oif, .. } = &mut r.kind {
                *oif = 3;
            }
        }
        have.push(Route {
            dst: c("10.244.9.0/24"),
            table: 51820,
            kind: RouteKind::Unicast { oif: 3, src: None },
        });
        let d = diff_routes(&have, &want);
        assert_eq!(d.replace.len(), 3);
        assert_eq!(d.delete.len(), 1);
        assert!(d.delete.iter().any(|r| r.dst == c("10.244.9.0/24")));
    }

    #[test]
    fn rules_diff() {
        let a = Rule {
            v6: false,
            priority: 100,
            table: 51820,
            fwmark: 51820,
            fwmask: 51820,
            invert: true,
        };
        let stale = Rule { fwmark: 0, ..a };
        let (add, del) = diff_rules(&[stale], &[a]);
        assert_eq!((add, del), (vec![a], vec![stale]));
    }
}
