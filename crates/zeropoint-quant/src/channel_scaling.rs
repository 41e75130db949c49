//! Moving a per-input-channel scale s from a layer's input into its weight, which leaves the
//! float model unchanged: y = (x / s) · (diag(s) W). AWQ (weight-only) and SmoothQuant (static
//! and dynamic W8A8) choose s differently and share how it is applied:
//!
//! - the weights of every layer reading x (MatMul, Gemm) get their rows times s;
//! - 1/s goes into the op producing x when only these layers read x: a LayerNormalization
//!   (its scale and bias), a Mul by a per-channel constant (the γ of an RMSNorm written out in
//!   elementary ops, as exported decoders have it), or attention's context (the heads of
//!   `softmax(QKᵀ)·V` merged back), whose channel j is channel j of the value projection, so
//!   that W_v's column j and b_v[j] take 1/s_j; otherwise into a Mul inserted before the
//!   layers, which the other readers of x (a residual Add) do not see. Not into a GELU's final
//!   `· 0.5`, though it could absorb it: ONNX Runtime fuses a GELU only with a scalar there, and
//!   the unfused one cost more than the Mul (MiniLM-L3). Nor into the up projection behind
//!   SwiGLU's product before a down projection: the inserted Mul is what keeps static
//!   placement from quantizing the SwiGLU chain, which cost stories15M 0.36% perplexity.

use std::collections::{HashMap, HashSet};

use zeropoint_graph::graph::Names;
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::{DType, RawTensor};

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
    let stored = graph
        .initializers
        .iter_mut()
        .find(|t| t.name == site.weight);
    if let Some(t) = stored.filter(|t| t.dtype == DType::F32 && t.len() == w.len()) {
        // In place: a copy of a weight beside the copies the search holds was the peak of
        // AWQ on an LM head. Element i of the stored weight is row i / N of [K, N], or
        // column i % K of the transposed [N, K].
        for (i, v) in t.data.chunks_exact_mut(4).enumerate() {
            let r = if site.transposed { i % site.k } else { i / n };
            let x = f32::from_le_bytes([v[0], v[1], v[2], v[3]]) * s[r];
            v.copy_from_slice(&x.to_le_bytes());
        }
        return;
    }
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
/// new input and where 1/s went ("LayerNormalization <name>", "the constant of Mul <name>",
/// "the value projection <name>", or "Mul <name>" for an inserted one).
pub fn apply(
    graph: &mut Graph,
    (input, group, weights): (&str, &[&Site], &[Vec<f32>]),
    s: &[f32],
    (names, tag): (&mut Names, &str),
) -> Result<(String, String)> {
    let mut written = HashSet::new();
    for (site, w) in group.iter().zip(weights) {
        // Two layers of one weight scale it once.
        if written.insert(site.weight.as_str()) {
            write_scaled(graph, site, w, s);
        }
    }
    let inverse: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    if only_group_reads(graph, input, group) {
        let folded = fold_into_producer(graph, input, &inverse)
            .or_else(|| fold_into_gain(graph, input, &inverse))
            .or_else(|| fold_into_values(graph, input, &inverse));
        if let Some(done) = folded {
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

/// The nodes reading `value`.
fn readers<'g>(graph: &'g Graph, value: &'g str) -> impl Iterator<Item = &'g Node> {
    (graph.nodes.iter()).filter(move |n| n.inputs.iter().any(|i| i == value))
}

/// The node whose first output is `value`.
fn producer<'g>(graph: &'g Graph, value: &str) -> Option<&'g Node> {
    (graph.nodes.iter()).find(|n| n.outputs.first().is_some_and(|o| o == value))
}

/// Whether the layers of `group` are all that read `input` (and it is no graph output).
fn only_group_reads(graph: &Graph, input: &str, group: &[&Site]) -> bool {
    let readers: Vec<&Node> = readers(graph, input).collect();
    readers.len() == group.len()
        && readers
            .iter()
            .all(|n| group.iter().any(|s| s.name == n.name))
        && !graph.outputs.iter().any(|o| o.name == input)
}

/// Multiplies the op producing `input` by `inverse` per channel (last axis), if it is a
/// LayerNormalization whose scale and bias are constants only it reads. Where it went, if done.
fn fold_into_producer(graph: &mut Graph, input: &str, inverse: &[f32]) -> Option<String> {
    let node = producer(graph, input)?;
    if node.op != Op::LayerNormalization || node.outputs.iter().skip(1).any(|o| !o.is_empty()) {
        return None;
    }
    let k = inverse.len();
    let params: Vec<String> = (node.inputs.iter().skip(1))
        .filter(|p| !p.is_empty())
        .cloned()
        .collect();
    let only_here = |p: &str| readers(graph, p).count() == 1;
    let usable = params
        .iter()
        .all(|p| only_here(p) && graph.float_initializer(p).is_some_and(|t| t.shape == [k]));
    if !usable {
        return None;
    }
    let done = format!("LayerNormalization {}", node.name);
    for p in &params {
        scale_last_axis(graph, p, inverse)?;
    }
    Some(done)
}

/// Multiplies the constant of the Mul producing `input` by `inverse`, if that constant holds one
/// value per channel (`[K]`, or `[1, …, 1, K]`) and only this Mul reads it: an RMSNorm's γ in a
/// decoder exported op by op. A scalar is left alone: it may be part of a pattern ONNX Runtime
/// fuses (a GELU's `· 0.5`). Where it went, if done.
fn fold_into_gain(graph: &mut Graph, input: &str, inverse: &[f32]) -> Option<String> {
    let k = inverse.len();
    let node = producer(graph, input).filter(|n| n.op == Op::Mul)?;
    let gain = (node.inputs.iter()).find(|i| graph.float_initializer(i).is_some())?;
    let t = graph.float_initializer(gain)?;
    let per_channel = t.shape.last() == Some(&k) && t.shape.iter().rev().skip(1).all(|&d| d == 1);
    let only_here = readers(graph, gain).count() == 1;
    if !per_channel || !only_here || node.inputs.iter().filter(|i| *i == gain).count() != 1 {
        return None;
    }
    let (gain, done) = (gain.clone(), format!("the constant of Mul {}", node.name));
    scale_last_axis(graph, &gain, inverse)?;
    Some(done)
}

/// Multiplies float initializer `name` by `inverse` along its last axis (element i by
/// `inverse[i mod len]`), in place.
fn scale_last_axis(graph: &mut Graph, name: &str, inverse: &[f32]) -> Option<()> {
    let t = graph.initializers.iter_mut().find(|t| t.name == name)?;
    let v: Vec<f32> = (t.to_f32s().iter().enumerate())
        .map(|(i, a)| a * inverse[i % inverse.len()])
        .collect();
    *t = RawTensor::from_f32s(name, &t.shape.clone(), &v);
    Some(())
}

/// Multiplies the value projection behind attention's context `input` by `inverse` per channel,
/// where `input = Reshape(Transpose(MatMul(P, V), [0, 2, 1, 3]), [·, ·, N])` and
/// `V = Transpose(Reshape(MatMul(h, W) + b, [·, ·, H, D]), [0, 2, 1, 3])` with H·D = N: the
/// heads split the projection's N channels in order and the context merges them back in the
/// same order, and `P·V` mixes positions only, so context channel j is W's column j (and b[j])
/// scaled. Every value on the way is read by the next node alone; W and b are float
/// initializers read by their node alone. Where it went, if done.
fn fold_into_values(graph: &mut Graph, input: &str, inverse: &[f32]) -> Option<String> {
    let n = inverse.len();
    let producers = graph.producers();
    let consumers = graph.consumers();
    let sole = |v: &str| consumers.get(v).is_some_and(|c| c.len() == 1);
    let node = |v: &str, op: Op| {
        let &p = producers.get(v)?;
        let node = &graph.nodes[p];
        (node.op == op && sole(&node.outputs[0])).then_some(node)
    };
    let perm = |t: &Node| t.attribute("perm").map(|a| a.ints.clone());
    let shape = |r: &Node| Some(graph.initializer(r.inputs.get(1)?)?.to_i64s());
    let heads = [0, 2, 1, 3].to_vec();

    let merge = node(input, Op::Reshape)?;
    let merged = shape(merge)?;
    let to_heads = node(&merge.inputs[0], Op::Transpose)?;
    let context = node(&to_heads.inputs[0], Op::MatMul)?;
    let values = node(context.inputs.get(1)?, Op::Transpose)?;
    let split = node(&values.inputs[0], Op::Reshape)?;
    let split_shape = shape(split)?;
    let ok = merged.len() == 3
        && merged[2] == n as i64
        && perm(to_heads)? == heads
        && perm(values)? == heads
        && split_shape.len() == 4
        && split_shape[2] > 0
        && split_shape[2] * split_shape[3] == n as i64;
    if !ok {
        return None;
    }
    // The projection: MatMul(h, W), with or without a bias Add after it.
    let (matmul, bias) = match node(&split.inputs[0], Op::Add) {
        Some(add) if add.inputs.len() == 2 => {
            let constant = add
                .inputs
                .iter()
                .position(|i| graph.initializer(i).is_some())?;
            let x = &add.inputs[1 - constant];
            (node(x, Op::MatMul)?, Some(add.inputs[constant].clone()))
        }
        Some(_) => return None,
        None => (node(&split.inputs[0], Op::MatMul)?, None),
    };
    let weight = matmul.inputs.get(1)?.clone();
    let only_here = |p: &str| consumers.get(p).is_some_and(|c| c.len() == 1);
    let w = graph.float_initializer(&weight)?;
    if w.shape.len() != 2 || w.shape[1] != n || !only_here(&weight) {
        return None;
    }
    if let Some(b) = &bias {
        let t = graph.float_initializer(b)?;
        if t.shape != [n] || !only_here(b) {
            return None;
        }
    }
    let done = format!("the value projection {}", matmul.name);
    for p in std::iter::once(&weight).chain(&bias) {
        scale_last_axis(graph, p, inverse)?;
    }
    Some(done)
}
