//! The Hessian of a linear layer's reconstruction loss ‖XW − XŴ‖² with respect to its weight:
//! H = 2XᵀX / rows, from the layer's inputs on calibration data (every row of every sample: a
//! token of a sequence, a position of a feature map).
//!
//! Each batch's XᵀX is computed in f32 and added into the input's total in batch order, so the
//! result does not depend on how batches were spread over threads. Only the upper triangle is
//! kept, packed, in f32 (as GPTQ's reference sums it): a 0.5B decoder has 24 FFN inputs 4864
//! wide, and their full f64 matrices were 4.5 GB beside a 2.5 GB model. The mean magnitude of
//! each input channel, which AWQ scales by, comes from the same pass.

use std::collections::HashMap;

use rayon::prelude::*;
use zeropoint_core::linalg::gemm;
use zeropoint_graph::Graph;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::layer_inputs::{check_rows, summarize};
use crate::weight_only::blocks::BlockWeights;

/// What the calibration data says about one layer input.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// H = 2XᵀX / rows: its upper triangle, packed row by row (row a holds columns a..K).
    pub upper: Vec<f32>,
    /// mean |x_k| over rows, per input channel.
    pub abs_mean: Vec<f64>,
}

impl Stats {
    /// H as a whole symmetric `[K, K]` matrix in f64, for the one layer being quantized.
    pub fn full(&self) -> Vec<f64> {
        let k = self.abs_mean.len();
        let mut h = vec![0f64; k * k];
        let mut packed = self.upper.iter();
        for a in 0..k {
            for b in a..k {
                let v = f64::from(*packed.next().expect("K(K+1)/2 values"));
                h[a * k + b] = v;
                h[b * k + a] = v;
            }
        }
        h
    }
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
    /// Σ XᵀX, packed as [`Stats::upper`].
    h: Vec<f32>,
    abs: Vec<f64>,
    rows: usize,
}

impl Total {
    pub(super) fn new(k: usize) -> Total {
        Total {
            h: vec![0f32; k * (k + 1) / 2],
            abs: vec![0f64; k],
            rows: 0,
        }
    }

    pub(super) fn add(&mut self, g: Gram) {
        for (a, b) in self.h.iter_mut().zip(&g.xtx) {
            *a += b;
        }
        for (a, b) in self.abs.iter_mut().zip(&g.abs) {
            *a += b;
        }
        self.rows += g.rows;
    }

    /// H = 2XᵀX / rows and the mean |x| per channel of input `name`.
    pub(super) fn finish(self, graph: &Graph, name: &str) -> Result<Stats> {
        let Total { mut h, abs, rows } = self;
        if rows == 0 {
            return Err(Error::new(
                &graph.source,
                format!("value '{name}' was never computed on the calibration data"),
            ));
        }
        let scale = 2.0 / rows as f64;
        h.iter_mut()
            .for_each(|x| *x = (f64::from(*x) * scale) as f32);
        let abs_mean = abs.iter().map(|a| a / rows as f64).collect();
        Ok(Stats { upper: h, abs_mean })
    }
}

/// One batch's sums over the rows of one input.
pub(super) struct Gram {
    /// XᵀX, packed as [`Stats::upper`].
    xtx: Vec<f32>,
    /// Σ|x_k| per channel.
    abs: Vec<f64>,
    rows: usize,
}

/// Rows of XᵀX computed per gemm call.
const GRAM_ROWS: usize = 64;

/// The sums of `x` seen as rows of `k` values. XᵀX goes [`GRAM_ROWS`] rows at a time, each
/// block X[:, a..a+64]ᵀ · X[:, a..K] one gemm on one thread (blocks in parallel, so the sums do
/// not depend on the thread count): row by row, a 4864-wide input's rank-one updates swept
/// its whole 47 MB triangle from memory for every row of X.
pub(super) fn gram(x: &[f32], k: usize) -> Result<Gram, String> {
    check_rows(x, k)?;
    let rows = x.len() / k;
    let mut abs = vec![0f64; k];
    for row in x.chunks_exact(k) {
        for (a, v) in abs.iter_mut().zip(row) {
            *a += f64::from(v.abs());
        }
    }
    // Each block's stretch of the packed triangle: rows a0..a1, row a holding K − a values.
    let mut xtx = vec![0f32; k * (k + 1) / 2];
    let mut blocks = Vec::new();
    let mut rest = &mut xtx[..];
    for a0 in (0..k).step_by(GRAM_ROWS) {
        let a1 = (a0 + GRAM_ROWS).min(k);
        let len: usize = (a0..a1).map(|a| k - a).sum();
        let (block, after) = rest.split_at_mut(len);
        blocks.push((a0, a1, block));
        rest = after;
    }
    blocks.into_par_iter().for_each(|(a0, a1, block)| {
        let (m, n) = (a1 - a0, k - a0);
        let mut c = vec![0f32; m * n];
        // c[i, j] = Σ_r x[r, a0 + i] · x[r, a0 + j]: lhs Xᵀ (rows of X are its columns).
        let (a, b) = ((&x[a0..], 1, k), (&x[a0..], k, 1));
        gemm((m, n, rows), (&mut c, n), 0.0, (a, b), 1.0);
        // Row i of the block keeps columns a0 + i.. (the upper triangle).
        let mut out = block.iter_mut();
        for i in 0..m {
            for v in &c[i * n + i..(i + 1) * n] {
                *out.next().expect("the block's stretch") = *v;
            }
        }
    });
    Ok(Gram { xtx, abs, rows })
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
/// [`QUADRATIC_COLUMNS`] columns at a time (each chunk's `[K, width]` values computed once, in
/// f64, and HV one gemm): the whole matrix is never held, and H is read once per chunk in
/// cache-sized blocks (row by row, the report's two products took more time than GPTQ itself
/// on a 0.5B decoder). The chunks are fixed and summed in order, so the sum does not depend on
/// the thread count.
fn quadratic_of(h: &[f64], k: usize, n: usize, v: impl Fn(usize, usize) -> f64 + Sync) -> f64 {
    let v = &v;
    let chunks: Vec<f64> = (0..n.div_ceil(QUADRATIC_COLUMNS))
        .into_par_iter()
        .map(|c| {
            let cols = c * QUADRATIC_COLUMNS..((c + 1) * QUADRATIC_COLUMNS).min(n);
            let width = cols.len();
            let vc: Vec<f64> = (0..k)
                .flat_map(|r| cols.clone().map(move |j| v(r, j)))
                .collect();
            let mut hv = vec![0f64; k * width];
            gemm(
                (k, width, k),
                (&mut hv, width),
                0.0,
                ((h, k, 1), (&vc, width, 1)),
                1.0,
            );
            hv.iter().zip(&vc).map(|(y, x)| y * x).sum::<f64>()
        })
        .collect();
    chunks.iter().sum()
}

/// Output columns per chunk of [`quadratic_of`].
const QUADRATIC_COLUMNS: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed sums equal XᵀX summed in f64 row by row, across the gemm blocks' edges, and
    /// the finished H unpacks to the symmetric 2XᵀX / rows.
    #[test]
    fn the_packed_sums_are_xtx() {
        for (k, rows) in [(1, 3), (5, 1), (63, 9), (64, 20), (65, 7), (130, 33)] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 7919 % 257) as f32 - 128.0) / 64.0)
                .collect();
            let g = gram(&x, k).unwrap();
            assert_eq!((g.xtx.len(), g.rows), (k * (k + 1) / 2, rows));
            let xtx = |a: usize, b: usize| -> f64 {
                (0..rows)
                    .map(|r| f64::from(x[r * k + a]) * f64::from(x[r * k + b]))
                    .sum()
            };
            let mut packed = g.xtx.iter();
            for a in 0..k {
                for b in a..k {
                    let (got, want) = (f64::from(*packed.next().unwrap()), xtx(a, b));
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "k {k}: ({a}, {b})"
                    );
                }
            }
            let mut total = Total::new(k);
            total.add(g);
            let graph = Graph {
                source: "m.onnx".into(),
                opset: 17,
                inputs: vec![],
                outputs: vec![],
                initializers: vec![],
                nodes: vec![],
            };
            let h = total.finish(&graph, "x").unwrap().full();
            for (a, b) in [(0, k - 1), (k - 1, 0), (k / 2, k / 3)] {
                let want = 2.0 * xtx(a, b) / rows as f64;
                assert!((h[a * k + b] - want).abs() <= 1e-5 * (1.0 + want.abs()));
            }
        }
    }
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
