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
//! The 1/s goes where the float model stays the same: into the LayerNormalization producing
//! the input when only these layers read it (its scale and bias divided by s), else into a Mul
//! inserted before them. The paper's clipping search is not done here.

use std::collections::{HashMap, HashSet};

use zeropoint_graph::graph::Names;
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::RawTensor;

use crate::error::{Error, Result};
use crate::weight_only::blocks::{rtn, BlockScheme};
use crate::weight_only::hessian::{quadratic, Stats};
use crate::weight_only::{transpose, weight_kn, Site};

/// AWQ's search grid: α ∈ {0, 1/grid, ..., (grid − 1)/grid}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub grid: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { grid: 20 }
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
    /// Where 1/s went: "LayerNormalization <name>", "Mul <name>", or "" when α = 0.
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
    let mut groups: Vec<(String, Vec<&Site>)> = Vec::new();
    for s in sites.iter().filter(|s| s.op != Op::Gather) {
        match groups.iter_mut().find(|(input, _)| *input == s.input) {
            Some((_, g)) => g.push(s),
            None => groups.push((s.input.clone(), vec![s])),
        }
    }
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
            .map(|s| weight_kn(graph, s))
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
            for (site, w) in group.iter().zip(&weights) {
                write_scaled(graph, site, w, &s);
            }
            let st = stats.remove(&input).expect("looked up above");
            let (new_input, into) = fold(graph, &input, &group, &s, &mut names)?;
            stats.insert(new_input, rescaled(st, &s));
            scaled.folded_into = into;
        }
        report.push(scaled);
    }
    graph.sort()?;
    Ok(report)
}

/// Weights read by more than one node (tied, or read by another node besides their site): AWQ
/// would have to scale them for every reader at once, so it leaves them alone.
fn shared_weights(graph: &Graph, sites: &[Site]) -> HashSet<String> {
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for n in &graph.nodes {
        for r in n.inputs.iter().filter(|r| !r.is_empty()) {
            *readers.entry(r.as_str()).or_default() += 1;
        }
    }
    sites
        .iter()
        .filter(|s| readers.get(s.weight.as_str()).copied().unwrap_or(0) > 1)
        .map(|s| s.weight.clone())
        .collect()
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
    let sampled: Vec<(Vec<f32>, usize)> = group
        .iter()
        .zip(weights)
        .map(|(site, w)| columns(w, k, site.n))
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
                quadratic(&st.h, &delta, k, n)
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

/// `w` (`[K, N]`) reduced to at most [`SEARCH_COLUMNS`] evenly spaced columns, and their count.
fn columns(w: &[f32], k: usize, n: usize) -> (Vec<f32>, usize) {
    if n <= SEARCH_COLUMNS {
        return (w.to_vec(), n);
    }
    let m = SEARCH_COLUMNS;
    let picked: Vec<usize> = (0..m).map(|i| i * n / m).collect();
    let sub = (0..k)
        .flat_map(|r| picked.iter().map(move |&j| (r, j)))
        .map(|(r, j)| w[r * n + j])
        .collect();
    (sub, m)
}

/// s = s_x^α normalized so that max·min = 1 (the reference implementation's normalization).
fn scales(abs_mean: &[f64], alpha: f64) -> Vec<f32> {
    let s: Vec<f64> = abs_mean.iter().map(|m| m.max(1e-8).powf(alpha)).collect();
    let (lo, hi) = s
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = (lo * hi).sqrt();
    s.iter().map(|v| (v / norm) as f32).collect()
}

/// diag(s)·W for `w` laid out `[K, n]`: row k times s_k.
fn scale_rows(w: &[f32], s: &[f32], n: usize) -> Vec<f32> {
    w.iter().enumerate().map(|(i, &v)| v * s[i / n]).collect()
}

/// Writes diag(s)·W back into the site's weight initializer, in its own layout.
fn write_scaled(graph: &mut Graph, site: &Site, w: &[f32], s: &[f32]) {
    let n = site.n;
    let up = scale_rows(w, s, n);
    let (values, shape) = if site.transposed {
        (transpose(&up, site.k, n), [n, site.k])
    } else {
        (up, [site.k, n])
    };
    if let Some(t) = graph
        .initializers
        .iter_mut()
        .find(|t| t.name == site.weight)
    {
        *t = RawTensor::from_f32s(&site.weight, &shape, &values);
    }
}

/// Divides the input of `group` by `s`: into the LayerNormalization producing it when only the
/// group reads it, else with a Mul the group reads instead. Returns the group's new input and
/// where 1/s went.
fn fold(
    graph: &mut Graph,
    input: &str,
    group: &[&Site],
    s: &[f32],
    names: &mut Names,
) -> Result<(String, String)> {
    let inverse: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    if let Some(name) = fold_into_layer_norm(graph, input, group, &inverse) {
        return Ok((input.to_string(), format!("LayerNormalization {name}")));
    }
    let scale = names.fresh(&format!("{input}_awq_scale"));
    let out = names.fresh(&format!("{input}_awq"));
    let mul = names.fresh(&format!("{input}_awq_Mul"));
    graph
        .initializers
        .push(RawTensor::from_f32s(&scale, &[inverse.len()], &inverse));
    graph
        .nodes
        .push(Node::new(&mul, Op::Mul, &[input, &scale], &[&out]));
    for site in group {
        let source = graph.source.clone();
        let node = (graph.nodes.iter_mut().find(|n| n.name == site.name))
            .ok_or_else(|| Error::new(&source, format!("node '{}' is missing", site.name)))?;
        node.inputs[0] = out.clone();
    }
    Ok((out, format!("Mul {mul}")))
}

/// Scales the LayerNormalization producing `input` (its scale and bias, when constants only it
/// reads) by `inverse`, if only the group reads its output. The name of the node, if done.
fn fold_into_layer_norm(
    graph: &mut Graph,
    input: &str,
    group: &[&Site],
    inverse: &[f32],
) -> Option<String> {
    let readers: Vec<&Node> = graph
        .nodes
        .iter()
        .filter(|n| n.inputs.iter().any(|i| i == input))
        .collect();
    let in_group = |n: &Node| group.iter().any(|s| s.name == n.name);
    if readers.len() != group.len()
        || !readers.iter().all(|n| in_group(n))
        || graph.outputs.iter().any(|o| o.name == input)
    {
        return None;
    }
    let ln = graph
        .nodes
        .iter()
        .find(|n| n.outputs.first().is_some_and(|o| o == input))?;
    if ln.op != Op::LayerNormalization || ln.outputs.iter().skip(1).any(|o| !o.is_empty()) {
        return None;
    }
    let params: Vec<String> = ln
        .inputs
        .iter()
        .skip(1)
        .filter(|p| !p.is_empty())
        .cloned()
        .collect();
    let name = ln.name.clone();
    let only_here = |p: &str| {
        graph
            .nodes
            .iter()
            .filter(|n| n.inputs.iter().any(|i| i == p))
            .count()
            == 1
    };
    let usable = params.iter().all(|p| {
        only_here(p)
            && graph
                .float_initializer(p)
                .is_some_and(|t| t.shape == [inverse.len()])
    });
    if !usable {
        return None;
    }
    for p in &params {
        let t = graph.initializers.iter_mut().find(|t| t.name == *p)?;
        let v: Vec<f32> = t
            .to_f32s()
            .iter()
            .zip(inverse)
            .map(|(a, b)| a * b)
            .collect();
        *t = RawTensor::from_f32s(p, &[v.len()], &v);
    }
    Some(name)
}

/// The statistics of x / s: H' = diag(1/s)·H·diag(1/s), mean |x_k| / s_k.
fn rescaled(st: Stats, s: &[f32]) -> Stats {
    let k = s.len();
    let h = (st.h.iter().enumerate())
        .map(|(i, v)| v / (f64::from(s[i / k]) * f64::from(s[i % k])))
        .collect();
    let abs_mean = st
        .abs_mean
        .iter()
        .zip(s)
        .map(|(m, v)| m / f64::from(*v))
        .collect();
    Stats { h, abs_mean }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_layers_are_searched_on_evenly_spaced_columns() {
        let (k, n) = (3, 1000);
        let w: Vec<f32> = (0..k * n).map(|i| i as f32).collect();
        let (sub, m) = columns(&w, k, n);
        assert_eq!(m, SEARCH_COLUMNS);
        // Row 1, picked column 127: original column 127 * 1000 / 128 = 992.
        assert_eq!(sub[SEARCH_COLUMNS + 127], (n + 992) as f32);
        assert_eq!(columns(&w[..3 * 10], 3, 10), (w[..30].to_vec(), 10));
    }

    #[test]
    fn scales_are_normalized_to_unit_geometric_range() {
        let s = scales(&[0.5, 2.0, 8.0], 0.5);
        let (lo, hi) = (s[0], s[2]);
        assert!((lo * hi - 1.0).abs() < 1e-6, "{s:?}");
        assert!((s[1] / s[0] - 2.0).abs() < 1e-6);
    }
}
