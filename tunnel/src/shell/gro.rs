//! Receive coalescing for the TUN (virtio-net GRO, like the kernel's tcp_gro_receive): a run
//! of consecutive, in-order TCP segments of one flow becomes one super-packet and one write.
//! Rewrites only the first packet's headers; the payloads are written from where they were
//! decrypted (writev), so nothing is copied or allocated per packet.

use crate::ip::{fold, sum};

/// The virtio-net header in front of every packet written to the TUN.
pub const HDR: usize = 10;
pub(crate) const F_NEEDS_CSUM: u8 = 1;
/// Decrypted packets are authenticated: the kernel marks them CHECKSUM_UNNECESSARY too.
const F_DATA_VALID: u8 = 2;
pub(crate) const GSO_TCPV4: u8 = 1;
pub(crate) const GSO_TCPV6: u8 = 4;
const ACK: u8 = 0x10;
pub(crate) const PSH: u8 = 0x08;
/// The kernel's limit on segments per GSO packet.
pub const MAX_SEGMENTS: usize = 64;

/// The parts of a TCP segment coalescing looks at.
struct Seg {
    v6: bool,
    iph: usize,
    tcph: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

fn parse(p: &[u8]) -> Option<Seg> {
    let v6 = p.first()? >> 4 == 6;
    let iph = if v6 { 40 } else { 20 };
    let ip_ok = if v6 {
        p.len() >= 40 && p[6] == 6 && usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 == p.len()
    } else {
        // No IP options, not a fragment, the length matches.
        p.len() >= 20
            && p[0] == 0x45
            && p[9] == 6
            && p[6] & 0x3f == 0
            && p[7] == 0
            && usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len()
    };
    if !ip_ok || p.len() < iph + 20 {
        return None;
    }
    let tcph = usize::from(p[iph + 12] >> 4) * 4;
    if tcph < 20 || p.len() < iph + tcph {
        return None;
    }
    let seq = u32::from_be_bytes([p[iph + 4], p[iph + 5], p[iph + 6], p[iph + 7]]);
    Some(Seg { v6, iph, tcph, payload: p.len() - iph - tcph, seq, flags: p[iph + 13] })
}

/// Same flow and same headers but for what segmentation changes (lengths, IDs, checksums,
/// sequence numbers, PSH).
fn same_flow(a: &[u8], b: &[u8], s: &Seg, t: &Seg) -> bool {
    if s.v6 != t.v6 || s.tcph != t.tcph {
        return false;
    }
    let ip_same = if s.v6 {
        a[..4] == b[..4] && a[7..40] == b[7..40]
    } else {
        a[1] == b[1] && a[6] == b[6] && a[8..10] == b[8..10] && a[12..20] == b[12..20]
    };
    let (ta, tb) = (&a[s.iph..s.iph + s.tcph], &b[t.iph..t.iph + t.tcph]);
    // Ports, acknowledgement, header length, window, options.
    ip_same && ta[..4] == tb[..4] && ta[8..13] == tb[8..13] && ta[14..16] == tb[14..16] && ta[20..] == tb[20..]
}

/// One TUN write: packet `first` whole (virtio header room included), then the payloads of
/// the `count - 1` packets after it, from byte `skip` on (one writev, nothing copied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    pub first: usize,
    pub count: usize,
    pub skip: usize,
}

impl Write {
    /// The byte slices this write is made of, in order.
    pub fn parts<'a, P: AsRef<[u8]>>(&self, pkts: &'a [P]) -> impl Iterator<Item = &'a [u8]> {
        let (first, skip) = (self.first, self.skip);
        pkts[first..first + self.count]
            .iter()
            .enumerate()
            .map(move |(k, p)| if k == 0 { p.as_ref() } else { p.as_ref().get(skip..).unwrap_or(&[]) })
    }
}

/// Coalesces the packets in `pkts` (each behind `HDR` bytes of headroom, written here) and
/// lists in `out` the writes to make, in order. Only headers change: the merged packets'
/// payloads stay where they are. Other packets go out alone, unchanged.
pub fn coalesce<P: AsMut<[u8]>>(pkts: &mut [P], out: &mut Vec<Write>) {
    out.clear();
    let mut i = 0;
    while i < pkts.len() {
        let (head, rest) = pkts.split_at_mut(i + 1);
        let h = head[i].as_mut();
        let mut merged = 0;
        let mut skip = 0;
        // (IP header length, TCP header length, IPv6, segment size) of a super-packet
        let mut gso = None;
        if let Some(s) = parse(h.get(HDR..).unwrap_or(&[])).filter(|s| s.payload > 0 && s.flags == ACK) {
            let mut next_seq = s.seq.wrapping_add(s.payload as u32);
            let mut len = h.len() - HDR;
            skip = HDR + s.iph + s.tcph;
            for p in rest.iter_mut() {
                let pkt = p.as_mut().get(HDR..).unwrap_or(&[]);
                let Some(t) = parse(pkt) else { break };
                let fits = t.seq == next_seq
                    && t.payload > 0
                    && t.payload <= s.payload
                    && (t.flags == ACK || t.flags == ACK | PSH)
                    && len + t.payload <= 65535
                    && merged + 1 < MAX_SEGMENTS
                    && same_flow(&h[HDR..], pkt, &s, &t);
                if !fits {
                    break;
                }
                len += t.payload;
                next_seq = next_seq.wrapping_add(t.payload as u32);
                merged += 1;
                // Nothing follows a short segment or a push.
                if t.payload < s.payload || t.flags & PSH != 0 {
                    h[HDR + s.iph + 13] |= t.flags & PSH;
                    break;
                }
            }
            if merged > 0 {
                finish(&mut h[HDR..], &s, len);
                gso = Some((s.iph, s.tcph, s.v6, s.payload));
            }
        }
        if let Some(hdr) = h.get_mut(..HDR) {
            hdr.fill(0);
            match gso {
                Some((iph, tcph, v6, size)) => {
                    hdr[0] = F_NEEDS_CSUM;
                    hdr[1] = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
                    hdr[2..4].copy_from_slice(&((iph + tcph) as u16).to_le_bytes());
                    hdr[4..6].copy_from_slice(&(size as u16).to_le_bytes());
                    hdr[6..8].copy_from_slice(&(iph as u16).to_le_bytes());
                    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
                }
                None => hdr[0] = F_DATA_VALID,
            }
            out.push(Write { first: i, count: 1 + merged, skip });
        }
        i += 1 + merged;
    }
}

/// New lengths, the IPv4 header checksum, and the TCP pseudo-header sum the kernel completes,
/// in the first packet `p` of a super-packet of `len` bytes.
fn finish(p: &mut [u8], s: &Seg, len: usize) {
    if s.v6 {
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    } else {
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[10..12].fill(0);
        let c = !fold(u64::from(sum(&p[..20])));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let addrs = if s.v6 { &p[8..40] } else { &p[12..20] };
    let pseudo = fold(u64::from(sum(addrs)) + 6 + (len - s.iph) as u64);
    p[s.iph + 16..s.iph + 18].copy_from_slice(&pseudo.to_be_bytes());
}
