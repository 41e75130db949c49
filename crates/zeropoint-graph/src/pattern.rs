//! The patterns quantization looks for in a graph: fused groups, a layer with the bias Add and the
//! Relu/Clip that runtimes fuse into it (no requantization between a layer and its activation).

use std::collections::{HashMap, HashSet};

use crate::graph::{Graph, Node};
use crate::op::Op;

/// A layer and what runtimes fuse into it: the unit of activation quantization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedGroup {
    /// Node names, the anchor (Conv, ConvTranspose, Gemm, MatMul) first.
    pub nodes: Vec<String>,
    /// The value the group produces: where its output quantizer goes.
    pub output: String,
}

/// The bias Add of MatMul `i` (by a constant [K, M] weight): the Add that alone reads its output,
/// whose other input is a float constant of M values laid along the last axis ([M], [1, M],
/// [1, 1, M], ...) that nothing else reads. Exporters write a linear layer applied to a sequence
/// that way; canonicalization makes a Gemm of it only for a matrix input. Returns (the Add's
/// index, the constant's input index). `consumers` is [`Graph::consumers`].
pub fn matmul_bias_add(
    graph: &Graph,
    consumers: &HashMap<String, Vec<usize>>,
    i: usize,
) -> Option<(usize, usize)> {
    let node = &graph.nodes[i];
    if node.op != Op::MatMul || node.inputs.len() != 2 {
        return None;
    }
    let w = graph.float_initializer(&node.inputs[1])?;
    let &[_, channels] = w.shape.as_slice() else {
        return None;
    };
    let value = &node.outputs[0];
    let sole = |v: &str| match consumers.get(v).map(Vec::as_slice) {
        Some(&[one]) => Some(one),
        _ => None,
    };
    let graph_output = graph.outputs.iter().any(|o| &o.name == value);
    let add = sole(value).filter(|_| !graph_output)?;
    let a = &graph.nodes[add];
    if a.op != Op::Add || a.inputs.len() != 2 || !a.subgraphs.is_empty() {
        return None;
    }
    let input = usize::from(a.inputs[0] == *value);
    let (name, other) = (&a.inputs[input], &a.inputs[1 - input]);
    let t = graph.float_initializer(name)?;
    let along_last =
        t.shape.last() == Some(&channels) && t.shape.iter().rev().skip(1).all(|&d| d == 1);
    (other == value && along_last && sole(name) == Some(add)).then_some((add, input))
}

/// The fused groups of a graph: each Conv/ConvTranspose/Gemm/MatMul with the bias Add and the
/// Relu/Clip that follow it alone.
pub fn fused_groups(graph: &Graph) -> Vec<FusedGroup> {
    let consumers = graph.consumers();
    let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    // The only consumer of `value`, if it is one node and the value is not a graph output.
    let sole = |value: &str| -> Option<&Node> {
        match consumers.get(value).map(Vec::as_slice) {
            Some([i]) if !outputs.contains(value) => Some(&graph.nodes[*i]),
            _ => None,
        }
    };
    let mut groups = Vec::new();
    for node in &graph.nodes {
        if !matches!(
            node.op,
            Op::Conv | Op::ConvTranspose | Op::Gemm | Op::MatMul
        ) {
            continue;
        }
        let mut members = vec![node.name.clone()];
        let mut out = node.outputs[0].clone();
        if let Some(add) = sole(&out).filter(|n| n.op == Op::Add) {
            let other = add.inputs.iter().find(|i| **i != out);
            if other.is_some_and(|o| graph.initializer(o).is_some()) {
                members.push(add.name.clone());
                out = add.outputs[0].clone();
            }
        }
        if let Some(act) = sole(&out).filter(|n| matches!(n.op, Op::Relu | Op::Clip)) {
            members.push(act.name.clone());
            out = act.outputs[0].clone();
        }
        groups.push(FusedGroup {
            nodes: members,
            output: out,
        });
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ValueInfo;
    use zeropoint_onnx::{DType, RawTensor};

    fn node(op: Op, inputs: &[&str], output: &str) -> Node {
        Node::new(output, op, inputs, &[output])
    }

    /// MatMul(x, w [2, 3]) → Add(·, b) → Relu, with `b` of `shape`, and `extra` nodes.
    fn graph(shape: &[usize], extra: Vec<Node>, output: &str) -> Graph {
        let value = |name: &str| ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: None,
        };
        let mut nodes = vec![
            node(Op::MatMul, &["x", "w"], "y"),
            node(Op::Add, &["b", "y"], "z"),
            node(Op::Relu, &["z"], "r"),
        ];
        nodes.extend(extra);
        let n = shape.iter().product();
        Graph {
            source: "g.onnx".into(),
            opset: 17,
            inputs: vec![value("x")],
            outputs: vec![value(output)],
            initializers: vec![
                RawTensor::from_f32s("w", &[2, 3], &[1.0; 6]),
                RawTensor::from_f32s("b", shape, &vec![0.5; n]),
            ],
            nodes,
        }
    }

    fn found(g: &Graph) -> Option<(usize, usize)> {
        matmul_bias_add(g, &g.consumers(), 0)
    }

    /// The Add is found with the constant in either operand and any shape laid along the last
    /// axis; not with a constant across another axis, one something else reads, or a MatMul
    /// output that is also a graph output.
    #[test]
    fn a_matmul_bias_add_is_its_per_channel_constant_alone() {
        for shape in [&[3][..], &[1, 3], &[1, 1, 3]] {
            assert_eq!(found(&graph(shape, vec![], "r")), Some((1, 0)), "{shape:?}");
        }
        let mut swapped = graph(&[3], vec![], "r");
        swapped.nodes[1].inputs = vec!["y".into(), "b".into()];
        assert_eq!(found(&swapped), Some((1, 1)));
        for shape in [&[3, 1][..], &[1][..], &[2, 3]] {
            assert_eq!(found(&graph(shape, vec![], "r")), None, "{shape:?}");
        }
        let shared = graph(&[3], vec![node(Op::Add, &["r", "b"], "s")], "s");
        assert_eq!(found(&shared), None);
        assert_eq!(found(&graph(&[3], vec![], "y")), None);
        let read_twice = graph(&[3], vec![node(Op::Relu, &["y"], "s")], "s");
        assert_eq!(found(&read_twice), None);
    }
}
