//! Dynamic quantization: weights quantized ahead of time (int8, symmetric, per output channel
//! or per tensor), activations quantized at run time, per tensor, from each input's own range,
//! so that no calibration data is needed and no activation range can be wrong for an input.
//!
//! Each MatMul, Gemm and Conv with a constant weight becomes the form ONNX Runtime fuses into
//! its integer kernels (DynamicQuantizeMatMul and friends):
//!
//! ```text
//! x ─ DynamicQuantizeLinear ─┬─ x_q ─ MatMulInteger(x_q, W_q, x_zero, 0) ─ Cast(float) ─ Mul ─ [Add C] ─ y
//!                            └─ x_scale ─ Mul(x_scale, W_scale) ─────────────────────────┘
//! ```
//!
//! (ConvInteger for Conv when asked, with the scales and bias shaped `[M, 1, 1]` per output
//! channel: ONNX Runtime runs ConvInteger slower than float Conv). An LSTM with constant
//! weights becomes ONNX Runtime's DynamicQuantizeLSTM (com.microsoft): W and R as int8 codes,
//! transposed to `[directions, input, 4·hidden]` and `[directions, hidden, 4·hidden]`, with a
//! scale per gate row (`[directions, 4·hidden]`) or per direction; ONNX Runtime quantizes X and
//! each step's hidden state at run time. (GRU has no integer kernel in ONNX Runtime.) One
//! DynamicQuantizeLinear serves every layer that reads the same value (the query, key and value
//! projections of an attention block). Weight zero-points are 0: ONNX Runtime's ConvInteger
//! takes one zero-point per tensor, and a symmetric grid needs none. Embedding tables, when
//! asked, are stored per row in 8-bit blocks as weight-only quantization stores them.
//!
//! Per-token activations ([`Options::per_token`]) give each row of a MatMul or Gemm input (a
//! token's features in a transformer) its own scale, from plain ONNX operators, as ONNX
//! Runtime's DynamicQuantizeLinear has only one scale per tensor:
//!
//! ```text
//! x ─┬─ Abs ─ ReduceMax(last axis) ─ Div(127) ─ Max(f32::MIN_POSITIVE) ─ s ─┐
//!    └────────────────────────────── Div(x, s) ─ QuantizeLinear(1, 128) ─ x_q (uint8)
//! ```
//!
//! The grid is symmetric, so that every row has the same zero-point (MatMulInteger takes one
//! for A), and its codes are stored as uint8 around 128 rather than as int8, so that ONNX
//! Runtime runs its uint8 × int8 kernels: its int8 × int8 MatMulInteger ran stories15M 3.5x
//! slower than float on an AVX2 CPU. `s` has shape `[..., 1]` and the scale Mul broadcasts it
//! against the weight's `[N]`. A layer with a bias, or whose output an Add of a constant reads,
//! is written as ONNX Runtime's MatMulIntegerToFloat (com.microsoft) instead, without its bias
//! input (the comment in `Rewrite::layer` says why). A decoder's few outlier tokens then
//! coarsen only their own rows: on stories15M, per-token activations cost 1.0% perplexity, per
//! tensor 10% (docs/transformers.md).
//!
//! With calibration data, SmoothQuant can run first ([`Smoothing`]): the SmoothQuant paper's
//! per-tensor dynamic setting (its O2), where a decoder's outlier channels otherwise set each
//! run-time scale. α is searched for the least error of the layers quantized as here: int8
//! activations whose range is the min-max of the search rows (a run-time range covers one input
//! only, so this is the widest it gets), the weights on the run's scheme.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use zeropoint_core::observer::{estimate_values, Config, Method};
use zeropoint_core::{Codes, Granularity, QParams, QTensor, Scheme, Storage};
use zeropoint_graph::canonicalize::remove_dead;
use zeropoint_graph::graph::{int_attribute, ints_attribute, Names};
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::{DType, ModelProto, RawTensor};

use crate::dataset::{batch_for, Dataset, Preprocess};
use crate::error::{Error, Result};
use crate::prepare::prepare;
use crate::settings::{Preset, Settings};
use crate::smooth_quant::{self, Smoothed};
use crate::weight_only::blocks::{self, BlockRange, BlockScheme, BlockWeights};
use crate::weight_only::{self, nbits_export, Format, Site};

/// What a dynamic run needs besides the model.
#[derive(Debug, Clone)]
pub struct Options {
    /// The weight scheme: 8 bits or fewer, symmetric, per tensor or per channel.
    pub weights: Scheme,
    pub weight_method: Method,
    /// Node names or operator types kept float.
    pub exclude: Vec<String>,
    /// Conv layers as ConvInteger too. Off by default: ONNX Runtime 1.32 runs ConvInteger 4-5x
    /// slower than float Conv on the zoo's CNNs (docs/transformers.md).
    pub conv: bool,
    /// Bits of embedding tables (Gather of rows), quantized per row in blocks of 128; None keeps
    /// them float.
    pub embedding_bits: Option<u32>,
    /// SmoothQuant before quantizing, on calibration data.
    pub smoothing: Option<Smoothing>,
    /// MatMul and Gemm inputs quantized per row at run time (symmetric) instead of per
    /// tensor; Conv inputs stay per tensor (ConvInteger takes one zero-point for x).
    pub per_token: bool,
}

/// SmoothQuant's options and the calibration data its statistics come from.
#[derive(Debug, Clone)]
pub struct Smoothing {
    pub options: smooth_quant::Options,
    /// Calibration data specs (see [`Dataset::open`]).
    pub data: Vec<String>,
    pub preprocess: Preprocess,
    pub samples: Option<usize>,
    /// Samples per batch of the statistics pass; None batches as weight-only quantization does
    /// (token ids by about 256 positions).
    pub batch: Option<usize>,
}

/// Values per scale in embedding rows: at 8 bits, blocks of 128 cost MiniLM-L3 no cosine and a
/// quarter of the scales of blocks of 32.
const TABLE_BLOCK: usize = 128;

/// One quantized layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Layer {
    pub name: String,
    pub op: String,
    pub weight: String,
    pub weight_sqnr_db: f64,
}

pub struct Outcome {
    pub model: ModelProto,
    /// The float model's size on disk, side files included.
    pub stored_bytes: u64,
    pub layers: Vec<Layer>,
    /// What SmoothQuant did, one entry per layer input it searched (empty without it).
    pub smoothing: Vec<Smoothed>,
    /// Bytes of the quantized layers' float weights, and of their codes and scales.
    pub float_bytes: usize,
    pub quantized_bytes: usize,
    pub seconds: f64,
}

/// A layer to quantize: a weight-only site (MatMul, Gemm) or a Conv.
struct IntegerLayer {
    node: usize,
    /// The weight as the layer reads it and its per-channel axis there.
    weight: String,
    axis: usize,
    /// MatMulInteger needs `[K, N]`: a transposed Gemm weight is stored transposed.
    transpose: Option<(usize, usize)>,
}

/// Quantizes the model at `path` dynamically.
pub fn quantize(path: &Path, opts: &Options) -> Result<Outcome> {
    let t = Instant::now();
    check(path, opts)?;
    let prepared = prepare(path, &Settings::preset(Preset::W8A8))?;
    let mut g = prepared.graph;
    let smoothing = match &opts.smoothing {
        Some(sm) => smooth(&mut g, sm, opts)?,
        None => Vec::new(),
    };
    // Tables first (their Gathers become GatherBlockQuantized, which no later pass reads), then
    // the layers, found again in the rewritten graph.
    let tables: Vec<Site> = match opts.embedding_bits {
        Some(_) => (weight_only::sites(&g, &opts.exclude).into_iter())
            .filter(|s| s.op == Op::Gather)
            .collect(),
        None => Vec::new(),
    };
    let mut tables_report = (Vec::new(), 0, 0);
    if let (false, Some(bits)) = (tables.is_empty(), opts.embedding_bits) {
        let (graph, report, float_bytes, quantized_bytes) = quantize_tables(g, &tables, bits)?;
        g = graph;
        tables_report = (report, float_bytes, quantized_bytes);
    }
    let mut layers: Vec<IntegerLayer> = (weight_only::sites(&g, &opts.exclude).iter())
        .filter(|s| s.op != Op::Gather)
        .map(|s| IntegerLayer {
            node: s.node,
            weight: s.weight.clone(),
            axis: usize::from(!s.transposed),
            transpose: s.transposed.then_some((s.n, s.k)),
        })
        .collect();
    if opts.conv {
        layers.extend(conv_layers(&g, &opts.exclude));
    }
    layers.sort_by_key(|l| l.node);
    let lstms = lstm_nodes(&g, &opts.exclude);
    if layers.is_empty() && tables.is_empty() && lstms.is_empty() {
        // A CNN's Convs stay float by default: say so rather than that it has none.
        let convs = !opts.conv && g.nodes.iter().any(|n| n.op == Op::Conv);
        let hint = if convs {
            " (its Conv layers only with --conv-integer, which ONNX Runtime runs slower than float)"
        } else {
            ""
        };
        return Err(Error::new(
            path,
            format!("no MatMul, Gemm, Conv or LSTM with a constant weight to quantize{hint}"),
        ));
    }
    let mut x = Rewrite {
        names: Names::new(&g),
        added: Vec::new(),
        quantized_inputs: HashMap::new(),
        done: HashMap::new(),
        constants: HashMap::new(),
        report: Vec::new(),
        bytes: (0, 0),
    };
    for l in &layers {
        x.layer(&mut g, l, opts)?;
    }
    for &i in &lstms {
        x.lstm(&mut g, i, opts)?;
    }
    g.nodes.extend(x.added);
    g.sort()?;
    remove_dead(&mut g);
    let model = nbits_export::to_model(g, &prepared.base)?;
    let (table_layers, table_float, table_quantized) = tables_report;
    let mut report = x.report;
    report.extend(table_layers);
    Ok(Outcome {
        model,
        stored_bytes: prepared.stored_bytes,
        layers: report,
        smoothing,
        float_bytes: x.bytes.0 + table_float,
        quantized_bytes: x.bytes.1 + table_quantized,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// SmoothQuant on `g`, its α searched for the layers as this module quantizes them.
fn smooth(g: &mut Graph, sm: &Smoothing, opts: &Options) -> Result<Vec<Smoothed>> {
    let mut data = Dataset::open(&sm.data, &g.inputs, &sm.preprocess)?.at_most(sm.samples);
    let settings = Settings {
        weights: opts.weights,
        weight_method: opts.weight_method,
        activation_method: Method::MinMax,
        ..Settings::preset(Preset::W8A8)
    };
    let batch = (sm.batch).unwrap_or_else(|| weight_only::default_batch(&g.inputs, &data));
    let batch = batch_for(&g.inputs, batch);
    smooth_quant::smooth(g, (&mut data, batch), &settings, &opts.exclude, &sm.options)
}

fn check(path: &Path, opts: &Options) -> Result<()> {
    let w = &opts.weights;
    if w.bits > 8 || !w.symmetric || matches!(w.granularity, Granularity::PerBlock { .. }) {
        return Err(Error::new(
            path,
            format!("dynamic quantization takes symmetric weights of at most 8 bits, per tensor or per channel, not {w}: ONNX Runtime's integer kernels take one weight zero-point"),
        ));
    }
    if opts.embedding_bits.is_some_and(|b| ![2, 4, 8].contains(&b)) {
        return Err(Error::new(path, "embedding tables take 2, 4 or 8 bits"));
    }
    Ok(())
}

/// Conv layers with a constant weight (any group count; ConvInteger takes `group`).
fn conv_layers(graph: &Graph, exclude: &[String]) -> Vec<IntegerLayer> {
    (graph.nodes.iter().enumerate())
        .filter(|(_, n)| n.op == Op::Conv && !exclude.iter().any(|e| *e == n.name || e == "Conv"))
        .filter_map(|(i, n)| {
            let w = graph.float_initializer(n.inputs.get(1)?)?;
            (w.shape.len() >= 3 && graph.initializer(&n.inputs[0]).is_none()).then(|| {
                IntegerLayer {
                    node: i,
                    weight: w.name.clone(),
                    axis: 0,
                    transpose: None,
                }
            })
        })
        .collect()
}

/// LSTMs whose W and R are constant `[directions, 4·hidden, size]` weights, in the time-major
/// layout (DynamicQuantizeLSTM has no `layout`).
fn lstm_nodes(graph: &Graph, exclude: &[String]) -> Vec<usize> {
    let constant = |name: Option<&String>| {
        name.and_then(|n| graph.float_initializer(n))
            .is_some_and(|w| w.shape.len() == 3)
    };
    (graph.nodes.iter().enumerate())
        .filter(|(_, n)| n.op == Op::LSTM && !exclude.iter().any(|e| *e == n.name || e == "LSTM"))
        .filter(|(_, n)| constant(n.inputs.get(1)) && constant(n.inputs.get(2)))
        .filter(|(_, n)| n.attribute("layout").is_none_or(|a| a.i() == 0))
        .map(|(i, _)| i)
        .collect()
}

/// The rewrite in progress: each layer's node is replaced in place by the last node of its
/// integer form, the others are `added`.
struct Rewrite {
    names: Names,
    added: Vec<Node>,
    /// Each dynamically quantized value, by name and whether per row: its codes, scale and
    /// zero-point.
    quantized_inputs: HashMap<(String, bool), [String; 3]>,
    /// Each quantized weight's codes and scale initializers, by weight and whether a
    /// convolution reads it (its scales are shaped for channels).
    done: HashMap<(String, bool), [String; 2]>,
    /// The scalar initializers the rewrite shares (the int8 zero-point of every weight, ...),
    /// by what they hold, once written.
    constants: HashMap<&'static str, String>,
    report: Vec<Layer>,
    bytes: (usize, usize),
}

impl Rewrite {
    /// Replaces one layer by its integer form.
    fn layer(&mut self, g: &mut Graph, l: &IntegerLayer, opts: &Options) -> Result<()> {
        let node = g.nodes[l.node].clone();
        let conv = node.op == Op::Conv;
        let per_row = opts.per_token && !conv;
        let input = self.quantized_input(g, &node.inputs[0], per_row);
        let weight = self.weight(g, l, conv, opts)?;
        let bias = node.inputs.get(2).filter(|b| !b.is_empty()).cloned();
        let out = node.outputs[0].clone();
        let scaled = match bias {
            Some(_) => self.names.fresh(&format!("{}_unbiased", node.name)),
            None => out.clone(),
        };
        // ONNX Runtime fuses the standard form into MatMulIntegerToFloat, with a constant Add
        // after it as the bias; with per-row scales its kernel (1.32) then multiplies the bias
        // by each row's scale as well (measured: x·W + s_row·b). Such a layer is written as
        // MatMulIntegerToFloat without a bias, which is right, and the Add after it.
        let direct = per_row && (bias.is_some() || constant_add_reads(g, &out));
        let last = if direct {
            self.integer_to_float(g, &node.name, input, weight, &scaled)
        } else {
            self.integer_then_scale(g, &node, input, weight, &scaled)
        };
        g.nodes[l.node] = match bias {
            Some(b) => {
                let b = if conv { self.channel_shaped(g, &b)? } else { b };
                self.added.push(last);
                let name = self.names.fresh(&format!("{}_bias_Add", node.name));
                Node::new(name, Op::Add, &[&scaled, &b], &[&out])
            }
            None => last,
        };
        Ok(())
    }

    /// MatMulInteger (or ConvInteger) → Cast → Mul(x_scale · W_scale) writing `scaled`: the
    /// standard form, which ONNX Runtime fuses. Returns the last node; the others are added.
    fn integer_then_scale(
        &mut self,
        g: &mut Graph,
        node: &Node,
        [xq, xs, xz]: [String; 3],
        [wq, ws]: [String; 2],
        scaled: &str,
    ) -> Node {
        let conv = node.op == Op::Conv;
        let base = node.name.clone();
        let fresh = |names: &mut Names, what: &str| names.fresh(&format!("{base}_{what}"));
        let (int32, float, scale) = (
            fresh(&mut self.names, "int32"),
            fresh(&mut self.names, "float"),
            fresh(&mut self.names, "scale"),
        );
        let zero = self.zero(g);
        let kind = if conv { "ConvInteger" } else { "MatMulInteger" };
        let mut integer = Node::new(
            fresh(&mut self.names, kind),
            Op::Other(kind.into()),
            &[&xq, &wq, &xz, &zero],
            &[&int32],
        );
        if conv {
            integer.attributes = node.attributes.clone();
        }
        let mut cast = Node::new(
            fresh(&mut self.names, "Cast"),
            Op::Cast,
            &[&int32],
            &[&float],
        );
        cast.attributes = vec![int_attribute("to", 1)];
        let scales = Node::new(
            fresh(&mut self.names, "scale_Mul"),
            Op::Mul,
            &[&xs, &ws],
            &[&scale],
        );
        let mul = Node::new(
            fresh(&mut self.names, "Mul"),
            Op::Mul,
            &[&float, &scale],
            &[scaled],
        );
        self.added.extend([integer, cast, scales]);
        mul
    }

    /// ONNX Runtime's MatMulIntegerToFloat (com.microsoft) writing `scaled`, without a bias.
    fn integer_to_float(
        &mut self,
        g: &mut Graph,
        base: &str,
        [xq, xs, xz]: [String; 3],
        [wq, ws]: [String; 2],
        scaled: &str,
    ) -> Node {
        let zero = self.zero(g);
        let name = self.names.fresh(&format!("{base}_MatMulIntegerToFloat"));
        let mut node = Node::new(
            name,
            Op::Other("MatMulIntegerToFloat".into()),
            &[&xq, &wq, &xs, &ws, &xz, &zero],
            &[scaled],
        );
        node.domain = nbits_export::MS_DOMAIN.into();
        node
    }

    /// Value `x` quantized at run time, per row or per tensor: its codes, scale and zero-point,
    /// added the first time they are asked for.
    fn quantized_input(&mut self, g: &mut Graph, x: &str, per_row: bool) -> [String; 3] {
        let key = (x.to_string(), per_row);
        if let Some(q) = self.quantized_inputs.get(&key) {
            return q.clone();
        }
        let q = if per_row {
            self.per_row(g, x)
        } else {
            self.per_tensor(x)
        };
        self.quantized_inputs.insert(key, q.clone());
        q
    }

    /// DynamicQuantizeLinear of `x`: uint8 codes, one scale and zero-point.
    fn per_tensor(&mut self, x: &str) -> [String; 3] {
        let q = ["quantized", "scale", "zero_point"].map(|w| self.names.fresh(&format!("{x}_{w}")));
        let outs: Vec<&str> = q.iter().map(String::as_str).collect();
        self.added.push(Node::new(
            self.names.fresh(&format!("{x}_DynamicQuantizeLinear")),
            Op::Other("DynamicQuantizeLinear".into()),
            &[x],
            &outs,
        ));
        q
    }

    /// `x` quantized per row (its last axis) on a symmetric grid: s = max(max|x_row| / 127,
    /// the smallest normal float), so that a row of zeros gets codes 128, not 0/0; codes =
    /// QuantizeLinear(x / s, 1, 128), in 1..=255, rounded half to even as DynamicQuantizeLinear
    /// rounds.
    fn per_row(&mut self, g: &mut Graph, x: &str) -> [String; 3] {
        let [abs, max_abs, ratio, scale, scaled, codes] = [
            "abs",
            "max_abs",
            "ratio",
            "row_scale",
            "scaled",
            "quantized",
        ]
        .map(|w| self.names.fresh(&format!("{x}_{w}")));
        let c127 = self.scalar(g, "127", 127.0);
        let smallest = self.scalar(g, "smallest_normal", f32::MIN_POSITIVE);
        let one = self.scalar(g, "one", 1.0);
        let zero = self.constant(g, "row_zero_point", |name| {
            RawTensor::from_i64s(name, &[], &[128], DType::U8)
        });
        let mut reduce = Node::new(
            self.names.fresh(&format!("{x}_ReduceMax")),
            Op::ReduceMax,
            &[&abs],
            &[&max_abs],
        );
        reduce.attributes.push(int_attribute("keepdims", 1));
        // ReduceMax takes its axes as an input from opset 18, as an attribute before.
        if g.opset >= 18 {
            let axes = self.constant(g, "last_axis", |name| {
                RawTensor::from_i64s(name, &[1], &[-1], DType::I64)
            });
            reduce.inputs.push(axes);
        } else {
            reduce.attributes.push(ints_attribute("axes", &[-1]));
        }
        let node = |names: &mut Names, op: Op, inputs: &[&str], output: &str| {
            Node::new(names.fresh(&format!("{x}_{op}")), op, inputs, &[output])
        };
        let nodes = [
            node(&mut self.names, Op::Abs, &[x], &abs),
            reduce,
            node(&mut self.names, Op::Div, &[&max_abs, &c127], &ratio),
            node(&mut self.names, Op::Max, &[&ratio, &smallest], &scale),
            node(&mut self.names, Op::Div, &[x, &scale], &scaled),
            node(
                &mut self.names,
                Op::QuantizeLinear,
                &[&scaled, &one, &zero],
                &codes,
            ),
        ];
        self.added.extend(nodes);
        [codes, scale, zero]
    }

    /// The int8 zero-point scalar every weight shares.
    fn zero(&mut self, g: &mut Graph) -> String {
        self.constant(g, "weight_zero_point", |name| {
            RawTensor::from_i64s(name, &[], &[0], DType::I8)
        })
    }

    /// A float32 scalar initializer, written once.
    fn scalar(&mut self, g: &mut Graph, what: &'static str, value: f32) -> String {
        self.constant(g, what, |name| RawTensor::from_f32s(name, &[], &[value]))
    }

    /// The initializer `make` writes, named after `what`, written the first time it is asked for.
    fn constant(
        &mut self,
        g: &mut Graph,
        what: &'static str,
        make: impl FnOnce(&str) -> RawTensor,
    ) -> String {
        if let Some(name) = self.constants.get(what) {
            return name.clone();
        }
        let name = self.names.fresh(what);
        g.initializers.push(make(&name));
        self.constants.insert(what, name.clone());
        name
    }

    /// The weight's int8 codes (as MatMulInteger or ConvInteger reads them) and its scales
    /// (`[N]`, or `[M, 1, 1]` for a convolution's channels), written once per weight.
    fn weight(
        &mut self,
        g: &mut Graph,
        l: &IntegerLayer,
        conv: bool,
        opts: &Options,
    ) -> Result<[String; 2]> {
        let key = (l.weight.clone(), conv);
        if let Some(d) = self.done.get(&key) {
            return Ok(d.clone());
        }
        let scheme = match opts.weights.granularity {
            Granularity::PerTensor => opts.weights,
            _ => opts.weights.per_axis(l.axis),
        };
        // The weight read in place, before the graph is written to.
        let (qp, mut codes, sqnr, len, mut shape) = {
            let t = (g.float_initializer(&l.weight)).expect("a site's weight is an initializer");
            let values = t.f32s();
            let (qp, codes, sqnr) = int8(
                &values,
                &t.shape,
                scheme,
                opts.weight_method,
                (&g.source, &l.weight),
            )?;
            (qp, codes, sqnr, values.len(), t.shape.clone())
        };
        if let Some((rows, cols)) = l.transpose {
            codes = weight_only::transpose(&codes, rows, cols);
            shape = vec![cols, rows];
        }
        let wq = self.names.fresh(&format!("{}_quantized", l.weight));
        let ws = self.names.fresh(&format!("{}_scale", l.weight));
        let scale_shape = match (qp.scale.len(), conv) {
            (1, _) => vec![],
            (m, true) => vec![m, 1, 1],
            (n, false) => vec![n],
        };
        g.initializers.push(int8_tensor(&wq, &shape, &codes));
        g.initializers
            .push(RawTensor::from_f32s(&ws, &scale_shape, &qp.scale));
        self.report.push(Layer {
            name: g.nodes[l.node].name.clone(),
            op: g.nodes[l.node].op.to_string(),
            weight: l.weight.clone(),
            weight_sqnr_db: sqnr,
        });
        self.bytes.0 += len * 4;
        self.bytes.1 += len + qp.scale.len() * 4;
        self.done.insert(key, [wq.clone(), ws.clone()]);
        Ok([wq, ws])
    }

    /// Replaces LSTM node `i` by DynamicQuantizeLSTM, with its W and R quantized.
    fn lstm(&mut self, g: &mut Graph, i: usize, opts: &Options) -> Result<()> {
        let node = g.nodes[i].clone();
        let [wq, ws, wz] = self.recurrent_weight(g, &node, 1, opts)?;
        let [rq, rs, rz] = self.recurrent_weight(g, &node, 2, opts)?;
        let given = |k: usize| node.inputs.get(k).map_or("", String::as_str);
        let inputs = [
            given(0),
            &wq,
            &rq,
            given(3),
            given(4),
            given(5),
            given(6),
            given(7),
            &ws,
            &wz,
            &rs,
            &rz,
        ];
        let outputs: Vec<&str> = node.outputs.iter().map(String::as_str).collect();
        let name = self.names.fresh(&format!("{}_quant", node.name));
        let mut q = Node::new(
            name,
            Op::Other("DynamicQuantizeLSTM".into()),
            &inputs,
            &outputs,
        );
        q.domain = nbits_export::MS_DOMAIN.into();
        q.attributes = (node.attributes.iter())
            .filter(|a| a.name() != "layout")
            .cloned()
            .collect();
        g.nodes[i] = q;
        Ok(())
    }

    /// An LSTM's W (input 1) or R (input 2), `[D, G, K]`: its int8 codes transposed to
    /// `[D, K, G]`, its scales (`[D, G]` per gate row, `[D]` per tensor: one per direction, as
    /// ONNX Runtime writes them) and int8 zero-points of the same shape.
    fn recurrent_weight(
        &mut self,
        g: &mut Graph,
        node: &Node,
        input: usize,
        opts: &Options,
    ) -> Result<[String; 3]> {
        let name = &node.inputs[input];
        let t = g.float_initializer(name).expect("lstm_nodes checked it");
        let (values, [d, gates, k]) = (t.to_f32s(), [t.shape[0], t.shape[1], t.shape[2]]);
        let per_row = opts.weights.granularity != Granularity::PerTensor;
        // Rows of one scale each: a gate row, or a whole direction.
        let (rows, scale_shape) = if per_row {
            (d * gates, vec![d, gates])
        } else {
            (d, vec![d])
        };
        let shape = [rows, values.len() / rows];
        let scheme = opts.weights.per_axis(0);
        let (qp, codes, sqnr) = int8(
            &values,
            &shape,
            scheme,
            opts.weight_method,
            (&g.source, name),
        )?;
        let codes: Vec<i8> = (codes.chunks(gates * k))
            .flat_map(|direction| weight_only::transpose(direction, gates, k))
            .collect();
        let names =
            ["quantized", "scale", "zero_point"].map(|w| self.names.fresh(&format!("{name}_{w}")));
        g.initializers
            .push(int8_tensor(&names[0], &[d, k, gates], &codes));
        g.initializers
            .push(RawTensor::from_f32s(&names[1], &scale_shape, &qp.scale));
        let zeros = vec![0; qp.scale.len()];
        g.initializers.push(RawTensor::from_i64s(
            &names[2],
            &scale_shape,
            &zeros,
            DType::I8,
        ));
        self.report.push(Layer {
            name: node.name.clone(),
            op: format!("LSTM {}", if input == 1 { "W" } else { "R" }),
            weight: name.clone(),
            weight_sqnr_db: sqnr,
        });
        self.bytes.0 += values.len() * 4;
        self.bytes.1 += values.len() + qp.scale.len() * 5;
        Ok(names)
    }

    /// A copy of a convolution's bias `[M]` shaped `[M, 1, 1]`, to add to `[N, M, H, W]`.
    fn channel_shaped(&mut self, g: &mut Graph, bias: &str) -> Result<String> {
        let t = g
            .float_initializer(bias)
            .ok_or_else(|| Error::new(&g.source, format!("bias '{bias}' is not a constant")))?;
        let values = t.to_f32s();
        let name = self.names.fresh(&format!("{bias}_channels"));
        g.initializers
            .push(RawTensor::from_f32s(&name, &[values.len(), 1, 1], &values));
        Ok(name)
    }
}

/// Whether an Add of a constant reads `value` (canonicalization has made every Constant node
/// and constant subgraph an initializer).
fn constant_add_reads(g: &Graph, value: &str) -> bool {
    (g.nodes.iter()).any(|n| {
        n.op == Op::Add
            && n.inputs.iter().any(|i| i == value)
            && (n.inputs.iter()).any(|i| i != value && g.initializer(i).is_some())
    })
}

/// `values` (`shape`) quantized to int8 on `scheme`, ranges by `method`: the parameters, the
/// codes and the SQNR of the values they stand for. Errors name the weight (`name` in the model
/// at `path`).
fn int8(
    values: &[f32],
    shape: &[usize],
    scheme: Scheme,
    method: Method,
    (path, name): (&Path, &str),
) -> Result<(QParams, Vec<i8>, f64)> {
    let fail = |e| Error::at(path, format!("weight '{name}'"), e);
    let ranges = estimate_values(values, shape, &scheme, Config::new(method)).map_err(fail)?;
    let qp = QParams::from_ranges(&scheme, &ranges).map_err(fail)?;
    let q = QTensor::quantize_with(values, shape, qp.clone(), Storage::I8).map_err(fail)?;
    let sqnr = blocks::sqnr_db(values, &q.dequantize().map_err(fail)?);
    // The codes as stored, one byte each: as i64 an LM head's were 74 MB.
    let codes = match q.codes {
        Codes::I8(c) => c,
        _ => q.codes_i32().into_iter().map(|c| c as i8).collect(),
    };
    Ok((qp, codes, sqnr))
}

/// An int8 initializer of `codes`.
fn int8_tensor(name: &str, shape: &[usize], codes: &[i8]) -> RawTensor {
    RawTensor {
        name: name.to_string(),
        shape: shape.to_vec(),
        dtype: DType::I8,
        data: codes.iter().map(|&c| c as u8).collect(),
    }
}

/// The graph with its embedding tables quantized per row, as weight-only quantization writes
/// them; their report lines and float and quantized bytes.
fn quantize_tables(
    graph: Graph,
    sites: &[Site],
    bits: u32,
) -> Result<(Graph, Vec<Layer>, usize, usize)> {
    let scheme = BlockScheme {
        bits,
        block: TABLE_BLOCK,
        symmetric: false,
        range: BlockRange::MinMax,
    };
    let mut quantized: HashMap<String, BlockWeights> = HashMap::new();
    let mut report = Vec::new();
    let (mut float_bytes, mut quantized_bytes) = (0, 0);
    for s in sites {
        let w = weight_only::weight_kn(&graph, s)?;
        let q = blocks::rtn(&w, s.k, s.n, scheme);
        report.push(Layer {
            name: s.name.clone(),
            op: "Gather".into(),
            weight: s.weight.clone(),
            weight_sqnr_db: blocks::sqnr_db(&w, &q.dequantize()),
        });
        float_bytes += w.len() * 4;
        quantized_bytes += nbits_export::bytes(&q);
        quantized.insert(s.weight.clone(), q);
    }
    let graph = nbits_export::rewrite(graph, sites, quantized, Format::MatMulNBits, None)?;
    Ok((graph, report, float_bytes, quantized_bytes))
}
