//! Which weights ONNX Runtime's int8 kernels on x86 CPUs without VNNI add in pairs, and the
//! weight scales that keep those pairs within 16 bits (`--limit-pairs`; [`crate::pair_limit`]
//! lowers what rounding then carries past the limit).
//!
//! There ONNX Runtime multiplies uint8 activation codes by int8 weight codes with `vpmaddubsw`,
//! which adds each pair of adjacent products along the reduction axis K (k = 2t and 2t+1) in a
//! saturating 16-bit integer. Activation codes lie in [0, 255], so a pair of weight codes of
//! opposite signs cannot overflow (255·128 = 32640 ≤ 32767), and one of equal signs only if
//! |q_a + q_b| > 128. ONNX Runtime's own remedy, reduce_range, takes 7-bit weights: every
//! channel's step doubles. Here each channel's step grows only as far as its largest same-sign
//! pair needs, s = max(s₈, max |w_a + w_b| / 128), at most the 7-bit step and usually below it.
//! Rounding can still carry a pair to 129; [`crate::pair_limit`] lowers those after rounding.
//!
//! Which weights are adjacent along K depends on the kernel's layout:
//! - MatMul and Gemm: B's K axis, as stored;
//! - Conv: ONNX Runtime's QLinearConv reorders W [M, C, kh, kw] to taps outer, channels inner
//!   (k = tap·C + c), and its symmetric-conv kernels pad each tap's channels to a multiple of 4;
//!   for an odd C the two layouts pair different weights, and both pairings are limited.
//!
//! ConvTranspose weights are left alone (ONNX Runtime runs them in float).

use zeropoint_core::{Granularity, Layout, QParams, Scheme};
use zeropoint_graph::Op;
use zeropoint_onnx::RawTensor;

use crate::error::{Error, Result};
use crate::placement::WeightSite;

/// The most two paired weight codes may add up to in magnitude.
pub const PAIR_LIMIT: i32 = 128;

/// Whether the weight at `site` with these parameters is one the int8 kernels pair: an 8-bit,
/// signed, symmetric Conv, MatMul or Gemm weight, per channel or per tensor.
pub(crate) fn eligible(site: &WeightSite, s: &Scheme, qp: &QParams) -> bool {
    s.bits == 8
        && s.signed
        && qp.zero_point.iter().all(|&z| z == 0)
        && !matches!(s.granularity, Granularity::PerBlock { .. })
        && matches!(site.op, Op::Conv | Op::MatMul | Op::Gemm)
}

/// Raises the scales `qp` of the weight `t` at `site` (scheme `s`) so that no same-sign pair
/// the kernels add can exceed [`PAIR_LIMIT`] before rounding.
pub(crate) fn widen_scales(
    site: &WeightSite,
    t: &RawTensor,
    s: &Scheme,
    qp: &mut QParams,
) -> Result<()> {
    if !eligible(site, s, qp) {
        return Ok(());
    }
    let layout = Layout::new(&t.shape, qp.granularity)
        .map_err(|e| Error::Environment(format!("weight '{}': {e}", site.name)))?;
    let w = t.to_f32s();
    let mut largest = vec![0f32; qp.scale.len()];
    for pairs in pairings(site, &t.shape) {
        for (a, b) in pairs {
            let p = layout.param_index(a);
            largest[p] = largest[p].max((w[a] + w[b]).abs());
        }
    }
    for (s, pair) in qp.scale.iter_mut().zip(largest) {
        *s = s.max(pair / PAIR_LIMIT as f32);
    }
    Ok(())
}

/// The pairs of element indices the kernels add in 16 bits, one list per layout that pairs
/// them differently.
pub(crate) fn pairings(site: &WeightSite, shape: &[usize]) -> Vec<Vec<(usize, usize)>> {
    if site.op == Op::Conv {
        return conv_pairings(shape);
    }
    // MatMul and Gemm: pairs along K, the one of the last two axes that is not the channels'.
    let rank = shape.len();
    if rank < 2 {
        return Vec::new();
    }
    let k_axis = if site.channel_axis == rank - 1 {
        rank - 2
    } else {
        rank - 1
    };
    let k = shape[k_axis];
    let stride: usize = shape[k_axis + 1..].iter().product();
    let total: usize = shape.iter().product();
    let mut pairs = Vec::new();
    for start in (0..total).filter(|&e| (e / stride).is_multiple_of(k)) {
        for t in 0..k / 2 {
            pairs.push((start + 2 * t * stride, start + (2 * t + 1) * stride));
        }
    }
    vec![pairs]
}

/// Conv W [M, C, spatial...]: k = tap·C + c, paired (2t, 2t+1) in that order, and, for an odd
/// C, also channel pairs (c, c+1) for even c within each tap (the symmetric-conv packing).
fn conv_pairings(shape: &[usize]) -> Vec<Vec<(usize, usize)>> {
    if shape.len() < 3 {
        return Vec::new();
    }
    let (m, c) = (shape[0], shape[1]);
    let taps: usize = shape[2..].iter().product();
    let index = |o: usize, k: usize| (o * c + k % c) * taps + k / c;
    let mut flat = Vec::new();
    let mut per_tap = Vec::new();
    for o in 0..m {
        for t in 0..(c * taps) / 2 {
            flat.push((index(o, 2 * t), index(o, 2 * t + 1)));
        }
        if c % 2 == 1 {
            for tap in 0..taps {
                for ch in (0..c - 1).step_by(2) {
                    per_tap.push((index(o, tap * c + ch), index(o, tap * c + ch + 1)));
                }
            }
        }
    }
    if per_tap.is_empty() {
        vec![flat]
    } else {
        vec![flat, per_tap]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Conv W [M, C, taps]: k = tap·C + c, so for C = 3 the flat pairs cross taps, and the
    /// symmetric-conv packing adds the within-tap pairs (c0, c1) of every tap.
    #[test]
    fn conv_pairs_follow_onnx_runtimes_layouts() {
        // W [1, 3, 1, 2]: element (c, tap) at index c·2 + tap.
        let p = pairings(&WeightSite::of(Op::Conv, 0), &[1, 3, 1, 2]);
        // k order: (tap0: c0 c1 c2) (tap1: c0 c1 c2) → indices 0 2 4 1 3 5.
        assert_eq!(p[0], vec![(0, 2), (4, 1), (3, 5)]);
        assert_eq!(p[1], vec![(0, 2), (1, 3)]);
        // An even C: one layout.
        assert_eq!(
            pairings(&WeightSite::of(Op::Conv, 0), &[2, 2, 1, 1]),
            vec![vec![(0, 1), (2, 3)]]
        );
    }

    /// MatMul B [K, N] and Gemm B^T [N, K]: pairs along K, within one output channel.
    #[test]
    fn matmul_pairs_run_along_k() {
        // B [4, 2]: column n holds elements n, n+2, n+4, n+6.
        let p = pairings(&WeightSite::of(Op::MatMul, 1), &[4, 2]);
        assert_eq!(p, vec![vec![(0, 2), (4, 6), (1, 3), (5, 7)]]);
        let p = pairings(&WeightSite::of(Op::Gemm, 0), &[2, 4]);
        assert_eq!(p, vec![vec![(0, 1), (2, 3), (4, 5), (6, 7)]]);
    }
}
