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
    /// The upper triangle of Σ XᵀX, `[K, K]`.
    h: Vec<f64>,
    abs: Vec<f64>,
    rows: usize,
}

impl Total {
    pub(super) fn new(k: usize) -> Total {
        Total {
            h: vec![0f64; k * k],
            abs: vec![0f64; k],
            rows: 0,
        }
    }

    pub(super) fn add(&mut self, g: Gram) {
        for (a, b) in self.h.iter_mut().zip(&g.xtx) {
            *a += f64::from(*b);
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
        let k = abs.len();
        // Only the upper triangle was summed.
        for a in 0..k {
            for b in 0..a {
                h[a * k + b] = h[b * k + a];
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
pub fn output_sqnr_db(h: &[f64], w: &[f32], q: &[f32], k: usize, n: usize) -> f64 {
    // Element by element, not as f64 copies of W and W − Ŵ: an LM head's would be 2 × 74 MB on
    // a 15M-parameter model, the largest allocation of its quantization.
    let signal = quadratic_of(h, k, n, |i| f64::from(w[i]));
    let noise = quadratic_of(h, k, n, |i| f64::from(w[i] - q[i]));
    10.0 * (signal / noise).log10()
}

/// Σ_j v_jᵀHv_j over the columns of `v` (`[K, N]`), row by row of H, summed in a fixed order:
/// with v = W − Ŵ, the layer's squared output error on the inputs H was collected on.
pub fn quadratic(h: &[f64], v: &[f64], k: usize, n: usize) -> f64 {
    quadratic_of(h, k, n, |i| v[i])
}

/// [`quadratic`] of the `[K, N]` matrix whose element `i` (row-major) is `v(i)`.
fn quadratic_of(h: &[f64], k: usize, n: usize, v: impl Fn(usize) -> f64 + Sync) -> f64 {
    let rows: Vec<f64> = (0..k)
        .into_par_iter()
        .map(|a| {
            let mut hv = vec![0f64; n];
            for b in 0..k {
                let c = h[a * k + b];
                if c != 0.0 {
                    for (j, y) in hv.iter_mut().enumerate() {
                        *y += c * v(b * n + j);
                    }
                }
            }
            hv.iter().enumerate().map(|(j, y)| y * v(a * n + j)).sum()
        })
        .collect();
    rows.iter().sum()
}
