//! Weight ranges fitted to each layer's output (`--weight-range output`): per layer, in graph
//! order, the range clipped to α · its min-max range that rounds to nearest with the least
//!
//! ```text
//! ‖Ŵ(α)·x̃ − W·x‖²   (summed over output channels and positions)
//! ```
//!
//! x is the layer's input in the float model, x̃ in the simulated quantized model with every
//! earlier layer already on its fitted grid: AdaRound's reconstruction loss
//! ([`crate::adaround`]) with rounding to nearest, searched over the range instead of learned
//! over the rounding. A per-tensor grid takes one α for the layer; a per-channel grid one per
//! output channel, each channel's loss its own. Grids of other shapes (blocks along the input,
//! channels along it) keep the estimator's range.
//!
//! Why not the weight MSE: it weighs every weight alike, where the output weighs each by its
//! input. On the shared CNNs at 4 bits it clipped too much or too little for the output: with
//! float activations and per-channel int4 weights, A3 reads 20.6 dB with MSE ranges and 25.3
//! with ranges fitted this way, A5 20.6 and 29.9 (docs/algorithms.md has the measured table).
//!
//! α goes from 1 (min-max) down to [`LOWEST`] in steps of [`COARSE`], then by steps of
//! [`FINE`] around each unit's best; ties keep the wider range.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use zeropoint_core::observer::{estimate_values, Config, Method};
use zeropoint_core::{fake_quant, Granularity, Layout, QParams};
use zeropoint_graph::Graph;
use zeropoint_onnx::RawTensor;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::params::Params;
use crate::placement::Plan;
use crate::reconstruction::{
    self, group_columns, group_matrix, matrix_dims, weight_index, Columns, Inputs, Layer, Part,
};

/// The smallest fraction of the min-max range tried.
pub const LOWEST: f64 = 0.3;
/// The coarse search's step in α.
pub const COARSE: f64 = 0.05;
/// The fine search's step, up to a coarse step either side of the coarse best.
pub const FINE: f64 = 0.01;

/// Output columns per layer the search is fitted on, by default: fewer than AdaRound keeps,
/// because each of the ~25 candidate ranges costs a pass over them.
pub const MAX_COLUMNS: usize = 2048;

/// The range one layer's weight was given.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FittedRange {
    pub layer: String,
    pub weight: String,
    /// α per range (one per tensor, or per output channel): the fraction of min-max kept.
    pub alpha: Vec<f32>,
    /// ‖Ŵx̃ − Wx‖² per position with min-max ranges and with the fitted ones.
    pub loss_minmax: f64,
    pub loss_fitted: f64,
    #[serde(skip)]
    pub qparams: QParams,
}

/// Fits the range of every eligible layer's weight ([`reconstruction::layers`]) on `data`, in
/// graph order, and writes the fitted parameters into `params` (their biases are not redone:
/// [`crate::params::params_reusing_weights`] does that). `on_layer(done, total, fitted)` is
/// called as each layer is fitted.
pub fn fit_ranges(
    graph: &Graph,
    plan: &Plan,
    params: &mut Params,
    data: Dataset,
    inputs: Inputs,
    on_layer: &mut dyn FnMut(usize, usize, &FittedRange),
) -> Result<Vec<FittedRange>> {
    let layers = reconstruction::layers(graph, plan, params);
    let biases: HashMap<&str, Bias> = (layers.iter())
        .filter_map(|l| Some((l.weight.name.as_str(), bias_of(graph, plan, params, l)?)))
        .collect();
    let fitted = reconstruction::walk(
        graph,
        &layers,
        params,
        data,
        inputs,
        &mut |layer, parts| fit(layer, biases.get(layer.weight.name.as_str()), parts),
        on_layer,
    )?;
    for f in &fitted {
        if let Some(w) = params.weights.iter_mut().find(|w| w.name == f.weight) {
            w.qparams = f.qparams.clone();
        }
    }
    Ok(fitted)
}

/// A layer's bias as the quantized model holds it: int32 codes at the scale of its input's grid
/// times the weight's.
struct Bias {
    name: String,
    values: Vec<f32>,
    shape: Vec<usize>,
    input: QParams,
}

/// The planned int32 bias of `layer`, if it has one (not with float activations).
fn bias_of(graph: &Graph, plan: &Plan, params: &Params, layer: &Layer) -> Option<Bias> {
    let site = plan.biases.iter().find(|b| b.weight == layer.weight.name)?;
    let t = graph.find_initializer(&site.name)?;
    Some(Bias {
        name: site.name.clone(),
        values: t.to_f32s(),
        shape: t.shape.clone(),
        input: params.activation(&site.input)?.qparams.clone(),
    })
}

/// The fitted range of `layer` on the samples' columns, and the layer's weight rounded to
/// nearest on it (with its int32 bias at the new scale) for the simulation to go on with.
fn fit(
    layer: &Layer,
    bias: Option<&Bias>,
    parts: Vec<Part>,
) -> Result<(Vec<RawTensor>, FittedRange)> {
    let err = |e: String| Error::Environment(format!("{}: {e}", layer.node.label()));
    let candle = |e: candle_core::Error| err(zeropoint_engine::error::candle_message(e));
    let (_, rows, k) = matrix_dims(layer);
    let w = layer.weight.to_f32s();
    let shape = &layer.weight.shape;
    let kept = |qparams: QParams, alpha: Vec<f32>, loss: f64| FittedRange {
        layer: layer.node.name.clone(),
        weight: layer.weight.name.clone(),
        alpha,
        loss_minmax: loss,
        loss_fitted: loss,
        qparams,
    };
    let Some(units) = units_of_rows(layer) else {
        // Not one range per row: the estimator's range stays.
        let rounded = fake_quant(&w, shape, &layer.qparams).map_err(|e| err(e.to_string()))?;
        let t = RawTensor::from_f32s(&layer.weight.name, shape, &rounded);
        return Ok((vec![t], kept(layer.qparams.clone(), Vec::new(), f64::NAN)));
    };
    let minmax = estimate_values(&w, shape, &layer.scheme, Config::new(Method::MinMax))
        .map_err(|e| err(e.to_string()))?;
    let problems = groups_of(layer, parts, &w).map_err(candle)?;
    let positions = problems.first().map_or(1, |g| g.inputs.dims()[0]).max(1) as f64;
    // Each unit's loss (a unit is one range) with each unit's α.
    let loss = |alpha: &[f64]| -> Result<(Vec<f64>, Vec<f32>, QParams)> {
        let ranges: Vec<(f32, f32)> = (minmax.iter().zip(alpha))
            .map(|(&(lo, hi), &a)| (lo * a as f32, hi * a as f32))
            .collect();
        let qp = QParams::from_ranges(&layer.scheme, &ranges).map_err(|e| err(e.to_string()))?;
        let wq = fake_quant(&w, shape, &qp).map_err(|e| err(e.to_string()))?;
        let mut per_unit = vec![0f64; minmax.len()];
        for (g, problem) in problems.iter().enumerate() {
            let wg = group_matrix(layer, &wq, g);
            let row_losses = row_losses(problem, &wg, rows, k).map_err(candle)?;
            for (m, l) in row_losses.into_iter().enumerate() {
                per_unit[units[g * rows + m]] += f64::from(l) / positions;
            }
        }
        Ok((per_unit, wq, qp))
    };
    let (best_alpha, loss_minmax) = search(minmax.len(), &mut |alpha| Ok(loss(alpha)?.0))?;
    let (losses, mut wq, mut qp) = loss(&best_alpha)?;
    let mut initializers = Vec::new();
    if let Some(b) = bias {
        let before = qp.scale.clone();
        if let Some(codes) = crate::params::layer_bias(&b.name, &b.values, &mut qp, &b.input) {
            initializers.push(RawTensor::from_f32s(
                &b.name,
                &b.shape,
                &codes.dequantized(),
            ));
        }
        // A bias too large for int32 at the fitted scale raised it, as the export will.
        if qp.scale != before {
            wq = fake_quant(&w, shape, &qp).map_err(|e| err(e.to_string()))?;
        }
    }
    initializers.insert(0, RawTensor::from_f32s(&layer.weight.name, shape, &wq));
    let mut fitted = kept(qp, best_alpha.iter().map(|&a| a as f32).collect(), 0.0);
    fitted.loss_minmax = loss_minmax;
    fitted.loss_fitted = losses.iter().sum();
    Ok((initializers, fitted))
}

/// The α of each of `n` ranges with the least `loss` (one loss per range, for one α per range):
/// 1, then down by [`COARSE`] to [`LOWEST`] for all ranges at once, then by [`FINE`] around each
/// range's best. Also the total loss at α = 1 (min-max).
fn search(n: usize, loss: &mut dyn FnMut(&[f64]) -> Result<Vec<f64>>) -> Result<(Vec<f64>, f64)> {
    let mut best_alpha = vec![1.0; n];
    let mut best = loss(&best_alpha)?;
    let loss_minmax = best.iter().sum();
    let coarse = (1..).map(|i| 1.0 - COARSE * f64::from(i));
    for a in coarse.take_while(|a| *a >= LOWEST - 1e-9) {
        let tried = vec![a; n];
        improve(&mut best, &mut best_alpha, &tried, &loss(&tried)?);
    }
    let centre = best_alpha.clone();
    let steps = (COARSE / FINE).round() as i32;
    for d in (-steps + 1..steps).filter(|d| *d != 0) {
        let tried: Vec<f64> = (centre.iter())
            .map(|c| (c + FINE * f64::from(d)).clamp(LOWEST, 1.0))
            .collect();
        improve(&mut best, &mut best_alpha, &tried, &loss(&tried)?);
    }
    Ok((best_alpha, loss_minmax))
}

/// Takes each unit's tried α where its loss is lower than the best so far.
fn improve(best: &mut [f64], best_alpha: &mut [f64], tried: &[f64], losses: &[f64]) {
    for u in 0..best.len() {
        if losses[u] < best[u] {
            best[u] = losses[u];
            best_alpha[u] = tried[u];
        }
    }
}

/// The range (parameter index) each row of each group uses, in group-major order; None where a
/// row's weights use several (blocks along the input, channels along it).
fn units_of_rows(layer: &Layer) -> Option<Vec<usize>> {
    let (groups, rows, k) = matrix_dims(layer);
    if layer.qparams.granularity == Granularity::PerTensor {
        return Some(vec![0; groups * rows]);
    }
    let layout = Layout::new(&layer.weight.shape, layer.qparams.granularity).ok()?;
    let mut units = Vec::with_capacity(groups * rows);
    for g in 0..groups {
        for m in 0..rows {
            let unit = layout.param_index(weight_index(layer, g, m, 0));
            let same = (1..k).all(|c| layout.param_index(weight_index(layer, g, m, c)) == unit);
            if !same {
                return None;
            }
            units.push(unit);
        }
    }
    Some(units)
}

/// One group's search problem as matrices: x̃ [P, K] and W·x [P, rows].
struct Group {
    inputs: Tensor,
    targets: Tensor,
}

/// Every group's [`Columns`] as matrices.
fn groups_of(layer: &Layer, parts: Vec<Part>, w: &[f32]) -> candle_core::Result<Vec<Group>> {
    let (_, rows, k) = matrix_dims(layer);
    (group_columns(layer, parts, w)?.into_iter())
        .map(|Columns { inputs, targets }| {
            let p = inputs.len() / k.max(1);
            Ok(Group {
                inputs: Tensor::from_vec(inputs, (p, k), &Device::Cpu)?,
                targets: Tensor::from_vec(targets, (p, rows), &Device::Cpu)?,
            })
        })
        .collect()
}

/// Σ over positions of (x̃·ŵ_m − t_m)², per row m of the group's weight `wg` [rows, k].
fn row_losses(g: &Group, wg: &[f32], rows: usize, k: usize) -> candle_core::Result<Vec<f32>> {
    let wt = Tensor::from_slice(wg, (rows, k), &Device::Cpu)?;
    let e = g.inputs.matmul(&wt.t()?)?.sub(&g.targets)?;
    e.sqr()?.sum(0)?.to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each range finds its own minimum to the fine step, within [LOWEST, 1]; a flat loss
    /// keeps min-max.
    #[test]
    fn search_finds_each_ranges_minimum_and_keeps_min_max_on_ties() {
        let targets = [0.63, 0.97, 1.0, 0.2, 0.5];
        let mut calls = 0;
        let mut loss = |alpha: &[f64]| -> Result<Vec<f64>> {
            calls += 1;
            Ok((alpha.iter().zip(&targets))
                .map(|(a, t)| if *t == 0.5 { 1.0 } else { (a - t) * (a - t) })
                .collect())
        };
        let (alpha, at_one) = search(targets.len(), &mut loss).unwrap();
        for (got, want) in alpha.iter().zip([0.63, 0.97, 1.0, LOWEST, 1.0]) {
            assert!((got - want).abs() < 1e-9, "{alpha:?}");
        }
        let want_at_one = 0.37f64.powi(2) + 0.03f64.powi(2) + 0.8f64.powi(2) + 1.0;
        assert!((at_one - want_at_one).abs() < 1e-12);
        // Min-max, 14 coarse steps (0.95 .. 0.30) and 8 fine ones (±0.01 .. ±0.04).
        assert_eq!(calls, 23);
    }
}
