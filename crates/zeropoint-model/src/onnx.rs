//! ONNX models: the protobuf types generated from the official `onnx.proto` (see build.rs), model
//! loading with clear errors, and initializers decoded to f32 tensors, external data included.
//! Writing, and tensors in side files, are in [`crate::external_data`].

use std::path::Path;

use prost::Message;

use crate::error::{FileError, Result};
use crate::tensor::{element_count, DType, Tensor};

/// The generated protobuf types (`ModelProto`, `GraphProto`, `TensorProto`, ...).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use proto::{ModelProto, TensorProto};

/// Reads and decodes an ONNX model file.
pub fn load(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| FileError::io(path, "read", &e))?;
    decode(&bytes, path)
}

/// Decodes an ONNX model from bytes. `path` is for error messages.
pub fn decode(bytes: &[u8], path: &Path) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes).map_err(|e| {
        FileError::new(
            path,
            format!("not a valid ONNX model (truncated or malformed protobuf): {e}"),
        )
    })?;
    if model.graph.is_none() {
        return Err(FileError::new(path, "not an ONNX model: it has no graph"));
    }
    Ok(model)
}

/// An initializer that could not be turned into a tensor, and why (string or complex data, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// The graph's initializers as f32 tensors. Initializers of types zeropoint does not read are
/// returned in the second list; malformed ones (wrong byte counts, unsafe external paths) are
/// errors. `path` is the model file: external data is resolved beside it.
pub fn initializers(model: &ModelProto, path: &Path) -> Result<(Vec<Tensor>, Vec<Skipped>)> {
    let graph = model.graph.as_ref().expect("checked by decode");
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tensors = Vec::new();
    let mut skipped = Vec::new();
    for t in &graph.initializer {
        let name = t.name.clone().unwrap_or_default();
        let Some(dtype) = dtype_of(t.data_type.unwrap_or(0)) else {
            skipped.push(Skipped {
                name,
                reason: format!(
                    "data type {} is not read",
                    type_name(t.data_type.unwrap_or(0))
                ),
            });
            continue;
        };
        let values = tensor_values(t, dtype, dir).map_err(|m| FileError::tensor(path, &name, m))?;
        let shape = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| {
                FileError::tensor(path, &name, format!("negative dimension in {:?}", t.dims))
            })?;
        tensors.push(Tensor {
            name,
            shape,
            dtype,
            values,
        });
    }
    Ok((tensors, skipped))
}

fn dtype_of(code: i32) -> Option<DType> {
    use proto::tensor_proto::DataType as D;
    Some(match D::try_from(code).ok()? {
        D::Float => DType::F32,
        D::Double => DType::F64,
        D::Float16 => DType::F16,
        D::Bfloat16 => DType::BF16,
        D::Int64 => DType::I64,
        D::Int32 => DType::I32,
        D::Int16 => DType::I16,
        D::Int8 => DType::I8,
        D::Uint64 => DType::U64,
        D::Uint32 => DType::U32,
        D::Uint16 => DType::U16,
        D::Uint8 => DType::U8,
        D::Bool => DType::Bool,
        _ => return None,
    })
}

fn type_name(code: i32) -> String {
    proto::tensor_proto::DataType::try_from(code)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("#{code}"))
}

/// The values of one TensorProto, from raw_data, external data or the typed repeated fields.
fn tensor_values(
    t: &TensorProto,
    dtype: DType,
    dir: &Path,
) -> std::result::Result<Vec<f32>, String> {
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let n = element_count(&dims).ok_or("shape is too large")?;
    let external = t.data_location == Some(proto::tensor_proto::DataLocation::External as i32);
    let values = if external {
        let bytes = crate::external_data::read_tensor_bytes(t, dir)?;
        check_bytes(&bytes, n, dtype)?;
        dtype.decode(&bytes, true)
    } else if let Some(raw) = t.raw_data.as_ref().filter(|r| !r.is_empty() || n == 0) {
        check_bytes(raw, n, dtype)?;
        dtype.decode(raw, true)
    } else {
        typed_values(t, dtype)
    };
    if values.len() != n {
        return Err(format!(
            "shape {dims:?} needs {n} values but the tensor holds {}",
            values.len()
        ));
    }
    Ok(values)
}

fn check_bytes(bytes: &[u8], n: usize, dtype: DType) -> std::result::Result<(), String> {
    if Some(bytes.len()) != n.checked_mul(dtype.size()) {
        return Err(format!(
            "{n} values of {dtype} need {} bytes but the data has {}",
            n.saturating_mul(dtype.size()),
            bytes.len()
        ));
    }
    Ok(())
}

fn typed_values(t: &TensorProto, dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => t.float_data.clone(),
        DType::F64 => t.double_data.iter().map(|&v| v as f32).collect(),
        DType::I64 => t.int64_data.iter().map(|&v| v as f32).collect(),
        DType::U64 | DType::U32 => t.uint64_data.iter().map(|&v| v as f32).collect(),
        // 16-bit floats are stored as their bit patterns in int32_data.
        DType::F16 => t
            .int32_data
            .iter()
            .map(|&v| half::f16::from_bits(v as u16).to_f32())
            .collect(),
        DType::BF16 => t
            .int32_data
            .iter()
            .map(|&v| half::bf16::from_bits(v as u16).to_f32())
            .collect(),
        _ => t.int32_data.iter().map(|&v| v as f32).collect(),
    }
}
