//! Quantization parameters of every planned quantizer: activations from their calibrated ranges
//! (values that share a grid take their source's), weights from the weights themselves, and
//! int32 biases with scale s_x · s_w[c], so that the integer accumulator adds them exactly.

use zeropoint_core::observer::{estimate_values, Config};
use zeropoint_core::{Granularity, QParams, Scheme};
use zeropoint_graph::{Graph, Op};

use crate::calibrate::Ranges;
use crate::error::{Error, Result};
use crate::placement::{Plan, WeightSite};
use crate::settings::Settings;

/// A weight's quantizer.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightParams {
    /// The initializer.
    pub name: String,
    /// Its scheme: the settings' at the layer's channel axis (see [`site_scheme`]).
    pub scheme: Scheme,
    pub qparams: QParams,
}

/// An activation's quantizer.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationParams {
    /// The value.
    pub value: String,
    pub qparams: QParams,
    /// The calibrated (clipping) range, for an activation with its own observer.
    pub range: Option<(f32, f32)>,
    /// The value whose grid (and parameters) it shares, for the output of a grid-preserving op.
    pub shares: Option<String>,
}

/// An int32 bias: codes and per-channel scales s_w · s_x (zero-point 0).
#[derive(Debug, Clone, PartialEq)]
pub struct BiasParams {
    /// The initializer.
    pub name: String,
    pub codes: Vec<i32>,
    pub scale: Vec<f32>,
}

/// Every quantizer's parameters, in plan order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub weights: Vec<WeightParams>,
    /// Activations with their own observer first, then those sharing a grid.
    pub activations: Vec<ActivationParams>,
    pub biases: Vec<BiasParams>,
}

impl ActivationParams {
    /// The value whose grid this one is on: its source if it shares one, else itself.
    pub fn grid_owner(&self) -> &str {
        self.shares.as_deref().unwrap_or(&self.value)
    }
}

impl BiasParams {
    /// The bias as the exported model's DequantizeLinear gives it: codes times scales.
    pub fn dequantized(&self) -> Vec<f32> {
        self.codes
            .iter()
            .zip(&self.scale)
            .map(|(&q, &s)| q as f32 * s)
            .collect()
    }
}

impl Params {
    pub fn weight(&self, name: &str) -> Option<&WeightParams> {
        self.weights.iter().find(|w| w.name == name)
    }

    pub fn activation(&self, value: &str) -> Option<&ActivationParams> {
        self.activations.iter().find(|a| a.value == value)
    }

    pub fn bias(&self, name: &str) -> Option<&BiasParams> {
        self.biases.iter().find(|b| b.name == name)
    }
}

/// Parameters from the calibrated ranges (activations) and the weights themselves.
pub fn params(graph: &Graph, plan: &Plan, ranges: &Ranges, settings: &Settings) -> Result<Params> {
    params_reusing_weights(graph, plan, ranges, settings, &Params::default())
}

/// [`params`], taking each weight's parameters from `known` where it has them (AdaRound's
/// rounded weights must keep the grid they were rounded onto: their own range can differ), and
/// the biases from both.
pub fn params_reusing_weights(
    graph: &Graph,
    plan: &Plan,
    ranges: &Ranges,
    settings: &Settings,
    known: &Params,
) -> Result<Params> {
    let weights = plan
        .weights
        .iter()
        .map(|w| match known.weight(&w.name) {
            Some(k) => Ok(k.clone()),
            None => weight_params(graph, w, settings),
        })
        .collect::<Result<_>>()?;
    let mut p = Params {
        activations: activation_params(graph, plan, ranges, settings)?,
        weights,
        ..Params::default()
    };
    for b in &plan.biases {
        let Some(xq) = p.activation(&b.input).map(|a| a.qparams.clone()) else {
            continue;
        };
        let bias = graph
            .find_initializer(&b.name)
            .ok_or_else(|| Error::new(&graph.source, format!("bias '{}' is missing", b.name)))?
            .to_f32s();
        let Some(w) = p.weights.iter_mut().find(|w| w.name == b.weight) else {
            continue;
        };
        if let Some(params) = layer_bias(&b.name, &bias, &mut w.qparams, &xq) {
            p.biases.push(params);
        }
    }
    Ok(p)
}

/// The int32 bias `name` of `values` for a layer with weight parameters `wq`, raised where the
/// bias needs it ([`fit_bias_in_int32`]), and input parameters `xq`.
pub fn layer_bias(
    name: &str,
    values: &[f32],
    wq: &mut QParams,
    xq: &QParams,
) -> Option<BiasParams> {
    fit_bias_in_int32(wq, values, xq.scale[0]);
    bias_params(name, values, wq, xq)
}

/// Raises the weight scale of each channel whose bias would not fit int32 with scale s_x·s_w:
/// with 16-bit weights and activations s_x·s_w is ~1e-10, and a bias of 1 on a channel of tiny
/// weights overflows. ONNX Runtime quantizes a float bias to int32 itself, clipping it (a W16A16
/// CNN fell from 81 to 6.5 dB), so a bias cannot simply stay float; a coarser grid for weights
/// that small costs nothing measurable.
///
/// A per-tensor scale is every channel's, so it rises at most as far as leaves 8 bits' worth of
/// steps (not at all on an 8-bit grid); a bias that needs more is clipped to int32 in
/// [`bias_params`]. Such a bias dwarfs anything its channel's integer products can add (2³¹
/// against at most 127·255 per input), so clipping keeps the channel's output saturated where it
/// was, where raising the scale coarsened the whole layer: cross-layer equalization gives a
/// channel of Keras' MobileNet whose weights are 1e-7 a bias of −2.7e7, and the per-tensor grid
/// of its layer rose a hundredfold for it (W8A8 top-1 0.1% with CLE, against 66.9% clipped).
fn fit_bias_in_int32(wq: &mut QParams, bias: &[f32], sx: f32) {
    // A little below 2³¹ − 1, so that the rounding of the code cannot overflow.
    const LIMIT: f64 = 2_147_483_000.0;
    let shared = wq.scale.len() == 1 && bias.len() > 1;
    if wq.scale.len() != bias.len() && !shared {
        return;
    }
    let ceiling = if shared {
        f64::from(wq.scale[0]) * (f64::from(wq.grid.levels()) / 256.0).max(1.0)
    } else {
        f64::INFINITY
    };
    for (c, &b) in bias.iter().enumerate() {
        let k = if shared { 0 } else { c };
        let needed = (f64::from(b).abs() / (f64::from(sx) * LIMIT)).min(ceiling);
        if f64::from(wq.scale[k]) < needed {
            wq.scale[k] = (needed as f32).next_up();
        }
    }
}

/// Every activation's parameters: its own from its range, or its grid source's.
fn activation_params(
    graph: &Graph,
    plan: &Plan,
    ranges: &Ranges,
    settings: &Settings,
) -> Result<Vec<ActivationParams>> {
    let mut out = Vec::with_capacity(ranges.0.len() + plan.shared.len());
    for (a, range) in &ranges.0 {
        let qp = QParams::from_ranges(&settings.activation_scheme(a), &[*range])
            .map_err(|e| Error::at(&graph.source, format!("activation '{a}'"), e))?;
        out.push(ActivationParams {
            value: a.clone(),
            qparams: qp,
            range: Some(*range),
            shares: None,
        });
    }
    for (value, source) in &plan.shared {
        let qp = out
            .iter()
            .find(|a| &a.value == source)
            .map(|a| a.qparams.clone())
            .ok_or_else(|| {
                Error::new(
                    &graph.source,
                    format!("'{value}' shares '{source}', which has no parameters"),
                )
            })?;
        out.push(ActivationParams {
            value: value.clone(),
            qparams: qp,
            range: None,
            shares: Some(source.clone()),
        });
    }
    Ok(out)
}

/// A weight's parameters from its own values, with the weight range estimator.
fn weight_params(graph: &Graph, w: &WeightSite, settings: &Settings) -> Result<WeightParams> {
    let at = || format!("weight '{}'", w.name);
    let t = graph
        .find_initializer(&w.name)
        .ok_or_else(|| Error::new(&graph.source, format!("weight '{}' is missing", w.name)))?;
    let scheme = site_scheme(&settings.weights, w, &t.shape);
    let ranges = estimate_values(
        &t.to_f32s(),
        &t.shape,
        &scheme,
        Config::new(settings.weight_method),
    )
    .map_err(|e| Error::at(&graph.source, at(), e))?;
    let qparams =
        QParams::from_ranges(&scheme, &ranges).map_err(|e| Error::at(&graph.source, at(), e))?;
    let mut wp = WeightParams {
        name: w.name.clone(),
        scheme,
        qparams,
    };
    if settings.limit_pairs {
        crate::kernel_pairs::widen_scales(w, t, &wp.scheme, &mut wp.qparams)?;
    }
    Ok(wp)
}

/// An int32 bias of `values` for a layer with weight parameters `wq` and input parameters `xq`:
/// scale s_x · s_w[c], codes rounded half to even (in int32's range: [`fit_bias_in_int32`]
/// makes them fit). None when the weight's parameters are not one per bias element (nor one for
/// all).
fn bias_params(name: &str, values: &[f32], wq: &QParams, xq: &QParams) -> Option<BiasParams> {
    if wq.scale.len() != 1 && wq.scale.len() != values.len() {
        return None;
    }
    let sw = |c: usize| wq.scale[if wq.scale.len() == 1 { 0 } else { c }];
    let scale: Vec<f32> = (0..values.len()).map(|c| xq.scale[0] * sw(c)).collect();
    let codes = values
        .iter()
        .zip(&scale)
        .map(|(&v, &s)| {
            (f64::from(v) / f64::from(s))
                .round_ties_even()
                .clamp(i32::MIN as f64, i32::MAX as f64) as i32
        })
        .collect();
    Some(BiasParams {
        name: name.to_string(),
        codes,
        scale,
    })
}

/// The scheme of one weight: the settings' scheme at the layer's channel axis, with two
/// exceptions that cost little size and save much accuracy:
/// - embedding tables (Gather) keep at least 8 bits: a lookup gains no speed from narrower
///   codes, and 4-bit tables were the largest error of 4-bit MiniLM (mean embedding cosine 0.73
///   against float with int4 tables; see docs/ptq.md);
/// - blocks longer than the weight's input axis become per-channel parameters (a block per
///   element would store more scales than codes);
/// - a weight of one value per output channel (a 1×1 depthwise Conv: a BatchNorm written as
///   one, `zeropoint_graph::scale_shift`) keeps at least 8 bits, on a grid per channel. Per
///   channel, each value is its channel's scale and exact; on one grid for all, channels whose
///   BatchNorm scale γ/σ is small next to the largest lose most of their resolution (the
///   CIFAR-10 CNN with per-tensor int8 weights: 4.0 dB output SQNR, against 21.3 with those
///   BatchNorms in float). Narrower codes save a few bytes, and its int32 bias has steps of
///   s_x·s_w = s_x·|w|/q_max: at 4 bits each channel's bias was up to s_x·|w|/14 off, an
///   offset on every pixel that the next layer sums coherently (the CIFAR-10 CNN at W4A8: the
///   next Conv's output at 9.1 dB against 13.5 with the BatchNorm in float; 8 bits gives 13.5
///   again).
pub fn site_scheme(base: &Scheme, site: &WeightSite, shape: &[usize]) -> Scheme {
    let mut s = weight_scheme(base, site.channel_axis, shape.len());
    if let Granularity::PerBlock { axis, block } = s.granularity {
        if shape.get(axis).is_none_or(|&d| d < block) {
            s = s.per_axis(site.channel_axis.min(shape.len().saturating_sub(1)));
        }
    }
    let one_per_channel = shape.get(site.channel_axis) == Some(&shape.iter().product());
    if site.op == Op::Gather && s.bits < 8 || one_per_channel {
        let bits = s.bits.max(8);
        s = Scheme { bits, ..s }.per_axis(site.channel_axis);
    }
    s
}

/// The weight scheme at a layer's channel axis (per-tensor stays per-tensor; blocks run along
/// the input-channel axis, the other one of a 2-D weight).
pub fn weight_scheme(base: &Scheme, channel_axis: usize, rank: usize) -> Scheme {
    let g = match base.granularity {
        Granularity::PerTensor => Granularity::PerTensor,
        Granularity::PerAxis { .. } => Granularity::PerAxis {
            axis: channel_axis.min(rank.saturating_sub(1)),
        },
        Granularity::PerBlock { block, .. } => Granularity::PerBlock {
            axis: if channel_axis == 0 {
                1.min(rank.saturating_sub(1))
            } else {
                0
            },
            block,
        },
    };
    base.granularity(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeropoint_core::Grid;

    fn weight_grid(bits: u32, scale: Vec<f32>) -> QParams {
        let q = (1i32 << (bits - 1)) - 1;
        let zero = vec![0; scale.len()];
        let granularity = match scale.len() {
            1 => Granularity::PerTensor,
            _ => Granularity::PerAxis { axis: 0 },
        };
        QParams::new(granularity, Grid { qmin: -q, qmax: q }, scale, zero).unwrap()
    }

    #[test]
    fn a_bias_too_large_for_int32_raises_its_own_scale_or_is_clipped() {
        let (sx, bias) = (0.01f32, [1.0f32, -2.7e7]);
        // Per channel: only the second channel's scale rises, until 2.7e7 fits: s ≥ 2.7e7/(0.01·2³¹).
        let mut w = weight_grid(8, vec![0.01, 0.01]);
        fit_bias_in_int32(&mut w, &bias, sx);
        assert_eq!(w.scale[0], 0.01);
        assert!(w.scale[1] >= 1.2572 && w.scale[1] < 1.2574, "{:?}", w.scale);
        // Per tensor at 8 bits the shared grid stays; the bias is clipped to int32 instead.
        let mut w = weight_grid(8, vec![0.01]);
        fit_bias_in_int32(&mut w, &bias, sx);
        assert_eq!(w.scale, [0.01]);
        let codes = bias_params("b", &bias, &w, &weight_grid(8, vec![sx]))
            .unwrap()
            .codes;
        assert_eq!(codes, [10_000, i32::MIN]);
        // Per tensor at 16 bits it rises, by at most 2⁸ (65535 levels / 256 ≈ 256).
        let mut w = weight_grid(16, vec![1e-4]);
        fit_bias_in_int32(&mut w, &bias, sx);
        assert!(
            (w.scale[0] / 1e-4 - 65535.0 / 256.0).abs() < 1e-3,
            "{:?}",
            w.scale
        );
    }

    #[test]
    fn tables_and_per_channel_scales_keep_8_bits_other_weights_take_the_settings() {
        let int4 = Scheme::new(4).per_axis(0);
        let conv = WeightSite::of(Op::Conv, 0);
        // A 3×3 convolution takes the 4 bits asked for.
        assert_eq!(site_scheme(&int4, &conv, &[8, 4, 3, 3]).bits, 4);
        // A depthwise 1×1 Conv of one value per channel, and an embedding table, keep 8.
        let scale = site_scheme(&int4, &conv, &[8, 1, 1, 1]);
        assert_eq!(
            (scale.bits, scale.granularity),
            (8, Granularity::PerAxis { axis: 0 })
        );
        assert_eq!(
            site_scheme(&int4, &WeightSite::of(Op::Gather, 0), &[100, 16]).bits,
            8
        );
        // A depthwise 3×3 Conv has nine values per channel: 4 bits.
        assert_eq!(site_scheme(&int4, &conv, &[8, 1, 3, 3]).bits, 4);
        // 8 bits asked for stay 8, on a grid per channel even where the settings say per
        // tensor; blocks longer than the input axis become per channel.
        let scale = site_scheme(&Scheme::new(8), &conv, &[8, 1, 1, 1]);
        assert_eq!(
            (scale.bits, scale.granularity),
            (8, Granularity::PerAxis { axis: 0 })
        );
        let per_tensor = site_scheme(&Scheme::new(8), &conv, &[8, 4, 3, 3]);
        assert_eq!(per_tensor.granularity, Granularity::PerTensor);
        let blocks = Scheme::new(4).per_block(1, 32);
        let gemm = WeightSite::of(Op::Gemm, 0);
        let s = site_scheme(&blocks, &gemm, &[16, 8]);
        assert_eq!(s.granularity, Granularity::PerAxis { axis: 0 });
    }
}
