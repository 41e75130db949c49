//! The training loop: the PTQ result (ranges as initialization) fine-tuned with fake-quantized
//! weights and activations, by cross-entropy on labels or by distillation from the float model,
//! then exported as a QDQ model with the learned weights, scales and zero-points.
//!
//! BatchNorm is folded before training (the white paper's static folding, §5.2): the folded
//! weights are what is trained; with `BatchNorm::Batch` the folded layers normalize with batch
//! statistics again, which are re-estimated and folded at export (`qat::batch_norm`). Training
//! images can be randomly cropped and flipped (`qat::augment`); the held-out samples are
//! validated after each epoch and every `validate_every` steps, and the best model is kept.
//! Per-tensor and per-channel weight grids are learned; biases are trained in float and
//! exported as int32 with scale s_x·s_w, as PTQ exports them.

use std::path::Path;

use candle_core::{Tensor, Var};
use zeropoint_engine::Executor;
use zeropoint_onnx::ModelProto;

use crate::calibrated::{self, calibrated, first_samples, Calibrated};
use crate::compare::Batch;
use crate::error::{Error, Result};
use crate::evaluate::top;
use crate::qat::batch_norm::Mode;
use crate::qat::checkpoint;
use crate::qat::loss::{candle_error, f32s, trained_output};
use crate::qat::model::{stack, Model, Target};
pub use crate::qat::optim::Rule;
use crate::qat::optim::{learning_rate, Optimizer};
pub use crate::qat::options::{Augment, BatchNorm, Distill, Options};
use crate::qat::seeded::shuffled;
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

/// One validation on the held-out samples.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Validation {
    pub epoch: usize,
    /// Training steps done when it ran.
    pub step: usize,
    /// Top-1 accuracy (%) with labels, else output SQNR against the float model (dB).
    pub validation: f64,
}

/// What training produced.
pub struct Trained {
    /// The QDQ model with the learned weights and quantizers.
    pub model: ModelProto,
    /// The PTQ model training started from, exported the same way.
    pub ptq: ModelProto,
    pub epochs: Vec<Epoch>,
    /// Every validation, in order (after each epoch, and every `validate_every` steps).
    pub validations: Vec<Validation>,
    /// The validation whose model was kept (the best one); None without validation, when the
    /// last model is kept.
    pub kept: Option<Validation>,
    /// With `--batchnorm batch` and validation: the kept model's validation once its
    /// BatchNorm statistics are re-estimated, which is what the export computes.
    pub reestimated: Option<f64>,
    pub samples: usize,
    pub validation_samples: usize,
}

/// The model calibrated for training: on one batch of samples for float training, which reads
/// no quantization parameter (the graph, its plan and its shapes, without observing the whole
/// training set), else on the calibration samples.
fn calibrated_for(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<calibrated::Calibrated> {
    if !opts.float {
        return calibrated(path, &opts.ptq, progress);
    }
    let batch = opts.batch.max(1);
    let one_batch = calibrated::Options {
        samples: Some(batch.min(opts.ptq.samples.unwrap_or(usize::MAX))),
        ..opts.ptq.clone()
    };
    calibrated(path, &one_batch, progress)
}

/// Trains the model at `path` (see [`Options`]). `progress(stage, done, total)` reports.
pub fn train(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Trained> {
    let c = calibrated_for(path, opts, progress)?;
    // The data as calibration read it (whole, for a model without a batch axis), all of it.
    let data = calibrated::Options {
        samples: opts.ptq.samples,
        ..c.options.clone()
    };
    let mut samples = first_samples(&c.graph, &data, usize::MAX)?;
    check_labels(&c, opts, samples.len())?;
    if let (false, Some(first)) = (opts.augment.is_off(), samples.first()) {
        opts.augment
            .apply(first, opts.augment.draw(opts.seed, 0, 0), &c.graph.source)?;
    }
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
        pool: step_pool(&c.graph.source)?,
        targets: std::sync::Mutex::new(
            (opts.labels.is_none() && opts.augment.is_off()).then(|| vec![None; samples.len()]),
        ),
    };
    let mut record = Record::new(opts.log.as_deref())?;
    let named: Vec<(String, &Var)> = model
        .trained(opts)
        .into_iter()
        .map(|(n, v, _)| (n, v))
        .collect();
    let owner = checkpoint::Owner::new(
        &std::fs::read(path).map_err(|e| Error::io(path, "cannot read", e))?,
        &format!(
            "{:?} float={} batchnorm={:?}",
            opts.ptq.settings, opts.float, opts.batch_norm
        ),
    );
    let start = match &opts.resume {
        Some(p) => checkpoint::load(p, &owner, &named, &mut optimizer)?,
        None => 0,
    };
    let mut epochs = Vec::new();
    for epoch in start..opts.epochs {
        let e = run.epoch(epoch, &mut optimizer, &mut record, progress)?;
        if let Some(p) = &opts.checkpoint {
            checkpoint::save(p, &owner, &named, &optimizer, epoch + 1)?;
        }
        record.write(&e)?;
        epochs.push(e);
    }
    let kept = match record.best {
        Some((v, values)) => {
            model.restore(&values).map_err(candle_error)?;
            Some(v)
        }
        None => None,
    };
    let reestimated = match model.reestimate(&run.student, &samples, opts, progress)? {
        true => run.metric()?,
        false => None,
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
        validations: record.validations,
        kept,
        reestimated,
        samples: samples.len(),
        validation_samples: validation.len(),
    })
}

/// The validations so far, the best one's model, and the JSON-lines log.
struct Record {
    validations: Vec<Validation>,
    best: Option<(Validation, Vec<Tensor>)>,
    log: Option<(std::fs::File, std::path::PathBuf)>,
}

impl Record {
    fn new(log: Option<&Path>) -> Result<Record> {
        let log = match log {
            Some(p) => Some((
                std::fs::File::create(p).map_err(|e| Error::io(p, "cannot create", e))?,
                p.to_path_buf(),
            )),
            None => None,
        };
        Ok(Record {
            validations: Vec::new(),
            best: None,
            log,
        })
    }

    /// Keeps `model`'s values if `v` is the best validation yet.
    fn validated(&mut self, v: Validation, model: &Model) {
        if self
            .best
            .as_ref()
            .is_none_or(|(b, _)| v.validation > b.validation)
        {
            self.best = Some((v.clone(), model.snapshot()));
        }
        self.validations.push(v);
    }

    fn last(&self) -> Option<f64> {
        self.validations.last().map(|v| v.validation)
    }

    /// One line of the log, if there is one.
    fn write(&mut self, line: &impl serde::Serialize) -> Result<()> {
        use std::io::Write as _;
        if let Some((f, path)) = self.log.as_mut() {
            let text = serde_json::to_string(line).unwrap_or_default();
            writeln!(f, "{text}").map_err(|e| Error::io(path, "cannot write", e))?;
        }
        Ok(())
    }
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
    /// Where the steps run: see [`step_pool`].
    pool: rayon::ThreadPool,
    /// Distillation's targets, one per training sample once a step has computed it: the
    /// teacher's output does not change between epochs where the samples do not (no
    /// augmentation), and running the teacher was an eighth of a PP-LCNet step. None where
    /// they are not kept: labels, augmentation, an output without the batch as its first axis,
    /// or more than [`TARGET_CACHE_BYTES`] of them.
    targets: std::sync::Mutex<Option<Vec<Option<Tensor>>>>,
}

/// The most memory distillation's kept targets may take.
const TARGET_CACHE_BYTES: usize = 256 << 20;

/// The threads a training step runs on, as many as rayon's global pool has. The step runs as a
/// task of this pool, not on the calling thread, so that its parallel operators start on the
/// thread that reaches them and the others steal from it: called from outside, each of a
/// step's thousand parallel passes woke the pool's threads and waited for them, while the
/// caller (candle's bookkeeping between them) ran alone. The stacks are larger than rayon's
/// default because candle's backward pass walks the graph recursively, once per operator of
/// the longest path.
fn step_pool(source: &Path) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .stack_size(64 << 20)
        .thread_name(|i| format!("zeropoint-train-{i}"))
        .build()
        .map_err(|e| Error::new(source, format!("training: cannot start its threads: {e}")))
}

impl Run<'_> {
    /// One pass over the training samples in a shuffled order, validating every
    /// `validate_every` steps and at the end.
    fn epoch(
        &self,
        epoch: usize,
        optimizer: &mut Optimizer,
        record: &mut Record,
        progress: &mut dyn FnMut(&str, usize, usize),
    ) -> Result<Epoch> {
        let opts = self.opts;
        let t = std::time::Instant::now();
        let per_epoch = self.samples.len().div_ceil(opts.batch.max(1));
        let total = per_epoch * opts.epochs;
        let order = shuffled(self.samples.len(), opts.seed.wrapping_add(epoch as u64));
        let (mut sum, mut lr) = (0.0, 0.0);
        for (k, chunk) in order.chunks(opts.batch.max(1)).enumerate() {
            let step = epoch * per_epoch + k;
            lr = learning_rate(opts.learning_rate, step, total, opts.warmup);
            let value = self
                .pool
                .install(|| self.step((epoch, step, chunk), lr, optimizer))?;
            sum += f64::from(value);
            let every = opts.validate_every;
            if every > 0 && (step + 1).is_multiple_of(every) && k + 1 < per_epoch {
                if let Some(v) = self.validate((epoch, step + 1), record)? {
                    record.write(&v)?;
                }
            }
            let validated = record
                .last()
                .map_or(String::new(), |v| format!(", validation {v:.2}"));
            let line = format!(
                "training\tepoch {} loss {value:.5}, lr {lr:.1e}{validated}",
                epoch + 1
            );
            progress(&line, step + 1, total);
        }
        let end = self.validate((epoch, (epoch + 1) * per_epoch), record)?;
        Ok(Epoch {
            epoch: epoch + 1,
            loss: sum / per_epoch.max(1) as f64,
            learning_rate: lr,
            validation: end.map(|v| v.validation),
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// One training step on the samples `chunk`: the loss, its gradients and the update.
    /// Returns the loss.
    fn step(
        &self,
        (epoch, step, chunk): (usize, usize, &[usize]),
        lr: f64,
        optimizer: &mut Optimizer,
    ) -> Result<f32> {
        let (opts, model) = (self.opts, self.model);
        let batch = self.batch(epoch, chunk)?;
        let target = match &opts.labels {
            Some(labels) => Target::Labels(chunk.iter().map(|&i| labels[i]).collect()),
            None => Target::Teacher(self.target(&batch, chunk)?),
        };
        let loss = model.loss(&self.student, batch, target, opts)?;
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
        Ok(value)
    }

    /// The teacher's output on `batch` (the samples `chunk`), as distillation's target: from
    /// [`Run::targets`] where every sample has one there, else run, and kept there.
    fn target(&self, batch: &Batch, chunk: &[usize]) -> Result<Tensor> {
        let lock = || {
            self.targets
                .lock()
                .map_err(|_| Error::Environment("training: a step panicked".into()))
        };
        if let Some(rows) = lock()?.as_ref() {
            let kept: Option<Vec<&Tensor>> = chunk.iter().map(|&i| rows[i].as_ref()).collect();
            if let Some(kept) = kept {
                return Tensor::cat(&kept, 0).map_err(candle_error);
            }
        }
        let target = trained_output(self.teacher.run(batch.clone())?, self.opts)?;
        let mut cache = lock()?;
        let per_sample = target.elem_count() / chunk.len().max(1) * 4;
        let fits = per_sample * self.samples.len() <= TARGET_CACHE_BYTES;
        match cache.as_mut() {
            Some(rows) if fits && target.dims().first() == Some(&chunk.len()) => {
                for (k, &i) in chunk.iter().enumerate() {
                    rows[i] = Some(target.narrow(0, k, 1).map_err(candle_error)?);
                }
            }
            _ => *cache = None,
        }
        Ok(target)
    }

    /// The training samples `chunk` as one batch, each augmented with its draw of `epoch`.
    fn batch(&self, epoch: usize, chunk: &[usize]) -> Result<Batch> {
        let a = self.opts.augment;
        if a.is_off() {
            return stack(&chunk.iter().map(|&i| &self.samples[i]).collect::<Vec<_>>());
        }
        let parts = chunk
            .iter()
            .map(|&i| {
                let draw = a.draw(self.opts.seed, epoch, i);
                a.apply(&self.samples[i], draw, &self.c.graph.source)
            })
            .collect::<Result<Vec<_>>>()?;
        stack(&parts.iter().collect::<Vec<_>>())
    }

    /// Validates the model now (after `step` steps of epoch `epoch`, 0-based) and records it;
    /// None without held-out samples.
    fn validate(
        &self,
        (epoch, step): (usize, usize),
        record: &mut Record,
    ) -> Result<Option<Validation>> {
        let Some(value) = self.metric()? else {
            return Ok(None);
        };
        let v = Validation {
            epoch: epoch + 1,
            step,
            validation: value,
        };
        record.validated(v.clone(), self.model);
        Ok(Some(v))
    }

    /// The validation metric of the model now: top-1 accuracy (%) against the held-out labels,
    /// else output SQNR against the float model (dB); None without held-out samples.
    fn metric(&self) -> Result<Option<f64>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        let offset = self.samples.len();
        let (mut signal, mut noise, mut correct) = (0f64, 0f64, 0usize);
        for (i, b) in self.validation.iter().enumerate() {
            let out = self
                .model
                .forward(&self.student, b.clone(), self.opts, Mode::Infer)?
                .0
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
