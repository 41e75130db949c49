//! Moving a per-input-channel scale s from a layer's input into its weight, which leaves the
//! float model unchanged: y = (x / s) · (diag(s) W). AWQ (weight-only) and SmoothQuant (static
//! W8A8) choose s differently and share how it is applied:
//!
//! - the weights of every layer reading x (MatMul, Gemm) get their rows times s;
//! - 1/s goes into the LayerNormalization producing x (its scale and bias) when only these
//!   layers read x; otherwise into a Mul inserted before the layers, which the other readers of
//!   x (a residual Add) do not see. Not into a GELU's final `· 0.5`, though it could absorb it:
//!   ONNX Runtime fuses a GELU only with a scalar there, and the unfused one cost more than the
//!   Mul (MiniLM-L3).

use std::collections::{HashMap, HashSet};

use zeropoint_graph::graph::Names;
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::RawTensor;

use crate::error::{Error, Result};
use crate::linear_layers::{transpose, Site};

/// The MatMul and Gemm sites grouped by the input they read (the query, key and value
/// projections read one), in graph order; tables are left out.
pub fn groups_by_input(sites: &[Site]) -> Vec<(String, Vec<&Site>)> {
    let mut groups: Vec<(String, Vec<&Site>)> = Vec::new();
    for s in sites.iter().filter(|s| s.op != Op::Gather) {
        match groups.iter_mut().find(|(input, _)| *input == s.input) {
            Some((_, g)) => g.push(s),
            None => groups.push((s.input.clone(), vec![s])),
        }
    }
    groups
}

/// Weights read by more than one node (tied, or read by another node besides their site):
/// scaling them for one reader would change the others, so they are left alone.
pub fn shared_weights(graph: &Graph, sites: &[Site]) -> HashSet<String> {
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

/// diag(s)·W for `w` laid out `[K, n]`: row k times s_k.
pub fn scale_rows(w: &[f32], s: &[f32], n: usize) -> Vec<f32> {
    w.iter().enumerate().map(|(i, &v)| v * s[i / n]).collect()
}

/// `w` (`[K, N]`) reduced to at most `most` evenly spaced columns, and their count: searches
/// whose error is a sum over columns, each with its own weight parameters, rank candidates on
/// a wide layer (an LM head of 49152 outputs) as on all of it, at a fraction of the cost.
pub fn columns(w: &[f32], k: usize, n: usize, most: usize) -> (Vec<f32>, usize) {
    let m = n.min(most);
    let picked: Vec<usize> = (0..m).map(|i| i * n / m).collect();
    let sub = (0..k)
        .flat_map(|r| picked.iter().map(move |&j| (r, j)))
        .map(|(r, j)| w[r * n + j])
        .collect();
    (sub, m)
}

/// Writes diag(s)·W back into the site's weight initializer (`w` is its `[K, N]` value), in its
/// own layout.
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

/// Applies `s` to the layers of `group` reading `input`: their weights (`weights`, each `[K, N]`)
/// times s row by row, and their input divided by s: into the op producing it when it can
/// absorb it, else with a Mul the group reads instead (named after `tag`). Returns the group's
/// new input and where 1/s went ("LayerNormalization <name>", "Mul <name>").
pub fn apply(
    graph: &mut Graph,
    (input, group, weights): (&str, &[&Site], &[Vec<f32>]),
    s: &[f32],
    (names, tag): (&mut Names, &str),
) -> Result<(String, String)> {
    for (site, w) in group.iter().zip(weights) {
        write_scaled(graph, site, w, s);
    }
    let inverse: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    if only_group_reads(graph, input, group) {
        if let Some(done) = fold_into_producer(graph, input, &inverse) {
            return Ok((input.to_string(), done));
        }
    }
    let scale = names.fresh(&format!("{input}_{tag}_scale"));
    let out = names.fresh(&format!("{input}_{tag}"));
    let mul = names.fresh(&format!("{input}_{tag}_Mul"));
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

/// Whether the layers of `group` are all that read `input` (and it is no graph output).
fn only_group_reads(graph: &Graph, input: &str, group: &[&Site]) -> bool {
    let readers: Vec<&Node> = graph
        .nodes
        .iter()
        .filter(|n| n.inputs.iter().any(|i| i == input))
        .collect();
    readers.len() == group.len()
        && readers
            .iter()
            .all(|n| group.iter().any(|s| s.name == n.name))
        && !graph.outputs.iter().any(|o| o.name == input)
}

/// Multiplies the op producing `input` by `inverse` per channel (last axis), if it is a
/// LayerNormalization whose scale and bias are constants only it reads. Where it went, if done.
fn fold_into_producer(graph: &mut Graph, input: &str, inverse: &[f32]) -> Option<String> {
    let node = graph
        .nodes
        .iter()
        .find(|n| n.outputs.first().is_some_and(|o| o == input))?;
    if node.op != Op::LayerNormalization || node.outputs.iter().skip(1).any(|o| !o.is_empty()) {
        return None;
    }
    let k = inverse.len();
    let params: Vec<String> = (node.inputs.iter().skip(1))
        .filter(|p| !p.is_empty())
        .cloned()
        .collect();
    let only_here = |p: &str| {
        graph
            .nodes
            .iter()
            .filter(|n| n.inputs.iter().any(|i| i == p))
            .count()
            == 1
    };
    let usable = params
        .iter()
        .all(|p| only_here(p) && graph.float_initializer(p).is_some_and(|t| t.shape == [k]));
    if !usable {
        return None;
    }
    let done = format!("LayerNormalization {}", node.name);
    for p in &params {
        let t = graph.initializers.iter_mut().find(|t| t.name == *p)?;
        let v: Vec<f32> = t
            .to_f32s()
            .iter()
            .zip(inverse)
            .map(|(a, b)| a * b)
            .collect();
        *t = RawTensor::from_f32s(p, &[k], &v);
    }
    Some(done)
}
