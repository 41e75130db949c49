//! Where quantizers go (white paper §2.3; ../shared/DESIGN.md, "The way data flows"):
//!
//! - weights of Conv, ConvTranspose, Gemm and MatMul: one weight quantizer each (per output
//!   channel by default); embedding tables read by Gather, per row;
//! - biases of Conv and Gemm: int32 with scale s_w·s_x, so that the integer accumulator adds
//!   them exactly;
//! - activations: the data inputs of every quantized layer; the output of every Conv and
//!   ConvTranspose fused group (layer + bias + Relu/Clip: no requantization inside) but the
//!   logits of a detection or segmentation head (read, through Reshape and Concat, only by
//!   Sigmoid, Softmax or the graph's outputs); Add, Sub,
//!   Mul and Concat between activations, inputs and output, when an integer op consumes their
//!   output, and an Add of two quantized activations whatever reads it (ONNX Runtime then runs
//!   it as QLinearAdd). A MatMul's or Gemm's output is quantized only when an integer op consumes it
//!   (ONNX Runtime's integer MatMul and Gemm give float as well as codes): attention scores go
//!   to Softmax through the mask Add in float (quantizing scores + mask, whose mask holds
//!   −3.4e38, is what ruins ONNX Runtime's quantized BERT models), residual sums and dense
//!   layers' outputs to LayerNorm and logits to Sigmoid likewise;
//! - ops that only move values (MaxPool, Reshape, Transpose, Flatten, ...) keep their input's
//!   grid: their output shares the input's parameters instead of getting its own observer;
//! - everything else (Softmax, LayerNormalization, GELU, ...) stays float, and graph outputs are
//!   never quantized (the logits keep their precision).
//!
//! `exclude` (node names or operator types) keeps layers float; `Choices::quantize_logits`
//! quantizes heads' logits too.

use std::collections::{HashMap, HashSet};

use zeropoint_graph::pattern::fused_groups;
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::DType;

use crate::error::Result;

/// A weight to quantize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSite {
    /// The initializer.
    pub name: String,
    /// The layer using it.
    pub node: String,
    /// That layer's operator.
    pub op: Op,
    /// The axis of output channels (for per-channel quantization).
    pub channel_axis: usize,
}

#[cfg(test)]
impl WeightSite {
    /// A weight "w" of node "n", for tests of the rules that look at sites.
    pub(crate) fn of(op: Op, channel_axis: usize) -> WeightSite {
        WeightSite {
            name: "w".into(),
            node: "n".into(),
            op,
            channel_axis,
        }
    }
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

/// Gives each Conv, ConvTranspose and Gemm of the main graph whose bias initializer another node
/// reads too a copy of its own; returns how many it made. An int32 bias has its layer's input
/// scale times its weight scale, and readers that share a bias need not share an input (a
/// Siamese network's towers share weights and biases, not images): quantized once, the bias
/// had the first reader's scale, and ONNX Runtime ran every other reader in float, since its
/// integer kernel needs the bias on its own accumulator's grid. Biases are small; the weights
/// stay shared.
pub fn own_biases(graph: &mut Graph) -> usize {
    let consumers = graph.consumers();
    let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    let shared: HashSet<String> = (consumers.into_iter())
        .filter(|(v, readers)| readers.len() + usize::from(outputs.contains(v.as_str())) > 1)
        .map(|(v, _)| v)
        .collect();
    let mut names = zeropoint_graph::graph::Names::new(graph);
    let mut copies = Vec::new();
    let mut kept = HashSet::new();
    for node in &mut graph.nodes {
        let layer = matches!(node.op, Op::Conv | Op::ConvTranspose | Op::Gemm);
        let Some(bias) = node
            .inputs
            .get_mut(2)
            .filter(|b| layer && shared.contains(*b))
        else {
            continue;
        };
        // The first reader keeps the original.
        if kept.insert(bias.clone()) {
            continue;
        }
        let Some(t) = graph.initializers.iter().find(|t| t.name == *bias) else {
            continue;
        };
        let mut copy = t.clone();
        copy.name = names.fresh(&format!("{}_{}", t.name, node.name));
        *bias = copy.name.clone();
        copies.push(copy);
    }
    let made = copies.len();
    graph.initializers.extend(copies);
    made
}

/// Operators whose output lies on the grid of their (first) input: a nearest-neighbour Resize
/// copies input values too. ONNX Runtime's quantizer gives every Resize its
/// input's parameters, and runs it on the codes then; a Resize with its own grid is a float
/// Resize between a DequantizeLinear and a QuantizeLinear (ppocr-v3-det's FPN: 5M values a
/// 640² image, observed and requantized for nothing).
fn preserves_grid(node: &Node) -> bool {
    if node.op == Op::Resize {
        return node.attribute("mode").is_none_or(|m| m.s() == b"nearest");
    }
    matches!(
        node.op,
        Op::MaxPool
            | Op::Reshape
            | Op::Flatten
            | Op::Transpose
            | Op::DepthToSpace
            | Op::SpaceToDepth
            | Op::Squeeze
            | Op::Unsqueeze
            | Op::Identity
            | Op::Dropout
            | Op::Slice
            | Op::Split
            | Op::Gather
            | Op::Expand
            | Op::Tile
            | Op::GlobalMaxPool
    )
}

/// Element-wise ops between activations whose inputs and output are quantized.
fn is_binary(op: &Op) -> bool {
    matches!(op, Op::Add | Op::Sub | Op::Mul | Op::Concat)
}

/// The layers with weights that integer kernels run.
fn is_layer(op: &Op) -> bool {
    matches!(op, Op::Conv | Op::ConvTranspose | Op::Gemm | Op::MatMul)
}

/// The nodes of a graph that stay float by a rule of their own, by name, for the report to say
/// why they have no quantizers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeptFloat {
    /// Layers whose output a Log reads ([`Rules::feeds_log`]).
    pub before_log: Vec<String>,
    /// Layers and Gathers reading a weight that holds an infinity or a NaN.
    pub non_finite: Vec<String>,
}

/// What of `graph` [`KeptFloat`] lists, from one set of rules.
pub fn kept_float(graph: &Graph) -> KeptFloat {
    let flat = graph.flattened();
    // Neither rule reads the value types or the user's choices.
    let rules = Rules::new(&flat, HashMap::new(), Choices::excluding(&[]));
    let names = |keep: &dyn Fn(&Node) -> bool| -> Vec<String> {
        (flat.nodes.iter().filter(|n| keep(n)))
            .map(|n| n.name.clone())
            .collect()
    };
    KeptFloat {
        before_log: names(&|n| is_layer(&n.op) && rules.feeds_log(n)),
        non_finite: names(&|n| rules.reads_non_finite(n)),
    }
}

/// What the rules look at: the graph, its value types, the user's exclusions.
struct Rules<'g> {
    graph: &'g Graph,
    types: HashMap<String, DType>,
    exclude: &'g [String],
    /// Weights of layers and Gathers holding an infinity or a NaN: no grid holds them (an
    /// attention-bias table with −inf for "never attend", as rxnmap's), so their readers stay
    /// float.
    non_finite: HashSet<&'g str>,
    /// Whether heads' logits stay float ([`Rules::logits`]).
    float_logits: bool,
    outputs: HashSet<&'g str>,
    /// The nodes reading each value.
    consumers: HashMap<String, Vec<usize>>,
}

impl<'g> Rules<'g> {
    /// The rules over `flat` (a flattened graph: subgraph nodes inline).
    fn new(flat: &'g Graph, types: HashMap<String, DType>, choices: Choices<'g>) -> Rules<'g> {
        let mut outputs: HashSet<&str> = flat.outputs.iter().map(|o| o.name.as_str()).collect();
        // A Cast into a graph output (a float16 model's interface, computed in float32) is part
        // of the output: its input keeps its precision too.
        let casts = flat.nodes.iter().filter(|n| n.op == Op::Cast);
        let cast_outputs = casts.filter(|n| n.outputs.iter().any(|o| outputs.contains(o.as_str())));
        let before_casts: Vec<&str> = cast_outputs.map(|n| n.inputs[0].as_str()).collect();
        outputs.extend(before_casts);
        let weighted = flat
            .nodes
            .iter()
            .filter(|n| is_layer(&n.op) || n.op == Op::Gather);
        let non_finite = (weighted.flat_map(|n| n.inputs.iter()))
            .filter(|i| {
                let t = flat.initializer(i);
                t.is_some_and(|t| t.dtype.is_float() && t.f32s().iter().any(|v| !v.is_finite()))
            })
            .map(String::as_str)
            .collect();
        Rules {
            graph: flat,
            types,
            exclude: choices.exclude,
            non_finite,
            float_logits: !choices.quantize_logits,
            outputs,
            consumers: flat.consumers(),
        }
    }

    /// Whether `node` stays float: the user excluded it, it is a layer whose output a Log
    /// reads ([`Rules::feeds_log`]), or a weight it reads is not finite.
    fn excluded(&self, node: &Node) -> bool {
        self.exclude
            .iter()
            .any(|e| *e == node.name || e == node.op.as_str())
            || (is_layer(&node.op) && self.feeds_log(node))
            || self.reads_non_finite(node)
    }

    /// Whether `node` reads a weight holding an infinity or a NaN.
    fn reads_non_finite(&self, node: &Node) -> bool {
        (node.inputs.iter()).any(|i| self.non_finite.contains(i.as_str()))
    }

    /// Whether `node`'s output goes to a Log, directly or through clamps (Clip, Relu, Max) and
    /// added guards (an Add of a constant, log(x + 2⁻²⁴)) that alone read it: a mel
    /// filterbank's MatMul before the log of an audio front end. A uniform
    /// grid has no resolution where a log has the most (small values round to 0 or one step,
    /// the clamp's floor then decides the log), so the layer stays float: weight, output, and
    /// input unless another layer quantizes it. On openWakeWord's mel spectrogram (64 calibration samples) the quantized
    /// filterbank output cost the model's output 13 dB (42.9 against 56.1 with it at 16 bits,
    /// 64.1 with the layer float); on onnx-asr's kaldi and wespeaker front ends it left nothing
    /// (-7.4 dB).
    ///
    /// The walk goes on through a power spectrum (|X|² as ReduceSumSquare, x · x or a constant
    /// Pow, |X| as Abs or Sqrt, and the moves around them) and through a layer of constant
    /// weight that the value enters as data (the filterbank, float by this same rule): the
    /// STFT convolution of a NeMo front end squares into the filterbank, and its quantized
    /// output cost onnx-asr's nemo128 front end its accuracy (10.6 dB on noise with only the
    /// filterbank float).
    fn feeds_log(&self, node: &Node) -> bool {
        let mut v = node.outputs.first();
        // (At most one step per node: a broken file's clamp may read its own output.)
        for _ in 0..=self.graph.nodes.len() {
            let Some(reader) = v.and_then(|v| self.only_reader(v)) else {
                return false;
            };
            let constant = |i: usize| reader.inputs.get(i).is_some_and(|w| self.is_weight(w));
            let guard = reader.op == Op::Add && reader.inputs.iter().any(|i| self.is_weight(i));
            let square = reader.op == Op::Mul && reader.inputs.iter().all(|i| Some(i) == v);
            let filterbank = is_layer(&reader.op) && reader.inputs.first() == v && constant(1);
            match reader.op {
                Op::Log => return true,
                Op::Clip | Op::Relu | Op::Max => {}
                Op::ReduceSumSquare | Op::Abs | Op::Sqrt => {}
                Op::Pow if constant(1) => {}
                Op::Reshape | Op::Transpose | Op::Squeeze | Op::Unsqueeze | Op::Flatten => {}
                _ if guard || square || filterbank => {}
                _ => return false,
            }
            v = reader.outputs.first();
        }
        false
    }

    /// Whether `v` goes, through ops that only move values and Concats, only to graph outputs
    /// and to Sigmoid, Softmax or LogSoftmax: a detection head's class and box maps, a DB
    /// text detector's probability map before its Sigmoid. Their few large values are the
    /// detections, which a range fitted to the bulk of the map (the MSE range) clips: all of
    /// isbnx-yolo26n's confident barcodes scored 0.728, its logits' clipping point, against
    /// 0.95-0.97 in float. ONNX Runtime runs such a convolution in float on its dequantized
    /// input and weight; heads are a model's smallest convolutions.
    fn logits(&self, v: &str) -> bool {
        let mut todo = vec![v];
        let mut seen = HashSet::new();
        while let Some(v) = todo.pop() {
            if !seen.insert(v) {
                continue;
            }
            for &i in self.consumers.get(v).into_iter().flatten() {
                let node = &self.graph.nodes[i];
                match node.op {
                    Op::Sigmoid | Op::Softmax | Op::LogSoftmax => {}
                    _ if node.op == Op::Concat || preserves_grid(node) => {
                        todo.extend(node.outputs.iter().map(String::as_str))
                    }
                    _ => return false,
                }
            }
        }
        true
    }

    /// The one node reading `v`, once, if `v` is no graph output.
    fn sole_reader(&self, v: &str) -> Option<&'g Node> {
        let once = self.consumers.get(v).is_some_and(|c| c.len() == 1);
        self.only_reader(v).filter(|_| once)
    }

    /// The one node reading `v`, once or more (x · x), if `v` is no graph output.
    fn only_reader(&self, v: &str) -> Option<&'g Node> {
        match self.consumers.get(v).map(Vec::as_slice) {
            Some([i, rest @ ..]) if rest.iter().all(|j| j == i) && !self.outputs.contains(v) => {
                Some(&self.graph.nodes[*i])
            }
            _ => None,
        }
    }

    /// A float32 value (shape arithmetic in int64 is never quantized).
    fn is_float(&self, v: &str) -> bool {
        self.types.get(v) == Some(&DType::F32)
    }

    /// A float32 initializer: a weight or bias. (Float16 and bfloat16 weights stay as they are:
    /// their DequantizeLinear would give float32 to an operator computing in float16. Quantization
    /// widens half-precision models to float32 first: zeropoint_graph::half_precision.)
    fn is_weight(&self, v: &str) -> bool {
        self.graph
            .initializer(v)
            .is_some_and(|t| t.dtype == DType::F32)
    }
}

/// What the user chose about placement.
#[derive(Debug, Clone, Copy)]
pub struct Choices<'a> {
    /// Nodes kept float: node names or operator types.
    pub exclude: &'a [String],
    /// Quantize the logits of detection and segmentation heads too.
    pub quantize_logits: bool,
    /// Weights only: no activation quantizers, and the biases stay float (an int32 bias needs
    /// its input's scale).
    pub float_activations: bool,
}

impl<'a> Choices<'a> {
    /// The placement `settings` ask for, keeping float the nodes of `exclude`.
    pub fn of(settings: &crate::settings::Settings, exclude: &'a [String]) -> Choices<'a> {
        Choices {
            exclude,
            quantize_logits: settings.quantize_logits,
            float_activations: settings.float_activations,
        }
    }

    /// The default placement but for `exclude`.
    pub fn excluding(exclude: &'a [String]) -> Choices<'a> {
        Choices {
            exclude,
            quantize_logits: false,
            float_activations: false,
        }
    }
}

impl Plan {
    /// The plan for `graph` (canonicalized: BatchNorm folded), keeping float every node whose
    /// name or operator type is in `choices.exclude`. Only float32 values are quantized: `types` holds
    /// every value's element type ([`zeropoint_engine::infer::dtypes`], run on the data's
    /// shapes).
    ///
    /// Layers inside subgraphs (the branches of If, the bodies of Loop and Scan) are placed like
    /// any other; values only the subgraphs see (their inputs and outputs) stay float.
    pub fn new(graph: &Graph, types: HashMap<String, DType>, choices: Choices) -> Result<Plan> {
        let flat = graph.flattened();
        let float_activations = choices.float_activations;
        let rules = Rules::new(&flat, types, choices);
        let mut plan = Plan::default();
        let mut needed = plan.layer_quantizers(&rules);
        if float_activations {
            plan.biases.clear();
            return Ok(plan);
        }
        propagate_needed(&rules, &mut needed);
        quantize_where_ort_cannot_fuse(&rules, &mut needed);
        quantize_sums_of_quantized(&rules, &mut needed);
        plan.place_activations(&rules, &needed);
        plan.share_grids(&rules);
        Ok(plan)
    }

    /// Weights, biases, and the activations integer kernels consume: the inputs of every layer,
    /// and the outputs of Conv and Gemm fused groups. Returns the activations needed.
    fn layer_quantizers(&mut self, rules: &Rules) -> HashSet<String> {
        let graph = rules.graph;
        let groups = fused_groups(graph);
        let group_of: HashMap<&str, usize> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.nodes[0].as_str(), i))
            .collect();
        let mut needed = HashSet::new();
        for node in &graph.nodes {
            // Embedding tables: int8 per row (the Gather reads rows, so each token keeps its
            // own scale); the looked-up vectors stay float.
            let table = node.inputs.first().filter(|t| rules.is_weight(t));
            if node.op == Op::Gather && !rules.excluded(node) && table.is_some() {
                let rank = table
                    .and_then(|t| graph.initializer(t))
                    .map_or(0, |t| t.shape.len());
                if rank == 2 && node.attribute("axis").is_none_or(|a| a.i() == 0) {
                    self.add_weight(rules, node, 0);
                }
                continue;
            }
            if rules.excluded(node) || !is_layer(&node.op) {
                continue;
            }
            let weight_at = match node.op {
                // Either operand of MatMul may be the constant one.
                Op::MatMul => node.inputs.iter().position(|i| rules.is_weight(i)),
                _ => Some(1).filter(|&i| node.inputs.get(i).is_some_and(|w| rules.is_weight(w))),
            };
            for (i, input) in node.inputs.iter().enumerate() {
                let is_bias = i == 2 && node.op != Op::MatMul;
                if Some(i) != weight_at && !is_bias {
                    needed.insert(input.clone());
                }
            }
            if let Some(wi) = weight_at {
                self.add_weight(rules, node, wi);
            }
            // Convolution outputs are requantized (runtimes' integer convolutions produce
            // codes), but for a detector's or segmenter's logits; a MatMul's or Gemm's only
            // when an integer op consumes it (see propagate_needed), so that attention scores,
            // residual branches and dense layers feeding Softmax, LayerNorm or Sigmoid stay
            // float.
            if !matches!(node.op, Op::MatMul | Op::Gemm) {
                if let Some(&g) = group_of.get(node.name.as_str()) {
                    if !(rules.float_logits && rules.logits(&groups[g].output)) {
                        needed.insert(groups[g].output.clone());
                    }
                }
            }
        }
        needed
    }

    /// Records the weight (input `wi`) of a layer, and its bias if it has one.
    fn add_weight(&mut self, rules: &Rules, node: &Node, wi: usize) {
        let graph = rules.graph;
        let w = &node.inputs[wi];
        let rank = graph.initializer(w).map_or(0, |t| t.shape.len());
        let trans_b = node.attribute("transB").is_some_and(|a| a.i() != 0);
        let channel_axis = match node.op {
            Op::Conv => 0,
            Op::ConvTranspose => 1,
            Op::Gemm if trans_b => 0,
            Op::Gather => 0,
            _ => rank.saturating_sub(1),
        };
        if !self.weights.iter().any(|s| &s.name == w) {
            self.weights.push(WeightSite {
                name: w.clone(),
                node: node.name.clone(),
                op: node.op.clone(),
                channel_axis,
            });
        }
        let bias = node
            .inputs
            .get(2)
            .filter(|b| node.op != Op::MatMul && rules.is_weight(b));
        let data = node.inputs.first().filter(|_| wi == 1);
        if let (Some(b), Some(x)) = (bias, data) {
            if graph.initializer(b).is_some_and(|t| t.shape.len() == 1) {
                self.biases.push(BiasSite {
                    name: b.clone(),
                    node: node.name.clone(),
                    weight: w.clone(),
                    input: x.clone(),
                });
            }
        }
    }

    /// The values needed and quantizable, each with its own observer, in graph order (graph
    /// inputs first).
    fn place_activations(&mut self, rules: &Rules, needed: &HashSet<String>) {
        let graph = rules.graph;
        let eligible = |v: &str| {
            !v.is_empty() && rules.is_float(v) && !rules.is_weight(v) && !rules.outputs.contains(v)
        };
        for v in graph
            .inputs
            .iter()
            .map(|i| &i.name)
            .chain(graph.nodes.iter().flat_map(|n| &n.outputs))
        {
            if needed.contains(v) && eligible(v) && !self.activations.contains(v) {
                self.activations.push(v.clone());
            }
        }
    }

    /// Grid-preserving ops pass their input's parameters on (in graph order, so chains work);
    /// an activation that is itself such an op's output needs no observer of its own.
    fn share_grids(&mut self, rules: &Rules) {
        let mut source: HashMap<String, String> = self
            .activations
            .iter()
            .map(|a| (a.clone(), a.clone()))
            .collect();
        for node in &rules.graph.nodes {
            if !preserves_grid(node) || rules.excluded(node) {
                continue;
            }
            let Some(src) = node.inputs.first().and_then(|i| source.get(i)).cloned() else {
                continue;
            };
            for out in node.outputs.iter().filter(|o| rules.is_float(o)) {
                let already_shared = source.get(out).is_some_and(|s| s != out);
                if already_shared || rules.outputs.contains(out.as_str()) {
                    continue;
                }
                source.insert(out.clone(), src.clone());
                self.shared.push((out.clone(), src.clone()));
            }
        }
        let shared: HashMap<String, String> = self.shared.iter().cloned().collect();
        self.activations.retain(|a| !shared.contains_key(a));
    }
}

/// ONNX Runtime runs a MatMul or Gemm whose inputs are dequantized as an integer kernel with
/// float output (MatMulIntegerToFloat, QGemm) when nothing quantizes its output, except when
/// its only reader is a Relu or Clip that is itself read by one node and is no graph output:
/// its QDQ selector then looks for the QuantizeLinear that makes that Relu/Clip redundant and,
/// finding none, fuses nothing (`NodeGroupSelector::GetQDQSelection`, onnxruntime's
/// core/optimizer/qdq_transformer/selectors_actions/qdq_selectors.cc). The layer would run in
/// float with its weight dequantized on every run. Such an output is quantized: after a Relu
/// (the zero-point at the bottom of the grid makes the Relu redundant and ORT drops it), before
/// a Clip (ORT can drop only a Clip whose finite bounds cover the grid).
fn quantize_where_ort_cannot_fuse(rules: &Rules, needed: &mut HashSet<String>) {
    let graph = rules.graph;
    let mut add = Vec::new();
    for node in &graph.nodes {
        if !matches!(node.op, Op::MatMul | Op::Gemm) || rules.excluded(node) {
            continue;
        }
        let Some(out) = node.outputs.first() else {
            continue;
        };
        if needed.contains(out) || !rules.is_float(out) {
            continue;
        }
        let Some(act) = rules
            .sole_reader(out)
            .filter(|n| matches!(n.op, Op::Relu | Op::Clip))
        else {
            continue;
        };
        let Some(act_out) = act.outputs.first() else {
            continue;
        };
        // ONNX Runtime removes Identity and Dropout first: a chain of them into a graph output
        // makes the Relu/Clip produce that output, and then the layer fuses.
        let mut end = act_out;
        // (At most one step per node: a broken file's Identity may read its own output.)
        for _ in 0..graph.nodes.len() {
            let next = rules
                .sole_reader(end)
                .filter(|n| matches!(n.op, Op::Identity | Op::Dropout))
                .and_then(|n| n.outputs.first());
            match next {
                Some(o) => end = o,
                None => break,
            }
        }
        if rules.sole_reader(act_out).is_none()
            || rules.outputs.contains(end.as_str())
            || needed.contains(act_out)
        {
            continue;
        }
        add.push(if act.op == Op::Relu { act_out } else { out }.clone());
    }
    needed.extend(add);
}

/// An Add of two quantized activations whose output nothing integer reads (a ResNet's last
/// residual sum, read by the global average pool's ReduceMean) would run in float on two
/// dequantized inputs. Its output is quantized (after a Relu that alone reads it, which the
/// zero-point at the bottom of the grid makes redundant), so that ONNX Runtime runs it as
/// QLinearAdd: two passes over the values (the integer Add, one DequantizeLinear) instead of
/// four (two DequantizeLinear, Add, Relu); ONNX Runtime's quantizer places its own this way.
/// malviz-resnet18 ran 0.3-0.9 % faster in three interleaved runs, its accuracy the same to
/// 0.1 dB. A residual sum read by a LayerNormalization is not concerned: the placement keeps
/// one of its inputs (a MatMul's output) float.
///
/// Sums of such sums (HiFi-GAN's residual blocks, each adding to the last block's sum, and the
/// multi-receptive-field sum of the blocks) are quantized as well: the nodes are visited in
/// graph order and each sum counts as quantized for the sums that read it. HiFi-GAN (the public
/// hifigan_fr) ran x1.29 of ONNX Runtime's export with the chains in float.
fn quantize_sums_of_quantized(rules: &Rules, needed: &mut HashSet<String>) {
    let graph = rules.graph;
    for node in graph
        .nodes
        .iter()
        .filter(|n| n.op == Op::Add && !rules.excluded(n))
    {
        let both_quantized = node.inputs.len() == 2
            && (node.inputs.iter()).all(|i| needed.contains(i) && !rules.is_weight(i));
        let Some(out) = node.outputs.first().filter(|o| rules.is_float(o)) else {
            continue;
        };
        if !both_quantized || needed.contains(out) {
            continue;
        }
        let relu = rules
            .sole_reader(out)
            .filter(|n| n.op == Op::Relu && !rules.excluded(n));
        match relu.and_then(|r| r.outputs.first()) {
            Some(r) => needed.insert(r.clone()),
            None => needed.insert(out.clone()),
        };
    }
}

/// Backwards through the graph: an integer binary op needs its inputs quantized (both must be
/// activations, or it is a Concat); a grid-preserving op's output is quantized by quantizing
/// its input.
fn propagate_needed(rules: &Rules, needed: &mut HashSet<String>) {
    for node in rules.graph.nodes.iter().rev() {
        if rules.excluded(node) || !node.outputs.iter().any(|o| needed.contains(o)) {
            continue;
        }
        if preserves_grid(node) {
            needed.extend(node.inputs.first().cloned());
        } else if is_binary(&node.op) {
            let activations = node
                .inputs
                .iter()
                .filter(|i| !i.is_empty() && !rules.is_weight(i))
                .count();
            if activations >= 2 || node.op == Op::Concat {
                needed.extend(node.inputs.iter().cloned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The rules on small hand-built graphs: which values get a quantizer, which share a grid,
    //! which stay float.

    use zeropoint_graph::graph::{int_attribute, ints_attribute as ints};
    use zeropoint_graph::{Dim, ValueInfo};
    use zeropoint_onnx::RawTensor;

    use super::*;
    use zeropoint_engine::infer::dtypes;

    fn plan_of(g: &Graph, exclude: &[String]) -> Result<Plan> {
        Plan::new(g, dtypes(g)?, Choices::excluding(exclude))
    }

    /// A float32 input of fixed shape.
    fn input(name: &str, shape: &[usize]) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(shape.iter().map(|&d| Dim::Fixed(d)).collect()),
        }
    }

    fn output(name: &str) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            dtype: None,
            shape: None,
        }
    }

    /// A float32 initializer of `shape`, small distinct values.
    fn weight(name: &str, shape: &[usize]) -> RawTensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0).collect();
        RawTensor::from_f32s(name, shape, &v)
    }

    fn node(op: Op, inputs: &[&str], output: &str) -> Node {
        Node::new(output.to_string(), op, inputs, &[output])
    }

    fn graph(
        inputs: Vec<ValueInfo>,
        initializers: Vec<RawTensor>,
        nodes: Vec<Node>,
        out: &str,
    ) -> Graph {
        Graph {
            source: "rules.onnx".into(),
            opset: 13,
            inputs,
            outputs: vec![output(out)],
            initializers,
            nodes,
        }
    }

    fn names(v: &[WeightSite]) -> Vec<&str> {
        v.iter().map(|s| s.name.as_str()).collect()
    }

    /// x → Conv → Relu → MaxPool → Flatten → Gemm → logits.
    fn cnn() -> Graph {
        let mut pool = node(Op::MaxPool, &["relu"], "pool");
        pool.attributes = vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])];
        let mut gemm = node(Op::Gemm, &["flat", "w2", "b2"], "logits");
        gemm.attributes = vec![int_attribute("transB", 1)];
        graph(
            vec![input("x", &[1, 2, 4, 4])],
            vec![
                weight("w", &[3, 2, 1, 1]),
                weight("b", &[3]),
                weight("w2", &[5, 12]),
                weight("b2", &[5]),
            ],
            vec![
                node(Op::Conv, &["x", "w", "b"], "conv"),
                node(Op::Relu, &["conv"], "relu"),
                pool,
                node(Op::Flatten, &["pool"], "flat"),
                gemm,
            ],
            "logits",
        )
    }

    #[test]
    fn layers_sharing_a_bias_get_a_copy_each_and_keep_their_weight_shared() {
        let mut g = graph(
            vec![input("a", &[1, 2, 4, 4]), input("b", &[1, 2, 4, 4])],
            vec![weight("w", &[3, 2, 1, 1]), weight("bias", &[3])],
            vec![
                node(Op::Conv, &["a", "w", "bias"], "ya"),
                node(Op::Conv, &["b", "w", "bias"], "yb"),
                node(Op::Add, &["ya", "yb"], "y"),
            ],
            "y",
        );
        assert_eq!(own_biases(&mut g), 1);
        let (first, second) = (&g.nodes[0].inputs, &g.nodes[1].inputs);
        assert_eq!((first[1].as_str(), second[1].as_str()), ("w", "w"));
        assert_eq!(first[2], "bias");
        assert_ne!(second[2], "bias");
        let values = |name: &str| g.initializer(name).unwrap().to_f32s();
        assert_eq!(values(&second[2]), values("bias"));
        // Each bias now has its own site, with its own reader's input.
        let plan = plan_of(&g, &[]).unwrap();
        let sites: Vec<(&str, &str)> = (plan.biases.iter())
            .map(|b| (b.name.as_str(), b.input.as_str()))
            .collect();
        assert_eq!(sites, [("bias", "a"), (second[2].as_str(), "b")]);
        assert_eq!(own_biases(&mut g), 0);
    }

    #[test]
    fn a_cnn_gets_weights_biases_and_activations_at_fused_group_boundaries() {
        let plan = plan_of(&cnn(), &[]).unwrap();
        assert_eq!(names(&plan.weights), ["w", "w2"]);
        // Output channels: axis 0 of the Conv weight and of the transposed Gemm weight.
        assert!(plan.weights.iter().all(|w| w.channel_axis == 0));
        let biases: Vec<(&str, &str)> = plan
            .biases
            .iter()
            .map(|b| (b.name.as_str(), b.input.as_str()))
            .collect();
        assert_eq!(biases, [("b", "x"), ("b2", "flat")]);
        // The Conv + Relu group is one layer: its output is quantized, the Conv's own output
        // (between the layer and its activation) is not; the logits are a graph output.
        assert_eq!(plan.activations, ["x", "relu"]);
        // MaxPool and Flatten only move values: their outputs take the Relu's grid.
        assert_eq!(
            plan.shared,
            [
                ("pool".to_string(), "relu".to_string()),
                ("flat".to_string(), "relu".to_string())
            ]
        );
    }

    /// `--activations float`: the same weights as the full plan, nothing else (an int32 bias
    /// would need its input's scale).
    #[test]
    fn float_activations_place_weights_alone() {
        let g = cnn();
        let choices = Choices {
            float_activations: true,
            ..Choices::excluding(&[])
        };
        let plan = Plan::new(&g, dtypes(&g).unwrap(), choices).unwrap();
        assert_eq!(
            names(&plan.weights),
            names(&plan_of(&g, &[]).unwrap().weights)
        );
        assert!(!plan.weights.is_empty());
        assert!(plan.biases.is_empty() && plan.activations.is_empty() && plan.shared.is_empty());
    }

    /// A detection head: the backbone's Conv → SiLU feeds a class Conv whose logits go through
    /// Reshape and Concat to a Sigmoid, and a box Conv whose output is decoded (Mul by a
    /// stride). The class logits stay float (their few large values are the detections); the
    /// box Conv's output, read by an arithmetic op, and the SiLU's input, read by its Mul, are
    /// quantized.
    #[test]
    fn a_heads_class_logits_stay_float() {
        let g = graph(
            vec![input("x", &[1, 2, 4, 4])],
            vec![
                weight("w", &[3, 2, 1, 1]),
                weight("wc", &[2, 3, 1, 1]),
                weight("wb", &[4, 3, 1, 1]),
                RawTensor::from_i64s("shape", &[3], &[1, 2, 16], DType::I64),
                RawTensor::from_f32s("stride", &[1], &[8.0]),
            ],
            vec![
                node(Op::Conv, &["x", "w"], "c"),
                node(Op::Sigmoid, &["c"], "s"),
                node(Op::Mul, &["c", "s"], "silu"),
                node(Op::Conv, &["silu", "wc"], "cls"),
                node(Op::Reshape, &["cls", "shape"], "flat"),
                node(Op::Concat, &["flat", "flat"], "all"),
                node(Op::Sigmoid, &["all"], "scores"),
                node(Op::Conv, &["silu", "wb"], "box"),
                node(Op::Mul, &["box", "stride"], "boxes"),
            ],
            "scores",
        );
        let plan = plan_of(&g, &[]).unwrap();
        assert!(!plan.activations.iter().any(|a| a == "cls" || a == "all"));
        for a in ["x", "c", "s", "silu", "box"] {
            assert!(
                plan.activations.iter().any(|v| v == a),
                "{a}: {:?}",
                plan.activations
            );
        }
        assert_eq!(
            names(&plan.weights),
            ["w", "wc", "wb"],
            "the weights all stay integer"
        );
        // On request the logits are quantized too: the class Conv's output gets its observer
        // and the moves after it share its grid.
        let choices = Choices {
            quantize_logits: true,
            ..Choices::excluding(&[])
        };
        let plan = Plan::new(&g, dtypes(&g).unwrap(), choices).unwrap();
        assert!(plan.activations.iter().any(|a| a == "cls"), "{plan:?}");
        assert!(plan
            .shared
            .contains(&("flat".to_string(), "cls".to_string())));
    }

    /// An FPN's upsampling: Conv → Resize → Conv. A nearest-neighbour Resize copies values, so
    /// its output takes the Conv's grid; a linear one makes new values and gets its own.
    #[test]
    fn a_nearest_resize_shares_its_inputs_grid_a_linear_one_does_not() {
        use zeropoint_onnx::proto::AttributeProto;
        let plan_with = |mode: Option<&str>| {
            let mut up = node(Op::Resize, &["c1", "", "scales"], "up");
            if let Some(m) = mode {
                up.attributes = vec![AttributeProto {
                    name: Some("mode".into()),
                    s: Some(m.as_bytes().to_vec()),
                    r#type: Some(
                        zeropoint_onnx::proto::attribute_proto::AttributeType::String as i32,
                    ),
                    ..Default::default()
                }];
            }
            let scales = RawTensor::from_f32s("scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
            let g = graph(
                vec![input("x", &[1, 2, 4, 4])],
                vec![
                    weight("w1", &[3, 2, 1, 1]),
                    weight("w2", &[4, 3, 1, 1]),
                    scales,
                ],
                vec![
                    node(Op::Conv, &["x", "w1"], "c1"),
                    up,
                    node(Op::Conv, &["up", "w2"], "c2"),
                ],
                "c2",
            );
            plan_of(&g, &[]).unwrap()
        };
        for mode in [None, Some("nearest")] {
            let plan = plan_with(mode);
            assert_eq!(plan.activations, ["x", "c1"], "{mode:?}");
            assert_eq!(plan.shared, [("up".to_string(), "c1".to_string())]);
        }
        let linear = plan_with(Some("linear"));
        assert_eq!(linear.activations, ["x", "c1", "up"]);
        assert!(linear.shared.is_empty());
    }

    /// A residual sum of two quantized values read by a float ReduceMean (a ResNet's last
    /// block before its pooling) is quantized after its Relu, so that ONNX Runtime runs the Add
    /// in integers; a transformer's residual sum, one of whose inputs is a MatMul output kept
    /// float for its LayerNormalization, stays float.
    #[test]
    fn a_sum_of_quantized_values_is_quantized_where_nothing_integer_reads_it() {
        let mut gemm = node(Op::Gemm, &["flat", "w2", "b2"], "logits");
        gemm.attributes = vec![int_attribute("transB", 1)];
        let mut mean = node(Op::ReduceMean, &["relu"], "mean");
        mean.attributes = vec![ints("axes", &[2, 3])];
        let resnet_tail = graph(
            vec![input("x", &[1, 2, 4, 4])],
            vec![
                weight("w", &[2, 2, 1, 1]),
                weight("b", &[2]),
                weight("w2", &[5, 2]),
                weight("b2", &[5]),
            ],
            vec![
                node(Op::Conv, &["x", "w", "b"], "conv"),
                node(Op::Add, &["conv", "x"], "sum"),
                node(Op::Relu, &["sum"], "relu"),
                mean,
                node(Op::Flatten, &["mean"], "flat"),
                gemm,
            ],
            "logits",
        );
        let plan = plan_of(&resnet_tail, &[]).unwrap();
        assert_eq!(plan.activations, ["x", "conv", "relu", "mean"]);
        let encoder = graph(
            vec![input("x", &[1, 3, 4])],
            vec![weight("w", &[4, 4]), weight("g", &[4])],
            vec![
                node(Op::MatMul, &["x", "w"], "proj"),
                node(Op::Add, &["proj", "x"], "sum"),
                node(Op::LayerNormalization, &["sum", "g"], "norm"),
            ],
            "norm",
        );
        let plan = plan_of(&encoder, &[]).unwrap();
        assert_eq!(plan.activations, ["x"]);
    }

    /// HiFi-GAN's residual blocks: each block adds a convolution to the last sum, and the
    /// blocks' outputs are summed and divided; no integer op reads a sum. Every sum of two
    /// quantized values is quantized, each one making the next a sum of quantized values.
    #[test]
    fn sums_of_quantized_sums_are_quantized_too() {
        let g = graph(
            vec![input("x", &[1, 2, 8])],
            vec![
                weight("w1", &[2, 2, 1]),
                weight("w2", &[2, 2, 1]),
                weight("three", &[]),
            ],
            vec![
                node(Op::Conv, &["x", "w1"], "c1"),
                node(Op::Add, &["c1", "x"], "s1"),
                node(Op::Conv, &["s1", "w2"], "c2"),
                node(Op::Add, &["c2", "s1"], "s2"),
                node(Op::Add, &["s2", "s1"], "blocks"),
                node(Op::Div, &["blocks", "three"], "mean"),
            ],
            "mean",
        );
        let plan = plan_of(&g, &[]).unwrap();
        assert_eq!(plan.activations, ["x", "c1", "s1", "c2", "s2", "blocks"]);
    }

    #[test]
    fn excluded_layers_stay_float_by_name_or_by_operator() {
        let g = cnn();
        for exclude in ["logits", "Gemm"] {
            let plan = plan_of(&g, &[exclude.to_string()]).unwrap();
            assert_eq!(names(&plan.weights), ["w"], "{exclude}");
            assert_eq!(plan.biases.len(), 1, "{exclude}");
            // Nothing quantized needs the Gemm's input any more; the Relu output still ends
            // the Conv group, and MaxPool/Flatten still share its grid.
            assert_eq!(plan.activations, ["x", "relu"], "{exclude}");
        }
        let plan = plan_of(&g, &["Conv".to_string(), "Gemm".to_string()]).unwrap();
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn a_matmul_output_is_quantized_only_where_an_integer_op_reads_it() {
        // Attention-like: scores = MatMul(q, k) go to Softmax (float); a second MatMul reads
        // the probabilities (quantized, an integer MatMul's input) and a weight.
        let g = graph(
            vec![input("q", &[2, 4]), input("k", &[4, 3])],
            vec![weight("wv", &[3, 6])],
            vec![
                node(Op::MatMul, &["q", "k"], "scores"),
                node(Op::Softmax, &["scores"], "probs"),
                node(Op::MatMul, &["probs", "wv"], "out"),
            ],
            "out",
        );
        let plan = plan_of(&g, &[]).unwrap();
        assert_eq!(names(&plan.weights), ["wv"]);
        // MatMul weights are per output column: the last axis.
        assert_eq!(plan.weights[0].channel_axis, 1);
        assert!(plan.biases.is_empty());
        assert_eq!(plan.activations, ["q", "k", "probs"]);
        assert!(!plan.activations.contains(&"scores".to_string()));
    }

    #[test]
    fn a_gemm_output_is_quantized_only_where_an_integer_op_reads_it() {
        // A classifier head: Gemm + Relu feeds a second Gemm (its input: quantized), whose
        // logits go to Sigmoid (float) and a third Gemm's go to a LayerNorm-like Sub (float).
        let g = graph(
            vec![input("x", &[1, 4])],
            vec![
                weight("w1", &[4, 4]),
                weight("b1", &[4]),
                weight("w2", &[4, 4]),
                weight("w3", &[4, 4]),
            ],
            vec![
                node(Op::Gemm, &["x", "w1", "b1"], "h"),
                node(Op::Relu, &["h"], "r"),
                node(Op::Gemm, &["r", "w2"], "logits"),
                node(Op::Sigmoid, &["logits"], "p"),
                node(Op::Gemm, &["p", "w3"], "z"),
                node(Op::Sub, &["z", "x"], "out"),
            ],
            "out",
        );
        let plan = plan_of(&g, &[]).unwrap();
        assert_eq!(names(&plan.weights), ["w1", "w2", "w3"]);
        assert_eq!(plan.activations, ["x", "r", "p"]);
    }

    #[test]
    fn a_layer_read_only_by_a_relu_or_clip_gets_the_quantizer_onnx_runtime_fuses_with() {
        // MatMul -> Clip -> Tanh: the MatMul's output (an unbounded Clip cannot be made
        // redundant); Gemm -> Relu -> Sigmoid: the Relu's output (its zero-point drops the Relu);
        // Gemm -> Relu -> Sub and the graph output: the Relu has two readers, nothing to add.
        let g = graph(
            vec![input("x", &[1, 4])],
            vec![
                weight("w1", &[4, 4]),
                weight("lo", &[]),
                weight("w2", &[4, 4]),
                weight("w3", &[4, 4]),
            ],
            vec![
                node(Op::MatMul, &["x", "w1"], "m"),
                node(Op::Clip, &["m", "lo"], "c"),
                node(Op::Tanh, &["c"], "l"),
                node(Op::Gemm, &["l", "w2"], "g"),
                node(Op::Relu, &["g"], "r"),
                node(Op::Sigmoid, &["r"], "s"),
                node(Op::Gemm, &["s", "w3"], "h"),
                node(Op::Relu, &["h"], "hr"),
                node(Op::Sub, &["hr", "hr"], "out"),
            ],
            "out",
        );
        let plan = plan_of(&g, &[]).unwrap();
        assert_eq!(plan.activations, ["x", "m", "l", "r", "s"]);
        // A Relu into an Identity into the graph output: ONNX Runtime drops the Identity, the
        // Relu then produces the output, and the layer fuses with float output as it is.
        let head = graph(
            vec![input("x", &[1, 4])],
            vec![weight("w2", &[4, 4])],
            vec![
                node(Op::Gemm, &["x", "w2"], "g"),
                node(Op::Relu, &["g"], "r"),
                node(Op::Identity, &["r"], "scores"),
            ],
            "scores",
        );
        assert_eq!(plan_of(&head, &[]).unwrap().activations, ["x"]);
        // Excluded, a layer stays float, output and all.
        let plan = plan_of(&g, &["MatMul".to_string()]).unwrap();
        assert_eq!(plan.activations, ["l", "r", "s"]);
    }

    #[test]
    fn a_layer_whose_output_a_log_reads_stays_float() {
        // A mel front end: |STFT|² -> MatMul(filterbank) -> clamps -> Log -> MatMul(w) -> y.
        let front_end = |nodes: Vec<Node>| {
            let weights = vec![
                weight("bank", &[4, 4]),
                weight("lo", &[]),
                weight("w", &[4, 4]),
            ];
            plan_of(&graph(vec![input("x", &[1, 4])], weights, nodes, "y"), &[]).unwrap()
        };
        // The filterbank stays float, its input too; the layer after the log is quantized.
        let plan = front_end(vec![
            node(Op::MatMul, &["x", "bank"], "mel"),
            node(Op::Clip, &["mel", "lo"], "c"),
            node(Op::Log, &["c"], "l"),
            node(Op::MatMul, &["l", "w"], "y"),
        ]);
        assert_eq!(plan.activations, ["l"]);
        assert_eq!(names(&plan.weights), ["w"]);
        // Straight into the Log, through a Relu and a Max, or a guard added: float as well.
        for clamps in [vec![], vec![Op::Relu, Op::Max], vec![Op::Add]] {
            let mut nodes = vec![node(Op::Gemm, &["x", "bank"], "v0")];
            for (i, op) in clamps.iter().enumerate() {
                let (a, b) = (format!("v{i}"), format!("v{}", i + 1));
                let inputs: Vec<&str> = match op {
                    Op::Max | Op::Add => vec![&a, "lo"],
                    _ => vec![&a],
                };
                nodes.push(node(op.clone(), &inputs, &b));
            }
            let last = format!("v{}", clamps.len());
            nodes.push(node(Op::Log, &[&last], "l"));
            nodes.push(node(Op::MatMul, &["l", "w"], "y"));
            assert_eq!(names(&front_end(nodes).weights), ["w"], "{clamps:?}");
        }
        // A clamp read by something else as well: the layer is quantized as before.
        let plan = front_end(vec![
            node(Op::MatMul, &["x", "bank"], "mel"),
            node(Op::Clip, &["mel", "lo"], "c"),
            node(Op::Log, &["c"], "l"),
            node(Op::Add, &["c", "l"], "s"),
            node(Op::MatMul, &["s", "w"], "y"),
        ]);
        assert_eq!(names(&plan.weights), ["bank", "w"]);
        // A NeMo front end: the STFT as a Conv, its power through moves, then the filterbank
        // and the log: the STFT stays float too, whichever way it is squared.
        for square in [Op::ReduceSumSquare, Op::Mul, Op::Pow] {
            let inputs: Vec<&str> = match square {
                Op::Mul => vec!["t", "t"],
                Op::Pow => vec!["t", "lo"],
                _ => vec!["t"],
            };
            // [1, 4] → [4, 1], squared there (summed over its axis of one), and back.
            let mut power = node(square.clone(), &inputs, "power");
            if square == Op::ReduceSumSquare {
                power
                    .attributes
                    .push(zeropoint_graph::graph::ints_attribute("axes", &[1]));
            }
            let nodes = vec![
                node(Op::MatMul, &["x", "stft"], "spec"),
                node(Op::Transpose, &["spec"], "t"),
                power,
                node(Op::Transpose, &["power"], "p"),
                node(Op::MatMul, &["p", "bank"], "mel"),
                node(Op::Add, &["mel", "lo"], "g"),
                node(Op::Log, &["g"], "l"),
                node(Op::MatMul, &["l", "w"], "y"),
            ];
            let weights = vec![
                weight("stft", &[4, 4]),
                weight("bank", &[4, 4]),
                weight("lo", &[]),
                weight("w", &[4, 4]),
            ];
            let g = graph(vec![input("x", &[1, 4])], weights, nodes, "y");
            let plan = plan_of(&g, &[]).unwrap();
            assert_eq!(names(&plan.weights), ["w"], "{square:?}");
            assert_eq!(plan.activations, ["l"], "{square:?}");
        }
        // A spectrum that a learned layer reads (not as its weight-times-data input) is not a
        // front end's: the layer before it is quantized.
        let nodes = vec![
            node(Op::MatMul, &["x", "stft"], "spec"),
            node(Op::Sigmoid, &["spec"], "t"),
            node(Op::MatMul, &["t", "bank"], "mel"),
            node(Op::Log, &["mel"], "l"),
            node(Op::MatMul, &["l", "w"], "y"),
        ];
        let weights = vec![
            weight("stft", &[4, 4]),
            weight("bank", &[4, 4]),
            weight("w", &[4, 4]),
        ];
        let g = graph(vec![input("x", &[1, 4])], weights, nodes, "y");
        assert_eq!(names(&plan_of(&g, &[]).unwrap().weights), ["stft", "w"]);
    }

    #[test]
    fn an_add_of_two_activations_is_quantized_an_add_of_a_constant_is_not() {
        let conv = |x: &str, w: &str, out: &str| node(Op::Conv, &[x, w], out);
        // sum = a + b (two activations) feeds a Conv: a, b and the sum get quantizers.
        let two = graph(
            vec![input("a", &[1, 2, 3, 3]), input("b", &[1, 2, 3, 3])],
            vec![weight("w", &[2, 2, 1, 1])],
            vec![node(Op::Add, &["a", "b"], "sum"), conv("sum", "w", "y")],
            "y",
        );
        let plan = plan_of(&two, &[]).unwrap();
        assert_eq!(plan.activations, ["a", "b", "sum"]);
        // shifted = a + constant feeds a Conv: only the Conv's input is quantized, the
        // constant and the Add's activation input stay float (no integer Add between them).
        let one = graph(
            vec![input("a", &[1, 2, 3, 3])],
            vec![weight("w", &[2, 2, 1, 1]), weight("shift", &[1, 2, 1, 1])],
            vec![
                node(Op::Add, &["a", "shift"], "shifted"),
                conv("shifted", "w", "y"),
            ],
            "y",
        );
        let plan = plan_of(&one, &[]).unwrap();
        assert_eq!(plan.activations, ["shifted"]);
        assert_eq!(names(&plan.weights), ["w"]);
    }

    #[test]
    fn embedding_tables_are_quantized_per_row_and_their_lookups_stay_float() {
        let g = Graph {
            inputs: vec![ValueInfo {
                name: "ids".into(),
                dtype: Some(DType::I64),
                shape: Some(vec![Dim::Fixed(2), Dim::Fixed(3)]),
            }],
            ..graph(
                vec![],
                vec![weight("table", &[10, 4])],
                vec![
                    node(Op::Gather, &["table", "ids"], "emb"),
                    node(Op::Relu, &["emb"], "out"),
                ],
                "out",
            )
        };
        let plan = plan_of(&g, &[]).unwrap();
        assert_eq!(names(&plan.weights), ["table"]);
        assert_eq!(
            (plan.weights[0].op.clone(), plan.weights[0].channel_axis),
            (Op::Gather, 0)
        );
        // Integer indices and the looked-up vectors get no quantizer.
        assert!(plan.activations.is_empty() && plan.shared.is_empty());
    }

    /// An attention-bias table with −inf ("never attend") and a MatMul weight with a NaN stay
    /// float, their readers too; the finite MatMul beside them is quantized.
    #[test]
    fn weights_with_infinities_or_nans_stay_float() {
        let mut bias = weight("bias_table", &[10, 4]);
        let mut values = bias.to_f32s();
        values[3] = f32::NEG_INFINITY;
        bias = RawTensor::from_f32s("bias_table", &[10, 4], &values);
        let mut broken = weight("w_nan", &[4, 4]);
        let mut values = broken.to_f32s();
        values[5] = f32::NAN;
        broken = RawTensor::from_f32s("w_nan", &[4, 4], &values);
        let g = Graph {
            inputs: vec![
                ValueInfo {
                    name: "ids".into(),
                    dtype: Some(DType::I64),
                    shape: Some(vec![Dim::Fixed(2)]),
                },
                input("x", &[2, 4]),
            ],
            ..graph(
                vec![],
                vec![bias, broken, weight("w", &[4, 4])],
                vec![
                    node(Op::Gather, &["bias_table", "ids"], "emb"),
                    node(Op::MatMul, &["x", "w_nan"], "h"),
                    node(Op::MatMul, &["h", "w"], "y"),
                    node(Op::Add, &["y", "emb"], "out"),
                ],
                "out",
            )
        };
        let plan = plan_of(&g, &[]).unwrap();
        assert_eq!(names(&plan.weights), ["w"]);
        assert_eq!(plan.activations, ["h"]);
        assert_eq!(kept_float(&g).non_finite, ["emb", "h"]);
    }

    #[test]
    fn graph_outputs_keep_their_precision() {
        // x → Conv → Relu, the Relu output being the graph's: the group output is not quantized.
        let g = graph(
            vec![input("x", &[1, 2, 3, 3])],
            vec![weight("w", &[2, 2, 1, 1])],
            vec![
                node(Op::Conv, &["x", "w"], "conv"),
                node(Op::Relu, &["conv"], "relu"),
            ],
            "relu",
        );
        let plan = plan_of(&g, &[]).unwrap();
        assert_eq!(plan.activations, ["x"]);
        assert!(plan.shared.is_empty());
    }
}
