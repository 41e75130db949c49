//! The model being trained: a trainable copy of each quantized layer's weight (with its per-channel
//! scale) and bias and of each activation quantizer's scale and zero-point, initialized from the
//! PTQ parameters; its fake-quantized forward pass, its loss, and its export as a QDQ (or, with
//! `--float`, a float) model.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use zeropoint_core::{Granularity, QParams};
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::Node;
use zeropoint_onnx::{DType, ModelProto, RawTensor};

use crate::calibrate::Ranges;
use crate::calibrated::Calibrated;
use crate::compare::Batch;
use crate::error::{Error, Result};
use crate::params::{params_reusing_weights, Params, WeightParams};
use crate::qat::batch_norm::{kept_norms, KeptNorm, Mode, Moments};
use crate::qat::fake_quant::{fake_quant, lsq_grad_scale, Quantizer};
use crate::qat::hard_swish::Gates;
use crate::qat::loss::{
    candle_error, cross_entropy, distillation, f32s, scores, softmax_axis, trained_output,
};
use crate::qat::optim::Optimizer;
use crate::qat::options::{BatchNorm, Distill, Options};
use crate::qdq_export::export;

/// A weight being trained: its values, its scale (shaped to broadcast against it) and grid.
pub(crate) struct TrainedWeight {
    name: String,
    var: Var,
    scale: Var,
    qmin: f64,
    qmax: f64,
    grad_scale: f64,
    params: WeightParams,
}

/// An activation quantizer being trained.
pub(crate) struct TrainedActivation {
    scale: Var,
    zero_point: Option<Var>,
    qmin: f64,
    qmax: f64,
    grad_scale: f64,
}

/// What a variable is, for its learning rate and weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Weight,
    Bias,
    /// A scale or zero-point.
    Range,
    /// A running statistic of a BatchNorm (`--batchnorm batch`): saved and restored with the
    /// variables, updated by the batches, not by gradients.
    Statistic,
}

/// Everything trained.
pub(crate) struct Model {
    weights: Vec<TrainedWeight>,
    biases: Vec<(String, Var)>,
    /// By the value each quantizes (values sharing a grid point at their source's).
    activations: HashMap<String, TrainedActivation>,
    shared: HashMap<String, String>,
    /// BatchNorms trained with batch statistics (`--batchnorm batch`), by their value.
    norms: Vec<KeptNorm>,
    norm_of: HashMap<String, usize>,
    /// The axis of the Softmax the trained output comes from, if it does (loss::scores).
    softmax_axis: Option<i64>,
    /// The decomposed HardSwishes whose gate and product run as one op.
    gates: Gates,
}

/// What a training step's loss compares the student's output with.
pub(crate) enum Target {
    /// The labels of the batch's samples, in its order: cross-entropy.
    Labels(Vec<i64>),
    /// The teacher's output on the batch: distillation.
    Teacher(Tensor),
}

impl Model {
    /// The trainable copy of `c`'s quantized layers, from its PTQ parameters.
    pub(crate) fn from_ptq(c: &Calibrated, opts: &Options) -> Result<Model> {
        let weights = c
            .params
            .weights
            .iter()
            .map(|w| trained_weight(c, w))
            .collect::<Result<_>>()?;
        let norms = match opts.batch_norm {
            BatchNorm::Batch => kept_norms(c)?,
            BatchNorm::Fold => Vec::new(),
        };
        let biases = c
            .plan
            .biases
            .iter()
            .filter(|b| c.params.bias(&b.name).is_some())
            .filter(|b| !norms.iter().any(|n| n.bias == b.name))
            .filter_map(|b| c.graph.find_initializer(&b.name))
            .map(|t| Ok((t.name.clone(), var_of(&t.to_f32s(), &t.shape)?)))
            .collect::<Result<_>>()?;
        let mut activations = HashMap::new();
        let mut shared = HashMap::new();
        for a in &c.params.activations {
            if let Some(source) = &a.shares {
                shared.insert(a.value.clone(), source.clone());
                continue;
            }
            let scheme = opts.ptq.settings.activation_scheme(&a.value);
            let grid = a.qparams.grid;
            let (qmin, qmax) = (f64::from(grid.qmin), f64::from(grid.qmax));
            let zero = f64::from(a.qparams.zero_point[0]) as f32;
            let elements = c.sizes.get(&a.value).copied().unwrap_or(1);
            activations.insert(
                a.value.clone(),
                TrainedActivation {
                    scale: var_of(&[a.qparams.scale[0]], &[1])?,
                    zero_point: (!scheme.symmetric)
                        .then(|| var_of(&[zero], &[1]))
                        .transpose()?,
                    qmin,
                    qmax,
                    grad_scale: lsq_grad_scale(elements, qmax),
                },
            );
        }
        let norm_of = norms
            .iter()
            .enumerate()
            .map(|(i, n)| (n.value.clone(), i))
            .collect();
        let mut model = Model {
            weights,
            biases,
            activations,
            shared,
            norms,
            norm_of,
            softmax_axis: softmax_axis(&c.graph, opts.output.as_deref()),
            gates: Gates::default(),
        };
        if !opts.float {
            model.gates = Gates::of(&c.graph, |v| model.activation(v).is_some());
        }
        Ok(model)
    }

    /// Registers every trained variable: weights and biases at the learning rate (weights
    /// decayed), scales and zero-points at the scales' rate unless frozen.
    pub(crate) fn register(&self, opt: &mut Optimizer, opts: &Options) -> candle_core::Result<()> {
        for (_, var, kind) in self.trained(opts) {
            match kind {
                Kind::Weight => opt.add(var, 1.0, true)?,
                Kind::Bias => opt.add(var, 1.0, false)?,
                Kind::Range => opt.add(var, opts.scale_learning_rate, false)?,
                Kind::Statistic => opt.add(var, 0.0, false)?,
            }
        }
        Ok(())
    }

    /// The variables `opts` trains, named, in a fixed order: weights (each with its scale),
    /// biases, then activation scales and zero-points by value name.
    pub(crate) fn trained(&self, opts: &Options) -> Vec<(String, &Var, Kind)> {
        let ranges = !opts.freeze_ranges && !opts.float;
        self.named()
            .into_iter()
            .filter(|(_, _, kind)| ranges || *kind != Kind::Range)
            .collect()
    }

    /// The quantizer of value `name`, if it has one.
    pub(crate) fn activation(&self, name: &str) -> Option<Quantizer<'_>> {
        let own = self.shared.get(name).map_or(name, String::as_str);
        self.activations.get(own).map(|a| Quantizer {
            scale: a.scale.as_tensor(),
            zero_point: a.zero_point.as_ref().map(Var::as_tensor),
            qmin: a.qmin,
            qmax: a.qmax,
            grad_scale: a.grad_scale,
        })
    }

    /// The first output of the fake-quantized model on `batch` (of the float model with
    /// `opts.float`), BatchNorms normalizing as `mode` says, and the batch moments they saw.
    pub(crate) fn forward(
        &self,
        exec: &Executor,
        mut batch: Batch,
        opts: &Options,
        mode: Mode,
    ) -> Result<(Tensor, Vec<Moments>)> {
        for w in &self.weights {
            let t = if opts.float {
                w.var.as_tensor().clone()
            } else {
                let q = Quantizer {
                    scale: w.scale.as_tensor(),
                    zero_point: None,
                    qmin: w.qmin,
                    qmax: w.qmax,
                    grad_scale: w.grad_scale,
                };
                fake_quant(w.var.as_tensor(), &q).map_err(candle_error)?
            };
            batch.insert(w.name.clone(), Value::new(t, DType::F32));
        }
        for (name, b) in &self.biases {
            batch.insert(name.clone(), Value::new(b.as_tensor().clone(), DType::F32));
        }
        for n in &self.norms {
            batch.insert(n.bias.clone(), Value::new(n.zeros()?, DType::F32));
        }
        let mut seen = Vec::new();
        let mut failed = None;
        let mut fused = |node: &Node, args: &[Option<Value>]| {
            self.gates.run(node, args, |gate| self.activation(gate))
        };
        let out = exec.run_with_nodes(
            batch,
            &mut |name, v| {
                let v = match self.norm_of.get(name) {
                    Some(&i) if v.dtype == DType::F32 => match self.norms[i].apply(&v.tensor, mode)
                    {
                        Ok((y, m)) => {
                            seen.extend(m.map(|m| m.of(i)));
                            Value::new(y, DType::F32)
                        }
                        Err(e) => {
                            let text = e.to_string();
                            failed = Some(e);
                            return Err(text.into());
                        }
                    },
                    _ => v,
                };
                match self.activation(name) {
                    Some(q)
                        if !opts.float && v.dtype == DType::F32 && !self.gates.is_gate(name) =>
                    {
                        Ok(Value::new(fake_quant(&v.tensor, &q)?, DType::F32))
                    }
                    _ => Ok(v),
                }
            },
            &mut fused,
        );
        if let Some(e) = failed {
            return Err(e);
        }
        Ok((trained_output(out?, opts)?, seen))
    }

    /// Re-estimates every batch-statistics BatchNorm's running mean and variance over
    /// `samples`, in batches of `opts.batch` (see `qat::batch_norm`); false if there are none.
    pub(crate) fn reestimate(
        &self,
        exec: &Executor,
        samples: &[Batch],
        opts: &Options,
        progress: &mut dyn FnMut(&str, usize, usize),
    ) -> Result<bool> {
        if self.norms.is_empty() || samples.is_empty() {
            return Ok(false);
        }
        let mut sums: Vec<Option<Moments>> = (0..self.norms.len()).map(|_| None).collect();
        let chunks: Vec<&[Batch]> = samples.chunks(opts.batch.max(1)).collect();
        for (k, chunk) in chunks.iter().enumerate() {
            let batch = stack(&chunk.iter().collect::<Vec<_>>())?;
            let (_, seen) = self.forward(exec, batch, opts, Mode::Estimate)?;
            for m in seen {
                match &mut sums[m.norm] {
                    Some(total) => total.add(&m),
                    slot => *slot = Some(m),
                }
            }
            progress("re-estimating BatchNorm statistics", k + 1, chunks.len());
        }
        for (n, m) in self.norms.iter().zip(&sums) {
            if let Some(m) = m {
                n.set_estimate(m)?;
            }
        }
        Ok(true)
    }

    /// The loss of one step on `batch` against `target`.
    pub(crate) fn loss(
        &self,
        student: &Executor,
        batch: Batch,
        target: Target,
        opts: &Options,
    ) -> Result<Tensor> {
        let (logits, seen) = self.forward(student, batch, opts, Mode::Train)?;
        for m in &seen {
            self.norms[m.norm].follow(m)?;
        }
        let loss = match target {
            Target::Labels(picked) => {
                scores(&logits, self.softmax_axis).and_then(|s| cross_entropy(&s, &picked))
            }
            Target::Teacher(target) => {
                let target = target.detach();
                match opts.distill {
                    Distill::Kl => {
                        let axis = self.softmax_axis;
                        scores(&logits, axis).and_then(|s| {
                            distillation(&s, &scores(&target, axis)?, opts.temperature)
                        })
                    }
                    Distill::Mse => logits.sub(&target).and_then(|d| d.sqr()?.mean_all()),
                }
            }
        };
        loss.map_err(candle_error)
    }

    /// Scales stay positive and zero-points on their grids.
    pub(crate) fn keep_in_range(&self) -> candle_core::Result<()> {
        for w in &self.weights {
            w.scale
                .set(&w.scale.as_tensor().clamp(1e-12f32, f32::MAX)?)?;
        }
        for a in self.activations.values() {
            a.scale
                .set(&a.scale.as_tensor().clamp(1e-12f32, f32::MAX)?)?;
            if let Some(z) = &a.zero_point {
                z.set(&z.as_tensor().clamp(a.qmin as f32, a.qmax as f32)?)?;
            }
        }
        for n in &self.norms {
            n.keep_in_range()?;
        }
        Ok(())
    }

    /// Every variable, named, in a fixed order (see [`Model::trained`]).
    pub(crate) fn named(&self) -> Vec<(String, &Var, Kind)> {
        let mut out = Vec::new();
        for w in &self.weights {
            out.push((format!("weight:{}", w.name), &w.var, Kind::Weight));
            out.push((format!("weight_scale:{}", w.name), &w.scale, Kind::Range));
        }
        for (name, b) in &self.biases {
            out.push((format!("bias:{name}"), b, Kind::Bias));
        }
        let mut names: Vec<&String> = self.activations.keys().collect();
        names.sort();
        for n in names {
            let a = &self.activations[n];
            out.push((format!("scale:{n}"), &a.scale, Kind::Range));
            if let Some(z) = &a.zero_point {
                out.push((format!("zero_point:{n}"), z, Kind::Range));
            }
        }
        for n in &self.norms {
            let v = &n.value;
            out.push((format!("bn_gamma:{v}"), &n.gamma, Kind::Bias));
            out.push((format!("bn_beta:{v}"), &n.beta, Kind::Bias));
            out.push((format!("bn_mean:{v}"), &n.mean, Kind::Statistic));
            out.push((format!("bn_var:{v}"), &n.var, Kind::Statistic));
        }
        out
    }

    pub(crate) fn vars(&self) -> Vec<&Var> {
        self.named().into_iter().map(|(_, v, _)| v).collect()
    }

    /// Copies of every trained value.
    pub(crate) fn snapshot(&self) -> Vec<Tensor> {
        self.vars()
            .into_iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()
            .unwrap_or_default()
    }

    /// The trained values of a [`Model::snapshot`] put back.
    pub(crate) fn restore(&self, values: &[Tensor]) -> candle_core::Result<()> {
        for (v, t) in self.vars().into_iter().zip(values) {
            v.set(t)?;
        }
        Ok(())
    }

    /// The float model with the trained weights and biases.
    pub(crate) fn export_float(&self, mut c: Calibrated) -> Result<ModelProto> {
        for w in &self.weights {
            set_initializer(&mut c, &w.name, &f32s(&w.var)?);
        }
        for (name, b) in &self.biases {
            set_initializer(&mut c, name, &f32s(b)?);
        }
        self.fold_norms(&mut c)?;
        Ok(c.graph.into_model(&c.base)?)
    }

    /// Folds each batch-statistics BatchNorm into its layer's weight and bias in `c`'s graph
    /// (after the trained weights are set), and returns each folded weight's factor r, which
    /// its per-channel scales take too.
    fn fold_norms(&self, c: &mut Calibrated) -> Result<HashMap<String, Vec<f32>>> {
        let mut factors = HashMap::new();
        for n in &self.norms {
            let (r, bias) = n.fold()?;
            let w = c.graph.initializer(&n.weight).ok_or_else(|| {
                Error::new(&c.graph.source, format!("weight '{}' is missing", n.weight))
            })?;
            let scaled = n.scaled_weight(&w.to_f32s(), &w.shape.clone(), &r);
            set_initializer(c, &n.weight, &scaled);
            set_initializer(c, &n.bias, &bias);
            factors.insert(n.weight.clone(), r);
        }
        Ok(factors)
    }

    /// The QDQ model with the learned weights, biases, scales and zero-points.
    pub(crate) fn export(&self, mut c: Calibrated, opts: &Options) -> Result<ModelProto> {
        let mut known = Params::default();
        for w in &self.weights {
            set_initializer(&mut c, &w.name, &f32s(&w.var)?);
            let p = &w.params;
            let scale = f32s(&w.scale)?;
            let qparams = QParams::new(
                p.qparams.granularity,
                p.qparams.grid,
                scale,
                vec![0; p.qparams.zero_point.len()],
            )
            .map_err(|e| Error::at(&c.graph.source, format!("weight '{}'", w.name), e))?;
            known.weights.push(WeightParams {
                qparams,
                ..p.clone()
            });
        }
        for (name, b) in &self.biases {
            set_initializer(&mut c, name, &f32s(b)?);
        }
        let factors = self.fold_norms(&mut c)?;
        for w in &mut known.weights {
            if let Some(r) = factors.get(&w.name) {
                let scale: Vec<f32> = w.qparams.scale.iter().zip(r).map(|(s, r)| s * r).collect();
                w.qparams = QParams::new(
                    w.qparams.granularity,
                    w.qparams.grid,
                    scale,
                    w.qparams.zero_point.clone(),
                )
                .map_err(|e| Error::at(&c.graph.source, format!("weight '{}'", w.name), e))?;
            }
        }
        let ranges = self.ranges(&c, opts)?;
        let params =
            params_reusing_weights(&c.graph, &c.plan, &ranges, &opts.ptq.settings, &known)?;
        export(&c.graph, &c.plan, &params, &c.base)
    }

    /// Each own activation's learned grid as the range it covers.
    pub(crate) fn ranges(&self, c: &Calibrated, opts: &Options) -> Result<Ranges> {
        let mut out = Vec::new();
        for name in &c.plan.activations {
            let Some(a) = self.activations.get(name) else {
                continue;
            };
            let s = f32s(&a.scale)?[0];
            let z = match &a.zero_point {
                Some(z) => f32s(z)?[0].round(),
                None => 0.0,
            };
            let hi = (a.qmax as f32 - z) * s;
            let lo = if opts.ptq.settings.activation_scheme(name).symmetric {
                -hi
            } else {
                (a.qmin as f32 - z) * s
            };
            out.push((name.clone(), (lo, hi)));
        }
        Ok(Ranges(out))
    }
}

/// A weight's trainable copy, its scale shaped to broadcast along its channel axis.
pub(crate) fn trained_weight(c: &Calibrated, w: &WeightParams) -> Result<TrainedWeight> {
    let t = c
        .graph
        .find_initializer(&w.name)
        .ok_or_else(|| Error::new(&c.graph.source, format!("weight '{}' is missing", w.name)))?;
    let mut shape = vec![1; t.shape.len()];
    let per_scale = match w.qparams.granularity {
        Granularity::PerTensor => t.shape.iter().product(),
        Granularity::PerAxis { axis } => {
            shape[axis] = t.shape[axis];
            t.shape.iter().product::<usize>() / t.shape[axis].max(1)
        }
        Granularity::PerBlock { .. } => {
            return Err(Error::new(
                &c.graph.source,
                format!(
                    "weight '{}': QAT learns per-tensor and per-channel grids, not per-block ones",
                    w.name
                ),
            ))
        }
    };
    let (qmin, qmax) = (
        f64::from(w.qparams.grid.qmin),
        f64::from(w.qparams.grid.qmax),
    );
    Ok(TrainedWeight {
        name: w.name.clone(),
        var: var_of(&t.to_f32s(), &t.shape)?,
        scale: var_of(&w.qparams.scale, &shape)?,
        qmin,
        qmax,
        grad_scale: lsq_grad_scale(per_scale, qmax),
        params: w.clone(),
    })
}

/// Samples (one per batch) stacked into one batch along the first axis.
pub(crate) fn stack(parts: &[&Batch]) -> Result<Batch> {
    let mut out = Batch::new();
    for (name, first) in parts[0] {
        let tensors: Vec<&Tensor> = parts.iter().map(|b| &b[name].tensor).collect();
        let t = Tensor::cat(&tensors, 0).map_err(candle_error)?;
        out.insert(name.clone(), Value::new(t, first.dtype));
    }
    Ok(out)
}

pub(crate) fn var_of(values: &[f32], shape: &[usize]) -> Result<Var> {
    Var::from_vec(values.to_vec(), shape, &candle_core::Device::Cpu).map_err(candle_error)
}

pub(crate) fn set_initializer(c: &mut Calibrated, name: &str, values: &[f32]) {
    if let Some(t) = c.graph.initializers.iter_mut().find(|t| t.name == name) {
        *t = RawTensor::from_f32s(&t.name, &t.shape, values);
    }
}
