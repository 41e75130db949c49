//! Where quantizers go (white paper §2.3, ../DESIGN.md):
//!
//! - weights of Conv, ConvTranspose, Gemm and MatMul: one weight quantizer each (per output
//!   channel by default); embedding tables read by Gather, per row;
//! - biases of Conv and Gemm: int32 with scale s_w·s_x, so that the integer accumulator adds
//!   them exactly;
//! - activations: the data inputs of every quantized layer; the output of every Conv, Gemm and
//!   ConvTranspose fused group (layer + bias + Relu/Clip: no requantization inside); Add, Sub,
//!   Mul and Concat between activations, inputs and output, when an integer op consumes their
//!   output. A MatMul's output is quantized only when an integer op consumes it: attention
//!   scores go to Softmax through the mask Add in float (quantizing scores + mask, whose mask
//!   holds −3.4e38, is what ruins ONNX Runtime's quantized BERT models), residual sums to
//!   LayerNorm likewise;
//! - ops that only move values (MaxPool, Reshape, Transpose, Flatten, ...) keep their input's
//!   grid: their output shares the input's parameters instead of getting its own observer;
//! - everything else (Softmax, LayerNormalization, GELU, ...) stays float, and graph outputs are
//!   never quantized (the logits keep their precision).
//!
//! `exclude` (node names or operator types) keeps layers float.

use std::collections::{HashMap, HashSet};

use crate::canonicalize::fused_groups;
use crate::error::FileError;
use crate::graph::Graph;
use crate::infer::dtypes;
use crate::tensor::DType;

/// A weight to quantize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSite {
    /// The initializer.
    pub name: String,
    /// The layer using it.
    pub node: String,
    /// That layer's operator.
    pub op: String,
    /// The axis of output channels (for per-channel quantization).
    pub channel_axis: usize,
}

/// A bias to quantize as int32 with scale s_w · s_x.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BiasSite {
    pub name: String,
    pub node: String,
    pub weight: String,
    /// The layer's input activation.
    pub input: String,
}

/// The quantizers of a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub weights: Vec<WeightSite>,
    pub biases: Vec<BiasSite>,
    /// Activations with their own observer, in graph order.
    pub activations: Vec<String>,
    /// Values that reuse another value's parameters (value, source), in graph order.
    pub shared: Vec<(String, String)>,
}

/// Operators whose output lies on the grid of their (first) input.
const GRID_PRESERVING: &[&str] = &[
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Dropout",
    "Slice",
    "Split",
    "Gather",
    "Expand",
    "Tile",
    "GlobalMaxPool",
];

/// Element-wise ops between activations whose inputs and output are quantized.
const BINARY: &[&str] = &["Add", "Sub", "Mul", "Concat"];

const LAYERS: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul"];

impl Plan {
    /// Records the weight (input `wi`) of a layer, and its bias if it has one.
    fn add_weight(&mut self, graph: &Graph, node: &crate::graph::Node, wi: usize) {
        let is_init = |v: &str| graph.initializer(v).is_some_and(|t| t.dtype.is_float());
        let op = node.op.as_str();
        let w = &node.inputs[wi];
        let rank = graph.initializer(w).map_or(0, |t| t.shape().len());
        let trans_b = node.attribute("transB").is_some_and(|a| a.i() != 0);
        let channel_axis = match op {
            "Conv" => 0,
            "ConvTranspose" => 1,
            "Gemm" if trans_b => 0,
            "Gather" => 0,
            _ => rank.saturating_sub(1),
        };
        if !self.weights.iter().any(|s| &s.name == w) {
            self.weights.push(WeightSite {
                name: w.clone(),
                node: node.name.clone(),
                op: op.to_string(),
                channel_axis,
            });
        }
        let bias = node.inputs.get(2).filter(|b| op != "MatMul" && is_init(b));
        let data = node.inputs.first().filter(|_| wi == 1);
        if let (Some(b), Some(x)) = (bias, data) {
            if graph.initializer(b).is_some_and(|t| t.shape().len() == 1) {
                self.biases.push(BiasSite {
                    name: b.clone(),
                    node: node.name.clone(),
                    weight: w.clone(),
                    input: x.clone(),
                });
            }
        }
    }

    /// The plan for `graph` (canonicalized: BatchNorm folded), keeping float every node whose
    /// name or operator type is in `exclude`. Only float32 values are quantized (shape
    /// arithmetic in int64 is not), which takes a probe run of the model.
    pub fn new(graph: &Graph, exclude: &[String]) -> Result<Plan, FileError> {
        let types = dtypes(graph)?;
        let is_float = |v: &str| types.get(v) == Some(&DType::F32);
        let excluded = |name: &str, op: &str| exclude.iter().any(|e| e == name || e == op);
        let is_init = |v: &str| graph.initializer(v).is_some_and(|t| t.dtype.is_float());
        let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
        let groups = fused_groups(graph);
        let group_of: HashMap<&str, usize> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.nodes[0].as_str(), i))
            .collect();
        let mut plan = Plan::default();
        // Values an integer kernel consumes: they must be quantized.
        let mut needed: HashSet<String> = HashSet::new();
        for node in &graph.nodes {
            let op = node.op.as_str();
            // Embedding tables: int8 per row (the Gather reads rows, so each token keeps its
            // own scale); the looked-up vectors stay float.
            let table = node.inputs.first().filter(|t| is_init(t));
            if op == "Gather" && !excluded(&node.name, op) && table.is_some() {
                let rank = table
                    .and_then(|t| graph.initializer(t))
                    .map_or(0, |t| t.shape().len());
                if rank == 2 && node.attribute("axis").is_none_or(|a| a.i() == 0) {
                    plan.add_weight(graph, node, 0);
                }
                continue;
            }
            if excluded(&node.name, op) || !LAYERS.contains(&op) {
                continue;
            }
            let weight_at = match op {
                // Either operand of MatMul may be the constant one.
                "MatMul" => node.inputs.iter().position(|i| is_init(i)),
                _ => Some(1).filter(|&i| node.inputs.get(i).is_some_and(|w| is_init(w))),
            };
            for (i, input) in node.inputs.iter().enumerate() {
                let is_bias = i == 2 && op != "MatMul";
                if Some(i) != weight_at && !is_bias {
                    needed.insert(input.clone());
                }
            }
            if let Some(wi) = weight_at {
                plan.add_weight(graph, node, wi);
            }
            // Convolution and Gemm outputs are requantized (runtimes' integer kernels produce
            // codes); a MatMul's only when an integer op consumes it (below), so that
            // attention scores and residual branches feeding Softmax or LayerNorm stay float.
            if op != "MatMul" {
                if let Some(&g) = group_of.get(node.name.as_str()) {
                    needed.insert(groups[g].output.clone());
                }
            }
        }
        // Backwards: an integer binary op needs its inputs quantized; a grid-preserving op's
        // output is quantized by quantizing its input.
        for node in graph.nodes.iter().rev() {
            let op = node.op.as_str();
            if excluded(&node.name, op) || !node.outputs.iter().any(|o| needed.contains(o)) {
                continue;
            }
            if GRID_PRESERVING.contains(&op) {
                needed.insert(node.inputs[0].clone());
            } else if BINARY.contains(&op) {
                let activations = node
                    .inputs
                    .iter()
                    .filter(|i| !i.is_empty() && !is_init(i))
                    .count();
                if activations >= 2 || op == "Concat" {
                    needed.extend(node.inputs.iter().cloned());
                }
            }
        }
        let eligible =
            |v: &str| !v.is_empty() && is_float(v) && !is_init(v) && !outputs.contains(v);
        for v in graph
            .inputs
            .iter()
            .map(|i| &i.name)
            .chain(graph.nodes.iter().flat_map(|n| &n.outputs))
        {
            if needed.contains(v) && eligible(v) && !plan.activations.contains(v) {
                plan.activations.push(v.clone());
            }
        }
        // Grid-preserving ops pass their input's parameters on (in graph order, so chains work).
        let mut source: HashMap<String, String> = plan
            .activations
            .iter()
            .map(|a| (a.clone(), a.clone()))
            .collect();
        for node in &graph.nodes {
            if !GRID_PRESERVING.contains(&node.op.as_str()) || excluded(&node.name, &node.op) {
                continue;
            }
            let Some(src) = node.inputs.first().and_then(|i| source.get(i)).cloned() else {
                continue;
            };
            for out in node.outputs.iter().filter(|o| is_float(o)) {
                let already_shared = source.get(out).is_some_and(|s| s != out);
                if already_shared || outputs.contains(out.as_str()) {
                    continue;
                }
                source.insert(out.clone(), src.clone());
                plan.shared.push((out.clone(), src.clone()));
            }
        }
        // An activation that is itself the output of a grid-preserving op of a quantized value
        // needs no observer of its own.
        let shared: HashMap<String, String> = plan.shared.iter().cloned().collect();
        plan.activations.retain(|a| !shared.contains_key(a));
        Ok(plan)
    }
}
