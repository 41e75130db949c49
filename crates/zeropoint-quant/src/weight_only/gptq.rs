//! GPTQ (Frantar et al. 2022, arXiv 2210.17323, Algorithm 1): quantize a layer's weight one
//! input row at a time, and after each row move its rounding error onto the rows not yet
//! quantized, weighted by the inverse Hessian of the layer's reconstruction loss
//! ‖XW − XŴ‖², H = 2XᵀX over the calibration inputs X.
//!
//! With W laid out `[K, N]` (row k: input feature k, the paper's column), for each row i:
//!
//! ```text
//! q_i = quant(w_i)                  err_i = (w_i − q_i) / U_ii
//! w_r −= U_ir · err_i               for every later row r
//! ```
//!
//! where U is the upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU), computed once after dampening H by
//! `damp` × its mean diagonal. Updates inside a lazy block of rows are applied at once; those to
//! the rows after it are batched once the block is done, as one matrix product (the paper's
//! "lazy batch updates"). A block of the quantization grid takes its scale
//! and zero when its first row is reached, from the rows as updated so far. With act-order the
//! rows go by decreasing Hessian diagonal and the grid's parameters come from the weight before
//! any update ("static groups"), so that blocks stay contiguous in K as runtimes need them.
//!
//! Output columns are independent given U: they are processed in fixed chunks in parallel, so
//! the result does not depend on the thread count.

use rayon::prelude::*;

use zeropoint_core::linalg::{gemm, inverse_cholesky_upper};

use crate::weight_only::blocks::{block_params, code, BlockScheme, BlockWeights};

/// GPTQ's knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Dampening added to H's diagonal, as a fraction of its mean (the paper's 1%).
    pub damp: f64,
    /// Rows by decreasing Hessian diagonal (the paper's "act-order").
    pub act_order: bool,
    /// Rows per lazy batch (the paper's B = 128; rounded up to a multiple of the grid's block).
    pub lazy_block: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            damp: 0.01,
            act_order: false,
            lazy_block: 128,
        }
    }
}

/// Output columns per parallel chunk: wide enough for the row updates to vectorize, narrow
/// enough to spread a layer over the threads.
const COLUMNS: usize = 64;

/// GPTQ of `w` (`[K, N]`) with `h` (`[K, K]`, 2XᵀX / samples). Fails, with the reason, only when
/// the dampened Hessian is not positive definite.
pub fn gptq(
    w: &[f32],
    h: &[f64],
    k: usize,
    n: usize,
    scheme: BlockScheme,
    opts: &Options,
) -> Result<BlockWeights, String> {
    // An input that is always zero carries no information: its weights do not matter, and
    // count as zeros (in each chunk's copy: the whole weight is not copied). Its diagonal
    // becomes 1 so that H stays invertible.
    let dead: Vec<bool> = (0..k).map(|i| h[i * k + i] == 0.0).collect();
    let diag: Vec<f64> = (0..k)
        .map(|i| if dead[i] { 1.0 } else { h[i * k + i] })
        .collect();
    let order: Vec<usize> = if opts.act_order {
        let mut o: Vec<usize> = (0..k).collect();
        o.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
        o
    } else {
        (0..k).collect()
    };
    let fixed = opts.act_order.then(|| {
        let mut live = w.to_vec();
        for i in (0..k).filter(|&i| dead[i]) {
            live[i * n..(i + 1) * n].fill(0.0);
        }
        block_params(&live, k, n, &scheme)
    });
    // H in quantization order, dampened: the one [K, K] copy, which the factorization reuses.
    let mean = order.iter().map(|&i| diag[i]).sum::<f64>() / k as f64;
    let hp: Vec<f64> = (0..k * k)
        .map(|i| {
            let (a, b) = (order[i / k], order[i % k]);
            match a == b {
                true => diag[a] + opts.damp * mean,
                false => h[a * k + b],
            }
        })
        .collect();
    let u = inverse_cholesky_upper(hp, k)?;
    let lazy = opts.lazy_block.max(1).div_ceil(scheme.block) * scheme.block;
    let run = Run {
        u: &u,
        order: &order,
        k,
        scheme,
        lazy,
        fixed: fixed.as_ref(),
        n,
    };
    let chunks: Vec<(Vec<u8>, Vec<f32>, Vec<f32>)> = (0..n.div_ceil(COLUMNS))
        .into_par_iter()
        .map(|c| {
            let cols = c * COLUMNS..((c + 1) * COLUMNS).min(n);
            // The chunk's columns, rows in quantization order.
            let mut wc = Vec::with_capacity(k * cols.len());
            for &r in &order {
                match dead[r] {
                    true => wc.resize(wc.len() + cols.len(), 0.0),
                    false => wc.extend_from_slice(&w[r * n + cols.start..r * n + cols.end]),
                }
            }
            run.chunk(wc, cols)
        })
        .collect();
    Ok(assemble(chunks, k, n, scheme))
}

/// What every column chunk shares.
struct Run<'a> {
    u: &'a [f32],
    order: &'a [usize],
    k: usize,
    n: usize,
    scheme: BlockScheme,
    lazy: usize,
    /// Act-order's parameters, `[blocks, N]`, from the weight before any update.
    fixed: Option<&'a (Vec<f32>, Vec<f32>)>,
}

impl Run<'_> {
    /// Quantizes one chunk of columns (`wc`: `[K, width]`, rows in quantization order): its
    /// codes `[K, width]` in the weight's own row order, and its `[blocks, width]` parameters.
    fn chunk(
        &self,
        mut wc: Vec<f32>,
        cols: std::ops::Range<usize>,
    ) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let (k, width, s) = (self.k, cols.len(), self.scheme);
        let blocks = k.div_ceil(s.block);
        let (mut scales, mut zeros) = (vec![0f32; blocks * width], vec![0f32; blocks * width]);
        if let Some((fs, fz)) = self.fixed {
            for b in 0..blocks {
                scales[b * width..(b + 1) * width]
                    .copy_from_slice(&fs[b * self.n + cols.start..b * self.n + cols.end]);
                zeros[b * width..(b + 1) * width]
                    .copy_from_slice(&fz[b * self.n + cols.start..b * self.n + cols.end]);
            }
        }
        let mut codes = vec![0u8; k * width];
        let qmax = s.qmax();
        let mut err = vec![0f32; self.lazy * width];
        for b0 in (0..k).step_by(self.lazy) {
            let b1 = (b0 + self.lazy).min(k);
            for i in b0..b1 {
                let row = self.order[i];
                let g = row / s.block;
                if self.fixed.is_none() && row.is_multiple_of(s.block) {
                    let end = (i + s.block).min(k);
                    for j in 0..width {
                        let column: Vec<f32> = (i..end).map(|r| wc[r * width + j]).collect();
                        (scales[g * width + j], zeros[g * width + j]) = s.params(&column);
                    }
                }
                let d = self.u[i * k + i];
                let e = &mut err[(i - b0) * width..(i - b0 + 1) * width];
                for j in 0..width {
                    let (sc, z) = (scales[g * width + j], zeros[g * width + j]);
                    let x = wc[i * width + j];
                    let c = code(x, sc, z, qmax);
                    codes[row * width + j] = c;
                    e[j] = (x - (f32::from(c) - z) * sc) / d;
                }
                for r in i + 1..b1 {
                    axpy(&mut wc[r * width..(r + 1) * width], -self.u[i * k + r], e);
                }
            }
            // The lazy batch: the block's errors onto every row after it, one gemm:
            // wc[b1.., :] −= U[b0..b1, b1..]ᵀ · err.
            let (rest, d) = (k - b1, b1 - b0);
            let ut = (&self.u[b0 * k + b1..], 1, k);
            let out = (&mut wc[b1 * width..], width);
            gemm((rest, width, d), out, 1.0, (ut, (&err[..], width, 1)), -1.0);
        }
        (codes, scales, zeros)
    }
}

fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// The chunks' codes and parameters put back into `[K, N]` and `[blocks, N]`.
fn assemble(
    chunks: Vec<(Vec<u8>, Vec<f32>, Vec<f32>)>,
    k: usize,
    n: usize,
    scheme: BlockScheme,
) -> BlockWeights {
    let blocks = k.div_ceil(scheme.block);
    let mut q = BlockWeights {
        k,
        n,
        scheme,
        codes: vec![0; k * n],
        scales: vec![0.0; blocks * n],
        zeros: vec![0.0; blocks * n],
    };
    for (c, (codes, scales, zeros)) in chunks.into_iter().enumerate() {
        let start = c * COLUMNS;
        let width = codes.len() / k;
        for r in 0..k {
            q.codes[r * n + start..r * n + start + width]
                .copy_from_slice(&codes[r * width..(r + 1) * width]);
        }
        for b in 0..blocks {
            q.scales[b * n + start..b * n + start + width]
                .copy_from_slice(&scales[b * width..(b + 1) * width]);
            q.zeros[b * n + start..b * n + start + width]
                .copy_from_slice(&zeros[b * width..(b + 1) * width]);
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weight_only::blocks::{rtn, BlockRange};

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn inverse_cholesky_factor_reproduces_the_inverse() {
        let k = 5;
        let mut seed = 1;
        let a: Vec<f64> = (0..k * k).map(|_| f64::from(lcg(&mut seed))).collect();
        // H = AAᵀ + I is positive definite.
        let h: Vec<f64> = (0..k * k)
            .map(|i| {
                let (r, c) = (i / k, i % k);
                (0..k).map(|m| a[r * k + m] * a[c * k + m]).sum::<f64>()
                    + f64::from(u8::from(r == c))
            })
            .collect();
        let u = inverse_cholesky_upper(h.clone(), k).unwrap();
        // (UᵀU) H = I.
        for r in 0..k {
            for c in 0..k {
                let x: f64 = (0..k)
                    .map(|m| {
                        let uu: f64 = (0..k)
                            .map(|t| f64::from(u[t * k + r]) * f64::from(u[t * k + m]))
                            .sum();
                        uu * h[m * k + c]
                    })
                    .sum();
                assert!(
                    (x - f64::from(u8::from(r == c))).abs() < 1e-5,
                    "({r},{c}) {x}"
                );
            }
            for c in 0..r {
                assert_eq!(u[r * k + c], 0.0);
            }
        }
    }

    #[test]
    fn gptq_lowers_the_output_error_of_round_to_nearest() {
        let (k, n, samples) = (64, 8, 256);
        let mut seed = 7;
        // Correlated inputs: where GPTQ's compensation pays.
        let x: Vec<f32> = (0..samples * k)
            .map(|i| {
                let base = lcg(&mut seed);
                base + if i % k > 0 { 0.5 * (i % 3) as f32 } else { 0.0 }
            })
            .collect();
        let w: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
        let h: Vec<f64> = (0..k * k)
            .map(|i| {
                let (a, b) = (i / k, i % k);
                2.0 * (0..samples)
                    .map(|s| f64::from(x[s * k + a]) * f64::from(x[s * k + b]))
                    .sum::<f64>()
                    / samples as f64
            })
            .collect();
        let scheme = BlockScheme {
            bits: 3,
            block: 16,
            symmetric: false,
            range: BlockRange::MinMax,
        };
        let out_err = |q: &[f32]| -> f64 {
            (0..samples)
                .flat_map(|s| (0..n).map(move |j| (s, j)))
                .map(|(s, j)| {
                    let d: f32 = (0..k)
                        .map(|m| x[s * k + m] * (w[m * n + j] - q[m * n + j]))
                        .sum();
                    f64::from(d).powi(2)
                })
                .sum()
        };
        let plain = out_err(&rtn(&w, k, n, scheme).dequantize());
        for act_order in [false, true] {
            let opts = Options {
                act_order,
                lazy_block: 32,
                ..Default::default()
            };
            let g = gptq(&w, &h, k, n, scheme, &opts).unwrap();
            let e = out_err(&g.dequantize());
            assert!(e < 0.8 * plain, "act_order {act_order}: {e} vs RTN {plain}");
        }
    }
}
