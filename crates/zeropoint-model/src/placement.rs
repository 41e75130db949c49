//! Where quantizers go (white paper §2.3, ../DESIGN.md):
//!
//! - weights of Conv, ConvTranspose, Gemm and MatMul: one weight quantizer each (per output
//!   channel by default);
//! - biases of Conv and Gemm: int32 with scale s_w·s_x, so that the integer accumulator adds
//!   them exactly;
//! - activations: the data inputs of every quantized layer, the output of every fused group
//!   (layer + bias + Relu/Clip, no requantization inside), both inputs and the output of Add,
//!   Sub, Mul and Concat between activations;
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
use crate::infer::infer;
use crate::tensor::DType;

/// A weight to quantize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSite {
    /// The initializer.
    pub name: String,
    /// The layer using it.
    pub node: String,
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
    /// The plan for `graph` (canonicalized: BatchNorm folded), keeping float every node whose
    /// name or operator type is in `exclude`. Only float32 values are quantized (shape
    /// arithmetic in int64 is not), which takes shape inference.
    pub fn new(graph: &Graph, exclude: &[String]) -> Result<Plan, FileError> {
        let types = infer(graph)?;
        let is_float = |v: &str| types.get(v).is_some_and(|t| t.dtype == DType::F32);
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
        let mut quantized: HashSet<String> = HashSet::new();
        let mut mark = |plan: &mut Plan, v: &str| {
            let eligible = !v.is_empty() && is_float(v) && !is_init(v) && !outputs.contains(v);
            if eligible && quantized.insert(v.to_string()) {
                plan.activations.push(v.to_string());
            }
        };
        for node in &graph.nodes {
            if excluded(&node.name, &node.op) {
                continue;
            }
            let op = node.op.as_str();
            if LAYERS.contains(&op) {
                let weight_at = match op {
                    // Either operand of MatMul may be the constant one.
                    "MatMul" => node.inputs.iter().position(|i| is_init(i)),
                    _ => Some(1).filter(|&i| node.inputs.get(i).is_some_and(|w| is_init(w))),
                };
                for (i, input) in node.inputs.iter().enumerate() {
                    let is_bias = i == 2 && op != "MatMul";
                    if Some(i) != weight_at && !is_bias {
                        mark(&mut plan, input);
                    }
                }
                if let Some(wi) = weight_at {
                    let w = &node.inputs[wi];
                    let rank = graph.initializer(w).map_or(0, |t| t.shape().len());
                    let trans_b = node.attribute("transB").is_some_and(|a| a.i() != 0);
                    let channel_axis = match op {
                        "Conv" => 0,
                        "ConvTranspose" => 1,
                        "Gemm" if trans_b => 0,
                        _ => rank.saturating_sub(1),
                    };
                    if !plan.weights.iter().any(|s| &s.name == w) {
                        plan.weights.push(WeightSite {
                            name: w.clone(),
                            node: node.name.clone(),
                            channel_axis,
                        });
                    }
                    let bias = node.inputs.get(2).filter(|b| op != "MatMul" && is_init(b));
                    let data = node.inputs.first().filter(|_| wi == 1);
                    if let (Some(b), Some(x)) = (bias, data) {
                        let per_channel =
                            graph.initializer(b).is_some_and(|t| t.shape().len() == 1);
                        if per_channel {
                            plan.biases.push(BiasSite {
                                name: b.clone(),
                                node: node.name.clone(),
                                weight: w.clone(),
                                input: x.clone(),
                            });
                        }
                    }
                }
                if let Some(&g) = group_of.get(node.name.as_str()) {
                    mark(&mut plan, &groups[g].output);
                }
            } else if BINARY.contains(&op) {
                let activations: Vec<&String> =
                    node.inputs.iter().filter(|i| !is_init(i)).collect();
                if activations.len() >= 2 || op == "Concat" {
                    for input in &node.inputs {
                        mark(&mut plan, input);
                    }
                    mark(&mut plan, &node.outputs[0]);
                }
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
