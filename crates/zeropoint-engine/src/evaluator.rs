//! The engine as the graph passes' [`Evaluator`]: constant folding runs the operators here, and
//! value types come from shape inference's probe runs.

use std::collections::HashMap;

use zeropoint_graph::error::Source;
use zeropoint_graph::{Evaluator, Graph, Node, ValueType};
use zeropoint_onnx::RawTensor;

use crate::error::Error;
use crate::value::Value;

/// zeropoint-engine's operators, for the passes of zeropoint-graph:
/// `canonicalize(&mut graph, &Engine)`.
pub struct Engine;

impl Evaluator for Engine {
    fn supports(&self, node: &Node) -> bool {
        crate::ops::supports(node)
    }

    fn run_node(
        &self,
        node: &Node,
        inputs: &[Option<&RawTensor>],
        opset: i64,
    ) -> Result<Vec<RawTensor>, Source> {
        let args = inputs
            .iter()
            .map(|t| t.map(Value::from_raw).transpose())
            .collect::<Result<Vec<_>, Error>>()?;
        let outputs = crate::exec::run_node(node, &args, opset)?;
        Ok(node
            .outputs
            .iter()
            .zip(outputs)
            .map(|(name, v)| v.to_raw(name))
            .collect::<Result<_, Error>>()?)
    }

    fn infer(&self, graph: &mut Graph) -> zeropoint_graph::Result<HashMap<String, ValueType>> {
        crate::infer::infer(graph).map_err(|e| match e {
            Error::Graph(g) => g,
            op => zeropoint_graph::Error::at(&graph.source, "shape inference", op),
        })
    }
}
