//! `train`: quantization-aware training from the PTQ result (`zeropoint train`), the QDQ model
//! written atomically and the epochs' log returned as JSON text.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use zeropoint_quant::qat::optim::Rule;
use zeropoint_quant::qat::train::{train as run_training, Augment, BatchNorm, Distill, Options};

use crate::errors::{quant, raise, Kind};
use crate::model::{check_output, json_text, ptq_options};

/// The optimizer by name.
fn rule(name: &str, momentum: f64, weight_decay: f64) -> PyResult<Rule> {
    Ok(match name {
        "sgd" => Rule::Sgd { momentum },
        "adam" => Rule::Adam,
        "adamw" => Rule::AdamW {
            decay: weight_decay,
        },
        other => {
            return Err(raise(
                Kind::Scheme,
                format!("optimizer '{other}' is not sgd, adam or adamw"),
            ))
        }
    })
}

/// Trains the model quantized as `options` say (those of `quantize_model`) on `data`, with
/// cross-entropy on `labels` or distillation from the float model, and writes the QDQ model.
#[pyfunction]
#[pyo3(signature = (model, data, output, *, labels=None, epochs=10, batch_size=32, lr=1e-3,
                    scale_lr=1.0, optimizer="adam", momentum=0.9, weight_decay=0.0, warmup=0,
                    distill="kl", output_name=None, temperature=1.0, seed=0, freeze_ranges=false,
                    validation_split=0.0, validate_every=0, augment=None, batchnorm="fold",
                    **options))]
#[allow(clippy::too_many_arguments)]
fn train(
    py: Python<'_>,
    model: PathBuf,
    data: &Bound<'_, PyAny>,
    output: PathBuf,
    labels: Option<Vec<i64>>,
    epochs: usize,
    batch_size: usize,
    lr: f64,
    scale_lr: f64,
    optimizer: &str,
    momentum: f64,
    weight_decay: f64,
    warmup: usize,
    distill: &str,
    output_name: Option<String>,
    temperature: f64,
    seed: u64,
    freeze_ranges: bool,
    validation_split: f64,
    validate_every: usize,
    augment: Option<&str>,
    batchnorm: &str,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<String> {
    check_output(&model, &output, Kind::Model)?;
    let bad = |m: &str| Err(raise(Kind::Scheme, m));
    if epochs == 0 || batch_size == 0 {
        return bad("epochs and batch_size must be at least 1");
    }
    if !(lr.is_finite() && lr > 0.0) {
        return bad("lr must be a positive number");
    }
    if !(0.0..0.9).contains(&validation_split) {
        return bad("validation_split must be a fraction below 0.9");
    }
    if validate_every > 0 && validation_split == 0.0 {
        return bad("validate_every needs held-out samples: give validation_split");
    }
    let augment = match augment {
        Some(spec) => Augment::parse(spec).map_err(|m| raise(Kind::Scheme, m))?,
        None => Augment::default(),
    };
    let batch_norm = match batchnorm {
        "fold" => BatchNorm::Fold,
        "batch" => BatchNorm::Batch,
        other => return bad(&format!("batchnorm '{other}' is not fold or batch")),
    };
    let mut ptq = ptq_options(options, data)?;
    ptq.report_samples = Some(0);
    let labels = labels.map(|mut l| {
        l.truncate(ptq.samples.unwrap_or(usize::MAX));
        l
    });
    let opts = Options {
        ptq,
        labels,
        epochs,
        batch: batch_size,
        learning_rate: lr,
        scale_learning_rate: scale_lr,
        rule: rule(optimizer, momentum, weight_decay)?,
        warmup,
        temperature,
        seed,
        distill: match distill {
            "kl" => Distill::Kl,
            "mse" => Distill::Mse,
            other => return bad(&format!("distill '{other}' is not kl or mse")),
        },
        output: output_name,
        freeze_ranges,
        float: false,
        validation_split,
        validate_every,
        augment,
        batch_norm,
        log: None,
        checkpoint: None,
        resume: None,
    };
    let epochs = py
        .detach(|| -> Result<_, zeropoint_quant::Error> {
            let trained = run_training(&model, &opts, &mut |_, _, _| {})?;
            zeropoint_onnx::model::save(&trained.model, &output)?;
            Ok(trained.epochs)
        })
        .map_err(|e| quant(&model, e))?;
    json_text(&epochs)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(train, m)?)
}
