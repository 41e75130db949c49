//! AWQ's scale search (Lin et al. 2023, arXiv 2306.00978, §3.2) inside ggml's block formats.
//!
//! The matrices that read one input (a layer's q, k and v projections; its gate and up
//! projections; its down projection) have their input channels scaled up by
//! s = [`zeropoint_core::awq::scales`] and the input scaled down by the same s, which leaves the
//! float model unchanged (the 1/s goes into the RMSNorm weight before them, or into the up
//! projection's rows before the down projection: see `llama::calibrate`). The channels whose
//! activations are large then round more finely. α is searched on a grid of [`GRID`] over [0, 1)
//! for the least output error Σ_r δ_rᵀHδ_r, δ = w − Q(w·s)/s, summed over the matrices, where H
//! is the Hessian Σ x xᵀ of their input on calibration text and Q rounds to the matrix's planned
//! ggml type, weighted by the scaled input's mean square (as llama-quantize weighs by an
//! importance matrix). α = 0 (s = 1) is a candidate, so the search never makes a group worse on
//! its data.
//!
//! [`clip`] runs AWQ's clipping search ([`zeropoint_core::awq::clip_rows`]) on a matrix in its
//! planned type, in groups of [`CLIP_GROUP`].

use zeropoint_core::ggml::{self, GgmlType};

use crate::matmul::{product, Strided};

/// AWQ's search grid: α ∈ {0, 1/GRID, ..., (GRID − 1)/GRID}, as in the reference code.
pub const GRID: usize = 20;

/// Rows the search measures a matrix on, at most: ggml's blocks run along a row, so a row's error
/// depends only on that row's weights, and evenly spaced rows rank the candidates as the whole
/// matrix does, at a fraction of the cost.
const SEARCH_ROWS: usize = 128;

/// A matrix that reads the input being scaled: its planned type and its weights (`rows × cols`,
/// ggml's layout: one row per output).
pub struct Matrix<'a> {
    pub ty: GgmlType,
    pub w: &'a [f32],
}

/// What the search chose for one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub alpha: f64,
    pub scales: Vec<f32>,
    /// The output error of plain rounding (α = 0) and with the chosen scales.
    pub error_before: f64,
    pub error_after: f64,
}

/// The α with the least output error for `matrices` (each `cols` wide), given their input's mean
/// |x| per channel and its Hessian `h` (`cols × cols`). Errors name what could not be rounded.
pub fn search(
    matrices: &[Matrix],
    cols: usize,
    abs_mean: &[f64],
    h: &[f64],
) -> Result<Found, String> {
    if abs_mean.len() != cols || h.len() != cols * cols {
        return Err(format!(
            "AWQ: {} channel means and {} Hessian entries for {cols} inputs",
            abs_mean.len(),
            h.len()
        ));
    }
    let sampled: Vec<(GgmlType, Vec<f32>)> = matrices
        .iter()
        .map(|m| (m.ty, evenly_spaced_rows(m.w, cols)))
        .collect();
    let h32: Vec<f32> = h.iter().map(|&v| v as f32).collect();
    let diag: Vec<f64> = (0..cols).map(|j| h[j * cols + j]).collect();
    let error = |s: &[f32]| -> Result<f64, String> {
        let importance: Vec<f32> = (diag.iter().zip(s))
            .map(|(&d, &s)| (d / (f64::from(s) * f64::from(s))) as f32)
            .collect();
        let mut total = 0.0;
        for (ty, w) in &sampled {
            let delta = rounding_error(*ty, w, cols, s, &importance)?;
            total += quadratic(&delta, &h32, cols);
        }
        Ok(total)
    };
    let ones = vec![1f32; cols];
    let plain = error(&ones)?;
    let mut best = (0.0, ones, plain);
    for a in 1..GRID {
        let alpha = a as f64 / GRID as f64;
        let s = zeropoint_core::awq::scales(abs_mean, alpha);
        let e = error(&s)?;
        if e < best.2 {
            best = (alpha, s, e);
        }
    }
    Ok(Found {
        alpha: best.0,
        scales: best.1,
        error_before: plain,
        error_after: best.2,
    })
}

/// Weights per clipping group: ggml's smallest block with its own scale (the legacy formats'
/// blocks, the K-quants' sub-blocks of 32; Q2_K, Q3_K and Q6_K scale 16 at a time, and share
/// one ratio per pair).
pub const CLIP_GROUP: usize = 32;

/// `w` (rows of `cols`) clipped group by group where that lowers the output error measured with
/// the Hessian `h` of its input, rounded to `ty` weighted by `importance` as `quantize` will
/// round it.
pub fn clip(
    ty: GgmlType,
    w: &[f32],
    cols: usize,
    h: &[f64],
    importance: &[f32],
) -> Result<zeropoint_core::awq::Clipped, String> {
    let round = |rows: &[f32]| {
        ggml::quantize_rows_weighted(ty, rows, cols, importance)
            .and_then(|q| ggml::dequantize_rows(ty, &q, cols))
            .map_err(|e| format!("AWQ clipping: {ty}: {e}"))
    };
    zeropoint_core::awq::clip_rows(w, cols, CLIP_GROUP, h, &round)
}

/// At most [`SEARCH_ROWS`] evenly spaced rows of `w` (all of them when it has no more).
fn evenly_spaced_rows(w: &[f32], cols: usize) -> Vec<f32> {
    let rows = w.len() / cols.max(1);
    let m = rows.min(SEARCH_ROWS);
    (0..m)
        .flat_map(|i| {
            let r = i * rows / m;
            w[r * cols..(r + 1) * cols].iter().copied()
        })
        .collect()
}

/// δ = w − Q(w·s)/s, Q rounding each row to `ty` weighted by `importance`.
fn rounding_error(
    ty: GgmlType,
    w: &[f32],
    cols: usize,
    s: &[f32],
    importance: &[f32],
) -> Result<Vec<f32>, String> {
    let up: Vec<f32> = (w.iter().enumerate())
        .map(|(i, &v)| v * s[i % cols])
        .collect();
    let q = ggml::quantize_rows_weighted(ty, &up, cols, importance)
        .and_then(|q| ggml::dequantize_rows(ty, &q, cols))
        .map_err(|e| format!("AWQ: {ty}: {e}"))?;
    Ok((w.iter().zip(&q).enumerate())
        .map(|(i, (&a, &b))| a - b / s[i % cols])
        .collect())
}

/// Σ_r δ_rᵀHδ_r over the rows of `delta` (`rows × cols`).
fn quadratic(delta: &[f32], h: &[f32], cols: usize) -> f64 {
    let rows = delta.len() / cols;
    let mut dh = vec![0f32; delta.len()];
    let lhs = Strided::rows(delta, cols);
    product(
        (rows, cols, cols),
        &mut dh,
        cols,
        lhs,
        Strided::rows(h, cols),
        1.0,
        true,
    );
    dh.iter()
        .zip(delta)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs where two channels carry large activations: AWQ finds α > 0 and lowers the output
    /// error measured independently (in f64 on the activations themselves), never raising it.
    #[test]
    fn busy_channels_get_finer_rounding() {
        let (cols, rows, tokens) = (64, 32, 256);
        let mut uniform = crate::uniform(9);
        let mut next = || f64::from(uniform());
        let x: Vec<f64> = (0..tokens * cols)
            .map(|i| next() * if i % cols < 2 { 40.0 } else { 1.0 })
            .collect();
        let w: Vec<f32> = (0..rows * cols).map(|_| next() as f32).collect();
        let mut h = vec![0f64; cols * cols];
        let mut abs_mean = vec![0f64; cols];
        for t in x.chunks_exact(cols) {
            for (a, &xa) in t.iter().enumerate() {
                abs_mean[a] += xa.abs() / tokens as f64;
                for (b, &xb) in t.iter().enumerate() {
                    h[a * cols + b] += xa * xb;
                }
            }
        }
        let output_error = |s: &[f32]| -> f64 {
            let diag: Vec<f32> = (0..cols)
                .map(|j| (h[j * cols + j] / f64::from(s[j] * s[j])) as f32)
                .collect();
            let d = rounding_error(GgmlType::Q4_0, &w, cols, s, &diag).unwrap();
            x.chunks_exact(cols)
                .map(|t| {
                    d.chunks_exact(cols)
                        .map(|dr| {
                            let y: f64 = dr.iter().zip(t).map(|(&a, &b)| f64::from(a) * b).sum();
                            y * y
                        })
                        .sum::<f64>()
                })
                .sum()
        };
        let m = [Matrix {
            ty: GgmlType::Q4_0,
            w: &w,
        }];
        let found = search(&m, cols, &abs_mean, &h).unwrap();
        assert!(found.alpha > 0.0, "{found:?}");
        let (before, after) = (output_error(&vec![1.0; cols]), output_error(&found.scales));
        assert!(after < 0.8 * before, "{after} vs {before}");
        let rel = |a: f64, b: f64| (a - b).abs() / b;
        assert!(rel(found.error_before, before) < 1e-3 && rel(found.error_after, after) < 1e-3);
    }
}
