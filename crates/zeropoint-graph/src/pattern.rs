//! The patterns quantization looks for in a graph: fused groups, a layer with the bias Add and the
//! Relu/Clip that runtimes fuse into it (no requantization between a layer and its activation).

use std::collections::HashSet;

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
