//! Export to QDQ ONNX: each quantized weight becomes an integer initializer followed by
//! DequantizeLinear, each int32 bias likewise, and each quantized activation a QuantizeLinear →
//! DequantizeLinear pair right after the node producing it. Runtimes (ONNX Runtime, TensorRT,
//! OpenVINO) recognize the pattern and run the layers in integer arithmetic; the float graph
//! between the pairs is unchanged.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use zeropoint_core::{Granularity, QParams};

use crate::calibrate::Params;
use crate::error::FileError;
use crate::graph::{Graph, Node};
use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::AttributeProto;
use crate::onnx::ModelProto;
use crate::placement::Plan;
use crate::tensor::DType;
use crate::value::Value;

/// The QDQ model of `graph` (the canonicalized float graph the plan was made for), written into
/// `base` (the model it was read from: opsets, metadata and names are kept).
pub fn export(
    graph: &Graph,
    plan: &Plan,
    p: &Params,
    base: &ModelProto,
) -> Result<ModelProto, FileError> {
    let err = |m: String| FileError::new(&graph.source, m);
    let per_axis = p.weights.values().any(|q| q.scale.len() > 1) || !p.biases.is_empty();
    if graph.opset < 13 && per_axis {
        return Err(err(format!(
            "the model has opset {}: per-channel DequantizeLinear needs opset 13 (convert the model with onnx.version_converter first)",
            graph.opset
        )));
    }
    let sixteen = p
        .activations
        .values()
        .chain(p.weights.values())
        .any(|q| matches!(storage(q), DType::U16 | DType::I16));
    if graph.opset < 21 && sixteen {
        return Err(err(format!(
            "16-bit QuantizeLinear/DequantizeLinear need opset 21; the model has opset {} (convert it with onnx.version_converter, or use 8-bit activations)",
            graph.opset
        )));
    }
    let mut g = graph.clone();
    let mut names = Names::new(&g);
    let mut front = Vec::new();
    let mut renamed: HashMap<String, String> = HashMap::new();

    for w in &plan.weights {
        let Some(qp) = p.weights.get(&w.name) else {
            continue;
        };
        let t = g
            .initializer(&w.name)
            .ok_or_else(|| err(format!("weight '{}' is missing", w.name)))?;
        let shape = t.shape().to_vec();
        let x = t
            .to_f32s()
            .map_err(|m| err(format!("weight '{}': {m}", w.name)))?;
        let ty = storage(qp);
        let codes = crate::ops::quant_codes(&x, &shape, qp, ty)
            .map_err(|e| err(format!("weight '{}': {e}", w.name)))?;
        let q = names.fresh(&format!("{}_quantized", w.name));
        g.initializers
            .push((q.clone(), int_value(codes, &shape, ty)?));
        let (scale, zp) = params_initializers(&mut g, &mut names, &w.name, qp, ty)?;
        let out = names.fresh(&format!("{}_dequantized", w.name));
        front.push(dq_node(
            &mut names,
            &w.name,
            [q, scale, zp],
            &out,
            axis_of(qp),
        ));
        renamed.insert(w.name.clone(), out);
    }
    // In plan order (the parameter maps are unordered): same inputs, same bytes out.
    for (name, b) in plan
        .biases
        .iter()
        .filter_map(|site| p.biases.get(&site.name).map(|b| (&site.name, b)))
    {
        let shape = g
            .initializer(name)
            .map(|t| t.shape().to_vec())
            .unwrap_or_default();
        let q = names.fresh(&format!("{name}_quantized"));
        let codes: Vec<i64> = b.codes.iter().map(|&c| i64::from(c)).collect();
        g.initializers
            .push((q.clone(), int_value(codes, &shape, DType::I32)?));
        let scale = names.fresh(&format!("{name}_scale"));
        g.initializers.push((scale.clone(), float_value(&b.scale)?));
        let zp = names.fresh(&format!("{name}_zero_point"));
        g.initializers.push((
            zp.clone(),
            int_value(vec![0; b.scale.len()], &[b.scale.len()], DType::I32)?,
        ));
        let out = names.fresh(&format!("{name}_dequantized"));
        front.push(dq_node(&mut names, name, [q, scale, zp], &out, Some(0)));
        renamed.insert(name.clone(), out);
    }
    // Layers read the dequantized weights; the float ones go.
    for node in g.nodes.iter_mut() {
        for input in node.inputs.iter_mut() {
            if let Some(r) = renamed.get(input) {
                *input = r.clone();
            }
        }
    }
    g.initializers.retain(|(n, _)| !renamed.contains_key(n));

    // Activations: Q → DQ after the producer, consumers switched to the DQ output.
    let mut quantized: Vec<&String> = plan.activations.iter().collect();
    quantized.extend(plan.shared.iter().map(|(v, _)| v));
    let mut pairs: HashMap<String, (String, Vec<Node>)> = HashMap::new();
    let mut param_names: HashMap<String, (String, String)> = HashMap::new();
    for a in quantized {
        let Some(qp) = p.activations.get(a) else {
            continue;
        };
        // Shared values reuse their source's scale and zero-point initializers.
        let source = plan
            .shared
            .iter()
            .find(|(v, _)| v == a)
            .map_or(a, |(_, s)| s);
        let (scale, zp) = match param_names.get(source) {
            Some(names) => names.clone(),
            None => {
                let names_ = params_initializers(&mut g, &mut names, source, qp, storage(qp))?;
                param_names.insert(source.clone(), names_.clone());
                names_
            }
        };
        let q_out = names.fresh(&format!("{a}_quantized"));
        let dq_out = names.fresh(&format!("{a}_dequantized"));
        let q = Node {
            name: names.fresh(&format!("{a}_QuantizeLinear")),
            op: "QuantizeLinear".into(),
            domain: String::new(),
            inputs: vec![a.clone(), scale.clone(), zp.clone()],
            outputs: vec![q_out.clone()],
            attributes: vec![],
        };
        let dq = dq_node(&mut names, a, [q_out, scale, zp], &dq_out, None);
        pairs.insert(a.clone(), (dq_out, vec![q, dq]));
    }
    for node in g.nodes.iter_mut() {
        for input in node.inputs.iter_mut() {
            if let Some((dq_out, _)) = pairs.get(input) {
                *input = dq_out.clone();
            }
        }
    }
    let mut nodes = front;
    for input in &graph.inputs {
        if let Some((_, pair)) = pairs.get(&input.name) {
            nodes.extend(pair.iter().cloned());
        }
    }
    for node in std::mem::take(&mut g.nodes) {
        let after: Vec<Node> = node
            .outputs
            .iter()
            .filter_map(|o| pairs.get(o))
            .flat_map(|(_, pair)| pair.iter().cloned())
            .collect();
        nodes.push(node);
        nodes.extend(after);
    }
    g.nodes = nodes;
    g.sort()?;
    g.to_model(base)
}

/// Scale and zero-point initializers for `qp` (a scalar per tensor, a vector per axis).
fn params_initializers(
    g: &mut Graph,
    names: &mut Names,
    base: &str,
    qp: &QParams,
    zp_type: DType,
) -> Result<(String, String), FileError> {
    let err = |m: String| FileError::new(&g.source, m);
    let scale = names.fresh(&format!("{base}_scale"));
    let zp = names.fresh(&format!("{base}_zero_point"));
    let (sv, zv) = if qp.scale.len() == 1 && qp.granularity == Granularity::PerTensor {
        (
            Value::from_f32_vec(vec![qp.scale[0]], &[]).map_err(err)?,
            int_value(vec![i64::from(qp.zero_point[0])], &[], zp_type)?,
        )
    } else {
        let z: Vec<i64> = qp.zero_point.iter().map(|&z| i64::from(z)).collect();
        (
            float_value(&qp.scale)?,
            int_value(z, &[qp.zero_point.len()], zp_type)?,
        )
    };
    g.initializers.push((scale.clone(), sv));
    g.initializers.push((zp.clone(), zv));
    Ok((scale, zp))
}

/// The ONNX integer type that holds a grid's codes. 4-bit and other narrow grids are stored in
/// the 8-bit type (packed INT4 export is not there yet).
fn storage(qp: &QParams) -> DType {
    let (lo, hi) = (qp.grid.qmin, qp.grid.qmax);
    if lo >= 0 && hi <= 255 {
        DType::U8
    } else if lo >= -128 && hi <= 127 {
        DType::I8
    } else if lo >= 0 && hi <= 65535 {
        DType::U16
    } else {
        DType::I16
    }
}

fn axis_of(qp: &QParams) -> Option<usize> {
    match qp.granularity {
        Granularity::PerAxis { axis } => Some(axis),
        _ => None,
    }
}

fn dq_node(
    names: &mut Names,
    base: &str,
    inputs: [String; 3],
    out: &str,
    axis: Option<usize>,
) -> Node {
    Node {
        name: names.fresh(&format!("{base}_DequantizeLinear")),
        op: "DequantizeLinear".into(),
        domain: String::new(),
        inputs: inputs.to_vec(),
        outputs: vec![out.to_string()],
        attributes: axis
            .map(|a| AttributeProto {
                name: Some("axis".into()),
                i: Some(a as i64),
                r#type: Some(AttributeType::Int as i32),
                ..Default::default()
            })
            .into_iter()
            .collect(),
    }
}

fn int_value(codes: Vec<i64>, shape: &[usize], dtype: DType) -> Result<Value, FileError> {
    Value::from_ints(codes, shape, dtype).map_err(|m| FileError::new(Path::new("export"), m))
}

fn float_value(v: &[f32]) -> Result<Value, FileError> {
    Value::from_f32_vec(v.to_vec(), &[v.len()]).map_err(|m| FileError::new(Path::new("export"), m))
}

/// Unused value and node names.
struct Names(HashSet<String>);

impl Names {
    fn new(g: &Graph) -> Names {
        let mut taken: HashSet<String> = g.initializers.iter().map(|(n, _)| n.clone()).collect();
        taken.extend(g.inputs.iter().map(|i| i.name.clone()));
        for n in &g.nodes {
            taken.insert(n.name.clone());
            taken.extend(n.outputs.iter().cloned());
        }
        Names(taken)
    }

    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 2;
        while self.0.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.0.insert(name.clone());
        name
    }
}
