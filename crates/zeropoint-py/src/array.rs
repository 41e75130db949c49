//! numpy arrays in and out: f32 inputs borrowed without a copy when they are C-contiguous
//! float32 (converted once otherwise), parameters as small vectors, and model tensors as
//! zeropoint's `RawTensor`s (one copy each way).

use numpy::prelude::*;
use numpy::{PyArrayDescrMethods, PyArrayDyn, PyUntypedArray};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyFloat, PyInt};
use zeropoint_onnx::{DType, RawTensor};

use crate::errors::{raise, Kind};

/// `obj` as a C-contiguous float32 array: itself when it already is one, else a converted copy.
pub fn f32_array<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
        if a.is_c_contiguous() {
            return Ok(a.clone());
        }
    }
    let np = obj.py().import("numpy")?;
    let converted = np.call_method1("ascontiguousarray", (obj, "float32"))?;
    Ok(converted.cast_into::<PyArrayDyn<f32>>()?)
}

/// A scalar or array of numbers as a flat f32 vector (scales, ranges).
pub fn f32_values(obj: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    // The common case, a Python float, without a numpy round trip (most of a call's overhead).
    if let Ok(v) = obj.cast::<PyFloat>() {
        return Ok(vec![v.value() as f32]);
    }
    let a = f32_array(obj)?;
    let values = a.readonly().as_slice()?.to_vec();
    Ok(values)
}

/// A scalar or array of integers as a flat i32 vector (zero-points).
pub fn i32_values(obj: &Bound<'_, PyAny>) -> PyResult<Vec<i32>> {
    let wide: Vec<i64> = if let Ok(z) = obj.cast::<PyInt>() {
        vec![z.extract()?]
    } else {
        let np = obj.py().import("numpy")?;
        let a = np.call_method1("ascontiguousarray", (obj,))?;
        let kind = a.getattr("dtype")?.getattr("kind")?.extract::<String>()?;
        if kind != "i" && kind != "u" {
            return Err(raise(
                Kind::Scheme,
                format!("zero-points must be integers, not {kind}-kind values"),
            ));
        }
        let a = np
            .call_method1("ascontiguousarray", (a, "int64"))?
            .cast_into::<PyArrayDyn<i64>>()?;
        let ro = a.readonly();
        ro.as_slice()?.to_vec()
    };
    wide.into_iter()
        .map(|z| {
            i32::try_from(z)
                .map_err(|_| raise(Kind::Scheme, format!("zero-point {z} is too large")))
        })
        .collect()
}

/// A numpy array (or anything numpy turns into one) as a tensor named `name`.
pub fn raw_tensor(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<RawTensor> {
    let np = obj.py().import("numpy")?;
    let a = np.call_method1("ascontiguousarray", (obj,))?;
    let a = a.cast::<PyUntypedArray>()?;
    let descr = a.dtype();
    if descr.is_native_byteorder() == Some(false) {
        let a = a.call_method1("astype", (descr.call_method1("newbyteorder", ("=",))?,))?;
        return raw_tensor(name, &a);
    }
    let dtype_name = descr.str()?.to_string();
    let dtype = DTYPES
        .iter()
        .copied()
        .find(|d| d.name() == dtype_name)
        .ok_or_else(|| {
            raise(
                Kind::Data,
                format!("array '{name}': element type {dtype_name} is not one ONNX models take"),
            )
        })?;
    let bytes = a.len() * descr.itemsize();
    // SAFETY: `a` is C-contiguous (ascontiguousarray) and holds len × itemsize bytes at its data
    // pointer; the GIL is held, so nothing frees it while the bytes are copied.
    let data = unsafe {
        let ptr = (*a.as_array_ptr()).fields.data as *const u8;
        if bytes == 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(ptr, bytes).to_vec()
        }
    };
    Ok(RawTensor {
        name: name.to_string(),
        shape: a.shape().to_vec(),
        dtype,
        data,
    })
}

/// The element types that cross between numpy and zeropoint (numpy has no int4 or bfloat16).
const DTYPES: [DType; 13] = [
    DType::F64,
    DType::F32,
    DType::F16,
    DType::I64,
    DType::I32,
    DType::I16,
    DType::I8,
    DType::U64,
    DType::U32,
    DType::U16,
    DType::U8,
    DType::Bool,
    DType::BF16,
];

/// A tensor as a writable numpy array of its type and shape.
pub fn to_numpy<'py>(py: Python<'py>, t: &RawTensor) -> PyResult<Bound<'py, PyAny>> {
    let np = py.import("numpy")?;
    let widened;
    let (dtype, data): (&str, &[u8]) = match t.dtype {
        // numpy has no bfloat16: widen to float32.
        DType::BF16 => {
            widened = t
                .data
                .chunks_exact(2)
                .flat_map(|b| (u32::from(u16::from_le_bytes([b[0], b[1]])) << 16).to_le_bytes())
                .collect::<Vec<u8>>();
            ("float32", &widened)
        }
        DType::I4 => ("int8", &t.data),
        DType::U4 => ("uint8", &t.data),
        d => (d.name(), &t.data),
    };
    let buffer = PyByteArray::new(py, data);
    np.call_method1("frombuffer", (buffer, dtype))?
        .call_method1("reshape", (t.shape.clone(),))
}
