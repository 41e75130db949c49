//! A bounded sample of rows (of logits) that does not depend on arrival order: it keeps the `k`
//! rows with the smallest hash of their contents (bottom-k sampling). Any batching, splitting or
//! merging of the same rows keeps the same set. Identical rows are kept once.

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq)]
pub struct Reservoir {
    k: usize,
    /// Ordered by (hash, row bits): the last is the first to go when a smaller hash arrives.
    kept: BTreeSet<(u64, Vec<u32>)>,
    min: f32,
    max: f32,
}

impl Reservoir {
    pub fn new(k: usize) -> Reservoir {
        Reservoir {
            k: k.max(1),
            kept: BTreeSet::new(),
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }

    /// Offers every row of `row_len` values of `x` (a trailing partial row is one row too).
    pub fn update(&mut self, x: &[f32], row_len: usize) {
        for row in x.chunks(row_len.max(1)) {
            let bits: Vec<u32> = row.iter().map(|v| v.to_bits()).collect();
            self.offer((fnv1a(&bits), bits));
        }
        let (lo, hi, _) = crate::params::min_max(x);
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
    }

    fn offer(&mut self, item: (u64, Vec<u32>)) {
        if self.kept.len() < self.k {
            self.kept.insert(item);
        } else if self.kept.last().is_some_and(|last| item < *last) && self.kept.insert(item) {
            self.kept.pop_last();
        }
    }

    pub fn merge(&mut self, other: &Reservoir) {
        for item in &other.kept {
            self.offer(item.clone());
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The kept rows, in a fixed order (by hash).
    pub fn rows(&self) -> Vec<Vec<f32>> {
        self.kept
            .iter()
            .map(|(_, bits)| bits.iter().map(|&b| f32::from_bits(b)).collect())
            .collect()
    }

    /// [min, max] of everything offered (not only of the kept rows).
    pub fn min_max(&self) -> Option<(f32, f32)> {
        (self.min <= self.max).then_some((self.min, self.max))
    }

    /// [min, max] of everything offered, as stored (empty: +inf, -inf).
    pub(super) fn extremes(&self) -> (f32, f32) {
        (self.min, self.max)
    }

    /// Widens [min, max] to include a saved one (the rows put back already count).
    pub(super) fn set_extremes(&mut self, min: f32, max: f32) {
        self.min = self.min.min(min);
        self.max = self.max.max(max);
    }

    /// Bytes the kept rows occupy.
    pub fn capacity_bytes(&self) -> usize {
        self.kept.iter().map(|(_, r)| 8 + 4 * r.len()).sum()
    }
}

fn fnv1a(bits: &[u32]) -> u64 {
    bits.iter().fold(0xcbf2_9ce4_8422_2325, |h, &w| {
        w.to_le_bytes()
            .iter()
            .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_does_not_depend_on_order_or_batching() {
        let x: Vec<f32> = (0..3000)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.01)
            .collect();
        let mut a = Reservoir::new(50);
        a.update(&x, 3);
        let mut b = Reservoir::new(50);
        for chunk in x.chunks(3 * 17).rev() {
            b.update(chunk, 3);
        }
        assert_eq!(a.rows(), b.rows());
        assert_eq!(a.rows().len(), 50);
        let (l, r) = x.split_at(1500);
        let mut c = Reservoir::new(50);
        c.update(r, 3);
        let mut d = Reservoir::new(50);
        d.update(l, 3);
        c.merge(&d);
        assert_eq!(a.rows(), c.rows());
    }
}
