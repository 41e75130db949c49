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
//! result is rounded hard at h ≥ ½. Where the fit ends with some h still strictly between 0 and
//! 1 (at the default 1000 steps, up to a third of a layer's weights), rounding those at ½ is a
//! blind choice; [`settle`] makes it on the same reconstruction error instead (zeropoint's
//! addition, not the paper's: the paper's 10 000 steps leave few undecided). x is the layer's
//! input in the float model, x̃ in the quantized model with every earlier layer already
//! AdaRounded (the paper's asymmetric reconstruction,
//! §3.3). With `through_activation`, a layer with a Relu or Clip f fused into it compares
//! f(W·x + b) and f(W̃·x̃ + b) instead, its bias b included (the paper's eq. 25: an error the
//! activation cuts off costs nothing). A convolution's input is taken as its im2col columns
//! at up to `max_columns` output positions, spread evenly over the samples; each group of a
//! grouped or depthwise convolution is its own problem.
//!
//! Every sample's float and simulated runs step from layer to layer together
//! ([`crate::reconstruction::walk`], kept on disk in between); at each layer the layer's
//! rounding is learned on everyone's columns, and the simulation goes on with the learned
//! weight. The rounded weight
//! replaces the float one in the graph (on the grid, so the export's codes are the learned
//! ones); the quantization parameters do not change.
//!
//! The gradient is the layer's own, written out (a linear layer's: 2·(W̃x̃ − Wx)·x̃ᵀ, then the
//! chain through the clip and h), and the matrix products are candle's.

use std::ops::Range;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use zeropoint_core::Layout;
use zeropoint_graph::Graph;
use zeropoint_onnx::RawTensor;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::params::Params;
use crate::placement::Plan;
use crate::reconstruction::{
    self, group_columns, group_matrix, matrix_dims, weight_index, Activation, Columns, Inputs,
    Layer, Part,
};

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
    /// Weights the fit left undecided (0 < h < 1) that [`settle`] rounded the other way than
    /// h ≥ ½ would.
    pub settled: usize,
    /// The reconstruction error ‖f(Wx + b) − f(W̃x̃ + b)‖² per position (‖Wx − W̃x̃‖² without
    /// an activation), rounding to nearest and as learned.
    pub loss_nearest: f64,
    pub loss_learned: f64,
    /// Whether the losses are taken after the layer's bias and fused Relu or Clip.
    pub through_activation: bool,
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
/// quantized model's input columns x̃ [P, K] and the float model's outputs [P, M]: W·x, or
/// f(W·x + b) through the layer's activation.
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
    /// The layer's bias (this problem's rows) and the clamp fused into it: where given, the
    /// targets are f(W·x + b) and the outputs compared f(W̃·x̃ + b).
    pub activation: Option<Activation>,
}

impl Problem {
    /// W̃ for roundings `h` (one per weight, in [0, 1]), and whether each lies inside the grid.
    fn soft_weight(&self, h: &[f64]) -> (Vec<f32>, Vec<bool>) {
        (0..h.len())
            .into_par_iter()
            .with_min_len(RUN)
            .map(|e| self.on_grid(e, h[e]))
            .unzip()
    }

    /// Weight `e` rounded down (h = 0) or up (h = 1) or between, on its grid, and whether its
    /// code lies inside the grid.
    fn on_grid(&self, e: usize, h: f64) -> (f32, bool) {
        let code = (self.w[e] / self.scale[e]).floor() + h as f32 + self.zero[e];
        let inside = code > self.qmin && code < self.qmax;
        (
            (code.clamp(self.qmin, self.qmax) - self.zero[e]) * self.scale[e],
            inside,
        )
    }

    fn positions(&self) -> usize {
        self.inputs.len() / self.cols.max(1)
    }

    /// ‖W̃x̃ − Wx‖² per position, over all positions.
    fn loss(&self, w: &[f32]) -> candle_core::Result<f64> {
        self.loss_on(w, 0..self.positions())
    }

    /// ‖W̃x̃ − Wx‖² per position, over the positions in `span`.
    fn loss_on(&self, w: &[f32], span: Range<usize>) -> candle_core::Result<f64> {
        let p = span.len();
        let (x, t) = self.span(span);
        let x = Tensor::from_slice(x, (p, self.cols), &Device::Cpu)?;
        let t = Tensor::from_slice(t, (p, self.rows), &Device::Cpu)?;
        let wt = Tensor::from_slice(w, (self.rows, self.cols), &Device::Cpu)?;
        let e = output_errors(x.matmul(&wt.t()?)?, &t, self.activation.as_ref(), false)?;
        Ok(f64::from(e.sqr()?.sum_all()?.to_scalar::<f32>()?) / p.max(1) as f64)
    }

    /// The inputs and targets of the positions in `span`.
    fn span(&self, span: Range<usize>) -> (&[f32], &[f32]) {
        (
            &self.inputs[span.start * self.cols..span.end * self.cols],
            &self.targets[span.start * self.rows..span.end * self.rows],
        )
    }
}

/// The error of product `y` = x̃·W̃ᵀ in row `m` against its target `t`: y − t, or through the
/// layer's activation f(y + b) − t, times f'(y + b) where `chain` (the gradient's factor: 0
/// where the clamp cuts the output off, 1 between its bounds).
fn output_error(a: Option<&Activation>, y: f64, t: f64, m: usize, chain: bool) -> f64 {
    let Some(a) = a else {
        return y - t;
    };
    let z = y + f64::from(a.bias[m]);
    let (lo, hi) = (f64::from(a.lo), f64::from(a.hi));
    if chain && !(z > lo && z < hi) {
        0.0
    } else {
        z.clamp(lo, hi) - t
    }
}

/// The errors of products `y` [positions, rows] against targets `t` ([`output_error`]).
fn output_errors(
    y: Tensor,
    t: &Tensor,
    a: Option<&Activation>,
    chain: bool,
) -> candle_core::Result<Tensor> {
    let Some(a) = a else {
        return y.sub(t);
    };
    let rows = a.bias.len();
    let (yv, tv) = (
        y.flatten_all()?.to_vec1::<f32>()?,
        t.flatten_all()?.to_vec1::<f32>()?,
    );
    let e: Vec<f32> = (yv.iter().zip(&tv).enumerate())
        .map(|(e, (&y, &t))| output_error(Some(a), y.into(), t.into(), e % rows, chain) as f32)
        .collect();
    Tensor::from_vec(e, y.dims(), &Device::Cpu)
}

/// The learned rounding of one problem.
#[derive(Debug)]
pub struct Fit {
    /// The hard-rounded W̃.
    pub weight: Vec<f32>,
    /// Weights rounded the other way than to nearest.
    pub flipped: usize,
    /// Undecided weights [`settle`] rounded the other way than h ≥ ½.
    pub settled: usize,
    pub loss_nearest: f64,
    pub loss_learned: f64,
}

/// The learned rounding of `p`. Where it reconstructs the columns worse than rounding to
/// nearest (a small layer, too few steps), nearest is kept.
pub fn optimize(p: &Problem, opts: &Options) -> candle_core::Result<Fit> {
    let n = p.w.len();
    let positions = p.positions();
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
        let grad_w = reconstruction_gradient(xb, tb, &w, p)?;
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
    let soft: Vec<f64> = vars.iter().map(|x| rectified_sigmoid(x[0])).collect();
    let halfway: Vec<f64> = soft
        .iter()
        .map(|&h| f64::from(u8::from(h >= 0.5)))
        .collect();
    let hard = if opts.settle {
        settled(p, &soft, &halfway)?
    } else {
        halfway.clone()
    };
    let settled = hard.iter().zip(&halfway).filter(|(a, b)| a != b).count();
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
        return Ok(Fit {
            weight: rounded,
            flipped: 0,
            settled: 0,
            loss_nearest,
            loss_learned: loss_nearest,
        });
    }
    Ok(Fit {
        weight: learned,
        flipped,
        settled,
        loss_nearest,
        loss_learned,
    })
}

/// `hard` with its undecided weights settled ([`settle`]) on all columns, where settling them
/// on the first half of the columns lowers the error on the second half; else `hard` itself.
/// The columns come in sample order, so the halves are mostly different samples: a layer
/// whose columns are too few for its inputs fits the first half's noise, and is refused.
fn settled(p: &Problem, soft: &[f64], hard: &[f64]) -> candle_core::Result<Vec<f64>> {
    let positions = p.positions();
    let half = positions / 2;
    if half == 0 || !soft.iter().any(|&h| undecided(h)) {
        return Ok(hard.to_vec());
    }
    let trial = settle(p, soft, hard, 0..half)?;
    let (before, _) = p.soft_weight(hard);
    let (after, _) = p.soft_weight(&trial);
    if p.loss_on(&after, half..positions)? < p.loss_on(&before, half..positions)? {
        settle(p, soft, hard, 0..positions)
    } else {
        Ok(hard.to_vec())
    }
}

/// Rounds `p`'s undecided weights (0 < h < 1 in `soft`; `hard` holds the rounding so far, 0 or
/// 1 per weight) to whichever side gives the smaller error on the positions in `span`
/// (‖W̃x̃ − Wx‖², or through the layer's activation ‖f(W̃x̃ + b) − t‖²): row by row, each
/// undecided weight is turned over where that lowers its row's error, pass after pass until no
/// turn does. Without an activation, flipping weight j of a row by d changes the error by
/// 2d·x_jᵀr + d²·‖x_j‖², with r the row's residual over the positions, which is what is kept.
/// Through a clamp the change is not quadratic in d: the row's products W̃x̃ are kept, and each
/// turn's error is taken anew at every position.
fn settle(
    p: &Problem,
    soft: &[f64],
    hard: &[f64],
    span: Range<usize>,
) -> candle_core::Result<Vec<f64>> {
    let (k, n) = (p.cols, span.len());
    let (x, t) = p.span(span);
    let (w, _) = p.soft_weight(hard);
    let act = p.activation.as_ref();
    // Per row, transposed so that a row's values and an input's column are each one slice: the
    // residuals x̃W̃ᵀ − Wx, or with an activation the products x̃W̃ᵀ and their targets.
    let transposed = |m: Tensor| m.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>();
    let xs = Tensor::from_slice(x, (n, k), &Device::Cpu)?;
    let y = xs.matmul(&Tensor::from_slice(&w, (p.rows, k), &Device::Cpu)?.t()?)?;
    let t = Tensor::from_slice(t, (n, p.rows), &Device::Cpu)?;
    let (r, targets) = match act {
        None => (transposed(y.sub(&t)?)?, Vec::new()),
        Some(_) => (transposed(y)?, transposed(t)?),
    };
    let columns = xs.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let norms: Vec<f64> = (columns.chunks(n.max(1)))
        .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum())
        .collect();
    let mut hard = hard.to_vec();
    hard.par_chunks_mut(k).enumerate().for_each(|(row, bits)| {
        let open: Vec<usize> = (0..k).filter(|&j| undecided(soft[row * k + j])).collect();
        if open.is_empty() {
            return;
        }
        let mut residual: Vec<f64> = r[row * n..(row + 1) * n]
            .iter()
            .map(|&v| v.into())
            .collect();
        let targets = targets.get(row * n..(row + 1) * n).unwrap_or_default();
        // The change of the row's error if `residual` (the products, with an activation) moved
        // by d·x.
        let change = |residual: &[f64], x: &[f32], d: f64, norm: f64| -> f64 {
            if act.is_none() {
                let dot: f64 = x.iter().zip(residual).map(|(&x, r)| f64::from(x) * r).sum();
                return 2.0 * d * dot + d * d * norm;
            }
            (residual.iter().zip(x).zip(targets))
                .map(|((&y, &x), &t)| {
                    let before = output_error(act, y, t.into(), row, false);
                    let after = output_error(act, y + d * f64::from(x), t.into(), row, false);
                    after * after - before * before
                })
                .sum()
        };
        let mut weight: Vec<f64> = w[row * k..(row + 1) * k]
            .iter()
            .map(|&v| v.into())
            .collect();
        for _ in 0..SETTLE_PASSES {
            let mut turned = false;
            for &j in &open {
                let e = row * k + j;
                let other = f64::from(p.on_grid(e, 1.0 - bits[j]).0);
                let d = other - weight[j];
                let xj = &columns[j * n..(j + 1) * n];
                if d != 0.0 && change(&residual, xj, d, norms[j]) < 0.0 {
                    for (r, &x) in residual.iter_mut().zip(xj) {
                        *r += d * f64::from(x);
                    }
                    weight[j] = other;
                    bits[j] = 1.0 - bits[j];
                    turned = true;
                }
            }
            if !turned {
                break;
            }
        }
    });
    Ok(hard)
}

/// Whether rounding h is still undecided: strictly between down (0) and up (1).
fn undecided(h: f64) -> bool {
    h > 0.0 && h < 1.0
}

/// Passes over a row's undecided weights at most; each pass only lowers the error, so this is
/// a bound on the time, rarely reached.
const SETTLE_PASSES: usize = 32;

/// Problems up to this many multiply-adds a step are done in plain loops.
const SMALL: usize = 1 << 15;

/// Element-wise work is split among threads in runs of at least this many weights.
const RUN: usize = 4096;

/// d/dW̃ of the reconstruction loss of `p` averaged over the batch's positions x̃ with
/// targets t: 2·(x̃W̃ᵀ − t)ᵀ·x̃ / B, through the layer's activation where it has one.
fn reconstruction_gradient(
    x: &[f32],
    t: &[f32],
    w: &[f32],
    p: &Problem,
) -> candle_core::Result<Vec<f64>> {
    let b = x.len() / p.cols.max(1);
    if p.rows * p.cols * b <= SMALL {
        // A depthwise filter's problem: candle's per-call cost would be most of the time.
        return Ok(gradient_in_loops(x, t, w, p));
    }
    gradient_by_products(x, t, w, p)
}

/// [`reconstruction_gradient`] in plain loops.
fn gradient_in_loops(x: &[f32], t: &[f32], w: &[f32], p: &Problem) -> Vec<f64> {
    let (rows, cols) = (p.rows, p.cols);
    let b = x.len() / cols.max(1);
    let mut g = vec![0f64; rows * cols];
    for q in 0..b {
        let xq = &x[q * cols..(q + 1) * cols];
        for m in 0..rows {
            let wm = &w[m * cols..(m + 1) * cols];
            let y: f64 = wm.iter().zip(xq).map(|(a, b)| f64::from(a * b)).sum();
            let t = f64::from(t[q * rows + m]);
            let e = 2.0 * output_error(p.activation.as_ref(), y, t, m, true) / b.max(1) as f64;
            for (gk, xk) in g[m * cols..(m + 1) * cols].iter_mut().zip(xq) {
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
    p: &Problem,
) -> candle_core::Result<Vec<f64>> {
    let (rows, cols) = (p.rows, p.cols);
    let b = x.len() / cols.max(1);
    let xt = Tensor::from_slice(x, (b, cols), &Device::Cpu)?;
    let tt = Tensor::from_slice(t, (b, rows), &Device::Cpu)?;
    let wt = Tensor::from_slice(w, (rows, cols), &Device::Cpu)?;
    let e = output_errors(xt.matmul(&wt.t()?)?, &tt, p.activation.as_ref(), true)?;
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

/// AdaRounds every eligible layer of `graph` ([`reconstruction::layers`]) on `data` (one batch
/// of the model's smallest batch size per sample), layer after layer ([`reconstruction::walk`]),
/// and replaces each layer's weight in `graph` by its learned rounding. `params` stay as they
/// are: the learned weights lie on their grids. `on_layer(done, total, rounded)` is called as
/// each layer's rounding is learned.
pub fn adaround(
    graph: &mut Graph,
    plan: &Plan,
    params: &Params,
    data: Dataset,
    opts: &Options,
    on_layer: &(dyn Fn(usize, usize, &Rounded) + Sync),
) -> Result<Vec<Rounded>> {
    let layers = reconstruction::layers(graph, plan, params);
    let inputs = Inputs {
        quantized: opts.quantized_inputs,
        max_columns: opts.max_columns,
    };
    let learned = reconstruction::walk(
        graph,
        &layers,
        params,
        data,
        inputs,
        &mut |layer, parts| {
            let (weight, rounded) = fit(layer, parts, opts)?;
            Ok((vec![weight.clone()], (weight, rounded)))
        },
        &mut |done, total, (_, rounded)| on_layer(done, total, rounded),
    )?;
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

/// Learns the rounding of every group of `layer` on the samples' columns.
fn fit(layer: &Layer, parts: Vec<Part>, opts: &Options) -> Result<(RawTensor, Rounded)> {
    let (_, rows, k) = matrix_dims(layer);
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
        settled: 0,
        loss_nearest: 0.0,
        loss_learned: 0.0,
        through_activation: false,
    };
    let err = |e: candle_core::Error| {
        let e = zeropoint_engine::error::candle_message(e);
        Error::Environment(format!("{}: {e}", layer.node.label()))
    };
    let columns = group_columns(layer, parts, &w).map_err(err)?;
    let activation = layer
        .activation
        .as_ref()
        .filter(|_| opts.through_activation);
    rounded.through_activation = activation.is_some();
    for (g, columns) in columns.into_iter().enumerate() {
        let Columns {
            inputs,
            mut targets,
        } = columns;
        let at = |e: usize| weight_index(layer, g, e / k, e % k);
        // This group's rows of the activation, and the float outputs through it.
        let activation = activation.map(|a| Activation {
            bias: a.bias[g * rows..(g + 1) * rows].to_vec(),
            ..*a
        });
        if let Some(a) = &activation {
            for (e, t) in targets.iter_mut().enumerate() {
                *t = (*t + a.bias[e % rows]).clamp(a.lo, a.hi);
            }
        }
        let problem = Problem {
            rows,
            cols: k,
            scale: (0..rows * k).map(|e| qp.scale[index(at(e))]).collect(),
            zero: (0..rows * k)
                .map(|e| qp.zero_point[index(at(e))] as f32)
                .collect(),
            w: group_matrix(layer, &w, g),
            qmin: qp.grid.qmin as f32,
            qmax: qp.grid.qmax as f32,
            inputs,
            targets,
            activation,
        };
        let fit = optimize(&problem, opts).map_err(err)?;
        for (e, v) in fit.weight.into_iter().enumerate() {
            learned[at(e)] = v;
        }
        rounded.flipped += fit.flipped;
        rounded.settled += fit.settled;
        rounded.loss_nearest += fit.loss_nearest;
        rounded.loss_learned += fit.loss_learned;
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
            activation: None,
        }
    }

    /// [`problem`] with a Relu6 fused into it: a bias that puts about a third of the outputs
    /// below 0 and a few above 6 (at three times the products' scale), and the targets through it.
    fn clamped(seed: u64) -> Problem {
        let mut p = problem(seed);
        let bias: Vec<f32> = (0..p.rows).map(|m| m as f32 * 0.4 - 0.5).collect();
        let scaled: Vec<f32> = p.targets.iter().map(|t| 3.0 * t).collect();
        p.w.iter_mut().for_each(|w| *w *= 3.0);
        p.scale.iter_mut().for_each(|s| *s *= 3.0);
        p.targets = (scaled.iter().enumerate())
            .map(|(e, t)| (t + bias[e % p.rows]).clamp(0.0, 6.0))
            .collect();
        p.activation = Some(Activation {
            bias,
            lo: 0.0,
            hi: 6.0,
        });
        p
    }

    /// The written-out gradient of the reconstruction loss against central finite differences,
    /// for a layer without an activation and for one with a Relu6 fused into it.
    #[test]
    fn reconstruction_gradient_matches_finite_differences() {
        for p in [problem(3), clamped(3)] {
            if let Some(a) = &p.activation {
                let mut z = Vec::new();
                for x in p.inputs.chunks(p.cols) {
                    for (m, wm) in p.w.chunks(p.cols).enumerate() {
                        z.push(wm.iter().zip(x).map(|(w, x)| w * x).sum::<f32>() + a.bias[m]);
                    }
                }
                let below = z.iter().filter(|&&z| z <= a.lo).count();
                let above = z.iter().filter(|&&z| z >= a.hi).count();
                assert!(
                    below * 5 > z.len() && above > 0,
                    "{below} and {above} of {} cut off",
                    z.len()
                );
            }
            let w: Vec<f32> = p.w.iter().map(|w| w + 0.01).collect();
            let loss = |w: &[f32]| p.loss(w).unwrap();
            let g = gradient_in_loops(&p.inputs, &p.targets, &w, &p);
            let products = gradient_by_products(&p.inputs, &p.targets, &w, &p).unwrap();
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
    }

    /// Settling turns only the undecided weights, never raises the error, and stops where no
    /// single undecided weight turned alone would lower it (checked through `loss`, candle's
    /// products, not the residuals `settle` keeps), without an activation and through a Relu6.
    #[test]
    fn settling_turns_undecided_weights_until_no_turn_helps() {
        for (seed, p) in (1..4).flat_map(|seed| [(seed, problem(seed)), (seed, clamped(seed))]) {
            // Every third weight decided (0 or 1), the others anywhere between.
            let soft: Vec<f64> = (0..p.w.len())
                .map(|e| match e % 3 {
                    0 => (e % 2) as f64,
                    _ => ((e * 37 + seed as usize) % 97) as f64 / 97.0 * 0.98 + 0.01,
                })
                .collect();
            let halfway: Vec<f64> = soft
                .iter()
                .map(|&h| f64::from(u8::from(h >= 0.5)))
                .collect();
            let hard = settle(&p, &soft, &halfway, 0..p.positions()).unwrap();
            let loss = |h: &[f64]| p.loss(&p.soft_weight(h).0).unwrap();
            let settled = loss(&hard);
            assert!(settled <= loss(&halfway), "seed {seed}");
            let mut turned = 0;
            for e in 0..p.w.len() {
                if e % 3 == 0 {
                    assert_eq!(
                        hard[e], halfway[e],
                        "seed {seed}: decided weight {e} turned"
                    );
                    continue;
                }
                turned += usize::from(hard[e] != halfway[e]);
                let mut other = hard.clone();
                other[e] = 1.0 - other[e];
                assert!(
                    loss(&other) >= settled * (1.0 - 1e-5),
                    "seed {seed}: turning {e} lowers the error: {} < {settled}",
                    loss(&other)
                );
            }
            assert!(turned > 0, "seed {seed}: nothing settled");
        }
    }

    /// One weight halfway between two grid points, undecided: the first half of the columns
    /// wants it rounded down, the second half decides whether that holds.
    #[test]
    fn settling_is_kept_only_where_the_held_out_half_agrees() {
        let problem = |second: f32| Problem {
            rows: 1,
            cols: 1,
            w: vec![0.5],
            scale: vec![1.0],
            zero: vec![0.0],
            qmin: -8.0,
            qmax: 7.0,
            inputs: vec![1.0; 4],
            targets: vec![0.0, 0.0, second, second],
            activation: None,
        };
        let (soft, up) = (vec![0.5], vec![1.0]);
        assert_eq!(settled(&problem(0.0), &soft, &up).unwrap(), vec![0.0]);
        assert_eq!(settled(&problem(1.0), &soft, &up).unwrap(), vec![1.0]);
        // A decided weight is left alone whatever the columns say.
        assert_eq!(settled(&problem(0.0), &[1.0], &up).unwrap(), vec![1.0]);
    }

    /// Learned rounding reconstructs the layer at least as well as rounding to nearest (better
    /// on most problems), and every learned weight is on the grid, one step from W/s at most:
    /// on plain layers and on layers with a Relu6.
    #[test]
    fn learned_rounding_beats_nearest_on_its_problem() {
        for problem in [problem, clamped] {
            learned_rounding_beats_nearest_on(problem);
        }
    }

    fn learned_rounding_beats_nearest_on(problem: fn(u64) -> Problem) {
        let mut better = 0;
        for seed in 1..6 {
            let p = problem(seed);
            let opts = Options {
                iterations: 1000,
                batch: 64,
                ..Options::default()
            };
            let Fit {
                weight: w,
                loss_nearest: nearest,
                loss_learned: learned,
                ..
            } = optimize(&p, &opts).unwrap();
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
