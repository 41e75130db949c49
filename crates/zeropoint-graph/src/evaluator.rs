//! What some graph passes need that only running operators can tell, asked of whoever runs them.
//!
//! Constant folding runs a node on constant inputs; BatchNorm folding into a MatMul needs to know
//! which values are 2-D, and the opset-11 upgrade of Clip and Pad the element type of their data.
//! This crate has no operators (zeropoint-engine has them, on a tensor library), so the passes
//! take an [`Evaluator`]: zeropoint-engine's `Engine` is the one used in practice, and
//! [`Structural`] answers for tests and tools that want the passes that need no evaluation.

use std::collections::HashMap;

use zeropoint_onnx::RawTensor;

use crate::error::{Error, Result, Source};
use crate::graph::{Graph, Node, ValueType};

/// Runs operators for the graph passes.
pub trait Evaluator {
    /// Whether `node` can be run (constant folding leaves the others alone).
    fn supports(&self, node: &Node) -> bool;

    /// The outputs of `node` on `inputs` (None for an omitted optional input) at `opset`, each
    /// named after its output.
    fn run_node(
        &self,
        node: &Node,
        inputs: &[Option<&RawTensor>],
        opset: i64,
    ) -> std::result::Result<Vec<RawTensor>, Source>;

    /// The element type and shape of every value of `graph` (inputs, initializers, node
    /// outputs). It may hold the graph's initializers while it runs the graph (rather than a
    /// copy of them), and gives them back unchanged.
    fn infer(&self, graph: &mut Graph) -> Result<HashMap<String, ValueType>>;
}

/// An evaluator that runs nothing: constant folding folds nothing, and the passes that need
/// value types refuse with a message saying so.
pub struct Structural;

impl Evaluator for Structural {
    fn supports(&self, _: &Node) -> bool {
        false
    }

    fn run_node(
        &self,
        node: &Node,
        _: &[Option<&RawTensor>],
        _: i64,
    ) -> std::result::Result<Vec<RawTensor>, Source> {
        Err(format!("{} cannot be run without an engine", node.label()).into())
    }

    fn infer(&self, graph: &mut Graph) -> Result<HashMap<String, ValueType>> {
        Err(Error::model(
            &graph.source,
            "value types are known only by running the graph, which needs an engine",
        ))
    }
}

/// For tests: shape inference that says every value of the graph is float32 of shape `default`,
/// except those it is told, and runs nothing.
#[cfg(test)]
pub(crate) struct Shapes {
    default: Vec<usize>,
    told: Vec<(&'static str, Vec<usize>)>,
}

#[cfg(test)]
impl Shapes {
    pub(crate) fn all(default: &[usize]) -> Shapes {
        Shapes {
            default: default.to_vec(),
            told: Vec::new(),
        }
    }

    pub(crate) fn with(mut self, value: &'static str, shape: &[usize]) -> Shapes {
        self.told.push((value, shape.to_vec()));
        self
    }
}

#[cfg(test)]
impl Evaluator for Shapes {
    fn supports(&self, _: &Node) -> bool {
        false
    }

    fn run_node(
        &self,
        _: &Node,
        _: &[Option<&RawTensor>],
        _: i64,
    ) -> std::result::Result<Vec<RawTensor>, Source> {
        Err("runs nothing".into())
    }

    fn infer(&self, graph: &mut Graph) -> Result<HashMap<String, ValueType>> {
        let shape = |v: &str| {
            let told = self.told.iter().find(|(n, _)| *n == v);
            told.map_or(&self.default, |(_, s)| s)
        };
        let values = graph
            .nodes
            .iter()
            .flat_map(|n| n.inputs.iter().chain(&n.outputs));
        Ok(values
            .map(|v| {
                let t = ValueType {
                    dtype: zeropoint_onnx::DType::F32,
                    shape: shape(v)
                        .iter()
                        .map(|&d| crate::graph::Dim::Fixed(d))
                        .collect(),
                };
                (v.clone(), t)
            })
            .collect())
    }
}
