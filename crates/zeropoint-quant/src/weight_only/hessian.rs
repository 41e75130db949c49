//! The Hessian of a linear layer's reconstruction loss ‖XW − XŴ‖² with respect to its weight:
//! H = 2XᵀX / rows, from the layer's inputs on calibration data (every row of every sample: a
//! token of a sequence, a position of a feature map).
//!
//! Each batch's XᵀX is summed in f32 (a batch is a few thousand rows), then added into the f64
//! total in batch order, so the result does not depend on how batches were spread over threads.
//! The mean magnitude of each input channel, which AWQ scales by, comes from the same pass.

use std::collections::HashMap;

use rayon::prelude::*;
use zeropoint_graph::Graph;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::layer_inputs::{check_rows, summarize};
use crate::weight_only::blocks::BlockWeights;

/// What the calibration data says about one layer input.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// 2XᵀX / rows, `[K, K]`.
    pub h: Vec<f64>,
    /// mean |x_k| over rows, per input channel.
    pub abs_mean: Vec<f64>,
}

/// The statistics of each input value (`name`, K) over `data`, by value name.
pub fn collect(
    graph: &mut Graph,
    inputs: &[(String, usize)],
    data: &mut Dataset,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<HashMap<String, Stats>> {
    let wanted: HashMap<&str, usize> = inputs.iter().map(|(v, k)| (v.as_str(), *k)).collect();
    let mut total: HashMap<String, Total> = wanted
        .iter()
        .map(|(v, &k)| (v.to_string(), Total::new(k)))
        .collect();
    let mut merge = |name: String, g: Gram| {
        total
            .get_mut(&name)
            .expect("only wanted values are kept")
            .add(g)
    };
    summarize(graph, &wanted, (data, batch), &gram, &mut merge, progress)?;
    total
        .into_iter()
        .map(|(name, t)| Ok((name.clone(), t.finish(graph, &name)?)))
        .collect()
}

/// One input's sums over batches, added in batch order.
pub(super) struct Total {
    /// The upper triangle of Σ XᵀX, packed row by row (row a holds columns a..K): half of a
    /// `[K, K]` matrix, summed for every layer input at once during the calibration pass.
    h: Vec<f64>,
    abs: Vec<f64>,
    rows: usize,
}

impl Total {
    pub(super) fn new(k: usize) -> Total {
        Total {
            h: vec![0f64; k * (k + 1) / 2],
            abs: vec![0f64; k],
            rows: 0,
        }
    }

    pub(super) fn add(&mut self, g: Gram) {
        let k = self.abs.len();
        let upper = (0..k).flat_map(|a| &g.xtx[a * k + a..(a + 1) * k]);
        for (a, b) in self.h.iter_mut().zip(upper) {
            *a += f64::from(*b);
        }
        for (a, b) in self.abs.iter_mut().zip(&g.abs) {
            *a += b;
        }
        self.rows += g.rows;
    }

    /// H = 2XᵀX / rows and the mean |x| per channel of input `name`.
    pub(super) fn finish(self, graph: &Graph, name: &str) -> Result<Stats> {
        let Total {
            h: upper,
            abs,
            rows,
        } = self;
        if rows == 0 {
            return Err(Error::new(
                &graph.source,
                format!("value '{name}' was never computed on the calibration data"),
            ));
        }
        let k = abs.len();
        let mut h = vec![0f64; k * k];
        let mut packed = upper.into_iter();
        for a in 0..k {
            for b in a..k {
                let v = packed.next().unwrap_or_default();
                h[a * k + b] = v;
                h[b * k + a] = v;
            }
        }
        h.iter_mut().for_each(|x| *x *= 2.0 / rows as f64);
        let abs_mean = abs.iter().map(|a| a / rows as f64).collect();
        Ok(Stats { h, abs_mean })
    }
}

/// One batch's sums over the rows of one input.
pub(super) struct Gram {
    /// The upper triangle of XᵀX, `[K, K]`.
    xtx: Vec<f32>,
    /// Σ|x_k| per channel.
    abs: Vec<f64>,
    rows: usize,
}

/// The sums of `x` seen as rows of `k` values.
pub(super) fn gram(x: &[f32], k: usize) -> Result<Gram, String> {
    check_rows(x, k)?;
    let mut g = vec![0f32; k * k];
    let mut abs = vec![0f64; k];
    for row in x.chunks_exact(k) {
        for (a, v) in abs.iter_mut().zip(row) {
            *a += f64::from(v.abs());
        }
        for (a, &xa) in row.iter().enumerate() {
            if xa == 0.0 {
                continue;
            }
            for (h, &xb) in g[a * k + a..(a + 1) * k].iter_mut().zip(&row[a..]) {
                *h += xa * xb;
            }
        }
    }
    Ok(Gram {
        xtx: g,
        abs,
        rows: x.len() / k,
    })
}

/// The output SQNR a dequantized weight `q` gives on the inputs H was collected on:
/// Σ_j w_jᵀHw_j / Σ_j δ_jᵀHδ_j over output columns j, δ = w − q, in dB.
pub fn output_sqnr_db(h: &[f64], w: &[f32], q: &BlockWeights) -> f64 {
    // Element by element, not as f64 copies of W and W − Ŵ nor a dequantized Ŵ: an LM head's
    // would be 2 × 74 and 37 MB on a 15M-parameter model, the largest allocations of its
    // quantization.
    let (k, n) = (q.k, q.n);
    let signal = quadratic_of(h, k, n, |r, j| f64::from(w[r * n + j]));
    let noise = quadratic_of(h, k, n, |r, j| f64::from(w[r * n + j] - q.value(r, j)));
    10.0 * (signal / noise).log10()
}

/// Σ_j v_jᵀHv_j over the columns of `v` (`[K, N]`), row by row of H, summed in a fixed order:
/// with v = W − Ŵ, the layer's squared output error on the inputs H was collected on.
pub fn quadratic(h: &[f64], v: &[f64], k: usize, n: usize) -> f64 {
    quadratic_of(h, k, n, |r, j| v[r * n + j])
}

/// [`quadratic`] of the `[K, N]` matrix whose element at row r, column j is `v(r, j)`, taken
/// 64 columns at a time (each chunk's `[K, 64]` values computed once, in f64): the whole matrix
/// is never held, and a chunk stays in cache while H sweeps it K times. The chunks are fixed and
/// summed in order, so the sum does not depend on the thread count.
fn quadratic_of(h: &[f64], k: usize, n: usize, v: impl Fn(usize, usize) -> f64 + Sync) -> f64 {
    const COLUMNS: usize = 64;
    let v = &v;
    let chunks: Vec<f64> = (0..n.div_ceil(COLUMNS))
        .into_par_iter()
        .map(|c| {
            let cols = c * COLUMNS..((c + 1) * COLUMNS).min(n);
            let width = cols.len();
            let vc: Vec<f64> = (0..k)
                .flat_map(|r| cols.clone().map(move |j| v(r, j)))
                .collect();
            let mut hv = vec![0f64; width];
            let mut total = 0.0;
            for a in 0..k {
                hv.fill(0.0);
                for b in 0..k {
                    let c = h[a * k + b];
                    if c != 0.0 {
                        for (y, x) in hv.iter_mut().zip(&vc[b * width..(b + 1) * width]) {
                            *y += c * x;
                        }
                    }
                }
                total += (hv.iter().zip(&vc[a * width..(a + 1) * width]))
                    .map(|(y, x)| y * x)
                    .sum::<f64>();
            }
            total
        })
        .collect();
    chunks.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weight_only::blocks::{rtn, sqnr_db, BlockRange, BlockScheme};

    /// Σ_j v_jᵀHv_j written out over the whole matrix: the reference for the chunked sum.
    fn naive(h: &[f64], v: &[f64], k: usize, n: usize) -> f64 {
        let mut total = 0.0;
        for j in 0..n {
            for a in 0..k {
                for b in 0..k {
                    total += v[a * n + j] * h[a * k + b] * v[b * n + j];
                }
            }
        }
        total
    }

    #[test]
    fn the_output_error_is_the_whole_matrix_quadratic() {
        // 150 columns: two whole chunks of 64 and a ragged one; H = XᵀX is positive definite.
        let (k, n, rows) = (13, 150, 40);
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((seed >> 40) as f64 / (1u64 << 24) as f64) - 0.5
        };
        let x: Vec<f64> = (0..rows * k).map(|_| next()).collect();
        let h: Vec<f64> = (0..k * k)
            .map(|i| (0..rows).map(|r| x[r * k + i / k] * x[r * k + i % k]).sum())
            .collect();
        let w: Vec<f32> = (0..k * n).map(|_| next() as f32).collect();
        let scheme = BlockScheme {
            bits: 3,
            block: 4,
            symmetric: false,
            range: BlockRange::MinMax,
        };
        let q = rtn(&w, k, n, scheme);
        let d = q.dequantize();
        let wf: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
        let e: Vec<f64> = w.iter().zip(&d).map(|(&a, &b)| f64::from(a - b)).collect();
        let expected = 10.0 * (naive(&h, &wf, k, n) / naive(&h, &e, k, n)).log10();
        let got = output_sqnr_db(&h, &w, &q);
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
        assert!((quadratic(&h, &e, k, n) / naive(&h, &e, k, n) - 1.0).abs() < 1e-12);
        // The weight SQNR read element by element is the dequantized matrix's, bit for bit.
        assert_eq!(q.sqnr_db(&w), sqnr_db(&w, &d));
    }
}
