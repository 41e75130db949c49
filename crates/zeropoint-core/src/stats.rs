//! Descriptive statistics of a tensor, the numbers a person needs to choose a quantizer: range,
//! moments, share of zeros, how heavy the tails are, percentiles and histograms.
//!
//! Moments are computed in two passes in f64 over the finite values; NaN and ±Inf are counted
//! and left out.

use rayon::prelude::*;

use crate::CHUNK;

/// Summary statistics of the finite values of a tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// All elements, finite or not.
    pub len: usize,
    pub nan: usize,
    pub inf: usize,
    pub min: f32,
    pub max: f32,
    pub mean: f64,
    pub std: f64,
    pub zeros: usize,
    /// Pearson kurtosis E[(x-μ)^4] / σ^4: 3 for a Gaussian, 1.8 for a uniform, large when a few
    /// outliers dominate the range.
    pub kurtosis: f64,
}

impl Summary {
    /// Finite elements.
    pub fn finite(&self) -> usize {
        self.len - self.nan - self.inf
    }

    pub fn max_abs(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    /// max|x| / σ: how many standard deviations the range reaches (about 4-5 for Gaussian
    /// data of a few thousand samples, far more when outliers set it).
    pub fn max_abs_over_std(&self) -> f64 {
        if self.std > 0.0 {
            f64::from(self.max_abs()) / self.std
        } else {
            0.0
        }
    }

    pub fn zero_fraction(&self) -> f64 {
        self.zeros as f64 / self.len.max(1) as f64
    }
}

#[derive(Clone, Copy)]
struct First {
    n: usize,
    nan: usize,
    inf: usize,
    zeros: usize,
    min: f32,
    max: f32,
    sum: f64,
}

/// Summary of `x`. An empty or all-NaN tensor gives min = max = 0 and zero moments.
pub fn summarize(x: &[f32]) -> Summary {
    let first = x
        .par_chunks(CHUNK)
        .map(|c| {
            let mut f = First {
                n: 0,
                nan: 0,
                inf: 0,
                zeros: 0,
                min: f32::INFINITY,
                max: f32::NEG_INFINITY,
                sum: 0.0,
            };
            for &v in c {
                if v.is_nan() {
                    f.nan += 1;
                } else if v.is_infinite() {
                    f.inf += 1;
                } else {
                    f.n += 1;
                    f.zeros += usize::from(v == 0.0);
                    f.min = f.min.min(v);
                    f.max = f.max.max(v);
                    f.sum += f64::from(v);
                }
            }
            f
        })
        .collect::<Vec<_>>()
        .into_iter()
        .reduce(|a, b| First {
            n: a.n + b.n,
            nan: a.nan + b.nan,
            inf: a.inf + b.inf,
            zeros: a.zeros + b.zeros,
            min: a.min.min(b.min),
            max: a.max.max(b.max),
            sum: a.sum + b.sum,
        });
    let Some(f) = first.filter(|f| f.n > 0) else {
        let nan = x.iter().filter(|v| v.is_nan()).count();
        return Summary {
            len: x.len(),
            nan,
            inf: x.len() - nan,
            min: 0.0,
            max: 0.0,
            mean: 0.0,
            std: 0.0,
            zeros: 0,
            kurtosis: 0.0,
        };
    };
    let mean = f.sum / f.n as f64;
    let (m2, m4) = x
        .par_chunks(CHUNK)
        .map(|c| {
            c.iter()
                .filter(|v| v.is_finite())
                .fold((0.0, 0.0), |(m2, m4), &v| {
                    let d = f64::from(v) - mean;
                    (m2 + d * d, m4 + d * d * d * d)
                })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let var = m2 / f.n as f64;
    Summary {
        len: x.len(),
        nan: f.nan,
        inf: f.inf,
        min: f.min,
        max: f.max,
        mean,
        std: var.sqrt(),
        zeros: f.zeros,
        kurtosis: if var > 0.0 {
            m4 / f.n as f64 / (var * var)
        } else {
            0.0
        },
    }
}

/// The `p`-th percentiles (0..=100) of the finite values, with linear interpolation between the
/// two nearest ranks (numpy's default). None when there is no finite value.
pub fn percentiles(x: &[f32], ps: &[f64]) -> Option<Vec<f32>> {
    let mut v: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len();
    let mut rank = |k: usize| -> f32 { *v.select_nth_unstable_by(k, f32::total_cmp).1 };
    let out = ps
        .iter()
        .map(|&p| {
            let pos = p.clamp(0.0, 100.0) / 100.0 * (n - 1) as f64;
            let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
            let a = rank(lo);
            if frac == 0.0 {
                return a;
            }
            let b = rank(lo + 1);
            (f64::from(a) + frac * (f64::from(b) - f64::from(a))) as f32
        })
        .collect();
    Some(out)
}

/// Counts of the finite values of `x` in `bins` equal bins over [lo, hi]; values outside go to
/// the end bins.
pub fn histogram(x: &[f32], bins: usize, lo: f32, hi: f32) -> Vec<u64> {
    let mut h = vec![0u64; bins.max(1)];
    let width = f64::from(hi) - f64::from(lo);
    let last = h.len() - 1;
    for &v in x.iter().filter(|v| v.is_finite()) {
        let t = if width > 0.0 {
            (f64::from(v) - f64::from(lo)) / width
        } else {
            0.5
        };
        let b = ((t * h.len() as f64).floor().max(0.0) as usize).min(last);
        h[b] += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_small_tensor() {
        let s = summarize(&[0.0, 1.0, 2.0, 3.0, f32::NAN, f32::INFINITY]);
        assert_eq!((s.len, s.nan, s.inf, s.zeros), (6, 1, 1, 1));
        assert_eq!((s.min, s.max), (0.0, 3.0));
        assert!((s.mean - 1.5).abs() < 1e-12);
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-12);
        // Uniform on 4 points: E[d^4] = (2*1.5^4 + 2*0.5^4)/4 = 2.5625, σ^4 = 1.5625.
        assert!((s.kurtosis - 2.5625 / 1.5625).abs() < 1e-12);
    }

    #[test]
    fn empty_and_all_nan() {
        let s = summarize(&[]);
        assert_eq!((s.len, s.min, s.max), (0, 0.0, 0.0));
        let s = summarize(&[f32::NAN, f32::NAN]);
        assert_eq!((s.len, s.nan, s.finite()), (2, 2, 0));
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let x: Vec<f32> = (0..=10).map(|v| v as f32).collect();
        assert_eq!(
            percentiles(&x, &[0.0, 50.0, 100.0, 25.0]).unwrap(),
            vec![0.0, 5.0, 10.0, 2.5]
        );
        assert_eq!(percentiles(&[1.0, 2.0], &[50.0]).unwrap(), vec![1.5]);
        assert!(percentiles(&[f32::NAN], &[50.0]).is_none());
    }

    #[test]
    fn histogram_counts_everything() {
        let h = histogram(&[0.0, 0.1, 0.5, 0.99, 1.0, 7.0, -3.0], 4, 0.0, 1.0);
        assert_eq!(h, vec![3, 0, 1, 3]);
    }
}
