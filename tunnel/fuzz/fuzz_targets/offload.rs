//! The TUN offload code on arbitrary packets (as wireguard-go fuzzes handleGRO): our coalescing
//! of any batch of decrypted packets and tun-rs's GSO split of any super-packet never panic,
//! coalescing never writes more payload than went in, and what it coalesces splits back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tun_rs::{gso_split, VirtioNetHdr, VIRTIO_NET_HDR_LEN};
use wgmesh_tunnel::shell::gro::coalesce;

fuzz_target!(|data: &[u8]| {
    if data.len() < VIRTIO_NET_HDR_LEN + 1 {
        return;
    }
    // GSO split: the first bytes are the virtio header the kernel would hand us.
    if let Ok(hdr) = VirtioNetHdr::decode(&data[..VIRTIO_NET_HDR_LEN]) {
        let mut input = data[VIRTIO_NET_HDR_LEN..].to_vec();
        let mut out = vec![vec![0u8; 2048]; 64];
        let mut sizes = vec![0usize; 64];
        let is_v6 = input.first().is_some_and(|b| b >> 4 == 6);
        let _ = gso_split(&mut input, hdr, &mut out, &mut sizes, 0, is_v6);
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
    for w in &writes {
        let hdr = VirtioNetHdr::decode(&w[..VIRTIO_NET_HDR_LEN]).expect("header");
        if hdr.gso_type != 0 {
            let mut input = w[VIRTIO_NET_HDR_LEN..].to_vec();
            let is_v6 = input[0] >> 4 == 6;
            let mut out = vec![vec![0u8; 65536]; 64];
            let mut sizes = vec![0usize; 64];
            assert!(gso_split(&mut input, hdr, &mut out, &mut sizes, 0, is_v6).is_ok(), "a coalesced packet must split");
        }
    }
});
