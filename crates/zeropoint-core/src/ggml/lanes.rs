//! ggml's scale searches (`make_qkx2_quants`, scale and min; `make_qx_quants`, symmetric) on
//! eight sub-blocks (or 32-blocks) at once, one per vector lane.
//!
//! Each lane does the scalar search's operations in the same order, with its branches turned into
//! per-lane choices, so every lane ends with the bits the scalar search gives for its sub-block:
//! byte-identity with llama.cpp holds. The lane loops are plain Rust over `[f32; 8]`, which the
//! compiler turns into AVX2 instructions under [`crate::kernel::dispatch`]. The searches are most
//! of the time a K-quant block (or an importance-weighted legacy block) takes, and a super-block
//! has eight or sixteen of them.

use super::kquant::{nearest_int, Search, GROUP_MAX_EPS};

const LANES: usize = 8;

type F = [f32; LANES];

/// `make_qkx2_quants` for each sub-block of `n` values of `x` (a multiple of eight of them), with
/// weights `w` laid out alike; the codes go to `l` in the same layout, sub-block j's scale and
/// negated min to `scales[j]` and `mins[j]`, as the scalar search gives them.
pub(super) fn make_qkx2_quants_each(
    (x, w, n): (&[f32], &[f32], usize),
    nmax: i32,
    s: &Search,
    l: &mut [u8],
    (scales, mins): (&mut [f32], &mut [f32]),
) {
    assert!(n <= 32 && w.len() == x.len() && l.len() == x.len());
    assert!(x.len() == scales.len() * n && scales.len() == mins.len());
    let groups = x.chunks_exact(n * LANES).zip(w.chunks_exact(n * LANES));
    let outputs = l
        .chunks_exact_mut(n * LANES)
        .zip(scales.chunks_exact_mut(LANES));
    for (((x, w), (l, scales)), mins) in groups.zip(outputs).zip(mins.chunks_exact_mut(LANES)) {
        let (xt, wt) = (transpose(x, n), transpose(w, n));
        let mut lt = [[0u8; LANES]; 32];
        let (s, m) = crate::kernel::dispatch(
            #[inline(always)]
            || search(&xt[..n], &wt[..n], nmax, s, &mut lt[..n]),
        );
        untranspose(&lt[..n], l);
        scales.copy_from_slice(&s);
        mins.copy_from_slice(&m);
    }
}

/// ggml's `make_qx_quants` (as [`super::kquant::make_qx_quants`]) for each sub-block of `n`
/// values of `x` (a multiple of eight of them), weighted by `qw` laid out alike when given,
/// else by x²; codes to `l` in the same layout, sub-block j's scale to `scales[j]`.
pub(super) fn make_qx_quants_each(
    (x, qw, n): (&[f32], Option<&[f32]>, usize),
    nmax: i32,
    l: &mut [i8],
    scales: &mut [f32],
) {
    assert!(n <= 32 && l.len() == x.len() && x.len() == scales.len() * n);
    assert!(qw.is_none_or(|qw| qw.len() == x.len()));
    let outputs = l
        .chunks_exact_mut(n * LANES)
        .zip(scales.chunks_exact_mut(LANES));
    for (g, (l, scales)) in outputs.enumerate() {
        let group = g * n * LANES..(g + 1) * n * LANES;
        let xt = transpose(&x[group.clone()], n);
        let wt = match qw {
            Some(qw) => transpose(&qw[group], n),
            None => xt.map(|x| x.map(|v| v * v)),
        };
        let mut lt = [[0i8; LANES]; 32];
        let s = crate::kernel::dispatch(
            #[inline(always)]
            || symmetric_search(&xt[..n], &wt[..n], nmax, &mut lt[..n]),
        );
        untranspose(&lt[..n], l);
        scales.copy_from_slice(&s);
    }
}

/// Eight runs of `n` values to `n` lanes of eight: element i of run k at `[i][k]`.
fn transpose(x: &[f32], n: usize) -> [F; 32] {
    let mut t = [[0f32; LANES]; 32];
    for k in 0..LANES {
        for i in 0..n {
            t[i][k] = x[k * n + i];
        }
    }
    t
}

/// The inverse of [`transpose`], into `out`.
fn untranspose<T: Copy>(t: &[[T; LANES]], out: &mut [T]) {
    let n = t.len();
    for k in 0..LANES {
        for i in 0..n {
            out[k * n + i] = t[i][k];
        }
    }
}

/// One lane-wise operation on eight floats.
#[inline(always)]
fn each(f: impl Fn(usize) -> f32) -> F {
    let mut out = [0f32; LANES];
    for (k, o) in out.iter_mut().enumerate() {
        *o = f(k);
    }
    out
}

/// The code of `x` against `iscale` and `min`, as the scalar search rounds and clamps it.
#[inline(always)]
fn code(iscale: f32, x: f32, min: f32, nmax: i32) -> f32 {
    nearest_int(iscale * (x - min)).clamp(0, nmax) as f32
}

/// The search on transposed data: `x[i][k]` is element i of sub-block k. Rather than copying
/// codes each time a lane finds a better fit, it keeps the (iscale, min) that gave them and
/// rounds once at the end: the same codes.
#[inline(always)]
fn search(x: &[F], w: &[F], nmax: i32, s: &Search, l_out: &mut [[u8; LANES]]) -> (F, F) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = each(|k| sum_w[k] * x[0][k]);
    for i in 1..n {
        for k in 0..LANES {
            min[k] = if x[i][k] < min[k] { x[i][k] } else { min[k] };
            max[k] = if x[i][k] > max[k] { x[i][k] } else { max[k] };
            sum_w[k] += w[i][k];
            sum_x[k] += w[i][k] * x[i][k];
        }
    }
    let mut min = each(|k| if min[k] > 0.0 { 0.0 } else { min[k] });
    // A sub-block of equal values returns early in the scalar search: its lane runs on (on
    // meaningless numbers) and is overwritten at the end.
    let (flat_min, flat) = (min, each(|k| (max[k] == min[k]) as u32 as f32));
    let err = |d: f32, wi: f32| {
        if s.use_mad {
            wi * d.abs()
        } else {
            wi * (d * d)
        }
    };
    let mut iscale = each(|k| nmax as f32 / (max[k] - min[k]));
    let mut scale = each(|k| 1.0 / iscale[k]);
    let mut best_error = [0f32; LANES];
    for i in 0..n {
        for k in 0..LANES {
            let l = code(iscale[k], x[i][k], min[k], nmax);
            best_error[k] += err(scale[k] * l + min[k] - x[i][k], w[i][k]);
        }
    }
    // The codes of the best fit so far are those of (iscale, rounding_min).
    let mut rounding_min = min;
    let mut laux = [[0f32; LANES]; 32];
    for is in 0..=s.nstep {
        let step = s.rmin + s.rdelta * is as f32 + nmax as f32;
        // Over max − min with the min of the best fit so far, as in the scalar search.
        let this_iscale = each(|k| step / (max[k] - min[k]));
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        for i in 0..n {
            for k in 0..LANES {
                let l = code(this_iscale[k], x[i][k], min[k], nmax);
                laux[i][k] = l;
                sum_l[k] += w[i][k] * l;
                sum_l2[k] += w[i][k] * l * l;
                sum_xl[k] += w[i][k] * l * x[i][k];
            }
        }
        let det = each(|k| sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k]);
        let fitted_min = each(|k| (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / det[k]);
        let this_scale = each(|k| {
            if fitted_min[k] > 0.0 {
                sum_xl[k] / sum_l2[k]
            } else {
                (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / det[k]
            }
        });
        let this_min = each(|k| {
            if fitted_min[k] > 0.0 {
                0.0
            } else {
                fitted_min[k]
            }
        });
        let mut cur_error = [0f32; LANES];
        for i in 0..n {
            for k in 0..LANES {
                let d = this_scale[k] * laux[i][k] + this_min[k] - x[i][k];
                cur_error[k] += err(d, w[i][k]);
            }
        }
        for k in 0..LANES {
            if det[k] > 0.0 && cur_error[k] < best_error[k] {
                (iscale[k], rounding_min[k]) = (this_iscale[k], min[k]);
                best_error[k] = cur_error[k];
                scale[k] = this_scale[k];
                min[k] = this_min[k];
            }
        }
    }
    for i in 0..n {
        for k in 0..LANES {
            let l = code(iscale[k], x[i][k], rounding_min[k], nmax) as u8;
            l_out[i][k] = if flat[k] != 0.0 { 0 } else { l };
        }
    }
    for k in 0..LANES {
        if flat[k] != 0.0 {
            (scale[k], min[k]) = (0.0, flat_min[k]);
        }
    }
    (scale, each(|k| -min[k]))
}

/// `make_qx_quants` on transposed data, keeping the best iscale and rounding once at the end.
#[inline(always)]
fn symmetric_search(x: &[F], w: &[F], nmax: i32, l_out: &mut [[i8; LANES]]) -> F {
    let n = x.len();
    let (amax, max) = signed_absmax(x);
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
    let sums = |iscale: &F| {
        let (mut sumlx, mut suml2) = ([0f32; LANES], [0f32; LANES]);
        for i in 0..n {
            for k in 0..LANES {
                let l = code(iscale[k], x[i][k]);
                sumlx[k] += w[i][k] * x[i][k] * l;
                suml2[k] += w[i][k] * l * l;
            }
        }
        (sumlx, suml2)
    };
    let mut iscale = each(|k| -(nmax as f32) / max[k]);
    let (sumlx, suml2) = sums(&iscale);
    let mut scale = each(|k| {
        if suml2[k] != 0.0 {
            sumlx[k] / suml2[k]
        } else {
            0.0
        }
    });
    let mut best = each(|k| scale[k] * sumlx[k]);
    for is in (-9..=9).filter(|&is| is != 0) {
        let this_iscale = each(|k| -(nmax as f32 + 0.1 * is as f32) / max[k]);
        let (sumlx, suml2) = sums(&this_iscale);
        for k in 0..LANES {
            if suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best[k] * suml2[k] {
                iscale[k] = this_iscale[k];
                scale[k] = sumlx[k] / suml2[k];
                best[k] = scale[k] * sumlx[k];
            }
        }
    }
    // A sub-block below ggml's epsilon returns early in the scalar search, with zero codes.
    let tiny = each(|k| (amax[k] < GROUP_MAX_EPS) as u32 as f32);
    for i in 0..n {
        for k in 0..LANES {
            let l = (code(iscale[k], x[i][k]) as i32 + nmax) as i8;
            l_out[i][k] = if tiny[k] != 0.0 { 0 } else { l };
        }
    }
    each(|k| if tiny[k] != 0.0 { 0.0 } else { scale[k] })
}

/// The first value of largest magnitude in each lane, with its sign, and the magnitude.
#[inline(always)]
fn signed_absmax(x: &[F]) -> (F, F) {
    let (mut amax, mut max) = ([0f32; LANES], [0f32; LANES]);
    for xi in x {
        for k in 0..LANES {
            if xi[k].abs() > amax[k] {
                (amax[k], max[k]) = (xi[k].abs(), xi[k]);
            }
        }
    }
    (amax, max)
}

#[cfg(test)]
mod tests {
    use super::super::kquant::{make_qkx2_quants, make_qx_quants};
    use super::super::uniform;
    use super::*;

    #[test]
    fn every_lane_gives_the_scalar_symmetric_search_bits() {
        let mut next = uniform(5);
        for (nmax, n, weighted) in [
            (32, 16, false),
            (32, 16, true),
            (4, 16, true),
            (8, 32, false),
        ] {
            let mut x: Vec<f32> = (0..n * 32).map(|i| next() * (1 + i % 3) as f32).collect();
            // Below ggml's epsilon, all zero, +a before −a, a spike.
            x[..n].fill(1e-16);
            x[n..2 * n].fill(0.0);
            (x[2 * n + 1], x[2 * n + 5]) = (2.0, -2.0);
            x[3 * n + 7] = -30.0;
            let qw: Vec<f32> = x.iter().map(|_| next().abs()).collect();
            let qw = weighted.then_some(&qw[..]);
            let (mut l, mut scales) = (vec![0i8; x.len()], vec![0f32; 32]);
            make_qx_quants_each((&x, qw, n), nmax, &mut l, &mut scales);
            for (j, got_scale) in scales.iter().enumerate() {
                let block = j * n..(j + 1) * n;
                let mut want = vec![0i8; n];
                let q = qw.map(|q| &q[block.clone()]);
                let scale = make_qx_quants(&x[block.clone()], nmax, &mut want, q);
                let got = (got_scale.to_bits(), &l[block]);
                assert_eq!(got, (scale.to_bits(), &want[..]), "nmax {nmax}, n {n}, {j}");
            }
        }
    }

    #[test]
    fn every_lane_gives_the_scalar_search_bits() {
        let mut next = uniform(11);
        let searches = [
            (-1.0, 0.1, 20, false, 15),
            (-0.5, 0.1, 15, false, 31),
            (-0.5, 0.1, 15, true, 3),
            (-0.9, 0.05, 36, false, 15),
        ];
        for (rmin, rdelta, nstep, use_mad, nmax) in searches {
            let s = Search {
                rmin,
                rdelta,
                nstep,
                use_mad,
            };
            for n in [16, 32] {
                let mut x: Vec<f32> = (0..n * 64).map(|i| next() * (1 + i % 5) as f32).collect();
                let w: Vec<f32> = x.iter().map(|v| v.abs() + next().abs()).collect();
                // Sub-blocks of equal values (zero and not), all above zero, all below, a spike.
                x[..n].fill(0.0);
                x[n..2 * n].fill(0.7);
                x[2 * n..3 * n].iter_mut().for_each(|v| *v = v.abs() + 0.1);
                x[3 * n..4 * n].iter_mut().for_each(|v| *v = -v.abs());
                x[4 * n + 3] = 40.0;
                let mut l = vec![0u8; x.len()];
                let (mut scales, mut mins) = (vec![0f32; 64], vec![0f32; 64]);
                make_qkx2_quants_each((&x, &w, n), nmax, &s, &mut l, (&mut scales, &mut mins));
                for j in 0..64 {
                    let block = j * n..(j + 1) * n;
                    let mut want = vec![0u8; n];
                    let (scale, min) =
                        make_qkx2_quants(&x[block.clone()], &w[block.clone()], nmax, &mut want, &s);
                    let got = (scales[j].to_bits(), mins[j].to_bits(), &l[block]);
                    assert_eq!(
                        got,
                        (scale.to_bits(), min.to_bits(), &want[..]),
                        "n {n}, {j}"
                    );
                }
            }
        }
    }
}
