//! # zeropoint-model
//!
//! The model side of zeropoint. Today: reading and writing the files tensors and models come in.
//!
//! - [`onnx`]: the ONNX protobuf types, generated at build time from the official `onnx.proto`
//!   by a pure-Rust compiler, and loading a model file with clear errors.
//! - [`external_data`]: writing models, and tensors stored in side files (models over 2 GB).
//! - [`tensor_file`]: named tensors from `.npy`, `.npz`, `.safetensors` and ONNX initializers,
//!   converted to f32 for analysis; `.npy` writing.
//! - [`atomic`]: every output goes through a temporary file and a rename, so that nothing
//!   half-written is ever left where a user expects a result.
//!
//! The graph IR, the executor and the transforms of ../DESIGN.md will live here too.

pub mod atomic;
pub mod canonicalize;
pub mod error;
pub mod exec;
pub mod external_data;
pub mod graph;
pub mod infer;
pub mod npy;
pub mod onnx;
pub mod ops;
pub mod safetensors;
pub mod tensor;
pub mod tensor_file;
pub mod value;

pub use error::FileError;
pub use graph::{Graph, Node};
pub use tensor::{DType, RawTensor, Tensor};
pub use value::Value;
