//! A streaming histogram whose result does not depend on how the data was batched or split.
//!
//! The bins are anchored at 0 and their width is a power of two, w = 2^e: bin i covers
//! [(i - N/2)·w, (i - N/2 + 1)·w). When a value falls outside [-N/2·w, N/2·w) the width doubles
//! (as often as needed) and pairs of adjacent bins merge. Because x / 2^e is exact and
//! floor(floor(x / w) / 2) = floor(x / 2w), merging is lossless at the new width: the histogram
//! after any sequence of batches, merges and widenings equals the histogram of all the data binned
//! directly at the final width, which depends only on max |x|. Counts are integers, so parallel
//! partial histograms add up exactly. Memory is N counters, whatever the number of samples.
//!
//! With N bins the width is below 4·max|x| / N: the default 8192 bins are 2 to 4 times finer
//! than the 2048-bin histograms ONNX Runtime and TensorRT calibrate with (width 2·max|x| / 2048).

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::CHUNK;

/// Default number of bins.
pub const DEFAULT_BINS: usize = 8192;

#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    /// log2 of the bin width; None until a non-zero value has been seen.
    exp: Option<i32>,
    /// Exact extremes of the data (the histogram's ends are only bin-accurate).
    min: f32,
    max: f32,
    total: u64,
}

impl Histogram {
    /// An empty histogram of `bins` bins (even, at least 2).
    pub fn new(bins: usize) -> Result<Histogram> {
        if bins < 2 || !bins.is_multiple_of(2) {
            return Err(Error::Scheme(format!(
                "a histogram needs an even number of bins, at least 2 (got {bins})"
            )));
        }
        Ok(Histogram {
            counts: vec![0; bins],
            exp: None,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            total: 0,
        })
    }

    /// The bin-width exponent and the exact extremes, for [`Observer::to_bytes`](super::Observer::to_bytes).
    pub(super) fn parts(&self) -> (Option<i32>, f32, f32) {
        (self.exp, self.min, self.max)
    }

    /// A histogram from saved parts, checked: the counts add up to at most 2^62 values, the
    /// exponent is one [`update`](Histogram::update) can reach, nothing lies outside the zero
    /// bin before a width was set, and a non-empty histogram has a finite [min, max].
    pub(super) fn from_parts(
        counts: Vec<u64>,
        exp: Option<i32>,
        min: f32,
        max: f32,
    ) -> std::result::Result<Histogram, String> {
        let mut fresh = Histogram::new(counts.len()).map_err(|e| e.to_string())?;
        let total = counts
            .iter()
            .try_fold(0u64, |t, &c| t.checked_add(c).filter(|&t| t <= 1 << 62))
            .ok_or("the bin counts overflow")?;
        if exp.is_some_and(|e| !(-149 - 24..=160).contains(&e)) {
            return Err(format!("bin-width exponent {exp:?} is out of range"));
        }
        let half = counts.len() / 2;
        if exp.is_none() && counts.iter().enumerate().any(|(i, &c)| i != half && c > 0) {
            return Err("counts outside the zero bin without a bin width".into());
        }
        if total > 0 {
            if !(min.is_finite() && max.is_finite() && min <= max) {
                return Err(format!("[{min}, {max}] is not the range of a histogram"));
            }
            (fresh.min, fresh.max) = (min, max);
        }
        fresh.counts = counts;
        fresh.exp = exp;
        fresh.total = total;
        Ok(fresh)
    }

    pub fn bins(&self) -> usize {
        self.counts.len()
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Exact [min, max] of everything observed; None when empty.
    pub fn min_max(&self) -> Option<(f32, f32)> {
        (self.total > 0).then_some((self.min, self.max))
    }

    /// Bin width (1 when no non-zero value has been seen: every value is then in the zero bin).
    pub fn width(&self) -> f64 {
        self.exp.map_or(1.0, |e| 2f64.powi(e))
    }

    /// Lower edge of bin `i`.
    pub fn edge(&self, i: usize) -> f64 {
        (i as f64 - (self.bins() / 2) as f64) * self.width()
    }

    /// Widens the bins to width 2^`e` (e >= current), merging counts exactly.
    fn widen_to(&mut self, e: i32) {
        match self.exp {
            Some(old) if e > old => merge_bins(&mut self.counts, e - old),
            Some(_) => return,
            None => {}
        }
        self.exp = Some(e);
    }

    /// Adds a batch of values. NaN is an error; ±Inf too (no finite range contains it).
    pub fn update(&mut self, x: &[f32]) -> Result<()> {
        if x.is_empty() {
            return Ok(());
        }
        let bins = self.bins();
        let taken = if x.len() <= PART {
            // One part, the common case (most activations are smaller than a part).
            self.count_in_place(x)
        } else {
            // Each task bins its part at the width the part needs (this histogram's, if
            // wider): the widths meet exactly in the merge below. Larger tasks than the
            // kernels': each builds tables of all bins, which must pay off.
            let parts: Vec<Option<Histogram>> = x
                .par_chunks(PART)
                .map(|c| {
                    let mut part = Histogram {
                        counts: vec![0; bins],
                        exp: self.exp,
                        min: f32::INFINITY,
                        max: f32::NEG_INFINITY,
                        total: 0,
                    };
                    part.count_in_place(c).then_some(part)
                })
                .collect();
            let taken = parts.iter().all(Option::is_some);
            if taken {
                parts.into_iter().flatten().for_each(|p| self.absorb(p));
            }
            taken
        };
        if !taken {
            // The whole batch's count of NaN, or its infinite extreme, for the message.
            let (min, max) = crate::params::finite_min_max(x)?;
            return Err(Error::NonFiniteRange { min, max });
        }
        Ok(())
    }

    /// Counts non-empty `x` into this histogram (bin floor(v / 2^exp) + bins/2, computed
    /// exactly: scaling by a power of two is exact and floor is exact, which is what makes
    /// merging bins lossless), widening it as `x` needs; false, taking nothing, if `x` holds NaN
    /// or ±Inf. The values go into this thread's tables, whose touched bins are then added here
    /// and zeroed again: a histogram of each part's own, added up from all its tables and
    /// merged bin by bin, cost more than the counting on small activations (2.8 % of
    /// isbnx-yolo26n's calibration in adding up and merging alone, perf, besides zeroing).
    fn count_in_place(&mut self, x: &[f32]) -> bool {
        let bins = self.bins();
        let (ways, row) = (ways(x.len(), bins), bins + SPREAD);
        TABLES.with(|tables| {
            let mut tables = tables.borrow_mut();
            // Zeros past its old end; the rest is zero between calls (below).
            if tables.len() < ways * row {
                tables.resize(ways * row, 0);
            }
            let tables = &mut tables[..ways * row];
            match count_into(x, self.exp, bins, tables, ways) {
                Some(c) => {
                    self.add_tables(tables, x.len(), &c);
                    true
                }
                None => {
                    tables.fill(0);
                    false
                }
            }
        })
    }

    /// Adds the `n` values counted into `tables` (back to back, each `bins` bins and the zero
    /// bin's spread counters) at a width at least this histogram's, and zeroes what they
    /// touched: every value lies in [lo, hi], so its bin in [bin(lo), bin(hi)].
    fn add_tables(&mut self, tables: &mut [u32], n: usize, c: &Counted) {
        let (bins, half) = (self.bins(), self.bins() / 2);
        match (self.exp, c.exp) {
            (_, None) => {}
            // All of self sits in the zero bin at any width.
            (None, Some(e)) => self.exp = Some(e),
            (Some(_), Some(e)) => self.widen_to(e),
        }
        let bin = |v: f32| {
            let b = (f64::from(v) / self.width()).floor() + half as f64;
            b.clamp(0.0, (bins - 1) as f64) as usize
        };
        let touched = bin(c.lo).saturating_sub(1)..(bin(c.hi) + 2).min(bins);
        let counts = &mut self.counts[touched.clone()];
        crate::kernel::dispatch(
            #[inline(always)]
            || {
                for table in tables.chunks_mut(bins + SPREAD) {
                    let table = &mut table[touched.clone()];
                    for (total, t) in counts.iter_mut().zip(table) {
                        *total += u64::from(std::mem::take(t));
                    }
                }
            },
        );
        for table in tables.chunks_mut(bins + SPREAD) {
            let spread = &mut table[bins..];
            self.counts[half] += spread
                .iter_mut()
                .map(|t| u64::from(std::mem::take(t)))
                .sum::<u64>();
        }
        self.min = self.min.min(c.lo);
        self.max = self.max.max(c.hi);
        self.total += n as u64;
    }

    /// Adds another histogram of the same number of bins.
    pub fn merge(&mut self, other: &Histogram) -> Result<()> {
        if other.bins() != self.bins() {
            return Err(Error::Mismatch {
                a: "the histogram merged in",
                b: "this histogram",
                expected: self.bins(),
                got: other.bins(),
            });
        }
        self.absorb(other.clone());
        Ok(())
    }

    /// [`Histogram::merge`] of a histogram of as many bins, taken by value.
    fn absorb(&mut self, mut other: Histogram) {
        if let (Some(a), Some(b)) = (self.exp, other.exp) {
            self.widen_to(a.max(b));
            other.widen_to(a.max(b));
        } else if self.exp.is_none() {
            // All of self sits in the zero bin at any width.
            let half = self.bins() / 2;
            let zeros = self.counts[half];
            self.counts.iter_mut().for_each(|c| *c = 0);
            self.exp = other.exp;
            self.counts[half] = zeros;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.total += other.total;
    }

    /// The value below which `p` percent of the data lies, interpolating linearly inside the
    /// bin (values are taken as spread uniformly over it), and clamped to the exact [min, max].
    pub fn percentile(&self, p: f64) -> Option<f32> {
        let (lo, hi) = self.min_max()?;
        let Some((i, frac)) = rank_position(self.counts.iter().copied(), p, self.total) else {
            return Some(hi);
        };
        let v = self.edge(i) + frac * self.width();
        Some((v as f32).clamp(lo, hi))
    }

    /// The `p`-th percentile of |x|: the histogram folded around zero (bin [k·w, (k+1)·w) of |x|
    /// gathers the two mirror bins, exactly), interpolated inside the bin like
    /// [`percentile`](Self::percentile), and at most max|x|.
    pub fn abs_percentile(&self, p: f64) -> Option<f32> {
        let (lo, hi) = self.min_max()?;
        let half = self.bins() / 2;
        let folded = (0..half).map(|k| self.counts[half + k] + self.counts[half - 1 - k]);
        let absmax = lo.abs().max(hi.abs());
        let Some((k, frac)) = rank_position(folded, p, self.total) else {
            return Some(absmax);
        };
        Some((((k as f64 + frac) * self.width()) as f32).min(absmax))
    }

    /// Non-empty bins as (center, count), for error estimates.
    pub fn centers(&self) -> Vec<(f32, f64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| ((self.edge(i) + 0.5 * self.width()) as f32, c as f64))
            .collect()
    }
}

/// Where the `p`-th percentile of `total` counted values falls: the first bin whose cumulative
/// count reaches it, and the fraction of the way through that bin (its values taken as spread
/// uniformly over it). None only if the counts fall short of the target.
fn rank_position(counts: impl Iterator<Item = u64>, p: f64, total: u64) -> Option<(usize, f64)> {
    let target = p.clamp(0.0, 100.0) / 100.0 * total as f64;
    let mut below = 0.0;
    for (i, c) in counts.enumerate() {
        let c = c as f64;
        if c > 0.0 && below + c >= target {
            return Some((i, ((target - below) / c).clamp(0.0, 1.0)));
        }
        below += c;
    }
    None
}

/// Merges the bins of `counts` 2^`shift` at a time, in place: the counts at a width 2^shift
/// times as wide (bins stay anchored at 0, see the module's comment).
fn merge_bins<T: Copy + Default + std::ops::AddAssign>(counts: &mut [T], shift: i32) {
    if shift <= 0 {
        return;
    }
    let shift = shift.min(62) as u32;
    let half = (counts.len() / 2) as i64;
    let old = counts.to_vec();
    counts.iter_mut().for_each(|c| *c = T::default());
    for (i, &c) in old.iter().enumerate() {
        // An arithmetic shift is the floor of the division by 2^shift, negatives included:
        // exact, without a division per bin.
        let j = ((i as i64 - half) >> shift) + half;
        counts[j as usize] += c;
    }
}

/// The smallest width exponent whose `bins` bins cover ±`absmax`.
fn exp_for(absmax: f32, bins: usize) -> i32 {
    let half = (bins / 2) as f64;
    let mut e = (f64::from(absmax) / half).log2().floor() as i32;
    // absmax / 2^e must be < half: step up until it is (at most a couple of times).
    while f64::from(absmax) >= half * 2f64.powi(e) {
        e += 1;
    }
    e.max(-149 - 24)
}

/// Values per part of an [`update`](Histogram::update): each part is counted by one task.
const PART: usize = 16 * CHUNK;

/// Slots past each table's bins that count the zero bin's hits in turn, so that a run of zeros
/// (half of a ReLU's output) increments 4·SPREAD counters instead of waiting on one counter's
/// last store per table.
const SPREAD: usize = 16;

thread_local! {
    /// Each thread's counting tables for [`Histogram::count_in_place`], all zeros between uses.
    static TABLES: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Interleaved tables for `n` values: four, so that repeated hits on one bin (zeros after a
/// ReLU) do not wait on each other's increments, where there are 16 values a bin or more; one
/// for fewer, where zeroing and adding up four cost more than the counting (8192 bins, spread
/// values: 1.17 -> 0.59 ns a value at 16K values, 0.60 -> 0.44 at 64K; half zeros: 1.28 ->
/// 1.10, 0.74 -> 0.92).
fn ways(n: usize, bins: usize) -> usize {
    if n >= 16 * bins {
        4
    } else {
        1
    }
}

/// What [`count_into`] counted: the bin-width exponent its tables ended at, and the values'
/// exact extremes.
struct Counted {
    exp: Option<i32>,
    lo: f32,
    hi: f32,
}

/// Counts `x` into `tables` (zeros: `ways` tables of `bins` bins and SPREAD zero-bin slots
/// each, back to back), starting at the width 2^`exp`; None if `x` holds NaN or ±Inf.
fn count_into(
    x: &[f32],
    exp: Option<i32>,
    bins: usize,
    tables: &mut [u32],
    ways: usize,
) -> Option<Counted> {
    if ways == 4 {
        count_ways::<4>(x, exp, bins, tables)
    } else {
        count_ways::<1>(x, exp, bins, tables)
    }
}

/// [`count_into`] with `WAYS` interleaved tables (1 or 4). Each stage of values is read from
/// memory once: its extremes (which may widen the bins, merging the tables' counts exactly)
/// and then its bins come from the cache. Two passes over the whole part, extremes first, read
/// a large activation from memory twice (2.5M values: 1.0-1.2 ns a value against ~0.6 in L2).
fn count_ways<const WAYS: usize>(
    x: &[f32],
    exp: Option<i32>,
    bins: usize,
    tables: &mut [u32],
) -> Option<Counted> {
    const STAGE: usize = 8192;
    const BATCH: usize = 1024;
    let half = (bins / 2) as f32;
    let top = (bins - 1) as f32;
    let (zero, row) = (bins as u32 / 2, bins + SPREAD);
    // Table j starts at j·off.
    let off = if WAYS == 4 { row } else { 0 };
    crate::kernel::dispatch(
        #[inline(always)]
        || {
            assert_eq!(tables.len(), WAYS * row);
            let mut idx = [0u32; BATCH];
            let (mut exp, mut lo, mut hi) = (exp, f32::INFINITY, f32::NEG_INFINITY);
            for (k, stage) in x.chunks(STAGE).enumerate() {
                let next = x.get((k + 1) * STAGE..).unwrap_or(&[]);
                let next = &next[..next.len().min(STAGE)];
                let (l, h, nan) = crate::params::min_max(stage);
                if nan > 0 || !l.is_finite() || !h.is_finite() {
                    return None;
                }
                (lo, hi) = (lo.min(l), hi.max(h));
                let absmax = l.abs().max(h.abs());
                if absmax > 0.0 {
                    let need = exp_for(absmax, bins);
                    match exp {
                        Some(e) if need > e => {
                            // The spread slots stay: the zero bin merges into itself.
                            tables
                                .chunks_mut(row)
                                .for_each(|t| merge_bins(&mut t[..bins], need - e));
                            exp = Some(need);
                        }
                        Some(_) => {}
                        None => exp = Some(need),
                    }
                }
                // Only zeros so far bin alike at any width.
                let e = exp.unwrap_or(0);
                // 2^-e as f32 when representable; tiny widths (e < -126) divide instead.
                let inv = (e > -126 && e < 127).then(|| 2f32.powi(-e));
                let width = 2f64.powi(e) as f32;
                for (b, c) in stage.chunks(BATCH).enumerate() {
                    prefetch(next.get(b * BATCH..).unwrap_or(&[]), BATCH);
                    // Bounds are integers, so clamping after the floor is exact. The comparisons
                    // are MAXPS / MINPS; one loop per case so that each vectorizes.
                    let bin = |q: f32| {
                        let b = q.floor() + half;
                        let b = if b > 0.0 { b } else { 0.0 };
                        let b = if b < top { b } else { top };
                        // b is an integer below 2^22: read it from the mantissa after adding
                        // 1.5·2^23 (a float-to-int `as` would not vectorize here).
                        (b + 12_582_912.0).to_bits() - 0x4B40_0000
                    };
                    match inv {
                        Some(inv) => idx.iter_mut().zip(c).for_each(|(i, &v)| *i = bin(v * inv)),
                        None => idx
                            .iter_mut()
                            .zip(c)
                            .for_each(|(i, &v)| *i = bin(v / width)),
                    }
                    for (j, i) in idx.iter_mut().enumerate() {
                        let spread = (bins + j % SPREAD) as u32;
                        *i = if *i == zero { spread } else { *i };
                    }
                    let mut quads = idx[..c.len()].chunks_exact(4);
                    let t = tables.as_mut_ptr();
                    for q in &mut quads {
                        // SAFETY: `bin` clamps every index to [0, bins − 1], the spreading
                        // moves some to [bins, row), and table j spans [j·off, j·off + row) of
                        // the WAYS·row. Unchecked: a bounds check per increment was a fifth of
                        // the count's time.
                        unsafe {
                            *t.add(q[0] as usize) += 1;
                            *t.add(off + q[1] as usize) += 1;
                            *t.add(2 * off + q[2] as usize) += 1;
                            *t.add(3 * off + q[3] as usize) += 1;
                        }
                    }
                    for &i in quads.remainder() {
                        tables[i as usize] += 1;
                    }
                }
            }
            Some(Counted { exp, lo, hi })
        },
    )
}

/// Asks for the first `n` values of `x` to be brought into the cache, 64 bytes a line: the
/// next stage's values arrive from memory while this one's are counted (a ddddocr-det's
/// activations from memory, one thread: 0.98-1.09 -> 0.90-0.98 ns a value).
#[inline(always)]
fn prefetch(x: &[f32], n: usize) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, n);
    #[cfg(target_arch = "x86_64")]
    for line in x[..n.min(x.len())].chunks(16) {
        // SAFETY: a prefetch reads nothing and faults on no address; SSE is baseline on x86_64.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let u = (s >> 8) as f32 / (1 << 24) as f32;
                // Growing spread, so that later batches widen the histogram.
                (u - 0.3) * (1.0 + i as f32 / 50.0)
            })
            .collect()
    }

    /// One table or four interleaved ones: the same counts, zeros and clamped extremes included.
    #[test]
    fn the_table_count_does_not_change_the_counts() {
        let mut x = data(5000, 9);
        x.extend([0.0, -0.0, 1e30, -1e30, 0.0]);
        for exp in [None, Some(-3), Some(0), Some(4)] {
            let count = |ways| {
                let mut tables = vec![0u32; ways * (64 + SPREAD)];
                let c = count_into(&x, exp, 64, &mut tables, ways)?;
                let mut h = Histogram::new(64).unwrap();
                h.exp = exp;
                h.add_tables(&mut tables, x.len(), &c);
                assert!(tables.iter().all(|&t| t == 0), "tables left dirty");
                Some((h.counts, h.exp))
            };
            assert_eq!(count(1), count(4));
        }
    }

    /// Against the definition: every value binned once at the final width, 2^e with e the
    /// smallest whose bins cover max |x|. The batches hold parts of more than one task (16 ·
    /// CHUNK values), zeros first, and their stages widen the tables mid-part.
    #[test]
    fn counts_are_the_values_binned_at_the_final_width() {
        let bins = 64;
        let mut x = vec![0.0f32; 3000];
        x.extend(data(16 * CHUNK + 70_000, 5));
        x.extend([0.0, -0.0, 1e-3, -1e-3]);
        let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = (-40..40)
            .find(|&e| f64::from(absmax) < 32.0 * 2f64.powi(e))
            .unwrap();
        let mut expected = vec![0u64; bins];
        for &v in &x {
            let b = (f64::from(v) / 2f64.powi(e)).floor() as i64 + 32;
            expected[b as usize] += 1;
        }
        let (lo, hi) = x
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        // Parts in parallel; one part at a time in one table, and in four (16 values a bin).
        for batch in [16 * CHUNK + 40_000, 700, 5000] {
            let mut h = Histogram::new(bins).unwrap();
            for (i, b) in x.chunks(batch).enumerate() {
                h.update(b).unwrap();
                if i == 1 {
                    // A refused batch on this thread leaves its tables clean for the next.
                    let mut bad = b.to_vec();
                    bad[b.len() / 2] = f32::NAN;
                    assert!(Histogram::new(bins).unwrap().update(&bad).is_err());
                }
            }
            assert_eq!(h.exp, Some(e), "{batch}");
            assert_eq!(h.counts, expected, "{batch}");
            assert_eq!(h.total, x.len() as u64);
            assert_eq!(h.min_max(), Some((lo, hi)));
        }
    }

    #[test]
    fn batching_and_merging_give_the_same_histogram() {
        let x = data(5000, 3);
        let mut whole = Histogram::new(64).unwrap();
        whole.update(&x).unwrap();
        let mut batched = Histogram::new(64).unwrap();
        for b in x.chunks(37) {
            batched.update(b).unwrap();
        }
        assert_eq!(whole, batched);
        let (a, b) = x.split_at(1234);
        let mut left = Histogram::new(64).unwrap();
        left.update(b).unwrap();
        let mut right = Histogram::new(64).unwrap();
        right.update(a).unwrap();
        left.merge(&right).unwrap();
        assert_eq!(whole, left);
        assert_eq!(whole.total(), 5000);
        assert!(whole.width() < 4.0 * f64::from(whole.max.abs().max(whole.min.abs())) / 64.0);
    }

    #[test]
    fn zeros_then_data() {
        let mut h = Histogram::new(8).unwrap();
        h.update(&[0.0, 0.0]).unwrap();
        h.update(&[3.0, -1.0]).unwrap();
        let mut g = Histogram::new(8).unwrap();
        g.update(&[0.0, 3.0, 0.0, -1.0]).unwrap();
        assert_eq!(h, g);
        let mut z = Histogram::new(8).unwrap();
        z.update(&[0.0]).unwrap();
        let mut m = Histogram::new(8).unwrap();
        m.update(&[3.0, -1.0, 0.0]).unwrap();
        z.merge(&m).unwrap();
        assert_eq!(z, g);
    }

    #[test]
    fn percentiles_are_bin_accurate() {
        let x: Vec<f32> = (0..10001).map(|i| i as f32 / 10000.0).collect();
        let mut h = Histogram::new(DEFAULT_BINS).unwrap();
        h.update(&x).unwrap();
        for p in [1.0, 50.0, 99.0] {
            let v = h.percentile(p).unwrap();
            assert!((f64::from(v) - p / 100.0).abs() <= h.width(), "{p}: {v}");
        }
        assert_eq!(h.percentile(100.0), Some(1.0));
        assert_eq!(h.percentile(0.0), Some(0.0));
    }

    #[test]
    fn bad_input() {
        assert!(Histogram::new(7).is_err());
        let mut h = Histogram::new(8).unwrap();
        assert!(h.update(&[1.0, f32::NAN]).is_err());
        assert!(h.update(&[f32::INFINITY]).is_err());
        assert_eq!(h.total(), 0);
    }
}
