//! `zeropoint train MODEL --data DATA [--labels L] -o OUT.onnx`: quantization-aware training
//! from the PTQ result, exported as a QDQ model. Without a model: W4A4 QAT of the embedded MNIST
//! CNN, distilled from the float model on the 500 embedded training images, then the PTQ and
//! QAT models evaluated on the 2000 embedded test images.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, ValueEnum};
use zeropoint_onnx::model;
use zeropoint_quant::qat::optim::Rule;
use zeropoint_quant::qat::train::{train, Augment, BatchNorm, Distill, Options, Trained};

use crate::quant_args::QuantArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The float ONNX model. Without it: the embedded MNIST CNN, W4A4 (int4 per-channel
    /// weights, uint4 activations) unless --weights / --activations say otherwise.
    pub model: Option<PathBuf>,
    /// Training data, as `quantize --calib` takes it (also the calibration data of the PTQ
    /// result training starts from).
    #[arg(long, value_name = "DATA")]
    pub data: Vec<String>,
    /// One class per training sample (idx labels or .npy integers): cross-entropy. Without:
    /// distillation from the float model.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Where to write the trained QDQ model (default: beside the model, <name>.qat.onnx).
    #[arg(long, short = 'o', value_name = "OUT.onnx")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub quant: QuantArgs,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Samples per training step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Learning rate (weights; scales and zero-points at --scale-lr times it).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// The scales' and zero-points' learning rate, a fraction of --lr.
    #[arg(long, default_value_t = 1.0)]
    pub scale_lr: f64,
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptimizerArg,
    /// AdamW's decoupled weight decay (with --optimizer adamw).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// SGD's momentum (with --optimizer sgd).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Steps of linear learning-rate warm-up before the cosine decay.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// The distillation loss without labels: kl (class scores, softmax at --temperature) or mse
    /// (embeddings and other outputs).
    #[arg(long, value_enum, default_value = "kl")]
    pub distill: DistillArg,
    /// The output the loss is computed on (default: the model's first float output).
    #[arg(long, value_name = "NAME")]
    pub output_name: Option<String>,
    /// Distillation temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Seed of the shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep the PTQ ranges; train the weights only.
    #[arg(long)]
    pub freeze_ranges: bool,
    /// Train without quantization (float fine-tuning or training); writes a float model.
    #[arg(long)]
    pub float: bool,
    /// Hold out this fraction of the samples (the last ones) and validate after each epoch:
    /// top-1 accuracy with labels, else output SQNR against the float model; the best
    /// validated model is written.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub validation_split: f64,
    /// Also validate every N training steps (with --validation-split).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub validate_every: usize,
    /// Augment the training images [N, C, H, W]: "flip" (mirror half of them left to right),
    /// "crop=P" (shift each by up to P pixels, the gap zero), or both: "flip,crop=4".
    #[arg(long, value_name = "SPEC", value_parser = Augment::parse, default_value = "none")]
    pub augment: Augment,
    /// BatchNormalization during training: fold (fold it into the layer first and train the
    /// folded weights) or batch (normalize with batch statistics, re-estimate them on the
    /// training data and fold them at export; needs per-channel weights).
    #[arg(long, value_enum, default_value = "fold")]
    pub batchnorm: BatchNormArg,
    /// Write a JSON-lines log: one line per epoch (loss, learning rate, validation, time) and one
    /// per --validate-every validation (epoch, step, validation).
    #[arg(long, value_name = "FILE.jsonl")]
    pub log: Option<PathBuf>,
    /// Write a checkpoint (weights, scales, optimizer state, epochs done) after each epoch,
    /// atomically.
    #[arg(long, value_name = "FILE.safetensors")]
    pub checkpoint: Option<PathBuf>,
    /// Continue from a checkpoint of the same model and settings (the run's --epochs is the
    /// total, counting the checkpoint's).
    #[arg(long, value_name = "FILE.safetensors")]
    pub resume: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistillArg {
    Kl,
    Mse,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchNormArg {
    Fold,
    Batch,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerArg {
    Sgd,
    Adam,
    Adamw,
}

pub fn run(args: &Args) -> Result<()> {
    if args.epochs == 0 || args.batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        bail!("--lr must be a positive number");
    }
    if !(0.0..0.9).contains(&args.validation_split) {
        bail!("--validation-split must be a fraction below 0.9");
    }
    if args.validate_every > 0 && args.validation_split == 0.0 {
        bail!("--validate-every needs held-out samples: give --validation-split");
    }
    let dir = tempfile::tempdir()?;
    let Some(model) = &args.model else {
        return demo(args, dir.path());
    };
    if args.data.is_empty() {
        bail!("{}: give training data with --data FILE", model.display());
    }
    let tag = if args.float { "trained" } else { "qat" };
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| zeropoint_quant::ptq::default_output(model, tag));
    crate::output::check_output(model, &output)?;
    // With --samples N the data is its first N samples, and so are the labels.
    let labels = match &args.labels {
        Some(p) => {
            let mut l = zeropoint_quant::dataset::read_labels(p)?;
            l.truncate(args.quant.samples.unwrap_or(usize::MAX));
            Some(l)
        }
        None => None,
    };
    let opts = options(args, &args.quant, args.data.clone(), labels)?;
    let trained = train(model, &opts, &mut crate::progress::bar())?;
    model::save(&trained.model, &output)?;
    report(&trained, &output, args.json)
}

fn options(
    args: &Args,
    quant: &QuantArgs,
    data: Vec<String>,
    labels: Option<Vec<i64>>,
) -> Result<Options> {
    let mut ptq = quant.options(data)?;
    ptq.report_samples = Some(0);
    Ok(Options {
        ptq,
        labels,
        epochs: args.epochs,
        batch: args.batch_size,
        learning_rate: args.lr,
        scale_learning_rate: args.scale_lr,
        rule: match args.optimizer {
            OptimizerArg::Sgd => Rule::Sgd {
                momentum: args.momentum,
            },
            OptimizerArg::Adam => Rule::Adam,
            OptimizerArg::Adamw => Rule::AdamW {
                decay: args.weight_decay,
            },
        },
        warmup: args.warmup,
        temperature: args.temperature,
        seed: args.seed,
        distill: match args.distill {
            DistillArg::Kl => Distill::Kl,
            DistillArg::Mse => Distill::Mse,
        },
        output: args.output_name.clone(),
        freeze_ranges: args.freeze_ranges,
        float: args.float,
        validation_split: args.validation_split,
        validate_every: args.validate_every,
        augment: args.augment,
        batch_norm: match args.batchnorm {
            BatchNormArg::Fold => BatchNorm::Fold,
            BatchNormArg::Batch => BatchNorm::Batch,
        },
        log: args.log.clone(),
        checkpoint: args.checkpoint.clone(),
        resume: args.resume.clone(),
    })
}

fn report(t: &Trained, output: &Path, json: bool) -> Result<()> {
    if json {
        let out = serde_json::json!({
            "epochs": t.epochs,
            "validations": t.validations,
            "kept": t.kept,
            "reestimated": t.reestimated,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "trained on {} samples, validated on {}",
        t.samples, t.validation_samples
    );
    for e in &t.epochs {
        let validation = e
            .validation
            .map_or(String::new(), |v| format!(", validation {v:.2}"));
        println!(
            "epoch {:>3}: loss {:.5}, learning rate {:.2e}{validation}, {:.1} s",
            e.epoch, e.loss, e.learning_rate, e.seconds
        );
    }
    if let Some(k) = &t.kept {
        println!(
            "kept the model of epoch {}, step {} (validation {:.2})",
            k.epoch, k.step, k.validation
        );
    }
    if let Some(v) = t.reestimated {
        println!("with its BatchNorm statistics re-estimated (as exported): validation {v:.2}");
    }
    println!("wrote {}", output.display());
    Ok(())
}

/// W4A4 QAT of the embedded MNIST CNN, with the PTQ model it started from evaluated beside it.
fn demo(args: &Args, dir: &Path) -> Result<()> {
    let files = crate::embedded::write(dir)?;
    let mut quant = args.quant.clone();
    if quant.weights.is_none() && quant.activations.is_none() {
        quant.weights = Some("int4".into());
        quant.activations = Some("uint4".into());
    }
    crate::embedded::use_preprocessing(&mut quant.data);
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("mnist_cnn.qat.onnx"));
    crate::output::check_output(&files.model, &output)?;
    let data = vec![files.calib_images.display().to_string()];
    let opts = options(args, &quant, data, None)?;
    let trained = train(&files.model, &opts, &mut crate::progress::bar())?;
    model::save(&trained.model, &output)?;
    let ptq_path = dir.join("mnist_cnn.ptq.onnx");
    model::save(&trained.ptq, &ptq_path)?;
    report(&trained, &output, args.json)?;
    let test = [files.test_images.display().to_string()];
    for (name, path) in [
        ("PTQ (the start)", ptq_path.as_path()),
        ("QAT", output.as_path()),
    ] {
        let e = crate::eval::compare(&crate::eval::Comparison {
            float: &files.model,
            quantized: path,
            data: &test,
            labels: Some(files.test_labels.as_path()),
            prep: &opts.ptq.preprocess,
            samples: None,
            batch: 256,
            ort: false,
        })?;
        println!("\n{name} on 2000 MNIST test images (not trained on):");
        crate::eval::print(&e, args.json)?;
    }
    Ok(())
}
