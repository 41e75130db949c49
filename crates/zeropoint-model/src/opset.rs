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
//!   `split` input states its `num_outputs`.
//!
//! Models below opset 7 are refused, as ONNX Runtime does. Nodes of other domains are left as
//! they are.

use crate::error::FileError;
use crate::graph::{int_attribute, Graph, Names, Node};
use crate::onnx::proto::AttributeProto;
use crate::tensor::DType;
use crate::value::Value;

/// The oldest opset an upgrade starts from (the oldest ONNX Runtime runs).
pub const OLDEST: i64 = 7;

/// The newest opset an upgrade may target (the newest whose operators zeropoint knows).
pub const NEWEST: i64 = 22;

/// Rewrites `g` for opset `to` of the default domain and sets `g.opset`; nothing happens if the
/// graph already has that opset or a newer one.
pub fn upgrade(g: &mut Graph, to: i64) -> Result<(), FileError> {
    let from = g.opset;
    if from >= to {
        return Ok(());
    }
    let source = g.source.clone();
    let err = |m: String| FileError::new(&source, m);
    if from < OLDEST {
        return Err(err(format!(
            "cannot upgrade opset {from} to {to}: models below opset {OLDEST} are not upgraded"
        )));
    }
    if to > NEWEST {
        return Err(err(format!(
            "cannot upgrade to opset {to}: the newest supported is {NEWEST}"
        )));
    }
    let crosses = |v: i64| from < v && v <= to;
    // Clip's and Pad's scalar inputs take the element type of their data (attributes were float).
    let types = if crosses(11)
        && g.nodes
            .iter()
            .any(|n| matches!(n.op.as_str(), "Clip" | "Pad"))
    {
        Some(crate::infer::infer(g)?)
    } else {
        None
    };
    let mut names = Names::new(g);
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for mut node in std::mem::take(&mut g.nodes) {
        if !matches!(node.domain.as_str(), "" | "ai.onnx") {
            nodes.push(node);
            continue;
        }
        let op = node.op.clone();
        let mut added = Vec::new();
        // The attribute goes either way; only its non-default value has no opset-9 meaning.
        if crosses(9)
            && op == "BatchNormalization"
            && take_attribute(&mut node, "spatial").is_some_and(|a| a.i() == 0)
        {
            return Err(err(format!(
                "cannot upgrade {}: spatial=0 BatchNormalization was removed in opset 9",
                node.label()
            )));
        }
        if crosses(10) && op == "Slice" {
            for (at, attr) in [(1, "starts"), (2, "ends"), (3, "axes")] {
                if let Some(a) = take_attribute(&mut node, attr) {
                    add_input(
                        g,
                        &mut names,
                        &mut node,
                        at,
                        attr,
                        Value::from_i64s(&a.ints),
                    );
                }
            }
        }
        if crosses(11) {
            let scalar = |node: &Node, v: f32| {
                let dtype = types
                    .as_ref()
                    .and_then(|t| t.get(&node.inputs[0]))
                    .map(|t| t.dtype);
                scalar_like(v, dtype.unwrap_or(DType::F32))
            };
            match op.as_str() {
                "Clip" => {
                    for (at, attr) in [(1, "min"), (2, "max")] {
                        if let Some(a) = take_attribute(&mut node, attr) {
                            let v = scalar(&node, a.f());
                            add_input(g, &mut names, &mut node, at, attr, v);
                        }
                    }
                }
                "Pad" => {
                    if let Some(a) = take_attribute(&mut node, "pads") {
                        add_input(
                            g,
                            &mut names,
                            &mut node,
                            1,
                            "pads",
                            Value::from_i64s(&a.ints),
                        );
                    }
                    if let Some(a) = take_attribute(&mut node, "value") {
                        let v = scalar(&node, a.f());
                        add_input(g, &mut names, &mut node, 2, "value", v);
                    }
                }
                "Resize" => {
                    return Err(err(format!(
                        "cannot upgrade {} from opset {from}: Resize changed its inputs and coordinate mapping in opset 11",
                        node.label()
                    )));
                }
                _ => {}
            }
        }
        if crosses(12) && op == "Dropout" {
            if let Some(ratio) = take_attribute(&mut node, "ratio") {
                let v = Value::from_f32_vec(vec![ratio.f()], &[]).expect("scalar");
                add_input(g, &mut names, &mut node, 1, "ratio", v);
            }
        }
        if crosses(13) {
            match op.as_str() {
                "ReduceSum" | "Squeeze" | "Unsqueeze" => {
                    move_ints(g, &mut names, &mut node, "axes")
                }
                "Split" => move_ints(g, &mut names, &mut node, "split"),
                "Softmax" | "LogSoftmax" => added = flatten_softmax(&mut names, &mut node),
                "Resize" => {
                    let mode = node
                        .attribute("coordinate_transformation_mode")
                        .map(|a| String::from_utf8_lossy(a.s()).into_owned());
                    if mode.as_deref() == Some("tf_half_pixel_for_nn") {
                        return Err(err(format!(
                            "cannot upgrade {} to opset {to}: coordinate_transformation_mode 'tf_half_pixel_for_nn' was removed in opset 13",
                            node.label()
                        )));
                    }
                }
                _ => {}
            }
        }
        if crosses(18) {
            match node.op.as_str() {
                "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceSumSquare"
                | "ReduceL1" | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" => {
                    move_ints(g, &mut names, &mut node, "axes")
                }
                "Split" if node.inputs.get(1).is_none_or(|s| s.is_empty()) => {
                    let n = node.outputs.len() as i64;
                    node.attributes.push(int_attribute("num_outputs", n));
                }
                _ => {}
            }
        }
        nodes.push(node);
        nodes.extend(added);
    }
    g.nodes = nodes;
    g.opset = to;
    g.sort()
}

/// A scalar of element type `dtype` holding `v` (a float attribute turned into an input).
fn scalar_like(v: f32, dtype: DType) -> Value {
    let f = Value::from_f32_vec(vec![v], &[]).expect("scalar");
    crate::ops::cast_value(&f, dtype).unwrap_or(f)
}

fn take_attribute(node: &mut Node, name: &str) -> Option<AttributeProto> {
    let i = node.attributes.iter().position(|a| a.name() == name)?;
    Some(node.attributes.remove(i))
}

/// Turns the ints attribute `name` (if present) into an int64 initializer at input 1.
fn move_ints(g: &mut Graph, names: &mut Names, node: &mut Node, name: &str) {
    if let Some(a) = take_attribute(node, name) {
        add_input(g, names, node, 1, name, Value::from_i64s(&a.ints));
    }
}

/// Adds `value` as an initializer and makes it input `at` of `node`, padding skipped optional
/// inputs with "".
fn add_input(g: &mut Graph, names: &mut Names, node: &mut Node, at: usize, what: &str, v: Value) {
    let name = names.fresh(&format!("{}_{what}", node.name));
    g.initializers.push((name.clone(), v));
    if node.inputs.len() <= at {
        node.inputs.resize(at + 1, String::new());
    }
    node.inputs[at] = name;
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
    let base = node.name.clone();
    let x = node.inputs[0].clone();
    let y = node.outputs[0].clone();
    let shape = names.fresh(&format!("{base}_input_shape"));
    let flat = names.fresh(&format!("{base}_flattened"));
    let inner = names.fresh(&format!("{base}_2d"));
    let new = |op: &str, name: String, inputs: Vec<String>, output: &str, attributes| Node {
        name,
        op: op.into(),
        domain: String::new(),
        inputs,
        outputs: vec![output.to_string()],
        attributes,
    };
    node.inputs[0] = flat.clone();
    node.outputs[0] = inner.clone();
    vec![
        new(
            "Shape",
            names.fresh(&format!("{base}_Shape")),
            vec![x.clone()],
            &shape,
            vec![],
        ),
        new(
            "Flatten",
            names.fresh(&format!("{base}_Flatten")),
            vec![x],
            &flat,
            vec![int_attribute("axis", axis)],
        ),
        new(
            "Reshape",
            names.fresh(&format!("{base}_Reshape")),
            vec![inner, shape],
            &y,
            vec![],
        ),
    ]
}
