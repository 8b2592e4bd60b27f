//! Synchronous rtnetlink (NETLINK_ROUTE): one request and its reply at a time, for the node
//! agent's single control loop and the CNI plugin's one lookup. Both find the underlay here, so
//! the wg link's MTU (agent) and the pods' (plugin) come from the same reading of the kernel.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use netlink_packet_core;
pub use netlink_packet_route;

pub const RT_TABLE_MAIN: u32 = 254;

/// A link as the callers need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    /// A bridge or a veth: where a host keeps its own pods.
    pub local_kind: bool,
}

/// One rtnetlink socket.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

pub fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

impl Netlink {
    pub fn new() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { sock, seq: 0, buf: vec![0; 256 * 1024] })
    }

    /// Sends one request and collects the reply: every message of a dump, or the ack.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let bytes = self.buf.get(offset..n).unwrap_or_default();
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}"))
                })?;
                let len = m.header.length as usize;
                let seq = m.header.sequence_number;
                if seq == self.seq {
                    match m.payload {
                        NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::Error(e) => {
                            if e.code.is_some() {
                                return Err(e.to_io());
                            }
                            // an ack ends a non-dump request
                            if !dump {
                                return Ok(replies);
                            }
                        }
                        NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
            }
        }
    }

    /// All links.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, if it exists.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Every route of every table, both families.
    pub fn all_routes(&mut self) -> io::Result<Vec<RouteMessage>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = fam;
            let replies = self.request(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
            out.extend(routes_of(replies, fam));
        }
        Ok(out)
    }

    /// The links holding a unicast default route in `main`, IPv4 or IPv6, every nexthop of a
    /// multipath one; without `exclude` (our own interface). Other tables (wg-quick's 51820, an
    /// exit node's) and blackhole or unreachable defaults are not the underlay.
    pub fn underlay_links(&mut self, exclude: Option<u32>) -> io::Result<Vec<Link>> {
        let oifs = default_oifs(&self.all_routes()?);
        Ok(self.links()?.into_iter().filter(|l| oifs.contains(&l.index) && Some(l.index) != exclude).collect())
    }

    /// Prefixes `main` reaches directly on a bridge or a veth (unicast, no gateway, one link;
    /// for IPv4 scope link, IPv6 routes have none) that is neither an underlay link (see
    /// [`Netlink::underlay_links`]) nor named in `exclude`: what lies on the host's own pod
    /// bridges and pod veths, never on a tunnel or shared L2 device. One dump of each.
    pub fn attached_prefixes(&mut self, exclude: &[&str]) -> io::Result<Vec<(IpAddr, u8)>> {
        let routes = self.all_routes()?;
        let underlay = default_oifs(&routes);
        let local: Vec<u32> = self
            .links()?
            .iter()
            .filter(|l| l.local_kind && !underlay.contains(&l.index) && !exclude.contains(&l.name.as_str()))
            .map(|l| l.index)
            .collect();
        Ok(routes
            .iter()
            .filter(|r| route_table(r) == RT_TABLE_MAIN && r.header.kind == RouteType::Unicast)
            .filter(|r| r.header.address_family == AddressFamily::Inet6 || r.header.scope == RouteScope::Link)
            .filter(|r| !r.attributes.iter().any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Via(_) | RouteAttribute::MultiPath(_))))
            .filter(|r| r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if local.contains(i))))
            .filter_map(|r| {
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(d) => ip_of(d),
                    _ => None,
                })?;
                Some((dst, r.header.destination_prefix_length))
            })
            .collect())
    }

    /// Smallest MTU of the underlay links (see [`Netlink::underlay_links`]); `None` without one.
    pub fn underlay_mtu(&mut self, exclude: Option<u32>) -> io::Result<Option<u32>> {
        Ok(self.underlay_links(exclude)?.iter().map(|l| l.mtu).min())
    }
}

/// The links of the unicast default routes of `main` in `routes`: the underlay.
fn default_oifs(routes: &[RouteMessage]) -> Vec<u32> {
    routes
        .iter()
        .filter(|r| route_table(r) == RT_TABLE_MAIN && r.header.destination_prefix_length == 0)
        .filter(|r| r.header.kind == RouteType::Unicast)
        // A multipath (ECMP) default names its links in the nexthops, not in RTA_OIF.
        .flat_map(|r| {
            r.attributes.iter().flat_map(|a| match a {
                RouteAttribute::Oif(i) => vec![*i],
                RouteAttribute::MultiPath(hops) => hops.iter().map(|h| h.interface_index).collect(),
                _ => Vec::new(),
            })
        })
        .collect()
}

/// The routes of family `fam` in a dump's replies. A kernel without IPv6 (`ipv6.disable=1`)
/// answers an IPv6 dump with every family's routes: each IPv4 route would be seen twice.
pub fn routes_of(replies: Vec<RouteNetlinkMessage>, fam: AddressFamily) -> impl Iterator<Item = RouteMessage> {
    replies.into_iter().filter_map(move |r| match r {
        RouteNetlinkMessage::NewRoute(r) if r.header.address_family == fam => Some(r),
        _ => None,
    })
}

/// An IPv4 or IPv6 address attribute of a route.
pub fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut mtu = 0;
    let mut local_kind = false;
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkInfo(info) => {
                local_kind = info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge | InfoKind::Veth)))
            }
            _ => {}
        }
    }
    Link { index: l.header.index, name, mtu, up: l.header.flags.contains(LinkFlags::Up), local_kind }
}

/// The route's table (RTA_TABLE; the header's byte holds only tables below 256).
pub fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}


#[cfg(test)]
mod tests {
    use super::*;

    fn route(fam: AddressFamily) -> RouteNetlinkMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = fam;
        RouteNetlinkMessage::NewRoute(m)
    }

    #[test]
    fn an_ipv6_dump_answered_with_every_family_yields_only_ipv6_routes() {
        // what a kernel booted with ipv6.disable=1 sends back for an IPv6 route dump
        let replies = vec![route(AddressFamily::Inet), route(AddressFamily::Inet6), route(AddressFamily::Inet)];
        let fams = |fam| routes_of(replies.clone(), fam).map(|r| r.header.address_family).collect::<Vec<_>>();
        assert_eq!(fams(AddressFamily::Inet6), [AddressFamily::Inet6]);
        assert_eq!(fams(AddressFamily::Inet), [AddressFamily::Inet, AddressFamily::Inet]);
    }
}
