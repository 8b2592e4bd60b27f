//! Poly1305 (RFC 8439 §2.5) in radix 2^44: h = h0 + h1·2^44 + h2·2^88 modulo p = 2^130 − 5.
//! Limbs below 2^52 feed AVX-512 IFMA's 52-bit multiply-add directly; long messages run 16
//! blocks per step in two chains of 8 lanes (see `blocks16`), short ones and tails one block
//! at a time with 64×64→128-bit products.

use core::arch::x86_64::*;
use zeroize::Zeroize;

const M44: u64 = (1 << 44) - 1;
const M42: u64 = (1 << 42) - 1;
/// Below this many blocks computing r^2..r^16 costs more than the vector loop saves.
const VECTOR_MIN_BLOCKS: usize = 16;

pub struct Poly1305 {
    r: [u64; 3],
    h: [u64; 3],
    s: u128,
    /// The lane multipliers, computed on the first long run of blocks.
    pows: Option<Powers>,
}

/// Multipliers for 8 lanes: limbs r0, r1, r2 and 20·r1, 20·r2 (2^132 ≡ 20 mod p). Secret
/// (powers of r): not Copy, wiped with the Poly1305 that holds them.
struct Powers {
    /// r^(8−i) in lane i: the last step of eight blocks (lanes 8..16 of a step of sixteen).
    last: [__m512i; 5],
    /// r^16 in every lane: one step of sixteen blocks.
    every16: [__m512i; 5],
    /// r^(16−i) in lane i: lanes 0..8 of the last step of sixteen.
    last16: [__m512i; 5],
}

impl Drop for Poly1305 {
    fn drop(&mut self) {
        self.r.zeroize();
        self.h.zeroize();
        self.s.zeroize();
        if let Some(p) = self.pows.as_mut() {
            for v in p.last.iter_mut().chain(p.every16.iter_mut()).chain(p.last16.iter_mut()) {
                // SAFETY: an owned, aligned vector; volatile so the wipe stays.
                unsafe { std::ptr::write_volatile(v, std::mem::zeroed()) };
            }
        }
    }
}

/// h·r mod p, partly reduced (limbs below 2^44, 2^44 + 2^16, 2^42). Takes limbs below 2^48,
/// so the three products per limb (each < 2^97 with the ×20 factor) fit 128 bits.
fn mul(h: [u64; 3], r: [u64; 3]) -> [u64; 3] {
    // 2^132 ≡ 4·5 (mod p): products at limb position 3 and 4 come back ×20 at 0 and 1.
    let (s1, s2) = (r[1] * 20, r[2] * 20);
    let m = |a: u64, b: u64| a as u128 * b as u128;
    let d0 = m(h[0], r[0]) + m(h[1], s2) + m(h[2], s1);
    let d1 = m(h[0], r[1]) + m(h[1], r[0]) + m(h[2], s2);
    let d2 = m(h[0], r[2]) + m(h[1], r[1]) + m(h[2], r[0]);
    let d1 = d1 + (d0 >> 44);
    let d2 = d2 + (d1 >> 44);
    let mut h0 = (d0 as u64 & M44) + (d2 >> 42) as u64 * 5; // 2^130 ≡ 5
    let h1 = (d1 as u64 & M44) + (h0 >> 44);
    h0 &= M44;
    [h0, h1, d2 as u64 & M42]
}

fn limbs(lo: u64, hi: u64, top: u64) -> [u64; 3] {
    [lo & M44, ((lo >> 44) | (hi << 20)) & M44, (hi >> 24) | (top << 40)]
}

fn le64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

impl Poly1305 {
    pub fn new(key: &[u8; 32]) -> Self {
        // §2.5: clamp r.
        let lo = le64(&key[0..8]) & 0x0fff_fffc_0fff_ffff;
        let hi = le64(&key[8..16]) & 0x0fff_fffc_0fff_fffc;
        let s = u128::from(le64(&key[16..24])) | u128::from(le64(&key[24..32])) << 64;
        Poly1305 { r: limbs(lo, hi, 0), h: [0; 3], s, pows: None }
    }

    /// One 16-byte block with the 2^128 bit set or, for a final short block, already padded.
    fn block(&mut self, lo: u64, hi: u64, top: u64) {
        let m = limbs(lo, hi, top);
        let h = [self.h[0] + m[0], self.h[1] + m[1], self.h[2] + m[2]];
        self.h = mul(h, self.r);
    }

    /// Full 16-byte blocks (`data.len()` a multiple of 16).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and IFMA.
    #[target_feature(enable = "avx512f,avx512ifma")]
    pub unsafe fn blocks(&mut self, data: &[u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        let mut rest = data;
        if data.len() / 16 >= VECTOR_MIN_BLOCKS {
            let r = self.r;
            let pows = self.pows.get_or_insert_with(|| powers(r)); // borrowed: no copy of r's powers on the stack
            // Two chains of 8 lanes hide the multiplier's latency.
            let n = data.len() / 128 * 128;
            self.h = blocks16(self.h, pows, &data[..n]);
            rest = &data[n..];
        }
        for b in rest.chunks_exact(16) {
            self.block(le64(&b[..8]), le64(&b[8..]), 1);
        }
    }

    /// A final block shorter than 16 bytes: §2.5 appends a 1 byte instead of the 2^128 bit.
    pub fn partial(&mut self, tail: &[u8]) {
        let mut b = [0u8; 16];
        b[..tail.len()].copy_from_slice(tail);
        b[tail.len()] = 1;
        self.block(le64(&b[..8]), le64(&b[8..]), 0);
        b.zeroize();
    }

    /// h mod p, plus s, modulo 2^128 (§2.5), in constant time.
    pub fn finish(mut self) -> [u8; 16] {
        let [mut h0, mut h1, mut h2] = self.h;
        // Carry fully: limbs below 2^44, 2^44, 2^42, so h < 2^130 + small.
        for _ in 0..2 {
            h1 += h0 >> 44;
            h0 &= M44;
            h2 += h1 >> 44;
            h1 &= M44;
            h0 += (h2 >> 42) * 5;
            h2 &= M42;
        }
        h1 += h0 >> 44;
        h0 &= M44;
        // g = h + 5 − 2^130; h ≥ p exactly when g does not go negative.
        let mut g0 = h0 + 5;
        let mut g1 = h1 + (g0 >> 44);
        g0 &= M44;
        let g2 = (h2 + (g1 >> 44)).wrapping_sub(1 << 42);
        g1 &= M44;
        let take_g = (g2 >> 63).wrapping_sub(1); // all ones when g2 did not underflow
        h0 = (h0 & !take_g) | (g0 & take_g);
        h1 = (h1 & !take_g) | (g1 & take_g);
        h2 = (h2 & !take_g) | (g2 & take_g);
        // Sums, not ORs: a limb may still equal 2^44 after the carries; bits past 2^128 drop.
        let h = u128::from(h0).wrapping_add(u128::from(h1) << 44).wrapping_add(u128::from(h2) << 88);
        let t = h.wrapping_add(self.s).to_le_bytes();
        self.h.zeroize();
        t
    }
}

/// r^8..r^1: r^2, then r^3 and r^4 side by side, then one vector step
/// [r^4, r^3, r^2, r, ...] × [r^4 ×4, 1 ×4]; then r^16..r^9 = r^8..r^1 × r^8.
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn powers(r: [u64; 3]) -> Powers {
    let r2 = mul(r, r);
    let (r3, r4) = (mul(r2, r), mul(r2, r2));
    let one = [1, 0, 0];
    let lanes = |k: usize| _mm512_setr_epi64(r4[k] as i64, r3[k] as i64, r2[k] as i64, r[k] as i64, r4[k] as i64, r3[k] as i64, r2[k] as i64, r[k] as i64);
    let by = |k: usize| _mm512_setr_epi64(r4[k] as i64, r4[k] as i64, r4[k] as i64, r4[k] as i64, one[k], one[k], one[k], one[k]);
    let l = mul8([lanes(0), lanes(1), lanes(2)], &with_twenty([by(0), by(1), by(2)]));
    let first = _mm512_setzero_si512(); // index 0 for every lane
    let last = with_twenty(l);
    let r8 = with_twenty([0, 1, 2].map(|k| _mm512_permutexvar_epi64(first, l[k])));
    let l16 = mul8(l, &r8);
    let every16 = with_twenty([0, 1, 2].map(|k| _mm512_permutexvar_epi64(first, l16[k])));
    Powers { last, every16, last16: with_twenty(l16) }
}

/// r0, r1, r2, 20·r1, 20·r2 (limbs below 2^45, so 20·r < 2^50 is exact in IFMA).
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn with_twenty(r: [__m512i; 3]) -> [__m512i; 5] {
    let twenty = _mm512_set1_epi64(20);
    let z = _mm512_setzero_si512();
    [r[0], r[1], r[2], _mm512_madd52lo_epu64(z, r[1], twenty), _mm512_madd52lo_epu64(z, r[2], twenty)]
}

/// h·r mod p in each of 8 lanes, limbs below 2^52 in; out below 2^44 + 2^17, 2^44 + 2^11,
/// 2^42 + 2^11 (one carry per limb, all in parallel).
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn mul8(h: [__m512i; 3], r: &[__m512i; 5]) -> [__m512i; 3] {
    let [h0, h1, h2] = h;
    let [r0, r1, r2, s1, s2] = *r;
    let z = _mm512_setzero_si512();
    let m44 = _mm512_set1_epi64(M44 as i64);
    let m42 = _mm512_set1_epi64(M42 as i64);
    let five = _mm512_set1_epi64(5);
    // Products split at bit 52: "lo" keeps the limb's weight, "hi" is 2^52 = 2^44·2^8 above.
    let lo0 = _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h0, r0), h1, s2), h2, s1);
    let hi0 = _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h0, r0), h1, s2), h2, s1);
    let lo1 = _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h0, r1), h1, r0), h2, s2);
    let hi1 = _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h0, r1), h1, r0), h2, s2);
    let lo2 = _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h0, r2), h1, r1), h2, r0);
    let hi2 = _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h0, r2), h1, r1), h2, r0);
    // hi2 sits at 2^140 = 2^130·2^10 ≡ 5·2^10. The ×5 goes through IFMA (exact: < 2^52)
    // because shifts-and-adds get turned into a slow 64-bit vector multiply by the compiler.
    let t0 = _mm512_add_epi64(lo0, _mm512_slli_epi64::<10>(_mm512_madd52lo_epu64(z, hi2, five)));
    let t1 = _mm512_add_epi64(lo1, _mm512_slli_epi64::<8>(hi0));
    let t2 = _mm512_add_epi64(lo2, _mm512_slli_epi64::<8>(hi1));
    let c0 = _mm512_srli_epi64::<44>(t0);
    let c1 = _mm512_srli_epi64::<44>(t1);
    let c2 = _mm512_srli_epi64::<42>(t2);
    [
        _mm512_madd52lo_epu64(_mm512_and_si512(t0, m44), c2, five), // 2^130 ≡ 5
        _mm512_add_epi64(_mm512_and_si512(t1, m44), c0),
        _mm512_add_epi64(_mm512_and_si512(t2, m42), c1),
    ]
}

/// Loads 8 blocks (128 bytes) as 8 lanes of limbs, with the 2^128 bit.
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn load8(p: *const u8) -> [__m512i; 3] {
    let m44 = _mm512_set1_epi64(M44 as i64);
    let x = _mm512_loadu_si512(p as *const __m512i);
    let y = _mm512_loadu_si512(p.add(64) as *const __m512i);
    let lo = _mm512_permutex2var_epi64(x, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), y); // lane i: bytes 0..8 of block i
    let hi = _mm512_permutex2var_epi64(x, _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15), y);
    [
        _mm512_and_si512(lo, m44),
        _mm512_and_si512(_mm512_or_si512(_mm512_srli_epi64::<44>(lo), _mm512_slli_epi64::<20>(hi)), m44),
        _mm512_or_si512(_mm512_srli_epi64::<24>(hi), _mm512_set1_epi64(1 << 40)),
    ]
}

#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn add3(a: [__m512i; 3], b: [__m512i; 3]) -> [__m512i; 3] {
    [_mm512_add_epi64(a[0], b[0]), _mm512_add_epi64(a[1], b[1]), _mm512_add_epi64(a[2], b[2])]
}

/// h in lane 0 of a vector accumulator.
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn lane0(h: [u64; 3]) -> [__m512i; 3] {
    h.map(|x| _mm512_maskz_set1_epi64(1, x as i64))
}

/// The lanes' sum (limbs below 2^48 for up to 16 lanes), carried back into range.
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn sum_lanes(a: [__m512i; 3]) -> [u64; 3] {
    let [s0, s1, s2] = a.map(|v| _mm512_reduce_add_epi64(v) as u64);
    let s1 = s1 + (s0 >> 44);
    let s2 = s2 + (s1 >> 44);
    let s0 = (s0 & M44) + (s2 >> 42) * 5;
    [s0 & M44, (s1 & M44) + (s0 >> 44), s2 & M42]
}

/// Absorbs `data` (a non-zero multiple of 128 bytes) into `h`, 16 blocks per step in two
/// independent chains: lane i of chain A takes blocks i, 16 + i, ..., of chain B blocks
/// 8 + i, 24 + i, ...; every step multiplies by r^16, the last by r^(16−i) and r^(8−i).
/// An odd number of 8-block groups is read as if 8 zero blocks (without the 2^128 bit, so
/// they add nothing) came first: the first step then has only chain B, which takes `h`.
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn blocks16(h: [u64; 3], pows: &Powers, data: &[u8]) -> [u64; 3] {
    let steps = data.len().div_ceil(256);
    let (mut a, mut b, mut rest) = (lane0(h), lane0([0; 3]), data);
    if !data.len().is_multiple_of(256) {
        let rb = if steps == 1 { &pows.last } else { &pows.every16 };
        (a, b) = (lane0([0; 3]), mul8(add3(lane0(h), load8(data.as_ptr())), rb));
        rest = &data[128..];
    }
    let full = rest.len() / 256;
    for (n, c) in rest.chunks_exact(256).enumerate() {
        let ha = add3(a, load8(c.as_ptr()));
        let hb = add3(b, load8(c.as_ptr().add(128)));
        let (ra, rb) = if n + 1 == full { (&pows.last16, &pows.last) } else { (&pows.every16, &pows.every16) };
        a = mul8(ha, ra);
        b = mul8(hb, rb);
    }
    sum_lanes(add3(a, b))
}
