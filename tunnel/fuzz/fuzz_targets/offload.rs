//! The TUN offload code on arbitrary packets (as wireguard-go fuzzes handleGRO): our coalescing
//! of any batch of decrypted packets and our GSO split of any TUN read never panic; the split
//! agrees with tun-rs's wherever tun-rs accepts the read; coalescing never writes more
//! payload than went in, and what it coalesces splits back. The same bytes as one packet read
//! from the TUN must give a well-formed ICMP error, or none.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tun_rs::{gso_split, VirtioNetHdr, VIRTIO_NET_HDR_LEN};
use wgmesh_tunnel::shell::gro::coalesce;
use wgmesh_tunnel::ip::{fold, sum};
use wgmesh_tunnel::shell::gso::{split, Room};

fuzz_target!(|data: &[u8]| {
    // The ICMP error for a packet no peer takes: never panics, stays within the minimum MTU,
    // and its checksums hold (IPv4: header and ICMP; IPv6: ICMPv6 over the pseudo-header).
    let mut icmp = [0u8; 1280];
    if let Some((n, _)) = wgmesh_tunnel::ip::unreachable(data, &mut icmp) {
        let e = &icmp[..n];
        if e[0] >> 4 == 4 {
            assert!((28..=576).contains(&n) && sum(&e[..20]) == 0xffff && sum(&e[20..]) == 0xffff);
        } else {
            let pseudo = u64::from(sum(&e[8..40])) + (n - 40) as u64 + 58;
            assert!((48..=1280).contains(&n) && fold(pseudo + u64::from(sum(&e[40..]))) == 0xffff);
        }
    }
    if data.len() < VIRTIO_NET_HDR_LEN + 1 {
        return;
    }
    // GSO split: the first bytes are the virtio header the kernel would hand us.
    let mut read = data.to_vec();
    let (mut arena, mut segs) = (Vec::new(), Vec::new());
    let ours = split(&mut read, &mut arena, &mut segs, Room::default());
    if let Ok(None) = ours {
        let total: usize = segs.iter().map(|r| r.len()).sum();
        assert!(segs.iter().all(|r| r.end <= arena.len()) && total == arena.len());
        // With the engine's room for sealing in place: the same bytes, each in a zeroed slot.
        let room = Room { head: 16, tail: 16, mtu: Some(1420) };
        let (mut roomy, mut slots) = (Vec::new(), Vec::new());
        assert_eq!(split(&mut data.to_vec(), &mut roomy, &mut slots, room), Ok(None));
        assert_eq!(slots.len(), segs.len());
        let mut at = 0;
        for (seg, r) in segs.iter().zip(&slots) {
            assert_eq!(arena[seg.clone()], roomy[r.clone()]);
            let slot = room.slot(r);
            assert_eq!(slot.start, at, "slots are back to back");
            assert!(roomy[slot.start..r.start].iter().chain(&roomy[r.end..slot.end]).all(|&b| b == 0));
            at = slot.end;
        }
        assert_eq!(at, roomy.len());
    }
    if let (Ok(None), Ok(mut hdr)) = (&ours, VirtioNetHdr::decode(&data[..VIRTIO_NET_HDR_LEN])) {
        let mut input = data[VIRTIO_NET_HDR_LEN..].to_vec();
        let longest = segs.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut out = vec![vec![0u8; longest]; segs.len()];
        let mut sizes = vec![0usize; segs.len()];
        let is_v6 = input.first().is_some_and(|b| b >> 4 == 6);
        // tun-rs's split trusts hdr_len; give it the header length we parse.
        {
            let hl = {
                let cs = usize::from(hdr.csum_start);
                if hdr.gso_type & 0x7f == 5 { cs + 8 } else { cs + usize::from(input[cs + 12] >> 4) * 4 }
            };
            hdr.hdr_len = hl as u16;
            if let Ok(n) = gso_split(&mut input, hdr, &mut out, &mut sizes, 0, is_v6) {
                assert_eq!(n, segs.len(), "segment count");
                for (i, r) in segs.iter().enumerate() {
                    assert_eq!(&out[i][..sizes[i]], &arena[r.clone()], "segment {i}");
                }
            }
        }
    }
    // GRO: the rest is a batch of packets, each prefixed by a one-byte length (×8).
    let mut bufs = Vec::new();
    let mut rest = &data[VIRTIO_NET_HDR_LEN..];
    let mut total_in = 0;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize * 8).min(tail.len());
        let b = [&[0u8; VIRTIO_NET_HDR_LEN][..], &tail[..n]].concat();
        total_in += n;
        bufs.push(b);
        rest = &tail[n..];
    }
    let mut to_write = Vec::new();
    coalesce(&mut bufs, &mut to_write);
    let writes: Vec<Vec<u8>> = to_write.iter().map(|w| w.parts(&bufs).collect::<Vec<_>>().concat()).collect();
    let out: usize = writes.iter().map(|w| w.len() - VIRTIO_NET_HDR_LEN).sum();
    assert!(out <= total_in, "coalescing wrote {out} bytes from {total_in}");
    // Every packet is written once, in order.
    let mut next = 0;
    for w in &to_write {
        assert_eq!(w.first, next, "writes cover the batch in order");
        next += w.count;
    }
    // A super-packet we write is one the send path (the kernel's reads look the same) can split.
    for (w, bytes) in to_write.iter().zip(&writes) {
        if w.count > 1 {
            let mut read = bytes.clone();
            arena.clear();
            let got = split(&mut read, &mut arena, &mut segs, Room::default());
            assert_eq!(got, Ok(None), "a coalesced packet must split");
            assert_eq!(segs.len(), w.count, "into as many segments as went in");
        }
    }
});
