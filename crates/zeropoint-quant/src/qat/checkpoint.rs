//! Training checkpoints: every trained variable, the optimizer's moments and step count, and the
//! epochs done, as one safetensors file written atomically after each epoch. Resuming restores
//! all of it, so that a resumed run writes the same bytes as one that was never stopped.

use std::path::Path;

use candle_core::{Device, Tensor, Var};

use crate::error::{Error, Result};
use crate::qat::loss::f32s;
use crate::qat::optim::Optimizer;

/// Names of the bookkeeping entries (variables are named `kind:value`, which has no '#').
const EPOCHS: &str = "#epochs";
const STEPS: &str = "#steps";

/// What a checkpoint belongs to: a fingerprint of the model file and of the settings. Resuming
/// with another model or other schemes is refused.
pub struct Owner {
    pub model: String,
    pub settings: String,
}

impl Owner {
    /// The owner of checkpoints of the model file `bytes` trained with `settings` (its Debug
    /// form).
    pub fn new(bytes: &[u8], settings: &str) -> Owner {
        // FNV-1a: stable across builds, unlike std's hasher.
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Owner {
            model: format!("{hash:016x}"),
            settings: settings.to_string(),
        }
    }
}

/// Writes `vars` (named, in the optimizer's order), the optimizer's state and `epochs` to
/// `path`.
pub fn save(
    path: &Path,
    owner: &Owner,
    vars: &[(String, &Var)],
    opt: &Optimizer,
    epochs: usize,
) -> Result<()> {
    let (steps, moments) = opt.state();
    let mut out = Vec::with_capacity(3 * vars.len() + 2);
    for ((name, var), (m, v)) in vars.iter().zip(moments) {
        let shape = var.shape().dims().to_vec();
        out.push((name.clone(), shape.clone(), f32s(var)?));
        out.push((format!("{name}#m"), shape.clone(), f32s(m)?));
        out.push((format!("{name}#v"), shape, f32s(v)?));
    }
    out.push((EPOCHS.into(), vec![], vec![epochs as f32]));
    out.push((STEPS.into(), vec![], vec![steps as f32]));
    let meta = [
        ("model", owner.model.as_str()),
        ("settings", owner.settings.as_str()),
    ];
    Ok(zeropoint_onnx::safetensors::write_f32(path, &out, &meta)?)
}

/// Restores a checkpoint written by [`save`] for the same model and settings into `vars` and
/// `opt`; returns the epochs it had done.
pub fn load(
    path: &Path,
    owner: &Owner,
    vars: &[(String, &Var)],
    opt: &mut Optimizer,
) -> Result<usize> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read", e))?;
    let meta = zeropoint_onnx::safetensors::metadata(&bytes, path)?;
    let get = |k: &str| meta.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("model") != Some(owner.model.as_str()) {
        return Err(Error::new(
            path,
            "a checkpoint of another model file: resume with the model it was trained from",
        ));
    }
    if get("settings") != Some(owner.settings.as_str()) {
        return Err(Error::new(path, "a checkpoint of other quantization settings: resume with the options it was trained with"));
    }
    let tensors = zeropoint_onnx::safetensors::parse(&bytes, path)?;
    let find = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let t = tensors.iter().find(|t| t.name == name).ok_or_else(|| {
            Error::new(
                path,
                format!("not a checkpoint of this model and these settings: it has no '{name}'"),
            )
        })?;
        if t.shape != shape {
            return Err(Error::new(
                path,
                format!(
                    "not a checkpoint of this model and these settings: '{name}' has shape {:?}, the model's is {shape:?}",
                    t.shape
                ),
            ));
        }
        Tensor::from_vec(t.values.clone(), shape, &Device::Cpu)
            .map_err(|e| Error::Environment(format!("checkpoint: {e}")))
    };
    let trained = tensors.iter().filter(|t| !t.name.contains('#')).count();
    if trained != vars.len() {
        return Err(Error::new(
            path,
            format!(
                "not a checkpoint of this model and these settings: {trained} trained tensors, this run trains {}",
                vars.len()
            ),
        ));
    }
    let mut moments = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let shape = var.shape().dims().to_vec();
        var.set(&find(name, &shape)?)
            .map_err(|e| Error::Environment(format!("checkpoint: {e}")))?;
        moments.push((
            find(&format!("{name}#m"), &shape)?,
            find(&format!("{name}#v"), &shape)?,
        ));
    }
    let scalar = |name: &str| -> Result<usize> { Ok(f32s(&find(name, &[])?)?[0] as usize) };
    opt.set_state(scalar(STEPS)?, moments)
        .map_err(|e| Error::Environment(format!("checkpoint: {e}")))?;
    scalar(EPOCHS)
}
