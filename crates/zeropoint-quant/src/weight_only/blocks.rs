//! A MatMul weight quantized in blocks along its reduction axis, as weight-only runtimes store it
//! (ONNX Runtime's MatMulNBits, blocked DequantizeLinear at opset 21, GGUF): each output column's
//! K weights are cut into blocks of `block` consecutive values, each block with its own scale and
//! zero-point, and
//!
//! ```text
//! code = clamp(round(w / scale + zero), 0, 2^bits - 1)        w^ = (code - zero) · scale
//! ```
//!
//! Codes are unsigned; a symmetric grid is the signed one shifted by 2^(bits-1), which is the zero
//! MatMulNBits assumes when a model gives none. Zeros are integers except where HQQ optimizes
//! them (MatMulNBits takes float zeros; a blocked DequantizeLinear does not).
//!
//! Everything is laid out as the ONNX MatMul weight is, `[K, N]` row-major: row k holds input
//! feature k's weight for every output, the unit GPTQ's column updates work on.

use rayon::prelude::*;
use zeropoint_core::observer::search::{minimize, values_cost};
use zeropoint_core::{QParam, Scheme};

/// How a block's range is chosen before any algorithm refines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockRange {
    /// The block's own minimum and maximum.
    #[default]
    MinMax,
    /// The clipped range with the least squared error on the block's values (zeropoint-core's
    /// range search).
    Mse,
}

/// The grid a weight is quantized on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockScheme {
    /// 2..=8.
    pub bits: u32,
    /// Values per block along K (the last block of a column may be shorter).
    pub block: usize,
    /// Zero fixed at 2^(bits-1), scale from the largest magnitude.
    pub symmetric: bool,
    pub range: BlockRange,
}

impl BlockScheme {
    /// The largest code.
    pub fn qmax(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }

    /// zeropoint-core's scheme for one block: signed symmetric or unsigned asymmetric.
    fn core_scheme(&self) -> Scheme {
        if self.symmetric {
            Scheme::new(self.bits)
        } else {
            Scheme::asymmetric_unsigned(self.bits)
        }
    }

    /// Scale and (unsigned-grid) zero of one block of values.
    pub fn params(&self, values: &[f32]) -> (f32, f32) {
        let scheme = self.core_scheme();
        let (lo, hi) = values
            .iter()
            .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let (lo, hi) = match self.range {
            BlockRange::MinMax => (lo, hi),
            BlockRange::Mse => minimize(&scheme, lo, hi, values_cost(&scheme, values, 2.0)),
        };
        // Finite weights give a valid range; a NaN weight was refused when the model was read.
        let p = QParam::from_range(&scheme, lo, hi).unwrap_or(QParam {
            scale: 1.0,
            zero_point: 0,
        });
        let shift = scheme.grid().qmin;
        (p.scale, (p.zero_point - shift) as f32)
    }
}

/// A `[K, N]` weight on its block grid.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockWeights {
    pub k: usize,
    pub n: usize,
    pub scheme: BlockScheme,
    /// `[K, N]`, each in [0, 2^bits).
    pub codes: Vec<u8>,
    /// `[blocks, N]`: block b of column n at `b * N + n` (blocked DequantizeLinear's layout).
    pub scales: Vec<f32>,
    /// Like `scales`.
    pub zeros: Vec<f32>,
}

impl BlockWeights {
    /// Blocks along K: ⌈K / block⌉.
    pub fn blocks(&self) -> usize {
        self.k.div_ceil(self.scheme.block)
    }

    /// Whether every zero is an integer (all but HQQ's).
    pub fn integral_zeros(&self) -> bool {
        self.zeros.iter().all(|z| z.fract() == 0.0)
    }

    /// The dequantized `[K, N]` weight.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.k * self.n];
        w.par_chunks_mut(self.n).enumerate().for_each(|(k, row)| {
            for (j, x) in row.iter_mut().enumerate() {
                *x = self.value(k, j);
            }
        });
        w
    }

    /// The dequantized weight of row `k`, column `j`.
    #[inline]
    pub fn value(&self, k: usize, j: usize) -> f32 {
        let (n, p) = (self.n, (k / self.scheme.block) * self.n + j);
        (f32::from(self.codes[k * n + j]) - self.zeros[p]) * self.scales[p]
    }

    /// [`sqnr_db`] of `w` (`[K, N]`) against these weights, without dequantizing them whole (an
    /// LM head's copy would be 37 MB of a 15M-parameter model).
    pub fn sqnr_db(&self, w: &[f32]) -> f64 {
        let pairs = (0..self.k).flat_map(|k| (0..self.n).map(move |j| (k, j)));
        let (signal, noise) = pairs.fold((0f64, 0f64), |(s, e), (k, j)| {
            let a = w[k * self.n + j];
            (
                s + f64::from(a).powi(2),
                e + f64::from(a - self.value(k, j)).powi(2),
            )
        });
        10.0 * (signal / noise).log10()
    }
}

/// The code of `v` on a block's grid.
pub fn code(v: f32, scale: f32, zero: f32, qmax: f32) -> u8 {
    (v / scale + zero).round_ties_even().clamp(0.0, qmax) as u8
}

/// Per block and column, the parameters of `w` (`[K, N]`): `[blocks, N]` scales and zeros.
pub fn block_params(w: &[f32], k: usize, n: usize, s: &BlockScheme) -> (Vec<f32>, Vec<f32>) {
    let blocks = k.div_ceil(s.block);
    let params: Vec<(f32, f32)> = (0..blocks * n)
        .into_par_iter()
        .map(|i| s.params(&block_column(w, k, n, s.block, i)))
        .collect();
    params.into_iter().unzip()
}

/// The values of block `i` of the `[blocks, N]` parameter layout: block i / N of column i % N.
pub fn block_column(w: &[f32], k: usize, n: usize, block: usize, i: usize) -> Vec<f32> {
    let (b, j) = (i / n, i % n);
    (b * block..((b + 1) * block).min(k))
        .map(|r| w[r * n + j])
        .collect()
}

/// Round to nearest: each block's parameters from its range, each weight to its nearest code.
pub fn rtn(w: &[f32], k: usize, n: usize, scheme: BlockScheme) -> BlockWeights {
    let (scales, zeros) = block_params(w, k, n, &scheme);
    BlockWeights::nearest(w, k, n, scheme, scales, zeros)
}

impl BlockWeights {
    /// `w` (`[K, N]`) on the grid of the given parameters, each weight at its nearest code.
    pub fn nearest(
        w: &[f32],
        k: usize,
        n: usize,
        scheme: BlockScheme,
        scales: Vec<f32>,
        zeros: Vec<f32>,
    ) -> BlockWeights {
        let qmax = scheme.qmax();
        let mut codes = vec![0u8; w.len()];
        (codes.par_chunks_mut(n).zip(w.par_chunks(n)))
            .enumerate()
            .for_each(|(r, (c, row))| {
                let p = (r / scheme.block) * n;
                for j in 0..n {
                    c[j] = code(row[j], scales[p + j], zeros[p + j], qmax);
                }
            });
        BlockWeights {
            k,
            n,
            scheme,
            codes,
            scales,
            zeros,
        }
    }
}

/// Signal-to-quantization-noise ratio of `q` against `w`, in dB (∞ when equal).
pub fn sqnr_db(w: &[f32], q: &[f32]) -> f64 {
    let (signal, noise) = w.iter().zip(q).fold((0f64, 0f64), |(s, e), (&a, &b)| {
        (s + f64::from(a).powi(2), e + f64::from(a - b).powi(2))
    });
    10.0 * (signal / noise).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(bits: u32, symmetric: bool) -> BlockScheme {
        BlockScheme {
            bits,
            block: 4,
            symmetric,
            range: BlockRange::MinMax,
        }
    }

    #[test]
    fn asymmetric_blocks_hit_their_ends() {
        // K = 6 (a full block of 4 and a short one of 2), N = 2.
        let w = [
            0.0, -1.0, 1.5, 2.0, -0.5, 3.0, 3.0, 1.0, 2.0, 5.0, -2.0, 0.0,
        ];
        let q = rtn(&w, 6, 2, scheme(4, false));
        assert_eq!(q.blocks(), 2);
        let d = q.dequantize();
        // Column 0, block 0 is [0, 1.5, -0.5, 3]: scale 3.5 / 15, its ends exact.
        assert!((q.scales[0] - 3.5 / 15.0).abs() < 1e-7);
        // The zero is rounded to a code: each weight is within one step of its value.
        for (i, (a, b)) in w.iter().zip(&d).enumerate() {
            let step = q.scales[(i / 2 / 4) * 2 + i % 2];
            assert!((a - b).abs() <= step + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn symmetric_zero_is_the_middle_code() {
        let w = [0.7, -0.3, 0.0, 0.1];
        let q = rtn(&w, 4, 1, scheme(4, true));
        assert_eq!(q.zeros, vec![8.0]);
        assert!((q.scales[0] - 0.1).abs() < 1e-7);
        assert_eq!(q.codes, vec![15, 5, 8, 9]);
    }

    #[test]
    fn mse_ranges_beat_min_max_on_an_outlier() {
        let mut w: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 32.0) / 64.0)
            .collect();
        w[5] = 8.0;
        let minmax = rtn(
            &w,
            64,
            1,
            BlockScheme {
                block: 64,
                ..scheme(3, false)
            },
        );
        let mse = rtn(
            &w,
            64,
            1,
            BlockScheme {
                block: 64,
                range: BlockRange::Mse,
                ..scheme(3, false)
            },
        );
        assert!(sqnr_db(&w, &mse.dequantize()) > sqnr_db(&w, &minmax.dequantize()));
    }
}
