//! AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization",
//! arXiv 2004.10568): each weight is rounded up or down as learned on calibration data, not to
//! the nearest grid point.
//!
//! Per layer, in graph order, a continuous variable V per weight gives the rounding
//! h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1) (ζ = 1.1, γ = −0.1) and the soft-quantized weight
//! W̃ = s·(clip(⌊W/s⌋ + h(V) + z, qmin, qmax) − z). Adam minimizes
//!
//! ```text
//! ‖W·x − W̃·x̃‖² (summed over output channels, averaged over positions)
//! + λ·Σ (1 − |2h(V) − 1|^β)        (after a warm start of 20 % of the iterations)
//! ```
//!
//! with β annealed linearly from 20 to 2; the regularizer pushes each h to 0 or 1, and the
//! result is rounded hard at h ≥ ½. x is the layer's input in the float model, x̃ in the quantized
//! model with every earlier layer already AdaRounded (the paper's asymmetric reconstruction,
//! §3.3). A convolution's input is taken as its im2col columns at up to `max_columns` output
//! positions, spread evenly over the samples; each group of a grouped or depthwise convolution
//! is its own problem.
//!
//! Every sample's float and simulated runs step from layer to layer together, kept on disk in
//! between ([`crate::paused_runs`]); at each layer the layer's rounding is learned on
//! everyone's columns, and the simulation goes on with the learned weight. The rounded weight
//! replaces the float one in the graph (on the grid, so the export's codes are the learned
//! ones); the quantization parameters do not change.
//!
//! The gradient is the layer's own, written out (a linear layer's: 2·(W̃x̃ − Wx)·x̃ᵀ, then the
//! chain through the clip and h), and the matrix products are candle's.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use zeropoint_core::{Layout, QParams};
use zeropoint_engine::exec::Paused;
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::RawTensor;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::params::Params;
use crate::paused_runs::PausedRuns;
use crate::placement::Plan;
use crate::simulate::Simulation;

pub use crate::settings::AdaRoundOptions as Options;

const ZETA: f64 = 1.1;
const GAMMA: f64 = -0.1;

/// What AdaRound did to one layer's weight.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rounded {
    pub layer: String,
    pub weight: String,
    /// Weights rounded the other way than to nearest, of all.
    pub flipped: usize,
    pub total: usize,
    /// The reconstruction error ‖Wx − W̃x̃‖² per position, rounding to nearest and as learned.
    pub loss_nearest: f64,
    pub loss_learned: f64,
}

/// h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1), the rectified sigmoid.
pub fn rectified_sigmoid(v: f64) -> f64 {
    (sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// The rounding regularizer of one weight: 1 − |2h − 1|^β.
pub fn regularizer(h: f64, beta: f64) -> f64 {
    1.0 - (2.0 * h - 1.0).abs().powf(beta)
}

/// β at iteration `t` of `total`: None during the warm start, then linear from start to end.
pub fn beta_at(t: usize, total: usize, opts: &Options) -> Option<f64> {
    let warm = (opts.warm_start * total as f64).round() as usize;
    if t < warm {
        return None;
    }
    let rel = (t - warm) as f64 / (total - warm).max(1) as f64;
    Some(opts.beta.1 + (opts.beta.0 - opts.beta.1) * (1.0 - rel).max(0.0))
}

/// One rounding problem: a weight matrix W [M, K] with a scale and zero-point per element, the
/// quantized model's input columns x̃ [P, K] and the float model's outputs W·x [P, M].
pub struct Problem {
    pub rows: usize,
    pub cols: usize,
    pub w: Vec<f32>,
    pub scale: Vec<f32>,
    pub zero: Vec<f32>,
    pub qmin: f32,
    pub qmax: f32,
    pub inputs: Vec<f32>,
    pub targets: Vec<f32>,
}

impl Problem {
    /// W̃ for roundings `h` (one per weight, in [0, 1]), and whether each lies inside the grid.
    fn soft_weight(&self, h: &[f64]) -> (Vec<f32>, Vec<bool>) {
        (0..h.len())
            .into_par_iter()
            .with_min_len(RUN)
            .map(|e| {
                let code = (self.w[e] / self.scale[e]).floor() + h[e] as f32 + self.zero[e];
                let inside = code > self.qmin && code < self.qmax;
                (
                    (code.clamp(self.qmin, self.qmax) - self.zero[e]) * self.scale[e],
                    inside,
                )
            })
            .unzip()
    }

    /// ‖W̃x̃ − Wx‖² per position, over all positions.
    fn loss(&self, w: &[f32]) -> candle_core::Result<f64> {
        let p = self.inputs.len() / self.cols.max(1);
        let x = Tensor::from_slice(&self.inputs, (p, self.cols), &Device::Cpu)?;
        let t = Tensor::from_slice(&self.targets, (p, self.rows), &Device::Cpu)?;
        let wt = Tensor::from_slice(w, (self.rows, self.cols), &Device::Cpu)?;
        let e = x.matmul(&wt.t()?)?.sub(&t)?;
        Ok(f64::from(e.sqr()?.sum_all()?.to_scalar::<f32>()?) / p.max(1) as f64)
    }
}

/// The learned rounding of `p`: the hard-rounded W̃ and how many weights were flipped against
/// rounding to nearest, with the losses of both. Where the learned rounding reconstructs the
/// columns worse than rounding to nearest (a small layer, too few steps), nearest is kept.
pub fn optimize(p: &Problem, opts: &Options) -> candle_core::Result<(Vec<f32>, usize, f64, f64)> {
    let n = p.w.len();
    let positions = p.inputs.len() / p.cols.max(1);
    // V starts where h(V) is the fractional part of W/s: the soft weight is W itself.
    let v: Vec<f64> = (0..n)
        .map(|e| {
            let x = f64::from(p.w[e] / p.scale[e]);
            let rest = (x - x.floor()).clamp(1e-4, 1.0 - 1e-4);
            -((ZETA - GAMMA) / (rest - GAMMA) - 1.0).ln()
        })
        .collect();
    // Per weight: V and Adam's two moments. Every step is element-wise, in parallel.
    let mut vars: Vec<[f64; 3]> = v.into_iter().map(|v| [v, 0.0, 0.0]).collect();
    let batch = opts.batch.clamp(1, positions.max(1));
    for t in 0..opts.iterations {
        let h: Vec<f64> = vars
            .par_iter()
            .with_min_len(RUN)
            .map(|x| rectified_sigmoid(x[0]))
            .collect();
        let (w, inside) = p.soft_weight(&h);
        let start = (t * batch) % positions.max(1);
        let rows = batch.min(positions - start);
        let xb = &p.inputs[start * p.cols..(start + rows) * p.cols];
        let tb = &p.targets[start * p.rows..(start + rows) * p.rows];
        let grad_w = reconstruction_gradient(xb, tb, &w, p.rows, p.cols)?;
        let beta = beta_at(t, opts.iterations, opts);
        vars.par_iter_mut()
            .with_min_len(RUN)
            .enumerate()
            .for_each(|(e, x)| {
                let mut g = if inside[e] {
                    grad_w[e] * f64::from(p.scale[e])
                } else {
                    0.0
                };
                if let Some(beta) = beta {
                    let d = 2.0 * h[e] - 1.0;
                    g -= opts.regularization * beta * d.abs().powf(beta - 1.0) * d.signum() * 2.0;
                }
                let s = sigmoid(x[0]);
                let soft = s * (ZETA - GAMMA) + GAMMA;
                let dh = if soft > 0.0 && soft < 1.0 {
                    (ZETA - GAMMA) * s * (1.0 - s)
                } else {
                    0.0
                };
                adam(x, g * dh, t + 1, opts.learning_rate);
            });
    }
    let v: Vec<f64> = vars.iter().map(|x| x[0]).collect();
    let hard: Vec<f64> = v
        .iter()
        .map(|&v| f64::from(u8::from(rectified_sigmoid(v) >= 0.5)))
        .collect();
    let nearest: Vec<f64> = (0..n)
        .map(|e| {
            let x = p.w[e] / p.scale[e];
            f64::from(u8::from(x - x.floor() >= 0.5))
        })
        .collect();
    let flipped = hard.iter().zip(&nearest).filter(|(a, b)| a != b).count();
    let (learned, _) = p.soft_weight(&hard);
    let (rounded, _) = p.soft_weight(&nearest);
    let (loss_nearest, loss_learned) = (p.loss(&rounded)?, p.loss(&learned)?);
    // Never worse than rounding to nearest on the columns it was fitted on.
    if loss_learned > loss_nearest {
        return Ok((rounded, 0, loss_nearest, loss_nearest));
    }
    Ok((learned, flipped, loss_nearest, loss_learned))
}

/// Problems up to this many multiply-adds a step are done in plain loops.
const SMALL: usize = 1 << 15;

/// Element-wise work is split among threads in runs of at least this many weights.
const RUN: usize = 4096;

/// d/dW̃ of ‖W̃x̃ − Wx‖² averaged over the batch's positions: 2·(x̃W̃ᵀ − T)ᵀ·x̃ / B.
fn reconstruction_gradient(
    x: &[f32],
    t: &[f32],
    w: &[f32],
    rows: usize,
    cols: usize,
) -> candle_core::Result<Vec<f64>> {
    let b = x.len() / cols.max(1);
    if rows * cols * b <= SMALL {
        // A depthwise filter's problem: candle's per-call cost would be most of the time.
        return Ok(gradient_in_loops(x, t, w, rows, cols));
    }
    gradient_by_products(x, t, w, rows, cols)
}

/// [`reconstruction_gradient`] in plain loops.
fn gradient_in_loops(x: &[f32], t: &[f32], w: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let b = x.len() / cols.max(1);
    let mut g = vec![0f64; rows * cols];
    for p in 0..b {
        let xp = &x[p * cols..(p + 1) * cols];
        for m in 0..rows {
            let wm = &w[m * cols..(m + 1) * cols];
            let y: f64 = wm.iter().zip(xp).map(|(a, b)| f64::from(a * b)).sum();
            let e = 2.0 * (y - f64::from(t[p * rows + m])) / b.max(1) as f64;
            for (gk, xk) in g[m * cols..(m + 1) * cols].iter_mut().zip(xp) {
                *gk += e * f64::from(*xk);
            }
        }
    }
    g
}

/// [`reconstruction_gradient`] with candle's matrix products.
fn gradient_by_products(
    x: &[f32],
    t: &[f32],
    w: &[f32],
    rows: usize,
    cols: usize,
) -> candle_core::Result<Vec<f64>> {
    let b = x.len() / cols.max(1);
    let xt = Tensor::from_slice(x, (b, cols), &Device::Cpu)?;
    let tt = Tensor::from_slice(t, (b, rows), &Device::Cpu)?;
    let wt = Tensor::from_slice(w, (rows, cols), &Device::Cpu)?;
    let e = xt.matmul(&wt.t()?)?.sub(&tt)?;
    let g = e.t()?.matmul(&xt)?.affine(2.0 / b.max(1) as f64, 0.0)?;
    Ok(g.flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// One Adam step (β1 0.9, β2 0.999, ε 1e-8) of `x` = [value, first moment, second moment]
/// along gradient `g` at step `t` (from 1).
fn adam(x: &mut [f64; 3], g: f64, t: usize, lr: f64) {
    x[1] = 0.9 * x[1] + 0.1 * g;
    x[2] = 0.999 * x[2] + 0.001 * g * g;
    let mh = x[1] / (1.0 - 0.9f64.powi(t as i32));
    let vh = x[2] / (1.0 - 0.999f64.powi(t as i32));
    x[0] -= lr * mh / (vh.sqrt() + 1e-8);
}

/// A layer AdaRound can take, and how its weight and input map onto [`Problem`]s.
#[derive(Clone)]
struct Layer {
    /// The node's index in the graph.
    index: usize,
    node: Node,
    weight: RawTensor,
    qparams: QParams,
    shape: LayerShape,
}

#[derive(Clone, Copy)]
enum LayerShape {
    /// [M, C/g, kh, kw] (a 1-D convolution has kh = 1), with its geometry.
    Conv(Conv),
    /// x [.., K] times W [K, M] (or [M, K] with transB).
    Dense { trans_b: bool },
}

#[derive(Clone, Copy)]
struct Conv {
    groups: usize,
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    pads: [usize; 2],
    end_pads: [usize; 2],
}

impl Conv {
    /// The output's spatial size for an input of spatial size `input`, if the kernel fits the
    /// padded input.
    fn output_size(&self, input: [usize; 2]) -> Option<[usize; 2]> {
        let axis = |a: usize| {
            let span = self.dilations[a] * (self.kernel[a].max(1) - 1) + 1;
            let padded = input[a] + self.pads[a] + self.end_pads[a];
            Some((padded.checked_sub(span)?) / self.strides[a].max(1) + 1)
        };
        Some([axis(0)?, axis(1)?])
    }
}

/// The layers of `graph` with a planned weight AdaRound can round, in graph order. A weight
/// several layers share (ALBERT's) keeps nearest rounding: rounding learned on one layer's
/// inputs is not the others'.
fn layers(graph: &Graph, plan: &Plan, params: &Params) -> Vec<Layer> {
    let mut out = Vec::new();
    let readers = graph.consumers();
    for (index, node) in graph.nodes.iter().enumerate() {
        let Some(site) = plan.weights.iter().find(|w| w.node == node.name) else {
            continue;
        };
        if readers.get(&site.name).is_some_and(|r| r.len() > 1) {
            continue;
        }
        let (Some(wp), Some(w)) = (params.weight(&site.name), graph.initializer(&site.name)) else {
            continue;
        };
        if node.inputs.get(1) != Some(&site.name) {
            continue;
        }
        let shape = match node.op {
            Op::Conv => match conv_geometry(node, &w.shape) {
                Some(c) => LayerShape::Conv(c),
                None => continue,
            },
            Op::Gemm if node.attribute("transA").is_none_or(|a| a.i() == 0) => LayerShape::Dense {
                trans_b: node.attribute("transB").is_some_and(|a| a.i() != 0),
            },
            Op::MatMul if w.shape.len() == 2 => LayerShape::Dense { trans_b: false },
            _ => continue,
        };
        out.push(Layer {
            index,
            node: node.clone(),
            weight: w.clone(),
            qparams: wp.qparams.clone(),
            shape,
        });
    }
    out
}

/// A convolution's geometry, when its pads are explicit (auto_pad NOTSET or VALID) and it has
/// one or two spatial axes.
fn conv_geometry(node: &Node, w: &[usize]) -> Option<Conv> {
    let auto = node
        .attribute("auto_pad")
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default();
    if !matches!(auto.as_str(), "" | "NOTSET" | "VALID") || !(3..=4).contains(&w.len()) {
        return None;
    }
    let ints = |name: &str| node.attribute(name).map(|a| a.ints.clone());
    let two = |v: Option<Vec<i64>>, fill: usize| -> Option<[usize; 2]> {
        match v.as_deref() {
            None => Some([fill, fill]),
            Some([a]) => Some([fill, usize::try_from(*a).ok()?]),
            Some([a, b]) => Some([usize::try_from(*a).ok()?, usize::try_from(*b).ok()?]),
            _ => None,
        }
    };
    let pads = ints("pads").unwrap_or_else(|| vec![0; 2 * (w.len() - 2)]);
    let half = pads.len() / 2;
    let begin = two(Some(pads[..half].to_vec()), 0)?;
    let end = two(Some(pads[half..].to_vec()), 0)?;
    Some(Conv {
        groups: node.attribute("group").map_or(1, |a| a.i()).max(1) as usize,
        kernel: if w.len() == 3 {
            [1, w[2]]
        } else {
            [w[2], w[3]]
        },
        strides: two(ints("strides"), 1)?,
        dilations: two(ints("dilations"), 1)?,
        pads: begin,
        end_pads: end,
    })
}

/// The flat index, in the layer's weight, of row m (output channel) and column k (input
/// element) of group g's matrix.
fn weight_index(layer: &Layer, g: usize, m: usize, k: usize) -> usize {
    let shape = &layer.weight.shape;
    match layer.shape {
        LayerShape::Conv(c) => {
            let k_len: usize = shape[1..].iter().product();
            (g * (shape[0] / c.groups) + m) * k_len + k
        }
        LayerShape::Dense { trans_b: true } => m * shape[1] + k,
        LayerShape::Dense { trans_b: false } => k * shape[1] + m,
    }
}

/// (groups, rows per group, columns) of the layer's weight matrices.
fn matrix_dims(layer: &Layer) -> (usize, usize, usize) {
    let shape = &layer.weight.shape;
    match layer.shape {
        LayerShape::Conv(c) => (c.groups, shape[0] / c.groups, shape[1..].iter().product()),
        LayerShape::Dense { trans_b: true } => (1, shape[0], shape[1]),
        LayerShape::Dense { trans_b: false } => (1, shape[1], shape[0]),
    }
}

/// The columns of group `g` at up to `take` output positions spread evenly: a convolution's
/// im2col rows (zero where a tap falls in the padding), a dense layer's input rows.
fn columns(layer: &Layer, x: &Value, g: usize, take: usize) -> Result<Vec<f32>> {
    // Read in place: a depthwise layer asks once per channel.
    x.with_f32s(|data| gather_columns(layer, data, x.shape(), g, take))?
}

/// [`columns`] of the input `data` of shape `shape`.
fn gather_columns(
    layer: &Layer,
    data: &[f32],
    shape: &[usize],
    g: usize,
    take: usize,
) -> Result<Vec<f32>> {
    let (_, _, k) = matrix_dims(layer);
    let mut cols = Vec::new();
    match layer.shape {
        LayerShape::Conv(c) => {
            let (n, ch) = (shape[0], shape[1]);
            let (h, w) = if shape.len() == 3 {
                (1, shape[2])
            } else {
                (shape[2], shape[3])
            };
            let [oh, ow] = c.output_size([h, w]).ok_or_else(|| {
                Error::Environment(format!(
                    "{}: its kernel does not fit its padded input {shape:?}",
                    layer.node.label()
                ))
            })?;
            let cg = ch / c.groups;
            let positions = n * oh * ow;
            for j in 0..take.min(positions) {
                let p = j * positions / take.min(positions).max(1);
                let (b, oy, ox) = (p / (oh * ow), (p / ow) % oh, p % ow);
                for cc in 0..cg {
                    let plane = &data[(b * ch + g * cg + cc) * h * w..][..h * w];
                    for i in 0..c.kernel[0] {
                        let y = (oy * c.strides[0] + i * c.dilations[0]) as i64 - c.pads[0] as i64;
                        for jj in 0..c.kernel[1] {
                            let xx =
                                (ox * c.strides[1] + jj * c.dilations[1]) as i64 - c.pads[1] as i64;
                            let inside = y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w;
                            cols.push(if inside {
                                plane[y as usize * w + xx as usize]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
        LayerShape::Dense { .. } => {
            let positions = data.len() / k.max(1);
            for j in 0..take.min(positions) {
                let p = j * positions / take.min(positions).max(1);
                cols.extend_from_slice(&data[p * k..(p + 1) * k]);
            }
        }
    }
    Ok(cols)
}

/// One sample's columns of a layer, per group: (float model's input, quantized model's input).
type Part = Vec<(Vec<f32>, Vec<f32>)>;

/// AdaRounds every eligible layer of `graph` on `data` (one batch of the model's smallest batch
/// size per sample, read as the runs start), and replaces each
/// layer's weight in `graph` by its learned rounding. `params` stay as they are: the learned
/// weights lie on their grids.
///
/// Every sample's float and simulated runs step from layer to layer together
/// ([`PausedRuns`]), kept on disk in between: memory holds a few samples' activations and one
/// layer's columns, whatever the number of samples. `on_layer(done, total, rounded)` is called
/// as each layer's rounding is learned.
pub fn adaround(
    graph: &mut Graph,
    plan: &Plan,
    params: &Params,
    data: Dataset,
    opts: &Options,
    on_layer: &(dyn Fn(usize, usize, &Rounded) + Sync),
) -> Result<Vec<Rounded>> {
    let layers = layers(graph, plan, params);
    if layers.is_empty() || data.len == 0 {
        return Ok(Vec::new());
    }
    let mut learned = Vec::with_capacity(layers.len());
    // The model x̃ comes from: the quantized one, or the one with quantized weights only.
    let weights_only;
    let inputs_params = if opts.quantized_inputs {
        params
    } else {
        weights_only = Params {
            activations: Vec::new(),
            ..params.clone()
        };
        &weights_only
    };
    {
        let float = Executor::new(graph)?;
        let mut sim = Simulation::sharing(graph, inputs_params, float.initializer_values())?;
        let mut runs = PausedRuns::start(&float, &sim, data)?;
        let take = (opts.max_columns / runs.samples().max(1)).max(1);
        for layer in &layers {
            // Every sample's columns of the layer's input, the float run's and the simulated
            // run's (with every earlier layer already rounded as learned).
            let parts = runs.step(&float, &sim, layer.index, |f, q| {
                let (xf, xq) = (input_of(layer, f)?, input_of(layer, q)?);
                (0..matrix_dims(layer).0)
                    .map(|g| Ok((columns(layer, xf, g, take)?, columns(layer, xq, g, take)?)))
                    .collect::<Result<Part>>()
            })?;
            let (weight, rounded) = fit(layer, parts, opts)?;
            on_layer(learned.len() + 1, layers.len(), &rounded);
            sim.set_weight(&weight)?;
            learned.push((weight, rounded));
        }
    }
    let mut done = Vec::with_capacity(learned.len());
    for (weight, rounded) in learned {
        if let Some(t) = graph
            .initializers
            .iter_mut()
            .find(|t| t.name == weight.name)
        {
            *t = weight;
        }
        done.push(rounded);
    }
    Ok(done)
}

/// The layer's input in a run paused before it.
fn input_of<'a>(layer: &Layer, run: &'a Paused) -> Result<&'a Value> {
    let input = &layer.node.inputs[0];
    run.values.get(input).ok_or_else(|| {
        Error::Environment(format!(
            "{}: its input '{input}' was not computed",
            layer.node.label()
        ))
    })
}

/// Learns the rounding of every group of `layer` on the samples' columns.
fn fit(layer: &Layer, parts: Vec<Part>, opts: &Options) -> Result<(RawTensor, Rounded)> {
    let (groups, rows, k) = matrix_dims(layer);
    let w = layer.weight.to_f32s();
    let qp = &layer.qparams;
    let layout = Layout::new(&layer.weight.shape, qp.granularity)
        .map_err(|e| Error::Environment(format!("{}: {e}", layer.node.label())))?;
    let index = |e: usize| layout.param_index(e);
    let mut learned = w.clone();
    let mut rounded = Rounded {
        layer: layer.node.name.clone(),
        weight: layer.weight.name.clone(),
        flipped: 0,
        total: w.len(),
        loss_nearest: 0.0,
        loss_learned: 0.0,
    };
    let err = |e: candle_core::Error| {
        let e = zeropoint_engine::error::candle_message(e);
        Error::Environment(format!("{}: {e}", layer.node.label()))
    };
    // Each group's columns over all samples, each sample's dropped once copied: a large
    // layer's columns (8192 × 4608 for a 3×3 convolution of 512 channels) are 150 MB a copy.
    let mut columns: Vec<(Vec<f32>, Vec<f32>)> = vec![Default::default(); groups];
    for part in parts {
        for ((f, q), (fp, qp)) in columns.iter_mut().zip(part) {
            f.extend_from_slice(&fp);
            q.extend_from_slice(&qp);
        }
    }
    for (g, (float_inputs, inputs)) in columns.into_iter().enumerate() {
        let at = |e: usize| weight_index(layer, g, e / k, e % k);
        let wg: Vec<f32> = (0..rows * k).map(|e| w[at(e)]).collect();
        let positions = inputs.len() / k.max(1);
        // W·x, the float model's output at the columns; the float columns go.
        let targets = Tensor::from_vec(float_inputs, (positions, k), &Device::Cpu)
            .and_then(|xf| {
                let wt = Tensor::from_slice(&wg, (rows, k), &Device::Cpu)?;
                xf.matmul(&wt.t()?)?.flatten_all()?.to_vec1::<f32>()
            })
            .map_err(err)?;
        let problem = Problem {
            rows,
            cols: k,
            scale: (0..rows * k).map(|e| qp.scale[index(at(e))]).collect(),
            zero: (0..rows * k)
                .map(|e| qp.zero_point[index(at(e))] as f32)
                .collect(),
            w: wg,
            qmin: qp.grid.qmin as f32,
            qmax: qp.grid.qmax as f32,
            inputs,
            targets,
        };
        let (wl, flipped, nearest, loss) = optimize(&problem, opts).map_err(err)?;
        for (e, v) in wl.into_iter().enumerate() {
            learned[at(e)] = v;
        }
        rounded.flipped += flipped;
        rounded.loss_nearest += nearest;
        rounded.loss_learned += loss;
    }
    let values: Vec<f64> = learned.iter().map(|&v| f64::from(v)).collect();
    let t = &layer.weight;
    Ok((
        RawTensor::from_f64s(&t.name, &t.shape, &values, t.dtype),
        rounded,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's h, regularizer and β schedule, written out independently.
    #[test]
    fn rectified_sigmoid_regularizer_and_annealing() {
        for v in [-8.0, -2.0, -0.3, 0.0, 0.7, 3.0, 9.0] {
            let expected = (1.2 / (1.0 + f64::exp(-v)) - 0.1).clamp(0.0, 1.0);
            assert!((rectified_sigmoid(v) - expected).abs() < 1e-15);
        }
        assert_eq!(rectified_sigmoid(-20.0), 0.0);
        assert_eq!(rectified_sigmoid(20.0), 1.0);
        assert!((regularizer(0.5, 20.0) - 1.0).abs() < 1e-12);
        assert_eq!(regularizer(0.0, 2.0), 0.0);
        assert!((regularizer(0.25, 2.0) - 0.75).abs() < 1e-12);
        let opts = Options {
            iterations: 100,
            ..Options::default()
        };
        assert_eq!(beta_at(0, 100, &opts), None);
        assert_eq!(beta_at(19, 100, &opts), None);
        assert_eq!(beta_at(20, 100, &opts), Some(20.0));
        assert!((beta_at(60, 100, &opts).unwrap() - 11.0).abs() < 1e-12);
        assert!((beta_at(100, 100, &opts).unwrap() - 2.0).abs() < 1e-12);
    }

    fn problem(seed: u64) -> Problem {
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let (rows, cols, positions) = (4, 16, 256);
        let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        let exact: Vec<f32> = (0..positions * cols).map(|_| 2.0 * next()).collect();
        let mut targets = vec![0f32; positions * rows];
        for p in 0..positions {
            for m in 0..rows {
                targets[p * rows + m] = (0..cols)
                    .map(|k| w[m * cols + k] * exact[p * cols + k])
                    .sum();
            }
        }
        // The quantized model's input: the float one on a coarse grid, with a bias to make up.
        let inputs: Vec<f32> = exact.iter().map(|x| (x * 4.0).floor() / 4.0).collect();
        Problem {
            rows,
            cols,
            scale: vec![0.11; rows * cols],
            zero: vec![0.0; rows * cols],
            w,
            qmin: -8.0,
            qmax: 7.0,
            inputs,
            targets,
        }
    }

    /// The written-out gradient of the reconstruction loss against central finite differences.
    #[test]
    fn reconstruction_gradient_matches_finite_differences() {
        let p = problem(3);
        let w: Vec<f32> = p.w.iter().map(|w| w + 0.01).collect();
        let loss = |w: &[f32]| p.loss(w).unwrap();
        let g = gradient_in_loops(&p.inputs, &p.targets, &w, p.rows, p.cols);
        let products = gradient_by_products(&p.inputs, &p.targets, &w, p.rows, p.cols).unwrap();
        for (a, b) in g.iter().zip(&products) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
        for e in 0..w.len() {
            let eps = 1e-2f32;
            let (mut up, mut down) = (w.clone(), w.clone());
            up[e] += eps;
            down[e] -= eps;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * f64::from(eps));
            assert!(
                (g[e] - numeric).abs() <= 1e-3 * numeric.abs().max(1.0),
                "{e}: {} vs {numeric}",
                g[e]
            );
        }
    }

    /// Learned rounding reconstructs the layer at least as well as rounding to nearest (better
    /// on most problems), and every learned weight is on the grid, one step from W/s at most.
    #[test]
    fn learned_rounding_beats_nearest_on_its_problem() {
        let mut better = 0;
        for seed in 1..6 {
            let p = problem(seed);
            let opts = Options {
                iterations: 1000,
                batch: 64,
                ..Options::default()
            };
            let (w, _, nearest, learned) = optimize(&p, &opts).unwrap();
            assert!(learned <= nearest, "seed {seed}: {learned} > {nearest}");
            better += usize::from(learned < 0.8 * nearest);
            for (e, &v) in w.iter().enumerate() {
                let code = v / p.scale[e];
                assert!((code - code.round()).abs() < 1e-4, "{v} is off the grid");
                assert!((code - p.w[e] / p.scale[e]).abs() < 1.0 + 1e-4);
            }
        }
        assert!(
            better >= 3,
            "learned rounding was clearly better on {better} of 5 problems"
        );
    }
}
