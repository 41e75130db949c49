//! Attention's `scores / √d`, folded into the query projection.
//!
//! Exporters write scaled dot-product attention as `MatMul(Q, Kᵀ) → Div(√d)` (or `Mul(1/√d)`),
//! where Q is a projection `MatMul(x, W_q) + b_q` reshaped and transposed into heads. The
//! division is linear and the reshapes only move values, so dividing W_q and b_q instead gives
//! the same scores, and the Div goes: one pass over every head's T×T scores per layer that a
//! quantized model runs in float between the integer MatMul and the Softmax. ONNX Runtime's
//! dynamic models fold it into FusedMatMul themselves; its QDQ fusions do not. MiniLM-L3's
//! static W8A8 model ran the 50 Lee documents in 2.1-3.0 % less time in ONNX Runtime (three
//! interleaved runs), with the same embeddings (the division is by 8, a power of two).

use std::collections::HashSet;

use zeropoint_onnx::DType;

use crate::rewrite::{absorb, add_f32_initializer, constant_operand};
use crate::{Graph, Node, Op};

/// Folds every such scale into its query (or key) projection; returns the names of the Div
/// and Mul nodes removed.
pub fn fold_attention_scales(graph: &mut Graph) -> Vec<String> {
    let mut folded = Vec::new();
    while let Some(f) = find(graph) {
        folded.push(graph.nodes[f.scale].name.clone());
        for name in f.weights {
            let Some(t) = graph.initializer(&name) else {
                continue;
            };
            let shape = t.shape.clone();
            let scaled: Vec<f32> = t.to_f64s().iter().map(|&v| (v * f.factor) as f32).collect();
            let new = add_f32_initializer(graph, &format!("{name}_scaled"), &shape, &scaled);
            rename_input(graph, f.layers.0, &name, &new);
            if let Some(add) = f.layers.1 {
                rename_input(graph, add, &name, &new);
            }
        }
        absorb(graph, f.matmul, f.scale);
    }
    folded
}

/// A fold to make: the scale node, the scores MatMul, the projection (MatMul or Gemm, and the
/// bias Add after a MatMul), the weights to scale (float32 initializers) and by what.
struct Fold {
    scale: usize,
    matmul: usize,
    layers: (usize, Option<usize>),
    weights: Vec<String>,
    factor: f64,
}

fn rename_input(graph: &mut Graph, node: usize, from: &str, to: &str) {
    for input in &mut graph.nodes[node].inputs {
        if input == from {
            *input = to.to_string();
        }
    }
}

/// The first scale that can be folded.
fn find(graph: &Graph) -> Option<Fold> {
    let producers = graph.producers();
    let consumers = graph.consumers();
    let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    // The node that alone reads `v` (which is no graph output) produced it: the node.
    let sole = |v: &str| match consumers.get(v).map(Vec::as_slice) {
        Some([_]) if !outputs.contains(v) => producers.get(v).map(|&p| (p, &graph.nodes[p])),
        _ => None,
    };
    graph.nodes.iter().enumerate().find_map(|(i, node)| {
        if !matches!(node.op, Op::Div | Op::Mul) {
            return None;
        }
        let (scores, c) = constant_operand(graph, node, &node.op)?;
        // c / scores is no scaling.
        let divides = node.op == Op::Div;
        if c.dtype != DType::F32 || c.len() != 1 || divides && scores != node.inputs[0] {
            return None;
        }
        let c = c.to_f64s()[0];
        let factor = if divides { 1.0 / c } else { c };
        if !factor.is_finite() {
            return None;
        }
        let (mm, m) = sole(scores).filter(|(_, m)| m.op == Op::MatMul)?;
        let activations =
            m.inputs.len() == 2 && m.inputs.iter().all(|v| graph.initializer(v).is_none());
        if !activations {
            return None;
        }
        m.inputs.iter().find_map(|side| {
            let (layers, weights) = projection(graph, &sole, side)?;
            Some(Fold {
                scale: i,
                matmul: mm,
                layers,
                weights,
                factor,
            })
        })
    })
}

/// A projection's nodes (the MatMul or Gemm, and the bias Add after a MatMul) and its weights.
type Layers = ((usize, Option<usize>), Vec<String>);

/// The projection that `v` is, through Reshape, Transpose, Squeeze and Unsqueeze nodes that
/// each alone read the value before: `MatMul(x, W) + b`, `MatMul(x, W)` or `Gemm(x, W, b)` with
/// float32 initializers W and b. (Other readers of W and b keep them: the fold writes scaled
/// copies.)
fn projection<'g>(
    graph: &'g Graph,
    sole: &dyn Fn(&str) -> Option<(usize, &'g Node)>,
    v: &str,
) -> Option<Layers> {
    let mut at = sole(v)?;
    for _ in 0..graph.nodes.len() {
        if !matches!(
            at.1.op,
            Op::Reshape | Op::Transpose | Op::Squeeze | Op::Unsqueeze
        ) {
            break;
        }
        at = sole(at.1.inputs.first()?)?;
    }
    let float_weight = |name: &str| {
        let is_float = graph.initializer(name)?.dtype == DType::F32;
        is_float.then(|| name.to_string())
    };
    let (p, node) = at;
    match node.op {
        Op::Add => {
            let (x, b) = constant_operand(graph, node, &Op::Add)?;
            let (mm, m) = sole(x).filter(|(_, m)| m.op == Op::MatMul)?;
            let w = float_weight(m.inputs.get(1)?)?;
            let b = float_weight(&b.name)?;
            Some(((mm, Some(p)), vec![w, b]))
        }
        Op::MatMul => Some(((p, None), vec![float_weight(node.inputs.get(1)?)?])),
        Op::Gemm => {
            let unit = |a: &str| node.attribute(a).is_none_or(|a| a.f() == 1.0);
            if !unit("alpha") || !unit("beta") {
                return None;
            }
            let mut weights = vec![float_weight(node.inputs.get(1)?)?];
            if let Some(b) = node.inputs.get(2).filter(|b| !b.is_empty()) {
                weights.push(float_weight(b)?);
            }
            Some(((p, None), weights))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! The fold on a hand-built attention head.

    use super::*;
    use crate::graph::ValueInfo;
    use zeropoint_onnx::RawTensor;

    /// x → MatMul(wq) → Add(bq) → Reshape → Transpose → q; x → MatMul(wk) → Transpose → kt;
    /// MatMul(q, kt) → `scale` node (scores, c) → Softmax → y.
    fn head(scale: Op, scores_first: bool) -> Graph {
        let t = |name: &str, v: &[f32]| RawTensor::from_f32s(name, &[v.len()], v);
        let node = |name: &str, op: Op, i: &[&str], o: &str| Node::new(name, op, i, &[o]);
        let scale_inputs = if scores_first { ["s", "c"] } else { ["c", "s"] };
        Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: vec![ValueInfo::float("x")],
            outputs: vec![ValueInfo::float("y")],
            initializers: vec![
                RawTensor::from_f32s("wq", &[2, 2], &[1.0, 2.0, 3.0, 4.0]),
                RawTensor::from_f32s("wk", &[2, 2], &[5.0, 6.0, 7.0, 8.0]),
                t("bq", &[0.5, -1.0]),
                RawTensor::from_i64s("shape", &[2], &[1, 2], DType::I64),
                RawTensor::from_f32s("c", &[], &[4.0]),
            ],
            nodes: vec![
                node("mq", Op::MatMul, &["x", "wq"], "pq"),
                node("bias", Op::Add, &["pq", "bq"], "q0"),
                node("reshape", Op::Reshape, &["q0", "shape"], "q1"),
                node("tq", Op::Transpose, &["q1"], "q"),
                node("mk", Op::MatMul, &["x", "wk"], "k"),
                node("tk", Op::Transpose, &["k"], "kt"),
                node("scores", Op::MatMul, &["q", "kt"], "s"),
                node("scale", scale, &scale_inputs, "z"),
                node("softmax", Op::Softmax, &["z"], "y"),
            ],
        }
    }

    #[test]
    fn the_scores_scale_moves_into_the_query_projection() {
        let mut g = head(Op::Div, true);
        assert_eq!(fold_attention_scales(&mut g), ["scale"]);
        assert!(g.nodes.iter().all(|n| n.op != Op::Div));
        // The scores MatMul writes what the Div did.
        let scores = g.nodes.iter().find(|n| n.name == "scores").unwrap();
        assert_eq!(scores.outputs, ["z"]);
        let input = |node: &str, i: usize| {
            let n = g.nodes.iter().find(|n| n.name == node).unwrap();
            g.initializer(&n.inputs[i]).unwrap().to_f32s()
        };
        assert_eq!(input("mq", 1), [0.25, 0.5, 0.75, 1.0]);
        assert_eq!(input("bias", 1), [0.125, -0.25]);
        assert_eq!(input("mk", 1), [5.0, 6.0, 7.0, 8.0]);
        // A Mul multiplies.
        let mut g = head(Op::Mul, false);
        assert_eq!(fold_attention_scales(&mut g), ["scale"]);
        let mq = g.nodes.iter().find(|n| n.name == "mq").unwrap();
        assert_eq!(
            g.initializer(&mq.inputs[1]).unwrap().to_f32s(),
            [4.0, 8.0, 12.0, 16.0]
        );
    }

    #[test]
    fn other_divisions_and_shared_values_are_left_alone() {
        let unchanged = |mut g: Graph| {
            let before = g.clone();
            assert!(fold_attention_scales(&mut g).is_empty());
            assert_eq!(g, before);
        };
        // c / scores is no scaling.
        unchanged(head(Op::Div, false));
        // The projection read elsewhere too (a key-value cache output, say).
        let mut g = head(Op::Div, true);
        g.outputs.push(ValueInfo::float("q0"));
        let mut both = g.clone();
        // ... on the query side; the key side then takes the fold.
        assert_eq!(fold_attention_scales(&mut g), ["scale"]);
        let mk = g.nodes.iter().find(|n| n.name == "mk").unwrap();
        assert_eq!(
            g.initializer(&mk.inputs[1]).unwrap().to_f32s(),
            [1.25, 1.5, 1.75, 2.0]
        );
        both.outputs.push(ValueInfo::float("k"));
        unchanged(both);
        // A scale of more than one value.
        let mut g = head(Op::Div, true);
        g.initializers[4] = RawTensor::from_f32s("c", &[2], &[4.0, 2.0]);
        unchanged(g);
    }
}
