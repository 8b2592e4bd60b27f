//! The TUN offload path: our coalescing (shell/gro.rs) turns TCP segments of one flow into one
//! GRO write, and our GSO split (shell/gso.rs, what the send path uses) turns that
//! super-packet back into exactly the segments it stands for, byte for byte; the split also
//! agrees byte for byte with tun-rs's (a port of wireguard-go's) on TCP and UDP, v4 and v6.

use tun_rs::{gso_split, VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEN};
use wgmesh_tunnel::shell::gro::{coalesce, Write};
use wgmesh_tunnel::device::padded_len;
use wgmesh_tunnel::shell::gso::{split, Room};

/// Our split of one TUN read (virtio header + packet): the packets it stands for.
fn our_split(read: &[u8]) -> Vec<Vec<u8>> {
    let mut read = read.to_vec();
    let (mut arena, mut segs) = (Vec::new(), Vec::new());
    match split(&mut read, &mut arena, &mut segs, Room::default()).expect("split") {
        Some(lone) => vec![read[lone].to_vec()],
        None => {
            let packed: Vec<Vec<u8>> = segs.into_iter().map(|r| arena[r].to_vec()).collect();
            assert_eq!(split_with_room(&read), packed, "room changes no segment byte");
            packed
        }
    }
}

/// The engine's layout: every segment behind 16 zero bytes, then zero padding to WireGuard's
/// padded length and 16 zero bytes for the tag, slot after slot, appended to what was there.
fn split_with_room(read: &[u8]) -> Vec<Vec<u8>> {
    let room = Room { head: 16, tail: 16, mtu: Some(1420) };
    let (mut arena, mut segs) = (vec![0xee; 5], Vec::new());
    assert_eq!(split(&mut read.to_vec(), &mut arena, &mut segs, room), Ok(None));
    assert_eq!(arena[..5], [0xee; 5], "what the arena held stays");
    let mut at = 5;
    for r in &segs {
        assert_eq!(r.start, at + 16, "a segment starts after its slot's head room");
        let end = r.end + (padded_len(r.len(), 1420) - r.len()) + 16;
        assert!(arena[at..r.start].iter().chain(&arena[r.end..end]).all(|&b| b == 0), "room is zeros");
        at = end;
    }
    assert_eq!(at, arena.len(), "slots are back to back");
    segs.iter().map(|r| arena[r.clone()].to_vec()).collect()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn add(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// An IPv4/TCP segment with valid checksums: 20-byte IP header, 20-byte TCP header, payload.
fn segment(seq: u32, id: u16, payload: &[u8], flags: u8) -> Vec<u8> {
    let total = 40 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[192, 168, 241, 1]);
    p[16..20].copy_from_slice(&[192, 168, 241, 2]);
    let c = fold(add(&p[..20]));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&1u32.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&65535u16.to_be_bytes());
    p[40..].copy_from_slice(payload);
    let c = tcp_checksum(&p);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

/// The pseudo-header sum of an IPv4 (`iph` 20) or IPv6 (`iph` 40) packet's transport.
fn pseudo(p: &[u8], iph: usize, proto: u8) -> u32 {
    let addrs = if iph == 20 { &p[12..20] } else { &p[8..40] };
    add(addrs) + u32::from(proto) + (p.len() - iph) as u32
}

fn tcp_checksum(p: &[u8]) -> u16 {
    let mut t = p[20..].to_vec();
    t[16] = 0;
    t[17] = 0;
    fold(pseudo(p, 20, 6) + add(&t))
}

/// The TCP (6) or UDP (17) checksum verifies.
fn transport_ok(p: &[u8], iph: usize, proto: u8) -> bool {
    fold(pseudo(p, iph, proto) + add(&p[iph..])) == 0
}

fn tcp_checksum_ok(p: &[u8]) -> bool {
    transport_ok(p, 20, 6)
}

fn ip_checksum_ok(p: &[u8]) -> bool {
    fold(add(&p[..20])) == 0
}

/// A packet behind virtio-header room, as the engine delivers it.
fn with_headroom(packet: &[u8]) -> Vec<u8> {
    [&[0u8; VIRTIO_NET_HDR_LEN][..], packet].concat()
}

/// The bytes one write hands the TUN (virtio header included), as writev gathers them.
fn gather(bufs: &[Vec<u8>], w: &Write) -> Vec<u8> {
    w.parts(bufs).collect::<Vec<_>>().concat()
}

fn firsts(writes: &[Write]) -> Vec<usize> {
    writes.iter().map(|w| w.first).collect()
}

#[test]
fn one_flow_coalesces_then_splits_back() {
    let mss = 1000;
    let payload: Vec<u8> = (0..10 * mss).map(|i| (i * 7) as u8).collect();
    let segs: Vec<Vec<u8>> = (0..10)
        .map(|i| segment(1000 + (i * mss) as u32, 100 + i as u16, &payload[i * mss..(i + 1) * mss], 0x10))
        .collect();
    for s in &segs {
        assert!(ip_checksum_ok(s) && tcp_checksum_ok(s));
    }
    let mut bufs: Vec<Vec<u8>> = segs.iter().map(|s| with_headroom(s)).collect();
    let mut to_write = Vec::new();
    coalesce(&mut bufs, &mut to_write);
    assert_eq!(to_write, vec![Write { first: 0, count: 10, skip: VIRTIO_NET_HDR_LEN + 40 }], "ten segments of one flow become one write");
    let written = gather(&bufs, &to_write[0]);
    let hdr = VirtioNetHdr::decode(&written[..VIRTIO_NET_HDR_LEN]).unwrap();
    assert_eq!((hdr.gso_type, hdr.gso_size as usize), (VIRTIO_NET_HDR_GSO_TCPV4, mss));
    assert_eq!(written.len(), VIRTIO_NET_HDR_LEN + 40 + 10 * mss);
    assert_eq!(&written[VIRTIO_NET_HDR_LEN + 40..], &payload[..]);

    // And back: what the kernel would read us splits into the ten original segments, byte
    // for byte (lengths, IDs, sequence numbers, checksums).
    assert_eq!(our_split(&written), segs);
    // tun-rs's split agrees.
    let mut input = written[VIRTIO_NET_HDR_LEN..].to_vec();
    let mut out = vec![vec![0u8; 2048]; 16];
    let mut sizes = vec![0usize; 16];
    let n = gso_split(&mut input, hdr, &mut out, &mut sizes, 0, false).unwrap();
    let theirs: Vec<Vec<u8>> = (0..n).map(|i| out[i][..sizes[i]].to_vec()).collect();
    assert_eq!(theirs, segs);
}

/// A virtio header as the kernel writes it for a read.
fn vnet(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, csum_start: u16, csum_offset: u16) -> Vec<u8> {
    let mut h = vec![flags, gso_type];
    for v in [hdr_len, gso_size, csum_start, csum_offset] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// The pseudo-header sum the kernel leaves in a partial checksum's field.
fn partial(p: &mut [u8], iph: usize, field: usize, proto: u8) {
    let sum = fold(pseudo(p, iph, proto));
    p[iph + field..iph + field + 2].copy_from_slice(&(!sum).to_be_bytes());
}

#[test]
fn split_matches_tun_rs_on_tcp_and_udp_v4_and_v6() {
    let body: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 253) as u8).collect();
    // TCPv6 with PSH|FIN on the super-packet: they belong to the last segment only.
    let mut t6 = segment6(99, &body[..3001], 0x19);
    partial(&mut t6, 40, 16, 6);
    // UDPv4 and UDPv6 (USO): 8-byte header, 1200-byte segments.
    let udp = |v6: bool| {
        let iph = if v6 { 40 } else { 20 };
        let mut p = if v6 { segment6(0, &[], 0x10)[..40].to_vec() } else { segment(0, 7, &[], 0x10)[..20].to_vec() };
        if v6 {
            p[6] = 17;
        } else {
            p[9] = 17;
        }
        p.extend_from_slice(&[0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 0]);
        p.extend_from_slice(&body[..2500]);
        let len = p.len();
        if v6 {
            p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else {
            p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        p[iph + 4..iph + 6].copy_from_slice(&((len - iph) as u16).to_be_bytes());
        partial(&mut p, iph, 6, 17);
        [vnet(1, 5, (iph + 8) as u16, 1200, iph as u16, 6), p].concat()
    };
    let reads = [[vnet(1, 4, 60, 1000, 40, 16), t6].concat(), udp(false), udp(true)];
    for (k, read) in reads.iter().enumerate() {
        let ours = our_split(read);
        let hdr = VirtioNetHdr::decode(&read[..VIRTIO_NET_HDR_LEN]).unwrap();
        let mut input = read[VIRTIO_NET_HDR_LEN..].to_vec();
        let v6 = input[0] >> 4 == 6;
        let mut out = vec![vec![0u8; 2048]; 8];
        let mut sizes = vec![0usize; 8];
        let n = gso_split(&mut input, hdr, &mut out, &mut sizes, 0, v6).unwrap();
        let theirs: Vec<Vec<u8>> = (0..n).map(|i| out[i][..sizes[i]].to_vec()).collect();
        assert_eq!(ours, theirs, "read {k}");
        assert!(ours.len() >= 3, "read {k} is several segments");
    }
    let t6 = our_split(&reads[0]);
    assert_eq!(t6.iter().map(|s| s[53]).collect::<Vec<_>>(), vec![0x10, 0x10, 0x10, 0x19], "PSH|FIN only at the end");
    for s in our_split(&reads[1]) {
        assert!(ip_checksum_ok(&s) && transport_ok(&s, 20, 17));
    }
    for s in our_split(&reads[2]) {
        assert!(transport_ok(&s, 40, 17));
    }
}

#[test]
fn a_lone_packet_gets_its_partial_checksum_completed_in_place() {
    let s = segment(5, 1, &[3u8; 333], 0x18);
    let mut p = s.clone();
    partial(&mut p, 20, 16, 6);
    assert_ne!(p, s);
    let read = [vnet(1, 0, 0, 0, 20, 16), p].concat();
    assert_eq!(our_split(&read), vec![s.clone()]);
    // Without NEEDS_CSUM the packet is handed over untouched.
    let read = [vnet(0, 0, 0, 0, 0, 0), s.clone()].concat();
    assert_eq!(our_split(&read), vec![s]);
}

#[test]
fn different_flows_and_a_sequence_gap_are_not_merged() {
    let mss = 500;
    let p = vec![1u8; mss];
    let a0 = segment(1, 1, &p, 0x10);
    let a1 = segment(1 + mss as u32, 2, &p, 0x10);
    // A gap in the sequence: must not be glued onto the run.
    let a3 = segment(1 + 3 * mss as u32, 3, &p, 0x10);
    // SYN is never coalesced.
    let syn = segment(9000, 4, &[], 0x02);
    let mut bufs: Vec<Vec<u8>> = [a0, a1, a3, syn].iter().map(|s| with_headroom(s)).collect();
    let mut to_write = Vec::new();
    coalesce(&mut bufs, &mut to_write);
    assert_eq!(firsts(&to_write), vec![0, 2, 3]);
    assert_eq!(gather(&bufs, &to_write[0]).len(), VIRTIO_NET_HDR_LEN + 40 + 2 * mss);
    assert_eq!(gather(&bufs, &to_write[2]), bufs[3], "a lone packet is written whole");
}

/// Completes a NEEDS_CSUM checksum as the kernel would: the field holds the pseudo-header sum.
fn complete_tcp_checksum(p: &mut [u8], iph: usize) {
    let c = fold(add(&p[iph..]));
    p[iph + 16..iph + 18].copy_from_slice(&c.to_be_bytes());
}

/// An IPv6/TCP segment with a valid checksum.
fn segment6(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 60 + payload.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[6] = 6;
    p[7] = 64;
    p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p[40..42].copy_from_slice(&40000u16.to_be_bytes());
    p[42..44].copy_from_slice(&5201u16.to_be_bytes());
    p[44..48].copy_from_slice(&seq.to_be_bytes());
    p[48..52].copy_from_slice(&1u32.to_be_bytes());
    p[52] = 5 << 4;
    p[53] = flags;
    p[54..56].copy_from_slice(&65535u16.to_be_bytes());
    p[60..].copy_from_slice(payload);
    let sum = pseudo(&p, 40, 6) + add(&p[40..]);
    p[56..58].copy_from_slice(&fold(sum).to_be_bytes());
    p
}

#[test]
fn ipv6_push_ends_a_run_and_the_kernel_can_complete_the_checksum() {
    let mss = 800;
    let body: Vec<u8> = (0..3 * mss + 100).map(|i| (i % 251) as u8).collect();
    let s0 = segment6(7, &body[..mss], 0x10);
    let s1 = segment6(7 + mss as u32, &body[mss..2 * mss], 0x10);
    // PSH ends the run and is kept on the super-packet; what follows starts a new one.
    let s2 = segment6(7 + 2 * mss as u32, &body[2 * mss..3 * mss], 0x18);
    let s3 = segment6(7 + 3 * mss as u32, &body[3 * mss..], 0x10);
    // A different acknowledgement number is another moment of the flow: never merged.
    let mut s4 = segment6(7 + 3 * mss as u32 + 100, &body[..10], 0x10);
    s4[51] = 2;
    let mut bufs: Vec<Vec<u8>> = [&s0, &s1, &s2, &s3, &s4].iter().map(|s| with_headroom(s)).collect();
    let mut to_write = Vec::new();
    coalesce(&mut bufs, &mut to_write);
    assert_eq!(firsts(&to_write), vec![0, 3, 4]);
    let written = gather(&bufs, &to_write[0]);
    let hdr = VirtioNetHdr::decode(&written[..VIRTIO_NET_HDR_LEN]).unwrap();
    assert_eq!((hdr.flags, hdr.gso_type, hdr.gso_size as usize), (1, 4, mss), "NEEDS_CSUM, TCPV6");
    assert_eq!((hdr.hdr_len, hdr.csum_start, hdr.csum_offset), (60, 40, 16));
    let mut p = written[VIRTIO_NET_HDR_LEN..].to_vec();
    assert_eq!(p.len(), 60 + 3 * mss);
    assert_eq!(u16::from_be_bytes([p[4], p[5]]) as usize, 20 + 3 * mss, "IPv6 payload length");
    assert_eq!(p[53], 0x18, "PSH carried to the super-packet");
    assert_eq!(&p[60..], &body[..3 * mss]);
    complete_tcp_checksum(&mut p, 40);
    assert!(transport_ok(&p, 40, 6), "the partial sum completes to a valid checksum");
    // Packets going out alone are marked DATA_VALID (authenticated, as the kernel marks them).
    for i in [3, 4] {
        let h = VirtioNetHdr::decode(&bufs[i][..VIRTIO_NET_HDR_LEN]).unwrap();
        assert_eq!((h.flags, h.gso_type), (2, 0));
    }
    assert_eq!(&bufs[3][VIRTIO_NET_HDR_LEN..], &s3[..], "a lone packet is unchanged");
}

#[test]
fn ipv4_lengths_and_header_checksum_after_merging() {
    let mss = 1200;
    let p = vec![9u8; mss];
    let a = segment(5, 1, &p, 0x10);
    // The last, shorter segment ends the run.
    let b = segment(5 + mss as u32, 2, &p[..700], 0x10);
    let c = segment(5 + mss as u32 + 700, 3, &p, 0x10);
    let mut bufs: Vec<Vec<u8>> = [&a, &b, &c].iter().map(|s| with_headroom(s)).collect();
    let mut to_write = Vec::new();
    coalesce(&mut bufs, &mut to_write);
    assert_eq!(firsts(&to_write), vec![0, 2]);
    let mut q = gather(&bufs, &to_write[0])[VIRTIO_NET_HDR_LEN..].to_vec();
    assert_eq!(q.len(), 40 + mss + 700);
    assert_eq!(u16::from_be_bytes([q[2], q[3]]) as usize, q.len());
    assert!(ip_checksum_ok(&q));
    complete_tcp_checksum(&mut q, 20);
    assert!(tcp_checksum_ok(&q));
}
