//! How much a quantizer costs: MSE, SQNR, max abs error, cosine similarity, and the split of the
//! squared error into clipping error (values outside the grid's real range, cut to its ends) and
//! rounding error (values inside, moved to the nearest level). The two parts add up to the total.
//!
//! Sums are accumulated in f64 per fixed-size chunk and the chunk sums added in order, so results
//! are identical for any thread count. Data holding NaN gives NaN metrics.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernel::{fake_quant_value, for_each_run, RunParams};
use crate::params::{QParam, QParams};
use crate::CHUNK;

/// Error of an approximation `y` of a reference `x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorStats {
    pub n: usize,
    /// mean((x - y)^2)
    pub mse: f64,
    /// Signal-to-quantization-noise ratio in dB: 10·log10(Σx² / Σ(x - y)²); +inf when exact.
    pub sqnr_db: f64,
    /// max |x - y|
    pub max_abs: f64,
    /// x·y / (|x| |y|); 1 when both are zero.
    pub cosine: f64,
}

/// The squared error of a quantizer split by cause.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorSplit {
    pub n: usize,
    /// Elements outside [(qmin - z)·s, (qmax - z)·s].
    pub clipped: usize,
    /// Σ(x - x^)² over the clipped elements.
    pub clip_sse: f64,
    /// Σ(x - x^)² over the others.
    pub round_sse: f64,
}

impl ErrorSplit {
    pub fn clip_mse(&self) -> f64 {
        self.clip_sse / self.n.max(1) as f64
    }
    pub fn round_mse(&self) -> f64 {
        self.round_sse / self.n.max(1) as f64
    }
    /// Share of the elements that were clipped.
    pub fn clipped_fraction(&self) -> f64 {
        self.clipped as f64 / self.n.max(1) as f64
    }
}

/// Running sums; merged in a fixed order.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    n: usize,
    sxx: f64,
    syy: f64,
    sxy: f64,
    clip: f64,
    round: f64,
    clipped: usize,
    max_abs: f64,
}

impl Acc {
    #[inline]
    fn add(&mut self, x: f32, y: f32, clipped: bool) {
        let (x, y) = (f64::from(x), f64::from(y));
        let e = x - y;
        self.n += 1;
        self.sxx += x * x;
        self.syy += y * y;
        self.sxy += x * y;
        if clipped {
            self.clip += e * e;
            self.clipped += 1;
        } else {
            self.round += e * e;
        }
        // NaN must not vanish from the maximum.
        self.max_abs = if e.abs() > self.max_abs || e.is_nan() {
            e.abs()
        } else {
            self.max_abs
        };
    }

    fn merge(mut self, o: &Acc) -> Acc {
        self.n += o.n;
        self.sxx += o.sxx;
        self.syy += o.syy;
        self.sxy += o.sxy;
        self.clip += o.clip;
        self.round += o.round;
        self.clipped += o.clipped;
        self.max_abs = if o.max_abs > self.max_abs || o.max_abs.is_nan() {
            o.max_abs
        } else {
            self.max_abs
        };
        self
    }

    fn stats(&self) -> ErrorStats {
        let sse = self.clip + self.round;
        let sqnr_db = if sse == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.sxx / sse).log10()
        };
        let norms = (self.sxx * self.syy).sqrt();
        let cosine = if norms == 0.0 {
            if self.sxx == self.syy {
                1.0
            } else {
                0.0
            }
        } else {
            self.sxy / norms
        };
        ErrorStats {
            n: self.n,
            mse: sse / self.n.max(1) as f64,
            sqnr_db,
            max_abs: self.max_abs,
            cosine,
        }
    }

    fn split(&self) -> ErrorSplit {
        ErrorSplit {
            n: self.n,
            clipped: self.clipped,
            clip_sse: self.clip,
            round_sse: self.round,
        }
    }
}

fn ordered_sum(parts: Vec<Acc>) -> Acc {
    parts.iter().fold(Acc::default(), |a, p| a.merge(p))
}

/// Error statistics accumulated slice by slice (batches streamed through a model), for when the
/// whole reference is never in memory at once. `stats()` gives what [`compare`] would give on
/// the concatenated slices (up to the order of the f64 sums).
#[derive(Debug, Clone, Copy, Default)]
pub struct Running(Acc);

impl Running {
    /// Adds the element pairs of one slice. Lengths must match; extra elements are ignored.
    pub fn add(&mut self, reference: &[f32], approx: &[f32]) {
        let n = reference.len().min(approx.len());
        let (xs, ys) = (&reference[..n], &approx[..n]);
        let Lanes {
            sxx,
            syy,
            sxy,
            see,
            max,
            nan,
        } = crate::kernel::dispatch(
            #[inline(always)]
            || Lanes::sum(xs, ys),
        );
        let acc = &mut self.0;
        acc.n += n - n % L;
        acc.sxx += sxx.iter().sum::<f64>();
        acc.syy += syy.iter().sum::<f64>();
        acc.sxy += sxy.iter().sum::<f64>();
        acc.round += see.iter().sum::<f64>();
        let lane_max = max.iter().copied().fold(0f64, f64::max);
        // NaN must not vanish from the maximum (f64::max drops it).
        acc.max_abs = if nan {
            f64::NAN
        } else if acc.max_abs.is_nan() {
            acc.max_abs
        } else {
            acc.max_abs.max(lane_max)
        };
        for (&x, &y) in xs[n - n % L..].iter().zip(&ys[n - n % L..]) {
            acc.add(x, y, false);
        }
    }

    /// Adds what `other` accumulated (merging in a fixed order gives the same sums whatever
    /// ran in parallel).
    pub fn merge(&mut self, other: &Running) {
        self.0 = self.0.merge(&other.0);
    }

    pub fn stats(&self) -> ErrorStats {
        self.0.stats()
    }
}

const L: usize = 8;

/// Per-lane sums of [`Running::add`]: eight independent lanes, summed at the end, so the loop
/// vectorizes (one running sum per quantity cannot) and the result still depends only on the
/// data.
struct Lanes {
    sxx: [f64; L],
    syy: [f64; L],
    sxy: [f64; L],
    see: [f64; L],
    max: [f64; L],
    nan: bool,
}

impl Lanes {
    /// Over the whole chunks of `L` elements; the caller adds the tail.
    #[inline(always)]
    fn sum(xs: &[f32], ys: &[f32]) -> Lanes {
        let mut l = Lanes {
            sxx: [0.0; L],
            syy: [0.0; L],
            sxy: [0.0; L],
            see: [0.0; L],
            max: [0.0; L],
            nan: false,
        };
        for (x, y) in xs.chunks_exact(L).zip(ys.chunks_exact(L)) {
            for k in 0..L {
                let (a, b) = (f64::from(x[k]), f64::from(y[k]));
                let e = a - b;
                l.sxx[k] += a * a;
                l.syy[k] += b * b;
                l.sxy[k] += a * b;
                l.see[k] += e * e;
                // A compare and select, not f64::max (whose NaN rule kept the loop from
                // running at full width: 1.5-1.9x slower, measured): NaN is never greater,
                // and is found below instead.
                let m = e.abs();
                l.max[k] = if m > l.max[k] { m } else { l.max[k] };
            }
        }
        // A NaN difference makes its lane's squared-error sum NaN for good; nothing else does
        // (the squares are ≥ 0, so the sum never meets ∞ − ∞).
        l.nan = l.see.iter().any(|s| s.is_nan());
        l
    }
}

/// Error of `approx` against `reference`.
pub fn compare(reference: &[f32], approx: &[f32]) -> Result<ErrorStats> {
    if reference.len() != approx.len() {
        return Err(Error::Mismatch {
            a: "the approximation",
            b: "the reference",
            expected: reference.len(),
            got: approx.len(),
        });
    }
    let parts = reference
        .par_chunks(CHUNK)
        .zip(approx.par_chunks(CHUNK))
        .map(|(x, y)| {
            let mut acc = Acc::default();
            for (&x, &y) in x.iter().zip(y) {
                acc.add(x, y, false);
            }
            acc
        })
        .collect();
    Ok(ordered_sum(parts).stats())
}

/// Error of quantizing `x` (shape `shape`) with `params`, with its clipping / rounding split.
/// Computes the fake-quantized values on the fly; nothing of the tensor's size is allocated.
pub fn quantization_error(
    x: &[f32],
    shape: &[usize],
    params: &QParams,
) -> Result<(ErrorStats, ErrorSplit)> {
    let layout = params.layout_for(x.len(), shape)?;
    let grid = params.grid;
    let parts = x
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(k, xc)| {
            let mut acc = Acc::default();
            let start = k * CHUNK;
            for_each_run(&layout, params, start, xc.len(), |r, p| {
                for (k, &v) in xc[r].iter().enumerate() {
                    let q = match p {
                        RunParams::One(q) => q,
                        RunParams::Each(s, z) => QParam {
                            scale: s[k],
                            zero_point: z[k],
                        },
                    };
                    let (lo, hi) = q.real_range(grid);
                    acc.add(v, fake_quant_value(v, q, grid), v < lo || v > hi);
                }
            });
            acc
        })
        .collect();
    let acc = ordered_sum(parts);
    Ok((acc.stats(), acc.split()))
}

#[cfg(test)]
mod tests {

    #[test]
    fn running_statistics_equal_those_of_the_whole() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let y: Vec<f32> = x.iter().map(|v| (v * 16.0).round() / 16.0).collect();
        let mut r = Running::default();
        for (a, b) in x.chunks(97).zip(y.chunks(97)) {
            r.add(a, b);
        }
        let (whole, parts) = (compare(&x, &y).unwrap(), r.stats());
        assert_eq!(whole.n, parts.n);
        assert!((whole.sqnr_db - parts.sqnr_db).abs() < 1e-9);
        assert!((whole.cosine - parts.cosine).abs() < 1e-12);
        assert_eq!(whole.max_abs, parts.max_abs);
        assert_eq!(Running::default().stats().sqnr_db, f64::INFINITY);
        // Merged halves equal the whole too, and a NaN anywhere stays in the maximum.
        let (mut a, mut b) = (Running::default(), Running::default());
        a.add(&x[..500], &y[..500]);
        b.add(&x[500..], &y[500..]);
        a.merge(&b);
        assert!((a.stats().sqnr_db - whole.sqnr_db).abs() < 1e-9);
        let mut nan = y.clone();
        nan[3] = f32::NAN;
        let mut r = Running::default();
        r.add(&x, &nan);
        r.add(&x, &y);
        assert!(r.stats().max_abs.is_nan());
        // Infinity against a finite value is an infinite error; against itself, NaN.
        let mut inf = y.clone();
        inf[9] = f32::INFINITY;
        let mut r = Running::default();
        r.add(&x, &inf);
        assert_eq!(r.stats().max_abs, f64::INFINITY);
        r.add(&inf, &inf);
        assert!(r.stats().max_abs.is_nan());
    }
    use super::*;
    use crate::{Granularity, Grid};

    #[test]
    fn compare_basic_metrics() {
        let s = compare(&[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0]).unwrap();
        assert!((s.mse - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.sqnr_db - 10.0 * 14f64.log10()).abs() < 1e-9);
        assert_eq!(s.max_abs, 1.0);
        assert!((s.cosine - 17.0 / (14f64.sqrt() * 21f64.sqrt())).abs() < 1e-12);
        assert_eq!(compare(&[1.0], &[1.0]).unwrap().sqnr_db, f64::INFINITY);
        assert_eq!(compare(&[0.0], &[0.0]).unwrap().cosine, 1.0);
        assert!(compare(&[1.0], &[]).is_err());
    }

    #[test]
    fn clipping_and_rounding_add_up() {
        // Grid [-2, 1] with s = 1: real range [-2, 1].
        let grid = Grid { qmin: -2, qmax: 1 };
        let p = QParams::new(Granularity::PerTensor, grid, vec![1.0], vec![0]).unwrap();
        let x = [0.25, -0.6, 3.0, -5.0, 1.0];
        let (stats, split) = quantization_error(&x, &[5], &p).unwrap();
        assert_eq!(split.clipped, 2);
        assert_eq!(split.clip_sse, 4.0 + 9.0);
        assert!((split.round_sse - (0.0625 + 0.16)).abs() < 1e-7);
        assert!((stats.mse * 5.0 - split.clip_sse - split.round_sse).abs() < 1e-12);
    }
}
