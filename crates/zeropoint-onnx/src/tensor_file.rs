//! Named tensors from any file zeropoint reads, chosen by extension: `.npy`, `.npz`,
//! `.safetensors`, and `.onnx` (its initializers).

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::{self, Skipped};
use crate::tensor::{RawTensor, Tensor};
use crate::{npy, npz, safetensors};

/// The tensors of a file, and those it holds but zeropoint does not read.
#[derive(Debug, Clone, Default)]
pub struct TensorSet {
    pub tensors: Vec<Tensor>,
    pub skipped: Vec<Skipped>,
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Reads every tensor of `path`.
pub fn read(path: &Path) -> Result<TensorSet> {
    let bytes = || crate::limits::read_file(path);
    let tensors = match extension(path).as_str() {
        "npy" => vec![npy::read(path)?],
        "npz" => npz::read(path)?.into_iter().map(RawTensor::widen).collect(),
        "safetensors" => safetensors::parse(&bytes()?, path)?,
        "onnx" => return read_onnx_bytes(&bytes()?, path),
        _ => {
            return Err(Error::invalid(
                path,
                "unknown file type: expected .npy, .npz, .safetensors or .onnx",
            ))
        }
    };
    Ok(TensorSet {
        tensors,
        skipped: vec![],
    })
}

/// The initializers of an ONNX model held in memory; `path` names it in errors and locates
/// external data.
pub fn read_onnx_bytes(bytes: &[u8], path: &Path) -> Result<TensorSet> {
    let model = model::decode(bytes, path)?;
    let (tensors, skipped) = model::initializers(&model, path)?;
    Ok(TensorSet { tensors, skipped })
}

/// The arrays of an `.npy` or `.npz` file with their element types (for feeding a model).
pub fn read_arrays(path: &Path) -> Result<Vec<RawTensor>> {
    match extension(path).as_str() {
        "npy" => {
            let bytes = crate::limits::read_file(path)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(vec![npy::parse_raw(&bytes, path, &name)?])
        }
        "npz" => npz::read(path),
        _ => Err(Error::invalid(
            path,
            "unknown file type: expected .npy or .npz",
        )),
    }
}
