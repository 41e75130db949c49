//! The Hessian of a linear layer's reconstruction loss ‖XW − XŴ‖² with respect to its weight:
//! H = 2XᵀX / rows, from the layer's inputs on calibration data (every row of every sample: a
//! token of a sequence, a position of a feature map).
//!
//! Each batch's XᵀX is summed in f32 (a batch is a few thousand rows), then added into the f64
//! total in batch order, so the result does not depend on how batches were spread over threads.

use std::collections::HashMap;

use rayon::prelude::*;
use zeropoint_engine::Executor;
use zeropoint_graph::Graph;

use crate::compare::next_batches;
use crate::dataset::Dataset;
use crate::error::{Error, Result};

/// The Hessian of each input value (`name`, K) over `data`: `[K, K]`, by value name.
pub fn collect(
    graph: &Graph,
    inputs: &[(String, usize)],
    data: &mut Dataset,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<HashMap<String, Vec<f64>>> {
    let exec = Executor::new(graph)?;
    let wanted: HashMap<&str, usize> = inputs.iter().map(|(v, k)| (v.as_str(), *k)).collect();
    let mut total: HashMap<String, (Vec<f64>, usize)> = wanted
        .iter()
        .map(|(v, &k)| (v.to_string(), (vec![0f64; k * k], 0)))
        .collect();
    let workers = rayon::current_num_threads().max(1);
    let len = data.len;
    loop {
        let batches = next_batches(data, batch.max(1), workers)?;
        if batches.is_empty() {
            break;
        }
        let parts: Vec<HashMap<String, (Vec<f32>, usize)>> = batches
            .into_par_iter()
            .map(|b| {
                let mut part = HashMap::new();
                exec.run_with(b, &mut |name, v| {
                    if let Some(&k) = wanted.get(name) {
                        let rows = v.with_f32s(|x| gram(x, k))??;
                        part.insert(name.to_string(), rows);
                    }
                    Ok(v)
                })?;
                Ok(part)
            })
            .collect::<Result<_>>()?;
        for part in parts {
            for (name, (g, rows)) in part {
                let (h, n) = total.get_mut(&name).expect("only wanted values are kept");
                for (a, b) in h.iter_mut().zip(&g) {
                    *a += f64::from(*b);
                }
                *n += rows;
            }
        }
        progress(data.consumed(), len);
    }
    total
        .into_iter()
        .map(|(name, (mut h, rows))| {
            if rows == 0 {
                return Err(Error::new(
                    &graph.source,
                    format!("value '{name}' was never computed on the calibration data"),
                ));
            }
            let k = (h.len() as f64).sqrt() as usize;
            // Only the upper triangle was summed.
            for a in 0..k {
                for b in 0..a {
                    h[a * k + b] = h[b * k + a];
                }
            }
            h.iter_mut().for_each(|x| *x *= 2.0 / rows as f64);
            Ok((name, h))
        })
        .collect()
}

/// The upper triangle of XᵀX for `x` seen as rows of `k` values, and the row count.
fn gram(x: &[f32], k: usize) -> Result<(Vec<f32>, usize), String> {
    if k == 0 || !x.len().is_multiple_of(k) {
        return Err(format!(
            "has {} values, not rows of the weight's {k} inputs",
            x.len()
        ));
    }
    if let Some(bad) = x.iter().find(|v| !v.is_finite()) {
        return Err(format!("has a non-finite value ({bad}): check the data"));
    }
    let mut g = vec![0f32; k * k];
    for row in x.chunks_exact(k) {
        for (a, &xa) in row.iter().enumerate() {
            if xa == 0.0 {
                continue;
            }
            for (h, &xb) in g[a * k + a..(a + 1) * k].iter_mut().zip(&row[a..]) {
                *h += xa * xb;
            }
        }
    }
    Ok((g, x.len() / k))
}

/// The output SQNR a dequantized weight `q` gives on the inputs H was collected on:
/// Σ_j w_jᵀHw_j / Σ_j δ_jᵀHδ_j over output columns j, δ = w − q, in dB.
pub fn output_sqnr_db(h: &[f64], w: &[f32], q: &[f32], k: usize, n: usize) -> f64 {
    let signal: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
    let noise: Vec<f64> = w.iter().zip(q).map(|(&a, &b)| f64::from(a - b)).collect();
    10.0 * (quadratic(h, &signal, k, n) / quadratic(h, &noise, k, n)).log10()
}

/// Σ_j v_jᵀHv_j over the columns of `v` (`[K, N]`), row by row of H, summed in a fixed order.
fn quadratic(h: &[f64], v: &[f64], k: usize, n: usize) -> f64 {
    let rows: Vec<f64> = (0..k)
        .into_par_iter()
        .map(|a| {
            let mut hv = vec![0f64; n];
            for b in 0..k {
                let c = h[a * k + b];
                if c != 0.0 {
                    for (y, x) in hv.iter_mut().zip(&v[b * n..(b + 1) * n]) {
                        *y += c * x;
                    }
                }
            }
            hv.iter()
                .zip(&v[a * n..(a + 1) * n])
                .map(|(y, x)| y * x)
                .sum()
        })
        .collect();
    rows.iter().sum()
}
