//! # zeropoint-py
//!
//! The native module of the `zeropoint` Python package (`zeropoint._zeropoint`): zeropoint's
//! library with numpy arrays in and out. The package's Python files (`python/zeropoint`) wrap
//! it with dataclasses, the exception classes and the ONNX Runtime drop-in; users import
//! `zeropoint`, not this module.
//!
//! - [`tensor`]: schemes, parameters, quantize / dequantize / fake-quant, explain;
//! - [`observer`]: range estimators, picklable;
//! - [`model`]: run, quantize and evaluate ONNX models, quantize GGUF files;
//! - [`analyze`] and [`train`]: the debugging flow and quantization-aware training.
//!
//! Every function checks its arguments and raises one of the package's exceptions with
//! zeropoint's one-line message; the work itself runs with the GIL released.

use pyo3::prelude::*;

mod analyze;
mod array;
mod errors;
mod model;
mod observer;
mod tensor;
mod train;

#[pymodule]
fn _zeropoint(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    tensor::register(m)?;
    observer::register(m)?;
    model::register(m)?;
    analyze::register(m)?;
    train::register(m)?;
    Ok(())
}
