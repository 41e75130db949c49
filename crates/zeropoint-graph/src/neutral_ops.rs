//! Nodes that change nothing: `x + 0`, `x - 0`, `x · 1` and `x / 1` by a scalar constant, and a
//! Cast to the type its input already has.
//!
//! PyTorch's exporter writes `xs = 0; xs += block(x)` as an Add of a 0-d zero (HiFi-GAN's
//! multi-receptive-field sum does this four times). In a quantized model such a node is a float
//! op between two integer ones: its input is dequantized for it, and the sum that reads it runs
//! in float instead of as one integer Add. The node goes and its readers read its input.
//!
//! Only a 0-d float32 constant qualifies: it broadcasts to the other operand's shape whatever
//! that is, so the output is the input, value for value (`-0.0 + 0.0` gives `+0.0`, the one bit
//! that can differ). A node writing a graph output stays: the output's name must be kept.
//!
//! tf2onnx writes a Cast to float32 of float32 values around every op of some models (open_nsfw's
//! ResNet-50: 298), which keeps each BatchNorm's Sub, Mul and Add in float between quantized
//! convolutions. Their input types are read off the graph: a value's type is its initializer's,
//! its graph input's declared one, a Cast's `to`, or, through the ops whose output has the type
//! of their first input (Conv, Add, Relu, Transpose, ...), the type of that input. A Cast whose
//! input type this does not find stays. (Shape inference would find them all, at the cost of a
//! run of the model: 0.5-2.8 s on the public models with Casts.)

use std::collections::{HashMap, HashSet};

use zeropoint_onnx::DType;

use crate::graph::{Graph, Node};
use crate::op::Op;
use crate::rewrite::{constant_operand, rename_inputs, retain_nodes};

/// Removes every node that adds or subtracts a 0-d zero, multiplies or divides by a 0-d one, or
/// casts to its input's type; returns their names.
pub fn drop_neutral_ops(graph: &mut Graph) -> Vec<String> {
    let producers = graph.producers();
    let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    let mut bypass: HashMap<String, String> = HashMap::new();
    let mut dropped = Vec::new();
    let mut keep = vec![true; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        let neutral = neutral_operand(graph, node);
        let Some(x) = neutral.or_else(|| same_type_cast(graph, &producers, node)) else {
            continue;
        };
        let [out] = node.outputs.as_slice() else {
            continue;
        };
        if outputs.contains(out.as_str()) {
            continue;
        }
        // A chain of them (x + 0 + 0) reads the first input.
        let source = bypass.get(x).cloned().unwrap_or_else(|| x.to_string());
        bypass.insert(out.clone(), source);
        dropped.push(node.name.clone());
        keep[i] = false;
    }
    if dropped.is_empty() {
        return dropped;
    }
    retain_nodes(graph, |i| keep[i]);
    rename_inputs(graph, &bypass);
    dropped
}

/// The input of a Cast to the type that input already has.
fn same_type_cast<'a>(
    graph: &Graph,
    producers: &HashMap<&str, usize>,
    node: &'a Node,
) -> Option<&'a str> {
    let [x] = node.inputs.as_slice() else {
        return None;
    };
    (node.op == Op::Cast && cast_type(node)? == value_type(graph, producers, x)?)
        .then_some(x.as_str())
}

/// The element type a Cast converts to.
fn cast_type(node: &Node) -> Option<DType> {
    let to = i32::try_from(node.attribute("to")?.i()).ok()?;
    zeropoint_onnx::tensor_proto::dtype_of(to)
}

/// The element type of `value` where the graph says it without running: see the module's
/// documentation.
fn value_type(graph: &Graph, producers: &HashMap<&str, usize>, value: &str) -> Option<DType> {
    let mut value = value;
    // A chain of type-keeping ops is at most as long as the graph.
    for _ in 0..=graph.nodes.len() {
        if let Some(t) = graph.initializer(value) {
            return Some(t.dtype);
        }
        if let Some(input) = graph.inputs.iter().find(|i| i.name == value) {
            return input.dtype;
        }
        let node = &graph.nodes[*producers.get(value)?];
        match node.op {
            Op::Cast => return cast_type(node),
            Op::Shape | Op::Size => return Some(DType::I64),
            Op::Equal
            | Op::Greater
            | Op::GreaterOrEqual
            | Op::Less
            | Op::LessOrEqual
            | Op::Not
            | Op::And
            | Op::Or
            | Op::Xor => return Some(DType::Bool),
            _ => {}
        }
        let keeps_type = matches!(
            node.op,
            Op::Conv
                | Op::ConvTranspose
                | Op::MatMul
                | Op::Gemm
                | Op::Add
                | Op::Sub
                | Op::Mul
                | Op::Div
                | Op::Relu
                | Op::LeakyRelu
                | Op::Sigmoid
                | Op::Tanh
                | Op::Clip
                | Op::HardSigmoid
                | Op::Elu
                | Op::Softplus
                | Op::Transpose
                | Op::Reshape
                | Op::Flatten
                | Op::Squeeze
                | Op::Unsqueeze
                | Op::Slice
                | Op::Gather
                | Op::Expand
                | Op::Tile
                | Op::Concat
                | Op::Pad
                | Op::Resize
                | Op::MaxPool
                | Op::AveragePool
                | Op::GlobalAveragePool
                | Op::BatchNormalization
                | Op::ReduceMean
                | Op::ReduceMax
                | Op::ReduceMin
                | Op::ReduceSum
                | Op::ReduceProd
                | Op::Identity
                | Op::Neg
                | Op::Abs
                | Op::Exp
                | Op::Log
                | Op::Sqrt
                | Op::Reciprocal
                | Op::Pow
                | Op::Erf
                | Op::Floor
                | Op::Ceil
                | Op::Max
                | Op::Min
                | Op::Softmax
        );
        value = node.inputs.first().filter(|_| keeps_type)?;
    }
    None
}

/// The operand an Add or Sub of a 0-d zero, or a Mul or Div by a 0-d one, passes through.
fn neutral_operand<'g>(graph: &'g Graph, node: &'g Node) -> Option<&'g str> {
    let (neutral, commutes) = match node.op {
        Op::Add => (0.0, true),
        Op::Sub => (0.0, false),
        Op::Mul => (1.0, true),
        Op::Div => (1.0, false),
        _ => return None,
    };
    // The other operand must be a value (two constants are constant folding's).
    let (x, c) = constant_operand(graph, node, &node.op)?;
    // x − 0 and x / 1, not 0 − x nor 1 / x.
    let in_order = commutes || node.inputs[0] == x;
    let scalar = c.shape.is_empty() && c.dtype == DType::F32 && c.len() == 1;
    (in_order && scalar && c.f32s()[0] == neutral && !x.is_empty()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ValueInfo;
    use crate::Node;
    use zeropoint_onnx::RawTensor;

    fn graph(nodes: Vec<Node>) -> Graph {
        let out = ValueInfo {
            name: "y".into(),
            dtype: Some(DType::F32),
            shape: None,
        };
        Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: Vec::new(),
            outputs: vec![out],
            initializers: vec![
                RawTensor::from_f32s("zero", &[], &[0.0]),
                RawTensor::from_f32s("one", &[], &[1.0]),
                RawTensor::from_f32s("zero_1d", &[1], &[0.0]),
                RawTensor::from_f32s("two", &[], &[2.0]),
            ],
            nodes,
        }
    }

    /// x + 0, 1 · (·), (·) − 0 and (·) / 1 by 0-d constants go, a chain of them included, and
    /// the Relu reads x; a [1] zero (it can raise a 0-d operand's rank), a 0-d two, 0 − x and
    /// 1 / x stay, and so does a neutral node writing the graph output.
    #[test]
    fn only_neutral_scalars_are_removed() {
        let mut g = graph(vec![
            Node::new("add", Op::Add, &["x", "zero"], &["a"]),
            Node::new("mul", Op::Mul, &["one", "a"], &["b"]),
            Node::new("sub", Op::Sub, &["b", "zero"], &["c"]),
            Node::new("div", Op::Div, &["c", "one"], &["d"]),
            Node::new("relu", Op::Relu, &["d"], &["r"]),
            Node::new("add_1d", Op::Add, &["r", "zero_1d"], &["e"]),
            Node::new("mul_two", Op::Mul, &["e", "two"], &["f"]),
            Node::new("neg", Op::Sub, &["zero", "f"], &["h"]),
            Node::new("inv", Op::Div, &["one", "h"], &["i"]),
            Node::new("last", Op::Add, &["i", "zero"], &["y"]),
        ]);
        assert_eq!(drop_neutral_ops(&mut g), ["add", "mul", "sub", "div"]);
        let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["relu", "add_1d", "mul_two", "neg", "inv", "last"]);
        assert_eq!(g.nodes[0].inputs, ["x"]);
        assert_eq!(g.nodes[1].inputs, ["r", "zero_1d"]);
    }

    /// Casts go where the graph says their input already has the type: through type-keeping
    /// ops to a declared input, from Shape (int64) and from a comparison (bool). A Cast that
    /// converts stays, and so does one whose input type is not said (a Where's output).
    #[test]
    fn casts_go_where_the_graph_says_the_type() {
        let cast = |name: &str, input: &str, output: &str, to: i64| {
            let mut n = Node::new(name, Op::Cast, &[input], &[output]);
            n.attributes = vec![crate::graph::int_attribute("to", to)];
            n
        };
        let mut g = graph(vec![
            Node::new("relu", Op::Relu, &["x"], &["r"]),
            Node::new("t", Op::Transpose, &["r"], &["t"]),
            cast("float", "t", "f", 1),
            Node::new("shape", Op::Shape, &["f"], &["s"]),
            cast("int64", "s", "i", 7),
            cast("to_float", "i", "i_f", 1),
            Node::new("gt", Op::Greater, &["f", "zero"], &["b"]),
            cast("bool", "b", "bb", 9),
            Node::new("where", Op::Where, &["bb", "f", "i_f"], &["w"]),
            cast("unknown", "w", "y", 1),
        ]);
        g.inputs = vec![ValueInfo {
            name: "x".into(),
            dtype: Some(DType::F32),
            shape: None,
        }];
        g.outputs[0].name = "out".into();
        g.nodes
            .push(Node::new("id", Op::Identity, &["y"], &["out"]));
        assert_eq!(drop_neutral_ops(&mut g), ["float", "int64", "bool"]);
        let reads = |name: &str| {
            g.nodes
                .iter()
                .find(|n| n.name == name)
                .unwrap()
                .inputs
                .clone()
        };
        assert_eq!(reads("shape"), ["t"]);
        assert_eq!(reads("to_float"), ["s"]);
        assert_eq!(reads("where"), ["b", "t", "i_f"]);
        assert_eq!(reads("unknown"), ["w"]);
    }
}
