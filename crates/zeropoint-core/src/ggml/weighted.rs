//! Importance-weighted quantizers: what llama-quantize does with `--imatrix`. Each weight's error
//! counts in proportion to `qw[i]·√(σ² + x[i]²)`, where `qw[i]` is the mean square of the
//! activation that multiplies column i (from calibration text) and σ² the weights' mean square.
//! Ported from ggml's `quantize_row_*_impl` as the reference quantizers are, for byte-identity.

use super::kquant::{
    self, make_qkx2_quants, make_qx_quants, nearest_int, Search, GROUP_MAX_EPS, QK_K,
};
use super::lanes::{make_qkx2_quants_each, make_qx_quants_each};
use super::legacy;
use super::write_fp16;

/// ggml's weighted search for the legacy asymmetric kinds and the K-quant sub-blocks
/// (`make_qkx3_quants` with these steps: it equals `make_qkx2_quants` given weights).
const QKX3: Search = Search {
    rmin: -0.9,
    rdelta: 0.05,
    nstep: 36,
    use_mad: false,
};

fn sum_squares(x: &[f32]) -> f32 {
    let mut s = 0f32;
    x.iter().for_each(|v| s += v * v);
    s
}

/// `qw[i] · √(σ² + x[i]²)` into `out`.
fn importance(x: &[f32], qw: &[f32], sigma2: f32, out: &mut [f32]) {
    for ((o, &v), &q) in out.iter_mut().zip(x).zip(qw) {
        *o = q * (sigma2 + v * v).sqrt();
    }
}

fn total(w: &[f32]) -> f32 {
    let mut s = 0f32;
    w.iter().for_each(|v| s += v);
    s
}

/// Non-negative codes in [0, nmax] for the sub-block scales or mins, weighted by `qw`, refined
/// by coordinate descent (ggml's `make_qp_quants`). Codes below 0 wrap as ggml's `uint8_t` does.
fn make_qp_quants(x: &[f32], nmax: i32, l: &mut [u8], qw: &[f32]) -> f32 {
    let mut max = 0f32;
    x.iter().for_each(|&v| max = if max > v { max } else { v });
    if max < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    let mse = |iscale: f32, clamp: bool| {
        let scale = 1.0 / iscale;
        let mut mse = 0f32;
        for (&v, &w) in x.iter().zip(qw) {
            let q = nearest_int(iscale * v);
            let q = if clamp { q.min(nmax) } else { q as u8 as i32 };
            let diff = v - scale * q as f32;
            mse += w * diff * diff;
        }
        mse
    };
    let mut best_mse = mse(iscale, false);
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let m = mse(iscale_is, true);
        if m < best_mse {
            best_mse = m;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..x.len() {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        sumlx += qw[i] * x[i] * q as f32;
        suml2 += qw[i] * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..x.len() {
            let (w, li) = (qw[i], l[i] as f32);
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
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
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Q4_0 / Q5_0 over a whole row (σ² is the row's): symmetric codes from the weighted search,
/// eight blocks at a time in vector lanes and the blocks after the last eight one by one.
pub(super) fn legacy_symmetric(x: &[f32], qw: &[f32], bits: u32, y: &mut [u8]) {
    let (w, lanes) = row_importance(x, qw);
    let nmax = 1 << (bits - 1);
    let mut l = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / 32];
    let (x8, w8) = (&x[..lanes], Some(&w[..lanes]));
    make_qx_quants_each((x8, w8, 32), nmax, &mut l[..lanes], &mut d[..lanes / 32]);
    let blocks = x.chunks_exact(32).zip(w.chunks_exact(32)).enumerate();
    for (j, (xb, wb)) in blocks.skip(lanes / 32) {
        d[j] = make_qx_quants(xb, nmax, &mut l[32 * j..32 * j + 32], Some(wb));
    }
    let bytes = if bits == 4 { 18 } else { 22 };
    for (j, yb) in y.chunks_exact_mut(bytes).enumerate() {
        write_fp16(yb, 0, d[j]);
        let codes: [u8; 32] = std::array::from_fn(|i| l[32 * j + i] as u8);
        pack_legacy(&codes, bits, &mut yb[2..]);
    }
}

/// Q4_1 / Q5_1 over a whole row: scale and minimum from the weighted least-squares search, eight
/// blocks at a time in vector lanes and the blocks after the last eight one by one.
pub(super) fn legacy_asymmetric(x: &[f32], qw: &[f32], bits: u32, y: &mut [u8]) {
    let (w, lanes) = row_importance(x, qw);
    let nmax = (1 << bits) - 1;
    let mut l = vec![0u8; x.len()];
    let (mut d, mut neg_min) = (vec![0f32; x.len() / 32], vec![0f32; x.len() / 32]);
    let (d8, m8) = (&mut d[..lanes / 32], &mut neg_min[..lanes / 32]);
    make_qkx2_quants_each(
        (&x[..lanes], &w[..lanes], 32),
        nmax,
        &QKX3,
        &mut l[..lanes],
        (d8, m8),
    );
    let blocks = x.chunks_exact(32).zip(w.chunks_exact(32)).enumerate();
    for (j, (xb, wb)) in blocks.skip(lanes / 32) {
        let codes = &mut l[32 * j..32 * j + 32];
        (d[j], neg_min[j]) = make_qkx2_quants(xb, wb, nmax, codes, &QKX3);
    }
    let bytes = if bits == 4 { 20 } else { 24 };
    for (j, yb) in y.chunks_exact_mut(bytes).enumerate() {
        write_fp16(yb, 0, d[j]);
        write_fp16(yb, 2, -neg_min[j]);
        let codes: [u8; 32] = std::array::from_fn(|i| l[32 * j + i]);
        pack_legacy(&codes, bits, &mut yb[4..]);
    }
}

/// Each weight's importance over a row (σ² is the row's mean square), and how many of the row's
/// values lie in whole groups of eight 32-blocks.
fn row_importance(x: &[f32], qw: &[f32]) -> (Vec<f32>, usize) {
    let sigma2 = sum_squares(x) / x.len() as f32;
    let mut w = vec![0f32; x.len()];
    importance(x, qw, sigma2, &mut w);
    (w, x.len() / 256 * 256)
}

/// A legacy block's 32 codes after its header: nibbles (4 bits) or nibbles and high bits (5).
fn pack_legacy(codes: &[u8; 32], bits: u32, y: &mut [u8]) {
    if bits == 4 {
        for j in 0..16 {
            y[j] = codes[j] | (codes[j + 16] << 4);
        }
    } else {
        legacy::pack_q5(codes, y, 0);
    }
}

pub(super) fn q2_k(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let sigma2 = sum_squares(x) / QK_K as f32;
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    let mut w = [0f32; QK_K];
    for (j, w) in w.chunks_exact_mut(16).enumerate() {
        let (xs, qs) = (&x[16 * j..16 * j + 16], &qw[16 * j..16 * j + 16]);
        importance(xs, qs, sigma2, w);
        sw[j] = total(w);
    }
    make_qkx2_quants_each((x, &w, 16), 3, &QKX3, &mut l, (&mut scales, &mut mins));
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    let dm = make_qp_quants(&scales, 15, &mut ls, &sw);
    let mm = make_qp_quants(&mins, 15, &mut lm, &sw);
    let sc: [u8; 16] = std::array::from_fn(|j| ls[j] | (lm[j] << 4));
    kquant::finish_q2_k(x, &sc, dm, mm, &mut l, y);
}

pub(super) fn q3_k(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let mut l = [0i8; QK_K];
    let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
    let mut w = [0f32; QK_K];
    for (j, w) in w.chunks_exact_mut(16).enumerate() {
        importance(&x[16 * j..16 * j + 16], &qw[16 * j..16 * j + 16], sigma2, w);
        sw[j] = total(w);
    }
    make_qx_quants_each((x, Some(&w), 16), 4, &mut l, &mut scales);
    let mut ls = [0i8; 16];
    let d = make_qx_quants(&scales, 32, &mut ls, Some(&sw));
    let mut sc = [0u8; 12];
    for (j, &q) in ls.iter().enumerate() {
        let q = q as u8;
        if j < 8 {
            sc[j] = q & 0xF;
        } else {
            sc[j - 8] |= (q & 0xF) << 4;
        }
        sc[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
    }
    kquant::finish_q3_k(x, &sc, d, &mut l, y);
}

/// Q4_K (`bits` 4) and Q5_K (5): weighted sub-block fits, then the scales and mins themselves
/// weighted by each sub-block's total importance.
pub(super) fn q45_k(x: &[f32], qw: &[f32], bits: u32, y: &mut [u8]) {
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let nmax = (1 << bits) - 1;
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let mut w = [0f32; QK_K];
    for (j, w) in w.chunks_exact_mut(32).enumerate() {
        let (xs, qs) = (&x[32 * j..32 * j + 32], &qw[32 * j..32 * j + 32]);
        importance(xs, qs, sigma2, w);
        sw[j] = total(w);
    }
    make_qkx2_quants_each((x, &w, 32), nmax, &QKX3, &mut l, (&mut scales, &mut mins));
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d = make_qp_quants(&scales, 63, &mut ls, &sw);
    let dmin = make_qp_quants(&mins, 63, &mut lm, &sw);
    let sc = kquant::pack_scales_k4(&ls, &lm);
    kquant::finish_k4(x, bits, &sc, d, dmin, &mut l, y);
}
