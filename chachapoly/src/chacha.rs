//! ChaCha20 (RFC 8439 §2.3–2.4), 16 or 8 blocks at once: register i holds state word i of
//! every block ("vertical" layout), so a quarter round is 12 vector instructions and AVX-512's
//! rotate needs no shuffles. A transpose then turns the registers into 64-byte blocks.

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

/// One quarter round (RFC 8439 §2.1) on words a, b, c, d of every lane.
macro_rules! quarter {
    ($x:ident, $add:ident, $xor:ident, $rol:ident, $a:expr, $b:expr, $c:expr, $d:expr) => {
        $x[$a] = $add($x[$a], $x[$b]);
        $x[$d] = $rol::<16>($xor($x[$d], $x[$a]));
        $x[$c] = $add($x[$c], $x[$d]);
        $x[$b] = $rol::<12>($xor($x[$b], $x[$c]));
        $x[$a] = $add($x[$a], $x[$b]);
        $x[$d] = $rol::<8>($xor($x[$d], $x[$a]));
        $x[$c] = $add($x[$c], $x[$d]);
        $x[$b] = $rol::<7>($xor($x[$b], $x[$c]));
    };
}

/// The 20 rounds (§2.3: ten column rounds and ten diagonal rounds).
macro_rules! rounds {
    ($x:ident, $add:ident, $xor:ident, $rol:ident) => {
        for _ in 0..10 {
            quarter!($x, $add, $xor, $rol, 0, 4, 8, 12);
            quarter!($x, $add, $xor, $rol, 1, 5, 9, 13);
            quarter!($x, $add, $xor, $rol, 2, 6, 10, 14);
            quarter!($x, $add, $xor, $rol, 3, 7, 11, 15);
            quarter!($x, $add, $xor, $rol, 0, 5, 10, 15);
            quarter!($x, $add, $xor, $rol, 1, 6, 11, 12);
            quarter!($x, $add, $xor, $rol, 2, 7, 8, 13);
            quarter!($x, $add, $xor, $rol, 3, 4, 9, 14);
        }
    };
}

/// One batch of rounds at any register width: register i holds word i of every lane's block
/// (lane k: counter ctr + k). Returns the words transposed 4×4 inside each 128-bit lane:
/// y[4g + j] holds words 4g..4g+4 of the block at position j of every 128-bit lane.
macro_rules! batch {
    ($st:expr, $ctr:expr, $lanes:expr, $set1:ident, $add:ident, $xor:ident, $rol:ident,
     $lo32:ident, $hi32:ident, $lo64:ident, $hi64:ident) => {{
        let lanes = $lanes;
        let start = |i: usize| match i {
            12 => $add($set1($ctr as i32), lanes),
            _ => $set1($st.word(i) as i32),
        };
        let mut x: [_; 16] = std::array::from_fn(start);
        rounds!(x, $add, $xor, $rol);
        // Feed-forward (§2.3) from freshly broadcast words: keeping the initial state live
        // across the rounds would need 32 registers and spill.
        for (i, v) in x.iter_mut().enumerate() {
            *v = $add(*v, start(i));
        }
        let mut y = x;
        for g in 0..4 {
            let (a, b, c, d) = (x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3]);
            let (t0, t1, t2, t3) = ($lo32(a, b), $hi32(a, b), $lo32(c, d), $hi32(c, d));
            y[4 * g] = $lo64(t0, t2);
            y[4 * g + 1] = $hi64(t0, t2);
            y[4 * g + 2] = $lo64(t1, t3);
            y[4 * g + 3] = $hi64(t1, t3);
        }
        y
    }};
}

/// Keystream blocks ctr..ctr+16, one 64-byte block per register.
#[target_feature(enable = "avx512f")]
unsafe fn blocks16(st: &State, ctr: u32) -> [__m512i; 16] {
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    #[rustfmt::skip]
    let y = batch!(st, ctr, lanes, _mm512_set1_epi32, _mm512_add_epi32, _mm512_xor_si512, _mm512_rol_epi32,
        _mm512_unpacklo_epi32, _mm512_unpackhi_epi32, _mm512_unpacklo_epi64, _mm512_unpackhi_epi64);
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

/// Keystream blocks ctr..ctr+8 in 256-bit registers (for short texts and tails).
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn blocks8(st: &State, ctr: u32) -> [__m512i; 8] {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    #[rustfmt::skip]
    let y = batch!(st, ctr, lanes, _mm256_set1_epi32, _mm256_add_epi32, _mm256_xor_si256, _mm256_rol_epi32,
        _mm256_unpacklo_epi32, _mm256_unpackhi_epi32, _mm256_unpacklo_epi64, _mm256_unpackhi_epi64);
    // Block 4L + j is lane L of y[j], y[4 + j], y[8 + j], y[12 + j].
    let mut out = [_mm512_setzero_si512(); 8];
    for j in 0..4 {
        let (y0, y1, y2, y3) = (y[j], y[4 + j], y[8 + j], y[12 + j]);
        let join = |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        out[j] = join(_mm256_permute2x128_si256::<0x20>(y0, y1), _mm256_permute2x128_si256::<0x20>(y2, y3));
        out[4 + j] = join(_mm256_permute2x128_si256::<0x31>(y0, y1), _mm256_permute2x128_si256::<0x31>(y2, y3));
    }
    out
}

/// XORs keystream blocks into `data` from byte `off` on (a multiple of 64).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn xor_into(ks: &[__m512i], data: &mut [u8], mut off: usize) {
    for k in ks {
        let n = data.len().saturating_sub(off).min(64);
        if n == 0 {
            return;
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
    if data.len().div_ceil(64) < 8 {
        return first(blocks8(st, 0), data, check);
    }
    if !first(blocks16(st, 0), data, check) {
        return false;
    }
    let mut done = 15 * 64;
    // Later batches are not wiped: a keystream block is plaintext XOR ciphertext, both of which
    // pass through this buffer anyway; the first batch is, as it holds the Poly1305 key.
    while done < data.len() {
        let ctr = (1 + done / 64) as u32;
        if data.len() - done > 8 * 64 {
            xor_into(&blocks16(st, ctr), data, done);
            done += 16 * 64;
        } else {
            xor_into(&blocks8(st, ctr), data, done);
            done += 8 * 64;
        }
    }
    true
}

/// The first batch: block 0 goes to `check`, and only if it accepts do blocks 1.. meet the text.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn first<const N: usize>(mut ks: [__m512i; N], data: &mut [u8], check: impl FnOnce(&[u8; 32], &[u8]) -> bool) -> bool {
    let mut key = poly_key(ks[0]);
    let ok = check(&key, data);
    key.zeroize();
    if ok {
        xor_into(&ks[1..], data, 0);
    }
    ks.zeroize_vectors();
    ok
}

/// Keystream left on the stack is wiped (registers are overwritten by the next use).
trait ZeroizeVectors {
    fn zeroize_vectors(&mut self);
}

impl<const N: usize> ZeroizeVectors for [__m512i; N] {
    fn zeroize_vectors(&mut self) {
        for v in self.iter_mut() {
            // SAFETY: a valid, aligned __m512i we own; volatile so the wipe is not elided.
            unsafe { std::ptr::write_volatile(v, std::mem::zeroed()) };
        }
    }
}
