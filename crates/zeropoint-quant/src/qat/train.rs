//! The training loop: the PTQ result (ranges as initialization) fine-tuned with fake-quantized
//! weights and activations, by cross-entropy on labels or by distillation from the float model,
//! then exported as a QDQ model with the learned weights, scales and zero-points.
//!
//! BatchNorm is folded before training (the white paper's static folding, §5.2): the folded
//! weights are what is trained. Per-tensor and per-channel weight grids are learned; biases are
//! trained in float and exported as int32 with scale s_x·s_w, as PTQ exports them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType as CDType, Tensor, Var, D};
use zeropoint_core::{Granularity, QParams};
use zeropoint_engine::{Executor, Value};
use zeropoint_onnx::{DType, ModelProto, RawTensor};

use crate::calibrate::Ranges;
use crate::calibrated::{calibrated, open_data, Calibrated};
use crate::compare::{next_batches, Batch};
use crate::error::{Error, Result};
use crate::params::{params_reusing_weights, Params, WeightParams};
use crate::qat::checkpoint;
use crate::qat::fake_quant::{fake_quant, lsq_grad_scale, Quantizer};
use crate::qat::optim::{learning_rate, Optimizer, Rule};
use crate::qdq_export::export;

/// What `train` needs besides the model.
#[derive(Debug, Clone)]
pub struct Options {
    /// The quantization to start from (its calibration data is the training data).
    pub ptq: crate::calibrated::Options,
    /// One class per training sample: cross-entropy. Without: distillation from the float
    /// model (KL divergence of the first output's softmax at `temperature`).
    pub labels: Option<Vec<i64>>,
    pub epochs: usize,
    /// Samples per step.
    pub batch: usize,
    pub learning_rate: f64,
    /// The scales' and zero-points' learning rate, as a fraction of `learning_rate`.
    pub scale_learning_rate: f64,
    pub rule: Rule,
    /// Steps of linear warm-up before the cosine decay.
    pub warmup: usize,
    pub temperature: f64,
    /// Seed of the shuffling.
    pub seed: u64,
    /// The distillation loss (without labels).
    pub distill: Distill,
    /// The output the loss is computed on (default: the first float output).
    pub output: Option<String>,
    /// Keep the PTQ ranges; train the weights only.
    pub freeze_ranges: bool,
    /// Train without quantization (float fine-tuning); the output is a float model.
    pub float: bool,
    /// The fraction of the samples (the last ones) held out for validation after each epoch;
    /// the best epoch's model is kept. 0: none.
    pub validation_split: f64,
    /// A JSON-lines log, one line per epoch, written as training goes.
    pub log: Option<std::path::PathBuf>,
    /// A checkpoint written (atomically) after each epoch.
    pub checkpoint: Option<std::path::PathBuf>,
    /// A checkpoint of this model and these settings to continue from.
    pub resume: Option<std::path::PathBuf>,
}

/// How the student is compared with the float model without labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distill {
    /// KL divergence of the softmax over the last axis at the temperature (class scores).
    Kl,
    /// Mean squared error (embeddings and other outputs).
    Mse,
}

/// One epoch's log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Epoch {
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub loss: f64,
    /// The learning rate at the epoch's last step.
    pub learning_rate: f64,
    /// The validation metric after the epoch: top-1 accuracy (%) with labels, else output SQNR
    /// against the float model (dB).
    pub validation: Option<f64>,
    pub seconds: f64,
}

/// What training produced.
pub struct Trained {
    /// The QDQ model with the learned weights and quantizers.
    pub model: ModelProto,
    /// The PTQ model training started from, exported the same way.
    pub ptq: ModelProto,
    pub epochs: Vec<Epoch>,
    /// The epoch whose model was kept (the best validated one, else the last).
    pub kept_epoch: usize,
    pub samples: usize,
    pub validation_samples: usize,
}

/// A weight being trained: its values, its scale (shaped to broadcast against it) and grid.
struct TrainedWeight {
    name: String,
    var: Var,
    scale: Var,
    qmin: f64,
    qmax: f64,
    grad_scale: f64,
    params: WeightParams,
}

/// An activation quantizer being trained.
struct TrainedActivation {
    scale: Var,
    zero_point: Option<Var>,
    qmin: f64,
    qmax: f64,
    grad_scale: f64,
}

/// What a variable is, for its learning rate and weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Weight,
    Bias,
    /// A scale or zero-point.
    Range,
}

/// Everything trained.
struct Model {
    weights: Vec<TrainedWeight>,
    biases: Vec<(String, Var)>,
    /// By the value each quantizes (values sharing a grid point at their source's).
    activations: HashMap<String, TrainedActivation>,
    shared: HashMap<String, String>,
}

/// Trains the model at `path` (see [`Options`]). `progress(stage, done, total)` reports.
pub fn train(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Trained> {
    let c = calibrated(path, &opts.ptq, progress)?;
    let mut data = open_data(&c.graph, &opts.ptq)?;
    let n = data.len;
    let mut samples = next_batches(&mut data, 1, n)?;
    check_labels(&c, opts, samples.len())?;
    let held = ((samples.len() as f64) * opts.validation_split.clamp(0.0, 0.9)).round() as usize;
    let validation = samples.split_off(samples.len() - held);
    let ptq = export(&c.graph, &c.plan, &c.params, &c.base)?;
    let model = Model::from_ptq(&c, opts)?;
    let mut optimizer = Optimizer::new(opts.rule);
    model.register(&mut optimizer, opts).map_err(candle_error)?;
    let run = Run {
        c: &c,
        opts,
        model: &model,
        student: Executor::new(&c.graph)?,
        teacher: Executor::new(c.reference())?,
        samples: &samples,
        validation: &validation,
    };
    let mut log = match &opts.log {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| Error::io(p, "cannot create", e))?),
        None => None,
    };
    let named: Vec<(String, &Var)> = model
        .trained(opts)
        .into_iter()
        .map(|(n, v, _)| (n, v))
        .collect();
    let owner = checkpoint::Owner::new(
        &std::fs::read(path).map_err(|e| Error::io(path, "cannot read", e))?,
        &format!("{:?} float={}", opts.ptq.settings, opts.float),
    );
    let start = match &opts.resume {
        Some(p) => checkpoint::load(p, &owner, &named, &mut optimizer)?,
        None => 0,
    };
    let mut epochs = Vec::new();
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    for epoch in start..opts.epochs {
        let e = run.epoch(epoch, &mut optimizer, progress)?;
        if let Some(p) = &opts.checkpoint {
            checkpoint::save(p, &owner, &named, &optimizer, epoch + 1)?;
        }
        if let Some(v) = e
            .validation
            .filter(|&v| best.as_ref().is_none_or(|b| v > b.0))
        {
            best = Some((v, e.epoch, model.snapshot()));
        }
        if let Some(f) = log.as_mut() {
            use std::io::Write as _;
            let line = serde_json::to_string(&e).unwrap_or_default();
            let at = opts.log.as_deref().unwrap_or(path);
            writeln!(f, "{line}").map_err(|err| Error::io(at, "cannot write", err))?;
        }
        epochs.push(e);
    }
    let kept_epoch = match &best {
        Some((_, epoch, values)) => {
            model.restore(values).map_err(candle_error)?;
            *epoch
        }
        None => opts.epochs,
    };
    let trained = if opts.float {
        model.export_float(c)?
    } else {
        model.export(c, opts)?
    };
    Ok(Trained {
        model: trained,
        ptq,
        epochs,
        kept_epoch,
        samples: samples.len(),
        validation_samples: validation.len(),
    })
}

/// One training run's fixed parts.
struct Run<'a> {
    c: &'a Calibrated,
    opts: &'a Options,
    model: &'a Model,
    student: Executor<'a>,
    teacher: Executor<'a>,
    samples: &'a [Batch],
    validation: &'a [Batch],
}

impl Run<'_> {
    /// One pass over the training samples in a shuffled order, then the validation.
    fn epoch(
        &self,
        epoch: usize,
        optimizer: &mut Optimizer,
        progress: &mut dyn FnMut(&str, usize, usize),
    ) -> Result<Epoch> {
        let (opts, model) = (self.opts, self.model);
        let t = std::time::Instant::now();
        let per_epoch = self.samples.len().div_ceil(opts.batch.max(1));
        let total = per_epoch * opts.epochs;
        let order = shuffled(self.samples.len(), opts.seed.wrapping_add(epoch as u64));
        let (mut sum, mut lr) = (0.0, 0.0);
        for (k, chunk) in order.chunks(opts.batch.max(1)).enumerate() {
            let step = epoch * per_epoch + k;
            lr = learning_rate(opts.learning_rate, step, total, opts.warmup);
            let batch = stack(self.samples, chunk)?;
            let loss = model.loss(&self.student, &self.teacher, batch, chunk, opts)?;
            let value = loss.to_scalar::<f32>().map_err(candle_error)?;
            if !value.is_finite() {
                return Err(Error::new(
                    &self.c.graph.source,
                    format!("training: the loss is {value} at step {step} (epoch {}); lower the learning rate", epoch + 1),
                ));
            }
            let grads = loss.backward().map_err(candle_error)?;
            optimizer.step(&grads, lr).map_err(candle_error)?;
            model.keep_in_range().map_err(candle_error)?;
            sum += f64::from(value);
            let line = format!("training\tepoch {} loss {value:.5}", epoch + 1);
            progress(&line, step + 1, total);
        }
        Ok(Epoch {
            epoch: epoch + 1,
            loss: sum / per_epoch.max(1) as f64,
            learning_rate: lr,
            validation: self.validate()?,
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// The validation metric of the model now: top-1 accuracy (%) against the held-out labels,
    /// else output SQNR against the float model (dB); None without held-out samples.
    fn validate(&self) -> Result<Option<f64>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        let offset = self.samples.len();
        let (mut signal, mut noise, mut correct) = (0f64, 0f64, 0usize);
        for (i, b) in self.validation.iter().enumerate() {
            let out = self
                .model
                .forward(&self.student, b.clone(), self.opts)?
                .detach();
            let f32s = |t: &Tensor| -> Result<Vec<f32>> {
                t.flatten_all()
                    .and_then(|t| t.to_vec1())
                    .map_err(candle_error)
            };
            let y = f32s(&out)?;
            match &self.opts.labels {
                Some(labels) => {
                    let top = y
                        .iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |m, (k, &v)| if v > m.1 { (k, v) } else { m },
                        )
                        .0;
                    correct += usize::from(top as i64 == labels[offset + i]);
                }
                None => {
                    let r = f32s(&trained_output(self.teacher.run(b.clone())?, self.opts)?)?;
                    for (a, b) in r.iter().zip(&y) {
                        signal += f64::from(*a).powi(2);
                        noise += f64::from(a - b).powi(2);
                    }
                }
            }
        }
        Ok(Some(match &self.opts.labels {
            Some(_) => 100.0 * correct as f64 / self.validation.len() as f64,
            None => 10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10(),
        }))
    }
}

fn candle_error(e: candle_core::Error) -> Error {
    Error::Environment(format!("training: {e}"))
}

/// Labels, if given, are one per training sample.
fn check_labels(c: &Calibrated, opts: &Options, samples: usize) -> Result<()> {
    match &opts.labels {
        Some(l) if l.len() != samples => Err(Error::new(
            &c.graph.source,
            format!("{} labels for {samples} training samples", l.len()),
        )),
        Some(l) if l.iter().any(|&v| v < 0) => Err(Error::new(
            &c.graph.source,
            "a label is negative: labels are class indices",
        )),
        _ => Ok(()),
    }
}

/// 0..n in a random order from `seed` (Fisher-Yates with SplitMix64): the same order for the
/// same seed on every machine.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    order
}

/// The samples `chunk` (one per batch in `samples`) as one batch.
fn stack(samples: &[Batch], chunk: &[usize]) -> Result<Batch> {
    let mut out = Batch::new();
    for name in samples[chunk[0]].keys() {
        let parts: Vec<&Tensor> = chunk.iter().map(|&i| &samples[i][name].tensor).collect();
        let t = Tensor::cat(&parts, 0).map_err(candle_error)?;
        out.insert(name.clone(), Value::new(t, samples[chunk[0]][name].dtype));
    }
    Ok(out)
}

/// Log-softmax over the last axis, rows flattened.
fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let last = x.dim(D::Minus1)?;
    let x = x.reshape(((), last))?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

impl Model {
    /// The trainable copy of `c`'s quantized layers, from its PTQ parameters.
    fn from_ptq(c: &Calibrated, opts: &Options) -> Result<Model> {
        let weights = c
            .params
            .weights
            .iter()
            .map(|w| trained_weight(c, w))
            .collect::<Result<_>>()?;
        let biases = c
            .plan
            .biases
            .iter()
            .filter(|b| c.params.bias(&b.name).is_some())
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
        Ok(Model {
            weights,
            biases,
            activations,
            shared,
        })
    }

    /// Registers every trained variable: weights and biases at the learning rate (weights
    /// decayed), scales and zero-points at the scales' rate unless frozen.
    fn register(&self, opt: &mut Optimizer, opts: &Options) -> candle_core::Result<()> {
        for (_, var, kind) in self.trained(opts) {
            match kind {
                Kind::Weight => opt.add(var, 1.0, true)?,
                Kind::Bias => opt.add(var, 1.0, false)?,
                Kind::Range => opt.add(var, opts.scale_learning_rate, false)?,
            }
        }
        Ok(())
    }

    /// The variables `opts` trains, named, in a fixed order: weights (each with its scale),
    /// biases, then activation scales and zero-points by value name.
    fn trained(&self, opts: &Options) -> Vec<(String, &Var, Kind)> {
        let ranges = !opts.freeze_ranges && !opts.float;
        self.named()
            .into_iter()
            .filter(|(_, _, kind)| ranges || *kind != Kind::Range)
            .collect()
    }

    /// The quantizer of value `name`, if it has one.
    fn activation(&self, name: &str) -> Option<Quantizer<'_>> {
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
    /// `opts.float`).
    fn forward(&self, exec: &Executor, mut batch: Batch, opts: &Options) -> Result<Tensor> {
        if opts.float {
            for w in &self.weights {
                batch.insert(
                    w.name.clone(),
                    Value::new(w.var.as_tensor().clone(), DType::F32),
                );
            }
            for (name, b) in &self.biases {
                batch.insert(name.clone(), Value::new(b.as_tensor().clone(), DType::F32));
            }
            return trained_output(exec.run(batch)?, opts);
        }
        for w in &self.weights {
            let q = Quantizer {
                scale: w.scale.as_tensor(),
                zero_point: None,
                qmin: w.qmin,
                qmax: w.qmax,
                grad_scale: w.grad_scale,
            };
            let t = fake_quant(w.var.as_tensor(), &q).map_err(candle_error)?;
            batch.insert(w.name.clone(), Value::new(t, DType::F32));
        }
        for (name, b) in &self.biases {
            batch.insert(name.clone(), Value::new(b.as_tensor().clone(), DType::F32));
        }
        let out = exec.run_with(batch, &mut |name, v| match self.activation(name) {
            Some(q) if v.dtype == DType::F32 => {
                Ok(Value::new(fake_quant(&v.tensor, &q)?, DType::F32))
            }
            _ => Ok(v),
        })?;
        trained_output(out, opts)
    }

    /// The loss of one step: cross-entropy on the labels of samples `chunk`, or distillation
    /// from `teacher`.
    fn loss(
        &self,
        student: &Executor,
        teacher: &Executor,
        batch: Batch,
        chunk: &[usize],
        opts: &Options,
    ) -> Result<Tensor> {
        let logits = self.forward(student, batch.clone(), opts)?;
        let loss = match &opts.labels {
            Some(labels) => {
                let picked: Vec<i64> = chunk.iter().map(|&i| labels[i]).collect();
                cross_entropy(&logits, &picked)
            }
            None => {
                let target = trained_output(teacher.run(batch)?, opts)?.detach();
                match opts.distill {
                    Distill::Kl => distillation(&logits, &target, opts.temperature),
                    Distill::Mse => (logits - target).and_then(|d| d.sqr()?.mean_all()),
                }
            }
        };
        loss.map_err(candle_error)
    }

    /// Scales stay positive and zero-points on their grids.
    fn keep_in_range(&self) -> candle_core::Result<()> {
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
        Ok(())
    }

    /// Every variable, named, in a fixed order (see [`Model::trained`]).
    fn named(&self) -> Vec<(String, &Var, Kind)> {
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
        out
    }

    fn vars(&self) -> Vec<&Var> {
        self.named().into_iter().map(|(_, v, _)| v).collect()
    }

    /// Copies of every trained value.
    fn snapshot(&self) -> Vec<Tensor> {
        self.vars()
            .into_iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()
            .unwrap_or_default()
    }

    /// The trained values of a [`Model::snapshot`] put back.
    fn restore(&self, values: &[Tensor]) -> candle_core::Result<()> {
        for (v, t) in self.vars().into_iter().zip(values) {
            v.set(t)?;
        }
        Ok(())
    }

    /// The float model with the trained weights and biases.
    fn export_float(&self, mut c: Calibrated) -> Result<ModelProto> {
        for (name, var) in self
            .weights
            .iter()
            .map(|w| (&w.name, &w.var))
            .chain(self.biases.iter().map(|(n, b)| (n, b)))
        {
            let values = var
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(candle_error)?;
            set_initializer(&mut c, name, &values);
        }
        Ok(c.graph.into_model(&c.base)?)
    }

    /// The QDQ model with the learned weights, biases, scales and zero-points.
    fn export(&self, mut c: Calibrated, opts: &Options) -> Result<ModelProto> {
        let values = |v: &Var| -> Result<Vec<f32>> {
            v.as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(candle_error)
        };
        let mut known = Params::default();
        for w in &self.weights {
            set_initializer(&mut c, &w.name, &values(&w.var)?);
            let p = &w.params;
            let scale = values(&w.scale)?;
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
            set_initializer(&mut c, name, &values(b)?);
        }
        let ranges = self.ranges(&c, opts)?;
        let params =
            params_reusing_weights(&c.graph, &c.plan, &ranges, &opts.ptq.settings, &known)?;
        export(&c.graph, &c.plan, &params, &c.base)
    }

    /// Each own activation's learned grid as the range it covers.
    fn ranges(&self, c: &Calibrated, opts: &Options) -> Result<Ranges> {
        let mut out = Vec::new();
        for name in &c.plan.activations {
            let Some(a) = self.activations.get(name) else {
                continue;
            };
            let first = |v: &Var| -> Result<f32> {
                v.as_tensor()
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map(|v| v[0])
                    .map_err(candle_error)
            };
            let s = first(&a.scale)?;
            let z = match &a.zero_point {
                Some(z) => first(z)?.round(),
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
fn trained_weight(c: &Calibrated, w: &WeightParams) -> Result<TrainedWeight> {
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

fn var_of(values: &[f32], shape: &[usize]) -> Result<Var> {
    Var::from_vec(values.to_vec(), shape, &candle_core::Device::Cpu).map_err(candle_error)
}

fn set_initializer(c: &mut Calibrated, name: &str, values: &[f32]) {
    if let Some(t) = c.graph.initializers.iter_mut().find(|t| t.name == name) {
        let wide: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
        *t = RawTensor::from_f64s(&t.name, &t.shape, &wide, DType::F32);
    }
}

/// The output the loss is computed on: `opts.output`, or the first float one.
fn trained_output(out: Vec<(String, Value)>, opts: &Options) -> Result<Tensor> {
    let names: Vec<String> = out.iter().map(|(n, _)| n.clone()).collect();
    let picked = match &opts.output {
        Some(name) => out.into_iter().find(|(n, _)| n == name),
        None => out.into_iter().find(|(_, v)| v.dtype == DType::F32),
    };
    picked.map(|(_, v)| v.tensor).ok_or_else(|| {
        Error::Environment(match &opts.output {
            Some(name) => format!(
                "training: the model has no output '{name}' (its outputs: {})",
                names.join(", ")
            ),
            None => "training: the model has no float output".into(),
        })
    })
}

/// Mean cross-entropy of `logits` (rows over the last axis) against class `labels`.
fn cross_entropy(logits: &Tensor, labels: &[i64]) -> candle_core::Result<Tensor> {
    let logp = log_softmax(logits)?;
    let classes = logp.dim(1)? as i64;
    if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
        candle_core::bail!("label {bad} is out of range for {classes} classes");
    }
    let idx = Tensor::new(labels, logp.device())?
        .to_dtype(CDType::U32)?
        .unsqueeze(1)?;
    logp.gather(&idx, 1)?.mean_all()?.neg()
}

/// KL(softmax(t/T) ‖ softmax(s/T))·T², averaged over rows.
fn distillation(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> candle_core::Result<Tensor> {
    let t = temperature.max(1e-6);
    let ls = log_softmax(&(student / t)?)?;
    let lt = log_softmax(&(teacher / t)?)?;
    let pt = lt.exp()?;
    let rows = ls.dim(0)? as f64;
    (pt * (lt - ls)?)?.sum_all()? * (t * t / rows)
}
