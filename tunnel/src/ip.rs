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

/// The outer ECN field for an inner packet (RFC 6040 encapsulation, the kernel's
/// `ip_tunnel_ecn_encap`): a copy of the inner one, CE sent as ECT(0).
pub fn outer_ecn(p: &[u8]) -> u8 {
    let ecn = match p.first().map(|b| b >> 4) {
        Some(4) => p.get(1).map_or(0, |tos| tos & 3),
        Some(6) => p.get(1).map_or(0, |b| (b >> 4) & 3),
        _ => 0,
    };
    if ecn == 3 { 2 } else { ecn }
}

/// RFC 6040 decapsulation (the kernel's `INET_ECN_decapsulate`): congestion the underlay marked
/// on the outer header (CE) reaches an ECN-capable inner packet, and an outer ECT(1) turns an
/// inner ECT(0) into ECT(1) (Linux 5.9 on); IPv4's checksum follows the changed byte (RFC 1624).
pub fn decap_ecn(p: &mut [u8], outer: u8) {
    let v6 = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => false,
        Some(6) if p.len() >= 40 => true,
        _ => return,
    };
    let ecn = match (outer, if v6 { (p[1] >> 4) & 3 } else { p[1] & 3 }) {
        (3, 1 | 2) => 3,
        (1, 2) => 1,
        _ => return,
    };
    let old = u16::from_be_bytes([p[0], p[1]]);
    p[1] = if v6 { (p[1] & 0xcf) | (ecn << 4) } else { (p[1] & 0xfc) | ecn };
    if v6 {
        return;
    }
    let sum = u32::from(!u16::from_be_bytes([p[10], p[11]])) + u32::from(!old) + u32::from(u16::from_be_bytes([p[0], p[1]]));
    let sum = (sum & 0xffff) + (sum >> 16);
    p[10..12].copy_from_slice(&(!((sum & 0xffff) + (sum >> 16)) as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(tos: u8) -> Vec<u8> {
        let mut p = vec![0x45, tos, 0, 28, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        p.extend_from_slice(&[0; 8]);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn checksum(h: &[u8]) -> u16 {
        let mut sum: u32 = h.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn v6(tc: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60 | (tc >> 4);
        p[1] = (tc << 4) | 0x0a;
        p
    }

    #[test]
    fn the_outer_ecn_copies_the_inner_and_ce_goes_out_as_ect0() {
        for (inner, outer) in [(0, 0), (1, 1), (2, 2), (3, 2)] {
            assert_eq!(outer_ecn(&v4(0xb8 | inner)), outer, "v4 {inner}");
            assert_eq!(outer_ecn(&v6(0xb8 | inner)), outer, "v6 {inner}");
        }
        assert_eq!(outer_ecn(&[]), 0);
        assert_eq!(outer_ecn(&[0x45]), 0);
    }

    #[test]
    fn outer_ce_marks_an_ecn_capable_inner_packet_and_keeps_its_checksum_right() {
        // (inner, outer, inner after): CE reaches ECT(0) and ECT(1); outer ECT(1) turns ECT(0) into ECT(1).
        for (ecn, outer, after) in [(1u8, 3u8, 3u8), (2, 3, 3), (2, 1, 1)] {
            let mut p = v4(0xb8 | ecn);
            decap_ecn(&mut p, outer);
            assert_eq!(p[1], 0xb8 | after, "DSCP kept, ECN set");
            let mut h = p[..20].to_vec();
            h[10..12].fill(0);
            assert_eq!(u16::from_be_bytes([p[10], p[11]]), checksum(&h));
            let mut q = v6(0xb8 | ecn);
            decap_ecn(&mut q, outer);
            assert_eq!(((q[0] & 0x0f) << 4) | (q[1] >> 4), 0xb8 | after);
            assert_eq!(q[1] & 0x0f, 0x0a, "flow label kept");
        }
        // Not ECN-capable inside, nothing to say outside, or already said: unchanged.
        for (inner, outer) in [(0, 3), (0, 1), (1, 0), (1, 1), (2, 0), (2, 2), (3, 3), (3, 1), (1, 2)] {
            let (mut p, mut q) = (v4(inner), v6(inner));
            decap_ecn(&mut p, outer);
            decap_ecn(&mut q, outer);
            assert_eq!((p, q), (v4(inner), v6(inner)), "inner {inner} outer {outer}");
        }
        decap_ecn(&mut [0x45, 2], 3);
    }
}
