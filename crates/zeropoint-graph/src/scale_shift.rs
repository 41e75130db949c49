//! A per-channel scale and shift that no layer absorbs, `Mul(x, s)` with an optional
//! `Add(·, b)` after it, or an inference BatchNormalization (s = γ/√(σ²+ε), b = β − μ·s),
//! written as a 1×1 depthwise Conv with weight s and bias b.
//!
//! Exporters write an inference BatchNormalization as such a pair or as itself. After a Conv
//! it folds into the Conv (`canonicalize::fold_scale_muls`, `fold_batch_norms`); in a
//! pre-activation residual block (sum → BatchNorm → Relu → Conv) nothing comes before it but
//! the residual Add, and in Keras' Conv → Relu → BatchNorm → Conv only the Relu. Quantized, the
//! pair and that Add would run in float between a DequantizeLinear and a QuantizeLinear on every
//! element of the block's activations. As a Conv, runtimes run the pair as one integer
//! convolution whose per-channel weight holds each s exactly (one value per channel, each on
//! its own int8 grid), the Relu fuses into it, and its input, the residual sum, becomes a
//! quantized value, so the residual Add runs as an integer Add too. (ONNX Runtime's quantizer
//! runs such a pair as QLinearMul and QLinearAdd, every channel's s and b on one int8 grid, and
//! requantizes between them.)
//!
//! A Conv's input and output are quantized, so the rewrite is made only where both are
//! quantized anyway or pay for it: every reader of the result is a layer (Conv, ConvTranspose,
//! Gemm, MatMul), or a Relu or Clip that only layers read; the input is a layer's output
//! (through a Relu or Clip), or an Add or Mul of two activations, which then runs in integer.
//! Never at a graph input (that would round the model's raw input to gain one small op), nor
//! after a float op, which would only gain a quantizer.
//!
//! A BatchNormalization rewritten so still says how its output is distributed (mean β,
//! standard deviation |γ|), as one folded into a layer does: the rewrite returns its
//! statistics, for analytic bias correction, high-bias absorption and QAT's batch statistics
//! (to which the Conv is the BatchNorm folded into an identity layer).

use std::collections::{HashMap, HashSet};

use zeropoint_onnx::{DType, RawTensor};

use crate::batch_norm::BatchNormStats;
use crate::error::Result;
use crate::evaluator::Evaluator;
use crate::graph::{int_attribute, Dim, ValueType};
use crate::rewrite::{absorb, add_f32_initializer, channel_values, constant_operand};
use crate::{Graph, Node, Op};

/// Rewrites every such pair (or lone Mul, or BatchNormalization) as a depthwise Conv, which
/// keeps the Mul's (or BatchNormalization's) name and writes the pair's output; returns the
/// names of the nodes rewritten, each with its statistics if it was a BatchNormalization.
/// Needs the rank and channel count of each pair's input: shapes are inferred only if a pair
/// exists, and where inference fails nothing is rewritten.
pub fn scale_shift_convs(
    graph: &mut Graph,
    eval: &dyn Evaluator,
) -> Result<Vec<(String, Option<BatchNormStats>)>> {
    if candidates(graph).is_empty() {
        return Ok(Vec::new());
    }
    let Ok(types) = eval.infer(graph) else {
        return Ok(Vec::new());
    };
    let mut written = Vec::new();
    // Each rewrite keeps every other value's name and shape: one inference serves them all.
    while let Some(pair) = candidates(graph)
        .into_iter()
        .find_map(|(mul, add)| channel_pair(graph, &types, mul, add))
    {
        let stats = pair.stats.clone();
        written.push((graph.nodes[pair.first].name.clone(), stats));
        rewrite(graph, pair);
    }
    Ok(written)
}

/// A pair to rewrite, with its constants per channel.
struct Pair {
    /// The Mul or BatchNormalization.
    first: usize,
    add: Option<usize>,
    x: String,
    rank: usize,
    scale: Vec<f64>,
    shift: Option<Vec<f64>>,
    /// A BatchNormalization's.
    stats: Option<BatchNormStats>,
}

/// (Mul, the Add after it if any) where the Mul scales a node's float output by a float
/// constant, or (BatchNormalization, None) of a node's output, where the result goes only to
/// layers, in graph order. Shapes are not checked yet.
fn candidates(graph: &Graph) -> Vec<(usize, Option<usize>)> {
    let producers = graph.producers();
    let consumers = graph.consumers();
    let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    let readers = |v: &str| -> Vec<&Node> {
        let at = consumers.get(v).map(Vec::as_slice).unwrap_or_default();
        at.iter().map(|&i| &graph.nodes[i]).collect()
    };
    let float = |t: &RawTensor| t.dtype == DType::F32;
    let sole_add = |v: &str| match consumers.get(v).map(Vec::as_slice) {
        Some(&[a]) if !outputs.contains(v) => constant_operand(graph, &graph.nodes[a], &Op::Add)
            .filter(|(_, c)| float(c))
            .map(|_| a),
        _ => None,
    };
    // Every reader of `v` consumes it as a layer's data input.
    let layers_only = |v: &str| {
        let layer = |n: &Node| match n.op {
            Op::Conv | Op::ConvTranspose | Op::Gemm => n.inputs.first().is_some_and(|i| i == v),
            Op::MatMul => true,
            _ => false,
        };
        !outputs.contains(v) && !readers(v).is_empty() && readers(v).into_iter().all(layer)
    };
    let quantized_anyway = |v: &str| {
        !outputs.contains(v)
            && !readers(v).is_empty()
            && readers(v).into_iter().all(|n| {
                let activation = matches!(n.op, Op::Relu | Op::Clip) && n.inputs[0] == v;
                let layer_read = || n.outputs.first().is_some_and(|o| layers_only(o));
                if activation {
                    layer_read()
                } else {
                    layers_only(v)
                }
            })
    };
    graph
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, node)| {
            if let Some(x) = batch_norm_input(graph, node) {
                let input_ok = producers
                    .get(x)
                    .is_some_and(|&p| integer_input(graph, &producers, p));
                return (input_ok && quantized_anyway(&node.outputs[0])).then_some((i, None));
            }
            let (x, c) = constant_operand(graph, node, &Op::Mul)?;
            let p = *producers.get(x)?;
            if !float(c) || graph.nodes[p].op == Op::Conv || !integer_input(graph, &producers, p) {
                return None;
            }
            let add = sole_add(&node.outputs[0]);
            let end = add.map_or(&node.outputs[0], |a| &graph.nodes[a].outputs[0]);
            quantized_anyway(end).then_some((i, add))
        })
        .collect()
}

/// Whether the output of node `p` is quantized anyway, or quantizing it makes `p` an integer
/// op: a layer's output (directly or through a Relu or Clip), or an Add or Mul of two
/// activations (which then runs as QLinearAdd or QLinearMul). The output of anything else (an
/// Add of a constant, a Sigmoid, ...) would gain a quantizer and nothing would run in integer
/// for it: with ppocr-v3-det's ConvTranspose → Add(bias) → BatchNorm → Relu → ConvTranspose
/// rewritten, its quantize peaked at 382 MB against 207 (one run each).
fn integer_input(graph: &Graph, producers: &HashMap<&str, usize>, p: usize) -> bool {
    let node = &graph.nodes[p];
    let layer = |n: &Node| matches!(n.op, Op::Conv | Op::ConvTranspose | Op::Gemm | Op::MatMul);
    let activations =
        || node.inputs.len() == 2 && node.inputs.iter().all(|i| graph.initializer(i).is_none());
    match node.op {
        Op::Add | Op::Mul => activations(),
        Op::Relu | Op::Clip => {
            let before = node.inputs.first().and_then(|x| producers.get(x.as_str()));
            before.is_some_and(|&b| layer(&graph.nodes[b]))
        }
        _ => layer(node),
    }
}

/// The input of an inference BatchNormalization whose parameters are float32 initializers and
/// that has one output.
fn batch_norm_input<'g>(graph: &Graph, node: &'g Node) -> Option<&'g str> {
    let params = node
        .inputs
        .get(1..5)?
        .iter()
        .all(|p| graph.initializer(p).is_some_and(|t| t.dtype == DType::F32));
    let one_output = node.outputs[1..].iter().all(String::is_empty);
    let training = node.attribute("training_mode").is_some_and(|a| a.i() != 0);
    let ok = node.op == Op::BatchNormalization
        && node.inputs.len() == 5
        && params
        && one_output
        && !training;
    ok.then_some(node.inputs[0].as_str())
}

/// A BatchNormalization's scale γ/√(σ²+ε) and shift β − μ·scale per channel (in f64), when
/// its four parameters have `channels` values each and both are finite, and its statistics.
fn batch_norm_affine(
    graph: &Graph,
    node: &Node,
    channels: usize,
) -> Option<(Vec<f64>, Vec<f64>, BatchNormStats)> {
    let eps = node.attribute("epsilon").map_or(1e-5, |a| a.f()) as f64;
    let param = |i: usize| {
        let t = graph.initializer(&node.inputs[i])?;
        (t.len() == channels && t.shape.len() == 1).then(|| t.to_f64s())
    };
    let (gamma, beta, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
    let scale: Vec<f64> = (0..channels)
        .map(|c| gamma[c] / (var[c] + eps).sqrt())
        .collect();
    let shift: Vec<f64> = (0..channels)
        .map(|c| beta[c] - mean[c] * scale[c])
        .collect();
    // A broken file's variance below −ε: the BatchNormalization stays as it is.
    let finite = scale.iter().chain(&shift).all(|v| v.is_finite());
    let stats = BatchNormStats {
        value: node.outputs[0].clone(),
        beta,
        gamma,
        variance: var,
        epsilon: eps,
    };
    finite.then_some((scale, shift, stats))
}

/// The pair's constants per channel of x, from x's inferred rank (at least 3: a Conv's input
/// has spatial axes) and channel count (axis 1, fixed).
fn channel_pair(
    graph: &Graph,
    types: &HashMap<String, ValueType>,
    first: usize,
    add: Option<usize>,
) -> Option<Pair> {
    let node = &graph.nodes[first];
    let x = match batch_norm_input(graph, node) {
        Some(x) => x,
        None => constant_operand(graph, node, &Op::Mul)?.0,
    };
    let t = types.get(x).filter(|t| t.dtype == DType::F32)?;
    let Some(&Dim::Fixed(channels)) = t.shape.get(1) else {
        return None;
    };
    let rank = t.shape.len();
    if rank < 3 || channels < 2 {
        return None;
    }
    let (scale, shift, stats) = if node.op == Op::BatchNormalization {
        let (scale, shift, stats) = batch_norm_affine(graph, node, channels)?;
        (scale, Some(shift), Some(stats))
    } else {
        let (scale, shift) = mul_add_affine(graph, node, add, rank, channels)?;
        (scale, shift, None)
    };
    Some(Pair {
        first,
        add,
        x: x.to_string(),
        rank,
        scale,
        shift,
        stats,
    })
}

/// The Mul's constant and the Add's (if any) per channel; None if either broadcasts along
/// another axis or both are single values (nothing to gain from a per-channel weight).
fn mul_add_affine(
    graph: &Graph,
    mul: &Node,
    add: Option<usize>,
    rank: usize,
    channels: usize,
) -> Option<(Vec<f64>, Option<Vec<f64>>)> {
    let scale = constant_operand(graph, mul, &Op::Mul)?.1;
    let shift = match add {
        Some(a) => Some(constant_operand(graph, &graph.nodes[a], &Op::Add)?.1),
        None => None,
    };
    if scale.len() <= 1 && shift.is_none_or(|b| b.len() <= 1) {
        return None;
    }
    let shift = match shift {
        Some(b) => Some(channel_values(b, rank, channels)?),
        None => None,
    };
    Some((channel_values(scale, rank, channels)?, shift))
}

/// The Mul (or BatchNormalization) becomes `Conv(x, s, b)` with one group per channel and
/// writes the pair's output; the Add goes.
fn rewrite(graph: &mut Graph, pair: Pair) {
    let name = graph.nodes[pair.first].name.clone();
    let channels = pair.scale.len();
    let mut shape = vec![channels];
    shape.extend(std::iter::repeat_n(1, pair.rank - 1));
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let w = add_f32_initializer(graph, &format!("{name}_weight"), &shape, &f32s(&pair.scale));
    let b = pair.shift.map(|shift| {
        add_f32_initializer(graph, &format!("{name}_bias"), &[channels], &f32s(&shift))
    });
    let node = &mut graph.nodes[pair.first];
    node.op = Op::Conv;
    node.inputs = vec![pair.x, w];
    node.inputs.extend(b);
    node.outputs.truncate(1);
    node.attributes = vec![int_attribute("group", channels as i64)];
    if let Some(add) = pair.add {
        absorb(graph, pair.first, add);
    }
}

#[cfg(test)]
mod tests {
    //! The rewrite on small hand-built graphs: which pairs become Convs, with which weights.

    use super::*;
    use crate::evaluator::Shapes;
    use crate::graph::ValueInfo;

    /// A residual sum x + x → r, then `tail` (which reads r), then a Conv of `conv_input`
    /// writes y.
    fn block(initializers: Vec<RawTensor>, tail: Vec<Node>, conv_input: &str) -> Graph {
        let mut inits = vec![RawTensor::from_f32s("w", &[2, 2, 1, 1], &[1.0; 4])];
        inits.extend(initializers);
        let mut nodes = vec![Node::new("sum", Op::Add, &["x", "x"], &["r"])];
        nodes.extend(tail);
        nodes.push(Node::new("conv", Op::Conv, &[conv_input, "w"], &["y"]));
        Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: vec![ValueInfo::float("x")],
            outputs: vec![ValueInfo::float("y")],
            initializers: inits,
            nodes,
        }
    }

    /// The pre-activation BatchNorm: r · s + b → Relu → Conv.
    fn batch_norm(s: (&[usize], &[f32]), b: (&[usize], &[f32])) -> Graph {
        block(
            vec![
                RawTensor::from_f32s("s", s.0, s.1),
                RawTensor::from_f32s("b", b.0, b.1),
            ],
            vec![
                Node::new("bn_mul", Op::Mul, &["s", "r"], &["m"]),
                Node::new("bn_add", Op::Add, &["m", "b"], &["a"]),
                Node::new("relu", Op::Relu, &["a"], &["p"]),
            ],
            "p",
        )
    }

    #[test]
    fn a_per_channel_mul_and_add_before_a_relu_and_conv_become_a_depthwise_conv() {
        let mut g = batch_norm((&[1, 2, 1, 1], &[2.0, -0.5]), (&[2, 1, 1], &[0.25, 3.0]));
        let shapes = Shapes::all(&[1, 2, 3, 3]);
        let written = scale_shift_convs(&mut g, &shapes).unwrap();
        // A Mul and Add say nothing of how their output is distributed.
        assert_eq!(written, [("bn_mul".to_string(), None)]);
        let ops: Vec<&Op> = g.nodes.iter().map(|n| &n.op).collect();
        assert_eq!(ops, [&Op::Add, &Op::Conv, &Op::Relu, &Op::Conv]);
        let dw = &g.nodes[1];
        assert_eq!(
            (dw.name.as_str(), dw.outputs.as_slice()),
            ("bn_mul", &["a".to_string()][..])
        );
        assert_eq!(dw.inputs[0], "r");
        assert_eq!(dw.attribute("group").map(|a| a.i()), Some(2));
        let w = g.initializer(&dw.inputs[1]).unwrap();
        assert_eq!(
            (w.shape.as_slice(), w.to_f32s()),
            (&[2, 1, 1, 1][..], vec![2.0, -0.5])
        );
        assert_eq!(g.initializer(&dw.inputs[2]).unwrap().to_f32s(), [0.25, 3.0]);

        // One shift for all channels is broadcast; a lone Mul becomes a Conv without a bias.
        let mut g = batch_norm((&[2, 1, 1], &[2.0, 4.0]), (&[], &[1.0]));
        scale_shift_convs(&mut g, &shapes).unwrap();
        assert_eq!(
            g.initializer(&g.nodes[1].inputs[2]).unwrap().to_f32s(),
            [1.0, 1.0]
        );
        let mut g = block(
            vec![RawTensor::from_f32s("s", &[2, 1, 1], &[2.0, 4.0])],
            vec![Node::new("scale", Op::Mul, &["r", "s"], &["m"])],
            "m",
        );
        let written = scale_shift_convs(&mut g, &shapes).unwrap();
        assert_eq!(written, [("scale".to_string(), None)]);
        assert_eq!(g.nodes[1].inputs.len(), 2);
    }

    /// Keras' Conv → Relu → BatchNorm (γ 2, 1; β 0.5, −1; μ 1, 0; ε 1; σ² as given) → Conv.
    fn keras_batch_norm(var: [f32; 2]) -> Graph {
        let params = [
            ("g", [2.0, 1.0]),
            ("be", [0.5, -1.0]),
            ("mu", [1.0, 0.0]),
            ("var", var),
        ];
        let inits = params
            .iter()
            .map(|(n, v)| RawTensor::from_f32s(*n, &[2], v))
            .collect();
        let mut bn = Node::new(
            "bn",
            Op::BatchNormalization,
            &["r", "g", "be", "mu", "var"],
            &["n"],
        );
        bn.attributes = vec![crate::graph::float_attribute("epsilon", 1.0)];
        let mut g = block(inits, vec![bn], "n");
        g.nodes[0] = Node::new("conv0", Op::Conv, &["x", "w"], &["c"]);
        g.nodes
            .insert(1, Node::new("relu0", Op::Relu, &["c"], &["r"]));
        g
    }

    #[test]
    fn a_batch_norm_after_a_relu_becomes_a_depthwise_conv() {
        let shapes = Shapes::all(&[1, 2, 3, 3]);
        let mut g = keras_batch_norm([3.0, 0.0]);
        let written = scale_shift_convs(&mut g, &shapes).unwrap();
        let [(name, Some(stats))] = written.as_slice() else {
            panic!("one BatchNorm rewritten, with its statistics: {written:?}");
        };
        // Its output keeps the BatchNorm's statistics, as a folded one's does.
        assert_eq!(name, "bn");
        assert_eq!(stats.value, "n");
        assert_eq!(
            (stats.gamma.as_slice(), stats.beta.as_slice()),
            (&[2.0, 1.0][..], &[0.5, -1.0][..])
        );
        assert_eq!(
            (stats.variance.as_slice(), stats.epsilon),
            (&[3.0, 0.0][..], 1.0)
        );
        let dw = &g.nodes[2];
        assert_eq!((&dw.op, dw.inputs[0].as_str()), (&Op::Conv, "r"));
        // scale γ/√(σ²+ε): 2/2, 1/1; shift β − μ·scale: 0.5 − 1, −1 − 0.
        assert_eq!(g.initializer(&dw.inputs[1]).unwrap().to_f32s(), [1.0, 1.0]);
        assert_eq!(
            g.initializer(&dw.inputs[2]).unwrap().to_f32s(),
            [-0.5, -1.0]
        );

        // A variance below −ε (a broken file) leaves the BatchNorm as it is.
        let mut g = keras_batch_norm([3.0, -4.0]);
        assert!(scale_shift_convs(&mut g, &shapes).unwrap().is_empty());
    }

    #[test]
    fn pairs_whose_result_stays_float_or_whose_constants_are_not_per_channel_are_left_alone() {
        let shapes = Shapes::all(&[1, 2, 3, 3]);
        let unchanged = |mut g: Graph, shapes: &dyn Evaluator| {
            let before = g.clone();
            assert!(scale_shift_convs(&mut g, shapes).unwrap().is_empty());
            assert_eq!(g, before);
        };
        let s = (&[2, 1, 1][..], &[2.0, 4.0][..]);
        let b = (&[2, 1, 1][..], &[1.0, 0.0][..]);
        // A plain [C] broadcasts along the last axis, not the channels.
        unchanged(batch_norm((&[2], &[2.0, 4.0]), b), &shapes);
        // Single values: nothing per channel to gain.
        unchanged(batch_norm((&[], &[2.0]), (&[1], &[1.0])), &shapes);
        // [C, 1, 1] against a rank-3 input broadcasts along axis 0.
        unchanged(
            batch_norm(s, b),
            &Shapes::all(&[1, 2, 3, 3]).with("r", &[2, 3, 3]),
        );
        // Another channel count than the constant's.
        unchanged(
            batch_norm(s, b),
            &Shapes::all(&[1, 2, 3, 3]).with("r", &[1, 4, 3, 3]),
        );
        // Shapes unknown.
        unchanged(batch_norm(s, b), &crate::evaluator::Structural);

        // The result is read by a float op (Sigmoid), or by a Relu that a float op reads.
        let mut g = batch_norm(s, b);
        g.nodes.push(Node::new("sig", Op::Sigmoid, &["a"], &["z"]));
        g.outputs.push(ValueInfo::float("z"));
        unchanged(g, &shapes);
        let mut g = batch_norm(s, b);
        g.nodes.push(Node::new("sig", Op::Sigmoid, &["p"], &["z"]));
        g.outputs.push(ValueInfo::float("z"));
        unchanged(g, &shapes);

        // At a graph input: the raw input would be rounded.
        let mut g = batch_norm(s, b);
        g.nodes.remove(0);
        g.nodes[0].inputs[1] = "x".into();
        unchanged(g, &shapes);

        // After a Conv: fold_scale_muls folds it into the Conv instead.
        let mut g = batch_norm(s, b);
        g.nodes[0] = Node::new("conv0", Op::Conv, &["x", "w"], &["r"]);
        unchanged(g, &shapes);

        // After an Add of a constant: its output would gain a quantizer and the Add would stay
        // float.
        let mut g = batch_norm(s, b);
        g.nodes[0] = Node::new("shift0", Op::Add, &["x", "b"], &["r"]);
        unchanged(g, &shapes);
    }
}
