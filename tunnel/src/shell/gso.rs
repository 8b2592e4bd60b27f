//! The TUN read side of the offloads. One read is a virtio-net header and either a lone packet
//! (whose transport checksum the kernel may have left to us) or a GSO super-packet, which is
//! cut here into `gso_size` segments, each with its own headers and full checksums, as the
//! kernel's software GSO would (IPv4 IDs counted up, FIN/PSH on the last segment, CWR on the
//! first). Segments go into one contiguous arena; a lone packet stays where it was read.

use super::gro::{F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, HDR, PSH as TCP_PSH};
use crate::ip::{fold, sum};
use std::ops::Range;

const GSO_NONE: u8 = 0;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;
const TCP_FIN: u8 = 0x01;
const TCP_CWR: u8 = 0x80;
/// A 64 KiB super-packet at the smallest TCP MSS (88) is 745 segments.
const MAX_SEGMENTS: usize = 1024;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("read of {0} bytes is shorter than the virtio header")]
    Short(usize),
    #[error("unsupported GSO type {0:#x}")]
    GsoType(u8),
    #[error("malformed offload packet: {0}")]
    Malformed(&'static str),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The transport checksum to store: UDP sends 0 as 0xffff (0 means "none"), as the kernel.
fn finish_checksum(acc: u64, udp: bool) -> u16 {
    let c = !fold(acc);
    if c == 0 && udp { 0xffff } else { c }
}

/// Room left around each segment in the arena, so that it can be sealed where it lies:
/// `head` bytes before it, then after it zeros up to its padded length (WireGuard's padding
/// for `mtu`, none without) and `tail` bytes more. The default packs segments back to back.
#[derive(Clone, Copy, Debug, Default)]
pub struct Room {
    pub head: usize,
    pub tail: usize,
    pub mtu: Option<usize>,
}

impl Room {
    fn padded(&self, len: usize) -> usize {
        self.mtu.map_or(len, |mtu| crate::device::padded_len(len, mtu))
    }
    /// The whole slot of a segment `split` placed at `seg`.
    pub fn slot(&self, seg: &Range<usize>) -> Range<usize> {
        seg.start - self.head..seg.start + self.padded(seg.len()) + self.tail
    }
}

/// Splits one TUN read (`read` starts with the virtio header). Returns the range of `read`
/// holding a lone packet, its checksum completed in place, or `None` with the segments of a
/// super-packet appended to `arena` (laid out as `room` says) and listed in `segs` (cleared
/// first) as ranges of it.
pub fn split(read: &mut [u8], arena: &mut Vec<u8>, segs: &mut Vec<Range<usize>>, room: Room) -> Result<Option<Range<usize>>, SplitError> {
    segs.clear();
    if read.len() <= HDR {
        return Err(SplitError::Short(read.len()));
    }
    let (flags, gso_type) = (read[0], read[1]);
    let gso_size = usize::from(u16::from_le_bytes([read[4], read[5]]));
    let cs = usize::from(u16::from_le_bytes([read[6], read[7]]));
    let co = usize::from(u16::from_le_bytes([read[8], read[9]]));
    let pkt = &mut read[HDR..];
    if gso_type == GSO_NONE {
        if flags & F_NEEDS_CSUM != 0 {
            // The field holds the pseudo-header sum; the rest is ours to add.
            let at = cs + co;
            if at + 2 > pkt.len() {
                return Err(SplitError::Malformed("checksum field outside the packet"));
            }
            let initial = u64::from(be16(pkt, at));
            put16(pkt, at, 0);
            let udp = co == 6;
            let c = finish_checksum(initial + u64::from(sum(&pkt[cs..])), udp);
            put16(pkt, at, c);
        }
        return Ok(Some(HDR..HDR + pkt.len()));
    }
    let (tcp, want_version) = match gso_type & !GSO_ECN {
        GSO_TCPV4 => (true, Some(4)),
        GSO_TCPV6 => (true, Some(6)),
        GSO_UDP_L4 => (false, None),
        t => return Err(SplitError::GsoType(t)),
    };
    let version = pkt[0] >> 4;
    let v6 = match version {
        4 => false,
        6 => true,
        _ => return Err(SplitError::Malformed("not IPv4 or IPv6")),
    };
    if want_version.is_some_and(|v| v != version) {
        return Err(SplitError::Malformed("GSO type does not match the IP version"));
    }
    if gso_size == 0 || flags & F_NEEDS_CSUM == 0 {
        return Err(SplitError::Malformed("GSO without segment size or partial checksum"));
    }
    // The kernel's hdr_len may cover the whole first packet: parse the headers ourselves.
    let min_ip = if v6 { 40 } else { 20 };
    if cs < min_ip || (!v6 && usize::from(pkt[0] & 0xf) * 4 != cs) {
        return Err(SplitError::Malformed("checksum start is not the end of the IP header"));
    }
    let (hl, csum_at) = if tcp {
        if pkt.len() < cs + 20 || co != 16 {
            return Err(SplitError::Malformed("TCP header"));
        }
        (cs + usize::from(pkt[cs + 12] >> 4) * 4, cs + 16)
    } else {
        if co != 6 {
            return Err(SplitError::Malformed("UDP header"));
        }
        (cs + 8, cs + 6)
    };
    if hl > pkt.len() || hl < csum_at + 2 || (tcp && hl < cs + 20) {
        return Err(SplitError::Malformed("headers longer than the packet"));
    }
    let payload = pkt.len() - hl;
    if payload == 0 || hl + gso_size.min(payload) > 65535 {
        return Err(SplitError::Malformed("segment length"));
    }
    let pkt = &pkt[..];
    let seq0 = if tcp { u32::from_be_bytes([pkt[cs + 4], pkt[cs + 5], pkt[cs + 6], pkt[cs + 7]]) } else { 0 };
    let addrs = if v6 { &pkt[8..40] } else { &pkt[12..20] };
    let addr_sum = u64::from(sum(addrs));
    let proto = if tcp { 6u64 } else { 17 };
    let count = payload.div_ceil(gso_size);
    // The kernel never asks for this many (TCP's smallest MSS is 88); bounds the arena.
    if count > MAX_SEGMENTS {
        return Err(SplitError::Malformed("too many segments"));
    }
    arena.reserve(count * (room.head + hl + 16 + room.tail) + payload);
    for (i, chunk) in pkt[hl..].chunks(gso_size).enumerate() {
        let start = arena.len() + room.head;
        arena.resize(start, 0);
        arena.extend_from_slice(&pkt[..hl]);
        arena.extend_from_slice(chunk);
        let s = &mut arena[start..];
        let len = s.len();
        if v6 {
            put16(s, 4, (len - 40) as u16);
        } else {
            put16(s, 2, len as u16);
            put16(s, 4, be16(s, 4).wrapping_add(i as u16));
            put16(s, 10, 0);
            let c = !fold(u64::from(sum(&s[..cs])));
            put16(s, 10, c);
        }
        if tcp {
            let seq = seq0.wrapping_add((i * gso_size) as u32);
            s[cs + 4..cs + 8].copy_from_slice(&seq.to_be_bytes());
            if i > 0 {
                s[cs + 13] &= !TCP_CWR;
            }
            if i + 1 < count {
                s[cs + 13] &= !(TCP_FIN | TCP_PSH);
            }
        } else {
            put16(s, cs + 4, (len - cs) as u16);
        }
        put16(s, csum_at, 0);
        let c = finish_checksum(addr_sum + proto + (len - cs) as u64 + u64::from(sum(&s[cs..])), !tcp);
        put16(s, csum_at, c);
        segs.push(start..start + len);
        arena.resize(room.slot(&(start..start + len)).end, 0);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_unknown_reads_are_refused() {
        let (mut arena, mut segs) = (Vec::new(), Vec::new());
        assert_eq!(split(&mut [0u8; HDR], &mut arena, &mut segs, Room::default()), Err(SplitError::Short(HDR)));
        let mut read = [0u8; 64];
        read[1] = 3;
        assert_eq!(split(&mut read, &mut arena, &mut segs, Room::default()), Err(SplitError::GsoType(3)));
        // A partial checksum whose field lies beyond the packet.
        let mut read = [0u8; HDR + 20];
        read[0] = F_NEEDS_CSUM;
        read[6] = 20;
        read[8] = 16;
        assert!(matches!(split(&mut read, &mut arena, &mut segs, Room::default()), Err(SplitError::Malformed(_))));
        // UDP GSO with 1-byte segments: refused, not 2,000 segments in the arena.
        let mut read = vec![0u8; HDR + 28 + 2000];
        read[..10].copy_from_slice(&[F_NEEDS_CSUM, GSO_UDP_L4, 28, 0, 1, 0, 20, 0, 6, 0]);
        read[HDR] = 0x45;
        assert_eq!(split(&mut read, &mut arena, &mut segs, Room::default()), Err(SplitError::Malformed("too many segments")));
        read[4] = 100; // 20 segments of 100 bytes
        assert_eq!(split(&mut read, &mut arena, &mut segs, Room::default()), Ok(None));
        assert_eq!(segs.len(), 20);
    }
}
