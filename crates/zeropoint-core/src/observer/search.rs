//! Choosing a clipping range by minimizing an error criterion over candidate ranges.
//!
//! Candidates shrink the observed range [lo, hi] by a factor α ∈ (0, 1]: a grid of 100 factors,
//! then golden-section search around the best one. For asymmetric schemes each end is then refined
//! on its own the same way, since outliers are rarely symmetric. α = 1 (min-max) is always a
//! candidate, so the result is never worse than min-max on the criterion. Everything is a pure
//! function of its inputs: the same observations give the same range.

use crate::kernel::fake_quant_value;
use crate::observer::histogram::Histogram;
use crate::{QParam, Scheme};

const GRID: usize = 100;
const GOLDEN_STEPS: usize = 24;

/// Minimizes `cost(lo, hi)` over shrunk versions of [lo, hi].
pub fn minimize(scheme: &Scheme, lo: f32, hi: f32, cost: impl Fn(f32, f32) -> f64) -> (f32, f32) {
    if lo == hi {
        return (lo, hi);
    }
    let scaled = |a: f64| cost((a * f64::from(lo)) as f32, (a * f64::from(hi)) as f32);
    let a = search_factor(&scaled);
    let (mut lo_best, mut hi_best) = ((a * f64::from(lo)) as f32, (a * f64::from(hi)) as f32);
    if !scheme.symmetric && lo < 0.0 && hi > 0.0 {
        // Ends one at a time: first the lower end with the upper fixed, then the reverse.
        let b = search_factor(&|b: f64| cost((b * f64::from(lo)) as f32, hi_best));
        let b_lo = (b * f64::from(lo)) as f32;
        if cost(b_lo, hi_best) < cost(lo_best, hi_best) {
            lo_best = b_lo;
        }
        let c = search_factor(&|c: f64| cost(lo_best, (c * f64::from(hi)) as f32));
        let c_hi = (c * f64::from(hi)) as f32;
        if cost(lo_best, c_hi) < cost(lo_best, hi_best) {
            hi_best = c_hi;
        }
    }
    (lo_best, hi_best)
}

/// The factor α ∈ (0, 1] minimizing `f`: a grid, then golden-section search in the best cell.
fn search_factor(f: &dyn Fn(f64) -> f64) -> f64 {
    let mut best = (1.0, f(1.0));
    for k in 1..GRID {
        let a = k as f64 / GRID as f64;
        let c = f(a);
        if c < best.1 {
            best = (a, c);
        }
    }
    let step = 1.0 / GRID as f64;
    let (mut a, mut b) = ((best.0 - step).max(step / 4.0), (best.0 + step).min(1.0));
    let r = (5f64.sqrt() - 1.0) / 2.0;
    let (mut x1, mut x2) = (b - r * (b - a), a + r * (b - a));
    let (mut f1, mut f2) = (f(x1), f(x2));
    for _ in 0..GOLDEN_STEPS {
        if f1 < f2 {
            b = x2;
            x2 = x1;
            f2 = f1;
            x1 = b - r * (b - a);
            f1 = f(x1);
        } else {
            a = x1;
            x1 = x2;
            f1 = f2;
            x2 = a + r * (b - a);
            f2 = f(x2);
        }
    }
    for (x, fx) in [(x1, f1), (x2, f2)] {
        if fx < best.1 {
            best = (x, fx);
        }
    }
    best.0
}

/// Σ |x - fake_quant(x)|^norm over values, for a candidate range.
pub fn values_cost<'a>(scheme: &Scheme, x: &'a [f32], norm: f64) -> impl Fn(f32, f32) -> f64 + 'a {
    let grid = scheme.grid();
    let scheme = *scheme;
    move |lo, hi| {
        let Ok(p) = QParam::from_range(&scheme, lo, hi) else {
            return f64::INFINITY;
        };
        x.iter()
            .map(|&v| lp(v, fake_quant_value(v, p, grid), norm))
            .sum()
    }
}

/// Expected Σ |x - fake_quant(x)|^norm of the histogram's data for a candidate range, taking
/// the values of each bin as spread over it (four points per bin, each a quarter of its count).
pub fn histogram_cost(scheme: &Scheme, h: &Histogram, norm: f64) -> impl Fn(f32, f32) -> f64 {
    let grid = scheme.grid();
    let scheme = *scheme;
    let w = h.width() as f32;
    let centers = h.centers();
    let points: Vec<f32> = centers
        .iter()
        .flat_map(|&(c, _)| [-0.375f32, -0.125, 0.125, 0.375].map(|d| c + d * w))
        .collect();
    let weights: Vec<f64> = centers.iter().flat_map(|&(_, n)| [n / 4.0; 4]).collect();
    move |lo, hi| {
        let Ok(p) = QParam::from_range(&scheme, lo, hi) else {
            return f64::INFINITY;
        };
        weighted_sum(
            &points,
            &weights,
            #[inline(always)]
            |v| lp(v, fake_quant_value(v, p, grid), norm),
        )
    }
}

/// Σ w·f(v) over the two slices, vectorized, in eight interleaved sums: one running sum waits
/// on each addition, and the ~380 candidate ranges of an MSE search of every activation of a
/// detector took a tenth of its quantization time that way.
fn weighted_sum(v: &[f32], w: &[f64], f: impl Fn(f32) -> f64) -> f64 {
    crate::kernel::dispatch(
        #[inline(always)]
        || {
            let mut acc = [0f64; 8];
            for (v, w) in v.chunks_exact(8).zip(w.chunks_exact(8)) {
                for l in 0..8 {
                    acc[l] += w[l] * f(v[l]);
                }
            }
            let done = v.len() / 8 * 8;
            let tail: f64 = (done..v.len()).map(|i| w[i] * f(v[i])).sum();
            acc.iter().sum::<f64>() + tail
        },
    )
}

#[inline(always)]
fn lp(a: f32, b: f32, norm: f64) -> f64 {
    let d = (f64::from(a) - f64::from(b)).abs();
    if norm == 2.0 {
        d * d
    } else {
        d.powf(norm)
    }
}

/// The TensorRT entropy calibration: the symmetric threshold whose clipped histogram of about
/// `bins` bins over ±max|x|, quantized to `quantized_bins` levels, is closest in KL divergence to the clipped histogram with the
/// clipped mass folded into its edge bins. Returns the range clamped to the data's [min, max].
///
/// The criterion depends on the histogram grid, so it is evaluated on a grid fixed by the data
/// alone: bins of width w' = 2^ceil(log2(max|x| / (bins / 2))) anchored at zero, and
/// K = floor(max|x| / w') + 1 of them on each side (between bins / 2 and bins in all; TensorRT
/// uses 2048 bins over ±max|x|). The
/// streaming histogram's power-of-two bins merge into it exactly. Thresholds run over its edges
/// from `quantized_bins / 2` bins around zero to all of it. Unlike ONNX Runtime, the expanded quantized histogram is not
/// truncated to integers.
pub fn entropy_range(h: &Histogram, bins: usize, quantized_bins: usize) -> Option<(f32, f32)> {
    let (min, max) = h.min_max()?;
    let absmax = f64::from(min.abs().max(max.abs()));
    if absmax == 0.0 {
        return Some((min, max));
    }
    let (width, counts) = entropy_grid(h, absmax, bins / 2);
    let n = counts.len();
    let half = n / 2;
    let q_half = (quantized_bins / 2).clamp(1, half);
    let mut prefix = vec![0.0; n + 1];
    for (i, &c) in counts.iter().enumerate() {
        prefix[i + 1] = prefix[i] + c;
    }
    // Slice [half - i, half + i + 1): i bins below zero, i + 1 from zero up, as TensorRT and
    // ONNX Runtime slice their histograms.
    let slice = |i: usize| (half - i, (half + i + 1).min(n));
    let mut best: Option<(f64, usize)> = None;
    for i in q_half..=half {
        let (start, end) = slice(i);
        let kl = clipped_kl(
            &counts[start..end],
            prefix[start],
            prefix[n] - prefix[end],
            quantized_bins,
        );
        let kl = if kl.is_nan() { f64::INFINITY } else { kl };
        if best.is_none_or(|(b, _)| kl < b) {
            best = Some((kl, i));
        }
    }
    let (start, end) = slice(best?.1);
    let edge = |i: usize| ((i as f64 - half as f64) * width) as f32;
    let lo = edge(start).max(min).min(max);
    let hi = edge(end).min(max).max(lo);
    Some((lo, hi))
}

/// The entropy grid's bin width and counts: the streaming histogram's bins merged exactly into
/// bins of width 2^ceil(log2(absmax / half_bins)) (or its own width, if coarser).
fn entropy_grid(h: &Histogram, absmax: f64, half_bins: usize) -> (f64, Vec<f64>) {
    let target = 2f64.powi((absmax / half_bins.max(1) as f64).log2().ceil() as i32);
    let width = target.max(h.width());
    let factor = (width / h.width()).round() as i64;
    let k = (absmax / width).floor() as i64 + 1;
    let mut counts = vec![0.0; 2 * k as usize];
    let half = (h.bins() / 2) as i64;
    for (i, &c) in h.counts().iter().enumerate().filter(|(_, &c)| c > 0) {
        let j = (i as i64 - half).div_euclid(factor) + k;
        counts[j.clamp(0, 2 * k - 1) as usize] += c as f64;
    }
    (width, counts)
}

/// KL(p || q) for one candidate slice: p is the slice with the outliers folded into its ends, q
/// the slice merged into `quantized_bins` groups and spread back over p's non-empty bins.
pub fn clipped_kl(slice: &[f64], left_out: f64, right_out: f64, quantized_bins: usize) -> f64 {
    let len = slice.len();
    let mut p = slice.to_vec();
    p[0] += left_out;
    p[len - 1] += right_out;
    let merged = (len / quantized_bins).max(1);
    let mut q = vec![0.0; len];
    let groups = len.div_ceil(merged).min(quantized_bins);
    for g in 0..groups {
        let start = g * merged;
        let end = if g + 1 == groups { len } else { start + merged };
        let mass: f64 = slice[start..end].iter().sum();
        let nonzero = p[start..end].iter().filter(|&&v| v != 0.0).count();
        if nonzero > 0 {
            for j in start..end {
                if p[j] != 0.0 {
                    q[j] = mass / nonzero as f64;
                }
            }
        }
    }
    match (smooth(&p), smooth(&q)) {
        (Some(p), Some(q)) => p
            .iter()
            .zip(&q)
            .filter(|(&a, _)| a > 0.0)
            .map(|(&a, &b)| a * (a / b).ln())
            .sum(),
        _ => f64::INFINITY,
    }
}

/// Gives the empty bins of a histogram (in counts) a mass of 1e-4, taken evenly from the others,
/// then normalizes it: the smoothing of TensorRT and ONNX Runtime, so that KL stays finite.
fn smooth(d: &[f64]) -> Option<Vec<f64>> {
    let zeros = d.iter().filter(|&&v| v == 0.0).count();
    let nonzeros = d.len() - zeros;
    if nonzeros == 0 {
        return None;
    }
    let eps = 1e-4;
    let eps1 = eps * zeros as f64 / nonzeros as f64;
    let s: Vec<f64> = d
        .iter()
        .map(|&v| if v == 0.0 { eps } else { (v - eps1).max(eps) })
        .collect();
    let total: f64 = s.iter().sum();
    Some(s.into_iter().map(|v| v / total).collect())
}

/// Mean cross-entropy between softmax(row) and softmax(fake_quant(row)) over rows of logits.
pub fn cross_entropy_cost<'a>(
    scheme: &Scheme,
    rows: &'a [Vec<f32>],
) -> impl Fn(f32, f32) -> f64 + 'a {
    let grid = scheme.grid();
    let scheme = *scheme;
    move |lo, hi| {
        let Ok(p) = QParam::from_range(&scheme, lo, hi) else {
            return f64::INFINITY;
        };
        let mut total = 0.0;
        for row in rows {
            let target = log_softmax(row.iter().map(|&v| f64::from(v)));
            let quant = log_softmax(row.iter().map(|&v| f64::from(fake_quant_value(v, p, grid))));
            total -= target
                .iter()
                .zip(&quant)
                .map(|(&lt, &lq)| lt.exp() * lq)
                .sum::<f64>();
        }
        total / rows.len().max(1) as f64
    }
}

fn log_softmax(v: impl Iterator<Item = f64> + Clone) -> Vec<f64> {
    let m = v.clone().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + v.clone().map(|x| (x - m).exp()).sum::<f64>().ln();
    v.map(|x| x - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_clips_outliers_at_low_bit_widths() {
        // A Gaussian-like bulk and one far outlier: at 4 bits the best range ignores the outlier.
        let mut x: Vec<f32> = (0..20000)
            .map(|i| (i * 37 % 20000) as f32 / 10000.0 - 1.0)
            .collect();
        x.push(20.0);
        let scheme = Scheme::new(4);
        let cost = values_cost(&scheme, &x, 2.0);
        let (lo, hi) = minimize(&scheme, -1.0, 20.0, &cost);
        assert!(hi < 5.0, "{lo} {hi}");
        assert!(cost(lo, hi) < cost(-1.0, 20.0) / 5.0);
    }

    #[test]
    fn the_search_never_loses_to_min_max() {
        let x: Vec<f32> = (0..500)
            .map(|i| (i as f32 * 0.37).sin() * (1.0 + i as f32 / 100.0))
            .collect();
        for scheme in [
            Scheme::new(8),
            Scheme::new(3).symmetric(false),
            Scheme::asymmetric_unsigned(2),
        ] {
            let (lo, hi) = x
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let cost = values_cost(&scheme, &x, 2.0);
            let r = minimize(&scheme, lo, hi, &cost);
            assert!(cost(r.0, r.1) <= cost(lo, hi), "{scheme}");
        }
    }

    #[test]
    fn kl_of_an_unclipped_uniform_histogram_is_small() {
        let slice = vec![10.0; 256];
        assert!(clipped_kl(&slice, 0.0, 0.0, 128) < 1e-9);
        // Clipping most of the mass away costs a lot.
        assert!(clipped_kl(&slice[..128], 0.0, 1280.0, 128) > 0.1);
    }
}
