//! What the agent asks of rtnetlink: the wg link (MTU, up, addresses), the routes of its table
//! and its policy rules. The socket, links and the underlay are the shared `wgmesh-rtnl`'s.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use wgmesh_api::IpCidr;

use crate::routes::{Route, RouteKind, Rule};

pub use wgmesh_rtnl::Link;
use wgmesh_rtnl::{ip_of, is_errno, route_table};

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The agent's requests on top of the shared socket (whose `links`, `underlay_mtu` and
/// `request` it reaches through `Deref`).
pub struct Netlink(wgmesh_rtnl::Netlink);

impl std::ops::Deref for Netlink {
    type Target = wgmesh_rtnl::Netlink;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Netlink {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Netlink {
    pub fn new() -> io::Result<Self> {
        wgmesh_rtnl::Netlink::new().map(Netlink)
    }

    /// Sets MTU (if given) and brings the link up.
    pub fn set_link(&mut self, index: u32, mtu: Option<u32>, up: bool) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        m.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)
            .map(drop)
    }

    /// Deletes a link (the engine exits when its TUN goes away).
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(m), NLM_F_ACK)
            .map(drop)
    }

    /// Addresses on link `index` as host prefixes (address, prefix length).
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(IpAddr, u8)>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            // IFA_LOCAL is the address on point-to-point links; IFA_ADDRESS the peer there
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(addr) {
                out.push((ip, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    fn address_message(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = family(&ip);
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        m
    }

    /// Adds `ip/prefix` to link `index` (no duplicate address detection: it is a tunnel).
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        let mut m = Self::address_message(index, ip, prefix);
        m.header.flags = AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        match self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            r => r.map(drop),
        }
    }

    pub fn delete_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        let m = Self::address_message(index, ip, prefix);
        self.request(RouteNetlinkMessage::DelAddress(m), NLM_F_ACK)
            .map(drop)
    }

    /// Our routes in `table`: those carrying [`PROTOCOL`]. Another program's routes there
    /// (wg-quick's default route uses table 51820 too) are never listed, so never removed.
    pub fn routes(&mut self, table: u32) -> io::Result<Vec<Route>> {
        Ok(self
            .all_routes()?
            .iter()
            .filter(|r| route_table(r) == table && r.header.protocol == RouteProtocol::from(PROTOCOL))
            .filter_map(route_of)
            .collect())
    }

    /// Creates or overwrites a route.
    pub fn replace_route(&mut self, r: &Route) -> io::Result<()> {
        let m = route_message(r, false);
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Deletes a route; one that is already gone is fine.
    pub fn delete_route(&mut self, r: &Route) -> io::Result<()> {
        let m = route_message(r, true);
        match self.request(RouteNetlinkMessage::DelRoute(m), NLM_F_ACK) {
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => Ok(()),
            r => r.map(drop),
        }
    }

    /// Our rules, both families: those carrying [`PROTOCOL`], into any table (an earlier run
    /// with another `--table` left one, which would shadow the new table), and those into
    /// `table` at our `priority` with no protocol at all (kernels before 4.17 drop the
    /// attribute; earlier agents did not set it).
    pub fn rules(&mut self, table: u32, priority: u32) -> io::Result<Vec<Rule>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RuleMessage::default();
            m.header.family = fam;
            let replies = match self.request(RouteNetlinkMessage::GetRule(m), NLM_F_DUMP) {
                // IPv6 disabled in this kernel: no IPv6 rules
                Err(e) if fam == AddressFamily::Inet6 && is_errno(&e, libc::EAFNOSUPPORT) => {
                    continue
                }
                r => r?,
            };
            for r in replies {
                let RouteNetlinkMessage::NewRule(r) = r else {
                    continue;
                };
                let rule = rule_of(&r);
                // Only our rules are ours: another program's rule at our priority (Cilium
                // moves `lookup local` there) or into the same table (wg-quick's `not fwmark
                // 51820 lookup 51820`) must never be touched.
                let proto = r.attributes.iter().find_map(|a| match a {
                    RuleAttribute::Protocol(p) => Some(*p),
                    _ => None,
                });
                let ours = match proto {
                    None | Some(RouteProtocol::Unspec) => rule.priority == priority && rule.table == table,
                    Some(p) => p == RouteProtocol::from(PROTOCOL),
                };
                if ours {
                    out.push(rule);
                }
            }
        }
        Ok(out)
    }

    pub fn add_rule(&mut self, r: &Rule) -> io::Result<()> {
        match self.request(
            RouteNetlinkMessage::NewRule(rule_message(r)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            r => r.map(drop),
        }
    }

    pub fn delete_rule(&mut self, r: &Rule) -> io::Result<()> {
        let gone = |e: &io::Error| is_errno(e, libc::ENOENT) || is_errno(e, libc::ESRCH);
        match self.request(RouteNetlinkMessage::DelRule(rule_message(r)), NLM_F_ACK) {
            // one without a protocol (see `rules`) is only found by a request without one
            Err(e) if gone(&e) => {
                let mut m = rule_message(r);
                m.attributes.retain(|a| !matches!(a, RuleAttribute::Protocol(_)));
                match self.request(RouteNetlinkMessage::DelRule(m), NLM_F_ACK) {
                    Err(e) if gone(&e) => Ok(()),
                    r => r.map(drop),
                }
            }
            r => r.map(drop),
        }
    }

    /// MTU of the link called `name`.
    pub fn link_mtu(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self.link(name)?.map(|l| l.mtu))
    }
}

/// The route and rule protocol that marks what the agent installed (`ip route show proto 87`);
/// unassigned in iproute2's rt_protos.
pub const PROTOCOL: u8 = 87;

fn route_of(r: &RouteMessage) -> Option<Route> {
    let mut dst = None;
    let mut oif = None;
    let mut src = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(s) => src = ip_of(s),
            _ => {}
        }
    }
    let dst = match (dst, r.header.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let dst = IpCidr::new(dst, r.header.destination_prefix_length).ok()?;
    let kind = match r.header.kind {
        RouteType::Unicast => RouteKind::Unicast {
            oif: oif.unwrap_or(0),
            src,
        },
        RouteType::Unreachable => RouteKind::Unreachable,
        RouteType::Throw => RouteKind::Throw,
        other => RouteKind::Other(u8::from(other)),
    };
    Some(Route {
        dst,
        table: route_table(r),
        kind,
    })
}

fn route_message(r: &Route, delete: bool) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(&r.dst.addr());
    m.header.destination_prefix_length = r.dst.prefix();
    m.header.table = if r.table < 256 { r.table as u8 } else { 0 };
    // on delete too: protocol 0 would match another program's route to the same prefix
    m.header.protocol = RouteProtocol::from(PROTOCOL);
    m.header.kind = match r.kind {
        RouteKind::Unicast { .. } => RouteType::Unicast,
        RouteKind::Unreachable => RouteType::Unreachable,
        RouteKind::Throw => RouteType::Throw,
        RouteKind::Other(t) => RouteType::from(t),
    };
    // delete matches any scope; a device route without gateway is link-scoped, like `ip route`
    m.header.scope = match (delete, r.kind) {
        (true, _) => RouteScope::NoWhere,
        (false, RouteKind::Unicast { .. }) => RouteScope::Link,
        (false, _) => RouteScope::Universe,
    };
    m.attributes.push(RouteAttribute::Table(r.table));
    m.attributes
        .push(RouteAttribute::Destination(r.dst.addr().into()));
    if let RouteKind::Unicast { oif, src } = r.kind {
        if oif != 0 {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        if let (Some(s), false) = (src, delete) {
            m.attributes.push(RouteAttribute::PrefSource(s.into()));
        }
    }
    m
}

fn rule_of(r: &RuleMessage) -> Rule {
    let mut rule = Rule {
        v6: r.header.family == AddressFamily::Inet6,
        priority: 0,
        table: u32::from(r.header.table),
        fwmark: 0,
        fwmask: 0,
        invert: r.header.flags.contains(RuleFlags::Invert),
    };
    for a in &r.attributes {
        match a {
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Table(t) => rule.table = *t,
            RuleAttribute::FwMark(m) => rule.fwmark = *m,
            RuleAttribute::FwMask(m) => rule.fwmask = *m,
            _ => {}
        }
    }
    rule
}

fn rule_message(r: &Rule) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = if r.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.header.table = if r.table < 256 { r.table as u8 } else { 0 };
    m.header.action = RuleAction::ToTable;
    if r.invert {
        m.header.flags = RuleFlags::Invert;
    }
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m.attributes.push(RuleAttribute::Table(r.table));
    m.attributes.push(RuleAttribute::Protocol(RouteProtocol::from(PROTOCOL)));
    if r.fwmark != 0 {
        m.attributes.push(RuleAttribute::FwMark(r.fwmark));
        m.attributes.push(RuleAttribute::FwMask(r.fwmask));
    }
    m
}
