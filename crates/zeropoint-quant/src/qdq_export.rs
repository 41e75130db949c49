//! Export to QDQ ONNX: each quantized weight becomes an integer initializer followed by
//! DequantizeLinear, each int32 bias likewise, and each quantized activation a QuantizeLinear →
//! DequantizeLinear pair right after the node producing it. Runtimes (ONNX Runtime, TensorRT,
//! OpenVINO) recognize the pattern and run the layers in integer arithmetic; the float graph
//! between the pairs is unchanged.
//!
//! Codes are stored in the narrowest ONNX type that holds their grid (zeropoint-core's
//! [`Storage::narrowest`]); the graph must already have the opset those types and
//! granularities need ([`required_opset`]): the pipeline upgrades it before anything else.

use std::collections::HashMap;

use zeropoint_core::{Granularity, Grid, Layout, QParams, QTensor, Storage};
use zeropoint_graph::graph::{int_attribute, Names};
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::{DType, ModelProto, RawTensor};

use crate::error::{Error, Result};
use crate::params::Params;
use crate::placement::Plan;
use crate::settings::Settings;

/// Int32 biases are dequantized per output channel, which came in opset 13; nearly every model
/// has one, so every export needs at least this opset.
const BIAS_OPSET: i64 = 13;

/// The QDQ model of `graph` (the canonicalized float graph the plan was made for), written into
/// `base` (the model it was read from: opsets, metadata and names are kept).
pub fn export(graph: &Graph, plan: &Plan, p: &Params, base: &ModelProto) -> Result<ModelProto> {
    let needed = params_opset(p);
    if graph.opset < needed {
        return Err(Error::new(
            &graph.source,
            format!(
                "the graph has opset {}, but its quantizers need opset {needed}: upgrade it first",
                graph.opset
            ),
        ));
    }
    let mut x = Export {
        names: Names::new(graph),
        g: graph.clone(),
        front: Vec::new(),
        renamed: HashMap::new(),
    };
    x.weights(plan, p)?;
    x.biases(plan, p);
    x.read_dequantized_weights();
    let pairs = x.activations(plan, p)?;
    x.insert_pairs(graph, pairs);
    x.g.sort()?;
    Ok(x.g.to_model(base)?)
}

/// The opset an export with these settings needs: per-channel parameters (int32 biases among
/// them) came in opset 13; 4-bit and 16-bit types and blocks in 21.
pub fn required_opset(s: &Settings) -> i64 {
    opset_for(
        [&s.weights, &s.activations]
            .into_iter()
            .map(|scheme| (scheme.grid(), scheme.granularity)),
    )
    .max(BIAS_OPSET)
}

/// The opset these parameters need (at most [`required_opset`] of their settings).
fn params_opset(p: &Params) -> i64 {
    let quantizers = p
        .weights
        .iter()
        .map(|w| &w.qparams)
        .chain(p.activations.iter().map(|a| &a.qparams));
    let opset = opset_for(quantizers.map(|q| (q.grid, q.granularity)));
    if p.biases.is_empty() {
        opset
    } else {
        opset.max(BIAS_OPSET)
    }
}

/// The opset of quantizers with these grids and granularities.
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
    Storage::narrowest(grid, &Storage::ONNX)
        .and_then(DType::of_storage)
        .unwrap_or(DType::I16)
}

/// The graph being rewritten.
struct Export {
    g: Graph,
    names: Names,
    /// DequantizeLinear nodes of weights and biases: they go first.
    front: Vec<Node>,
    /// Float weight or bias → the output of its DequantizeLinear.
    renamed: HashMap<String, String>,
}

/// A quantized activation's QuantizeLinear → DequantizeLinear pair and the value consumers read.
struct Pair {
    dequantized: String,
    nodes: [Node; 2],
}

impl Export {
    /// Integer weights with their scale and zero-point, and a DequantizeLinear each.
    fn weights(&mut self, plan: &Plan, p: &Params) -> Result<()> {
        for w in &plan.weights {
            let Some(qp) = p.weight(&w.name).map(|w| &w.qparams) else {
                continue;
            };
            let t = self.g.initializer(&w.name).ok_or_else(|| {
                Error::new(&self.g.source, format!("weight '{}' is missing", w.name))
            })?;
            let shape = t.shape.clone();
            let ty = storage(qp.grid);
            let codes = codes(&t.to_f32s(), &shape, qp, ty)
                .map_err(|e| Error::at(&self.g.source, format!("weight '{}'", w.name), e))?;
            let q = self.names.fresh(&format!("{}_quantized", w.name));
            self.g
                .initializers
                .push(RawTensor::from_i64s(&q, &shape, &codes, ty));
            let (scale, zp) = self.params_initializers(&w.name, qp, ty, &shape)?;
            let out = self.names.fresh(&format!("{}_dequantized", w.name));
            let dq = self.dq_node(&w.name, [q, scale, zp], &out, qp);
            self.front.push(dq);
            self.renamed.insert(w.name.clone(), out);
        }
        Ok(())
    }

    /// Int32 biases, per channel, zero-point 0, in plan order (same inputs, same bytes out).
    fn biases(&mut self, plan: &Plan, p: &Params) {
        for b in plan.biases.iter().filter_map(|site| p.bias(&site.name)) {
            let name = &b.name;
            let shape = self
                .g
                .initializer(name)
                .map(|t| t.shape.clone())
                .unwrap_or_default();
            let n = b.scale.len();
            let q = self.names.fresh(&format!("{name}_quantized"));
            let codes: Vec<i64> = b.codes.iter().map(|&c| i64::from(c)).collect();
            self.g
                .initializers
                .push(RawTensor::from_i64s(&q, &shape, &codes, DType::I32));
            let scale = self.names.fresh(&format!("{name}_scale"));
            self.g
                .initializers
                .push(RawTensor::from_f32s(&scale, &[n], &b.scale));
            let zp = self.names.fresh(&format!("{name}_zero_point"));
            self.g
                .initializers
                .push(RawTensor::from_i64s(&zp, &[n], &vec![0; n], DType::I32));
            let out = self.names.fresh(&format!("{name}_dequantized"));
            let dq = self.dq_node_with(name, [q, scale, zp], &out, &[("axis", 0)]);
            self.front.push(dq);
            self.renamed.insert(name.clone(), out);
        }
    }

    /// Layers read the dequantized weights; the float ones go.
    fn read_dequantized_weights(&mut self) {
        for node in self.g.nodes.iter_mut() {
            for input in node.inputs.iter_mut() {
                if let Some(r) = self.renamed.get(input) {
                    *input = r.clone();
                }
            }
        }
        let renamed = &self.renamed;
        self.g
            .initializers
            .retain(|t| !renamed.contains_key(&t.name));
    }

    /// A Q → DQ pair per quantized activation (shared values reuse their source's scale and
    /// zero-point initializers), by value.
    fn activations(&mut self, plan: &Plan, p: &Params) -> Result<HashMap<String, Pair>> {
        let quantized = plan
            .activations
            .iter()
            .chain(plan.shared.iter().map(|(v, _)| v));
        let mut pairs = HashMap::new();
        let mut param_names: HashMap<String, (String, String)> = HashMap::new();
        for a in quantized {
            let Some(qp) = p.activation(a).map(|a| &a.qparams) else {
                continue;
            };
            let source = plan
                .shared
                .iter()
                .find(|(v, _)| v == a)
                .map_or(a, |(_, s)| s);
            let (scale, zp) = match param_names.get(source) {
                Some(names) => names.clone(),
                None => {
                    let names = self.params_initializers(source, qp, storage(qp.grid), &[])?;
                    param_names.insert(source.clone(), names.clone());
                    names
                }
            };
            let q_out = self.names.fresh(&format!("{a}_quantized"));
            let dq_out = self.names.fresh(&format!("{a}_dequantized"));
            let q = Node::new(
                self.names.fresh(&format!("{a}_QuantizeLinear")),
                Op::QuantizeLinear,
                &[a, &scale, &zp],
                &[&q_out],
            );
            let dq = self.dq_node(a, [q_out, scale, zp], &dq_out, qp);
            pairs.insert(
                a.clone(),
                Pair {
                    dequantized: dq_out,
                    nodes: [q, dq],
                },
            );
        }
        Ok(pairs)
    }

    /// Consumers read the dequantized activations; each pair goes right after its producer (or
    /// first, for graph inputs), the weights' DequantizeLinear nodes before everything.
    fn insert_pairs(&mut self, graph: &Graph, pairs: HashMap<String, Pair>) {
        for node in self.g.nodes.iter_mut() {
            for input in node.inputs.iter_mut() {
                if let Some(pair) = pairs.get(input) {
                    *input = pair.dequantized.clone();
                }
            }
        }
        let mut nodes = std::mem::take(&mut self.front);
        for input in &graph.inputs {
            if let Some(pair) = pairs.get(&input.name) {
                nodes.extend(pair.nodes.iter().cloned());
            }
        }
        for node in std::mem::take(&mut self.g.nodes) {
            let after: Vec<Node> = node
                .outputs
                .iter()
                .filter_map(|o| pairs.get(o))
                .flat_map(|pair| pair.nodes.iter().cloned())
                .collect();
            nodes.push(node);
            nodes.extend(after);
        }
        self.g.nodes = nodes;
    }

    /// Scale and zero-point initializers for `qp` on a tensor of shape `shape` (needed for
    /// blocks): a scalar per tensor, a vector per axis, the blocked shape per block.
    fn params_initializers(
        &mut self,
        base: &str,
        qp: &QParams,
        zp_type: DType,
        shape: &[usize],
    ) -> Result<(String, String)> {
        let scale = self.names.fresh(&format!("{base}_scale"));
        let zp = self.names.fresh(&format!("{base}_zero_point"));
        let param_shape = match qp.granularity {
            Granularity::PerTensor if qp.scale.len() == 1 => vec![],
            Granularity::PerBlock { .. } => Layout::new(shape, qp.granularity)
                .map_err(|e| Error::at(&self.g.source, format!("'{base}'"), e))?
                .param_shape()
                .to_vec(),
            _ => vec![qp.scale.len()],
        };
        let z: Vec<i64> = qp.zero_point.iter().map(|&z| i64::from(z)).collect();
        self.g
            .initializers
            .push(RawTensor::from_f32s(&scale, &param_shape, &qp.scale));
        self.g
            .initializers
            .push(RawTensor::from_i64s(&zp, &param_shape, &z, zp_type));
        Ok((scale, zp))
    }

    /// DequantizeLinear of a quantizer with parameters `qp` (axis and block size from its
    /// granularity).
    fn dq_node(&mut self, base: &str, inputs: [String; 3], out: &str, qp: &QParams) -> Node {
        let attributes: &[(&str, i64)] = match qp.granularity {
            Granularity::PerTensor => &[],
            Granularity::PerAxis { axis } => &[("axis", axis as i64)],
            Granularity::PerBlock { axis, block } => {
                &[("axis", axis as i64), ("block_size", block as i64)]
            }
        };
        self.dq_node_with(base, inputs, out, attributes)
    }

    fn dq_node_with(
        &mut self,
        base: &str,
        inputs: [String; 3],
        out: &str,
        attributes: &[(&str, i64)],
    ) -> Node {
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let mut node = Node::new(
            self.names.fresh(&format!("{base}_DequantizeLinear")),
            Op::DequantizeLinear,
            &inputs,
            &[out],
        );
        node.attributes = attributes
            .iter()
            .map(|&(name, v)| int_attribute(name, v))
            .collect();
        node
    }
}

/// The codes of `x` under `qp` in the storage of `ty`, widened to i64.
fn codes(x: &[f32], shape: &[usize], qp: &QParams, ty: DType) -> zeropoint_core::Result<Vec<i64>> {
    let storage = ty.storage().unwrap_or(Storage::I16);
    let q = QTensor::quantize_with(x, shape, qp.clone(), storage)?;
    Ok(q.codes_i32().into_iter().map(i64::from).collect())
}
