//! # zeropoint-model
//!
//! The model side of zeropoint: the files tensors and models come in, and running ONNX models.
//!
//! - [`onnx`]: the ONNX protobuf types, generated at build time from the official `onnx.proto`
//!   by a pure-Rust compiler, and loading a model file with clear errors.
//! - [`external_data`]: writing models, and tensors stored in side files (models over 2 GB).
//! - [`tensor_file`]: named tensors from `.npy`, `.npz`, `.safetensors` and ONNX initializers,
//!   converted to f32 for analysis; `.npy` writing.
//! - [`atomic`]: every output goes through a temporary file and a rename, so that nothing
//!   half-written is ever left where a user expects a result.
//! - [`graph`]: the IR (nodes in topological order, initializers as [`Value`]s), and
//!   [`infer`] for the shape and dtype of every value.
//! - [`exec`]: the executor, on candle-core tensors ([`value`], operators in [`ops`]), with a
//!   hook that observes or replaces every value; gradients through candle's autodiff.
//! - [`canonicalize`]: constant folding, BatchNorm folding, dead nodes, fused groups;
//!   [`opset`]: upgrading a graph to a newer opset.
//!
//! ```no_run
//! use std::collections::HashMap;
//! use std::path::Path;
//! use zeropoint_model::{exec::Executor, tensor_file, Graph, Value};
//!
//! let graph = Graph::load(Path::new("model.onnx"))?;
//! let input = &tensor_file::read_arrays(Path::new("x.npy"))?[0];
//! let feeds = HashMap::from([("input".to_string(), Value::from_raw(input)?)]);
//! let mut seen = Vec::new();
//! let outputs = Executor::new(&graph)?.run_with(feeds, &mut |name, v| {
//!     seen.push((name.to_string(), v.shape().to_vec())); // every intermediate tensor
//!     Ok(v)
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod atomic;
pub mod calibrate;
pub mod canonicalize;
pub mod dataset;
pub mod error;
pub mod evaluate;
pub mod exec;
pub mod external_data;
pub mod graph;
pub mod images;
pub mod infer;
pub mod npy;
pub mod onnx;
pub mod ops;
pub mod opset;
pub mod placement;
pub mod ptq;
pub mod qdq_export;
pub mod safetensors;
pub mod tensor;
pub mod tensor_file;
pub mod value;

pub use error::FileError;
pub use graph::{Graph, Node};
pub use tensor::{DType, RawTensor, Tensor};
pub use value::Value;
