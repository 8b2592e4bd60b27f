//! ChaCha20 (RFC 8439 §2.3–2.4) in 512-bit registers: 16 blocks at once for long texts, 4 or 8
//! for short texts and tails, each in the layout that suits it (see `blocks16`, `blocks_h`).

use core::arch::x86_64::*;
use zeroize::Zeroize;

/// "expand 32-byte k" (RFC 8439 §2.3).
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

pub struct State {
    pub key: [u32; 8],
    pub nonce: [u32; 3],
}

impl Drop for State {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl State {
    /// Word i of the initial state (the counter word is set per lane by the caller).
    fn word(&self, i: usize) -> u32 {
        match i {
            0..=3 => SIGMA[i],
            4..=11 => self.key[i - 4],
            13..=15 => self.nonce[i - 13],
            _ => 0,
        }
    }
}

/// One quarter round (RFC 8439 §2.1) on words a, b, c, d of `$x`, every lane at once.
macro_rules! quarter {
    ($x:expr, $a:expr, $b:expr, $c:expr, $d:expr) => {
        $x[$a] = _mm512_add_epi32($x[$a], $x[$b]);
        $x[$d] = _mm512_rol_epi32::<16>(_mm512_xor_si512($x[$d], $x[$a]));
        $x[$c] = _mm512_add_epi32($x[$c], $x[$d]);
        $x[$b] = _mm512_rol_epi32::<12>(_mm512_xor_si512($x[$b], $x[$c]));
        $x[$a] = _mm512_add_epi32($x[$a], $x[$b]);
        $x[$d] = _mm512_rol_epi32::<8>(_mm512_xor_si512($x[$d], $x[$a]));
        $x[$c] = _mm512_add_epi32($x[$c], $x[$d]);
        $x[$b] = _mm512_rol_epi32::<7>(_mm512_xor_si512($x[$b], $x[$c]));
    };
}

/// Keystream blocks ctr..ctr+16, one 64-byte block per register. "Vertical": register i holds
/// state word i of all 16 blocks, so a quarter round is 12 instructions and needs no shuffles.
#[target_feature(enable = "avx512f")]
unsafe fn blocks16(st: &State, ctr: u32) -> [__m512i; 16] {
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let start = |i: usize| match i {
        12 => _mm512_add_epi32(_mm512_set1_epi32(ctr as i32), lanes),
        _ => _mm512_set1_epi32(st.word(i) as i32),
    };
    let mut x: [__m512i; 16] = std::array::from_fn(start);
    // §2.3: ten column rounds and ten diagonal rounds.
    for _ in 0..10 {
        quarter!(x, 0, 4, 8, 12);
        quarter!(x, 1, 5, 9, 13);
        quarter!(x, 2, 6, 10, 14);
        quarter!(x, 3, 7, 11, 15);
        quarter!(x, 0, 5, 10, 15);
        quarter!(x, 1, 6, 11, 12);
        quarter!(x, 2, 7, 8, 13);
        quarter!(x, 3, 4, 9, 14);
    }
    // Feed-forward (§2.3) from freshly broadcast words: keeping the initial state live
    // across the rounds would need 32 registers and spill.
    for (i, v) in x.iter_mut().enumerate() {
        *v = _mm512_add_epi32(*v, start(i));
    }
    // Transpose 4×4 inside each 128-bit lane: y[4g + j] holds words 4g..4g+4 of the block at
    // position j of every 128-bit lane.
    let mut y = x;
    for g in 0..4 {
        let (a, b, c, d) = (x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3]);
        let (t0, t1) = (_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
        let (t2, t3) = (_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
        y[4 * g] = _mm512_unpacklo_epi64(t0, t2);
        y[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
        y[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
        y[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
    }
    // Then the 128-bit lanes: block 4L + j is lane L of y[j], y[4 + j], y[8 + j], y[12 + j].
    let mut out = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        let (y0, y1, y2, y3) = (y[j], y[4 + j], y[8 + j], y[12 + j]);
        let p = _mm512_shuffle_i32x4::<0b01_00_01_00>(y0, y1); // y0.0 y0.1 y1.0 y1.1
        let q = _mm512_shuffle_i32x4::<0b01_00_01_00>(y2, y3);
        let r = _mm512_shuffle_i32x4::<0b11_10_11_10>(y0, y1); // y0.2 y0.3 y1.2 y1.3
        let s = _mm512_shuffle_i32x4::<0b11_10_11_10>(y2, y3);
        out[j] = _mm512_shuffle_i32x4::<0b10_00_10_00>(p, q); // lane 0 of y0..y3: block j
        out[4 + j] = _mm512_shuffle_i32x4::<0b11_01_11_01>(p, q);
        out[8 + j] = _mm512_shuffle_i32x4::<0b10_00_10_00>(r, s);
        out[12 + j] = _mm512_shuffle_i32x4::<0b11_01_11_01>(r, s);
    }
    out
}

/// Keystream blocks ctr..ctr+4·SETS for short texts and tails, "horizontal": one block per
/// 128-bit lane, a register per state row, so a double round is 24 vector instructions plus 6
/// in-lane shuffles per 4 blocks, and no 512-bit work is wasted on unused lanes.
#[target_feature(enable = "avx512f")]
unsafe fn blocks_h<const SETS: usize>(st: &State, ctr: u32) -> [[__m512i; 4]; SETS] {
    let row = |w: [u32; 4]| _mm512_broadcast_i32x4(_mm_setr_epi32(w[0] as i32, w[1] as i32, w[2] as i32, w[3] as i32));
    let [k0, k1, k2, k3, k4, k5, k6, k7] = st.key;
    let [n0, n1, n2] = st.nonce;
    let (a0, b0, c0) = (row(SIGMA), row([k0, k1, k2, k3]), row([k4, k5, k6, k7]));
    let d0: [__m512i; SETS] = std::array::from_fn(|s| {
        let c = ctr.wrapping_add(4 * s as u32) as i32;
        _mm512_add_epi32(row([c as u32, n0, n1, n2]), _mm512_setr_epi32(0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0))
    });
    let mut x: [[__m512i; 4]; SETS] = std::array::from_fn(|s| [a0, b0, c0, d0[s]]);
    // §2.3: a column round on the rows as they are, then a diagonal round on rows rotated so
    // that each diagonal stands in one column, then back. The sets are independent:
    // interleaved, they hide each other's latency.
    for _ in 0..10 {
        for r in x.iter_mut() {
            quarter!(r, 0, 1, 2, 3);
            r[1] = _mm512_shuffle_epi32::<0x39>(r[1]);
            r[2] = _mm512_shuffle_epi32::<0x4e>(r[2]);
            r[3] = _mm512_shuffle_epi32::<0x93>(r[3]);
        }
        for r in x.iter_mut() {
            quarter!(r, 0, 1, 2, 3);
            r[1] = _mm512_shuffle_epi32::<0x93>(r[1]);
            r[2] = _mm512_shuffle_epi32::<0x4e>(r[2]);
            r[3] = _mm512_shuffle_epi32::<0x39>(r[3]);
        }
    }
    std::array::from_fn(|s| {
        // Feed-forward, then block k is 128-bit lane k of a, b, c, d.
        let [a, b, c, d] = x[s];
        let (a, b, c, d) = (_mm512_add_epi32(a, a0), _mm512_add_epi32(b, b0), _mm512_add_epi32(c, c0), _mm512_add_epi32(d, d0[s]));
        let p = _mm512_shuffle_i32x4::<0b01_00_01_00>(a, b); // a.0 a.1 b.0 b.1
        let q = _mm512_shuffle_i32x4::<0b01_00_01_00>(c, d);
        let r = _mm512_shuffle_i32x4::<0b11_10_11_10>(a, b); // a.2 a.3 b.2 b.3
        let t = _mm512_shuffle_i32x4::<0b11_10_11_10>(c, d);
        [
            _mm512_shuffle_i32x4::<0b10_00_10_00>(p, q),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(p, q),
            _mm512_shuffle_i32x4::<0b10_00_10_00>(r, t),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(r, t),
        ]
    })
}

/// XORs keystream blocks into `data` from byte `off` on (a multiple of 64); returns how many
/// blocks the batch had.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn xor_into(ks: &[__m512i], data: &mut [u8], mut off: usize) -> usize {
    for k in ks {
        let n = data.len().saturating_sub(off).min(64);
        if n == 0 {
            break;
        }
        let p = data.as_mut_ptr().add(off);
        if n == 64 {
            let v = _mm512_loadu_si512(p as *const __m512i);
            _mm512_storeu_si512(p as *mut __m512i, _mm512_xor_si512(v, *k));
        } else {
            // Masked bytes are neither read nor written (no fault past the slice).
            let m: __mmask64 = (1u64 << n) - 1;
            let v = _mm512_maskz_loadu_epi8(m, p as *const i8);
            _mm512_mask_storeu_epi8(p as *mut i8, m, _mm512_xor_si512(v, *k));
        }
        off += 64;
    }
    ks.len()
}

/// §2.6: the Poly1305 key is the first 32 bytes of block 0.
#[target_feature(enable = "avx512f")]
unsafe fn poly_key(block0: __m512i) -> [u8; 32] {
    let mut b = [0u8; 64];
    _mm512_storeu_si512(b.as_mut_ptr() as *mut __m512i, block0);
    let mut k = [0u8; 32];
    k.copy_from_slice(&b[..32]);
    b.zeroize();
    k
}

/// Encrypts (or decrypts) `data` with blocks 1.. (§2.8) after `check(poly key, data)` accepts
/// the text as it is. Block 0 comes from the same first batch as the text's first blocks.
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
pub unsafe fn apply(st: &State, data: &mut [u8], check: impl FnOnce(&[u8; 32], &[u8]) -> bool) -> bool {
    // Block 0 is the Poly1305 key, so the first batch holds one text block fewer.
    let (ok, batch) = with_batch(st, 0, 1 + data.len().div_ceil(64), |ks| (first(ks, data, check), ks.len()));
    if !ok {
        return false;
    }
    let mut done = (batch - 1) * 64;
    // Later batches are not wiped: a keystream block is plaintext XOR ciphertext, both of which
    // pass through this buffer anyway; the first batch is, as it holds the Poly1305 key.
    while done < data.len() {
        let ctr = (1 + done / 64) as u32;
        done += 64 * with_batch(st, ctr, (data.len() - done).div_ceil(64), |ks| xor_into(ks, data, done));
    }
    true
}

/// Hands `f` the keystream batch from block `ctr` on that best fits `blocks` more blocks:
/// 4 or 8 horizontal ones, or 16 vertical ones.
#[inline(always)]
unsafe fn with_batch<R>(st: &State, ctr: u32, blocks: usize, f: impl FnOnce(&mut [__m512i]) -> R) -> R {
    match blocks {
        ..=4 => f(blocks_h::<1>(st, ctr).as_flattened_mut()),
        5..=8 => f(blocks_h::<2>(st, ctr).as_flattened_mut()),
        _ => f(&mut blocks16(st, ctr)),
    }
}

/// The first batch: block 0 goes to `check`, and only if it accepts do blocks 1.. meet the text.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn first(ks: &mut [__m512i], data: &mut [u8], check: impl FnOnce(&[u8; 32], &[u8]) -> bool) -> bool {
    let mut key = poly_key(ks[0]);
    let ok = check(&key, data);
    key.zeroize();
    if ok {
        xor_into(&ks[1..], data, 0);
    }
    for v in ks.iter_mut() {
        // Keystream left on the stack is wiped (registers are overwritten by the next use);
        // volatile so the wipe is not elided.
        std::ptr::write_volatile(v, _mm512_setzero_si512());
    }
    ok
}
