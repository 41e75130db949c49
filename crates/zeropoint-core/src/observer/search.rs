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
    minimize_bounded(scheme, lo, hi, |a, b, _| cost(a, b))
}

/// [`minimize`] for a cost that may give up: `cost(lo, hi, limit)` is the cost, or any value
/// above `limit` once the cost is sure to be above it. The grid's candidates only have to beat
/// the best so far, and most of them lose by their clipping error alone; the golden-section
/// steps compare two candidates and get every cost in full. The result is [`minimize`]'s.
pub fn minimize_bounded(
    scheme: &Scheme,
    lo: f32,
    hi: f32,
    cost: impl Fn(f32, f32, f64) -> f64,
) -> (f32, f32) {
    if lo == hi {
        return (lo, hi);
    }
    let full = |a: f32, b: f32| cost(a, b, f64::INFINITY);
    let scaled = |a: f64, limit: f64| {
        cost(
            (a * f64::from(lo)) as f32,
            (a * f64::from(hi)) as f32,
            limit,
        )
    };
    let a = search_factor(&scaled);
    let (mut lo_best, mut hi_best) = ((a * f64::from(lo)) as f32, (a * f64::from(hi)) as f32);
    if !scheme.symmetric && lo < 0.0 && hi > 0.0 {
        // Ends one at a time: first the lower end with the upper fixed, then the reverse.
        let b = search_factor(&|b: f64, limit| cost((b * f64::from(lo)) as f32, hi_best, limit));
        let b_lo = (b * f64::from(lo)) as f32;
        if full(b_lo, hi_best) < full(lo_best, hi_best) {
            lo_best = b_lo;
        }
        let c = search_factor(&|c: f64, limit| cost(lo_best, (c * f64::from(hi)) as f32, limit));
        let c_hi = (c * f64::from(hi)) as f32;
        if full(lo_best, c_hi) < full(lo_best, hi_best) {
            hi_best = c_hi;
        }
    }
    (lo_best, hi_best)
}

/// The factor α ∈ (0, 1] minimizing `f(α, limit)`: a grid, then golden-section search in the
/// best cell.
fn search_factor(f: &dyn Fn(f64, f64) -> f64) -> f64 {
    let mut best = (1.0, f(1.0, f64::INFINITY));
    for k in 1..GRID {
        let a = k as f64 / GRID as f64;
        let c = f(a, best.1);
        if c < best.1 {
            best = (a, c);
        }
    }
    let f = |x: f64| f(x, f64::INFINITY);
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
/// the values of each bin as spread over it (four points per bin, each a quarter of its count),
/// as a cost for [`minimize_bounded`].
pub fn histogram_cost(scheme: &Scheme, h: &Histogram, norm: f64) -> impl Fn(f32, f32, f64) -> f64 {
    let grid = scheme.grid();
    let scheme = *scheme;
    let w = h.width() as f32;
    let centers = h.centers();
    let points: Vec<f32> = centers
        .iter()
        .flat_map(|&(c, _)| [-0.375f32, -0.125, 0.125, 0.375].map(|d| c + d * w))
        .collect();
    let weights: Vec<f64> = centers.iter().flat_map(|&(_, n)| [n / 4.0; 4]).collect();
    move |lo, hi, limit| {
        let Ok(p) = QParam::from_range(&scheme, lo, hi) else {
            return f64::INFINITY;
        };
        let err = |v| lp(v, fake_quant_value(v, p, grid), norm);
        // The grid's ends, where the clipped points land.
        let (bottom, top) = (
            fake_quant_value(f32::MIN, p, grid),
            fake_quant_value(f32::MAX, p, grid),
        );
        if clipped_error_exceeds(&points, &weights, (bottom, top), limit, err) {
            return f64::INFINITY;
        }
        weighted_sum(&points, &weights, err)
    }
}

/// Whether the error of the points clipped to the grid's ends (`points` ascending) alone is
/// surely above `limit`: their sum, in another order than [`weighted_sum`]'s, is a lower bound
/// of the cost up to rounding (below 1e-11 relative for 2^20 points), hence the margin. Walks in
/// from both ends in blocks and stops as soon as it knows.
fn clipped_error_exceeds(
    points: &[f32],
    weights: &[f64],
    (bottom, top): (f32, f32),
    limit: f64,
    err: impl Fn(f32) -> f64,
) -> bool {
    const BLOCK: usize = 16;
    if !limit.is_finite() {
        return false;
    }
    let limit = limit * (1.0 + 1e-9);
    let n = points.len();
    let block_sum =
        |range: std::ops::Range<usize>| -> f64 { range.map(|i| weights[i] * err(points[i])).sum() };
    let mut sum = 0.0;
    // Below the grid: blocks from the start while their last point is clipped.
    let mut i = 0;
    while i < n && points[i] < bottom {
        let end = (i + BLOCK).min(n);
        sum += block_sum(i..end);
        if sum > limit {
            return true;
        }
        i = end;
    }
    // Above it: blocks from the end, down to what the lower walk took.
    let mut j = n;
    while j > i && points[j - 1] > top {
        let start = j.saturating_sub(BLOCK).max(i);
        sum += block_sum(start..j);
        if sum > limit {
            return true;
        }
        j = start;
    }
    false
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

    /// Giving up on grid candidates that cannot win changes nothing: the bounded search picks
    /// the range the full one picks, each candidate it gives up on costs at least the best so
    /// far, and it does give up on some.
    #[test]
    fn the_bounded_search_is_the_full_search() {
        let mut s = 7u32;
        let mut uniform = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1 << 24) as f32
        };
        let relu: Vec<f32> = (0..40_000)
            .map(|_| (uniform() - 0.4).max(0.0).powi(3) * 9.0)
            .collect();
        let spread: Vec<f32> = (0..40_000)
            .map(|i| (uniform() - 0.5) * if i % 997 == 0 { 40.0 } else { 2.0 })
            .collect();
        for x in [&relu, &spread] {
            let mut h = Histogram::new(crate::observer::histogram::DEFAULT_BINS).unwrap();
            h.update(x).unwrap();
            let (lo, hi) = h.min_max().unwrap();
            for scheme in [
                Scheme::asymmetric_unsigned(8),
                Scheme::new(8),
                Scheme::new(4).symmetric(false),
            ] {
                let cost = histogram_cost(&scheme, &h, 2.0);
                let given_up = std::cell::Cell::new(0);
                let bounded = minimize_bounded(&scheme, lo, hi, |a, b, limit| {
                    let c = cost(a, b, limit);
                    let full = cost(a, b, f64::INFINITY);
                    if c != full {
                        assert!(full >= limit, "{scheme}: gave up on {full} below {limit}");
                        given_up.set(given_up.get() + 1);
                    }
                    c
                });
                let full = minimize(&scheme, lo, hi, |a, b| cost(a, b, f64::INFINITY));
                assert_eq!(bounded, full, "{scheme}");
                // At 4 bits min-max's rounding error is large enough that few candidates lose
                // by clipping alone: 8 bits here.
                if scheme.bits == 8 {
                    assert!(given_up.get() > 50, "{scheme}: {}", given_up.get());
                }
            }
        }
    }
}
