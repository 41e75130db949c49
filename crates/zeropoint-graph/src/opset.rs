//! Upgrading a graph to a newer opset of the default domain, for exports that need a newer
//! QuantizeLinear/DequantizeLinear than the model imports: per-channel parameters need opset 13,
//! 16-bit and 4-bit types opset 21.
//!
//! Between opsets 7 and 22 most operators only gained element types. The operators zeropoint
//! runs whose signature or meaning changed are rewritten the way onnx's version converter does:
//! - opset 9: BatchNormalization loses `spatial` (only the default, 1, is kept);
//! - opset 10: Slice's `starts`, `ends` and `axes` attributes become inputs;
//! - opset 11: Clip's `min`/`max` and Pad's `pads`/`value` become inputs; Resize-10 is refused
//!   (its coordinate mapping has no exact opset-11 spelling in general);
//! - opset 12: Dropout's `ratio` attribute becomes an input;
//! - opset 13: the `axes` of ReduceSum, Squeeze and Unsqueeze and the `split` of Split become
//!   inputs; Softmax and LogSoftmax stop flattening their input to 2-D at `axis`, so unless the
//!   axis is the last one (-1) the node is wrapped in Flatten and Reshape; Resize loses the
//!   `tf_half_pixel_for_nn` mode (refused);
//! - opset 18: the `axes` of the other Reduce operators become an input, and a Split without a
//!   `split` input states its `num_outputs`;
//! - opset 20: DFT's `axis` attribute becomes an input (whose default also moved, from 1 to -2,
//!   so an opset-17 DFT without the attribute gets axis 1 stated).
//!
//! Each opset with a change is one step, a function that rewrites a node of the opset before it
//! into its own; an upgrade runs the steps between the model's opset and the target, in order,
//! on every node. Models below opset 7 are refused, as ONNX Runtime does. Nodes of other domains
//! are left as they are.

use std::collections::HashMap;
use std::path::Path;

use zeropoint_onnx::proto::AttributeProto;
use zeropoint_onnx::{DType, RawTensor};

use crate::error::{Error, Result};
use crate::evaluator::Evaluator;
use crate::graph::{int_attribute, Graph, Names, Node, ValueType};
use crate::op::Op;

/// The oldest opset an upgrade starts from (the oldest ONNX Runtime runs).
pub const OLDEST: i64 = 7;

/// The newest opset an upgrade may target (the newest whose operators zeropoint knows).
pub const NEWEST: i64 = 22;

/// What a step may change besides its node: the graph's initializers (attributes that become
/// inputs), with fresh names.
struct Rewrite<'a> {
    source: &'a Path,
    from: i64,
    to: i64,
    initializers: &'a mut Vec<RawTensor>,
    names: Names,
    /// The type of every value, when a step needs it (opset 11's Clip and Pad).
    types: Option<HashMap<String, ValueType>>,
}

/// One opset step: rewrites `node` for the step's opset, returning the nodes to add after it.
type Step = fn(&mut Rewrite, &mut Node) -> Result<Vec<Node>>;

/// The opsets that changed an operator zeropoint runs, with their steps, in order.
const STEPS: [(i64, Step); 7] = [
    (9, to_9),
    (10, to_10),
    (11, to_11),
    (12, to_12),
    (13, to_13),
    (18, to_18),
    (20, to_20),
];

/// Rewrites `g` for opset `to` of the default domain and sets `g.opset`; nothing happens if the
/// graph already has that opset or a newer one. `eval` tells value types where a step needs them.
pub fn upgrade(g: &mut Graph, to: i64, eval: &dyn Evaluator) -> Result<()> {
    let from = g.opset;
    if from >= to {
        return Ok(());
    }
    if from < OLDEST {
        return Err(Error::model(
            &g.source,
            format!(
                "cannot upgrade opset {from} to {to}: models below opset {OLDEST} are not upgraded"
            ),
        ));
    }
    if to > NEWEST {
        return Err(Error::model(
            &g.source,
            format!("cannot upgrade to opset {to}: the newest supported is {NEWEST}"),
        ));
    }
    let crosses = |v: i64| from < v && v <= to;
    // Clip's and Pad's scalar inputs take the element type of their data (attributes were float).
    let clip_or_pad = |n: &&Node| matches!(n.op, Op::Clip | Op::Pad);
    let types = if crosses(11) && g.all_nodes().iter().any(clip_or_pad) {
        Some(eval.infer(g)?)
    } else {
        None
    };
    let source = g.source.clone();
    let mut rw = Rewrite {
        source: &source,
        from,
        to,
        names: Names::new(g),
        initializers: &mut g.initializers,
        types,
    };
    g.nodes = upgrade_nodes(&mut rw, std::mem::take(&mut g.nodes))?;
    set_opset(g, to);
    g.sort()
}

/// Runs the steps of `rw` on `nodes` and on the nodes of their subgraphs. What a step adds to a
/// subgraph may read initializers it adds to the main graph: subgraphs see their enclosing
/// graphs' values.
fn upgrade_nodes(rw: &mut Rewrite, nodes: Vec<Node>) -> Result<Vec<Node>> {
    let mut upgraded = Vec::with_capacity(nodes.len());
    for mut node in nodes {
        for (_, sub) in &mut node.subgraphs {
            sub.nodes = upgrade_nodes(rw, std::mem::take(&mut sub.nodes))?;
        }
        if !matches!(node.domain.as_str(), "" | "ai.onnx") {
            upgraded.push(node);
            continue;
        }
        let mut added = Vec::new();
        for (version, step) in STEPS {
            if rw.from < version && version <= rw.to {
                added.extend(step(rw, &mut node)?);
            }
        }
        upgraded.push(node);
        upgraded.extend(added);
    }
    Ok(upgraded)
}

fn set_opset(g: &mut Graph, opset: i64) {
    g.opset = opset;
    for n in &mut g.nodes {
        for (_, sub) in &mut n.subgraphs {
            set_opset(sub, opset);
        }
    }
}

/// Opset 9: BatchNormalization loses `spatial`. The attribute goes either way; only its
/// non-default value has no opset-9 meaning.
fn to_9(rw: &mut Rewrite, node: &mut Node) -> Result<Vec<Node>> {
    if node.op == Op::BatchNormalization
        && take_attribute(node, "spatial").is_some_and(|a| a.i() == 0)
    {
        return Err(Error::model(
            rw.source,
            format!(
                "cannot upgrade {}: spatial=0 BatchNormalization was removed in opset 9",
                node.label()
            ),
        ));
    }
    Ok(vec![])
}

/// Opset 10: Slice's `starts`, `ends` and `axes` become inputs.
fn to_10(rw: &mut Rewrite, node: &mut Node) -> Result<Vec<Node>> {
    if node.op == Op::Slice {
        for (at, attr) in [(1, "starts"), (2, "ends"), (3, "axes")] {
            if let Some(a) = take_attribute(node, attr) {
                rw.add_input(node, at, attr, ints(&a.ints));
            }
        }
    }
    Ok(vec![])
}

/// Opset 11: Clip's `min`/`max` and Pad's `pads`/`value` become inputs; Scatter is renamed
/// ScatterElements (the same operator); Resize-10 is refused.
fn to_11(rw: &mut Rewrite, node: &mut Node) -> Result<Vec<Node>> {
    match node.op {
        Op::Scatter => node.op = Op::ScatterElements,
        Op::Clip => {
            for (at, attr) in [(1, "min"), (2, "max")] {
                if let Some(a) = take_attribute(node, attr) {
                    let v = rw.scalar_like(node, a.f());
                    rw.add_input(node, at, attr, v);
                }
            }
        }
        Op::Pad => {
            if let Some(a) = take_attribute(node, "pads") {
                rw.add_input(node, 1, "pads", ints(&a.ints));
            }
            if let Some(a) = take_attribute(node, "value") {
                let v = rw.scalar_like(node, a.f());
                rw.add_input(node, 2, "value", v);
            }
        }
        Op::Resize => {
            return Err(Error::model(
                rw.source,
                format!(
                    "cannot upgrade {} from opset {}: Resize changed its inputs and coordinate mapping in opset 11",
                    node.label(),
                    rw.from
                ),
            ));
        }
        _ => {}
    }
    Ok(vec![])
}

/// Opset 12: Dropout's `ratio` becomes an input.
fn to_12(rw: &mut Rewrite, node: &mut Node) -> Result<Vec<Node>> {
    if node.op == Op::Dropout {
        if let Some(ratio) = take_attribute(node, "ratio") {
            let v = RawTensor::from_f32s("", &[], &[ratio.f()]);
            rw.add_input(node, 1, "ratio", v);
        }
    }
    Ok(vec![])
}

/// Opset 13: the `axes` of ReduceSum, Squeeze and Unsqueeze and the `split` of Split become
/// inputs; Softmax and LogSoftmax stop flattening to 2-D; Resize loses `tf_half_pixel_for_nn`.
fn to_13(rw: &mut Rewrite, node: &mut Node) -> Result<Vec<Node>> {
    match node.op {
        Op::ReduceSum | Op::Squeeze | Op::Unsqueeze => rw.move_ints(node, "axes"),
        Op::Split => rw.move_ints(node, "split"),
        Op::Softmax | Op::LogSoftmax => return Ok(flatten_softmax(&mut rw.names, node)),
        Op::Resize => {
            let mode = node
                .attribute("coordinate_transformation_mode")
                .map(|a| String::from_utf8_lossy(a.s()).into_owned());
            if mode.as_deref() == Some("tf_half_pixel_for_nn") {
                return Err(Error::model(
                    rw.source,
                    format!(
                        "cannot upgrade {} to opset {}: coordinate_transformation_mode 'tf_half_pixel_for_nn' was removed in opset 13",
                        node.label(),
                        rw.to
                    ),
                ));
            }
        }
        _ => {}
    }
    Ok(vec![])
}

/// Opset 18: the `axes` of the other Reduce operators become an input, and a Split without a
/// `split` input states its `num_outputs`.
fn to_18(rw: &mut Rewrite, node: &mut Node) -> Result<Vec<Node>> {
    match node.op {
        Op::ReduceMean
        | Op::ReduceMax
        | Op::ReduceMin
        | Op::ReduceProd
        | Op::ReduceSumSquare
        | Op::ReduceL1
        | Op::ReduceL2
        | Op::ReduceLogSum
        | Op::ReduceLogSumExp => rw.move_ints(node, "axes"),
        Op::Split if node.inputs.get(1).is_none_or(|s| s.is_empty()) => {
            let n = node.outputs.len() as i64;
            node.attributes.push(int_attribute("num_outputs", n));
        }
        _ => {}
    }
    Ok(vec![])
}

/// Opset 20: DFT's `axis` becomes its third input, a scalar; opset 17's default was 1.
fn to_20(rw: &mut Rewrite, node: &mut Node) -> Result<Vec<Node>> {
    if node.op == Op::DFT {
        let axis = take_attribute(node, "axis").map_or(1, |a| a.i());
        rw.add_input(
            node,
            2,
            "axis",
            RawTensor::from_i64s("", &[], &[axis], DType::I64),
        );
    }
    Ok(vec![])
}

/// An int64 vector (axes, pads, starts, ...) as an initializer's data.
fn ints(values: &[i64]) -> RawTensor {
    RawTensor::from_i64s("", &[values.len()], values, DType::I64)
}

impl Rewrite<'_> {
    /// A scalar of `node`'s data type holding `v` (a float attribute turned into an input),
    /// converted as a Cast would.
    fn scalar_like(&self, node: &Node, v: f32) -> RawTensor {
        let dtype = self
            .types
            .as_ref()
            .and_then(|t| node.inputs.first().and_then(|x| t.get(x)))
            .map_or(DType::F32, |t| t.dtype);
        RawTensor::from_f64s("", &[], &[f64::from(v)], dtype)
    }

    /// Turns the ints attribute `name` (if present) into an int64 initializer at input 1.
    fn move_ints(&mut self, node: &mut Node, name: &str) {
        if let Some(a) = take_attribute(node, name) {
            self.add_input(node, 1, name, ints(&a.ints));
        }
    }

    /// Adds `value` as an initializer and makes it input `at` of `node`, padding skipped
    /// optional inputs with "".
    fn add_input(&mut self, node: &mut Node, at: usize, what: &str, value: RawTensor) {
        let name = self.names.fresh(&format!("{}_{what}", node.name));
        self.initializers.push(RawTensor {
            name: name.clone(),
            ..value
        });
        if node.inputs.len() <= at {
            node.inputs.resize(at + 1, String::new());
        }
        node.inputs[at] = name;
    }
}

fn take_attribute(node: &mut Node, name: &str) -> Option<AttributeProto> {
    let i = node.attributes.iter().position(|a| a.name() == name)?;
    Some(node.attributes.remove(i))
}

/// Before opset 13, Softmax(x, axis) is softmax over x flattened to 2-D at `axis`. From 13 it is
/// along `axis` only, so the old meaning becomes Reshape(Softmax(Flatten(x, axis), -1), Shape(x)).
/// `node` becomes the inner Softmax; the Shape, Flatten and Reshape nodes are returned (Shape and
/// Flatten must run before it: the graph is sorted afterwards).
fn flatten_softmax(names: &mut Names, node: &mut Node) -> Vec<Node> {
    let axis = take_attribute(node, "axis").map_or(1, |a| a.i());
    node.attributes.push(int_attribute("axis", -1));
    if axis == -1 {
        return Vec::new();
    }
    let (Some(x), Some(y)) = (node.inputs.first().cloned(), node.outputs.first().cloned()) else {
        return Vec::new(); // the executor names what is missing
    };
    let base = node.name.clone();
    let shape = names.fresh(&format!("{base}_input_shape"));
    let flat = names.fresh(&format!("{base}_flattened"));
    let inner = names.fresh(&format!("{base}_2d"));
    let new = |op: Op, name: String, inputs: Vec<String>, output: &str, attributes| Node {
        name,
        op,
        domain: String::new(),
        inputs,
        outputs: vec![output.to_string()],
        attributes,
        subgraphs: vec![],
    };
    node.inputs[0] = flat.clone();
    node.outputs[0] = inner.clone();
    vec![
        new(
            Op::Shape,
            names.fresh(&format!("{base}_Shape")),
            vec![x.clone()],
            &shape,
            vec![],
        ),
        new(
            Op::Flatten,
            names.fresh(&format!("{base}_Flatten")),
            vec![x],
            &flat,
            vec![int_attribute("axis", axis)],
        ),
        new(
            Op::Reshape,
            names.fresh(&format!("{base}_Reshape")),
            vec![inner, shape],
            &y,
            vec![],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::Structural;
    use crate::graph::{ints_attribute, Dim, ValueInfo};

    fn graph(opset: i64, nodes: Vec<Node>, output: &str) -> Graph {
        let info = |name: &str| ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Fixed(2), Dim::Fixed(6)]),
        };
        Graph {
            source: "old.onnx".into(),
            opset,
            inputs: vec![info("x")],
            outputs: vec![info(output)],
            initializers: vec![],
            nodes,
        }
    }

    #[test]
    fn attributes_that_became_inputs_are_moved_step_by_step() {
        let mut slice = Node::new("slice", Op::Slice, &["x"], &["s"]);
        slice.attributes = vec![
            ints_attribute("starts", &[1]),
            ints_attribute("ends", &[4]),
            ints_attribute("axes", &[1]),
        ];
        let mut squeeze = Node::new("squeeze", Op::Squeeze, &["s"], &["y"]);
        squeeze.attributes = vec![ints_attribute("axes", &[0])];
        let mut g = graph(9, vec![slice, squeeze], "y");
        upgrade(&mut g, 13, &Structural).unwrap();
        assert_eq!(g.opset, 13);
        assert!(g.nodes.iter().all(|n| n.attributes.is_empty()));
        let input = |node: usize, i: usize| {
            let name = &g.nodes[node].inputs[i];
            g.initializer(name).unwrap().to_i64s()
        };
        assert_eq!([input(0, 1), input(0, 2), input(0, 3)], [[1], [4], [1]]);
        assert_eq!(g.nodes[0].inputs[1], "slice_starts");
        assert_eq!(input(1, 1), [0]);
    }

    #[test]
    fn dft_states_its_opset_17_axis_as_an_input() {
        // Without the attribute, opset 17's default (1) must be stated: opset 20's is -2.
        let implicit = Node::new("implicit", Op::DFT, &["x"], &["a"]);
        let mut explicit = Node::new("explicit", Op::DFT, &["a", "x"], &["y"]);
        explicit.attributes = vec![int_attribute("axis", -3), int_attribute("onesided", 1)];
        let mut g = graph(17, vec![implicit, explicit], "y");
        upgrade(&mut g, 21, &Structural).unwrap();
        let axis = |node: usize| {
            let n = &g.nodes[node];
            assert_eq!(n.inputs.len(), 3, "{:?}", n.inputs);
            let t = g.initializer(&n.inputs[2]).unwrap();
            assert!(t.shape.is_empty(), "a scalar");
            t.to_i64s()
        };
        assert_eq!((axis(0), axis(1)), (vec![1], vec![-3]));
        assert_eq!(g.nodes[0].inputs[1], "", "no dft_length");
        assert_eq!(g.nodes[1].inputs[1], "x", "its dft_length kept");
        let kept: Vec<&str> = g.nodes[1].attributes.iter().map(|a| a.name()).collect();
        assert_eq!(kept, ["onesided"]);
    }

    #[test]
    fn softmax_keeps_its_flattening_meaning_past_opset_13() {
        let mut softmax = Node::new("sm", Op::Softmax, &["x"], &["y"]);
        softmax.attributes = vec![int_attribute("axis", 0)];
        let mut g = graph(11, vec![softmax], "y");
        upgrade(&mut g, 13, &Structural).unwrap();
        // Shape and Flatten before it, Reshape after: the softmax runs over the flattened input.
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
        assert_eq!(ops, ["Shape", "Flatten", "Softmax", "Reshape"]);
        assert_eq!(g.nodes[2].attribute("axis").map(|a| a.i()), Some(-1));
        assert_eq!(g.nodes[3].outputs, ["y"]);
    }

    #[test]
    fn steps_that_need_value_types_or_have_no_spelling_are_refused() {
        // Clip's bounds take their data's type: without an engine there is none to ask.
        let clip = Node::new("clip", Op::Clip, &["x"], &["y"]);
        let e = upgrade(&mut graph(10, vec![clip], "y"), 13, &Structural).unwrap_err();
        assert!(e.to_string().contains("needs an engine"), "{e}");
        let resize = Node::new("resize", Op::Resize, &["x"], &["y"]);
        let e = upgrade(&mut graph(10, vec![resize], "y"), 11, &Structural).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("Resize changed its inputs and coordinate mapping in opset 11"),
            "{e}"
        );
        // A graph already at the target is left alone.
        let mut g = graph(13, vec![Node::new("r", Op::Relu, &["x"], &["y"])], "y");
        upgrade(&mut g, 11, &Structural).unwrap();
        assert_eq!(g.opset, 13);
    }
}
