//! ONNX models: the protobuf types generated from the official `onnx.proto` (see build.rs), model
//! loading with clear errors, and initializers decoded to f32 tensors, external data included.
//! Writing, and tensors in side files, are in [`crate::external_data`].

use std::path::Path;

use prost::Message;

use crate::error::{FileError, Result};
use crate::tensor::{element_count, DType, RawTensor, Tensor};

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
        match raw_tensor(t, dir) {
            Ok(raw) => tensors.push(raw.widen()),
            Err(RawError::Unsupported(reason)) => skipped.push(Skipped {
                name: t.name.clone().unwrap_or_default(),
                reason,
            }),
            Err(RawError::Malformed(m)) => {
                return Err(FileError::tensor(path, t.name(), m));
            }
        }
    }
    Ok((tensors, skipped))
}

/// Why a TensorProto could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawError {
    /// A data type zeropoint does not read (strings, complex, 8-bit floats, ...).
    Unsupported(String),
    /// Wrong byte counts, negative dimensions, unsafe external paths.
    Malformed(String),
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawError::Unsupported(m) | RawError::Malformed(m) => f.write_str(m),
        }
    }
}

/// One TensorProto with its elements as stored (from raw_data, external data under `dir`, or the
/// typed repeated fields).
pub fn raw_tensor(t: &TensorProto, dir: &Path) -> std::result::Result<RawTensor, RawError> {
    let code = t.data_type.unwrap_or(0);
    let dtype = dtype_of(code).ok_or_else(|| {
        RawError::Unsupported(format!("data type {} is not read", type_name(code)))
    })?;
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| RawError::Malformed(format!("negative dimension in {:?}", t.dims)))?;
    let data = tensor_bytes(t, dtype, &shape, dir).map_err(RawError::Malformed)?;
    Ok(RawTensor {
        name: t.name.clone().unwrap_or_default(),
        shape,
        dtype,
        data,
    })
}

/// The ONNX element type of a [`DType`] (TensorProto.DataType).
pub fn onnx_code(dtype: DType) -> i32 {
    use proto::tensor_proto::DataType as D;
    (match dtype {
        DType::F32 => D::Float,
        DType::F64 => D::Double,
        DType::F16 => D::Float16,
        DType::BF16 => D::Bfloat16,
        DType::I64 => D::Int64,
        DType::I32 => D::Int32,
        DType::I16 => D::Int16,
        DType::I8 => D::Int8,
        DType::U64 => D::Uint64,
        DType::U32 => D::Uint32,
        DType::U16 => D::Uint16,
        DType::U8 => D::Uint8,
        DType::Bool => D::Bool,
        DType::I4 => D::Int4,
        DType::U4 => D::Uint4,
    }) as i32
}

/// The [`DType`] of an ONNX element type, if zeropoint reads it.
pub fn dtype_of(code: i32) -> Option<DType> {
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
        D::Int4 => DType::I4,
        D::Uint4 => DType::U4,
        _ => return None,
    })
}

/// The name ONNX gives an element type ("FLOAT", "INT64", ...).
pub fn type_name(code: i32) -> String {
    proto::tensor_proto::DataType::try_from(code)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("#{code}"))
}

/// The little-endian bytes of one TensorProto's elements.
fn tensor_bytes(
    t: &TensorProto,
    dtype: DType,
    shape: &[usize],
    dir: &Path,
) -> std::result::Result<Vec<u8>, String> {
    let n = element_count(shape).ok_or("shape is too large")?;
    let external = t.data_location == Some(proto::tensor_proto::DataLocation::External as i32);
    let bytes = if external {
        crate::external_data::read_tensor_bytes(t, dir)?
    } else if let Some(raw) = t.raw_data.as_ref().filter(|r| !r.is_empty() || n == 0) {
        raw.clone()
    } else {
        typed_bytes(t, dtype)
    };
    let stored = match dtype.packing() {
        Some(p) => Some(p.bytes_for(n)),
        None => n.checked_mul(dtype.size()),
    };
    if Some(bytes.len()) != stored {
        return Err(format!(
            "shape {shape:?} needs {n} values of {dtype} ({} bytes) but the tensor holds {} bytes",
            stored.unwrap_or(usize::MAX),
            bytes.len()
        ));
    }
    Ok(match dtype.packing() {
        Some(p) => {
            let mut codes = vec![0i8; n];
            zeropoint_core::pack::unpack(&bytes, p, &mut codes);
            codes.into_iter().map(|c| c as u8).collect()
        }
        None => bytes,
    })
}

/// The bytes a TensorProto stores for `raw`: as in memory, except that 4-bit types are packed two
/// per byte (element 0 in the low nibble).
pub fn stored_bytes(raw: RawTensor) -> Vec<u8> {
    match raw.dtype.packing() {
        Some(p) => {
            let codes: Vec<i8> = raw.data.iter().map(|&b| b as i8).collect();
            let mut out = vec![0u8; p.bytes_for(codes.len())];
            zeropoint_core::pack::pack(&codes, p, &mut out);
            out
        }
        None => raw.data,
    }
}

/// The typed repeated fields of a TensorProto as little-endian bytes of `dtype`.
fn typed_bytes(t: &TensorProto, dtype: DType) -> Vec<u8> {
    fn le<T, const N: usize>(values: &[T], f: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(f).collect()
    }
    match dtype {
        DType::F32 => le(&t.float_data, |v| v.to_le_bytes()),
        DType::F64 => le(&t.double_data, |v| v.to_le_bytes()),
        DType::I64 => le(&t.int64_data, |v| v.to_le_bytes()),
        DType::U64 => le(&t.uint64_data, |v| v.to_le_bytes()),
        DType::U32 => le(&t.uint64_data, |&v| (v as u32).to_le_bytes()),
        DType::I32 => le(&t.int32_data, |v| v.to_le_bytes()),
        // 16-bit types are stored as their bit patterns in int32_data.
        DType::F16 | DType::BF16 | DType::I16 | DType::U16 => {
            le(&t.int32_data, |&v| (v as u16).to_le_bytes())
        }
        // 4-bit types: one packed byte per int32.
        DType::I8 | DType::U8 | DType::Bool | DType::I4 | DType::U4 => {
            le(&t.int32_data, |&v| [v as u8])
        }
    }
}
