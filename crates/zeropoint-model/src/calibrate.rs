//! Calibration and quantization parameters: activation ranges from observers fed batch by
//! batch through the executor's hook, weight ranges from the weights themselves, int32 bias
//! parameters from both; and the simulated quantized model, which runs the float graph with
//! fake-quantized weights and activations exactly as the exported QDQ model computes.

use std::collections::HashMap;

use rayon::prelude::*;

use zeropoint_core::observer::{estimate_values, Config, Method, Observer};
use zeropoint_core::{fake_quant, Granularity, QParams, Scheme};

use crate::dataset::Dataset;
use crate::error::FileError;
use crate::exec::Executor;
use crate::graph::Graph;
use crate::placement::{Plan, WeightSite};
use crate::value::Value;

/// How weights and activations are quantized and their ranges estimated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Weight scheme; its granularity's axis is replaced by each layer's channel axis.
    pub weights: Scheme,
    pub weight_method: Method,
    /// Activation scheme (per-tensor).
    pub activations: Scheme,
    pub activation_method: Method,
    /// Samples per calibration batch.
    pub batch: usize,
}

impl Default for Settings {
    /// Int8 symmetric per-channel weights with min-max ranges, uint8 asymmetric per-tensor
    /// activations with MSE ranges.
    fn default() -> Self {
        Settings {
            weights: Scheme::new(8).per_axis(0),
            weight_method: Method::MinMax,
            activations: Scheme::asymmetric_unsigned(8),
            activation_method: Method::Mse { norm: 2.0 },
            batch: 32,
        }
    }
}

/// An int32 bias: codes and per-channel scales s_w · s_x (zero-point 0).
#[derive(Debug, Clone, PartialEq)]
pub struct BiasParams {
    pub codes: Vec<i32>,
    pub scale: Vec<f32>,
}

/// Every quantizer's parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub weights: HashMap<String, QParams>,
    /// Activation parameters by value name, shared values included.
    pub activations: HashMap<String, QParams>,
    /// The observed (clipping) range of each activation with its own observer.
    pub ranges: HashMap<String, (f32, f32)>,
    pub biases: HashMap<String, BiasParams>,
}

/// Streams `data` through the float model, feeding an observer per planned activation.
/// `progress` is called with the number of samples done after each batch.
pub fn observe(
    graph: &Graph,
    plan: &Plan,
    data: &mut Dataset,
    settings: &Settings,
    progress: &mut dyn FnMut(usize),
) -> Result<HashMap<String, Observer>, FileError> {
    let exec = Executor::new(graph)?;
    let err = |m: String| FileError::new(&graph.source, m);
    let config = Config::new(settings.activation_method);
    let fresh = || -> Result<HashMap<String, Observer>, FileError> {
        plan.activations
            .iter()
            .map(|a| {
                Ok((
                    a.clone(),
                    Observer::new(config).map_err(|e| err(e.to_string()))?,
                ))
            })
            .collect()
    };
    // Each thread runs its own slice of every batch into its own observers, merged at the end:
    // the executor's operators scale poorly across threads on small images, whole samples do.
    // Observers merge exactly (docs/ranges.md), except the moving average, which depends on the
    // batch order and so runs on one slice.
    let workers = match settings.activation_method {
        Method::MovingAverage { .. } => 1,
        _ => rayon::current_num_threads().max(1),
    };
    let mut sets: Vec<HashMap<String, Observer>> =
        (0..workers).map(|_| fresh()).collect::<Result<_, _>>()?;
    let mut done = 0;
    while let Some(batch) = data.next_batch(settings.batch * workers)? {
        let n = batch
            .values()
            .next()
            .map_or(0, |v| v.shape().first().copied().unwrap_or(0));
        let parts = split_batch(&batch, n, workers).map_err(err)?;
        sets.par_iter_mut()
            .zip(parts)
            .try_for_each(|(observers, part)| {
                exec.run_with(part, &mut |name, v| {
                    if let Some(obs) = observers.get_mut(name) {
                        v.with_f32s(|x| {
                            if let Some(bad) = x.iter().find(|x| !x.is_finite()) {
                                return Err(format!(
                                    "activation has a non-finite value ({bad}): check the data"
                                ));
                            }
                            obs.update(x, v.shape()).map_err(|e| e.to_string())
                        })??;
                    }
                    Ok(v)
                })
                .map(|_| ())
            })?;
        done += n;
        progress(done);
    }
    let mut observers = sets.remove(0);
    for other in sets {
        for (name, obs) in observers.iter_mut() {
            if let Some(o) = other.get(name).filter(|o| o.state_bytes() > 0) {
                obs.merge(o)
                    .map_err(|e| err(format!("activation '{name}': {e}")))?;
            }
        }
    }
    Ok(observers)
}

/// A batch of `n` samples cut into `parts` consecutive slices (some may be empty, and are
/// dropped; at least one remains).
fn split_batch(
    batch: &HashMap<String, Value>,
    n: usize,
    parts: usize,
) -> Result<Vec<HashMap<String, Value>>, String> {
    let size = n.div_ceil(parts.max(1)).max(1);
    (0..n)
        .step_by(size)
        .map(|start| {
            batch
                .iter()
                .map(|(k, v)| {
                    let t = v
                        .tensor
                        .narrow(0, start, size.min(n - start))
                        .map_err(|e| e.to_string())?;
                    Ok((k.clone(), Value::new(t, v.dtype)))
                })
                .collect()
        })
        .collect()
}

/// Parameters from the observers (activations) and the weights themselves.
pub fn params(
    graph: &Graph,
    plan: &Plan,
    observers: &HashMap<String, Observer>,
    settings: &Settings,
) -> Result<Params, FileError> {
    let err = |m: String| FileError::new(&graph.source, m);
    let mut p = Params::default();
    // Range searches (MSE, entropy) are independent and can take milliseconds each.
    let ranges: Vec<(f32, f32)> = plan
        .activations
        .par_iter()
        .map(|a| {
            let obs = observers
                .get(a)
                .ok_or_else(|| err(format!("activation '{a}' was never computed")))?;
            obs.ranges(&settings.activations)
                .map(|r| r[0])
                .map_err(|e| err(format!("activation '{a}': {e}")))
        })
        .collect::<Result<_, _>>()?;
    for (a, range) in plan.activations.iter().zip(ranges) {
        let qp = QParams::from_ranges(&settings.activations, &[range])
            .map_err(|e| err(format!("activation '{a}': {e}")))?;
        p.ranges.insert(a.clone(), range);
        p.activations.insert(a.clone(), qp);
    }
    for (value, source) in &plan.shared {
        let qp = p.activations.get(source).cloned().ok_or_else(|| {
            err(format!(
                "'{value}' shares '{source}', which has no parameters"
            ))
        })?;
        p.activations.insert(value.clone(), qp);
    }
    for w in &plan.weights {
        let t = graph
            .initializer(&w.name)
            .ok_or_else(|| err(format!("weight '{}' is missing", w.name)))?;
        let x = t
            .to_f32s()
            .map_err(|m| err(format!("weight '{}': {m}", w.name)))?;
        let scheme = site_scheme(&settings.weights, w, t.shape());
        let ranges = estimate_values(&x, t.shape(), &scheme, Config::new(settings.weight_method))
            .map_err(|e| err(format!("weight '{}': {e}", w.name)))?;
        let qp = QParams::from_ranges(&scheme, &ranges)
            .map_err(|e| err(format!("weight '{}': {e}", w.name)))?;
        p.weights.insert(w.name.clone(), qp);
    }
    for b in &plan.biases {
        let (Some(wq), Some(xq)) = (p.weights.get(&b.weight), p.activations.get(&b.input)) else {
            continue;
        };
        let bias = graph
            .initializer(&b.name)
            .ok_or_else(|| err(format!("bias '{}' is missing", b.name)))?;
        let values = bias
            .to_f32s()
            .map_err(|m| err(format!("bias '{}': {m}", b.name)))?;
        let sw = |c: usize| {
            if wq.scale.len() == 1 {
                wq.scale[0]
            } else {
                wq.scale[c]
            }
        };
        if wq.scale.len() != 1 && wq.scale.len() != values.len() {
            continue;
        }
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
        p.biases.insert(b.name.clone(), BiasParams { codes, scale });
    }
    Ok(p)
}

/// The scheme of one weight: the settings' scheme at the layer's channel axis, with two
/// exceptions that cost little size and save much accuracy:
/// - embedding tables (Gather) keep at least 8 bits: a lookup gains no speed from narrower
///   codes, and 4-bit tables were the largest error of 4-bit MiniLM (mean embedding cosine 0.73
///   against float with int4 tables; see docs/ptq.md);
/// - blocks longer than the weight's input axis become per-channel parameters (a block per
///   element would store more scales than codes).
pub fn site_scheme(base: &Scheme, site: &WeightSite, shape: &[usize]) -> Scheme {
    let mut s = weight_scheme(base, site.channel_axis, shape.len());
    if let Granularity::PerBlock { axis, block } = s.granularity {
        if shape.get(axis).is_none_or(|&d| d < block) {
            s = s.per_axis(site.channel_axis.min(shape.len().saturating_sub(1)));
        }
    }
    if site.op == "Gather" && s.bits < 8 {
        s = Scheme { bits: 8, ..s }.per_axis(site.channel_axis);
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

/// The graph with every planned weight and bias replaced by its dequantized value: what the
/// exported model's DequantizeLinear nodes give.
pub fn quantized_weights(graph: &Graph, p: &Params) -> Result<Graph, FileError> {
    let err = |m: String| FileError::new(&graph.source, m);
    let mut g = graph.clone();
    for (name, value) in g.initializers.iter_mut() {
        if let Some(qp) = p.weights.get(name) {
            *value = fake_quant_value(value.clone(), qp)
                .map_err(|m| err(format!("weight '{name}': {m}")))?;
        } else if let Some(b) = p.biases.get(name) {
            let y: Vec<f32> = b
                .codes
                .iter()
                .zip(&b.scale)
                .map(|(&q, &s)| q as f32 * s)
                .collect();
            *value = Value::from_f32_vec(y, value.shape())
                .map_err(|m| err(format!("bias '{name}': {m}")))?;
        }
    }
    Ok(g)
}

/// Fake-quantizes `v` (float32) with `qp`.
pub fn fake_quant_value(v: Value, qp: &QParams) -> Result<Value, String> {
    let y = v.with_f32s(|x| fake_quant(x, v.shape(), qp))?;
    Value::from_f32_vec(y.map_err(|e| e.to_string())?, v.shape())
}
