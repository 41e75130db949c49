//! Float16 and bfloat16 models computed in float32, for quantization.
//!
//! Quantization places its quantizers on float32 layers: a model exported in float16 (common for
//! GPU deployment) would come out unchanged. [`compute_in_float32`] rewrites such a graph to
//! compute in float32 behind the same interface: half-precision initializers and constants are
//! widened (exactly: every float16 and bfloat16 value is a float32 value), Casts to a half type
//! cast to float32 instead, subgraphs' formal parameters are float32, and each half-precision
//! graph input is cast to float32 where the graph reads it, each half-precision graph output cast
//! back from float32 where the graph writes it. The quantized export then takes and gives the
//! model's own types, with int8 layers and float32 between them.

use std::collections::HashMap;

use zeropoint_onnx::proto::AttributeProto;
use zeropoint_onnx::{tensor_proto, DType, RawTensor};

use crate::error::Result;
use crate::graph::{int_attribute, Graph, Names, Node};
use crate::op::Op;
use crate::rewrite::rename_inputs as rename_reads;

/// Whether `graph` (or a subgraph) holds or makes half-precision floats: initializers, inputs,
/// outputs, Casts or constants of float16 or bfloat16.
fn uses_half_precision(graph: &Graph) -> bool {
    graph.initializers.iter().any(|t| is_half(t.dtype))
        || graph
            .inputs
            .iter()
            .chain(&graph.outputs)
            .any(|v| v.dtype.is_some_and(is_half))
        || graph.nodes.iter().any(|n| {
            n.attributes.iter().any(makes_half)
                || n.subgraphs.iter().any(|(_, g)| uses_half_precision(g))
        })
}

/// Rewrites `graph` to compute in float32 (module documentation); returns how many values
/// (initializers, constants, Cast targets, subgraph parameters, interface casts) changed: 0 for
/// a graph without half precision, which is left as it is.
pub fn compute_in_float32(graph: &mut Graph) -> Result<usize> {
    if !uses_half_precision(graph) {
        return Ok(0);
    }
    let mut changed = widen(graph)?;
    let mut names = Names::new(graph);
    let mut renames = HashMap::new();
    let mut front = Vec::new();
    for input in graph.inputs.iter().filter(|i| i.dtype.is_some_and(is_half)) {
        let wide = names.fresh(&format!("{}_float32", input.name));
        front.push(cast(&mut names, &input.name, &wide, DType::F32));
        renames.insert(input.name.clone(), wide);
    }
    rename_reads(graph, &renames);
    let inputs: Vec<&str> = graph.inputs.iter().map(|i| i.name.as_str()).collect();
    let mut back = Vec::new();
    let mut outputs = HashMap::new();
    for output in &graph.outputs {
        let Some(dtype) = output.dtype.filter(|&d| is_half(d)) else {
            continue;
        };
        if inputs.contains(&output.name.as_str()) || outputs.contains_key(&output.name) {
            continue;
        }
        let wide = names.fresh(&format!("{}_float32", output.name));
        back.push(cast(&mut names, &wide, &output.name, dtype));
        outputs.insert(output.name.clone(), wide);
    }
    // Whatever wrote an output (a node, or the initializer it is) now writes its wide name.
    let written = graph.nodes.iter_mut().flat_map(|n| n.outputs.iter_mut());
    for out in written.chain(graph.initializers.iter_mut().map(|t| &mut t.name)) {
        if let Some(wide) = outputs.get(out) {
            *out = wide.clone();
        }
    }
    rename_reads(graph, &outputs);
    changed += front.len() + back.len();
    let nodes = std::mem::take(&mut graph.nodes);
    graph.nodes = front.into_iter().chain(nodes).chain(back).collect();
    Ok(changed)
}

fn is_half(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16)
}

/// ONNX's element type codes of float16 and bfloat16, and of float32.
const HALF_CODES: [i64; 2] = [10, 16];
const FLOAT: i64 = 1;

/// An attribute that makes half-precision values: `to` of Cast, `dtype` of EyeLike and the
/// random generators, a half-precision tensor (Constant, ConstantOfShape).
fn makes_half(a: &AttributeProto) -> bool {
    let typed = matches!(a.name(), "to" | "dtype") && HALF_CODES.contains(&a.i());
    let tensor =
        a.t.as_ref()
            .is_some_and(|t| tensor_proto::dtype_of(t.data_type()).is_some_and(is_half));
    typed || tensor
}

/// Widens what `graph` and its subgraphs hold and make in half precision, except the main
/// graph's interface; returns how many values changed.
fn widen(graph: &mut Graph) -> Result<usize> {
    let mut changed = 0;
    for t in graph.initializers.iter_mut().filter(|t| is_half(t.dtype)) {
        *t = RawTensor::from_f32s(t.name.clone(), &t.shape, &t.to_f32s());
        changed += 1;
    }
    for node in &mut graph.nodes {
        for a in node.attributes.iter_mut().filter(|a| makes_half(a)) {
            if let Some(t) = a.t.as_mut() {
                let raw = tensor_proto::to_raw(t, &graph.source)?;
                *t = tensor_proto::from_raw(RawTensor::from_f32s(
                    raw.name.clone(),
                    &raw.shape,
                    &raw.to_f32s(),
                ));
            } else {
                a.i = Some(FLOAT);
            }
            changed += 1;
        }
        for (_, sub) in &mut node.subgraphs {
            for v in sub.inputs.iter_mut().chain(sub.outputs.iter_mut()) {
                if v.dtype.is_some_and(is_half) {
                    v.dtype = Some(DType::F32);
                    changed += 1;
                }
            }
            changed += widen(sub)?;
        }
    }
    Ok(changed)
}

/// A Cast of `from` to `dtype`, named `to`.
fn cast(names: &mut Names, from: &str, to: &str, dtype: DType) -> Node {
    let mut node = Node::new(names.fresh(&format!("{to}_Cast")), Op::Cast, &[from], &[to]);
    let code = i64::from(tensor_proto::onnx_code(dtype));
    node.attributes.push(int_attribute("to", code));
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Dim, ValueInfo};

    fn info(name: &str, dtype: DType) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            dtype: Some(dtype),
            shape: Some(vec![Dim::Fixed(2), Dim::Fixed(2)]),
        }
    }

    /// Weights widened exactly, Casts to a half type made float32 ones, and the interface kept
    /// by a Cast after the input and one before the output.
    #[test]
    fn a_half_precision_graph_computes_in_float32_behind_its_interface() {
        let w = [1.5f32, -2.0, 0.25, 3.0e4];
        let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
        let stored = RawTensor::from_f64s("w", &[2, 2], &w64, DType::BF16);
        let bf16 = stored.to_f32s();
        // 3.0e4 is not a bfloat16 value: the widening keeps what the file holds.
        assert_ne!(bf16, w);
        let mut to_half = Node::new("c", Op::Cast, &["x"], &["xh"]);
        to_half.attributes.push(int_attribute("to", 16));
        let mut g = Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: vec![info("x", DType::F16)],
            outputs: vec![info("y", DType::F16)],
            initializers: vec![stored],
            nodes: vec![to_half, Node::new("mm", Op::MatMul, &["xh", "w"], &["y"])],
        };
        assert!(uses_half_precision(&g));
        assert_eq!(compute_in_float32(&mut g).unwrap(), 4);
        let w = g.initializer("w").unwrap();
        assert_eq!((w.dtype, w.to_f32s()), (DType::F32, bf16));
        let ops: Vec<(&str, &[String], &[String])> = g
            .nodes
            .iter()
            .map(|n| (n.op.as_str(), &n.inputs[..], &n.outputs[..]))
            .collect();
        assert_eq!(ops.len(), 4);
        assert_eq!(
            ops[0],
            (
                "Cast",
                &["x".to_string()][..],
                &["x_float32".to_string()][..]
            )
        );
        assert_eq!(ops[1].1, ["x_float32"]);
        assert_eq!(
            ops[2],
            (
                "MatMul",
                &["xh".to_string(), "w".to_string()][..],
                &["y_float32".to_string()][..]
            )
        );
        assert_eq!(
            ops[3],
            (
                "Cast",
                &["y_float32".to_string()][..],
                &["y".to_string()][..]
            )
        );
        let to = |n: &Node| n.attribute("to").unwrap().i();
        assert_eq!(
            [to(&g.nodes[0]), to(&g.nodes[1]), to(&g.nodes[3])],
            [1, 1, 10]
        );
    }

    /// An output that is an initializer (a constant output) is widened under a new name and
    /// cast back to its declared type.
    #[test]
    fn a_constant_half_precision_output_is_cast_back() {
        let c = RawTensor::from_f64s("c", &[2], &[0.5, -1.0], DType::F16);
        let mut g = Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: vec![],
            outputs: vec![info("c", DType::F16)],
            initializers: vec![c],
            nodes: vec![],
        };
        assert_eq!(compute_in_float32(&mut g).unwrap(), 2);
        let wide = g.initializer("c_float32").unwrap();
        assert_eq!((wide.dtype, wide.to_f32s()), (DType::F32, vec![0.5, -1.0]));
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(
            (g.nodes[0].inputs.clone(), g.nodes[0].outputs.clone()),
            (vec!["c_float32".to_string()], vec!["c".to_string()])
        );
        assert_eq!(g.nodes[0].attribute("to").unwrap().i(), 10);
    }
}
