//! HQQ, half-quadratic quantization (Badri & Shaji 2023, "Half-Quadratic Quantization of Large
//! Machine Learning Models"): data-free, it fits each block's zero-point to the weights under a
//! sparsity-promoting l_p error (p < 1), which lets a few outliers be badly quantized so that
//! the bulk is well quantized. Splitting the error off as W_e gives two easy sub-problems,
//! solved in turn with the scale fixed (from the block's min-max):
//!
//! ```text
//! W_e ← shrink_p(W − s(Q(W) − z), β)      shrink_p(x, β) = sign(x)·max(|x| − |x|^(p−1)/β, 0)
//! z   ← mean(Q(W) − (W − W_e)/s)          Q(W) = clamp(round(W/s + z), 0, 2^bits − 1)
//! β   ← κβ
//! ```
//!
//! with the paper's p = 0.7, β = 10, κ = 1.01 and 20 iterations. The reference code stops every
//! block together once the mean |W − Ŵ| over the whole tensor stops falling; here each block
//! stops on its own and keeps the zero of its smallest error (the tests' numpy version does the
//! same). Zeros come out fractional; formats that need integers round them afterwards.

use rayon::prelude::*;

use crate::weight_only::blocks::{block_column, block_params, BlockScheme, BlockWeights};

/// The solver's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    pub p: f32,
    pub beta: f32,
    pub kappa: f32,
    pub iterations: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            p: 0.7,
            beta: 10.0,
            kappa: 1.01,
            iterations: 20,
        }
    }
}

/// HQQ of `w` (`[K, N]`), asymmetric (the zero is what it optimizes).
pub fn hqq(w: &[f32], k: usize, n: usize, scheme: BlockScheme, opts: &Options) -> BlockWeights {
    let (scales, mut zeros) = block_params(w, k, n, &scheme);
    zeros.par_iter_mut().enumerate().for_each(|(i, z)| {
        let column = block_column(w, k, n, scheme.block, i);
        *z = solve(&column, scales[i], *z, scheme.qmax(), opts);
    });
    BlockWeights::nearest(w, k, n, scheme, scales, zeros)
}

/// The zero of one block (values `w`, scale `s`, first zero `z`), solved in f64.
fn solve(w: &[f32], s: f32, z: f32, qmax: f32, o: &Options) -> f32 {
    let (s, qmax, n) = (f64::from(s), f64::from(qmax), w.len() as f64);
    let mut z = f64::from(z);
    let mut beta = f64::from(o.beta);
    let mut best = (f64::INFINITY, z);
    for _ in 0..o.iterations {
        let q: Vec<f64> = w
            .iter()
            .map(|&x| (f64::from(x) / s + z).round_ties_even().clamp(0.0, qmax))
            .collect();
        let residual: Vec<f64> = w
            .iter()
            .zip(&q)
            .map(|(&x, &c)| f64::from(x) - s * (c - z))
            .collect();
        let error = residual.iter().map(|r| r.abs()).sum::<f64>() / n;
        if error < best.0 {
            best = (error, z);
        } else {
            break;
        }
        z = w
            .iter()
            .zip(&q)
            .zip(&residual)
            .map(|((&x, &c), &r)| c - (f64::from(x) - shrink(r, beta, f64::from(o.p))) / s)
            .sum::<f64>()
            / n;
        beta *= f64::from(o.kappa);
    }
    best.1 as f32
}

/// The generalized soft-thresholding operator of the l_p norm.
fn shrink(x: f64, beta: f64, p: f64) -> f64 {
    let a = x.abs();
    x.signum() * (a - (a + 1e-8).powf(p - 1.0) / beta).max(0.0)
}

/// `q` with its zeros rounded to integers and its codes chosen again for them (for formats that
/// store integer zeros).
pub fn round_zeros(q: BlockWeights, w: &[f32]) -> BlockWeights {
    let zeros: Vec<f32> = q
        .zeros
        .iter()
        .map(|z| z.round_ties_even().clamp(0.0, q.scheme.qmax()))
        .collect();
    BlockWeights::nearest(w, q.k, q.n, q.scheme, q.scales, zeros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weight_only::blocks::{rtn, BlockRange};

    #[test]
    fn hqq_lowers_the_mean_absolute_error_of_min_max() {
        let mut seed = 3u64;
        let w: Vec<f32> = (0..128 * 16)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let u = (seed >> 40) as f32 / (1u64 << 24) as f32;
                // Heavy tails: a few large weights among small ones.
                (u - 0.5).powi(3) * 8.0
            })
            .collect();
        let scheme = BlockScheme {
            bits: 3,
            block: 32,
            symmetric: false,
            range: BlockRange::MinMax,
        };
        let mae = |q: &[f32]| w.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f32>();
        let plain = mae(&rtn(&w, 128, 16, scheme).dequantize());
        let h = hqq(&w, 128, 16, scheme, &Options::default());
        assert!(!h.integral_zeros());
        let fitted = mae(&h.dequantize());
        assert!(fitted < 0.995 * plain, "{fitted} vs {plain}");
        let rounded = round_zeros(h, &w);
        assert!(rounded.integral_zeros());
    }
}
