//! Scale and zero-point: computed from a range [min, max] exactly as ../DESIGN.md defines them.
//!
//! asymmetric: the range is widened to contain 0, then s = (max - min) / (qmax - qmin) and
//!             z = clamp(round(qmin - min / s), qmin, qmax).
//! symmetric:  z = 0; signed s = max(|min|, |max|) / qmax, unsigned s = max / qmax.
//!
//! The arithmetic is done in f64 and the scale rounded to f32 once, so that it is the correctly
//! rounded value of the formula and `max - min` cannot overflow. A zero-width range (all zeros)
//! gives s = 1; otherwise s is at least `f32::MIN_POSITIVE`, so x / s is never a division by zero
//! or by a subnormal. Either way real 0 is exactly representable: it is the code z.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::layout::{Layout, Segment};
use crate::scheme::{Granularity, Grid, Scheme};
use crate::CHUNK;

/// One scale / zero-point pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParam {
    pub scale: f32,
    pub zero_point: i32,
}

impl QParam {
    /// The offset, as AIMET and TFLite tooling speak of it: -zero_point.
    pub fn offset(&self) -> i32 {
        -self.zero_point
    }

    /// The real values of the grid's two ends: [(qmin - z)·s, (qmax - z)·s].
    pub fn real_range(&self, grid: Grid) -> (f32, f32) {
        (
            (grid.qmin - self.zero_point) as f32 * self.scale,
            (grid.qmax - self.zero_point) as f32 * self.scale,
        )
    }

    /// Parameters covering [min, max] under `scheme` (its granularity is ignored).
    pub fn from_range(scheme: &Scheme, min: f32, max: f32) -> Result<QParam> {
        scheme.validate()?;
        if !min.is_finite() || !max.is_finite() {
            return Err(Error::NonFiniteRange { min, max });
        }
        if min > max {
            return Err(Error::InvertedRange { min, max });
        }
        let Grid { qmin, qmax } = scheme.grid();
        let (min, max) = (f64::from(min.min(0.0)), f64::from(max.max(0.0)));
        if scheme.symmetric {
            let absmax = if scheme.signed { max.max(-min) } else { max };
            let scale = finish_scale(absmax / f64::from(qmax), scheme.pow2_scale);
            return Ok(QParam {
                scale,
                zero_point: 0,
            });
        }
        let scale = finish_scale((max - min) / f64::from(qmax - qmin), scheme.pow2_scale);
        let z = (f64::from(qmin) - min / f64::from(scale)).round_ties_even();
        Ok(QParam {
            scale,
            zero_point: (z as i32).clamp(qmin, qmax),
        })
    }
}

/// Rounds the exact scale to a usable f32: degenerate ranges give 1, tiny ones the smallest normal.
fn finish_scale(s: f64, pow2: bool) -> f32 {
    if s == 0.0 {
        return 1.0;
    }
    let s = if pow2 {
        // Round up, so the power-of-two grid still covers the range.
        let mut e = s.log2().ceil().clamp(-126.0, 127.0) as i32;
        while e < 127 && 2f64.powi(e) < s {
            e += 1;
        }
        2f64.powi(e)
    } else {
        s
    };
    (s as f32).max(f32::MIN_POSITIVE)
}

/// The parameters of one quantizer over one tensor shape: a scale and zero-point per group, laid
/// out as ONNX lays out `y_scale` / `y_zero_point` for the granularity.
#[derive(Debug, Clone, PartialEq)]
pub struct QParams {
    pub granularity: Granularity,
    pub grid: Grid,
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
}

impl QParams {
    /// Parameters given directly (for example read from a model), checked for sanity.
    pub fn new(
        granularity: Granularity,
        grid: Grid,
        scale: Vec<f32>,
        zero_point: Vec<i32>,
    ) -> Result<QParams> {
        if scale.len() != zero_point.len() {
            return Err(Error::Mismatch {
                a: "zero_point",
                b: "scale",
                expected: scale.len(),
                got: zero_point.len(),
            });
        }
        if let Some(i) = scale.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::BadScale(scale[i], i));
        }
        if let Some(i) = zero_point
            .iter()
            .position(|z| !(grid.qmin..=grid.qmax).contains(z))
        {
            return Err(Error::BadZeroPoint {
                zero_point: zero_point[i],
                index: i,
                qmin: grid.qmin,
                qmax: grid.qmax,
            });
        }
        Ok(QParams {
            granularity,
            grid,
            scale,
            zero_point,
        })
    }

    /// One parameter pair per group, each from its group's [min, max].
    pub fn from_ranges(scheme: &Scheme, ranges: &[(f32, f32)]) -> Result<QParams> {
        let params = ranges
            .iter()
            .map(|&(lo, hi)| QParam::from_range(scheme, lo, hi))
            .collect::<Result<Vec<_>>>()?;
        Ok(QParams {
            granularity: scheme.granularity,
            grid: scheme.grid(),
            scale: params.iter().map(|p| p.scale).collect(),
            zero_point: params.iter().map(|p| p.zero_point).collect(),
        })
    }

    /// Min-max parameters for the tensor `x` of shape `shape`, at the scheme's granularity.
    pub fn from_data(scheme: &Scheme, x: &[f32], shape: &[usize]) -> Result<QParams> {
        scheme.validate()?;
        let layout = checked_layout(x.len(), shape, scheme.granularity)?;
        QParams::from_ranges(scheme, &ranges(x, &layout)?)
    }

    /// The pair of group `i`.
    pub fn get(&self, i: usize) -> QParam {
        QParam {
            scale: self.scale[i],
            zero_point: self.zero_point[i],
        }
    }

    pub fn len(&self) -> usize {
        self.scale.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scale.is_empty()
    }

    /// The layout of these parameters over a tensor of `shape` holding `len` values, checked.
    pub fn layout_for(&self, len: usize, shape: &[usize]) -> Result<Layout> {
        let layout = checked_layout(len, shape, self.granularity)?;
        if layout.num_params() != self.len() {
            return Err(Error::ParamCount {
                what: "scale",
                granularity: self.granularity.to_string(),
                expected: layout.num_params(),
                got: self.len(),
            });
        }
        Ok(layout)
    }
}

/// The layout of `granularity` over `shape`, checked against the data length.
pub(crate) fn checked_layout(len: usize, shape: &[usize], g: Granularity) -> Result<Layout> {
    let layout = Layout::new(shape, g)?;
    if layout.len() != len {
        return Err(Error::Length {
            what: "the data",
            shape: shape.to_vec(),
            expected: layout.len(),
            got: len,
        });
    }
    Ok(layout)
}

/// [min, max] of each parameter group. NaN is an error (it has no place on a range); ±Inf is
/// kept, and [`QParam::from_range`] then refuses the infinite range.
pub fn ranges(x: &[f32], layout: &Layout) -> Result<Vec<(f32, f32)>> {
    if x.is_empty() {
        return Err(Error::Empty);
    }
    let n = layout.num_params();
    // Each chunk reduces into its own table; tables merge in chunk order. min/max are exact, so
    // the result does not depend on the number of threads.
    let partial: Vec<(Vec<(f32, f32)>, usize)> = x
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(k, xc)| {
            let mut table = vec![(f32::INFINITY, f32::NEG_INFINITY); n];
            let mut nan = 0;
            let start = k * CHUNK;
            layout.for_each_segment(start..start + xc.len(), |r, seg| {
                let xs = &xc[r.start - start..r.end - start];
                match seg {
                    Segment::Uniform(p) => {
                        let (lo, hi, bad) = min_max(xs);
                        nan += bad;
                        let t = &mut table[p];
                        *t = (t.0.min(lo), t.1.max(hi));
                    }
                    Segment::PerElement(p) => {
                        for (t, &v) in table[p..p + xs.len()].iter_mut().zip(xs) {
                            nan += usize::from(v.is_nan());
                            *t = (t.0.min(v), t.1.max(v));
                        }
                    }
                }
            });
            (table, nan)
        })
        .collect();
    let nan: usize = partial.iter().map(|(_, c)| c).sum();
    if nan > 0 {
        return Err(Error::NaN { count: nan });
    }
    let mut table = vec![(f32::INFINITY, f32::NEG_INFINITY); n];
    for (part, _) in &partial {
        for (t, p) in table.iter_mut().zip(part) {
            *t = (t.0.min(p.0), t.1.max(p.1));
        }
    }
    Ok(table)
}

/// [min, max] of non-empty data that must be finite: NaN or ±Inf is an error.
pub(crate) fn finite_min_max(x: &[f32]) -> Result<(f32, f32)> {
    let (lo, hi, nan) = min_max(x);
    if nan > 0 {
        return Err(Error::NaN { count: nan });
    }
    if !lo.is_finite() || !hi.is_finite() {
        return Err(Error::NonFiniteRange { min: lo, max: hi });
    }
    Ok((lo, hi))
}

/// Min, max and NaN count of a slice (NaN is left out of min and max).
///
/// The most-run reduction of calibration, so it has an explicit AVX2 version: LLVM does not
/// vectorize floating-point min/max reductions well by itself (7 GB/s instead of 30 in L2).
pub(crate) fn min_max(xs: &[f32]) -> (f32, f32, usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { min_max_avx2(xs) };
    }
    min_max_scalar(xs)
}

fn min_max_scalar(xs: &[f32]) -> (f32, f32, usize) {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    let mut nan = 0;
    for &v in xs {
        // Comparisons are false for NaN, which therefore never becomes a bound.
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
        nan += usize::from(v.is_nan());
    }
    (lo, hi, nan)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn min_max_avx2(xs: &[f32]) -> (f32, f32, usize) {
    use std::arch::x86_64::*;
    let mut chunks = xs.chunks_exact(16);
    let (mut lo_a, mut lo_b) = (_mm256_set1_ps(f32::INFINITY), _mm256_set1_ps(f32::INFINITY));
    let (mut hi_a, mut hi_b) = (
        _mm256_set1_ps(f32::NEG_INFINITY),
        _mm256_set1_ps(f32::NEG_INFINITY),
    );
    let mut unordered = _mm256_setzero_ps();
    for c in &mut chunks {
        // SAFETY: `c` holds 16 floats; unaligned loads.
        let (a, b) = unsafe {
            (
                _mm256_loadu_ps(c.as_ptr()),
                _mm256_loadu_ps(c.as_ptr().add(8)),
            )
        };
        // MINPS / MAXPS return their second operand when the first is NaN: NaN is skipped.
        lo_a = _mm256_min_ps(a, lo_a);
        lo_b = _mm256_min_ps(b, lo_b);
        hi_a = _mm256_max_ps(a, hi_a);
        hi_b = _mm256_max_ps(b, hi_b);
        let nan = _mm256_or_ps(
            _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a),
            _mm256_cmp_ps::<_CMP_UNORD_Q>(b, b),
        );
        unordered = _mm256_or_ps(unordered, nan);
    }
    let mut lo = [0f32; 8];
    let mut hi = [0f32; 8];
    // SAFETY: 8-float stores into 8-float arrays.
    unsafe {
        _mm256_storeu_ps(lo.as_mut_ptr(), _mm256_min_ps(lo_a, lo_b));
        _mm256_storeu_ps(hi.as_mut_ptr(), _mm256_max_ps(hi_a, hi_b));
    }
    let (tail_lo, tail_hi, tail_nan) = min_max_scalar(chunks.remainder());
    let lo = lo.iter().copied().fold(tail_lo, f32::min);
    let hi = hi.iter().copied().fold(tail_hi, f32::max);
    let any_nan = _mm256_movemask_ps(unordered) != 0;
    let body = xs.len() - chunks.remainder().len();
    let nan = if any_nan {
        xs[..body].iter().filter(|v| v.is_nan()).count()
    } else {
        0
    };
    (lo, hi, nan + tail_nan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetric_uint8_matches_the_formula() {
        let p = QParam::from_range(&Scheme::asymmetric_unsigned(8), -1.0, 3.0).unwrap();
        assert_eq!(p.scale, (4.0f64 / 255.0) as f32);
        assert_eq!(p.zero_point, 64); // round(0 - (-1) / (4/255)) = round(63.75)
        assert_eq!(p.offset(), -64);
    }

    #[test]
    fn the_range_is_widened_to_contain_zero() {
        let s = Scheme::asymmetric_unsigned(8);
        let p = QParam::from_range(&s, 2.0, 6.0).unwrap();
        assert_eq!(p, QParam::from_range(&s, 0.0, 6.0).unwrap());
        assert_eq!(p.zero_point, 0);
        let p = QParam::from_range(&s, -6.0, -2.0).unwrap();
        assert_eq!(p.zero_point, 255);
    }

    #[test]
    fn symmetric_uses_the_larger_side() {
        let p = QParam::from_range(&Scheme::new(8), -2.0, 0.5).unwrap();
        assert_eq!(p.scale, (2.0f64 / 127.0) as f32);
        assert_eq!(p.zero_point, 0);
        let p = QParam::from_range(&Scheme::new(8).signed(false), -2.0, 0.5).unwrap();
        assert_eq!(p.scale, (0.5f64 / 255.0) as f32);
    }

    #[test]
    fn degenerate_ranges_give_valid_parameters() {
        for scheme in [
            Scheme::new(8),
            Scheme::asymmetric_unsigned(8),
            Scheme::new(4).symmetric(false),
            Scheme::new(2).pow2_scale(true),
        ] {
            for (lo, hi) in [(0.0, 0.0), (3.0, 3.0), (-1e-45, 0.0), (-7.0, -7.0)] {
                let p = QParam::from_range(&scheme, lo, hi).unwrap();
                assert!(
                    p.scale.is_finite() && p.scale >= f32::MIN_POSITIVE,
                    "{scheme} {lo}"
                );
                let g = scheme.grid();
                assert!((g.qmin..=g.qmax).contains(&p.zero_point));
            }
        }
        let p = QParam::from_range(&Scheme::new(8), 0.0, 0.0).unwrap();
        assert_eq!(p.scale, 1.0);
    }

    #[test]
    fn extreme_finite_ranges_do_not_overflow() {
        let p = QParam::from_range(&Scheme::new(2).symmetric(false), f32::MIN, f32::MAX).unwrap();
        assert!(p.scale.is_finite());
    }

    #[test]
    fn power_of_two_scales_round_up() {
        let p = QParam::from_range(&Scheme::new(8).pow2_scale(true), -1.0, 1.0).unwrap();
        assert_eq!(p.scale, 1.0 / 64.0); // 1/127 rounded up to a power of two
        let p = QParam::from_range(&Scheme::new(8).pow2_scale(true), -127.0, 127.0).unwrap();
        assert_eq!(p.scale, 1.0);
    }

    #[test]
    fn bad_ranges_are_errors() {
        let s = Scheme::new(8);
        assert!(matches!(
            QParam::from_range(&s, f32::NAN, 1.0),
            Err(Error::NonFiniteRange { .. })
        ));
        assert!(matches!(
            QParam::from_range(&s, 0.0, f32::INFINITY),
            Err(Error::NonFiniteRange { .. })
        ));
        assert!(matches!(
            QParam::from_range(&s, 2.0, 1.0),
            Err(Error::InvertedRange { .. })
        ));
    }

    #[test]
    fn per_axis_and_block_ranges() {
        let x = [1.0, -2.0, 3.0, 4.0, 5.0, -6.0];
        let l = Layout::new(&[2, 3], Granularity::PerAxis { axis: 0 }).unwrap();
        assert_eq!(ranges(&x, &l).unwrap(), vec![(-2.0, 3.0), (-6.0, 5.0)]);
        let l = Layout::new(&[2, 3], Granularity::PerAxis { axis: 1 }).unwrap();
        assert_eq!(
            ranges(&x, &l).unwrap(),
            vec![(1.0, 4.0), (-2.0, 5.0), (-6.0, 3.0)]
        );
        let l = Layout::new(&[2, 3], Granularity::PerBlock { axis: 1, block: 2 }).unwrap();
        assert_eq!(
            ranges(&x, &l).unwrap(),
            vec![(-2.0, 1.0), (3.0, 3.0), (4.0, 5.0), (-6.0, -6.0)]
        );
        assert_eq!(
            ranges(
                &[1.0, f32::NAN],
                &Layout::new(&[2], Granularity::PerTensor).unwrap()
            ),
            Err(Error::NaN { count: 1 })
        );
    }

    #[test]
    fn given_parameters_are_checked() {
        let g = Scheme::new(8).grid();
        assert!(QParams::new(Granularity::PerTensor, g, vec![0.0], vec![0]).is_err());
        assert!(QParams::new(Granularity::PerTensor, g, vec![1.0], vec![300]).is_err());
        assert!(QParams::new(Granularity::PerTensor, g, vec![1.0], vec![0, 1]).is_err());
        let p = QParams::new(
            Granularity::PerAxis { axis: 0 },
            g,
            vec![1.0; 3],
            vec![0; 3],
        )
        .unwrap();
        assert!(p.layout_for(8, &[4, 2]).is_err());
        assert!(p.layout_for(6, &[3, 2]).is_ok());
        assert!(p.layout_for(5, &[3, 2]).is_err());
    }
}
