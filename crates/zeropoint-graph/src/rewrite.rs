//! Small edits the rewriting passes share: a binary node's constant operand, a constant's
//! values per channel, new initializers with unique names, a node absorbed into its producer,
//! values renamed where nodes read them, the one reader of a value.

use std::collections::HashMap;

use zeropoint_onnx::{DType, RawTensor};

use crate::graph::{Graph, Node};
use crate::op::Op;

/// The values of constant `c` per channel (axis 1) of a value of `rank` dims with `channels`
/// channels, when it is float32 and broadcasts that way: [C,1,...] (rank − 1 dims), [1,C,1,...]
/// (rank dims) or one value for all (a plain [C] would broadcast along the last axis instead).
/// None for no channels, or data that is not its shape (a broken file).
pub(crate) fn channel_values(c: &RawTensor, rank: usize, channels: usize) -> Option<Vec<f64>> {
    let shape = c.shape.as_slice();
    let ones = |d: &[usize]| d.iter().all(|&v| v == 1);
    let per_channel = match shape.len() {
        n if n + 1 == rank && n >= 1 => shape[0] == channels && ones(&shape[1..]),
        n if n == rank && n >= 2 => shape[0] == 1 && shape[1] == channels && ones(&shape[2..]),
        _ => false,
    };
    let single = shape.len() <= rank && ones(shape);
    let whole = channels > 0 && c.len() == if single { 1 } else { channels };
    if !(per_channel || single) || !whole || c.dtype != DType::F32 {
        return None;
    }
    let values = c.to_f64s();
    Some(if single {
        vec![values[0]; channels]
    } else {
        values
    })
}

/// A node of `op` (a binary operator) of a value and an initializer: the value's name and the
/// initializer.
pub(crate) fn constant_operand<'g>(
    graph: &'g Graph,
    node: &'g Node,
    op: &Op,
) -> Option<(&'g str, &'g RawTensor)> {
    if node.op != *op || node.inputs.len() != 2 {
        return None;
    }
    match (
        graph.initializer(&node.inputs[0]),
        graph.initializer(&node.inputs[1]),
    ) {
        (None, Some(c)) => Some((&node.inputs[0], c)),
        (Some(c), None) => Some((&node.inputs[1], c)),
        _ => None,
    }
}

/// The operand of `node` (an `op` of two inputs) other than a constant equal to `value` (to a
/// millionth of it).
pub(crate) fn other_operand<'g>(
    graph: &'g Graph,
    node: &'g Node,
    op: Op,
    value: f32,
) -> Option<&'g str> {
    let (x, c) = constant_operand(graph, node, &op)?;
    one_value(c)
        .is_some_and(|v| (v - value).abs() <= 1e-6 * value.abs())
        .then_some(x)
}

/// The value of a float constant of one element.
pub(crate) fn one_value(t: &RawTensor) -> Option<f32> {
    (t.dtype.is_float() && t.len() == 1).then(|| t.to_f32s()[0])
}

/// Keeps the main graph's nodes whose index `keep` accepts, in order.
pub(crate) fn retain_nodes(graph: &mut Graph, keep: impl Fn(usize) -> bool) {
    let mut i = 0;
    graph.nodes.retain(|_| {
        i += 1;
        keep(i - 1)
    });
}

/// A new float32 initializer named after `base` (made unique): its name.
pub(crate) fn add_f32_initializer(
    graph: &mut Graph,
    base: &str,
    shape: &[usize],
    values: &[f32],
) -> String {
    let name = unique_name(graph, base);
    graph
        .initializers
        .push(RawTensor::from_f32s(&name, shape, values));
    name
}

/// Node `anchor` writes the output of node `next`, which read it alone, and `next` goes: (next's
/// name, anchor's name), the pair the folds report.
pub(crate) fn absorb(graph: &mut Graph, anchor: usize, next: usize) -> (String, String) {
    let output = graph.nodes[next].outputs[0].clone();
    graph.nodes[anchor].outputs = vec![output];
    let pair = (
        graph.nodes[next].name.clone(),
        graph.nodes[anchor].name.clone(),
    );
    graph.nodes.remove(next);
    pair
}

/// Renames the values nodes read (in subgraphs too) as `names` maps them, and the outputs of
/// subgraphs that pass an outer value on as it is (an If branch returning a weight).
pub(crate) fn rename_inputs(graph: &mut Graph, names: &HashMap<String, String>) {
    for node in &mut graph.nodes {
        for input in &mut node.inputs {
            if let Some(to) = names.get(input) {
                *input = to.clone();
            }
        }
        for (_, sub) in &mut node.subgraphs {
            rename_inputs(sub, names);
            for output in &mut sub.outputs {
                if let Some(to) = names.get(&output.name) {
                    output.name = to.clone();
                }
            }
        }
    }
}

/// The one node that reads `value` (by [`Graph::consumers`]), where nothing else, a graph output
/// included, reads it.
pub(crate) fn only_reader(
    graph: &Graph,
    consumers: &HashMap<String, Vec<usize>>,
    value: &str,
) -> Option<usize> {
    match consumers.get(value).map(Vec::as_slice) {
        Some([one]) if !graph.outputs.iter().any(|o| o.name == value) => Some(*one),
        _ => None,
    }
}

/// `base`, or `base_2`, `base_3`, ... if a value already has that name.
pub(crate) fn unique_name(graph: &Graph, base: &str) -> String {
    let taken = |n: &str| {
        graph.initializer(n).is_some()
            || graph.inputs.iter().any(|i| i.name == n)
            || graph.nodes.iter().any(|x| x.outputs.iter().any(|o| o == n))
    };
    let mut name = base.to_string();
    let mut k = 2;
    while taken(&name) {
        name = format!("{base}_{k}");
        k += 1;
    }
    name
}
