//! One ONNX `TensorProto` to and from a [`RawTensor`]: elements from `raw_data`, from the typed
//! repeated fields (`float_data`, `int32_data`, ...) or from external data beside the model;
//! 4-bit types unpacked to one value per byte (element 0 in the low nibble), and packed again
//! when written.

use std::path::Path;

use crate::error::{Error, Result};
use crate::proto::tensor_proto::{DataLocation, DataType as D};
use crate::proto::TensorProto;
use crate::tensor::{element_count, DType, RawTensor};

/// The elements of `t` as stored. `model` is the file it belongs to: errors name it, and external
/// data is read from its folder. A type zeropoint does not read is an error with `unsupported`
/// set, so that callers listing tensors can skip it.
pub fn to_raw(t: &TensorProto, model: &Path) -> Result<RawTensor> {
    decode(t, || t.raw_data.clone(), model)
}

/// [`to_raw`] of a tensor given up: its `raw_data` becomes the tensor's bytes without a copy
/// (a model's weights are then held once while its graph is built, not twice).
pub fn into_raw(mut t: TensorProto, model: &Path) -> Result<RawTensor> {
    let raw = t.raw_data.take();
    decode(&t, || raw, model)
}

/// [`to_raw`] with `raw_data` from `raw`, called only where the tensor's bytes are there.
fn decode(
    t: &TensorProto,
    raw: impl FnOnce() -> Option<Vec<u8>>,
    model: &Path,
) -> Result<RawTensor> {
    let code = t.data_type.unwrap_or(0);
    let dtype = dtype_of(code).ok_or_else(|| Error::Tensor {
        path: model.to_path_buf(),
        tensor: t.name().to_string(),
        message: format!("data type {} is not read", type_name(code)),
        unsupported: true,
        source: None,
    })?;
    let bad = |m: String| Error::tensor(model, t.name(), m);
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| bad(format!("negative dimension in {:?}", t.dims)))?;
    let n = element_count(&shape).ok_or_else(|| bad("shape is too large".into()))?;
    let bytes = if t.data_location == Some(DataLocation::External as i32) {
        crate::external_data::read_tensor_bytes(t, model)?
    } else if let Some(raw) = raw().filter(|r| !r.is_empty() || n == 0) {
        raw
    } else {
        typed_bytes(t, dtype)
    };
    let stored = match dtype.packing() {
        Some(p) => Some(p.bytes_for(n)),
        None => n.checked_mul(dtype.size()),
    };
    if Some(bytes.len()) != stored {
        return Err(bad(format!(
            "shape {shape:?} needs {n} values of {dtype} ({} bytes) but the tensor holds {} bytes",
            stored.unwrap_or(usize::MAX),
            bytes.len()
        )));
    }
    let data = match dtype.packing() {
        Some(p) => {
            let mut codes = vec![0i8; n];
            zeropoint_core::pack::unpack(&bytes, p, &mut codes);
            codes.into_iter().map(|c| c as u8).collect()
        }
        None => bytes,
    };
    Ok(RawTensor {
        name: t.name().to_string(),
        shape,
        dtype,
        data,
    })
}

/// The `TensorProto` of `raw`, its data in `raw_data` (4-bit types packed two per byte).
pub fn from_raw(raw: RawTensor) -> TensorProto {
    TensorProto {
        name: Some(raw.name.clone()),
        dims: raw.shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(onnx_code(raw.dtype)),
        raw_data: Some(stored_bytes(raw)),
        ..Default::default()
    }
}

/// The ONNX element type of a [`DType`] (TensorProto.DataType).
pub fn onnx_code(dtype: DType) -> i32 {
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
    D::try_from(code)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("#{code}"))
}

/// The bytes a TensorProto stores for `raw`: as in memory, except that 4-bit types are packed two
/// per byte (element 0 in the low nibble).
fn stored_bytes(raw: RawTensor) -> Vec<u8> {
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
