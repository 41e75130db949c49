//! Reshapes whose target shape is computed from the reshaped tensor's own dimensions, as
//! exporters write a transformer's head split and merge:
//!
//! ```text
//! Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), [12], [32]))
//! ```
//!
//! A dimension copied from the same position of x is what Reshape's 0 means, so the shape
//! becomes the constant [0, 0, 12, 32] and the Shape → Gather → Unsqueeze → Concat chain goes:
//! five small ops per Reshape that a runtime would run on every call. (ONNX Runtime fuses the
//! same pattern in float models, but not once quantization puts a DequantizeLinear between the
//! Shape's input and the Reshape's.)

use std::collections::HashMap;

use zeropoint_onnx::{DType, RawTensor};

use crate::graph::Names;
use crate::{Graph, Node, Op};

/// Makes the shape of every Reshape of that form a constant; returns how many. The chains left
/// unread are removed by `canonicalize::remove_dead`.
pub fn copy_dims_in_reshapes(graph: &mut Graph) -> usize {
    let producers = graph.producers();
    let at = Producers { graph, producers };
    let mut made = Vec::new();
    for (i, reshape) in graph.nodes.iter().enumerate() {
        if reshape.op != Op::Reshape
            || reshape.inputs.len() != 2
            || reshape
                .attribute("allowzero")
                .and_then(|a| a.i)
                .unwrap_or(0)
                != 0
        {
            continue;
        }
        if let Some(dims) = constant_dims(&at, &reshape.inputs[1], &reshape.inputs[0]) {
            made.push((i, dims));
        }
    }
    let mut names = Names::new(graph);
    for (i, dims) in &made {
        let name = names.fresh(&format!("{}_shape", graph.nodes[*i].name));
        graph
            .initializers
            .push(RawTensor::from_i64s(&name, &[dims.len()], dims, DType::I64));
        graph.nodes[*i].inputs[1] = name;
    }
    made.len()
}

/// The dims of `shape` as constants, a dimension of `data` copied from its own position as 0,
/// if every piece of the Concat is a constant or such a copy.
fn constant_dims(at: &Producers, shape: &str, data: &str) -> Option<Vec<i64>> {
    let graph = at.graph;
    let concat = at.of(shape)?;
    if concat.op != Op::Concat || concat.attribute("axis").and_then(|a| a.i) != Some(0) {
        return None;
    }
    let mut dims = Vec::new();
    for piece in &concat.inputs {
        match graph.initializer(piece) {
            Some(t) if t.dtype == DType::I64 => dims.extend(t.to_i64s()),
            Some(_) => return None,
            None => {
                let position = dims.len() as i64;
                (copied_dim(at, piece, data)? == position).then_some(())?;
                dims.push(0);
            }
        }
    }
    // A 0 in a constant piece meant "copy" already (allowzero = 0).
    Some(dims)
}

/// The index i of `Unsqueeze(Gather(Shape(data), i), axes = [0])`, if `value` is that.
fn copied_dim(at: &Producers, value: &str, data: &str) -> Option<i64> {
    let graph = at.graph;
    let unsqueeze = at.of(value)?;
    let axes = match unsqueeze.inputs.get(1) {
        Some(a) => graph.initializer(a)?.to_i64s(),
        None => unsqueeze.attribute("axes")?.ints.clone(),
    };
    if unsqueeze.op != Op::Unsqueeze || axes != [0] {
        return None;
    }
    let gather = at.of(&unsqueeze.inputs[0])?;
    let index = graph.initializer(gather.inputs.get(1)?)?;
    if gather.op != Op::Gather
        || gather.attribute("axis").and_then(|a| a.i).unwrap_or(0) != 0
        || !index.shape.is_empty()
    {
        return None;
    }
    let shape = at.of(&gather.inputs[0])?;
    let whole = shape.attribute("start").is_none() && shape.attribute("end").is_none();
    (shape.op == Op::Shape && whole && shape.inputs[0] == data).then(|| index.to_i64s()[0])
}

/// The node producing each value of a graph, looked up by [`Graph::producers`]'s map.
struct Producers<'g> {
    graph: &'g Graph,
    producers: HashMap<&'g str, usize>,
}

impl<'g> Producers<'g> {
    fn of(&self, value: &str) -> Option<&'g Node> {
        self.producers.get(value).map(|&i| &self.graph.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::int_attribute;

    /// `Reshape(x, Concat(dim(x, a), dim(x, b), [12], [32]))`.
    fn head_split(a: i64, b: i64) -> Graph {
        let scalar = |name: &str, v: i64| RawTensor::from_i64s(name, &[], &[v], DType::I64);
        let vector = |name: &str, v: i64| RawTensor::from_i64s(name, &[1], &[v], DType::I64);
        let mut nodes = vec![Node::new("shape", Op::Shape, &["x"], &["s"])];
        for i in ["0", "1"] {
            let mut gather = Node::new(
                format!("gather{i}"),
                Op::Gather,
                &["s", &format!("i{i}")],
                &[&format!("g{i}")],
            );
            gather.attributes.push(int_attribute("axis", 0));
            nodes.push(gather);
            nodes.push(Node::new(
                format!("unsqueeze{i}"),
                Op::Unsqueeze,
                &[&format!("g{i}"), "axes"],
                &[&format!("u{i}")],
            ));
        }
        let mut concat = Node::new("concat", Op::Concat, &["u0", "u1", "h", "d"], &["shape_of"]);
        concat.attributes.push(int_attribute("axis", 0));
        nodes.push(concat);
        nodes.push(Node::new(
            "reshape",
            Op::Reshape,
            &["x", "shape_of"],
            &["y"],
        ));
        Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: Vec::new(),
            outputs: Vec::new(),
            initializers: vec![
                scalar("i0", a),
                scalar("i1", b),
                vector("axes", 0),
                vector("h", 12),
                vector("d", 32),
            ],
            nodes,
        }
    }

    #[test]
    fn dims_copied_from_their_own_position_become_zeros() {
        let mut g = head_split(0, 1);
        assert_eq!(copy_dims_in_reshapes(&mut g), 1);
        let reshape = g.nodes.iter().find(|n| n.name == "reshape").unwrap();
        let shape = g.initializer(&reshape.inputs[1]).unwrap();
        assert_eq!(shape.to_i64s(), vec![0, 0, 12, 32]);
    }

    #[test]
    fn dims_from_another_position_or_tensor_are_left_alone() {
        let mut swapped = head_split(1, 0);
        assert_eq!(copy_dims_in_reshapes(&mut swapped), 0);
        let mut other = head_split(0, 1);
        other.nodes[0].inputs[0] = "z".into();
        assert_eq!(copy_dims_in_reshapes(&mut other), 0);
        assert_eq!(other.nodes.last().unwrap().inputs[1], "shape_of");
    }
}
