//! Cross-layer equalization and high-bias absorption (Nagel et al. 2019, "Data-Free
//! Quantization Through Weight Equalization and Bias Correction", arXiv 1906.04721, §4.1 and
//! §4.1.1; white paper §4.7), on the canonical float graph (BatchNorms folded), before any
//! quantizer is placed.
//!
//! Per-tensor weight quantization gives every output channel the step of the widest one. When a
//! layer's output channel i reaches the next layer only through positively homogeneous operators
//! (ReLU, LeakyReLU, PReLU, max and average pooling, Identity: f(s·x) = s·f(x) for s > 0),
//! dividing that channel's weights and bias by s_i and multiplying the next layer's input
//! channel i by s_i computes the same function. s_i = √(r1_i / r2_i), r being the per-channel
//! max |W| of the two sides, makes both ranges √(r1_i·r2_i). Pairs that share a layer (Conv →
//! depthwise Conv → Conv) are equalized in turn until no scale moves; the fixed point is the
//! paper's triplet form (all three ranges the cube root of their product).
//!
//! A 1×1 depthwise Conv of one value per channel (a BatchNorm after an activation, written as a
//! Conv by `zeropoint_graph::scale_shift`) takes part in no pair: its weights are per-channel
//! and exact whatever the settings (`params::site_scheme`), so equalizing gains it nothing,
//! and moving its scales into its neighbours only skews the per-channel ranges of the
//! activations around it (the CIFAR-10 CNN at per-tensor int4: 15.4 dB without such pairs,
//! 3.0 with them).
//!
//! A layer's bias is its own third input (Conv, Gemm) or, for a MatMul, the constant of the Add
//! that alone reads its output: a linear layer applied to a sequence ([N, T, K]) is exported that
//! way, and canonicalization makes a Gemm of it only for a matrix input. The Add's constant is
//! scaled with the channels; a MatMul without such an Add takes no absorbed bias.
//!
//! ReLU6 (Clip to [0, 6]), HardSwish, sigmoids and the like are not homogeneous: scaling moves
//! their clip points. Pairs through them are refused and listed. With `relu6_as_relu`, each
//! ReLU6 between two layers becomes a ReLU first, as the paper does for MobileNetV2: this
//! changes the float model wherever an activation exceeded 6.
//!
//! High-bias absorption: equalization can leave large biases, which widen the next activation's
//! range. Where the first layer's output went through a folded BatchNorm (pre-activation ≈
//! N(β, γ²) per channel) and only a ReLU (and max pooling) lies before the next layer,
//! c = max(0, β − 3|γ|) is taken out of the first layer's bias and W₂·c added to the next one's:
//! ReLU(x − c) = ReLU(x) − c wherever x ≥ c, all but 0.13 % of a Gaussian's mass. A next layer
//! that pads with zeros takes none: its padded taps would read 0 where the shifted input is −c,
//! and its border outputs would lose their W₂·c.
//!
//! A model exported with its BatchNorms folded has no β and γ left; the paper's alternative is
//! the pre-activation's statistics on data. With calibration data ([`absorption_sites`], then
//! [`crate::channel_stats::measure`]) β and γ are the float output's mean and standard deviation
//! per channel, and c is also capped at the smallest value seen, so that absorption is exact on
//! every calibration sample: c = max(0, min(μ − 3σ, min x)).

use std::collections::{HashMap, HashSet};

use zeropoint_core::{Granularity, Layout};
use zeropoint_graph::canonicalize::BatchNormStats;
use zeropoint_graph::graph::Names;
use zeropoint_graph::pattern::matmul_bias_add;
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::{DType, RawTensor};

use crate::channel_stats::ChannelStats;
use crate::error::{Error, Result};

/// What equalization may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Replace each ReLU6 between two layers by a ReLU so that the pair can be equalized.
    pub relu6_as_relu: bool,
    /// Absorb high biases into the next layer where BatchNorm statistics say how high.
    pub absorb_high_bias: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            relu6_as_relu: false,
            absorb_high_bias: true,
        }
    }
}

/// Two layers equalized: `first`'s output channels against `second`'s input channels.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Pair {
    pub first: String,
    pub second: String,
    /// The operators between them, in order.
    pub through: Vec<String>,
    /// Channels whose bias was partly moved into `second` (high-bias absorption).
    pub absorbed_channels: usize,
    /// Where the absorbed amounts came from, when any moved.
    pub statistics: Option<Statistics>,
    /// Why high-bias absorption did not apply where only a ReLU lies between the two.
    pub absorption_skipped: Option<String>,
}

/// What says how `first`'s output channels are distributed, for high-bias absorption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistics {
    /// The folded BatchNorm's β and γ.
    BatchNorm,
    /// The float output's mean, standard deviation and minimum on calibration data.
    Calibration,
}

/// A layer whose output could not be equalized with the next layer, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Refusal {
    pub layer: String,
    pub reason: String,
}

/// What equalization did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Report {
    pub pairs: Vec<Pair>,
    pub refused: Vec<Refusal>,
    /// Rounds over all pairs until the largest scale moved less than 1e-6 (relative).
    pub rounds: usize,
    /// ReLU6 nodes replaced by ReLU ([`Options::relu6_as_relu`]).
    pub relu6_replaced: Vec<String>,
}

/// Rounds stop when every scale of a round is within this of 1 (or after `MAX_ROUNDS`).
const TOLERANCE: f64 = 1e-6;
const MAX_ROUNDS: usize = 100;

/// The outputs whose statistics on data high-bias absorption uses, each with its channel axis
/// (as [`crate::channel_stats::measure`] takes it): the first layer of every pair that
/// absorption applies to. Where a folded BatchNorm gives β and γ, the data's minimum still
/// caps c.
pub fn absorption_sites(graph: &Graph, opts: Options) -> HashMap<String, i64> {
    if !opts.absorb_high_bias {
        return HashMap::new();
    }
    let (chains, _) = find_chains(graph, opts);
    (chains.iter())
        .filter(|c| c.absorbable && c.first_bias.is_some())
        .map(|c| {
            let conv = kind_of(graph, &graph.nodes[c.first]).is_some_and(Kind::is_conv);
            (c.output.clone(), if conv { 1 } else { -1 })
        })
        .collect()
}

/// Equalizes every eligible pair of layers of `graph` (main graph; subgraphs are left as they
/// are) and absorbs high biases where `stats` has the first layer's BatchNorm statistics, or
/// else `measured` its output's statistics on data. `stats` are updated to describe the
/// rescaled and shifted channels.
pub fn equalize(
    graph: &mut Graph,
    stats: &mut [BatchNormStats],
    measured: &HashMap<String, ChannelStats>,
    opts: Options,
) -> Result<Report> {
    let (chains, refused) = find_chains(graph, opts);
    let mut report = Report {
        refused,
        ..Report::default()
    };
    if chains.is_empty() {
        return Ok(report);
    }
    let mut layers: HashMap<usize, Layer> = HashMap::new();
    for c in &chains {
        for (i, site) in [(c.first, c.first_bias), (c.second, c.second_bias)] {
            if let std::collections::hash_map::Entry::Vacant(e) = layers.entry(i) {
                e.insert(Layer::read(graph, i, site)?);
            }
        }
    }
    report.rounds = balance(&chains, &mut layers).map_err(|m| Error::new(&graph.source, m))?;
    let index: HashMap<String, usize> = stats
        .iter()
        .enumerate()
        .map(|(i, s)| (s.value.clone(), i))
        .collect();
    let mut absorbed: HashMap<usize, Vec<f64>> = HashMap::new();
    for c in &chains {
        let output = &c.output;
        let seen = measured.get(output);
        let high = match (index.get(output), seen) {
            _ if !(opts.absorb_high_bias && c.absorbable && c.second_takes_bias) => None,
            (Some(&i), _) => Some((high_biases(&stats[i], seen), Statistics::BatchNorm)),
            (None, Some(m)) => Some((high_values(m), Statistics::Calibration)),
            (None, None) => None,
        };
        let (shift, statistics) = match high {
            Some((high, from)) => (absorb(c, &high, &mut layers), Some(from)),
            None => (Vec::new(), None),
        };
        let absorbed_channels = shift.iter().filter(|&&c| c > 0.0).count();
        report.pairs.push(Pair {
            first: graph.nodes[c.first].name.clone(),
            second: graph.nodes[c.second].name.clone(),
            through: c.through.iter().map(|&i| graph.nodes[i].label()).collect(),
            absorbed_channels,
            statistics: statistics.filter(|_| absorbed_channels > 0),
            absorption_skipped: absorption_skipped(c, opts),
        });
        absorbed.insert(c.first, shift);
    }
    // The statistics follow the channels: divided by their scales, less what was absorbed.
    for (i, layer) in &layers {
        let Some(s) = index
            .get(&layer_output(graph, *i, layer.bias_site))
            .map(|&k| &mut stats[k])
        else {
            continue;
        };
        let shift = absorbed.get(i).map(Vec::as_slice).unwrap_or(&[]);
        for (ch, scale) in layer.out_scale.iter().enumerate().take(s.beta.len()) {
            s.beta[ch] = s.beta[ch] / scale - shift.get(ch).copied().unwrap_or(0.0);
            s.gamma[ch] /= scale;
        }
    }
    for c in &chains {
        for &i in &c.relu6 {
            report.relu6_replaced.push(graph.nodes[i].name.clone());
            let n = &mut graph.nodes[i];
            n.op = Op::Relu;
            n.inputs.truncate(1);
            n.attributes.clear();
        }
    }
    write_back(graph, layers);
    Ok(report)
}

/// Two layers and the homogeneous operators between them.
struct Chain {
    first: usize,
    second: usize,
    /// Where each layer's bias is, if it has one.
    first_bias: Option<BiasSite>,
    second_bias: Option<BiasSite>,
    /// `first`'s output channels as the operators between see them: after its bias.
    output: String,
    through: Vec<usize>,
    /// ReLU6 nodes among `through`, to become ReLUs.
    relu6: Vec<usize>,
    /// Only ReLU (then max pooling) in between, and `second` does not pad: high-bias
    /// absorption holds.
    absorbable: bool,
    /// Absorption would hold but for `second`'s zero padding.
    padded: bool,
    /// `second` has a bias, or can be given one (Conv, Gemm): a MatMul without a bias Add
    /// cannot take W₂·c.
    second_takes_bias: bool,
}

/// Why high-bias absorption does not apply to a chain it would otherwise hold for.
fn absorption_skipped(c: &Chain, opts: Options) -> Option<String> {
    if !opts.absorb_high_bias {
        return None;
    }
    if c.padded {
        return Some("the next layer pads with zeros".to_string());
    }
    (c.absorbable && !c.second_takes_bias)
        .then(|| "the next layer is a MatMul without a bias to take it".to_string())
}

/// Where a layer's bias is: its own third input (Conv, Gemm), or the constant of the Add that
/// alone reads a MatMul's output (as exporters write a linear layer applied to a sequence,
/// which canonicalization cannot make a Gemm).
#[derive(Debug, Clone, Copy, PartialEq)]
enum BiasSite {
    Input,
    Add { node: usize, input: usize },
}

/// The bias of layer `i`: its third input, or a MatMul's bias Add
/// ([`zeropoint_graph::pattern::matmul_bias_add`]).
fn bias_site(graph: &Graph, consumers: &HashMap<String, Vec<usize>>, i: usize) -> Option<BiasSite> {
    if graph.nodes[i].inputs.get(2).is_some_and(|b| !b.is_empty()) {
        return Some(BiasSite::Input);
    }
    let (node, input) = matmul_bias_add(graph, consumers, i)?;
    Some(BiasSite::Add { node, input })
}

/// The name of layer `i`'s bias at `site`.
fn bias_name(graph: &Graph, i: usize, site: Option<BiasSite>) -> Option<&String> {
    match site? {
        BiasSite::Input => graph.nodes[i].inputs.get(2).filter(|b| !b.is_empty()),
        BiasSite::Add { node, input } => graph.nodes[node].inputs.get(input),
    }
}

/// The value layer `i`'s output channels leave it as: after its bias Add where it has one.
fn layer_output(graph: &Graph, i: usize, site: Option<BiasSite>) -> String {
    match site {
        Some(BiasSite::Add { node, .. }) => graph.nodes[node].outputs[0].clone(),
        _ => graph.nodes[i].outputs[0].clone(),
    }
}

/// Where a layer's channels are in its weight: output and input channel axes, and whether one
/// channel is both (a depthwise convolution, one filter per input channel).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Conv,
    Depthwise,
    /// Gemm or MatMul over the last axis: W is [in, out].
    Dense,
    /// Gemm with transB: W is [out, in].
    DenseT,
}

impl Kind {
    fn axes(self) -> (usize, usize) {
        match self {
            Kind::Conv => (0, 1),
            Kind::Depthwise => (0, 0),
            Kind::Dense => (1, 0),
            Kind::DenseT => (0, 1),
        }
    }

    /// The axis of the values it reads and writes that holds channels: 1 for NCHW, last for
    /// dense layers (rank unknown here: compared by kind).
    fn is_conv(self) -> bool {
        matches!(self, Kind::Conv | Kind::Depthwise)
    }
}

/// The layer kind of node `n`, if its weight is a float initializer zeropoint can rescale.
fn kind_of(graph: &Graph, n: &Node) -> Option<Kind> {
    let w = graph.float_initializer(n.inputs.get(1)?)?;
    let int = |name: &str| n.attribute(name).map_or(0, |a| a.i());
    match n.op {
        Op::Conv if int("group") <= 1 && w.shape.len() >= 3 => Some(Kind::Conv),
        Op::Conv if w.shape.len() >= 3 && w.shape[1] == 1 && int("group") == w.shape[0] as i64 => {
            Some(Kind::Depthwise)
        }
        Op::Gemm if int("transA") == 0 && w.shape.len() == 2 => Some(if int("transB") != 0 {
            Kind::DenseT
        } else {
            Kind::Dense
        }),
        Op::MatMul if w.shape.len() == 2 && n.inputs.len() == 2 => Some(Kind::Dense),
        _ => None,
    }
}

/// Every (layer, next layer) pair connected through homogeneous operators only, and the layers
/// whose output could not be followed to one, with the reason.
fn find_chains(graph: &Graph, opts: Options) -> (Vec<Chain>, Vec<Refusal>) {
    let consumers = graph.consumers();
    let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    let mut chains = Vec::new();
    let mut refused = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let Some(kind) = kind_of(graph, node) else {
            continue;
        };
        if !bias_per_channel(graph, node, kind) || channel_scale(graph, node) {
            continue;
        }
        let site = bias_site(graph, &consumers, i);
        match follow(graph, &consumers, &outputs, (i, site), opts) {
            Ok(chain) => {
                let second = &graph.nodes[chain.second];
                let next = kind_of(graph, second);
                if channel_scale(graph, second) {
                    refused.push(Refusal {
                        layer: node.name.clone(),
                        reason: format!(
                            "its channels reach {}, a per-channel scale (exact on its own grids)",
                            second.label()
                        ),
                    });
                } else if next.is_some_and(|k| k.is_conv() == kind.is_conv()) {
                    chains.push(chain);
                } else {
                    refused.push(Refusal {
                        layer: node.name.clone(),
                        reason: format!(
                            "its channels reach {} in another layout",
                            graph.nodes[chain.second].label()
                        ),
                    });
                }
            }
            Err(Some(reason)) => refused.push(Refusal {
                layer: node.name.clone(),
                reason,
            }),
            Err(None) => {}
        }
    }
    (chains, refused)
}

/// Whether `node` is a 1×1 depthwise Conv: one weight per channel, a per-channel scale.
fn channel_scale(graph: &Graph, node: &Node) -> bool {
    let Some(Kind::Depthwise) = kind_of(graph, node) else {
        return false;
    };
    graph
        .float_initializer(&node.inputs[1])
        .is_some_and(|w| w.len() == w.shape[0])
}

/// Whether `node`'s bias, if any, is a float initializer with one value per output channel.
fn bias_per_channel(graph: &Graph, node: &Node, kind: Kind) -> bool {
    let Some(b) = node.inputs.get(2).filter(|b| !b.is_empty()) else {
        return true;
    };
    let (Some(w), Some(b)) = (
        graph.float_initializer(&node.inputs[1]),
        graph.float_initializer(b),
    ) else {
        return false;
    };
    b.len() == w.shape[kind.axes().0] && b.shape.iter().filter(|&&d| d != 1).count() <= 1
}

/// Follows layer `first`'s output to the next layer. `Err(Some(reason))` where something stands
/// in the way that the user should hear of (a non-homogeneous activation, a fork); `Err(None)`
/// where the output simply goes elsewhere (an Add, a graph output).
fn follow(
    graph: &Graph,
    consumers: &HashMap<String, Vec<usize>>,
    outputs: &HashSet<&str>,
    (first, first_bias): (usize, Option<BiasSite>),
    opts: Options,
) -> std::result::Result<Chain, Option<String>> {
    let output = layer_output(graph, first, first_bias);
    let mut value = output.clone();
    let (mut through, mut relu6): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    loop {
        if outputs.contains(value.as_str()) {
            return Err(None);
        }
        let next = match consumers.get(&value).map(Vec::as_slice) {
            Some([one]) => *one,
            Some(many) if many.len() > 1 => {
                return Err(Some(format!("'{value}' feeds {} nodes", many.len())))
            }
            _ => return Err(None),
        };
        let node = &graph.nodes[next];
        if node.inputs.first() != Some(&value) || !node.subgraphs.is_empty() {
            return Err(None);
        }
        if kind_of(graph, node).is_some() {
            // Only a ReLU, then max pooling, keeps ReLU(x − c) = ReLU(x) − c after the shift;
            // and the next layer's zero padding would read 0 where the shifted input is −c.
            let ops: Vec<&Op> = through.iter().map(|&i| &graph.nodes[i].op).collect();
            let relu = !through.is_empty()
                && (*ops[0] == Op::Relu || relu6.first() == Some(&through[0]))
                && ops[1..].iter().all(|&op| *op == Op::MaxPool);
            let second_bias = bias_site(graph, consumers, next);
            return Ok(Chain {
                first,
                second: next,
                first_bias,
                second_bias,
                output,
                through,
                relu6,
                absorbable: relu && !zero_padded(node),
                padded: relu && zero_padded(node),
                second_takes_bias: second_bias.is_some() || node.op != Op::MatMul,
            });
        }
        match homogeneous(graph, node) {
            Homogeneous::Yes => {}
            Homogeneous::Relu6 if opts.relu6_as_relu => relu6.push(next),
            Homogeneous::Relu6 => {
                return Err(Some(format!(
                    "{} is a ReLU6, not positively homogeneous (it can be made a ReLU on request)",
                    node.label()
                )))
            }
            Homogeneous::No if is_activation(&node.op) => {
                return Err(Some(format!(
                    "{} is not positively homogeneous",
                    node.label()
                )))
            }
            Homogeneous::No => return Err(None),
        }
        through.push(next);
        value = node.outputs[0].clone();
    }
}

/// Whether a layer pads its input with zeros. High-bias absorption adds W₂·c to its bias for
/// the c taken out of every input value, but a padded tap reads 0 where the shifted input would
/// be −c: its border outputs would change by the padded taps' W₂·c (18 dB of output SQNR on
/// the zoo's OCR detector, whose 3×3 convolutions pad).
fn zero_padded(node: &Node) -> bool {
    let auto = node.attribute("auto_pad").and_then(|a| a.s.as_deref());
    let pads = node
        .attribute("pads")
        .map_or(&[][..], |a| a.ints.as_slice());
    matches!(auto, Some(b"SAME_UPPER" | b"SAME_LOWER")) || pads.iter().any(|&p| p != 0)
}

enum Homogeneous {
    Yes,
    Relu6,
    No,
}

/// Whether `node` commutes with a positive per-channel scale of its first input.
fn homogeneous(graph: &Graph, node: &Node) -> Homogeneous {
    let single_output = node.outputs.iter().skip(1).all(String::is_empty);
    match node.op {
        Op::Relu | Op::LeakyRelu | Op::Identity => Homogeneous::Yes,
        // The slope is unchanged: PReLU(s·x) = s·PReLU(x) for s > 0.
        Op::PRelu => match node.inputs.get(1) {
            Some(slope) if graph.initializer(slope).is_some() => Homogeneous::Yes,
            _ => Homogeneous::No,
        },
        Op::MaxPool | Op::AveragePool | Op::GlobalAveragePool | Op::GlobalMaxPool
            if single_output =>
        {
            Homogeneous::Yes
        }
        Op::Clip if graph.clip_bounds(node) == Some((0.0, 6.0)) => Homogeneous::Relu6,
        _ => Homogeneous::No,
    }
}

fn is_activation(op: &Op) -> bool {
    matches!(
        op,
        Op::Clip
            | Op::HardSwish
            | Op::HardSigmoid
            | Op::Sigmoid
            | Op::Tanh
            | Op::Gelu
            | Op::Elu
            | Op::Selu
            | Op::Softplus
            | Op::Mul
    )
}

/// A layer's weight and bias in f64, as equalization rescales them.
struct Layer {
    shape: Vec<usize>,
    /// Which output and which input channel each weight element belongs to.
    outputs: Layout,
    inputs: Layout,
    w: Vec<f64>,
    w_dtype: DType,
    bias: Option<Vec<f64>>,
    bias_site: Option<BiasSite>,
    /// The product of the scales its output channels were divided by.
    out_scale: Vec<f64>,
    changed: bool,
}

impl Layer {
    fn read(graph: &Graph, i: usize, bias_site: Option<BiasSite>) -> Result<Layer> {
        let node = &graph.nodes[i];
        let kind = kind_of(graph, node)
            .ok_or_else(|| Error::new(&graph.source, format!("{} is not a layer", node.label())))?;
        let w = graph.float_initializer(&node.inputs[1]).ok_or_else(|| {
            Error::new(&graph.source, format!("{}: weight missing", node.label()))
        })?;
        let bias = bias_name(graph, i, bias_site)
            .and_then(|b| graph.float_initializer(b))
            .map(RawTensor::to_f64s);
        let (out_axis, in_axis) = kind.axes();
        let per = |axis| {
            Layout::new(&w.shape, Granularity::PerAxis { axis })
                .map_err(|e| Error::new(&graph.source, format!("{}: {e}", node.label())))
        };
        Ok(Layer {
            outputs: per(out_axis)?,
            inputs: per(in_axis)?,
            shape: w.shape.clone(),
            w: w.to_f64s(),
            w_dtype: w.dtype,
            bias,
            bias_site,
            out_scale: vec![1.0; w.shape[out_axis]],
            changed: false,
        })
    }

    /// Max |W| per channel of `channels` (the outputs' or the inputs').
    fn ranges(&self, channels: &Layout) -> Vec<f64> {
        let mut r = vec![0f64; channels.num_params()];
        for (f, w) in self.w.iter().enumerate() {
            let c = channels.param_index(f);
            r[c] = r[c].max(w.abs());
        }
        r
    }

    fn out_ranges(&self) -> Vec<f64> {
        self.ranges(&self.outputs)
    }

    fn in_ranges(&self) -> Vec<f64> {
        self.ranges(&self.inputs)
    }

    /// Output channel i divided by s_i, bias included.
    fn divide_outputs(&mut self, s: &[f64]) {
        for (f, w) in self.w.iter_mut().enumerate() {
            *w /= s[self.outputs.param_index(f)];
        }
        if let Some(b) = &mut self.bias {
            b.iter_mut().zip(s).for_each(|(b, s)| *b /= s);
        }
        self.out_scale.iter_mut().zip(s).for_each(|(o, s)| *o *= s);
        self.changed = true;
    }

    /// Input channel i multiplied by s_i.
    fn multiply_inputs(&mut self, s: &[f64]) {
        for (f, w) in self.w.iter_mut().enumerate() {
            *w *= s[self.inputs.param_index(f)];
        }
        self.changed = true;
    }
}

/// Equalizes every chain in turn, round after round, until the scales stop moving; returns the
/// number of rounds.
fn balance(
    chains: &[Chain],
    layers: &mut HashMap<usize, Layer>,
) -> std::result::Result<usize, String> {
    for round in 1..=MAX_ROUNDS {
        let mut largest = 0f64;
        for c in chains {
            let r1 = layers[&c.first].out_ranges();
            let r2 = layers[&c.second].in_ranges();
            if r1.len() != r2.len() {
                return Err(format!(
                    "equalization: {} output channels meet {} input channels",
                    r1.len(),
                    r2.len()
                ));
            }
            let s = scales(&r1, &r2);
            largest = s.iter().fold(largest, |m, s| m.max(s.ln().abs()));
            if let Some(l) = layers.get_mut(&c.first) {
                l.divide_outputs(&s);
            }
            if let Some(l) = layers.get_mut(&c.second) {
                l.multiply_inputs(&s);
            }
        }
        if largest < TOLERANCE {
            return Ok(round);
        }
    }
    Ok(MAX_ROUNDS)
}

/// s_i = √(r1_i / r2_i): both ranges become √(r1_i·r2_i). A channel that is zero on either side
/// (dead) keeps scale 1.
pub fn scales(r1: &[f64], r2: &[f64]) -> Vec<f64> {
    r1.iter()
        .zip(r2)
        .map(|(&a, &b)| {
            if a > 0.0 && b > 0.0 && (a / b).is_finite() {
                (a / b).sqrt()
            } else {
                1.0
            }
        })
        .collect()
}

/// The paper's c per channel before equalization, from a folded BatchNorm: max(0, β − 3|γ|),
/// capped at the smallest value `seen` on data where that was measured. The BatchNorm's
/// statistics are the training data's: on the zoo's OCR detector, fed real text, β − 3|γ|
/// exceeded values its outputs take, and the absorbed float model read 27 dB against the
/// original.
fn high_biases(bn: &BatchNormStats, seen: Option<&ChannelStats>) -> Vec<f64> {
    let min = |ch: usize| seen.and_then(|m| m.min.get(ch)).copied();
    (bn.beta.iter().zip(&bn.gamma).enumerate())
        .map(|(ch, (b, g))| {
            let c = b - 3.0 * g.abs();
            min(ch).map_or(c, |m| c.min(m)).max(0.0)
        })
        .collect()
}

/// The values per channel below which data statistics absorb nothing. A value not yet seen
/// falls below the smallest of n seen with probability 1/(n + 1): past about 740 values that is
/// under the 0.13 % the paper's 3σ leaves. Fewer are what a squeeze-excitation block's 1×1
/// Conv sees (one value per channel and sample): on the zoo's OCR detector, calibrated on 16
/// text crops, absorbing there kept the float function on those crops (97 dB) and lost it on
/// other pages (20 dB).
const VALUES_TO_ABSORB: f64 = 1000.0;

/// c per channel before equalization, from the output's statistics on data: μ − 3σ as the
/// paper's β − 3γ, capped at the smallest value seen so that ReLU(x − c) = ReLU(x) − c holds
/// on every sample measured; nothing where each channel had fewer than [`VALUES_TO_ABSORB`].
fn high_values(m: &ChannelStats) -> Vec<f64> {
    let (mean, std) = (m.mean(), m.std());
    if m.count < VALUES_TO_ABSORB {
        return vec![0.0; mean.len()];
    }
    (mean.iter().zip(&std).zip(&m.min))
        .map(|((mu, sigma), min)| (mu - 3.0 * sigma).min(*min).max(0.0))
        .collect()
}

/// High-bias absorption for one chain: `high` (c per channel before equalization) in the
/// equalized layer's units, out of the first bias and W₂·c into the second. Returns c (empty
/// where nothing could move).
fn absorb(c: &Chain, high: &[f64], layers: &mut HashMap<usize, Layer>) -> Vec<f64> {
    let first = &layers[&c.first];
    if first.bias.is_none() || high.len() != first.out_scale.len() {
        return Vec::new();
    }
    let shift: Vec<f64> = (high.iter().zip(&first.out_scale))
        .map(|(h, s)| (h / s).max(0.0))
        .collect();
    if shift.iter().all(|&c| c <= 0.0) {
        return Vec::new();
    }
    let second = &layers[&c.second];
    let mut added = vec![0f64; second.outputs.num_params()];
    for (f, w) in second.w.iter().enumerate() {
        added[second.outputs.param_index(f)] += w * shift[second.inputs.param_index(f)];
    }
    if let Some(second) = layers.get_mut(&c.second) {
        let bias = second.bias.get_or_insert_with(|| vec![0.0; added.len()]);
        bias.iter_mut().zip(&added).for_each(|(b, a)| *b += a);
        second.changed = true;
    }
    if let Some(b) = layers.get_mut(&c.first).and_then(|l| l.bias.as_mut()) {
        b.iter_mut().zip(&shift).for_each(|(b, c)| *b -= c);
    }
    shift
}

/// Writes each changed layer's weight and bias as new initializers (the old ones may be shared
/// with layers left alone) and drops the old ones nothing reads any more.
fn write_back(graph: &mut Graph, layers: HashMap<usize, Layer>) {
    let mut names = Names::new(graph);
    let mut replaced = Vec::new();
    let mut order: Vec<_> = layers.into_iter().filter(|(_, l)| l.changed).collect();
    order.sort_by_key(|(i, _)| *i);
    for (i, layer) in order {
        let node = &graph.nodes[i];
        let w_name = names.fresh(&format!("{}_equalized", node.inputs[1]));
        replaced.push(node.inputs[1].clone());
        let w = RawTensor::from_f64s(&w_name, &layer.shape, &layer.w, layer.w_dtype);
        let mut bias = None;
        if let Some(b) = &layer.bias {
            let old = bias_name(graph, i, layer.bias_site).cloned();
            let base = old.clone().unwrap_or_else(|| format!("{}_bias", node.name));
            let template = old.as_ref().and_then(|o| graph.initializer(o));
            let dtype = template.map_or(DType::F32, |t| t.dtype);
            // A bias Add's constant keeps its shape ([1, 1, M] broadcasts as [M] may not).
            let shape = template.map_or(vec![b.len()], |t| t.shape.clone());
            replaced.extend(old);
            let name = names.fresh(&format!("{base}_equalized"));
            bias = Some(RawTensor::from_f64s(&name, &shape, b, dtype));
        }
        graph.nodes[i].inputs[1] = w.name.clone();
        graph.initializers.push(w);
        if let Some(b) = bias {
            match layer.bias_site {
                Some(BiasSite::Add { node, input }) => {
                    graph.nodes[node].inputs[input] = b.name.clone()
                }
                _ => {
                    let node = &mut graph.nodes[i];
                    node.inputs.truncate(2);
                    node.inputs.push(b.name.clone());
                }
            }
            graph.initializers.push(b);
        }
    }
    let read: HashSet<String> = graph.all_nodes().iter().flat_map(|n| n.reads()).collect();
    graph
        .initializers
        .retain(|t| !replaced.contains(&t.name) || read.contains(&t.name));
}

#[cfg(test)]
mod tests {
    use super::{high_biases, high_values, ChannelStats, VALUES_TO_ABSORB};
    use zeropoint_graph::canonicalize::BatchNormStats;

    /// Statistics of three channels seen `n` times each: means 5, 5, -1; spreads 1, 0.1, 0.1;
    /// minima 1, 4.9, -1.1.
    fn seen(n: f64) -> ChannelStats {
        let (mean, std) = ([5.0, 5.0, -1.0], [1.0, 0.1, 0.1]);
        ChannelStats {
            count: n,
            sum: mean.iter().map(|m| m * n).collect(),
            sum_of_squares: (mean.iter().zip(&std))
                .map(|(m, s)| (s * s + m * m) * n)
                .collect(),
            min: vec![1.0, 4.9, -1.1],
        }
    }

    #[test]
    fn data_absorbs_mu_minus_three_sigma_capped_at_the_minimum() {
        let c = high_values(&seen(VALUES_TO_ABSORB));
        // Channel 0: μ − 3σ = 2 is above the smallest value seen, 1: capped.
        assert!((c[0] - 1.0).abs() < 1e-9, "{c:?}");
        // Channel 1: μ − 3σ = 4.7, below its minimum 4.9.
        assert!((c[1] - 4.7).abs() < 1e-9, "{c:?}");
        assert_eq!(c[2], 0.0);
        // Too few values per channel: nothing.
        assert_eq!(high_values(&seen(VALUES_TO_ABSORB - 1.0)), vec![0.0; 3]);
    }

    #[test]
    fn batch_norm_absorbs_beta_minus_three_gamma_capped_by_data() {
        let bn = BatchNormStats {
            value: "y".into(),
            beta: vec![5.0, 5.0, -1.0],
            gamma: vec![-1.0, 0.1, 0.1],
            variance: vec![1.0; 3],
            epsilon: 1e-5,
        };
        let c = high_biases(&bn, None);
        assert!((c[0] - 2.0).abs() < 1e-9 && (c[1] - 4.7).abs() < 1e-9 && c[2] == 0.0);
        // The data's minimum caps it, however few values were seen.
        let c = high_biases(&bn, Some(&seen(2.0)));
        assert!((c[0] - 1.0).abs() < 1e-9 && (c[1] - 4.7).abs() < 1e-9 && c[2] == 0.0);
    }
}
