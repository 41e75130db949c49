//! The executor: runs a [`Graph`] node by node on candle tensors.
//!
//! Every value the graph produces (and every fed input) passes through a hook that may observe
//! it or replace it: calibration observes activations, quantization simulation replaces them by
//! their fake-quantized version. Values are dropped after their last use, so memory follows the
//! widest cut of the graph, not its size. Feeding a value under an initializer's name replaces
//! the initializer (a candle `Var` there makes the run differentiable in that weight).

use std::collections::HashMap;

use crate::error::FileError;
use crate::graph::{dims_fit, Graph, Node};
use crate::ops::{self, Cx};
use crate::value::Value;

/// Runs a checked graph.
pub struct Executor<'g> {
    graph: &'g Graph,
    /// Per node, the values no later node (nor the graph's outputs) reads.
    dead_after: Vec<Vec<String>>,
}

impl<'g> Executor<'g> {
    /// Prepares a graph for running; every unsupported operator is reported at once, by node.
    pub fn new(graph: &'g Graph) -> Result<Executor<'g>, FileError> {
        let unsupported = graph.unsupported();
        if !unsupported.is_empty() {
            return Err(FileError::new(
                &graph.source,
                format!(
                    "{} unsupported: {}",
                    if unsupported.len() == 1 {
                        "operator"
                    } else {
                        "operators"
                    },
                    unsupported.join(", ")
                ),
            ));
        }
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            for input in &node.inputs {
                last.insert(input, i);
            }
        }
        for o in &graph.outputs {
            last.remove(o.name.as_str());
        }
        let mut dead_after = vec![Vec::new(); graph.nodes.len()];
        for (name, i) in last {
            if !name.is_empty() {
                dead_after[i].push(name.to_string());
            }
        }
        Ok(Executor { graph, dead_after })
    }

    /// Runs the graph on `inputs` (by name); returns the graph's outputs in order.
    pub fn run(&self, inputs: HashMap<String, Value>) -> Result<Vec<(String, Value)>, FileError> {
        self.run_with(inputs, &mut |_, v| Ok(v))
    }

    /// Runs the graph, passing each fed input and each node output through `hook`, which returns
    /// the value to continue with.
    pub fn run_with(
        &self,
        inputs: HashMap<String, Value>,
        hook: &mut dyn FnMut(&str, Value) -> Result<Value, String>,
    ) -> Result<Vec<(String, Value)>, FileError> {
        let g = self.graph;
        let err = |m: String| FileError::new(&g.source, m);
        self.check_inputs(&inputs)?;
        let mut env: HashMap<String, Value> = g.initializers.iter().cloned().collect();
        for (name, v) in inputs {
            let v = hook(&name, v).map_err(|m| err(format!("input '{name}': {m}")))?;
            env.insert(name, v);
        }
        for (i, node) in g.nodes.iter().enumerate() {
            let args: Vec<Option<Value>> = node
                .inputs
                .iter()
                .map(|n| {
                    if n.is_empty() {
                        None
                    } else {
                        env.get(n).cloned()
                    }
                })
                .collect();
            let cx = Cx {
                node,
                inputs: &args,
                opset: g.opset,
            };
            let outs = ops::run(&cx).map_err(|m| err(format!("{}: {m}", node.label())))?;
            drop(args);
            for (name, v) in node.outputs.iter().zip(outs) {
                if name.is_empty() {
                    continue;
                }
                let v = hook(name, v)
                    .map_err(|m| err(format!("{}: output '{name}': {m}", node.label())))?;
                env.insert(name.clone(), v);
            }
            for dead in &self.dead_after[i] {
                env.remove(dead);
            }
        }
        g.outputs
            .iter()
            .map(|o| {
                env.remove(&o.name)
                    .map(|v| (o.name.clone(), v))
                    .ok_or_else(|| err(format!("output '{}' was not computed", o.name)))
            })
            .collect()
    }

    /// Every declared input is fed, with its declared element type and fixed dimensions; nothing
    /// else is fed but initializers.
    fn check_inputs(&self, inputs: &HashMap<String, Value>) -> Result<(), FileError> {
        let g = self.graph;
        let err = |m: String| FileError::new(&g.source, m);
        for name in inputs.keys() {
            if !g.inputs.iter().any(|i| &i.name == name) && g.initializer(name).is_none() {
                let names: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(err(format!(
                    "the model has no input '{name}' (its inputs: {})",
                    names.join(", ")
                )));
            }
        }
        for info in &g.inputs {
            let v = inputs
                .get(&info.name)
                .ok_or_else(|| err(format!("input '{}' is not given", info.name)))?;
            if let Some(d) = info.dtype.filter(|&d| d != v.dtype) {
                return Err(err(format!(
                    "input '{}' must be {d}, got {}",
                    info.name, v.dtype
                )));
            }
            if info.shape.as_ref().is_some_and(|s| !dims_fit(s, v.shape())) {
                return Err(err(format!(
                    "input '{}' must have shape {}, got {:?}",
                    info.name,
                    info.shape_text(),
                    v.shape()
                )));
            }
        }
        Ok(())
    }
}

/// Runs one node on given inputs, outside any graph (used by constant folding).
pub fn run_node(node: &Node, inputs: &[Option<Value>], opset: i64) -> Result<Vec<Value>, String> {
    ops::run(&Cx {
        node,
        inputs,
        opset,
    })
    .map_err(|e| e.0)
}
