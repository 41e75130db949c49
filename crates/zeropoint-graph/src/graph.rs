//! The graph IR: an ONNX graph as nodes in topological order with typed operators, named values,
//! and initializers as raw tensors (their elements as the file stores them).
//!
//! Names are the user's handle on a model (`--exclude conv1`, per-layer reports), so they stay
//! exactly as in the file; a node without a name (or with a duplicate one) gets `<OpType>_<index>`,
//! its position in the file, which is stable across runs. Node order is the file's order where
//! that is already topological, so that what a user sees follows the file.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use zeropoint_onnx::proto::attribute_proto::AttributeType;
use zeropoint_onnx::proto::{
    tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto,
    TensorShapeProto, ValueInfoProto,
};
use zeropoint_onnx::{external_data, model, tensor_proto, DType, RawTensor};

use crate::error::{Error, Result};
use crate::op::Op;

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(usize),
    /// A named (`N`, `batch`) or anonymous (`?`) dimension, known only at run time.
    Sym(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// A graph input or output as declared in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub dtype: Option<DType>,
    pub shape: Option<Vec<Dim>>,
}

impl ValueInfo {
    /// A float32 value of undeclared shape, for the graphs tests build.
    #[cfg(test)]
    pub(crate) fn float(name: &str) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: None,
        }
    }

    /// The declared shape as text, "[N, 1, 28, 28]", or "?" when none is declared.
    pub fn shape_text(&self) -> String {
        self.shape.as_ref().map_or("?".into(), |s| {
            let dims: Vec<String> = s.iter().map(Dim::to_string).collect();
            format!("[{}]", dims.join(", "))
        })
    }
}

/// The element type and shape of a value, as shape inference finds them.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

/// Whether `dims` fit the declared `shape`: the same rank, and equal where a dimension is fixed.
pub fn dims_fit(shape: &[Dim], dims: &[usize]) -> bool {
    shape.len() == dims.len()
        && shape
            .iter()
            .zip(dims)
            .all(|(d, &n)| !matches!(d, Dim::Fixed(f) if *f != n))
}

/// One operator application.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    /// The domain as the file spells it ("" or "ai.onnx" for the default one), written back as is.
    pub domain: String,
    /// Input value names; "" marks an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// The attributes, except graph-valued ones, which are in `subgraphs`.
    pub attributes: Vec<AttributeProto>,
    /// The graph-valued attributes (the branches of If, the bodies of Loop and Scan), by
    /// attribute name, as graphs of their own. They may read values of the enclosing graphs
    /// ([`Node::captures`]).
    pub subgraphs: Vec<(String, Graph)>,
}

impl Node {
    /// A node of the default domain without attributes.
    pub fn new(name: impl Into<String>, op: Op, inputs: &[&str], outputs: &[&str]) -> Node {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Node {
            name: name.into(),
            op,
            domain: String::new(),
            inputs: strings(inputs),
            outputs: strings(outputs),
            attributes: vec![],
            subgraphs: vec![],
        }
    }

    /// The subgraph of attribute `name` (`then_branch`, `body`).
    pub fn subgraph(&self, name: &str) -> Option<&Graph> {
        self.subgraphs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, g)| g)
    }

    /// The values of enclosing graphs that this node's subgraphs read, in order of first use.
    pub fn captures(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.subgraphs
            .iter()
            .flat_map(|(_, g)| g.captures())
            .filter(|n| seen.insert(n.clone()))
            .collect()
    }

    /// Every value the node reads: its inputs, then what its subgraphs capture.
    pub fn reads(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .inputs
            .iter()
            .filter(|i| !i.is_empty())
            .cloned()
            .collect();
        all.extend(self.captures());
        all
    }

    /// "node 'conv1' (Conv)", the way errors name a node.
    pub fn label(&self) -> String {
        format!("node '{}' ({})", self.name, self.op)
    }

    pub fn attribute(&self, name: &str) -> Option<&AttributeProto> {
        self.attributes.iter().find(|a| a.name() == name)
    }
}

/// A model's main graph, or the subgraph of a node, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// The file it came from, for error messages.
    pub source: PathBuf,
    /// The opset version of the default (ai.onnx) domain.
    pub opset: i64,
    /// Inputs the caller must feed (graph inputs that are not initializers).
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    /// Constant tensors (named), in file order.
    pub initializers: Vec<RawTensor>,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
}

impl Graph {
    /// Reads an ONNX file (external data resolved beside it) into a graph.
    pub fn load(path: &Path) -> Result<Graph> {
        let mut model = model::load(path)?;
        external_data::load_external_data(&mut model, path)?;
        Graph::from_model_taking(&mut model, path)
    }

    /// [`Graph::from_model`], taking the main graph's initializers out of `model` instead of
    /// copying them: the weights are held once, not twice, while the graph is built.
    pub fn from_model_taking(model: &mut ModelProto, path: &Path) -> Result<Graph> {
        let opset = main_opset(model, path)?;
        let g = model
            .graph
            .as_mut()
            .ok_or_else(|| Error::model(path, "the model has no graph"))?;
        let initializers = std::mem::take(&mut g.initializer)
            .into_iter()
            .map(|t| tensor_proto::into_raw(t, path).map_err(|e| initializer_error(e, path)))
            .collect::<Result<Vec<_>>>()?;
        Graph::from_proto_with(g, initializers, opset, path, &HashSet::new())
    }

    /// Builds the graph of a decoded model; `path` is for messages (and external data).
    pub fn from_model(model: &ModelProto, path: &Path) -> Result<Graph> {
        let g = model
            .graph
            .as_ref()
            .ok_or_else(|| Error::model(path, "the model has no graph"))?;
        Graph::from_proto(g, main_opset(model, path)?, path, &HashSet::new())
    }

    /// The graph of `g`, a main graph or (with the names its enclosing graphs define in
    /// `outer`) a subgraph.
    fn from_proto(
        g: &GraphProto,
        opset: i64,
        path: &Path,
        outer: &HashSet<String>,
    ) -> Result<Graph> {
        let initializers = g
            .initializer
            .iter()
            .map(|t| tensor_proto::to_raw(t, path).map_err(|e| initializer_error(e, path)))
            .collect::<Result<Vec<_>>>()?;
        Graph::from_proto_with(g, initializers, opset, path, outer)
    }

    /// [`Graph::from_proto`] with the initializers already read (`g`'s own are not).
    fn from_proto_with(
        g: &GraphProto,
        initializers: Vec<RawTensor>,
        opset: i64,
        path: &Path,
        outer: &HashSet<String>,
    ) -> Result<Graph> {
        let init_names: HashSet<&str> = initializers.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<ValueInfo> = g
            .input
            .iter()
            .filter(|i| !init_names.contains(i.name()))
            .map(value_info)
            .collect();
        let outputs = g.output.iter().map(value_info).collect();
        // What the subgraphs of this graph's nodes may read.
        let mut visible = outer.clone();
        visible.extend(inputs.iter().map(|i| i.name.clone()));
        visible.extend(init_names.iter().map(|n| n.to_string()));
        visible.extend(g.node.iter().flat_map(|n| n.output.iter().cloned()));
        let nodes = name_nodes(&g.node, opset, path, &visible)?;
        // Every ONNX operator has an output: the passes may take a node's first for granted.
        if let Some(n) = nodes.iter().find(|n| n.outputs.is_empty()) {
            return Err(Error::model(path, format!("{} has no output", n.label())));
        }
        let mut graph = Graph {
            source: path.to_path_buf(),
            opset,
            inputs,
            outputs,
            initializers,
            nodes,
        };
        graph.sort_within(outer)?;
        Ok(graph)
    }

    /// Puts the nodes in topological order (stable: file order where possible), checking that
    /// every input is defined and that there is no cycle.
    pub fn sort(&mut self) -> Result<()> {
        self.sort_within(&HashSet::new())
    }

    /// The values the nodes write, each written once (ONNX graphs are in single assignment):
    /// a value two nodes write, or a node writes over an input or an initializer, is an error
    /// that names both, since every pass finds a value by its one producer.
    fn single_producers(&self, defined: &HashSet<String>) -> Result<HashSet<&str>> {
        let mut producers: HashMap<&str, &Node> = HashMap::new();
        for node in &self.nodes {
            for out in node.outputs.iter().filter(|o| !o.is_empty()) {
                let why = match producers.insert(out, node) {
                    Some(first) => format!("{} writes it too", first.label()),
                    None if defined.contains(out) => "it is a graph input or initializer".into(),
                    None => continue,
                };
                return Err(Error::model(
                    &self.source,
                    format!(
                        "{}: its output '{out}' is written twice: {why}",
                        node.label()
                    ),
                ));
            }
        }
        Ok(producers.into_keys().collect())
    }

    /// [`Graph::sort`] for a subgraph, which may also read the values `outer` names.
    pub fn sort_within(&mut self, outer: &HashSet<String>) -> Result<()> {
        let mut defined: HashSet<String> = outer.clone();
        defined.extend(self.inputs.iter().map(|i| i.name.clone()));
        defined.extend(self.initializers.iter().map(|t| t.name.clone()));
        defined.insert(String::new());
        let producers = self.single_producers(&defined)?;
        // What each node reads, its subgraphs' captures included, found once.
        let reads: Vec<Vec<String>> = self.nodes.iter().map(Node::reads).collect();
        for (node, reads) in self.nodes.iter().zip(&reads) {
            if let Some(missing) = reads
                .iter()
                .find(|i| !defined.contains(*i) && !producers.contains(i.as_str()))
            {
                return Err(Error::model(
                    &self.source,
                    format!("{}: input '{missing}' is not defined", node.label()),
                ));
            }
        }
        let nodes: Vec<(Node, Vec<String>)> = std::mem::take(&mut self.nodes)
            .into_iter()
            .zip(reads)
            .collect();
        let mut pending = nodes;
        let mut sorted = Vec::with_capacity(pending.len());
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for (node, reads) in pending {
                if reads.iter().all(|i| defined.contains(i)) {
                    defined.extend(node.outputs.iter().cloned());
                    sorted.push(node);
                } else {
                    rest.push((node, reads));
                }
            }
            if rest.len() == before {
                self.nodes = sorted;
                return Err(Error::model(
                    &self.source,
                    format!("{}: the graph has a cycle through it", rest[0].0.label()),
                ));
            }
            pending = rest;
        }
        self.nodes = sorted;
        // `defined` now holds every value of this graph, which its subgraphs may read.
        for n in &mut self.nodes {
            for (_, sub) in &mut n.subgraphs {
                sub.sort_within(&defined)?;
            }
        }
        Ok(())
    }

    /// The model `base` (the one this graph was read from) with this graph's nodes and
    /// initializers: opsets, metadata and doc strings are kept; declared inputs and value_info of
    /// values that no longer exist are dropped; output shapes are the graph's.
    pub fn to_model(&self, base: &ModelProto) -> Result<ModelProto> {
        let initializers = self
            .initializers
            .iter()
            .map(|t| tensor_proto::from_raw(t.clone()));
        self.write_model(base, initializers.collect())
    }

    /// [`Graph::to_model`], moving the initializers into the model instead of copying them (an
    /// export holds its weights once).
    pub fn into_model(mut self, base: &ModelProto) -> Result<ModelProto> {
        let initializers = std::mem::take(&mut self.initializers);
        self.write_model(
            base,
            initializers
                .into_iter()
                .map(tensor_proto::from_raw)
                .collect(),
        )
    }

    /// The model `base` with this graph, whose main initializers are `initializer`.
    fn write_model(&self, base: &ModelProto, initializer: Vec<TensorProto>) -> Result<ModelProto> {
        let mut model = base.clone();
        // An upgrade (crate::opset) may have raised the default domain's version.
        for o in model.opset_import.iter_mut() {
            if matches!(o.domain(), "" | "ai.onnx") {
                o.version = Some(self.opset);
            }
        }
        model.ir_version = Some(model.ir_version().max(min_ir_version(self.opset)));
        let g = model
            .graph
            .as_mut()
            .ok_or_else(|| Error::model(&self.source, "the model has no graph"))?;
        self.write_into(g, initializer, false);
        Ok(model)
    }

    /// Writes this graph's nodes (subgraphs included), initializers and output shapes into `g`,
    /// the proto it was read from (whose other fields are kept). The declared outputs, and a
    /// `subgraph`'s declared inputs (its formal parameters), are the graph's, in its order: a
    /// pass may drop a Loop body's constant state.
    fn write_into(&self, g: &mut GraphProto, initializer: Vec<TensorProto>, subgraph: bool) {
        let old_nodes = std::mem::take(&mut g.node);
        g.node = self
            .nodes
            .iter()
            .map(|n| {
                // Keep fields the IR does not model (doc strings, overloads, the declared types of
                // subgraphs) of surviving nodes, found by the name they were given.
                let old = old_nodes.iter().enumerate().find_map(|(i, o)| {
                    let named = o.name() == n.name || format!("{}_{i}", o.op_type()) == n.name;
                    (named && o.op_type() == n.op.as_str()).then_some(o)
                });
                let mut p = old.cloned().unwrap_or_default();
                p.name = Some(n.name.clone());
                p.op_type = Some(n.op.as_str().to_string());
                p.domain = (!n.domain.is_empty()).then(|| n.domain.clone());
                p.input = n.inputs.clone();
                p.output = n.outputs.clone();
                p.attribute = n.attributes.clone();
                for (name, sub) in &n.subgraphs {
                    let mut proto = old
                        .and_then(|o| o.attribute.iter().find(|a| a.name() == name))
                        .and_then(|a| a.g.clone())
                        .unwrap_or_default();
                    let inits = sub.initializers.iter().cloned().map(tensor_proto::from_raw);
                    sub.write_into(&mut proto, inits.collect(), true);
                    p.attribute.push(AttributeProto {
                        name: Some(name.clone()),
                        r#type: Some(AttributeType::Graph as i32),
                        g: Some(proto),
                        ..Default::default()
                    });
                }
                p
            })
            .collect();
        g.initializer = initializer;
        let live: HashSet<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.outputs.iter().map(String::as_str))
            .chain(self.inputs.iter().map(|i| i.name.as_str()))
            .chain(g.initializer.iter().map(|t| t.name()))
            .collect();
        g.value_info.retain(|i| live.contains(i.name()));
        // The declared outputs, and a subgraph's declared inputs (its formal parameters), are the
        // graph's own, in its order, with the shapes and element types it has now: a pass may
        // drop a Loop body's constant state, correct a shape that contradicted the model, or
        // widen half precision. A value the file did not declare (a subgraph of a new node) is
        // declared as the IR knows it.
        let declare = |protos: &mut Vec<ValueInfoProto>, infos: &[ValueInfo]| {
            let old = std::mem::take(protos);
            *protos = infos
                .iter()
                .map(|v| {
                    let p = old.iter().find(|p| p.name() == v.name).cloned();
                    let mut p = p.unwrap_or_else(|| value_info_proto(v));
                    let reshaped = value_info(&p).shape != v.shape;
                    if let Some(type_proto::Value::TensorType(t)) =
                        p.r#type.as_mut().and_then(|t| t.value.as_mut())
                    {
                        if let Some(d) = v.dtype {
                            t.elem_type = Some(tensor_proto::onnx_code(d));
                        }
                        if reshaped {
                            t.shape = v.shape.as_ref().map(|dims| shape_proto(dims));
                        }
                    }
                    p
                })
                .collect();
        };
        declare(&mut g.output, &self.outputs);
        if subgraph {
            declare(&mut g.input, &self.inputs);
        } else {
            // The main graph's declared inputs keep the initializers old-IR files list as inputs.
            g.input.retain(|i| live.contains(i.name()));
            for v in &self.inputs {
                if !g.input.iter().any(|p| p.name() == v.name) {
                    g.input.push(value_info_proto(v));
                }
            }
        }
        if g.name().is_empty() {
            g.name = Some("subgraph".into());
        }
    }

    pub fn initializer(&self, name: &str) -> Option<&RawTensor> {
        self.initializers.iter().find(|t| t.name == name)
    }

    /// The initializer `name` if it holds floats (weights, biases; not shapes or indices).
    pub fn float_initializer(&self, name: &str) -> Option<&RawTensor> {
        self.initializer(name).filter(|t| t.dtype.is_float())
    }

    /// A Clip node's (min, max), from its constant inputs (opset ≥ 11) or its attributes; None
    /// where a bound is missing or computed.
    pub fn clip_bounds(&self, clip: &Node) -> Option<(f32, f32)> {
        let input = |i: usize| {
            clip.inputs
                .get(i)
                .filter(|n| !n.is_empty())
                .and_then(|n| self.initializer(n))
                .and_then(|t| t.to_f32s().first().copied())
        };
        let attr = |name: &str| clip.attribute(name).map(|a| a.f());
        let lo = input(1).or_else(|| attr("min"))?;
        let hi = input(2).or_else(|| attr("max"))?;
        Some((lo, hi))
    }

    /// The node producing each value, by value name.
    pub fn producers(&self) -> HashMap<&str, usize> {
        let mut map = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for o in &node.outputs {
                map.insert(o.as_str(), i);
            }
        }
        map
    }

    /// The nodes reading each value, by value name (a node whose subgraph captures a value reads
    /// it too).
    pub fn consumers(&self) -> HashMap<String, Vec<usize>> {
        let mut map: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for input in node.reads() {
                map.entry(input).or_default().push(i);
            }
        }
        map
    }

    /// The values of enclosing graphs this (sub)graph reads: names its nodes and outputs use
    /// that it does not define itself.
    pub fn captures(&self) -> Vec<String> {
        let mut defined: HashSet<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        defined.extend(self.initializers.iter().map(|t| t.name.as_str()));
        defined.extend(
            self.nodes
                .iter()
                .flat_map(|n| n.outputs.iter().map(String::as_str)),
        );
        let mut seen = HashSet::new();
        let read = self.nodes.iter().flat_map(Node::reads);
        read.chain(self.outputs.iter().map(|o| o.name.clone()))
            .filter(|n| !defined.contains(n.as_str()) && seen.insert(n.clone()))
            .collect()
    }

    /// The initializer `name` of this graph or of any of its subgraphs (names are unique in a
    /// model: subgraphs do not redefine their enclosing graphs' values).
    pub fn find_initializer(&self, name: &str) -> Option<&RawTensor> {
        self.initializer(name).or_else(|| {
            self.nodes
                .iter()
                .flat_map(|n| &n.subgraphs)
                .find_map(|(_, g)| g.find_initializer(name))
        })
    }

    /// The graph and its subgraphs as one graph, for analyses that look at structure, never to
    /// run: every node in order (a control-flow node, without its subgraphs, before their
    /// nodes), every initializer, and every graph output (the subgraphs' among them). A graph
    /// without subgraphs is its own flattening, borrowed: a copy would duplicate every
    /// initializer's data (20 MB for ddddocr-det, on each placement).
    pub fn flattened(&self) -> Cow<'_, Graph> {
        if self.nodes.iter().all(|n| n.subgraphs.is_empty()) {
            return Cow::Borrowed(self);
        }
        let mut flat = Graph {
            source: self.source.clone(),
            opset: self.opset,
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            initializers: self.initializers.clone(),
            nodes: Vec::new(),
        };
        for n in &self.nodes {
            flat.nodes.push(Node {
                subgraphs: vec![],
                ..n.clone()
            });
            for (_, sub) in &n.subgraphs {
                let inner = sub.flattened().into_owned();
                flat.nodes.extend(inner.nodes);
                flat.initializers.extend(inner.initializers);
                flat.outputs.extend(inner.outputs);
            }
        }
        Cow::Owned(flat)
    }

    /// Every node of this graph and of its subgraphs, depth first.
    pub fn all_nodes(&self) -> Vec<&Node> {
        let mut all = Vec::new();
        for n in &self.nodes {
            all.push(n);
            for (_, g) in &n.subgraphs {
                all.extend(g.all_nodes());
            }
        }
        all
    }

    /// Number of parameters (elements of float initializers), its subgraphs' included.
    pub fn parameter_count(&self) -> usize {
        let own: usize = (self.initializers.iter())
            .filter(|t| t.dtype.is_float())
            .map(RawTensor::len)
            .sum();
        let nested = self.nodes.iter().flat_map(|n| &n.subgraphs);
        own + nested.map(|(_, g)| g.parameter_count()).sum::<usize>()
    }
}

/// The newest version of the default domain that ONNX has defined (onnx 1.23). A model that
/// claims a newer one was written by no exporter: its operators' meaning is unknown, and its
/// export would carry the claim on to runtimes that refuse it.
pub const NEWEST_OPSET: i64 = 28;

/// The version of the default (ai.onnx) domain `model` imports.
fn main_opset(model: &ModelProto, path: &Path) -> Result<i64> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
        .ok_or_else(|| Error::model(path, "the model imports no ai.onnx opset"))?;
    if !(1..=NEWEST_OPSET).contains(&opset) {
        return Err(Error::model(
            path,
            format!(
                "the model imports ai.onnx opset {opset}: ONNX defines opsets 1 to {NEWEST_OPSET}"
            ),
        ));
    }
    Ok(opset)
}

/// An initializer that cannot be read, named as one.
fn initializer_error(e: zeropoint_onnx::Error, path: &Path) -> Error {
    match e {
        zeropoint_onnx::Error::Tensor {
            tensor,
            message,
            source,
            ..
        } => Error::Model {
            path: path.to_path_buf(),
            message: format!("initializer '{tensor}': {message}"),
            source,
        },
        other => other.into(),
    }
}

/// Dimensions as ONNX declares them; `?` is a dimension with neither value nor name.
fn shape_proto(dims: &[Dim]) -> TensorShapeProto {
    TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| tensor_shape_proto::Dimension {
                value: match d {
                    Dim::Fixed(n) => {
                        Some(tensor_shape_proto::dimension::Value::DimValue(*n as i64))
                    }
                    Dim::Sym(s) if s == "?" => None,
                    Dim::Sym(s) => Some(tensor_shape_proto::dimension::Value::DimParam(s.clone())),
                },
                ..Default::default()
            })
            .collect(),
    }
}

fn value_info_proto(v: &ValueInfo) -> ValueInfoProto {
    let tensor = type_proto::Tensor {
        elem_type: v.dtype.map(tensor_proto::onnx_code),
        shape: v.shape.as_ref().map(|dims| shape_proto(dims)),
    };
    ValueInfoProto {
        name: Some(v.name.clone()),
        r#type: Some(zeropoint_onnx::proto::TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_info(v: &ValueInfoProto) -> ValueInfo {
    let tensor = v.r#type.as_ref().and_then(|t| match &t.value {
        Some(type_proto::Value::TensorType(tt)) => Some(tt),
        _ => None,
    });
    let dtype = tensor.and_then(|t| tensor_proto::dtype_of(t.elem_type()));
    let shape = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => {
                    Dim::Fixed(*n as usize)
                }
                Some(tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                    Dim::Sym(p.clone())
                }
                _ => Dim::Sym("?".into()),
            })
            .collect()
    });
    ValueInfo {
        name: v.name().to_string(),
        dtype,
        shape,
    }
}

/// The graph's nodes with unique names: the file's, else `<OpType>_<index>`; graph-valued
/// attributes become subgraphs that may read the `visible` names.
fn name_nodes(
    nodes: &[NodeProto],
    opset: i64,
    path: &Path,
    visible: &HashSet<String>,
) -> Result<Vec<Node>> {
    let mut seen = HashSet::new();
    let mut named = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let mut name = n.name().to_string();
        if name.is_empty() || !seen.insert(name.clone()) {
            name = format!("{}_{i}", n.op_type());
            seen.insert(name.clone());
        }
        let (graphs, attributes): (Vec<_>, Vec<_>) = n
            .attribute
            .iter()
            .cloned()
            .partition(|a| a.r#type() == AttributeType::Graph && a.g.is_some());
        let subgraphs = graphs
            .iter()
            .map(|a| {
                let g = a.g.as_ref().expect("partitioned on g");
                let place = format!("node '{name}' ({}), {}", n.op_type(), a.name());
                let sub =
                    Graph::from_proto(g, opset, path, visible).map_err(|e| e.during(&place))?;
                Ok((a.name().to_string(), sub))
            })
            .collect::<Result<_>>()?;
        named.push(Node {
            name,
            op: Op::parse(n.op_type(), n.domain()),
            domain: n.domain().to_string(),
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attributes,
            subgraphs,
        });
    }
    Ok(named)
}

/// An integer attribute, for the nodes rewrites add.
pub fn int_attribute(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

/// An integer-list attribute, for the nodes rewrites (and tests) add.
pub fn ints_attribute(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

/// A float attribute, for the nodes rewrites add.
pub fn float_attribute(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(AttributeType::Float as i32),
        ..Default::default()
    }
}

/// The oldest IR version that may import `opset` of the default domain (onnx's version table).
fn min_ir_version(opset: i64) -> i64 {
    match opset {
        ..=8 => 3,
        9 => 4,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19 | 20 => 9,
        21 | 22 => 10,
        _ => 11,
    }
}

/// Value and node names not used in a graph yet, for the nodes and initializers a rewrite adds.
pub struct Names(HashSet<String>);

impl Names {
    pub fn new(g: &Graph) -> Names {
        let mut names = Names(HashSet::new());
        names.take_all(g);
        names
    }

    /// Reserves the names of `g` and of its subgraphs.
    fn take_all(&mut self, g: &Graph) {
        self.0.extend(g.initializers.iter().map(|t| t.name.clone()));
        self.0.extend(g.inputs.iter().map(|i| i.name.clone()));
        for n in &g.nodes {
            self.0.insert(n.name.clone());
            self.0.extend(n.outputs.iter().cloned());
            for (_, sub) in &n.subgraphs {
                self.take_all(sub);
            }
        }
    }

    /// `base`, or `base_2`, `base_3`, ... if taken; reserved from then on.
    pub fn fresh(&mut self, base: &str) -> String {
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

#[cfg(test)]
mod tests {
    use zeropoint_onnx::proto::{GraphProto, OperatorSetIdProto};

    use super::*;

    fn graph(nodes: Vec<Node>) -> Graph {
        Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: vec![ValueInfo {
                name: "x".into(),
                dtype: Some(DType::F32),
                shape: None,
            }],
            outputs: vec![],
            initializers: vec![RawTensor::from_f32s("w", &[1], &[2.0])],
            nodes,
        }
    }

    #[test]
    fn nodes_are_sorted_in_file_order_where_they_can_be() {
        let mut g = graph(vec![
            Node::new("b", Op::Relu, &["a_out"], &["b_out"]),
            Node::new("a", Op::Mul, &["x", "w"], &["a_out"]),
            Node::new("c", Op::Neg, &["x"], &["c_out"]),
        ]);
        g.sort().unwrap();
        let order: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(order, ["a", "c", "b"]);
    }

    #[test]
    fn undefined_inputs_and_cycles_are_refused_by_node() {
        let mut g = graph(vec![Node::new("a", Op::Relu, &["nowhere"], &["y"])]);
        let e = g.sort().unwrap_err().to_string();
        assert_eq!(e, "g.onnx: node 'a' (Relu): input 'nowhere' is not defined");
        let mut g = graph(vec![
            Node::new("a", Op::Add, &["x", "b_out"], &["a_out"]),
            Node::new("b", Op::Relu, &["a_out"], &["b_out"]),
        ]);
        let e = g.sort().unwrap_err().to_string();
        assert!(e.ends_with("the graph has a cycle through it"), "{e}");
    }

    #[test]
    fn a_graph_written_back_keeps_its_model_and_reads_the_same() {
        let base = ModelProto {
            ir_version: Some(7),
            producer_name: Some("test".into()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(13),
            }],
            // Inputs, outputs and their types stay the base's: the graph writes nodes and
            // initializers.
            graph: Some(GraphProto {
                input: vec![ValueInfoProto {
                    name: Some("x".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut g = graph(vec![Node::new("a", Op::Mul, &["x", "w"], &["y"])]);
        g.opset = 21; // as an upgrade leaves it
        let m = g.to_model(&base).unwrap();
        assert_eq!(g.clone().into_model(&base).unwrap(), m);
        assert_eq!(m.producer_name(), "test");
        assert_eq!(m.opset_import[0].version(), 21);
        // Opset 21 needs IR version 10.
        assert_eq!(m.ir_version(), 10);
        let back = Graph::from_model(&m, Path::new("g.onnx")).unwrap();
        assert_eq!(back.nodes, g.nodes);
        assert_eq!(back.initializers, g.initializers);
    }

    #[test]
    fn a_subgraph_capture_orders_and_keeps_its_producer() {
        // The If reads `late` only inside its branch: it must still sort after its producer.
        let branch = Graph {
            inputs: vec![],
            outputs: vec![ValueInfo {
                name: "t".into(),
                dtype: None,
                shape: None,
            }],
            initializers: vec![],
            ..graph(vec![Node::new("inner", Op::Neg, &["late"], &["t"])])
        };
        let mut cond = Node::new("if", Op::If, &["x"], &["y"]);
        cond.subgraphs = vec![
            ("then_branch".into(), branch.clone()),
            ("else_branch".into(), branch),
        ];
        assert_eq!(cond.captures(), ["late"]);
        assert_eq!(cond.reads(), ["x", "late"]);
        let mut g = graph(vec![cond, Node::new("p", Op::Relu, &["x"], &["late"])]);
        g.sort().unwrap();
        let order: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(order, ["p", "if"]);
        assert_eq!(g.consumers()["late"], [1]);
        assert_eq!(g.all_nodes().len(), 4);
    }

    #[test]
    fn fresh_names_never_collide() {
        let g = graph(vec![Node::new("a", Op::Mul, &["x", "w"], &["y"])]);
        let mut names = Names::new(&g);
        assert_eq!(names.fresh("z"), "z");
        assert_eq!(names.fresh("z"), "z_2");
        // Node names, values and initializers are all taken.
        assert_eq!(names.fresh("a"), "a_2");
        assert_eq!(names.fresh("w"), "w_2");
    }
}
