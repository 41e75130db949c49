//! Named tensors from any file zeropoint reads, chosen by extension: `.npy`, `.npz`,
//! `.safetensors`, and `.onnx` (its initializers).

use std::io::Read;
use std::path::Path;

use crate::error::{FileError, Result};
use crate::onnx::{self, Skipped};
use crate::tensor::{RawTensor, Tensor};
use crate::{npy, safetensors};

/// The tensors of a file, and those it holds but zeropoint does not read.
#[derive(Debug, Clone, Default)]
pub struct TensorSet {
    pub tensors: Vec<Tensor>,
    pub skipped: Vec<Skipped>,
}

/// Reads every tensor of `path`.
pub fn read(path: &Path) -> Result<TensorSet> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let bytes = || std::fs::read(path).map_err(|e| FileError::io(path, "read", &e));
    let tensors = match ext.as_str() {
        "npy" => vec![npy::read(path)?],
        "npz" => read_npz(path)?.into_iter().map(RawTensor::widen).collect(),
        "safetensors" => safetensors::parse(&bytes()?, path)?,
        "onnx" => return read_onnx_bytes(&bytes()?, path),
        _ => {
            return Err(FileError::new(
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
    let model = onnx::decode(bytes, path)?;
    let (tensors, skipped) = onnx::initializers(&model, path)?;
    Ok(TensorSet { tensors, skipped })
}

/// The arrays of an `.npy` or `.npz` file with their element types (for feeding a model).
pub fn read_arrays(path: &Path) -> Result<Vec<RawTensor>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "npy" => {
            let bytes = std::fs::read(path).map_err(|e| FileError::io(path, "read", &e))?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(vec![npy::parse_raw(&bytes, path, &name)?])
        }
        "npz" => read_npz(path),
        _ => Err(FileError::new(
            path,
            "unknown file type: expected .npy or .npz",
        )),
    }
}

/// An `.npz` archive: a zip of `.npy` members, stored or deflated.
fn read_npz(path: &Path) -> Result<Vec<RawTensor>> {
    let file = std::fs::File::open(path).map_err(|e| FileError::io(path, "open", &e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| FileError::new(path, format!("not a valid .npz (zip) archive: {e}")))?;
    let mut tensors = Vec::new();
    for i in 0..zip.len() {
        let mut member = zip
            .by_index(i)
            .map_err(|e| FileError::new(path, format!("cannot read archive member {i}: {e}")))?;
        let member_name = member
            .name()
            .map_err(|e| FileError::new(path, format!("archive member {i} has a bad name: {e}")))?
            .into_owned();
        let name = member_name
            .strip_suffix(".npy")
            .unwrap_or(&member_name)
            .to_string();
        let mut bytes = Vec::new();
        member
            .read_to_end(&mut bytes)
            .map_err(|e| FileError::tensor(path, &name, format!("cannot decompress: {e}")))?;
        tensors.push(npy::parse_raw(&bytes, path, &name)?);
    }
    Ok(tensors)
}
