//! Canonicalization: the graph rewrites every later step assumes.
//!
//! - constant folding: a node whose inputs are all constants becomes an initializer (Q/DQ
//!   nodes excepted: in a QDQ model they carry the quantization itself);
//! - nodes that change nothing (`x + 0`, `x · 1` by a 0-d constant, a Cast to its input's type)
//!   removed ([`crate::neutral_ops`]);
//! - layout Transposes moved past element-wise ops to cancel against their inverse
//!   ([`crate::transpose_sink`]: tf2onnx's NHWC chains between NCHW convolutions);
//! - BatchNormalization folded into the Conv, ungrouped ConvTranspose, Gemm or MatMul before it
//!   (white paper §2.3): W' = W·γ/√(σ²+ε) per output channel, b' = (b − μ)·γ/√(σ²+ε) + β,
//!   computed in f64; a MatMul becomes a Gemm to take the bias;
//! - a per-channel (or single) constant Mul after a Conv (or an ungrouped ConvTranspose) is folded
//!   into its weights and bias, and a per-channel constant Add after one becomes its bias
//!   (exporters write a bias, and an inference BatchNormalization as Mul and Add, that way), so
//!   that runtimes fuse the layer into one integer convolution; a constant Add of one value per
//!   column after a rank-2 MatMul with a constant weight makes the two a Gemm
//!   (ONNX Runtime fuses MatMul and Add into a float Gemm first, and then has no integer kernel
//!   for it unless the bias is quantized as a Gemm's is);
//! - a per-channel constant Mul (and Add) that no layer absorbs and whose result only layers
//!   read becomes a 1×1 depthwise Conv ([`crate::scale_shift`]: a pre-activation BatchNorm runs
//!   as one integer convolution);
//! - attention's `scores / √d` folded into the query projection's weight and bias
//!   ([`crate::attention_scale`]);
//! - loop constants: a Loop-carried value that starts as an initializer and that the body passes
//!   on unchanged becomes an initializer of the body (tf2onnx exports an LSTM's weights as such
//!   values of its while loop: as initializers, quantization finds them);
//! - an LSTM, GRU or RNN initial state that is zeros by construction (an Expand of a zero,
//!   sized from the input) is dropped, which is the same state ([`crate::zero_state`]);
//! - dead-node removal: nodes and initializers no graph output depends on;
//! - HardSwish written as its definition, `x · HardSigmoid(x)`, when quantization asks for it.
//!
//! Constant folding runs operators, and BatchNorm folding into a MatMul needs value shapes: both
//! ask the [`Evaluator`] the caller passes (zeropoint-engine's in practice).

use std::collections::{HashMap, HashSet};

use zeropoint_onnx::{DType, RawTensor};

pub use crate::batch_norm::BatchNormStats;
use crate::error::{Error, Result};
use crate::evaluator::Evaluator;
use crate::graph::{float_attribute, Graph, Node};
use crate::op::Op;
use crate::rewrite::{
    absorb, add_f32_initializer, channel_values, constant_operand, rename_inputs, unique_name,
};

/// What canonicalization changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Nodes replaced by initializers.
    pub folded_constants: usize,
    /// (BatchNormalization node, the node it was folded into).
    pub folded_batch_norms: Vec<(String, String)>,
    /// What each folded BatchNormalization said of its output, and each one written as a
    /// depthwise Conv (`scale_shift_convs`), for the algorithms that use it (high-bias
    /// absorption, analytic bias correction, QAT with batch statistics).
    pub batch_norm_stats: Vec<BatchNormStats>,
    /// (Add node, the Conv it was folded into as the bias).
    pub folded_bias_adds: Vec<(String, String)>,
    /// (Mul node, the Conv whose weights and bias it was folded into).
    pub folded_scale_muls: Vec<(String, String)>,
    /// Per-channel Mul (and Add) pairs no layer absorbs, written as depthwise Convs
    /// ([`crate::scale_shift`]): the Mul nodes, which keep their names.
    pub scale_shift_convs: Vec<String>,
    /// Attention's scores scale (Div or Mul of a scalar after the scores MatMul), folded into
    /// the query projection ([`crate::attention_scale`]): the nodes removed.
    pub folded_attention_scales: Vec<String>,
    /// Loop-carried constants made initializers of their loop's body.
    pub hoisted_loop_constants: usize,
    /// Float16 and bfloat16 values widened to float32 before canonicalization
    /// ([`crate::half_precision`]; set by whoever ran it).
    pub half_precision_values: usize,
    /// Reshapes whose shape, computed from their input's own dims, became a constant
    /// (crate::reshape_dims).
    pub static_reshapes: usize,
    /// Recurrent nodes whose zero initial state was dropped ([`crate::zero_state`]).
    pub dropped_zero_states: Vec<String>,
    /// HardSwishes written out as Add, Clip, Mul and Div, made HardSigmoid and Mul
    /// ([`crate::hard_swish`]).
    pub fused_hard_swishes: usize,
    /// GELUs written out as five operators after a layer, made one `Gelu` (opset 20; the graph
    /// moved there if older; [`crate::gelu`]).
    pub fused_gelus: usize,
    /// Adds and Subs of a 0-d zero, Muls and Divs by a 0-d one, Casts to their input's type,
    /// removed ([`crate::neutral_ops`]).
    pub dropped_neutral_ops: Vec<String>,
    /// Layout Transposes removed, moved past element-wise ops until they met their inverse
    /// ([`crate::transpose_sink`]).
    pub cancelled_transposes: usize,
    /// Nodes removed because no output depends on them.
    pub removed_nodes: usize,
    pub removed_initializers: usize,
}

/// Runs every pass, in the order that lets each feed the next.
pub fn canonicalize(graph: &mut Graph, eval: &dyn Evaluator) -> Result<Report> {
    let folded_constants = fold_constants(graph, eval)?;
    // Before the folds: a Cast between a Conv and its bias Add keeps them apart.
    let dropped_neutral_ops = crate::neutral_ops::drop_neutral_ops(graph);
    let cancelled_transposes = crate::transpose_sink::sink_transposes(graph);
    let (mut folded_batch_norms, mut batch_norm_stats) = (Vec::new(), Vec::new());
    let (mut folded_scale_muls, mut folded_bias_adds) = (Vec::new(), Vec::new());
    // Each fold can make another possible: Conv → Add(bias) → BatchNormalization (PaddlePaddle's
    // exports write a ConvTranspose's bias that way) folds its Add first, then its BatchNorm.
    loop {
        let (bns, stats): (Vec<_>, Vec<_>) = fold_batch_norms(graph, eval)?.into_iter().unzip();
        let muls = fold_scale_muls(graph)?;
        let adds = fold_bias_adds(graph)?;
        let done = bns.is_empty() && muls.is_empty() && adds.is_empty();
        folded_batch_norms.extend(bns);
        batch_norm_stats.extend(stats);
        folded_scale_muls.extend(muls);
        folded_bias_adds.extend(adds);
        if done {
            break;
        }
    }
    folded_bias_adds.extend(fold_matmul_bias_adds(graph, eval)?);
    let fused_hard_swishes = crate::hard_swish::fuse_hard_swishes(graph);
    let fused_gelus = crate::gelu::fuse_gelus_after_layers(graph, eval)?;
    let (scale_shift_convs, rewritten_stats): (_, Vec<_>) =
        crate::scale_shift::scale_shift_convs(graph, eval)?
            .into_iter()
            .unzip();
    batch_norm_stats.extend(rewritten_stats.into_iter().flatten());
    let hoisted_loop_constants = hoist_loop_constants(graph);
    let static_reshapes = crate::reshape_dims::copy_dims_in_reshapes(graph);
    let dropped_zero_states = crate::zero_state::drop_zero_initial_states(graph);
    let (mut removed_nodes, mut removed_initializers) = remove_dead(graph);
    // After the dead shape chains are gone: they read the query projection too.
    let folded_attention_scales = crate::attention_scale::fold_attention_scales(graph);
    if !folded_attention_scales.is_empty() {
        let (nodes, initializers) = remove_dead(graph);
        removed_nodes += nodes;
        removed_initializers += initializers;
    }
    let mut report = Report {
        fused_hard_swishes,
        fused_gelus,
        static_reshapes,
        dropped_zero_states,
        dropped_neutral_ops,
        cancelled_transposes,
        folded_constants,
        folded_batch_norms,
        batch_norm_stats,
        folded_bias_adds,
        folded_scale_muls,
        scale_shift_convs,
        folded_attention_scales,
        hoisted_loop_constants,
        half_precision_values: 0,
        removed_nodes,
        removed_initializers,
    };
    for node in &mut graph.nodes {
        for (_, sub) in &mut node.subgraphs {
            canonicalize_subgraph(sub, eval, &mut report)?;
        }
    }
    Ok(report)
}

/// The passes that need no shape inference (a subgraph cannot run on its own: it reads its
/// enclosing graphs' values), on a subgraph and the subgraphs in it: Constant nodes become the
/// subgraph's initializers, so its weights are found like the main graph's.
fn canonicalize_subgraph(g: &mut Graph, eval: &dyn Evaluator, report: &mut Report) -> Result<()> {
    report.folded_constants += fold_constants(g, eval)?;
    report.folded_scale_muls.extend(fold_scale_muls(g)?);
    report.folded_bias_adds.extend(fold_bias_adds(g)?);
    report.hoisted_loop_constants += hoist_loop_constants(g);
    let dropped = crate::zero_state::drop_zero_initial_states(g);
    report.dropped_zero_states.extend(dropped);
    let (nodes, initializers) = remove_dead(g);
    report.removed_nodes += nodes;
    report.removed_initializers += initializers;
    for node in &mut g.nodes {
        for (_, sub) in &mut node.subgraphs {
            canonicalize_subgraph(sub, eval, report)?;
        }
    }
    Ok(())
}

/// Replaces nodes whose inputs are all initializers by initializers holding their outputs. An
/// Identity of an initializer is not copied: its readers read the initializer, so that a weight
/// several layers share (an ALBERT's, through an Identity each) stays one tensor, held and
/// quantized once.
pub fn fold_constants(graph: &mut Graph, eval: &dyn Evaluator) -> Result<usize> {
    let mut known: HashSet<String> = graph.initializers.iter().map(|t| t.name.clone()).collect();
    let outputs: HashSet<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
    let mut kept = Vec::with_capacity(graph.nodes.len());
    let mut folded = 0;
    let mut aliases: HashMap<String, String> = HashMap::new();
    for mut node in std::mem::take(&mut graph.nodes) {
        for input in &mut node.inputs {
            if let Some(to) = aliases.get(input) {
                *input = to.clone();
            }
        }
        let foldable = eval.supports(&node)
            && node.subgraphs.is_empty()
            && !matches!(node.op, Op::QuantizeLinear | Op::DequantizeLinear)
            && node
                .inputs
                .iter()
                .all(|i| i.is_empty() || known.contains(i))
            && !node.outputs.iter().any(|o| outputs.contains(o));
        if !foldable {
            kept.push(node);
            continue;
        }
        if let (Op::Identity, [from], [to]) = (&node.op, &node.inputs[..], &node.outputs[..]) {
            if !from.is_empty() && !to.is_empty() {
                aliases.insert(to.clone(), from.clone());
                known.insert(to.clone());
                folded += 1;
                continue;
            }
        }
        let args: Vec<Option<&RawTensor>> =
            node.inputs.iter().map(|i| graph.initializer(i)).collect();
        let values = eval
            .run_node(&node, &args, graph.opset)
            .map_err(|e| Error::at(&graph.source, node.label(), e))?;
        for (name, v) in node.outputs.iter().zip(values) {
            if !name.is_empty() {
                known.insert(name.clone());
                graph.initializers.push(RawTensor {
                    name: name.clone(),
                    ..v
                });
            }
        }
        folded += 1;
    }
    graph.nodes = kept;
    // Subgraphs read the outer graph's values by name.
    if !aliases.is_empty() {
        rename_inputs(graph, &aliases);
    }
    Ok(folded)
}

/// Makes each Loop-carried value that starts as an initializer of `graph` and that the body
/// passes on unchanged (body output = body input) an initializer of the body, and drops it from
/// the loop's state; readers of its final value read the initializer. Returns how many.
pub fn hoist_loop_constants(graph: &mut Graph) -> usize {
    let mut hoisted = 0;
    let mut finals: HashMap<String, String> = HashMap::new();
    for i in 0..graph.nodes.len() {
        let node = &graph.nodes[i];
        let at = node.subgraphs.iter().position(|(a, _)| a == "body");
        let Some(at) = at.filter(|_| node.op == Op::Loop) else {
            continue;
        };
        let body = &node.subgraphs[at].1;
        let carried = node.inputs.len().saturating_sub(2);
        if body.inputs.len() != carried + 2 || body.outputs.len() < carried + 1 {
            continue;
        }
        // Last first, so that removing one leaves the others' positions.
        let constants: Vec<(usize, RawTensor)> = (0..carried)
            .rev()
            .filter(|&k| body.outputs[k + 1].name == body.inputs[k + 2].name)
            .filter(|&k| {
                let last = node.outputs.get(k);
                last.is_none_or(|o| !graph.outputs.iter().any(|g| &g.name == o))
            })
            .filter_map(|k| Some((k, graph.initializer(&node.inputs[k + 2])?.clone())))
            .collect();
        let node = &mut graph.nodes[i];
        for (k, mut tensor) in constants {
            let initial = node.inputs.remove(k + 2);
            if k < node.outputs.len() {
                let last = node.outputs.remove(k);
                if !last.is_empty() {
                    finals.insert(last, initial);
                }
            }
            let body = &mut node.subgraphs[at].1;
            body.outputs.remove(k + 1);
            tensor.name = body.inputs.remove(k + 2).name;
            body.initializers.push(tensor);
            hoisted += 1;
        }
    }
    if !finals.is_empty() {
        rename_inputs(graph, &finals);
    }
    hoisted
}

/// Removes nodes and initializers that no graph output depends on; returns how many of each.
pub fn remove_dead(graph: &mut Graph) -> (usize, usize) {
    let mut needed: HashSet<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate().rev() {
        if node.outputs.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.reads());
        }
    }
    let before = (graph.nodes.len(), graph.initializers.len());
    crate::rewrite::retain_nodes(graph, |i| keep[i]);
    graph.initializers.retain(|t| needed.contains(&t.name));
    (
        before.0 - graph.nodes.len(),
        before.1 - graph.initializers.len(),
    )
}

/// Folds each inference BatchNormalization into the Conv, ungrouped ConvTranspose, Gemm or
/// (rank-2) MatMul that alone
/// feeds it, when all parameters are initializers: (BatchNormalization, the node it was folded
/// into) and the statistics it kept, per fold.
pub fn fold_batch_norms(
    graph: &mut Graph,
    eval: &dyn Evaluator,
) -> Result<Vec<((String, String), BatchNormStats)>> {
    let mut folded = Vec::new();
    let matrices = two_d_values(graph, eval);
    while let Some((bn, anchor)) = find_foldable(graph, &matrices) {
        let names = (
            graph.nodes[bn].name.clone(),
            graph.nodes[anchor].name.clone(),
        );
        let stats = fold_one(graph, bn, anchor)?;
        folded.push((names, stats));
    }
    Ok(folded)
}

/// The next (BatchNormalization, producer) pair that can be folded.
fn find_foldable(graph: &Graph, matrices: &HashSet<String>) -> Option<(usize, usize)> {
    let producers = graph.producers();
    let consumers = graph.consumers();
    let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    let is_init = |n: &str| graph.initializer(n).is_some();
    graph.nodes.iter().enumerate().find_map(|(i, bn)| {
        let params_known = bn.inputs.len() == 5 && bn.inputs[1..].iter().all(|n| is_init(n));
        if bn.op != Op::BatchNormalization
            || !params_known
            || bn.outputs.len() > 1 && !bn.outputs[1..].iter().all(String::is_empty)
        {
            return None;
        }
        let x = bn.inputs[0].as_str();
        let p = *producers.get(x)?;
        let anchor = &graph.nodes[p];
        let single_use = consumers.get(x).is_some_and(|c| c.len() == 1) && !outputs.contains(x);
        let weight_known = anchor.inputs.get(1).is_some_and(|w| is_init(w));
        let bias_known = anchor
            .inputs
            .get(2)
            .is_none_or(|b| b.is_empty() || is_init(b));
        let shape_ok = match anchor.op {
            Op::Conv => true,
            Op::ConvTranspose => ungrouped(anchor),
            Op::Gemm => {
                let attr = |n: &str, d: f32| anchor.attribute(n).map_or(d, |a| a.f());
                let trans_a = anchor.attribute("transA").is_some_and(|a| a.i() != 0);
                attr("alpha", 1.0) == 1.0 && attr("beta", 1.0) == 1.0 && !trans_a
            }
            // BatchNormalization's channel axis is 1: only a rank-2 MatMul has it last.
            Op::MatMul => {
                graph
                    .initializer(&anchor.inputs[1])
                    .is_some_and(|w| w.shape.len() == 2)
                    && matrices.contains(x)
            }
            _ => false,
        };
        (single_use && weight_known && bias_known && shape_ok).then_some((i, p))
    })
}

/// The 2-D values of the graph, from shape inference, computed only if a MatMul feeds a
/// BatchNormalization. Folding keeps every value's name and shape, so one inference serves all
/// the folds.
fn two_d_values(graph: &mut Graph, eval: &dyn Evaluator) -> HashSet<String> {
    let producers = graph.producers();
    let matmul_bn = graph.nodes.iter().any(|n| {
        n.op == Op::BatchNormalization
            && n.inputs
                .first()
                .and_then(|x| producers.get(x.as_str()))
                .is_some_and(|&p| graph.nodes[p].op == Op::MatMul)
    });
    if !matmul_bn {
        return HashSet::new();
    }
    eval.infer(graph)
        .map(|types| {
            types
                .into_iter()
                .filter(|(_, t)| t.shape.len() == 2)
                .map(|(n, _)| n)
                .collect()
        })
        .unwrap_or_default()
}

/// The axis of a layer's weight that indexes its output channels: 0 for Conv and Gemm with
/// transB, 1 for ConvTranspose (its weight is [C_in, C_out / group, k...]; the folds take it
/// only ungrouped, where that axis is all of C_out), MatMul and Gemm.
pub fn weight_output_axis(node: &Node) -> usize {
    let trans_b = node.attribute("transB").is_some_and(|a| a.i() != 0);
    match node.op {
        Op::Conv => 0,
        Op::Gemm if trans_b => 0,
        _ => 1,
    }
}

/// The values of `w` (in f64), each times `factor` of its index along `axis` (`factor` holds
/// one value per index of that axis).
fn scaled_per_channel(w: &RawTensor, axis: usize, factor: &[f64]) -> Vec<f64> {
    let inner: usize = w.shape[axis + 1..].iter().product();
    (w.to_f64s().iter().enumerate())
        .map(|(i, x)| x * factor[(i / inner.max(1)) % factor.len()])
        .collect()
}

/// A ConvTranspose of one group: a grouped one's output channel c is weight column c mod
/// C_out/group of the input channels of group c / (C_out/group), which the per-axis folds do
/// not express.
fn ungrouped(node: &Node) -> bool {
    node.attribute("group").is_none_or(|a| a.i() == 1)
}

fn fold_one(graph: &mut Graph, bn: usize, anchor: usize) -> Result<BatchNormStats> {
    let b = graph.nodes[bn].clone();
    let err = |m: &str| Error::model(&graph.source, format!("folding {}: {m}", b.label()));
    let eps = b.attribute("epsilon").map_or(1e-5, |a| a.f()) as f64;
    let vec = |i: usize| -> Result<Vec<f64>> {
        Ok(graph
            .initializer(&b.inputs[i])
            .ok_or_else(|| err("missing"))?
            .to_f64s())
    };
    let (gamma, beta, mean, var) = (vec(1)?, vec(2)?, vec(3)?, vec(4)?);
    let factor: Vec<f64> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + eps).sqrt())
        .collect();
    let node = graph.nodes[anchor].clone();
    let w = graph
        .initializer(&node.inputs[1])
        .ok_or_else(|| err("missing weight"))?
        .clone();
    let out_axis = weight_output_axis(&node);
    let channels = w.shape[out_axis];
    if channels != factor.len() {
        return Err(err(&format!(
            "{} has {channels} output channels, the BatchNormalization {}",
            node.label(),
            factor.len()
        )));
    }
    // W' = W·factor[c] along the channel axis, in f64, back in W's own type.
    let scaled = scaled_per_channel(&w, out_axis, &factor);
    let old_bias = match node.inputs.get(2).filter(|s| !s.is_empty()) {
        Some(n) => graph
            .initializer(n)
            .ok_or_else(|| err("missing bias"))?
            .to_f64s(),
        None => vec![0.0; channels],
    };
    if old_bias.len() != channels {
        return Err(err(&format!(
            "bias of {} is not per output channel",
            node.label()
        )));
    }
    let new_b: Vec<f32> = (0..channels)
        .map(|c| ((old_bias[c] - mean[c]) * factor[c] + beta[c]) as f32)
        .collect();
    let w_name = unique_name(graph, &format!("{}_bn_folded", node.inputs[1]));
    let b_name = unique_name(graph, &format!("{}_bias_bn_folded", node.name));
    graph
        .initializers
        .push(RawTensor::from_f64s(&w_name, &w.shape, &scaled, w.dtype));
    graph
        .initializers
        .push(RawTensor::from_f32s(&b_name, &[channels], &new_b));
    let n = &mut graph.nodes[anchor];
    n.inputs.truncate(2);
    n.inputs[1] = w_name;
    n.inputs.push(b_name);
    n.outputs = vec![b.outputs[0].clone()];
    if n.op == Op::MatMul {
        n.op = Op::Gemm;
    }
    graph.nodes.remove(bn);
    Ok(BatchNormStats {
        value: b.outputs[0].clone(),
        beta,
        gamma,
        variance: var,
        epsilon: eps,
    })
}

/// Folds `Conv → Mul(constant)` (or an ungrouped ConvTranspose's) into the layer's weights and
/// bias, W'[c] = W[c]·s[c] and
/// b'[c] = b[c]·s[c] (in f64), when the constant has one value per output channel or one for
/// all and the Conv's output goes to that Mul alone: (Mul, Conv) per fold. The scaled weights
/// are a new initializer (another node may share the old one).
pub fn fold_scale_muls(graph: &mut Graph) -> Result<Vec<(String, String)>> {
    let mut folded = Vec::new();
    while let Some((mul, conv, scale)) = conv_channel_operand(graph, Op::Mul) {
        let m = graph.nodes[mul].clone();
        let c = graph.nodes[conv].clone();
        let err =
            |what: &str| Error::model(&graph.source, format!("folding {}: {what}", m.label()));
        let w = graph
            .initializer(&c.inputs[1])
            .ok_or_else(|| err("missing weight"))?;
        let weights: Vec<f32> = (scaled_per_channel(w, weight_output_axis(&c), &scale).iter())
            .map(|&v| v as f32)
            .collect();
        let bias = match c.inputs.get(2).filter(|b| !b.is_empty()) {
            Some(b) => {
                let old = graph.initializer(b).ok_or_else(|| err("missing bias"))?;
                let values: Vec<f32> = (old.to_f64s().iter().zip(&scale))
                    .map(|(b, s)| (b * s) as f32)
                    .collect();
                Some(values)
            }
            None => None,
        };
        let shape = w.shape.clone();
        let w_name = add_f32_initializer(graph, &format!("{}_weight", c.name), &shape, &weights);
        let b_name =
            bias.map(|b| add_f32_initializer(graph, &format!("{}_bias", c.name), &[b.len()], &b));
        let n = &mut graph.nodes[conv];
        n.inputs.truncate(1);
        n.inputs.push(w_name);
        n.inputs.extend(b_name);
        folded.push(absorb(graph, conv, mul));
    }
    Ok(folded)
}

/// Folds `Conv → Add(constant)` (or an ungrouped ConvTranspose's) into the layer's bias, when
/// the constant has one value per output
/// channel or one for all and the Conv's output goes to that Add alone: (Add, Conv) per fold.
/// `Sub(Conv, constant)` folds as the Add of its negation (a BatchNorm's mean, as TensorFlow
/// writes it).
pub fn fold_bias_adds(graph: &mut Graph) -> Result<Vec<(String, String)>> {
    let mut folded = Vec::new();
    let next = |graph: &Graph| {
        conv_channel_operand(graph, Op::Add).or_else(|| {
            let (sub, conv, c) = conv_channel_operand(graph, Op::Sub)?;
            let minus: Vec<f64> = c.iter().map(|v| -v).collect();
            Some((sub, conv, minus))
        })
    };
    while let Some((add, conv, mut bias)) = next(graph) {
        let a = graph.nodes[add].clone();
        if let Some(old) = graph.nodes[conv].inputs.get(2).filter(|b| !b.is_empty()) {
            let old = graph.initializer(old).ok_or_else(|| {
                Error::model(
                    &graph.source,
                    format!("folding {}: missing bias", a.label()),
                )
            })?;
            bias.iter_mut()
                .zip(old.to_f64s())
                .for_each(|(b, o)| *b += o);
        }
        let values: Vec<f32> = bias.iter().map(|&b| b as f32).collect();
        let base = format!("{}_bias", graph.nodes[conv].name);
        let name = add_f32_initializer(graph, &base, &[values.len()], &values);
        let n = &mut graph.nodes[conv];
        n.inputs.truncate(2);
        n.inputs.push(name);
        folded.push(absorb(graph, conv, add));
    }
    Ok(folded)
}

/// The first `op` (Add, Sub of a constant, or Mul) of a Conv's (or an ungrouped ConvTranspose's) output and an
/// initializer that holds one value per
/// output channel ([C,1,1] or [1,C,1,1] against the output [N,C,H,W]; a plain [C] would
/// broadcast along the last axis instead) or one value for all, where the Conv's output goes to
/// that node alone and its weight (and bias, if any) are float32 initializers: (node, Conv, the
/// constant's value per output channel).
fn conv_channel_operand(graph: &Graph, op: Op) -> Option<(usize, usize, Vec<f64>)> {
    let producers = graph.producers();
    let consumers = graph.consumers();
    let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    graph.nodes.iter().enumerate().find_map(|(i, node)| {
        let (x, c) = constant_operand(graph, node, &op)?;
        // c − x is not x plus anything.
        if op == Op::Sub && node.inputs[0] != x {
            return None;
        }
        let p = *producers.get(x)?;
        let conv = &graph.nodes[p];
        if !(conv.op == Op::Conv || conv.op == Op::ConvTranspose && ungrouped(conv)) {
            return None;
        }
        let w = graph.initializer(conv.inputs.get(1)?)?;
        let channels = *w.shape.get(weight_output_axis(conv))?;
        let bias_ok = conv.inputs.get(2).is_none_or(|b| {
            b.is_empty()
                || graph
                    .initializer(b)
                    .is_some_and(|t| t.dtype == DType::F32 && t.len() == channels)
        });
        let alone = consumers.get(x).is_some_and(|v| v.len() == 1) && !outputs.contains(x);
        // What a broken file may hold instead: data that is not its shape.
        let whole = w.len() == w.shape.iter().product::<usize>();
        if !alone || !bias_ok || w.dtype != DType::F32 || !whole {
            return None;
        }
        // The Conv's output has the weight's rank.
        let values = channel_values(c, w.shape.len(), channels)?;
        Some((i, p, values))
    })
}

/// Folds `MatMul(x, W) → Add(b)` into `Gemm(x, W, b)` where x is rank 2 (from shape inference),
/// W a 2-D initializer [K, N], b a float initializer of N values ([N] or [1, N]) and the MatMul's
/// output goes to that Add alone: (Add, MatMul) per fold. Shapes are inferred only if such a
/// pair exists; where inference fails, nothing is folded.
pub fn fold_matmul_bias_adds(
    graph: &mut Graph,
    eval: &dyn Evaluator,
) -> Result<Vec<(String, String)>> {
    let candidates = matmul_bias_adds(graph, &|_| true);
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let Ok(types) = eval.infer(graph) else {
        return Ok(Vec::new());
    };
    let matrix = |v: &str| types.get(v).is_some_and(|t| t.shape.len() == 2);
    let mut folded = Vec::new();
    // Folding keeps every other value's name and shape: one inference serves all the folds.
    while let Some(&(add, matmul)) = matmul_bias_adds(graph, &matrix).first() {
        let a = graph.nodes[add].clone();
        let bias = constant_operand(graph, &a, &Op::Add)
            .map(|(_, c)| c.to_f64s())
            .unwrap_or_default();
        let values: Vec<f32> = bias.iter().map(|&b| b as f32).collect();
        let base = format!("{}_bias", graph.nodes[matmul].name);
        let name = add_f32_initializer(graph, &base, &[values.len()], &values);
        let n = &mut graph.nodes[matmul];
        n.op = Op::Gemm;
        n.inputs.push(name);
        folded.push(absorb(graph, matmul, add));
    }
    Ok(folded)
}

/// The (Add, MatMul) pairs [`fold_matmul_bias_adds`] folds, in graph order by Add, given which
/// values are matrices.
fn matmul_bias_adds(graph: &Graph, matrix: &dyn Fn(&str) -> bool) -> Vec<(usize, usize)> {
    let producers = graph.producers();
    let consumers = graph.consumers();
    let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    let float = |t: &RawTensor| t.dtype == DType::F32;
    graph
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, add)| {
            let (x, c) = constant_operand(graph, add, &Op::Add)?;
            let p = *producers.get(x)?;
            let mm = &graph.nodes[p];
            let w = graph.initializer(mm.inputs.get(1)?)?;
            let columns = *w.shape.get(1)?;
            let per_column = match c.shape.as_slice() {
                [n] | [1, n] => *n == columns,
                _ => false,
            };
            let alone = consumers.get(x).is_some_and(|v| v.len() == 1) && !outputs.contains(x);
            let ok = mm.op == Op::MatMul
                && mm.inputs.len() == 2
                && graph.initializer(&mm.inputs[0]).is_none()
                && w.shape.len() == 2
                && float(w)
                && float(c)
                && per_column
                && alone
                && matrix(&mm.inputs[0]);
            ok.then_some((i, p))
        })
        .collect()
}

/// Rewrites each HardSwish as `x · HardSigmoid(x; α = 1/6, β = 0.5)`, its definition, so that
/// quantization sees the multiplication: runtimes then run it as an integer Mul between
/// quantized tensors (ONNX Runtime decomposes HardSwish this way itself, but in float when the
/// quantizers sit around the fused op). Returns how many were rewritten.
pub fn decompose_hard_swish(graph: &mut Graph) -> usize {
    let mut count = 0;
    let mut nodes = Vec::with_capacity(graph.nodes.len());
    for node in std::mem::take(&mut graph.nodes) {
        if node.op != Op::HardSwish || node.inputs.len() != 1 {
            nodes.push(node);
            continue;
        }
        let gate = unique_name_in(&nodes, graph, &format!("{}_gate", node.outputs[0]));
        let mut sigmoid = Node::new(
            format!("{}_hardsigmoid", node.name),
            Op::HardSigmoid,
            &[&node.inputs[0]],
            &[&gate],
        );
        sigmoid.attributes = vec![
            float_attribute("alpha", 1.0 / 6.0),
            float_attribute("beta", 0.5),
        ];
        nodes.push(sigmoid);
        nodes.push(Node::new(
            node.name.clone(),
            Op::Mul,
            &[&node.inputs[0], &gate],
            &node.outputs.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        count += 1;
    }
    graph.nodes = nodes;
    count
}

/// A value name unused in `graph` and in `extra` nodes.
fn unique_name_in(extra: &[Node], graph: &Graph, base: &str) -> String {
    let mut name = unique_name(graph, base);
    let mut k = 2;
    while extra.iter().any(|n| n.outputs.contains(&name)) {
        name = unique_name(graph, &format!("{base}_{k}"));
        k += 1;
    }
    name
}

#[cfg(test)]
mod tests {
    use zeropoint_onnx::DType;

    use super::*;
    use crate::evaluator::{Shapes, Structural};
    use crate::graph::{Dim, ValueInfo};

    fn info(name: &str) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(vec![
                Dim::Fixed(1),
                Dim::Fixed(2),
                Dim::Fixed(3),
                Dim::Fixed(3),
            ]),
        }
    }

    fn graph(initializers: Vec<RawTensor>, nodes: Vec<Node>, output: &str) -> Graph {
        Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: vec![info("x")],
            outputs: vec![info(output)],
            initializers,
            nodes,
        }
    }

    /// tf2onnx's LSTM loop: the weight rides along as loop state, passed through unchanged. It
    /// becomes the body's initializer; the state that changes stays, and a reader of the
    /// weight's final value reads the initializer.
    #[test]
    fn a_loop_carried_constant_becomes_an_initializer_of_the_body() {
        let body = Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: vec![info("i"), info("c"), info("h"), info("w")],
            outputs: vec![info("c2"), info("h2"), info("w")],
            initializers: vec![],
            nodes: vec![
                Node::new("step", Op::MatMul, &["h", "w"], &["h2"]),
                Node::new("keep", Op::Identity, &["c"], &["c2"]),
            ],
        };
        let mut lp = Node::new(
            "loop",
            Op::Loop,
            &["n", "", "x", "W"],
            &["h_last", "w_last"],
        );
        lp.subgraphs.push(("body".into(), body));
        let weight = RawTensor::from_f32s("W", &[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let mut g = graph(
            vec![
                weight.clone(),
                RawTensor::from_i64s("n", &[], &[3], DType::I64),
            ],
            vec![lp, Node::new("sum", Op::Add, &["h_last", "w_last"], &["y"])],
            "y",
        );
        assert_eq!(hoist_loop_constants(&mut g), 1);
        let lp = &g.nodes[0];
        assert_eq!(lp.inputs, ["n", "", "x"]);
        assert_eq!(lp.outputs, ["h_last"]);
        let body = lp.subgraph("body").unwrap();
        let names = |v: &[ValueInfo]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&body.inputs), ["i", "c", "h"]);
        assert_eq!(names(&body.outputs), ["c2", "h2"]);
        assert_eq!(body.initializer("w").unwrap().to_f32s(), weight.to_f32s());
        assert_eq!(g.nodes[1].inputs, ["h_last", "W"]);
        // State that changes is not constant, nor is state that starts from an input.
        assert_eq!(hoist_loop_constants(&mut g), 0);
    }

    #[test]
    fn a_per_channel_add_after_a_conv_becomes_its_bias() {
        let mut g = graph(
            vec![
                RawTensor::from_f32s("w", &[2, 2, 1, 1], &[1.0; 4]),
                RawTensor::from_f32s("b", &[2], &[0.5, -0.5]),
                RawTensor::from_f32s("shift", &[2, 1, 1], &[0.25, 2.0]),
            ],
            vec![
                Node::new("conv", Op::Conv, &["x", "w", "b"], &["c"]),
                Node::new("add", Op::Add, &["c", "shift"], &["y"]),
            ],
            "y",
        );
        let folded = fold_bias_adds(&mut g).unwrap();
        assert_eq!(folded, [("add".to_string(), "conv".to_string())]);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].outputs, ["y"]);
        let bias = g.initializer(&g.nodes[0].inputs[2]).unwrap();
        assert_eq!(bias.to_f32s(), [0.75, 1.5]);
        // The old bias and the constant are dead now.
        assert_eq!(remove_dead(&mut g), (0, 2));
    }

    #[test]
    fn a_conv_then_mul_and_add_of_constants_become_its_weights_and_bias() {
        // An inference BatchNorm as an exporter writes it: Conv -> Mul(scale) -> Add(shift).
        let mut g = graph(
            vec![
                RawTensor::from_f32s("w", &[2, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0]),
                RawTensor::from_f32s("b", &[2], &[0.5, -0.5]),
                RawTensor::from_f32s("scale", &[1, 2, 1, 1], &[2.0, -0.5]),
                RawTensor::from_f32s("shift", &[2, 1, 1], &[0.25, 2.0]),
            ],
            vec![
                Node::new("conv", Op::Conv, &["x", "w", "b"], &["c"]),
                Node::new("mul", Op::Mul, &["scale", "c"], &["m"]),
                Node::new("add", Op::Add, &["m", "shift"], &["y"]),
            ],
            "y",
        );
        let muls = fold_scale_muls(&mut g).unwrap();
        assert_eq!(muls, [("mul".to_string(), "conv".to_string())]);
        assert_eq!(fold_bias_adds(&mut g).unwrap().len(), 1);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].outputs, ["y"]);
        let conv = &g.nodes[0];
        let w = g.initializer(&conv.inputs[1]).unwrap();
        assert_eq!(w.to_f32s(), [2.0, 4.0, -1.5, -2.0]);
        assert_eq!(w.shape, [2, 1, 1, 2]);
        // (0.5·2 + 0.25, −0.5·−0.5 + 2)
        assert_eq!(
            g.initializer(&conv.inputs[2]).unwrap().to_f32s(),
            [1.25, 2.25]
        );
        // The original weight is not changed in place: another node may read it.
        assert_eq!(g.initializer("w").unwrap().to_f32s(), [1.0, 2.0, 3.0, 4.0]);

        // One value for all channels folds too; a plain [C] (the last axis) does not.
        let scaled = |shape: &[usize], v: &[f32]| {
            let mut g = graph(
                vec![
                    RawTensor::from_f32s("w", &[2, 1, 1, 1], &[1.0, 2.0]),
                    RawTensor::from_f32s("s", shape, v),
                ],
                vec![
                    Node::new("conv", Op::Conv, &["x", "w"], &["c"]),
                    Node::new("mul", Op::Mul, &["c", "s"], &["y"]),
                ],
                "y",
            );
            let folded = fold_scale_muls(&mut g).unwrap().len();
            let w = g.initializer(&g.nodes[0].inputs[1]).unwrap().to_f32s();
            (folded, w, g.nodes[0].inputs.len())
        };
        assert_eq!(scaled(&[], &[3.0]), (1, vec![3.0, 6.0], 2));
        assert_eq!(scaled(&[2], &[3.0, 4.0]), (0, vec![1.0, 2.0], 2));

        // A kernel with no output channels (a broken file) is left as it is.
        let mut g = graph(
            vec![
                RawTensor::from_f32s("w", &[0, 1, 1, 1], &[]),
                RawTensor::from_f32s("s", &[], &[3.0]),
            ],
            vec![
                Node::new("conv", Op::Conv, &["x", "w"], &["c"]),
                Node::new("mul", Op::Mul, &["c", "s"], &["y"]),
            ],
            "y",
        );
        assert!(fold_scale_muls(&mut g).unwrap().is_empty());
    }

    /// A dense layer written as MatMul + Add: x [N, 4] · W [4, 3] + b [3] becomes Gemm(x, W, b);
    /// a rank-3 x (Gemm takes matrices only), a constant of another length than W's columns
    /// and a graph whose shapes are unknown are left alone.
    #[test]
    fn a_column_bias_add_after_a_matmul_makes_a_gemm() {
        let dense = |bias: &[f32]| {
            graph(
                vec![
                    RawTensor::from_f32s("w", &[4, 3], &[1.0; 12]),
                    RawTensor::from_f32s("b", &[bias.len()], bias),
                ],
                vec![
                    Node::new("mm", Op::MatMul, &["x", "w"], &["m"]),
                    Node::new("add", Op::Add, &["b", "m"], &["y"]),
                ],
                "y",
            )
        };
        let mut g = dense(&[0.5, -1.0, 2.0]);
        let folded = fold_matmul_bias_adds(&mut g, &Shapes::all(&[2]).with("x", &[2, 2])).unwrap();
        assert_eq!(folded, [("add".to_string(), "mm".to_string())]);
        assert_eq!(g.nodes.len(), 1);
        let gemm = &g.nodes[0];
        assert_eq!(
            (gemm.op.clone(), &gemm.outputs[..]),
            (Op::Gemm, &["y".to_string()][..])
        );
        assert_eq!(gemm.inputs[..2], ["x", "w"]);
        assert_eq!(
            g.initializer(&gemm.inputs[2]).unwrap().to_f32s(),
            [0.5, -1.0, 2.0]
        );
        for (mut g, eval) in [
            (
                dense(&[0.5, -1.0, 2.0]),
                &Shapes::all(&[2]).with("x", &[2, 2, 2]) as &dyn Evaluator,
            ),
            (
                dense(&[0.5, -1.0, 2.0, 1.0]),
                &Shapes::all(&[2]).with("x", &[2, 2]),
            ),
            (dense(&[0.5, -1.0, 2.0]), &Structural),
        ] {
            assert!(fold_matmul_bias_adds(&mut g, eval).unwrap().is_empty());
            assert_eq!(g.nodes.len(), 2);
        }
    }

    #[test]
    fn an_add_that_broadcasts_along_the_last_axis_is_not_a_bias() {
        // [C] against [N, C, H, W] adds along W, not per channel.
        let mut g = graph(
            vec![
                RawTensor::from_f32s("w", &[3, 2, 1, 1], &[1.0; 6]),
                RawTensor::from_f32s("shift", &[3], &[1.0, 2.0, 3.0]),
            ],
            vec![
                Node::new("conv", Op::Conv, &["x", "w"], &["c"]),
                Node::new("add", Op::Add, &["c", "shift"], &["y"]),
            ],
            "y",
        );
        assert!(fold_bias_adds(&mut g).unwrap().is_empty());
        assert_eq!(g.nodes.len(), 2);
    }

    #[test]
    fn an_add_after_anything_but_a_conv_is_left_alone() {
        // A Mul by a rank-1 constant followed by an Add of another (a decoder's scaled
        // embedding plus a position) panicked once: the bias test read the Mul's operand as a
        // convolution kernel.
        let mut g = graph(
            vec![
                RawTensor::from_f32s("scale", &[3], &[1.0; 3]),
                RawTensor::from_f32s("pos", &[1], &[0.5]),
            ],
            vec![
                Node::new("mul", Op::Mul, &["x", "scale"], &["e"]),
                Node::new("add", Op::Add, &["e", "pos"], &["y"]),
            ],
            "y",
        );
        assert!(fold_bias_adds(&mut g).unwrap().is_empty());
        assert_eq!(g.nodes.len(), 2);
    }

    #[test]
    fn batch_norm_after_a_conv_is_folded_into_its_weights_and_bias() {
        let (gamma, beta, mean, var) =
            ([2.0f32, 0.5], [1.0f32, -1.0], [0.5f32, 0.25], [3.0f32, 0.0]);
        let mut bn = Node::new(
            "bn",
            Op::BatchNormalization,
            &["c", "gamma", "beta", "mean", "var"],
            &["y"],
        );
        bn.attributes.push(float_attribute("epsilon", 1.0));
        let mut g = graph(
            vec![
                RawTensor::from_f32s("w", &[2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0]),
                RawTensor::from_f32s("gamma", &[2], &gamma),
                RawTensor::from_f32s("beta", &[2], &beta),
                RawTensor::from_f32s("mean", &[2], &mean),
                RawTensor::from_f32s("var", &[2], &var),
            ],
            vec![Node::new("conv", Op::Conv, &["x", "w"], &["c"]), bn],
            "y",
        );
        let report = canonicalize(&mut g, &Structural).unwrap();
        assert_eq!(report.folded_batch_norms, [("bn".into(), "conv".into())]);
        assert_eq!(report.removed_initializers, 5);
        // factor = γ/√(σ²+ε) = [1, 0.5]; W' = W·factor per output channel; b' = (0 − μ)·f + β.
        let w = g.initializer(&g.nodes[0].inputs[1]).unwrap();
        assert_eq!(w.to_f32s(), [1.0, 2.0, 1.5, 2.0]);
        let b = g.initializer(&g.nodes[0].inputs[2]).unwrap();
        assert_eq!(b.to_f32s(), [0.5, -1.125]);
    }

    #[test]
    fn hard_swish_is_written_as_its_definition() {
        let mut g = graph(
            vec![],
            vec![Node::new("hs", Op::HardSwish, &["x"], &["y"])],
            "y",
        );
        assert_eq!(decompose_hard_swish(&mut g), 1);
        let ops: Vec<&Op> = g.nodes.iter().map(|n| &n.op).collect();
        assert_eq!(ops, [&Op::HardSigmoid, &Op::Mul]);
        let gate = &g.nodes[0].outputs[0];
        assert_eq!(g.nodes[1].inputs, ["x".to_string(), gate.clone()]);
        assert_eq!(g.nodes[1].outputs, ["y"]);
        let alpha = g.nodes[0].attribute("alpha").unwrap().f();
        assert_eq!(alpha, 1.0 / 6.0);
    }

    /// Runs nothing, but says it could run an Identity: an Identity of an initializer is
    /// folded without running it.
    struct IdentityOnly;

    impl Evaluator for IdentityOnly {
        fn supports(&self, node: &Node) -> bool {
            node.op == Op::Identity
        }

        fn run_node(
            &self,
            node: &Node,
            _: &[Option<&RawTensor>],
            _: i64,
        ) -> std::result::Result<Vec<RawTensor>, crate::error::Source> {
            panic!(
                "{} was run: an Identity of an initializer is an alias",
                node.name
            )
        }

        fn infer(&self, _: &mut Graph) -> Result<HashMap<String, crate::graph::ValueType>> {
            Ok(HashMap::new())
        }
    }

    /// ALBERT's layers share their weights, each through an Identity of its own: the layers
    /// read the one initializer, in subgraphs too, and no copy is made.
    #[test]
    fn an_identity_of_an_initializer_is_not_a_copy() {
        let body = Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: vec![],
            outputs: vec![info("z")],
            initializers: vec![],
            nodes: vec![Node::new("inner", Op::MatMul, &["x", "w2"], &["z"])],
        };
        // The else branch passes the shared weight on as it is.
        let passes = Graph {
            outputs: vec![info("w2")],
            nodes: vec![],
            ..body.clone()
        };
        let mut branch = Node::new("if", Op::If, &["c"], &["b"]);
        branch.subgraphs.push(("then_branch".into(), body));
        branch.subgraphs.push(("else_branch".into(), passes));
        let mut g = graph(
            vec![
                RawTensor::from_f32s("W", &[3, 3], &[0.5; 9]),
                RawTensor::from_i64s("c", &[], &[1], DType::I64),
            ],
            vec![
                Node::new("id1", Op::Identity, &["W"], &["w1"]),
                Node::new("id2", Op::Identity, &["w1"], &["w2"]),
                Node::new("layer1", Op::MatMul, &["x", "w1"], &["h"]),
                Node::new("layer2", Op::MatMul, &["h", "w2"], &["a"]),
                branch,
                Node::new("sum", Op::Add, &["a", "b"], &["y"]),
            ],
            "y",
        );
        assert_eq!(fold_constants(&mut g, &IdentityOnly).unwrap(), 2);
        let op_names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(op_names, ["layer1", "layer2", "if", "sum"]);
        assert_eq!(g.nodes[0].inputs, ["x", "W"]);
        assert_eq!(g.nodes[1].inputs, ["h", "W"]);
        let (then, passes) = (&g.nodes[2].subgraphs[0].1, &g.nodes[2].subgraphs[1].1);
        assert_eq!(then.nodes[0].inputs, ["x", "W"]);
        assert_eq!(passes.outputs[0].name, "W");
        assert_eq!(g.initializers.len(), 2, "no copy of W");
    }

    #[test]
    fn without_an_engine_nothing_is_folded_as_a_constant() {
        let mut g = graph(
            vec![RawTensor::from_f32s("a", &[1], &[1.0])],
            vec![
                Node::new("neg", Op::Neg, &["a"], &["b"]),
                Node::new("add", Op::Add, &["x", "b"], &["y"]),
            ],
            "y",
        );
        assert_eq!(fold_constants(&mut g, &Structural).unwrap(), 0);
        assert_eq!(g.nodes.len(), 2);
    }
}
