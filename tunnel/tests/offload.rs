//! The TUN offload path the engine relies on (tun-rs's port of wireguard-go's GRO/GSO code):
//! TCP segments of one flow coalesce into one GRO write, and a GSO super-packet splits back
//! into exactly the segments it stands for, with valid checksums.

use tun_rs::{gso_split, handle_gro, VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEN};

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

fn tcp_checksum(p: &[u8]) -> u16 {
    let len = p.len() - 20;
    let mut sum = add(&p[12..20]) + 6 + len as u32;
    let mut t = p[20..].to_vec();
    t[16] = 0;
    t[17] = 0;
    sum += add(&t);
    fold(sum)
}

fn tcp_checksum_ok(p: &[u8]) -> bool {
    let len = p.len() - 20;
    fold(add(&p[12..20]) + 6 + len as u32 + add(&p[20..])) == 0
}

fn ip_checksum_ok(p: &[u8]) -> bool {
    fold(add(&p[..20])) == 0
}

/// A packet behind virtio-header room, in a buffer with the room to grow the engine's have
/// (coalescing appends to the first buffer of a flow).
fn with_headroom(packet: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(VIRTIO_NET_HDR_LEN + 65536);
    b.resize(VIRTIO_NET_HDR_LEN, 0);
    b.extend_from_slice(packet);
    b
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
    let (mut tcp, mut udp, mut to_write) = (Default::default(), Default::default(), Vec::new());
    handle_gro(&mut bufs, VIRTIO_NET_HDR_LEN, &mut tcp, &mut udp, false, &mut to_write).unwrap();
    assert_eq!(to_write, vec![0], "ten segments of one flow become one write");
    let hdr = VirtioNetHdr::decode(&bufs[0][..VIRTIO_NET_HDR_LEN]).unwrap();
    assert_eq!((hdr.gso_type, hdr.gso_size as usize), (VIRTIO_NET_HDR_GSO_TCPV4, mss));
    assert_eq!(bufs[0].len(), VIRTIO_NET_HDR_LEN + 40 + 10 * mss);
    assert_eq!(&bufs[0][VIRTIO_NET_HDR_LEN + 40..], &payload[..]);

    // And back: the super-packet splits into the ten original segments.
    let mut input = bufs[0][VIRTIO_NET_HDR_LEN..].to_vec();
    let mut out = vec![vec![0u8; 2048]; 16];
    let mut sizes = vec![0usize; 16];
    let n = gso_split(&mut input, hdr, &mut out, &mut sizes, 0, false).unwrap();
    assert_eq!(n, 10);
    for (i, seg) in segs.iter().enumerate() {
        let got = &out[i][..sizes[i]];
        assert!(ip_checksum_ok(got) && tcp_checksum_ok(got), "segment {i} checksums");
        assert_eq!(&got[24..28], &seg[24..28], "segment {i} sequence number");
        assert_eq!(&got[40..], &seg[40..], "segment {i} payload");
        assert_eq!(got.len(), seg.len());
    }
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
    let (mut tcp, mut udp, mut to_write) = (Default::default(), Default::default(), Vec::new());
    handle_gro(&mut bufs, VIRTIO_NET_HDR_LEN, &mut tcp, &mut udp, false, &mut to_write).unwrap();
    assert_eq!(to_write, vec![0, 2, 3]);
    assert_eq!(bufs[0].len(), VIRTIO_NET_HDR_LEN + 40 + 2 * mss);
}
