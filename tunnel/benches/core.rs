//! Criterion benchmarks of the protocol core: handshakes, transport seal/open, cryptokey
//! routing lookups. Run: `cargo bench -p wgmesh-tunnel --bench core`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use wgmesh_tunnel::allowed_ips::AllowedIps;
use wgmesh_tunnel::cookie::{CookieChecker, CookieState};
use wgmesh_tunnel::keypair::Keypair;
use wgmesh_tunnel::messages::{self as msg};
use wgmesh_tunnel::noise::{Handshake, Identity};
use wgmesh_tunnel::PrivateKey;

fn identities(rng: &mut ChaCha8Rng) -> (Identity, Identity) {
    (Identity::new(PrivateKey::generate(rng)), Identity::new(PrivateKey::generate(rng)))
}

/// One full exchange as both sides do it: mac1, DH work, AEADs and key derivation.
fn handshakes(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (i, r) = identities(&mut rng);
    let mut hi = Handshake::new(r.public, Some(&i));
    let mut hr = Handshake::new(i.public, Some(&r));
    let (mut ci, mut cr) = (CookieState::new(&r.public), CookieState::new(&i.public));
    let (chk_r, chk_i) = (CookieChecker::new(&r.public), CookieChecker::new(&i.public));
    let mut now = Duration::from_secs(1);
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("initiation+response+consume", |b| {
        b.iter(|| {
            now += Duration::from_millis(21);
            let mut init = [0u8; msg::INITIATION_LEN];
            assert!(hi.create_initiation(&i, 1, now, &mut rng, &mut init));
            ci.add_macs(&mut init, msg::initiation::MAC1, now);
            assert!(chk_r.check_mac1(&init, msg::initiation::MAC1));
            let p = Handshake::decrypt_initiation_static(&r, &init).unwrap();
            assert!(hr.consume_initiation(p, &init, now));
            let mut resp = [0u8; msg::RESPONSE_LEN];
            let s_r = hr.create_response(2, &mut rng, &mut resp).unwrap();
            cr.add_macs(&mut resp, msg::response::MAC1, now);
            assert!(chk_i.check_mac1(&resp, msg::response::MAC1));
            let s_i = hi.consume_response(&i, &resp).unwrap();
            black_box((s_r, s_i))
        })
    });
    g.finish();
}

fn session_pair() -> (Keypair, Keypair) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (i, r) = identities(&mut rng);
    let mut hi = Handshake::new(r.public, Some(&i));
    let mut hr = Handshake::new(i.public, Some(&r));
    let now = Duration::from_secs(1);
    let mut init = [0u8; msg::INITIATION_LEN];
    hi.create_initiation(&i, 1, now, &mut rng, &mut init);
    let p = Handshake::decrypt_initiation_static(&r, &init).unwrap();
    hr.consume_initiation(p, &init, now);
    let mut resp = [0u8; msg::RESPONSE_LEN];
    let s_r = hr.create_response(2, &mut rng, &mut resp).unwrap();
    let s_i = hi.consume_response(&i, &resp).unwrap();
    (Keypair::new(&s_i, 1, now), Keypair::new(&s_r, 2, now))
}

fn transport(c: &mut Criterion) {
    let (mut tx, rx) = session_pair();
    let mut g = c.benchmark_group("transport");
    for size in [64usize, 1420, 65535] {
        let mut buf = vec![0u8; msg::DATA_HEADER_LEN + size + 16];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("seal", size), &size, |b, &size| {
            b.iter(|| black_box(tx.seal(&mut buf, size)))
        });
        let n = tx.seal(&mut buf, size).unwrap();
        let sealed = buf[..n].to_vec();
        let counter = msg::u64_at(&sealed, msg::data::COUNTER);
        let mut work = sealed.clone();
        g.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
            b.iter(|| {
                work.copy_from_slice(&sealed);
                assert!(rx.open(&mut work, counter));
            })
        });
    }
    g.finish();
}

fn allowed_ips(c: &mut Criterion) {
    let mut g = c.benchmark_group("allowed_ips_lookup");
    for n in [10_000usize, 130_000] {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut t = AllowedIps::default();
        for i in 0..n {
            let a = Ipv4Addr::from(rng.next_u32());
            t.insert(IpAddr::V4(a), 16 + (i % 17) as u8, i % 1000);
        }
        let probes: Vec<IpAddr> = (0..1024).map(|_| IpAddr::V4(Ipv4Addr::from(rng.next_u32()))).collect();
        g.throughput(Throughput::Elements(probes.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let mut hits = 0usize;
                for p in &probes {
                    hits += t.lookup(*p).is_some() as usize;
                }
                black_box(hits)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(20);
    targets = handshakes, transport, allowed_ips
}
criterion_main!(benches);
