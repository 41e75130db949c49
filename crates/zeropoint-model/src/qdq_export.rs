//! Export to QDQ ONNX: each quantized weight becomes an integer initializer followed by
//! DequantizeLinear, each int32 bias likewise, and each quantized activation a QuantizeLinear →
//! DequantizeLinear pair right after the node producing it. Runtimes (ONNX Runtime, TensorRT,
//! OpenVINO) recognize the pattern and run the layers in integer arithmetic; the float graph
//! between the pairs is unchanged.

use std::collections::HashMap;
use std::path::Path;

use zeropoint_core::{Granularity, Grid, Layout, QParams};

use crate::calibrate::{Params, Settings};
use crate::error::FileError;
use crate::graph::{int_attribute, Graph, Names, Node};
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
    let mut g = graph.clone();
    let quantizers = p.weights.values().chain(p.activations.values());
    let mut opset = opset_for(quantizers.map(|q| (q.grid, q.granularity)));
    if !p.biases.is_empty() {
        opset = opset.max(13); // int32 biases are dequantized per channel
    }
    crate::opset::upgrade(&mut g, opset)?;
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
        let ty = storage(qp.grid);
        let codes = crate::ops::quant_codes(&x, &shape, qp, ty)
            .map_err(|e| err(format!("weight '{}': {e}", w.name)))?;
        let q = names.fresh(&format!("{}_quantized", w.name));
        g.initializers
            .push((q.clone(), int_value(codes, &shape, ty)?));
        let (scale, zp) = params_initializers(&mut g, &mut names, &w.name, qp, ty, &shape)?;
        let out = names.fresh(&format!("{}_dequantized", w.name));
        front.push(dq_node(&mut names, &w.name, [q, scale, zp], &out, qp));
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
        let per_channel = &[("axis", 0)];
        front.push(dq_node_with(
            &mut names,
            name,
            [q, scale, zp],
            &out,
            per_channel,
        ));
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
                let names_ =
                    params_initializers(&mut g, &mut names, source, qp, storage(qp.grid), &[])?;
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
        let dq = dq_node(&mut names, a, [q_out, scale, zp], &dq_out, qp);
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

/// Scale and zero-point initializers for `qp` on a tensor of shape `shape` (needed for blocks):
/// a scalar per tensor, a vector per axis, the blocked shape per block.
fn params_initializers(
    g: &mut Graph,
    names: &mut Names,
    base: &str,
    qp: &QParams,
    zp_type: DType,
    shape: &[usize],
) -> Result<(String, String), FileError> {
    let err = |m: String| FileError::new(&g.source, m);
    let scale = names.fresh(&format!("{base}_scale"));
    let zp = names.fresh(&format!("{base}_zero_point"));
    let param_shape = match qp.granularity {
        Granularity::PerTensor if qp.scale.len() == 1 => vec![],
        Granularity::PerBlock { .. } => Layout::new(shape, qp.granularity)
            .map_err(|e| err(format!("'{base}': {e}")))?
            .param_shape()
            .to_vec(),
        _ => vec![qp.scale.len()],
    };
    let z: Vec<i64> = qp.zero_point.iter().map(|&z| i64::from(z)).collect();
    let sv = Value::from_f32_vec(qp.scale.clone(), &param_shape).map_err(err)?;
    g.initializers.push((scale.clone(), sv));
    g.initializers
        .push((zp.clone(), int_value(z, &param_shape, zp_type)?));
    Ok((scale, zp))
}

/// The opset an export with these settings needs (see [`opset_for`]).
pub fn required_opset(s: &Settings) -> i64 {
    opset_for(
        [&s.weights, &s.activations]
            .into_iter()
            .map(|scheme| (scheme.grid(), scheme.granularity)),
    )
}

/// The opset an export of quantizers with these grids and granularities needs: per-channel
/// parameters came in opset 13; 4-bit and 16-bit types and blocks in 21.
fn opset_for(quantizers: impl Iterator<Item = (Grid, Granularity)>) -> i64 {
    quantizers
        .map(|(grid, g)| match g {
            Granularity::PerBlock { .. } => 21,
            _ if !matches!(storage(grid), DType::U8 | DType::I8) => 21,
            Granularity::PerAxis { .. } => 13,
            Granularity::PerTensor => 11,
        })
        .max()
        .unwrap_or(11)
}

/// The ONNX integer type that holds a grid's codes: the narrowest of int4, uint4, int8, uint8,
/// int16 and uint16 (narrower grids, like 2-bit or 7-bit ones, in the type that contains them).
fn storage(grid: Grid) -> DType {
    crate::ops::CODE_TYPES
        .iter()
        .find(|(_, g)| grid.qmin >= g.qmin && grid.qmax <= g.qmax)
        .map_or(DType::I16, |&(t, _)| t)
}

/// DequantizeLinear of a quantizer with parameters `qp` (axis and block size from its
/// granularity).
fn dq_node(names: &mut Names, base: &str, inputs: [String; 3], out: &str, qp: &QParams) -> Node {
    let attributes: &[(&str, i64)] = match qp.granularity {
        Granularity::PerTensor => &[],
        Granularity::PerAxis { axis } => &[("axis", axis as i64)],
        Granularity::PerBlock { axis, block } => {
            &[("axis", axis as i64), ("block_size", block as i64)]
        }
    };
    dq_node_with(names, base, inputs, out, attributes)
}

fn dq_node_with(
    names: &mut Names,
    base: &str,
    inputs: [String; 3],
    out: &str,
    attributes: &[(&str, i64)],
) -> Node {
    Node {
        name: names.fresh(&format!("{base}_DequantizeLinear")),
        op: "DequantizeLinear".into(),
        domain: String::new(),
        inputs: inputs.to_vec(),
        outputs: vec![out.to_string()],
        attributes: attributes
            .iter()
            .map(|&(name, v)| int_attribute(name, v))
            .collect(),
    }
}

fn int_value(codes: Vec<i64>, shape: &[usize], dtype: DType) -> Result<Value, FileError> {
    Value::from_ints(codes, shape, dtype).map_err(|m| FileError::new(Path::new("export"), m))
}

fn float_value(v: &[f32]) -> Result<Value, FileError> {
    Value::from_f32_vec(v.to_vec(), &[v.len()]).map_err(|m| FileError::new(Path::new("export"), m))
}
