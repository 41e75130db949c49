//! ggml's first block formats: 32 weights, one f16 scale (and an f16 minimum for the `_1` kinds).
//!
//! Q4_0 / Q5_0 are symmetric with the scale's sign chosen so that the largest-magnitude weight
//! lands exactly on code 0 (`d = max / -8`); Q4_1 / Q5_1 are asymmetric (`x = d·q + m`); Q8_0 is
//! symmetric with `d = amax / 127`. The casts and `+ 8.5` offsets are ggml's: they truncate
//! toward zero, so they must stay as they are for the bytes to match.

use super::{read_fp16, write_fp16};

const QK: usize = 32;

/// The value of largest magnitude, the first one on ties (ggml's `amax`/`max` loop, whose strict
/// `<` keeps the first). Written as a max then a search so that the max vectorizes.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> f32 {
    let amax = abs_max(x);
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

/// max |x| (0 for an empty slice), branch-free so that it vectorizes.
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    x.iter()
        .fold(0f32, |a, v| if v.abs() > a { v.abs() } else { a })
}

/// `roundf`: to nearest, ties away from zero, for |x| < 2^23. Adding the float just below 0.5
/// and truncating is exact there (x + 0.49999997 can reach the next integer only from x ≥ k + ½)
/// and compiles to two vector instructions, where `f32::round` is a library call.
#[inline(always)]
fn round_away(x: f32) -> i32 {
    (x + 0.49999997f32.copysign(x)) as i32
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Layout: d (f16), qs[16]: element j in the low nibble of byte j, element j + 16 in the high.
#[inline(always)]
pub(super) fn quantize_q4_0(x: &[f32], y: &mut [u8]) {
    let (x, y): (&[f32; 32], &mut [u8; 18]) = (x.try_into().unwrap(), y.try_into().unwrap());
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    write_fp16(y, 0, d);
    // ggml truncates toward zero after + 8.5; the sum is never negative (|x·id| ≤ 8), so an i32
    // cast truncates the same and vectorizes.
    let code = |v: f32| ((v * id + 8.5) as i32).min(15) as u8;
    for j in 0..QK / 2 {
        y[2 + j] = code(x[j]) | (code(x[j + QK / 2]) << 4);
    }
}

pub(super) fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = read_fp16(b, 0);
    for j in 0..QK / 2 {
        y[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
        y[j + QK / 2] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// Layout: d (f16), m (f16), qs[16] as in Q4_0.
pub(super) fn quantize_q4_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    write_fp16(y, 0, d);
    write_fp16(y, 2, min);
    for j in 0..QK / 2 {
        let x0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let x1 = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
        y[4 + j] = x0 | (x1 << 4);
    }
}

pub(super) fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (read_fp16(b, 0), read_fp16(b, 2));
    for j in 0..QK / 2 {
        y[j] = (b[4 + j] & 0xF) as f32 * d + m;
        y[j + QK / 2] = (b[4 + j] >> 4) as f32 * d + m;
    }
}

/// Stores 5-bit codes as Q5 blocks do: the low nibbles as in Q4_0 at `qs`, bit 4 of element j in
/// bit j of the little-endian u32 at `qh`.
pub(super) fn pack_q5(codes: &[u8; QK], y: &mut [u8], qh_at: usize) {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (x0, x1) = (codes[j], codes[j + QK / 2]);
        y[qh_at + 4 + j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= ((x0 as u32 & 0x10) >> 4) << j;
        qh |= ((x1 as u32 & 0x10) >> 4) << (j + QK / 2);
    }
    y[qh_at..qh_at + 4].copy_from_slice(&qh.to_le_bytes());
}

fn unpack_q5(b: &[u8], qh_at: usize) -> [u8; QK] {
    let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
    let mut codes = [0u8; QK];
    for j in 0..QK / 2 {
        let q = b[qh_at + 4 + j];
        codes[j] = (q & 0xF) | ((((qh >> j) & 1) as u8) << 4);
        codes[j + QK / 2] = (q >> 4) | ((((qh >> (j + QK / 2)) & 1) as u8) << 4);
    }
    codes
}

/// Layout: d (f16), qh[4], qs[16].
pub(super) fn quantize_q5_0(x: &[f32], y: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    write_fp16(y, 0, d);
    let mut codes = [0u8; QK];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = ((v * id + 16.5) as i8).min(31) as u8;
    }
    pack_q5(&codes, y, 2);
}

pub(super) fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = read_fp16(b, 0);
    for (v, c) in y.iter_mut().zip(unpack_q5(b, 2)) {
        *v = (c as i32 - 16) as f32 * d;
    }
}

/// Layout: d (f16), m (f16), qh[4], qs[16].
pub(super) fn quantize_q5_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    write_fp16(y, 0, d);
    write_fp16(y, 2, min);
    let mut codes = [0u8; QK];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = ((v - min) * id + 0.5) as u8;
    }
    pack_q5(&codes, y, 4);
}

pub(super) fn dequantize_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (read_fp16(b, 0), read_fp16(b, 2));
    for (v, c) in y.iter_mut().zip(unpack_q5(b, 4)) {
        *v = c as f32 * d + m;
    }
}

/// Layout: d (f16), qs[32] (i8).
#[inline(always)]
pub(super) fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    let (x, y): (&[f32; 32], &mut [u8; 34]) = (x.try_into().unwrap(), y.try_into().unwrap());
    let d = abs_max(x) / 127.0;
    let id = inverse(d);
    write_fp16(y, 0, d);
    for (q, &v) in y[2..].iter_mut().zip(x) {
        *q = round_away(v * id) as i8 as u8;
    }
}

pub(super) fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = read_fp16(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..]) {
        *v = q as i8 as f32 * d;
    }
}
