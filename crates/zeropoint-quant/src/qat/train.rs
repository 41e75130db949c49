//! The training loop: the PTQ result (ranges as initialization) fine-tuned with fake-quantized
//! weights and activations, by cross-entropy on labels or by distillation from the float model,
//! then exported as a QDQ model with the learned weights, scales and zero-points.
//!
//! BatchNorm is folded before training (the white paper's static folding, §5.2): the folded
//! weights are what is trained. Per-tensor and per-channel weight grids are learned; biases are
//! trained in float and exported as int32 with scale s_x·s_w, as PTQ exports them.

use std::path::Path;

use candle_core::{Tensor, Var};
use zeropoint_engine::{Executor, Value};
use zeropoint_onnx::ModelProto;

use crate::calibrated::{calibrated, first_samples, Calibrated};
use crate::compare::Batch;
use crate::error::{Error, Result};
use crate::evaluate::top;
use crate::qat::checkpoint;
use crate::qat::loss::{candle_error, f32s, trained_output};
use crate::qat::model::Model;
pub use crate::qat::optim::Rule;
use crate::qat::optim::{learning_rate, Optimizer};
pub use crate::qat::options::{Distill, Options};
use crate::qdq_export::export;

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

/// Trains the model at `path` (see [`Options`]). `progress(stage, done, total)` reports.
pub fn train(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Trained> {
    let c = calibrated(path, &opts.ptq, progress)?;
    let mut samples = first_samples(&c.graph, &opts.ptq, usize::MAX)?;
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
        let last = epochs.last().and_then(|e: &Epoch| e.validation);
        let e = run.epoch((epoch, last), &mut optimizer, progress)?;
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
    /// `last` is the previous epoch's validation, shown with the progress.
    fn epoch(
        &self,
        (epoch, last): (usize, Option<f64>),
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
            let validated = last.map_or(String::new(), |v| format!(", validation {v:.2}"));
            let line = format!(
                "training\tepoch {} loss {value:.5}, lr {lr:.1e}{validated}",
                epoch + 1
            );
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
            let y = f32s(&out)?;
            match &self.opts.labels {
                Some(labels) => {
                    correct += usize::from(top(&y, 1)[0] as i64 == labels[offset + i]);
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
