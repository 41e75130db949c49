//! GELU written out as five operators, `x · 0.5 · (1 + erf(x / √2))` (PyTorch's exports before
//! opset 20), made the one `Gelu` node it means (opset 20) where `x` is a Conv's, ConvTranspose's
//! or Gemm's output.
//!
//! ONNX Runtime fuses the five operators into one Gelu kernel in a float model, but not in a QDQ
//! one: there it first gives each reader of a DequantizeLinear a copy of its own, and the Div and
//! the Mul that read `x` no longer read one value. A layer's output is dequantized (quantization
//! places a quantizer there), so after a layer the pattern ran as five float operators on every
//! feature map: eeg_spindle's 24 GELUs made its export x1.23 of ONNX Runtime's own in latency,
//! x0.79 as `Gelu` (docs/zoo.md). A MatMul's output (a transformer's feed-forward layer) stays
//! float, ONNX Runtime's own fusion applies there, and the pattern is left alone.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::evaluator::Evaluator;
use crate::rewrite::{constant_operand, one_value, only_reader, other_operand, retain_nodes};
use crate::{Graph, Node, Op};

/// The opset that defines `Gelu`.
pub const GELU_OPSET: i64 = 20;

/// Rewrites every such pattern of the main graph whose inner values nothing else reads, first
/// moving a graph of an older opset to [`GELU_OPSET`] (`eval` tells the upgrade value types);
/// returns how many.
pub fn fuse_gelus_after_layers(graph: &mut Graph, eval: &dyn Evaluator) -> Result<usize> {
    let mut found = find_gelus(graph);
    if found.is_empty() {
        return Ok(0);
    }
    if graph.opset < GELU_OPSET {
        crate::opset::upgrade(graph, GELU_OPSET, eval)?;
        // The upgrade may add nodes and sorts the graph: the patterns are found again.
        found = find_gelus(graph);
    }
    Ok(fuse_gelus(graph, &found))
}

/// One pattern, by node index: the node that becomes the Gelu (the last, which keeps its name
/// and output) and those removed.
struct Match {
    x: String,
    last: usize,
    removed: [usize; 4],
}

/// The patterns of the main graph after a layer, whose inner values nothing else reads.
fn find_gelus(graph: &Graph) -> Vec<Match> {
    let producers = graph.producers();
    let consumers = graph.consumers();
    let only = |value: &str| only_reader(graph, &consumers, value);
    let mut found = Vec::new();
    for (erf, node) in graph.nodes.iter().enumerate() {
        if node.op != Op::Erf {
            continue;
        }
        // A broken file's node may lack an input or an output: it matches nothing.
        let (Some(erf_in), Some(erf_out)) = (node.inputs.first(), node.outputs.first()) else {
            continue;
        };
        let Some(&scale) = producers.get(erf_in.as_str()) else {
            continue;
        };
        let Some(x) = scaled_by_inverse_sqrt2(graph, &graph.nodes[scale]) else {
            continue;
        };
        let after_layer = producers
            .get(x)
            .is_some_and(|&p| matches!(graph.nodes[p].op, Op::Conv | Op::ConvTranspose | Op::Gemm));
        let Some(add) = only(erf_out) else {
            continue;
        };
        let Some(add_out) = graph.nodes[add].outputs.first() else {
            continue;
        };
        if !after_layer
            || graph.nodes[scale].outputs.first().and_then(|o| only(o)) != Some(erf)
            || other_operand(graph, &graph.nodes[add], Op::Add, 1.0) != Some(erf_out)
        {
            continue;
        }
        if let Some((inner, last)) = halved_product(graph, &producers, &only, x, add_out) {
            found.push(Match {
                x: x.to_string(),
                last,
                removed: [scale, erf, add, inner],
            });
        }
    }
    found
}

/// Replaces each pattern of `found` (found in this graph) by one `Gelu` node; returns how many.
/// The graph must have opset [`GELU_OPSET`] or newer.
fn fuse_gelus(graph: &mut Graph, found: &[Match]) -> usize {
    let mut removed = HashSet::new();
    for m in found {
        let last = &mut graph.nodes[m.last];
        *last = Node::new(last.name.clone(), Op::Gelu, &[&m.x], &[&last.outputs[0]]);
        removed.extend(m.removed);
    }
    retain_nodes(graph, |i| !removed.contains(&i));
    found.len()
}

/// `x` where `node` is `x / √2` or `x · (1/√2)`.
fn scaled_by_inverse_sqrt2<'g>(graph: &'g Graph, node: &'g Node) -> Option<&'g str> {
    let divides = constant_operand(graph, node, &Op::Div).filter(|(x, c)| {
        node.inputs[0] == *x && one_value(c).is_some_and(|v| close(v, std::f32::consts::SQRT_2))
    });
    let multiplies = other_operand(graph, node, Op::Mul, std::f32::consts::FRAC_1_SQRT_2);
    divides.map(|(x, _)| x).or(multiplies)
}

fn close(v: f32, want: f32) -> bool {
    (v - want).abs() <= 1e-5 * want
}

/// How the product `x · (1 + erf(·)) · 0.5` is spelled, in any order of its two Muls: the inner
/// Mul (removed) and the last (which becomes the Gelu). `gate` is `1 + erf(·)`.
fn halved_product(
    graph: &Graph,
    producers: &HashMap<&str, usize>,
    only: &dyn Fn(&str) -> Option<usize>,
    x: &str,
    gate: &str,
) -> Option<(usize, usize)> {
    let reads = |n: &Node, a: &str, b: &str| {
        n.op == Op::Mul && n.inputs.len() == 2 && {
            let i = &n.inputs;
            (i[0] == a && i[1] == b) || (i[0] == b && i[1] == a)
        }
    };
    let halves = |n: usize, v: &str| other_operand(graph, &graph.nodes[n], Op::Mul, 0.5) == Some(v);
    let first = only(gate)?;
    let f = &graph.nodes[first];
    let out = f.outputs.first()?;
    // (x · gate) · 0.5, or (gate · 0.5) · x: the first Mul's one reader is the last.
    if reads(f, x, gate) || halves(first, gate) {
        let last = only(out)?;
        let ok = graph.nodes[last].outputs.len() == 1
            && if reads(f, x, gate) {
                halves(last, out)
            } else {
                reads(&graph.nodes[last], x, out)
            };
        return ok.then_some((first, last));
    }
    // (x · 0.5) · gate: the half of x is made apart, and read by the last alone.
    let half = f.inputs.iter().find(|v| *v != gate)?;
    let h = *producers.get(half.as_str())?;
    (reads(f, half, gate) && halves(h, x) && only(half) == Some(first)).then_some((h, first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ValueInfo;
    use zeropoint_onnx::{DType, RawTensor};

    fn constant(name: &str, v: f32) -> RawTensor {
        RawTensor::from_f32s(name, &[], &[v])
    }

    fn node(op: Op, inputs: &[&str], output: &str) -> Node {
        Node::new(output, op, inputs, &[output])
    }

    fn graph(initializers: Vec<RawTensor>, nodes: Vec<Node>, output: &str) -> Graph {
        let value = |name: &str| ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: None,
        };
        Graph {
            source: "g.onnx".into(),
            opset: GELU_OPSET,
            inputs: vec![value("x")],
            outputs: vec![value(output)],
            initializers,
            nodes,
        }
    }

    /// Conv → the written-out GELU in each of its spellings → Relu; the GELU becomes one node
    /// with the last Mul's name and output, the rest of the graph unchanged.
    #[test]
    fn every_spelling_after_a_layer_becomes_one_gelu() {
        // The two Muls' inputs: (x · gate) · ½, (gate · ½) · x, (x · ½) · gate.
        let spellings: [[&[&str]; 2]; 3] = [
            [&["c", "gate"], &["m", "half"]],
            [&["gate", "half"], &["c", "m"]],
            [&["c", "half"], &["m", "gate"]],
        ];
        for (k, tail) in spellings.iter().enumerate() {
            let mut nodes = vec![
                node(Op::Conv, &["x", "w"], "c"),
                node(Op::Div, &["c", "sqrt2"], "d"),
                node(Op::Erf, &["d"], "e"),
                node(Op::Add, &["e", "one"], "gate"),
            ];
            nodes.push(node(Op::Mul, tail[0], "m"));
            nodes.push(node(Op::Mul, tail[1], "g"));
            nodes.push(node(Op::Relu, &["g"], "y"));
            let mut g = graph(
                vec![
                    RawTensor::from_f32s("w", &[2, 2, 1, 1], &[1.0, 0.0, 0.0, 1.0]),
                    constant("sqrt2", std::f32::consts::SQRT_2),
                    constant("one", 1.0),
                    constant("half", 0.5),
                ],
                nodes,
                "y",
            );
            let found = find_gelus(&g);
            assert_eq!(fuse_gelus(&mut g, &found), 1, "spelling {k}");
            let ops: Vec<&Op> = g.nodes.iter().map(|n| &n.op).collect();
            assert_eq!(ops, [&Op::Conv, &Op::Gelu, &Op::Relu], "spelling {k}");
            assert_eq!(g.nodes[1].inputs, ["c"]);
            assert_eq!(g.nodes[1].outputs, ["g"]);
        }
    }

    /// Left alone: after a MatMul (ONNX Runtime fuses it itself), with an inner value read
    /// twice, and with a constant that is not the GELU's.
    #[test]
    fn other_patterns_stay() {
        let gelu = |source: Op, sqrt2: f32, extra_reader: bool| {
            let mut nodes = vec![
                node(source, &["x", "w"], "c"),
                node(Op::Mul, &["c", "inv"], "d"),
                node(Op::Erf, &["d"], "e"),
                node(Op::Add, &["one", "e"], "gate"),
                node(Op::Mul, &["gate", "c"], "m"),
                node(Op::Mul, &["half", "m"], "g"),
            ];
            if extra_reader {
                nodes.push(node(Op::Relu, &["e"], "r"));
            }
            let g = graph(
                vec![
                    RawTensor::from_f32s("w", &[2, 2], &[1.0, 0.0, 0.0, 1.0]),
                    constant("inv", 1.0 / sqrt2),
                    constant("one", 1.0),
                    constant("half", 0.5),
                ],
                nodes,
                "g",
            );
            find_gelus(&g).len()
        };
        assert_eq!(gelu(Op::Gemm, std::f32::consts::SQRT_2, false), 1);
        assert_eq!(gelu(Op::MatMul, std::f32::consts::SQRT_2, false), 0);
        assert_eq!(gelu(Op::Gemm, std::f32::consts::SQRT_2, true), 0);
        assert_eq!(gelu(Op::Gemm, 1.5, false), 0);
    }

    /// A broken file's Erf without an input, or without an output, matches nothing.
    #[test]
    fn nodes_without_inputs_or_outputs_match_nothing() {
        for (inputs, outputs) in [(&[][..], &["e"][..]), (&["x"][..], &[][..])] {
            let g = graph(
                vec![constant("one", 1.0)],
                vec![
                    Node::new("erf", Op::Erf, inputs, outputs),
                    node(Op::Add, &["e", "one"], "y"),
                ],
                "y",
            );
            assert!(find_gelus(&g).is_empty());
        }
    }
}
