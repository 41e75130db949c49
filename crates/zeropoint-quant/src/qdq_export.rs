//! Export to QDQ ONNX: each quantized weight becomes an integer initializer followed by
//! DequantizeLinear, each int32 bias likewise, and each quantized activation a QuantizeLinear →
//! DequantizeLinear pair right after the node producing it. Runtimes (ONNX Runtime, TensorRT,
//! OpenVINO) recognize the pattern and run the layers in integer arithmetic; the float graph
//! between the pairs is unchanged.
//!
//! Codes are stored in the narrowest ONNX type that holds their grid (zeropoint-core's
//! [`Storage::narrowest`]); the graph must already have the opset those types and
//! granularities need ([`required_opset`]): the pipeline upgrades it before anything else.

use std::collections::{HashMap, HashSet};

use zeropoint_core::{Codes, Granularity, Grid, Layout, QParams, QTensor, Storage};
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
        source: graph.source.clone(),
    };
    // The copy to rewrite leaves out the main graph's float weights that are quantized: their
    // codes take their place, and the float values are read from `graph`.
    let quantized: HashSet<&str> = p
        .weights
        .iter()
        .map(|w| w.name.as_str())
        .chain(p.biases.iter().map(|b| b.name.as_str()))
        .collect();
    let mut g = Graph {
        source: graph.source.clone(),
        opset: graph.opset,
        inputs: graph.inputs.clone(),
        outputs: graph.outputs.clone(),
        initializers: (graph.initializers.iter())
            .filter(|t| !quantized.contains(t.name.as_str()))
            .cloned()
            .collect(),
        nodes: graph.nodes.clone(),
    };
    let mut dequantized = x.weights(&mut g, graph, plan, p)?;
    dequantized.extend(x.biases(&mut g, graph, plan, p)?);
    x.read_dequantized(&mut g, &dequantized)?;
    drop_unread_zero_points(&mut g, &dequantized);
    let pairs = x.activations(plan, p)?;
    let front = graph
        .inputs
        .iter()
        .filter_map(|i| pairs.get(&i.name))
        .collect();
    insert_pairs(&mut g, &pairs, front);
    g.sort()?;
    Ok(g.into_model(base)?)
}

/// Removes the zero-point initializers of the tables that only lookups read ([`Export::lookup`]
/// takes codes and scales alone): ONNX Runtime warns about every unused initializer it loads.
fn drop_unread_zero_points(g: &mut Graph, dequantized: &HashMap<String, Dequantize>) {
    fn read(g: &Graph, names: &mut HashSet<String>) {
        for n in &g.nodes {
            names.extend(n.inputs.iter().cloned());
            n.subgraphs.iter().for_each(|(_, sub)| read(sub, names));
        }
    }
    fn drop(g: &mut Graph, unread: &HashSet<String>) {
        g.initializers.retain(|t| !unread.contains(&t.name));
        for n in &mut g.nodes {
            n.subgraphs
                .iter_mut()
                .for_each(|(_, sub)| drop(sub, unread));
        }
    }
    let mut names = HashSet::new();
    read(g, &mut names);
    let unread: HashSet<String> = (dequantized.values())
        .filter(|d| d.symmetric_rows && !names.contains(&d.inputs[2]))
        .map(|d| d.inputs[2].clone())
        .collect();
    drop(g, &unread);
}

/// The opset an export with these settings needs: per-channel parameters (int32 biases among
/// them) came in opset 13; 4-bit and 16-bit types and blocks in 21.
///
/// Mixed precision to a target may raise activations to 16 bits: it needs opset 21 as well.
pub fn required_opset(s: &Settings) -> i64 {
    let raised = s
        .activation_bits
        .iter()
        .map(|(v, _)| s.activation_scheme(v));
    let opset = opset_for(
        [s.weights, s.activations]
            .into_iter()
            .chain(raised)
            .map(|scheme| (scheme.grid(), scheme.granularity)),
    )
    .max(BIAS_OPSET);
    if s.target.is_some() {
        opset.max(21)
    } else {
        opset
    }
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

/// The ONNX type an activation's codes go in: [`storage`], but 8 bits for narrower grids.
/// ONNX Runtime's QDQ propagation turns DequantizeLinear → MaxPool → QuantizeLinear on uint4
/// codes into a MaxPool on uint4, which it then refuses to load; in 8-bit types its integer
/// kernels run them (the export clips to the grid's range first, [`Export::clip_to_grid`]).
fn activation_storage(grid: Grid) -> DType {
    match storage(grid) {
        DType::U4 => DType::U8,
        DType::I4 => DType::I8,
        ty => ty,
    }
}

/// The rewrite in progress: fresh names across the whole model (subgraphs included).
struct Export {
    names: Names,
    source: std::path::PathBuf,
}

/// A quantized initializer: the DequantizeLinear that gives its float value back (one per graph
/// that reads it, so that the layers of a subgraph find their DequantizeLinear beside them).
struct Dequantize {
    base: String,
    inputs: [String; 3],
    attributes: Vec<(&'static str, i64)>,
    /// Parameters per row (axis 0) with zero zero-points: a Gather of rows can look up codes and
    /// scales and dequantize only the rows it reads ([`Export::lookup`]).
    symmetric_rows: bool,
}

/// An activation's QuantizeLinear → DequantizeLinear, inserted after the node producing it, with
/// the scale and zero-point initializers it introduces.
struct Pair {
    quantized: String,
    dequantized: String,
    /// QuantizeLinear and DequantizeLinear, after a Clip for a grid narrower than its type.
    nodes: Vec<Node>,
    initializers: Vec<RawTensor>,
}

/// Inserts each activation's pair after its producer, in whichever graph that is, and makes
/// every reader (in that graph or a subgraph of it) read the dequantized value; `front` are the
/// pairs of the main graph's inputs. A Shape reads the integer codes: the shape is the same, a
/// DequantizeLinear computed only for a Shape is work ONNX Runtime does on every run (18 of a
/// BERT encoder's 30 unfused ones did nothing else), and a Shape reading the float value keeps
/// ONNX Runtime from fusing its producer with the QuantizeLinear (a GRU decoder's four Gemms
/// stayed float, their weights dequantized on every run).
fn insert_pairs(g: &mut Graph, pairs: &HashMap<String, Pair>, front: Vec<&Pair>) {
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for pair in front {
        nodes.extend(pair.nodes.iter().cloned());
        g.initializers.extend(pair.initializers.iter().cloned());
    }
    for mut node in std::mem::take(&mut g.nodes) {
        let shape_only = node.op == Op::Shape;
        for input in node.inputs.iter_mut() {
            if let Some(pair) = pairs.get(input) {
                *input = match shape_only {
                    true => pair.quantized.clone(),
                    false => pair.dequantized.clone(),
                };
            }
        }
        for (_, sub) in &mut node.subgraphs {
            insert_pairs(sub, pairs, Vec::new());
        }
        let after: Vec<&Pair> = node.outputs.iter().filter_map(|o| pairs.get(o)).collect();
        nodes.push(node);
        for pair in after {
            nodes.extend(pair.nodes.iter().cloned());
            g.initializers.extend(pair.initializers.iter().cloned());
        }
    }
    g.nodes = nodes;
}

/// The graph of `g` (the copy of `graph` being rewritten, without the main graph's quantized
/// weights) where the codes of `name` go: beside the float original.
fn scope_of<'a>(g: &'a mut Graph, graph: &Graph, name: &str) -> Option<&'a mut Graph> {
    if graph.initializer(name).is_some() {
        return Some(g);
    }
    owner(g, name)
}

/// The graph (`g` or one of its subgraphs) that holds the initializer `name`.
fn owner<'a>(g: &'a mut Graph, name: &str) -> Option<&'a mut Graph> {
    if g.initializer(name).is_some() {
        return Some(g);
    }
    g.nodes
        .iter_mut()
        .flat_map(|n| n.subgraphs.iter_mut())
        .find_map(|(_, sub)| owner(sub, name))
}

impl Export {
    /// Each planned weight's codes and parameters as initializers beside it (the float
    /// original goes).
    fn weights(
        &mut self,
        g: &mut Graph,
        graph: &Graph,
        plan: &Plan,
        p: &Params,
    ) -> Result<HashMap<String, Dequantize>> {
        let mut out = HashMap::new();
        for w in &plan.weights {
            let Some(qp) = p.weight(&w.name).map(|w| &w.qparams) else {
                continue;
            };
            let missing = || Error::new(&self.source, format!("weight '{}' is missing", w.name));
            let t = graph.find_initializer(&w.name).ok_or_else(missing)?;
            let shape = t.shape.clone();
            let ty = storage(qp.grid);
            let q = self.names.fresh(&format!("{}_quantized", w.name));
            let codes = codes(&q, &t.to_f32s(), &shape, qp, ty)
                .map_err(|e| Error::at(&self.source, format!("weight '{}'", w.name), e))?;
            let scope = scope_of(g, graph, &w.name).ok_or_else(missing)?;
            let mut added = vec![codes];
            let (scale, zp) = self.params_initializers(&w.name, qp, ty, &shape, &mut added)?;
            scope.initializers.retain(|t| t.name != w.name);
            scope.initializers.extend(added);
            let dq = Dequantize {
                base: w.name.clone(),
                inputs: [q, scale, zp],
                attributes: dq_attributes(qp),
                symmetric_rows: qp.granularity == Granularity::PerAxis { axis: 0 }
                    && qp.zero_point.iter().all(|&z| z == 0),
            };
            out.insert(w.name.clone(), dq);
        }
        Ok(out)
    }

    /// Each int32 bias's codes, per-channel scales and zero zero-points, beside it.
    fn biases(
        &mut self,
        g: &mut Graph,
        graph: &Graph,
        plan: &Plan,
        p: &Params,
    ) -> Result<HashMap<String, Dequantize>> {
        let mut out = HashMap::new();
        for b in plan.biases.iter().filter_map(|site| p.bias(&site.name)) {
            let name = &b.name;
            // A bias two layers share is quantized once (with the first layer's scales).
            if out.contains_key(name) {
                continue;
            }
            let missing = || Error::new(&self.source, format!("bias '{name}' is missing"));
            let shape = graph
                .find_initializer(name)
                .ok_or_else(missing)?
                .shape
                .clone();
            let scope = scope_of(g, graph, name).ok_or_else(missing)?;
            let n = b.scale.len();
            let q = self.names.fresh(&format!("{name}_quantized"));
            let scale = self.names.fresh(&format!("{name}_scale"));
            let zp = self.names.fresh(&format!("{name}_zero_point"));
            let codes: Vec<i64> = b.codes.iter().map(|&c| i64::from(c)).collect();
            scope.initializers.retain(|t| &t.name != name);
            scope.initializers.extend([
                RawTensor::from_i64s(&q, &shape, &codes, DType::I32),
                RawTensor::from_f32s(&scale, &[n], &b.scale),
                RawTensor::from_i64s(&zp, &[n], &vec![0; n], DType::I32),
            ]);
            let dq = Dequantize {
                base: name.clone(),
                inputs: [q, scale, zp],
                attributes: vec![("axis", 0)],
                symmetric_rows: false,
            };
            out.insert(name.clone(), dq);
        }
        Ok(out)
    }

    /// In `g` and each of its subgraphs: a DequantizeLinear at the front for every quantized
    /// initializer its nodes read, which they read instead.
    ///
    /// A Gather of rows of a table quantized per row becomes a lookup of codes and scales
    /// instead ([`Export::lookup`]): dequantizing a whole embedding table on every run costs
    /// more than the model's other layers together.
    fn read_dequantized(
        &mut self,
        g: &mut Graph,
        dequantized: &HashMap<String, Dequantize>,
    ) -> Result<()> {
        let mut front: Vec<Node> = Vec::new();
        let mut local: HashMap<String, String> = HashMap::new();
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for mut node in std::mem::take(&mut g.nodes) {
            for (_, sub) in &mut node.subgraphs {
                self.read_dequantized(sub, dequantized)?;
            }
            let table = node.inputs.first().and_then(|t| dequantized.get(t));
            let rows = node.op == Op::Gather && node.attribute("axis").is_none_or(|a| a.i() == 0);
            if let Some(dq) = table.filter(|dq| rows && dq.symmetric_rows) {
                nodes.extend(self.lookup(g, &node, dq)?);
                continue;
            }
            for input in node.inputs.iter_mut() {
                let Some(dq) = dequantized.get(input) else {
                    continue;
                };
                if !local.contains_key(input) {
                    let out = self.names.fresh(&format!("{}_dequantized", dq.base));
                    front.push(self.dq_node_with(
                        &dq.base,
                        dq.inputs.clone(),
                        &out,
                        &dq.attributes,
                    ));
                    local.insert(input.clone(), out);
                }
                *input = local[input.as_str()].clone();
            }
            nodes.push(node);
        }
        front.append(&mut nodes);
        g.nodes = front;
        Ok(())
    }

    /// `Gather(table, idx)` of a table quantized per row with zero zero-points, as
    /// `Cast(Gather(codes, idx)) · Gather(Unsqueeze(scales, -1), idx)`: the rows it reads,
    /// dequantized, exactly what DequantizeLinear of the whole table then Gather gives.
    fn lookup(&mut self, g: &mut Graph, gather: &Node, dq: &Dequantize) -> Result<Vec<Node>> {
        let (Some(idx), Some(out)) = (gather.inputs.get(1), gather.outputs.first()) else {
            return Err(Error::new(
                &self.source,
                format!("{} needs a table and indices", gather.label()),
            ));
        };
        let base = &gather.name;
        let [codes, scales, _] = &dq.inputs;
        let fresh = |names: &mut Names, what: &str| names.fresh(&format!("{base}_{what}"));
        let (rows_q, rows_f, rows_s) = (
            fresh(&mut self.names, "codes"),
            fresh(&mut self.names, "rows"),
            fresh(&mut self.names, "row_scales"),
        );
        let (axes, column) = (
            fresh(&mut self.names, "axes"),
            fresh(&mut self.names, "column"),
        );
        g.initializers
            .push(RawTensor::from_i64s(&axes, &[1], &[-1], DType::I64));
        let node = |names: &mut Names, op: Op, inputs: &[&str], output: &str| {
            Node::new(names.fresh(&format!("{base}_{op}")), op, inputs, &[output])
        };
        let mut cast = node(&mut self.names, Op::Cast, &[&rows_q], &rows_f);
        cast.attributes = vec![int_attribute("to", 1)]; // FLOAT

        // The scales are made a column before the lookup, not after it: ONNX Runtime folds an
        // Unsqueeze of an initializer when it loads the model, while one of the gathered scales
        // ran on every call.
        Ok(vec![
            node(&mut self.names, Op::Gather, &[codes, idx], &rows_q),
            cast,
            node(&mut self.names, Op::Unsqueeze, &[scales, &axes], &column),
            node(&mut self.names, Op::Gather, &[&column, idx], &rows_s),
            node(&mut self.names, Op::Mul, &[&rows_f, &rows_s], out),
        ])
    }

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
            // A source's parameters go beside its own pair; values sharing its grid are in the
            // same graph or a subgraph of it, where they are visible.
            let mut initializers = Vec::new();
            let ty = activation_storage(qp.grid);
            let (scale, zp) = match param_names.get(source) {
                Some(names) => names.clone(),
                None => {
                    let names = self.params_initializers(source, qp, ty, &[], &mut initializers)?;
                    param_names.insert(source.clone(), names.clone());
                    names
                }
            };
            let mut nodes = Vec::new();
            let mut input = a.clone();
            // A grid narrower than its 8-bit type saturates where the type does not: a Clip to
            // the grid's range comes first (values sharing a grid are on it already).
            if source == a && storage(qp.grid) != ty {
                let (clip, clipped) = self.clip_to_grid(a, qp, &mut initializers);
                nodes.push(clip);
                input = clipped;
            }
            let q_out = self.names.fresh(&format!("{a}_quantized"));
            let dq_out = self.names.fresh(&format!("{a}_dequantized"));
            nodes.push(Node::new(
                self.names.fresh(&format!("{a}_QuantizeLinear")),
                Op::QuantizeLinear,
                &[&input, &scale, &zp],
                &[&q_out],
            ));
            nodes.push(self.dq_node_with(
                a,
                [q_out.clone(), scale, zp],
                &dq_out,
                &dq_attributes(qp),
            ));
            pairs.insert(
                a.clone(),
                Pair {
                    quantized: q_out,
                    dequantized: dq_out,
                    nodes,
                    initializers,
                },
            );
        }
        Ok(pairs)
    }

    /// A Clip of activation `a` to the real range of its (per-tensor) grid, its bounds added to
    /// `out`; returns the node and its output.
    fn clip_to_grid(&mut self, a: &str, qp: &QParams, out: &mut Vec<RawTensor>) -> (Node, String) {
        let (lo, hi) = qp.get(0).real_range(qp.grid);
        let (min, max) = (
            self.names.fresh(&format!("{a}_grid_min")),
            self.names.fresh(&format!("{a}_grid_max")),
        );
        out.push(RawTensor::from_f32s(&min, &[], &[lo]));
        out.push(RawTensor::from_f32s(&max, &[], &[hi]));
        let clipped = self.names.fresh(&format!("{a}_clipped"));
        let node = Node::new(
            self.names.fresh(&format!("{a}_Clip")),
            Op::Clip,
            &[a, &min, &max],
            &[&clipped],
        );
        (node, clipped)
    }

    /// The scale and zero-point of `qp` as initializers (added to `out`), named after `base`.
    fn params_initializers(
        &mut self,
        base: &str,
        qp: &QParams,
        zp_type: DType,
        shape: &[usize],
        out: &mut Vec<RawTensor>,
    ) -> Result<(String, String)> {
        let scale = self.names.fresh(&format!("{base}_scale"));
        let zp = self.names.fresh(&format!("{base}_zero_point"));
        let param_shape = match qp.granularity {
            Granularity::PerTensor if qp.scale.len() == 1 => vec![],
            Granularity::PerBlock { .. } => Layout::new(shape, qp.granularity)
                .map_err(|e| Error::at(&self.source, format!("'{base}'"), e))?
                .param_shape()
                .to_vec(),
            _ => vec![qp.scale.len()],
        };
        let z: Vec<i64> = qp.zero_point.iter().map(|&z| i64::from(z)).collect();
        out.push(RawTensor::from_f32s(&scale, &param_shape, &qp.scale));
        out.push(RawTensor::from_i64s(&zp, &param_shape, &z, zp_type));
        Ok((scale, zp))
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

/// DequantizeLinear's attributes for parameters of `qp`'s granularity.
fn dq_attributes(qp: &QParams) -> Vec<(&'static str, i64)> {
    match qp.granularity {
        Granularity::PerTensor => vec![],
        Granularity::PerAxis { axis } => vec![("axis", axis as i64)],
        Granularity::PerBlock { axis, block } => {
            vec![("axis", axis as i64), ("block_size", block as i64)]
        }
    }
}

/// The codes of `x` under `qp` in the storage of `ty`, widened to i64.
fn codes(
    name: &str,
    x: &[f32],
    shape: &[usize],
    qp: &QParams,
    ty: DType,
) -> zeropoint_core::Result<RawTensor> {
    let storage = ty.storage().unwrap_or(Storage::I16);
    let q = QTensor::quantize_with(x, shape, qp.clone(), storage)?;
    // The initializer's bytes as zeropoint-onnx keeps them: one byte per 8- or 4-bit code
    // (4-bit ones unpacked), little-endian pairs for 16-bit ones.
    let data = match q.codes {
        Codes::I8(v) => v.into_iter().map(|c| c as u8).collect(),
        Codes::U8(v) => v,
        Codes::I16(v) => v.iter().flat_map(|c| c.to_le_bytes()).collect(),
        Codes::U16(v) => v.iter().flat_map(|c| c.to_le_bytes()).collect(),
        Codes::Packed(p, bytes) => {
            let mut c = vec![0i8; x.len()];
            zeropoint_core::pack::unpack(&bytes, p, &mut c);
            c.into_iter().map(|c| c as u8).collect()
        }
    };
    Ok(RawTensor {
        name: name.to_string(),
        shape: shape.to_vec(),
        dtype: ty,
        data,
    })
}
