//! What a QAT run is asked to do: the quantization it starts from, the data's labels, the
//! optimizer, the schedule, the loss, validation, log and checkpoints.

pub use crate::qat::augment::Augment;
use crate::qat::optim::Rule;

/// What `train` needs besides the model.
#[derive(Debug, Clone)]
pub struct Options {
    /// The quantization to start from (its calibration data is the training data).
    pub ptq: crate::calibrated::Options,
    /// One class per training sample: cross-entropy. Without: distillation from the float
    /// model (KL divergence of the first output's softmax at `temperature`). Either way an
    /// output computed by a Softmax is trained on its logits (`loss::scores`).
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
    /// the best validated model is kept. 0: none.
    pub validation_split: f64,
    /// Also validate every this many steps (0: after each epoch only).
    pub validate_every: usize,
    /// Random crops and flips of the training images (none by default).
    pub augment: Augment,
    /// How folded BatchNormalizations train.
    pub batch_norm: BatchNorm,
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

/// How the BatchNormalizations canonicalization folded into their layers train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchNorm {
    /// Folded before training; the folded weights are trained (the white paper's static
    /// folding, §5.2).
    #[default]
    Fold,
    /// Normalized with batch statistics while training, re-estimated on the training data and
    /// folded at export (Jacob et al. 2018; see `qat::batch_norm`).
    Batch,
}
