//! The losses QAT trains with: cross-entropy on labels, distillation from the float model (KL of
//! softmaxes at a temperature, or mean squared error), on the output the options name.

use candle_core::{DType as CDType, Tensor, D};
use zeropoint_engine::Value;
use zeropoint_onnx::DType;

use crate::error::{Error, Result};
use crate::qat::options::Options;

/// A tensor's values, flattened.
pub(crate) fn f32s(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(candle_error)
}

pub(crate) fn candle_error(e: candle_core::Error) -> Error {
    Error::Environment(format!("training: {e}"))
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

/// The output the loss is computed on: `opts.output`, or the first float one.
pub(crate) fn trained_output(out: Vec<(String, Value)>, opts: &Options) -> Result<Tensor> {
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
pub(crate) fn cross_entropy(logits: &Tensor, labels: &[i64]) -> candle_core::Result<Tensor> {
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
pub(crate) fn distillation(
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
