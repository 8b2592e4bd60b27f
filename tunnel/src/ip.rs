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
    let acc = u64::from(!u16::from_be_bytes([p[10], p[11]])) + u64::from(!old) + u64::from(u16::from_be_bytes([p[0], p[1]]));
    p[10..12].copy_from_slice(&(!fold(acc)).to_be_bytes());
}

/// The ICMP error the kernel's `wg_xmit` sends when no peer takes a packet (host unreachable;
/// for IPv6 address unreachable), written into `buf`; its length and the sender it goes to: the
/// sender learns at once instead of timing out. None where RFC 1122 §3.2.2 and RFC 4443 §2.4
/// (and the kernel) send none: about an ICMP error, a later IPv4 fragment, or from or to no
/// single host. It comes from the unreachable address, as one of the host's own would be a
/// martian on the TUN.
pub fn unreachable(p: &[u8], buf: &mut [u8; 1280]) -> Option<(usize, IpAddr)> {
    let (src, len) = source_and_len(p)?;
    let (p, dst) = (&p[..len], destination(p)?);
    let (h, n, pseudo) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ihl = usize::from(p[0] & 15) * 4;
            let icmp_error = p[9] == 1 && p.get(ihl).is_none_or(|&t| t > 18 || matches!(t, 3 | 4 | 5 | 11 | 12));
            let host = |a: Ipv4Addr| !(a.is_unspecified() || a.is_multicast() || a.is_broadcast());
            if ihl < 20 || icmp_error || u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0 || !host(s) || !host(d) {
                return None;
            }
            // RFC 1812 §4.3.2.3: at most 576 bytes; the TOS the kernel's icmp_send gives errors.
            let n = (28 + len).min(576);
            buf[..12].copy_from_slice(&[0x45, (p[1] & 0x1e) | 0xc0, (n >> 8) as u8, n as u8, 0, 0, 0, 0, 64, 1, 0, 0]);
            buf[12..16].copy_from_slice(&d.octets());
            buf[16..20].copy_from_slice(&s.octets());
            let c = !(sum(&buf[..20]) as u16);
            buf[10..12].copy_from_slice(&c.to_be_bytes());
            buf[20..28].copy_from_slice(&[3, 1, 0, 0, 0, 0, 0, 0]);
            (20, n, 0)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            if s.is_unspecified() || s.is_multicast() || d.is_multicast() || icmp6_error(p) {
                return None;
            }
            // RFC 4443 §2.4 (c): as much of the packet as fits in the minimum IPv6 MTU.
            let n = (48 + len).min(1280);
            buf[..8].copy_from_slice(&[0x60, 0, 0, 0, ((n - 40) >> 8) as u8, (n - 40) as u8, 58, 64]);
            buf[8..24].copy_from_slice(&d.octets());
            buf[24..40].copy_from_slice(&s.octets());
            buf[40..48].copy_from_slice(&[1, 3, 0, 0, 0, 0, 0, 0]);
            (40, n, u64::from(sum(&buf[8..40])) + (n - 40) as u64 + 58)
        }
        _ => return None,
    };
    buf[h + 8..n].copy_from_slice(&p[..n - h - 8]);
    let c = !fold(pseudo + u64::from(sum(&buf[h..n])));
    buf[h + 2..h + 4].copy_from_slice(&c.to_be_bytes());
    Some((n, src))
}

/// Whether an IPv6 packet is an ICMPv6 error, or too short to tell, behind any extension
/// headers (the kernel's `is_ineligible`).
fn icmp6_error(p: &[u8]) -> bool {
    let (mut next, mut at) = (p[6], 40);
    while next != 58 {
        let Some(&[n, l]) = p.get(at..at + 2) else { return false };
        let later_fragment = || p.get(at + 2..at + 4).is_none_or(|o| u16::from_be_bytes([o[0], o[1]]) >> 3 != 0);
        at += match next {
            0 | 43 | 60 => (usize::from(l) + 1) * 8,
            51 => (usize::from(l) + 2) * 4,
            44 if !later_fragment() => 8,
            _ => return false,
        };
        next = n;
    }
    p.get(at).is_none_or(|&t| t < 128)
}

/// RFC 1071 sum of `bytes` as big-endian 16-bit words, folded to 16 bits. Summed as native
/// 32-bit words (vectorised) and swapped once: the one's-complement sum does not depend on
/// byte order.
pub fn sum(bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512 BW, checked just above.
        return u32::from(u16::from_be(fold(unsafe { words_avx512(bytes) })));
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return u32::from(u16::from_be(fold(unsafe { words_avx2(bytes) })));
    }
    u32::from(u16::from_be(fold(words(bytes))))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn words_avx2(bytes: &[u8]) -> u64 {
    words(bytes)
}

/// Twice the width of AVX2: 1420 bytes in 19 instead of 30 ns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn words_avx512(bytes: &[u8]) -> u64 {
    words(bytes)
}

#[inline(always)]
fn words(bytes: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut tail = [0u8; 4];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    acc + u64::from(u32::from_ne_bytes(tail))
}

/// Folds a sum of 16-bit words to 16 bits (end-around carry).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
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

    /// A packet of `len` bytes from 10.0.0.1 to `dst`, protocol `proto`, with bytes 20.. counting up.
    fn packet4(dst: [u8; 4], proto: u8, len: usize) -> Vec<u8> {
        let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
        p[..12].copy_from_slice(&[0x45, 0xb9, (len >> 8) as u8, len as u8, 0x12, 0x34, 0x40, 0, 63, proto, 0, 0]);
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&dst);
        p
    }

    fn packet6(dst: Ipv6Addr, next: u8, len: usize) -> Vec<u8> {
        let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
        p[..8].copy_from_slice(&[0x60, 0, 0, 0, ((len - 40) >> 8) as u8, (len - 40) as u8, next, 64]);
        p[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    #[test]
    fn an_unroutable_ipv4_packet_gets_host_unreachable_from_its_destination() {
        let mut buf = [0u8; 1280];
        let p = packet4([10, 0, 0, 9], 17, 1400);
        let (n, to) = unreachable(&p, &mut buf).expect("an error");
        assert_eq!(to, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), "to the sender");
        assert_eq!(n, 576, "RFC 1812: at most 576 bytes");
        let e = &buf[..n];
        assert_eq!(e[..10], [0x45, 0xd8, 2, 64, 0, 0, 0, 0, 64, 1], "TOS: internetwork control, the DSCP's low bits kept");
        assert_eq!((&e[12..16], &e[16..20]), (&[10u8, 0, 0, 9][..], &[10u8, 0, 0, 1][..]), "from the unreachable host, to the sender");
        assert_eq!(checksum(&e[..20]), 0, "header checksum");
        assert_eq!(e[20..24], [3, 1, e[22], e[23]], "destination unreachable, host unreachable");
        assert_eq!(e[24..28], [0; 4]);
        assert_eq!(checksum(&e[20..]), 0, "ICMP checksum");
        assert_eq!(&e[28..], &p[..548], "the start of the packet, quoted");
        // A short one is quoted whole; its padding is not.
        let mut p = packet4([10, 0, 0, 9], 6, 60);
        p.extend_from_slice(&[0xee; 8]);
        let (n, _) = unreachable(&p, &mut buf).unwrap();
        assert_eq!((n, &buf[28..n]), (88, &p[..60]));
        assert_eq!(checksum(&buf[20..n]), 0);
        // An echo request is answered; an error about an error, a later fragment, a packet to a
        // group or from nobody are not; nor is an ICMP too short to tell.
        let mut echo = packet4([10, 0, 0, 9], 1, 84);
        echo[20] = 8;
        assert!(unreachable(&echo, &mut buf).is_some());
        for t in [3, 4, 5, 11, 12, 19, 200] {
            echo[20] = t;
            assert_eq!(unreachable(&echo, &mut buf), None, "ICMP type {t}");
        }
        assert_eq!(unreachable(&packet4([10, 0, 0, 9], 1, 20), &mut buf), None);
        let mut frag = packet4([10, 0, 0, 9], 17, 100);
        frag[7] = 1;
        assert_eq!(unreachable(&frag, &mut buf), None, "fragment at offset 8");
        frag[6] = 0x20;
        frag[7] = 0;
        assert!(unreachable(&frag, &mut buf).is_some(), "the first fragment is answered");
        for dst in [[224, 0, 0, 1], [255, 255, 255, 255]] {
            assert_eq!(unreachable(&packet4(dst, 17, 100), &mut buf), None, "{dst:?}");
        }
        let mut p = packet4([10, 0, 0, 9], 17, 100);
        p[12..16].fill(0);
        assert_eq!(unreachable(&p, &mut buf), None, "from 0.0.0.0");
        assert_eq!(unreachable(&p[..19], &mut buf), None);
    }

    #[test]
    fn an_unroutable_ipv6_packet_gets_address_unreachable_from_its_destination() {
        let mut buf = [0u8; 1280];
        let to: Ipv6Addr = "fd00::9".parse().unwrap();
        let p = packet6(to, 17, 1400);
        let (n, sender) = unreachable(&p, &mut buf).expect("an error");
        assert_eq!(sender, "fd00::1".parse::<IpAddr>().unwrap(), "to the sender");
        assert_eq!(n, 1280, "RFC 4443: no more than the minimum MTU");
        let e = &buf[..n];
        assert_eq!(e[..8], [0x60, 0, 0, 0, 0x04, 0xd8, 58, 64]);
        assert_eq!((&e[8..24], &e[24..40]), (&to.octets()[..], &p[8..24]), "from the unreachable address, to the sender");
        assert_eq!((e[40], e[41], &e[44..48]), (1, 3, &[0u8; 4][..]), "destination unreachable, address unreachable");
        let mut pseudo = e[8..40].to_vec();
        pseudo.extend_from_slice(&[0, 0, 0x04, 0xd8, 0, 0, 0, 58]);
        pseudo.extend_from_slice(&e[40..]);
        assert_eq!(checksum(&pseudo), 0, "ICMPv6 checksum over the pseudo-header");
        assert_eq!(&e[48..], &p[..1232]);
        // Echo requests are answered, errors are not, also behind extension headers.
        let mut echo = packet6(to, 58, 64);
        echo[40] = 128;
        assert!(unreachable(&echo, &mut buf).is_some());
        echo[40] = 1;
        assert_eq!(unreachable(&echo, &mut buf), None, "an error about an error");
        let mut hop = packet6(to, 0, 72);
        hop[40..42].copy_from_slice(&[58, 1]); // hop-by-hop options of 16 bytes, then ICMPv6
        hop[56] = 2;
        assert_eq!(unreachable(&hop, &mut buf), None, "packet too big behind hop-by-hop options");
        hop[56] = 129;
        assert!(unreachable(&hop, &mut buf).is_some(), "echo reply behind hop-by-hop options");
        let mut frag = packet6(to, 44, 72);
        frag[40..44].copy_from_slice(&[58, 0, 0, 8]); // fragment header, offset 1 (8 bytes)
        frag[48] = 1;
        assert!(unreachable(&frag, &mut buf).is_some(), "a later fragment's data is no ICMPv6 type");
        frag[43] = 0;
        assert_eq!(unreachable(&frag, &mut buf), None, "the first fragment's ICMPv6 error");
        assert_eq!(unreachable(&packet6(to, 58, 40), &mut buf), None, "ICMPv6 without a type");
        assert_eq!(unreachable(&packet6("ff02::1".parse().unwrap(), 17, 60), &mut buf), None, "to a group");
        let mut p = packet6(to, 17, 60);
        p[8..24].fill(0);
        assert_eq!(unreachable(&p, &mut buf), None, "from ::");
    }

    #[test]
    fn sum_matches_the_byte_pair_definition() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        // Every width this CPU can run, not only the one `sum` picks.
        type Width = (&'static str, fn(&[u8]) -> u64);
        let mut widths: Vec<Width> = vec![("scalar", words)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                widths.push(("avx2", |b| unsafe { words_avx2(b) }));
            }
            if std::is_x86_feature_detected!("avx512bw") {
                // SAFETY: the CPU has AVX-512 BW, checked just above.
                widths.push(("avx512", |b| unsafe { words_avx512(b) }));
            }
        }
        for len in [0, 1, 2, 3, 4, 5, 20, 63, 64, 65, 127, 1000, 1001] {
            let d = &data[..len];
            let naive: u64 = d.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
            assert_eq!(sum(d), u32::from(fold(naive)), "length {len}");
            for (name, w) in &widths {
                assert_eq!(u16::from_be(fold(w(d))), fold(naive), "{name}, length {len}");
            }
        }
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
