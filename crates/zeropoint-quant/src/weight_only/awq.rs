//! AWQ, activation-aware weight quantization (Lin et al. 2023, arXiv 2306.00978): the few input
//! channels with large activations carry most of a layer's output, so their weights should be
//! quantized more finely. Scaling input channel k of the weight up by s_k (and the input down
//! by the same s_k) leaves the float layer unchanged, but shrinks those weights' relative
//! rounding error:
//!
//! ```text
//! y = (x / s) · Q(diag(s) W)        s = s_x^α / √(max s_x^α · min s_x^α)
//! ```
//!
//! with s_x the mean |x_k| on calibration data and α searched on a grid of 20 over [0, 1) for
//! the least output error Σ_j δ_jᵀHδ_j, δ = W − diag(1/s)·Q(diag(s)W), summed over the layers
//! that read the same input (the query, key and value projections share one s) and over at most
//! 128 evenly spaced output columns of each. α = 0 (s = 1, plain rounding) is a candidate, so the
//! search never makes a layer worse on its data.
//!
//! The 1/s goes where the float model stays the same (crate::channel_scaling): into the op
//! producing the input when it can absorb it, else into a Mul inserted before the layers.
//!
//! [`clip`] then runs the paper's clipping search ([`zeropoint_core::awq::clip_rows`]) on each
//! layer's blocks before they are rounded to nearest: each block of an output column clipped to
//! the ratio of its largest magnitude, in 1, 0.95, ..., 0.55, with the least output error.

use std::collections::HashMap;

use zeropoint_graph::graph::Names;
use zeropoint_graph::Graph;

use zeropoint_core::awq::{clip_rows, scales, Clipped};

use crate::channel_scaling::{apply, columns, groups_by_input, scale_rows, shared_weights};
use crate::error::Result;
use crate::linear_layers::transpose;
use crate::weight_only::blocks::{rtn, BlockScheme};
use crate::weight_only::hessian::{quadratic, Stats};
use crate::weight_only::{weight_kn, Site};

/// AWQ's search grid: α ∈ {0, 1/grid, ..., (grid − 1)/grid}; and whether the clipping search
/// runs (with rounding to nearest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub grid: usize,
    pub clip: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            grid: 20,
            clip: true,
        }
    }
}

/// What AWQ did for the layers reading one input.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scaled {
    pub input: String,
    pub layers: Vec<String>,
    pub alpha: f64,
    /// The output error (Σ δᵀHδ over the layers) of plain rounding, and with the chosen scales.
    pub error_before: f64,
    pub error_after: f64,
    /// Where 1/s went ([`crate::channel_scaling::apply`]'s words), or "" when α = 0.
    pub folded_into: String,
}

/// Rescales the weights of the layers in `sites` (MatMul and Gemm; tables are left alone) and
/// folds the inverse scales into `graph`, updating `stats` to the layers' new inputs.
pub fn awq(
    graph: &mut Graph,
    sites: &[Site],
    stats: &mut HashMap<String, Stats>,
    scheme: BlockScheme,
    opts: &Options,
) -> Result<Vec<Scaled>> {
    let groups = groups_by_input(sites);
    let shared = shared_weights(graph, sites);
    let mut names = Names::new(graph);
    let mut report = Vec::new();
    for (input, group) in groups {
        if group.iter().any(|s| shared.contains(&s.weight)) {
            continue;
        }
        let Some(st) = stats.get(&input) else {
            continue;
        };
        let weights: Vec<Vec<f32>> = group
            .iter()
            .map(|s| weight_kn(graph, s).map(|w| w.into_owned()))
            .collect::<Result<_>>()?;
        let (alpha, s, before, after) = search(&weights, &group, st, scheme, opts);
        let mut scaled = Scaled {
            input: input.clone(),
            layers: group.iter().map(|s| s.name.clone()).collect(),
            alpha,
            error_before: before,
            error_after: after,
            folded_into: String::new(),
        };
        if alpha > 0.0 {
            let st = stats.remove(&input).expect("looked up above");
            let layers = (input.as_str(), group.as_slice(), weights.as_slice());
            let (new_input, into) = apply(graph, layers, &s, (&mut names, "awq"))?;
            stats.insert(new_input, rescaled(st, &s));
            scaled.folded_into = into;
        }
        report.push(scaled);
    }
    graph.sort()?;
    Ok(report)
}

/// Whether the clipping search runs on a layer: not on the query and key projections, whose
/// error passes through the attention scores' product, which a layer's own output error does not
/// see (the reference code skips them by the same names); and only where K is whole blocks.
pub fn clippable(site: &Site, block: usize) -> bool {
    let name = format!("{} {}", site.name, site.weight).to_lowercase();
    let qk = ["q_proj", "k_proj", "query", "key", "wqkv"];
    site.op != zeropoint_graph::Op::Gather
        && site.k.is_multiple_of(block)
        && !qk.iter().any(|p| name.contains(p))
}

/// AWQ's clipping search on one layer's `[K, N]` weight `w` with its input's Hessian `h`: each
/// output column's blocks clipped where that lowers the output error of rounding to nearest.
/// The result is in the same layout.
pub fn clip(w: &[f32], site: &Site, h: &[f64], scheme: BlockScheme) -> Result<Clipped, String> {
    let (k, n) = (site.k, site.n);
    let round = |rows: &[f32]| {
        let m = rows.len() / k;
        let q = rtn(&transpose(rows, m, k), k, m, scheme).dequantize();
        Ok(transpose(&q, k, m))
    };
    let mut c = clip_rows(&transpose(w, k, n), k, scheme.block, h, &round)?;
    c.w = transpose(&c.w, n, k);
    Ok(c)
}

/// Output columns the search measures a layer on, at most: the error of a column depends only on
/// that column's weights (blocks run along K), so an evenly spaced subset of a wide layer (an LM
/// head of 49152 outputs) ranks the candidates as the whole does, at a fraction of the cost.
const SEARCH_COLUMNS: usize = 128;

/// The best α, its scales, and the group's output error at α = 0 and at the best α (on at most
/// [`SEARCH_COLUMNS`] columns of each layer).
fn search(
    weights: &[Vec<f32>],
    group: &[&Site],
    st: &Stats,
    scheme: BlockScheme,
    opts: &Options,
) -> (f64, Vec<f32>, f64, f64) {
    let k = group[0].k;
    let h = st.full();
    let sampled: Vec<(Vec<f32>, usize)> = group
        .iter()
        .zip(weights)
        .map(|(site, w)| columns(w, k, site.n, SEARCH_COLUMNS))
        .collect();
    let error = |s: &[f32]| -> f64 {
        sampled
            .iter()
            .map(|(w, n)| {
                let n = *n;
                let up = scale_rows(w, s, n);
                let q = rtn(&up, k, n, scheme).dequantize();
                let delta: Vec<f64> = (w.iter().zip(&q).enumerate())
                    .map(|(i, (&a, &b))| f64::from(a) - f64::from(b / s[i / n]))
                    .collect();
                quadratic(&h, &delta, k, n)
            })
            .sum()
    };
    let ones = vec![1f32; k];
    let plain = error(&ones);
    let mut best = (0.0, ones, plain);
    for a in 1..opts.grid.max(1) {
        let alpha = a as f64 / opts.grid as f64;
        let s = scales(&st.abs_mean, alpha);
        let e = error(&s);
        if e < best.2 {
            best = (alpha, s, e);
        }
    }
    (best.0, best.1, plain, best.2)
}

/// The statistics of x / s: H' = diag(1/s)·H·diag(1/s), mean |x_k| / s_k.
fn rescaled(st: Stats, s: &[f32]) -> Stats {
    let k = s.len();
    let mut upper = st.upper;
    let mut packed = upper.iter_mut();
    for a in 0..k {
        for b in a..k {
            let v = packed.next().expect("K(K+1)/2 values");
            *v = (f64::from(*v) / (f64::from(s[a]) * f64::from(s[b]))) as f32;
        }
    }
    let abs_mean = st
        .abs_mean
        .iter()
        .zip(s)
        .map(|(m, v)| m / f64::from(*v))
        .collect();
    Stats { upper, abs_mean }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_layers_are_searched_on_evenly_spaced_columns() {
        let (k, n) = (3, 1000);
        let w: Vec<f32> = (0..k * n).map(|i| i as f32).collect();
        let (sub, m) = columns(&w, k, n, SEARCH_COLUMNS);
        assert_eq!(m, SEARCH_COLUMNS);
        // Row 1, picked column 127: original column 127 * 1000 / 128 = 992.
        assert_eq!(sub[SEARCH_COLUMNS + 127], (n + 992) as f32);
        assert_eq!(
            columns(&w[..3 * 10], 3, 10, SEARCH_COLUMNS),
            (w[..30].to_vec(), 10)
        );
    }
}
