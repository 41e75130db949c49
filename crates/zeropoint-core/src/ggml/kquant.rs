//! ggml's K-quants: super-blocks of 256 weights cut into sub-blocks of 16 or 32, each sub-block
//! with its own scale (and minimum), the sub-block scales themselves quantized to 4, 6 or 8 bits
//! against one f16 super-block scale.
//!
//! The searches (`make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`) try a few scales near
//! the min-max one and keep the one with the least weighted error; they are ggml's reference
//! searches, step for step, because a different float order flips a code and breaks byte-identity.

use super::lanes::{make_qkx2_quants_each, make_qx_quants_each};
use super::{read_fp16, write_fp16};

pub(super) const QK_K: usize = 256;
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, through the float's mantissa (ggml's `nearest_int`; valid for
/// |x| < 2^22, which every caller keeps to).
pub(super) fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Signed-max of magnitude: (max |x|, the x that has it).
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// Symmetric codes in [-nmax, nmax - 1] (stored + nmax) with the least weighted error over 19
/// candidate scales (ggml's `make_qx_quants` with `rmse_type` 1): the weights are `qw` when
/// given (importance), else x².
pub(super) fn make_qx_quants(x: &[f32], nmax: i32, l_out: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut weights = [0f32; 32];
    let weights = &mut weights[..x.len()];
    for (i, (w, &v)) in weights.iter_mut().zip(x).enumerate() {
        *w = qw.map_or(v * v, |q| q[i]);
    }
    let weights = &*weights;
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (&v, &w) in x.iter().zip(weights) {
            let l = code(iscale, v) as f32;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (l, &v) in l_out.iter_mut().zip(x) {
        *l = (code(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in l_out.iter_mut().zip(x) {
                *l = (code(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric codes in [-nmax, nmax - 1] (stored + nmax), refined by up to five passes of
/// coordinate descent on the x²-weighted error (ggml's `make_q3_quants` with `do_rmse`).
fn make_q3_quants(x: &[f32], nmax: i32, l_out: &mut [i8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (l_i, &v) in l_out.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *l_i = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (l_i, &v) in l_out.iter_mut().zip(x) {
            let w = v * v;
            let l = *l_i as f32;
            let mut slx = sumlx - w * v * l;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l * l;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *l_i as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l_i = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    l_out.iter_mut().for_each(|l| *l += nmax as i8);
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The candidate scales `make_qkx2_quants` tries: `(rmin + rdelta·is + nmax) / (max - min)` for
/// `is` in 0..=nstep, and whether the error is absolute (`use_mad`) or squared.
pub(super) struct Search {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    pub use_mad: bool,
}

/// Asymmetric codes in [0, nmax] with scale and min fitted by weighted least squares over the
/// candidate scales (ggml's `make_qkx2_quants`). Returns (scale, -min); the min is never above 0.
pub(super) fn make_qkx2_quants(
    x: &[f32],
    w: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    s: &Search,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let err = |d: f32, wi: f32| {
        if s.use_mad {
            wi * d.abs()
        } else {
            wi * (d * d)
        }
    };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        best_error += err(scale * l_out[i] as f32 + min - x[i], w[i]);
    }
    let mut laux = [0u8; 32];
    for is in 0..=s.nstep {
        iscale = (s.rmin + s.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let l = l as f32;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                cur_error += err(this_scale * laux[i] as f32 + this_min - x[i], w[i]);
            }
            if cur_error < best_error {
                l_out.copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The largest of `v` and 0, as ggml's `if (v > max) max = v` loops find it.
fn largest(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |max, &v| if v > max { v } else { max })
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K block (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs four 2-bit planes: byte l of each 32-byte group holds codes l, l+32, l+64, l+96.
pub(super) fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

/// Q2_K: scales[16] (4-bit scale | 4-bit min << 4), qs[64], d (f16), dmin (f16).
pub(super) fn quantize_q2_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let search = Search {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    let mut w = [0f32; QK_K];
    w.iter_mut().zip(x).for_each(|(w, v)| *w = v.abs());
    let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
    make_qkx2_quants_each((x, &w, 16), 3, &search, &mut l, (&mut scales, &mut mins));
    let (max_scale, max_min) = (largest(&scales), largest(&mins));
    let mut sc = [0u8; 16];
    let (mut d_all, mut dmin) = (0f32, 0f32);
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        d_all = max_scale / 15.0;
    }
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for j in 0..16 {
            sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        dmin = max_min / 15.0;
    }
    finish_q2_k(x, &sc, d_all, dmin, &mut l, y);
}

/// Stores d, dmin and the packed sub-block scales, re-rounds every code against them as stored,
/// and packs the codes.
pub(super) fn finish_q2_k(
    x: &[f32],
    sc: &[u8; 16],
    d_all: f32,
    dmin: f32,
    l: &mut [u8; QK_K],
    y: &mut [u8],
) {
    write_fp16(y, 80, d_all);
    write_fp16(y, 82, dmin);
    let (d_all, dmin) = (read_fp16(y, 80), read_fp16(y, 82));
    for j in 0..16 {
        let d = d_all * (sc[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * (sc[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
        }
    }
    y[..16].copy_from_slice(sc);
    pack_2bit(l, &mut y[16..80]);
}

pub(super) fn dequantize_q2_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (read_fp16(b, 80), read_fp16(b, 82));
    let (sc, q) = (&b[..16], &b[16..80]);
    for (i, v) in y.iter_mut().enumerate() {
        let (half, within) = (i / 128, i % 128);
        let (plane, l) = (within / 32, within % 32);
        let s = sc[i / 16];
        let code = (q[half * 32 + l] >> (2 * plane)) & 3;
        *v = d * (s & 0xF) as f32 * code as f32 - min * (s >> 4) as f32;
    }
}

/// The 6-bit scale of sub-block `j` of a Q3_K block, as a signed value.
fn q3_scale(sc: &[u8], j: usize) -> i8 {
    let low = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
    ((low | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8) - 32
}

/// Q3_K: hmask[32] (bit 2 of each code), qs[64] (bits 0-1), scales[12] (16 six-bit scales), d.
pub(super) fn quantize_q3_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    // Not run lane-parallel as the other searches are: its coordinate descent updates running
    // sums element by element, a dependency chain that eight lanes in step make slower.
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut l[16 * j..16 * j + 16]);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    let mut sc = [0u8; 12];
    let mut d = 0f32;
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            let q = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32;
            if j < 8 {
                sc[j] = (q & 0xF) as u8;
            } else {
                sc[j - 8] |= ((q & 0xF) as u8) << 4;
            }
            sc[j % 4 + 8] |= ((q >> 4) as u8) << (2 * (j / 4));
        }
        d = 1.0 / iscale;
    }
    finish_q3_k(x, &sc, d, &mut l, y);
}

/// Stores d and the scales, re-rounds every code against them as stored, and packs the codes.
pub(super) fn finish_q3_k(x: &[f32], sc: &[u8; 12], d: f32, l: &mut [i8; QK_K], y: &mut [u8]) {
    write_fp16(y, 108, d);
    let d_all = read_fp16(y, 108);
    for j in 0..16 {
        let d = d_all * q3_scale(sc, j) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
        }
    }
    let codes: [u8; QK_K] = std::array::from_fn(|j| l[j] as u8);
    pack_q3(&codes, y);
    y[96..108].copy_from_slice(sc);
}

/// Stores Q3_K's 3-bit codes (0..=7): bit 2 in `hmask` (bit j / 32 of byte j % 32), the low two
/// bits in 2-bit planes.
pub(super) fn pack_q3(l: &[u8; QK_K], y: &mut [u8]) {
    let mut low = [0u8; QK_K];
    y[..32].fill(0);
    // Branch-free: whether a code is above 3 is a coin toss a branch predictor loses.
    for (j, (&q, c)) in l.iter().zip(low.iter_mut()).enumerate() {
        *c = q & 3;
        y[j % 32] |= ((q > 3) as u8) << (j / 32);
    }
    pack_2bit(&low, &mut y[32..96]);
}

pub(super) fn dequantize_q3_k(b: &[u8], y: &mut [f32]) {
    let d_all = read_fp16(b, 108);
    let (hmask, q, sc) = (&b[..32], &b[32..96], &b[96..108]);
    for (i, v) in y.iter_mut().enumerate() {
        let (group, within) = (i / 128, i % 128);
        let (plane, l) = (within / 32, within % 32);
        let low = (q[group * 32 + l] >> (2 * plane)) & 3;
        let high = if hmask[l] & (1 << (i / 32)) != 0 {
            0
        } else {
            4
        };
        let dl = d_all * (q3_scale(sc, i / 16) as i32) as f32;
        *v = dl * (low as i32 - high) as f32;
    }
}

/// Fits the eight 32-weight sub-blocks of a Q4_K / Q5_K block and packs their 6-bit scales and
/// mins into `sc` (12 bytes); returns the codes and the super-block (d, dmin) before f16.
fn fit_k4(x: &[f32], nmax: i32, search: &Search, l: &mut [u8; QK_K], sc: &mut [u8]) -> (f32, f32) {
    let mut w = [0f32; QK_K];
    for (xs, w) in x.chunks_exact(32).zip(w.chunks_exact_mut(32)) {
        let mut sum_x2 = 0f32;
        xs.iter().for_each(|v| sum_x2 += v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        w.iter_mut().zip(xs).for_each(|(w, v)| *w = av_x + v.abs());
    }
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    make_qkx2_quants_each((x, &w, 32), nmax, search, l, (&mut scales, &mut mins));
    let (max_scale, max_min) = (largest(&scales), largest(&mins));
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls: [u8; 8] = std::array::from_fn(|j| nearest_int(inv_scale * scales[j]) as u8);
    let lm: [u8; 8] = std::array::from_fn(|j| nearest_int(inv_min * mins[j]) as u8);
    sc.copy_from_slice(&pack_scales_k4(&ls, &lm));
    (max_scale / 63.0, max_min / 63.0)
}

/// Packs eight 6-bit scales and mins (each capped at 63) into Q4_K / Q5_K's 12 bytes.
pub(super) fn pack_scales_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut sc = [0u8; 12];
    for j in 0..8 {
        let (s, m) = (ls[j].min(63), lm[j].min(63));
        if j < 4 {
            sc[j] = s;
            sc[j + 4] = m;
        } else {
            sc[j + 4] = (s & 0xF) | ((m & 0xF) << 4);
            sc[j - 4] |= (s >> 4) << 6;
            sc[j] |= (m >> 4) << 6;
        }
    }
    sc
}

/// Re-rounds every code against the sub-block scales as stored (6-bit, times the f16 d / dmin).
fn requantize_k4(x: &[f32], nmax: i32, d_all: f32, dmin: f32, sc: &[u8], l: &mut [u8; QK_K]) {
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, sc);
        let d = d_all * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

/// Q4_K (`bits` 4): d (f16), dmin (f16), scales[12], qs[128] (codes i and i + 32 of each 64
/// share a byte). Q5_K (`bits` 5): the same and qh[32] (bit 4 of code i in bit i / 32 of byte
/// i % 32) before qs. They differ only in the grid and in ggml's search steps.
pub(super) fn quantize_k4(x: &[f32], bits: u32, y: &mut [u8]) {
    let search = if bits == 4 {
        Search {
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        }
    } else {
        Search {
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: false,
        }
    };
    let mut l = [0u8; QK_K];
    let mut sc = [0u8; 12];
    let (d, dmin) = fit_k4(x, (1 << bits) - 1, &search, &mut l, &mut sc);
    finish_k4(x, bits, &sc, d, dmin, &mut l, y);
}

/// Stores d, dmin and the scales, re-rounds every code against them as stored, packs the codes.
pub(super) fn finish_k4(
    x: &[f32],
    bits: u32,
    sc: &[u8; 12],
    d: f32,
    dmin: f32,
    l: &mut [u8; QK_K],
    y: &mut [u8],
) {
    write_fp16(y, 0, d);
    write_fp16(y, 2, dmin);
    y[4..16].copy_from_slice(sc);
    requantize_k4(x, (1 << bits) - 1, read_fp16(y, 0), read_fp16(y, 2), sc, l);
    pack_k4(l, bits, y);
}

/// Stores Q4_K's (`bits` 4) or Q5_K's (5) codes: low nibbles, and for Q5_K bit 4 of code i in
/// bit i / 32 of `qh[i % 32]`.
pub(super) fn pack_k4(l: &[u8; QK_K], bits: u32, y: &mut [u8]) {
    if bits == 4 {
        pack_nibbles(l, &mut y[16..144]);
    } else {
        let (qh, ql) = y[16..176].split_at_mut(32);
        qh.fill(0);
        for g in 0..4 {
            for i in 0..32 {
                let (l1, l2) = (l[64 * g + i], l[64 * g + i + 32]);
                qh[i] |= ((l1 >> 4) << (2 * g)) | ((l2 >> 4) << (2 * g + 1));
            }
        }
        pack_nibbles(l, ql);
    }
}

/// The low nibbles of the codes, codes i and i + 32 of each 64 in one byte.
fn pack_nibbles(l: &[u8; QK_K], q: &mut [u8]) {
    for (g, q) in q.chunks_exact_mut(32).enumerate() {
        for i in 0..32 {
            q[i] = (l[64 * g + i] & 0xF) | ((l[64 * g + i + 32] & 0xF) << 4);
        }
    }
}

/// Q4_K (`bits` 4) or Q5_K (5) back to floats.
pub(super) fn dequantize_k4(b: &[u8], bits: u32, y: &mut [f32]) {
    let (d, min) = (read_fp16(b, 0), read_fp16(b, 2));
    let qs = if bits == 4 { 16 } else { 48 };
    for (i, v) in y.iter_mut().enumerate() {
        let (s, m) = scale_min_k4(i / 32, &b[4..16]);
        let byte = b[qs + (i / 64) * 32 + i % 32];
        let mut code = if i % 64 < 32 { byte & 0xF } else { byte >> 4 };
        if bits == 5 {
            code |= ((b[16 + i % 32] >> (i / 32)) & 1) << 4;
        }
        *v = d * s as f32 * code as f32 - min * m as f32;
    }
}

/// Q6_K: ql[128] (low nibbles), qh[64] (top two bits), scales[16] (i8), d (f16).
pub(super) fn quantize_q6_k(x: &[f32], y: &mut [u8]) {
    quantize_q6_k_weighted(x, None, y)
}

/// Q6_K with the sub-block searches weighted by `qw` (importance) when given; the rest is the
/// same (ggml's `quantize_row_q6_K_impl`).
pub(super) fn quantize_q6_k_weighted(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    make_qx_quants_each((x, qw, 16), 32, &mut l, &mut scales);
    let (max_abs, max_scale) = signed_absmax(&scales);
    if max_abs < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    write_fp16(y, 208, 1.0 / iscale);
    let d_all = read_fp16(y, 208);
    for ib in 0..16 {
        let s = nearest_int(iscale * scales[ib]).min(127) as i8;
        y[192 + ib] = s as u8;
        let d = d_all * s as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * ib + ii] = (nearest_int(x[16 * ib + ii] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    pack_q6(&std::array::from_fn(|j| l[j] as u8), y);
}

/// Stores Q6_K's 6-bit codes (0..=63): low nibbles in `ql`, the top two bits in `qh`.
pub(super) fn pack_q6(l: &[u8; QK_K], y: &mut [u8]) {
    let (ql, qh) = y[..192].split_at_mut(128);
    for g in 0..2 {
        let c = |k: usize| l[128 * g + k];
        for i in 0..32 {
            ql[64 * g + i] = (c(i) & 0xF) | ((c(i + 64) & 0xF) << 4);
            ql[64 * g + i + 32] = (c(i + 32) & 0xF) | ((c(i + 96) & 0xF) << 4);
            qh[32 * g + i] = (c(i) >> 4)
                | ((c(i + 32) >> 4) << 2)
                | ((c(i + 64) >> 4) << 4)
                | ((c(i + 96) >> 4) << 6);
        }
    }
}

pub(super) fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let d = read_fp16(b, 208);
    for (i, v) in y.iter_mut().enumerate() {
        let (g, within) = (i / 128, i % 128);
        let (quarter, l) = (within / 32, within % 32);
        let byte = b[64 * g + l + (quarter & 1) * 32];
        let low = if quarter < 2 { byte & 0xF } else { byte >> 4 };
        let high = (b[128 + 32 * g + l] >> (2 * quarter)) & 3;
        let q = (low | (high << 4)) as i8 - 32;
        *v = d * (b[192 + i / 16] as i8) as f32 * q as f32;
    }
}
