//! Bias correction (Nagel et al. 2019, arXiv 1906.04721, §4.2; white paper §4.2), empirical and
//! analytic.
//!
//! Quantized weights and inputs shift the mean of a layer's output: E[ỹ] − E[y] = E[W̃x̃] −
//! E[Wx] ≠ 0 per output channel, and ReLUs downstream turn that shift into error that no range
//! choice removes. Empirical bias correction measures the shift on calibration data and
//! subtracts it from the layer's bias.
//!
//! The layers are corrected in graph order, each measured with the layers before it already
//! quantized *and corrected*: every sample's float and simulated runs are stepped to the layer
//! together ([`crate::paused_runs`]), the layer's output is computed in both (before its own
//! quantizer), the mean error over all samples is taken per channel and subtracted from the
//! bias the simulation goes on with, so that every later layer sees the corrected output, as
//! the exported model computes it. Between layers the samples' activations wait on disk: the
//! sample count (`--bias-correction-samples`) does not bound the memory.
//!
//! Analytic bias correction runs no model: where a layer's input is a folded BatchNorm's output
//! (pre-activation ≈ N(β, γ²) per channel), directly or through a ReLU, E[x] is known —
//! β, or γ·φ(−β/γ) + β·Φ(β/γ) after the ReLU (the mean of a rectified Gaussian) — and the shift
//! the quantized weights cause is (W̃ − W)·E[x], summed over each filter's taps. It sees only the
//! weights' error, not the input's, and ignores zero padding. Beyond the paper, a layer that
//! reads the model's input (directly or through a Transpose) takes E[x] from the calibration
//! data's mean per channel, a pass over the data alone: the first layer has no BatchNorm before
//! it, and where the input is not centred its shift is the largest (the CIFAR-10 CNN, fed
//! pixels in 0..255 at int4 weights: up to 9.2 in the first Conv's output, against at most
//! 0.8 in any other layer's). With measured means (`--bias-correction analytic-means`), every
//! layer whose E[x] no BatchNorm gives (the first, one after a max pool or an Add, a dense layer
//! after a flatten) takes the float model's mean per channel on the calibration data, all from
//! one float pass.

use std::collections::{HashMap, HashSet};

use zeropoint_core::{fake_quant, Granularity, Layout};
use zeropoint_engine::exec::HookError;
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::canonicalize::BatchNormStats;
use zeropoint_graph::pattern::matmul_bias_add;
use zeropoint_graph::{Graph, Op};
use zeropoint_onnx::{DType, RawTensor};

use crate::channel_stats::ChannelStats;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::params::Params;
use crate::paused_runs::PausedRuns;
use crate::placement::Plan;
use crate::simulate::Simulation;

/// The correction of one layer's bias.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Correction {
    pub layer: String,
    pub bias: String,
    /// The largest |mean error| over the output channels, subtracted from the bias.
    pub max_shift: f64,
    /// Mean |mean error| over the output channels.
    pub mean_shift: f64,
}

/// Measures every quantized layer's mean output error per channel on `data` (one batch of the
/// model's smallest batch size per sample; float against simulated with `params`), in graph
/// order with earlier corrections applied, and subtracts it from the layer's bias in `graph`.
/// The caller recomputes the parameters (the int32 biases) from the corrected graph.
pub fn correct_biases(
    graph: &mut Graph,
    plan: &Plan,
    params: &Params,
    data: Dataset,
) -> Result<Vec<Correction>> {
    let layers = biased_layers(graph, plan);
    let mut shifts = Vec::new();
    {
        let float = Executor::new(graph)?;
        let mut sim = Simulation::sharing(graph, params, float.initializer_values())?;
        let mut runs = PausedRuns::start(&float, &sim, data)?;
        for (index, node) in graph.nodes.iter().enumerate() {
            let Some(layer) = layers.get(&node.outputs[0]) else {
                continue;
            };
            let bias = &layer.bias;
            // Each sample's error at the layer's output, before its quantizer.
            let parts = runs.step(&float, &sim, index, |f, q| {
                let (r, v) = (float.next_outputs(f)?, sim.next_outputs(q)?);
                let at = |e: HookError| Error::Environment(format!("{}: {e}", node.label()));
                channel_error_sums(&r[0], &v[0], layer.last_axis).map_err(at)
            })?;
            let mean = mean_in_order(&parts);
            // Later layers see this one's output as corrected, as the export computes it.
            let b = sim
                .initializer(bias)
                .ok_or_else(|| Error::new(&graph.source, format!("bias '{bias}' is missing")))?;
            let shape = b.shape().to_vec();
            if shape.iter().product::<usize>() == mean.len() {
                let corrected = b.with_f32s(|b| {
                    let shifted: Vec<f32> =
                        b.iter().zip(&mean).map(|(b, m)| b - *m as f32).collect();
                    RawTensor::from_f32s(bias, &shape, &shifted)
                })?;
                sim.set_weight(&corrected)?;
            }
            shifts.push((node.outputs[0].clone(), mean));
        }
    }
    apply(graph, &layers, shifts)
}

/// One sample's error at a layer: per-channel sums of (simulated − float) and the elements per
/// channel.
type Part = (Vec<f64>, f64);

/// The mean of the samples' (per-channel sums, element count), summed in sample order.
fn mean_in_order(parts: &[Part]) -> Vec<f64> {
    let mut total: Vec<f64> = Vec::new();
    let mut count = 0.0;
    for (sums, n) in parts {
        if total.is_empty() {
            total = vec![0.0; sums.len()];
        }
        total.iter_mut().zip(sums).for_each(|(t, s)| *t += s);
        count += n;
    }
    total.iter().map(|t| t / count.max(1.0)).collect()
}

/// Subtracts each layer output's shift from its layer's bias.
fn apply(
    graph: &mut Graph,
    layers: &HashMap<String, Biased>,
    shifts: Vec<(String, Vec<f64>)>,
) -> Result<Vec<Correction>> {
    let mut corrections = Vec::new();
    for (value, shift) in shifts {
        let Some(Biased { layer, bias, .. }) = layers.get(&value) else {
            continue;
        };
        let t = graph
            .initializers
            .iter_mut()
            .find(|t| &t.name == bias)
            .ok_or_else(|| Error::new(&graph.source, format!("bias '{bias}' is missing")))?;
        let old = t.to_f64s();
        if old.len() != shift.len() {
            continue;
        }
        let new: Vec<f64> = old.iter().zip(&shift).map(|(b, s)| b - s).collect();
        *t = RawTensor::from_f64s(&t.name, &t.shape, &new, t.dtype);
        let n = shift.len().max(1) as f64;
        corrections.push(Correction {
            layer: layer.clone(),
            bias: bias.clone(),
            max_shift: shift.iter().fold(0f64, |m, s| m.max(s.abs())),
            mean_shift: shift.iter().map(|s| s.abs()).sum::<f64>() / n,
        });
    }
    Ok(corrections)
}

/// A layer whose bias correction moves.
#[derive(Debug, PartialEq)]
struct Biased {
    layer: String,
    /// The bias initializer: the layer's own, or its bias Add's constant.
    bias: String,
    /// Whether the output's channels are on its last axis (a MatMul's), not axis 1.
    last_axis: bool,
}

/// Layer output → its [`Biased`], for every layer with a planned bias of its own (a bias
/// something else reads too would take the layer's correction there as well; layers that share
/// a bias get a copy each first, `placement::own_biases`), and every MatMul with a planned
/// weight and a quantized input whose output goes to a bias Add
/// ([`zeropoint_graph::pattern::matmul_bias_add`]): a linear layer applied to a sequence, as
/// exporters write it. Its bias stays a float Add after the integer MatMul, and takes the
/// correction as a Conv's or Gemm's int32 bias does.
fn biased_layers(graph: &Graph, plan: &Plan) -> HashMap<String, Biased> {
    let mut layers = HashMap::new();
    let mut insert = |n: &zeropoint_graph::Node, bias: &str, last_axis: bool| {
        let layer = n.name.clone();
        let bias = bias.to_string();
        layers.insert(
            n.outputs[0].clone(),
            Biased {
                layer,
                bias,
                last_axis,
            },
        );
    };
    let readers = graph.consumers();
    for site in &plan.biases {
        if readers.get(&site.name).is_some_and(|r| r.len() > 1) {
            continue;
        }
        if let Some(n) = graph.nodes.iter().find(|n| n.name == site.node) {
            insert(n, &site.name, false);
        }
    }
    let quantized = |v: &String| {
        plan.activations.contains(v) || plan.shared.iter().any(|(shared, _)| shared == v)
    };
    for (i, n) in graph.nodes.iter().enumerate() {
        let planned = plan.weights.iter().any(|w| w.node == n.name);
        if !planned || !n.inputs.first().is_some_and(quantized) {
            continue;
        }
        if let Some((add, input)) = matmul_bias_add(graph, &readers, i) {
            insert(n, &graph.nodes[add].inputs[input], true);
        }
    }
    layers
}

/// Analytic bias correction of every planned bias: the bias less (W̃ − W)·E[x], with E[x] per
/// channel from the folded BatchNorm whose output the layer reads, directly or through one ReLU
/// (`stats`), else from `means` measured on the data ([`data_means`], [`float_means`]).
pub fn correct_biases_analytic(
    graph: &mut Graph,
    plan: &Plan,
    params: &Params,
    stats: &[BatchNormStats],
    means: &HashMap<String, Vec<f64>>,
) -> Result<Vec<Correction>> {
    let layers = analytic_layers(graph, plan);
    let stats: HashMap<&str, &BatchNormStats> =
        stats.iter().map(|s| (s.value.as_str(), s)).collect();
    let producers = graph.producers();
    let mut shifts = Vec::new();
    for node in &graph.nodes {
        if !layers.contains_key(&node.outputs[0]) {
            continue;
        }
        let x = &node.inputs[0];
        let Some(mean) = input_mean(graph, &producers, &stats, x).or_else(|| means.get(x).cloned())
        else {
            continue;
        };
        let (Some(w), Some(wp)) = (
            graph.float_initializer(&node.inputs[1]),
            params.weight(&node.inputs[1]),
        ) else {
            continue;
        };
        let exact = w.to_f32s();
        let rounded = fake_quant(&exact, &w.shape, &wp.qparams)
            .map_err(|e| Error::new(&graph.source, format!("{}: {e}", node.label())))?;
        let trans_b = node.attribute("transB").is_some_and(|a| a.i() != 0);
        // (output axis, input axis) of W.
        let (out_axis, in_axis) = match node.op {
            Op::Gemm if !trans_b => (1, 0),
            _ => (0, 1),
        };
        if w.shape.len() < 2 || w.shape[in_axis] != mean.len() {
            continue;
        }
        let per = |axis| {
            Layout::new(&w.shape, Granularity::PerAxis { axis })
                .map_err(|e| Error::new(&graph.source, format!("{}: {e}", node.label())))
        };
        let (outputs, inputs) = (per(out_axis)?, per(in_axis)?);
        let mut shift = vec![0f64; outputs.num_params()];
        for (f, (q, x)) in rounded.iter().zip(&exact).enumerate() {
            shift[outputs.param_index(f)] +=
                (f64::from(*q) - f64::from(*x)) * mean[inputs.param_index(f)];
        }
        shifts.push((node.outputs[0].clone(), shift));
    }
    apply(graph, &layers, shifts)
}

/// The mean per channel (axis 1) of each float graph input of rank 3 or more in `data`, and of
/// each Transpose of one (its axis 1 is the input's axis `perm[1]`), over every sample and
/// position, summed in sample order. Samples of another size than the first (a dynamic input)
/// and empty ones are left out.
pub fn data_means(graph: &Graph, mut data: Dataset) -> Result<HashMap<String, Vec<f64>>> {
    // (value, the graph input it is, the input's axis that is the value's axis 1).
    let mut wanted: Vec<(String, &str, usize)> = (graph.inputs.iter())
        .map(|i| (i.name.clone(), i.name.as_str(), 1))
        .collect();
    for node in graph.nodes.iter().filter(|n| n.op == Op::Transpose) {
        let perm = node.attribute("perm").map(|a| a.ints.clone());
        let axis = perm.and_then(|p| usize::try_from(*p.get(1)?).ok());
        let input = graph.inputs.iter().find(|i| i.name == node.inputs[0]);
        if let (Some(axis), Some(input)) = (axis, input) {
            wanted.push((node.outputs[0].clone(), input.name.as_str(), axis));
        }
    }
    // Per input: the first sample's shape and the sums per index of each wanted axis.
    type Sums = (Vec<usize>, HashMap<usize, ChannelStats>);
    let mut sums: HashMap<String, Sums> = HashMap::new();
    while let Some(batch) = data.next_batch(1)? {
        for (name, v) in batch {
            let shape = v.shape().to_vec();
            if shape.len() < 3 || v.dtype != DType::F32 || shape.contains(&0) {
                continue;
            }
            let (first, per_axis) = sums.entry(name.clone()).or_insert_with(|| {
                let axes = wanted.iter().filter(|w| w.1 == name && w.2 < shape.len());
                let per_axis = axes.map(|w| (w.2, ChannelStats::new(shape[w.2]))).collect();
                (shape.clone(), per_axis)
            });
            if *first != shape {
                continue;
            }
            v.with_f32s(|x| {
                for (&axis, along) in per_axis.iter_mut() {
                    along.add(x, &shape, axis);
                }
            })
            .map_err(|e| Error::new(&graph.source, format!("input '{name}': {e}")))?;
        }
    }
    let mut means = HashMap::new();
    for (value, input, axis) in wanted {
        let Some((_, per_axis)) = sums.get(input) else {
            continue;
        };
        if let Some(along) = per_axis.get(&axis) {
            means.insert(value, along.mean());
        }
    }
    Ok(means)
}

/// The inputs of planned biased layers whose E[x] no BatchNorm (`stats`) gives: the model's
/// input, a layer after a max pool or an Add, a dense layer after a flatten.
pub fn unknown_means(graph: &Graph, plan: &Plan, stats: &[BatchNormStats]) -> HashSet<String> {
    let layers = analytic_layers(graph, plan);
    let stats: HashMap<&str, &BatchNormStats> =
        stats.iter().map(|s| (s.value.as_str(), s)).collect();
    let producers = graph.producers();
    (graph.nodes.iter())
        .filter(|n| layers.contains_key(&n.outputs[0]))
        .map(|n| &n.inputs[0])
        .filter(|x| input_mean(graph, &producers, &stats, x).is_none())
        .cloned()
        .collect()
}

/// The float model's mean per channel (axis 1) of each of `values` on `data`, over every sample
/// and position, summed in sample order: E[x] where no BatchNorm gives it. Samples whose value
/// has another channel count than the first's are left out.
pub fn float_means(
    graph: &Graph,
    values: &HashSet<String>,
    data: Dataset,
) -> Result<HashMap<String, Vec<f64>>> {
    let axes = values.iter().map(|v| (v.clone(), 1)).collect();
    let stats = crate::channel_stats::measure(graph, &axes, data)?;
    Ok(stats.into_iter().map(|(v, s)| (v, s.mean())).collect())
}

/// E[x] per channel of `value` where a folded BatchNorm's statistics give it: the BatchNorm's
/// output itself (β), or a ReLU of it (the rectified Gaussian's mean).
fn input_mean(
    graph: &Graph,
    producers: &HashMap<&str, usize>,
    stats: &HashMap<&str, &BatchNormStats>,
    value: &str,
) -> Option<Vec<f64>> {
    if let Some(s) = stats.get(value) {
        return Some(s.beta.clone());
    }
    let relu = &graph.nodes[*producers.get(value)?];
    if relu.op != Op::Relu {
        return None;
    }
    let s = stats.get(relu.inputs[0].as_str())?;
    Some(
        s.beta
            .iter()
            .zip(&s.gamma)
            .map(|(&b, &g)| rectified_mean(b, g.abs()))
            .collect(),
    )
}

/// E[max(0, x)] for x ~ N(μ, σ²): σ·φ(μ/σ) + μ·Φ(μ/σ).
pub fn rectified_mean(mu: f64, sigma: f64) -> f64 {
    if sigma <= 0.0 {
        return mu.max(0.0);
    }
    let z = mu / sigma;
    let pdf = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let cdf = 0.5 * (1.0 + libm::erf(z / std::f64::consts::SQRT_2));
    sigma * pdf + mu * cdf
}

/// The layers analytic correction reaches: those with a bias of their own. A MatMul's bias Add is
/// left to empirical correction: its input's features are on the last axis, and the BatchNorm
/// statistics and means taken here are per channel of axis 1.
fn analytic_layers(graph: &Graph, plan: &Plan) -> HashMap<String, Biased> {
    let mut layers = biased_layers(graph, plan);
    layers.retain(|_, l| !l.last_axis);
    layers
}

/// Which channel (axis 1, or the last axis with `last_axis`) each element of a layer output of
/// `shape` belongs to.
fn channels(shape: &[usize], last_axis: bool) -> std::result::Result<Layout, HookError> {
    let g = match shape.len() {
        0 | 1 => Granularity::PerTensor,
        rank if last_axis => Granularity::PerAxis { axis: rank - 1 },
        _ => Granularity::PerAxis { axis: 1 },
    };
    Ok(Layout::new(shape, g)?)
}

/// Sums of `v − r` per channel ([`channels`]) over every other axis, and the elements per
/// channel.
fn channel_error_sums(
    r: &Value,
    v: &Value,
    last_axis: bool,
) -> std::result::Result<Part, HookError> {
    let layout = channels(v.shape(), last_axis)?;
    let mut sums = vec![0f64; layout.num_params()];
    r.with_f32s(|r| {
        v.with_f32s(|x| {
            for (i, (a, b)) in r.iter().zip(x).enumerate() {
                sums[layout.param_index(i)] += f64::from(*b) - f64::from(*a);
            }
        })
    })??;
    let count = layout.len() / sums.len().max(1);
    Ok((sums, count as f64))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use zeropoint_graph::graph::{Dim, ValueInfo};
    use zeropoint_graph::Node;

    use super::*;
    use crate::placement::BiasSite;

    /// A bias two layers share (ALBERT's, after an Identity each became an alias) is corrected
    /// for neither: each one's correction would land on both.
    #[test]
    fn a_shared_bias_is_left_alone() {
        let gemm = |name: &str, w: &str, b: &str| {
            Node::new(name, Op::Gemm, &["x", w, b], &[&format!("{name}_y")])
        };
        let graph = Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: vec![],
            outputs: vec![],
            initializers: vec![],
            nodes: vec![
                gemm("a", "w1", "b"),
                gemm("c", "w2", "b"),
                gemm("d", "w3", "b3"),
            ],
        };
        let site = |node: &str, weight: &str, name: &str| BiasSite {
            name: name.into(),
            node: node.into(),
            weight: weight.into(),
            input: "x".into(),
        };
        let plan = Plan {
            biases: vec![
                site("a", "w1", "b"),
                site("c", "w2", "b"),
                site("d", "w3", "b3"),
            ],
            ..Plan::default()
        };
        let layers = biased_layers(&graph, &plan);
        assert_eq!(layers.len(), 1);
        let own = Biased {
            layer: "d".into(),
            bias: "b3".into(),
            last_axis: false,
        };
        assert_eq!(layers["d_y"], own);
    }

    /// Two NHWC samples, [1, 2, 2, 3] each (channel c of pixel p holds 10·c + p + sample), as
    /// the model's input and transposed to NCHW.
    #[test]
    fn data_means_are_per_channel_of_the_input_and_of_its_transpose() {
        let nhwc: Vec<f32> = (0..2)
            .flat_map(|s| (0..4).flat_map(move |p| (0..3).map(move |c| (10 * c + p + s) as f32)))
            .collect();
        let x = RawTensor::from_f32s("x", &[2, 2, 2, 3], &nhwc);
        let mut t = Node::new("t", Op::Transpose, &["x"], &["xt"]);
        t.attributes = vec![zeropoint_graph::graph::ints_attribute(
            "perm",
            &[0, 3, 1, 2],
        )];
        let dims = [
            Dim::Sym("N".into()),
            Dim::Fixed(2),
            Dim::Fixed(2),
            Dim::Fixed(3),
        ];
        let input = ValueInfo {
            name: "x".into(),
            dtype: Some(DType::F32),
            shape: Some(dims.to_vec()),
        };
        let graph = Graph {
            source: "nhwc.onnx".into(),
            opset: 13,
            inputs: vec![input],
            outputs: Vec::new(),
            initializers: Vec::new(),
            nodes: vec![t],
        };
        let data = Dataset::from_arrays(vec![("x".into(), Arc::new(x))], &graph.inputs).unwrap();
        let means = data_means(&graph, data).unwrap();
        // Pixels 0..3 and samples 0, 1 average 1.5 + 0.5 on top of 10·c.
        assert_eq!(means["xt"], [2.0, 12.0, 22.0]);
        // The input's own axis 1 is the image's rows: row r holds pixels 2r and 2r + 1.
        let row = |r: f64| (0..3).map(|c| 10.0 * f64::from(c)).sum::<f64>() / 3.0 + 2.0 * r + 1.0;
        assert_eq!(means["x"], [row(0.0), row(1.0)]);
    }
}
