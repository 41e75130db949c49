//! # zeropoint-onnx
//!
//! The files models and tensors come in, read and written losslessly, with errors that name the
//! file and the tensor. Nothing here runs a model: this crate has no tensor library, only bytes
//! and their element types.
//!
//! - [`proto`]: the ONNX protobuf types, generated at build time from the official `onnx.proto`
//!   by a pure-Rust compiler (no `protoc`).
//! - [`model`]: loading and saving ONNX models, external data included; a model's initializers
//!   as tensors.
//! - [`tensor_proto`]: one ONNX `TensorProto` to and from a [`RawTensor`] (raw data, typed
//!   fields, external data, packed int4).
//! - [`external_data`]: tensors stored in side files beside the model (models over 2 GB).
//! - [`tensor`]: [`DType`], [`RawTensor`] (elements as stored) and [`Tensor`] (widened to f32).
//! - [`npy`], [`npz`], [`safetensors`]: NumPy and safetensors files; [`tensor_file`] reads any
//!   of them, or an ONNX model's initializers, by extension.
//! - [`atomic`]: every output goes through a temporary file and a rename, so that nothing
//!   half-written is ever left where a user expects a result.
//! - [`limits`]: the memory one file-driven allocation may take, checked before allocating
//!   (docs/security.md says what zeropoint promises about untrusted files).
//!
//! ```no_run
//! use std::path::Path;
//! use zeropoint_onnx::{model, tensor_file};
//!
//! let m = model::load(Path::new("model.onnx"))?;
//! let set = tensor_file::read(Path::new("model.onnx"))?; // its initializers, as f32
//! model::save(&m, Path::new("copy.onnx"))?;              // atomic
//! # Ok::<(), zeropoint_onnx::Error>(())
//! ```

pub mod atomic;
pub mod error;
pub mod external_data;
pub mod limits;
pub mod model;
pub mod npy;
pub mod npz;
pub mod piecewise;
pub mod proto;
pub mod safetensors;
pub mod tensor;
pub mod tensor_file;
pub mod tensor_proto;

pub use error::{Error, Result};
pub use proto::{ModelProto, TensorProto};
pub use tensor::{element_count, DType, RawTensor, Tensor};
