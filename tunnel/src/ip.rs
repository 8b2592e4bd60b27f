//! Just enough of the inner IPv4/IPv6 header for routing, the source check and trimming.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The inner destination, which selects the peer on send.
pub fn destination(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?))),
        6 if p.len() >= 40 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?))),
        _ => None,
    }
}

/// The inner source and the packet's true length (padding excluded), after the kernel's
/// checks: IPv4 needs 20 ≤ total_len ≤ len, IPv6 needs 40 + payload_len ≤ len.
pub fn source_and_len(p: &[u8]) -> Option<(IpAddr, usize)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let len = u16::from_be_bytes([p[2], p[3]]) as usize;
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?);
            (20..=p.len()).contains(&len).then_some((IpAddr::V4(src), len))
        }
        6 if p.len() >= 40 => {
            let len = 40 + u16::from_be_bytes([p[4], p[5]]) as usize;
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?);
            (len <= p.len()).then_some((IpAddr::V6(src), len))
        }
        _ => None,
    }
}
