//! Seal and open per packet size, ours beside ring: `cargo bench -p wgmesh-chachapoly`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::aead;
use wgmesh_chachapoly::ChaChaPoly;

fn bench(c: &mut Criterion) {
    let key = [0x42; 32];
    let nonce = [7; 12];
    let ring_key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &key).unwrap());
    let Some(ours) = ChaChaPoly::new(&key) else {
        eprintln!("this CPU lacks AVX-512 F/VL/BW/IFMA: nothing to compare");
        return;
    };
    let mut g = c.benchmark_group("seal");
    // A TCP ACK, sizes around where ours overtakes ring, a full segment at MTU 1420, 4 KiB.
    for len in [64usize, 128, 256, 384, 512, 1420, 4096] {
        let mut buf = vec![0x5a; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("ours", len), &len, |b, _| b.iter(|| ours.seal_in_place(&nonce, &[], &mut buf)));
        g.bench_with_input(BenchmarkId::new("ring", len), &len, |b, _| {
            b.iter(|| ring_key.seal_in_place_separate_tag(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::empty(), &mut buf))
        });
    }
    g.finish();
    for len in [256usize, 1440, 2880] {
        let msg = vec![0x5a; len];
        c.bench_function(&format!("poly1305/{len}"), |b| b.iter(|| wgmesh_chachapoly::poly1305(&key, &msg)));
    }
    let mut g = c.benchmark_group("open");
    for len in [64usize, 1420, 4096] {
        let mut sealed = vec![0x5a; len];
        let tag = ours.seal_in_place(&nonce, &[], &mut sealed).unwrap();
        let mut with_tag = sealed.clone();
        with_tag.extend_from_slice(&tag);
        let mut buf = sealed.clone();
        g.throughput(Throughput::Bytes(len as u64));
        // Each iteration copies the ciphertext back in first (the copy is in both numbers).
        g.bench_with_input(BenchmarkId::new("ours", len), &len, |b, _| {
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                assert!(ours.open_in_place(&nonce, &[], &mut buf, &tag));
            })
        });
        let mut rbuf = with_tag.clone();
        g.bench_with_input(BenchmarkId::new("ring", len), &len, |b, _| {
            b.iter(|| {
                rbuf.copy_from_slice(&with_tag);
                assert!(ring_key.open_in_place(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::empty(), &mut rbuf).is_ok());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
